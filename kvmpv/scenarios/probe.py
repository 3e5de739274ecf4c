# SPDX-License-Identifier: GPL-2.0-only
"""What this host supports, and which kvmpv scenarios can run here for real.

``probe_host(root="/")`` reads procfs/sysfs files (every path prefixed by
``root``, so tests run the probe on the synthetic s390x trees under
``fixtures/sysfs/``), asks ``/dev/kvm`` for its API version and the s390 PV
capabilities with ``KVM_CHECK_EXTENSION`` (no VM is created, as
``virt-host-validate`` does it), and returns a ``HostProbe``.  It may touch:
those files, the KVM device (open, two ioctls, close), a generic-netlink
socket (is the TASKSTATS family registered?), and -- only with
``guest_size`` -- one small real VM running the x86 guest.  It writes nothing.

Facts that cannot come from files (the KVM device answers, taskstats) are
never invented for a synthetic root: they are reported as "not probed"
unless the caller injects them (``KvmFacts.injected``), and an injected value
is labelled ``"source": "injected"`` in every output.

s390x detection follows spec section 7 (``shared/spec/kvm-pv-async.md``):
``/sys/firmware/uv/prot_virt_host`` (1 = PV host), the first word of
``/sys/firmware/uv/query/facilities`` (installed UV calls, ``%lx`` per line;
Destroy Secure Configuration Fast = mask ``0x0000010000000000``),
``/sys/module/kvm/parameters/async_destroy`` (Linux 6.2+), caps 180/217/224.
"""

from __future__ import annotations

import errno
import importlib
import os
import platform
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Optional

from .. import pgste, uapi
from ..errors import KvmpvError, UsageError, errno_name, require_linux
from ..kvm import Kvm, kvm_dev_path
from ..seimage import SeImage
from ..syscalls import LINUX, Syscalls
from ..uapi import KvmCap

PV_CAPS = (
    uapi.KvmCap.KVM_CAP_S390_PROTECTED,
    uapi.KvmCap.KVM_CAP_S390_PROTECTED_DUMP,
    uapi.KvmCap.KVM_CAP_S390_PROTECTED_ASYNC_DISABLE,
)

SYNTHETIC_MARK = "SYNTHETIC"


# --------------------------------------------------------------------------
# KVM device facts (real, injected, or not probed)
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class KvmFacts:
    """What the KVM device said.  ``source``: "ioctl", "injected" or "not probed"."""

    source: str
    path: str
    present: bool
    access: str  # "ok" | "denied" | "absent" | "error" | "not probed"
    error: str = ""
    api_version: Optional[int] = None
    caps: dict[int, int] = field(default_factory=dict)  # cap number -> KVM_CHECK_EXTENSION
    #: One throwaway KVM_CREATE_VM: "ok", or why it failed (s390x without
    #: PGSTE: EINVAL); "not tried" where the device was not asked.
    create_vm: str = "not tried"

    @classmethod
    def injected(
        cls, caps: Optional[dict[int, int]] = None, api_version: int = uapi.KVM_API_VERSION
    ) -> KvmFacts:
        """Values given by a test or ``--inject-kvm`` (labelled "injected" everywhere)."""
        numbers = {int(k): int(v) for k, v in (caps or {}).items()}
        return cls("injected", "(injected)", True, "ok", "", api_version, numbers)

    @classmethod
    def parse_injection(cls, spec: str) -> KvmFacts:
        """``"api=12,180=1,217=1,224=1"`` -> injected facts; raises ``UsageError``."""
        api = uapi.KVM_API_VERSION
        caps: dict[int, int] = {}
        for item in filter(None, (x.strip() for x in spec.split(","))):
            key, sep, value = item.partition("=")
            try:
                if not sep:
                    raise ValueError(item)
                if key.strip() == "api":
                    api = int(value, 0)
                else:
                    caps[int(key, 0)] = int(value, 0)
            except ValueError:
                raise UsageError(
                    f"invalid --inject-kvm item {item!r}: use api=N or CAP=VALUE, "
                    "e.g. api=12,180=1,217=1,224=1"
                ) from None
        return cls.injected(caps, api)

    @classmethod
    def not_probed(cls, why: str) -> KvmFacts:
        return cls("not probed", "", False, "not probed", why)

    def cap(self, cap: int) -> Optional[int]:
        return self.caps.get(int(cap))

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["caps"] = {
            str(int(c)): {"name": c.name, "value": self.caps.get(int(c))} for c in PV_CAPS
        }
        return out


