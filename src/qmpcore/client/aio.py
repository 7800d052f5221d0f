"""asyncio clients for QMP and the guest agent.

::

    async with qmpcore.connect("/run/vm1/qmp.sock") as qmp:
        status = await qmp.execute("query-status")
        await qmp.execute("stop")
        ev = await qmp.wait_event("STOP", timeout=5)

The client is an :class:`asyncio.BufferedProtocol`-driven loop around the
sans-IO protocol objects: each read goes straight into the protocol and
replies resolve their futures right there (no task per command, no
``wait_for`` around each one; per-command timeouts are timer handles).

:func:`connect` and :func:`connect_guest_agent` return a :class:`Connecting`:
``await`` it for the client, or enter it with ``async with`` (the client is
closed at the end of the block).  Either way a failure to connect raises a
:class:`~qmpcore.ConnectError` that names the address and the likely cause.
"""

from __future__ import annotations

import asyncio
import functools
import socket
from collections.abc import Callable, Coroutine, Generator, Sequence
from ssl import SSLContext
from typing import TYPE_CHECKING, Any, TypeVar

from ..errors import CommandError, ConnectionLost, TimeoutError
from ..protocol._client import MAX_DEPTH, MAX_FRAME_SIZE, MAX_TOKENS
from ..protocol.events import Event, Greeting, Synced, VersionInfo
from ..protocol.qga_client import QGAClientProtocol, expects_reply
from ..protocol.qmp_client import QMPClientProtocol
from ..protocol.schema import Schema, schema_for
from .address import AddressLike
from .core import EVENT_QUEUE_SIZE, QMPInfo, check_validate, connect_target
from .eventqueue import DROP_OLDEST, EventOverflow, EventQueue, Match, make_filter
from .transport import CLOSE_TIMEOUT, CONNECT_TIMEOUT, _AsyncClient

if TYPE_CHECKING:
    pass

__all__ = [
    "CONNECT_TIMEOUT",
    "CLOSE_TIMEOUT",
    "Connecting",
    "connect",
    "QMPClient",
    "connect_guest_agent",
    "GuestAgentClient",
    "EventStream",
    "Event",
    "EventOverflow",
    "VersionInfo",
]


class EventStream:
    """An async iterator over one event subscription (see :meth:`QMPClient.events`)."""

    __slots__ = ("_client", "_queue")

    def __init__(self, client: _AsyncClient, queue: EventQueue) -> None:
        self._client = client
        self._queue = queue

    @property
    def dropped(self) -> int:
        """Events this subscription dropped because the consumer fell behind."""
        return self._queue.dropped

    def __len__(self) -> int:
        return len(self._queue)

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> Event:
        try:
            ev = self._queue.get_nowait()  # the usual case under load: no waiting
        except IndexError:
            ev = await self.get(None, _end=True)
        else:
            if self._client._read_paused:
                self._client._resume_reading()
        if ev is None:
            self.close()
            raise StopAsyncIteration
        return ev

    async def get(self, timeout: float | None = None, *, _end: bool = False, _what: str = "no event") -> Any:
        """The next event; raises TimeoutError after ``timeout`` seconds."""
        queue = self._queue
        client = self._client
        while not queue.ready():
            fut = client._loop.create_future()
            queue.waiter = fut
            try:
                await client._wait(fut, timeout, _what)
            finally:
                queue.waiter = None
        ev = queue.get_nowait()
        if client._read_paused:
            client._resume_reading()
        if ev is None:
            self.close()
            if not _end:
                raise client.connection_error or ConnectionLost("the connection was closed")
        return ev

    def close(self) -> None:
        """Unsubscribe; events stop being queued here."""
        self._client._router.unsubscribe(self._queue)
        self._client._resume_reading()

    async def __aenter__(self) -> EventStream:
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self._client._router.unsubscribe(self._queue)
        except Exception:  # interpreter shutdown
            pass


