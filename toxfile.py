# SPDX-License-Identifier: GPL-2.0-only
"""tox's inline plugin (tox loads ``toxfile.py`` beside ``tox.ini``): find
pyenv's interpreters, so that the README's plain ``tox`` runs ``py39``
wherever a Python 3.9 is installed, exactly as CI does.

Why a plugin of our own: tox (through virtualenv) looks for ``python3.9`` on
``PATH`` only.  Under pyenv, ``PATH`` holds a ``python3.9`` *shim* that
refuses to run unless 3.9 is one of the active versions, so tox reported the
env as skipped on a machine that has 3.9 installed.  The PyPI plugins for this
(tox-pyenv-redux 1.2 over virtualenv-pyenv 0.7) fail on tox 4.67: tox passes
virtualenv the sentinel spec ``<0``, which virtualenv-pyenv rejects as an
error instead of passing over it, so no interpreter is found at all.

What it does: for an env named ``pyXY`` (``py39``), after the candidate tox
itself would use (``python3.9`` on PATH: RHEL 9's ``/usr/bin/python3.9``), it
adds pyenv's own ``$PYENV_ROOT/versions/X.Y*/bin/pythonX.Y`` (newest patch
release first).  tox tries the candidates in order, so a host without pyenv is
unchanged, and a host with neither still fails the env (``tox.ini`` does not
skip missing interpreters).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from tox.config.loader.memory import MemoryLoader
from tox.config.sets import EnvConfigSet
from tox.plugin import impl
from tox.session.state import State

_PY_ENV = re.compile(r"^py(\d)(\d+)$")


def _pyenv_root() -> Path:
    root = os.environ.get("PYENV_ROOT")
    return Path(root) if root else Path.home() / ".pyenv"


def _patch_key(p: Path) -> tuple[int, ...]:
    # versions/3.9.18 -> (3, 9, 18); a "3.9-dev" sorts before every release
    return tuple(int(x) for x in re.findall(r"\d+", p.parent.parent.name))


def pyenv_interpreters(major: str, minor: str) -> list[str]:
    """pyenv's CPython ``major.minor`` interpreters, newest patch release first."""
    versions = _pyenv_root() / "versions"
    found = versions.glob(f"{major}.{minor}.*/bin/python{major}.{minor}")
    runnable = [p for p in found if os.access(p, os.X_OK)]
    return [str(p) for p in sorted(runnable, key=_patch_key, reverse=True)]


@impl
def tox_add_env_config(env_conf: EnvConfigSet, state: State) -> None:
    m = _PY_ENV.match(env_conf.name)
    if m is None:
        return
    extra = pyenv_interpreters(m.group(1), m.group(2))
    if not extra:
        return
    # MemoryLoader first: it wins over tox.ini, for base_python only.  (Reading
    # the env's own base_python here would fix its value in tox's cache.)
    path_name = f"python{m.group(1)}.{m.group(2)}"
    env_conf.loaders.insert(0, MemoryLoader(base_python=[path_name, *extra]))
