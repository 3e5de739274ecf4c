# SPDX-License-Identifier: GPL-2.0-only
"""pytest plugin for the s390x run under qemu-user (loaded by ``tests/s390x/run.py``).

qemu-user emulates the CPU and translates system calls; a few of them it does
not forward to the kernel, so tests that depend on them cannot say anything
about kvmpv there.  They are SKIPPED here with the emulator's reason (never
passed), by node id, and run everywhere else.  Each entry names the qemu 7.2
(Debian bookworm qemu-user-static) behaviour:

* ``madvise()``: only ``MADV_DONTNEED`` is passed through; every other advice
  is a hint qemu drops and reports success for (linux-user/mmap.c
  ``target_madvise``), so ``MADV_POPULATE_WRITE`` populates nothing.
* ``socket(AF_NETLINK, ...)``: only NETLINK_ROUTE, NETLINK_AUDIT and
  NETLINK_KOBJECT_UEVENT are emulated; the proc connector (NETLINK_CONNECTOR)
  and taskstats (NETLINK_GENERIC) fail with EPROTONOSUPPORT (the accounting
  tests turn that into a SKIP themselves, so no entry is needed for it).
* ``uname()`` reports the emulated machine (s390x), while ``/proc`` is the
  x86_64 kernel's (``/proc/sys/kernel/arch``).
* ``ioctl()``: requests qemu has no table entry for fail with ENOSYS before
  reaching the kernel (so no ENOTTY from a non-KVM fd, and every KVM ioctl is
  ENOSYS).

Some entries are the s390x root's own choice, not qemu's: no cgroup hierarchy is
mounted inside it, so tests that insist on mounted cgroups skip.

Touches nothing; only marks collected items.
"""

from __future__ import annotations

import fnmatch

import pytest

MADVISE = (
    "qemu-user drops madvise() advice other than MADV_DONTNEED (MADV_POPULATE_WRITE is a no-op)"
)
KERNEL_ARCH = (
    "qemu-user, uname() is emulated (s390x) but the kernel is x86_64: the probe reads the "
    "kernel's /proc/sys/kernel/arch, the test compares it with platform.machine()"
)
NO_CGROUPS = (
    "qemu-user, the s390x root has no cgroup hierarchy (cgroup accounting is tested "
    "by the native run); this test requires a mounted cgroup hierarchy"
)
IOCTL = "qemu-user answers ioctls it does not know with ENOSYS, not the kernel's ENOTTY"

QEMU_USER_LIMITS: list[tuple[str, str]] = [
    ("tests/test_memory.py::test_populate_*", MADVISE),
    ("tests/test_memory.py::test_fill_and_partial_populate", MADVISE),
    # populating is instant, so the 50 ms populate timeout never fires
    ("tests/test_shutdown.py::test_error_mid_run_leaves_nothing*", MADVISE),
    # release timings of memory that was never populated: no size curve to fit
    ("tests/test_exercise.py::test_bench_small_table", MADVISE),
    ("tests/test_kvm.py::test_kvm_dev_override_not_kvm", IOCTL),
    ("tests/test_probe.py::test_host_facts_are_real", KERNEL_ARCH),
    ("tests/test_probe.py::test_host_probe_json_cli", KERNEL_ARCH),
    # Not qemu: the s390x root has no cgroup hierarchy (see run.py); these
    # tests take "root" to mean "cgroups are mounted".
    ("tests/test_reboot.py::test_sigint_cli_exits_130_and_leaves_nothing", NO_CGROUPS),
    ("tests/test_accounting_cgroups.py::test_unprivileged_user_gets_skip_with_reasons", NO_CGROUPS),
    ("tests/test_accounting_cgroups.py::test_cleanup_after_a_failing_pytest_test", NO_CGROUPS),
    (
        "tests/test_accounting_cgroups.py::test_capabilities_as_root_are_probed_for_real",
        NO_CGROUPS,
    ),
]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        for pattern, reason in QEMU_USER_LIMITS:
            if fnmatch.fnmatchcase(item.nodeid, pattern):
                item.add_marker(pytest.mark.skip(reason=f"s390x under {reason}"))
                break
