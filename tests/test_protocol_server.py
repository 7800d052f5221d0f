"""Sans-IO QMP and QGA server protocols: every state transition, no I/O."""

from __future__ import annotations

import pytest

from qmpcore import CommandError, FrameError, StateError
from qmpcore.protocol._qapi import CommandInfo, Schema
from qmpcore.protocol.qga_server import QGAServerProtocol
from qmpcore.protocol.qmp_server import NO_ID, QMPServerProtocol, Request, event_bytes

GREETING = (
    b'{"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}, "package": ""}, "capabilities": ["oob"]}}\r\n'
)
NEGOTIATION = b'{"id": 1, "error": {"class": "CommandNotFound", "desc": "Expecting capabilities negotiation with \'qmp_capabilities\'"}}\r\n'


def error(desc: str, id: bytes = b"", cls: str = "GenericError") -> bytes:
    body = b'"error": {"class": "%s", "desc": "%s"}' % (cls.encode(), desc.encode())
    return (b'{"id": ' + id + b", " + body if id else b"{" + body) + b"}\r\n"


@pytest.fixture
def commands():
    schema = Schema.qemu_7_2()
    table = {name: schema.command_info(name) for name in schema.commands}
    table["sim-any"] = CommandInfo("sim-any")
    table["sim-off"] = CommandInfo("sim-off", enabled=False)
    return table


@pytest.fixture
def proto(commands):
    return QMPServerProtocol(commands)


@pytest.fixture
def ready(proto):
    """A protocol in command mode with its output drained."""
    proto.data_to_send()
    proto.receive_data(b'{"execute":"qmp_capabilities"}')
    assert proto.data_to_send() == b'{"return": {}}\r\n'
    return proto


def answer_all(proto, value=None):
    """Answer every released request with ``value`` (default ``{}``)."""
    handled = []
    while (request := proto.next_event()) is not None:
        handled.append(request)
        proto.send_return(request, value)
    return handled


# -- greeting and negotiation ---------------------------------------------------------


def test_greeting_is_queued_at_once(proto):
    assert proto.data_to_send() == GREETING
    assert proto.data_to_send() == b""
    assert not proto.negotiated


def test_greeting_version_and_capabilities():
    proto = QMPServerProtocol(version={"qemu": {"major": 8, "minor": 0, "micro": 1}, "package": "x"}, capabilities=())
    assert (
        proto.data_to_send()
        == b'{"QMP": {"version": {"qemu": {"micro": 1, "minor": 0, "major": 8}, "package": "x"}, "capabilities": []}}\r\n'
    )


def test_negotiation_mode_refuses_everything_else(proto):
    proto.data_to_send()
    for command in (b"query-status", b"no-such-command", b"stop"):
        proto.receive_data(b'{"execute":"%s","id":1}' % command)
        assert proto.next_event() is None
        assert proto.data_to_send() == NEGOTIATION
    assert not proto.negotiated


def test_negotiation_mode_keeps_other_errors(proto):
    proto.data_to_send()
    proto.receive_data(b'{ "execute": }{"exec-oob":"query-yank","id":2}[]')
    assert proto.data_to_send() == (
        error("JSON parse error, expecting value")
        + error("QMP input member 'exec-oob' is unexpected", b"2")
        + error("QMP input must be a JSON object")
    )


def test_capabilities_arguments_are_checked(proto):
    proto.data_to_send()
    proto.receive_data(b'{"execute":"qmp_capabilities","arguments":{"enable":["nonexistent"]},"id":3}')
    assert proto.data_to_send() == error("Parameter 'null' does not accept value 'nonexistent'", b"3")
    proto.receive_data(b'{"execute":"qmp_capabilities","arguments":{"enable":"oob"}}')
    assert proto.data_to_send() == error("Invalid parameter type for 'enable', expected: array")
    proto.receive_data(b'{"execute":"qmp_capabilities","arguments":{"x":1}}')
    assert proto.data_to_send() == error("Parameter 'x' is unexpected")
    assert not proto.negotiated


def test_negotiate_with_oob(proto):
    proto.data_to_send()
    proto.receive_data(b'{"execute":"qmp_capabilities","arguments":{"enable":["oob"]},"id":4}')
    assert proto.data_to_send() == b'{"return": {}, "id": 4}\r\n'
    assert proto.negotiated and proto.oob_enabled


