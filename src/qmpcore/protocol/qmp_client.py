"""Sans-IO QMP client protocol: bytes in, events out, commands to bytes.

::

    proto = QMPClientProtocol()
    proto.receive_data(sock.recv(65536))
    while (ev := proto.next_event()) is not None:      # Greeting(...)
        ...
    cid, data = proto.negotiate(oob=True)               # qmp_capabilities
    sock.sendall(data)
    ...                                                 # Negotiated, Return
    cid, data = proto.send_command("query-status")
    sock.sendall(data)                                  # Return(cid, ...)
    sock.sendall(proto.data_to_send())                  # held commands, if any

``proto.feed(data)`` does ``receive_data`` and returns the list of events
at once (the clients' hot path).

States: ``AWAITING_GREETING`` -> ``NEGOTIATION`` (greeting received; QEMU
answers everything but ``qmp_capabilities`` with ``CommandNotFound``) ->
``READY`` (command mode) -> ``CLOSED`` (end of stream).

With ``oob`` enabled, QEMU queues at most 8 in-band commands and then stops
reading its socket, which would leave an ``exec-oob`` command stuck behind
the rest; so in-band commands beyond 8 are held here until replies free a
slot.  Once negotiation ended without ``oob``, QEMU runs one command at a
time and nothing can overtake, so commands go out at once (holding them
would only cost a write per reply).
"""

from __future__ import annotations

import enum
from typing import Any

from ..errors import StateError
from ..framing.wire import PendingFrame, encode
from ._client import _END, MAX_DEPTH, MAX_FRAME_SIZE, MAX_TOKENS, ClientProtocolBase, check_command
from .events import (
    ConnectionClosed,
    ErrorReply,
    Event,
    Greeting,
    Negotiated,
    ProtocolFault,
    Return,
    VersionInfo,
)

__all__ = [
    "State",
    "QMPClientProtocol",
    "VersionInfo",
    "Greeting",
    "Negotiated",
    "Return",
    "ErrorReply",
    "Event",
    "ProtocolFault",
    "ConnectionClosed",
]


class State(enum.Enum):
    AWAITING_GREETING = "awaiting-greeting"
    NEGOTIATION = "negotiation"
    READY = "ready"
    CLOSED = "closed"


# Globals are cheaper than enum lookups on the hot paths.
_AWAITING_GREETING = State.AWAITING_GREETING
_NEGOTIATION = State.NEGOTIATION
_READY = State.READY

#: Greetings shared by every connection that receives an identical one (a
#: fleet of QEMUs of one version holds one); only plain, small ones are kept.
_GREETINGS: dict[tuple[VersionInfo, tuple[str, ...]], Greeting] = {}
_MAX_GREETINGS = 64
_MAX_GREETING_TEXT = 256

#: ``{"execute":NAME,"id":`` per command name (as text), for commands
#: without arguments: their frame is this, the id and ``}``, encoded.
_PREFIXES: dict[str, str] = {}
_MAX_PREFIXES = 1024
_MAX_NAME = 128


def _shared_greeting(msg: dict[str, Any], version: VersionInfo, caps: tuple[str, ...]) -> Greeting:
    """The greeting ``msg`` as a :class:`Greeting`, shared when an identical one was seen."""
    key = (version, caps)
    known = _GREETINGS.get(key)
    if known is not None and known.raw == msg:
        return known
    greeting = Greeting(version, caps, msg)
    if (
        len(_GREETINGS) < _MAX_GREETINGS
        and max(version[:3]) < 1 << 31
        and len(version.package) <= _MAX_GREETING_TEXT
        and len(caps) <= 16
        and all(len(c) <= 64 for c in caps)
        and msg == _plain_greeting(version, caps)  # nothing else in it: bounded
    ):
        _GREETINGS[key] = greeting
    return greeting


def _plain_greeting(version: VersionInfo, caps: tuple[str, ...]) -> dict[str, Any]:
    qemu = {"major": version.major, "minor": version.minor, "micro": version.micro}
    return {"QMP": {"version": {"qemu": qemu, "package": version.package}, "capabilities": list(caps)}}


def _prefix(command: str) -> str:
    """The start of the frame of ``command`` without arguments, up to its id."""
    prefix = _PREFIXES.get(command)
    if prefix is None:
        prefix = encode({"execute": command, "id": 0})[: -len(b"0}\r\n")].decode()
        if len(_PREFIXES) < _MAX_PREFIXES:
            _PREFIXES[command] = prefix
    return prefix


