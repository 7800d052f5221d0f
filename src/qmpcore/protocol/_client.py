"""Command bookkeeping shared by the QMP and QGA client protocols.

Ids are small integers allocated here; every command sent is remembered
until its reply arrives.  A command whose caller gave up is *abandoned*: its
reply, if it ever comes, is dropped without a word.  Commands beyond the
server's in-band queue length are *held* here and released, in order, as
replies free slots.
"""

from __future__ import annotations

import reprlib
from collections import deque
from typing import Any

from ..errors import FrameError, ProtocolError, StateError
from ..framing import Framer
from ..framing.wire import SYNC, PendingFrame
from .events import ConnectionClosed, ErrorReply, ProtocolEvent, ProtocolFault, Return

__all__ = ["ClientProtocolBase", "check_command", "describe", "text_of", "MAX_FRAME_SIZE", "MAX_DEPTH", "MAX_TOKENS"]

_MISS: Any = object()
#: Stands for the end of the stream among items held behind a PendingFrame.
_END: Any = object()
#: Items held behind no PendingFrame (shared, never changed: stalling gives
#: a connection a list of its own).
_NO_ITEMS: list[Any] = []
#: QEMU refuses messages over 64 MiB; such a command could never be answered.
MAX_COMMAND_SIZE = 64 << 20
#: Default framer limits for what a server may send (QEMU's own for its input):
#: bytes of one message, nesting depth, JSON tokens of one message.
MAX_FRAME_SIZE = 64 << 20
MAX_DEPTH = 1024
MAX_TOKENS = 2 << 20
#: Abandoned ids kept (oldest forgotten first): bounds memory when a server
#: never answers out-of-band commands.
MAX_ABANDONED = 4096


def check_command(command: Any, arguments: Any) -> None:
    """Reject what no server could accept, before anything is allocated."""
    if not isinstance(command, str):
        raise TypeError(f"command name must be a str, not {type(command).__name__}")
    if arguments is not None and not isinstance(arguments, dict):
        raise TypeError(f"arguments must be a dict or None, not {type(arguments).__name__}")


_short = reprlib.Repr()
_short.maxlevel = 4
_short.maxstring = _short.maxother = 80


def describe(item: Any) -> str:
    """Short printable form of a frame for error messages (bounded work,
    however large or deeply nested the frame)."""
    try:
        return _short.repr(item)
    except ValueError:  # an integer too long to print
        return f"<unprintable {type(item).__name__}>"


def text_of(value: Any) -> str:
    """A message member as text: itself if a string, else its short form."""
    return value if isinstance(value, str) else describe(value)


