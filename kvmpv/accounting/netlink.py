# SPDX-License-Identifier: GPL-2.0-only
"""Raw netlink with deadlines: the one place kvmpv reads a netlink socket.

Touches: ``AF_NETLINK`` sockets it creates (generic netlink for taskstats,
the connector for cn_proc); nothing else.  Every read here waits in
``poll()`` with a timeout and turns an expired deadline into
``AccountingUnavailable("... timed out ...")`` -- a SKIP with a reason for
callers, never a hang.  Requests are matched to replies by sequence number
*and* by our own port id (the kernel copies the requester's port into
``nlmsg_pid`` of replies and acks, and sends multicast/listener traffic with
port 0), so unrelated traffic on the same socket is skipped.

Why not pyroute2 (it was used here before; checked against 0.9.7 and its
master): (1) its synchronous requests run an asyncio loop until a
per-sequence queue yields the reply, with no deadline; (2) a receive-queue
overrun (ENOBUFS) is filed under sequence 0, so the request whose reply was
dropped never hears of it and waits in ``epoll_wait`` forever (reproduced
here with a TASKSTATS GET after the socket's queue had filled); (3)
``ProcEventSocket.control(IGNORE)`` waits for an ack that kernels with
``cn_filter()`` (6.6+) never send for it, and ``cn_proc_ack()`` sends none
when no listener is left; (4) its taskstats decoder reads every version but
15 only up to ``cpu_scaled_run_real_total``, so a v16 record is cut short
(see ``taskstats.py``).  pyroute2 stays a test dependency, as a second
reading of ``struct taskstats`` (tests/test_accounting_pyroute2.py).  The
import deadlock seen then (``_DeadlockError``, threads blocked for a whole
run) came from kvmpv's own lazy imports racing with pyroute2's eager
``__init__`` in another thread, not from pyroute2's imports.
"""

from __future__ import annotations

import errno
import os
import select
import socket
import struct
import time
from collections.abc import Iterator
from typing import Callable, Optional

from .common import AccountingUnavailable, oserror_text

NETLINK_CONNECTOR = 11
NETLINK_GENERIC = 16

NLMSG_HDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
NLMSG_NOOP = 1
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 1
NLM_F_MULTI = 2
NLM_F_ACK = 4
NLA_TYPE_MASK = 0x3FFF

GENL_ID_CTRL = 0x10
CTRL_CMD_GETFAMILY = 3
CTRL_ATTR_FAMILY_ID = 1
CTRL_ATTR_FAMILY_NAME = 2

#: default deadline of one request/reply exchange with the kernel (s); the
#: kernel answers in microseconds, so this only ever expires when the reply
#: was lost, and then a SKIP after 2 s beats a CI job killed after 90 min.
NETLINK_TIMEOUT_S = 2.0
#: sends of one request at most while the queue is still full (the first plus
#: the periodic resends); the resend once the queue has drained comes on top
MAX_SENDS = 4
#: an overrun's queue counts as drained after this long without a message
RESEND_IDLE_S = 0.02
#: resend at least this often while overruns keep the queue full
RESEND_EVERY_S = 0.25
#: receive buffer asked for: a burst of other tasks' events must not push our
#: own reply out (the kernel drops what does not fit and reports ENOBUFS)
RCVBUF = 4 << 20


def open_socket(protocol: int, what: str, groups: int = 0) -> socket.socket:
    """A bound ``AF_NETLINK`` socket; AccountingUnavailable if refused.

    The kernel picks the port id (autobind); ``groups`` is the multicast
    bitmask to join (connector: ``1 << (CN_IDX_PROC - 1)``).
    """
    try:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, protocol)
    except (OSError, AttributeError) as err:
        # EPROTONOSUPPORT: no such netlink family here (qemu-user, seccomp,
        # a network namespace without the connector); AttributeError: no
        # AF_NETLINK at all.
        raise AccountingUnavailable(f"{what}: no netlink socket: {err}") from err
    try:
        try:
            sock.setsockopt(socket.SOL_SOCKET, 33, RCVBUF)  # SO_RCVBUFFORCE (root)
        except OSError:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
        sock.bind((0, groups))
    except OSError as err:
        sock.close()
        raise AccountingUnavailable(f"{what}: bind: {oserror_text(err)}") from err
    return sock


