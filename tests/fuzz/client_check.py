"""Drive a sans-IO client protocol with server bytes taken from a fuzz input.

The input is a little program.  Byte 0 picks the protocol (bit0: guest
agent instead of QMP); every following byte is an operation, some of which
take argument bytes after them:

====  =============  ========================================================
 op   name           effect
====  =============  ========================================================
  0   SEND x         send_command(COMMANDS[x & 7]), oob when x & 0x80
  1   REPLY x        queue a ``return`` for one of our outstanding ids
  2   ERROR x        queue an ``error`` for one of our outstanding ids
  3   EVENT x        queue an event
  4   GREETING x     queue a QMP greeting (offering oob when x & 1)
  5   GARBAGE n ...  queue the next n bytes of the input verbatim
  6   FF x           queue (x & 7) + 1 bytes 0xFF
  7   DELIVER n      hand the next n + 1 queued bytes to receive_data()
  8   FLUSH          hand every queued byte to receive_data()
  9   ABANDON x      abandon one of our outstanding ids
 10   NEGOTIATE x    negotiate(oob=x & 1) / sync() for the guest agent
 11   FOREIGN x      queue a reply for an id that is not ours
 12   PRETTY x       queue a ``return`` spread over several lines
 13   CLOSE          flush, then end the stream
 14   SYNCREPLY      queue 0xFF + the guest agent's answer to the current sync
 15   STALE x        queue a reply with an id we used long ago
====  =============  ========================================================

The input ends with FLUSH and CLOSE.  Invariants checked throughout:
``receive_data`` never raises; every command ends at most once (reply,
error), never after it was abandoned, and never before its bytes were
released to the server; a reply reaches the command whose id it carries,
with the command name it was sent with; held commands are never stuck
behind a free slot; the end of the stream is reported exactly once and
nothing is accepted after it.  Each
queued reply carries a nonce unknown to the fuzzer, so a reply delivered to
another id is caught.  Without garbage on the stream, every reply to an
outstanding QMP command must be delivered.
"""

from __future__ import annotations

from typing import Any

import orjson

from qmpcore.errors import StateError
from qmpcore.protocol.events import (
    ConnectionClosed,
    ErrorReply,
    Event,
    Greeting,
    Negotiated,
    ProtocolFault,
    Return,
    Synced,
)
from qmpcore.protocol.qga_client import NO_REPLY_COMMANDS, QGAClientProtocol
from qmpcore.protocol.qmp_client import QMPClientProtocol

__all__ = ["check", "Program", "OPS"]

OPS = {
    name: code
    for code, name in enumerate(
        "SEND REPLY ERROR EVENT GREETING GARBAGE FF DELIVER FLUSH ABANDON "
        "NEGOTIATE FOREIGN PRETTY CLOSE SYNCREPLY STALE".split()
    )
}
QMP_COMMANDS = ("query-status", "stop", "cont", "quit", "qmp_capabilities", "query-version", "query-kvm", "x")
QGA_COMMANDS = (
    "guest-ping",
    "guest-info",
    "guest-shutdown",
    "guest-get-time",
    "guest-sync",
    "guest-ping",
    "x",
    "guest-suspend-ram",
)
EVENTS = (b"STOP", b"RESUME", b"SHUTDOWN", b"RESET", b"X" * 40, b"")
# Ids a broken server might echo; none is ours (ours are ints from 1).
FOREIGN_IDS = (
    b"0",
    b"-1",
    b"1000000000000",
    b"18446744073709551617",
    b'"1"',
    b"null",
    b"true",
    b"1.0",
    b"1e0",
    b"[1]",
    b'{"id": 1}',
    b"1.5",
    b'""',
)
GREETING = (
    b'{"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}, "package": ""}, "capabilities": [%s]}}\r\n'
)


def _nonce(n: int) -> int:
    """The n-th reply's tag: opaque to the protocol code, so unguessable."""
    return (n * 0x9E3779B97F4A7C15 + 0x5851F42D4C957F2D) % (1 << 61)


