"""TLS for TCP connections: checking the options, naming what failed, and
QEMU 7.2's record quirk.

QEMU serves QMP over TLS (``-object tls-creds-x509,...`` and ``-chardev
socket,...,tls-creds=``).  QEMU 7.2 reads its monitor one byte at a time and
only polls the socket, not the bytes gnutls has already decrypted: a
command sent as one TLS record is read up to its first byte and then waits
for more bytes on the socket, which never come.  Sending the last byte of
each write as a record of its own keeps one record in the socket until
everything before it has been read, so every message is read to its end
(later QEMUs fixed this in ``io/channel-tls.c``).  Both clients do this on
every TLS connection; it costs one small record per message.
"""

from __future__ import annotations

import asyncio
import errno
import socket
import ssl as _ssl
import sys
import threading
import time
from typing import Any

from ..errors import ConnectionLost, TLSError
from .address import Address

__all__ = [
    "check_tls",
    "is_server_context",
    "tls_error",
    "refused_error",
    "LastByteRecords",
    "TLSSocket",
    "handshake_sync",
]

# OpenSSL's X509_V_ERR_* codes for "the peer's certificate is not for this name".
_NAME_MISMATCH = {62, 64}  # HOSTNAME_MISMATCH, IP_ADDRESS_MISMATCH
# ... and for "no trusted CA signed it".
_UNKNOWN_CA = {2, 18, 19, 20, 21, 27}
# Alerts a server sends when it refuses the client's certificate.
_REFUSED_ALERTS = (
    "ALERT_UNKNOWN_CA",
    "ALERT_BAD_CERTIFICATE",
    "ALERT_CERTIFICATE_REQUIRED",
    "ALERT_CERTIFICATE_UNKNOWN",
    "ALERT_ACCESS_DENIED",
    "ALERT_HANDSHAKE_FAILURE",
)
_READ_SIZE = 1 << 16
_MAX_RECORD = 17 * 1024  # a TLS record's payload and overhead, at most


def check_tls(address: Address, ssl: _ssl.SSLContext | None, server_hostname: str | None) -> str | None:
    """Check ``ssl=``/``server_hostname=``; return the name to verify the server against.

    TLS needs a TCP address; the name defaults to the address's host.
    """
    if ssl is None:
        if server_hostname is not None:
            raise TypeError("server_hostname= needs ssl= (an ssl.SSLContext)")
        return None
    if not isinstance(ssl, _ssl.SSLContext):
        raise TypeError(f"ssl must be an ssl.SSLContext, not {type(ssl).__name__}")
    if address.is_unix:
        raise ValueError(f"{address}: TLS (ssl=) is only for TCP addresses; a unix socket is local and takes none")
    if server_hostname is not None:
        return server_hostname
    if is_server_context(ssl):
        return None  # this end is the TLS server: nothing to verify a name against
    return str(address.sockaddr[0])


def is_server_context(context: _ssl.SSLContext | None) -> bool:
    """True for a context made for the server side (``Purpose.CLIENT_AUTH``, ``PROTOCOL_TLS_SERVER``)."""
    return context is not None and context.protocol == _ssl.PROTOCOL_TLS_SERVER


def refused_error(address: Address) -> TLSError:
    """The server hung up after the handshake, before greeting: it refused our certificate."""
    return TLSError(
        f"{address}: TLS: the server refused this client's certificate (it closed the connection after "
        "the TLS handshake, before its greeting). QEMU with verify-peer=on needs a client certificate "
        "signed by the CA in its tls-creds directory, and with tls-authz= one whose distinguished name "
        "the authz object allows: pass it with SSLContext.load_cert_chain() (--tls-cert/--tls-key)",
        "refused",
    )


