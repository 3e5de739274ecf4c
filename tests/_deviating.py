# SPDX-License-Identifier: GPL-2.0-only
"""Deliberately wrong simulators: each breaks one rule of the s390 vCPU protocol (spec 10.2).

The scenarios and checks must fail against them; if they pass, they would
have passed against the mistake the simulator once made (answering KVM_RUN
with x86's HLT, letting a STOPPED vCPU run), and could not be trusted to
catch it on a real s390x host.
"""

from __future__ import annotations

from typing import Any

from kvmpv import uapi
from kvmpv.sim import SimulatedHost


class _Wrapper:
    backend = "sim"
    arch = "s390x"

    def __init__(self, inner: SimulatedHost) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def kick(self, vcpu_fd: int, thread: int = 0) -> None:
        self._inner.kick(vcpu_fd, thread)

    def _vcpu(self, fd: int) -> Any:
        return self._inner._fget(fd).obj


class HaltingHost(_Wrapper):
    """A finished guest comes back as KVM_EXIT_HLT, as on x86, instead of SIEIC."""

    def ioctl(self, fd: int, request: int, arg: Any = 0) -> int:
        ret: int = self._inner.ioctl(fd, request, arg)
        if request == uapi.KVM_RUN:
            run = uapi.kvm_run_s390.from_address(self._vcpu(fd).run_addr)
            if run.exit_reason == uapi.KVM_EXIT_S390_SIEIC:
                run.exit_reason = uapi.KVM_EXIT_HLT
        return ret


class LenientHost(_Wrapper):
    """KVM_RUN starts a STOPPED vCPU even when userspace controls CPU state."""

    def ioctl(self, fd: int, request: int, arg: Any = 0) -> int:
        if request == uapi.KVM_RUN:
            self._vcpu(fd).stopped = False
        ret: int = self._inner.ioctl(fd, request, arg)
        return ret


class PermissiveUvHost(_Wrapper):
    """An Ultravisor that accepts every image command, in any order: UNPACK before
    SET_SEC_PARMS, a zero-length header, VERIFY of an incomplete image."""

    _IMAGE_CMDS = frozenset(
        {
            uapi.pv_cmd_id.KVM_PV_SET_SEC_PARMS,
            uapi.pv_cmd_id.KVM_PV_UNPACK,
            uapi.pv_cmd_id.KVM_PV_VERIFY,
        }
    )

    def ioctl(self, fd: int, request: int, arg: Any = 0) -> int:
        try:
            ret: int = self._inner.ioctl(fd, request, arg)
        except OSError:
            is_image_cmd = (
                request == uapi.KVM_S390_PV_COMMAND
                and isinstance(arg, uapi.kvm_pv_cmd)
                and arg.cmd in self._IMAGE_CMDS
            )
            if not is_image_cmd:
                raise
            arg.rc, arg.rrc = uapi.UVC_RC_EXECUTED, 0
            return 0
        return ret