class Program:
    """One run of a fuzz input against a fresh protocol object."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 1
        self.qga = bool(data[:1] and data[0] & 1)
        self.proto: Any = QGAClientProtocol() if self.qga else QMPClientProtocol()
        self.queue = bytearray()  # server bytes not yet delivered
        self.created: dict[int, str] = {}  # every id send_command returned
        self.released: set[int] = set()  # ids whose frame went to the server
        self.ended: set[int] = set()
        self.abandoned: set[int] = set()
        self.nonces: dict[int, int] = {}  # nonce -> id it was addressed to
        self.expected: dict[int, int] = {}  # nonce -> id, replies that must arrive
        self.answered: set[int] = set()  # ids a reply was queued for
        self.garbage = False  # anything but well-formed frames was queued
        self.closed = 0
        self.replies = 0

    # -- reading the program ---------------------------------------------

    def byte(self) -> int:
        if self.pos >= len(self.data):
            return 0
        self.pos += 1
        return self.data[self.pos - 1]

    def take(self, n: int) -> bytes:
        chunk = self.data[self.pos : self.pos + n]
        self.pos += len(chunk)
        return chunk

    def run(self) -> None:
        handlers = [getattr(self, "op_" + name.lower()) for name in OPS]
        while self.pos < len(self.data) and not self.closed:
            handlers[self.byte() % len(handlers)]()
        if not self.closed:
            self.op_close()
        self.final_checks()

    # -- outstanding ids ---------------------------------------------------

    def outstanding(self) -> list[int]:
        return [cid for cid in self.created if cid not in self.ended and cid not in self.abandoned]

    def pick(self) -> int | None:
        ids = self.outstanding()
        return ids[self.byte() % len(ids)] if ids else None

    # -- operations --------------------------------------------------------

    def op_send(self) -> None:
        x = self.byte()
        try:
            if self.qga:
                command = QGA_COMMANDS[x & 7]
                cid, out = self.proto.send_command(command, {"id": x} if command == "guest-sync" else None)
            else:
                command = QMP_COMMANDS[x & 7]
                cid, out = self.proto.send_command(command, oob=bool(x & 0x80))
        except StateError:
            self.check_refusal(bool(x & 0x80))
            return
        assert type(cid) is int and cid not in self.created, f"id {cid!r} allocated twice"
        self.created[cid] = command
        if self.qga and command in NO_REPLY_COMMANDS:
            self.ended.add(cid)  # the client returns None at once
        self.sent(out)

    def check_refusal(self, oob: bool) -> None:
        proto = self.proto
        if self.qga:
            assert proto.closed, "guest agent protocol refused a command while open"
            return
        state = proto.state.value
        assert state in ("awaiting-greeting", "closed") or (oob and not proto.oob), f"command refused in state {state}"

    def op_reply(self, error: bool = False) -> None:
        cid = self.pick()
        if cid is None:
            return
        nonce = self.tag(cid)
        if error:
            body = b'"error": {"class": "GenericError", "desc": "%d"}' % nonce
        else:
            body = b'"return": {"nonce": %d}' % nonce
        self.queue += b'{%s, "id": %d}\r\n' % (body, cid)

    def tag(self, cid: int) -> int:
        """A fresh nonce for a reply to ``cid``; remember whether it must arrive."""
        self.replies += 1
        nonce = _nonce(self.replies)
        self.nonces[nonce] = cid
        if not self.garbage and not self.qga and cid in self.released and cid not in self.answered:
            self.expected[nonce] = cid
        self.answered.add(cid)
        return nonce

    def op_error(self) -> None:
        self.op_reply(error=True)

    def op_event(self) -> None:
        name = EVENTS[self.byte() % len(EVENTS)]
        self.queue += b'{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "%s", "data": {}}\r\n' % name

    def op_greeting(self) -> None:
        self.queue += GREETING % (b'"oob"' if self.byte() & 1 else b"")

    def op_garbage(self) -> None:
        self.garbage = True
        self.queue += self.take(self.byte())

    def op_ff(self) -> None:
        self.garbage = True
        self.queue += b"\xff" * ((self.byte() & 7) + 1)

    def op_deliver(self) -> None:
        n = self.byte() + 1
        chunk, self.queue = bytes(self.queue[:n]), self.queue[n:]
        if chunk:
            self.receive(chunk)

    def op_flush(self) -> None:
        if self.queue:
            chunk, self.queue = bytes(self.queue), bytearray()
            self.receive(chunk)

    def op_abandon(self) -> None:
        cid = self.pick()
        if cid is None:
            return
        self.proto.abandon(cid)
        self.abandoned.add(cid)
        self.sent(self.proto.data_to_send())

    def op_negotiate(self) -> None:
        x = self.byte()
        try:
            if self.qga:
                self.sent(self.proto.sync()[1])
            else:
                cid, out = self.proto.negotiate(oob=bool(x & 1))
                self.created[cid] = "qmp_capabilities"
                self.sent(out)
        except StateError:
            pass

    def op_foreign(self) -> None:
        self.garbage = True  # such a reply may legitimately look like ours
        mid = FOREIGN_IDS[self.byte() % len(FOREIGN_IDS)]
        self.queue += b'{"return": {}, "id": %s}\r\n' % mid

    def op_pretty(self) -> None:
        cid = self.pick()
        if cid is None:
            return
        nonce = self.tag(cid)
        self.queue += b'{\r\n    "return": {\r\n        "nonce": %d\r\n    },\r\n    "id": %d\r\n}\r\n' % (nonce, cid)

    def op_close(self) -> None:
        self.op_flush()
        events = self.proto.feed(b"")
        assert len(events) == 1 and type(events[0]) is ConnectionClosed, f"end of stream gave {events!r}"
        assert self.proto.feed(b"") == [], "end of stream reported twice"
        try:
            self.proto.send_command("query-status")
        except StateError:
            pass
        else:
            raise AssertionError("a command was accepted after the end of the stream")
        self.closed += 1
        self.check_slots()

    def op_syncreply(self) -> None:
        sid = getattr(self.proto, "sync_id", None)
        self.queue += b"\xff" + orjson.dumps({"return": sid if sid is not None else 7}) + b"\r\n"

    def op_stale(self) -> None:
        self.garbage = True
        ids = sorted(self.ended | self.abandoned)
        if ids:
            self.queue += b'{"return": {}, "id": %d}\r\n' % ids[self.byte() % len(ids)]

    # -- what the protocol says -------------------------------------------

    def sent(self, out: bytes) -> None:
        """Account for frames handed to the server (held ones come later)."""
        for line in out.split(b"\n"):
            line = line.lstrip(b"\xff").strip()
            if not line:
                continue
            msg = orjson.loads(line)
            cid = msg.get("id")
            if cid is None:
                assert msg.get("execute") == "guest-sync-delimited", f"frame without id: {msg!r}"
                continue
            assert cid in self.created, f"released a frame for id {cid!r} never created"
            assert cid not in self.released, f"frame for id {cid} sent twice"
            assert cid not in self.abandoned, f"frame for abandoned id {cid} sent"
            name = msg.get("execute", msg.get("exec-oob"))
            assert name == self.created[cid], f"id {cid} sent as {name!r}, created as {self.created[cid]!r}"
            self.released.add(cid)

    def receive(self, chunk: bytes) -> None:
        for ev in self.proto.feed(chunk):
            t = type(ev)
            if t is Return or t is ErrorReply:
                self.check_reply(ev)
            elif t is ConnectionClosed:
                raise AssertionError("ConnectionClosed before the end of the stream")
            elif t is Event:
                assert type(ev.name) is str and type(ev.data) is dict, f"bad event {ev!r}"
            elif t is Synced:
                assert self.qga and ev.id == self.proto.sync_id, f"unexpected {ev!r}"
            else:
                assert t in (Greeting, Negotiated, ProtocolFault), f"unexpected {ev!r}"
        self.sent(self.proto.data_to_send())
        self.check_slots()

    def check_reply(self, ev: Any) -> None:
        cid = ev.id
        assert type(cid) is int, f"reply with id {cid!r} delivered to a command"
        assert cid in self.created, f"reply delivered to id {cid} that was never created"
        assert cid in self.released or self.releasing(cid), f"reply delivered to id {cid} before it was sent"
        assert cid not in self.abandoned, f"reply delivered to abandoned id {cid}"
        assert cid not in self.ended, f"command {cid} ended twice"
        assert ev.command == self.created[cid], f"reply for {cid} names {ev.command!r}"
        nonce = _reply_nonce(ev)
        if nonce is not None and nonce in self.nonces:
            assert self.nonces[nonce] == cid, f"reply meant for id {self.nonces[nonce]} delivered to id {cid}"
            self.expected.pop(nonce, None)
        self.ended.add(cid)

    def releasing(self, cid: int) -> bool:
        """Was ``cid`` released by the chunk that carried its reply?  (Ids are
        unique, so only that command can own the reply.)"""
        return any(b'"id":%d}' % cid in frame for frame in self.proto._out)

    def check_slots(self) -> None:
        proto = self.proto
        assert 0 <= proto.in_flight <= proto.max_in_flight, f"in_flight {proto.in_flight}"
        if proto.held and not proto.closed:
            assert proto.in_flight >= proto.max_in_flight, (
                f"{proto.held} held command(s) stuck with {proto.in_flight} of {proto.max_in_flight} slots used"
            )

    def final_checks(self) -> None:
        lost = [nonce for nonce, cid in self.expected.items() if cid not in self.abandoned]
        assert not lost, f"replies to outstanding commands were never delivered: {[self.expected[n] for n in lost]}"
        assert self.closed == 1


def _reply_nonce(ev: Any) -> int | None:
    if type(ev) is Return:
        value = ev.value
        return value.get("nonce") if type(value) is dict and type(value.get("nonce")) is int else None
    try:
        return int(ev.desc)
    except ValueError:
        return None


def check(data: bytes) -> None:
    """Run one fuzz input; raise AssertionError when an invariant breaks."""
    Program(data).run()
