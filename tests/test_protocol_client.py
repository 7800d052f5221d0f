"""Sans-IO QMP client protocol: every state transition, no sockets.

Server bytes come from the recorded QEMU 7.2 sessions where one fits; reply
ids are rewritten into the ids the protocol allocated.
"""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import qmpcore
from qemu_support import recorded_id, renumber, session
from qmpcore.errors import ProtocolError, StateError
from qmpcore.protocol import _client
from qmpcore.protocol.qmp_client import (
    ConnectionClosed,
    ErrorReply,
    Event,
    Greeting,
    Negotiated,
    ProtocolFault,
    QMPClientProtocol,
    Return,
    State,
    VersionInfo,
)

GREETING = (
    b'{"QMP": {"version": {"qemu": {"micro": 22, "minor": 2, "major": 7}, '
    b'"package": "Debian 1:7.2+dfsg-7+deb12u18+b3"}, "capabilities": ["oob"]}}\r\n'
)


def ready(oob: bool = False) -> QMPClientProtocol:
    """A protocol in command mode, as after a real handshake."""
    proto = QMPClientProtocol()
    proto.feed(GREETING)
    cid, _ = proto.negotiate(oob=oob)
    proto.feed(b'{"return": {}, "id": %d}\r\n' % cid)
    assert proto.state is State.READY
    return proto


def replay(proto: QMPClientProtocol, steps) -> list:
    """Issue each recorded command through ``proto`` and feed the replies."""
    ids = {}
    events: list = []
    for side, data in steps:
        if data is None:
            continue
        if side == "S":
            events += proto.feed(renumber(data, ids))
            continue
        try:
            msg = orjson.loads(data)
        except orjson.JSONDecodeError:
            continue
        if not isinstance(msg, dict) or "id" not in msg or set(msg) - {"execute", "exec-oob", "arguments", "id"}:
            continue
        oob = "exec-oob" in msg
        name = msg.get("exec-oob" if oob else "execute")
        args = msg.get("arguments")
        if not isinstance(name, str) or ("execute" in msg and oob) or not isinstance(args, (dict, type(None))):
            continue
        if oob and not proto.oob:
            continue
        cid, _ = proto.send_command(name, args, oob=oob)
        ids[recorded_id(msg["id"])] = cid
    return events


def decode(frame: bytes) -> dict:
    assert frame.endswith(b"\r\n")
    return orjson.loads(frame)


# -- greeting -------------------------------------------------------------------


def test_greeting_from_corpus(corpus_dir):
    proto = QMPClientProtocol()
    assert proto.state is State.AWAITING_GREETING
    (greeting,) = proto.feed(session(corpus_dir, "01_greeting_and_capabilities.txt")[0][1])
    assert type(greeting) is Greeting
    assert greeting.version == VersionInfo(7, 2, 22, "Debian 1:7.2+dfsg-7+deb12u18+b3")
    assert greeting.version >= (7, 2)
    assert greeting.capabilities == ("oob",)
    assert greeting.raw["QMP"]["capabilities"] == ["oob"]
    assert proto.state is State.NEGOTIATION and proto.greeting is greeting


def test_greeting_split_bytewise():
    proto = QMPClientProtocol()
    events = []
    for i in range(len(GREETING)):
        events += proto.feed(GREETING[i : i + 1])
    assert [type(e) for e in events] == [Greeting]


def test_pretty_greeting(corpus_dir):
    proto = QMPClientProtocol()
    (greeting,) = proto.feed(session(corpus_dir, "22_pretty_monitor.txt")[0][1])
    assert greeting.version[:3] == (7, 2, 22)


def test_command_before_greeting_is_refused():
    proto = QMPClientProtocol()
    with pytest.raises(StateError):
        proto.send_command("query-status")
    with pytest.raises(StateError):
        proto.negotiate()


@pytest.mark.parametrize(
    "data",
    [b"garbage\r\n", b'{"return": {}}\r\n', b"[1, 2]\r\n", b"\xff", b'{"event": "STOP", "timestamp": {}}\r\n'],
)
def test_anything_but_a_greeting_is_a_fault(data):
    proto = QMPClientProtocol()
    (fault,) = proto.feed(data)
    assert type(fault) is ProtocolFault and isinstance(fault.error, ProtocolError)
    assert proto.state is State.AWAITING_GREETING
    assert [type(e) for e in proto.feed(GREETING)] == [Greeting]