def probe_kvm(path: Optional[str] = None) -> KvmFacts:
    """Open the KVM device, read API version and caps 180/217/224, close it."""
    path = kvm_dev_path(path)
    present = os.path.exists(path)
    try:
        with Kvm(path=path) as kvm:
            caps = {int(c): kvm.check_cap(c) for c in PV_CAPS}
            version = kvm.get_api_version()
            # Caps say what the kernel offers, not that this process can use
            # it: on s390x a process without PGSTEs gets EINVAL for every VM.
            try:
                kvm.vm_create().close()
                created = "ok"
            except KvmpvError as err:
                created = f"failed: {err}"
            return KvmFacts("ioctl", path, True, "ok", "", version, caps, created)
    except OSError as err:  # KvmpvOpenError, KvmError: both OSError
        access = {
            errno.ENOENT: "absent",
            errno.EACCES: "denied",
            errno.EPERM: "denied",
        }.get(err.errno or 0, "error")
        return KvmFacts("ioctl", path, present, access, str(err))
    except KvmpvError as err:  # not a KVM device, wrong API version
        return KvmFacts("ioctl", path, present, "error", str(err))


# --------------------------------------------------------------------------
# Files under root
# --------------------------------------------------------------------------


def _path(root: str, path: str) -> str:
    return os.path.join(root, path.lstrip("/"))


def _read(root: str, path: str) -> Optional[str]:
    try:
        with open(_path(root, path)) as f:
            return f.read()
    except OSError:
        return None


def _read_int(root: str, path: str) -> Optional[int]:
    text = _read(root, path)
    if text is None:
        return None
    try:
        return int(text.strip(), 0)
    except ValueError:
        return None


def _read_first_hex_word(root: str, path: str) -> Optional[int]:
    text = _read(root, path)
    try:
        return int(text.splitlines()[0].strip(), 16) if text else None
    except (IndexError, ValueError):
        return None


def _bracketed(text: Optional[str]) -> Optional[str]:
    """``always [madvise] never`` -> ``madvise``."""
    if text is None:
        return None
    if "[" in text and "]" in text:
        return text.split("[", 1)[1].split("]", 1)[0]
    return text.strip() or None


def thp_mode(root: str = "/") -> Optional[str]:
    """The host's transparent-hugepage mode (``madvise``), None if unreadable."""
    return _bracketed(_read(root, "/sys/kernel/mm/transparent_hugepage/enabled"))


def parse_facilities(text: str) -> list[int]:
    """The installed-UV-call words of ``/sys/firmware/uv/query/facilities`` (``%lx`` lines)."""
    return [int(word, 16) for word in text.split()]


@dataclass(frozen=True)
class CgroupFacts:
    """Which cgroup hierarchies are mounted (from ``/proc/self/mounts``)."""

    v1_controllers: list[str]  # controllers mounted as cgroup v1 (name=... included)
    v1_mounts: dict[str, str]  # mount point -> its controllers, comma-separated
    v2_mount: Optional[str]
    v2_controllers: Optional[list[str]]  # from cgroup.controllers of the v2 root
    error: str = ""

    @property
    def layout(self) -> str:
        if self.v1_controllers and self.v2_mount:
            return "hybrid (v1 controllers + cgroup2)"
        if self.v2_mount:
            return "unified (cgroup2 only)"
        if self.v1_controllers:
            return "legacy (cgroup v1 only)"
        return "none"

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["layout"] = self.layout
        return out


def probe_cgroups(root: str) -> CgroupFacts:
    mounts = _read(root, "/proc/self/mounts")
    if mounts is None:
        return CgroupFacts([], {}, None, None, "/proc/self/mounts not readable")
    v1: list[str] = []
    v1_mounts: dict[str, str] = {}
    v2_mount: Optional[str] = None
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) < 4:
            continue
        mountpoint = fields[1].replace("\\040", " ")
        if fields[2] == "cgroup":
            ctrls = [o for o in fields[3].split(",") if o not in _MOUNT_OPTIONS]
            v1_mounts[mountpoint] = ",".join(ctrls)
            v1.extend(c for c in ctrls if c not in v1)
        elif fields[2] == "cgroup2" and v2_mount is None:
            v2_mount = mountpoint
    v2_ctrls: Optional[list[str]] = None
    if v2_mount is not None:
        text = _read(root, os.path.join(v2_mount, "cgroup.controllers"))
        v2_ctrls = text.split() if text is not None else None
    return CgroupFacts(sorted(v1), v1_mounts, v2_mount, v2_ctrls)