def tls_error(exc: BaseException, address: Address, server_hostname: str | None) -> TLSError | None:
    """The :class:`TLSError` that names what failed in ``exc``, or None if it is no TLS failure."""
    if isinstance(exc, TLSError):
        return exc
    if isinstance(exc, _ssl.SSLCertVerificationError):
        code = exc.verify_code
        detail = exc.verify_message or str(exc)
        if code in _NAME_MISMATCH:
            return TLSError(
                f"{address}: TLS: the server's certificate is not issued for {server_hostname!r} ({detail}); "
                "connect with the name the certificate gives (server_hostname= / --tls-server-name)",
                "name_mismatch",
            )
        if code in _UNKNOWN_CA:
            return TLSError(
                f"{address}: TLS: the server's certificate is not signed by a CA this client trusts ({detail}); "
                "load the CA that signed it (QEMU: ca-cert.pem in its tls-creds directory) with "
                "SSLContext.load_verify_locations() (--tls-ca)",
                "unknown_ca",
            )
        return TLSError(f"{address}: TLS: the server's certificate was rejected: {detail}", "handshake")
    if isinstance(exc, _ssl.SSLError):
        reason = getattr(exc, "reason", None) or ""
        if any(alert in reason for alert in _REFUSED_ALERTS):
            error = refused_error(address)
            error.args = (f"{error.args[0]} [{reason}]",)
            return error
        return TLSError(f"{address}: TLS handshake failed: {exc}", "handshake")
    return None


class LastByteRecords(asyncio.Transport):
    """A TLS transport that sends the last byte of each write as a record of its own.

    Everything but :meth:`write` goes to the wrapped transport.
    """

    __slots__ = ("_inner",)

    def __init__(self, inner: asyncio.Transport) -> None:
        super().__init__()
        self._inner = inner

    if sys.version_info >= (3, 11):

        def write(self, data: Any) -> None:
            if len(data) > 1:
                view = memoryview(data)
                self._inner.writelines((view[:-1], view[-1:]))  # one record each, one socket write
            else:
                self._inner.write(data)

    else:  # pragma: no cover - Python 3.10: writelines joins; each write is its own record

        def write(self, data: Any) -> None:
            if len(data) > 1:
                view = memoryview(data)
                self._inner.write(view[:-1])
                self._inner.write(view[-1:])
            else:
                self._inner.write(data)

    def writelines(self, list_of_data: Any) -> None:
        self.write(b"".join(list_of_data))

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._inner.get_extra_info(name, default)

    def is_closing(self) -> bool:
        return self._inner.is_closing()

    def close(self) -> None:
        self._inner.close()

    def abort(self) -> None:
        self._inner.abort()

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._inner.set_protocol(protocol)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._inner.get_protocol()

    def is_reading(self) -> bool:
        return self._inner.is_reading()

    def pause_reading(self) -> None:
        self._inner.pause_reading()

    def resume_reading(self) -> None:
        self._inner.resume_reading()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._inner.set_write_buffer_limits(high, low)

    def get_write_buffer_size(self) -> int:
        return self._inner.get_write_buffer_size()

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._inner.get_write_buffer_limits()

    def can_write_eof(self) -> bool:
        return False

    def write_eof(self) -> None:
        raise NotImplementedError("TLS connections cannot half-close")


