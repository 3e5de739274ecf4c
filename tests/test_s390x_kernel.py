# SPDX-License-Identifier: GPL-2.0-only
"""The host half of ``tox -e s390x-kernel`` (tests/s390x/kernel.py), without booting.

The initramfs archive is read back with GNU cpio (a reader nobody here wrote);
the module order comes from .modinfo sections shaped as modpost writes them;
bad arguments exit 2 with one line.  The boot itself is the env's business.
"""

from __future__ import annotations

import fnmatch
import gzip
import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

HERE = Path(__file__).resolve().parent


def _load() -> ModuleType:
    sys.path.insert(0, str(HERE / "s390x"))
    try:
        spec = importlib.util.spec_from_file_location("s390x_kernel", HERE / "s390x" / "kernel.py")
        assert spec is not None and spec.loader is not None
        mod = importlib.util.module_from_spec(spec)
        sys.modules["s390x_kernel"] = mod  # dataclasses look their module up
        spec.loader.exec_module(mod)
        return mod
    finally:
        sys.path.remove(str(HERE / "s390x"))


kernel = _load()


def test_initramfs_reads_back_with_gnu_cpio(tmp_path: Path) -> None:
    cpio = shutil.which("cpio")
    if cpio is None:
        pytest.skip("GNU cpio not installed (apt-get install cpio)")
    busybox = b"\x7fELF fake busybox" * 100
    mods = [("9pnet", b"A" * 1001), ("9p", b"B" * 7)]  # odd sizes: the 4-byte padding
    initrd = tmp_path / "initrd.gz"
    kernel.build_initrd(busybox, mods, initrd)
    out = tmp_path / "x"
    out.mkdir()
    r = subprocess.run(
        [cpio, "-i", "-d", "--quiet", "--no-absolute-filenames"],
        input=gzip.decompress(initrd.read_bytes()), cwd=out, capture_output=True,
    )  # fmt: skip
    # devices need CAP_MKNOD: as root cpio makes /dev/console, else it says why
    assert r.returncode == 0 or b"console" in r.stderr, r.stderr
    assert (out / "bin" / "busybox").read_bytes() == busybox
    assert (out / "bin" / "busybox").stat().st_mode & 0o111
    assert (out / "modules" / "9pnet.ko").read_bytes() == b"A" * 1001
    assert (out / "modules" / "9p.ko").read_bytes() == b"B" * 7
    assert (out / "modules.order").read_text() == "9pnet\n9p\n"
    assert (out / "init").read_text().startswith("#!/bin/busybox sh")
    listing = subprocess.run(
        [cpio, "-t", "-v", "--quiet"], input=gzip.decompress(initrd.read_bytes()),
        capture_output=True, check=True,
    ).stdout.decode()  # fmt: skip
    console = next(ln for ln in listing.splitlines() if ln.endswith("dev/console"))
    assert console.startswith("c") and "5," in console and "1" in console.split("5,")[1]


def _module(path: Path, depends: str) -> None:
    # The .modinfo strings modpost emits: NUL-separated key=value.
    info = b"license=GPL\x00" + f"depends={depends}".encode() + b"\x00name=x\x00"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x7fELF...." + info + b"more")


