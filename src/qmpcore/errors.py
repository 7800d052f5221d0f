"""Every exception qmpcore raises, shared by both framer implementations.

The hierarchy says who broke what:

* :class:`FrameError` -- bytes on the wire that do not form a valid frame.
  The framer *returns* these as items (it never raises on stream content).
* :class:`ProtocolError` -- the peer broke QMP itself (bad greeting, reply
  for an unknown id, a parse error reported by the server, ...).
* :class:`CommandError` -- the server answered a command with ``error``;
  one subclass per QEMU error class (:class:`GenericError`,
  :class:`CommandNotFound`, :class:`DeviceNotFound`, ...), built by
  :meth:`CommandError.from_reply`.
* :class:`ConnectError` -- a connect function failed; also an
  :class:`OSError` (``errno`` kept), naming the address with a hint.
* :class:`ConnectionLost` -- the connection went away; every pending command
  fails with it at once.
* :class:`TimeoutError` -- a wait ran out of time.  It is also the builtin
  :class:`TimeoutError` (and so :class:`asyncio.TimeoutError`).
"""

from __future__ import annotations

import asyncio
import builtins
import errno as _errno
from typing import Any

__all__ = [
    "QMPError",
    "FrameError",
    "ProtocolError",
    "CommandError",
    "GenericError",
    "CommandNotFound",
    "DeviceEncrypted",
    "DeviceNotActive",
    "DeviceNotFound",
    "KVMMissingCap",
    "ConnectError",
    "SocketNotFound",
    "ConnectionRefused",
    "SocketPermissionError",
    "ConnectTimeout",
    "WrongProtocol",
    "HandshakeLost",
    "ConnectionLost",
    "TimeoutError",
    "StateError",
    "EventOverflow",
    "SchemaPathError",
    "QMPWarning",
    "DeprecatedWarning",
    "UnstableWarning",
    "TLSError",
]


class QMPError(Exception):
    """Base class of every qmpcore error."""


class FrameError(QMPError):
    """A malformed, oversized or undecodable frame, or a run of them.

    ``reason`` uses QEMU's own wording (``"JSON parse error, expecting
    value"``, ``"JSON nesting depth limit exceeded"``, ...), so a server can
    answer exactly as QEMU does.  ``offset`` is the byte offset in the stream
    where the problem was found.  ``sync`` is true when the error is the one
    a 0xFF byte produces (only reported by a framer in ``strict`` mode).

    Framers report consecutive errors as one: ``count`` says how many errors
    it stands for and ``nbytes`` how many bytes of the stream they cover,
    from ``offset`` to the end of the last one (a lexical error covers its
    bad byte, an undecodable frame the whole frame).  In ``strict`` mode only
    errors QEMU would answer identically are joined, so a server answers
    ``count`` times; see :mod:`qmpcore.framing.rules`.
    """

    __slots__ = ("reason", "offset", "sync", "count", "nbytes")

    def __init__(
        self, reason: str, offset: int = 0, sync: bool = False, count: int = 1, nbytes: int | None = None
    ) -> None:
        self.args = (reason, offset)  # what super().__init__ would set, for less per error
        self.reason = reason
        self.offset = offset
        self.sync = sync
        self.count = count
        self.nbytes = count if nbytes is None else nbytes

    def __str__(self) -> str:
        if self.count == 1:
            return f"{self.reason} (at byte {self.offset})"
        return f"{self.reason} (at byte {self.offset}; {self.count} errors in {self.nbytes} bytes)"

    def __repr__(self) -> str:
        extra = ", sync=True" if self.sync else ""
        if self.count != 1:
            extra += f", count={self.count}"
        if self.nbytes != self.count:
            extra += f", nbytes={self.nbytes}"
        return f"FrameError({self.reason!r}, {self.offset}{extra})"

    def _key(self) -> tuple[str, int, bool, int, int]:
        return (self.reason, self.offset, self.sync, self.count, self.nbytes)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, FrameError):
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __reduce__(self) -> Any:
        return (FrameError, self._key())


