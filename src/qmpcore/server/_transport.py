"""Non-blocking server sockets on the asyncio loop, with SCM_RIGHTS.

asyncio's own transports read with ``recv()``, which silently closes file
descriptors passed with SCM_RIGHTS; a QMP server needs them for ``getfd``
and ``add-fd``.  :class:`Connection` is a small transport that reads unix
sockets with ``recvmsg()`` and hands received descriptors to its protocol
(``fds_received``) before the bytes they came with.  It drives an
:class:`asyncio.Protocol` (``connection_made``, ``data_received``,
``connection_lost``, ``pause_writing``/``resume_writing``) straight from the
selector, one call per burst of bytes, like asyncio's transports do.

:class:`Listener` accepts one client at a time when asked to: QEMU stops
watching a chardev's listening socket while a client is connected, so a
second client waits in the kernel backlog and sees nothing until the first
one leaves (corpus 27).
"""

from __future__ import annotations

import array
import asyncio
import errno
import logging
import os
import select
import socket
import ssl
import stat
import struct
import threading
from collections import deque
from collections.abc import Callable
from itertools import islice
from typing import Any

from ..client.address import AddressLike as Address

__all__ = ["Connection", "Listener", "bind_socket", "Address", "TLSLayer"]

# Small enough that one read of garbage (an error reply per byte) cannot
# produce much output before the output cap is checked again.
_READ_SIZE = 64 * 1024
# What one read of a client whose last read held malformed input takes:
# garbage costs far more per byte than requests (an error reply each), so
# such a client gets a smaller slice of the loop until it sends clean data.
_SUSPECT_READ_SIZE = 4 * 1024
# recv() of a fresh 256 KiB bytes object per read costs more than the
# syscall itself; reads land in one reused buffer per thread instead.
_buffers = threading.local()
_MAX_FDS = 16  # QEMU's TCP_MAX_FDS: more in one message are closed
_ANC_SIZE = socket.CMSG_SPACE(_MAX_FDS * array.array("i").itemsize)
_HIGH_WATER = 256 * 1024
_SEND_PIECES = 64  # (sendmsg's vector, well under IOV_MAX)
# Unsent pieces under _SMALL_PIECE bytes are copied together into pieces of
# up to about _JOINED_PIECE bytes; larger ones are held as they are.
_SMALL_PIECE = 16 * 1024
_JOINED_PIECE = 256 * 1024
_LOW_WATER = 64 * 1024
_RETRY = (BlockingIOError, InterruptedError)
_HANGUP_POLL = 0.1
_HANGUP_EVENTS = select.POLLHUP | getattr(select, "POLLRDHUP", 0)
#: A client that has not finished its TLS handshake by then is disconnected.
TLS_HANDSHAKE_TIMEOUT = 10.0

logger = logging.getLogger("qmpcore.server")


def _close_fds(fds: list[int]) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


def _fds_from(ancdata: list[tuple[int, int, bytes]]) -> list[int]:
    fds = array.array("i")
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            usable = len(data) - len(data) % fds.itemsize
            fds.frombytes(data[:usable])
    return list(fds)


