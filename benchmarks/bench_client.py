"""Per-command client cost without a socket: encode, feed the reply, resolve.

Run with ``python -m pytest benchmarks/bench_client.py --benchmark-enable``.
Each case runs 100 ``query-status`` commands through the real objects, with
the socket replaced by a transport that only counts what is written and the
reply bytes fed in as the event loop would feed a read; the figures are per
batch of 100, so divide by 100 for one command.  Group ``client``:

* ``bare``: the floor for comparison -- ``orjson`` encode and decode and one
  future per command, no protocol at all;
* ``protocol``: the sans-IO :class:`~qmpcore.protocol.qmp_client.QMPClientProtocol`
  alone (``send_command`` then ``feed``);
* ``aio-round-trip``: :meth:`QMPClient.submit` and its reply, one at a time;
* ``aio-pipelined``: 100 submits, then one read holding the 100 replies;
* ``fleet``: :meth:`Fleet.submit` on 100 VMs, then each VM's reply.

``python benchmarks/bench_client.py CASE [BATCHES]`` runs one case bare, for
profilers (``valgrind --tool=callgrind``, ``py-spy``), with the cyclic
collector off: instruction counts of two runs (``PYTHONHASHSEED=0``, 5 and
15 batches) then differ by the commands alone.
"""

from __future__ import annotations

import asyncio
import socket
import sys
from collections.abc import Callable
from typing import Any

import orjson
import pytest

from _counting import NullTransport, run_batches
from qmpcore.client.address import Address
from qmpcore.client.aio import QMPClient
from qmpcore.client.fleet import Fleet, _Member
from qmpcore.protocol.qmp_client import QMPClientProtocol

BATCH = 100
GREETING = (
    b'{"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}, "package": ""}, "capabilities": ["oob"]}}\r\n'
)
REPLY = b'{"return": {"status": "running", "singlestep": false, "running": true}, "id": %d}\r\n'


def ready_protocol() -> QMPClientProtocol:
    """A protocol past the greeting and negotiation (no ``oob``)."""
    proto = QMPClientProtocol()
    proto.feed(GREETING)
    cid, _ = proto.negotiate()
    proto.feed(b'{"return": {}, "id": %d}\r\n' % cid)
    return proto


def ready_client() -> QMPClient:
    """A negotiated client on a null transport (call in a running loop)."""
    client = QMPClient(ready_protocol(), Address(socket.AF_UNIX, "/bench/vm.qmp"), 0, 10.0)
    client._transport = NullTransport()
    return client


# -- the cases: each returns a coroutine function running one batch ---------------------


def case_bare() -> Callable[[], Any]:
    dumps, loads = orjson.dumps, orjson.loads
    loop = asyncio.get_running_loop()
    state = {"id": 0}

    async def batch() -> int:
        ok = 0
        for _ in range(BATCH):
            state["id"] += 1
            cid = state["id"]
            dumps({"execute": "query-status", "id": cid})
            fut = loop.create_future()
            fut.set_result(loads(REPLY % cid)["return"])
            ok += (await fut)["running"]
        return ok

    return batch


def case_protocol() -> Callable[[], Any]:
    proto = ready_protocol()

    async def batch() -> int:
        send, receive = proto.send_command, proto.feed
        ok = 0
        for _ in range(BATCH):
            cid, _ = send("query-status")
            ok += receive(REPLY % cid)[0].value["running"]
        return ok

    return batch


def case_aio_round_trip() -> Callable[[], Any]:
    client = ready_client()

    async def batch() -> int:
        submit, received = client.submit, client._received
        ok = 0
        for _ in range(BATCH):
            fut = submit("query-status")
            received(memoryview(REPLY % client._proto._next_id))
            ok += (await fut)["running"]
        return ok

    return batch


def case_aio_pipelined() -> Callable[[], Any]:
    client = ready_client()

    async def batch() -> int:
        submit = client.submit
        first = client._proto._next_id + 1
        futures = [submit("query-status") for _ in range(BATCH)]
        await asyncio.sleep(0)  # the tick's writes go out together
        client._received(memoryview(b"".join(REPLY % cid for cid in range(first, first + BATCH))))
        return sum([(await fut)["running"] for fut in futures])

    return batch


def case_fleet() -> Callable[[], Any]:
    fleet = Fleet({f"vm{i}": f"/bench/vm{i}.qmp" for i in range(BATCH)}, command_timeout=10.0)
    clients = []
    for name in fleet.vms:
        member = _Member(name, f"/bench/{name}.qmp")
        member.client = ready_client()
        fleet._members[name] = member
        clients.append(member.client)
    names = fleet.vms

    async def batch() -> int:
        submit = fleet.submit
        futures = [submit(name, "query-status") for name in names]
        await asyncio.sleep(0)
        for client in clients:
            client._received(memoryview(REPLY % client._proto._next_id))
        ok = sum([(await fut)["running"] for fut in futures])
        await asyncio.sleep(0)  # a loop turn after the replies (the fleet's done-callbacks ran here once)
        return ok

    return batch


CASES: dict[str, Callable[[], Callable[[], Any]]] = {
    "bare": case_bare,
    "protocol": case_protocol,
    "aio-round-trip": case_aio_round_trip,
    "aio-pipelined": case_aio_pipelined,
    "fleet": case_fleet,
}


def prepared(name: str, loop: asyncio.AbstractEventLoop) -> Callable[[], int]:
    """One batch of case ``name`` as a plain call on ``loop``."""

    async def make() -> Callable[[], Any]:
        return CASES[name]()

    batch = loop.run_until_complete(make())
    run = loop.run_until_complete
    return lambda: run(batch())


@pytest.mark.parametrize("name", list(CASES))
def test_client(benchmark, loop, name):
    benchmark.group = "client"
    benchmark.extra_info["commands per round"] = BATCH
    run = prepared(name, loop)
    assert run() == BATCH  # warm-up, and the check that every command completed
    assert benchmark(run) == BATCH


def main(argv: list[str]) -> None:
    run_batches(prepared, argv, "aio-round-trip", BATCH)


if __name__ == "__main__":
    main(sys.argv[1:])
