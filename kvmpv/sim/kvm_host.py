# SPDX-License-Identifier: GPL-2.0-only
"""The simulated kernel's objects and the machine's constants.

The structures the kernel keeps per VM, vCPU and memslot (``struct kvm`` /
``struct kvm_arch``, ``struct kvm_vcpu``, ``struct kvm_memory_slot`` of
include/linux/kvm_host.h and arch/s390/include/asm/kvm_host.h), the
Ultravisor's secure configuration and ``struct pv_vm_to_be_destroyed``
(arch/s390/kvm/pv.c), and the constants of the simulated machine, Linux 6.4
.. 7.0.  Data and small pure helpers (``gmap_create()``'s ASCE sizing, the
disabled-wait test); the only thing touched is ``_memfd``'s memfd, the real
file behind each simulator fd.
"""

from __future__ import annotations

import hashlib
import os
import threading
from dataclasses import dataclass
from typing import Optional

from .. import sehdr, uapi
from .locks import CountingMutex as _CountingMutex
from .ranges import Ranges as _Ranges

# --------------------------------------------------------------------------
# Constants of the simulated machine
# --------------------------------------------------------------------------

PAGE_SIZE = 4096
#: KVM_GET_VCPU_MMAP_SIZE on s390: one page (no coalesced MMIO ring).
VCPU_MMAP_SIZE = PAGE_SIZE
#: kvm->arch.mem_limit of a ucontrol VM.
KVM_S390_NO_MEM_LIMIT = (1 << 64) - 1
KVM_USER_MEM_SLOTS = 32767  # arch/s390/include/asm/kvm_host.h
KVM_MEM_MAX_NR_PAGES = (1 << 31) - 1
SZ_2G = uapi.PV_ASYNC_MIN_LIMIT
SEGMENT_ALIGN = uapi.S390_MEMSLOT_ALIGN

# Installed-calls bits (MSB-0) of the simulated UV, reported by KVM_PV_INFO_VM.
_BIT_DUMP = (24, 25, 26, 27)
_BITS_BASE = (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22)

# Simulated UV query values (spec 2.3; dump sizes are the simulator's own).
UV_MAX_GUEST_CPU_ID = 247
UV_MAX_NUM_SEC_CONF = 512
UV_MAX_SEC_STOR_ADDR = 1 << 42
UV_GUEST_CPU_STOR_LEN = 0x1000
UV_CONF_DUMP_STORAGE_STATE_LEN = 0x80  # per 1 MiB of guest storage
UV_CONF_DUMP_FINALIZE_LEN = 0x1000
SE_HDR_MAX = 2 * PAGE_SIZE  # KVM_PV_SET_SEC_PARMS limit in the 6.x kernels (spec 2.3)
#: The UV's boot answers (s390-tools rust/pvimg/boot/stage3a.c, enum UV_RC):
#: 0x108 host-key hash, rrc 0x05 no key slot for this machine's host key.
UV_RC_HDR_NOT_FOR_HOST = 0x0108
UV_RRC_NO_KEY_SLOT = 0x05
#: 0x102 UNPACK/VERIFY mismatch, the rrc naming what: ALD, PLD, TLD, page count.
UV_RC_VERIFY_MISMATCH = 0x0102
UV_RRC_ALD, UV_RRC_PLD, UV_RRC_TLD, UV_RRC_PAGE_COUNT = 0x1A, 0x1B, 0x1C, 0x1D

