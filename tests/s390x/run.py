# SPDX-License-Identifier: GPL-2.0-only
"""Run the test suite as big-endian s390x under qemu-user (``tox -e s390x``).

Host side only; runs as root on an x86_64 (or any non-s390x) Linux host:

1. Makes sure the kernel runs s390x ELF binaries through qemu-user: mounts
   binfmt_misc if needed and registers Debian's ``qemu-s390x`` handler (from
   qemu-user-static's ``/usr/lib/binfmt.d/qemu-s390x.conf``; flag F, so the
   interpreter is opened once and works inside a chroot).
2. Builds, once, a Debian bookworm s390x root with ``debootstrap
   --arch=s390x --variant=minbase --include=ROOT_PACKAGES`` (``DEBIAN_PACKAGES``:
   what PyPI has no s390x wheel of; the rest for tests/s390x/kernel.py) from the mirror the
   host's apt sources name, in ``$KVMPV_CACHE/s390x/`` (default
   ``/var/cache/kvmpv``; outside the repository, so fresh clones and CI reuse
   it).  A stamp file says which recipe built it; a changed recipe rebuilds.
3. Installs the project's dependencies and test extra (read from
   ``pyproject.toml``) for s390x into the root with ``pip install --target
   --platform manylinux2014_s390x --only-binary=:all:`` (pure-Python wheels,
   and s390x wheels where a package has compiled parts), cached by their hash.
4. Copies kvmpv's pure-Python tree (``kvmpv/``, ``tests/``, ``fixtures/``, ``benchmarks/``,
   ``pyproject.toml``; never built ``*.so``: the native cleaner is x86 code
   here, so its tests skip) into the root and runs ``python3 -m pytest`` there
   in private mount and PID namespaces (``unshare``), with ``/proc``, ``/sys``
   (read-only), a private ``/tmp`` and ``/dev/shm``: nothing stays mounted or
   running after the run.  ``/dev/kvm`` is not in the root (qemu-user answers
   KVM ioctls with ENOSYS anyway), so KVM tests skip with the reason.

Under qemu-user Python runs several times slower, so the default selection is
``-m "not slow"``; arguments given to this script (tox posargs) replace it.
``KVMPV_EXPECT_S390X=1`` is set inside, which turns on the test that proves the
interpreter really is big-endian s390x.

When the root cannot be had (not root, no binfmt_misc, no debootstrap or
qemu-user-static, no package access) it prints ``SKIP: s390x: <reason>`` and
exits 0 -- except under ``KVMPV_REQUIRE_PRIVILEGED=1`` (``.ci/run``, which
installs all of it), where it prints ``FAIL: s390x: <reason>`` and exits 1,
so that tox cannot show the env as passed; a failing test run exits with
pytest's status.  On an s390x host it
runs pytest natively.  Touches only its cache directory, the binfmt_misc
registration, and the processes it starts.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import NoReturn

REPO = Path(__file__).resolve().parents[2]
SUITE = "bookworm"
#: Dependencies PyPI has no s390x wheel of, installed from Debian into the root
#: instead (and left out of the pip install): cryptography (SE headers, kvmpv/sehdr.py).
DEBIAN_PACKAGES = {"cryptography": "python3-cryptography"}
# Packages in the root besides minbase: python3 for the suite and DEBIAN_PACKAGES;
# pip, setuptools, gcc and libc6-dev for the native `pip install .` in a real s390x
# kernel (tests/s390x/kernel.py: the cleaner and kvmpv-pgste built by the s390x gcc);
# the third-party programs the launcher tests start (that guest has no network,
# so tests/conftest.py's apt-get fallback cannot fetch them there).
# python3-cffi-backend by name: python3-cryptography depends on the *virtual*
# python3-cffi-backend-api-min/-max, which debootstrap's resolver does not
# follow to their provider, and dpkg then leaves cryptography unconfigured
# ("Failure while configuring base packages").
ROOT_PACKAGES = ",".join(
    [
        "python3", *DEBIAN_PACKAGES.values(), "python3-cffi-backend", "python3-pip",
        "python3-setuptools", "gcc", "libc6-dev", "sqlite3", "redis-server", "redis-tools",
        "strace", "procps", "util-linux",
    ]
)  # fmt: skip
# Bump when the way the root is built changes: the cached root is rebuilt.
ROOT_RECIPE = f"debootstrap --arch=s390x --variant=minbase --include={ROOT_PACKAGES} {SUITE} v4"
# No cache dir in the throw-away copy; the qemu-user limits plugin (qemu_user.py).
PLUGINS = ["-p", "no:cacheprovider", "-p", "qemu_user"]
DEFAULT_PYTEST_ARGS = ["-q", "-rs", "-m", "not slow"]
VERSION_SNIPPET = "import sys; print('%d.%d' % sys.version_info[:2])"
BINFMT = Path("/proc/sys/fs/binfmt_misc")
TIMEOUT_S = int(os.environ.get("KVMPV_S390X_TIMEOUT", "1080"))


def log(msg: str) -> None:
    print(f"s390x: {msg}", flush=True)


def skip(reason: str) -> NoReturn:
    """SKIP with the reason; a failure where CI must have what was missing."""
    if os.environ.get("KVMPV_REQUIRE_PRIVILEGED") == "1":
        print(f"FAIL: s390x: {reason} (KVMPV_REQUIRE_PRIVILEGED=1: CI must run this env)",
              flush=True)  # fmt: skip
        sys.exit(1)
    print(f"SKIP: s390x: {reason}", flush=True)
    sys.exit(0)


def cache_dir() -> Path:
    env = os.environ.get("KVMPV_CACHE")
    if env:
        return Path(env) / "s390x"
    return Path("/var/cache/kvmpv/s390x")


def debian_mirror() -> str:
    env = os.environ.get("KVMPV_DEBIAN_MIRROR")
    if env:
        return env
    pattern = re.compile(r"^URIs:\s*(\S+/debian)/?\s*$", re.M)
    for src in sorted(Path("/etc/apt/sources.list.d").glob("*.sources")):
        m = pattern.search(src.read_text(errors="replace"))
        if m:
            return m.group(1)
    for src in [Path("/etc/apt/sources.list"), *Path("/etc/apt/sources.list.d").glob("*.list")]:
        if src.exists():
            for line in src.read_text(errors="replace").splitlines():
                parts = line.split()
                uri = parts[1].rstrip("/") if len(parts) >= 2 else ""
                if parts and parts[0] == "deb" and uri.endswith("/debian"):
                    return uri
    return "http://deb.debian.org/debian"


def ensure_binfmt() -> None:
    """Register qemu-s390x with binfmt_misc (idempotent)."""
    if not (BINFMT / "register").exists():
        res = subprocess.run(
            ["mount", "-t", "binfmt_misc", "binfmt_misc", str(BINFMT)],
            capture_output=True,
            text=True,
        )
        if res.returncode != 0:
            skip(f"cannot mount binfmt_misc: {res.stderr.strip() or res.returncode}")
    entry = BINFMT / "qemu-s390x"
    if entry.exists():
        if entry.read_text().splitlines()[0].strip() != "enabled":
            entry.write_text("1")
        return
    conf = Path("/usr/lib/binfmt.d/qemu-s390x.conf")
    if not conf.exists():
        skip(f"{conf} missing (apt-get install qemu-user-static)")
    rule = conf.read_text().strip().splitlines()[-1]
    try:
        (BINFMT / "register").write_text(rule)
    except OSError as err:
        skip(f"cannot register the qemu-s390x binfmt handler: {err}")


def run_logged(cmd: list[str], logfile: Path, timeout: int) -> int:
    with open(logfile, "w") as f:
        try:
            return subprocess.run(
                cmd, stdout=f, stderr=subprocess.STDOUT, timeout=timeout
            ).returncode
        except subprocess.TimeoutExpired:
            return -1


def tail(path: Path, n: int = 5) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-n:])
    except OSError:
        return ""


def ensure_root(cache: Path) -> Path:
    """The cached s390x root (built under the exclusive lock)."""
    root = cache / f"root-{SUITE}"
    stamp = root / ".kvmpv-root-recipe"
    if stamp.exists() and stamp.read_text() == ROOT_RECIPE:
        return root
    for tool in ("debootstrap",):
        if shutil.which(tool) is None:
            skip(f"{tool} not installed (apt-get install debootstrap qemu-user-static)")
    new = cache / f"root-{SUITE}.new"
    shutil.rmtree(new, ignore_errors=True)
    mirror = debian_mirror()
    logfile = cache / "debootstrap.log"
    log(f"building the s390x root with debootstrap from {mirror} (log: {logfile})")
    t0 = time.monotonic()
    rc = run_logged(
        [
            "debootstrap",
            "--arch=s390x",
            "--variant=minbase",
            f"--include={ROOT_PACKAGES}",
            SUITE,
            str(new),
            mirror,
        ],
        logfile,
        timeout=900,
    )
    if rc != 0:
        shutil.rmtree(new, ignore_errors=True)
        skip(f"debootstrap failed (rc {rc}): {tail(logfile)}")
    (new / ".kvmpv-root-recipe").write_text(ROOT_RECIPE)
    shutil.rmtree(root, ignore_errors=True)
    new.rename(root)
    log(f"root built in {time.monotonic() - t0:.0f} s")
    return root


def root_python_version(root: Path) -> str:
    res = subprocess.run(
        ["chroot", str(root), "/usr/bin/python3", "-c", VERSION_SNIPPET],
        capture_output=True,
        text=True,
    )
    if res.returncode != 0:
        skip(f"python3 in the s390x root does not run: {res.stderr.strip()}")
    return res.stdout.strip()


def requirements() -> list[str]:
    try:
        import tomllib  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        try:
            import tomli as tomllib  # type: ignore[import-not-found,no-redef,unused-ignore]
        except ImportError:
            skip("reading pyproject.toml needs Python >= 3.11 or tomli on the host")
    with open(REPO / "pyproject.toml", "rb") as f:
        project = tomllib.load(f)["project"]
    reqs = list(project.get("dependencies", []))
    reqs += project.get("optional-dependencies", {}).get("test", [])
    return sorted({r for r in reqs if re.split(r"[<>=!~; ]", r)[0] not in DEBIAN_PACKAGES})


def ensure_site(root: Path, pyver: str) -> str:
    """pip-install the requirements for s390x into the root; returns the in-root path."""
    reqs = requirements()
    key = hashlib.sha256(("\n".join([pyver, *reqs])).encode()).hexdigest()[:12]
    site = root / "opt" / f"kvmpv-site-{key}"
    pth = root / "usr" / "local" / "lib" / f"python{pyver}" / "dist-packages" / "kvmpv-site.pth"
    if (
        (site / ".complete").exists()
        and pth.exists()
        and pth.read_text().strip() == f"/opt/{site.name}"
    ):
        return f"/opt/{site.name}"
    tmp = site.with_name(site.name + ".new")
    shutil.rmtree(tmp, ignore_errors=True)
    abi = "cp" + pyver.replace(".", "")
    cmd = [
        sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
        "--no-compile", "--target", str(tmp), "--platform", "manylinux2014_s390x",
        "--python-version", pyver, "--implementation", "cp", "--abi", abi,
        "--only-binary=:all:", *reqs,
    ]  # fmt: skip
    logfile = root.parent / "pip.log"
    log(f"installing {', '.join(reqs)} for s390x (log: {logfile})")
    if run_logged(cmd, logfile, timeout=600) != 0:
        shutil.rmtree(tmp, ignore_errors=True)
        skip(f"pip could not fetch s390x packages: {tail(logfile, 3)}")
    (tmp / ".complete").write_text("\n".join(reqs) + "\n")
    for old in (root / "opt").glob("kvmpv-site-*"):
        if old != tmp:
            shutil.rmtree(old, ignore_errors=True)
    tmp.rename(site)
    # A .pth in the root's site dir puts the packages on every interpreter's
    # path, as a venv would: tests that start "python3 -m ..." with their own
    # environment still find pytest and the dependencies.
    pth_dir = root / "usr" / "local" / "lib" / f"python{pyver}" / "dist-packages"
    pth_dir.mkdir(parents=True, exist_ok=True)
    (pth_dir / "kvmpv-site.pth").write_text(f"/opt/{site.name}\n")
    return f"/opt/{site.name}"


def copy_tree(dest: Path) -> None:
    """kvmpv's pure-Python parts and what the tests read: no .so, caches or VCS data."""
    ignore = shutil.ignore_patterns(
        "__pycache__", "*.so", "*.o", "*.pyc", ".pytest_cache", ".mypy_cache", ".ruff_cache"
    )
    dest.mkdir(parents=True)
    # tests load benchmark helpers and read the docs (tests/test_docs.py, the check table)
    for part in ("kvmpv", "tests", "fixtures", "benchmarks", "docs"):
        if (REPO / part).exists():
            shutil.copytree(REPO / part, dest / part, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):  # tests read the README too
        if (REPO / name).exists():
            shutil.copy2(REPO / name, dest / name)


