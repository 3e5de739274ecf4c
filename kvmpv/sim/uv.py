# SPDX-License-Identifier: GPL-2.0-only
"""The simulated Ultravisor: UV calls, their records, injected failures.

Models the firmware behind arch/s390/kernel/uv.c and arch/s390/include/asm/uv.h
(``uv_call()``, the UVC command blocks' rc/rrc) as seen by Linux 6.4 .. 7.0:
every UV call goes through ``uv_call`` (injected failures first) and is recorded
in issue order (``UvCall``).  The secure-image rules of the UV -- which the
real-cryptography header checks of ``kvmpv.sehdr`` feed -- live here too:
UNPACK's running digests and VERIFY's comparison with the header.
"""

from __future__ import annotations

import ctypes
import threading
from typing import Optional

from .. import sehdr, seimage, uapi
from .core import HostState
from .kvm_host import (
    PAGE_SIZE,
    UV_RRC_ALD,
    UV_RRC_PAGE_COUNT,
    UV_RRC_PLD,
    UV_RRC_TLD,
    _Config,
    _Vm,
)
from .records import UvCall
from .uvc import UVC_CMD_SET_SEC_CONF_PARAMS

#: The kernel functions this module models (method name -> where the kernel
#: has it): a deviating simulator overrides one of these (``kvmpv.sim``,
#: "Deviating simulators").
KERNEL_FUNCTIONS = {
    "uv_call": "arch/s390/include/asm/uv.h",
    "uvc_set_sec_conf_params": "Ultravisor firmware (UVC 0x0300)",
    "uvc_unpack_img": "Ultravisor firmware (UVC 0x0301)",
    "uvc_verify_img": "Ultravisor firmware (UVC 0x0302)",
}


class Ultravisor(HostState):
    """The simulated Ultravisor (firmware side of arch/s390/kernel/uv.c)."""

    def uvc_set_sec_conf_params(
        self, cfg: _Config, header: bytes
    ) -> tuple[int, int, int, Optional[sehdr.OpenedHeader]]:
        """uvc_set_sec_conf_params(): the UV side of UVC_CMD_SET_SEC_CONF_PARAMS (0x0300).

        (cc, rc, rrc, the opened header or None).  The simulated UV holds the
        simulated machine's (FAKE) host key and does what the UV does: find
        the key slot by the host key hash, unwrap the protection key,
        authenticate and decrypt the header (sehdr.open_header: rc/rrc as
        stage3a's enum UV_RC names them).
        """
        fields: Optional[sehdr.OpenedHeader] = None
        fail, rrc = None, 0
        try:
            fields = sehdr.open_header(header, self._host_key)
        except sehdr.UvRefusal as no:
            fail, rrc = no.rc, no.rrc
        cc, rc, rrc = self.uv_call(
            UVC_CMD_SET_SEC_CONF_PARAMS, cfg.handle, fail_rc=fail, fail_rrc=rrc
        )
        return cc, rc, rrc, fields

    @staticmethod
    def uvc_unpack_img(
        cfg: _Config, hdr: sehdr.OpenedHeader, gpa: int, tweak: int, offset: int, s: int, e: int
    ) -> None:
        """uvc_unpack_img(): the UV side of UVC_CMD_UNPACK_IMG (0x0301; firmware).

        What the UV does with claimed image pages at UNPACK: digest the encrypted pages
        (pld, ald, tld as ``seimage.page_digests``), decrypt them in place (AES-XTS)."""
        cipher = ctypes.string_at(s, e - s)
        addrs, tweaks = seimage.page_lists(len(cipher), gpa, tweak, offset)
        pld, ald, tld = cfg.digests
        pld.update(cipher)
        ald.update(addrs)
        tld.update(tweaks)
        cfg.pages += len(cipher) // PAGE_SIZE
        plain = sehdr.xts_pages(hdr.xts, cipher, tweak, encrypt=False, offset=offset)
        ctypes.memmove(s, plain, len(plain))

    def uvc_verify_img(self, vm: _Vm, cfg: _Config) -> int:
        """uvc_verify_img(): the UV side of UVC_CMD_VERIFY_IMG (0x0302; firmware).

        0 if the unpacked pages match the header, else the rrc naming the first mismatch."""
        hdr = cfg.header
        assert hdr is not None
        pld, ald, tld = (d.digest() for d in cfg.digests)
        for bad, rrc in (
            (cfg.pages != hdr.nep, UV_RRC_PAGE_COUNT),
            (ald != hdr.ald, UV_RRC_ALD),
            (tld != hdr.tld, UV_RRC_TLD),
            (pld != hdr.pld, UV_RRC_PLD),
        ):
            if bad:
                return rrc
        return 0

    def _gc_configs_locked(self) -> None:
        """Forget destroyed configurations that own no page any more (under ``_mm``)."""
        for h in [
            h for h, c in self._configs.items() if c.state == "destroyed" and not c.secure.total
        ]:
            del self._configs[h]

    def _take_injection(self, cmd: int) -> Optional[tuple[int, int]]:
        with self._lock:
            lst = self._inject.get(cmd)
            if not lst:
                return None
            entry = lst[0]
            entry[2] -= 1
            if entry[2] <= 0:
                lst.pop(0)
            return entry[0], entry[1]

    def uv_call(
        self,
        cmd: int,
        handle: int,
        *,
        pages: int = 0,
        fail_rc: Optional[int] = None,
        fail_rrc: int = 0,
    ) -> tuple[int, int, int]:
        """uv_call() (arch/s390/include/asm/uv.h) and the firmware answering it.

        One UV call: (cc, rc, rrc).  Injected failures first, then ``fail_rc``/``fail_rrc``."""
        fail = self._take_injection(cmd)
        if fail is not None:
            cc, rc, rrc = 1, fail[0], fail[1]
        elif fail_rc is not None:
            cc, rc, rrc = 1, fail_rc, fail_rrc
        else:
            cc, rc, rrc = 0, uapi.UVC_RC_EXECUTED, 0
        self._log(cmd, handle, cc, rc, rrc, pages)
        return cc, rc, rrc

    def _log(self, cmd: int, handle: int, cc: int, rc: int, rrc: int, pages: int) -> None:
        with self._lock:
            self._uv_log.append(UvCall(cmd, handle, cc, rc, rrc, pages, threading.get_native_id()))

    def _log_pages(self, cmd: int, handle: int, length: int) -> None:
        self._log(cmd, handle, 0, uapi.UVC_RC_EXECUTED, 0, length // PAGE_SIZE)
