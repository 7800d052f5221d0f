"""The server's fast path for ordinary requests gives the general path's bytes.

An in-band request read on its own, with nothing queued, skips the queue; a
request whose members are a string ``execute``, an object ``arguments`` and
an ``id`` skips the member-order loop; a canned (``Encoded``) value with an
integer id is formatted in one step.  Each must answer exactly what the
general path answers: here the same requests go through both (one read per
request, and all of them in one read, which queues them) and the replies
are compared byte for byte, with QEMU's words for the edge cases.  The
per-request cost is counted in Python calls (no timing).
"""

from __future__ import annotations

import asyncio
import itertools
import os
import sys

import orjson
import pytest

from conftest import REPO
from qmpcore.client import share
from qmpcore.protocol._qemu_output import Encoded, to_json
from qmpcore.protocol.qga_server import QGAServerProtocol
from qmpcore.protocol.qmp_server import NO_ID, QMPServerProtocol
from qmpcore.server import SimulatedGuestAgent, SimulatedVM

sys.path.insert(0, str(REPO / "benchmarks"))
import bench_server

_IDS = [0, 7, -1, (1 << 63) - 1, 1 << 63, (1 << 64) - 1, 1 << 64, -(1 << 63), -(1 << 63) - 1, 10**30]
_IDS += [1.5, True, False, None, "x", "a,b: c", "\u00e9\U0001f600", [1, {"b": 2}], {"z": 1, "a": [None]}, {}]

# Requests fed to the server after negotiation, each with QEMU's answer
# where the general path answers it on its own (None: a reply of the
# command's value, checked against the general path below).
_EDGE_CASES: list[tuple[bytes, bytes | None]] = [
    (b'{"execute": "query-status"}', None),
    (b'{"id": 1, "execute": "query-status"}', None),
    (b'{"execute": "query-status", "arguments": {}, "id": "x"}', None),
    (b'{"arguments": {}, "execute": "query-status"}', None),
    (b'{"execute": "query-status", "id": null}', None),
    (
        b'{"execute": "query-status", "arguments": null, "id": 2}',
        b'{"id": 2, "error": {"class": "GenericError", "desc": "QMP input member \'arguments\' must be an object"}}',
    ),
    (
        b'{"execute": "query-status", "arguments": [], "id": 3}',
        b'{"id": 3, "error": {"class": "GenericError", "desc": "QMP input member \'arguments\' must be an object"}}',
    ),
    (
        b'{"execute": 5, "id": 4}',
        b'{"id": 4, "error": {"class": "GenericError", "desc": "QMP input member \'execute\' must be a string"}}',
    ),
    (
        b'{"execute": "query-status", "id": 5, "control": {}}',
        b'{"id": 5, "error": {"class": "GenericError", "desc": "QMP input member \'control\' is unexpected"}}',
    ),
    (
        b'{"execute": "query-status", "exec-oob": "query-status", "id": 6}',
        b'{"id": 6, "error": {"class": "GenericError", "desc": "QMP input member \'exec-oob\' is unexpected"}}',
    ),
    (
        b'{"execute": "nope", "id": 7}',
        b'{"id": 7, "error": {"class": "CommandNotFound", "desc": "The command nope has not been found"}}',
    ),
    (
        b'{"execute": "query-status", "arguments": {"x": 1}, "id": 8}',
        b'{"id": 8, "error": {"class": "GenericError", "desc": "Parameter \'x\' is unexpected"}}',
    ),
    (
        b'{"execute": "qmp_capabilities", "id": 9}',
        b'{"id": 9, "error": {"class": "CommandNotFound", '
        b'"desc": "Capabilities negotiation is already complete, command ignored"}}',
    ),
    (b'{"id": 10}', b'{"id": 10, "error": {"class": "GenericError", "desc": "QMP input lacks member \'execute\'"}}'),
    (b"[1]", b'{"error": {"class": "GenericError", "desc": "QMP input must be a JSON object"}}'),
]


@pytest.fixture(autouse=True)
def _benchmark_sessions_uncounted():
    """The benchmark's session is never closed (its transport only counts
    writes): take it off the process's count of open connections, which
    the rests of costly peers are bounded by (qmpcore.client.share)."""
    before = share.load[0]
    yield
    share.load[0] = before


def _orjson_can(value: object) -> bool:
    try:
        orjson.dumps(value)
    except TypeError:
        return False
    return True


def _served(vm: SimulatedVM, reads: list[bytes], *, pretty: bool = False, oob: bool = False) -> bytes:
    """Everything a negotiated monitor writes for ``reads`` (one
    ``receive_data`` each), running each command with ``vm``'s handler."""
    proto = QMPServerProtocol(vm.commands, version=vm.version, pretty=pretty, output_limit=64 << 10)
    enable = b', "arguments": {"enable": ["oob"]}' if oob else b""
    proto.receive_data(b'{"execute": "qmp_capabilities"%s}' % enable)
    out = [proto.data_to_send()]
    for data in reads:
        proto.receive_data(data)
        while True:
            request = proto.next_event()
            if request is None:
                if not proto.can_progress:
                    break
            else:
                out.append(proto.send(request, vm.handler(request.command)(None)))  # type: ignore[arg-type]
            out.append(proto.data_to_send())
        out.append(proto.data_to_send())
    return b"".join(out)


