# SPDX-License-Identifier: GPL-2.0-only
"""Run kvmpv's tests as root in a real s390x kernel (``tox -e s390x-kernel``).

``tox -e s390x`` runs s390x userland under qemu-user, where every system call
goes to this machine's x86_64 kernel: cgroups, taskstats and proc-connector
netlink, the native cleaner and the PGSTE exec chain cannot run there.  This
runner boots real s390x kernels under ``qemu-system-s390x`` (TCG) instead and
runs the tests there as root, natively (docs/s390x-kernel.md):

1. The kernels: Debian bookworm's ``linux-image-s390x`` (Linux 6.1, the
   oldest release kvmpv's users run), then trixie's (Linux 6.12), fetched
   with ``apt-get download`` through a private apt configuration (s390x
   only, the Debian archive keyring; the host's dpkg is not touched) and
   cached in ``$KVMPV_CACHE/s390x/kernels/`` with an initramfs built here:
   ``busybox`` from ``busybox-static:s390x``, the virtio_blk, ext4 and 9p
   modules in dependency order (read from each module's ``.modinfo``), and an
   ``/init`` that mounts the root image and the results share.  ``--kernel
   IMAGE [--modules DIR]`` runs a developer's kernel instead (a ``make
   ARCH=s390`` bzImage or a ``linux-image-*.deb``).
2. The root: the cached debootstrap s390x root of ``tests/s390x/run.py``
   (imported: one recipe, one cache, one lock), which carries gcc, pip and
   the programs the launcher tests start.  A writable overlay of it
   (overlayfs on the host, in a private mount namespace: nothing stays
   mounted after the run, also on SIGINT/SIGTERM) gets this checkout, and
   ``mkfs.ext4 -d`` makes an ext4 image of it.  Each kernel boots that image
   as a virtio-blk disk with ``snapshot=on`` (its writes stay in its QEMU),
   so the kernels run side by side; results leave through a virtio-9p share
   of a host directory per kernel.
3. In the kernel, ``tests/s390x/kernel_guest.py`` installs kvmpv with ``pip
   install .`` (the s390x gcc builds the cleaner and ``kvmpv-pgste``), runs
   pytest on cgroup v2 with the memory controller, the accounting tests again
   on cgroup v1, and the command-line checks (PGSTE chain, probe without KVM,
   ``kvmpv exercise --max-size 256M`` in one kernel); it writes JUnit XML and
   a summary.

Prints per kernel ``s390x-kernel: Linux <release>: N passed, M skipped`` and
each skip with its reason; exits 1 if any test or check failed or a kernel
did not finish.  Where a kernel cannot be had (not root, no
qemu-system-s390x, no package access) it prints ``SKIP: s390x-kernel:
<reason>`` and exits 0, but under ``KVMPV_REQUIRE_PRIVILEGED=1`` (CI) that is
``FAIL`` and exit 1.  Bad arguments: one line, exit 2.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import fcntl
import gzip
import json
import lzma
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as user_run  # tests/s390x/run.py: the cached root

REPO = Path(__file__).resolve().parents[2]
NAME = "s390x-kernel"
#: Debian suites whose linux-image-s390x runs, in order: 6.1 then 6.12.
SUITES = ("bookworm", "trixie")
#: Bump when the initramfs or the way a kernel is unpacked changes.
KERNEL_RECIPE = "v3"
#: What the initramfs loads: the root is an ext4 image on virtio-blk, the
#: results leave through a small virtio-9p share.  Leaves first as far as
#: known; the dependency order is read from each module's .modinfo anyway
#: (6.12 folded fscache into netfs).  ext4 asks the crypto API for crc32c at
#: mount time (no symbol dependency), hence crc32c_generic by name.  A name
#: with no module file is taken to be built in.
NINEP_MODULES = ("netfs", "fscache", "9pnet", "9pnet_virtio", "9p")
BOOT_MODULES = ("virtio_blk", "crc32c_generic", "ext4", *NINEP_MODULES)
#: The root image: the cached root (about 0.5 GiB), the checkout, and room
#: for what pip installs; sparse, so only what is written takes space.
IMAGE_SIZE = "3G"
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
#: Per kernel: the default selection took 15-20 minutes under TCG on this
#: shared 2-core machine (docs/s390x-kernel.md).
TIMEOUT_S = int(os.environ.get("KVMPV_S390X_KERNEL_TIMEOUT", "2700"))
NS_ENV = "KVMPV_S390X_KERNEL_NS"
#: Guest RAM: the suite sizes its guests from MemAvailable (a 3G simulated
#: reboot needs twice that available in kvmpv exercise).  TCG allocates the
#: host memory only as the guest touches it.
GUEST_MEMORY = "8192"
REQUIRE_PRIVILEGED = os.environ.get("KVMPV_REQUIRE_PRIVILEGED") == "1"


class Unavailable(Exception):
    """This host cannot provide the kernel or root (SKIP, or FAIL in CI)."""


class BadArgs(Exception):
    """A bad command line (exit 2)."""


def log(msg: str) -> None:
    print(f"{NAME}: {msg}", flush=True)


def unavailable(reason: str) -> NoReturn:
    raise Unavailable(reason)


# run.py's helpers end the process with a SKIP line when the root cannot be
# had; here that is an Unavailable (which fails under KVMPV_REQUIRE_PRIVILEGED).
user_run.skip = unavailable  # type: ignore[assignment]


@dataclass
class Kernel:
    label: str  # "bookworm", "trixie" or "custom"
    image: Path
    initrd: Path
    version: str = ""  # the package that ran, e.g. linux-image-6.1.0-50-s390x 6.1.158-1


# ---------------------------------------------------------------- packages


class Apt:
    """apt-get/apt-cache with a private configuration: s390x packages of one
    Debian suite, signed by the archive keyring; the host's dpkg and apt
    state are left alone."""

    def __init__(self, base: Path, suite: str) -> None:
        self.base = base / f"apt-{suite}"
        self.suite = suite
        for d in ("state/lists/partial", "cache/archives/partial", "etc/preferences.d"):
            (self.base / d).mkdir(parents=True, exist_ok=True)
        (self.base / "state" / "status").touch()
        (self.base / "etc" / "apt.conf.d").mkdir(exist_ok=True)
        mirror = user_run.debian_mirror()
        (self.base / "sources.list").write_text(
            f"deb [arch=s390x signed-by={KEYRING}] {mirror} {suite} main\n"
        )
        b = self.base
        (self.base / "apt.conf").write_text(
            f'Dir::State "{b}/state";\n'
            f'Dir::State::status "{b}/state/status";\n'
            f'Dir::Cache "{b}/cache";\n'
            f'Dir::Etc::sourcelist "{b}/sources.list";\n'
            'Dir::Etc::sourceparts "-";\n'
            f'Dir::Etc::preferences "{b}/etc/preferences";\n'
            f'Dir::Etc::preferencesparts "{b}/etc/preferences.d";\n'
            f'Dir::Etc::parts "{b}/etc/apt.conf.d";\n'
            'APT::Architecture "s390x";\n'
            'APT::Architectures { "s390x"; };\n'
            'Acquire::Languages "none";\n'
            # downloads land in our cache directory, which _apt cannot write
            'APT::Sandbox::User "root";\n'
        )
        self.updated = False

    def _run(self, *args: str, cwd: Optional[Path] = None) -> subprocess.CompletedProcess[str]:
        env = dict(os.environ, APT_CONFIG=str(self.base / "apt.conf"), LC_ALL="C")
        return subprocess.run(
            list(args), env=env, cwd=cwd, capture_output=True, text=True, timeout=600
        )

    def update(self) -> None:
        if self.updated:
            return
        res = self._run("apt-get", "update", "-q")
        if res.returncode != 0:
            unavailable(f"apt-get update for {self.suite}/s390x failed: {last_line(res.stderr)}")
        self.updated = True

    def kernel_candidates(self) -> list[str]:
        """linux-image-<abi>-s390x packages, the metapackage's choice first,
        then every other one the index lists, newest first: the index can name
        a version its pool no longer holds (404), so the caller tries them in
        turn."""
        self.update()
        res = self._run("apt-cache", "depends", "linux-image-s390x")
        wanted = re.findall(r"Depends:\s*(linux-image-\S+-s390x)\b", res.stdout)
        res = self._run("apt-cache", "search", "--names-only", r"^linux-image-[0-9].*-s390x$")
        listed = [line.split()[0] for line in res.stdout.splitlines() if line.strip()]

        def key(name: str) -> list[int]:
            return [int(n) for n in re.findall(r"\d+", name)]

        others = sorted((n for n in listed if n not in wanted), key=key, reverse=True)
        return wanted + others

    def download(self, package: str, dest: Path) -> Optional[Path]:
        self.update()
        dest.mkdir(parents=True, exist_ok=True)
        res = self._run("apt-get", "download", "-q", package, cwd=dest)
        if res.returncode != 0:
            log(f"{self.suite}: {package}: {last_line(res.stderr)}")
            return None
        debs = sorted(dest.glob(f"{package.split(':')[0]}_*.deb"))
        return debs[-1] if debs else None


def last_line(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else "(no output)"


def deb_extract(deb: Path, dest: Path) -> None:
    res = subprocess.run(["dpkg-deb", "-x", str(deb), str(dest)], capture_output=True, text=True)
    if res.returncode != 0:
        unavailable(f"dpkg-deb -x {deb.name} failed: {last_line(res.stderr)}")


def deb_version(deb: Path) -> str:
    res = subprocess.run(
        ["dpkg-deb", "-f", str(deb), "Package", "Version"], capture_output=True, text=True
    )
    return " ".join(res.stdout.split()[1::2]) if res.returncode == 0 else deb.name


# ---------------------------------------------------------------- modules


MOD_SUFFIXES = (".ko", ".ko.xz", ".ko.gz", ".ko.zst")


def mod_name(path: Path) -> str:
    name = path.name
    for suffix in MOD_SUFFIXES:
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    return name.replace("-", "_")


def read_module(path: Path) -> bytes:
    data = path.read_bytes()
    if path.name.endswith(".xz"):
        return lzma.decompress(data)
    if path.name.endswith(".gz"):
        return gzip.decompress(data)
    if path.name.endswith(".zst"):
        res = subprocess.run(["zstd", "-dc", str(path)], capture_output=True)
        if res.returncode != 0:
            unavailable(f"cannot decompress {path} (zstd: {res.stderr.decode().strip()})")
        return res.stdout
    return data


def module_depends(data: bytes) -> list[str]:
    """The ``depends=`` entry of a module's .modinfo (modpost writes the
    names of the modules whose symbols it uses, comma-separated)."""
    m = re.search(rb"(?:^|\x00)depends=([^\x00]*)\x00", data)
    if not m or not m.group(1):
        return []
    return [d.replace("-", "_") for d in m.group(1).decode().split(",") if d]


def find_modules(tree: Path) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for suffix in MOD_SUFFIXES:
        for path in tree.rglob(f"*{suffix}"):
            found.setdefault(mod_name(path), path)
    return found


def modules_in_order(tree: Path, wanted: tuple[str, ...]) -> list[tuple[str, bytes]]:
    """``wanted`` and what they depend on, dependencies first, as
    (name, uncompressed bytes); a name with no module file is taken to be
    built in (the initramfs checks /proc/filesystems for 9p anyway)."""
    available = find_modules(tree)
    order: list[tuple[str, bytes]] = []
    seen: set[str] = set()

    def visit(name: str) -> None:
        if name in seen:
            return
        seen.add(name)
        path = available.get(name)
        if path is None:
            return
        data = read_module(path)
        for dep in module_depends(data):
            visit(dep)
        order.append((name, data))

    for name in wanted:
        visit(name)
    return order


# ---------------------------------------------------------------- initramfs


INIT = r"""#!/bin/busybox sh
# kvmpv's s390x-kernel initramfs (tests/s390x/kernel.py): mount the root
# image (ext4 on virtio-blk) and the results share (virtio-9p), run the guest
# driver in the root, power off.
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
# no init system brings up loopback: the launcher tests talk to redis on 127.0.0.1
ip link set lo up
for m in $(cat /modules.order); do
	insmod /modules/$m.ko || echo "kvmpv-init: insmod $m failed"