_MOUNT_OPTIONS = frozenset(
    {"rw", "ro", "nosuid", "nodev", "noexec", "relatime", "noatime", "nsdelegate",
     "memory_recursiveprot", "clone_children", "xattr", "noprefix"}
)  # fmt: skip


# --------------------------------------------------------------------------
# Host-only facts (sockets, imports)
# --------------------------------------------------------------------------


def genl_family_registered(name: str) -> tuple[Optional[bool], str]:
    """Is a generic-netlink family registered?  ``CTRL_CMD_GETFAMILY``, allowed unprivileged.

    Through ``kvmpv.accounting.netlink``: replies matched by sequence and
    port, every wait bounded, so the probe cannot hang on a lost reply.
    """
    from ..accounting import AccountingUnavailable
    from ..accounting.netlink import NETLINK_GENERIC, open_socket, resolve_family

    try:
        with open_socket(NETLINK_GENERIC, "generic netlink") as sock:
            resolve_family(sock, name)
    except AccountingUnavailable as err:
        return None, err.reason
    except OSError as err:
        if err.errno == errno.ENOENT:
            return False, f"generic-netlink family {name} not registered (CONFIG_TASKSTATS off?)"
        return None, f"CTRL_CMD_GETFAMILY failed: {errno_name(err.errno or 0)}"
    return True, f"generic-netlink family {name} registered"


@dataclass(frozen=True)
class TaskstatsFacts:
    available: Optional[bool]  # family registered (None: not probed / unknown)
    usable: Optional[bool]  # queries allowed (TASKSTATS_CMD_GET needs CAP_NET_ADMIN)
    reason: str


def probe_taskstats() -> TaskstatsFacts:
    available, why = genl_family_registered("TASKSTATS")
    if not available:
        return TaskstatsFacts(available, False if available is False else None, why)
    # Queries are admin-only (measured here: EPERM as uid 65534); checking
    # the capability avoids sending a query as a side effect of probing.
    if os.geteuid() == 0:
        return TaskstatsFacts(True, True, why + "; running as root")
    return TaskstatsFacts(True, False, why + "; queries need root (CAP_NET_ADMIN)")


def native_cleaner() -> dict[str, Any]:
    """``kvmpv.teardown.native_available()``, or why it cannot be asked."""
    try:
        # import_module, not "from .. import": it honours sys.modules, which
        # is how tests hide a module that is already imported.
        teardown = importlib.import_module("..teardown", __package__)
    except ImportError as err:
        return {"available": False, "reason": f"not built: kvmpv.teardown missing ({err})"}
    try:
        ok, detail = teardown.native_available()
    except KvmpvError as err:
        return {"available": False, "reason": str(err)}
    return {"available": bool(ok), "reason": detail}


_accounting_cache: Optional[dict[str, Any]] = None


def accounting_caps() -> dict[str, Any]:
    """``kvmpv.accounting.capabilities().to_dict()``, or why it cannot be asked.

    Asked once per process: the answer describes this host and kvmpv build,
    which do not change while we run, and asking subscribes to the proc
    connector and taskstats (netlink sockets) every time.
    """
    global _accounting_cache
    if _accounting_cache is None:
        _accounting_cache = _accounting_caps()
    return dict(_accounting_cache)


def _accounting_caps() -> dict[str, Any]:
    try:
        from ..accounting import capabilities  # type: ignore[attr-defined,unused-ignore]
    except ImportError as err:
        return {"available": False, "reason": f"not built: kvmpv.accounting.capabilities ({err})"}
    try:
        caps = capabilities()
    except KvmpvError as err:
        return {"available": False, "reason": str(err)}
    out: dict[str, Any] = dict(caps.to_dict())
    out.setdefault("available", True)
    return out


# --------------------------------------------------------------------------
# The probe
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class ScenarioVerdict:
    mode: str  # "real" | "sim" | "no"
    reason: str


