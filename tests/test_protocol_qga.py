"""Sans-IO guest agent protocol: resync, serialised commands, no sockets."""

from __future__ import annotations

import orjson
import pytest

import qmpcore
from qemu_support import session
from qmpcore.errors import StateError
from qmpcore.protocol.qga_client import (
    NO_REPLY_COMMANDS,
    ConnectionClosed,
    ErrorReply,
    ProtocolFault,
    QGAClientProtocol,
    Return,
    State,
    Synced,
)

STRAY = b'{"error": {"class": "GenericError", "desc": "JSON parse error, stray \'\\uFFFD\'"}}\n'


def sync_reply(sid: int) -> bytes:
    return STRAY + b'\xff{"return": %d}\n' % sid


def synced() -> QGAClientProtocol:
    proto = QGAClientProtocol()
    sid, _ = proto.sync()
    assert proto.feed(sync_reply(sid)) == [Synced(sid)]
    return proto


def frame_of(data: bytes) -> dict:
    assert data.endswith(b"\r\n")
    return orjson.loads(data.lstrip(b"\xff"))


# -- resync ----------------------------------------------------------------------


def test_sync_bytes():
    proto = QGAClientProtocol()
    assert proto.state is State.UNSYNCED
    sid, data = proto.sync()
    assert data[:1] == b"\xff"
    assert frame_of(data) == {"execute": "guest-sync-delimited", "arguments": {"id": sid}}
    assert 0 <= sid < 2**53 and proto.sync_id == sid
    assert proto.state is State.SYNCING
    assert len({QGAClientProtocol().sync()[0] for _ in range(10)}) == 10  # random ids


def test_recorded_sync_session(corpus_dir):
    """qga_01: the 0xFF's stray-error reply, then 0xFF and the sync reply."""
    steps = session(corpus_dir, "qga_01_sync_ping_info.txt")
    written = next(data for side, data in steps if side == "C" and data)
    recorded = orjson.loads(written[1:])["arguments"]["id"]
    proto = QGAClientProtocol()
    sid, data = proto.sync(recorded)
    assert data == written.rstrip(b"\n") + b"\r\n"
    reply = next(data for side, data in steps if side == "S" and data)
    assert proto.feed(reply) == [Synced(recorded)]
    assert proto.state is State.READY


def test_stale_partial_command_is_skipped(corpus_dir):
    """qga_03b: a previous client's half object swallowed our first bytes."""
    steps = session(corpus_dir, "qga_03b_after_stale.txt")
    proto = QGAClientProtocol()
    proto.sync(99)
    events = []
    for side, data in steps:
        if side == "S" and data:
            events += proto.feed(data)
    assert events == [Synced(99)]


def test_sync_split_bytewise():
    proto = QGAClientProtocol()
    sid, _ = proto.sync()
    data = sync_reply(sid)
    events = []
    for i in range(len(data)):
        events += proto.feed(data[i : i + 1])
    assert events == [Synced(sid)]


def test_sync_skips_stale_replies_and_garbage():
    proto = QGAClientProtocol()
    sid, _ = proto.sync()
    stale = b'\xff{"return": 5}\n{"return": {}, "id": 3}\nnonsense\x01{"return": %d}\n' % sid
    assert proto.feed(stale) == []  # matching id but no 0xFF before it
    assert proto.feed(b'\xff{"return": %d}\n' % sid) == [Synced(sid)]


def test_sync_reply_needs_the_delimiter_right_before_it():
    proto = QGAClientProtocol()
    sid, _ = proto.sync()
    assert proto.feed(b'\xff{"return": 1}\n{"return": %d}\n' % sid) == []
    assert proto.state is State.SYNCING


def test_resync_while_syncing_restarts_with_a_new_id():
    proto = QGAClientProtocol()
    first, _ = proto.sync()
    second, data = proto.sync()
    assert second != first and frame_of(data)["arguments"]["id"] == second
    assert proto.feed(b'\xff{"return": %d}\n' % first) == []
    assert proto.feed(b'\xff{"return": %d}\n' % second) == [Synced(second)]


