"""Every exception qmpcore raises, shared by both framer implementations.

The hierarchy says who broke what:

* :class:`FrameError` -- bytes on the wire that do not form a valid frame.
  The framer *returns* these as items (it never raises on stream content).
* :class:`ProtocolError` -- the peer broke QMP itself (bad greeting, reply
  for an unknown id, a parse error reported by the server, ...).
* :class:`CommandError` -- the server answered a command with ``error``.
* :class:`ConnectionLost` -- the connection went away; every pending command
  fails with it at once.
* :class:`TimeoutError` -- a wait ran out of time.  It is also the builtin
  :class:`TimeoutError` (and so :class:`asyncio.TimeoutError`).
"""

from __future__ import annotations

import asyncio
import builtins
from typing import Any

__all__ = [
    "QMPError",
    "FrameError",
    "ProtocolError",
    "CommandError",
    "ConnectionLost",
    "TimeoutError",
    "StateError",
    "EventOverflow",
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
    """

    def __init__(
        self,
        error_class: str,
        desc: str,
        command: str | None = None,
        reply: dict | None = None,
    ) -> None:
        super().__init__(error_class, desc)
        self.error_class = error_class
        self.desc = desc
        self.command = command
        self.reply = reply

    def __str__(self) -> str:
        where = f"{self.command}: " if self.command else ""
        return f"{where}{self.error_class}: {self.desc}"


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
