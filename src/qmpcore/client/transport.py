"""The asyncio plumbing both asyncio clients share.

One :class:`asyncio.BufferedProtocol` per connection reads straight into a
buffer the sans-IO protocol consumes; :class:`_AsyncClient` opens the socket
(TLS included), runs the handshake within its deadline, writes (batched per
loop turn), keeps one timer over a heap of command deadlines, and ends every
pending command when the connection goes.  :mod:`.aio` builds the QMP and
guest agent clients on it.
"""

from __future__ import annotations

import asyncio
import functools
import heapq
import socket
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from ..errors import ConnectionLost, TimeoutError, TLSError
from ..framing.rules import DEFER_STEP
from ..protocol.events import Event
from . import share
from ._log import _DEBUG, _isEnabledFor, log, tracing
from .address import Address
from .core import _LEVELS, ClientCore, QMPInfo, scm_rights
from .diagnose import connect_error
from .eventqueue import event_cost
from .share import load as _load
from .tls import LastByteRecords, is_server_context

if TYPE_CHECKING:
    from typing_extensions import Self

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
#: Frames over a read's worth of bytes are decoded a step (DEFER_STEP
#: bytes) per turn of the loop, and their peer reads this much at a time
#: while it sends one: a large frame costs each turn a small slice.  (A
#: read is only scanned, at memory speed: four decoding steps' worth.)
_DEFER_SIZE = _READ_SIZE
_LARGE_READ_SIZE = 4 * DEFER_STEP
_buffers = threading.local()


_NEVER = float("inf")
#: The loop may run a timer this much before its time (clock resolution).
_EARLY = 1e-6


def _read_views() -> tuple[memoryview, memoryview, memoryview]:
    """This thread's read buffer: whole, and its first 4 KiB and 16 KiB."""
    views: tuple[memoryview, memoryview, memoryview] | None = getattr(_buffers, "views", None)
    if views is None:
        full = memoryview(bytearray(_READ_SIZE))
        views = _buffers.views = (full, full[:_SUSPECT_READ_SIZE], full[:_LARGE_READ_SIZE])
    return views


def _future_maker(loop: asyncio.AbstractEventLoop) -> Callable[[], asyncio.Future[Any]]:
    """``loop.create_future``; for asyncio's own loops the C future made
    directly, without a Python call through the loop's method (one maker
    per thread, for the loop it last served)."""
    if type(loop).create_future is not asyncio.BaseEventLoop.create_future:
        return loop.create_future
    maker: functools.partial[asyncio.Future[Any]] | None = getattr(_buffers, "futures", None)
    if maker is None or maker.keywords["loop"] is not loop:
        maker = _buffers.futures = functools.partial(asyncio.Future, loop=loop)
    return maker


class _Transport(asyncio.BufferedProtocol):
    """Feeds the client from the event loop's callbacks."""

    __slots__ = ("_client", "_view", "_views", "_started")

    def __init__(self, client: _AsyncClient) -> None:
        self._client = client
        self._views = _read_views()
        self._view = self._views[1]  # small reads until the peer sent clean data once
        self._started = 0.0

    def connection_made(self, transport: Any) -> None:
        _load[0] += 1
        self._client._reads_seen = _load[1]

    def get_buffer(self, sizehint: int) -> memoryview:
        view = self._view
        if view is not self._views[0]:
            self._started = share.clock()  # (a costly read: its system call counts too)
        return view

    def buffer_updated(self, nbytes: int) -> None:
        _load[1] += 1
        client = self._client
        client._reads_seen += 1  # (its own: not another connection's)
        view = self._view
        self._view = self._views[client._received(view[:nbytes])]
        if view is not self._views[0]:
            # A read of a peer whose last read held malformed frames, or of
            # one sending a large frame: costly work, followed by its rest.
            client._rest(self._started)

    def eof_received(self) -> bool:
        return False  # let the transport close; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        _load[0] -= 1
        self._client._lost(exc)

    def resume_writing(self) -> None:
        self._client._wake_drainers(None)


