"""Sans-IO guest agent (QGA) client protocol.

qemu-ga sends no greeting and keeps whatever a previous client left in its
input buffer, so a session starts with a *resync*: a 0xFF byte (which resets
qemu-ga's parser and earns one stray-byte error reply) followed by
``guest-sync-delimited`` with a random id.  qemu-ga answers that with a 0xFF
byte and then ``{"return": <id>}``; everything before that 0xFF is stale
and skipped.

::

    proto = QGAClientProtocol()
    sid, data = proto.sync()                        # b"\\xff{...sync...}"
    sock.sendall(data)
    proto.receive_data(sock.recv(4096))
    proto.next_event()                              # Synced(sid)
    cid, data = proto.send_command("guest-ping")
    sock.sendall(data)                              # ... Return(cid, ...)

qemu-ga runs one command at a time, so commands are serialised: one is in
flight, the rest are held until its reply arrives.  A command given up by
its caller leaves the channel in an unknown state, so the next command is
preceded by a fresh resync automatically.  States: ``UNSYNCED`` ->
``SYNCING`` -> ``READY`` -> ``CLOSED``.
"""

from __future__ import annotations

import enum
import random
from typing import Any

from ..errors import ProtocolError, StateError
from ..framing.wire import SYNC, PendingFrame, encode
from ._client import _END, MAX_DEPTH, MAX_FRAME_SIZE, MAX_TOKENS, ClientProtocolBase, check_command
from .events import ConnectionClosed, ErrorReply, ProtocolFault, Return, Synced

__all__ = [
    "State",
    "QGAClientProtocol",
    "NO_REPLY_COMMANDS",
    "expects_reply",
    "Synced",
    "Return",
    "ErrorReply",
    "ProtocolFault",
    "ConnectionClosed",
]

#: Commands qemu-ga does not answer when they succeed (``success-response``
#: false in its schema); an error is still answered.
NO_REPLY_COMMANDS = frozenset({"guest-shutdown", "guest-suspend-disk", "guest-suspend-ram", "guest-suspend-hybrid"})


def expects_reply(command: str, expect_reply: bool | None = None) -> bool:
    """Whether ``command`` is answered on success (``expect_reply`` overrides)."""
    return command not in NO_REPLY_COMMANDS if expect_reply is None else bool(expect_reply)


class State(enum.Enum):
    UNSYNCED = "unsynced"
    SYNCING = "syncing"
    READY = "ready"
    CLOSED = "closed"


def _sync_frame(sync_id: int) -> bytes:
    return b"\xff" + encode({"execute": "guest-sync-delimited", "arguments": {"id": sync_id}})


