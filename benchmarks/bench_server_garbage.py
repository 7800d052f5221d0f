"""The embedded server's protocols answering garbage, by kind of garbage.

Each case feeds 1 MiB of one kind of garbage (or of every kind mixed, with
or without requests among it) through :class:`QMPServerProtocol` or
:class:`QGAServerProtocol` as the server does: 64 KiB reads, answers taken
64 KiB at a time.  The kinds are :data:`qmpcore.bench._garbage.KINDS`.

Run with ``python -m pytest benchmarks/bench_server_garbage.py
--benchmark-enable`` (MB/s = 1 / mean seconds), or as a script for a table
of MB/s by kind::

    python benchmarks/bench_server_garbage.py [MiB] [repeat]
"""

from __future__ import annotations

import sys

import pytest

from qmpcore.bench._garbage import KINDS, _answer_all, chunks, garbage, server_throughput
from qmpcore.protocol.qga_server import QGAServerProtocol
from qmpcore.protocol.qmp_server import QMPServerProtocol

SIZE = 1 << 20
STEP = 64 << 10
PROTOCOLS = {"qmp": QMPServerProtocol, "qga": QGAServerProtocol}
#: (name, kinds, requests among the garbage)
CASES = [(kind, [kind], False) for kind in KINDS] + [
    ("mixed", list(KINDS), False),
    ("mixed+requests", list(KINDS), True),
]


@pytest.mark.parametrize("proto", sorted(PROTOCOLS))
@pytest.mark.parametrize(("name", "kinds", "requests"), CASES, ids=[case[0] for case in CASES])
def test_server_garbage(benchmark, proto, name, kinds, requests):
    cls = PROTOCOLS[proto]
    reads = chunks(garbage(kinds, SIZE, requests=requests))
    benchmark.group = f"server garbage: {name}"
    benchmark.extra_info.update(bytes=SIZE)

    def run() -> int:
        return _answer_all(cls(output_limit=STEP), reads)

    produced = benchmark.pedantic(run, rounds=3, iterations=1)
    assert produced > SIZE // 8  # every kind is answered, at several bytes per byte
    benchmark.extra_info.update(answers=produced)


def main() -> None:
    size = int(float(sys.argv[1]) * SIZE) if len(sys.argv) > 1 else SIZE
    repeat = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    print(f"{'garbage':16} {'QMP MB/s':>9} {'QGA MB/s':>9} {'answers B/B':>12}")
    for name, kinds, requests in CASES:
        data = garbage(kinds, size, requests=requests)
        qmp, produced = server_throughput(lambda: QMPServerProtocol(output_limit=STEP), data, repeat)
        qga, _ = server_throughput(lambda: QGAServerProtocol(output_limit=STEP), data, repeat)
        print(f"{name:16} {qmp:9.1f} {qga:9.1f} {produced / size:12.1f}", flush=True)


if __name__ == "__main__":
    main()
