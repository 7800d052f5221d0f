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
import heapq
import socket
import threading
from collections.abc import Callable, Coroutine, Generator, Sequence
from ssl import SSLContext
from typing import TYPE_CHECKING, Any, TypeVar

from ..errors import CommandError, ConnectionLost, TimeoutError, TLSError
from ..protocol._client import MAX_DEPTH, MAX_FRAME_SIZE, MAX_TOKENS
from ..protocol.events import Event, Greeting, Synced, VersionInfo
from ..protocol.qga_client import QGAClientProtocol, expects_reply
from ..protocol.qmp_client import QMPClientProtocol
from ..protocol.schema import Schema, schema_for
from ._log import log, tracing
from .address import Address, AddressLike
from .core import EVENT_QUEUE_SIZE, ClientCore, QMPInfo, connect_target, scm_rights
from .diagnose import connect_error
from .eventqueue import DROP_OLDEST, EventOverflow, EventQueue, Match, make_filter
from .tls import LastByteRecords, is_server_context

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = [
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

#: Default time allowed to connect, read the greeting and negotiate.
CONNECT_TIMEOUT = 10.0
#: Default time :meth:`QMPClient.close` lets buffered writes drain.
CLOSE_TIMEOUT = 5.0


def _expire_future(fut: asyncio.Future[Any], what: str) -> None:
    if not fut.done():
        fut.set_exception(TimeoutError(what))


# The loop reads into one buffer per thread (not a fresh 256 KiB bytes
# object per read): the framer consumes each read before the next one, so
# every connection of a loop can share it.
_READ_SIZE = 1 << 18
#: What one read of a new peer, or of one that sent malformed frames in its
#: last read, may take: garbage costs more per byte than valid frames, so
#: such a peer gets a smaller slice of the loop until it sends clean data.
_SUSPECT_READ_SIZE = 1 << 12
_buffers = threading.local()


_NEVER = float("inf")
#: The loop may run a timer this much before its time (clock resolution).
_EARLY = 1e-6


def _read_buffer() -> memoryview:
    view = getattr(_buffers, "view", None)
    if view is None:
        view = _buffers.view = memoryview(bytearray(_READ_SIZE))
    return view


class _Transport(asyncio.BufferedProtocol):
    """Feeds the client from the event loop's callbacks."""

    __slots__ = ("_client", "_view", "_full", "_small")

    def __init__(self, client: _AsyncClient) -> None:
        self._client = client
        self._full = _read_buffer()
        # Small reads until the peer sent clean data once.
        self._view = self._small = self._full[:_SUSPECT_READ_SIZE]

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._view

    def buffer_updated(self, nbytes: int) -> None:
        client = self._client
        faults = client._protocol_errors
        client._received(self._view[:nbytes])
        # Fair share: a peer whose read held malformed frames reads less next time.
        self._view = self._full if client._protocol_errors == faults else self._small

    def eof_received(self) -> bool:
        return False  # let the transport close; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self._client._lost(exc)

    def resume_writing(self) -> None:
        self._client._wake_drainers(None)


class _AsyncClient(ClientCore):
    """Socket plumbing shared by the QMP and guest agent clients."""

    def __init__(
        self,
        proto: Any,
        address: Address,
        event_queue: int,
        command_timeout: float | None,
    ) -> None:
        super().__init__(proto, address, event_queue, command_timeout)
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._sock: socket.socket | None = None  # unix only, for SCM_RIGHTS
        self._batch: list[bytes] | None = None
        self._batch_hold = 0  # >0 while an fd send owns the socket
        self._drain_waiters: list[asyncio.Future[None]] = []
        self._read_paused = False
        self._closed_fut: asyncio.Future[None] = self._loop.create_future()
        # Command deadlines: a heap of (when, seq, id, command, timeout) and
        # one timer for the earliest, instead of a timer per command.
        # Entries of answered commands are dropped lazily.
        self._deadlines: list[tuple[float, int, Any, str, float]] = []
        self._deadline_seq = 0
        self._sweeper: asyncio.TimerHandle | None = None
        self._sweep_at = _NEVER

    # -- connection ---------------------------------------------------------

    async def _open(self, sock: socket.socket | None) -> None:
        """Connect to :attr:`address`, or take over ``sock`` (connected already)."""
        loop = self._loop
        addr = self.address
        if self._ssl is not None:
            await self._open_tls(sock)
            return
        if sock is None and not addr.is_unix:
            host, port = addr.sockaddr
            self._transport, _ = await loop.create_connection(lambda: _Transport(self), host, port)
            return
        try:
            if sock is None:
                sock = socket.socket(addr.family, socket.SOCK_STREAM)
                sock.setblocking(False)
                await loop.sock_connect(sock, addr.sockaddr)
            else:
                sock.setblocking(False)
            if addr.is_unix:
                self._transport, _ = await loop.create_unix_connection(lambda: _Transport(self), sock=sock)
            else:
                self._transport, _ = await loop.create_connection(lambda: _Transport(self), sock=sock)
        except BaseException:
            if sock is not None:
                sock.close()
            raise
        if addr.is_unix:
            self._sock = sock

    async def _open_tls(self, sock: socket.socket | None) -> None:
        """Connect over TLS (TCP only), to :attr:`address` or over ``sock``.

        With a server-side context (``PROTOCOL_TLS_SERVER``) and ``sock``
        accepted from a listening socket, this end runs the handshake as
        the server: QEMU connected to us (``server=off``, ``endpoint=client``).
        """
        loop = self._loop
        if sock is not None and is_server_context(self._ssl):
            sock.setblocking(False)
            transport, _ = await loop.connect_accepted_socket(lambda: _Transport(self), sock, ssl=self._ssl)
        else:
            options: dict[str, Any] = {"ssl": self._ssl, "server_hostname": self._server_hostname}
            if sock is not None:
                sock.setblocking(False)
                options["sock"] = sock
            else:
                options["host"], options["port"] = self.address.sockaddr
            transport, _ = await loop.create_connection(lambda: _Transport(self), **options)
        self._transport = LastByteRecords(transport)

    async def _handshake(
        self,
        timeout: float | None,
        sock: socket.socket | None,
        steps: Callable[[], Any],
    ) -> None:
        """Open the socket and run ``steps`` within ``timeout``; clean up on failure."""
        if tracing():
            log.debug("%s: connecting", self.address)
        try:
            await asyncio.wait_for(self._connect_and(sock, steps), timeout)
        except BaseException as exc:
            connected = self._transport is not None or self._closed  # closed: it was open
            self.abort()
            if sock is not None:
                sock.close()  # it may not have reached a transport yet
            if not isinstance(exc, Exception):  # cancelled, interrupted
                raise
            if isinstance(exc, TLSError):  # named as such already
                raise
            failure = self._tls_failure(exc)
            if failure is not exc:  # a TLS failure, named as such
                log.debug("%s: connect failed: %s", self.address, failure)
                raise failure from exc
            error = connect_error(
                exc,
                self.address,
                agent=not isinstance(self, QMPInfo),
                timeout=timeout,
                connected=connected,
                greeted=getattr(self._proto, "greeting", None) is not None,
            )
            log.debug("%s: connect failed: %s", self.address, error.detail)
            raise error from exc
        if tracing():
            log.debug("%s: connected", self.address)

    async def _connect_and(self, sock: socket.socket | None, steps: Callable[[], Any]) -> None:
        await self._open(sock)
        await steps()

    def _received(self, data: memoryview) -> None:
        proto = self._proto
        self._receive(data)
        out = proto.data_to_send()
        if out:
            self._write(out)
        if self._router.blocked and not self._read_paused:
            self._read_paused = True
            self._transport.pause_reading()  # type: ignore[union-attr]

    def _lost(self, exc: BaseException | None) -> None:
        self._transport = None
        self._shutdown(exc)
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        self._deadlines.clear()
        self._wake_drainers(ConnectionLost("the connection was closed"))
        if not self._closed_fut.done():
            self._closed_fut.set_result(None)

    def _resume_reading(self) -> None:
        """A blocking consumer caught up: read again."""
        if self._read_paused and not self._router.blocked:
            self._read_paused = False
            if self._transport is not None:
                self._transport.resume_reading()

    # -- writing ------------------------------------------------------------

    def _write(self, data: bytes) -> None:
        """Write now when idle; batch writes issued while commands are in flight."""
        if tracing():
            self._trace_out(data)
        if self._batch is not None:
            self._batch.append(data)
        elif len(self._waiters) <= 1 and not self._batch_hold:
            if self._transport is not None:
                self._transport.write(data)
        else:
            self._batch = [data]
            if not self._batch_hold:
                self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        batch, self._batch = self._batch, None
        if batch and self._transport is not None:
            self._transport.write(b"".join(batch) if len(batch) > 1 else batch[0])

    def _wake_drainers(self, exc: BaseException | None) -> None:
        waiters, self._drain_waiters = self._drain_waiters, []
        for fut in waiters:
            if not fut.done():
                if exc is None:
                    fut.set_result(None)
                else:
                    fut.set_exception(exc)

    async def _drain_all(self) -> None:
        """Wait until the transport has written every buffered byte."""
        transport = self._transport
        if transport is None:
            raise ConnectionLost("the connection was closed")
        if not transport.get_write_buffer_size():
            return
        transport.set_write_buffer_limits(high=0, low=0)  # resume_writing once empty
        try:
            while transport.get_write_buffer_size():
                fut = self._loop.create_future()
                self._drain_waiters.append(fut)
                await fut
        finally:
            if self._transport is not None:
                self._transport.set_write_buffer_limits()

    async def _send_fds(self, data: bytes, fds: Sequence[int]) -> None:
        """Write ``data`` with ``fds`` attached (SCM_RIGHTS), in stream order."""
        sock = self._sock
        assert sock is not None  # _check_fds: unix sockets only
        ancillary = scm_rights(fds)
        if tracing():
            self._trace_out(data, fds)
        self._batch_hold += 1  # later writes wait behind this one
        try:
            self._flush()
            await self._drain_all()
            while True:
                try:
                    sent = sock.sendmsg([data], ancillary)
                    break
                except (BlockingIOError, InterruptedError):
                    writable = self._loop.create_future()
                    self._loop.add_writer(sock.fileno(), _set_done, writable)
                    try:
                        await writable
                    finally:
                        self._loop.remove_writer(sock.fileno())
            if sent < len(data) and self._transport is not None:
                self._transport.write(data[sent:])
        finally:
            self._batch_hold -= 1
            if not self._batch_hold and self._batch is not None:
                self._flush()

    def _send_fds_now(self, data: bytes, fds: Sequence[int]) -> None:
        """Write ``data`` with ``fds`` attached before returning, or raise.

        Only possible when nothing written earlier still waits in the
        transport's buffer (the bytes would otherwise overtake it).
        """
        sock = self._sock
        assert sock is not None  # _check_fds: unix sockets only
        if not self._batch_hold:
            self._flush()
        transport = self._transport
        if self._batch_hold or transport is None or transport.get_write_buffer_size():
            raise BlockingIOError("earlier writes are still buffered: use send_fd() to wait for them")
        try:
            sent = sock.sendmsg([data], scm_rights(fds))
        except BlockingIOError:
            raise BlockingIOError("the socket is full: use send_fd() to wait until it drains") from None
        except OSError as exc:
            raise ConnectionLost(f"connection lost: {exc}") from exc
        if sent < len(data):
            transport.write(data[sent:])

    # -- commands -----------------------------------------------------------

    async def _command(
        self,
        cid: Any,
        data: bytes,
        command: str,
        timeout: float | None,
        fds: Sequence[int] | None = None,
    ) -> Any:
        fut = self._expect(cid, command, timeout)
        try:
            if fds:
                await self._send_fds(data, fds)
            elif data:
                self._write(data)
            return await fut
        except asyncio.CancelledError:
            out = self._abandon(cid)
            if out:
                self._write(out)
            raise
        except BaseException:
            if not fut.done():  # the fd send failed: the command never went out
                fut.cancel()
                self._abandon(cid)
            raise

    def _expect(self, cid: Any, command: str, timeout: float | None) -> asyncio.Future[Any]:
        """A future for the reply to ``cid``, failed with TimeoutError after ``timeout``."""
        fut = self._loop.create_future()
        waiters = self._waiters
        waiters[cid] = fut
        if timeout is None:
            timeout = self.command_timeout
        if timeout is not None:
            heap = self._deadlines
            if len(heap) > 64 and len(heap) > 2 * len(waiters):
                # Mostly answered commands: keep the heap as small as what is pending.
                heap[:] = [entry for entry in heap if entry[2] in waiters]
                heapq.heapify(heap)
            when = self._loop.time() + timeout
            self._deadline_seq += 1
            heapq.heappush(heap, (when, self._deadline_seq, cid, command, timeout))
            if when < self._sweep_at:
                self._arm(when)
        return fut

    def _arm(self, when: float) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        self._sweep_at = when
        self._sweeper = self._loop.call_at(when, self._sweep)

    def _sweep(self) -> None:
        """Fail the commands whose time is up; wake again for the next one."""
        self._sweeper = None
        self._sweep_at = _NEVER
        heap = self._deadlines
        waiters = self._waiters
        now = self._loop.time() + _EARLY
        while heap and heap[0][0] <= now:
            _, _, cid, command, timeout = heapq.heappop(heap)
            if cid in waiters:
                out = self._expire(cid, command, timeout)
                if out:
                    self._write(out)
        while heap and heap[0][2] not in waiters:  # answered meanwhile
            heapq.heappop(heap)
        if heap:
            self._arm(heap[0][0])

    async def _wait(self, fut: asyncio.Future[Any], timeout: float | None, what: str) -> Any:
        """Await ``fut``, failing it with TimeoutError after ``timeout`` seconds."""
        if timeout is None:
            return await fut
        timer = self._loop.call_later(timeout, _expire_future, fut, f"{what} within {timeout:g} s")
        try:
            return await fut
        finally:
            timer.cancel()

    # -- closing ------------------------------------------------------------

    def abort(self) -> None:
        """Close the connection at once, without flushing pending writes."""
        self._closing = True
        transport = self._transport
        if transport is not None:
            transport.abort()
        elif self._sock is not None:
            self._sock.close()
        if transport is None:
            self._lost(None)

    async def close(self, timeout: float | None = CLOSE_TIMEOUT) -> None:
        """Close the connection; commands still waiting fail with ConnectionLost.

        Writes still buffered are sent first, for up to ``timeout`` seconds
        (None: as long as it takes); after that, or if the server stopped
        reading, the connection is aborted and the rest is dropped.
        """
        transport = self._transport
        if transport is not None and not self._closing:
            self._closing = True
            self._flush()
            transport.close()
        elif transport is None:
            self._closing = True
            self._lost(None)
        if self._closed_fut.done():
            return
        timer = None if timeout is None else self._loop.call_later(timeout, self.abort)
        try:
            await asyncio.shield(self._closed_fut)
        finally:
            if timer is not None:
                timer.cancel()

    def fileno(self) -> int:
        """The socket's file descriptor, or -1 once closed.

        For inspection (``getsockopt``, ``fstat``, logging); reading or
        writing it directly corrupts the stream.
        """
        transport = self._transport
        sock = None if transport is None else transport.get_extra_info("socket")
        return -1 if sock is None else sock.fileno()

    async def wait_closed(self) -> None:
        """Return once the connection has ended, for whatever reason.

        :attr:`connection_error` then says whether that was an error.
        """
        await asyncio.shield(self._closed_fut)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.close()


def _set_done(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


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

    _proto: QMPClientProtocol
    _schema: Schema | None = None  # fetched by schema()
    _validator: Callable[[str, Any], None] | None = None  # Schema.check, with validate=True

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
    if validate and not negotiate:
        raise ValueError("validate=True needs negotiate=True (the schema is asked for at connect)")
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

    _proto: QGAClientProtocol
    _sync_id = 0  # the resync in progress

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