class ClientProtocolBase:
    """Ids, pending/held/abandoned commands and reply routing.

    The I/O shape is h11's: :meth:`receive_data` takes bytes from the
    server, :meth:`next_event` returns what they completed, one
    :class:`~qmpcore.protocol.events.ProtocolEvent` at a time (None when more
    bytes are needed); ``send_command`` returns the bytes to write and
    :meth:`data_to_send` the bytes released later.  :meth:`feed` is the
    batch form for the hot path: bytes in, the list of events out.
    """

    # Subclasses list their own attributes in __slots__ too (a protocol
    # object per connection: no per-instance dict).
    __slots__ = (
        "max_in_flight",
        "_framer",
        "_next_id",
        "_pending",
        "_pending_oob",
        "_held",
        "_abandoned",
        "_in_flight",
        "_out",
        "_eof",
        "_ready",
        "_stalled",
        "_after",
        "late_replies",
        "resolved",
        "buffered_before",
    )

    def __init__(
        self, *, max_frame_size: int = MAX_FRAME_SIZE, max_depth: int = MAX_DEPTH, max_tokens: int = MAX_TOKENS
    ) -> None:
        #: In-band commands sent ahead of their replies; the rest are held.
        self.max_in_flight = 8
        self._framer = Framer(max_frame_size, max_depth, max_tokens=max_tokens)
        self._next_id = 0
        self._pending: dict[Any, str] = {}  # sent in-band, awaiting reply
        self._pending_oob: dict[Any, str] = {}  # sent out-of-band
        self._held: dict[Any, tuple[str, bytes]] = {}  # FIFO, waiting for a slot
        self._abandoned: dict[Any, bool] = {}  # id -> holds an in-band slot
        self._in_flight = 0  # in-band slots in use, abandoned ones included
        self._out: list[bytes] = []  # frames released from _held
        self._eof = False
        self._ready: deque[ProtocolEvent] | None = None  # for next_event(), made on first use
        # A large frame decoded a step at a time, and the items after it.
        self._stalled: PendingFrame | None = None
        self._after: list[Any] = _NO_ITEMS
        #: Replies dropped because their caller had given up.
        self.late_replies = 0
        #: Replies the last :meth:`feed_resolving` call settled itself.
        self.resolved = 0
        #: What was buffered before the last :meth:`feed_resolving` call.
        self.buffered_before = 0

    # -- receiving, h11's shape ------------------------------------------

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Feed bytes from the server; ``b""`` means the stream ended.

        The events they complete are then returned by :meth:`next_event`.
        """
        events = self._receive(data)
        if self._ready is None:
            self._ready = deque(events)
        else:
            self._ready.extend(events)

    def next_event(self) -> ProtocolEvent | None:
        """The next event completed by :meth:`receive_data`, or None when
        more bytes are needed."""
        ready = self._ready
        return ready.popleft() if ready else None

    def events(self) -> list[ProtocolEvent]:
        """Every event :meth:`next_event` would return, at once."""
        if not self._ready:
            return []
        out = list(self._ready)
        self._ready.clear()
        return out

    def feed(self, data: bytes | bytearray | memoryview) -> list[Any]:
        """:meth:`receive_data` and :meth:`events` in one call: bytes in,
        the events they complete out (after any not yet taken)."""
        out = self._receive(data)
        if self._ready:
            out[:0] = self.events()
        return out

    def feed_resolving(self, data: bytes | bytearray | memoryview, waiters: dict[Any, Any]) -> list[Any]:
        """:meth:`feed` for a client that keeps a waiter per command id.

        Replies that come first in ``data`` (before any other event) settle
        their waiter in ``waiters`` right here (popped; ``set_result(value)``
        unless it is done already) instead of becoming :class:`Return`
        events; :attr:`resolved` then counts those settled.  What the rest
        of ``data`` completes is returned, in order, as :meth:`feed` does.
        A subclass that has no such shortcut returns everything as events.
        """
        self.resolved = 0
        self.buffered_before = self._framer.buffered
        return self.feed(data)

    def _receive(self, data: bytes | bytearray | memoryview) -> list[Any]:
        """The events ``data`` completes; ``b""`` (the end of the stream)
        gives ``[ConnectionClosed(...)]``, once."""
        if self._stalled is not None:  # they wait for the frame being decoded
            self._after.extend(self._framer.feed(data) if data else (_END,))
            return []
        if not data:
            return self._closed_now()
        return self._handle(self._framer.feed(data))

    def _handle(self, items: list[Any]) -> list[Any]:
        """The events framer items make (a subclass's dispatch)."""
        raise NotImplementedError

    def _closed_now(self) -> list[Any]:
        """The stream ended: the state says so, the events report it."""
        raise NotImplementedError

    def _special(self, item: Any, items: list[Any], out: list[Any]) -> bool:
        """Items that are not frames: a PendingFrame stops ``items`` there
        until it is decoded (True: stop); the end of the stream, when it
        came while one was decoded."""
        if type(item) is PendingFrame:
            self._stalled = item
            at = items.index(item)  # (by identity first: one list scan)
            self._after = items[at + 1 :]
            return True
        out.extend(self._closed_now())  # _END
        return False

    # -- large frames, a step at a time ------------------------------------

    def defer_frames(self, size: int) -> None:
        """Decode frames over ``size`` bytes a step at a time (0: never).

        While such a frame is decoded, :attr:`decoding` is true and each
        :meth:`step` call does a bounded slice of the work (about
        ``qmpcore.framing.rules.DEFER_STEP`` bytes); the events of that
        frame and of any bytes received meanwhile come from the step that
        finishes it, in stream order.  An event loop calls :meth:`step`
        once per turn so that one large frame never holds it for long.
        """
        self._framer.defer = size

    @property
    def decoding(self) -> bool:
        """True while a large frame is decoded: call :meth:`step`."""
        return self._stalled is not None

    @property
    def decoding_bytes(self) -> int:
        """The size of the frame being decoded (0 when none)."""
        stalled = self._stalled
        return stalled.nbytes if stalled is not None else 0

    def step(self) -> list[Any]:
        """Decode one more slice of the large frame (see :meth:`defer_frames`);
        the events completed when it is done (and those after it)."""
        stalled = self._stalled
        if stalled is None or not stalled.step():
            return []
        items = self._after
        items.insert(0, stalled.result)
        self._stalled = None
        self._after = _NO_ITEMS
        out = self._handle(items)
        if self._ready:
            out[:0] = self.events()
        return out

    # -- introspection ----------------------------------------------------

    @property
    def in_flight(self) -> int:
        """In-band commands sent and not yet answered."""
        return self._in_flight

    @property
    def held(self) -> int:
        """Commands waiting client-side for a free server slot."""
        return len(self._held)

    @property
    def closed(self) -> bool:
        """True once the end of the stream was received."""
        return self._eof

    @property
    def commands_issued(self) -> int:
        """Commands given an id so far (sent, held or abandoned)."""
        return self._next_id

    def pending_command(self, cid: Any) -> str | None:
        """The name of command ``cid`` while it awaits its reply, else None."""
        command = self._pending.get(cid)
        return command if command is not None else self._pending_oob.get(cid)

    @property
    def buffered(self) -> int:
        """Bytes received and held for a frame not yet complete."""
        return int(self._framer.buffered)

    @property
    def max_frame_size(self) -> int:
        """The largest frame accepted from the server, in bytes."""
        return int(self._framer.max_frame_size)

    def drop_oldest(self) -> tuple[Any, str] | None:
        """Give up the command a reply dropped for its size most likely answered.

        That is the oldest pending in-band command (QEMU answers those in
        order), or the oldest out-of-band one when no in-band command is
        pending.  Returns its ``(id, command)``, or None when nothing waits.
        A reply that still comes for it is dropped as late.
        """
        pending, in_band = self._pending, True
        if not pending:
            pending, in_band = self._pending_oob, False
        cid = next(iter(pending), None)
        if cid is None:
            return None
        command = pending.pop(cid)
        self._abandoned[cid] = False  # its slot is freed here, not by a late reply
        if in_band:
            self._slot_freed()
        return cid, command

    @property
    def closed_by(self) -> str | None:
        """The command or event that announced the end of the connection
        (``"quit"``, ``"SHUTDOWN"``, ``"guest-shutdown"``), or None."""
        return None

    # -- sending ----------------------------------------------------------

    def data_to_send(self) -> bytes:
        """Frames released since the last call (held commands whose turn came)."""
        out = self._out
        if not out:
            return b""
        self._out = []
        return b"".join(out)

    def abandon(self, cid: Any) -> None:
        """Forget command ``cid``; a reply that comes later is dropped silently.

        A held command is simply never sent.  Unknown ids are ignored, so a
        caller may abandon a command that was answered in the meantime.
        """
        if self._held.pop(cid, None) is not None:
            return
        if self._pending.pop(cid, _MISS) is not _MISS:
            self._abandoned[cid] = True
        elif self._pending_oob.pop(cid, _MISS) is not _MISS:
            self._abandoned[cid] = False
        else:
            return
        if len(self._abandoned) > MAX_ABANDONED:
            if self._abandoned.pop(next(iter(self._abandoned))):
                self._slot_freed()

    def _allocate(self) -> int:
        if self._eof:
            raise StateError("the connection is closed")
        self._next_id += 1
        return self._next_id

    @staticmethod
    def _check_size(command: str, frame: bytes) -> None:
        if len(frame) > MAX_COMMAND_SIZE:
            raise ValueError(f"{command}: command is {len(frame)} bytes, over QEMU's 64 MiB limit")

    def _submit(self, cid: int, command: str, frame: bytes, hold: bool) -> bytes:
        """Send now if a slot is free (or ``hold`` is false), else hold."""
        if len(frame) > MAX_COMMAND_SIZE:
            self._check_size(command, frame)
        if not hold or self._in_flight < self.max_in_flight:
            self._in_flight += 1
            self._pending[cid] = command
            return frame
        self._held[cid] = (command, frame)
        return b""

    def _slot_freed(self) -> None:
        self._in_flight -= 1
        self._release()

    def _release(self) -> None:
        """Send held commands while slots are free."""
        held = self._held
        while held and self._in_flight < self.max_in_flight:
            cid = next(iter(held))
            command, frame = held.pop(cid)
            self._in_flight += 1
            self._pending[cid] = command
            self._out.append(frame)

    # -- receiving --------------------------------------------------------

    def _reply(self, msg: dict[str, Any], out: list[Any]) -> None:
        """Route a ``return``/``error`` message to the command it answers."""
        mid = msg.get("id", _MISS)
        if mid is _MISS:
            error = msg.get("error")
            if isinstance(error, dict):
                text = "server reported an error for no command: {}: {}".format(
                    text_of(error.get("class")),
                    text_of(error.get("desc")),
                )
            else:
                text = "reply without id"
            out.append(ProtocolFault(ProtocolError(text), msg))
            return
        if type(mid) is not int:  # 1.0 and true equal 1 but are not our ids
            out.append(self._unknown(mid, msg))
            return
        command = self._pending.pop(mid, _MISS)
        if command is _MISS:
            command = self._pending_oob.pop(mid, _MISS)
            if command is _MISS:
                self._unmatched(mid, msg, out)
                return
        else:
            self._slot_freed()
        if "return" in msg:
            out.append(Return(mid, command, msg["return"]))
        else:
            out.append(self._error_reply(mid, command, msg))

    def _error_reply(self, mid: Any, command: str, msg: dict[str, Any]) -> ErrorReply:
        error = msg.get("error")
        if isinstance(error, dict):
            return ErrorReply(mid, command, text_of(error.get("class", "")), text_of(error.get("desc", "")), msg)
        return ErrorReply(mid, command, "", text_of(error), msg)

    @staticmethod
    def _unknown(mid: Any, msg: dict[str, Any]) -> ProtocolFault:
        return ProtocolFault(ProtocolError(f"reply for unknown id {describe(mid)}"), msg)

    def _unmatched(self, mid: int, msg: dict[str, Any], out: list[Any]) -> None:
        in_band = self._abandoned.pop(mid, _MISS)
        if in_band is _MISS:
            out.append(self._unknown(mid, msg))
            return
        self.late_replies += 1
        if in_band:
            self._slot_freed()

    @staticmethod
    def _fault_for(item: Any) -> ProtocolFault:
        """The fault for a frame that is not a message at all."""
        if isinstance(item, FrameError):
            text = f"malformed frame from server: {item}"
        elif item is SYNC:
            text = "unexpected 0xFF byte from server"
        else:
            text = f"unexpected message from server: {describe(item)}"
        return ProtocolFault(ProtocolError(text), item)

    def _end(self, expected: bool) -> list[Any]:
        """The stream ended: report it once."""
        if self._eof:
            return []
        self._eof = True
        return [ConnectionClosed(self._framer.buffered, expected)]