@pytest.mark.parametrize("pretty", [False, True])
@pytest.mark.parametrize("oob", [False, True])
def test_one_request_per_read_answers_as_the_queued_path(pretty, oob):
    vm = SimulatedVM("fast")
    requests = [request for request, _ in _EDGE_CASES]
    # (orjson spells some ids differently from QEMU: non-ASCII, floats)
    requests += [b'{"execute": "query-status", "id": %s}' % orjson.dumps(id) for id in _IDS if _orjson_can(id)]
    requests += [b'{"execute": "query-status", "id": %s}' % to_json(id) for id in _IDS]
    one_by_one = _served(vm, requests, pretty=pretty, oob=oob)
    together = _served(vm, [b"".join(requests)], pretty=pretty, oob=oob)
    assert one_by_one == together
    assert one_by_one.count(b"\r\n" if not pretty else b"\r\n}\r\n") >= len(requests)


def test_edge_cases_answer_in_qemus_words():
    vm = SimulatedVM("fast")
    status = to_json(vm.handler("query-status")(None))  # type: ignore[arg-type]
    greeting = _served(vm, [])
    for request, expected in _EDGE_CASES:
        written = _served(vm, [request])[len(greeting) :]
        if expected is None:
            message = orjson.loads(request)
            expected = b'{"return": ' + status
            if "id" in message:
                expected += b', "id": ' + to_json(message["id"])
            expected += b"}"
        assert written == expected + b"\r\n", request


def test_ordinary_members_never_fail_the_envelope_check_in_any_order():
    # The fast path skips QEMU's member-order loop only for requests that
    # loop cannot refuse, whatever order QEMU visits their members in.
    proto = QMPServerProtocol(SimulatedVM("fast").commands)
    proto.data_to_send()
    members = {"execute": "query-status", "arguments": {"a": 1}, "id": 3}
    for size in range(1, 4):
        for keys in itertools.permutations(members, size):
            if "execute" not in keys:
                continue
            message = {key: members[key] for key in keys}
            request_id = message.get("id", NO_ID)
            assert proto._check_envelope(message, request_id) == ("query-status", False)
    assert proto.data_to_send() == b""


@pytest.mark.parametrize("request_id", _IDS)
def test_canned_reply_in_one_step_matches_the_encoder(request_id):
    vm = SimulatedVM("fast")
    proto = QMPServerProtocol(vm.commands)
    proto.receive_data(b'{"execute": "qmp_capabilities"}')
    proto.data_to_send()
    canned = vm.handler("query-status")(None)  # type: ignore[arg-type]
    assert type(canned) is Encoded
    proto.receive_data(b'{"execute": "query-status", "id": %s}' % to_json(request_id))
    request = proto.next_event()
    assert request is not None
    reply = proto.send(request, canned)
    # (the value as the VM builds it, through the general encoder)
    value = {"running": True, "singlestep": False, "status": "running"}
    assert reply == proto._return_bytes(request.id, value)
    assert reply == b'{"return": %s, "id": %s}\r\n' % (canned, to_json(request_id))


def test_guest_agent_prefix_and_line_ending():
    agent = SimulatedGuestAgent()
    proto = QGAServerProtocol(agent.commands)
    proto.connection_made()
    written = []
    for line in (
        b'{"execute": "guest-sync-delimited", "arguments": {"id": 5}}',
        b'{"execute": "guest-sync", "arguments": {"id": 6}, "id": 1}',
    ):
        proto.receive_data(line)
        request = proto.next_event()
        assert request is not None
        written.append(proto.send(request, agent.handler(request.command)(request)))  # type: ignore[arg-type]
    assert written == [b'\xff{"return": 5}\n', b'{"return": 6, "id": 1}\n']


def test_session_answers_each_request_with_one_write():
    loop = asyncio.new_event_loop()
    try:
        run = bench_server.prepared("session", loop)
        assert run() == bench_server.BATCH
        assert run() == bench_server.BATCH
    finally:
        loop.close()


_FRAMING = os.path.join("qmpcore", "framing", "")


def _python_calls(run) -> int:
    """Python calls one batch makes, the framer's own left out (the pure
    framer is Python, the compiled one is not)."""
    calls = 0

    def count(frame, event, arg):
        nonlocal calls
        if event == "call" and _FRAMING not in frame.f_code.co_filename:
            calls += 1

    sys.setprofile(count)
    try:
        assert run() == bench_server.BATCH
    finally:
        sys.setprofile(None)
    return calls


@pytest.mark.parametrize("name", list(bench_server.CASES))
def test_python_calls_per_request(name):
    # What an ordinary query-status costs the server, in Python calls (the
    # figure benchmarks/bench_server.py measures in instructions): 24 in the
    # protocol and 54 in the session before the fast path, 9 and 21 after.
    loop = asyncio.new_event_loop()
    try:
        run = bench_server.prepared(name, loop)
        run()
        per_request = _python_calls(run) / bench_server.BATCH
    finally:
        loop.close()
    assert per_request <= {"protocol": 10, "session": 22}[name], per_request
