"""Blocking clients for QMP and the guest agent, for plain threads.

::

    with qmpcore.connect_sync("/run/vm1/qmp.sock") as qmp:
        qmp.execute("stop")
        ev = qmp.pull_event(timeout=5)

No event loop and no helper thread: a client is a non-blocking socket, the
same sans-IO protocol objects as the asyncio client, and a condition
variable.  Any number of threads may share one client; whichever thread
needs data reads the socket for everyone (the others wait on the
condition), so replies and events reach the right thread in any order.
"""

from __future__ import annotations

import os
import select
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from ssl import SSLContext
from typing import TYPE_CHECKING, Any, cast

from ..errors import ConnectionLost, TimeoutError, TLSError
from ..protocol.events import Event, Greeting, Synced, VersionInfo
from ..protocol.qga_client import QGAClientProtocol, expects_reply
from ..protocol.qmp_client import QMPClientProtocol
from ..protocol.schema import Schema, schema_for
from ._log import log, tracing
from .address import Address, AddressLike
from .aio import connect, connect_guest_agent
from .core import ClientCore, QMPInfo, check_validate, connect_target, same_parameters, scm_rights
from .diagnose import connect_error
from .eventqueue import BLOCK, DROP_OLDEST, CloseCallback, EventCallback, EventOverflow, EventQueue, Match, make_filter
from .tls import check_tls, handshake_sync

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = [
    "connect_sync",
    "SyncQMPClient",
    "connect_guest_agent_sync",
    "SyncGuestAgentClient",
    "Event",
    "EventOverflow",
    "VersionInfo",
]

CONNECT_TIMEOUT = 10.0
#: Default time :meth:`SyncQMPClient.close` lets queued writes drain.
CLOSE_TIMEOUT = 5.0
_RECV_SIZE = 1 << 16
_monotonic = time.monotonic
# Where sockets take a per-call non-blocking flag, the socket stays in
# blocking mode and every call passes the flag; elsewhere it is non-blocking.
_DONTWAIT = getattr(socket, "MSG_DONTWAIT", 0)


class _Slot:
    """Where the reader thread leaves one command's outcome."""

    __slots__ = ("_done", "_value", "_error")

    def __init__(self) -> None:
        self._done = False
        self._value: Any = None
        self._error: BaseException | None = None

    def done(self) -> bool:
        return self._done

    def set_result(self, value: Any) -> None:
        self._done = True
        self._value = value

    def set_exception(self, error: BaseException) -> None:
        self._done = True
        self._error = error

    def result(self) -> Any:
        if self._error is not None:
            raise self._error
        return self._value


def _deadline(timeout: float | None) -> float | None:
    return None if timeout is None else _monotonic() + timeout


_R, _W, _K = 1, 2, 4  # what a _Poller waits for / found ready (_K: its waker)


class _Waker:
    """A descriptor that polls readable once :meth:`wake` was called, until :meth:`clear`.

    An eventfd where there is one, else a socket pair (which ``select``
    takes everywhere).  Called with the client's lock held.
    """

    __slots__ = ("_fd", "_pair")

    def __init__(self) -> None:
        self._pair: tuple[socket.socket, socket.socket] | None = None
        if hasattr(os, "eventfd"):
            self._fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        else:  # pragma: no cover - not Linux
            self._pair = socket.socketpair()
            for end in self._pair:
                end.setblocking(False)
            self._fd = self._pair[0].fileno()

    def fileno(self) -> int:
        return self._fd

    def wake(self) -> None:
        if self._pair is None:
            os.eventfd_write(self._fd, 1)
        else:  # pragma: no cover - not Linux
            self._pair[1].send(b"\0")

    def clear(self) -> None:
        """Undo :meth:`wake` (called once per wake)."""
        try:
            if self._pair is None:
                os.eventfd_read(self._fd)
            else:  # pragma: no cover - not Linux
                self._pair[0].recv(64)
        except BlockingIOError:
            pass

    def close(self) -> None:
        if self._pair is None:
            if self._fd >= 0:
                os.close(self._fd)
        else:  # pragma: no cover - not Linux
            for end in self._pair:
                end.close()
        self._fd = -1


