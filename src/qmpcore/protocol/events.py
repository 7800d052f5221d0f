"""What the sans-IO client protocols report, one class per thing on the wire.

Every event is a small object with ``__slots__`` (no per-instance dict):
cheap to create on the hot path (one per reply or event), equal only to an
event of the same class with the same values (``Negotiated(x) !=
Synced(x)``, and never equal to a tuple), readable in a repr, picklable, and
read-only and hashable when made of immutable values.  :class:`ProtocolEvent` is their common base.
The user-facing :class:`Event` is also a read-only mapping over the message
as received (``ev["event"]``, ``ev["data"]``, ``ev.get("timestamp")``).
"""

from __future__ import annotations

from collections.abc import Iterator, KeysView, Mapping
from typing import Any, NamedTuple

from ..errors import CommandError, ProtocolError

__all__ = [
    "ProtocolEvent",
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

_setattr = object.__setattr__


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


class ProtocolEvent:
    """Base of everything a client protocol's :meth:`next_event` returns.

    Subclasses list their fields in ``__slots__`` (in constructor order);
    equality, repr and pickling follow from that list.  Treat the fields as
    read-only: the events made only of immutable values (:class:`Negotiated`,
    :class:`Synced`, :class:`ConnectionClosed`) enforce it and are hashable.
    """

    __slots__ = ()

    def _values(self) -> tuple[Any, ...]:
        names: tuple[str, ...] = self.__slots__
        return tuple([getattr(self, name) for name in names])

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return self._values() == other._values()

    def __ne__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return self._values() != other._values()

    # Defining __eq__ leaves __hash__ None: events holding messages (dicts)
    # are not hashable; see _Frozen.

    def __repr__(self) -> str:
        names: tuple[str, ...] = self.__slots__
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in names)
        return f"{type(self).__name__}({fields})"

    def __reduce__(self) -> Any:
        return (type(self), self._values())


class _Frozen(ProtocolEvent):
    """An event made of immutable values: read-only and hashable.

    (The events that carry a message -- a dict -- are neither, so that
    building one on the hot path costs no more than a named tuple did.)
    """

    __slots__ = ()

    def __hash__(self) -> int:
        return hash((type(self).__name__, *self._values()))

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"{type(self).__name__} is read-only")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"{type(self).__name__} is read-only")


class Greeting(ProtocolEvent):
    """The server's ``{"QMP": ...}`` greeting: negotiation mode begins."""

    __slots__ = ("version", "capabilities", "raw")
    version: VersionInfo
    #: Capabilities the server offers (``("oob",)`` for QEMU 7.2).
    capabilities: tuple[str, ...]
    raw: dict[str, Any]

    def __init__(self, version: VersionInfo, capabilities: tuple[str, ...], raw: dict[str, Any]) -> None:
        self.version = version
        self.capabilities = capabilities
        self.raw = raw


class Negotiated(_Frozen):
    """``qmp_capabilities`` succeeded: command mode begins."""

    __slots__ = ("capabilities",)
    #: Capabilities now enabled.
    capabilities: tuple[str, ...]

    def __init__(self, capabilities: tuple[str, ...]) -> None:
        _setattr(self, "capabilities", capabilities)


class Return(ProtocolEvent):
    """A successful reply to the command with this ``id``."""

    __slots__ = ("id", "command", "value")
    id: Any
    command: str
    value: Any

    def __init__(self, id: Any, command: str, value: Any) -> None:
        self.id = id
        self.command = command
        self.value = value


class ErrorReply(ProtocolEvent):
    """An ``error`` reply to the command with this ``id``."""

    __slots__ = ("id", "command", "error_class", "desc", "raw")
    id: Any
    command: str
    error_class: str
    desc: str
    raw: dict[str, Any]

    def __init__(self, id: Any, command: str, error_class: str, desc: str, raw: dict[str, Any]) -> None:
        self.id = id
        self.command = command
        self.error_class = error_class
        self.desc = desc
        self.raw = raw

    def exception(self) -> CommandError:
        """The :class:`~qmpcore.CommandError` a client raises for this reply
        (the subclass for its QEMU error class, such as ``DeviceNotFound``)."""
        return CommandError.from_reply(self.error_class, self.desc, self.command, self.raw)


class Event(ProtocolEvent, Mapping[str, Any]):
    """An asynchronous QMP event such as ``STOP`` or ``SHUTDOWN``.

    Read it through attributes (``name``, ``data``, ``timestamp`` in
    seconds, ``raw``) or as a read-only mapping over the message as
    received: ``ev["event"]``, ``ev["data"]``, ``ev["timestamp"]``
    (QEMU's ``{"seconds", "microseconds"}``), ``ev.get(key)``, ``key in ev``.
    ``data`` and ``timestamp`` are read from ``raw`` when asked for, so an
    event costs little to create (floods are mostly dropped unread).
    """

    __slots__ = ("name", "raw")
    name: str
    #: The whole message as received.
    raw: dict[str, Any]

    def __init__(self, name: str, raw: dict[str, Any]) -> None:
        self.name = name
        self.raw = raw

    @property
    def data(self) -> dict[str, Any]:
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

    # -- the mapping: the message as received ---------------------------------

    def __getitem__(self, key: str) -> Any:
        return self.raw[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.raw)

    def __len__(self) -> int:
        return len(self.raw)

    def __contains__(self, key: object) -> bool:
        return key in self.raw

    def get(self, key: str, default: Any = None) -> Any:
        """``ev[key]``, or ``default`` when the message has no such member."""
        return self.raw.get(key, default)

    def keys(self) -> KeysView[str]:
        """The message's member names."""
        return self.raw.keys()

    # Mapping's own __eq__ would make an Event equal to a dict: by type and value instead.
    __eq__ = ProtocolEvent.__eq__
    __ne__ = ProtocolEvent.__ne__
    __hash__ = None  # type: ignore[assignment]  # a message (dict) is not hashable


class Synced(_Frozen):
    """The guest agent answered ``guest-sync-delimited`` with this id."""

    __slots__ = ("id",)
    id: int

    def __init__(self, id: int) -> None:
        _setattr(self, "id", id)


class ProtocolFault(ProtocolEvent):
    """The server sent something that breaks the protocol.

    The connection stays usable; ``error`` says what was wrong and ``item``
    is the offending frame (a value, a :class:`~qmpcore.FrameError` or
    :data:`~qmpcore.SYNC`).
    """

    __slots__ = ("error", "item")
    error: ProtocolError
    item: Any

    def __init__(self, error: ProtocolError, item: Any) -> None:
        self.error = error
        self.item = item


class ConnectionClosed(_Frozen):
    """The byte stream ended."""

    __slots__ = ("truncated", "expected")
    #: Bytes of an unfinished frame left when the stream ended (0 if none).
    truncated: int
    #: True when the end was announced (``quit`` sent or ``SHUTDOWN`` seen),
    #: so a close, even a reset, is no error.
    expected: bool

    def __init__(self, truncated: int, expected: bool) -> None:
        _setattr(self, "truncated", truncated)
        _setattr(self, "expected", expected)
