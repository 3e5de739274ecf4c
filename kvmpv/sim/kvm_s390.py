# SPDX-License-Identifier: GPL-2.0-only
"""The ``/dev/kvm``, VM and vCPU ioctls of arch/s390/kvm/kvm-s390.c.

Models ``kvm_arch_dev_ioctl()``/``kvm_vm_ioctl_check_extension()``,
``kvm_arch_init_vm()``, ``kvm_arch_vm_ioctl()`` (memslots, device attributes,
``KVM_S390_PV_COMMAND`` entry), ``kvm_arch_vcpu_create()``,
``kvm_arch_vcpu_ioctl()`` (MP_STATE, the three resets, MEM_OP, the vCPU PV
commands) and ``kvm_arch_destroy_vm()``, with the reference counting of
virt/kvm/kvm_main.c (``kvm_put_kvm()``), Linux 6.4 .. 7.0; the memslot and
memory-limit rules as of 7.1 (commit 7b53b4801884, ``kvm_s390_set_mem_control()``).
"""

from __future__ import annotations

import ctypes
import errno
import os

from .. import uapi
from ..syscalls import libc
from .intercept import Intercept
from .kvm_host import (
    KVM_MEM_MAX_NR_PAGES,
    KVM_S390_NO_MEM_LIMIT,
    KVM_USER_MEM_SLOTS,
    PAGE_SIZE,
    SE_DEFAULT_PSW,
    SEGMENT_ALIGN,
    UV_GUEST_CPU_STOR_LEN,
    VCPU_MMAP_SIZE,
    _asce_end,
    _err,
    _File,
    _memfd,
    _Memslot,
    _Out,
    _Vcpu,
    _Vm,
)
from .uvc import (
    UVC_CMD_CPU_RESET,
    UVC_CMD_CPU_RESET_CLEAR,
    UVC_CMD_CPU_RESET_INITIAL,
    UVC_CMD_CPU_SET_STATE,
    UVC_CMD_CREATE_SEC_CPU,
    UVC_CMD_DUMP_CPU,
)

#: The kernel functions this module models (method name -> where the kernel
#: has it): a deviating simulator overrides one of these (``kvmpv.sim``,
#: "Deviating simulators").
KERNEL_FUNCTIONS = {
    "kvm_put_kvm": "virt/kvm/kvm_main.c",
    "kvm_arch_dev_ioctl": "arch/s390/kvm/kvm-s390.c",
    "kvm_vm_ioctl_check_extension": "arch/s390/kvm/kvm-s390.c",
    "kvm_arch_init_vm": "arch/s390/kvm/kvm-s390.c",
    "kvm_arch_vm_ioctl": "arch/s390/kvm/kvm-s390.c",
    "kvm_arch_prepare_memory_region": "arch/s390/kvm/kvm-s390.c",
    "kvm_s390_mem_control": "arch/s390/kvm/kvm-s390.c",
    "kvm_s390_set_mem_control": "arch/s390/kvm/kvm-s390.c",
    "kvm_s390_set_tod": "arch/s390/kvm/kvm-s390.c",
    "kvm_arch_vcpu_create": "arch/s390/kvm/kvm-s390.c",
    "kvm_arch_vcpu_ioctl": "arch/s390/kvm/kvm-s390.c",
    "kvm_s390_vcpu_sida_op": "arch/s390/kvm/kvm-s390.c",
    "kvm_arch_vcpu_ioctl_set_mpstate": "arch/s390/kvm/kvm-s390.c",
    "kvm_arch_vcpu_ioctl_reset": "arch/s390/kvm/kvm-s390.c",
    "kvm_s390_handle_pv_vcpu_dump": "arch/s390/kvm/kvm-s390.c",
    "kvm_arch_destroy_vm": "arch/s390/kvm/kvm-s390.c",
}