def test_oob_not_offered_is_not_available(commands):
    proto = QMPServerProtocol(commands, capabilities=())
    proto.data_to_send()
    proto.receive_data(b'{"execute":"qmp_capabilities","arguments":{"enable":["oob"]}}')
    assert proto.data_to_send() == error("Capability oob not available")
    assert not proto.negotiated


def test_negotiating_twice(ready):
    ready.receive_data(b'{"execute":"qmp_capabilities","id":5}')
    assert ready.data_to_send() == error(
        "Capabilities negotiation is already complete, command ignored", b"5", "CommandNotFound"
    )
    assert ready.negotiated and not ready.oob_enabled


def test_no_events_before_negotiation(proto):
    proto.data_to_send()
    assert proto.send_event("STOP") is False
    assert proto.data_to_send() == b""


def test_events_after_negotiation(ready):
    assert ready.send_event("STOP", timestamp=1.5)
    assert ready.send_event("X", {"a": [1]}, timestamp=2)
    assert ready.data_to_send() == (
        b'{"timestamp": {"seconds": 1, "microseconds": 500000}, "event": "STOP"}\r\n'
        b'{"timestamp": {"seconds": 2, "microseconds": 0}, "event": "X", "data": {"a": [1]}}\r\n'
    )


def test_event_bytes_default_timestamp_and_pretty():
    assert event_bytes("E").startswith(b'{"timestamp": {"seconds": ')
    assert event_bytes("E", {}, 0.0, pretty=True) == (
        b'{\r\n    "timestamp": {\r\n        "seconds": 0,\r\n        "microseconds": 0\r\n    },\r\n'
        b'    "event": "E",\r\n    "data": {\r\n    }\r\n}\r\n'
    )


# -- requests and replies ---------------------------------------------------------------


def test_request_released_and_answered(ready):
    ready.receive_data(b'{"execute":"query-status","id":"s"}')
    request = ready.next_event()
    assert isinstance(request, Request)
    assert (request.command, request.arguments, request.id, request.oob) == ("query-status", {}, "s", False)
    assert request.has_id and ready.pending == 1
    assert ready.next_event() is None
    ready.send_return(request, {"status": "running"})
    assert ready.data_to_send() == b'{"return": {"status": "running"}, "id": "s"}\r\n'
    assert ready.pending == 0


def test_ids_absent_null_and_structured(ready):
    ready.receive_data(b'{"execute":"stop"}{"execute":"stop","id":null}{"execute":"stop","id":{"b":1,"a":2}}')
    requests = answer_all(ready)
    assert [r.id for r in requests] == [NO_ID, None, {"b": 1, "a": 2}]
    assert not requests[0].has_id and requests[1].has_id
    assert ready.data_to_send() == (
        b'{"return": {}}\r\n{"return": {}, "id": null}\r\n{"return": {}, "id": {"a": 2, "b": 1}}\r\n'
    )


def test_error_reply_puts_id_first(ready):
    ready.receive_data(b'{"execute":"sim-any","id":7}')
    ready.send_error(ready.next_event(), "DeviceNotFound", "no such device")
    assert ready.data_to_send() == error("no such device", b"7", "DeviceNotFound")


def test_answering_twice_or_foreign_requests_is_a_state_error(ready):
    ready.receive_data(b'{"execute":"sim-any"}')
    request = ready.next_event()
    ready.send_return(request)
    with pytest.raises(StateError):
        ready.send_return(request)
    with pytest.raises(StateError):
        ready.send_error(Request("sim-any", {}), "GenericError", "x")