def port_id(sock: socket.socket) -> int:
    """Our netlink port id (what the kernel puts in ``nlmsg_pid`` of replies)."""
    return int(sock.getsockname()[0])


def new_seq() -> int:
    # Random, so that a reply to an earlier request of ours (or of a previous
    # socket that had the same port id) cannot be taken for this one's.
    return int.from_bytes(os.urandom(4), "little") & 0x7FFFFFFF or 1


def messages(buf: bytes) -> Iterator[tuple[int, int, int, int, int, int]]:
    """(offset, length, type, flags, seq, pid) of each message in a datagram."""
    off = 0
    while off + NLMSG_HDR.size <= len(buf):
        length, typ, flags, seq, pid = NLMSG_HDR.unpack_from(buf, off)
        if length < NLMSG_HDR.size or off + length > len(buf):
            return
        yield off, length, typ, flags, seq, pid
        off += (length + 3) & ~3


def attrs(buf: bytes, off: int, end: int) -> list[tuple[int, int, int]]:
    """(type, payload offset, payload length) of the attributes in buf[off:end]."""
    out = []
    while off + 4 <= end:
        nla_len, nla_type = struct.unpack_from("=HH", buf, off)
        if nla_len < 4 or off + nla_len > end:
            break
        out.append((nla_type & NLA_TYPE_MASK, off + 4, nla_len - 4))
        off += (nla_len + 3) & ~3
    return out


def nla(typ: int, payload: bytes) -> bytes:
    """One netlink attribute, padded to 4 bytes."""
    out = struct.pack("=HH", 4 + len(payload), typ) + payload
    return out + b"\0" * (-len(out) % 4)


def genl_message(family: int, cmd: int, body: bytes, seq: int, flags: int = NLM_F_REQUEST) -> bytes:
    """nlmsghdr + genlmsghdr (version 1) + attributes."""
    genl = struct.pack("=BBH", cmd, 1, 0) + body
    return NLMSG_HDR.pack(NLMSG_HDR.size + len(genl), family, flags, seq, 0) + genl


def recv(sock: socket.socket, deadline: float, what: str) -> Optional[bytes]:
    """One datagram, or None if the deadline passed first.

    ENOBUFS (the kernel dropped messages for us: overrun) is returned as
    ``b""`` so that callers can resend a request whose reply may be lost.
    """
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLIN)
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        if not poller.poll(max(1, int(left * 1000))):
            continue  # loop re-checks the deadline (poll rounds to ms)
        try:
            return sock.recv(1 << 20, socket.MSG_DONTWAIT)
        except BlockingIOError:
            continue
        except OSError as err:
            if err.errno == errno.ENOBUFS:
                return b""
            raise AccountingUnavailable(f"{what}: recv: {oserror_text(err)}") from err