class QMPClient(QMPInfo, _AsyncClient):
    """One QMP connection (see :func:`connect`)."""

    __slots__ = ("_schema", "_validator")

    _proto: QMPClientProtocol

    def __init__(self, proto: Any, *args: Any) -> None:  # (a QMPClientProtocol: see _proto)
        super().__init__(proto, *args)
        self._schema: Schema | None = None  # fetched by schema()
        self._validator: Callable[[str, Any], None] | None = None  # Schema.check, with validate=True

    async def schema(self, *, refresh: bool = False, timeout: float | None = None) -> Schema:
        """QEMU's schema (``query-qmp-schema``) as a :class:`~qmpcore.Schema`.

        Asked once per connection (``refresh=True`` asks again); connections
        to QEMUs of the same version and package that answer alike share one
        :class:`~qmpcore.Schema`, kept in memory.
        """
        if self._schema is None or refresh:
            self._schema = schema_for(self.version, await self.execute("query-qmp-schema", timeout=timeout))
        return self._schema

    async def execute(
        self,
        command: str,
        arguments: dict[str, Any] | None = None,
        *,
        timeout: float | None = None,
        fds: Sequence[int] | None = None,
    ) -> Any:
        """Run ``command``; return its ``return`` value.

        Raises :class:`~qmpcore.CommandError` for an error reply,
        :class:`~qmpcore.TimeoutError` after ``timeout`` seconds (default:
        ``command_timeout``; a reply that comes later is dropped) and
        :class:`~qmpcore.ConnectionLost` if the connection breaks.  ``fds``
        are passed with the command over a unix socket (SCM_RIGHTS).
        """
        self._check_open()
        if self._validator is not None:
            self._validator(command, arguments)
        if fds:
            self._check_fds()
        cid, data = self._proto.send_command(command, arguments, hold=not fds)
        return await self._command(cid, data, command, timeout, fds)

    async def execute_oob(
        self,
        command: str,
        arguments: dict[str, Any] | None = None,
        *,
        timeout: float | None = None,
    ) -> Any:
        """Run ``command`` out-of-band (``exec-oob``); needs ``oob`` negotiated."""
        self._check_open()
        if self._validator is not None:
            self._validator(command, arguments)
        cid, data = self._proto.send_command(command, arguments, oob=True)
        return await self._command(cid, data, command, timeout)

    def submit(
        self,
        command: str,
        arguments: dict[str, Any] | None = None,
        *,
        timeout: float | None = None,
    ) -> asyncio.Future[Any]:
        """Send ``command`` now; return a future of its ``return`` value.

        The same as :meth:`execute` (same errors, set on the future) without
        a coroutine or task per command: for callers that start many
        commands at once, such as :class:`~qmpcore.Fleet`.  Raises at once
        if the client is closed.  Cancelling the future stops waiting; a
        command still held back by the client (more than 8 in flight with
        ``oob``) is then never sent.
        """
        if self._closed or self._closing:  # _check_open(), without a call per command
            self._check_open()
        if self._validator is not None:
            try:
                self._validator(command, arguments)
            except CommandError as exc:  # like an error reply, on the future
                failed: asyncio.Future[Any] = self._loop.create_future()
                failed.set_exception(exc)
                return failed
        cid, data = self._proto.send_command(command, arguments)
        fut = self._expect(cid, command, timeout)
        if data:
            self._write(data)
        else:  # held back: withdraw it if the caller gives up
            fut.add_done_callback(functools.partial(self._withdraw_if_cancelled, cid))
        return fut

    def _withdraw_if_cancelled(self, cid: int, fut: asyncio.Future[Any]) -> None:
        if fut.cancelled():
            out = self._abandon(cid)
            if out:
                self._write(out)

    # -- events -------------------------------------------------------------

    def events(
        self,
        *names: str,
        match: Match = None,
        maxsize: int | None = None,
        policy: str = DROP_OLDEST,
        max_bytes: int | None = None,
    ) -> EventStream:
        """Subscribe to events (all of them if no names are given).

        The subscription gets every matching event from now on (each
        subscription its own copy).  ``maxsize`` bounds the queue
        (default: the client's ``event_queue``); ``policy`` says what
        happens when the consumer falls behind: ``"drop_oldest"`` (counted
        in ``dropped``), ``"block"`` (stop reading the socket until it
        catches up) or ``"raise"`` (the next read raises
        :class:`EventOverflow`).  ``max_bytes`` bounds what the queued events
        cost in bytes (default ``EVENT_QUEUE_BYTES``, 16 MiB), the newest
        event always kept.  A ``match`` callable that raises makes the
        next read raise its exception; the subscription goes on.  Iteration
        ends when the connection closes cleanly and raises
        :class:`ConnectionLost` when it breaks.
        """
        accepts = make_filter(names, match)
        queue = self._router.subscribe(accepts, maxsize or self._event_queue_size, policy, max_bytes)
        return EventStream(self, queue)

    async def wait_event(
        self,
        name: str | None = None,
        match: Match = None,
        timeout: float | None = None,
    ) -> Event:
        """Wait for one event called ``name`` (any if None) matching ``match``.

        ``match`` is a dict of ``data`` members that must be equal, or a
        callable taking the :class:`Event`.  The oldest matching event in the
        backlog (events no earlier wait took) counts, so ``STOP`` is found
        after ``execute("stop")`` returned; the event is consumed.
        """
        accepts = make_filter(() if name is None else (name,), match)
        queue = self._router.wait_for(accepts)
        try:
            ev: Event = await EventStream(self, queue).get(timeout, _what=f"no {name or 'event'}")
            return ev
        finally:
            self._router.unsubscribe(queue)

    async def negotiate(self, oob: bool = False, *, timeout: float | None = None) -> None:
        """Leave negotiation mode (``qmp_capabilities``), with ``oob`` if offered."""
        self._check_open()
        cid, data = self._proto.negotiate(oob)
        await self._command(cid, data, "qmp_capabilities", timeout)

    async def send_fd(self, fd: int) -> None:
        """Pass ``fd`` to QEMU (SCM_RIGHTS) for a following ``getfd``/``add-fd``."""
        self._check_open()
        self._check_fds()
        await self._send_fds(b" ", [fd])

    def send_fd_nowait(self, fd: int) -> None:
        """Pass ``fd`` to QEMU (SCM_RIGHTS) now, before returning.

        Once this returns the server holds its own copy, so the caller may
        close ``fd`` at once.  Raises :class:`BlockingIOError` when that
        cannot be done without waiting (earlier writes still buffered, or
        the socket full; :meth:`send_fd` waits instead),
        :class:`~qmpcore.StateError` on a TCP connection and
        :class:`~qmpcore.ConnectionLost` if the socket is broken.
        """
        self._check_open()
        self._check_fds()
        self._send_fds_now(b" ", [fd])

    async def _greeted(self, negotiate: bool, oob: bool) -> None:
        if self._proto.greeting is None:
            fut = self._loop.create_future()
            self._waiters[Greeting] = fut
            await fut
        if negotiate:
            await self.negotiate(oob)


