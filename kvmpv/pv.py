# SPDX-License-Identifier: GPL-2.0-only
"""s390 protected-virtualization commands (``KVM_S390_PV_COMMAND``) on a ``Vm``.

Reference: Documentation/virt/kvm/api.rst 4.125, arch/s390/kvm/pv.c and QEMU's
target/s390x/kvm/pv.c; ``../shared/spec/kvm-pv-async.md`` sections 3 and 5.

``pv_cmd()`` is the one place that issues a PV command:

* ``rc``/``rrc`` are zeroed before every call: KVM only ever writes values > 0,
  so a zero after the call means no Ultravisor call was executed (api.rst).
* ``EINTR`` is retried, as QEMU's ``__s390_pv_cmd`` does: ENABLE is documented
  to fail with EINTR when an unmasked signal is pending.
* Failures raise ``PvCmdError`` with errno and rc/rrc unless ``check=False``.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass

from .errors import PvCmdError
from .kvm import Vm
from .uapi import IOCTL_NAMES, KVM_S390_PV_COMMAND, kvm_pv_cmd, pv_cmd_id


@dataclass(frozen=True)
class PvResult:
    """Outcome of one PV command: ioctl return (``-errno`` on failure) and UV rc/rrc."""

    cmd: pv_cmd_id
    ret: int
    rc: int
    rrc: int

    @property
    def ok(self) -> bool:
        return self.ret >= 0

    @property
    def errno(self) -> int:
        return -self.ret if self.ret < 0 else 0


def pv_cmd(
    vm: Vm, cmd: pv_cmd_id, data: int = 0, *, flags: int = 0, check: bool = True
) -> PvResult:
    """Issue ``KVM_S390_PV_COMMAND`` sub-command ``cmd`` on ``vm``."""
    arg = kvm_pv_cmd(cmd=int(cmd), data=data, flags=flags)
    while True:
        arg.rc = 0
        arg.rrc = 0
        ret = vm.pv_ioctl(arg)
        if ret != -errno.EINTR:
            break
    result = PvResult(pv_cmd_id(cmd), ret, int(arg.rc), int(arg.rrc))
    if check and not result.ok:
        raise PvCmdError(
            IOCTL_NAMES[KVM_S390_PV_COMMAND],
            pv_cmd_id(cmd).name,
            result.errno,
            result.rc,
            result.rrc,
        )
    return result
