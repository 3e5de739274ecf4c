# SPDX-License-Identifier: GPL-2.0-only
"""Errors of the accounting layer and the one helper every part of it shares.

Touches nothing: plain classes.  ``AccountingUnavailable`` is the SKIP signal
of the accounting ("no permission, no guess"): whenever cgroups, taskstats or the
proc connector cannot be used here, the accounting code raises it with the
reason instead of guessing, and callers turn it into a SKIP.
"""

from __future__ import annotations

from ..errors import EXIT_FAIL, EXIT_SKIP, KvmpvError, errno_name


class AccountingUnavailable(KvmpvError):
    """The host does not let kvmpv account for CPU/memory here; report SKIP.

    ``reason`` is a one-line, user-facing explanation ("cgroup v1 cpuacct:
    mkdir /sys/fs/cgroup/cpuacct/kvmpv-...: Permission denied").
    """

    exit_code = EXIT_SKIP

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class CgroupLeftover(KvmpvError):
    """A cgroup kvmpv created could not be removed (never silent).

    Raised from ``CgroupScope.__exit__`` when no other exception is on its
    way out; otherwise the same text goes to stderr and the original
    exception continues.
    """

    exit_code = EXIT_FAIL

    def __init__(self, paths: list[str], detail: str) -> None:
        self.paths = list(paths)
        self.detail = detail
        super().__init__(f"kvmpv cgroups left behind: {', '.join(self.paths)} ({detail})")


def oserror_text(err: OSError) -> str:
    """``Permission denied`` style text of an OSError, with the errno name."""
    return f"{errno_name(err.errno or 0)} {err.strerror or err}"


__all__ = ["AccountingUnavailable", "CgroupLeftover", "oserror_text"]