class _Poller:
    """Waits for one socket to become readable and/or writable (poll where available).

    With a ``waker``, a wait also ends when it is woken (the ``_K`` bit).
    """

    __slots__ = ("_poll", "_sock", "_mask", "_waker")

    def __init__(self, sock: socket.socket, mask: int, waker: _Waker | None = None) -> None:
        self._sock = sock
        self._mask = mask
        self._waker = waker
        if hasattr(select, "poll"):
            events = (select.POLLIN if mask & _R else 0) | (select.POLLOUT if mask & _W else 0)
            self._poll: Any = select.poll()
            self._poll.register(sock, events)
            if waker is not None:
                self._poll.register(waker.fileno(), select.POLLIN)
        else:  # pragma: no cover - Windows
            self._poll = None

    def wait(self, timeout: float | None) -> int:
        """``_R``/``_W``/``_K`` bits of what is ready (0 when the timeout ran out)."""
        mask = self._mask
        waker = self._waker
        if self._poll is not None:
            found = 0
            for fd, revents in self._poll.poll(None if timeout is None else max(0.0, timeout) * 1000.0):
                if waker is not None and fd == waker.fileno():
                    found |= _K
                elif revents & (select.POLLHUP | select.POLLERR | select.POLLNVAL):
                    found |= mask  # the next recv or send reports what happened
                else:
                    found |= (_R if revents & select.POLLIN else 0) | (_W if revents & select.POLLOUT else 0)
            return found
        sock = self._sock  # pragma: no cover - Windows
        rlist: list[Any] = [sock] if mask & _R else []
        if waker is not None:
            rlist.append(waker)
        r, w, _ = select.select(rlist, [sock] if mask & _W else [], [], timeout)
        return (_R if sock in r else 0) | (_W if w else 0) | (_K if waker is not None and waker in r else 0)


class _Out:
    """Bytes waiting to be written, with descriptors for their first byte."""

    __slots__ = ("view", "ancillary")

    def __init__(self, data: bytes, fds: Sequence[int] | None) -> None:
        self.view = memoryview(data)
        self.ancillary = scm_rights(fds) if fds else None