class ProtocolError(QMPError):
    """The peer did not follow the protocol (the remote side is to blame)."""


class StateError(QMPError):
    """An operation was attempted in a state that does not allow it
    (the local side is to blame, e.g. ``execute`` before connecting)."""


class CommandError(QMPError):
    """The server answered a command with an ``error`` reply.

    ``error_class`` and ``desc`` are QEMU's ``class`` and ``desc``;
    ``command`` is the command that failed and ``reply`` the whole reply.
    Each QEMU error class has a subclass (``except DeviceNotFound:``);
    :meth:`from_reply` picks it, and a class QEMU does not define stays a
    plain :class:`CommandError`.
    """

    #: The QEMU error class a subclass stands for ("" on the base class).
    qemu_class = ""

    def __init__(
        self,
        error_class: str,
        desc: str,
        command: str | None = None,
        reply: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(error_class, desc)
        self.error_class = error_class
        self.desc = desc
        self.command = command
        self.reply = reply

    @classmethod
    def from_reply(
        cls,
        error_class: str,
        desc: str,
        command: str | None = None,
        reply: dict[str, Any] | None = None,
    ) -> CommandError:
        """The exception for an error reply: the subclass for ``error_class``
        (:class:`DeviceNotFound`, ...), or :class:`CommandError` for a class
        QEMU does not define."""
        return _BY_QEMU_CLASS.get(error_class, CommandError)(error_class, desc, command, reply)

    def __str__(self) -> str:
        where = f"{self.command}: " if self.command else ""
        return f"{where}{self.error_class}: {self.desc}"

    def __reduce__(self) -> Any:
        return (type(self), (self.error_class, self.desc, self.command, self.reply))


class GenericError(CommandError):
    """QEMU's ``GenericError``: most failures of a command."""

    qemu_class = "GenericError"


class CommandNotFound(CommandError):
    """QEMU's ``CommandNotFound``: no such command, or not before
    ``qmp_capabilities`` (negotiation mode)."""

    qemu_class = "CommandNotFound"


class DeviceEncrypted(CommandError):
    """``DeviceEncrypted``: sent by QEMU releases before 2.x only."""

    qemu_class = "DeviceEncrypted"


class DeviceNotActive(CommandError):
    """QEMU's ``DeviceNotActive``: a device has failed to become active."""

    qemu_class = "DeviceNotActive"


class DeviceNotFound(CommandError):
    """QEMU's ``DeviceNotFound``: the device named in the arguments does not exist."""

    qemu_class = "DeviceNotFound"


class KVMMissingCap(CommandError):
    """QEMU's ``KVMMissingCap``: a KVM capability the command needs is missing."""

    qemu_class = "KVMMissingCap"


_BY_QEMU_CLASS: dict[str, type[CommandError]] = {
    cls.qemu_class: cls
    for cls in (GenericError, CommandNotFound, DeviceEncrypted, DeviceNotActive, DeviceNotFound, KVMMissingCap)
}


class ConnectionLost(QMPError, ConnectionError):
    """The connection closed or broke; pending commands fail with this."""


# Before Python 3.11, asyncio's TimeoutError is a class of its own: be both,
# so code catching either (as asyncio code written for 3.10 does) sees ours.
_TIMEOUT_BASES: tuple[type, ...] = (builtins.TimeoutError,)
if asyncio.TimeoutError is not builtins.TimeoutError:  # pragma: no cover - Python 3.10
    _TIMEOUT_BASES += (asyncio.TimeoutError,)


class TimeoutError(QMPError, *_TIMEOUT_BASES):  # type: ignore[misc]
    """A wait exceeded its timeout (also a builtin ``TimeoutError``, and
    ``asyncio.TimeoutError`` on every Python version)."""


class EventOverflow(QMPError):
    """Events were dropped because the consumer fell behind (policy "raise")."""

    def __init__(self, dropped: int) -> None:
        super().__init__(f"event queue overflowed: {dropped} event(s) dropped")
        self.dropped = dropped


class SchemaPathError(QMPError, ValueError):
    """A schema path (libvirt's query language) that cannot be answered: a
    malformed path, or a schema that does not follow QEMU's rules."""


class QMPWarning(UserWarning):
    """Base class of the warnings qmpcore issues (``warnings`` module)."""


class DeprecatedWarning(QMPWarning):
    """A command, member, enum value or type the server's schema marks
    ``deprecated`` was used."""


class UnstableWarning(QMPWarning):
    """A command, member, enum value or type the server's schema marks
    ``unstable`` was used."""


class TLSError(QMPError, ConnectionError):
    """A TLS connection could not be set up.

    ``reason`` says which side refused what: ``"unknown_ca"`` (the server's
    certificate is not signed by a CA the client trusts), ``"name_mismatch"``
    (it is not issued for the name connected to), ``"refused"`` (the server
    rejected the client's certificate, e.g. QEMU's ``verify-peer`` or
    ``tls-authz``) or ``"handshake"`` (any other TLS failure).
    """

    def __init__(self, message: str, reason: str = "handshake") -> None:
        super().__init__(message)
        self.reason = reason

    def __str__(self) -> str:
        return str(self.args[0])

    def __reduce__(self) -> Any:
        return (TLSError, (str(self.args[0]), self.reason))


class ConnectError(QMPError, OSError):
    """A connect function could not set up the connection.

    Also an :class:`OSError`: ``errno`` is the socket's (``ENOENT``,
    ``ECONNREFUSED``, ...) or ``ETIMEDOUT``/``EPROTO`` for a server that did
    not answer or answered in another protocol.  ``address`` is where the
    connection went (a :class:`~qmpcore.client.address.Address`), ``hint``
    says what usually fixes it; ``str()`` is one line naming both.  The
    subclasses are also the exception the failure used to raise
    (:class:`FileNotFoundError`, :class:`ConnectionRefusedError`,
    :class:`PermissionError`, :class:`~qmpcore.TimeoutError`,
    :class:`ProtocolError`, :class:`ConnectionLost`), so older ``except``
    clauses still match.
    """

    #: errno used when the failure has none of its own.
    default_errno: int | None = None

    def __init__(self, message: str, *, address: Any = None, hint: str = "", errno: int | None = None) -> None:
        code = self.default_errno if errno is None else errno
        if code is None:
            OSError.__init__(self, message)
        else:
            OSError.__init__(self, code, message)
        self.message = message
        self.address = address
        self.hint = hint

    @property
    def detail(self) -> str:
        """What happened and the hint, without the address."""
        return f"{self.message} ({self.hint})" if self.hint else self.message

    def __str__(self) -> str:
        return self.detail if self.address is None else f"{self.address}: {self.detail}"

    def __reduce__(self) -> Any:
        return (_rebuild_connect_error, (type(self), self.message, self.address, self.hint, self.errno))


def _rebuild_connect_error(cls: type[ConnectError], message: str, address: Any, hint: str, code: int | None) -> Any:
    return cls(message, address=address, hint=hint, errno=code)


class SocketNotFound(ConnectError, FileNotFoundError):
    """No socket at the path: the server is not started, or uses another path."""

    default_errno = _errno.ENOENT


class ConnectionRefused(ConnectError, ConnectionRefusedError):
    """Nothing listens at the address (a stale socket file, or a closed port)."""

    default_errno = _errno.ECONNREFUSED


class SocketPermissionError(ConnectError, PermissionError):
    """The socket (or its directory) does not let this user connect."""

    default_errno = _errno.EACCES


class ConnectTimeout(ConnectError, TimeoutError):
    """Connected, but the server did not greet or answer within the timeout
    (a QMP monitor another client holds, or the wrong kind of socket)."""

    default_errno = _errno.ETIMEDOUT


class WrongProtocol(ConnectError, ProtocolError):
    """The server speaks another protocol (a QMP monitor given to a guest
    agent connect function, or garbage instead of a greeting)."""

    default_errno = _errno.EPROTO


class HandshakeLost(ConnectError, ConnectionLost):
    """The server closed the connection before the handshake ended."""

    default_errno = _errno.ECONNRESET