class Connection:
    """One accepted client socket driving one protocol object."""

    def __init__(self, loop: asyncio.AbstractEventLoop, sock: socket.socket, protocol: Any) -> None:
        sock.setblocking(False)
        self._loop = loop
        self._sock = sock
        self._fd = sock.fileno()
        self._protocol = protocol
        self._unix = sock.family == socket.AF_UNIX
        # Unsent output, in the pieces it was written in: no piece is copied
        # into a growing buffer (a client that reads slowly would make each
        # write copy all that waits), sendmsg() takes several at once.
        self._buffer: deque[memoryview | bytearray] = deque()
        self._buffer_size = 0
        self._reading = True
        self._writer = False
        self._closing = False
        self._closed = False
        self._paused_protocol = False
        self._hangup_timer: asyncio.TimerHandle | None = None
        #: Read at most 4 KiB at a time (see :meth:`read_small`).
        self._small = False
        loop.add_reader(self._fd, self._on_readable)
        protocol.connection_made(self)

    # -- transport interface ----------------------------------------------

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "socket":
            return self._sock
        if name == "peername":
            try:
                return self._sock.getpeername()
            except OSError:
                return default
        return default

    def is_closing(self) -> bool:
        return self._closing or self._closed

    def get_write_buffer_size(self) -> int:
        return self._buffer_size

    def write(self, data: bytes | memoryview) -> None:
        """Send ``data`` now if the socket takes it, else buffer it."""
        if self._closing or self._closed or not data:
            return
        sent = 0
        if not self._buffer:
            try:
                sent = self._sock.send(data)
            except _RETRY:
                pass
            except OSError as exc:
                self._abort(exc)
                return
            if sent == len(data):
                return
        self._hold(memoryview(data)[sent:])

    def writelines(self, pieces: list[bytes]) -> None:
        """Write ``pieces`` in order, with one system call when the socket
        takes them (no joined copy)."""
        if self._closing or self._closed:
            return
        if self._buffer or len(pieces) > _SEND_PIECES:
            for data in pieces:
                self.write(data)
            return
        sent = 0
        try:
            sent = self._sock.sendmsg(pieces)
        except _RETRY:
            pass
        except OSError as exc:
            self._abort(exc)
            return
        for data in pieces:
            if sent < len(data):
                self._hold(memoryview(data)[sent:])
                sent = 0
            else:
                sent -= len(data)

    def _hold(self, piece: memoryview) -> None:
        """Keep ``piece`` until the socket takes it (the protocol pauses
        past the high-water mark): a large one as a view of the bytes
        written, small ones copied together (a system call sends a
        buffer's worth, not a few events' worth)."""
        size = len(piece)
        if not size:
            return
        if not self._writer:
            self._loop.add_writer(self._fd, self._on_writable)
            self._writer = True
        buffer = self._buffer
        if size < _SMALL_PIECE or type(piece.obj) is not bytes:
            tail = buffer[-1] if buffer else None
            if type(tail) is bytearray and len(tail) < _JOINED_PIECE:
                tail += piece
            else:
                buffer.append(bytearray(piece))
        else:
            buffer.append(piece)
        self._buffer_size += size
        if not self._paused_protocol and self._buffer_size > _HIGH_WATER:
            self._paused_protocol = True
            self._protocol.pause_writing()

    def is_reading(self) -> bool:
        return self._reading

    def pause_reading(self) -> None:
        if self._reading and not self._closed:
            self._reading = False
            self._loop.remove_reader(self._fd)
            if not self._closing:
                self._watch_hangup()

    def resume_reading(self) -> None:
        if not self._reading and not self._closing and not self._closed:
            self._reading = True
            self._loop.add_reader(self._fd, self._on_readable)
            self._stop_hangup_watch()

    def _watch_hangup(self) -> None:
        """While not reading, still notice a client that hangs up (QEMU
        watches G_IO_HUP separately): poll the socket now and then."""
        self._hangup_timer = self._loop.call_later(_HANGUP_POLL, self._check_hangup)

    def _stop_hangup_watch(self) -> None:
        if self._hangup_timer is not None:
            self._hangup_timer.cancel()
            self._hangup_timer = None

    def _check_hangup(self) -> None:
        self._hangup_timer = None
        if self._reading or self._closing or self._closed:
            return
        poller = select.poll()
        poller.register(self._fd, _HANGUP_EVENTS)
        if poller.poll(0):
            self.close()
        else:
            self._watch_hangup()

    def close(self) -> None:
        """Stop reading; close once everything written has been sent."""
        if self._closing or self._closed:
            return
        self._closing = True
        self.pause_reading()
        if not self._buffer:
            self._finish(None)

    def abort(self, *, reset: bool = False) -> None:
        """Close now, dropping unsent bytes; ``reset`` sends a TCP-style RST
        (the peer reads ECONNRESET instead of EOF)."""
        if self._closed:
            return
        if reset:
            try:
                self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            except OSError:
                pass
        self._finish(None)

    def read_small(self, small: bool) -> None:
        """Read 4 KiB at a time (``small``) or a full read's worth."""
        self._small = small

    # -- selector callbacks -------------------------------------------------

    def _on_readable(self) -> None:
        buffer = getattr(_buffers, "view", None)
        if buffer is None:
            buffer = _buffers.view = memoryview(bytearray(_READ_SIZE))
            _buffers.small = buffer[:_SUSPECT_READ_SIZE]
        if self._small:
            buffer = _buffers.small
        try:
            if self._unix:
                size, ancdata, _, _ = self._sock.recvmsg_into([buffer], _ANC_SIZE)
                if ancdata:
                    fds = _fds_from(ancdata)
                    if fds:
                        self._deliver_fds(fds)
            else:
                size = self._sock.recv_into(buffer)
        except _RETRY:
            return
        except OSError as exc:
            self._abort(exc)
            return
        if not size:
            self.close()  # QEMU closes the session at EOF
            return
        self._protocol.data_received(bytes(buffer[:size]))

    def _deliver_fds(self, fds: list[int]) -> None:
        handler: Callable[[list[int]], None] | None = getattr(self._protocol, "fds_received", None)
        if handler is None or self._closed:
            _close_fds(fds)
        else:
            handler(fds)

    def _on_writable(self) -> None:
        buffer = self._buffer
        try:
            if len(buffer) == 1:
                sent = self._sock.send(buffer[0])
            else:
                sent = self._sock.sendmsg(list(islice(buffer, _SEND_PIECES)))
        except _RETRY:
            return
        except OSError as exc:
            self._abort(exc)
            return
        self._buffer_size -= sent
        while sent:
            piece = buffer[0]
            if sent < len(piece):
                if type(piece) is bytearray:
                    del piece[:sent]  # (bytearray drops its head in place)
                else:
                    buffer[0] = piece[sent:]
                break
            sent -= len(piece)
            buffer.popleft()
        if self._paused_protocol and self._buffer_size <= _LOW_WATER:
            self._paused_protocol = False
            self._protocol.resume_writing()
        if not self._buffer:
            self._loop.remove_writer(self._fd)
            self._writer = False
            if self._closing:
                self._finish(None)

    def _abort(self, exc: BaseException | None) -> None:
        if exc is not None and getattr(exc, "errno", None) in (errno.EPIPE, errno.ECONNRESET):
            exc = None  # the client went away: an ordinary end
        self._finish(exc)

    def _finish(self, exc: BaseException | None) -> None:
        if self._closed:
            return
        self._closed = True
        self._closing = True
        self._stop_hangup_watch()
        if self._reading:
            self._loop.remove_reader(self._fd)
            self._reading = False
        if self._writer:
            self._loop.remove_writer(self._fd)
            self._writer = False
        self._buffer.clear()
        self._buffer_size = 0
        try:
            self._sock.close()
        finally:
            self._loop.call_soon(self._protocol.connection_lost, exc)


