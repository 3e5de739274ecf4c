# SPDX-License-Identifier: GPL-2.0-only
"""Build the native parts of kvmpv (the clone(CLONE_VM) cleaner).

Everything else is declared in pyproject.toml.  The native code is compiled at
install time so that no compiler is needed at run time.
"""
from setuptools import setup

setup()