def transact(
    sock: socket.socket,
    build: Callable[[int], bytes],
    what: str,
    timeout_s: float = NETLINK_TIMEOUT_S,
    on_other: Optional[Callable[[bytes, int, int], None]] = None,
) -> list[tuple[bytes, int, int, int]]:
    """Send ``build(seq)`` and collect the reply: (buffer, offset, length, type)
    of every message carrying our seq and port id, up to the end of the reply
    (a message without NLM_F_MULTI, NLMSG_DONE, or an NLMSG_ERROR/ack).

    Messages that are not ours go to ``on_other(buf, offset, type)`` (or are
    dropped).  After an overrun (ENOBUFS) the request is sent again with a
    new sequence number once the queue has drained: kernel GET and
    registration requests are idempotent.
    Raises ``OSError(errno)`` for an error reply (callers map EPERM etc.)
    and AccountingUnavailable("... timed out ...") when ``timeout_s``
    passes without the end of the reply.
    """
    me = port_id(sock)
    start = time.monotonic()
    deadline = start + timeout_s
    sends = 0
    seq = 0
    got: list[tuple[bytes, int, int, int]] = []

    def send() -> None:
        nonlocal seq, sends
        seq = new_seq()
        sends += 1
        got.clear()
        try:
            sock.send(build(seq))
        except OSError as err:
            raise AccountingUnavailable(f"{what}: send: {oserror_text(err)}") from err

    send()
    last = time.monotonic()
    resend = False
    while True:
        # After an overrun, resend once the queue has drained (nothing more
        # for RESEND_IDLE_S), or every RESEND_EVERY_S while traffic keeps it
        # full: while it is full the kernel drops the new reply too, and
        # reports no second ENOBUFS until the queue was empty
        # (NETLINK_S_CONGESTED, netlink_overrun()).
        now = time.monotonic()
        if resend and now - last >= RESEND_EVERY_S and sends < MAX_SENDS:
            # ``resend`` stays set: while the queue is still congested this
            # request is dropped too, silently, so the one after the drain
            # must still follow.  (Clearing it here lost the reply for good
            # whenever draining took longer than RESEND_EVERY_S: found on a
            # real s390x kernel under TCG, tox -e s390x-kernel.)
            last = now
            send()
        until = min(deadline, now + RESEND_IDLE_S) if resend else deadline
        buf = recv(sock, until, what)
        if buf is None:
            if resend and time.monotonic() < deadline:
                resend, last = False, time.monotonic()
                send()
                continue
            raise AccountingUnavailable(
                f"{what}: timed out after {time.monotonic() - start:.1f} s waiting for the "
                f"kernel's reply ({sends} request(s) sent; reply lost or never sent)"
            )
        if buf == b"":
            # our reply may have been among the dropped messages
            resend = True
            continue
        for off, length, typ, flags, mseq, mpid in messages(buf):
            if mseq != seq or mpid != me:
                if on_other is not None:
                    on_other(buf, off, typ)
                continue
            if typ == NLMSG_ERROR:
                (err,) = struct.unpack_from("=i", buf, off + NLMSG_HDR.size)
                if err:
                    raise OSError(-err, os.strerror(-err))
                return got  # an ack ends the reply
            if typ == NLMSG_DONE:
                return got
            if typ == NLMSG_NOOP:
                continue
            got.append((buf, off, length, typ))
            if not flags & NLM_F_MULTI:
                return got


def resolve_family(sock: socket.socket, name: str, timeout_s: float = NETLINK_TIMEOUT_S) -> int:
    """Generic netlink family id of ``name`` (CTRL_CMD_GETFAMILY; no privilege
    needed).  OSError(ENOENT) if the family is not registered."""
    body = nla(CTRL_ATTR_FAMILY_NAME, name.encode() + b"\0")
    replies = transact(
        sock,
        lambda seq: genl_message(GENL_ID_CTRL, CTRL_CMD_GETFAMILY, body, seq),
        f"generic netlink family {name}",
        timeout_s,
    )
    for buf, off, length, _typ in replies:
        for typ, poff, _plen in attrs(buf, off + NLMSG_HDR.size + 4, off + length):
            if typ == CTRL_ATTR_FAMILY_ID:
                return int(struct.unpack_from("=H", buf, poff)[0])
    raise AccountingUnavailable(f"generic netlink family {name}: reply without a family id")


__all__ = [
    "NETLINK_CONNECTOR",
    "NETLINK_GENERIC",
    "NETLINK_TIMEOUT_S",
    "attrs",
    "genl_message",
    "messages",
    "nla",
    "open_socket",
    "port_id",
    "recv",
    "resolve_family",
    "transact",
]
