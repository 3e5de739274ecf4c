# SPDX-License-Identifier: GPL-2.0-only
"""The harness of ``kvmpv check``: registry, per-check context, runner.

What ``scenarios/check.py`` builds on, so that it reads like a list of KVM
selftests.  Mechanics (from the kernel's ksft.py and kselftest_harness.h):
checks register with ``@check(...)`` in a registry (kselftest's
``testlist[]``); each runs with a fresh ``CheckContext`` on one backend (the
real ``/dev/kvm``, or a fresh ``kvmpv.sim.SimulatedHost`` configured by its
``SimConfig``); soft checks (``ctx.check_eq``) record a failure with the
source line and let the check continue; any exception ends only the current
check; ``ctx.defer(fn)`` registers cleanup that runs LIFO after the check, on
pass or fail, and a failing cleanup fails the check; ``Worker`` is a thread
with its own completion event (a blocking ioctl on another thread);
SIGTERM/SIGINT run the pending cleanup, print ``Bail out!`` and re-raise.
``Need`` and ``kvm_skip_reason`` decide where a check may run, from the
probe's caps-only ``HostFacts``.

Touches nothing by itself: the checks do (see ``check.py``).
"""

from __future__ import annotations

import fnmatch
import inspect
import os
import time
import traceback
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Callable, Optional, TextIO

from .. import s390guest, seimage, uapi
from ..closing import CompletionThread, signals_held
from ..errors import HostError, Interrupted, KvmpvError, UsageError, errno_name
from ..kvm import Kvm, Vm
from ..memory import GuestMemory
from ..pv import PvResult, pv_cmd
from ..report import junit, ktap
from ..report.cases import CaseResult, RunResult, Status
from ..seimage import SeImage
from ..syscalls import LINUX, AtomicSyscalls, Syscalls
from ..uapi import pv_cmd_id
from .probe import HostFacts, probe_facts

MiB = 1 << 20
BACKENDS = ("auto", "kvm", "sim", "both")

#: rc/rrc sentinel preloaded to prove the kernel left them untouched.
RC_SENTINEL = 0xDEAD
RRC_SENTINEL = 0xBEEF


# ---------------------------------------------------------------------------
# Where a check may run
# ---------------------------------------------------------------------------


class Need:
    """What a check needs from the real kernel (names printed in ``--list``)."""

    PV_ASYNC = "pv-async"  # s390x PV host, cap 224 = 1
    PV_HOST = "pv-host"  # s390x PV host (cap 180 = 1), async not needed
    NO_PV = "no-pv"  # a KVM host *without* PV (x86, or s390x without prot_virt)
    ASYNC_OFF = "async-destroy-off"  # PV host booted with kvm.async_destroy=0
    FAST = "destroy-fast"  # UV offers Destroy Secure Configuration Fast
    NO_FAST = "no-destroy-fast"
    S390 = "s390x"


def kvm_skip_reason(check: Check, facts: HostFacts) -> str:
    """Why ``check`` cannot run on this host's real kernel ("" if it can)."""
    if check.sim_only:
        return f"simulator only: {check.sim_only}"
    if not facts.kvm_usable:
        return f"no usable /dev/kvm: {facts.kvm_error}"
    for need in check.needs:
        reason = ""
        if need == Need.PV_ASYNC and not facts.pv_async:
            reason = facts.pv_reason()
        elif need == Need.PV_HOST and not facts.pv_host:
            reason = f"not a PV host: KVM_CAP_S390_PROTECTED (180) = {facts.cap_protected}"
        elif need == Need.NO_PV and facts.pv_host:
            reason = "this is a PV host; the check is about hosts without PV"
        elif need == Need.ASYNC_OFF and facts.async_destroy_param != 0:
            reason = f"kvm.async_destroy = {facts.async_destroy_param}, the check needs 0"
        elif need == Need.FAST and facts.destroy_fast is not True:
            reason = "the Ultravisor does not offer Destroy Secure Configuration Fast"
        elif need == Need.NO_FAST and facts.destroy_fast is not False:
            reason = "the Ultravisor offers Destroy-Fast (or it is unknown)"
        elif need == Need.S390 and not facts.is_s390:
            reason = f"needs s390x, this is {facts.arch}"
        if reason:
            return reason
    return ""