def test_module_order_follows_depends(tmp_path: Path) -> None:
    tree = tmp_path / "lib" / "modules" / "6.1.0-50-s390x" / "kernel"
    _module(tree / "fs" / "netfs" / "netfs.ko", "")
    _module(tree / "fs" / "fscache" / "fscache.ko", "netfs")
    _module(tree / "net" / "9p" / "9pnet.ko", "")
    _module(tree / "net" / "9p" / "9pnet_virtio.ko", "9pnet")
    _module(tree / "fs" / "9p" / "9p.ko", "9pnet,netfs,fscache")
    names = [n for n, _ in kernel.modules_in_order(tmp_path, ("9pnet_virtio", "9p"))]
    assert names == ["9pnet", "9pnet_virtio", "netfs", "fscache", "9p"]
    # 6.12: fscache folded into netfs, modules xz-compressed
    import lzma

    tree2 = tmp_path / "b"
    _module(tmp_path / "plain.ko", "netfs,9pnet")
    (tree2 / "9p.ko.xz").parent.mkdir(parents=True)
    (tree2 / "9p.ko.xz").write_bytes(lzma.compress((tmp_path / "plain.ko").read_bytes()))
    _module(tree2 / "netfs.ko", "")
    _module(tree2 / "9pnet.ko", "")
    names = [n for n, _ in kernel.modules_in_order(tree2, kernel.NINEP_MODULES)]
    assert names == ["netfs", "9pnet", "9p"]
    # a name with no file is taken as built in
    assert kernel.modules_in_order(tmp_path / "empty", kernel.NINEP_MODULES) == []


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--modules", "/"], "--modules needs --kernel"),
        (["--kernel", "/nonexistent/bzImage"], "no such file"),
        (["--kernel", __file__, "--modules", "/nonexistent"], "no such directory"),
        (["--kernel", __file__, "--suite", "bookworm"], "exclude each other"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert kernel.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and err.startswith("s390x-kernel: error:")


def _guest_constants() -> dict[str, object]:
    # kernel_guest.py reads /kvmpv/args.json at import (it only runs in the
    # guest): its selection constants are read from its source instead.
    import ast

    tree = ast.parse((HERE / "s390x" / "kernel_guest.py").read_text())
    out: dict[str, object] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
            name = node.targets[0].id
            if name in (
                "CORE_V2", "FIRST_KERNEL_ONLY", "FIRST_KERNEL_ONLY_FILES",
                "QEMU_USER_SKIPPED", "QEMU_USER_SKIPPED_V1", "NOT_RUN",
            ):  # fmt: skip
                out[name] = ast.literal_eval(node.value)
    return out


def test_first_kernel_only_names_tests_and_spares_the_kernel_dependent_ones() -> None:
    """Every -k name of FIRST_KERNEL_ONLY matches a test of the selection (a
    stale name would deselect nothing, silently), and none matches a test the
    issue wants in every kernel (-k matches substrings)."""
    c = _guest_constants()
    core = c["CORE_V2"]
    assert isinstance(core, list)
    texts = {f: (HERE.parent / f).read_text() for f in core}
    names = c["FIRST_KERNEL_ONLY"]
    assert isinstance(names, list) and names
    for name in names:
        assert any(name in text for text in texts.values()), f"{name}: no such test"
    every_kernel = [
        "test_redis_server_filled_then_shut_down",
        "test_debian_python3_allocating_memory",
        "test_shutdown_verdicts",
        "test_both_verdicts_on_cgroup2",
        "test_exec_chain_reaches_python_with_the_guard",
        "test_exit_frees_memory_in_cleaner[plain]",
        "test_taskstats_exit_record_misses_the_teardown",
    ]
    for test in every_kernel:
        assert not any(name in test for name in names), test
    files = c["FIRST_KERNEL_ONLY_FILES"]
    assert isinstance(files, list) and set(files) <= set(core)


def test_root_image_reads_back_with_debugfs(tmp_path: Path) -> None:
    """The root image is ext4 made from a directory (mkfs.ext4 -d): e2fsprogs'
    debugfs, not our code, reads the checkout and the results mount point back."""
    debugfs = shutil.which("debugfs") or "/usr/sbin/debugfs"
    if shutil.which("mkfs.ext4") is None and not Path("/usr/sbin/mkfs.ext4").exists():
        pytest.skip("mkfs.ext4 not installed (apt-get install e2fsprogs)")
    tree = tmp_path / "merged"
    (tree / "kvmpv" / "src" / "tests").mkdir(parents=True)
    (tree / "kvmpv" / "src" / "tests" / "x.py").write_text("print('s390x')\n")
    (tree / "usr" / "bin").mkdir(parents=True)
    (tree / "usr" / "bin" / "python3").write_bytes(b"\x7fELF" + b"\0" * 60)
    os.chmod(tree / "usr" / "bin" / "python3", 0o755)
    image = tmp_path / "root.img"
    kernel.build_image(tree, image)
    assert image.stat().st_blocks * 512 < 256 << 20  # sparse: not 3 GiB of zeros

    def cat(path: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [debugfs, "-R", f"cat {path}", str(image)], capture_output=True, text=True
        )

    assert cat("/kvmpv/src/tests/x.py").stdout == "print('s390x')\n"
    out = subprocess.run(
        [debugfs, "-R", "stat /kvmpv/out", str(image)], capture_output=True, text=True
    )
    assert "Type: directory" in out.stdout, out.stdout + out.stderr
    mode = subprocess.run(
        [debugfs, "-R", "stat /usr/bin/python3", str(image)], capture_output=True, text=True
    )
    assert "Mode:  0755" in mode.stdout or "Mode: 0755" in mode.stdout, mode.stdout


def test_init_mounts_the_image_and_the_results_share() -> None:
    init = kernel.INIT
    assert "mount -t ext4 /dev/vda /root" in init
    assert "trans=virtio" in init and " out /root/kvmpv/out" in init
    # the driver runs only when both mounted; poweroff in every case
    assert init.index("chroot /root") > init.index("/root/kvmpv/out")
    assert init.rstrip().endswith("poweroff -f")
    for module in ("virtio_blk", "ext4", "9p"):
        assert module in kernel.BOOT_MODULES


@pytest.mark.parametrize("count", [1, 2, 3])
def test_roles_split_the_one_kernel_work(count: int) -> None:
    """The kernel-independent tests run in exactly one kernel (the first),
    kvmpv exercise in exactly one (the last); one kernel runs both."""
    roles = kernel.roles(count)
    assert len(roles) == count
    assert [r["first"] for r in roles].count(True) == 1 and roles[0]["first"]
    assert [r["exercise"] for r in roles].count(True) == 1 and roles[-1]["exercise"]


def test_every_qemu_user_limit_runs_in_the_kernels() -> None:
    """What tox -e s390x skips for qemu-user's limits (tests/s390x/qemu_user.py)
    runs in the kernels: its file is in the selection, or its test by node id;
    every node id names a test that exists."""
    sys.path.insert(0, str(HERE / "s390x"))
    try:
        import qemu_user
    finally:
        sys.path.remove(str(HERE / "s390x"))
    c = _guest_constants()
    core, extra, v1 = c["CORE_V2"], c["QEMU_USER_SKIPPED"], c["QEMU_USER_SKIPPED_V1"]
    assert isinstance(core, list) and isinstance(extra, list) and isinstance(v1, list)
    assert set(v1) <= set(extra)
    for node in extra:
        path, name = node.split("::")
        assert f"def {name}(" in (HERE.parent / path).read_text(), f"{node}: no such test"
    not_run = c["NOT_RUN"]
    assert isinstance(not_run, dict)
    for node, reason in not_run.items():
        path, name = node.split("::")
        assert f"def {name}(" in (HERE.parent / path).read_text() and reason, node
        assert node not in extra
    for pattern, _reason in qemu_user.QEMU_USER_LIMITS:
        path, name = pattern.split("::")
        if path in core:
            continue
        assert any(fnmatch.fnmatchcase(node, pattern) for node in extra), pattern