def bind_socket(address: Address, *, mode: int = 0o600, backlog: int = 16) -> socket.socket:
    """A listening socket for ``address``: a unix path (created with
    ``mode``; a stale socket file is replaced, as QEMU does) or a
    ``(host, port)`` pair (port 0 picks a free one)."""
    if isinstance(address, tuple):
        host, port = address
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            sock.listen(backlog)
        except BaseException:
            sock.close()
            raise
    else:
        path = os.fspath(address)
        try:
            if stat.S_ISSOCK(os.lstat(path).st_mode):
                os.unlink(path)
        except FileNotFoundError:
            pass
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(path)
            # Nobody can connect before listen(), so this leaves no window.
            os.chmod(path, mode)
            sock.listen(backlog)
        except BaseException:
            sock.close()
            raise
    sock.setblocking(False)
    return sock


class Listener:
    """Accept clients on a listening socket and hand each to ``on_accept``.

    While :meth:`pause` is in effect nothing is accepted; clients that
    connect meanwhile wait in the kernel backlog.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: socket.socket,
        on_accept: Callable[[socket.socket], None],
    ) -> None:
        self._loop = loop
        self._sock = sock
        self._on_accept = on_accept
        self._watching = False
        self._closed = False
        self._path: str | None = None
        self._inode: tuple[int, int] | None = None
        if sock.family == socket.AF_UNIX:
            self._path = sock.getsockname()
            try:
                info = os.stat(self._path)
                self._inode = (info.st_dev, info.st_ino)
            except OSError:
                pass
        self.resume()

    @property
    def address(self) -> Any:
        return self._path if self._path is not None else self._sock.getsockname()[:2]

    def pause(self) -> None:
        if self._watching:
            self._loop.remove_reader(self._sock.fileno())
            self._watching = False

    def resume(self) -> None:
        if not self._watching and not self._closed:
            self._loop.add_reader(self._sock.fileno(), self._accept)
            self._watching = True

    def _accept(self) -> None:
        try:
            client, _ = self._sock.accept()
        except _RETRY:
            return
        except OSError as exc:
            if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                # Out of descriptors: leave the client in the backlog for a while.
                self.pause()
                self._loop.call_later(0.1, self.resume)
                return
            raise
        self._on_accept(client)

    def close(self) -> None:
        """Stop listening and remove the socket file (if it is still ours)."""
        if self._closed:
            return
        self.pause()
        self._closed = True
        self._sock.close()
        if self._path and self._inode:
            try:
                info = os.stat(self._path)
                if (info.st_dev, info.st_ino) == self._inode:
                    os.unlink(self._path)
            except OSError:
                pass


class TLSLayer:
    """TLS between a :class:`Connection` (below) and a protocol (above).

    To the connection it is the protocol; to the protocol it is the
    transport, carrying plain bytes.  Records go through memory buffers,
    drained at every read, so what a client can make it hold is bounded by
    one read.  The protocol sees ``connection_made`` once the handshake is
    done (within :data:`TLS_HANDSHAKE_TIMEOUT`) and ``connection_lost`` in
    any case.
    """

    def __init__(
        self, protocol: Any, context: ssl.SSLContext, handshake_timeout: float = TLS_HANDSHAKE_TIMEOUT
    ) -> None:
        self._protocol = protocol
        self._in = ssl.MemoryBIO()
        self._out = ssl.MemoryBIO()
        self._obj = context.wrap_bio(self._in, self._out, server_side=True)
        self._timeout = handshake_timeout
        self._transport: Any = None
        self._ready = False
        self._timer: asyncio.TimerHandle | None = None

    # -- protocol interface (called by the connection) -------------------------

    def connection_made(self, transport: Any) -> None:
        self._transport = transport
        self._timer = asyncio.get_running_loop().call_later(self._timeout, self._handshake_timed_out)
        self._handshake()

    def data_received(self, data: bytes) -> None:
        self._in.write(data)
        if not self._ready:
            self._handshake()
            return
        self._deliver()

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._protocol.connection_lost(exc)

    def pause_writing(self) -> None:
        if self._ready:
            self._protocol.pause_writing()

    def resume_writing(self) -> None:
        if self._ready:
            self._protocol.resume_writing()

    def _handshake(self) -> None:
        try:
            self._obj.do_handshake()
        except ssl.SSLWantReadError:
            self._push()
            return
        except ssl.SSLError as exc:
            logger.debug("%s: TLS handshake failed: %s", self.get_extra_info("peername"), exc)
            self._push()  # the alert
            self._transport.close()
            return
        self._ready = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._push()
        self._protocol.connection_made(self)
        self._deliver()  # application data that came with the handshake's end

    def _handshake_timed_out(self) -> None:
        self._timer = None
        if not self._ready:
            logger.debug("%s: no TLS handshake within %g s", self.get_extra_info("peername"), self._timeout)
            self._transport.abort()

    def _deliver(self) -> None:
        chunks = []
        end = False
        while True:
            try:
                chunk = self._obj.read(_READ_SIZE)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:  # close_notify
                end = True
                break
            except ssl.SSLError as exc:
                logger.debug("%s: TLS error: %s", self.get_extra_info("peername"), exc)
                self._transport.abort()
                return
            if not chunk:  # close_notify (read() returns b"" for it)
                end = True
                break
            chunks.append(chunk)
        self._push()
        if chunks and not self._transport.is_closing():
            self._protocol.data_received(b"".join(chunks))
        if end:
            self.close()  # answer the client's close_notify with ours

    def _push(self) -> None:
        data = self._out.read()
        if data:
            self._transport.write(data)

    # -- transport interface (called by the protocol) --------------------------

    def write(self, data: bytes | memoryview) -> None:
        if not data or self._transport.is_closing():
            return
        self._obj.write(data)
        self._push()

    def writelines(self, pieces: list[bytes]) -> None:
        for data in pieces:
            if data and not self._transport.is_closing():
                self._obj.write(data)
        self._push()

    def close(self) -> None:
        if self._ready and not self._transport.is_closing():
            try:
                self._obj.unwrap()  # close_notify
            except ssl.SSLError:
                pass
            self._push()
        self._transport.close()

    def abort(self, *, reset: bool = False) -> None:
        self._transport.abort(reset=reset)

    def is_closing(self) -> bool:
        return bool(self._transport.is_closing())

    def get_write_buffer_size(self) -> int:
        return int(self._transport.get_write_buffer_size())

    def pause_reading(self) -> None:
        self._transport.pause_reading()

    def resume_reading(self) -> None:
        self._transport.resume_reading()

    def is_reading(self) -> bool:
        return bool(self._transport.is_reading())

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "ssl_object":
            return self._obj
        if name == "peercert":
            return self._obj.getpeercert() if self._ready else default
        return self._transport.get_extra_info(name, default) if self._transport is not None else default
