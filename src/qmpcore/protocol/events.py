"""What the sans-IO client protocols report, one class per thing on the wire.

Every class is a small immutable named tuple: cheap to create on the hot
path (one per reply or event), comparable, printable and picklable.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from ..errors import CommandError, ProtocolError

__all__ = [
    "VersionInfo",
    "Greeting",
    "Negotiated",
    "Return",
    "ErrorReply",
    "Event",
    "Synced",
    "ProtocolFault",
    "ConnectionClosed",
]


class VersionInfo(NamedTuple):
    """QEMU's version from the greeting; compares like ``(major, minor, micro)``."""

    major: int
    minor: int
    micro: int
    package: str = ""

    @classmethod
    def from_qmp(cls, version: Any) -> VersionInfo:
        """Build from the greeting's ``version`` member (missing or odd
        members read as 0 and "")."""
        qemu = version.get("qemu", {}) if isinstance(version, dict) else {}
        if not isinstance(qemu, dict):
            qemu = {}
        package = version.get("package", "") if isinstance(version, dict) else ""

        def number(key: str) -> int:
            value = qemu.get(key, 0)
            return value if type(value) is int else 0

        return cls(number("major"), number("minor"), number("micro"), package if isinstance(package, str) else "")


class Greeting(NamedTuple):
    """The server's ``{"QMP": ...}`` greeting: negotiation mode begins."""

    version: VersionInfo
    #: Capabilities the server offers (``("oob",)`` for QEMU 7.2).
    capabilities: tuple[str, ...]
    raw: dict


class Negotiated(NamedTuple):
    """``qmp_capabilities`` succeeded: command mode begins."""

    #: Capabilities now enabled.
    capabilities: tuple[str, ...]


class Return(NamedTuple):
    """A successful reply to the command with this ``id``."""

    id: Any
    command: str
    value: Any


class ErrorReply(NamedTuple):
    """An ``error`` reply to the command with this ``id``."""

    id: Any
    command: str
    error_class: str
    desc: str
    raw: dict

    def exception(self) -> CommandError:
        """The :class:`~qmpcore.CommandError` a client raises for this reply."""
        return CommandError(self.error_class, self.desc, self.command, self.raw)


class Event(NamedTuple):
    """An asynchronous QMP event such as ``STOP`` or ``SHUTDOWN``.

    ``data`` and ``timestamp`` are read from ``raw`` when asked for, so an
    event costs little to create (floods are mostly dropped unread).
    """

    name: str
    #: The whole message as received.
    raw: dict

    @property
    def data(self) -> dict:
        """The event's ``data`` member (``{}`` when there is none)."""
        data = self.raw.get("data")
        return data if type(data) is dict else {}

    @property
    def timestamp(self) -> float | None:
        """Seconds since the epoch (QEMU's ``seconds`` + ``microseconds``),
        or None when the server sent no usable timestamp."""
        ts = self.raw.get("timestamp")
        try:
            return ts["seconds"] + ts["microseconds"] / 1e6  # type: ignore[index,no-any-return]
        except (TypeError, KeyError, OverflowError):
            return None


class Synced(NamedTuple):
    """The guest agent answered ``guest-sync-delimited`` with this id."""

    id: int


class ProtocolFault(NamedTuple):
    """The server sent something that breaks the protocol.

    The connection stays usable; ``error`` says what was wrong and ``item``
    is the offending frame (a value, a :class:`~qmpcore.FrameError` or
    :data:`~qmpcore.SYNC`).
    """

    error: ProtocolError
    item: Any


class ConnectionClosed(NamedTuple):
    """The byte stream ended."""

    #: Bytes of an unfinished frame left when the stream ended (0 if none).
    truncated: int
    #: True when the end was announced (``quit`` sent or ``SHUTDOWN`` seen),
    #: so a close, even a reset, is no error.
    expected: bool
