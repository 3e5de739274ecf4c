# SPDX-License-Identifier: GPL-2.0-only
"""Build the native parts of kvmpv (the clone(CLONE_VM) cleaner).

Everything else is declared in pyproject.toml.  The native code is compiled at
install time so that no compiler is needed at run time.

``kvmpv/native/libkvmpv-cleaner.so`` is a plain shared object, not a CPython
extension: it has no Python symbols, so the same file can be LD_PRELOADed
into any dynamically linked program (``kvmpv launch``) and loaded with ctypes
by ``kvmpv.teardown`` (one state for both).  It is built through a setuptools
Extension only to reuse the compiler setup; the file name is fixed here.
"""

from __future__ import annotations

import os
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

CLEANER = "kvmpv.native.libkvmpv_cleaner"
CLEANER_FILE_NAME = "libkvmpv-cleaner.so"


class BuildExt(build_ext):
    """build_ext that gives the cleaner a fixed, Python-independent name."""

    def get_ext_filename(self, fullname: str) -> str:
        # Called with the full dotted name and, by get_ext_fullpath, with its
        # last component only.
        parts = fullname.split(".")
        if parts[-1] == CLEANER.rsplit(".", 1)[1]:
            return os.path.join(*parts[:-1], CLEANER_FILE_NAME)
        return str(super().get_ext_filename(fullname))

    def get_libraries(self, ext: Extension) -> list[str]:
        if ext.name == CLEANER:
            return list(ext.libraries)  # never libpython: preloaded into any program
        return list(super().get_libraries(ext))


ext_modules = []
if sys.platform.startswith("linux"):
    ext_modules.append(
        Extension(
            CLEANER,
            sources=["kvmpv/native/cleaner.c", "kvmpv/native/preload.c"],
            depends=["kvmpv/native/cleaner.h", "kvmpv/native/rawsys.h"],
            # Why each flag: see the top comment of kvmpv/native/cleaner.c.
            extra_compile_args=[
                "-std=gnu11",
                "-O2",
                "-Wall",
                "-fvisibility=hidden",
                "-fno-stack-protector",
                "-fno-builtin",
                "-fno-tree-loop-distribute-patterns",
            ],
            extra_link_args=["-Wl,-z,now", "-pthread"],
        )
    )

setup(ext_modules=ext_modules, cmdclass={"build_ext": BuildExt})