class TLSSocket:
    """A connected TCP socket carrying TLS, for the blocking client.

    ``send`` and ``recv_into`` take and give plain bytes, with the flags and
    errors of a non-blocking socket, so the client's reading and writing
    code is the same with and without TLS.  Records go through memory
    buffers; the SSL object is touched under a lock and never while waiting
    for the socket, so one thread may read while another writes (writes
    themselves are serialised by the client).  Everything else (``fileno``,
    ``setblocking``, ``shutdown``, ...) is the socket's.
    """

    def __init__(self, sock: socket.socket, obj: _ssl.SSLObject, incoming: _ssl.MemoryBIO, outgoing: _ssl.MemoryBIO):
        self._sock = sock
        self._obj = obj
        self._in = incoming
        self._out = outgoing
        self._lock = threading.Lock()
        self._pending: memoryview = memoryview(b"")  # records not yet on the wire
        self._last_sealed = False  # the caller's last byte is in _pending already
        self._plain = b""  # decrypted bytes the caller's buffer had no room for
        self._eof = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)

    def fileno(self) -> int:
        return self._sock.fileno()

    def close(self) -> None:
        self._sock.close()

    # -- writing -----------------------------------------------------------------

    def _seal(self, data: memoryview) -> memoryview:
        with self._lock:
            self._obj.write(data)
            return memoryview(self._out.read())

    def _drain(self, flags: int) -> None:
        """Send the pending records; raises BlockingIOError if the socket is full."""
        while self._pending:
            sent = self._sock.send(self._pending, flags)
            self._pending = self._pending[sent:]

    def _drained(self, flags: int) -> bool:
        try:
            self._drain(flags)
        except (BlockingIOError, InterruptedError):
            return False
        return True

    def send(self, data: Any, flags: int = 0) -> int:
        """Encrypt and send ``data``; return how many of its bytes were taken.

        Everything but the last byte goes at once, the last byte in a
        record of its own (QEMU 7.2), so a write ends where a record ends.
        Raises BlockingIOError when the socket takes nothing.
        """
        view = memoryview(data)
        if not view:
            return 0
        self._drain(flags)  # earlier records first; BlockingIOError: nothing taken
        if self._last_sealed:  # the retried last byte went out with those records
            self._last_sealed = False
            return 1
        if len(view) > 1:
            self._pending = self._seal(view[:-1])
            self._drained(flags)
            return len(view) - 1
        self._pending = self._seal(view)
        if self._drained(flags):
            return 1
        self._last_sealed = True
        raise BlockingIOError(errno.EAGAIN, "TLS record partly sent")

    def sendall(self, data: Any) -> None:
        view = memoryview(data)
        while view:
            view = view[self.send(view) :]

    def sendmsg(self, *args: Any) -> int:
        raise OSError("file descriptors cannot be passed over TLS")

    # -- reading -----------------------------------------------------------------

    def recv_into(self, buffer: Any, nbytes: int = 0, flags: int = 0) -> int:
        """Receive and decrypt into ``buffer``; 0 at the end of the stream.

        A partial record gives nothing yet: BlockingIOError when not
        blocking, else it waits for the rest.  Raises :class:`ssl.SSLError`
        (an OSError) for TLS failures and alerts.
        """
        size = min(nbytes or len(buffer), len(buffer))
        while True:
            if self._plain:
                chunk, self._plain = self._plain[:size], self._plain[size:]
                buffer[: len(chunk)] = chunk
                return len(chunk)
            if self._eof:
                return 0
            # Room for a partial record held from the last read, plus this read.
            data = self._sock.recv(max(1024, size - _MAX_RECORD), flags)
            plain = self._decrypt(data) if data else b""
            if not data:
                self._eof = True
            if plain:
                self._plain = plain
                continue
            if self._eof:
                return 0
            if flags or not self._sock.getblocking():
                raise BlockingIOError(errno.EAGAIN, "partial TLS record")

    def _decrypt(self, data: bytes) -> bytes:
        chunks = []
        with self._lock:
            self._in.write(data)
            while True:
                try:
                    chunk = self._obj.read(_READ_SIZE)
                except _ssl.SSLWantReadError:
                    break
                except _ssl.SSLZeroReturnError:
                    self._eof = True
                    break
                if not chunk:  # close_notify (read() returns b"" for it)
                    self._eof = True
                    break
                chunks.append(chunk)
        return b"".join(chunks)


def handshake_sync(
    sock: socket.socket,
    context: _ssl.SSLContext,
    server_hostname: str | None,
    address: Address,
    deadline: float | None,
) -> tuple[TLSSocket, bytes]:
    """Run the client side of the TLS handshake on a connected blocking socket.

    Returns the socket to use from then on and any application bytes that
    arrived with the end of the handshake.  Raises :class:`TLSError` naming what failed,
    ``TimeoutError`` (the builtin) past ``deadline``.
    """
    incoming, outgoing = _ssl.MemoryBIO(), _ssl.MemoryBIO()
    obj = context.wrap_bio(incoming, outgoing, server_side=False, server_hostname=server_hostname)
    try:
        while True:
            try:
                obj.do_handshake()
                done = True
            except _ssl.SSLWantReadError:
                done = False
            out = outgoing.read()
            if out:
                sock.settimeout(_remaining(deadline))
                sock.sendall(out)
            if done:
                break
            sock.settimeout(_remaining(deadline))
            data = sock.recv(_READ_SIZE)
            if data:
                incoming.write(data)
            else:
                raise ConnectionLost(f"{address}: the server closed the connection during the TLS handshake")
    except (_ssl.SSLError, ConnectionLost) as exc:
        error = tls_error(exc, address, server_hostname)
        if error is None:
            raise
        raise error from exc
    wrapped = TLSSocket(sock, obj, incoming, outgoing)
    return wrapped, wrapped._decrypt(b"")


def _remaining(deadline: float | None) -> float | None:
    if deadline is None:
        return None
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("TLS handshake")
    return left