@dataclass
class HostProbe:
    """Everything ``kvmpv probe`` reports (``to_dict()`` is the ``--json`` output)."""

    root: str
    synthetic: bool  # facts come from a tree other than this host's "/"
    synthetic_label: str  # first line of the tree's SYNTHETIC file
    arch: Optional[str]
    kernel_release: Optional[str]
    python: str
    kvm: KvmFacts
    prot_virt_host: Optional[int]  # None: /sys/firmware/uv absent (not s390x, or no UV facility)
    uv_facilities: Optional[list[str]]  # the 4 words as printed, None if absent
    destroy_fast: Optional[bool]
    async_destroy_param: Optional[int]  # None: no such kvm parameter (not s390x, or < 6.2)
    cgroups: CgroupFacts
    taskstats: TaskstatsFacts
    thp_mode: Optional[str]
    native_cleaner: dict[str, Any]
    accounting: dict[str, Any]
    #: how this process got the PGSTEs s390 KVM needs (kvmpv.pgste)
    pgste: dict[str, Any] = field(default_factory=dict)
    kvm_usable: bool = False
    kvm_reason: str = ""
    pv_async_usable: bool = False
    pv_reason: str = ""
    scenarios: dict[str, ScenarioVerdict] = field(default_factory=dict)
    verdict: str = ""
    guest: Optional[dict[str, Any]] = None  # --run-guest result

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name in self.__dataclass_fields__:
            value = getattr(self, name)
            if hasattr(value, "to_dict"):
                value = value.to_dict()
            elif name == "taskstats":
                value = asdict(value)
            elif name == "scenarios":
                value = {k: asdict(v) for k, v in value.items()}
            out[name] = value
        return out


#: Why an s390x kernel has no /dev/kvm when its CPU lacks SIE: kvm_s390_init()
#: (arch/s390/kvm/kvm-s390.c) refuses to load with ENODEV ("SIE is not
#: available") unless sclp.has_sief2, the same bit arch/s390/kernel/processor.c
#: shows as "sie" in /proc/cpuinfo's features.  A z/VM guest without it, an
#: LPAR without the facility, and QEMU's TCG all look like this.
NO_SIE = (
    "this CPU has no SIE facility ('sie' missing from the features in /proc/cpuinfo), "
    "so the kvm module cannot load (z/VM guest or emulator without SIE)"
)


def sie_facility(root: str = "/") -> Optional[bool]:
    """s390x: does /proc/cpuinfo list the "sie" feature?  None without a
    ``features`` line (not s390x, or no cpuinfo in a synthetic tree)."""
    for line in (_read(root, "/proc/cpuinfo") or "").splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "features":
            return "sie" in value.split()
    return None


def _kvm_verdict(kvm: KvmFacts) -> tuple[bool, str]:
    if kvm.access == "not probed":
        return False, f"KVM device not probed ({kvm.error})"
    if kvm.access != "ok":
        return False, kvm.error or f"{kvm.path}: {kvm.access}"
    if kvm.api_version != uapi.KVM_API_VERSION:
        return False, f"API version {kvm.api_version}, expected {uapi.KVM_API_VERSION}"
    if kvm.source == "ioctl" and kvm.create_vm != "ok":
        return False, f"KVM_CREATE_VM {kvm.create_vm}"
    where = "injected values" if kvm.source == "injected" else kvm.path
    return True, f"{where}: API version {kvm.api_version}"


def _pv_verdict(p: HostProbe) -> tuple[bool, str]:
    why: list[str] = []
    if p.arch != "s390x":
        why.append(f"not s390x (arch {p.arch})")
    else:
        if p.prot_virt_host is None:
            why.append("no /sys/firmware/uv/prot_virt_host (no Ultravisor facility 158)")
        elif p.prot_virt_host != 1:
            why.append("prot_virt_host is 0 (boot with prot_virt=1 on a Secure Execution machine)")
        if p.async_destroy_param is None:
            why.append("no kvm.async_destroy parameter (kernel older than 6.2)")
        elif p.async_destroy_param == 0:
            why.append("kvm.async_destroy=0 (module parameter fences async destroy)")
    if not p.kvm_usable:
        why.append(f"KVM not usable: {p.kvm_reason}")
    else:
        c180 = p.kvm.cap(uapi.KvmCap.KVM_CAP_S390_PROTECTED)
        c224 = p.kvm.cap(uapi.KvmCap.KVM_CAP_S390_PROTECTED_ASYNC_DISABLE)
        if not c180:
            why.append("KVM_CAP_S390_PROTECTED (180) is 0")
        if not c224:
            why.append("KVM_CAP_S390_PROTECTED_ASYNC_DISABLE (224) is 0")
    if why:
        return False, "; ".join(why)
    fast = {True: "with", False: "without", None: "unknown"}[p.destroy_fast]
    src = " (injected KVM values)" if p.kvm.source == "injected" else ""
    return True, f"PV host, async destroy enabled, cap 224 = 1{src}; {fast} Destroy-Fast UVC"