@pytest.mark.parametrize(
    "data, reply",
    [
        (b'{"execute":"nope","id":1}', error("The command nope has not been found", b"1", "CommandNotFound")),
        (b'{"execute":"sim-off","id":1}', error("Command sim-off has been disabled", b"1", "CommandNotFound")),
        (
            b'{"execute":"query-status","arguments":[],"id":5}',
            error("QMP input member 'arguments' must be an object", b"5"),
        ),
        (
            b'{"execute":"query-status","arguments":null,"id":11}',
            error("QMP input member 'arguments' must be an object", b"11"),
        ),
        (b'{"execute":1,"id":6}', error("QMP input member 'execute' must be a string", b"6")),
        (b'{"id":7}', error("QMP input lacks member 'execute'", b"7")),
        (b"{}", error("QMP input lacks member 'execute'")),
        (b'{"execute":"query-status","foo":1,"id":8}', error("QMP input member 'foo' is unexpected", b"8")),
        (
            b'{"execute":"query-status","exec-oob":"query-status","id":9}',
            error("QMP input member 'exec-oob' is unexpected", b"9"),
        ),
        (b'{"exec-oob":"query-yank","id":10}', error("QMP input member 'exec-oob' is unexpected", b"10")),
        (b"[1,2]", error("QMP input must be a JSON object")),
        (b'"x"', error("QMP input must be a JSON object")),
        (b'{"execute":"query-status","id":12,"id":13}', error("JSON parse error, duplicate key")),
        (b'{"execute":"query-status","arguments":{"bogus":1},"id":3}', error("Parameter 'bogus' is unexpected", b"3")),
        (
            b'{"execute":"human-monitor-command","arguments":{},"id":4}',
            error("Parameter 'command-line' is missing", b"4"),
        ),
        (
            b'{"execute":"query-command-line-options","arguments":{"option":1},"id":2}',
            error("Invalid parameter type for 'option', expected: string", b"2"),
        ),
    ],
)
def test_envelope_and_argument_errors(ready, data, reply):
    """Corpus 04: each rejected request gets QEMU's error, id where QEMU puts it."""
    ready.receive_data(data)
    assert ready.next_event() is None
    assert ready.data_to_send() == reply


def test_user_commands_take_any_arguments(ready):
    ready.receive_data(b'{"execute":"sim-any","arguments":{"x":[1]}}')
    assert ready.next_event().arguments == {"x": [1]}


def test_parse_errors_have_no_id_and_recovery_continues(ready):
    ready.receive_data(b'{"execute":"query-status","id":0123}\n{"execute":"sim-any","id":"after"}')
    assert ready.data_to_send() == error("JSON parse error, stray '01'") + error("JSON parse error, expecting value")
    assert ready.next_event().id == "after"


def test_0xff_is_answered_once(ready):
    ready.receive_data(b"\xff")
    assert (
        ready.data_to_send()
        == b'{"error": {"class": "GenericError", "desc": "JSON parse error, stray \'\\uFFFD\'"}}\r\n'
    )
    assert ready.next_event() is None


def test_numbers_need_a_following_byte(ready):
    ready.receive_data(b"1")
    assert ready.data_to_send() == b"" and ready.buffered == 1
    ready.receive_data(b"\n")
    assert ready.data_to_send() == error("QMP input must be a JSON object")


# -- in-band order, oob, flow control ------------------------------------------------------


def test_in_band_commands_run_one_at_a_time(ready):
    ready.receive_data(b'{"execute":"sim-any","id":1}{"execute":"nope","id":2}}{"execute":"sim-any","id":3}')
    first = ready.next_event()
    assert first.id == 1 and ready.next_event() is None
    assert ready.data_to_send() == b""  # errors wait behind the running command
    ready.send_return(first)
    assert ready.data_to_send() == (
        b'{"return": {}, "id": 1}\r\n'
        + error("The command nope has not been found", b"2", "CommandNotFound")
        + error("JSON parse error, expecting value")
    )
    third = ready.next_event()
    assert third.id == 3


def test_exec_oob_overtakes_a_running_command(commands):
    proto = QMPServerProtocol(commands)
    proto.receive_data(b'{"execute":"qmp_capabilities","arguments":{"enable":["oob"]}}')
    proto.data_to_send()
    proto.receive_data(b'{"execute":"sim-any","id":"slow"}{"exec-oob":"query-yank","id":"fast"}')
    slow = proto.next_event()
    fast = proto.next_event()
    assert (slow.id, fast.id, fast.oob) == ("slow", "fast", True)
    assert proto.pending == 2
    proto.send_return(fast, [])
    proto.send_return(slow)
    assert proto.data_to_send() == b'{"return": [], "id": "fast"}\r\n{"return": {}, "id": "slow"}\r\n'


def test_oob_rules(commands):
    proto = QMPServerProtocol(commands)
    proto.receive_data(b'{"execute":"qmp_capabilities","arguments":{"enable":["oob"]}}')
    proto.data_to_send()
    proto.receive_data(b'{"exec-oob":"query-status","id":"oob2"}')
    assert proto.data_to_send() == error("The command query-status does not support OOB", b'"oob2"')
    proto.receive_data(b'{"execute":"query-status","exec-oob":"query-yank","id":"both"}')
    assert proto.data_to_send() == error("QMP input member 'execute' clashes with 'exec-oob'", b'"both"')
    proto.receive_data(b'{"exec-oob":1}')
    assert proto.data_to_send() == error("QMP input member 'exec-oob' must be a string")