class KvmS390(Intercept):
    """The device, VM and vCPU ioctls of arch/s390/kvm/kvm-s390.c."""

    def _fput(self, f: _File) -> None:
        with self._lock:
            f.refs -= 1
            last = f.refs == 0
        if last and f.kind == "vm":
            assert isinstance(f.obj, _Vm)
            self.kvm_put_kvm(f.obj)
        elif last and f.kind == "vcpu":
            assert isinstance(f.obj, _Vcpu)
            self.kvm_put_kvm(f.obj.vm)

    def kvm_put_kvm(self, vm: _Vm) -> None:
        """kvm_put_kvm() (virt/kvm/kvm_main.c): the last reference destroys the VM."""
        with self._lock:
            vm.refs -= 1
            last = vm.refs == 0
        if last:
            self.kvm_arch_destroy_vm(vm)

    def kvm_arch_dev_ioctl(self, request: int, arg: int) -> int:
        """kvm_arch_dev_ioctl() with kvm_dev_ioctl() (virt/kvm/kvm_main.c) around it."""
        if request == uapi.KVM_GET_API_VERSION:
            if arg:
                raise _err(errno.EINVAL)
            return uapi.KVM_API_VERSION
        if request == uapi.KVM_CHECK_EXTENSION:
            return self.kvm_vm_ioctl_check_extension(arg)
        if request == uapi.KVM_GET_VCPU_MMAP_SIZE:
            if arg:
                raise _err(errno.EINVAL)
            return VCPU_MMAP_SIZE
        if request == uapi.KVM_CREATE_VM:
            return self.kvm_arch_init_vm(arg)
        # kvm_arch_dev_ioctl() on s390 answers everything else with EINVAL.
        raise _err(errno.EINVAL)

    def kvm_vm_ioctl_check_extension(self, cap: int) -> int:
        """kvm_vm_ioctl_check_extension() (arch/s390/kvm/kvm-s390.c)."""
        c = uapi.KvmCap
        if cap == c.KVM_CAP_S390_PROTECTED:
            return int(self.prot_virt_host)
        if cap == c.KVM_CAP_S390_PROTECTED_DUMP:
            return int(self.prot_virt_host and self.dump)
        if cap == c.KVM_CAP_S390_PROTECTED_ASYNC_DISABLE:
            # spec 2.2: async_destroy && is_prot_virt_host()
            return int(self.async_destroy and self.prot_virt_host)
        if cap in (c.KVM_CAP_USER_MEMORY, c.KVM_CAP_DEVICE_CTRL, c.KVM_CAP_IMMEDIATE_EXIT):
            return 1
        if cap in (c.KVM_CAP_NR_VCPUS, c.KVM_CAP_MAX_VCPUS):
            return self.max_vcpus
        if cap == c.KVM_CAP_NR_MEMSLOTS:
            return KVM_USER_MEM_SLOTS
        return 0

    def kvm_arch_init_vm(self, machine_type: int) -> int:
        """kvm_arch_init_vm() (kvm-s390.c) behind KVM_CREATE_VM."""
        # kvm_arch_init_vm(): any bit but UCONTROL, or UCONTROL without the
        # config option or without CAP_SYS_ADMIN, is EINVAL (spec 1.2).
        if machine_type & ~uapi.KVM_VM_S390_UCONTROL:
            raise _err(errno.EINVAL)
        ucontrol = bool(machine_type & uapi.KVM_VM_S390_UCONTROL)
        if ucontrol and not (self.ucontrol and self.cap_sys_admin):
            raise _err(errno.EINVAL)
        # ... then s390_enable_sie(): "Fail if the page tables are 2K" -- a
        # process whose mm has no PGSTEs (spec 10.1) cannot create any VM.
        if not self.pgste:
            raise _err(errno.EINVAL)
        with self._lock:
            vm = _Vm(
                self._next_vm_id,
                KVM_S390_NO_MEM_LIMIT if ucontrol else self.host_mem_limit,
                ucontrol,
                self._cond,
            )
            self._next_vm_id += 1
            self._vms[vm.id] = vm
        return self._install("vm", _memfd("kvm-vm"), vm)

    def kvm_arch_vm_ioctl(self, vm: _Vm, request: int, arg: int) -> int:
        """kvm_arch_vm_ioctl() (kvm-s390.c) with the generic VM ioctls of kvm_main.c."""
        if request == uapi.KVM_CHECK_EXTENSION:
            return self.kvm_vm_ioctl_check_extension(arg)
        if request == uapi.KVM_S390_PV_COMMAND:
            return self.kvm_arch_vm_ioctl_pv_command(vm, arg)
        if request == uapi.KVM_SET_USER_MEMORY_REGION:
            return self.kvm_arch_prepare_memory_region(vm, arg)
        if request == uapi.KVM_CREATE_VCPU:
            return self.kvm_arch_vcpu_create(vm, arg)
        if request in (
            uapi.KVM_SET_DEVICE_ATTR,
            uapi.KVM_GET_DEVICE_ATTR,
            uapi.KVM_HAS_DEVICE_ATTR,
        ):
            a = self._copy_in(arg, uapi.kvm_device_attr)
            if request == uapi.KVM_SET_DEVICE_ATTR and int(a.group) == uapi.KVM_S390_VM_TOD:
                return self.kvm_s390_set_tod(vm, int(a.attr), int(a.addr))
            return self.kvm_s390_mem_control(vm, request, arg)
        if request == uapi.KVM_ENABLE_CAP:
            self._copy_in(arg, uapi.kvm_enable_cap)
            raise _err(errno.EINVAL)  # no capability is enabled per VM in the simulator
        if request == uapi.KVM_S390_INTERRUPT:
            irq = self._copy_in(arg, uapi.kvm_s390_interrupt)
            if int(irq.type) != uapi.KVM_S390_INT_SERVICE or not irq.parm:
                raise _err(errno.EINVAL)  # only the SCLP service signal is modelled
            return self.inject_service(vm, int(irq.parm))
        raise _err(errno.ENOTTY)

    def kvm_arch_prepare_memory_region(self, vm: _Vm, arg: int) -> int:
        """kvm_arch_prepare_memory_region() (kvm-s390.c) behind KVM_SET_USER_MEMORY_REGION."""
        m = self._copy_in(arg, uapi.kvm_userspace_memory_region)
        slot, flags = int(m.slot), int(m.flags)
        gpa, size, uaddr = int(m.guest_phys_addr), int(m.memory_size), int(m.userspace_addr)
        # Generic checks of __kvm_set_memory_region() first.
        if flags & ~uapi.KVM_MEM_LOG_DIRTY_PAGES:  # s390 has no KVM_MEM_READONLY
            raise _err(errno.EINVAL)
        if slot >> 16 or slot >= KVM_USER_MEM_SLOTS:
            raise _err(errno.EINVAL)
        if size % PAGE_SIZE or gpa % PAGE_SIZE or uaddr % PAGE_SIZE:
            raise _err(errno.EINVAL)
        if gpa + size >= 1 << 64 or size // PAGE_SIZE > KVM_MEM_MAX_NR_PAGES:
            raise _err(errno.EINVAL)
        with vm.lock:  # kvm->slots_lock; kvm->lock is enough for the simulator
            old = vm.memslots.get(slot)
            if size == 0:
                if old is None:
                    raise _err(errno.EINVAL)
                change = "delete"
            elif old is None:
                change = "create"
            else:
                if uaddr != old.uaddr or size != old.size:
                    raise _err(errno.EINVAL)
                if gpa != old.gpa:
                    change = "move"
                elif flags != old.flags:
                    change = "flags"
                else:
                    return 0  # nothing to change: no arch check at all
            if change in ("create", "move"):
                for other in vm.memslots.values():
                    if (
                        other.slot != slot
                        and gpa < other.gpa + other.size
                        and other.gpa < gpa + size
                    ):
                        raise _err(errno.EEXIST)
            # kvm_arch_prepare_memory_region() (spec 1.2)
            if vm.ucontrol:
                raise _err(errno.EINVAL)
            if vm.config is not None:  # protected: no memslot change at all
                raise _err(errno.EINVAL)
            if change in ("create", "move"):
                if uaddr % SEGMENT_ALIGN or size % SEGMENT_ALIGN:
                    raise _err(errno.EINVAL)
                if gpa + size > vm.mem_limit:
                    raise _err(errno.EINVAL)
                # Commit 7b53b4801884 ("KVM: s390: Prevent memslots outside the
                # ASCE range", v7.1): the slot's last page must lie inside what
                # the gmap's top-level table can map (asce_contains_gfn()); a
                # limit set with KVM_S390_VM_MEM_LIMIT_SIZE sizes that table.
                # Older kernels accepted the slot, which the gmap then could
                # not map.
                if gpa + size > _asce_end(vm.gmap_limit):
                    raise _err(errno.EINVAL)
            if change == "delete":
                del vm.memslots[slot]
            else:
                vm.memslots[slot] = _Memslot(slot, flags, gpa, size, uaddr)
            with self._mm:
                if change == "create":
                    # Userspace registers memory it mapped (again) there.
                    self._unmapped.remove(uaddr, uaddr + size)
                self._prune_unmapped_locked()
        return 0

    def kvm_s390_mem_control(self, vm: _Vm, request: int, arg: int) -> int:
        """kvm_s390_mem_control(): kvm_s390_{get,set}_mem_control() (kvm-s390.c).

        Behind kvm_s390_vm_{has,get,set}_attr(), group KVM_S390_VM_MEM_CTRL.
        """
        a = self._copy_in(arg, uapi.kvm_device_attr)
        group, attr, addr = int(a.group), int(a.attr), int(a.addr)
        # Only the memory-control group (and setting the TOD group,
        # kvm_s390_set_tod()) is modelled; the other s390 groups (getting the
        # TOD, crypto, CPU model, migration, topology) answer ENXIO here.
        if group != uapi.KVM_S390_VM_MEM_CTRL:
            raise _err(errno.ENXIO)
        if attr in (uapi.KVM_S390_VM_MEM_ENABLE_CMMA, uapi.KVM_S390_VM_MEM_CLR_CMMA):
            raise _err(errno.ENXIO)  # sclp.has_cmma is 0 on a Secure Execution host
        if attr != uapi.KVM_S390_VM_MEM_LIMIT_SIZE:
            raise _err(errno.ENXIO)
        if request == uapi.KVM_HAS_DEVICE_ATTR:
            return 0
        if request == uapi.KVM_GET_DEVICE_ATTR:
            self._put_u64(addr, vm.mem_limit)
            return 0
        return self.kvm_s390_set_mem_control(vm, addr)

    def kvm_s390_set_mem_control(self, vm: _Vm, addr: int) -> int:
        """kvm_s390_set_mem_control() (kvm-s390.c), KVM_S390_VM_MEM_LIMIT_SIZE (spec 3.10).

        E2BIG above the host's limit, EINVAL for 0, EBUSY once a vCPU exists,
        and (commit 7b53b4801884, "KVM: s390: Prevent memslots outside the
        ASCE range", v7.1) EBUSY for a limit below the end of an existing
        memslot, checked under kvm->slots_lock; older kernels made the
        smaller gmap and left the slot outside it.
        """
        if vm.ucontrol:
            raise _err(errno.EINVAL)
        new_limit = self._get_u64(addr)
        if vm.mem_limit != KVM_S390_NO_MEM_LIMIT and new_limit > vm.mem_limit:
            raise _err(errno.E2BIG)
        if new_limit == 0:
            raise _err(errno.EINVAL)
        with vm.lock:  # kvm->lock, then kvm->slots_lock (the simulator: one lock)
            if vm.created_vcpus:
                raise _err(errno.EBUSY)
            # 'if (gpa_to_gfn(new_limit) < ms->base_gfn + ms->npages) ret = -EBUSY'
            if any(
                new_limit // PAGE_SIZE < (ms.gpa + ms.size) // PAGE_SIZE
                for ms in vm.memslots.values()
            ):
                raise _err(errno.EBUSY)
            # A new gmap; kvm->arch.mem_limit itself is left alone (GET keeps
            # answering the host maximum, as the kernel does).
            if new_limit != KVM_S390_NO_MEM_LIMIT:
                new_limit -= 1  # gmap_create() takes the last usable address
            vm.gmap_limit = new_limit
        return 0

    def kvm_s390_set_tod(self, vm: _Vm, attr: int, addr: int) -> int:
        """kvm_s390_set_tod() (kvm-s390.c): KVM_SET_DEVICE_ATTR, group KVM_S390_VM_TOD.

        Commit 6973091d1b50 ("KVM: s390: pv: don't allow userspace to set the
        clock under PV", v6.1): under kvm->lock, a protected VM
        (kvm_s390_pv_is_protected(): a current configuration; one set aside by
        PREPARE no longer counts) is refused with EOPNOTSUPP before the
        attribute is even looked at, because the Ultravisor ignores the epoch
        KVM would write into the state descriptions.  Otherwise
        kvm_s390_set_tod_{ext,high,low}(): HIGH accepts only 0 (EINVAL), EXT an
        epoch index only with facility 139 (every Secure Execution machine, z15+,
        has it), LOW any value; another attribute is ENXIO.  The simulator keeps
        the value as the VM's guest TOD; nothing runs on a clock here.
        """
        with vm.lock:
            if vm.config is not None:
                raise _err(errno.EOPNOTSUPP)
            if attr == uapi.KVM_S390_VM_TOD_HIGH:
                if addr == 0:
                    raise _err(errno.EFAULT)  # copy_from_user()
                if ctypes.c_uint8.from_address(addr).value != 0:
                    raise _err(errno.EINVAL)
                return 0
            if attr == uapi.KVM_S390_VM_TOD_LOW:
                vm.guest_tod = self._get_u64(addr)
                return 0
            if attr == uapi.KVM_S390_VM_TOD_EXT:
                # struct kvm_s390_vm_tod_clock: epoch_idx (u8) at 0, tod (u64) at 8
                vm.guest_tod = self._get_u64(addr + 8)
                return 0
            raise _err(errno.ENXIO)

    def kvm_arch_vcpu_create(self, vm: _Vm, vcpu_id: int) -> int:
        """kvm_arch_vcpu_create() (kvm-s390.c) behind KVM_CREATE_VCPU."""
        if vcpu_id >= self.max_vcpus:
            raise _err(errno.EINVAL)
        with vm.lock:
            if vm.created_vcpus >= self.max_vcpus:
                raise _err(errno.EINVAL)
            if any(v.id == vcpu_id for v in vm.vcpus):
                raise _err(errno.EEXIST)
            vcpu = _Vcpu(vm, vcpu_id)
            if vm.config is not None:
                # kvm_arch_vcpu_create(): vCPUs of a protected VM are created protected.
                cc, _, _ = self.uv_call(UVC_CMD_CREATE_SEC_CPU, vm.config.handle)
                if cc:
                    raise _err(errno.EIO)
                self.kvm_s390_pv_create_cpu(vcpu, vm.config)
            vcpu.memfd = _memfd(f"kvm-vcpu:{vcpu_id}", VCPU_MMAP_SIZE)
            addr = libc().mmap(None, VCPU_MMAP_SIZE, 0x3, 0x01, vcpu.memfd, 0)
            if addr is None or addr == ctypes.c_void_p(-1).value:
                err = ctypes.get_errno()
                os.close(vcpu.memfd)
                raise _err(err)
            vcpu.run_addr = int(addr)
            vcpu.run = uapi.kvm_run_s390.from_address(vcpu.run_addr)
            vm.vcpus.append(vcpu)
            vm.created_vcpus += 1
            with self._lock:
                vm.refs += 1  # the vCPU file holds the VM
            fd = os.dup(vcpu.memfd)
            os.set_inheritable(fd, False)
            return self._install("vcpu", fd, vcpu)

    def kvm_arch_vcpu_ioctl(self, vcpu: _Vcpu, request: int, arg: int) -> int:
        """kvm_arch_vcpu_ioctl() (kvm-s390.c), KVM_RUN and KVM_*_MP_STATE included."""
        if request == uapi.KVM_RUN:
            if arg:
                raise _err(errno.EINVAL)
            with self._vcpu_locked(vcpu):
                return self.kvm_arch_vcpu_ioctl_run(vcpu)
        if request == uapi.KVM_S390_PV_CPU_COMMAND:
            with self._vcpu_locked(vcpu):
                return self.kvm_s390_handle_pv_vcpu_dump(vcpu, arg)
        if request == uapi.KVM_GET_MP_STATE:
            # kvm_arch_vcpu_ioctl_get_mpstate(): STOPPED or OPERATING, nothing else
            state = uapi.KVM_MP_STATE_STOPPED if vcpu.stopped else uapi.KVM_MP_STATE_OPERATING
            self._copy_out(arg, uapi.kvm_mp_state(state))
            return 0
        if request == uapi.KVM_SET_MP_STATE:
            mp = self._copy_in(arg, uapi.kvm_mp_state)
            with self._vcpu_locked(vcpu):
                return self.kvm_arch_vcpu_ioctl_set_mpstate(vcpu, int(mp.mp_state))
        if request == uapi.KVM_S390_MEM_OP:
            with self._vcpu_locked(vcpu):
                return self.kvm_s390_vcpu_sida_op(vcpu, arg)
        if request in (
            uapi.KVM_S390_INITIAL_RESET,
            uapi.KVM_S390_NORMAL_RESET,
            uapi.KVM_S390_CLEAR_RESET,
        ):
            with self._vcpu_locked(vcpu):
                return self.kvm_arch_vcpu_ioctl_reset(vcpu, request)
        raise _err(errno.ENOTTY)

    def kvm_s390_vcpu_sida_op(self, vcpu: _Vcpu, arg: int) -> int:
        """kvm_s390_vcpu_sida_op(): only the SIDA of a protected CPU is modelled."""
        mop = self._copy_in(arg, uapi.kvm_s390_mem_op)
        op, size, offset, buf = int(mop.op), int(mop.size), int(mop.sida_offset), int(mop.buf)
        if op not in (uapi.KVM_S390_MEMOP_SIDA_READ, uapi.KVM_S390_MEMOP_SIDA_WRITE):
            raise _err(errno.EINVAL)  # the logical/absolute ops are not modelled
        if mop.flags or vcpu.config is None:
            raise _err(errno.EINVAL)  # "if (!kvm_s390_pv_cpu_is_protected(vcpu)) return -EINVAL"
        if size == 0 or size + offset > len(vcpu.sida):
            raise _err(errno.E2BIG)
        if op == uapi.KVM_S390_MEMOP_SIDA_READ:
            ctypes.memmove(buf, bytes(vcpu.sida[offset : offset + size]), size)
        else:
            vcpu.sida[offset : offset + size] = ctypes.string_at(buf, size)
        return 0

    def kvm_arch_vcpu_ioctl_set_mpstate(self, vcpu: _Vcpu, state: int) -> int:
        """kvm_arch_vcpu_ioctl_set_mpstate()."""
        # "user space knows about this interface - let it control the state"
        vcpu.vm.user_cpu_state_ctrl = True
        cfg = vcpu.config
        if state == uapi.KVM_MP_STATE_STOPPED:
            # kvm_s390_vcpu_stop(): a protected CPU is stopped by the UV too
            if cfg is not None and self.uv_call(UVC_CMD_CPU_SET_STATE, vcpu.cpu_handle)[0]:
                raise _err(errno.EINVAL)
            vcpu.stopped = True
            return 0
        if state == uapi.KVM_MP_STATE_OPERATING:
            # kvm_s390_vcpu_start(): kvm_s390_pv_set_cpu_state(PV_CPU_STATE_OPR)
            if cfg is not None and self.uv_call(UVC_CMD_CPU_SET_STATE, vcpu.cpu_handle)[0]:
                raise _err(errno.EINVAL)
            vcpu.stopped = False
            return 0
        if state == uapi.KVM_MP_STATE_LOAD:
            # Only for a protected CPU (ENXIO otherwise): PV_CPU_STATE_OPR_LOAD,
            # with which the UV loads the initial PSW of the SE header.
            if cfg is None:
                raise _err(errno.ENXIO)
            if self.uv_call(UVC_CMD_CPU_SET_STATE, vcpu.cpu_handle)[0]:
                raise _err(errno.EINVAL)
            # The UV loads the initial PSW of the verified image's header.
            # Whether it refuses to load a CPU of an unverified configuration
            # is not in the sources read: not modelled, the payload's entry is used.
            header = cfg.header if cfg.verified else None
            vcpu.psw = header.psw if header is not None else SE_DEFAULT_PSW
            # The loader runs on the IPL CPU only (the first one); kvmpv starts
            # every CPU at the image's entry, so the others skip it.  One pending
            # service signal (a floating interrupt is a bit, not a count) is
            # then never shared by two waiting loaders.
            loader = header is not None and self.stage3b_sclp and vcpu is vcpu.vm.vcpus[0]
            vcpu.sclp = "call" if loader else ""
            return 0
        raise _err(errno.ENXIO)  # CHECK_STOP and the x86 states are not supported

    def kvm_arch_vcpu_ioctl_reset(self, vcpu: _Vcpu, request: int) -> int:
        """kvm_arch_vcpu_ioctl_reset(): kvm_arch_vcpu_ioctl_{normal,initial,clear}_reset().

        A protected CPU's resets go through the UV."""
        # normal reset: stops the vCPU unless userspace controls CPU state
        if not vcpu.vm.user_cpu_state_ctrl:
            vcpu.stopped = True
        if request != uapi.KVM_S390_NORMAL_RESET:
            # initial (and clear, its superset): PSW, prefix and control
            # registers to their reset values, in the SIE block and kvm_run.
            vcpu.psw = (0, 0)
            vcpu.ckc_pending = False  # CR0 and the clock comparator reset as well
            # kvm_s390_set_prefix(vcpu, 0): KVM_REQ_REFRESH_GUEST_PREFIX
            vcpu.prefix = 0
            vcpu.prefix_request = True
            assert vcpu.run is not None
            vcpu.run.psw_mask = vcpu.run.psw_addr = 0
        if vcpu.config is not None:
            uvc = {
                uapi.KVM_S390_NORMAL_RESET: UVC_CMD_CPU_RESET,
                uapi.KVM_S390_INITIAL_RESET: UVC_CMD_CPU_RESET_INITIAL,
                uapi.KVM_S390_CLEAR_RESET: UVC_CMD_CPU_RESET_CLEAR,
            }[request]
            if self.uv_call(uvc, vcpu.cpu_handle)[0]:
                raise _err(errno.EIO)
        return 0

    def kvm_s390_handle_pv_vcpu_dump(self, vcpu: _Vcpu, arg: int) -> int:
        """kvm_s390_handle_pv_vcpu_dump() (kvm-s390.c) behind KVM_S390_PV_CPU_COMMAND."""
        if not self.prot_virt_host:
            raise _err(errno.EINVAL)
        cmd = self._copy_in(arg, uapi.kvm_pv_cmd)
        if cmd.flags or cmd.cmd != uapi.pv_cmd_id.KVM_PV_DUMP:
            raise _err(errno.EINVAL)
        out = _Out()
        out.rc, out.rrc = int(cmd.rc), int(cmd.rrc)
        ret = 0
        try:
            cfg = vcpu.config
            if cfg is None or not cfg.dumping:
                raise _err(errno.EINVAL)
            dmp = self._copy_in(int(cmd.data), uapi.kvm_s390_pv_dmp)
            if dmp.subcmd != uapi.pv_cmd_dmp_id.KVM_PV_DUMP_CPU:
                raise _err(errno.EINVAL)
            if dmp.buff_len != UV_GUEST_CPU_STOR_LEN:
                raise _err(errno.EINVAL)
            cc, out.rc, out.rrc = self.uv_call(UVC_CMD_DUMP_CPU, vcpu.cpu_handle)
            if cc:
                raise _err(errno.EINVAL)
            if not dmp.buff_addr:
                raise _err(errno.EFAULT)
            ctypes.memset(int(dmp.buff_addr), 0, UV_GUEST_CPU_STOR_LEN)
        except OSError as exc:
            ret = -(exc.errno or errno.EIO)
        # Only rc and rrc are copied back by KVM_S390_PV_CPU_COMMAND.
        cmd.rc, cmd.rrc = out.rc, out.rrc
        ctypes.memmove(arg + 4, ctypes.addressof(cmd) + 4, 4)
        if ret < 0:
            raise _err(-ret)
        return 0

    def kvm_arch_destroy_vm(self, vm: _Vm) -> None:
        """kvm_arch_destroy_vm(), in the thread that dropped the last reference."""
        # kvm_destroy_vcpus(): Destroy Secure CPU, failures leak silently.
        for vcpu in vm.vcpus:
            cfg = vcpu.config
            if cfg is not None:
                self.uv_call(uapi.UVC_CMD_DESTROY_SEC_CPU, vcpu.cpu_handle)
                with self._mm:
                    vcpu.config = None
                    cfg.cpus -= 1
        # No kvm->lock: nobody else can reach the VM any more.
        self.kvm_s390_pv_deinit_cleanup_all(vm, _Out())
        if vm.config is not None:  # its destroy failed: leaked for good
            with self._mm:
                vm.config.state = "leaked"
            vm.config = None
        for vcpu in vm.vcpus:
            if vcpu.run_addr:
                vcpu.run = None
                libc().munmap(vcpu.run_addr, VCPU_MMAP_SIZE)
                vcpu.run_addr = 0
            if vcpu.memfd >= 0:
                os.close(vcpu.memfd)
                vcpu.memfd = -1
        vm.vcpus = []
        vm.alive = False
        vm.mmu_notifier = False
        with self._lock:
            self._vms.pop(vm.id, None)
        with self._mm:
            self._gc_configs_locked()
            self._prune_unmapped_locked()