def build_pgste_launcher(dest: Path) -> str:
    """Cross-build kvmpv-pgste for the root (an s390x install builds it natively).

    Static, so it needs nothing from the root; linked with -Wl,--s390-pgste as
    setup.py does.  Returns its path inside the root's copy, "" if no cross
    compiler (the exec-chain test then says SKIP with the reason).
    """
    gcc = shutil.which("s390x-linux-gnu-gcc")
    if gcc is None:
        log("no s390x-linux-gnu-gcc: the PGSTE exec-chain test will skip")
        return ""
    out = dest / "tests" / "s390x" / "kvmpv-pgste"
    src = REPO / "kvmpv" / "native" / "pgste.c"
    cmd = [gcc, "-std=gnu11", "-O2", "-Wall", "-static", "-Wl,--s390-pgste", "-o", str(out)]
    res = subprocess.run([*cmd, str(src)], capture_output=True, text=True)
    if res.returncode != 0:
        log(f"cross-building kvmpv-pgste failed: {res.stderr.strip()}")
        return ""
    return "tests/s390x/kvmpv-pgste"


def run_pytest(root: Path, pytest_args: list[str]) -> int:
    run_id = f"run-{os.getpid()}"
    src = root / "kvmpv" / run_id
    shutil.rmtree(src, ignore_errors=True)
    copy_tree(src)
    launcher = build_pgste_launcher(src)
    inner = f"/kvmpv/{run_id}"
    env = [
        "PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
        "HOME=/root",
        "LANG=C.UTF-8",
        f"PYTHONPATH={inner}:{inner}/tests/s390x",
        "KVMPV_EXPECT_S390X=1",
        "KVMPV_QEMU_USER=1",
        f"KVMPV_TEST_PGSTE_LAUNCHER={inner + '/' + launcher if launcher else ''}",
        f"CI={os.environ.get('CI', '')}",
        # No KVMPV_REQUIRE_PRIVILEGED inside: under qemu-user there is by
        # design no /dev/kvm, no cgroup hierarchy and no native cleaner (see
        # qemu_user.py), so those skips are this env's nature; the native run
        # is where CI refuses them.
    ]
    r = str(root)
    # Private mount + PID namespaces: the mounts and every process of the run
    # disappear with it, also on timeout or SIGINT.  The shell stays PID 1 of
    # the namespace (no exec): pytest must not be init, which the kernel
    # shields from fatal signals and which tests take for "another process".
    # No cgroup hierarchy inside: cgroup/taskstats accounting is the host
    # kernel's business, tested by the native run; from inside a PID namespace
    # the cgroup names (which carry PIDs) would also not match the host's view.
    script = (
        "set -e; mount --make-rprivate /; "
        f"mount -t proc proc {r}/proc; "
        f"mount -t sysfs -o ro sysfs {r}/sys; "
        f"mount -t tmpfs -o size=512m tmpfs {r}/tmp; "
        f"mount -t tmpfs tmpfs {r}/dev/shm; "
        f"chroot {r} /usr/bin/env -i {' '.join(env)} "
        f"/bin/sh -c 'cd {inner} && exec python3 -m pytest {' '.join(PLUGINS)} \"$@\"' "
        'pytest "$@"'
    )
    cmd = ["unshare", "--mount", "--pid", "--fork", "--kill-child", "sh", "-c", script, "sh"]
    cmd += pytest_args
    log(f"pytest {' '.join(pytest_args)} (in {root}, as s390x via qemu-user)")
    t0 = time.monotonic()
    try:
        rc = subprocess.run(cmd, timeout=TIMEOUT_S).returncode
    except subprocess.TimeoutExpired:
        log(f"FAIL: the s390x test run exceeded {TIMEOUT_S} s")
        rc = 1
    finally:
        shutil.rmtree(src, ignore_errors=True)
    log(f"test run took {time.monotonic() - t0:.0f} s, pytest exit {rc}")
    return rc


