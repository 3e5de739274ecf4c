# SPDX-License-Identifier: GPL-2.0-only
"""kvmpv: exercise and measure the asynchronous teardown of KVM guests.

Layers, each importing only from the ones before it:

1. ``uapi`` -- the KVM ABI as data (kernel names); ``errors`` -- the exception
   family and exit codes; ``units`` -- size strings.
2. ``syscalls`` -- the one syscall boundary (real kernel); ``sim`` plugs a
   simulated s390x kernel in at the same point.  ``memory`` -- guest RAM.
3. ``kvm`` -- ``Kvm``/``Vm``/``Vcpu`` handles; ``x86guest`` -- a tiny real guest.
4. ``pv`` -- PV commands and the reboot algorithm; ``teardown`` -- the
   clone(CLONE_VM) cleaner; ``accounting`` -- cgroups, pidfds, taskstats, verdicts.
5. ``report`` -- KTAP, JUnit, JSON, plots.
6. ``scenarios`` -- probe, check, reboot, shutdown, exercise, bench.
7. ``commands`` and ``cli`` -- argparse and printing only; ``cli.main(argv) -> int``.
"""

__version__ = "0.1.0"
