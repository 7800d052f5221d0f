"""Nothing leaks: memory (tracemalloc and RSS) and descriptors stay flat.

Each test does a warm-up round, takes a :class:`~qmpcore.soak.Usage`
snapshot, does the real work, and asserts the growth stays under a small
bound.  A leak of even a few bytes per frame or one descriptor per
connection shows up far above these bounds.

CI runs the figures below (well under a minute each on two shared cores);
``QMPCORE_FULL=1`` runs the full ones: 10^6 frames and 1 GiB of garbage
through each framer, 10^5 connect/close cycles.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import random
import tracemalloc
from collections.abc import Callable, Iterator

import pytest

import qmpcore
from conftest import IMPLEMENTATIONS
from qmpcore.protocol.qmp_client import QMPClientProtocol
from qmpcore.server import GuestAgentServer, SimulatedGuestAgent, serve_vm
from qmpcore.soak import Usage

FULL = os.environ.get("QMPCORE_FULL", "") not in ("", "0")
MiB = 1 << 20

pytestmark = pytest.mark.timeout(7200 if FULL else 300)

#: Allowed growth once warmed up.
TRACED_BOUND = 256 * 1024
RSS_BOUND = 8 * MiB
FD_BOUND = 2

# (full, CI) figures.  Under tracemalloc the pure framer takes ~1 s per MiB
# of this garbage, so CI feeds it less.
FRAMES = {"cython": (10**6, 2 * 10**5), "python": (10**6, 5 * 10**4)}
GARBAGE = {"cython": (1024 * MiB, 256 * MiB), "python": (1024 * MiB, 8 * MiB)}
CYCLES = (10**5, 5000)
PROTOCOL_MESSAGES = (10**6, 10**5)


def figure(pair: tuple) -> int:
    return pair[0] if FULL else pair[1]


@pytest.fixture
def traced() -> Iterator[None]:
    gc.collect()
    tracemalloc.start()
    try:
        yield
    finally:
        tracemalloc.stop()


def assert_flat(before: Usage, after: Usage, what: str) -> None:
    grown = after - before
    print(f"{what}: heap {grown.traced:+d} B, RSS {grown.rss:+d} B, descriptors {grown.fds:+d}")
    assert grown.traced < TRACED_BOUND, f"{what}: Python heap grew by {grown.traced} bytes"
    assert grown.rss < RSS_BOUND, f"{what}: RSS grew by {grown.rss} bytes"
    assert grown.fds <= FD_BOUND, f"{what}: {grown.fds} more open descriptors"


@contextlib.contextmanager
def growth_checked(what: str) -> Iterator[None]:
    """Check that the block leaves memory and descriptors as it found them."""
    gc.collect()
    before = Usage.now()
    yield
    gc.collect()
    assert_flat(before, Usage.now(), what)


def flat(work: Callable[[int], None], rounds: int, what: str) -> None:
    """Run ``work(i)`` for a tenth of ``rounds`` as warm-up, then for all of
    them, and check nothing grew in between."""
    for i in range(max(1, rounds // 10)):
        work(i)
    with growth_checked(what):
        for i in range(rounds):
            work(i)


def _frames_block() -> bytes:
    """1000 frames of every kind a client or server sees, some malformed."""
    rnd = random.Random(6)
    parts = []
    for i in range(1000):
        kind = rnd.randrange(10)
        if kind < 5:
            parts.append(b'{"return": {"status": "running", "running": true}, "id": %d}\r\n' % i)
        elif kind < 7:
            parts.append(b'{"timestamp": {"seconds": %d, "microseconds": 5}, "event": "STOP"}\r\n' % i)
        elif kind == 7:
            parts.append(b'{\r\n    "return": [\r\n        1.5,\r\n        "x"\r\n    ],\r\n    "id": %d\r\n}\r\n' % i)
        elif kind == 8:
            parts.append(b"{'execute': 'query-status', 'id': %d}\n" % i)
        else:
            parts.append(rnd.choice([b'{"execute":}\n', b"\xff", b'{"a": 01}\n', b"nul\n", b'{"a": "\x01"}\n']))
    return b"".join(parts)


def _garbage_block() -> bytes:
    """4 MiB of hostile input: an oversized frame, a long recovery run,
    nesting far past the limit, random bytes, and valid frames between."""
    rnd = random.Random(7)
    parts = [
        b'{"execute": "x", "arguments": {"blob": "',
        b"A" * (3 * MiB // 2),  # over the 1 MiB limit below: discarded as it arrives
        b'"}}\r\n{"return": {}, "id": 1}\r\n\x04',
        b"z" * MiB,  # skipped in recovery
        b"[" * (MiB // 4),  # deeper than 1024: discarded
        b"]" * (MiB // 4),
        rnd.randbytes(16 * 1024),
        b'"\r\n{"return": {}, "id": 2}\r\n',
    ]
    block = b"".join(parts)
    return block + b" " * (4 * MiB - len(block))


@pytest.mark.slow
@pytest.mark.parametrize("impl", sorted(IMPLEMENTATIONS))
def test_frames(impl: str, traced: None) -> None:
    block = _frames_block()
    cut = len(block) // 3 + 1  # frames straddle feeds
    framer = IMPLEMENTATIONS[impl]()
    count = figure(FRAMES[impl])
    # (runs of errors are one item each: the same number every time)
    expected = len(framer.feed(block[:cut]) + framer.feed(memoryview(block)[cut:]))
    assert expected >= 900

    def work(_: int) -> None:
        items = framer.feed(block[:cut]) + framer.feed(memoryview(block)[cut:])
        assert len(items) == expected

    flat(work, count // 1000, f"{count} frames through the {impl} framer")


@pytest.mark.slow
@pytest.mark.parametrize("impl", sorted(IMPLEMENTATIONS))
def test_garbage(impl: str, traced: None) -> None:
    block = _garbage_block()
    framer = IMPLEMENTATIONS[impl](max_frame_size=MiB)
    total = figure(GARBAGE[impl])

    def work(_: int) -> None:
        for start in range(0, len(block), MiB):
            framer.feed(memoryview(block)[start : start + MiB])
        assert framer.buffered <= MiB

    flat(work, total // len(block), f"{total >> 20} MiB of garbage through the {impl} framer")


@pytest.mark.slow
def test_client_protocol(traced: None) -> None:
    """Replies and events through the QMP client protocol: nothing is kept."""
    proto = QMPClientProtocol()
    proto.feed(b'{"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}}, "capabilities": []}}\r\n')
    cid, _ = proto.negotiate()
    proto.feed(b'{"return": {}, "id": %d}\r\n' % cid)
    event = b'{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "STOP"}\r\n'

    def work(_: int) -> None:
        batch = []
        for _ in range(8):  # QEMU's queue: nothing is held back
            cid, data = proto.send_command("query-status")
            assert data
            batch.append(b'{"return": {"status": "running"}, "id": %d}\r\n' % cid)
            batch.append(event)
        assert len(proto.feed(b"".join(batch))) == 16
        assert proto.in_flight == 0 and not proto.data_to_send()

    flat(work, figure(PROTOCOL_MESSAGES) // 16, "replies and events through the client protocol")


async def _cycles(connect: Callable, count: int, what: str) -> None:
    """Connect and close ``count`` times (after a warm-up)."""

    async def work() -> None:
        client = await connect()
        await client.close()

    for _ in range(max(1, count // 10)):
        await work()
    with growth_checked(what):
        for _ in range(count):
            await work()
        await asyncio.sleep(0.05)  # let the server see the last close


@pytest.mark.slow
async def test_qmp_connect_close_cycles(tmp_path, traced: None) -> None:
    path = str(tmp_path / "vm.qmp")
    count = figure(CYCLES)
    async with serve_vm(path):
        await _cycles(lambda: qmpcore.connect(path, timeout=10), count, f"{count} QMP connect/close cycles")


@pytest.mark.slow
async def test_guest_agent_connect_close_cycles(tmp_path, traced: None) -> None:
    path = str(tmp_path / "vm.qga")
    count = figure(CYCLES) // 4
    agent = SimulatedGuestAgent()
    async with GuestAgentServer(agent, path):
        await _cycles(
            lambda: qmpcore.connect_guest_agent(path, timeout=10), count, f"{count} guest agent connect/close cycles"
        )