def test_second_greeting_is_a_fault():
    proto = ready()
    (fault,) = proto.feed(GREETING)
    assert type(fault) is ProtocolFault
    assert proto.state is State.READY


def test_odd_greeting_is_tolerated():
    proto = QMPClientProtocol()
    (greeting,) = proto.feed(b'{"QMP": {"version": {}, "capabilities": ["oob", 3]}}\n')
    assert greeting.version == (0, 0, 0, "") and greeting.capabilities == ("oob",)


# -- negotiation ----------------------------------------------------------------


def test_negotiate_plain():
    proto = QMPClientProtocol()
    proto.feed(GREETING)
    cid, data = proto.negotiate()
    assert decode(data) == {"execute": "qmp_capabilities", "id": cid}
    events = proto.feed(b'{"return": {}, "id": %d}\r\n' % cid)
    assert events == [Negotiated(()), Return(cid, "qmp_capabilities", {})]
    assert proto.state is State.READY and not proto.oob


def test_negotiate_oob_when_offered():
    proto = QMPClientProtocol()
    proto.feed(GREETING)
    cid, data = proto.negotiate(oob=True)
    assert decode(data)["arguments"] == {"enable": ["oob"]}
    assert proto.feed(b'{"return": {}, "id": %d}\r\n' % cid)[0] == Negotiated(("oob",))
    assert proto.oob and proto.enabled == ("oob",)


def test_negotiate_oob_not_offered():
    proto = QMPClientProtocol()
    proto.feed(b'{"QMP": {"version": {}, "capabilities": []}}\r\n')
    cid, data = proto.negotiate(oob=True)
    assert "arguments" not in decode(data)
    proto.feed(b'{"return": {}, "id": %d}\r\n' % cid)
    assert not proto.oob
    with pytest.raises(StateError):
        proto.send_command("query-yank", oob=True)


def test_negotiate_only_once():
    proto = ready()
    with pytest.raises(StateError):
        proto.negotiate()


def test_negotiation_mode_session(corpus_dir):
    """Corpus 02: refused commands, a parse error, a failed and a good negotiation."""
    proto = QMPClientProtocol()
    steps = session(corpus_dir, "02_before_negotiation.txt")
    events = replay(proto, steps)
    kinds = [type(e).__name__ for e in events]
    assert kinds == [
        "Greeting",
        "ErrorReply",
        "ErrorReply",
        "ProtocolFault",
        "ErrorReply",
        "Negotiated",
        "Return",
        "ErrorReply",
        "Return",
    ]
    refused = events[1]
    assert (refused.command, refused.error_class) == ("query-status", "CommandNotFound")
    assert refused.desc == "Expecting capabilities negotiation with 'qmp_capabilities'"
    assert "JSON parse error, expecting value" in str(events[3].error)
    assert events[4].desc == "Parameter 'null' does not accept value 'nonexistent'"
    assert events[5] == Negotiated(("oob",))
    assert events[7].desc == "Capabilities negotiation is already complete, command ignored"
    assert events[8].value["status"] == "running"
    assert proto.state is State.READY and proto.oob


def test_refused_negotiation_stays_in_negotiation_mode():
    proto = QMPClientProtocol()
    proto.feed(GREETING)
    cid, _ = proto.negotiate()
    (err,) = proto.feed(b'{"id": %d, "error": {"class": "GenericError", "desc": "no"}}\r\n' % cid)
    assert type(err) is ErrorReply and err.exception().desc == "no"
    assert proto.state is State.NEGOTIATION
    cid, _ = proto.negotiate()
    assert type(proto.feed(b'{"return": {}, "id": %d}\r\n' % cid)[0]) is Negotiated


def test_user_sent_qmp_capabilities_counts():
    proto = QMPClientProtocol()
    proto.feed(GREETING)
    cid, _ = proto.send_command("qmp_capabilities", {"enable": ["oob"]})
    proto.feed(b'{"return": {}, "id": %d}\r\n' % cid)
    assert proto.state is State.READY and proto.oob


# -- commands and replies -----------------------------------------------------------


