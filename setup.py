# SPDX-License-Identifier: GPL-2.0-only
"""Build the native parts of kvmpv (the clone(CLONE_VM) cleaner).

Everything else is declared in pyproject.toml.  The native code is compiled at
install time so that no compiler is needed at run time.

On s390x a second native part is built: ``kvmpv/native/kvmpv-pgste``, a tiny
executable linked with ``-Wl,--s390-pgste`` that execs the Python interpreter
with PGSTE page tables, without which s390 KVM refuses every KVM_CREATE_VM
(``kvmpv/pgste.py`` says why and when kvmpv uses it).

``kvmpv/native/libkvmpv-cleaner.so`` is a plain shared object, not a CPython
extension: it has no Python symbols, so the same file can be LD_PRELOADed
into any dynamically linked program (``kvmpv launch``) and loaded with ctypes
by ``kvmpv.teardown`` (one state for both).  It is built through a setuptools
Extension only to reuse the compiler setup; the file name is fixed here.
"""

from __future__ import annotations

import os
import platform
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

CLEANER = "kvmpv.native.libkvmpv_cleaner"
CLEANER_FILE_NAME = "libkvmpv-cleaner.so"


PGSTE_LAUNCHER = "kvmpv-pgste"


class BuildExt(build_ext):
    """build_ext that gives the cleaner a fixed, Python-independent name.

    On s390x it also links the PGSTE launcher, an executable (setuptools has
    no notion of one, so it is compiled with the same compiler object).
    """

    def run(self) -> None:
        super().run()
        if sys.platform.startswith("linux") and platform.machine() == "s390x":
            self._build_pgste_launcher()

    def _build_pgste_launcher(self) -> None:
        objects = self.compiler.compile(
            ["kvmpv/native/pgste.c"],
            output_dir=self.build_temp,
            extra_postargs=["-std=gnu11", "-O2", "-Wall"],
        )
        # Next to the cleaner: in the build tree, and in place for develop/-e.
        dest_dirs = [os.path.join(self.build_lib, "kvmpv", "native")]
        if self.inplace:
            dest_dirs = [os.path.join("kvmpv", "native")]
        for dest in dest_dirs:
            os.makedirs(dest, exist_ok=True)
            # PT_S390_PGSTE in the ELF: the kernel then gives the launcher's mm
            # PGSTEs, and execve() hands them on to the interpreter.
            self.compiler.link_executable(
                objects,
                PGSTE_LAUNCHER,
                output_dir=dest,
                extra_postargs=["-Wl,--s390-pgste"],
            )

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
