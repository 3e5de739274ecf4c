# SPDX-License-Identifier: GPL-2.0-only
"""kvmpv's s390x payload: the bytes are the assembler's, and it really runs.

Run for real here under ``qemu-system-s390x`` (TCG; Debian qemu-system-misc,
which .ci/run installs): the image boots with 128 MiB, the guest stops with
its disabled wait (QEMU: a guest shutdown), and QMP ``pmemsave`` shows every
page above the image holding its own address.  What only a real s390x KVM
host shows (the SIEIC exit; the payload under PV) is in the README runbook.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from kvmpv import s390guest
from kvmpv.cli import main
from kvmpv.errors import EXIT_OK, EXIT_USAGE

QEMU = shutil.which("qemu-system-s390x")
GUEST_MIB = 128
#: A command line for QEMU to write at 0x10480 (it does so only for an image with S390EP).
CMDLINE = "kvmpv-payload-cmdline"


def _cross(tool: str) -> str:
    path = shutil.which(f"s390x-linux-gnu-{tool}")
    if path is None:
        pytest.skip(f"s390x-linux-gnu-{tool} not installed (binutils-s390x-linux-gnu)")
    return path


def test_code_is_what_the_assembler_makes(tmp_path: Path) -> None:
    src = tmp_path / "payload.S"
    src.write_text(s390guest.SOURCE)
    obj, binary = tmp_path / "payload.o", tmp_path / "payload.bin"
    subprocess.run([_cross("as"), "-o", str(obj), str(src)], check=True)
    relocs = subprocess.run(
        [_cross("readelf"), "-r", str(obj)], check=True, capture_output=True, text=True
    ).stdout
    assert "There are no relocations" in relocs  # position independent, as loaded anywhere
    subprocess.run(
        [_cross("objcopy"), "-O", "binary", "-j", ".text", str(obj), str(binary)], check=True
    )
    assert binary.read_bytes() == s390guest.CODE


def test_image_layout() -> None:
    img = s390guest.image()
    assert img[:8] == bytes.fromhex("0008000080010000")  # short IPL PSW -> 0x10000
    assert img[8 : s390guest.ENTRY] == bytes(s390guest.ENTRY - 8)
    assert img[s390guest.ENTRY :] == s390guest.CODE
    assert img[0x10000:0x10006] == bytes.fromhex("c0f400000400")  # jg 0x10800
    assert img[0x10800:0x10804] == bytes.fromhex("a51d0001")  # llihl: the code's first insn
    assert s390guest.FIRST_PAGE == 0x11000


#: What pvimg's kernel check says when it refuses (rust/pvimg/src/pv_utils/error.rs NoS390Kernel).
NO_KERNEL = "No s390x Linux kernel provided"


def pvimg_kernel_refusal(kernel: bytes) -> str:
    """pvimg's acceptance rules for ``-i KERNEL``, as s390-tools states them; "" if accepted.

    From ``rust/pvimg/src/se_img_comps/kernel.rs`` (``S390Kernel``):
    ``check()`` refuses an ELF file (magic 7f 45 4c 46 at 0,
    ``UnexpectedElfFile``) and anything without "S390EP" at 0x10008
    (``is_s390x_kernel``, ``NoS390Kernel``); ``init_ctx()`` reads the
    maximum command-line size, a big-endian u64 at 0x10430, and a file that
    ends before 0x10438 is ``NoS390Kernel`` too (0 there means the legacy
    896 bytes).  From ``rust/pvimg/boot/stage3b.c`` ``start()``: a kernel of
    fewer than 0x10000 bytes panics "Invalid kernel"; the command line goes
    to COMMAND_LINE (0x10480), checked against that maximum.
    """
    if kernel[:4] == b"\x7fELF":
        return "Unexpected ELF file"
    if kernel[0x10008:0x1000E] != b"S390EP" or len(kernel) < 0x10430 + 8:
        return NO_KERNEL
    if len(kernel) < 0x10000:
        return "stage3b: Invalid kernel"
    return ""


def test_pvimg_accepts_the_payload_as_a_kernel() -> None:
    img = s390guest.image()
    assert pvimg_kernel_refusal(img) == ""
    # the parameter area 0x10400-0x10800 is left free for QEMU's and stage3b's
    # command line (0x10480); the max command-line size at 0x10430 is 0: legacy 896
    assert img[0x10400:0x10800] == bytes(0x400)
    assert int.from_bytes(img[0x10430:0x10438], "big") == 0
    # the code starts beyond the parameter area and the first page written is above it
    assert s390guest.ENTRY + s390guest.CODE_OFFSET == 0x10800
    assert s390guest.FIRST_PAGE >= 0x10800 + len(s390guest.CODE) - s390guest.CODE_OFFSET
    # the rules can fail: the old image (code right at 0x10000, 0x10058 bytes) and an ELF
    old = bytes(img[: s390guest.ENTRY]) + img[s390guest.ENTRY + s390guest.CODE_OFFSET :]
    assert pvimg_kernel_refusal(old) == NO_KERNEL
    assert pvimg_kernel_refusal(img[:0x10430]) == NO_KERNEL  # no u64 at 0x10430
    assert pvimg_kernel_refusal(b"\x7fELF" + img[4:]) == "Unexpected ELF file"


@pytest.mark.parametrize(
    "exit_reason, icpt, mask, addr, kind",
    [
        (13, 0x1C, 0x0002000180000000, 0xFFF, "payload"),
        (13, 0x1C, 0x0002000080000000, 0x4511, "loader-panic"),  # stage3b panic(EINTERNAL)
        (13, 0x1C, 0x0002000180000000, 0x5A3, "unrecognised"),  # another disabled wait
        (13, 0x28, 0x0000000180000000, 0xFFF, "unrecognised"),  # a stop, no wait PSW
        (2, 0, 0, 0xFFF, "unrecognised"),  # not an SIEIC exit
    ],
)
def test_only_the_payloads_own_end_counts(
    exit_reason: int, icpt: int, mask: int, addr: int, kind: str
) -> None:
    end = s390guest.GuestEnd(exit_reason, "x", icpt, mask, addr)
    assert end.kind == kind and end.ok == (kind == "payload")
    if kind == "loader-panic":
        assert "error code 0x4511 (EINTERNAL)" in end.describe()


def test_guest_command_writes_the_image(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "payload.img"
    assert main(["guest", "--arch", "s390x", "--out", str(out)]) == EXIT_OK
    assert out.read_bytes() == s390guest.image()
    assert str(out) in capsys.readouterr().out
    assert main(["guest", "--arch", "s390x", "--out", str(tmp_path / "no" / "x")]) == EXIT_USAGE
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("kvmpv: error: cannot write")
    assert main(["guest", "--arch", "x86_64", "--out", str(out)]) == EXIT_USAGE


def test_page_check_finds_a_wrong_page() -> None:
    n = 64
    data = bytearray(s390guest.FIRST_PAGE + n * 4096)
    for i in range(n):  # a test building its own input, 64 pages
        addr = s390guest.FIRST_PAGE + i * 4096
        data[addr : addr + 8] = addr.to_bytes(8, "big")
    assert s390guest.pages_with_own_address(memoryview(bytes(data))) == n
    data[s390guest.FIRST_PAGE + 40 * 4096] ^= 1
    assert s390guest.pages_with_own_address(memoryview(bytes(data))) == 40
    data[s390guest.FIRST_PAGE + 7] ^= 1
    assert s390guest.pages_with_own_address(memoryview(bytes(data))) == 0


class Qmp:
    """A minimal QMP client: one command at a time, events collected."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.settimeout(30)
        self.sock.connect(path)
        self.file = self.sock.makefile("rw")
        self.events: list[dict[str, Any]] = []
        json.loads(self.file.readline())  # greeting
        self.cmd("qmp_capabilities")

    def cmd(self, name: str, **args: Any) -> Any:
        msg = {"execute": name, **({"arguments": args} if args else {})}
        self.file.write(json.dumps(msg) + "\n")
        self.file.flush()
        while True:
            reply = json.loads(self.file.readline())
            if "event" in reply:
                self.events.append(reply)
                continue
            if "error" in reply:
                raise RuntimeError(f"QMP {name}: {reply['error']}")
            return reply["return"]

    def close(self) -> None:
        self.file.close()
        self.sock.close()