def _scenarios(p: HostProbe) -> dict[str, ScenarioVerdict]:
    out: dict[str, ScenarioVerdict] = {}
    pv = (
        ScenarioVerdict("real", p.pv_reason)
        if p.pv_async_usable
        else ScenarioVerdict("sim", f"simulated s390x kernel: {p.pv_reason}")
    )
    out["check"] = pv
    out["reboot"] = pv
    cleaner = p.native_cleaner
    out["shutdown"] = (
        ScenarioVerdict("real", f"native cleaner: {cleaner.get('reason', '')}")
        if cleaner.get("available")
        else ScenarioVerdict("no", f"native cleaner unavailable: {cleaner.get('reason', '')}")
    )
    if not p.kvm_usable:
        out["shutdown --vm"] = ScenarioVerdict("no", f"KVM not usable: {p.kvm_reason}")
    elif p.arch == "s390x":
        out["shutdown --vm"] = ScenarioVerdict("real", "real s390x payload on /dev/kvm")
    elif p.arch != "x86_64":
        out["shutdown --vm"] = ScenarioVerdict(
            "no", f"kvmpv has guests for x86_64 and s390x, not for {p.arch}"
        )
    else:
        out["shutdown --vm"] = ScenarioVerdict("real", "real x86 guest on /dev/kvm")
    acc = p.accounting
    # accounting.capabilities() reports each hierarchy as {"usable": ..., "reason": ...}.
    usable = [k for k, v in acc.items() if isinstance(v, dict) and v.get("usable")]
    if not acc.get("available", False):
        out["accounting"] = ScenarioVerdict("no", str(acc.get("reason", "unavailable")))
    elif usable:
        out["accounting"] = ScenarioVerdict("real", f"usable cgroup hierarchies: {usable}")
    else:
        reasons = [f"{k}: {v.get('reason')}" for k, v in acc.items() if isinstance(v, dict)]
        out["accounting"] = ScenarioVerdict("no", "; ".join(reasons) or "no cgroup hierarchy")
    return out


def _one_line(p: HostProbe) -> str:
    head = f"SYNTHETIC tree {p.root}: " if p.synthetic else ""
    kvm = f"KVM usable ({p.kvm_reason})" if p.kvm_usable else f"no KVM ({p.kvm_reason})"
    parts = [f"{name}: {v.mode}" for name, v in p.scenarios.items()]
    real = "would run for real on such a host" if p.synthetic else "runs for real"
    pv = f"PV async destroy {real}" if p.pv_async_usable else f"PV async: {p.pv_reason}"
    return f"{head}{kvm}; {pv}; " + ", ".join(parts)


