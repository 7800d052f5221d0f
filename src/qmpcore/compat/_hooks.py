"""The few things the adapters need from qmpcore's clients beyond their
public API: adopting an already connected socket (server mode, callers that
pass a ``socket.socket``), the raw unix socket for a synchronous
``send_fd_scm``, and one non-blocking read for "has an event arrived?".

They live here, in one place, so the adapters themselves use only public
client API.
"""

from __future__ import annotations

import socket
import time
from typing import Any, Optional

from .. import aio, sync
from .._address import Address
from ..protocol.qmp_client import QMPClientProtocol

__all__ = ["adopt_async", "adopt_sync", "raw_socket", "unix_socket", "poll_sync"]


def _address_of(sock: socket.socket) -> Address:
    try:
        peer = sock.getpeername()
    except OSError:
        peer = ""
    if sock.family == socket.AF_UNIX:
        return Address(sock.family, peer or "<socket>")
    return Address(sock.family, tuple(peer[:2]))  # type: ignore[arg-type]


class _AdoptedClient(aio.QMPClient):
    """An asyncio QMP client on a socket that is already connected."""

    _adopted: socket.socket

    async def _open(self) -> None:
        sock = self._adopted
        sock.setblocking(False)
        loop = self._loop
        if sock.family == socket.AF_UNIX:
            self._transport, _ = await loop.create_unix_connection(lambda: aio._Transport(self), sock=sock)
            self._sock = sock
        else:
            self._transport, _ = await loop.create_connection(lambda: aio._Transport(self), sock=sock)


async def adopt_async(sock: socket.socket, *, negotiate: bool, oob: bool, timeout: Optional[float],
                      max_frame_size: int, event_queue: int = aio.EVENT_QUEUE_SIZE) -> aio.QMPClient:
    """``qmpcore.connect`` over ``sock``: greeting, then negotiation."""
    client = _AdoptedClient(QMPClientProtocol(max_frame_size=max_frame_size), _address_of(sock),
                            event_queue, None)
    client._adopted = sock
    await client._handshake(timeout, lambda: client._greeted(negotiate, oob))
    return client


def adopt_sync(sock: socket.socket, *, negotiate: bool, oob: bool, timeout: Optional[float],
               max_frame_size: int, event_queue: int = sync.EVENT_QUEUE_SIZE) -> sync.SyncQMPClient:
    """``qmpcore.connect_sync`` over ``sock``: greeting, then negotiation."""
    client = sync.SyncQMPClient(QMPClientProtocol(max_frame_size=max_frame_size),
                                _address_of(sock), sock, event_queue, None)
    try:
        client._greeted(None if timeout is None else time.monotonic() + timeout, negotiate, oob)
    except BaseException:
        client.close()
        raise
    return client


def raw_socket(client: Any) -> Optional[socket.socket]:
    """The client's socket (the asyncio client keeps it for unix only)."""
    return getattr(client, "_sock", None)


def unix_socket(client: Any) -> Optional[socket.socket]:
    """The client's socket if it is a unix socket (for SCM_RIGHTS), else None."""
    sock = raw_socket(client)
    if sock is None or sock.family != socket.AF_UNIX:
        return None
    return sock


def poll_sync(client: sync.SyncQMPClient) -> None:
    """Process whatever the socket already holds, without waiting."""
    with client._cond:
        if not client._closed and not client._reading:
            client._read_once(0)