def test_reading_pauses_while_the_queue_is_full(ready):
    ready.receive_data(b'{"execute":"sim-any"}')
    running = ready.next_event()
    assert not ready.reading_paused
    ready.receive_data(b'{"execute":"sim-any"}')
    assert ready.reading_paused  # one queued command is the limit without oob
    ready.send_return(running)
    assert not ready.reading_paused
    answer_all(ready)


def test_pretty_output(commands):
    proto = QMPServerProtocol(commands, pretty=True)
    assert proto.data_to_send().startswith(b'{\r\n    "QMP": {\r\n')
    proto.receive_data(b'{"execute":"qmp_capabilities"}{ "execute": }')
    assert proto.data_to_send() == (
        b'{\r\n    "return": {\r\n    }\r\n}\r\n'
        b'{\r\n    "error": {\r\n        "class": "GenericError",\r\n'
        b'        "desc": "JSON parse error, expecting value"\r\n    }\r\n}\r\n'
    )
    proto.receive_data(b'{"execute":"sim-any","id":1}')
    proto.send_error(proto.next_event(), "GenericError", "x")
    assert proto.data_to_send() == (
        b'{\r\n    "id": 1,\r\n    "error": {\r\n        "class": "GenericError",\r\n        "desc": "x"\r\n    }\r\n}\r\n'
    )
    proto.send_event("STOP", timestamp=0)
    assert proto.data_to_send().startswith(b'{\r\n    "timestamp": {\r\n')


def test_send_raw_is_verbatim(ready):
    ready.send_raw(b"\x00garbage")
    assert ready.data_to_send() == b"\x00garbage"


# -- coalesced errors, output limit, send() ------------------------------------------------


STRAY_FF = b'{"error": {"class": "GenericError", "desc": "JSON parse error, stray \'\\uFFFD\'"}}\r\n'
EXPECTING = error("JSON parse error, expecting value")


def negotiated(**options) -> QMPServerProtocol:
    proto = QMPServerProtocol(Schema.qemu_7_2().command_infos(), **options)
    proto.receive_data(b'{"execute":"qmp_capabilities"}')
    proto.data_to_send()
    return proto


class _OneItem:
    """Stands in for the framer: every feed yields ``items``."""

    buffered = 0

    def __init__(self, items) -> None:
        self.items = items

    def feed(self, data):
        return list(self.items)


def coalesced(reason: str, count: int) -> FrameError:
    """A FrameError standing for ``count`` identical errors, as a
    coalescing framer reports it."""
    try:
        return FrameError(reason, 0, True, count=count)  # type: ignore[call-arg]
    except TypeError:  # a FrameError without the count argument
        error = FrameError(reason, 0, True)
        error.count = count  # type: ignore[attr-defined]
        return error


@pytest.mark.parametrize("limit", [None, 4096])
def test_coalesced_frame_error_is_answered_count_times(limit):
    proto = negotiated(output_limit=limit)
    proto._framer = _OneItem([coalesced("JSON parse error, stray '\ufffd'", 1000)])
    proto.receive_data(b"x")
    chunks = []
    while True:
        request = proto.next_event()
        chunks.append(proto.data_to_send())
        if request is None and not proto.can_progress:
            break
    assert b"".join(chunks) == STRAY_FF * 1000
    if limit is not None:
        assert len(chunks) > 1 and max(map(len, chunks)) <= limit + len(STRAY_FF)


def test_frame_errors_one_by_one_are_answered_like_one_with_a_count():
    one = negotiated()
    one._framer = _OneItem([coalesced("JSON parse error, expecting value", 300)])
    one.receive_data(b"x")
    many = negotiated()
    many._framer = _OneItem([FrameError("JSON parse error, expecting value", i) for i in range(300)])
    many.receive_data(b"x")
    assert one.data_to_send() == many.data_to_send() == EXPECTING * 300


def test_output_limit_holds_requests_behind_errors_in_order():
    proto = negotiated(output_limit=1024)
    proto.receive_data(b"}" * 100 + b'{"execute":"query-status","id":1}')
    output = proto.data_to_send()
    assert len(output) <= 1024 + len(EXPECTING) and proto.can_progress
    while (request := proto.next_event()) is None:
        output += proto.data_to_send()
    output += proto.data_to_send()
    assert output == EXPECTING * 100 and request.id == 1
    assert proto.send(request, {"x": 1}) == b'{"return": {"x": 1}, "id": 1}\r\n'


