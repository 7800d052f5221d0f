"""Per-command server cost without a socket: parse, dispatch, run, reply.

Run with ``python -m pytest benchmarks/bench_server.py --benchmark-enable``.
Each case answers 100 ``{"execute": "query-status", "id": N}`` requests, one
read each (as a polled VM sees them), through the real objects with the
socket replaced by a transport that only counts what is written; the
figures are per batch of 100, so divide by 100 for one command.  Group
``server``:

* ``protocol``: the sans-IO :class:`~qmpcore.protocol.qmp_server.QMPServerProtocol`
  alone (``receive_data``, ``next_event``, ``send`` of the VM's canned value);
* ``session``: the embedded server's connection (``data_received`` as the
  transport calls it), with the simulated VM's ``query-status`` handler and
  the write.

``python benchmarks/bench_server.py CASE [BATCHES]`` runs one case bare, for
profilers (``valgrind --tool=callgrind``), with the cyclic collector off:
instruction counts of two runs (``PYTHONHASHSEED=0``, e.g. 5 and 15 batches)
then differ by the commands alone.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable

import pytest

from _counting import NullTransport, run_batches
from qmpcore.protocol.qmp_server import QMPServerProtocol
from qmpcore.server import QMPServer, SimulatedVM, _Session

BATCH = 100
REQUEST = b'{"execute": "query-status", "id": %d}'
REPLY = b'{"return": {"status": "running", "singlestep": false, "running": true}, "id": %d}\r\n'


def ready_protocol(vm: SimulatedVM) -> QMPServerProtocol:
    """A server protocol past the greeting and negotiation (no ``oob``)."""
    proto = QMPServerProtocol(vm.commands, version=vm.version, output_limit=64 << 10)
    proto.receive_data(b'{"execute": "qmp_capabilities"}')
    proto.data_to_send()
    assert proto.negotiated
    return proto


def case_protocol() -> Callable[[], int]:
    vm = SimulatedVM("bench")
    proto = ready_protocol(vm)
    value = vm.handler("query-status")(None)  # type: ignore[arg-type]
    requests = [REQUEST % i for i in range(BATCH)]
    expected = [REPLY % i for i in range(BATCH)]

    def batch() -> int:
        receive, next_event, send = proto.receive_data, proto.next_event, proto.send
        ok = 0
        for request, reply in zip(requests, expected):
            receive(request)
            ok += send(next_event(), value) == reply  # type: ignore[arg-type]
        return ok

    return batch


def case_session() -> Callable[[], int]:
    vm = SimulatedVM("bench")
    endpoint = QMPServer(vm, "/bench/vm.qmp")
    session = _Session(endpoint, ready_protocol(vm))
    transport = NullTransport()
    session.connection_made(transport)
    requests = [REQUEST % i for i in range(BATCH)]
    expected = [REPLY % i for i in range(BATCH)]

    def batch() -> int:
        received = session.data_received
        ok = 0
        for request, reply in zip(requests, expected):
            received(request)
            ok += transport.last == reply
        return ok

    return batch


CASES: dict[str, Callable[[], Callable[[], int]]] = {
    "protocol": case_protocol,
    "session": case_session,
}


def prepared(name: str, loop: asyncio.AbstractEventLoop) -> Callable[[], int]:
    """One batch of case ``name`` as a plain call (made inside ``loop``)."""

    async def make() -> Callable[[], int]:
        return CASES[name]()

    return loop.run_until_complete(make())


@pytest.mark.parametrize("name", list(CASES))
def test_server(benchmark, loop, name):
    benchmark.group = "server"
    benchmark.extra_info["commands per round"] = BATCH
    run = prepared(name, loop)
    assert run() == BATCH  # warm-up, and the check that every reply was right
    assert benchmark(run) == BATCH


def main(argv: list[str]) -> None:
    run_batches(prepared, argv, "session", BATCH)


if __name__ == "__main__":
    main(sys.argv[1:])
