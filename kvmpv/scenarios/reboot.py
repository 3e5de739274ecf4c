# SPDX-License-Identifier: GPL-2.0-only
"""Protected-VM reboot, async (PREPARE + PERFORM on a thread) vs sync (DISABLE).

The scenario behind ``kvmpv reboot`` and ``kvmpv exercise``: set up a
protected VM the way QEMU does on s390x (memory limit = RAM size before the
first vCPU, memslots, vCPUs, ``KVM_PV_ENABLE``, the vCPUs started with LOAD and
OPERATING), let the guest make its memory secure by running its vCPUs until it
finishes (``kvmpv.runner``: on s390 a disabled-wait SIEIC exit), then reboot it
K times with ``kvmpv.pv.s390_machine_unprotect()`` -- QEMU 10's algorithm --,
the CPU resets of QEMU's ``s390_machine_reset()`` and a new ``KVM_PV_ENABLE``,
measuring each reboot.  It may touch: the KVM backend
it selects (real ``/dev/kvm`` or ``kvmpv.sim.SimulatedHost``), anonymous
guest memory, threads it starts and joins (one per vCPU, named ``CPU n/KVM``
as in QEMU, plus ``async_cleanup``), and private cgroups below our own
(``kvmpv.accounting``), all released before it returns, also on SIGINT.

What one cycle measures (all ``time.monotonic_ns``):

* ``reboot_latency_s``: reboot request (vCPUs are asked to leave KVM_RUN) to
  the new protected configuration enabled with its vCPUs, ready to run.
* ``perform_s``: the PERFORM ioctl on the ``async_cleanup`` thread (null for
  sync reboots).
* ``overlap_s``: how long the new guest ran -- some vCPU thread inside
  KVM_RUN -- while PERFORM was still tearing the old configuration down (the
  whole point of the async path; 0 for sync reboots).
* ``cleanup_cpu_s``: CPU time of the teardown: the synchronous part in the
  control thread (PREPARE, or DISABLE) plus the ``async_cleanup`` thread's
  CLOCK_THREAD_CPUTIME_ID measured inside that thread.
* ``verdict``: was that CPU charged to the VM's cgroup?  See
  ``kvmpv.accounting.TeardownAccounting``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from ..accounting import (
    TOTALS_TOLERANCE_NS,
    Outcome,
    TeardownAccounting,
    Verdict,
    judge_charged,
    skip_verdict,
)
from ..closing import signals_held
from ..errors import HostError, Interrupted, KvmpvError, UsageError
from ..kvm import Kvm, Vm
from ..memory import GuestMemory, mem_available
from ..pv import (
    AsyncCleanup,
    ProtectedBoot,
    PvResult,
    Unprotect,
    live_cleanups,
    load_image,
    payload_end,
    pv_enable,
    s390_machine_protect,
    s390_machine_unprotect,
)
from ..runner import VcpuGroup, reset_vcpus
from ..s390guest import CODE as PAYLOAD_CODE
from ..s390guest import PSW_MASK_64
from ..seimage import SeImage, load, parse, synthetic_image
from ..stats import median
from ..syscalls import LINUX, AtomicSyscalls, Syscalls
from ..uapi import S390_MEMSLOT_ALIGN, KvmCap
from ..units import GiB, format_size
from .probe import probe_host

Progress = Optional[Callable[[str], None]]

BACKENDS = ("auto", "kvm", "sim")
MODES = ("async", "sync", "both")
#: where the teardown work is placed: "vm" is the real check; "elsewhere" is
#: the negative control (work done outside the VM's cgroup -> "not charged").
CHARGE_TO = ("vm", "elsewhere")
#: QEMU's S390_MAX_CPUS
MAX_VCPUS = 248


@dataclass(frozen=True)
class RebootRequest:
    """What ``run_reboot`` should do (``kvmpv reboot`` options).

    ``layout`` (debug/tests): memslots as ``(guest address, size)`` pairs
    instead of one slot ``[0, memory)``; lets a test put a little memory above
    2 GiB (which only PERFORM tears down) without allocating gigabytes.
    ``mem_limit`` defaults to the end of guest memory (QEMU sets
    KVM_S390_VM_MEM_LIMIT_SIZE to at least the RAM size).  ``host`` injects a
    prepared backend (a ``SimulatedHost`` with faults, in tests).
    ``guest_during_perform=False`` keeps the new guest paused until PERFORM
    has finished: the cleanup's own CPU without the memory-bandwidth
    contention of a guest touching its memory on the other CPU (measured at
    12G on 2 CPUs: PERFORM CPU +50% with the guest running), at the price of
    no overlap -- the point of async reboot -- so it is a measurement aid.
    ``warmup``: reboots (per mode) run before the measured cycles, reported
    apart (``warmup_cycles``) and left out of the medians: the first reboot
    after the initial boot is slower whatever its mode (12G, simulator, on
    this project's machines: 0.34 s of cleanup CPU against 0.21-0.23 s for
    the next sync reboots), and ``both`` always starts with async, so without
    a warm-up that one-off cost always lands on the async side.  A C program
    shows the same on these machines (its first pass over 4 GiB after they
    were first touched on the other CPU: 0.21 s, later passes 0.14-0.15 s),
    so the cost is the host's, not the simulator's.
    """

    backend: str = "auto"
    memory: int = 4 * GiB
    vcpus: int = 1
    cycles: int = 3
    warmup: int = 0
    mode: str = "both"
    mem_limit: Optional[int] = None
    layout: Optional[tuple[tuple[int, int], ...]] = None
    hierarchy: str = "auto"
    charge_to: str = "vm"
    boot_timeout_s: float = 600.0
    guest_during_perform: bool = True
    #: an SE image (``pvimg create`` output) to boot on every cycle; on the
    #: simulator, None boots the synthetic image (``kvmpv.seimage``)
    se_image: Optional[str] = None
    host: Optional[Syscalls] = field(default=None, compare=False, repr=False)

    def slots(self) -> tuple[tuple[int, int], ...]:
        return self.layout if self.layout is not None else ((0, self.memory),)

    def memory_bytes(self) -> int:
        return sum(size for _, size in self.slots())

    def memory_end(self) -> int:
        return max(gpa + size for gpa, size in self.slots())

    def modes(self, cycles: Optional[int] = None) -> list[str]:
        """The mode of each cycle; ``both`` interleaves so noise hits both alike."""
        n = self.cycles if cycles is None else cycles
        if self.mode == "both":
            return [("async", "sync")[i % 2] for i in range(2 * n)]
        return [self.mode] * n


def validate(req: RebootRequest) -> None:
    """Raise ``UsageError`` for anything the kernel would refuse or we cannot do."""
    if req.backend not in BACKENDS:
        raise UsageError(f"backend must be one of {', '.join(BACKENDS)}, not {req.backend!r}")
    if req.mode not in MODES:
        raise UsageError(f"mode must be one of {', '.join(MODES)}, not {req.mode!r}")
    if req.charge_to not in CHARGE_TO:
        raise UsageError(f"charge_to must be one of {', '.join(CHARGE_TO)}")
    if not 1 <= req.vcpus <= MAX_VCPUS:
        raise UsageError(f"vcpus must be 1..{MAX_VCPUS}, not {req.vcpus}")
    if req.cycles < 1:
        raise UsageError(f"cycles must be at least 1, not {req.cycles}")
    if req.warmup < 0:
        raise UsageError(f"warmup must be 0 or more, not {req.warmup}")
    if req.boot_timeout_s <= 0:
        raise UsageError("boot timeout must be positive")
    slots = sorted(req.slots())
    if not slots:
        raise UsageError("no guest memory")
    end = 0
    for gpa, size in slots:
        # s390: memslot address and size 1 MiB aligned (kvm_arch_prepare_memory_region)
        if size <= 0 or size % S390_MEMSLOT_ALIGN or gpa < 0 or gpa % S390_MEMSLOT_ALIGN:
            raise UsageError(
                f"guest memory {format_size(size)} at {gpa:#x}: size and address must be "
                "positive multiples of 1M (s390 memslot alignment)"
            )
        if gpa < end:
            raise UsageError(f"memslot at {gpa:#x} overlaps the previous one")
        end = gpa + size
    if req.mem_limit is not None and req.mem_limit < end:
        raise UsageError(
            f"memory limit {format_size(req.mem_limit)} is below the end of guest memory "
            f"{format_size(end)}"
        )


# --------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------


def _s(ns: Optional[int]) -> Optional[float]:
    return None if ns is None else round(ns / 1e9, 6)


@dataclass
class CycleRecord:
    """One reboot.  ``mode`` is the path taken; ``requested_mode`` what was asked."""

    index: int
    requested_mode: str
    backend: str
    mode: str = ""
    #: a warm-up reboot: reported, never in the medians
    warmup: bool = False
    fallback_reason: str = ""
    latency_ns: int = 0
    pause_ns: int = 0
    sync_ns: int = 0
    sync_cpu_ns: int = 0
    enable_ns: int = 0
    perform_ns: Optional[int] = None
    perform_cpu_ns: Optional[int] = None
    thread_cpu_ns: int = 0
    overlap_ns: Optional[int] = None
    boot_ns: Optional[int] = None
    guest_cpu_ns: Optional[int] = None
    #: the protected boot of this cycle (None: no image is booted)
    boot: Optional[ProtectedBoot] = None
    #: the verified image's guest ran to its end, making its memory secure
    secure_memory: bool = False
    verdict: Verdict = field(default_factory=lambda: skip_verdict("not measured"))
    prepare: Optional[PvResult] = None
    disable: Optional[PvResult] = None
    perform: Optional[PvResult] = None
    perform_error: str = ""
    perform_interrupted: bool = False
    cleanup_tid: int = 0
    cleanup_comm: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def cleanup_cpu_ns(self) -> int:
        return self.sync_cpu_ns + self.thread_cpu_ns

    def to_dict(self) -> dict[str, Any]:
        def rc(r: Optional[PvResult]) -> Optional[dict[str, object]]:
            return r.to_dict() if r is not None else None

        return {
            "cycle": self.index,
            "warmup": self.warmup,
            "mode": self.mode,
            "requested_mode": self.requested_mode,
            "fallback_reason": self.fallback_reason or None,
            "backend": self.backend,
            "simulated": self.backend == "sim",
            "reboot_latency_s": _s(self.latency_ns),
            "pause_s": _s(self.pause_ns),
            "sync_teardown_s": _s(self.sync_ns),
            "enable_s": _s(self.enable_ns),
            "perform_s": _s(self.perform_ns),
            "overlap_s": _s(self.overlap_ns),
            "boot_s": _s(self.boot_ns),
            "boot": self.boot.to_dict() if self.boot is not None else None,
            "secure_memory": self.secure_memory,
            "cleanup_cpu_s": _s(self.cleanup_cpu_ns),
            "sync_cpu_s": _s(self.sync_cpu_ns),
            "perform_cpu_s": _s(self.perform_cpu_ns),
            "cleanup_thread_cpu_s": _s(self.thread_cpu_ns) if self.mode == "async" else None,
            "guest_cpu_s": _s(self.guest_cpu_ns),
            "verdict": self.verdict.outcome.value,
            "verdict_detail": self.verdict.to_dict(),
            "prepare": rc(self.prepare),
            "disable": rc(self.disable),
            "perform": rc(self.perform),
            "perform_error": self.perform_error or None,
            "perform_interrupted": self.perform_interrupted,
            "cleanup_thread": (
                {"tid": self.cleanup_tid, "comm": self.cleanup_comm} if self.cleanup_tid else None
            ),
            "notes": list(self.notes),
        }


@dataclass
class RebootResult:
    """Everything ``run_reboot`` measured; ``to_dict()`` is the JSON contract."""

    backend: str
    backend_reason: str
    memory_bytes: int
    mem_limit_bytes: int
    vcpus: int
    requested_mode: str
    slots: list[tuple[int, int]]
    cycles: list[CycleRecord] = field(default_factory=list)
    warmup_cycles: list[CycleRecord] = field(default_factory=list)
    accounting: dict[str, Any] = field(default_factory=dict)
    guest_runs: bool = True
    image: Optional[dict[str, Any]] = None
    #: stopped by this signal (the cycles are those that finished before it)
    interrupted: Optional[int] = None
    notes: list[str] = field(default_factory=list)

    @property
    def simulated(self) -> bool:
        return self.backend == "sim"

    @property
    def label(self) -> str:
        return "[sim]" if self.simulated else "[kvm]"

    def summary(self) -> dict[str, Any]:
        """Medians per path taken, and the async/sync ratios."""
        out: dict[str, Any] = {}
        for mode in ("async", "sync"):
            recs = [c.to_dict() for c in self.cycles if c.mode == mode]
            if not recs:
                continue
            out[mode] = {
                "cycles": len(recs),
                **{
                    key: median([r[key] for r in recs])
                    for key in (
                        "reboot_latency_s",
                        "perform_s",
                        "overlap_s",
                        "cleanup_cpu_s",
                        "sync_cpu_s",
                        "perform_cpu_s",
                    )
                },
                "verdicts": sorted({r["verdict"] for r in recs}),
            }
        a, s = out.get("async"), out.get("sync")
        if a and s and s["reboot_latency_s"]:
            out["async_over_sync_latency"] = round(a["reboot_latency_s"] / s["reboot_latency_s"], 4)
        if a and s and s["cleanup_cpu_s"]:
            out["async_over_sync_cleanup_cpu"] = round(a["cleanup_cpu_s"] / s["cleanup_cpu_s"], 4)
        return out

    @property
    def failures(self) -> list[str]:
        """Why the run must exit 1: a PERFORM error, or a verdict that is not charged."""
        out = []
        for c in [*self.warmup_cycles, *self.cycles]:
            name = f"warm-up {c.index}" if c.warmup else f"cycle {c.index}"
            if c.perform_error:
                out.append(f"{name}: PERFORM failed: {c.perform_error}")
            if c.verdict.outcome in (Outcome.NOT_CHARGED, Outcome.INCONCLUSIVE):
                out.append(f"{name}: verdict {c.verdict.outcome}: {c.verdict.reason}")
        return out

    @property
    def exit_code(self) -> int:
        return 1 if self.failures else 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "simulated": self.simulated,
            "backend_reason": self.backend_reason,
            "memory_bytes": self.memory_bytes,
            "mem_limit_bytes": self.mem_limit_bytes,
            "vcpus": self.vcpus,
            "mode": self.requested_mode,
            "memslots": [{"gpa": g, "size": s} for g, s in self.slots],
            "guest_runs": self.guest_runs,
            "image": self.image,
            "interrupted": self.interrupted,
            "accounting": dict(self.accounting),
            "cycles": [c.to_dict() for c in self.cycles],
            "warmup_cycles": [c.to_dict() for c in self.warmup_cycles],
            "summary": self.summary(),
            "failures": self.failures,
            "notes": list(self.notes),
        }


# --------------------------------------------------------------------------
# Backend selection
# --------------------------------------------------------------------------


def _probe_pv_async() -> tuple[bool, str]:
    """(usable, reason) as ``kvmpv probe`` answers it."""
    try:
        probe = probe_host()
    except (KvmpvError, OSError) as exc:
        return False, f"kvmpv probe failed: {exc}"
    return bool(probe.pv_async_usable), str(probe.pv_reason or "")


def select_backend(req: RebootRequest) -> tuple[Syscalls, str]:
    """The syscall backend and a sentence saying why it was chosen."""
    if req.host is not None:
        return req.host, f"backend object supplied by the caller ({req.host.backend})"
    if req.backend == "kvm":
        return LINUX, "--backend kvm"
    if req.backend == "auto":
        usable, reason = _probe_pv_async()
        if usable:
            return LINUX, "auto: kvmpv probe says PV with async destroy is usable"
        why = f"auto: real PV async destroy not usable here ({reason}); using the simulator"
    else:
        why = "--backend sim"
    from ..sim import SimulatedHost

    if layout_hole(req.slots()) is not None:
        # The debug layouts put a little memory above 2 GiB without the 2 GiB
        # below; a real protected guest cannot run on them (see layout_hole).
        why += "; the simulated guest skips the memslot hole (a real one would fail KVM_RUN)"
        return SimulatedHost(guest_skips_holes=True), why
    return SimulatedHost(), why


def layout_hole(slots: Sequence[tuple[int, int]]) -> Optional[tuple[int, int]]:
    """The first gap ``(start, end)`` below the highest memslot end, None if memory is one
    contiguous range from 0.

    A protected guest needs that: the UV's guest length is the end of the
    highest memslot (``kvm_s390_pv_alloc_vm()``), a guest that probes its
    memory (kvmpv's payload, Linux) stores into the hole, and the addressing
    exception KVM would have to inject is refused for a protected guest
    (``__deliver_prog_pv()``): ``KVM_RUN`` fails with EINVAL.
    """
    reached = 0
    for gpa, size in sorted(slots):
        if gpa > reached:
            return reached, gpa
        reached = max(reached, gpa + size)
    return None


# --------------------------------------------------------------------------
# Accounting: who paid for the teardown?
# --------------------------------------------------------------------------


# --------------------------------------------------------------------------
# The scenario
# --------------------------------------------------------------------------


def _image_for(req: RebootRequest, backend: str) -> Optional[SeImage]:
    """The image every cycle boots: ``--se-image``, else the synthetic one on the simulator."""
    if req.se_image:
        return load(Path(req.se_image))
    if backend == "sim":
        return parse(synthetic_image(PAYLOAD_CODE, PSW_MASK_64), "synthetic")
    return None


def _steps_line(boot: ProtectedBoot) -> str:
    return ", ".join(
        f"{s.step} {'ok' if s.ok else 'FAILED'} {s.seconds * 1e3:.2f} ms" for s in boot.steps
    )


def _check_memory(req: RebootRequest) -> None:
    need = req.memory_bytes()
    avail = mem_available()
    if avail and need > avail:
        raise HostError(
            f"guest memory {format_size(need)} exceeds MemAvailable {avail / GiB:.1f}G; "
            "use a smaller --memory"
        )


def run_reboot(req: RebootRequest, progress: Progress = None) -> RebootResult:
    """Set up a protected VM, reboot it ``req.cycles`` times (per mode), measure each."""
    validate(req)
    _check_memory(req)
    sys_, why = select_backend(req)
    backend = sys_.backend
    if sys_ is not LINUX:
        sys_ = AtomicSyscalls(sys_)
    label = f"[{backend}]"

    def say(msg: str) -> None:
        if progress is not None:
            progress(f"{label} {msg}")

    slots = list(req.slots())
    limit = req.mem_limit if req.mem_limit is not None else req.memory_end()
    result = RebootResult(
        backend=backend,
        backend_reason=why,
        memory_bytes=req.memory_bytes(),
        mem_limit_bytes=limit,
        vcpus=req.vcpus,
        requested_mode=req.mode,
        slots=slots,
    )
    image = _image_for(req, backend)
    hole = layout_hole(slots)
    if hole is not None and image is not None:
        if backend != "sim":
            raise UsageError(
                f"memslot layout has a hole at {hole[0]:#x}-{hole[1]:#x}: a protected guest "
                "needs one contiguous memslot from 0 (its first store there would make KVM_RUN "
                "fail with EINVAL, __deliver_prog_pv())"
            )
        result.notes.append(
            f"SIMULATED ONLY: the memslot layout has a hole at {hole[0]:#x}-{hole[1]:#x}; the "
            "simulated guest skips it, a real protected guest would fail KVM_RUN with EINVAL"
        )
    result.guest_runs = image is not None
    result.image = image.to_dict() if image is not None else None
    if image is None:
        result.notes.append(
            "real KVM without --se-image: no Secure Execution image is booted, so the vCPUs "
            "are not run and NO guest memory is secure; latency and PERFORM cover the "
            "configuration only (secure_memory: false in every cycle), overlap is not measured"
        )
    elif image.synthetic:
        result.notes.append(f"every cycle boots the {image.label} (kvmpv's, not pvimg's)")
    say(why)
    stack = ExitStack()
    cleanups: list[AsyncCleanup] = []
    guest: Optional[VcpuGroup] = None
    vm: Optional[Vm] = None
    try:
        acct = TeardownAccounting(stack, req.hierarchy, req.charge_to)
        result.accounting = acct.to_dict()
        if not acct.usable:
            say(f"accounting verdict will be SKIP: {acct.reason}")
        # Each handle is created and registered for cleanup with SIGINT/SIGTERM
        # held (see signals_held): an interrupt in between would leak it.
        with signals_held():
            kvm = Kvm(sys_)
            stack.callback(kvm.close)
        if not kvm.has_cap(KvmCap.KVM_CAP_S390_PROTECTED):
            # Cap 224 may be absent (that is the sync fallback), cap 180 not.
            raise HostError(
                f"{backend}: KVM_CAP_S390_PROTECTED (180) is 0: no protected "
                "virtualization on this host; use --backend sim (or auto)"
            )
        memories = []
        for _gpa, size in slots:
            # unmapped through the backend: the simulator orders it against its page walks
            # registered before the VM so that it is unmapped after the VM closed
            with signals_held():
                mem = GuestMemory(size, sys=sys_)
                memories.append(mem)
                stack.callback(mem.close)
        vm = kvm.vm_create(0)
        # QEMU sets the limit to (at least) the RAM size, before any vCPU
        # exists (EBUSY afterwards); <= 2 GiB gives a segment ASCE.
        vm.s390_set_mem_limit(limit)
        for i, ((gpa, _), mem) in enumerate(zip(slots, memories)):
            vm.set_user_memory_region(i, gpa, mem.size, mem.addr)
        vcpus = [vm.vcpu_add(i) for i in range(req.vcpus)]
        if result.guest_runs:
            # Only the IPL CPU runs: the protected boot starts it alone, as QEMU
            # does; the others stay STOPPED (the payload starts no CPU).
            guest = VcpuGroup()
            guest.add(vcpus[:1])
        say(
            f"protected VM: {format_size(result.memory_bytes)} in {len(slots)} memslot(s), "
            f"limit {format_size(limit)}, {req.vcpus} vCPU(s)"
        )
        if guest is not None and image is not None:
            t0 = time.monotonic_ns()
            # The protected boot as QEMU does it; it ends with the vCPUs started
            # (LOAD, OPERATING): any PV command left them STOPPED to userspace.
            reset_vcpus(vcpus)
            load_image(vm, image)
            first = s390_machine_protect(vm, image, vcpus)
            say(f"protected boot of the {image.label}: {_steps_line(first)}")
            guest.resume()
            guest.wait_finished(req.boot_timeout_s)
            end = payload_end(first, vcpus[0])  # GuestEndError unless the payload's own end
            say(
                f"guest booted (all memory secure) in {(time.monotonic_ns() - t0) / 1e9:.2f}s, "
                f"{end.describe()}"
            )
        else:
            pv_enable(vm)
        for warmup, modes, records in (
            (True, req.modes(req.warmup), result.warmup_cycles),
            (False, req.modes(), result.cycles),
        ):
            for index, mode in enumerate(modes, 1):
                rec = _reboot_once(
                    vm, guest, image, acct, cleanups, index, mode, backend, limit, req
                )
                rec.warmup = warmup
                records.append(rec)
                say(format_cycle(rec, len(modes)))
        note = judge_against_sync_baseline(result.cycles + result.warmup_cycles)
        if note:
            result.notes.append(note)
        result.accounting = acct.to_dict()  # placement may have failed on the way
    except BaseException as exc:
        # Already failing (or interrupted): clean up, report what cleanup hit,
        # but let the original exception decide the exit code (130 on SIGINT).
        with signals_held():
            try:
                _teardown(guest, cleanups, vm, stack)
            except BaseException as cleanup_exc:
                say(f"cleanup after {type(exc).__name__} also failed: {cleanup_exc}")
        if isinstance(exc, (Interrupted, KeyboardInterrupt)):
            # What ran travels with the signal, for --json (commands/reboot.py).
            result.interrupted = exc.signo if isinstance(exc, Interrupted) else 2
            exc.reboot_result = result  # type: ignore[union-attr]
        raise
    with signals_held():
        _teardown(guest, cleanups, vm, stack)
    return result


def _teardown(
    guest: Optional[VcpuGroup], cleanups: list[AsyncCleanup], vm: Optional[Vm], stack: ExitStack
) -> None:
    """vCPU threads out and gone, PERFORM threads joined, VM closed, memory and cgroups freed.

    The order matters: PERFORM and the vCPUs use the VM (and the simulator
    clears guest memory from them), so they go first; the VM fd is closed
    before its memory is unmapped; the cgroups go last, once every thread
    that was placed in them has exited.
    """
    first: Optional[BaseException] = None
    if guest is not None:
        try:
            guest.close()
        except BaseException as exc:
            first = exc
    # Every PERFORM has returned before the VM fd is closed and its memory
    # unmapped: PERFORM must never outlive them (the fd number could be
    # reused by the next open, and the walk works on that memory).  A thread
    # only the registry knows (SIGINT between thread start and our
    # bookkeeping) is joined too.  An interrupt arriving between two joins
    # (it can, in a process whose other threads do not block SIGINT) is held
    # back like one arriving inside a join: the loop goes on until every
    # join has completed.
    while True:
        try:
            for cleanup in [*cleanups, *live_cleanups()]:
                try:
                    cleanup.join_uninterrupted()
                except (KeyboardInterrupt, Interrupted):
                    raise
                except BaseException as exc:  # not a signal: retrying would repeat it forever
                    first = first or exc
            break
        except (KeyboardInterrupt, Interrupted) as exc:
            first = first or exc
    if vm is not None:
        try:
            vm.close()
        except BaseException as exc:
            first = first or exc
    try:
        stack.close()
    except BaseException as exc:
        first = first or exc
    if first is not None:
        raise first


def _reboot_once(
    vm: Vm,
    guest: Optional[VcpuGroup],
    image: Optional[SeImage],
    acct: TeardownAccounting,
    cleanups: list[AsyncCleanup],
    index: int,
    mode: str,
    backend: str,
    limit: int,
    req: RebootRequest,
) -> CycleRecord:
    rec = CycleRecord(index, mode, backend)
    t_req = time.monotonic_ns()
    if guest is not None:
        guest.pause()
    t_paused = time.monotonic_ns()
    acct.begin()
    try:
        up: Unprotect = s390_machine_unprotect(
            vm,
            allow_async=mode == "async",
            mem_limit=limit,
            on_cleanup_start=acct.place_cleanup,
        )
    finally:
        acct.end_sync()
    if up.cleanup is not None:
        cleanups.append(up.cleanup)
    t_enable = time.monotonic_ns()
    if guest is not None and image is not None:
        # QEMU's s390_machine_reset(): CPU resets (STOPPED, NORMAL for the IPL
        # CPU, CLEAR for the others) after the unprotect, the image loaded
        # again, then the protected boot -- all on the reboot path, as in QEMU.
        reset_vcpus(vm.vcpus)
        load_image(vm, image)
        rec.boot = s390_machine_protect(vm, image, vm.vcpus)
    else:
        pv_enable(vm)
    t_ready = time.monotonic_ns()
    guest_cpu0 = guest.cpu_ns() if guest is not None else 0
    # Normally the new guest runs at once, while PERFORM tears the old one
    # down (that overlap is what async reboot buys); the measurement aid
    # holds it until PERFORM is done.
    hold_guest = up.cleanup is not None and not req.guest_during_perform
    if guest is not None and not hold_guest:
        guest.resume()

    rec.mode = up.path
    rec.fallback_reason = up.reason if mode == "async" else ""
    rec.prepare, rec.disable = up.prepare, up.disable
    rec.notes.extend(up.notes)
    rec.latency_ns = t_ready - t_req
    rec.pause_ns = t_paused - t_req
    rec.sync_ns = up.sync_ns
    rec.sync_cpu_ns = up.sync_cpu_ns
    rec.enable_ns = t_ready - t_enable

    if up.cleanup is not None:
        up.cleanup.join_uninterrupted()
        cleanups.remove(up.cleanup)
        out = up.cleanup.outcome
        rec.perform_ns = out.perform_ns
        rec.perform_cpu_ns = out.perform_cpu_ns
        rec.thread_cpu_ns = out.cpu_ns
        rec.perform = out.result
        rec.perform_interrupted = out.interrupted
        rec.cleanup_tid, rec.cleanup_comm = out.tid, out.comm
        if out.error is not None:
            rec.perform_error = str(out.error)
        if out.on_start_error is not None:
            rec.notes.append(f"cleanup thread setup: {out.on_start_error}")
        if guest is not None:
            rec.overlap_ns = guest.running_overlap_ns(out.perform_start_ns, out.perform_end_ns)
            if hold_guest:
                guest.resume()
    elif guest is not None:
        rec.overlap_ns = 0
    if guest is not None:
        guest.wait_finished(req.boot_timeout_s)
        if rec.boot is not None:
            # Success is the payload's own end, not any disabled wait (a
            # stage3b panic is one too): GuestEndError otherwise.
            payload_end(rec.boot, vm.vcpus[0])
        rec.secure_memory = rec.boot is not None and rec.boot.verified
        rec.boot_ns = time.monotonic_ns() - t_ready
        rec.guest_cpu_ns = guest.cpu_ns() - guest_cpu0
    rec.verdict = acct.verdict(rec.cleanup_cpu_ns)
    return rec


def judge_against_sync_baseline(cycles: list[CycleRecord]) -> str:
    """The async cycles' verdicts, held against work measured without them.

    Why: a cycle's verdict compares the VM cgroup's counter with the CPU
    clocks of the very threads kvmpv placed in it, so a kernel that did
    PERFORM's clearing in a kworker (outside every cgroup kvmpv made) would
    shrink both sides together and still read "charged" -- of the little the
    placed threads did.  A synchronous teardown of the same VM in the same
    run (DISABLE clears everything in the calling thread) is the independent
    measure, as ``kvmpv shutdown`` judges its cleaner against its sync runs.
    When the VM cgroup saw no more than the not-charged band of that
    baseline, the teardown ran elsewhere whatever the threads' clocks say:
    NOT_CHARGED.  Otherwise the same-run verdict stands (precise, same
    cycle; a baseline from other cycles is noisier: one sync cycle once cost
    0.45x another on 2 busy CPUs, too noisy for the charged band).

    Returns a note for the run (empty when every async cycle was held
    against a baseline, or there was none to judge).
    """
    sync = [c.cleanup_cpu_ns for c in cycles if c.mode == "sync" and not c.warmup]
    sync = sync or [c.cleanup_cpu_ns for c in cycles if c.mode == "sync"]
    asyncs = [c for c in cycles if c.mode == "async" and c.verdict.outcome is not Outcome.SKIP]
    if not asyncs:
        return ""
    if not sync:
        return (
            "no sync cycle in this run: the async verdicts compare the VM cgroup with the "
            "teardown threads' own clocks only (--mode both adds an independent baseline)"
        )
    baseline = int(median(sync) or 0)
    for c in asyncs:
        charged = c.verdict.charged_ns
        against = judge_charged(baseline, charged, tolerance_ns=TOTALS_TOLERANCE_NS)
        if against.outcome is Outcome.NOT_CHARGED:
            c.verdict = Verdict(
                Outcome.NOT_CHARGED, baseline, charged, against.fraction,
                f"the VM's cgroup saw {charged / 1e6:.1f} ms of the {baseline / 1e6:.1f} ms a "
                f"synchronous teardown of this VM costs (the teardown threads measured "
                f"{c.verdict.work_ns / 1e6:.1f} ms): the rest ran outside them",
                against.tolerance_ns,
            )  # fmt: skip
    return ""


def format_cycle(rec: CycleRecord, total: int) -> str:
    """One line per cycle (the caller prefixes the backend label)."""
    d = rec.to_dict()
    parts = [
        f"{'warm-up' if rec.warmup else 'cycle'} {rec.index}/{total} {rec.mode}",
        f"latency {d['reboot_latency_s']:.3f}s",
    ]
    if d["perform_s"] is not None:
        parts.append(f"perform {d['perform_s']:.3f}s")
    if d["overlap_s"] is not None:
        parts.append(f"overlap {d['overlap_s']:.3f}s")
    if rec.boot is not None:
        parts.append(f"boot {rec.boot.seconds * 1e3:.1f}ms")
    parts.append(f"cleanup cpu {d['cleanup_cpu_s']:.3f}s")
    parts.append(f"verdict {d['verdict']}")
    if not rec.secure_memory:
        parts.append("NO secure guest memory (no SE image booted)")
    if rec.fallback_reason:
        parts.append(f"(sync fallback: {rec.fallback_reason})")
    if rec.perform_error:
        parts.append(f"PERFORM FAILED: {rec.perform_error}")
    return ", ".join(parts)


__all__ = [
    "BACKENDS",
    "CHARGE_TO",
    "MODES",
    "CycleRecord",
    "RebootRequest",
    "RebootResult",
    "format_cycle",
    "mem_available",
    "run_reboot",
    "select_backend",
    "validate",
]