# ---------------------------------------------------------------------------
# The registry
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class SimConfig:
    """How the simulated host of a check is built (``SimulatedHost`` keywords)."""

    prot_virt_host: bool = True
    async_destroy: bool = True
    destroy_fast: bool = False
    #: The checks' own guests (``check.make_vm``: a small slot at 0 and one at
    #: 2 GiB, so that PREPARE leaves PERFORM work without 2 GiB of memory) are
    #: run on the simulator by a guest that skips the hole; a real protected
    #: guest could not run there (``SimulatedHost`` ``guest_skips_holes``), so
    #: the checks that boot an image use one contiguous memslot from 0.
    guest_skips_holes: bool = True

    def kwargs(self) -> dict[str, bool]:
        return {
            "prot_virt_host": self.prot_virt_host,
            "async_destroy": self.async_destroy,
            "destroy_fast": self.destroy_fast,
            "guest_skips_holes": self.guest_skips_holes,
        }


@dataclass(frozen=True)
class Check:
    """One registered check: ``fn(ctx)`` plus what it needs and proves."""

    name: str
    fn: Callable[[CheckContext], None]
    proves: str
    spec: str
    needs: tuple[str, ...] = ()
    sim: SimConfig = field(default_factory=SimConfig)
    #: Non-empty: cannot run on a real kernel, and why (fault injection, ...).
    sim_only: str = ""
    #: boots an SE image: on the real kernel only with ``--se-image``
    needs_image: bool = False
    #: upstream fixes (abbreviated commit ids) whose bug this check fails on:
    #: fixtures/regressions/corpus.json names the same check as ``caught_by``
    guards: tuple[str, ...] = ()


_REGISTRY: list[Check] = []


def check(
    name: str,
    *,
    spec: str,
    needs: Sequence[str] = (),
    sim: Optional[SimConfig] = None,
    sim_only: str = "",
    needs_image: bool = False,
    guards: Sequence[str] = (),
) -> Callable[[Callable[[CheckContext], None]], Callable[[CheckContext], None]]:
    """Register ``fn`` as check ``name``; its docstring's first paragraph is what it proves."""

    def register(fn: Callable[[CheckContext], None]) -> Callable[[CheckContext], None]:
        doc = inspect.getdoc(fn) or name
        proves = " ".join(doc.split("\n\n")[0].split())
        if any(c.name == name for c in _REGISTRY):
            raise ValueError(f"duplicate check {name}")
        _REGISTRY.append(
            Check(
                name,
                fn,
                proves,
                spec,
                tuple(needs),
                sim or SimConfig(),
                sim_only,
                needs_image,
                tuple(guards),
            )
        )
        return fn

    return register


def registry() -> tuple[Check, ...]:
    """Every check, in plan order."""
    return tuple(_REGISTRY)


def select(pattern: Sequence[str] = ()) -> tuple[Check, ...]:
    """Checks whose name matches any pattern (substring, or glob with ``*?[``)."""
    if not pattern:
        return registry()
    out = []
    for chk in _REGISTRY:
        for pat in pattern:
            if any(ch in pat for ch in "*?[") and fnmatch.fnmatchcase(chk.name, pat):
                out.append(chk)
                break
            if pat in chk.name:
                out.append(chk)
                break
    if not out:
        raise UsageError(f"no check matches {', '.join(pattern)} (see kvmpv check --list)")
    return tuple(out)


# ---------------------------------------------------------------------------
# The context a check runs in
# ---------------------------------------------------------------------------


class CheckFailed(Exception):
    """Raised by a hard check: the current check stops and fails."""