def test_command_encoding_and_ids():
    proto = ready()
    a, data_a = proto.send_command("query-status")
    b, data_b = proto.send_command("human-monitor-command", {"command-line": "info version"})
    assert a != b
    assert decode(data_a) == {"execute": "query-status", "id": a}
    assert decode(data_b) == {
        "execute": "human-monitor-command",
        "arguments": {"command-line": "info version"},
        "id": b,
    }


@pytest.mark.parametrize("command, arguments", [(1, None), (None, None), ("x", []), ("x", "a")])
def test_bad_command_arguments(command, arguments):
    with pytest.raises(TypeError):
        ready().send_command(command, arguments)


def test_oversized_command_is_refused_locally(monkeypatch):
    monkeypatch.setattr(_client, "MAX_COMMAND_SIZE", 100)
    proto = ready()
    with pytest.raises(ValueError, match="64 MiB"):
        proto.send_command("x", {"blob": "a" * 200})


def test_basic_queries(corpus_dir):
    proto = ready()
    events = replay(proto, session(corpus_dir, "03_basic_queries.txt", body_only=True))
    version, status = events[:2]
    assert type(version) is Return and version.command == "query-version"
    assert version.value["qemu"] == {"micro": 22, "minor": 2, "major": 7}
    assert status.command == "query-status" and status.value["running"] is True


def test_command_errors(corpus_dir):
    """Corpus 04: every error reply carries QEMU's class and desc."""
    proto = ready()
    events = replay(proto, session(corpus_dir, "04_command_errors.txt", body_only=True))
    errors = {e.command: e for e in events if type(e) is ErrorReply}
    assert errors["nope"].error_class == "CommandNotFound"
    assert errors["nope"].desc == "The command nope has not been found"
    exc = errors["nope"].exception()
    assert (
        isinstance(exc, qmpcore.CommandError)
        and exc.command == "nope"
        and exc.reply["error"]["class"] == "CommandNotFound"
    )
    assert errors["query-command-line-options"].desc == "Invalid parameter type for 'option', expected: string"
    assert errors["human-monitor-command"].desc == "Parameter 'command-line' is missing"
    # Replies to commands this protocol never sent are reported, not matched.
    faults = [e for e in events if type(e) is ProtocolFault]
    assert faults and all(isinstance(f.error, ProtocolError) for f in faults)
    # QEMU rejected {"id":12,"id":13} as a parse error, without an id.
    assert proto.in_flight == 1


def test_stop_and_cont_events_before_their_replies(corpus_dir):
    """Corpus 21: STOP arrives before stop's reply and is reported first."""
    proto = ready()
    events = replay(proto, session(corpus_dir, "21_stop_cont_events.txt", body_only=True))
    assert [(type(e).__name__, getattr(e, "name", None) or getattr(e, "command", None)) for e in events] == [
        ("Event", "STOP"),
        ("Return", "stop"),
        ("Return", "query-status"),
        ("Event", "RESUME"),
        ("Return", "cont"),
        ("Return", "query-status"),
    ]
    stop = events[0]
    assert stop.timestamp == pytest.approx(1795584128.785071)
    assert stop.data == {} and stop.raw["event"] == "STOP"


def test_event_fields():
    proto = ready()
    (ev,) = proto.feed(
        b'{"timestamp": {"seconds": 10, "microseconds": 5}, "event": "SHUTDOWN", "data": {"guest": false}}\r\n'
    )
    assert ev == Event("SHUTDOWN", ev.raw)
    assert (ev.data, ev.timestamp) == ({"guest": False}, 10.000005)
    (ev,) = proto.feed(b'{"event": "X"}\r\n')
    assert ev.timestamp is None and ev.data == {}
    (fault,) = proto.feed(b'{"event": 5}\r\n')
    assert type(fault) is ProtocolFault


def test_big_schema_reply(corpus_dir):
    proto = ready()
    schema = (corpus_dir / "qemu-7.2" / "qmp_schema_7.2.json").read_bytes()
    cid, _ = proto.send_command("query-qmp-schema")
    data = renumber(schema, {b'"schema"': cid})
    events = []
    for i in range(0, len(data), 4096):
        events += proto.feed(data[i : i + 4096])
    (reply,) = events
    assert reply.id == cid and len(reply.value) > 1000
    assert any(entry.get("name") == "query-status" for entry in reply.value)