def test_sync_waits_for_the_command_in_flight():
    proto = synced()
    cid, _ = proto.send_command("guest-info")
    sid, data = proto.sync()
    assert data == b"" and proto.state is State.UNSYNCED
    (reply,) = proto.feed(b'{"return": {"version": "7.2"}, "id": %d}\n' % cid)
    assert reply == Return(cid, "guest-info", {"version": "7.2"})
    assert frame_of(proto.data_to_send())["arguments"]["id"] == sid


# -- commands ---------------------------------------------------------------------


def test_first_command_triggers_a_resync():
    proto = QGAClientProtocol()
    cid, data = proto.send_command("guest-ping")
    assert data.startswith(b"\xff") and frame_of(data)["execute"] == "guest-sync-delimited"
    sid = proto.sync_id
    assert proto.feed(sync_reply(sid)) == [Synced(sid)]
    assert frame_of(proto.data_to_send()) == {"execute": "guest-ping", "id": cid}


def test_commands_are_serialised():
    proto = synced()
    sent = [proto.send_command("guest-sync", {"id": i}) for i in range(3)]
    assert sent[0][1] and not sent[1][1] and not sent[2][1]
    assert proto.in_flight == 1 and proto.held == 2
    (reply,) = proto.feed(b'{"return": 0, "id": %d}\n' % sent[0][0])
    assert reply.value == 0
    assert frame_of(proto.data_to_send())["id"] == sent[1][0]


def test_recorded_errors(corpus_dir):
    """qga_02: qemu-ga's error replies reach the command that caused them."""
    proto = synced()
    expected = {
        "guest-sync": ("GenericError", "Parameter 'id' is missing"),
        "qmp_capabilities": ("CommandNotFound", "The command qmp_capabilities has not been found"),
        "guest-nope": ("CommandNotFound", "The command guest-nope has not been found"),
    }
    for command, (cls, desc) in expected.items():
        cid, _ = proto.send_command(command, {} if command == "guest-sync" else None)
        recorded = next(
            data
            for side, data in session(corpus_dir, "qga_02_errors.txt")
            if side == "S" and data and desc.encode() in data
        )
        data = recorded.replace(b'{"error"', b'{"id": %d, "error"' % cid)
        (err,) = proto.feed(data)
        assert type(err) is ErrorReply and (err.error_class, err.desc, err.command) == (cls, desc, command)


def test_user_guest_sync_delimited_is_a_plain_command():
    proto = synced()
    cid, _ = proto.send_command("guest-sync-delimited", {"id": 7})
    assert proto.feed(b'\xff{"return": 7, "id": %d}\n' % cid) == [Return(cid, "guest-sync-delimited", 7)]


def test_error_without_id_is_a_fault():
    proto = synced()
    proto.send_command("guest-ping")
    (fault,) = proto.feed(b'{"error": {"class": "GenericError", "desc": "JSON parse error, expecting value"}}\n')
    assert type(fault) is ProtocolFault and "expecting value" in str(fault.error)
    assert proto.in_flight == 1


def test_no_reply_commands_do_not_wait():
    assert "guest-shutdown" in NO_REPLY_COMMANDS
    proto = synced()
    cid, data = proto.send_command("guest-shutdown")
    assert frame_of(data)["execute"] == "guest-shutdown"
    assert proto.in_flight == 0
    nxt, data = proto.send_command("guest-ping")
    assert data
    # An error for the shutdown arrives later: dropped, not misrouted.
    events = proto.feed(
        b'{"id": %d, "error": {"class": "CommandNotFound", "desc": "disabled"}}\n{"return": {}, "id": %d}\n'
        % (cid, nxt)
    )
    assert events == [Return(nxt, "guest-ping", {})]
    assert proto.late_replies == 1
    assert proto.feed(b"") == [ConnectionClosed(0, True)]