# The service signal (arch/s390/kvm/interrupt.c, arch/s390/include/asm/kvm_host.h):
#: irq_types bits of the two service interrupts ("irq types in ascend order of
#: priorities": kvm_s390_deliver_pending_interrupts() takes the highest bit first).
IRQ_PEND_EXT_SERVICE = 15
IRQ_PEND_EXT_SERVICE_EV = 16
#: srv_signal.ext_params: the SCCB address part and the two event-pending bits.
SCCB_MASK = 0xFFFFFFF8
SCCB_EVENT_PENDING = 0x3
#: External interruption code of the service signal (KVM_S390_INT_SERVICE's low half).
EXT_IRQ_SERVICE_SIG = 0x2401
#: struct kvm_s390_sie_block's iictl: nothing to inject, an external interruption.
IICTL_CODE_NONE = 0x00
IICTL_CODE_EXT = 0x02
#: External interruption codes of the clock comparator and the CPU timer
#: (arch/s390/include/asm/irq.h: EXT_IRQ_CLK_COMP, EXT_IRQ_CPU_TIMER).
EXT_IRQ_CLK_COMP = 0x1004
EXT_IRQ_CPU_TIMER = 0x1005
#: Intercept code 20 (arch/s390/kvm/kvm-s390.h ICPT_EXTINT): an external interruption.
ICPT_EXTINT = 0x14
#: Lowcore offset of the external new PSW (struct lowcore ext_new_psw, __LC_EXT_NEW_PSW).
LC_EXT_NEW_PSW = 0x1B0
#: The external new PSW of the simulated extint-loop guest: 64-bit, external
#: interrupts enabled (PSW_MASK_EXT), its handler right behind the payload's entry.
EXTINT_LOOP_PSW = (0x0100000180000000, 0x10800)
#: Where the simulated loader's SCCB is (the guest address its ``servc`` names).
SCLP_GUEST_SCCB = 0x10000

#: Names of the debugging gates (``pause_at``).
PAUSE_POINTS = frozenset(
    {
        "perform:before_detach",  # PERFORM entered, kvm->lock not yet taken
        "perform:detached",  # record detached, kvm->lock dropped, walk not started
        "perform:batch",  # after each destroyed batch, before the fatal-signal check
        "prepare:cpus_destroyed",  # PREPARE destroyed the vCPUs, still holds kvm->lock
        "run:slice",  # a protected guest finished a slice of page touching
    }
)

#: Allocation sites for ``inject_alloc_failure``.
ALLOC_SITES = frozenset({"prepare:record", "prepare:asce"})

_MS_ASYNC = 1
_DEV_KVM = "/dev/kvm"

# z/Architecture PSW bits (MSB-0 bit n is 1 << (63 - n)).
PSW_MASK_WAIT = 1 << (63 - 14)
PSW_MASK_IO = 1 << (63 - 6)
PSW_MASK_EXT = 1 << (63 - 7)
PSW_MASK_MCHECK = 1 << (63 - 13)
PSW_MASK_64 = (1 << (63 - 31)) | (1 << (63 - 32))  # EA | BA: 64-bit addressing
#: The PSW the simulated guest ends with, as the kvmpv s390x payload does: a
#: disabled wait at 0xfff (QEMU's "special wait PSW", spec 10.4).
PAYLOAD_DONE_PSW = (PSW_MASK_WAIT | PSW_MASK_64, 0xFFF)
#: zipl's libc_stop() (s390-tools zipl/boot/libc.c): how stage3a/stage3b end a failed boot
LOADER_STOP_MASK = 0x0002000080000000
#: Where the Ultravisor starts a protected CPU on LOAD: the SE header's PSW
#: (pvimg's default, 64-bit at 0x10000).  Without an image (the simulator has
#: none yet) it is the payload's entry.
SE_DEFAULT_PSW = (PSW_MASK_64, 0x10000)
#: PV CPU states of ``kvm_s390_pv_set_cpu_state`` (UVC_CMD_CPU_SET_STATE).
PV_CPU_STATE_OPR = 1
PV_CPU_STATE_STP = 2
PV_CPU_STATE_OPR_LOAD = 5


def _disabled_wait(mask: int) -> bool:
    """kvm_s390_handle_wait(): a wait with I/O, external and machine-check
    interrupts all off never ends; the kernel leaves it to userspace."""
    return bool(mask & PSW_MASK_WAIT) and not mask & (PSW_MASK_IO | PSW_MASK_EXT | PSW_MASK_MCHECK)