class QGAClientProtocol(ClientProtocolBase):
    """The client side of one guest agent channel, without I/O.

    The limits bound what the agent may send, as for the QMP protocol.
    """

    __slots__ = ("state", "sync_id", "_sync_wanted", "_saw_sync", "_no_reply", "_shutdown_sent")

    def __init__(
        self, *, max_frame_size: int = MAX_FRAME_SIZE, max_depth: int = MAX_DEPTH, max_tokens: int = MAX_TOKENS
    ) -> None:
        super().__init__(max_frame_size=max_frame_size, max_depth=max_depth, max_tokens=max_tokens)
        self.max_in_flight = 1
        self.state = State.UNSYNCED
        #: The id of the resync in progress (or last completed).
        self.sync_id: int | None = None
        self._sync_wanted: int | None = None  # id of a resync waiting for the slot
        self._saw_sync = False  # a 0xFF arrived since the last item
        self._no_reply: set[int] = set()
        self._shutdown_sent = False

    # -- sending ----------------------------------------------------------

    def sync(self, sync_id: int | None = None) -> tuple[int, bytes]:
        """Start a resync; return its id and the bytes to write now.

        A resync already in progress is restarted with a new id (its answer,
        should it still come, is skipped).  Otherwise the resync waits for
        the command in flight, if any, to be answered.
        """
        if self._eof:
            raise StateError("the connection is closed")
        sid = random.getrandbits(53) if sync_id is None else int(sync_id)
        if self.state is State.SYNCING:
            self._start_sync(sid)
        else:
            self.state = State.UNSYNCED
            self._sync_wanted = sid
            self._pump()
        return sid, self.data_to_send()

    def send_command(
        self,
        command: str,
        arguments: dict[str, Any] | None = None,
        *,
        expect_reply: bool | None = None,
    ) -> tuple[int, bytes]:
        """Queue a command; return its id and the bytes to write now.

        ``expect_reply=False`` (the default for :data:`NO_REPLY_COMMANDS`)
        sends it without waiting for an answer: a later error reply is
        dropped.
        """
        check_command(command, arguments)
        cid = self._allocate()
        if arguments is None:
            msg = {"execute": command, "id": cid}
        else:
            msg = {"execute": command, "arguments": arguments, "id": cid}
        frame = encode(msg)
        self._check_size(command, frame)
        if not expects_reply(command, expect_reply):
            self._no_reply.add(cid)
        if command == "guest-shutdown":
            self._shutdown_sent = True
        self._held[cid] = (command, frame)
        self._pump()
        return cid, self.data_to_send()

    def abandon(self, cid: Any) -> None:
        """Give up on a command or on the resync with this id.

        The channel is then in an unknown state (qemu-ga may answer late or
        have lost input), so the next command is preceded by a resync.
        """
        if self.state is State.SYNCING and cid == self.sync_id:
            self._unsync()
        elif cid == self._sync_wanted:
            self._sync_wanted = None
            self._pump()
        elif cid in self._pending:
            del self._pending[cid]
            self._abandoned[cid] = False  # its slot is freed right here
            self._unsync()
        else:
            self._no_reply.discard(cid)
            super().abandon(cid)

    def _unsync(self) -> None:
        self.state = State.UNSYNCED
        self._in_flight = 0
        self._pump()

    def _start_sync(self, sid: int) -> None:
        self.state = State.SYNCING
        self.sync_id = sid
        self._sync_wanted = None
        self._saw_sync = False
        self._in_flight = 1
        self._abandoned.clear()  # their late replies precede the sync reply
        self._out.append(_sync_frame(sid))

    def _pump(self) -> None:
        """Send what may go now: a resync first when one is needed."""
        held = self._held
        while self._in_flight == 0 and not self._eof:
            if self.state is State.UNSYNCED:
                if self._sync_wanted is not None:
                    self._start_sync(self._sync_wanted)
                elif held:
                    self._start_sync(random.getrandbits(53))
                return
            if not held:
                return
            cid = next(iter(held))
            command, frame = held.pop(cid)
            self._out.append(frame)
            if cid in self._no_reply:
                self._no_reply.discard(cid)
                self._abandoned[cid] = False
            else:
                self._pending[cid] = command
                self._in_flight = 1

    def _slot_freed(self) -> None:
        self._in_flight -= 1
        self._pump()

    # -- receiving --------------------------------------------------------

    @property
    def closed_by(self) -> str | None:
        """``"guest-shutdown"`` once it was sent, else None."""
        return "guest-shutdown" if self._shutdown_sent else None

    def _closed_now(self) -> list[Any]:
        self.state = State.CLOSED
        return self._end(self._shutdown_sent)

    def _handle(self, items: list[Any]) -> list[Any]:
        out: list[Any] = []
        for item in items:
            if type(item) is PendingFrame or item is _END:
                if self._special(item, items, out):
                    break
            elif self.state is State.SYNCING:
                self._syncing(item, out)
            elif type(item) is dict and ("return" in item or "error" in item):
                self._reply(item, out)
            elif item is not SYNC:  # 0xFF also precedes a user's guest-sync-delimited reply
                out.append(self._fault_for(item))
        return out

    def _syncing(self, item: Any, out: list[Any]) -> None:
        """Skip everything up to the 0xFF that precedes our sync reply."""
        if item is SYNC:
            self._saw_sync = True
            return
        if type(item) is dict and "QMP" in item:  # QEMU's greeting: not an agent at all
            out.append(ProtocolFault(ProtocolError("a QMP greeting arrived: this is a QMP monitor"), item))
        if self._saw_sync and type(item) is dict:
            value = item.get("return")
            if type(value) is int and value == self.sync_id:
                self.state = State.READY
                self._in_flight = 0
                out.append(Synced(value))
                self._pump()
                return
        self._saw_sync = False