def test_expect_reply_overrides_the_default():
    proto = synced()
    cid, _ = proto.send_command("guest-shutdown", expect_reply=True)
    (err,) = proto.feed(b'{"id": %d, "error": {"class": "CommandNotFound", "desc": "disabled"}}\n' % cid)
    assert err.desc == "disabled"


# -- giving up ----------------------------------------------------------------------------


def test_abandoned_command_forces_a_resync():
    proto = synced()
    lost, _ = proto.send_command("guest-info")
    proto.abandon(lost)
    assert proto.state is State.UNSYNCED and proto.in_flight == 0
    cid, data = proto.send_command("guest-ping")
    assert data.startswith(b"\xff")
    sid = proto.sync_id
    # The late reply comes first and is skipped with everything else.
    events = proto.feed(b'{"return": {"late": 1}, "id": %d}\n' % lost + sync_reply(sid))
    assert events == [Synced(sid)]
    assert frame_of(proto.data_to_send())["id"] == cid


def test_abandoned_sync_restarts_on_the_next_command():
    proto = QGAClientProtocol()
    first, _ = proto.sync()
    held, data = proto.send_command("guest-ping")
    assert data == b""
    proto.abandon(first)
    restart = proto.data_to_send()  # the held command needs a fresh resync
    second = frame_of(restart)["arguments"]["id"]
    assert restart.startswith(b"\xff") and second != first
    assert proto.feed(sync_reply(second)) == [Synced(second)]


def test_abandoned_held_command_is_dropped():
    proto = synced()
    proto.send_command("guest-info")
    held, _ = proto.send_command("guest-ping")
    proto.abandon(held)
    assert proto.held == 0 and proto.state is State.READY


def test_send_after_end_is_refused():
    proto = synced()
    assert proto.feed(b"") == [ConnectionClosed(0, False)]
    with pytest.raises(StateError):
        proto.send_command("guest-ping")
    with pytest.raises(StateError):
        proto.sync()


def test_garbage_while_ready_is_a_fault():
    proto = synced()
    cid, _ = proto.send_command("guest-ping")
    events = proto.feed(b'oops\n{"return": {}, "id": %d}\n' % cid)
    assert type(events[0]) is ProtocolFault and isinstance(events[0].item, qmpcore.FrameError)
    assert events[1] == Return(cid, "guest-ping", {})


def test_abandoned_queued_resync_is_not_sent():
    proto = synced()
    cid, _ = proto.send_command("guest-info")
    sid, data = proto.sync()
    assert data == b""
    proto.abandon(sid)
    proto.feed(b'{"return": {}, "id": %d}\n' % cid)
    assert proto.data_to_send() == b"" and proto.state is State.UNSYNCED


def test_a_qmp_greeting_is_reported_while_syncing():
    """QEMU greets at once: a guest agent connection to a monitor can fail at once."""
    proto = QGAClientProtocol()
    proto.sync()
    (fault,) = proto.feed(b'{"QMP": {"version": {}, "capabilities": ["oob"]}}\r\n')
    assert type(fault) is ProtocolFault and "QMP greeting" in str(fault.error) and "QMP" in fault.item


def test_h11_shape_and_closed_by():
    proto = QGAClientProtocol()
    sid, _ = proto.sync()
    proto.receive_data(b"\xff" + b'{"return": %d}\n' % sid)
    assert proto.next_event() == Synced(sid) and proto.next_event() is None
    cid, _ = proto.send_command("guest-ping")
    assert proto.pending_command(cid) == "guest-ping" and proto.commands_issued == 1
    proto.receive_data(b'{"return": {}, "id": %d}\n' % cid)
    assert proto.next_event() == Return(cid, "guest-ping", {})
    assert proto.closed_by is None
    proto.send_command("guest-shutdown")
    assert proto.closed_by == "guest-shutdown"
