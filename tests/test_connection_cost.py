"""What a command and an idle connection cost the asyncio client and Fleet, by counts.

A Fleet command schedules nothing on the loop of its own (its bookkeeping
is the client's counters), commands without arguments are framed exactly as
the encoder frames them, identical greetings are shared between
connections, and an idle connection allocates no event deques.
"""

from __future__ import annotations

import asyncio
import sys

import pytest

from conftest import REPO
from qmpcore.framing import encode
from qmpcore.protocol.qmp_client import QMPClientProtocol

sys.path.insert(0, str(REPO / "benchmarks"))
import bench_client

REPLY = bench_client.REPLY


def _fleet(count: int):
    """A fleet of ``count`` negotiated clients on null transports (in a running loop)."""
    fleet = bench_client.Fleet({f"vm{i}": f"/bench/vm{i}.qmp" for i in range(count)}, command_timeout=10.0)
    for name in fleet.vms:
        member = bench_client._Member(name, f"/bench/{name}.qmp", fleet)
        client = bench_client.ready_client()
        member.base = client._proto.commands_issued
        member.client = client
        fleet._members[name] = member
    fleet._connected = count
    return fleet


async def test_fleet_command_adds_no_callback_or_loop_handle():
    fleet = _fleet(3)
    loop = asyncio.get_running_loop()
    futures = [fleet.submit(vm, "query-status") for vm in fleet.vms]
    assert fleet.stats().in_flight == 3
    scheduled = len(loop._ready)  # type: ignore[attr-defined]
    for vm in fleet.vms:
        client = fleet.client(vm)
        client._received(memoryview(REPLY % client._proto._next_id))
    assert all(fut.result()["running"] for fut in futures)
    assert len(loop._ready) == scheduled  # type: ignore[attr-defined]  # nothing scheduled per reply
    assert all(not fut._callbacks for fut in futures)  # type: ignore[attr-defined]
    stats = fleet.stats()
    assert (stats.in_flight, stats.commands, stats.timeouts, stats.last_errors) == (0, 3, 0, {})


async def test_fleet_counts_survive_a_lost_connection():
    fleet = _fleet(2)
    a, b = fleet.vms
    answered = fleet.submit(a, "query-status")
    client = fleet.client(a)
    client._received(memoryview(REPLY % client._proto._next_id))
    assert answered.result()["running"]
    pending = fleet.submit(a, "query-status")
    fleet._members[a].attempt = 3
    client._router.add_listener(lambda *_: None, fleet._members[a].on_close)
    fleet.backoff = None  # no reconnection in this test
    client._lost(None)
    assert pending.done() and fleet.client(a) is None
    stats = fleet.stats()
    assert (stats.in_flight, stats.commands, stats.connected) == (0, 2, 1)
    assert set(stats.last_errors) == {a}
    assert fleet._members[b].attempt == 0


def test_commands_without_arguments_are_framed_as_the_encoder_frames_them():
    proto = bench_client.ready_protocol()
    for name in ("query-status", 'odd "name"\n', "n\u00e9"):
        cid, frame = proto.send_command(name)
        assert frame == encode({"execute": name, "id": cid})
    cid, frame = proto.send_command("x" * 1000)  # long names take the encoder
    assert frame == encode({"execute": "x" * 1000, "id": cid})


def test_identical_greetings_are_shared_and_odd_ones_are_not():
    first, second, odd = QMPClientProtocol(), QMPClientProtocol(), QMPClientProtocol()
    first.feed(bench_client.GREETING)
    second.feed(bench_client.GREETING)
    assert first.greeting is second.greeting
    odd.feed(bench_client.GREETING.replace(b'"capabilities"', b'"extra": [1, 2, 3], "capabilities"'))
    assert odd.greeting is not first.greeting
    assert odd.greeting.raw["QMP"]["extra"] == [1, 2, 3]
    assert odd.greeting.version == first.greeting.version


async def test_greeting_property_is_a_copy():
    client = bench_client.ready_client()
    greeting = client.greeting
    greeting["QMP"]["capabilities"].append("mine")
    assert client.greeting["QMP"]["capabilities"] == ["oob"]


async def test_idle_connection_holds_no_event_deques():
    client = bench_client.QMPClient(bench_client.ready_protocol(), bench_client.Address(1, "/bench/vm.qmp"), 10, None)
    client._transport = bench_client.NullTransport()
    backlog = client._router.backlog
    assert type(backlog._items) is tuple and type(client._proto._ready) is type(None)
    client._received(memoryview(b'{"event": "STOP", "data": {}, "timestamp": {"seconds": 1, "microseconds": 2}}\r\n'))
    assert len(backlog) == 1 and backlog.get_nowait().name == "STOP"


async def test_execute_all_waits_with_one_callback_not_one_per_vm():
    fleet = _fleet(50)
    fleet._started = True
    clients = [fleet.client(vm) for vm in fleet.vms]
    task = asyncio.ensure_future(fleet.execute_all("query-status"))
    await asyncio.sleep(0)  # the task submits every command, then waits
    pending = [fut for client in clients for fut in client._waiters.values()]
    assert len(pending) == 50
    assert sum(len(fut._callbacks or ()) for fut in pending) == 1  # type: ignore[attr-defined]
    for client in reversed(clients):  # the watched future answered last
        client._received(memoryview(REPLY % client._proto._next_id))
    results = await task
    assert list(results) == fleet.vms and all(r["running"] for r in results.values())


async def test_cancelled_execute_all_cancels_what_is_pending():
    fleet = _fleet(3)
    fleet._started = True
    first = fleet.client(fleet.vms[0])
    task = asyncio.ensure_future(fleet.execute_all("query-status"))
    await asyncio.sleep(0)
    first._received(memoryview(REPLY % first._proto._next_id))
    futures = [fut for vm in fleet.vms[1:] for fut in fleet.client(vm)._waiters.values()]
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert all(fut.cancelled() for fut in futures)