def test_pretty_monitor_session(corpus_dir):
    """Corpus 22: multi-line messages split across reads frame correctly."""
    proto = QMPClientProtocol()
    events = replay(proto, session(corpus_dir, "22_pretty_monitor.txt"))
    named = [e for e in events if type(e) in (Return, Event)]
    assert named[0].command == "query-status" and named[0].value["status"] == "running"
    assert [e.name for e in named if type(e) is Event] == ["STOP", "RESUME"]
    # The recording sent qmp_capabilities, stop and cont without ids: their
    # replies and the parse error are reported, never matched to a command.
    assert [type(e) for e in events].count(ProtocolFault) == 4


# -- the in-band queue limit ----------------------------------------------------------


def test_without_oob_nothing_is_held():
    """QEMU runs one command at a time then: nothing to overtake, nothing held."""
    proto = ready()
    sent = [proto.send_command("query-status") for _ in range(20)]
    assert all(data for _, data in sent) and proto.held == 0 and proto.in_flight == 20


def test_commands_held_during_negotiation_go_out_without_oob():
    proto = QMPClientProtocol()
    proto.feed(GREETING)
    caps, _ = proto.negotiate()
    sent = [proto.send_command("query-status") for _ in range(10)]
    assert proto.held == 3
    proto.feed(b'{"return": {}, "id": %d}\r\n' % caps)
    released = [orjson.loads(line)["id"] for line in proto.data_to_send().splitlines()]
    assert released == [cid for cid, _ in sent[7:]] and proto.held == 0


def test_commands_beyond_eight_are_held_once_oob_is_enabled():
    proto = ready(oob=True)
    sent = [proto.send_command("query-status", {"n": i}) for i in range(20)]
    assert all(data for _, data in sent[:8]) and not any(data for _, data in sent[8:])
    assert proto.in_flight == 8 and proto.held == 12
    ids = [cid for cid, _ in sent]
    # A reply (out of order) frees one slot: the first held command goes out.
    (reply,) = proto.feed(b'{"return": 3, "id": %d}\r\n' % ids[3])
    assert reply == Return(ids[3], "query-status", 3)
    released = proto.data_to_send()
    assert decode(released)["id"] == ids[8]
    assert proto.data_to_send() == b""
    # Several replies in one chunk release several commands, in order.
    chunk = b"".join(b'{"return": {}, "id": %d}\r\n' % cid for cid in ids[:3])
    assert [e.id for e in proto.feed(chunk)] == ids[:3]
    released = [orjson.loads(line)["id"] for line in proto.data_to_send().splitlines()]
    assert released == ids[9:12]
    assert proto.in_flight == 8 and proto.held == 8


def test_unheld_command_may_exceed_the_limit():
    proto = ready(oob=True)
    for _ in range(8):
        proto.send_command("query-status")
    cid, data = proto.send_command("getfd", {"fdname": "x"}, hold=False)
    assert data and proto.in_flight == 9


def test_oob_commands_bypass_the_queue(corpus_dir):
    proto = ready(oob=True)
    for _ in range(8):
        proto.send_command("query-qmp-schema")
    cid, data = proto.send_command("query-yank", oob=True)
    assert decode(data) == {"exec-oob": "query-yank", "id": cid}
    (reply,) = proto.feed(b'{"return": [], "id": %d}\r\n' % cid)
    assert reply == Return(cid, "query-yank", [])
    assert proto.in_flight == 8


def test_oob_session(corpus_dir):
    """Corpus 18: exec-oob replies and errors."""
    proto = ready(oob=True)
    events = replay(proto, session(corpus_dir, "18_oob.txt", body_only=True))
    by_command = {}
    for e in events:
        if type(e) in (Return, ErrorReply):
            by_command.setdefault(e.command, e)
    assert by_command["query-yank"].value[0]["type"] == "chardev"
    assert by_command["query-status"].desc == "The command query-status does not support OOB"
    assert "postcopy-active" in by_command["migrate-pause"].desc


def test_oob_needs_negotiation():
    proto = ready(oob=False)
    with pytest.raises(StateError, match="out-of-band"):
        proto.send_command("query-yank", oob=True)


# -- abandoned, unknown and id-less replies ---------------------------------------------


