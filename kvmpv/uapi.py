# SPDX-License-Identifier: GPL-2.0-only
"""KVM userspace ABI as used by kvmpv: ``linux/kvm.h``, ``asm/kvm.h`` (s390, x86).

Data only: ioctl numbers, constants, enums and ctypes structures, spelled as in
the kernel headers so that ``grep KVM_PV_ASYNC_CLEANUP_PREPARE`` finds them in
both trees.  Nothing here is parsed from the system headers at run time: the
Debian bookworm headers (6.1) predate the async-cleanup interface and, since
Linux 6.9 (commit 71cd774ad2f9, "KVM: s390: move s390-specific structs to
uapi/asm/kvm.h"), the PV structures exist only in the s390 ``asm/kvm.h``.

Every value and layout below is checked against the Linux 6.12 headers compiled
for x86_64 and s390x (``fixtures/uapi/<arch>.json``, ``tests/test_uapi.py``).

The structures are native-endian ``ctypes.Structure``; on s390x that is
big-endian, which is what the kernel expects.  ``be_struct()`` builds the
big-endian twin of a structure for golden-byte tests on little-endian hosts.
"""

from __future__ import annotations

import ctypes
import enum
from typing import Any

# --------------------------------------------------------------------------
# asm-generic/ioctl.h (x86_64 and s390x both use the generic layout)
# --------------------------------------------------------------------------

_IOC_NRBITS = 8
_IOC_TYPEBITS = 8
_IOC_SIZEBITS = 14
_IOC_DIRBITS = 2

_IOC_NRSHIFT = 0
_IOC_TYPESHIFT = _IOC_NRSHIFT + _IOC_NRBITS
_IOC_SIZESHIFT = _IOC_TYPESHIFT + _IOC_TYPEBITS
_IOC_DIRSHIFT = _IOC_SIZESHIFT + _IOC_SIZEBITS

_IOC_NONE = 0
_IOC_WRITE = 1
_IOC_READ = 2


def _IOC(dir_: int, type_: int, nr: int, size: int) -> int:
    if not 0 <= size < (1 << _IOC_SIZEBITS):
        raise ValueError(f"ioctl argument size {size} does not fit in {_IOC_SIZEBITS} bits")
    return (
        (dir_ << _IOC_DIRSHIFT)
        | (type_ << _IOC_TYPESHIFT)
        | (nr << _IOC_NRSHIFT)
        | (size << _IOC_SIZESHIFT)
    )


def _IO(type_: int, nr: int) -> int:
    return _IOC(_IOC_NONE, type_, nr, 0)


def _IOR(type_: int, nr: int, struct: type[ctypes.Structure]) -> int:
    return _IOC(_IOC_READ, type_, nr, ctypes.sizeof(struct))


def _IOW(type_: int, nr: int, struct: type[ctypes.Structure]) -> int:
    return _IOC(_IOC_WRITE, type_, nr, ctypes.sizeof(struct))


def _IOWR(type_: int, nr: int, struct: type[ctypes.Structure]) -> int:
    return _IOC(_IOC_READ | _IOC_WRITE, type_, nr, ctypes.sizeof(struct))


def _IOC_DIR(nr: int) -> int:
    return (nr >> _IOC_DIRSHIFT) & ((1 << _IOC_DIRBITS) - 1)


def _IOC_TYPE(nr: int) -> int:
    return (nr >> _IOC_TYPESHIFT) & ((1 << _IOC_TYPEBITS) - 1)


def _IOC_NR(nr: int) -> int:
    return (nr >> _IOC_NRSHIFT) & ((1 << _IOC_NRBITS) - 1)


def _IOC_SIZE(nr: int) -> int:
    return (nr >> _IOC_SIZESHIFT) & ((1 << _IOC_SIZEBITS) - 1)


# --------------------------------------------------------------------------
# linux/kvm.h: generic
# --------------------------------------------------------------------------

KVMIO = 0xAE
KVM_API_VERSION = 12

# KVM_CREATE_VM machine types (s390)
KVM_VM_S390_UCONTROL = 1

# kvm_userspace_memory_region.flags
KVM_MEM_LOG_DIRTY_PAGES = 1 << 0
KVM_MEM_READONLY = 1 << 1


