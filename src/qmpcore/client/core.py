"""What the asyncio and blocking clients share: routing protocol events.

A client owns one sans-IO protocol object and moves bytes between it and a
socket.  This module turns the protocol's events into results: replies
complete their waiters (futures, or slots in the blocking client), events go
to the :class:`~qmpcore.client.eventqueue.EventRouter`, faults are counted and
logged, and the end of the stream fails whatever still waits.
"""

from __future__ import annotations

import copy
import functools
import inspect
import logging
import socket
import ssl
from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ParamSpec, TypeVar

from ..errors import ConnectionLost, FrameError, ProtocolError, StateError, TimeoutError
from ..framing.wire import TOO_BIG
from ..protocol.events import (
    ConnectionClosed,
    ErrorReply,
    Event,
    Greeting,
    Negotiated,
    ProtocolFault,
    Return,
    Synced,
    VersionInfo,
)
from ._log import _DEBUG, _isEnabledFor, abbreviate, tracing
from ._log import log as trace_log
from .address import Address, AddressLike, parse_address
from .eventqueue import EVENT_QUEUE_BYTES, CloseCallback, EventCallback, EventRouter
from .peerlog import PeerLog
from .tls import check_tls, is_server_context, refused_error, tls_error

__all__ = ["ClientCore", "QMPInfo", "Stats", "log", "connect_target", "scm_rights", "same_parameters", "check_validate"]

log = logging.getLogger("qmpcore")

#: Default size of each event queue.
EVENT_QUEUE_SIZE = 1000

# The trace logger's own cache of level checks: one dict lookup tells that
# DEBUG is off (the usual case) without a call per read or write; anything
# else (a level changed, the cache cleared) asks the logger.
# Hot paths test ``_LEVELS.get(_DEBUG) is not False and _isEnabledFor(_DEBUG)``.
_LEVELS: dict[int, bool] = getattr(trace_log, "_cache", {})


@dataclass(frozen=True, slots=True)
class Stats:
    """A snapshot of the counters of one client (``client.stats()``) or a whole fleet (``fleet.stats()``).

    For a client, ``vms`` is 1 and ``connected`` 1 or 0; for a fleet every
    count is summed over its VMs' clients and its own bookkeeping.
    """

    vms: int = 1
    connected: int = 0
    """Live connections."""
    reconnecting: int = 0
    """VMs without one that are being retried (fleets)."""
    in_flight: int = 0
    """Commands sent and not yet answered or timed out."""
    held: int = 0
    """Commands waiting client-side for a free server slot."""
    commands: int = 0
    """Commands issued (clients) or finished (fleets)."""
    timeouts: int = 0
    late_replies: int = 0
    """Replies that came after their command had timed out."""
    reconnects: int = 0
    """Connections re-established after one was lost (fleets)."""
    events_received: int = 0
    events_dropped: int = 0
    """Events discarded because a consumer fell behind (count or byte budget)."""
    events_queued: int = 0
    """Events waiting in queues (the backlog for a client, the streams for a fleet)."""
    events_queued_bytes: int = 0
    """What the queued events cost, in bytes."""
    backlog_dropped: int = 0
    protocol_errors: int = 0
    """Frames or messages from the peer that broke the protocol."""
    callback_errors: int = 0
    """Exceptions raised by event listeners (counted, never propagated)."""
    last_errors: dict[str, BaseException] = field(default_factory=dict)
    """Per VM, the last connection or command error (fleets; cleared on success)."""


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


_P = ParamSpec("_P")
_R = TypeVar("_R")


def same_parameters(model: Callable[_P, Any]) -> Callable[[Callable[[dict[str, Any]], _R]], Callable[_P, _R]]:
    """Give the decorated function the parameters of ``model`` (names, kinds,
    defaults): it is called with them bound, defaults applied, as one dict.

    For a blocking twin of an asyncio function (``connect_sync`` of
    ``connect``): one list of parameters serves both, and ``help()`` and
    type checkers show it on each.
    """
    signature = inspect.signature(model)

    def decorate(body: Callable[[dict[str, Any]], _R]) -> Callable[_P, _R]:
        @functools.wraps(body)
        def call(*args: _P.args, **kwargs: _P.kwargs) -> _R:
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            return body(bound.arguments)

        returns = inspect.signature(body).return_annotation
        call.__signature__ = signature.replace(return_annotation=returns)  # type: ignore[attr-defined]
        call.__annotations__ = {**model.__annotations__, "return": returns}
        return call

    return decorate


def check_validate(validate: bool, negotiate: bool) -> None:
    """``validate=True`` fetches the schema at connect: it needs negotiation."""
    if validate and not negotiate:
        raise ValueError("validate=True needs negotiate=True (the schema is asked for at connect)")