class _AsyncClient(ClientCore):
    """Socket plumbing shared by the QMP and guest agent clients."""

    __slots__ = (
        "_loop",
        "_transport",
        "_sock",
        "_batch",
        "_batch_hold",
        "_drain_waiters",
        "_read_paused",
        "_stepping",
        "_resting",
        "_reads_seen",
        "_closed_fut",
        "_deadlines",
        "_late",
        "_clock",
        "_new_future",
        "_sweeper",
        "_sweep_at",
    )

    def __init__(
        self,
        proto: Any,
        address: Address,
        event_queue: int,
        command_timeout: float | None,
    ) -> None:
        super().__init__(proto, address, event_queue, command_timeout)
        proto.defer_frames(_DEFER_SIZE)
        self._stepping = False  # a step of a large frame's decoding is scheduled
        self._resting: asyncio.TimerHandle | None = None  # (see _rest)
        self._reads_seen = 0
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._sock: socket.socket | None = None  # unix only, for SCM_RIGHTS
        self._batch: list[bytes] | None = None
        self._batch_hold = 0  # >0 while an fd send owns the socket
        self._drain_waiters: list[asyncio.Future[None]] = []
        self._read_paused = False
        # Made by whoever waits for the end first (see _closed_future).
        self._closed_fut: asyncio.Future[None] | None = None
        # Command deadlines, (when, id, command, timeout), and one timer for
        # the earliest instead of a timer per command.  Commands of one
        # timeout come due in the order they were sent: a list in that
        # order, appended to; a deadline earlier than the list's last (a
        # shorter timeout) goes to a heap, made when first needed.
        # Entries of answered commands are dropped lazily.
        self._deadlines: list[tuple[float, Any, str, float]] = []
        self._late: list[tuple[float, Any, str, float]] | None = None
        self._new_future = _future_maker(self._loop)
        # The loop's clock; asyncio's own is time.monotonic (no call through it).
        self._clock: Callable[[], float] = (
            time.monotonic if type(self._loop).time is asyncio.BaseEventLoop.time else self._loop.time
        )
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

    def _received(self, data: memoryview) -> int:
        """Act on one read; return where the next one goes (0: the whole read
        buffer, 1: its small start, 2: a large frame's step; see _read_views).

        Fair share: a peer whose read held malformed frames reads less next
        time; one sending a frame over a read's worth too.
        """
        faults = self._protocol_errors
        self._receive(data)
        proto = self._proto
        if proto._out:  # held commands whose turn came (data_to_send(), without a call per read)
            self._write(proto.data_to_send())
        decoding = proto._stalled is not None
        if decoding and not self._stepping:
            self._stepping = True
            self._loop.call_soon(self._step)
        router = self._router
        if ((router._subs and router.blocked) or self._stepping) and not self._read_paused:
            self._read_paused = True
            self._transport.pause_reading()  # type: ignore[union-attr]
        if self._protocol_errors != faults:
            return 1
        if decoding or proto._framer.buffered > _LARGE_READ_SIZE:
            return 2
        return 0

    def _step(self) -> None:
        """One slice of a large frame's decoding per turn of the loop, each
        followed by its rest (see .share); reading waits until it is done
        (the bytes after it wait in the socket)."""
        started = share.clock()
        proto = self._proto
        if self._decode_step():
            out = proto.data_to_send()
            if out:
                self._write(out)
        if proto.decoding and self._transport is not None:
            delay, self._reads_seen = share.rest(started, self._reads_seen)
            if delay:
                self._loop.call_later(delay, self._step)
            else:
                self._loop.call_soon(self._step)
            return
        self._stepping = False
        self._rest(started)
        self._resume_reading()

    def _rest(self, started: float) -> None:
        """After costly work begun at ``started``, hold reading back for the
        rest it owes (see .share)."""
        delay, self._reads_seen = share.rest(started, self._reads_seen)
        if not delay or self._transport is None:
            return
        if not self._read_paused:
            self._read_paused = True
            self._transport.pause_reading()
        if self._resting is not None:
            self._resting.cancel()
        self._resting = self._loop.call_later(delay, self._wake)

    def _wake(self) -> None:
        self._resting = None
        self._resume_reading()

    def _finish_steps(self) -> None:
        """Decode what is held at once (the connection ended: nothing that
        arrived intact is lost)."""
        while self._proto.decoding:
            self._decode_step()

    def _decode_step(self) -> bool:
        """Take one step of the large frame being decoded; act on what the
        last step completes: the frame's own event costs the queues its
        size, those after it what their frames re-encoded take (their bytes
        came in reads already counted).  True when events came."""
        proto = self._proto
        nbytes = proto.decoding_bytes
        events = proto.step()
        if not events:
            return False
        held = proto.buffered
        self._process(events[:1], nbytes + held)
        rest = events[1:]
        if rest:
            self._process(rest, held + sum(event_cost(ev) for ev in rest if type(ev) is Event))
        return True

    def _lost(self, exc: BaseException | None) -> None:
        if self._proto.decoding:
            self._finish_steps()
        if self._resting is not None:
            self._resting.cancel()
            self._resting = None
        self._transport = None
        self._shutdown(exc)
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        self._deadlines.clear()
        self._late = None
        if self._drain_waiters:
            self._wake_drainers(ConnectionLost("the connection was closed"))
        if self._closed_fut is not None and not self._closed_fut.done():
            self._closed_fut.set_result(None)

    def _closed_future(self) -> asyncio.Future[None]:
        """A future done once the connection has ended."""
        fut = self._closed_fut
        if fut is None:
            fut = self._closed_fut = self._loop.create_future()
            if self._closed:
                fut.set_result(None)
        return fut

    def _resume_reading(self) -> None:
        """A blocking consumer caught up: read again."""
        if self._read_paused and not self._router.blocked and not self._stepping and self._resting is None:
            self._read_paused = False
            if self._transport is not None:
                self._transport.resume_reading()

    # -- writing ------------------------------------------------------------

    def _write(self, data: bytes) -> None:
        """Write now when idle; batch writes issued while commands are in flight."""
        if _LEVELS.get(_DEBUG) is not False and _isEnabledFor(_DEBUG):  # tracing(), without a call per write
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
        fut = self._new_future()
        waiters = self._waiters
        waiters[cid] = fut
        if timeout is None:
            timeout = self.command_timeout
        if timeout is not None:
            when = self._clock() + timeout
            due = self._deadlines
            if due:
                if due[0][1] not in waiters:  # answered: drop them from the head, at once
                    if len(due) == 1:  # one command at a time: the usual case
                        due.clear()
                    else:
                        _drop_answered(due, waiters)
                elif len(due) > 64 and len(due) > 2 * len(waiters):
                    # The head waits, those behind it were answered: keep the list as
                    # small as what is pending.
                    due[:] = [entry for entry in due if entry[1] in waiters]
                if due and when < due[-1][0]:  # a shorter timeout than those before it
                    self._late_deadline((when, cid, command, timeout))
                    return fut
            due.append((when, cid, command, timeout))
            if when < self._sweep_at:
                self._arm(when)
        return fut

    def _late_deadline(self, entry: tuple[float, Any, str, float]) -> None:
        """Keep a deadline that comes before the last one in order: in the heap."""
        late = self._late
        if late is None:
            late = self._late = []
        elif len(late) > 64 and len(late) > 2 * len(self._waiters):
            # Mostly answered commands: keep the heap as small as what is pending.
            late[:] = [e for e in late if e[1] in self._waiters]
            heapq.heapify(late)
        heapq.heappush(late, entry)
        if entry[0] < self._sweep_at:
            self._arm(entry[0])

    def _arm(self, when: float) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        self._sweep_at = when
        self._sweeper = self._loop.call_at(when, self._sweep)

    def _sweep(self) -> None:
        """Fail the commands whose time is up; wake again for the next one."""
        self._sweeper = None
        self._sweep_at = _NEVER
        due, late = self._deadlines, self._late
        waiters = self._waiters
        now = self._clock() + _EARLY
        expired = 0  # taken from the head of due
        for entry in due:
            if entry[0] > now:
                break
            expired += 1
            while late and late[0] < entry:  # both in the order they come due
                self._expire_entry(heapq.heappop(late))
            self._expire_entry(entry)
        del due[:expired]
        while late and late[0][0] <= now:
            self._expire_entry(heapq.heappop(late))
        _drop_answered(due, waiters)
        while late and late[0][1] not in waiters:  # answered meanwhile
            heapq.heappop(late)
        when = min(due[0][0] if due else _NEVER, late[0][0] if late else _NEVER)
        if when != _NEVER:
            self._arm(when)

    def _expire_entry(self, entry: tuple[float, Any, str, float]) -> None:
        _, cid, command, timeout = entry
        if cid in self._waiters:
            out = self._expire(cid, command, timeout)
            if out:
                self._write(out)

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
        closed = self._closed_future()
        if closed.done():
            return
        timer = None if timeout is None else self._loop.call_later(timeout, self.abort)
        try:
            await asyncio.shield(closed)
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
        await asyncio.shield(self._closed_future())

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.close()


def _drop_answered(due: list[tuple[float, Any, str, float]], waiters: dict[Any, Any]) -> None:
    """Drop the deadlines of answered commands from the head of ``due``
    (one slice for all of them: linear in what is dropped)."""
    n = 0
    for entry in due:
        if entry[1] in waiters:
            break
        n += 1
    del due[:n]


def _set_done(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)
