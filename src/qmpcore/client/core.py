"""What the asyncio and blocking clients share: routing protocol events.

A client owns one sans-IO protocol object and moves bytes between it and a
socket.  This module turns the protocol's events into results: replies
complete their waiters (futures, or slots in the blocking client), events go
to the :class:`~qmpcore.client.eventqueue.EventRouter`, faults are counted and
logged, and the end of the stream fails whatever still waits.
"""

from __future__ import annotations

import logging
import socket
from array import array
from collections.abc import Callable, Sequence
from typing import Any

from ..errors import ConnectionLost, FrameError, ProtocolError, StateError, TimeoutError
from ..protocol.events import (
    ConnectionClosed,
    ErrorReply,
    Event,
    Greeting,
    ProtocolFault,
    Return,
    VersionInfo,
)
from .address import Address, AddressLike, parse_address
from .eventqueue import CloseCallback, EventCallback, EventRouter

__all__ = ["ClientCore", "QMPInfo", "log", "connect_target", "scm_rights"]

log = logging.getLogger("qmpcore")

#: Default size of each event queue.
EVENT_QUEUE_SIZE = 1000


def connect_target(address: AddressLike | None, sock: socket.socket | None) -> Address:
    """Check ``connect(address)`` / ``connect(sock=sock)`` arguments; return the address.

    Exactly one of them is given.  A handed-over socket must be an open,
    connected stream socket; its address is the peer's (for a unix socket
    without a named peer, such as one QEMU connected to, the local path).
    """
    if sock is None:
        if address is None:
            raise TypeError("connect() needs an address or a connected sock")
        return parse_address(address)
    if address is not None:
        raise TypeError("connect() takes an address or a connected sock, not both")
    if not isinstance(sock, socket.socket):
        raise TypeError(f"sock must be a socket.socket, not {type(sock).__name__}")
    if sock.fileno() < 0:
        raise ValueError("sock is closed")
    if sock.type != socket.SOCK_STREAM:
        raise ValueError("sock must be a stream socket")
    try:
        peer = sock.getpeername()
    except OSError:
        raise ValueError("sock is not connected") from None
    if sock.family == getattr(socket, "AF_UNIX", None):
        return Address(sock.family, peer or sock.getsockname() or "<socket>")
    return Address(sock.family, tuple(peer[:2]))


def scm_rights(fds: Sequence[int]) -> list[tuple[int, int, array]]:
    """``sendmsg`` ancillary data passing ``fds``."""
    return [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array("i", [int(fd) for fd in fds]))]