def scm_rights(fds: Sequence[int]) -> list[tuple[int, int, array[int]]]:
    """``sendmsg`` ancillary data passing ``fds``."""
    return [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array("i", [int(fd) for fd in fds]))]


class ClientCore:
    """Waiters, timers, events and close state around one protocol object.

    Waiters are keyed by command id, or by an event class (``Greeting``,
    ``Synced``) for the handshake steps; each has ``done()``,
    ``set_result()`` and ``set_exception()``.
    """

    __slots__ = (
        "_proto",
        "address",
        "command_timeout",
        "_event_queue_size",
        "_waiters",
        "_router",
        "_peerlog",
        "_closing",
        "_closed",
        "connection_error",
        "last_protocol_error",
        "_protocol_errors",
        "_timeouts",
        "_answered",
        "_last_outcome",
        "_wrong_protocol",
        "_ssl",
        "_server_hostname",
    )

    def __init__(
        self,
        proto: Any,
        address: Address,
        event_queue: int,
        command_timeout: float | None,
        event_queue_bytes: int = EVENT_QUEUE_BYTES,
    ) -> None:
        self._proto = proto
        #: Where this client is connected.
        self.address = address
        #: Default timeout of each command (None: wait as long as it takes).
        self.command_timeout = command_timeout
        self._event_queue_size = event_queue or EVENT_QUEUE_SIZE  # default subscription size
        self._waiters: dict[Any, Any] = {}
        self._router = EventRouter(event_queue, event_queue_bytes)
        # Warnings about the peer, rate-limited; made at the first one.
        self._peerlog: PeerLog | None = None
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
        # Replies that completed a waiting command, and what the last command
        # to finish ended with (None: a result; else its exception): what a
        # Fleet reads instead of a callback per command.
        self._answered = 0
        self._last_outcome: BaseException | None = None
        # Set when a QMP greeting reached a guest agent client: it is connected
        # to a monitor, and no resync can succeed.
        self._wrong_protocol: ProtocolError | None = None
        # TLS settings of a TCP connection (see :meth:`_use_tls`).
        self._ssl: ssl.SSLContext | None = None
        self._server_hostname: str | None = None

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
            "commands": proto.commands_issued,
            "in_flight": proto.in_flight,
            "held": proto.held,
            "timeouts": self._timeouts,
            "late_replies": proto.late_replies,
            "events_received": router.received,
            "events_dropped": router.dropped,
            "events_queued": len(router.backlog),
            "backlog_dropped": router.backlog.dropped,
            "protocol_errors": self._protocol_errors,
            "events_queued_bytes": router.queued_bytes,
            "callback_errors": router.callback_errors,
        }

    def stats(self) -> Stats:
        """This connection's counters as a :class:`Stats`."""
        proto = self._proto
        router = self._router
        return Stats(
            connected=0 if self._closed else 1,
            in_flight=proto.in_flight,
            held=proto.held,
            commands=proto._next_id,
            timeouts=self._timeouts,
            late_replies=proto.late_replies,
            events_received=router.received,
            events_dropped=router.dropped,
            events_queued=len(router.backlog),
            events_queued_bytes=router.queued_bytes,
            backlog_dropped=router.backlog.dropped,
            protocol_errors=self._protocol_errors,
            callback_errors=router.callback_errors,
        )

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
        if self._wrong_protocol is not None:
            raise self._wrong_protocol
        if self._closed or self._closing or self._proto.closed_by == "quit":
            # After quit, QEMU exits: say so at once, not when a send fails.
            if self.connection_error is not None:
                raise self.connection_error
            raise StateError(self._closed_reason())

    def _closed_reason(self) -> str:
        """Why a closed client refuses to work, for :class:`StateError`."""
        by = self._proto.closed_by
        if by == "SHUTDOWN":
            return f"{self.address}: the connection ended after QEMU's SHUTDOWN event"
        if by is not None:
            return f"{self.address}: the connection was closed by {by}"
        return f"{self.address}: the client is closed (close() was called)"

    def _use_tls(self, context: ssl.SSLContext | None, server_hostname: str | None) -> None:
        """Connect with TLS (``context``), verifying the server as ``server_hostname``."""
        self._server_hostname = check_tls(self.address, context, server_hostname)
        self._ssl = context

    def _tls_failure(self, exc: BaseException) -> BaseException:
        """What a failed connection attempt raises: a TLS failure named as such."""
        if self._ssl is None:
            return exc
        error = tls_error(exc, self.address, self._server_hostname)
        if error is not None:
            return error
        if (
            isinstance(exc, ConnectionLost)
            and not is_server_context(self._ssl)
            and getattr(self._proto, "greeting", None) is None
        ):
            # The handshake passed our checks; QEMU checks the client's
            # certificate after it and hangs up without a word.
            error = refused_error(self.address)
            error.__cause__ = exc
            return error
        return exc

    def _check_fds(self) -> None:
        if not self.address.is_unix:
            raise StateError("file descriptors can only be passed over a unix socket")

    # -- protocol events ----------------------------------------------------

    def _receive(self, data: Any) -> None:
        """Feed one read to the protocol and act on what it completes.

        Replies at the head of the read settle their waiters inside the
        protocol's loop over the framer's output (no event object each);
        with DEBUG tracing on, every reply comes as an event to be logged.
        """
        proto = self._proto
        if _LEVELS.get(_DEBUG) is not False and _isEnabledFor(_DEBUG):  # tracing(), without a call
            before = proto.buffered
            events = proto.feed(data)
            if events:
                self._process(events, len(data), before)
            return
        events = proto.feed_resolving(data, self._waiters)
        resolved = proto.resolved
        if resolved:
            self._answered += resolved
            self._last_outcome = None
        if events:
            self._process(events, len(data), proto.buffered_before, resolved)

    def _process(self, events: list[Any], nbytes: int = 0, first: int = 0, resolved: int = 0) -> None:
        """Act on the events one chunk of received bytes produced.

        Replies complete their waiters right here, in the loop over the
        protocol's output.  QMP events go to the router together at the
        end: nobody can look between two items of one chunk, and a batch is
        far cheaper in a flood.  ``nbytes`` is the length of the chunk,
        ``first`` what the protocol had buffered before it (events' sizes
        for the byte budgets of the queues); ``resolved`` replies came
        before ``events`` in the chunk and settled their waiters already.
        """
        if _LEVELS.get(_DEBUG) is not False and _isEnabledFor(_DEBUG):  # tracing(), without a call
            self._trace_in(events)
        waiters = self._waiters
        batch = None
        answered = 0
        outcome: BaseException | None = None
        for ev in events:
            t = type(ev)
            if t is Return:
                waiter = waiters.pop(ev.id, None)
                if waiter is None or waiter.done():
                    continue
                waiter.set_result(ev.value)
                answered += 1
                outcome = None
            elif t is Event:
                if batch is None:
                    batch = [ev]
                else:
                    batch.append(ev)
            elif t is ErrorReply:
                waiter = waiters.pop(ev.id, None)
                if waiter is None or waiter.done():
                    continue
                outcome = ev.exception()
                waiter.set_exception(outcome)
                answered += 1
            elif t is ProtocolFault:
                self._fault(ev)
            elif t is not ConnectionClosed:  # Greeting, Negotiated, Synced
                waiter = waiters.pop(t, None)
                if waiter is not None and not waiter.done():
                    waiter.set_result(ev)
        if answered:
            self._answered += answered
            self._last_outcome = outcome
        if batch is not None:
            n = len(batch)
            # What the chunk's complete frames cost, less the part the first
            # had buffered before (the chunk's tail stays buffered).
            share = nbytes - self._proto.buffered if nbytes else 0
            total = len(events) + resolved
            if n != total:  # replies and faults took their part of the read
                share = share * n // total
                first = first if not resolved and type(events[0]) is Event else 0
            self._router.deliver_all(batch, share, first, n == 1 and n == total)

    def _fault(self, ev: ProtocolFault) -> None:
        self._protocol_errors += ev.item.count if type(ev.item) is FrameError else 1  # a joined run
        self.last_protocol_error = ev.error
        if self._peerlog is None:
            self._peerlog = PeerLog(log, self.address)
        self._peerlog.warning("%s", ev.error)
        waiter = self._waiters.pop(Greeting, None)  # garbage instead of a greeting
        if waiter is not None and not waiter.done():
            waiter.set_exception(ProtocolError(f"expected a QMP greeting: {ev.error}"))
        item = ev.item
        if type(item) is FrameError and item.reason == TOO_BIG:
            self._reply_dropped()
        if isinstance(item, dict) and "QMP" in item and not isinstance(self, QMPInfo):
            # A guest agent client connected to a QMP monitor: fail now, not after a timeout.
            self._wrong_protocol = ProtocolError("a QMP greeting arrived: this is a QMP monitor, not a guest agent")
            waiter = self._waiters.pop(Synced, None)
            if waiter is not None and not waiter.done():
                waiter.set_exception(self._wrong_protocol)

    def _reply_dropped(self) -> None:
        """A frame over ``max_frame_size`` was dropped: fail the command it most likely answered.

        QEMU answers in-band commands in order, so it is the oldest pending
        in-band command; with ``oob``, out-of-band replies may come first,
        but their replies are small, so the oldest in-band command is still
        chosen (the oldest out-of-band one only when no in-band command is
        pending).  Should its reply come after all, it is dropped as late.
        """
        proto = self._proto
        dropped = proto.drop_oldest()
        if dropped is None:  # nothing waits: an event, or junk
            return
        cid, command = dropped
        waiter = self._waiters.pop(cid, None)
        if waiter is not None and not waiter.done():
            error = self._last_outcome = ProtocolError(
                f"{command}: the server's reply was dropped: it is larger than "
                f"max_frame_size={proto.max_frame_size} bytes; connect with a larger max_frame_size= to receive it"
            )
            waiter.set_exception(error)

    # -- tracing (DEBUG records, only when enabled) ---------------------------

    def _trace_in(self, events: list[Any]) -> None:
        """One DEBUG record per event received, in arrival order."""
        address = self.address
        for ev in events:
            t = type(ev)
            if t is Event:
                trace_log.debug("%s: event %s", address, abbreviate(ev.raw))
            elif t is Return:
                trace_log.debug("%s: reply to %s (id %s): %s", address, ev.command, ev.id, abbreviate(ev.value))
            elif t is ErrorReply:
                trace_log.debug(
                    "%s: error reply to %s (id %s): %s: %s",
                    address,
                    ev.command,
                    ev.id,
                    ev.error_class,
                    abbreviate(ev.desc),
                )
            elif t is Greeting:
                trace_log.debug(
                    "%s: greeting from QEMU %d.%d.%d, capabilities %s; state: negotiation",
                    address,
                    *ev.version[:3],
                    list(ev.capabilities),
                )
            elif t is Negotiated:
                trace_log.debug("%s: capabilities negotiated %s; state: ready", address, list(ev.capabilities))
            elif t is Synced:
                trace_log.debug("%s: guest agent synced (id %d); state: ready", address, ev.id)
            # (a ProtocolFault is logged by _fault, as a warning)

    def _trace_out(self, data: bytes, fds: Sequence[int] | None = None) -> None:
        """One DEBUG record per write (a command, or several sent together)."""
        extra = f" with fds {list(fds)}" if fds else ""
        trace_log.debug("%s: sent %s%s", self.address, abbreviate(data), extra)

    def _expire(self, cid: Any, command: str, timeout: float) -> bytes:
        """A command's time is up: fail its waiter; return bytes to write."""
        waiter = self._waiters.pop(cid, None)
        self._proto.abandon(cid)
        self._timeouts += 1
        if waiter is not None and not waiter.done():
            error = self._last_outcome = TimeoutError(f"{command}: no reply within {timeout:g} s")
            waiter.set_exception(error)
        out: bytes = self._proto.data_to_send()
        return out

    def _abandon(self, cid: Any) -> bytes:
        """The caller stopped waiting (cancelled): forget the command."""
        self._waiters.pop(cid, None)
        self._proto.abandon(cid)
        out: bytes = self._proto.data_to_send()
        return out

    def _shutdown(self, exc: BaseException | None = None) -> None:
        """The socket is gone (end of stream, error or local close)."""
        if self._closed:
            return
        self._closed = True
        if self._peerlog is not None:
            self._peerlog.flush()
        ended = self._proto.feed(b"")
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
        if tracing():
            by = self._proto.closed_by
            why = reason if not expected or self._closing or by is None else f"closed by {by}"
            trace_log.debug("%s: %s; state: closed", self.address, why)
        proto = self._proto
        for key, waiter in self._waiters.items():
            if waiter.done():
                continue
            if expected and not self._closing and proto.pending_command(key) == "quit":
                waiter.set_result(None)  # QEMU quit as asked; the reply got lost
            else:
                waiter.set_exception(error)
        self._waiters.clear()
        self._router.close(None if expected else error)


class QMPInfo:
    """Greeting-derived attributes of a QMP client."""

    __slots__ = ()

    _proto: Any

    @property
    def greeting(self) -> dict[str, Any] | None:
        """The server's greeting message as received (``{"QMP": {...}}``).

        A copy: connections that received identical greetings share one.
        """
        g = self._proto.greeting
        return copy.deepcopy(g.raw) if g is not None else None

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
        enabled: tuple[str, ...] = self._proto.enabled
        return enabled

    @property
    def oob(self) -> bool:
        """True when out-of-band execution (``execute_oob``) is available."""
        return bool(self._proto.oob)