def test_abandoned_command_reply_is_dropped_silently():
    proto = ready()
    a, _ = proto.send_command("query-status")
    b, _ = proto.send_command("query-name")
    proto.abandon(a)
    events = proto.feed(b'{"return": {"late": 1}, "id": %d}\r\n{"return": {}, "id": %d}\r\n' % (a, b))
    assert events == [Return(b, "query-name", {})]
    assert proto.late_replies == 1 and proto.in_flight == 0


def test_abandoned_command_keeps_its_slot_until_answered():
    proto = ready(oob=True)
    ids = [proto.send_command("query-status")[0] for _ in range(9)]
    proto.abandon(ids[0])
    assert proto.in_flight == 8 and proto.held == 1  # QEMU still has it queued
    assert proto.feed(b'{"return": {}, "id": %d}\r\n' % ids[0]) == []
    assert decode(proto.data_to_send())["id"] == ids[8]


def test_abandoned_held_command_is_never_sent():
    proto = ready(oob=True)
    ids = [proto.send_command("query-status")[0] for _ in range(10)]
    proto.abandon(ids[8])
    proto.abandon(12345)  # unknown: ignored
    proto.feed(b'{"return": {}, "id": %d}\r\n' % ids[0])
    assert decode(proto.data_to_send())["id"] == ids[9]
    assert proto.held == 0


def test_abandoned_ids_are_bounded(monkeypatch):
    monkeypatch.setattr(_client, "MAX_ABANDONED", 4)
    proto = ready(oob=True)
    ids = [proto.send_command("query-yank", oob=True)[0] for _ in range(6)]
    for cid in ids:
        proto.abandon(cid)
    assert len(proto._abandoned) == 4
    (fault,) = proto.feed(b'{"return": {}, "id": %d}\r\n' % ids[0])
    assert "unknown id" in str(fault.error)


def test_reply_for_unknown_id_is_reported():
    proto = ready()
    cid, _ = proto.send_command("query-status")
    events = proto.feed(b'{"return": {}, "id": 999}\r\n{"return": {}, "id": %d}\r\n' % cid)
    assert type(events[0]) is ProtocolFault and "unknown id 999" in str(events[0].error)
    assert events[1] == Return(cid, "query-status", {})


@pytest.mark.parametrize("foreign", [b"1.0", b"true", b'"1"', b"[1]"])
def test_id_equal_to_ours_but_not_an_int_is_reported(foreign):
    proto = ready()
    cid, _ = proto.send_command("query-status")
    assert cid == 2
    (fault,) = proto.feed(b'{"return": {}, "id": %s}\r\n' % foreign.replace(b"1", b"2"))
    assert type(fault) is ProtocolFault and "unknown id" in str(fault.error)
    assert proto.in_flight == 1


def test_unhashable_reply_id_is_reported():
    proto = ready()
    (fault,) = proto.feed(b'{"return": {}, "id": {"nested": [1]}}\r\n')
    assert "unknown id" in str(fault.error)


def test_error_without_id_is_never_matched(corpus_dir):
    """Corpus 12: QEMU's parse-error replies carry no id; they stay faults."""
    proto = ready()
    cid, _ = proto.send_command("query-status")
    events = []
    for side, data in session(corpus_dir, "12_sync_0xff_and_recovery.txt", body_only=True):
        if side == "S" and data is not None and b'"id"' not in data:
            events += proto.feed(data)
    assert events and all(type(e) is ProtocolFault for e in events)
    assert "stray" in str(events[0].error)
    assert proto.in_flight == 1  # still waiting for its own reply


def test_return_without_id_is_a_fault():
    proto = ready()
    (fault,) = proto.feed(b'{"return": {}}\r\n')
    assert "without id" in str(fault.error)


def test_malformed_error_reply():
    proto = ready()
    cid, _ = proto.send_command("x")
    (err,) = proto.feed(b'{"error": "bad", "id": %d}\r\n' % cid)
    assert (err.error_class, err.desc) == ("", "bad")


# -- a broken server stream -------------------------------------------------------------


@pytest.mark.parametrize(
    "garbage", [b"garbage!\r\n", b"\x01\r\n", b"\xff", b"[1, 2]\r\n", b"42\r\n", b'{"what": 1}\r\n']
)
def test_garbage_is_a_fault_and_the_connection_continues(garbage):
    proto = ready()
    cid, _ = proto.send_command("query-status")
    events = proto.feed(garbage + b'{"return": {}, "id": %d}\r\n' % cid)
    assert type(events[0]) is ProtocolFault
    assert events[-1] == Return(cid, "query-status", {})