class CheckSkip(Exception):
    """Raised by ``ctx.skip()``: the current check stops and is reported as SKIP."""


SimFactory = Callable[[SimConfig], Syscalls]


def default_sim_factory(config: SimConfig) -> Syscalls:
    from ..sim import SimulatedHost  # imported lazily: kvm-only runs do not need it

    # Atomic like the real kernel's syscalls: a SIGTERM never lands half-way
    # through a simulated ioctl (the reboot scenario runs it the same way).
    return AtomicSyscalls(SimulatedHost(**config.kwargs()))


class CheckContext:
    """What a check function gets: the backend, checked helpers, soft checks, defer."""

    def __init__(
        self,
        chk: Check,
        backend: str,
        sys: Syscalls,
        facts: HostFacts,
        *,
        perform_memory: int = 128 * MiB,
        image: Optional[SeImage] = None,
    ) -> None:
        self.check = chk
        self.perform_memory = perform_memory
        self.image = image
        self.backend = backend
        self.sys = sys
        self.facts = facts
        self.failures: list[str] = []
        self.diagnostics: list[str] = []
        self._deferred: list[tuple[Callable[..., Any], tuple[Any, ...]]] = []
        # Guest memory is released only after every VM is closed: closing a
        # VM destroys its secure pages (the simulator clears them for real),
        # which must not hit memory that is already unmapped.
        self._late: list[tuple[Callable[..., Any], tuple[Any, ...]]] = []
        # Runs between the two: leak checks while guest memory is still mapped.
        self._settle: list[tuple[Callable[..., Any], tuple[Any, ...]]] = []

    # -- reporting -----------------------------------------------------------

    @property
    def is_sim(self) -> bool:
        return self.backend == "sim"

    @property
    def sim(self) -> Any:
        """The ``SimulatedHost`` (sim backend only), for fault injection and state."""
        if not self.is_sim:
            raise CheckFailed("simulator API used on the real kernel (a bug in the check)")
        return self.sys

    def diag(self, text: str) -> None:
        self.diagnostics.extend(text.splitlines() or [""])

    def _where(self) -> str:
        """``check.py:LINE in FUNC`` of the check code that called a ctx helper."""
        frame = inspect.currentframe()
        caller = frame.f_back if frame is not None else None
        # Walk out of this object's own methods (check_eq -> fail_soft -> ...).
        while caller is not None and caller.f_locals.get("self") is self:
            caller = caller.f_back
        if caller is None:
            return "?"
        code = caller.f_code
        return f"{os.path.basename(code.co_filename)}:{caller.f_lineno} in {code.co_name}"

    def fail_soft(self, message: str) -> None:
        line = f"Check| At {self._where()}: {message}"
        self.failures.append(message)
        self.diag(line)

    def check_true(self, cond: bool, what: str) -> bool:
        if not cond:
            self.fail_soft(what)
        return bool(cond)

    def check_eq(self, actual: Any, expected: Any, what: str) -> bool:
        if actual != expected:
            self.fail_soft(f"{what}: expected {expected!r}, got {actual!r}")
            return False
        return True

    def require(self, cond: bool, what: str) -> None:
        if not cond:
            self.fail_soft(what)
            raise CheckFailed(what)

    def skip(self, reason: str) -> None:
        raise CheckSkip(reason)

    # -- cleanup -------------------------------------------------------------

    def defer(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(*args)`` after the check, LIFO, on pass or fail (ksft ``defer``)."""
        self._deferred.append((fn, args))

    def flush_deferred(self) -> list[str]:
        """Run the deferred cleanup; return one message per cleanup that failed."""
        errors: list[str] = []
        while self._deferred or self._settle or self._late:
            fn, args = (self._deferred or self._settle or self._late).pop()
            try:
                fn(*args)
            except BaseException as exc:
                if isinstance(exc, (KeyboardInterrupt, Interrupted)):
                    # A second signal during cleanup: finish the cleanup
                    # first (retry this step once, like ksft_flush_defer).
                    try:
                        fn(*args)
                    except Exception as again:
                        errors.append(f"{getattr(fn, '__qualname__', fn)}: {again!r}")
                    self.flush_deferred()
                    raise
                errors.append(f"{getattr(fn, '__qualname__', fn)}: {exc!r}")
        return errors

    # -- KVM objects, closed by defer ----------------------------------------

    # Created and deferred with SIGINT/SIGTERM held (see signals_held): a
    # Ctrl-C between the two would leave an fd or a mapping nobody closes.

    def kvm(self) -> Kvm:
        with signals_held():
            kvm = Kvm(self.sys)
            self.defer(kvm.close)
        return kvm

    def vm(self, kvm: Optional[Kvm] = None) -> Vm:
        kvm = kvm or self.kvm()
        with signals_held():
            vm = kvm.vm_create(0)
            self.defer(vm.close)
        return vm

    def memory(self, size: int) -> GuestMemory:
        with signals_held():
            mem = GuestMemory(size, sys=self.sys)  # unmapped through the kernel in use
            self._late.append((mem.close, ()))
        return mem

    def thread(self, target: Callable[[], Any], name: str) -> Worker:
        worker = Worker(target, name)
        self.defer(worker.join_or_fail)
        with signals_held():  # inherited: SIGINT/SIGTERM go to the main thread
            worker.start()
        return worker

    # -- PV commands ---------------------------------------------------------

    def pv(self, vm: Vm, cmd: pv_cmd_id, data: int = 0, *, flags: int = 0) -> PvResult:
        """Issue a PV command (rc/rrc zeroed, EINTR retried) and diag its outcome."""
        res = pv_cmd(vm, cmd, data, flags=flags, check=False)
        flag_text = f" flags={flags:#x}" if flags else ""
        self.diag(f"{cmd.name}{flag_text}: {describe(res)}")
        return res

    def expect(
        self,
        res: PvResult,
        *,
        err: int = 0,
        rc: Optional[int] = None,
        rrc: Optional[int] = None,
    ) -> bool:
        """Soft-check a PV result: errno ``err`` (0 = success) and rc/rrc if given."""
        ok = self.check_eq(errno_text(res.errno), errno_text(err), f"{res.name} ioctl result")
        if rc is not None:
            ok = self.check_eq(hex(res.rc), hex(rc), f"{res.name} rc") and ok
        if rrc is not None:
            ok = self.check_eq(hex(res.rrc), hex(rrc), f"{res.name} rrc") and ok
        return ok

    def require_ok(self, res: PvResult) -> None:
        """Hard-check success: later steps make no sense after a failed setup step."""
        if not res.ok:
            self.fail_soft(f"{res.name} failed: {describe(res)}")
            raise CheckFailed(f"{res.name} failed")

    def pv_raw(
        self,
        vm: Vm,
        cmd: int,
        *,
        data: int = 0,
        flags: int = 0,
        rc: int = RC_SENTINEL,
        rrc: int = RRC_SENTINEL,
    ) -> tuple[int, int, int]:
        """One raw ``KVM_S390_PV_COMMAND`` with rc/rrc preloaded: (-errno or ret, rc, rrc).

        No zeroing, no EINTR retry: this is how a check sees whether the kernel
        wrote rc/rrc at all.
        """
        arg = uapi.kvm_pv_cmd(cmd=cmd, data=data, flags=flags, rc=rc, rrc=rrc)
        ret = vm.pv_ioctl(arg)
        self.diag(f"raw cmd {cmd} flags={flags:#x}: ret {ret}, rc {arg.rc:#x} rrc {arg.rrc:#x}")
        return ret, int(arg.rc), int(arg.rrc)


def errno_text(err: int) -> str:
    return "success" if err == 0 else errno_name(err)


def describe(res: PvResult) -> str:
    what = "ok" if res.ok else errno_text(res.errno)
    return f"{what}, rc {res.rc:#x} rrc {res.rrc:#x}"


class Worker(CompletionThread):
    """A thread whose result or exception the check collects (PERFORM, KVM_RUN).

    ``kick`` is called before joining in cleanup, so that a thread blocked in
    KVM_RUN is made to return (a signal does that for a real vCPU).
    """

    def __init__(self, target: Callable[[], Any], name: str) -> None:
        super().__init__(self._timed, name)
        self._target_fn = target
        self.started_at = 0.0
        self.finished_at = 0.0
        self.kick: Optional[Callable[[], None]] = None

    def _timed(self) -> Any:
        # the check reports the error; CompletionThread keeps it in .error
        self.started_at = time.monotonic()
        try:
            return self._target_fn()
        finally:
            self.finished_at = time.monotonic()

    # Both waits use ``done``, never Thread.join()/is_alive(): on CPython
    # 3.9.8-3.12 a Ctrl-C interrupting join() makes a running thread look
    # stopped (gh-90882), and the check would then close the VM under it.

    def wait(self, timeout: float) -> Any:
        """Wait; raise the thread's exception; CheckFailed if it did not finish."""
        if not self.done.wait(timeout):
            raise CheckFailed(f"thread {self.name} did not finish within {timeout:.0f} s")
        if self.error is not None:
            raise self.error
        return self.result

    def join_or_fail(self) -> None:
        if self.ident is None:
            return  # never started
        if not self.done.is_set() and self.kick is not None:
            self.kick()
        if not self.done.wait(30.0):
            raise RuntimeError(f"thread {self.name} still running after cleanup")


@lru_cache(maxsize=1)
def synthetic_se_image() -> SeImage:
    """kvmpv's synthetic SE image (the simulator's; a real host refuses its header)."""
    return seimage.parse(
        seimage.synthetic_image(s390guest.CODE, s390guest.PSW_MASK_64), "synthetic"
    )


# ---------------------------------------------------------------------------
# Running the registry
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class CheckRequest:
    """What ``kvmpv check`` (or ``kvmpv exercise``) asks for.

    ``sim_factory`` builds the simulated host of each sim check (tests inject
    a deviating simulator through it); ``perform_memory`` sizes the guest of
    the PERFORM-concurrency check.
    """

    backend: str = "auto"
    select: tuple[str, ...] = ()
    sim_factory: Optional[SimFactory] = None
    perform_memory: int = 128 * MiB
    facts: Optional[HostFacts] = None
    #: an SE image for the boot checks on the real kernel (``--se-image``);
    #: the simulator always boots kvmpv's synthetic image
    se_image: Optional[SeImage] = None


@dataclass
class CheckRun:
    """Result of ``run_checks``: the cases plus the host facts that chose the backends."""

    run: RunResult
    backend: str
    facts: HostFacts

    @property
    def exit_code(self) -> int:
        return self.run.exit_code

    @property
    def results(self) -> list[CaseResult]:
        return self.run.cases

    def ktap(self) -> str:
        return ktap.render(self.run)

    def junit(self) -> str:
        return junit.render(self.run)

    def to_dict(self) -> dict[str, Any]:
        out = self.run.to_dict()
        out["backend_mode"] = self.backend
        out["simulated"] = any(c.backend == "sim" for c in self.run.cases)
        out["host"] = self.facts.to_dict()
        return out

    def to_json(self) -> str:
        import json

        return json.dumps(self.to_dict(), indent=2) + "\n"


def plan(checks: Sequence[Check], mode: str, facts: HostFacts) -> list[tuple[Check, str]]:
    """(check, backend) pairs in run order for ``mode``."""
    if mode not in BACKENDS:
        raise UsageError(f"unknown backend {mode!r} (choose from {', '.join(BACKENDS)})")
    out: list[tuple[Check, str]] = []
    for chk in checks:
        if mode == "kvm":
            out.append((chk, "kvm"))
        elif mode == "sim":
            out.append((chk, "sim"))
        elif mode == "both":
            out.extend([(chk, "kvm"), (chk, "sim")])
        else:
            out.append((chk, "sim" if kvm_skip_reason(chk, facts) else "kvm"))
    return out


def header_lines(mode: str, facts: HostFacts, pairs: Sequence[tuple[Check, str]]) -> list[str]:
    lines = [
        f"kvmpv check: backend {mode}; host {facts.arch}, Linux {facts.kernel}",
    ]
    if facts.kvm_usable:
        lines.append(
            f"real kernel: /dev/kvm caps 180={facts.cap_protected} 217={facts.cap_dump} "
            f"224={facts.cap_async}, kvm.async_destroy={facts.async_destroy_param}"
        )
    else:
        lines.append(f"real kernel: /dev/kvm unusable: {facts.kvm_error}")
    n_kvm = sum(1 for _, b in pairs if b == "kvm")
    n_sim = len(pairs) - n_kvm
    lines.append(f"{n_kvm} result(s) from the real kernel, {n_sim} from the simulator (sim)")
    if n_sim and mode in ("auto", "sim", "both"):
        if mode == "auto":
            why = facts.pv_reason()
            if why:
                lines.append(f"simulator used for the PV checks because: {why}")
            lines.append(
                "simulator used for fault injection, fatal signals, a running protected "
                "guest and PERFORM held mid-walk, which a real kernel cannot provide to kvmpv"
            )
        else:
            lines.append(f"simulator requested (--backend {mode})")
    return lines


def run_checks(
    req: CheckRequest,
    *,
    stream: Optional[TextIO] = None,
    progress: Optional[Callable[[str], None]] = None,
) -> CheckRun:
    """Run the selected checks; stream KTAP to ``stream`` as they finish.

    SIGTERM (``Interrupted``) or SIGINT (``KeyboardInterrupt``) during a check
    runs that check's deferred cleanup, prints ``Bail out!`` and the totals,
    and re-raises.
    """
    checks = select(req.select)
    facts = req.facts or probe_facts()
    pairs = plan(checks, req.backend, facts)
    header = header_lines(req.backend, facts, pairs)
    result = RunResult(
        suite="kvmpv.check",
        header=header,
        planned=len(pairs),
        properties={
            "backend_mode": req.backend,
            "arch": facts.arch,
            "kernel_release": facts.kernel,
            "pv_reason": facts.pv_reason() or "none: PV async usable",
        },
    )
    writer = ktap.KtapWriter(stream) if stream is not None else None
    if writer is not None:
        writer.header()
        writer.plan(len(pairs))
        for line in header:
            writer.diag(line)
    started = time.monotonic()
    try:
        for chk, backend in pairs:
            if progress is not None:
                progress(f"{backend}: {chk.name}")
            case = run_one(chk, backend, facts, req)
            result.cases.append(case)
            if writer is not None:
                writer.result(case)
    except (Interrupted, KeyboardInterrupt) as exc:
        signo = exc.signo if isinstance(exc, Interrupted) else 2
        result.bail_out = f"interrupted by signal {signo}, cleanup done"
        result.interrupted = True
        result.duration_s = time.monotonic() - started
        if writer is not None:
            writer.bail_out(result.bail_out)
            writer.totals()
        # What ran so far travels with the signal, for the report files.
        exc.check_run = CheckRun(result, req.backend, facts)  # type: ignore[union-attr]
        raise
    result.duration_s = time.monotonic() - started
    if writer is not None:
        writer.totals()
    return CheckRun(result, req.backend, facts)


def run_one(chk: Check, backend: str, facts: HostFacts, req: CheckRequest) -> CaseResult:
    """Run one check on one backend and judge it (never raises, except on signals)."""
    case = CaseResult(name=chk.name, status=Status.PASS, backend=backend)
    case.properties["spec"] = chk.spec
    if chk.guards:
        # the upstream fixes this check guards, so a JUnit/JSON/KCIDB result names them
        case.properties["guards"] = ",".join(chk.guards)
    if backend == "kvm":
        reason = kvm_skip_reason(chk, facts)
        if reason:
            case.status, case.reason = Status.SKIP, reason
            return case
        sys_: Syscalls = LINUX
    else:
        try:
            sys_ = (req.sim_factory or default_sim_factory)(chk.sim)
        except ImportError as err:
            case.status, case.reason = Status.ERROR, f"simulator unavailable: {err}"
            return case
    image = synthetic_se_image() if backend == "sim" else req.se_image
    if chk.needs_image and image is None:
        case.status = Status.SKIP
        case.reason = "needs an SE image made for this host: kvmpv check --se-image FILE"
        return case
    ctx = CheckContext(chk, backend, sys_, facts, perform_memory=req.perform_memory, image=image)
    if backend == "sim":
        ctx._settle.append((_sim_no_leftovers, (ctx,)))
    t0 = time.monotonic()
    status, reason = Status.PASS, ""
    try:
        try:
            chk.fn(ctx)
        except CheckSkip as skip:
            status, reason = Status.SKIP, str(skip)
        except CheckFailed as failed:
            status, reason = Status.FAIL, str(failed)
        except HostError:
            # The host cannot run checks at all (s390x without PGSTE: no VM
            # can be created): stop the run with exit 3, no FAIL verdict.
            raise
        except (KvmpvError, AssertionError) as err:  # never Interrupted (a BaseException)
            ctx.diag(f"Exception| {type(err).__name__}: {err}")
            status, reason = Status.FAIL, str(err)
        except Exception as err:  # a bug in the check or the backend, not a verdict
            for line in traceback.format_exc().rstrip().splitlines():
                ctx.diag(f"Exception| {line}")
            status, reason = Status.ERROR, f"{type(err).__name__}: {err}"
    finally:
        cleanup_errors = ctx.flush_deferred()
        case.duration_s = time.monotonic() - t0
    for msg in cleanup_errors:
        ctx.diag(f"Cleanup| {msg}")
    # Diagnostics carry the backend too: a simulated rc/rrc quoted from a CI
    # log must not pass for the real kernel's.
    case.diagnostics = [f"{backend}: {line}" for line in ctx.diagnostics]
    if cleanup_errors and status in (Status.PASS, Status.SKIP):
        status, reason = Status.FAIL, f"cleanup failed: {cleanup_errors[0]}"
    if status is Status.PASS and ctx.failures:
        status, reason = Status.FAIL, ctx.failures[0]
    if status is Status.SKIP and ctx.failures:
        status, reason = Status.FAIL, ctx.failures[0]
    case.status, case.reason = status, reason
    return case


def _sim_no_leftovers(ctx: CheckContext) -> None:
    """After a sim check's cleanup: every simulator fd closed (else close them and fail)."""
    host = ctx.sys
    open_fds = getattr(host, "open_fds", None)
    if open_fds is None:
        return
    left = int(open_fds())
    if left:
        host.close_all()  # type: ignore[attr-defined]
        raise RuntimeError(f"{left} simulator fd(s) left open by the check")


def describe_checks(facts: HostFacts, checks: Sequence[Check] = ()) -> Iterator[str]:
    """``--list`` lines: name, where it runs here, what it proves."""
    for chk in checks or registry():
        kvm_reason = kvm_skip_reason(chk, facts)
        where = "kvm+sim" if not kvm_reason else "sim"
        yield f"{chk.name:<36} {where:<8} [{chk.spec}] {chk.proves}"
        if kvm_reason:
            yield f"{'':<36} {'':<8} real kernel: {kvm_reason}"
        if chk.guards:
            yield f"{'':<36} {'':<8} guards: {', '.join(chk.guards)}"