done
# virtio-ccw binds the disk and the 9p device (virtio id 9) asynchronously
# after boot
n=0
until [ -b /dev/vda ] && grep -qs 0x0009 /sys/bus/virtio/devices/*/device; do
	n=$((n + 1)); [ $n -gt 100 ] && break; sleep 0.1
done
if ! grep -qw 9p /proc/filesystems; then
	echo "kvmpv-init: FAIL: this kernel has no 9p file system (CONFIG_9P_FS, CONFIG_NET_9P_VIRTIO)"
elif ! grep -qw ext4 /proc/filesystems || [ ! -b /dev/vda ]; then
	echo "kvmpv-init: FAIL: no ext4 or no virtio-blk disk (CONFIG_EXT4_FS, CONFIG_VIRTIO_BLK)"
elif ! mount -t ext4 /dev/vda /root; then
	echo "kvmpv-init: FAIL: cannot mount the root image /dev/vda"
elif ! mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 out /root/kvmpv/out; then
	echo "kvmpv-init: FAIL: cannot mount the results share over virtio-9p"
else
	mount -t proc proc /root/proc
	mount -t sysfs sysfs /root/sys
	mount -t devtmpfs devtmpfs /root/dev
	chroot /root /usr/bin/python3 /kvmpv/src/tests/s390x/kernel_guest.py
	echo "kvmpv-init: guest driver exit $?"
	sync
	umount /root/kvmpv/out
fi
poweroff -f
"""


def cpio_newc(entries: list[tuple[str, int, bytes, int]]) -> bytes:
    """An initramfs archive (cpio "newc", the format the kernel unpacks,
    Documentation/driver-api/early-userspace/buffer-format.rst): entries are
    (name, mode, data, rdev) with rdev as (major << 8 | minor) for devices."""
    out = bytearray()

    def pad() -> None:
        out.extend(b"\0" * (-len(out) % 4))

    for ino, (name, mode, data, rdev) in enumerate([*entries, ("TRAILER!!!", 0, b"", 0)], 1):
        fields = [ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev >> 8, rdev & 0xFF]
        fields += [len(name) + 1, 0]
        out += b"070701" + "".join(f"{v:08X}" for v in fields).encode()
        out += name.encode() + b"\0"
        pad()
        out += data
        pad()
    return bytes(out)


def build_initrd(busybox: bytes, modules: list[tuple[str, bytes]], dest: Path) -> None:
    d, x, r, c = 0o040755, 0o100755, 0o100644, 0o020600
    entries: list[tuple[str, int, bytes, int]] = [
        (n, d, b"", 0) for n in ("bin", "dev", "proc", "sys", "root", "modules")
    ]
    entries += [("dev/console", c, b"", 5 << 8 | 1), ("bin/busybox", x, busybox, 0)]
    entries += [("init", x, INIT.encode(), 0)]
    entries += [(f"modules/{n}.ko", r, data, 0) for n, data in modules]
    entries += [("modules.order", r, "".join(f"{n}\n" for n, _ in modules).encode(), 0)]
    tmp = dest.with_suffix(".new")
    tmp.write_bytes(gzip.compress(cpio_newc(entries), compresslevel=6))
    tmp.rename(dest)


def ensure_busybox(cache: Path) -> bytes:
    path = cache / "busybox"
    if path.exists():
        return path.read_bytes()
    apt = Apt(cache, "bookworm")
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        deb = apt.download("busybox-static", Path(tmp))
        if deb is None:
            unavailable("cannot download busybox-static:s390x from Debian bookworm")
        deb_extract(deb, Path(tmp) / "x")
        shutil.copy(Path(tmp) / "x" / "bin" / "busybox", path)
    return path.read_bytes()


def ensure_debian_kernel(cache: Path, suite: str) -> Kernel:
    """Suite's linux-image-s390x, unpacked, with its initramfs (cached)."""
    kdir = cache / "kernels" / suite
    stamp = kdir / ".kvmpv-kernel"
    if stamp.exists() and (kdir / "vmlinuz").exists() and (kdir / "initrd.gz").exists():
        info = json.loads(stamp.read_text())
        if info.get("recipe") == KERNEL_RECIPE:
            return Kernel(suite, kdir / "vmlinuz", kdir / "initrd.gz", info["version"])
    t0 = time.monotonic()
    apt = Apt(cache, suite)
    busybox = ensure_busybox(cache)
    shutil.rmtree(kdir, ignore_errors=True)
    kdir.mkdir(parents=True)
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        deb = None
        for package in apt.kernel_candidates():
            deb = apt.download(package, Path(tmp))
            if deb is not None:
                break
        if deb is None:
            unavailable(f"no linux-image-*-s390x of Debian {suite} could be downloaded")
        version = deb_version(deb)
        tree = Path(tmp) / "x"
        deb_extract(deb, tree)
        images = sorted(tree.glob("boot/vmlinuz-*"))
        if not images:
            unavailable(f"{deb.name} has no boot/vmlinuz-*")
        shutil.copy(images[0], kdir / "vmlinuz")
        build_initrd(busybox, modules_in_order(tree, BOOT_MODULES), kdir / "initrd.gz")
    stamp.write_text(json.dumps({"recipe": KERNEL_RECIPE, "version": version}))
    log(f"{suite}: {version} unpacked, initramfs built in {time.monotonic() - t0:.0f} s")
    return Kernel(suite, kdir / "vmlinuz", kdir / "initrd.gz", version)


def custom_kernel(cache: Path, image: Path, modules: Optional[Path], work: Path) -> Kernel:
    """A developer's kernel: a linux-image-*.deb, or an image (``make
    ARCH=s390`` leaves arch/s390/boot/bzImage) with the modules from DIR (a
    build tree or a ``make modules_install INSTALL_MOD_PATH=`` tree)."""
    busybox = ensure_busybox(cache)
    version = str(image)
    if image.name.endswith(".deb"):
        tree = work / "custom-deb"
        deb_extract(image, tree)
        images = sorted(tree.glob("boot/vmlinu*"))
        if not images:
            raise BadArgs(f"{image} has no boot/vmlinuz-* (not a linux-image package?)")
        version = deb_version(image)
        image = images[0]
        if modules is None:
            modules = tree
    mods = modules_in_order(modules, BOOT_MODULES) if modules else []
    if modules is not None and not mods:
        log(
            f"no 9p, ext4 or virtio_blk modules below {modules}: assuming them built in "
            "(CONFIG_9P_FS=y, CONFIG_NET_9P_VIRTIO=y, CONFIG_EXT4_FS=y, CONFIG_VIRTIO_BLK=y)"
        )
    initrd = work / "initrd-custom.gz"
    build_initrd(busybox, mods, initrd)
    return Kernel("custom", image, initrd, version)


# ---------------------------------------------------------------- the boot


@dataclass
class Outcome:
    release: str = "?"
    passed: int = 0
    failed: int = 0
    errors: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    checks_failed: list[str] = field(default_factory=list)
    checks_passed: int = 0
    finished: bool = False
    seconds: float = 0.0
    steps: dict[str, float] = field(default_factory=dict)
    #: "test [phase]" of each failure or error
    failures: list[str] = field(default_factory=list)
    #: kernel-independent tests deselected here: they ran in the first kernel
    first_kernel_only: list[str] = field(default_factory=list)
    #: tests left out of the selection, with the reason (kernel_guest.NOT_RUN)
    not_run: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.finished and not (self.failed or self.errors or self.checks_failed)


def copy_checkout(dest: Path) -> None:
    user_run.copy_tree(dest)
    for name in ("setup.py",):
        shutil.copy2(REPO / name, dest / name)


def precompile(tree: Path, pyver: str) -> None:
    """Byte-compile ``tree`` with this interpreter when it is the root's
    Python version (same magic number): under TCG the guest would otherwise
    compile every module of pytest and kvmpv at each import, for minutes."""
    marker = tree / ".kvmpv-precompiled"
    if "{}.{}".format(*sys.version_info[:2]) != pyver or marker.exists():
        return
    subprocess.run(
        [sys.executable, "-m", "compileall", "-q", "-j", "0", str(tree)],
        capture_output=True,
    )
    marker.write_text(pyver)


@contextlib.contextmanager
def overlay(root: Path, work: Path) -> Iterator[Path]:
    """A writable overlay of the cached root (in this process's private
    mount namespace; see main)."""
    upper, wdir, merged = work / "upper", work / "work", work / "merged"
    for d in (upper, wdir, merged):
        d.mkdir()
    opts = f"lowerdir={root},upperdir={upper},workdir={wdir}"
    res = subprocess.run(
        ["mount", "-t", "overlay", "overlay", "-o", opts, str(merged)],
        capture_output=True,
        text=True,
    )
    if res.returncode != 0:
        unavailable(f"cannot mount an overlay of the s390x root: {last_line(res.stderr)}")
    try:
        yield merged
    finally:
        subprocess.run(["umount", "-l", str(merged)], capture_output=True)


def _die_with_parent() -> None:
    # PR_SET_PDEATHSIG (1): QEMU gets SIGKILL if this runner dies, even by
    # SIGKILL, so no TCG guest keeps burning a CPU.
    ctypes.CDLL(None).prctl(1, signal.SIGKILL, 0, 0, 0)


def build_image(merged: Path, dest: Path) -> None:
    """The root image: an ext4 file system made from the overlay's files
    (``mkfs.ext4 -d``, no mount).  The root was first shared over virtio-9p:
    every file look-up of every Python start-up was a round trip through
    QEMU's main thread, which used more host CPU than both vCPUs together;
    on a block device the guest's own page cache answers them."""
    (merged / "kvmpv" / "out").mkdir(parents=True, exist_ok=True)
    res = subprocess.run(
        ["mkfs.ext4", "-q", "-F", "-L", "kvmpv-root", "-d", str(merged), str(dest), IMAGE_SIZE],
        capture_output=True,
        text=True,
    )
    if res.returncode != 0:
        unavailable(f"mkfs.ext4 -d of the s390x root failed: {last_line(res.stderr)}")


#: QEMU processes running now, killed on the way out (SIGINT, SIGTERM).
_running: list[subprocess.Popen[bytes]] = []
_running_lock = threading.Lock()


def kill_running() -> None:
    with _running_lock:
        for proc in _running:
            if proc.poll() is None:
                proc.kill()


def boot(
    kernel: Kernel,
    image: Path,
    outdir: Path,
    role: dict[str, bool],
    pytest_args: list[str],
    checks: bool = True,
    full: bool = False,
) -> Outcome:
    """One kernel on a private snapshot of the root image; its results in
    ``outdir``, which the guest mounts at /kvmpv/out."""
    out = Outcome()
    t0 = time.monotonic()
    outdir.mkdir(parents=True)
    args = {"pytest": pytest_args, "checks": checks, "full": full, **role}
    (outdir / "args.json").write_text(json.dumps(args))
    cmd = [
        "qemu-system-s390x", "-nographic", "-nic", "none", "-m", GUEST_MEMORY, "-smp", "2",
        "-kernel", str(kernel.image), "-initrd", str(kernel.initrd),
        "-append", "console=ttysclp0 panic=-1 quiet", "-no-reboot",
        # snapshot=on: the guest's writes go to a temporary file of QEMU's,
        # so kernels booted side by side share one read-only image
        "-drive", f"file={image},format=raw,if=none,id=root,snapshot=on,cache=unsafe",
        "-device", "virtio-blk-ccw,drive=root",
        "-fsdev", f"local,id=out,path={outdir},security_model=passthrough",
        "-device", "virtio-9p-ccw,fsdev=out,mount_tag=out",
    ]  # fmt: skip
    log(f"booting {kernel.label} ({kernel.version}) under qemu-system-s390x (TCG, -smp 2)")
    with _running_lock:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent,
        )
        _running.append(proc)

    def copy_console() -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.decode(errors="replace").rstrip()
            sys.stdout.write(f"  {kernel.label:8} {time.monotonic() - t0:4.0f}s | {line}\n")
            sys.stdout.flush()

    # The console is copied by a thread, so a guest that prints nothing
    # (a hung test) still meets the deadline.
    reader = threading.Thread(target=copy_console, daemon=True)
    reader.start()
    try:
        proc.wait(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        log(f"FAIL: {kernel.label}: the guest ran longer than {TIMEOUT_S} s")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        reader.join(timeout=5)
    out.seconds = time.monotonic() - t0
    read_outcome(outdir, out)
    # The run's files outlive the work directory (CI artifacts): JUnit XML
    # per phase, summary.json, the guest's /proc/cpuinfo, exercise's results.
    keep = user_run.cache_dir() / "last-run" / kernel.label
    shutil.rmtree(keep, ignore_errors=True)
    try:
        shutil.copytree(outdir, keep)
    except OSError as err:  # interrupted: the work directory is already gone
        log(f"{kernel.label}: results not kept: {err.strerror}")
    else:
        log(f"{kernel.label}: results kept in {keep}")
    return out


def read_outcome(outdir: Path, out: Outcome) -> None:
    summary = outdir / "summary.json"
    if not summary.exists():
        return
    data = json.loads(summary.read_text())
    out.release = data.get("release", "?")
    out.finished = bool(data.get("finished"))
    out.steps = data.get("steps", {})
    out.first_kernel_only = data.get("first_kernel_only", [])
    out.not_run = data.get("not_run", {})
    for check in data.get("checks", []):
        if check["ok"]:
            out.checks_passed += 1
        else:
            out.checks_failed.append(f"{check['name']}: {check['detail']}")
    for xml in sorted(outdir.glob("*.xml")):
        phase = xml.stem
        for case in ET.parse(xml).getroot().iter("testcase"):
            name = f"{case.get('classname', '')}::{case.get('name', '')} [{phase}]"
            kinds = {child.tag for child in case}
            if "skipped" in kinds:
                reason = next(c for c in case if c.tag == "skipped").get("message", "")
                out.skipped.append((name, reason))
            elif "failure" in kinds:
                out.failed += 1
                out.failures.append(name)
            elif "error" in kinds:
                out.errors += 1
                out.failures.append(name)
            else:
                out.passed += 1


def report(kernel: Kernel, out: Outcome) -> None:
    log(
        f"Linux {out.release}: {out.passed} passed, {len(out.skipped)} skipped"
        + (f", {out.failed} failed" if out.failed else "")
        + (f", {out.errors} errors" if out.errors else "")
        + f"; {out.checks_passed} checks passed"
        + (f", {len(out.checks_failed)} failed" if out.checks_failed else "")
        + f" ({kernel.label}: {kernel.version}; {out.seconds:.0f} s)"
    )
    if out.steps:
        log("  steps: " + ", ".join(f"{k} {v:.0f} s" for k, v in out.steps.items()))
    if out.first_kernel_only:
        names = ", ".join(out.first_kernel_only)
        log(f"  run in the first kernel only (kernel-independent): {names}")
    for name, reason in out.skipped:
        log(f"  SKIP {name}: {reason}")
    for name, reason in out.not_run.items():
        log(f"  NOT RUN {name}: {reason}")
    for name in out.failures:
        log(f"  FAIL {name}")
    for failure in out.checks_failed:
        log(f"  FAIL check {failure}")
    if not out.finished:
        log(f"  FAIL: the run in Linux {out.release} did not finish (see the console above)")


# ---------------------------------------------------------------- main


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="tox -e s390x-kernel --",
        description="Run kvmpv's tests as root in real s390x kernels under qemu-system-s390x.",
        epilog="Arguments after '--' replace the default pytest selection (see kernel_guest.py).",
    )
    p.add_argument(
        "--kernel",
        type=Path,
        metavar="IMAGE",
        help="a developer's kernel instead of Debian's: arch/s390/boot/bzImage of a "
        "'make ARCH=s390' tree, or a linux-image-*.deb",
    )
    p.add_argument(
        "--modules",
        type=Path,
        metavar="DIR",
        help="where that kernel's modules are: its build tree, or the INSTALL_MOD_PATH "
        "of 'make modules_install' (not needed when 9p is built in)",
    )
    p.add_argument(
        "--full",
        action="store_true",
        help="also the slower files and exercise/bench per cgroup hierarchy "
        "(more than 40 minutes per kernel under TCG here; see kernel_guest.py)",
    )
    p.add_argument(
        "--no-checks",
        action="store_true",
        help="skip the command-line checks (kvmpv probe, exercise): for iterating on tests",
    )
    p.add_argument(
        "--serial",
        action="store_true",
        help="boot the kernels one after the other (default: side by side, each its own "
        "snapshot of the root image)",
    )
    p.add_argument(
        "--suite",
        choices=SUITES,
        action="append",
        help="only this Debian kernel (repeatable; default: bookworm's 6.1, then trixie's 6.12)",
    )
    if "--" in argv:
        i = argv.index("--")
        args = p.parse_args(argv[:i])
        args.pytest = argv[i + 1 :]
    else:
        args = p.parse_args(argv)
        args.pytest = []
    if args.modules and not args.kernel:
        raise BadArgs("--modules needs --kernel")
    if args.kernel and not args.kernel.is_file():
        raise BadArgs(f"--kernel {args.kernel}: no such file")
    if args.modules and not args.modules.is_dir():
        raise BadArgs(f"--modules {args.modules}: no such directory")
    if args.kernel and args.suite:
        raise BadArgs("--kernel and --suite exclude each other")
    return args


def host_checks() -> None:
    if platform.machine() == "s390x":
        unavailable("this is an s390x host: run the suite natively (tox -e py) as root")
    if sys.platform != "linux":
        unavailable(f"needs Linux, this is {sys.platform}")
    if os.geteuid() != 0:
        unavailable("needs root (overlay mount, chroot, debootstrap); run as root")
    for tool, package in (
        ("qemu-system-s390x", "qemu-system-misc"),
        ("qemu-s390x-static", "qemu-user-static"),
        ("debootstrap", "debootstrap"),
        ("dpkg-deb", "dpkg"),
        ("apt-get", "apt"),
        ("unshare", "util-linux"),
        ("mkfs.ext4", "e2fsprogs"),
    ):
        if shutil.which(tool) is None:
            unavailable(f"{tool} not found (apt-get install {package})")
    if not Path(KEYRING).exists():
        unavailable(f"{KEYRING} missing (apt-get install debian-archive-keyring)")


def roles(count: int) -> list[dict[str, bool]]:
    """What each of ``count`` kernels runs besides the kernel-dependent set:
    the first the kernel-independent tests (kernel_guest.FIRST_KERNEL_ONLY),
    the last ``kvmpv exercise``; the two kernels side by side so take about
    the same time."""
    return [{"first": i == 0, "exercise": i == count - 1} for i in range(count)]


def run_all(args: argparse.Namespace) -> int:
    host_checks()
    t0 = time.monotonic()
    user_run.ensure_binfmt()
    cache = user_run.cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        root = user_run.ensure_root(cache)
        pyver = user_run.root_python_version(root)
        site = user_run.ensure_site(root, pyver)
        precompile(root / site.lstrip("/"), pyver)
        with tempfile.TemporaryDirectory(prefix="kvmpv-kernel-", dir=cache) as tmp:
            work = Path(tmp)
            if args.kernel:
                kernels = [custom_kernel(cache, args.kernel.resolve(), args.modules, work)]
            else:
                kernels = [ensure_debian_kernel(cache, s) for s in (args.suite or SUITES)]
            image = work / "root.img"
            with overlay(root, work) as merged:
                copy_checkout(merged / "kvmpv" / "src")
                precompile(merged / "kvmpv" / "src", pyver)
                build_image(merged, image)
            fcntl.flock(lock, fcntl.LOCK_SH)
            log(f"root image and kernels ready in {time.monotonic() - t0:.0f} s")
            # Every kernel boots its own snapshot of the image and installs
            # kvmpv there (pip install ., the native build); side by side
            # unless --serial: a TCG guest that runs one Python process at
            # a time keeps about one host CPU busy.
            results: list[tuple[Kernel, Outcome]] = []
            jobs = [
                (kernel, work / f"out-{i}-{kernel.label}", role)
                for i, (kernel, role) in enumerate(zip(kernels, roles(len(kernels))))
            ]
            opts = (args.pytest, not args.no_checks, args.full)
            try:
                if args.serial or len(jobs) == 1:
                    results = [(k, boot(k, image, o, r, *opts)) for k, o, r in jobs]
                else:
                    done: dict[int, Outcome] = {}

                    def one(i: int) -> None:
                        kernel, outdir, role = jobs[i]
                        done[i] = boot(kernel, image, outdir, role, *opts)

                    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(jobs))]
                    for t in threads:
                        t.start()
                    for t in threads:
                        t.join()
                    results = [(jobs[i][0], done.get(i, Outcome())) for i in range(len(jobs))]
            finally:
                # SIGINT/SIGTERM in the main thread: no guest is left running
                kill_running()
    for kernel, out in results:
        report(kernel, out)
    log(f"total {time.monotonic() - t0:.0f} s")
    return 0 if all(out.ok for _, out in results) else 1


def _terminate(signum: int, frame: object) -> None:
    # SIGTERM (a CI timeout) unwinds like SIGINT: QEMU killed, overlay and
    # temporary directories removed by the finally/with blocks.
    raise SystemExit(128 + signum)


def main(argv: list[str]) -> int:
    try:
        args = parse_args(argv)
    except BadArgs as err:
        print(f"{NAME}: error: {err}", file=sys.stderr)
        return 2
    if os.environ.get(NS_ENV) != "1" and os.geteuid() == 0 and shutil.which("unshare"):
        # Again in a private mount namespace: the overlay mounts vanish with
        # this process whatever ends it.
        env = dict(os.environ, **{NS_ENV: "1"})
        cmd = ["unshare", "--mount", "--propagation", "private", sys.executable, __file__]
        os.execvpe("unshare", [*cmd, *argv], env)
    signal.signal(signal.SIGTERM, _terminate)
    try:
        return run_all(args)
    except Unavailable as err:
        if REQUIRE_PRIVILEGED:
            print(f"FAIL: {NAME}: {err} (KVMPV_REQUIRE_PRIVILEGED=1)", flush=True)
            return 1
        print(f"SKIP: {NAME}: {err}", flush=True)
        return 0
    except KeyboardInterrupt:
        log("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