def test_frame_over_the_limit_is_one_fault():
    proto = QMPClientProtocol(max_frame_size=1000)
    proto.feed(GREETING)
    a, _ = proto.negotiate()
    proto.feed(b'{"return": {}, "id": %d}\r\n' % a)
    b, _ = proto.send_command("big")
    c, _ = proto.send_command("small")
    big = b'{"return": "%s", "id": %d}\r\n' % (b"x" * 100_000, b)
    events = []
    for i in range(0, len(big), 1500):
        events += proto.feed(big[i : i + 1500])
    events += proto.feed(b'{"return": {}, "id": %d}\r\n' % c)
    assert [type(e) for e in events] == [ProtocolFault, Return]
    assert "size limit" in str(events[0].error)
    assert proto._framer.buffered < 2000


# -- the end of the stream ----------------------------------------------------------------


def test_quit_then_reset_is_expected(corpus_dir):
    """Corpus 99: SHUTDOWN, the reply, then the connection ends."""
    proto = ready()
    events = replay(proto, session(corpus_dir, "99_quit_shutdown.txt", body_only=True))
    assert [type(e) for e in events] == [Event, Return]
    assert events[0].name == "SHUTDOWN" and events[0].data["reason"] == "host-qmp-quit"
    assert proto.feed(b"") == [ConnectionClosed(0, True)]
    assert proto.feed(b"") == []
    assert proto.state is State.CLOSED and proto.closed
    with pytest.raises(StateError):
        proto.send_command("query-status")


def test_shutdown_event_makes_the_end_expected():
    proto = ready()
    proto.feed(b'{"timestamp": {"seconds": 1, "microseconds": 0}, "event": "SHUTDOWN"}\r\n')
    assert proto.feed(b"") == [ConnectionClosed(0, True)]


def test_end_mid_frame_is_reported():
    proto = ready()
    proto.send_command("query-status")
    proto.feed(b'{"return": {"status": "runn')
    (closed,) = proto.feed(b"")
    assert closed.truncated == 27 and not closed.expected


# -- any split of the stream gives the same events -----------------------------------------


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=400), min_size=1, max_size=40))
def test_any_split_gives_the_same_events(cuts):
    stream = GREETING + (
        b'{"return": {}, "id": 1}\r\n'
        b'{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "STOP"}\r\n'
        b'{"return": {"status": "paused"}, "id": 2}\r\n'
        b'{\r\n    "return": [\r\n        1\r\n    ],\r\n    "id": 3\r\n}\r\n'
    )

    def run(chunks):
        proto = QMPClientProtocol()
        out = proto.feed(chunks[0])
        proto.negotiate()
        proto.send_command("stop")
        proto.send_command("query-status")
        for chunk in chunks[1:]:
            out += proto.feed(chunk)
        return out

    whole = run([GREETING, stream[len(GREETING) :]])
    chunks, pos = [GREETING], len(GREETING)
    for cut in cuts:
        chunks.append(stream[pos : pos + cut])
        pos += cut
    chunks.append(stream[pos:])
    assert run([c for c in chunks if c] or [GREETING]) == whole
    assert [type(e) for e in whole] == [Greeting, Negotiated, Return, Event, Return, Return]


# -- events as classes, the h11 shape -------------------------------------------------


def test_events_compare_by_type_and_value():
    from qmpcore.protocol.events import ProtocolEvent, Synced

    raw = {"event": "STOP", "data": {"a": 1}, "timestamp": {"seconds": 1, "microseconds": 500000}}
    ev = Event("STOP", raw)
    assert ev == Event("STOP", dict(raw)) and ev != Event("RESUME", raw)
    assert ev != ("STOP", raw) and ("STOP", raw) != ev  # not a tuple any more
    assert ev != raw  # nor a dict, though it reads like one
    assert Negotiated((1,)) != Synced((1,)) and Negotiated(("oob",)) == Negotiated(("oob",))
    assert Return(1, "x", {}) != ErrorReply(1, "x", "", "", {})
    for event in (
        ev,
        Negotiated(()),
        Synced(3),
        Return(1, "x", 2),
        ConnectionClosed(0, True),
        Greeting(VersionInfo(7, 2, 0), (), {}),
    ):
        assert isinstance(event, ProtocolEvent)
        assert not hasattr(event, "__dict__")  # slotted
        assert repr(event).startswith(type(event).__name__ + "(")
    assert (
        repr(Return(1, "query-status", {"running": True}))
        == "Return(id=1, command='query-status', value={'running': True})"
    )


