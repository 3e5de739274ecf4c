# SPDX-License-Identifier: GPL-2.0-only
"""Ultravisor call numbers the simulator knows, and their names.

Facts from ``arch/s390/include/asm/uv.h``; the destroy/export ones kvmpv
also needs outside the simulator are in ``kvmpv.uapi``.  Touches nothing.
"""

from __future__ import annotations

from .. import uapi

# Ultravisor calls not in uapi (arch/s390/include/asm/uv.h).
UVC_CMD_CREATE_SEC_CONF = 0x0100
UVC_CMD_CREATE_SEC_CPU = 0x0120
UVC_CMD_CONV_TO_SEC_STOR = 0x0200
UVC_CMD_SET_SEC_CONF_PARAMS = 0x0300
UVC_CMD_UNPACK_IMG = 0x0301
UVC_CMD_VERIFY_IMG = 0x0302
UVC_CMD_CPU_RESET = 0x0310
UVC_CMD_CPU_RESET_INITIAL = 0x0311
UVC_CMD_PREPARE_RESET = 0x0320
UVC_CMD_CPU_RESET_CLEAR = 0x0321
UVC_CMD_CPU_SET_STATE = 0x0330
UVC_CMD_SET_UNSHARE_ALL = 0x0340
UVC_CMD_DUMP_INIT = 0x0400
UVC_CMD_DUMP_CONF_STOR_STATE = 0x0401
UVC_CMD_DUMP_CPU = 0x0402
UVC_CMD_DUMP_COMPLETE = 0x0403

UVC_NAMES: dict[int, str] = {
    UVC_CMD_CREATE_SEC_CONF: "Create Secure Configuration",
    uapi.UVC_CMD_DESTROY_SEC_CONF: "Destroy Secure Configuration",
    uapi.UVC_CMD_DESTROY_SEC_CONF_FAST: "Destroy Secure Configuration Fast",
    UVC_CMD_CREATE_SEC_CPU: "Create Secure CPU",
    uapi.UVC_CMD_DESTROY_SEC_CPU: "Destroy Secure CPU",
    UVC_CMD_CONV_TO_SEC_STOR: "Convert to Secure Storage (import)",
    uapi.UVC_CMD_CONV_FROM_SEC_STOR: "Convert from Secure Storage (export)",
    uapi.UVC_CMD_DESTR_SEC_STOR: "Destroy Secure Storage (destroy page)",
    UVC_CMD_SET_SEC_CONF_PARAMS: "Set Secure Configuration Parameters",
    UVC_CMD_UNPACK_IMG: "Unpack Image",
    UVC_CMD_VERIFY_IMG: "Verify Image",
    UVC_CMD_PREPARE_RESET: "Prepare Reset",
    UVC_CMD_CPU_RESET: "CPU Reset",
    UVC_CMD_CPU_RESET_INITIAL: "CPU Reset Initial",
    UVC_CMD_CPU_RESET_CLEAR: "CPU Reset Clear",
    UVC_CMD_CPU_SET_STATE: "Set CPU State",
    UVC_CMD_SET_UNSHARE_ALL: "Set Unshare All",
    UVC_CMD_DUMP_INIT: "Dump Initialize",
    UVC_CMD_DUMP_CONF_STOR_STATE: "Dump Configuration Storage State",
    UVC_CMD_DUMP_CPU: "Dump CPU",
    UVC_CMD_DUMP_COMPLETE: "Dump Complete",
}


__all__ = [
    "UVC_CMD_CONV_TO_SEC_STOR",
    "UVC_CMD_CPU_RESET",
    "UVC_CMD_CPU_RESET_CLEAR",
    "UVC_CMD_CPU_RESET_INITIAL",
    "UVC_CMD_CPU_SET_STATE",
    "UVC_CMD_CREATE_SEC_CONF",
    "UVC_CMD_CREATE_SEC_CPU",
    "UVC_CMD_DUMP_COMPLETE",
    "UVC_CMD_DUMP_CONF_STOR_STATE",
    "UVC_CMD_DUMP_CPU",
    "UVC_CMD_DUMP_INIT",
    "UVC_CMD_PREPARE_RESET",
    "UVC_CMD_SET_SEC_CONF_PARAMS",
    "UVC_CMD_SET_UNSHARE_ALL",
    "UVC_CMD_UNPACK_IMG",
    "UVC_CMD_VERIFY_IMG",
    "UVC_NAMES",
]