def probe_host(
    root: str = "/",
    *,
    kvm: Optional[KvmFacts] = None,
    kvm_dev: Optional[str] = None,
    guest_size: Optional[int] = None,
    se_image: Optional[SeImage] = None,
) -> HostProbe:
    """Probe the host (or the tree at ``root``).  ``kvm`` injects device facts.

    With ``root`` other than "/", nothing is asked of this host's devices:
    KVM facts are "not probed" unless injected, taskstats is "not probed",
    and the result is marked ``synthetic``.  The cleaner and accounting
    availability are facts about this kvmpv installation and are reported
    as they are.
    """
    host = os.path.realpath(root) == "/"
    if host:
        require_linux()
    label = (_read(root, SYNTHETIC_MARK) or "").strip().splitlines()
    arch = (_read(root, "/proc/sys/kernel/arch") or "").strip() or None
    release = (_read(root, "/proc/sys/kernel/osrelease") or "").strip() or None
    if host:
        uname = os.uname()
        arch = arch or uname.machine
        release = release or uname.release
    if kvm is None:
        kvm = (
            probe_kvm(kvm_dev)
            if host
            else KvmFacts.not_probed(
                "synthetic root: /dev/kvm answers cannot come from files; inject them"
            )
        )
    facilities_text = _read(root, "/sys/firmware/uv/query/facilities")
    words: Optional[list[int]] = None
    if facilities_text is not None:
        try:
            words = parse_facilities(facilities_text)
        except ValueError:
            words = None
    p = HostProbe(
        root=root,
        synthetic=not host,
        synthetic_label=label[0] if label else "",
        arch=arch,
        kernel_release=release,
        python=f"{platform.python_implementation()} {platform.python_version()}",
        kvm=kvm,
        prot_virt_host=_read_int(root, "/sys/firmware/uv/prot_virt_host"),
        uv_facilities=[f"{w:016x}" for w in words] if words is not None else None,
        destroy_fast=(
            bool(words[0] & uapi.UV_FACILITY_DESTROY_SEC_CONF_FAST_MASK) if words else None
        ),
        async_destroy_param=_read_int(root, "/sys/module/kvm/parameters/async_destroy"),
        cgroups=probe_cgroups(root),
        taskstats=(
            probe_taskstats()
            if host
            else TaskstatsFacts(None, None, "not probed: synthetic root (a netlink fact)")
        ),
        thp_mode=thp_mode(root),
        native_cleaner=native_cleaner(),
        accounting=(
            accounting_caps()
            if host
            else {"available": False, "reason": "not probed: synthetic root (host cgroups)"}
        ),
        # the process's own architecture (uname), which is what its page tables are about
        pgste=pgste.status().to_dict() if host else {"how": "not probed"},
    )
    p.kvm_usable, p.kvm_reason = _kvm_verdict(kvm)
    if kvm.access == "absent" and arch == "s390x" and sie_facility(root) is False:
        p.kvm_reason += f"; {NO_SIE}"
    p.pv_async_usable, p.pv_reason = _pv_verdict(p)
    p.scenarios = _scenarios(p)
    p.verdict = _one_line(p)
    if guest_size is not None:
        p.guest = run_guest(p, guest_size, kvm_dev, se_image)
    return p