def test_immutable_events_are_hashable_and_read_only():
    from qmpcore.protocol.events import Synced

    assert len({Negotiated(("oob",)), Negotiated(("oob",)), Synced(1), Synced(1), ConnectionClosed(0, False)}) == 3
    with pytest.raises(AttributeError):
        Synced(1).id = 2  # type: ignore[misc]
    with pytest.raises(TypeError):
        hash(Event("X", {}))  # it holds a dict


def test_events_pickle_and_copy():
    import copy
    import pickle

    from qmpcore.protocol.events import Synced

    for event in (
        Event("X", {"event": "X"}),
        Return(1, "x", [1]),
        Synced(5),
        Negotiated(("oob",)),
        ConnectionClosed(3, False),
    ):
        assert pickle.loads(pickle.dumps(event)) == event and copy.copy(event) == event


def test_event_is_a_read_only_mapping():
    from collections.abc import Mapping

    raw = {"event": "STOP", "data": {"a": 1}, "timestamp": {"seconds": 1, "microseconds": 500000}}
    ev = Event("STOP", raw)
    assert isinstance(ev, Mapping)
    assert (
        ev["event"] == "STOP" and ev["data"] == {"a": 1} and ev["timestamp"] == {"seconds": 1, "microseconds": 500000}
    )
    assert ev.get("data") == {"a": 1} and ev.get("nope") is None and ev.get("nope", 5) == 5
    assert "data" in ev and "nope" not in ev and len(ev) == 3 and list(ev) == ["event", "data", "timestamp"]
    assert dict(ev) == raw and dict(ev.items()) == raw and list(ev.keys()) == list(raw)
    with pytest.raises(KeyError):
        ev["nope"]
    # attributes still work, with their conveniences
    assert (ev.name, ev.data, ev.timestamp) == ("STOP", {"a": 1}, 1.5)
    bare = Event("X", {"event": "X"})
    assert bare.data == {} and "data" not in bare


def test_h11_shape_receive_data_then_next_event():
    proto = QMPClientProtocol()
    assert proto.next_event() is None  # nothing yet: more data needed
    proto.receive_data(GREETING[:10])
    assert proto.next_event() is None
    proto.receive_data(GREETING[10:])
    greeting = proto.next_event()
    assert type(greeting) is Greeting and proto.next_event() is None
    cid, data = proto.negotiate()
    assert proto.commands_issued == 1 and proto.pending_command(cid) == "qmp_capabilities"
    proto.receive_data(b'{"return": {}, "id": %d}\r\n{"event": "STOP"}\r\n' % cid)
    assert [type(e) for e in (proto.next_event(), proto.next_event(), proto.next_event())] == [
        Negotiated,
        Return,
        Event,
    ]
    assert proto.next_event() is None and proto.pending_command(cid) is None
    proto.receive_data(b'{"event": "A"}\r\n{"event": "B"}\r\n')
    assert [e.name for e in proto.events()] == ["A", "B"] and proto.events() == []
    # feed() returns what was not taken yet first, then the new events
    proto.receive_data(b'{"event": "C"}\r\n')
    assert [e.name for e in proto.feed(b'{"event": "D"}\r\n')] == ["C", "D"]
    proto.receive_data(b"")
    assert proto.next_event() == ConnectionClosed(0, False) and proto.next_event() is None


def test_closed_by():
    proto = ready()
    assert proto.closed_by is None
    proto.send_command("quit")
    assert proto.closed_by == "quit"
    other = ready()
    other.feed(b'{"event": "SHUTDOWN", "data": {"guest": true}}\r\n')
    assert other.closed_by == "SHUTDOWN"
    assert other.feed(b"") == [ConnectionClosed(0, True)]


def test_oob_pending_command_is_found():
    proto = ready(oob=True)
    cid, _ = proto.send_command("query-yank", oob=True)
    assert proto.pending_command(cid) == "query-yank" and proto.commands_issued == 2
