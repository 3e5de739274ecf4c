# SPDX-License-Identifier: GPL-2.0-only
"""The skips CI accepts: the one reviewed list (read by tests/conftest.py).

Under ``KVMPV_REQUIRE_PRIVILEGED=1`` (set by ``.ci/run``) every skipped test
fails unless its reason matches an entry here.  The CI machine is an x86_64
Linux host with root, a usable ``/dev/kvm``, cgroup v1 and v2 (hybrid:
cgroup2 at ``/sys/fs/cgroup/unified``), netlink, 24 GiB of memory and every
tool ``.ci/run`` installs; so what it cannot be is an s390x (Secure
Execution) host or a cgroup2-only host, and the only skips it may show are
the tests that need one, and the few that by design run elsewhere (``tox -e
s390x``) or only on the simulator.

Not here, on purpose (each fails CI when it skips):

* privileges: root, ``/dev/kvm``, cgroups, netlink/taskstats, the proc
  connector, the ``nobody`` fixture (setpriv, uid 65534);
* memory ("MemAvailable ...", "needs N GiB"): every test sizes itself far
  below what this 24 GiB machine has available;
* the native cleaner: ``pip install``/tox builds it (gcc);
* tools and packages (qemu-system-*, strace, sqlite3, redis, avocado, tap.py,
  pyroute2, matplotlib, jsonschema, the s390x cross tools): ``.ci/run`` and
  tox install them by name;
* host settings (THP mode ``never``): ``.ci/run`` sets what the tests need;
* timing ("release too fast"): a test that cannot observe what it checks
  must be made to, not skipped.

To add an entry, say in ``why`` what the CI machine cannot be or do, and why
no install step in ``.ci/run`` can change it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True)
class Allowed:
    """One accepted skip: ``pattern`` is searched (``re.search``) in the skip reason."""

    pattern: str
    why: str

    def matches(self, reason: str) -> bool:
        return re.search(self.pattern, reason) is not None


ALLOWED: tuple[Allowed, ...] = (
    # -- CI is x86_64, not an s390x Secure Execution host ------------------
    Allowed(
        r"^not a PV host: KVM_CAP_S390_PROTECTED \(180\) = 0\b",
        "the real PV ioctls need an s390x Secure Execution host (IBM z15+ with an "
        "Ultravisor); CI's kernel answers KVM_CAP_S390_PROTECTED with 0. The same checks "
        "run on the simulator (tests/test_check.py::test_check_sim)",
    ),
    Allowed(
        r"^needs s390x, this is \w+$",
        "the check uses s390-only KVM interfaces (S390 memory limit, s390 vCPU state); "
        "its simulator run is test_check_sim",
    ),
    # -- a hybrid cgroup host (CI: v1 controllers, cgroup2 at .../unified) --
    Allowed(
        r"memory controller not enabled in /sys/fs/cgroup/unified/cgroup\.subtree_control$",
        "on a hybrid host the memory controller is bound to the v1 hierarchy and cannot be "
        "enabled in the cgroup2 mounted at /sys/fs/cgroup/unified, so the cgroup2 run "
        "(tox -e cgroup2) has no memory counter; the py env's v1 run checks the release. "
        "(A cgroup2-only host mounts at /sys/fs/cgroup and is not matched.)",
    ),
    # -- by design elsewhere ---------------------------------------------
    Allowed(
        r"^simulator only: ",
        "the check stages a moment only the simulator can hold (a gate inside PERFORM, "
        "an injected Ultravisor failure, a fatal signal that would kill kvmpv itself); "
        "test_check_sim runs it",
    ),
    Allowed(
        r"^KVMPV_EXPECT_S390X is not 1: not the s390x env",
        "proves the interpreter is big-endian s390x: runs in tox -e s390x (qemu-user)",
    ),
    Allowed(
        r"^the exec chain needs s390x \(tox -e s390x",
        "the PGSTE re-exec happens only on s390x: runs in tox -e s390x (qemu-user)",
    ),
    # -- Python 3.9 (tox -e py39, the RHEL 9 promise) -------------------------
    Allowed(
        r"kcidb-io \(PyPI\) validates the submissions: .*\(Python >= 3\.10; this is 3\.9\)$",
        "kcidb-io, the KCIDB schema's own validator, is published for Python 3.10 and later "
        "only; no install step can put it on 3.9. kvmpv's writer is the same code on 3.9, "
        "and the py env (3.11) validates it",
    ),
    # -- the inverse: never on x86 CI, listed so that an s390x host running
    # -- the suite with KVMPV_REQUIRE_PRIVILEGED=1 is judged by the same list
    Allowed(
        r"^on a PV host ",
        "the test is about a host without PV; on a PV host the real checks run instead",
    ),
    Allowed(
        r"^needs x86 \(or other non-s390\) KVM; this is s390x$",
        "the test is about the no-PV checks on a non-s390 kernel",
    ),
    Allowed(
        r"^(x86_64 host behaviour|the tiny guest is x86_64 code)$",
        "x86_64 guest code and x86 KVM attributes; s390x has its own (tests/test_s390guest.py)",
    ),
    # -- the regression corpus's fixes kvmpv cannot reinstate yet -----------
    Allowed(
        r"^[0-9a-f]{12}: no deviation: ",
        "an observable upstream fix (fixtures/regressions/corpus.json) whose bug the simulator "
        "cannot reinstate yet: its no_deviation field says what must be modelled first, and "
        "docs/regressions.md counts it as not caught. No machine or install step changes that; "
        "adding the deviation turns the skip into the test (tests/test_regressions.py)",
    ),
)


def allowed(reason: str) -> Optional[Allowed]:
    """The entry that accepts a skip with this reason (None: CI fails it)."""
    for entry in ALLOWED:
        if entry.matches(reason):
            return entry
    return None