class _SyncClient(ClientCore):
    """Socket plumbing shared by the blocking QMP and guest agent clients."""

    def __init__(
        self,
        proto: Any,
        address: Address,
        sock: socket.socket,
        event_queue: int,
        command_timeout: float | None,
    ) -> None:
        super().__init__(proto, address, event_queue, command_timeout)
        sock.setblocking(bool(_DONTWAIT))
        self._sock = sock
        self._cond = threading.Condition(threading.RLock())
        self._reading = False  # a thread is reading the socket
        self._writing = False  # a thread is writing the head of _out
        # The reading thread writes nothing (it started while _out was empty
        # or another thread wrote): bytes queued or left behind meanwhile
        # wake it through _waker (see _kick), so that it writes them.
        self._blind = False
        self._kicked = False  # _waker was woken and not yet cleared
        self._waker = _Waker()
        self._sleepers = 0  # threads waiting for the reader
        # Bytes to write, in stream order.  Nobody blocks on a write while
        # holding the lock: whichever thread waits (within its own deadline)
        # writes what the socket takes, the rest waits for the next one.
        self._out: deque[_Out] = deque()
        self._queued = 0  # bytes ever queued
        self._written = 0  # bytes ever written
        self._rpoll = _Poller(sock, _R, self._waker)
        self._wpoll = _Poller(sock, _W)
        self._rwpoll = _Poller(sock, _R | _W)
        self._rbuf = bytearray(_RECV_SIZE)
        self._rview = memoryview(self._rbuf)
        self._sock_closed = False

    # -- reading --------------------------------------------------------------

    def _wait_until(self, done: Callable[[], bool], deadline: float | None) -> bool:
        """Read and write (or let other threads do so) until ``done()`` or the connection ends.

        Call with ``_cond`` held.  Returns False if the deadline passed first;
        before giving up, what the socket already holds is read (so a zero
        timeout still sees data that has arrived).  No wait, on reading or on
        writing, outlasts the deadline.
        """
        last = False
        try:
            while not done() and not self._closed:
                remaining = None if deadline is None else deadline - _monotonic()
                if remaining is not None and remaining <= 0:
                    if last or self._reading or self._router.blocked:
                        return False
                    last, remaining = True, 0.0
                if not self._reading and not self._router.blocked:
                    self._read_once(remaining)
                elif self._out and not self._writing:
                    self._flush_once(remaining)
                else:
                    self._sleep(remaining)
            return True
        finally:
            self._kick()  # this thread writes no more: hand what is queued to the reader

    def _kick(self) -> None:
        """Wake the reading thread if it writes nothing while bytes wait and nobody writes them.

        Call with ``_cond`` held, wherever a thread stops waiting or queues
        bytes it will not write itself: a thread that reads without having
        taken the head of ``_out`` would otherwise sit on its socket (up to
        its own deadline) while the server waits for those bytes.
        """
        if self._out and self._blind and not self._writing and not self._kicked and not self._sock_closed:
            self._kicked = True
            self._waker.wake()

    def _sleep(self, timeout: float | None) -> None:
        """Wait (``_cond`` held) for the reading thread to report progress."""
        self._sleepers += 1
        try:
            self._cond.wait(timeout)
        finally:
            self._sleepers -= 1

    def _recv_nowait(self) -> int:
        try:
            return self._sock.recv_into(self._rbuf, 0, _DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return -1

    def _send_nowait(self, entry: _Out) -> int:
        try:
            if entry.ancillary is not None:
                return self._sock.sendmsg([entry.view], entry.ancillary, _DONTWAIT)
            return self._sock.send(entry.view, _DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return 0

    def _wrote(self, entry: _Out, sent: int) -> None:
        """``sent`` bytes of the head of ``_out`` went out (``_cond`` held)."""
        if not sent:
            return
        self._written += sent
        out = self._out
        if not out or out[0] is not entry:  # the connection ended meanwhile
            return
        entry.ancillary = None
        if sent >= len(entry.view):
            out.popleft()
        else:
            entry.view = entry.view[sent:]

    def _read_once(self, timeout: float | None) -> None:
        """Read once, and write queued bytes if no other thread does (``_cond`` held, released while waiting)."""
        cond = self._cond
        entry = None
        if self._out and not self._writing:
            entry = self._out[0]
            self._writing = True
        self._reading = True
        self._blind = entry is None
        cond.release()
        error: BaseException | None = None
        n = -1
        sent = 0
        try:
            if entry is not None:
                sent = self._send_nowait(entry)
                if not sent:
                    ready = self._rwpoll.wait(timeout)
                    if ready & _W:
                        sent = self._send_nowait(entry)
                    if ready & _R:
                        n = self._recv_nowait()
            elif self._rpoll.wait(timeout) & _R:  # or woken (_kick): n stays -1
                n = self._recv_nowait()
        except OSError as exc:
            error, n = exc, 0
        finally:
            cond.acquire()
            self._reading = self._blind = False
            if self._kicked:
                self._kicked = False
                self._waker.clear()
            if entry is not None:
                self._writing = False
                self._wrote(entry, sent)
        try:
            if n > 0:
                self._receive(self._rview[:n])
                out = self._proto.data_to_send()
                if out:
                    self._queue(out)  # held commands whose turn came: written by the next waiter
            elif n == 0:
                self._shutdown(error)
        finally:
            if self._sleepers:
                cond.notify_all()

    def _flush_once(self, timeout: float | None) -> None:
        """Write what the socket takes of the head of ``_out`` within ``timeout`` (``_cond`` held)."""
        cond = self._cond
        entry = self._out[0]
        self._writing = True
        cond.release()
        error: BaseException | None = None
        sent = 0
        try:
            sent = self._send_nowait(entry)
            if not sent and self._wpoll.wait(timeout):
                sent = self._send_nowait(entry)
        except OSError as exc:
            error = exc
        finally:
            cond.acquire()
            self._writing = False
            self._wrote(entry, sent)
        if error is not None:
            self._shutdown(error)
        if self._sleepers:
            cond.notify_all()

    # -- writing --------------------------------------------------------------

    def _queue(self, data: bytes, fds: Sequence[int] | None = None) -> int:
        """Queue ``data`` (``fds`` attached to its first byte); return the stream position after it."""
        if tracing():
            self._trace_out(data, fds)
        self._out.append(_Out(data, fds))
        self._queued += len(data)
        return self._queued

    def _send(self, data: bytes, fds: Sequence[int] | None = None, deadline: float | None = None) -> None:
        """Write all of ``data`` (with ``fds`` attached to its first byte) by ``deadline``.

        Raises :class:`~qmpcore.TimeoutError` when the server did not take
        it in time (it stays queued, in order, and goes out later) and
        :class:`~qmpcore.ConnectionLost` when the connection ended first.
        """
        with self._cond:
            self._check_open()
            end = self._queue(data, fds)
            if not self._wait_until(lambda: self._written >= end, deadline):
                raise TimeoutError("the server is not reading: the data could not be sent in time")
            if self._written < end:
                raise self.connection_error or ConnectionLost("the connection was closed")

    def _shutdown(self, exc: BaseException | None = None) -> None:
        self._out.clear()
        super()._shutdown(exc)

    # -- commands -------------------------------------------------------------

    def _run(
        self,
        issue: Callable[[], Any],
        command: str,
        timeout: float | None,
        fds: Sequence[int] | None = None,
    ) -> Any:
        """Issue a command (``issue() -> (id, bytes)``) and wait for its reply."""
        if timeout is None:
            timeout = self.command_timeout
        deadline = _deadline(timeout)
        slot = _Slot()
        if fds:
            self._check_fds()
        with self._cond:
            self._check_open()
            cid, data = issue()
            self._waiters[cid] = slot
            if data:
                self._queue(data, fds)
            if not self._wait_until(slot.done, deadline):
                out = self._expire(cid, command, timeout)  # type: ignore[arg-type]
                if out:
                    self._queue(out)
                    self._kick()
        return slot.result()

    def send_fd(self, fd: int, *, timeout: float | None = None) -> None:
        """Pass ``fd`` to the server (SCM_RIGHTS) for a following ``getfd``/``add-fd``.

        Waits up to ``timeout`` (default ``command_timeout``) for the server
        to take it.
        """
        self._check_open()
        self._check_fds()
        self._send(b" ", [fd], _deadline(self.command_timeout if timeout is None else timeout))

    # -- events ---------------------------------------------------------------

    def _next_event(self, queue: EventQueue, timeout: float | None, what: str) -> Event | None:
        """The next event of ``queue``; None once it ends cleanly."""
        with self._cond:
            if not queue.ready() and not self._wait_until(queue.ready, _deadline(timeout)):
                raise TimeoutError(f"{what} within {timeout:g} s")
            try:
                return queue.get_nowait()
            except IndexError:  # the connection ended while nothing was queued
                return None
            finally:
                if queue.policy is BLOCK and self._sleepers:
                    self._cond.notify_all()  # the reader may go on

    def add_event_listener(
        self,
        callback: EventCallback,
        *,
        on_close: CloseCallback | None = None,
    ) -> Callable[[], None]:
        """Call ``callback(event)`` for every event as it arrives, from now on.

        As for the asyncio client; here the callbacks run on whichever
        thread is reading the socket, with the client's lock held: keep
        them short, and do not call this client's blocking methods from
        them.  Events arrive only while some thread reads (a command, an
        event wait, or :meth:`poll`).  Returns a function that removes the
        listener; adding and removing are thread-safe.
        """
        with self._cond:
            remove = super().add_event_listener(callback, on_close=on_close)

        def remove_locked() -> None:
            with self._cond:
                remove()

        return remove_locked

    def poll(self) -> bool:
        """Read and route what the socket already holds, without waiting.

        Replies reach their callers, events their queues and listeners.
        Does nothing while another thread reads.  Returns False once the
        connection has ended (this may be what noticed it).
        """
        with self._cond:
            if not self._closed and not self._reading and not self._router.blocked:
                self._read_once(0)
            return not self._closed

    def fileno(self) -> int:
        """The socket's file descriptor, or -1 once closed.

        For inspection (``getsockopt``, ``fstat``, logging); reading or
        writing it directly corrupts the stream.
        """
        return self._sock.fileno()

    # -- closing --------------------------------------------------------------

    def close(self, timeout: float | None = CLOSE_TIMEOUT) -> None:
        """Close the connection; commands still waiting fail with ConnectionLost.

        Bytes still queued are written first for up to ``timeout`` seconds
        (None: as long as it takes); whatever the server does, this returns
        within that time.
        """
        deadline = _deadline(timeout)
        with self._cond:
            if self._sock_closed:
                return
            if self._out and not self._closed and not self._closing:
                self._wait_until(lambda: not self._out, deadline)
            self._closing = True
            try:
                self._sock.shutdown(socket.SHUT_RDWR)  # wakes threads blocked in poll or recv
            except OSError:
                pass
            while self._reading or self._writing:
                self._sleep(0.05)
            self._shutdown(None)
            self._sock_closed = True
            self._sock.close()
            self._waker.close()
            self._cond.notify_all()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def __del__(self) -> None:
        sock = getattr(self, "_sock", None)
        if sock is not None and not getattr(self, "_sock_closed", True):
            sock.close()
            waker = getattr(self, "_waker", None)
            if waker is not None:
                waker.close()


def _open_socket(addr: Address, timeout: float | None) -> socket.socket:
    if addr.is_unix:
        sock = socket.socket(addr.family, socket.SOCK_STREAM)
        try:
            sock.settimeout(timeout)
            sock.connect(addr.sockaddr)
        except BaseException:
            sock.close()
            raise
        return sock
    sock = socket.create_connection(addr.sockaddr, timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _connect(
    address: AddressLike | None,
    sock: socket.socket | None,
    timeout: float | None,
    make: Callable[[Address, socket.socket], _SyncClient],
    handshake: Callable[[Any, float | None], None],
    tls: tuple[SSLContext | None, str | None] = (None, None),
    *,
    agent: bool,
) -> Any:
    """Open the socket (or take ``sock``), build the client and run its handshake within ``timeout``.

    ``tls`` is ``(ssl, server_hostname)``: with a context, the TLS
    handshake runs first (TCP only).  A failure raises
    :class:`~qmpcore.ConnectError` (see :mod:`.diagnose`) or
    :class:`~qmpcore.TLSError`.
    """
    addr = connect_target(address, sock)
    server_hostname = check_tls(addr, *tls)
    deadline = _deadline(timeout)
    client = None
    if tracing():
        log.debug("%s: connecting", addr)
    try:
        if sock is None:
            sock = _open_socket(addr, timeout)
        early = b""
        if tls[0] is not None:
            # From here on the socket carries TLS: the client reads and writes plain bytes.
            wrapped, early = handshake_sync(sock, tls[0], server_hostname, addr, deadline)
            sock = cast(socket.socket, wrapped)
        client = make(addr, sock)
        client._use_tls(*tls)
        if early:  # bytes that came with the end of the handshake
            client._process(client._proto.feed(early))
        handshake(client, deadline)
    except BaseException as exc:
        greeted = client is not None and getattr(client._proto, "greeting", None) is not None
        if client is not None:
            client.close()
        elif sock is not None:
            sock.close()
        if not isinstance(exc, Exception):  # interrupted
            raise
        if isinstance(exc, TLSError):  # named as such already
            raise
        failure = exc if client is None else client._tls_failure(exc)
        if failure is not exc:  # a TLS failure, named as such
            log.debug("%s: connect failed: %s", addr, failure)
            raise failure from exc
        error = connect_error(exc, addr, agent=agent, timeout=timeout, connected=client is not None, greeted=greeted)
        log.debug("%s: connect failed: %s", addr, error.detail)
        raise error from exc
    if tracing():
        log.debug("%s: connected", addr)
    return client


def _remaining(deadline: float | None) -> float | None:
    return None if deadline is None else max(0.0, deadline - _monotonic())


class SyncQMPClient(QMPInfo, _SyncClient):
    """One QMP connection, blocking (see :func:`connect_sync`)."""

    _proto: QMPClientProtocol
    _schema: Schema | None = None  # fetched by schema()
    _validator: Callable[[str, Any], None] | None = None  # Schema.check, with validate=True

    def schema(self, *, refresh: bool = False, timeout: float | None = None) -> Schema:
        """QEMU's schema as a :class:`~qmpcore.Schema`; see
        :meth:`qmpcore.QMPClient.schema`."""
        if self._schema is None or refresh:
            self._schema = schema_for(self.version, self.execute("query-qmp-schema", timeout=timeout))
        return self._schema

    def execute(
        self,
        command: str,
        arguments: dict[str, Any] | None = None,
        *,
        timeout: float | None = None,
        fds: Sequence[int] | None = None,
    ) -> Any:
        """Run ``command``; return its ``return`` value.

        Raises :class:`~qmpcore.CommandError`, :class:`~qmpcore.TimeoutError`
        (the late reply is dropped) or :class:`~qmpcore.ConnectionLost`, as
        the asyncio client does.  ``fds`` go with the command (SCM_RIGHTS).
        """
        if self._validator is not None:
            self._validator(command, arguments)
        hold = not fds
        return self._run(lambda: self._proto.send_command(command, arguments, hold=hold), command, timeout, fds)

    def execute_oob(
        self, command: str, arguments: dict[str, Any] | None = None, *, timeout: float | None = None
    ) -> Any:
        """Run ``command`` out-of-band (``exec-oob``); needs ``oob`` negotiated."""
        if self._validator is not None:
            self._validator(command, arguments)
        return self._run(lambda: self._proto.send_command(command, arguments, oob=True), command, timeout)

    def negotiate(self, oob: bool = False, *, timeout: float | None = None) -> None:
        """Leave negotiation mode (``qmp_capabilities``), with ``oob`` if offered."""
        self._run(lambda: self._proto.negotiate(oob), "qmp_capabilities", timeout)

    # -- events ---------------------------------------------------------------

    def pull_event(self, timeout: float | None = None) -> Event:
        """The oldest event in the backlog, waiting up to ``timeout`` s.

        With ``timeout=0`` nothing waits, but bytes that have already
        arrived on the socket are read first.  Raises :class:`~qmpcore.TimeoutError` when none comes in time and
        :class:`~qmpcore.ConnectionLost` when none can come any more.
        """
        ev = self._next_event(self._router.backlog, timeout, "no event")
        if ev is None:
            raise self.connection_error or ConnectionLost("the connection was closed")
        return ev

    def wait_event(self, name: str | None = None, match: Match = None, timeout: float | None = None) -> Event:
        """Wait for one event called ``name`` (any if None) matching ``match``.

        ``match`` is a dict of ``data`` members that must be equal, or a
        callable taking the :class:`Event`.  The oldest matching event in the
        backlog counts (and is consumed), as for the asyncio client.
        """
        with self._cond:
            queue = self._router.wait_for(make_filter(() if name is None else (name,), match))
        try:
            ev = self._next_event(queue, timeout, f"no {name or 'event'}")
        finally:
            with self._cond:
                self._router.unsubscribe(queue)
        if ev is None:
            raise self.connection_error or ConnectionLost("the connection was closed")
        return ev

    def events(
        self,
        *names: str,
        match: Match = None,
        maxsize: int | None = None,
        policy: str = DROP_OLDEST,
        max_bytes: int | None = None,
        timeout: float | None = None,
    ) -> Iterator[Event]:
        """Subscribe to events (all if no names given); iterate over them.

        The subscription gets every matching event from now on.
        ``maxsize``, ``policy`` and ``max_bytes`` as for the asyncio client; ``timeout``
        bounds each wait (:class:`~qmpcore.TimeoutError`).  Iteration ends
        when the connection closes cleanly, raises ConnectionLost when it
        breaks; closing the generator unsubscribes.
        """
        with self._cond:
            queue = self._router.subscribe(
                make_filter(names, match), maxsize or self._event_queue_size, policy, max_bytes
            )
        return self._iterate(queue, timeout)

    def _iterate(self, queue: EventQueue, timeout: float | None) -> Iterator[Event]:
        try:
            while True:
                ev = self._next_event(queue, timeout, "no event")
                if ev is None:
                    return
                yield ev
        finally:
            with self._cond:
                self._router.unsubscribe(queue)
                self._cond.notify_all()

    def _greeted(self, deadline: float | None, negotiate: bool, oob: bool, validate: bool = False) -> None:
        slot = _Slot()
        with self._cond:
            if self._proto.greeting is not None:  # it came with the end of the TLS handshake
                slot.set_result(None)
            self._waiters[Greeting] = slot
            if not self._wait_until(slot.done, deadline):
                raise TimeoutError("no greeting")
        slot.result()
        if negotiate:
            self.negotiate(oob, timeout=_remaining(deadline))
        if validate:
            self._validator = self.schema(timeout=_remaining(deadline)).check


@same_parameters(connect)
def connect_sync(options: dict[str, Any]) -> SyncQMPClient:
    """Connect to a QMP server and negotiate, blocking; see :func:`qmpcore.connect`.

    The same parameters as :func:`qmpcore.connect`: ``sock`` hands over a
    connected socket instead of an ``address``; ``ssl``/``server_hostname``:
    TLS over TCP; ``validate=True`` checks commands against QEMU's schema
    before sending.  Raises :class:`~qmpcore.ConnectError` naming the
    address and the cause.
    """
    negotiate, oob, validate = options["negotiate"], options["oob"], options["validate"]
    check_validate(validate, negotiate)
    limits = {key: options[key] for key in ("max_frame_size", "max_depth", "max_tokens")}
    event_queue, command_timeout = options["event_queue"], options["command_timeout"]
    return _connect(  # type: ignore[no-any-return]
        options["address"],
        options["sock"],
        options["timeout"],
        lambda addr, conn: SyncQMPClient(QMPClientProtocol(**limits), addr, conn, event_queue, command_timeout),
        lambda client, deadline: client._greeted(deadline, negotiate, oob, validate),
        (options["ssl"], options["server_hostname"]),
        agent=False,
    )


class SyncGuestAgentClient(_SyncClient):
    """One guest agent channel, blocking (see :func:`connect_guest_agent_sync`).

    qemu-ga sends no events, so there are no event methods here;
    :meth:`add_event_listener` remains for its ``on_close`` notification.
    """

    _proto: QGAClientProtocol
    _sync_id = 0  # the resync in progress

    def execute(
        self,
        command: str,
        arguments: dict[str, Any] | None = None,
        *,
        timeout: float | None = None,
        expect_reply: bool | None = None,
    ) -> Any:
        """Run a guest agent command; see :meth:`GuestAgentClient.execute`."""
        if not expects_reply(command, expect_reply):
            deadline = _deadline(self.command_timeout if timeout is None else timeout)
            with self._cond:
                self._check_open()
                _, data = self._proto.send_command(command, arguments, expect_reply=False)
                if data:
                    self._send(data, None, deadline)
            return None
        return self._run(lambda: self._proto.send_command(command, arguments, expect_reply=True), command, timeout)

    def sync(self, timeout: float | None = None) -> int:
        """Resynchronise the channel (0xFF + ``guest-sync-delimited``); return the id."""
        if timeout is None:
            timeout = self.command_timeout
        deadline = _deadline(timeout)
        with self._cond:
            self._check_open()
            slot = self._waiters.get(Synced)
            if slot is None:
                sid, data = self._proto.sync()
                self._sync_id = sid
                slot = self._waiters[Synced] = _Slot()
            else:  # share the resync another thread started
                sid, data = self._sync_id, b""
            if data:
                self._queue(data)
            if not self._wait_until(slot.done, deadline):
                if self._waiters.get(Synced) is slot:
                    del self._waiters[Synced]
                    out = self._abandon(sid)
                    if out:
                        self._queue(out)
                        self._kick()
                raise TimeoutError(f"no guest-sync-delimited reply within {timeout:g} s")
        slot.result()
        return sid


@same_parameters(connect_guest_agent)
def connect_guest_agent_sync(options: dict[str, Any]) -> SyncGuestAgentClient:
    """Connect to a guest agent socket and resynchronise, blocking.

    The same parameters as :func:`qmpcore.connect_guest_agent`: ``sock``
    hands over a connected socket instead of a ``path``; limits and errors
    as for :func:`connect_sync`; ``ssl``/``server_hostname``: TLS over TCP.
    """
    limits = {key: options[key] for key in ("max_frame_size", "max_depth", "max_tokens")}
    command_timeout = options["command_timeout"]
    return _connect(  # type: ignore[no-any-return]
        options["path"],
        options["sock"],
        options["timeout"],
        lambda addr, conn: SyncGuestAgentClient(QGAClientProtocol(**limits), addr, conn, 0, command_timeout),
        lambda client, deadline: client.sync(_remaining(deadline)),
        (options["ssl"], options["server_hostname"]),
        agent=True,
    )