def run_guest(
    p: HostProbe, size: int, kvm_dev: Optional[str] = None, se_image: Optional[SeImage] = None
) -> dict[str, Any]:
    """Run kvmpv's tiny real guest over ``size`` bytes: proof that a real guest runs here.

    With ``se_image`` (s390x PV hosts) the guest is that image, booted
    protected as QEMU boots it; its memory cannot be read back, so the
    proof is the boot's steps and the guest's end.
    """
    if p.synthetic or not p.kvm_usable or p.kvm.source != "ioctl":
        return {"ran": False, "reason": f"KVM not usable: {p.kvm_reason}"}
    from ..memory import GuestMemory

    if se_image is not None:
        if not p.pv_async_usable and not (p.arch == "s390x" and p.prot_virt_host == 1):
            return {"ran": False, "reason": f"not a Secure Execution host: {p.pv_reason}"}
        return _run_protected(size, kvm_dev, se_image)
    if p.arch == "s390x":
        from .. import s390guest

        with Kvm(path=kvm_dev) as kvm, kvm.vm_create() as vm, GuestMemory(size) as mem:
            s390 = s390guest.vm_touch_memory(vm, mem)
        out = s390.to_dict()
        expected = (size - s390guest.FIRST_PAGE) // 4096
        out.update(ran=True, guest="s390x", pages_verified=s390.pages_written)
        out.update(pages_expected=expected)
        return out
    if p.arch != "x86_64":
        return {"ran": False, "reason": f"kvmpv has guests for x86_64 and s390x, not {p.arch}"}
    from ..x86guest import count_written, vm_touch_memory

    with Kvm(path=kvm_dev) as kvm, kvm.vm_create() as vm, GuestMemory(size) as mem:
        result = vm_touch_memory(vm, mem)
        verified = count_written(mem, 0xA5)
    out = result.to_dict()
    out.update(ran=True, guest="x86_64", pages_verified=verified, pages_expected=size // 4096)
    return out


def _run_protected(size: int, kvm_dev: Optional[str], image: SeImage) -> dict[str, Any]:
    from ..memory import GuestMemory
    from ..pv import load_image, s390_machine_protect
    from ..runner import exit_name, reset_vcpus, run_until_finished
    from ..s390guest import guest_end

    with Kvm(path=kvm_dev) as kvm, kvm.vm_create() as vm, GuestMemory(size) as mem:
        vm.s390_set_mem_limit(max(size, uapi.PV_ASYNC_MIN_LIMIT + (1 << 20)))
        vm.mem_add(mem, slot=0, gpa=0)
        vcpu = vm.vcpu_add(0)
        load_image(vm, image)
        reset_vcpus([vcpu])
        boot = s390_machine_protect(vm, image, [vcpu])
        t0 = time.perf_counter()
        reason = run_until_finished(vcpu)
        run_s = time.perf_counter() - t0
        # success is the payload's own end, not any disabled wait (a stage3b panic is one)
        boot.end = guest_end(vcpu)
    return {
        "ran": True,
        "guest": "s390x protected",
        "exit_name": exit_name(reason),
        "boot": boot.to_dict(),
        "end": boot.end.describe(),
        "secure_memory": boot.verified and boot.end.ok,
        "pages_written": "unreadable (protected)",
        "pages_verified": "-",
        "run_s": run_s,
    }


# --------------------------------------------------------------------------
# The caps-only probe (kvmpv check)
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class HostFacts:
    """What the real kernel of this host offers, for deciding where each check runs.

    The probe's cheap "caps only" mode (``probe_facts``:
    ``KVM_CHECK_EXTENSION`` on /dev/kvm for caps 180/217/224,
    ``kvm.async_destroy``, the UV facility list), not the full
    ``probe_host()``: that one also asks netlink, cgroups and the native
    cleaner, none of which a conformance run needs or should wait for.
    ``pv_reason_text`` lets a caller that has a full probe (``kvmpv
    exercise``) pass its wording in through ``CheckRequest.facts``.
    """

    arch: str
    kernel: str
    kvm_error: str = ""  # why /dev/kvm cannot be used ("" if it can)
    cap_protected: int = 0  # KVM_CAP_S390_PROTECTED (180)
    cap_async: int = 0  # KVM_CAP_S390_PROTECTED_ASYNC_DISABLE (224)
    cap_dump: int = 0  # KVM_CAP_S390_PROTECTED_DUMP (217)
    async_destroy_param: Optional[int] = None  # /sys/module/kvm/parameters/async_destroy
    destroy_fast: Optional[bool] = None  # UV facility bit 23 (None: unknown)
    pv_reason_text: str = ""

    @property
    def kvm_usable(self) -> bool:
        return not self.kvm_error

    @property
    def is_s390(self) -> bool:
        return self.arch == "s390x"

    @property
    def pv_host(self) -> bool:
        return self.kvm_usable and self.cap_protected > 0

    @property
    def pv_async(self) -> bool:
        return self.pv_host and self.cap_async > 0

    def pv_reason(self) -> str:
        """Why the PV async checks cannot run on the real kernel ("" if they can)."""
        if self.pv_async:
            return ""
        if self.pv_reason_text:
            return self.pv_reason_text
        if not self.kvm_usable:
            return f"no usable /dev/kvm: {self.kvm_error}"
        if not self.pv_host:
            return (
                f"not a PV host: KVM_CAP_S390_PROTECTED (180) = {self.cap_protected} "
                f"({self.arch}, Linux {self.kernel})"
            )
        return (
            f"KVM_CAP_S390_PROTECTED_ASYNC_DISABLE (224) = {self.cap_async}"
            f" (kvm.async_destroy = {self.async_destroy_param})"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "arch": self.arch,
            "kernel_release": self.kernel,
            "kvm_error": self.kvm_error or None,
            "cap_180": self.cap_protected,
            "cap_217": self.cap_dump,
            "cap_224": self.cap_async,
            "async_destroy": self.async_destroy_param,
            "destroy_fast": self.destroy_fast,
            "pv_reason": self.pv_reason() or None,
        }


def probe_facts(sys: Syscalls = LINUX, root: str = "/") -> HostFacts:
    """The caps-only probe of the real kernel, without creating a VM (spec section 7)."""
    arch = platform.machine()
    kernel = platform.release()
    async_param = _read_int(root, "/sys/module/kvm/parameters/async_destroy")
    facilities = _read_first_hex_word(root, "/sys/firmware/uv/query/facilities")
    fast = None
    if facilities is not None:
        fast = bool(facilities & uapi.UV_FACILITY_DESTROY_SEC_CONF_FAST_MASK)
    try:
        with Kvm(sys) as kvm:
            caps = {
                c: kvm.check_cap(c)
                for c in (
                    KvmCap.KVM_CAP_S390_PROTECTED,
                    KvmCap.KVM_CAP_S390_PROTECTED_ASYNC_DISABLE,
                    KvmCap.KVM_CAP_S390_PROTECTED_DUMP,
                )
            }
    except KvmpvError as err:
        return HostFacts(arch, kernel, kvm_error=str(err), async_destroy_param=async_param)
    facts = HostFacts(
        arch,
        kernel,
        cap_protected=caps[KvmCap.KVM_CAP_S390_PROTECTED],
        cap_async=caps[KvmCap.KVM_CAP_S390_PROTECTED_ASYNC_DISABLE],
        cap_dump=caps[KvmCap.KVM_CAP_S390_PROTECTED_DUMP],
        async_destroy_param=async_param,
        destroy_fast=fast,
    )
    return facts


def format_table(p: HostProbe) -> str:
    """The human table of ``kvmpv probe``."""

    def show(v: Any) -> str:
        if v is None:
            return "-"
        if isinstance(v, bool):
            return "yes" if v else "no"
        return str(v)

    kvm = p.kvm
    caps = ", ".join(f"{int(c)}={show(kvm.cap(c))}" for c in PV_CAPS)
    if kvm.source == "injected":
        caps += "  [injected]"
    rows: list[tuple[str, str]] = []
    if p.synthetic:
        rows.append(("SYNTHETIC", f"{p.root}: {p.synthetic_label or 'not this host'}"))
    rows += [
        ("arch", show(p.arch)),
        ("kernel", show(p.kernel_release)),
        ("python", p.python),
        ("KVM device", f"{kvm.path or '-'}: {kvm.access}" + (f" ({kvm.error})" * bool(kvm.error))),
        ("KVM API version", show(kvm.api_version)),
        ("caps 180/217/224", caps),
        ("KVM_CREATE_VM", kvm.create_vm),
        ("PGSTE", p.pgste.get("how", "-")),
        ("prot_virt_host", show(p.prot_virt_host)),
        ("UV facilities", " ".join(p.uv_facilities) if p.uv_facilities else "-"),
        ("Destroy-Fast UVC", show(p.destroy_fast)),
        ("kvm.async_destroy", show(p.async_destroy_param)),
        ("cgroups", p.cgroups.layout),
        ("  v1 controllers", ",".join(p.cgroups.v1_controllers) or "-"),
        ("  cgroup2", f"{show(p.cgroups.v2_mount)} [{' '.join(p.cgroups.v2_controllers or [])}]"),
        ("taskstats", p.taskstats.reason),
        ("THP", show(p.thp_mode)),
        ("native cleaner", f"{show(p.native_cleaner.get('available'))}: "
                           f"{p.native_cleaner.get('reason', '')}"),
        ("accounting", _acc_line(p.accounting)),
        ("KVM usable", f"{show(p.kvm_usable)}: {p.kvm_reason}"),
        ("PV async usable", f"{show(p.pv_async_usable)}: {p.pv_reason}"),
    ]  # fmt: skip
    for name, v in p.scenarios.items():
        rows.append((f"scenario {name}", f"{v.mode}: {v.reason}"))
    if p.guest is not None:
        g = p.guest
        if g.get("ran"):
            rows.append(
                (
                    f"{g.get('guest', 'x86_64')} guest",
                    f"{g['exit_name']}, {g['pages_written']} pages written, "
                    f"{g['pages_verified']} verified, {g['run_s']:.3f} s",
                )
            )
        else:
            rows.append(("guest", f"not run: {g.get('reason', '')}"))
    width = max(len(k) for k, _ in rows)
    lines = [f"{k:<{width}}  {v}" for k, v in rows]
    lines.append(f"verdict: {p.verdict}")
    return "\n".join(lines)


def _acc_line(acc: dict[str, Any]) -> str:
    if not acc.get("available", False):
        return f"no: {acc.get('reason', '')}"
    parts: list[str] = []
    for key, value in acc.items():
        if key == "available" or key.endswith("_reason"):
            continue
        if isinstance(value, dict):
            parts.append(f"{key} {'usable' if value.get('usable') else 'unusable'}")
        elif not isinstance(value, (list, tuple)):
            parts.append(f"{key}={value}")
    return ", ".join(parts)


__all__ = [
    "CgroupFacts",
    "HostFacts",
    "HostProbe",
    "KvmFacts",
    "ScenarioVerdict",
    "TaskstatsFacts",
    "format_table",
    "parse_facilities",
    "probe_facts",
    "probe_host",
    "probe_kvm",
    "thp_mode",
]