class QMPClientProtocol(ClientProtocolBase):
    """The client side of one QMP connection, without I/O.

    ``max_frame_size``, ``max_depth`` and ``max_tokens`` bound what the
    server may send (QEMU's own limits by default).
    """

    __slots__ = ("state", "greeting", "enabled", "_caps_requests", "_quit_sent", "_shutdown_seen")

    def __init__(
        self, *, max_frame_size: int = MAX_FRAME_SIZE, max_depth: int = MAX_DEPTH, max_tokens: int = MAX_TOKENS
    ) -> None:
        super().__init__(max_frame_size=max_frame_size, max_depth=max_depth, max_tokens=max_tokens)
        self.state = State.AWAITING_GREETING
        #: The :class:`Greeting`, once received (connections that receive
        #: identical greetings share one: do not modify it).
        self.greeting: Greeting | None = None
        #: Capabilities enabled by negotiation.
        self.enabled: tuple[str, ...] = ()
        # id -> capabilities it enables; made by the first qmp_capabilities.
        self._caps_requests: dict[int, tuple[str, ...]] | None = None
        self._quit_sent = False
        self._shutdown_seen = False

    @property
    def closed_by(self) -> str | None:
        """``"quit"`` once ``quit`` was sent, ``"SHUTDOWN"`` once that event
        arrived (the end of the connection is then expected), else None."""
        return "quit" if self._quit_sent else "SHUTDOWN" if self._shutdown_seen else None

    def _error_reply(self, mid: Any, command: str, msg: dict[str, Any]) -> ErrorReply:
        if command == "quit":  # refused (a proxy's policy, say): the server goes on
            self._quit_sent = False
        return super()._error_reply(mid, command, msg)

    @property
    def oob(self) -> bool:
        """True when out-of-band execution was negotiated."""
        return "oob" in self.enabled

    # -- sending ----------------------------------------------------------

    def send_command(
        self,
        command: str,
        arguments: dict[str, Any] | None = None,
        *,
        oob: bool = False,
        hold: bool = True,
    ) -> tuple[int, bytes]:
        """Encode a command; return its id and the bytes to write now.

        The bytes are empty when the command is held for a free slot; it is
        then released through :meth:`data_to_send`.  ``oob=True`` sends
        ``exec-oob`` (only after ``oob`` was negotiated); ``hold=False`` sends
        even when the server's queue is full (for a frame that must go out
        together with file descriptors).
        """
        if type(command) is not str or (arguments is not None and type(arguments) is not dict):
            check_command(command, arguments)  # raises, unless str or dict subclasses
        state = self.state
        if state is not _READY:
            if state is not _NEGOTIATION:
                if state is State.CLOSED:
                    raise StateError("the connection is closed")
                raise StateError("no greeting received yet")
            if command == "qmp_capabilities" and not oob:
                cid, frame = self._encode(command, arguments, oob)
                enable = (arguments or {}).get("enable") or ()
                if self._caps_requests is None:
                    self._caps_requests = {}
                self._caps_requests[cid] = tuple(enable) if isinstance(enable, (list, tuple)) else ()
                return cid, self._submit(cid, command, frame, hold)
        if oob:
            if "oob" not in self.enabled:
                raise StateError("out-of-band execution was not negotiated")
        elif arguments is None and len(command) <= _MAX_NAME:  # the usual command: no dict, no encoder call
            cid = self._next_id = self._next_id + 1
            prefix = _PREFIXES.get(command) or _prefix(command)
            frame = f"{prefix}{cid}}}\r\n".encode()
            if command == "quit":
                self._quit_sent = True
            if self._in_flight < self.max_in_flight:  # _submit(), inline
                self._in_flight += 1
                self._pending[cid] = command
                return cid, frame
            return cid, self._submit(cid, command, frame, hold)
        cid, frame = self._encode(command, arguments, oob)
        if command == "quit":
            self._quit_sent = True
        if oob:
            self._check_size(command, frame)
            self._pending_oob[cid] = command
            return cid, frame
        return cid, self._submit(cid, command, frame, hold)

    def _encode(self, command: str, arguments: dict[str, Any] | None, oob: bool) -> tuple[int, bytes]:
        """A new id and the frame of the command."""
        cid = self._allocate()
        if arguments is None:
            msg = {"exec-oob" if oob else "execute": command, "id": cid}
        else:
            msg = {"exec-oob" if oob else "execute": command, "arguments": arguments, "id": cid}
        return cid, encode(msg)

    def negotiate(self, oob: bool = False) -> tuple[int, bytes]:
        """Send ``qmp_capabilities``, enabling ``oob`` if wanted and offered."""
        if self.state is not State.NEGOTIATION:
            raise StateError(f"cannot negotiate in state {self.state.value}")
        assert self.greeting is not None
        if oob and "oob" in self.greeting.capabilities:
            return self.send_command("qmp_capabilities", {"enable": ["oob"]})
        return self.send_command("qmp_capabilities")

    # -- receiving --------------------------------------------------------

    def _closed_now(self) -> list[Any]:
        self.state = State.CLOSED
        return self._end(self._quit_sent or self._shutdown_seen)

    def feed_resolving(self, data: bytes | bytearray | memoryview, waiters: dict[Any, Any]) -> list[Any]:
        framer = self._framer
        self.buffered_before = framer.buffered
        if self._stalled is not None or self._ready or not data:
            self.resolved = 0
            return self.feed(data)
        return self._handle(framer.feed(data), waiters)

    def _handle(self, items: list[Any], waiters: dict[Any, Any] | None = None) -> list[Any]:
        out: list[Any] = []
        pending = self._pending
        resolved = 0
        for item in items:
            if type(item) is dict:
                if "return" in item and "event" not in item and not self._caps_requests:
                    # The hot path, straight from the framer's output: the
                    # reply to a pending in-band command (_reply, inline).
                    mid = item.get("id")
                    if type(mid) is int:
                        command = pending.pop(mid, None)
                        if command is not None:
                            self._in_flight -= 1
                            if self._held:
                                self._release()
                            if waiters is not None and not out:
                                # Nothing came before it: settle its waiter, no
                                # event (a gone or done waiter: dropped, as the
                                # client drops a Return nobody waits for).
                                waiter = waiters.pop(mid, None)
                                if waiter is not None and not waiter.done():
                                    waiter.set_result(item["return"])
                                    resolved += 1
                                continue
                            out.append(Return(mid, command, item["return"]))
                            continue
                    self._reply(item, out)
                elif "event" in item:
                    out.append(self._event(item))
                elif "return" in item or "error" in item:
                    if not self._caps_requests:
                        self._reply(item, out)
                    else:
                        self._negotiation_reply(item, out)
                elif "QMP" in item:
                    self._greeting(item, out)
                else:
                    out.append(self._fault_for(item))
            elif type(item) is PendingFrame or item is _END:
                if self._special(item, items, out):
                    break
            else:
                out.append(self._fault_for(item))
        if waiters is not None:
            self.resolved = resolved
        return out

    def _event(self, msg: dict[str, Any]) -> Any:
        name = msg["event"]
        if type(name) is not str or self.state is _AWAITING_GREETING:
            return self._fault_for(msg)
        if name == "SHUTDOWN":
            self._shutdown_seen = True
        return Event(name, msg)

    def _greeting(self, msg: dict[str, Any], out: list[Any]) -> None:
        body = msg["QMP"]
        if self.state is not State.AWAITING_GREETING or not isinstance(body, dict):
            out.append(self._fault_for(msg))
            return
        caps = body.get("capabilities")
        version = VersionInfo.from_qmp(body.get("version"))
        greeting = _shared_greeting(
            msg, version, tuple(c for c in caps if isinstance(c, str)) if isinstance(caps, list) else ()
        )
        self.greeting = greeting
        self.state = State.NEGOTIATION
        out.append(greeting)

    def _negotiation_reply(self, msg: dict[str, Any], out: list[Any]) -> None:
        """A reply while ``qmp_capabilities`` is outstanding."""
        before = len(out)
        self._reply(msg, out)
        if len(out) == before:
            return
        reply = out[-1]
        if type(reply) is not Return and type(reply) is not ErrorReply:
            return
        assert self._caps_requests is not None
        enable = self._caps_requests.pop(reply.id, None)
        if enable is not None and type(reply) is Return:
            self._caps_requests = None  # negotiation ended
            self.state = State.READY
            self.enabled = enable
            if "oob" not in enable:
                self.max_in_flight = 1 << 62  # nothing to hold back
                self._release()
            out.insert(before, Negotiated(enable))
