# SPDX-License-Identifier: GPL-2.0-only
"""``Closing``: the context-manager protocol for handles with an idempotent ``close()``.

Every kvmpv resource (fds, mappings, netlink sockets, watchers) closes
deterministically in ``close()``, which may be called twice on cleanup
paths; ``with`` just calls it.  Data only in spirit: no I/O here.
"""

from __future__ import annotations

from types import TracebackType
from typing import Optional, TypeVar

_T = TypeVar("_T", bound="Closing")


class Closing:
    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self: _T) -> _T:
        return self

    def __exit__(
        self,
        exc_type: Optional[type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        self.close()