@pytest.mark.skipif(QEMU is None, reason="qemu-system-s390x not installed (qemu-system-misc)")
def test_payload_boots_under_qemu_tcg_and_writes_every_page(tmp_path: Path) -> None:
    img = tmp_path / "payload.img"
    s390guest.write_image(img)
    sock, dump = str(tmp_path / "qmp.sock"), tmp_path / "mem.bin"
    cmd = [
        str(QEMU), "-machine", "s390-ccw-virtio", "-accel", "tcg", "-m", str(GUEST_MIB),
        "-kernel", str(img), "-append", CMDLINE, "-nographic", "-nodefaults", "-no-shutdown",
        "-S",
        "-qmp", f"unix:{sock},server=on,wait=off",
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while not os.path.exists(sock):
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            assert time.monotonic() < deadline, "QEMU did not open its QMP socket"
            time.sleep(0.05)
        qmp = Qmp(sock)
        # Started paused (-S): the guest runs only once QMP listens, so its
        # SHUTDOWN event cannot fire before the capabilities handshake.
        qmp.cmd("cont")
        t0 = time.monotonic()
        while (status := qmp.cmd("query-status"))["status"] == "running":
            assert time.monotonic() - t0 < 120, "the payload did not stop within 120 s"
            time.sleep(0.05)
        # The disabled wait at 0xfff is QEMU's guest shutdown (a panic otherwise).
        assert status["status"] == "shutdown", status
        assert any(
            e["event"] == "SHUTDOWN" and e["data"].get("reason") == "guest-shutdown"
            for e in qmp.events
        ), qmp.events
        qmp.cmd("pmemsave", val=0, size=GUEST_MIB << 20, filename=str(dump))
        qmp.cmd("quit")
        qmp.close()
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    data = dump.read_bytes()
    expected = (GUEST_MIB * 2**20 - s390guest.FIRST_PAGE) // 4096
    assert s390guest.pages_with_own_address(memoryview(data)) == expected
    # The image itself is where QEMU loaded it, untouched by the stores; QEMU
    # saw S390EP and wrote the command line into the parameter area at 0x10480
    # (KERN_PARM_AREA), which the code leaves free.
    image = s390guest.image()
    assert data[0x10480 : 0x10480 + len(CMDLINE) + 1] == CMDLINE.encode() + b"\0"
    code = s390guest.ENTRY + s390guest.CODE_OFFSET
    assert data[code : len(image)] == image[code:]
    assert data[s390guest.ENTRY : 0x10480] == image[s390guest.ENTRY : 0x10480]