class ClientCore:
    """Waiters, timers, events and close state around one protocol object.

    Waiters are keyed by command id, or by an event class (``Greeting``,
    ``Synced``) for the handshake steps; each has ``done()``,
    ``set_result()`` and ``set_exception()``.
    """

    def __init__(self, proto: Any, address: Address, event_queue: int, command_timeout: float | None) -> None:
        self._proto = proto
        #: Where this client is connected.
        self.address = address
        #: Default timeout of each command (None: wait as long as it takes).
        self.command_timeout = command_timeout
        self._event_queue_size = event_queue or EVENT_QUEUE_SIZE  # default subscription size
        self._waiters: dict[Any, Any] = {}
        self._router = EventRouter(event_queue)
        self._closing = False  # close() was called
        self._closed = False
        #: Why the connection ended: None while open or after a clean close
        #: (local close, ``quit``, ``SHUTDOWN``), else :class:`ConnectionLost`.
        self.connection_error: ConnectionLost | None = None
        #: The last :class:`ProtocolError` the server caused (it did not
        #: close the connection).
        self.last_protocol_error: ProtocolError | None = None
        self._protocol_errors = 0
        self._timeouts = 0

    @property
    def closed(self) -> bool:
        """True once the connection has ended."""
        return self._closed

    @property
    def counters(self) -> dict[str, int]:
        """A snapshot of this connection's counters."""
        proto = self._proto
        router = self._router
        return {
            "commands": proto._next_id,
            "in_flight": proto.in_flight,
            "held": proto.held,
            "timeouts": self._timeouts,
            "late_replies": proto.late_replies,
            "events_received": router.received,
            "events_dropped": router.dropped,
            "events_queued": len(router.backlog),
            "backlog_dropped": router.backlog.dropped,
            "protocol_errors": self._protocol_errors,
        }

    def add_event_listener(
        self,
        callback: EventCallback,
        *,
        on_close: CloseCallback | None = None,
    ) -> Callable[[], None]:
        """Call ``callback(event)`` for every event as it arrives, from now on.

        The callback runs synchronously while the received bytes are routed,
        before the event reaches any queue, so it sees every event, in order,
        whatever the queues drop.  ``on_close(error)`` is called once when
        the connection ends (``error`` is None for a clean end, else the
        :class:`ConnectionLost`), at once if it has ended already.  Keep
        callbacks short and non-blocking; an exception they raise is logged
        and ignored.  Returns a function that removes the listener.
        """
        return self._router.add_listener(callback, on_close)

    def __repr__(self) -> str:
        state = "closed" if self._closed else self._proto.state.value
        return f"<{type(self).__name__} {self.address} {state}>"

    def _check_open(self) -> None:
        if self._closed or self._closing:
            if self.connection_error is not None:
                raise self.connection_error
            raise StateError("the client is closed")

    def _check_fds(self) -> None:
        if not self.address.is_unix:
            raise StateError("file descriptors can only be passed over a unix socket")

    # -- protocol events ----------------------------------------------------

    def _process(self, events: list) -> None:
        """Act on the events one chunk of received bytes produced.

        QMP events go to the router together at the end: nobody can look
        between two items of one chunk, and a batch is far cheaper in a flood.
        """
        waiters = self._waiters
        batch = None
        for ev in events:
            t = type(ev)
            if t is Event:
                if batch is None:
                    batch = [ev]
                else:
                    batch.append(ev)
            elif t is Return or t is ErrorReply:
                waiter = waiters.pop(ev.id, None)
                if waiter is None or waiter.done():
                    continue
                if t is Return:
                    waiter.set_result(ev.value)
                else:
                    waiter.set_exception(ev.exception())
            elif t is ProtocolFault:
                self._fault(ev)
            elif t is not ConnectionClosed:  # Greeting, Negotiated, Synced
                waiter = waiters.pop(t, None)
                if waiter is not None and not waiter.done():
                    waiter.set_result(ev)
        if batch is not None:
            self._router.deliver_all(batch)

    def _fault(self, ev: ProtocolFault) -> None:
        self._protocol_errors += getattr(ev.item, "count", 1) if type(ev.item) is FrameError else 1  # a joined run
        self.last_protocol_error = ev.error
        log.warning("%s: %s", self.address, ev.error)
        waiter = self._waiters.pop(Greeting, None)  # garbage instead of a greeting
        if waiter is not None and not waiter.done():
            waiter.set_exception(ProtocolError(f"expected a QMP greeting: {ev.error}"))

    def _expire(self, cid: Any, command: str, timeout: float) -> bytes:
        """A command's time is up: fail its waiter; return bytes to write."""
        waiter = self._waiters.pop(cid, None)
        self._proto.abandon(cid)
        self._timeouts += 1
        if waiter is not None and not waiter.done():
            waiter.set_exception(TimeoutError(f"{command}: no reply within {timeout:g} s"))
        return self._proto.data_to_send()

    def _abandon(self, cid: Any) -> bytes:
        """The caller stopped waiting (cancelled): forget the command."""
        self._waiters.pop(cid, None)
        self._proto.abandon(cid)
        return self._proto.data_to_send()

    def _shutdown(self, exc: BaseException | None = None) -> None:
        """The socket is gone (end of stream, error or local close)."""
        if self._closed:
            return
        self._closed = True
        ended = self._proto.receive_data(b"")
        truncated = ended[0].truncated if ended else 0
        expected = self._closing or bool(ended and ended[0].expected)
        if truncated and not self._closing:
            expected = False
            reason = f"the server closed the connection in the middle of a frame ({truncated} bytes unread)"
        elif isinstance(exc, (BrokenPipeError, ConnectionResetError)) and not self._closing:
            # A write or read the peer refused: it hung up on us.
            reason = f"the server closed the connection ({exc})"
        elif exc is not None and not self._closing:
            reason = f"connection lost: {exc}"
        elif self._closing:
            reason = "the connection was closed"
        else:
            reason = "the server closed the connection"
        error = ConnectionLost(reason)
        if not expected:
            self.connection_error = error
        proto = self._proto
        for key, waiter in self._waiters.items():
            if waiter.done():
                continue
            if expected and not self._closing and proto._pending.get(key) == "quit":
                waiter.set_result(None)  # QEMU quit as asked; the reply got lost
            else:
                waiter.set_exception(error)
        self._waiters.clear()
        self._router.close(None if expected else error)


class QMPInfo:
    """Greeting-derived attributes of a QMP client."""

    _proto: Any

    @property
    def greeting(self) -> dict | None:
        """The server's greeting message as received (``{"QMP": {...}}``)."""
        g = self._proto.greeting
        return g.raw if g is not None else None

    @property
    def version(self) -> VersionInfo | None:
        """QEMU's version: ``(major, minor, micro, package)``."""
        g = self._proto.greeting
        return g.version if g is not None else None

    @property
    def capabilities(self) -> tuple[str, ...]:
        """Capabilities the server offered in its greeting."""
        g = self._proto.greeting
        return g.capabilities if g is not None else ()

    @property
    def enabled_capabilities(self) -> tuple[str, ...]:
        """Capabilities enabled by negotiation."""
        return self._proto.enabled

    @property
    def oob(self) -> bool:
        """True when out-of-band execution (``execute_oob``) is available."""
        return self._proto.oob
