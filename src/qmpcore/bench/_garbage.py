"""Garbage a hostile client sends an embedded server, by kind, and its cost.

:func:`garbage` builds reproducible streams of one kind of error, or of
every kind mixed; :func:`server_throughput` feeds one through a server
protocol as the server does (64 KiB reads, answers taken a 64 KiB step at a
time) and returns MB/s of input.  The benchmark
``benchmarks/bench_server_garbage.py`` and the hostile server tests use
both.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["KINDS", "REQUESTS", "garbage", "server_throughput", "chunks"]

#: Pieces of each kind of garbage; :func:`garbage` strings random pieces.
KINDS: dict[str, tuple[bytes, ...]] = {
    # stray bytes QEMU answers "expecting value"
    "stray": (b",", b"]", b"}", b":"),
    "ff": (b"\xff",),
    "control": (b"\x01", b"\x07", b"\x1b", b"\x00", b"\x7f\x02"),
    # a string ended by a control byte after an escape
    "escapes": (b'"\\\x01', b"'\\\x02", b'"ab\\\x7f\x03'),
    "keywords": (b"tru ", b"nul\n", b"xyz,", b"nan ", b"inf]"),
    "quotes": (b'"', b"'", b'"abc\x05'),
    # valid frames that are not requests
    "frames": (b"1 ", b"[]", b'{"x":1}', b'"s"', b"{}", b"[1,2]", b"-0.5e3 ", b"{'y': [true]}"),
    # bytes no token starts with (recovery skips what follows)
    "others": (b"@", b"#", b"\\", b"\xfe", b"~", b"*", b"\xc3\xa9"),
    # frames QEMU's grammar refuses
    "grammar": (b"[1 2]", b'{"a" 1}', b"{1:2}", b"[,]", b'{"a":1,}'),
}

#: Requests a server dispatches (for streams that mix requests and garbage).
REQUESTS: tuple[bytes, ...] = (
    b'{"execute": "query-status"}',
    b'{"execute": "nonexistent", "id": 7}',
    b'{"id": "x"}',
    b'{"arguments": {}, "execute": 1}',
)


def garbage(kinds: Sequence[str], size: int, seed: int = 1, requests: bool = False) -> bytes:
    """``size`` bytes of random pieces of the given kinds (and of
    :data:`REQUESTS` too, when ``requests``), reproducibly."""
    rng = random.Random(seed)
    pieces = [piece for kind in kinds for piece in KINDS[kind]]
    if requests:
        pieces += REQUESTS
    out = bytearray()
    while len(out) < size:
        out += rng.choice(pieces)
    return bytes(out[:size])


def chunks(data: bytes, size: int = 1 << 16) -> list[bytes]:
    """``data`` cut as a server reads it."""
    return [data[i : i + size] for i in range(0, len(data), size)]


def _answer_all(protocol: Any, reads: Sequence[bytes]) -> int:
    """Feed ``reads`` to a server protocol as the server does; the bytes of
    answers it produced."""
    produced = len(protocol.data_to_send())
    for data in reads:
        protocol.receive_data(data)
        while True:
            produced += len(protocol.data_to_send())
            if not protocol.can_progress:
                break
            request = protocol.next_event()
            if request is not None:
                produced += len(protocol.send(request))
    return produced


def server_throughput(factory: Callable[[], Any], data: bytes, repeat: int = 5) -> tuple[float, int]:
    """(MB/s of input, bytes of answers) for ``data`` through a protocol
    from ``factory`` (best of ``repeat`` runs, CPU time of this process)."""
    reads = chunks(data)
    best = float("inf")
    produced = 0
    for _ in range(repeat):
        protocol = factory()
        start = time.process_time()
        produced = _answer_all(protocol, reads)
        best = min(best, time.process_time() - start)
    return len(data) / max(best, 1e-9) / 1e6, produced