def test_send_returns_the_bytes_and_keeps_the_order():
    proto = negotiated()
    proto.receive_data(b'{"execute":"query-status","id":1}{"execute":"query-name","id":2}')
    first = proto.next_event()
    assert proto.send_event("STOP", timestamp=0)  # queued before the answer
    data = proto.send(first, {"a": 1})
    assert data.endswith(b'{"return": {"a": 1}, "id": 1}\r\n') and data.startswith(b'{"timestamp"')
    assert proto.data_to_send() == b""
    second = proto.next_event()
    assert proto.send(second, error=CommandError("DeviceNotFound", "no")) == (
        b'{"id": 2, "error": {"class": "DeviceNotFound", "desc": "no"}}\r\n'
    )


def test_agent_answers_a_coalesced_error_count_times():
    agent = QGAServerProtocol({})
    agent.connection_made()
    agent._framer = _OneItem([coalesced("JSON parse error, stray '\ufffd'", 1000)])
    agent.receive_data(b"x")
    assert agent.data_to_send() == STRAY_FF.replace(b"\r\n", b"\n") * 1000


def test_old_send_spelling_queues_for_data_to_send(ready):
    ready.receive_data(b'{"execute":"query-status","id":1}}')
    request = ready.next_event()
    ready.send_return(request, {"ok": True})
    assert ready.data_to_send() == b'{"return": {"ok": true}, "id": 1}\r\n' + EXPECTING


# -- guest agent -------------------------------------------------------------------------


@pytest.fixture
def agent():
    infos = {
        "guest-sync-delimited": CommandInfo("guest-sync-delimited"),
        "guest-ping": CommandInfo("guest-ping"),
        "guest-shutdown": CommandInfo("guest-shutdown", success_response=False),
        "guest-off": CommandInfo("guest-off", enabled=False),
    }
    return QGAServerProtocol(infos)


def test_agent_has_no_greeting_and_ends_lines_with_lf(agent):
    assert agent.data_to_send() == b""
    agent.receive_data(b'{"execute":"guest-ping","id":"p"}')
    agent.send_return(agent.next_event())
    assert agent.data_to_send() == b'{"return": {}, "id": "p"}\n'


def test_agent_sync_delimited_reply_starts_with_0xff(agent):
    agent.receive_data(b'\xff{"execute":"guest-sync-delimited","arguments":{"id":1}}\n')
    assert (
        agent.data_to_send() == b'{"error": {"class": "GenericError", "desc": "JSON parse error, stray \'\\uFFFD\'"}}\n'
    )
    request = agent.next_event()
    agent.send_return(request, request.arguments["id"])
    assert agent.data_to_send() == b'\xff{"return": 1}\n'


def test_agent_error_replies(agent):
    agent.receive_data(b'{"execute":"qmp_capabilities"}{"exec-oob":"guest-ping","id":1}{"execute":"guest-off"}1\n')
    assert agent.data_to_send() == (
        b'{"error": {"class": "CommandNotFound", "desc": "The command qmp_capabilities has not been found"}}\n'
        b'{"id": 1, "error": {"class": "GenericError", "desc": "QMP input member \'exec-oob\' is unexpected"}}\n'
        b'{"error": {"class": "CommandNotFound", "desc": "Command guest-off has been disabled"}}\n'
        b'{"error": {"class": "GenericError", "desc": "QMP input must be a JSON object"}}\n'
    )


def test_agent_commands_without_success_response(agent):
    agent.receive_data(b'{"execute":"guest-shutdown"}{"execute":"guest-ping"}')
    agent.send_return(agent.next_event())
    assert agent.data_to_send() == b""
    agent.send_return(agent.next_event())
    assert agent.data_to_send() == b'{"return": {}}\n'


def test_agent_parser_survives_reconnects(agent):
    """qga_03: a previous client's half command swallows the next one."""
    agent.receive_data(b'{"execute":"guest-ping","arguments":{')
    agent.connection_made()
    agent.receive_data(b'{"execute":"guest-ping"}\n')
    assert agent.next_event() is None and agent.data_to_send() == b""
    agent.receive_data(b'\xff{"execute":"guest-ping"}\n')
    assert agent.data_to_send().startswith(b'{"error"')
    assert agent.next_event().command == "guest-ping"


def test_agent_reconnect_forgets_unanswered_requests(agent):
    agent.receive_data(b'{"execute":"guest-ping"}{"execute":"guest-ping"}')
    old = agent.next_event()
    agent.connection_made()
    with pytest.raises(StateError):
        agent.send_return(old)
    assert agent.next_event() is None and agent.pending == 0