# --------------------------------------------------------------------------
# Kernel objects
# --------------------------------------------------------------------------


class _Config:
    """A secure configuration (UV side) and the pages it owns."""

    def __init__(self, handle: int, vm: _Vm) -> None:
        self.handle = handle
        self.vm = vm
        self.state = "current"
        self.cpus = 0  # secure CPUs: "destroy page" fails while > 0
        self.fast_destroyed = False
        self.secure = _Ranges()
        self.sec_parms = False
        self.verified = False
        self.dumping = False
        # SET_SEC_PARMS: what the UV opened of the header (sehdr.open_header)
        self.header: Optional[sehdr.OpenedHeader] = None
        # UNPACK calls in order: (gpa, size, tweak) -- a handful per boot
        self.unpacked: list[tuple[int, int, int]] = []
        # UNPACK's running digests over the encrypted pages: pld, ald, tld
        self.digests = (hashlib.sha512(), hashlib.sha512(), hashlib.sha512())
        self.pages = 0


@dataclass
class _Record:
    """``struct pv_vm_to_be_destroyed``: a set-aside configuration (spec 3.3 step 6)."""

    config: _Config
    handle: int  # 0 when Destroy Secure Configuration Fast was used


class _Vcpu:
    def __init__(self, vm: _Vm, vcpu_id: int) -> None:
        self.vm = vm
        self.id = vcpu_id
        self.mutex = _CountingMutex(vm.changed)  # vcpu->mutex
        self.config: Optional[_Config] = None  # set while it is a secure CPU
        self.cpu_handle = 0
        self.in_run = False
        self.kick = threading.Event()
        # kvm_arch_vcpu_create(): a new vCPU is STOPPED (CPUSTAT_STOPPED)
        self.stopped = True
        # the SIE block's guest PSW (gpsw); kvm_run's copy is synced in and out
        self.psw = (0, 0)
        # the loader's SCLP console setup: "" none, "call" to be issued, "waiting"
        # for the service signal, "done"
        self.sclp = ""
        self.sida = bytearray(PAGE_SIZE)  # secure instruction data area
        # The SIE block's interruption-injection fields of a protected CPU
        # (iictl, eic, eiparams: struct kvm_s390_sie_block), which write_sclp()
        # fills and the Ultravisor presents to the guest on the next entry.
        self.iictl = IICTL_CODE_NONE
        self.eic = 0
        self.eiparams = 0
        # What the simulated guest took, in order: (external interruption
        # code, parameter as the guest reads it from its lowcore).  The guest's
        # own report (a protected guest's lowcore is encrypted: nothing but the
        # guest can tell what it received); read with guest_ext_interrupts().
        self.ext_interrupts: list[tuple[int, int]] = []
        # The guest's program after the payload's stores: "" the payload's
        # disabled wait; "extint_loop" an external interruption loop
        # (HostState.guest_extint_loop()).  ckc_pending: its clock comparator
        # condition (IRQ_PEND_EXT_CLOCK_COMP), never reset by the guest.
        self.guest_program = ""
        self.ckc_pending = False
        # The prefix area (two pages from kvm_s390_get_prefix(); the simulated
        # guests keep their lowcore at 0) and KVM's hold on it: the request
        # KVM_REQ_REFRESH_GUEST_PREFIX (set by kvm_s390_set_prefix() at every
        # initial reset, and by kvm_gmap_notifier()), and whether the prefix
        # pages are mapped in the gmap, with the notification bit, right now
        # (kvm_s390_handle_requests(): gmap_mprotect_notify()).
        self.prefix = 0
        self.prefix_request = True
        self.prefix_mapped = False
        self.run_addr = 0
        self.run: Optional[uapi.kvm_run_s390] = None
        self.memfd = -1


@dataclass
class _Memslot:
    slot: int
    flags: int
    gpa: int
    size: int
    uaddr: int