def main(argv: list[str]) -> int:
    pytest_args = argv or DEFAULT_PYTEST_ARGS
    if platform.machine() == "s390x":
        env = dict(os.environ, KVMPV_EXPECT_S390X="1")
        return subprocess.run(
            [sys.executable, "-m", "pytest", *pytest_args], cwd=REPO, env=env
        ).returncode
    if sys.platform != "linux":
        skip(f"needs Linux (qemu-user, binfmt_misc), this is {sys.platform}")
    if os.geteuid() != 0:
        skip("needs root (binfmt_misc, debootstrap, chroot); run as root")
    for tool in ("qemu-s390x-static", "unshare", "chroot"):
        if shutil.which(tool) is None:
            skip(f"{tool} not found (apt-get install qemu-user-static debootstrap)")
    t0 = time.monotonic()
    ensure_binfmt()
    cache = cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / "lock", "w") as lock:
        # Build/update under the exclusive lock; concurrent runs share the root.
        fcntl.flock(lock, fcntl.LOCK_EX)
        root = ensure_root(cache)
        ensure_site(root, root_python_version(root))
        fcntl.flock(lock, fcntl.LOCK_SH)
        log(f"root ready in {time.monotonic() - t0:.0f} s")
        rc = run_pytest(root, pytest_args)
    if rc == 5:
        log("FAIL: pytest collected no tests")
        return 1
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
