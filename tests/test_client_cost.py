"""What one command costs the asyncio client and Fleet, by counts (no timing).

The per-command benchmarks live in ``benchmarks/bench_client.py``; here the
counts they rely on are checked: commands submitted in one loop iteration go
out in one write, and a batch of commands leaves nothing behind.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import tracemalloc

import pytest

from conftest import REPO
from qmpcore.framing import encode

sys.path.insert(0, str(REPO / "benchmarks"))
import bench_client

REPLY = bench_client.REPLY


async def test_commands_of_one_tick_go_out_in_one_write():
    client = bench_client.ready_client()
    transport = client._transport
    first = client._proto._next_id + 1
    futures = [client.submit("query-status") for _ in range(100)]
    assert transport.writes == 1  # the first goes out at once (nothing in flight)
    await asyncio.sleep(0)
    assert transport.writes == 2  # the other 99 together, at the end of the tick
    assert transport.written == sum(
        len(encode({"execute": "query-status", "id": cid})) for cid in range(first, first + 100)
    )
    client._received(memoryview(b"".join(REPLY % cid for cid in range(first, first + 100))))
    assert all(fut.result()["status"] == "running" for fut in futures)
    assert not client._waiters and client._proto.in_flight == 0


async def test_one_command_in_flight_is_written_at_once():
    client = bench_client.ready_client()
    transport = client._transport
    for _ in range(3):
        fut = client.submit("query-status")
        assert transport.writes >= 1 and not fut.done()
        client._received(memoryview(REPLY % client._proto._next_id))
        assert fut.result()["running"] is True
    assert transport.writes == 3


@pytest.mark.parametrize("name", list(bench_client.CASES))
def test_benchmark_cases_complete_every_command(name):
    loop = asyncio.new_event_loop()
    try:
        run = bench_client.prepared(name, loop)
        assert run() == bench_client.BATCH
        assert run() == bench_client.BATCH
    finally:
        loop.close()


def test_answered_commands_leave_nothing_behind():
    # Memory after a batch of answered commands is what it was before: no
    # waiter, deadline, callback or buffer grows with the commands done.
    loop = asyncio.new_event_loop()
    try:
        run = bench_client.prepared("aio-pipelined", loop)
        for _ in range(5):
            run()
        tracemalloc.start()
        try:
            before = tracemalloc.take_snapshot()
            for _ in range(20):
                run()
            after = tracemalloc.take_snapshot()
        finally:
            tracemalloc.stop()
        grown = sum(stat.size_diff for stat in after.compare_to(before, "filename") if stat.size_diff > 0)
        assert grown < 64 * 1024, grown  # 2,000 commands; a leak of 32 bytes each would show
    finally:
        loop.close()


def test_benchmark_suite_runs():
    pytest.importorskip("pytest_benchmark")
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "benchmarks/", "-q", "-p", "no:cacheprovider",
         "--benchmark-disable", "-k", "test_client"],
        capture_output=True, text=True, cwd=REPO, timeout=240,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:]
    assert "5 passed" in done.stdout


def test_memory_per_connection_tool_runs():
    done = subprocess.run(
        [sys.executable, "benchmarks/memory_per_connection.py", "5", "client"],
        capture_output=True, text=True, cwd=REPO, timeout=120, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert "bytes per connection (5 connections)" in done.stdout
    assert "qmpcore/protocol/_client.py:" in done.stdout  # the lines that allocated are named


_STOP = b'{"event": "STOP", "data": {}, "timestamp": {"seconds": 1, "microseconds": 2}}\r\n'
_ERROR = b'{"error": {"class": "GenericError", "desc": "no"}, "id": %d}\r\n'


def _reads(first: int) -> list[bytes]:
    """Reads mixing replies settled in the protocol's loop with events after them."""
    a, b, c, d, e, f = range(first, first + 6)
    return [
        REPLY % a + REPLY % b,  # replies only
        REPLY % c + _STOP + _ERROR % d,  # a reply, then an event and an error reply
        _STOP + REPLY % e + b'{"return": {}, "id"',  # an event first; a frame left incomplete
        b": %d}\r\n" % f + _STOP,
    ]


async def test_replies_settled_in_the_protocol_loop_match_the_event_path(caplog):
    # The same reads through the fast path (no tracing) and the event path
    # (DEBUG tracing: every reply an event, logged): the same outcomes,
    # counters and event costs.
    results = []
    for traced in (False, True):
        client = bench_client.QMPClient(
            bench_client.ready_protocol(), bench_client.Address(1, "/bench/vm.qmp"), 10, 10.0
        )
        client._transport = bench_client.NullTransport()
        first = client._proto._next_id + 1
        futures = [client.submit("query-status") for _ in range(6)]
        caplog.set_level("DEBUG" if traced else "WARNING", logger="qmpcore.client")
        outcomes = []
        for data in _reads(first):
            client._received(memoryview(data))
            outcomes.append((client._answered, repr(client._last_outcome), client._router.queued_bytes))
        caplog.set_level("WARNING", logger="qmpcore.client")
        settled = [repr(fut.exception()) if fut.exception() else fut.result() for fut in futures]
        backlog = [client._router.backlog.get_nowait().name for _ in range(len(client._router.backlog))]
        results.append((outcomes, settled, backlog, client._proto.in_flight, dict(client.counters)))
        assert traced == any("reply to query-status" in r.getMessage() for r in caplog.records)
    fast, traced = results
    assert fast == traced
    outcomes, settled, backlog, in_flight, _ = fast
    assert [answered for answered, _, _ in outcomes] == [2, 4, 5, 6]
    assert outcomes[1][1].startswith("GenericError") and outcomes[2][1] == "None"
    assert settled[3].startswith("GenericError") and settled[5] == {}
    assert backlog == ["STOP"] * 3 and in_flight == 0


async def test_deadlines_stay_bounded_behind_a_waiting_command_and_fire_in_order():
    import qmpcore

    client = bench_client.ready_client()
    hung = client.submit("query-status", timeout=0.3)
    for _ in range(500):  # answered behind the one that waits: their deadlines go
        fut = client.submit("query-status", timeout=0.3)
        client._received(memoryview(REPLY % client._proto._next_id))
        assert fut.done()
        assert len(client._deadlines) <= 2 * len(client._waiters) + 65
    later = client.submit("query-status", timeout=0.3)
    sooner = client.submit("query-status", timeout=0.05)  # before the others: kept apart
    assert len(client._late) == 1
    order = []
    for fut in (hung, later, sooner):
        fut.add_done_callback(order.append)
    await asyncio.wait([hung, later, sooner])
    assert order == [sooner, hung, later]
    assert all(isinstance(fut.exception(), qmpcore.TimeoutError) for fut in order)
    assert "query-status: no reply within 0.05 s" in str(sooner.exception())
    assert client._deadlines == [] and not client._late and client._sweeper is None
    assert client.counters["timeouts"] == 3
