"""Drive the sans-IO server protocols with client bytes from a fuzz input.

An input is a small header followed by what a client writes::

    byte 0      flags: bit0 guest agent instead of QMP, bit1 pretty output,
                bit2 small limits, bit3 answer with errors, bit4 answer
                every request late (after the next chunk)
    byte 1      number of chunk lengths that follow (mod 16)
    ...         that many chunk lengths (0-255; reused cyclically)
    rest        the client's bytes

The server protocol answers every request it hands out (at once, or after
the next chunk), and reading stops while it says ``reading_paused``, as the
embedded server does.  The check fails on any exception, on a server that
stops reading with nothing left to answer (a deadlock), on unfinished
requests at the end, on more buffered than the frame limit plus the
current chunk, and on output that is not a sequence of well-formed QMP
messages (greeting, return, error or event; 0xFF only before a guest
agent's sync reply).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from qmpcore import SYNC, Framer
from qmpcore.protocol.qga_server import QGAServerProtocol
from qmpcore.protocol.qmp_server import QMPServerProtocol
from qmpcore.server import SimulatedGuestAgent, SimulatedVM

__all__ = ["check", "make_input"]

QGA, PRETTY, SMALL, ERRORS, LATE = 0x01, 0x02, 0x04, 0x08, 0x10
_VM_COMMANDS = SimulatedVM().commands
_AGENT_COMMANDS = SimulatedGuestAgent().commands
_KINDS = ("QMP", "return", "error", "event")


def make_input(stream: bytes, *, flags: int = 0, splits: Sequence[int] = ()) -> bytes:
    """Build a fuzz input (used for seeds and regression files)."""
    return bytes([flags, len(splits), *splits]) + stream


def _chunks(splits: bytes, data: bytes) -> list[bytes]:
    sizes = splits if any(splits) else (*splits, len(data) or 1)
    out, pos, i = [], 0, 0
    while pos < len(data):
        out.append(data[pos : pos + sizes[i % len(sizes)]])
        pos += sizes[i % len(sizes)]
        i += 1
    return out


class _Run:
    def __init__(self, flags: int) -> None:
        limits = {"max_frame_size": 512, "max_depth": 8, "max_tokens": 64} if flags & SMALL else {}
        if flags & QGA:
            self.proto: Any = QGAServerProtocol(_AGENT_COMMANDS, **limits)
            self.proto.connection_made()
        else:
            self.proto = QMPServerProtocol(_VM_COMMANDS, pretty=bool(flags & PRETTY), **limits)
        self.limit = limits.get("max_frame_size", 64 << 20)
        self.errors = bool(flags & ERRORS)
        self.late = bool(flags & LATE)
        self.open: list[Any] = []  # requests handed out, not answered yet
        self.output = bytearray()

    def answer(self, request: Any) -> None:
        if self.errors and len(self.output) % 2:
            self.proto.send_error(request, "GenericError", f"no {request.command}")
        else:
            self.proto.send_return(request, {"command": request.command})

    def serve(self, answer_all: bool) -> None:
        """Take the released requests; answer them (or the older ones)."""
        proto = self.proto
        while True:
            released = []
            while (request := proto.next_event()) is not None:
                released.append(request)
            if self.late and not answer_all:
                due, self.open = self.open, released
            else:
                due, self.open = self.open + released, []
            if not due:
                break
            for request in due:
                self.answer(request)
        self.output += proto.data_to_send()

    def feed(self, chunk: bytes) -> None:
        proto = self.proto
        while proto.reading_paused:
            if not self.open and proto.pending == 0:
                raise AssertionError("the server stopped reading with nothing left to answer")
            self.serve(answer_all=True)
        proto.receive_data(chunk)
        if proto.buffered > self.limit + len(chunk):
            raise AssertionError(f"buffered {proto.buffered} > limit {self.limit} + chunk {len(chunk)}")
        self.serve(answer_all=False)

    def finish(self) -> None:
        self.serve(answer_all=True)
        if self.open or self.proto.pending:
            raise AssertionError(f"{len(self.open) or self.proto.pending} request(s) never finished")
        self.check_output()

    def check_output(self) -> None:
        qga = isinstance(self.proto, QGAServerProtocol)
        previous: Any = None
        for item in Framer().feed(bytes(self.output) + b"\n"):
            if item is SYNC:
                if not qga:
                    raise AssertionError("0xFF in QMP output")
            elif type(item) is not dict or sum(kind in item for kind in _KINDS) != 1:
                raise AssertionError(f"malformed output message {item!r:.300}")
            elif previous is SYNC and "return" not in item:
                raise AssertionError(f"0xFF before {item!r:.300}")
            previous = item
        if previous is SYNC:
            raise AssertionError("output ends with 0xFF")


def check(data: bytes) -> None:
    """Run one fuzz input; raise AssertionError when the server misbehaves."""
    flags = data[0] if data else 0
    count = data[1] % 16 if len(data) > 1 else 0
    run = _Run(flags)
    for chunk in _chunks(data[2 : 2 + count], data[2 + count :]):
        run.feed(chunk)
    run.finish()