class kvm_userspace_memory_region(ctypes.Structure):
    """``struct kvm_userspace_memory_region`` (32 bytes)."""

    _fields_ = [
        ("slot", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("guest_phys_addr", ctypes.c_uint64),
        ("memory_size", ctypes.c_uint64),  # bytes
        ("userspace_addr", ctypes.c_uint64),  # start of the userspace allocated memory
    ]


class kvm_enable_cap(ctypes.Structure):
    """``struct kvm_enable_cap`` (104 bytes)."""

    _fields_ = [
        ("cap", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("args", ctypes.c_uint64 * 4),
        ("pad", ctypes.c_uint8 * 64),
    ]


class kvm_device_attr(ctypes.Structure):
    """``struct kvm_device_attr`` (24 bytes)."""

    _fields_ = [
        ("flags", ctypes.c_uint32),  # no flags currently defined
        ("group", ctypes.c_uint32),  # device-defined
        ("attr", ctypes.c_uint64),  # group-defined
        ("addr", ctypes.c_uint64),  # userspace address of attr data
    ]


class KvmCap(enum.IntEnum):
    """``KVM_CAP_*`` numbers used by kvmpv (``KVM_CHECK_EXTENSION`` argument)."""

    KVM_CAP_IRQCHIP = 0
    KVM_CAP_USER_MEMORY = 3
    KVM_CAP_SET_TSS_ADDR = 4
    KVM_CAP_NR_VCPUS = 9
    KVM_CAP_NR_MEMSLOTS = 10
    KVM_CAP_MAX_VCPUS = 66
    KVM_CAP_DEVICE_CTRL = 89
    KVM_CAP_IMMEDIATE_EXIT = 136
    KVM_CAP_S390_PROTECTED = 180
    KVM_CAP_S390_PROTECTED_DUMP = 217
    KVM_CAP_S390_PROTECTED_ASYNC_DISABLE = 224


# --------------------------------------------------------------------------
# s390 PV interface (linux/kvm.h up to 6.8, arch/s390/include/uapi/asm/kvm.h since 6.9)
# --------------------------------------------------------------------------


class pv_cmd_id(enum.IntEnum):
    """``enum pv_cmd_id``: sub-commands of ``KVM_S390_PV_COMMAND``."""

    KVM_PV_ENABLE = 0
    KVM_PV_DISABLE = 1
    KVM_PV_SET_SEC_PARMS = 2
    KVM_PV_UNPACK = 3
    KVM_PV_VERIFY = 4
    KVM_PV_PREP_RESET = 5
    KVM_PV_UNSHARE_ALL = 6
    KVM_PV_INFO = 7
    KVM_PV_DUMP = 8
    KVM_PV_ASYNC_CLEANUP_PREPARE = 9  # Linux 6.2, commit fb491d5500a7
    KVM_PV_ASYNC_CLEANUP_PERFORM = 10  # Linux 6.2


class pv_cmd_info_id(enum.IntEnum):
    """``enum pv_cmd_info_id``: ``kvm_s390_pv_info_header.id``."""

    KVM_PV_INFO_VM = 0
    KVM_PV_INFO_DUMP = 1


class pv_cmd_dmp_id(enum.IntEnum):
    """``enum pv_cmd_dmp_id``: ``kvm_s390_pv_dmp.subcmd``."""

    KVM_PV_DUMP_INIT = 0
    KVM_PV_DUMP_CONFIG_STOR_STATE = 1
    KVM_PV_DUMP_COMPLETE = 2
    KVM_PV_DUMP_CPU = 3


class kvm_pv_cmd(ctypes.Structure):
    """``struct kvm_pv_cmd`` (32 bytes): argument of ``KVM_S390_PV_COMMAND``.

    ``rc``/``rrc`` are the Ultravisor return (reason) codes, written by KVM
    only with values > 0; callers zero them before each call (api.rst 4.125).
    The whole struct is copied back to userspace.
    """

    _fields_ = [
        ("cmd", ctypes.c_uint32),  # enum pv_cmd_id
        ("rc", ctypes.c_uint16),  # Ultravisor return code
        ("rrc", ctypes.c_uint16),  # Ultravisor return reason code
        ("data", ctypes.c_uint64),  # data/address for the sub-command
        ("flags", ctypes.c_uint32),  # must be 0 (else -EINVAL)
        ("reserved", ctypes.c_uint32 * 3),
    ]


class kvm_s390_pv_sec_parm(ctypes.Structure):
    """``struct kvm_s390_pv_sec_parm`` (16 bytes): ``KVM_PV_SET_SEC_PARMS``."""

    _fields_ = [
        ("origin", ctypes.c_uint64),
        ("length", ctypes.c_uint64),
    ]


class kvm_s390_pv_unp(ctypes.Structure):
    """``struct kvm_s390_pv_unp`` (24 bytes): ``KVM_PV_UNPACK``."""

    _fields_ = [
        ("addr", ctypes.c_uint64),
        ("size", ctypes.c_uint64),
        ("tweak", ctypes.c_uint64),
    ]


class kvm_s390_pv_dmp(ctypes.Structure):
    """``struct kvm_s390_pv_dmp`` (64 bytes): ``KVM_PV_DUMP``."""

    _fields_ = [
        ("subcmd", ctypes.c_uint64),  # enum pv_cmd_dmp_id
        ("buff_addr", ctypes.c_uint64),
        ("buff_len", ctypes.c_uint64),
        ("gaddr", ctypes.c_uint64),  # for KVM_PV_DUMP_CPU: the cpu address
        ("reserved", ctypes.c_uint64 * 4),
    ]


class kvm_s390_pv_info_header(ctypes.Structure):
    """``struct kvm_s390_pv_info_header`` (16 bytes)."""

    _fields_ = [
        ("id", ctypes.c_uint32),  # enum pv_cmd_info_id
        ("len_max", ctypes.c_uint32),
        ("len_written", ctypes.c_uint32),
        ("reserved", ctypes.c_uint32),
    ]


class kvm_s390_pv_info_dump(ctypes.Structure):
    """``struct kvm_s390_pv_info_dump`` (24 bytes)."""

    _fields_ = [
        ("dump_cpu_buffer_len", ctypes.c_uint64),
        ("dump_config_mem_buffer_per_1m", ctypes.c_uint64),
        ("dump_config_finalize_len", ctypes.c_uint64),
    ]


class kvm_s390_pv_info_vm(ctypes.Structure):
    """``struct kvm_s390_pv_info_vm`` (64 bytes)."""

    _fields_ = [
        ("inst_calls_list", ctypes.c_uint64 * 4),  # installed UV calls, MSB-0 bit numbering
        ("max_cpus", ctypes.c_uint64),
        ("max_guests", ctypes.c_uint64),
        ("max_guest_addr", ctypes.c_uint64),
        ("feature_indication", ctypes.c_uint64),
    ]


class _kvm_s390_pv_info_u(ctypes.Union):
    _fields_ = [
        ("dump", kvm_s390_pv_info_dump),
        ("vm", kvm_s390_pv_info_vm),
    ]


class kvm_s390_pv_info(ctypes.Structure):
    """``struct kvm_s390_pv_info`` (80 bytes): header, then a union of dump/vm."""

    _anonymous_ = ("u",)
    _fields_ = [
        ("header", kvm_s390_pv_info_header),
        ("u", _kvm_s390_pv_info_u),
    ]


# s390 VM device attributes (KVM_SET_DEVICE_ATTR on the VM fd)
KVM_S390_VM_MEM_CTRL = 0
KVM_S390_VM_MEM_ENABLE_CMMA = 0
KVM_S390_VM_MEM_CLR_CMMA = 1
KVM_S390_VM_MEM_LIMIT_SIZE = 2
KVM_S390_VM_TOD = 1
# attributes of KVM_S390_VM_TOD; _EXT takes struct kvm_s390_vm_tod_clock
# (__u8 epoch_idx; __u64 tod: 16 bytes, tod at offset 8)
KVM_S390_VM_TOD_LOW = 0
KVM_S390_VM_TOD_HIGH = 1
KVM_S390_VM_TOD_EXT = 2

# --------------------------------------------------------------------------
# x86 (arch/x86/include/uapi/asm/kvm.h): what a tiny real guest needs
# --------------------------------------------------------------------------


class kvm_regs(ctypes.Structure):
    """``struct kvm_regs`` (x86, 144 bytes)."""

    _fields_ = [
        (name, ctypes.c_uint64)
        for name in (
            "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp",
            "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15",
            "rip", "rflags",
        )
    ]  # fmt: skip


class kvm_segment(ctypes.Structure):
    """``struct kvm_segment`` (x86, 24 bytes)."""

    _fields_ = [
        ("base", ctypes.c_uint64),
        ("limit", ctypes.c_uint32),
        ("selector", ctypes.c_uint16),
        ("type", ctypes.c_uint8),
        ("present", ctypes.c_uint8),
        ("dpl", ctypes.c_uint8),
        ("db", ctypes.c_uint8),
        ("s", ctypes.c_uint8),
        ("l", ctypes.c_uint8),
        ("g", ctypes.c_uint8),
        ("avl", ctypes.c_uint8),
        ("unusable", ctypes.c_uint8),
        ("padding", ctypes.c_uint8),
    ]


class kvm_dtable(ctypes.Structure):
    """``struct kvm_dtable`` (x86, 16 bytes)."""

    _fields_ = [
        ("base", ctypes.c_uint64),
        ("limit", ctypes.c_uint16),
        ("padding", ctypes.c_uint16 * 3),
    ]


KVM_NR_INTERRUPTS = 256


class kvm_sregs(ctypes.Structure):
    """``struct kvm_sregs`` (x86, 312 bytes)."""

    _fields_ = [
        ("cs", kvm_segment),
        ("ds", kvm_segment),
        ("es", kvm_segment),
        ("fs", kvm_segment),
        ("gs", kvm_segment),
        ("ss", kvm_segment),
        ("tr", kvm_segment),
        ("ldt", kvm_segment),
        ("gdt", kvm_dtable),
        ("idt", kvm_dtable),
        ("cr0", ctypes.c_uint64),
        ("cr2", ctypes.c_uint64),
        ("cr3", ctypes.c_uint64),
        ("cr4", ctypes.c_uint64),
        ("cr8", ctypes.c_uint64),
        ("efer", ctypes.c_uint64),
        ("apic_base", ctypes.c_uint64),
        ("interrupt_bitmap", ctypes.c_uint64 * ((KVM_NR_INTERRUPTS + 63) // 64)),
    ]


# struct kvm_run: only the fixed header and the exits kvmpv decodes.  The
# structure is mmapped from the vCPU fd (KVM_GET_VCPU_MMAP_SIZE bytes).
KVM_EXIT_UNKNOWN = 0
KVM_EXIT_EXCEPTION = 1
KVM_EXIT_IO = 2
KVM_EXIT_HYPERCALL = 3
KVM_EXIT_DEBUG = 4
KVM_EXIT_HLT = 5
KVM_EXIT_MMIO = 6
KVM_EXIT_IRQ_WINDOW_OPEN = 7
KVM_EXIT_SHUTDOWN = 8
KVM_EXIT_FAIL_ENTRY = 9
KVM_EXIT_INTR = 10
KVM_EXIT_S390_SIEIC = 13  # an s390 intercept the kernel leaves to userspace
KVM_EXIT_S390_RESET = 14  # the s390 guest asked for a reset
KVM_EXIT_INTERNAL_ERROR = 17
KVM_EXIT_SYSTEM_EVENT = 24

KVM_EXIT_IO_IN = 0
KVM_EXIT_IO_OUT = 1


class kvm_run_io(ctypes.Structure):
    """``kvm_run.io`` (the KVM_EXIT_IO member of the exit union)."""

    _fields_ = [
        ("direction", ctypes.c_uint8),
        ("size", ctypes.c_uint8),  # bytes
        ("port", ctypes.c_uint16),
        ("count", ctypes.c_uint32),
        ("data_offset", ctypes.c_uint64),  # relative to kvm_run start
    ]


#: The part of ``struct kvm_run`` before the arch-specific fields (both layouts).
_KVM_RUN_HEADER: list[tuple[str, Any]] = [
    ("request_interrupt_window", ctypes.c_uint8),
    ("immediate_exit", ctypes.c_uint8),
    ("padding1", ctypes.c_uint8 * 6),
    ("exit_reason", ctypes.c_uint32),
    ("ready_for_interrupt_injection", ctypes.c_uint8),
    ("if_flag", ctypes.c_uint8),
    ("flags", ctypes.c_uint16),
    ("cr8", ctypes.c_uint64),
    ("apic_base", ctypes.c_uint64),
]


class kvm_run(ctypes.Structure):
    """Header of ``struct kvm_run`` up to the start of the exit union, plus ``io``.

    x86 layout: the exit union starts at offset 32.  On s390 ``psw_mask`` and
    ``psw_addr`` come first and the union starts at 48, so ``io`` must not be
    decoded there (the fixtures record it as an x86-only field); s390 vCPUs
    map ``kvm_run_s390`` instead.
    """

    _fields_ = [
        *_KVM_RUN_HEADER,
        ("io", kvm_run_io),  # first member of the exit union, at offset 32
    ]


class kvm_run_s390_sieic(ctypes.Structure):
    """``kvm_run.s390_sieic`` (KVM_EXIT_S390_SIEIC): the intercepted instruction."""

    _fields_ = [
        ("icptcode", ctypes.c_uint8),
        ("ipa", ctypes.c_uint16),
        ("ipb", ctypes.c_uint32),
    ]


class kvm_sync_regs(ctypes.Structure):
    """s390 ``struct kvm_sync_regs``, up to ``gprs``: ``kvm_run.s.regs`` (the
    registers KVM shares with userspace on every exit; for a protected CPU
    the Ultravisor fills in only the ones an intercepted instruction uses)."""

    _fields_ = [
        ("prefix", ctypes.c_uint64),
        ("gprs", ctypes.c_uint64 * 16),
    ]


class _kvm_run_s390_exit(ctypes.Union):
    _fields_ = [("s390_sieic", kvm_run_s390_sieic), ("padding", ctypes.c_uint8 * 256)]


class _kvm_run_s390_s(ctypes.Union):
    _fields_ = [("regs", kvm_sync_regs), ("padding", ctypes.c_uint8 * 2048)]


class kvm_run_s390(ctypes.Structure):
    """``struct kvm_run`` as s390 lays it out, up to ``s390_sieic``.

    The common header (``immediate_exit``, ``exit_reason``; s390 keeps the
    x86 ``cr8``/``apic_base`` slots) is followed by the guest PSW, synced
    into the SIE block on every ``KVM_RUN`` entry and back on exit (only
    the condition code for a protected vCPU, whose PSW the Ultravisor
    owns), then the exit union at 48.
    """

    _fields_ = [
        *_KVM_RUN_HEADER,
        ("psw_mask", ctypes.c_uint64),  # #ifdef __KVM_S390
        ("psw_addr", ctypes.c_uint64),
        ("exit", _kvm_run_s390_exit),  # the exit union, at 48: s390_sieic
        ("kvm_valid_regs", ctypes.c_uint64),
        ("kvm_dirty_regs", ctypes.c_uint64),
        ("s", _kvm_run_s390_s),  # s.regs: struct kvm_sync_regs
    ]
    _anonymous_ = ("exit",)


# s390 intercept codes userspace sees in s390_sieic.icptcode
# (arch/s390/kvm/kvm-s390.h, ICPT_*): the guest finished.
ICPT_WAIT = 0x1C  # disabled wait: kvm_s390_handle_wait() leaves it to userspace
ICPT_STOP = 0x28  # the CPU stopped itself

# struct kvm_mp_state values: x86 uses the first five, s390 STOPPED/OPERATING/LOAD.
KVM_MP_STATE_RUNNABLE = 0
KVM_MP_STATE_UNINITIALIZED = 1
KVM_MP_STATE_INIT_RECEIVED = 2
KVM_MP_STATE_HALTED = 3
KVM_MP_STATE_SIPI_RECEIVED = 4
KVM_MP_STATE_STOPPED = 5
KVM_MP_STATE_CHECK_STOP = 6
KVM_MP_STATE_OPERATING = 7
KVM_MP_STATE_LOAD = 8


#: kvm_s390_mem_op.op: the SIDA (secure instruction data area) of a
#: protected CPU, where the Ultravisor puts an intercepted instruction's
#: operands (spec 10.2)
KVM_S390_MEMOP_SIDA_READ = 2
KVM_S390_MEMOP_SIDA_WRITE = 3


class _kvm_s390_mem_op_u(ctypes.Union):
    _fields_ = [("sida_offset", ctypes.c_uint32), ("reserved", ctypes.c_uint8 * 32)]


class kvm_s390_mem_op(ctypes.Structure):
    """``struct kvm_s390_mem_op`` (64 bytes): ``KVM_S390_MEM_OP`` on a vCPU fd."""

    _anonymous_ = ("u",)
    _fields_ = [
        ("gaddr", ctypes.c_uint64),
        ("flags", ctypes.c_uint64),
        ("size", ctypes.c_uint32),  # bytes
        ("op", ctypes.c_uint32),
        ("buf", ctypes.c_uint64),  # userspace buffer
        ("u", _kvm_s390_mem_op_u),  # sida_offset (the ar/key/old_addr struct is unused here)
    ]


#: kvm_s390_interrupt.type of the SCLP service-signal external interrupt
KVM_S390_INT_SERVICE = 0xFFFF2401


class kvm_s390_interrupt(ctypes.Structure):
    """``struct kvm_s390_interrupt`` (16 bytes): ``KVM_S390_INTERRUPT`` on the VM fd."""

    _fields_ = [
        ("type", ctypes.c_uint32),
        ("parm", ctypes.c_uint32),
        ("parm64", ctypes.c_uint64),
    ]


class kvm_mp_state(ctypes.Structure):
    """``struct kvm_mp_state`` (4 bytes): ``KVM_GET_MP_STATE``/``KVM_SET_MP_STATE``."""

    _fields_ = [("mp_state", ctypes.c_uint32)]


class kvm_cpuid_entry2(ctypes.Structure):
    """``struct kvm_cpuid_entry2`` (x86, 40 bytes)."""

    _fields_ = [
        ("function", ctypes.c_uint32),
        ("index", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("eax", ctypes.c_uint32),
        ("ebx", ctypes.c_uint32),
        ("ecx", ctypes.c_uint32),
        ("edx", ctypes.c_uint32),
        ("padding", ctypes.c_uint32 * 3),
    ]


class kvm_cpuid2(ctypes.Structure):
    """``struct kvm_cpuid2`` header (x86, 8 bytes); ``nent`` entries follow it.

    The request numbers encode only this header (a flexible array member).
    """

    _fields_ = [("nent", ctypes.c_uint32), ("padding", ctypes.c_uint32)]


# --------------------------------------------------------------------------
# ioctl request numbers
# --------------------------------------------------------------------------

# /dev/kvm
KVM_GET_API_VERSION = _IO(KVMIO, 0x00)
KVM_CREATE_VM = _IO(KVMIO, 0x01)  # arg: machine type
KVM_CHECK_EXTENSION = _IO(KVMIO, 0x03)  # arg: cap; also on the VM fd
KVM_GET_VCPU_MMAP_SIZE = _IO(KVMIO, 0x04)
KVM_GET_SUPPORTED_CPUID = _IOWR(KVMIO, 0x05, kvm_cpuid2)  # x86

# VM fd
KVM_CREATE_VCPU = _IO(KVMIO, 0x41)  # arg: vcpu id
KVM_SET_USER_MEMORY_REGION = _IOW(KVMIO, 0x46, kvm_userspace_memory_region)
KVM_SET_TSS_ADDR = _IO(KVMIO, 0x47)  # x86
KVM_ENABLE_CAP = _IOW(KVMIO, 0xA3, kvm_enable_cap)
KVM_S390_PV_COMMAND = _IOWR(KVMIO, 0xC5, kvm_pv_cmd)
KVM_SET_DEVICE_ATTR = _IOW(KVMIO, 0xE1, kvm_device_attr)
KVM_GET_DEVICE_ATTR = _IOW(KVMIO, 0xE2, kvm_device_attr)
KVM_HAS_DEVICE_ATTR = _IOW(KVMIO, 0xE3, kvm_device_attr)

# vCPU fd
KVM_RUN = _IO(KVMIO, 0x80)
KVM_GET_REGS = _IOR(KVMIO, 0x81, kvm_regs)
KVM_SET_REGS = _IOW(KVMIO, 0x82, kvm_regs)
KVM_GET_SREGS = _IOR(KVMIO, 0x83, kvm_sregs)
KVM_SET_SREGS = _IOW(KVMIO, 0x84, kvm_sregs)
KVM_SET_CPUID2 = _IOW(KVMIO, 0x90, kvm_cpuid2)  # x86
KVM_S390_INTERRUPT = _IOW(KVMIO, 0x94, kvm_s390_interrupt)  # VM fd: floating interrupts
KVM_S390_INITIAL_RESET = _IO(KVMIO, 0x97)
KVM_GET_MP_STATE = _IOR(KVMIO, 0x98, kvm_mp_state)
KVM_SET_MP_STATE = _IOW(KVMIO, 0x99, kvm_mp_state)
KVM_S390_MEM_OP = _IOW(KVMIO, 0xB1, kvm_s390_mem_op)
KVM_S390_NORMAL_RESET = _IO(KVMIO, 0xC3)
KVM_S390_CLEAR_RESET = _IO(KVMIO, 0xC4)
KVM_S390_PV_CPU_COMMAND = _IOWR(KVMIO, 0xD0, kvm_pv_cmd)

#: request number -> kernel name, for error messages ("KVM_CREATE_VM failed").
IOCTL_NAMES: dict[int, str] = {
    value: name
    for name, value in sorted(globals().items())
    if name.startswith("KVM_")
    and isinstance(value, int)
    and not isinstance(value, bool)
    and _IOC_TYPE(value) == KVMIO
    and value > 0xFF
}

# --------------------------------------------------------------------------
# Ultravisor values that surface in kvm_pv_cmd.rc/rrc or in sysfs.  Not uapi
# (arch/s390/include/asm/uv.h); kept here because they are ABI-visible data.
# --------------------------------------------------------------------------

UVC_CMD_DESTROY_SEC_CONF = 0x0101
UVC_CMD_DESTROY_SEC_CONF_FAST = 0x0102
UVC_CMD_DESTROY_SEC_CPU = 0x0121
UVC_CMD_CONV_FROM_SEC_STOR = 0x0201
UVC_CMD_DESTR_SEC_STOR = 0x0202

UVC_RC_EXECUTED = 0x0001
UVC_RC_INV_CMD = 0x0002
UVC_RC_INV_STATE = 0x0003
UVC_RC_INV_LEN = 0x0005
UVC_RC_NO_RESUME = 0x0007
UVC_RC_NEED_DESTROY = 0x8000

#: PREPARE success (and PERFORM interrupted by a fatal signal) report these
#: synthetic values (arch/s390/kvm/pv.c, "pretend things went well").
KVM_PV_ASYNC_SYNTHETIC_RC = UVC_RC_EXECUTED
KVM_PV_ASYNC_SYNTHETIC_RRC = 42

#: Installed-call bit of Destroy Secure Configuration Fast in
#: inst_calls_list[0] / the first word of /sys/firmware/uv/query/facilities
#: (bit 23 in MSB-0 numbering).
BIT_UVC_CMD_DESTROY_SEC_CONF_FAST = 23
UV_FACILITY_DESTROY_SEC_CONF_FAST_MASK = 1 << (63 - BIT_UVC_CMD_DESTROY_SEC_CONF_FAST)

#: PREPARE refuses a segment-type ASCE, i.e. a VM memory limit <= 2 GiB
#: (commit 292a7d6fca33, "KVM: s390: pv: fix asynchronous teardown for small VMs").
#: PREPARE also destroys the pages below this address synchronously.
PV_ASYNC_MIN_LIMIT = 1 << 31

#: s390 memslots and their userspace addresses must be 1 MiB aligned.
S390_MEMSLOT_ALIGN = 1 << 20

# --------------------------------------------------------------------------
# Helpers on the data (no I/O)
# --------------------------------------------------------------------------

#: Every ctypes structure of the binding, by kernel name (tests walk this).
STRUCTS: dict[str, type[ctypes.Structure]] = {
    cls.__name__: cls
    for cls in (
        kvm_userspace_memory_region,
        kvm_enable_cap,
        kvm_device_attr,
        kvm_pv_cmd,
        kvm_s390_pv_sec_parm,
        kvm_s390_pv_unp,
        kvm_s390_pv_dmp,
        kvm_s390_pv_info_header,
        kvm_s390_pv_info_dump,
        kvm_s390_pv_info_vm,
        kvm_s390_pv_info,
        kvm_regs,
        kvm_segment,
        kvm_dtable,
        kvm_sregs,
        kvm_mp_state,
        kvm_s390_mem_op,
        kvm_s390_interrupt,
        kvm_cpuid_entry2,
        kvm_cpuid2,
    )
}

#: Structures that exist only in one architecture's headers.
S390_ONLY_STRUCTS = frozenset(n for n in STRUCTS if n.startswith(("kvm_pv_", "kvm_s390_")))
X86_ONLY_STRUCTS = frozenset(
    {"kvm_regs", "kvm_segment", "kvm_dtable", "kvm_sregs", "kvm_cpuid_entry2", "kvm_cpuid2"}
)


def constants() -> dict[str, int]:
    """Every integer constant of the binding by kernel name (enums included)."""
    out: dict[str, int] = {}
    for name, value in globals().items():
        if name.isupper() and isinstance(value, int) and not isinstance(value, bool):
            if name.startswith(("KVM", "UVC", "BIT_UVC", "UV_", "PV_", "S390_", "ICPT_")):
                out[name] = int(value)
    for enum_cls in (KvmCap, pv_cmd_id, pv_cmd_info_id, pv_cmd_dmp_id):
        for member in enum_cls:
            out[member.name] = int(member)
    return out


def field_offsets(struct: type[ctypes.Structure]) -> dict[str, int]:
    """``offsetof`` of each top-level field.

    An anonymous union appears under its own name (``u`` of ``kvm_s390_pv_info``),
    not flattened into its members.
    """
    out: dict[str, int] = {}
    for field in struct._fields_:
        name = field[0]
        out[name] = getattr(struct, name).offset
    return out


def endian_struct(struct: type[Any], order: str) -> type[Any]:
    """Twin of a native structure with every field in byte order ``order``.

    ``"big"`` gives s390x byte order on any host, ``"little"`` x86_64's: used
    to produce and check the exact bytes a kernel of the other endianness
    reads, in golden-byte tests.  Nested structures, unions and arrays are
    converted recursively.
    """
    swapped = {"big": "__ctype_be__", "little": "__ctype_le__"}[order]

    def conv(ctype: Any) -> Any:
        if isinstance(ctype, type) and issubclass(ctype, (ctypes.Structure, ctypes.Union)):
            return endian_struct(ctype, order)
        if isinstance(ctype, type) and issubclass(ctype, ctypes.Array):
            return conv(ctype._type_) * ctype._length_
        return getattr(ctype, swapped, ctype)

    # Plain Structure/Union bases: conv() has already swapped every scalar, and
    # BigEndianStructure rejects nested unions before Python 3.12.
    base: type[Any] = ctypes.Union if issubclass(struct, ctypes.Union) else ctypes.Structure
    ns: dict[str, Any] = {"_fields_": [(f[0], conv(f[1])) for f in struct._fields_]}
    if hasattr(struct, "_anonymous_"):
        ns["_anonymous_"] = struct._anonymous_
    suffix = "_be" if order == "big" else "_le"
    return type(struct.__name__ + suffix, (base,), ns)


def be_struct(struct: type[Any]) -> type[Any]:
    """Big-endian twin of a native structure (s390x byte order on any host)."""
    return endian_struct(struct, "big")


# The runtime form of kvm_do_ioctl()'s static assert in the KVM selftests: the
# size encoded in each request must match the structure passed with it.
_ARG_OF = {
    KVM_SET_USER_MEMORY_REGION: kvm_userspace_memory_region,
    KVM_ENABLE_CAP: kvm_enable_cap,
    KVM_S390_PV_COMMAND: kvm_pv_cmd,
    KVM_S390_PV_CPU_COMMAND: kvm_pv_cmd,
    KVM_SET_DEVICE_ATTR: kvm_device_attr,
    KVM_GET_DEVICE_ATTR: kvm_device_attr,
    KVM_HAS_DEVICE_ATTR: kvm_device_attr,
    KVM_GET_REGS: kvm_regs,
    KVM_SET_REGS: kvm_regs,
    KVM_GET_SREGS: kvm_sregs,
    KVM_SET_SREGS: kvm_sregs,
    KVM_GET_MP_STATE: kvm_mp_state,
    KVM_S390_MEM_OP: kvm_s390_mem_op,
    KVM_S390_INTERRUPT: kvm_s390_interrupt,
    KVM_SET_MP_STATE: kvm_mp_state,
    KVM_GET_SUPPORTED_CPUID: kvm_cpuid2,
    KVM_SET_CPUID2: kvm_cpuid2,
}
for _req, _cls in _ARG_OF.items():
    assert _IOC_SIZE(_req) == ctypes.sizeof(_cls), (IOCTL_NAMES[_req], _cls.__name__)
del _req, _cls