class _Vm:
    def __init__(
        self, vm_id: int, mem_limit: int, ucontrol: bool, changed: threading.Condition
    ) -> None:
        self.id = vm_id
        # Where its locks announce the threads blocked on them (the host's _cond).
        self.changed = changed
        self.lock = _CountingMutex(changed)  # kvm->lock
        self.ucontrol = ucontrol
        self.mem_limit = mem_limit
        self.gmap_limit = mem_limit - 1 if not ucontrol else KVM_S390_NO_MEM_LIMIT
        self.memslots: dict[int, _Memslot] = {}
        self.vcpus: list[_Vcpu] = []
        self.created_vcpus = 0
        self.config: Optional[_Config] = None  # kvm->arch.pv.handle != 0
        self.set_aside: Optional[_Record] = None
        self.need_cleanup: list[_Record] = []
        self.performing = 0
        self.mmu_notifier = False
        self.refs = 1
        self.alive = True
        # kvm->arch.user_cpu_state_ctrl: set by KVM_SET_MP_STATE and by every
        # KVM_S390_PV_COMMAND; from then on KVM_RUN no longer starts a STOPPED vCPU.
        self.user_cpu_state_ctrl = False
        # struct kvm_s390_float_interrupt, as far as the service signal goes:
        # pending_irqs (IRQ_PEND_EXT_SERVICE / _SERVICE_EV bits) and
        # srv_signal.ext_params (SCCB address | event-pending bits).
        self.float_pending_irqs = 0
        self.srv_ext_params = 0
        self.guest_tod = 0  # the last KVM_S390_VM_TOD value set (kvm_s390_set_tod)
        # page->index of the gmap's top-level table: the guest address the
        # table maps from, 0 for the table gmap_alloc() made (and, since commit
        # c2fceb59bbda, for the copy s390_replace_asce() makes).
        self.gmap_table_index = 0
        self.asce_replaced = 0  # top-level tables s390_replace_asce() made
        # Host addresses whose PTEs carry the notification bit (PGSTE_IN_BIT,
        # set by gmap_mprotect_notify() for the vCPUs' prefix pages): their
        # invalidation calls ptep_notify().
        self.notify = _Ranges()


class _File:
    def __init__(self, kind: str, realfd: int, obj: object) -> None:
        self.kind = kind  # "dev" | "vm" | "vcpu"
        self.realfd = realfd
        self.obj = obj
        self.refs = 1  # the fd itself


class _Pause:
    def __init__(self) -> None:
        self.release = threading.Event()
        self.waiting = 0


class _Out:
    """rc/rrc of a command being handled (the kernel's &cmd->rc, &cmd->rrc)."""

    def __init__(self) -> None:
        self.rc = 0
        self.rrc = 0


def _asce_type(gmap_limit: int) -> str:
    """gmap_create() sizing (spec 3.10): top-level table type for a last address."""
    if gmap_limit < (1 << 31):
        return "segment"
    if gmap_limit < (1 << 42):
        return "region-3"
    if gmap_limit < (1 << 53):
        return "region-2"
    return "region-1"


def _asce_end(gmap_limit: int) -> int:
    """The first guest address the top-level table of ``_asce_type(gmap_limit)`` cannot map.

    What asce_contains_gfn() tests in Linux 7.1's kvm_arch_prepare_memory_region()
    (commit 7b53b4801884): a segment table maps 2 GiB,
    a region-third table 4 TiB, a region-second table 8 PiB, a region-first
    table all 16 EiB.
    """
    return {"segment": 1 << 31, "region-3": 1 << 42, "region-2": 1 << 53}.get(
        _asce_type(gmap_limit), 1 << 64
    )


def _err(code: int) -> OSError:
    return OSError(code, os.strerror(code))


def _memfd(name: str, size: int = 0) -> int:
    fd = os.memfd_create(name, os.MFD_CLOEXEC)
    if size:
        os.ftruncate(fd, size)
    return fd