def connect(
    address: AddressLike | None = None,
    *,
    sock: socket.socket | None = None,
    timeout: float | None = CONNECT_TIMEOUT,
    negotiate: bool = True,
    oob: bool = False,
    event_queue: int = EVENT_QUEUE_SIZE,
    command_timeout: float | None = None,
    max_frame_size: int = MAX_FRAME_SIZE,
    max_depth: int = MAX_DEPTH,
    max_tokens: int = MAX_TOKENS,
    ssl: SSLContext | None = None,
    server_hostname: str | None = None,
    validate: bool = False,
) -> Connecting[QMPClient]:
    """Connect to a QMP server, read its greeting and negotiate capabilities.

    ``await connect(...)`` returns the :class:`QMPClient`; ``async with
    connect(...) as qmp:`` also closes it at the end of the block.

    ``address`` is a unix socket path or a ``(host, port)`` tuple; or,
    instead, ``sock`` is a connected stream socket (unix or TCP: from
    ``accept()`` when QEMU connects to us, ``socketpair()``, ...) that the
    client takes over and closes when done, even if the handshake fails.
    ``timeout`` bounds the whole handshake; ``negotiate=False`` stays in
    negotiation mode (call :meth:`QMPClient.negotiate` later); ``oob=True``
    enables out-of-band execution when the server offers it.
    ``event_queue`` is the size of the backlog :meth:`QMPClient.wait_event`
    searches (oldest dropped first; 0 keeps none) and the default size of
    each :meth:`QMPClient.events` subscription.  ``max_frame_size``,
    ``max_depth`` and ``max_tokens`` bound what the server may send (bytes
    of one message, nesting depth, JSON tokens of one message).
    ``ssl`` connects with TLS (TCP addresses only), verifying the server's
    certificate as the context says (name: ``server_hostname``, default
    the address's host); failures raise :class:`~qmpcore.TLSError`.
    ``validate=True`` fetches QEMU's schema (:meth:`QMPClient.schema`) and
    checks every command against it before sending
    (:meth:`qmpcore.Schema.check`): a bad one raises QEMU's
    :class:`~qmpcore.CommandError` without a round trip.

    Raises :class:`~qmpcore.ConnectError` (an :class:`OSError` too) naming
    the address and the likely cause when the connection cannot be set up.
    """
    check_validate(validate, negotiate)
    target = connect_target(address, sock)
    proto = QMPClientProtocol(max_frame_size=max_frame_size, max_depth=max_depth, max_tokens=max_tokens)

    async def run() -> QMPClient:
        client = QMPClient(proto, target, event_queue, command_timeout)
        client._use_tls(ssl, server_hostname)
        await client._handshake(timeout, sock, lambda: client._greeted(negotiate, oob))
        if validate:
            try:
                client._validator = (await client.schema(timeout=timeout)).check
            except BaseException:
                client.abort()
                raise
        return client

    return Connecting(run())


class GuestAgentClient(_AsyncClient):
    """One guest agent channel (see :func:`connect_guest_agent`).

    qemu-ga sends no events, so there are no event methods here;
    :meth:`add_event_listener` remains for its ``on_close`` notification.
    """

    __slots__ = ("_sync_id",)

    _proto: QGAClientProtocol

    def __init__(self, proto: Any, *args: Any) -> None:  # (a QGAClientProtocol: see _proto)
        super().__init__(proto, *args)
        self._sync_id = 0  # the resync in progress

    async def execute(
        self,
        command: str,
        arguments: dict[str, Any] | None = None,
        *,
        timeout: float | None = None,
        expect_reply: bool | None = None,
    ) -> Any:
        """Run a guest agent command; return its ``return`` value.

        Commands run one at a time, in call order.  Commands that give no
        reply on success (``guest-shutdown``, ``guest-suspend-*``) return
        None once queued.  Errors as for :meth:`QMPClient.execute`; after a
        timeout the channel is resynchronised before the next command.
        """
        self._check_open()
        expect_reply = expects_reply(command, expect_reply)
        cid, data = self._proto.send_command(command, arguments, expect_reply=expect_reply)
        if not expect_reply:
            if data:
                self._write(data)
            return None
        return await self._command(cid, data, command, timeout)

    async def sync(self, timeout: float | None = None) -> int:
        """Resynchronise the channel (0xFF + ``guest-sync-delimited``); return the id."""
        self._check_open()
        fut = self._waiters.get(Synced)
        if fut is None or fut.done():
            sid, data = self._proto.sync()
            self._sync_id = sid
            fut = self._waiters[Synced] = self._loop.create_future()
            if data:
                self._write(data)
        else:  # share the resync in progress
            sid = self._sync_id
        try:
            await self._wait(
                fut, timeout if timeout is not None else self.command_timeout, "no guest-sync-delimited reply"
            )
        except TimeoutError:
            self._waiters.pop(Synced, None)
            out = self._abandon(sid)
            if out:
                self._write(out)
            raise
        return sid


def connect_guest_agent(
    path: AddressLike | None = None,
    *,
    sock: socket.socket | None = None,
    timeout: float | None = CONNECT_TIMEOUT,
    command_timeout: float | None = None,
    max_frame_size: int = MAX_FRAME_SIZE,
    max_depth: int = MAX_DEPTH,
    max_tokens: int = MAX_TOKENS,
    ssl: SSLContext | None = None,
    server_hostname: str | None = None,
) -> Connecting[GuestAgentClient]:
    """Connect to a guest agent socket and resynchronise the channel.

    ``path`` is the unix socket of ``qemu-ga -m unix-listen`` or of the
    host side of a virtio-serial chardev (``(host, port)`` works for TCP
    chardevs); or ``sock`` is a connected socket to take over, as for
    :func:`connect`.  ``timeout`` bounds connecting and the first resync;
    the limits are as for :func:`connect`.  Usable with ``await`` or
    ``async with``; raises :class:`~qmpcore.ConnectError` (a QMP monitor
    given here fails at once, when its greeting arrives).
    ``ssl``/``server_hostname``: TLS over TCP, as for :func:`connect`.
    """
    target = connect_target(path, sock)
    proto = QGAClientProtocol(max_frame_size=max_frame_size, max_depth=max_depth, max_tokens=max_tokens)

    async def run() -> GuestAgentClient:
        client = GuestAgentClient(proto, target, 0, command_timeout)
        client._use_tls(ssl, server_hostname)
        await client._handshake(timeout, sock, client.sync)
        return client

    return Connecting(run())


_C = TypeVar("_C", bound=_AsyncClient)


class Connecting(Coroutine[Any, Any, _C]):
    """What :func:`connect` and :func:`connect_guest_agent` return.

    ``await`` it for the connected client, or use it as ``async with
    connect(...) as client:`` -- the client is then closed when the block
    ends.  It is a coroutine, so ``asyncio.create_task``, ``wait_for`` and
    ``gather`` take it as they took the coroutine it wraps.
    """

    __slots__ = ("_coro", "_client")

    def __init__(self, coro: Coroutine[Any, Any, _C]) -> None:
        self._coro = coro
        self._client: _C | None = None

    def __await__(self) -> Generator[Any, None, _C]:
        return self._coro.__await__()

    def send(self, value: Any) -> Any:
        return self._coro.send(value)

    def throw(self, typ: Any, val: Any = None, tb: Any = None) -> Any:
        if val is None and tb is None:
            return self._coro.throw(typ)
        return self._coro.throw(typ, val, tb)

    def close(self) -> None:
        self._coro.close()

    async def __aenter__(self) -> _C:
        self._client = await self._coro
        return self._client

    async def __aexit__(self, *exc_info: Any) -> None:
        if self._client is not None:
            await self._client.close()
