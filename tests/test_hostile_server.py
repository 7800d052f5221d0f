"""The embedded server under hostile clients.

One client per attack (0xFF and comma floods, thousands of big requests in
one write without reading, huge member names, descriptor floods) against
one VM of a many-VM server, while a well-behaved client talks to another VM
of the same server (the same event loop).  Each test asserts by bytes and
counts: the good client is answered while the attack runs, the attacked
VM's buffers stay under the documented bounds, every byte of garbage gets
QEMU's answer exactly once, and the server goes on serving afterwards.
No timing thresholds: waits have deadlines only so that a hang fails.
"""

from __future__ import annotations

import asyncio
import os
import random

import orjson
import pytest

from conftest import IMPLEMENTATIONS
from qmpcore.bench._garbage import KINDS, chunks, garbage
from qmpcore.client import share
from qmpcore.errors import FrameError
from qmpcore.framing import ANSWERS
from qmpcore.framing import pure as pure_framer
from qmpcore.framing.wire import PendingFrame
from qmpcore.protocol import _qemu_output
from qmpcore.protocol.qga_server import QGAServerProtocol
from qmpcore.protocol.qmp_server import QMPServerProtocol
from qmpcore.server import _STEP_OUTPUT, OUTPUT_CAP, serve_vms
from qmpcore.server._simulated import MAX_FDS
from server_support import Peer

STATUS = {"status": "running", "singlestep": False, "running": True}
STRAY_FF = b'{"error": {"class": "GenericError", "desc": "JSON parse error, stray \'\\uFFFD\'"}}\r\n'
EXPECTING = b'{"error": {"class": "GenericError", "desc": "JSON parse error, expecting value"}}\r\n'
DEADLINE = 120.0
# README "Limits": one turn of the loop produces at most a slice
# (256 KiB) plus one step of error answers (64 KiB) for one client.
SLICE_BOUND = (256 << 10) + (64 << 10) + 100


async def wait_until(predicate, timeout=DEADLINE):
    async def poll():
        while not predicate():
            await asyncio.sleep(0.01)

    await asyncio.wait_for(poll(), timeout)


async def connected(address):
    peer = await Peer.connect(address)
    try:
        await peer.negotiate()
    except BaseException:
        peer.close()
        raise
    return peer


@pytest.fixture
async def client():
    """Connect negotiated peers that are closed when the test ends."""
    opened: list[Peer] = []

    async def connect(address) -> Peer:
        peer = await connected(address)
        opened.append(peer)
        return peer

    yield connect
    for peer in opened:
        peer.close()


def rss() -> int:
    """Resident memory of this process (server and test share it), bytes."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


class Flood:
    """Write ``chunk`` to ``peer`` over and over (up to ``limit`` bytes),
    optionally reading and checking what comes back as it arrives."""

    def __init__(self, peer: Peer, chunk: bytes, limit: int, *, read: bool, reply: bytes = b"") -> None:
        self.peer = peer
        self.chunk = chunk
        self.limit = limit
        self.reply = reply
        self.sent = 0
        self.received = 0
        self.stopping = False
        self.mismatch: bytes | None = None
        loop = asyncio.get_running_loop()
        self.writer = asyncio.ensure_future(self._write())
        self.reader = asyncio.ensure_future(self._read()) if read else None
        self._loop = loop

    async def _write(self) -> None:
        while self.sent < self.limit and not self.stopping:
            await self.peer.loop.sock_sendall(self.peer.sock, self.chunk)
            self.sent += len(self.chunk)

    async def _read(self) -> None:
        """Consume output, checking it is ``reply`` repeated (no copies kept)."""
        size = len(self.reply)
        while True:
            data = await self.peer.loop.sock_recv(self.peer.sock, 1 << 20)
            if not data:
                return
            self.check(data, size)

    def check(self, data: bytes, size: int) -> None:
        view = memoryview(data)
        position = self.received % size
        start = 0
        while start < len(view) and self.mismatch is None:
            take = min(size - position, len(view) - start)
            if view[start : start + take] != self.reply[position : position + take]:
                self.mismatch = bytes(view[start : start + 200])
            start += take
            position = 0
        self.received += len(data)

    async def drain(self, total: int) -> None:
        """Read (and check) until ``total`` bytes of output have arrived;
        whatever follows is left in the peer's buffer."""
        size = len(self.reply)
        while self.received < total:
            data = await asyncio.wait_for(self.peer.loop.sock_recv(self.peer.sock, 1 << 20), DEADLINE)
            assert data, f"connection closed after {self.received} of {total} bytes"
            extra = self.received + len(data) - total
            if extra > 0:
                self.peer.buffer += data[-extra:]
                data = data[:-extra]
            self.check(data, size)

    def stop(self) -> None:
        for task in (self.writer, self.reader):
            if task is not None:
                task.cancel()


async def round_trips(peer: Peer, count: int) -> None:
    """``count`` query-status round trips on the good client."""
    for i in range(count):
        assert await peer.execute("query-status", id=i) == {"return": STATUS, "id": i}


def watch_turns(session) -> list[int]:
    """Record the bytes of output the session produces in each callback the
    loop makes into it (a read, or a continuation of its work)."""
    turns: list[int] = []

    def produced() -> int:
        return session.written + session._pending_size

    def wrap(method):
        def turn(*args):
            before = produced()
            method(*args)
            turns.append(produced() - before)

        return turn

    session.data_received = wrap(session.data_received)
    session._serve = wrap(session._serve)
    return turns


async def still_served(address) -> None:
    """The attacked VM serves its next client normally."""
    async with await connected(address) as peer:
        assert await peer.execute("query-status", id="after") == {"return": STATUS, "id": "after"}


def output_bound(largest_reply: int, cap: int = OUTPUT_CAP) -> int:
    """What a client that never reads can make the server hold: the cap,
    plus one step of error answers or one reply (whichever is larger)."""
    return cap + max(_STEP_OUTPUT, largest_reply) + largest_reply


# -- garbage --------------------------------------------------------------------------


@pytest.mark.parametrize(("garbage", "reply"), [(b"\xff", STRAY_FF), (b",", EXPECTING)], ids=["0xff", "commas"])
async def test_garbage_flood_to_a_reader_leaves_others_their_share(tmp_path, client, garbage, reply):
    """A client that writes garbage and reads every answer keeps the server
    busy; a client of another VM is answered meanwhile, the attacked VM
    never does more than a slice of work between the good client's turns,
    and every garbage byte gets QEMU's answer exactly once."""
    async with serve_vms(tmp_path, 2) as vms:
        attacker = await client(vms.qmp_paths[0])
        good = await client(vms.qmp_paths[1])
        turns = watch_turns(vms[0].endpoints[0]._session)
        flood = Flood(attacker, garbage * 8192, 1 << 30, read=True, reply=reply)
        try:
            await wait_until(lambda: flood.received > 0)
            received = flood.received
            await round_trips(good, 5)
            assert flood.received > received and not flood.writer.done()  # served during
            assert flood.mismatch is None, flood.mismatch
            flood.stopping = True  # the writer ends after its current chunk
            await flood.writer
            # Every byte answered once, in order; then a command still works.
            total = flood.sent * len(reply)
            await wait_until(lambda: flood.received >= total)
            assert flood.received == total and flood.mismatch is None
            # No turn of the loop did more than its documented share for the
            # attacker (a 64 KiB read of garbage answered at once is 5.4 MB).
            assert len(turns) > 10 and max(turns) <= SLICE_BOUND, max(turns)
        finally:
            flood.stop()
        await attacker.send(b'{"execute":"query-name","id":"end"}')
        assert await attacker.read_message() == {"return": {"name": "vm0"}, "id": "end"}
        attacker.close()
        await still_served(vms.qmp_paths[0])


async def test_a_client_that_sent_garbage_is_read_4_kib_at_a_time(tmp_path, client):
    """After a read that held malformed input the server reads that client
    4 KiB at a time (its garbage costs an error reply per byte), and a full
    read's worth again once it sends clean data."""
    async with serve_vms(tmp_path, 1) as vms:
        attacker = await client(vms.qmp_paths[0])
        session = vms[0].endpoints[0]._session
        reads: list[tuple[int, bool]] = []  # (bytes, malformed after it)
        received = session.data_received

        def record(data):
            received(data)
            reads.append((len(data), session.protocol.malformed))

        session.data_received = record
        flood = Flood(attacker, b"," * 65536, 1 << 20, read=True, reply=EXPECTING)
        try:
            await flood.writer
            await wait_until(lambda: flood.received >= flood.sent * len(EXPECTING))
            assert flood.received == flood.sent * len(EXPECTING) and flood.mismatch is None
        finally:
            flood.stop()
        first = next(i for i, (_, malformed) in enumerate(reads) if malformed)
        assert all(size <= 4096 for size, _ in reads[first + 1 :]), reads
        assert len(reads) - first > 200  # 1 MiB in reads of 4 KiB
        assert session.transport._small
        # Clean data: the next request is answered and reads are full again.
        reads.clear()
        assert await attacker.execute("query-status", id="clean") == {"return": STATUS, "id": "clean"}
        assert reads and not reads[-1][1] and not session.transport._small


@pytest.mark.parametrize(("garbage", "reply"), [(b"\xff", STRAY_FF), (b",", EXPECTING)], ids=["0xff", "commas"])
async def test_garbage_flood_from_a_client_that_never_reads(tmp_path, client, garbage, reply):
    """Answers to garbage pile up only to the output cap; then the client's
    input is not read.  The good client is answered throughout; once the
    attacker reads, every byte it sent is answered exactly once."""
    async with serve_vms(tmp_path, 2) as vms:
        cap = vms[0].endpoints[0].output_cap = 2 << 20  # a smaller cap: less garbage to parse
        attacker = await client(vms.qmp_paths[0])
        good = await client(vms.qmp_paths[1])
        session = vms[0].endpoints[0]._session
        transport = session.transport
        before = rss()
        flood = Flood(attacker, garbage * 65536, 1 << 30, read=False, reply=reply)
        try:
            await round_trips(good, 5)
            await wait_until(lambda: transport.get_write_buffer_size() > cap - _STEP_OUTPUT)
            await wait_until(lambda: not transport.is_reading())
            await round_trips(good, 5)
            assert not flood.writer.done()  # the attacker is stuck, not done
            assert transport.get_write_buffer_size() <= output_bound(len(reply), cap)
            assert session.protocol.buffered <= 1
            # The server and test share a process: output held plus slack.
            assert rss() - before < 2 * cap + (32 << 20)
            # The attacker reads now: all of its input gets answered, once.
            flood.stopping = True
            flood.reader = asyncio.ensure_future(flood._read())
            await asyncio.wait_for(flood.writer, DEADLINE)
            total = flood.sent * len(reply)
            await wait_until(lambda: flood.received >= total)
            flood.reader.cancel()
            assert flood.received == total and flood.mismatch is None, flood.mismatch
            await attacker.send(b'{"execute":"query-name","id":"end"}')
            assert await attacker.read_message() == {"return": {"name": "vm0"}, "id": "end"}
        finally:
            flood.stop()
        attacker.close()
        await still_served(vms.qmp_paths[0])


# -- garbage of every kind mixed, sans-IO --------------------------------------------------

PROTOCOLS = {"qmp": QMPServerProtocol, "qga": QGAServerProtocol}
MIXES = [[kind] for kind in KINDS] + [list(KINDS)]


class CountingFramer:
    """A framer that records the items each feed() returns."""

    def __init__(self, framer) -> None:
        self.framer = framer
        self.feeds: list[list] = []

    def feed(self, data):
        items = self.framer.feed(data)
        self.feeds.append(items)
        return items

    @property
    def buffered(self) -> int:
        return self.framer.buffered


def serve(protocol, reads) -> tuple[bytes, int]:
    """Feed ``reads`` as the server does; (all answers, the largest step
    of answers the protocol produced on its own)."""
    out = [protocol.data_to_send()]
    largest = 0
    for data in reads:
        protocol.receive_data(data)
        while True:
            step = protocol.data_to_send()
            largest = max(largest, len(step))
            out.append(step)
            if not protocol.can_progress:
                break
            request = protocol.next_event()
            if request is not None:
                out.append(protocol.send(request, {}))
    return b"".join(out), largest


def reference(cls):
    """The same server with the pure framer reporting every error as a
    FrameError and every frame as its value: QEMU's answers the slow way
    (one reply per error, the dispatcher for every frame)."""
    protocol = cls(output_limit=_STEP_OUTPUT)
    protocol._framer = pure_framer.Framer(strict=True)
    return protocol


def answering(cls, Framer, defer: int = 0):
    """A server whose framer is ``Framer``, counting what it outputs."""
    protocol = cls(output_limit=_STEP_OUTPUT)
    framer = protocol._framer = Framer(strict=True)
    protocol._answer_with(framer)
    protocol.defer_frames(defer)
    protocol._framer = CountingFramer(framer)
    return protocol


@pytest.mark.parametrize("proto", sorted(PROTOCOLS))
@pytest.mark.parametrize("kinds", MIXES, ids=["+".join(mix) if len(mix) < 2 else "mixed" for mix in MIXES])
def test_mixed_garbage_gets_qemus_answers_at_bounded_work(Framer, proto, kinds):
    """Garbage of any kind or mix gets, byte for byte, the answers the
    error-by-error path gives (one reply per error QEMU's parser reports,
    the dispatcher's for frames that are not requests), however it is
    split; and the framer outputs one answers item per read, never a
    FrameError or value per error, whatever the mix."""
    cls = PROTOCOLS[proto]
    data = garbage(kinds, 80_000, seed=len(kinds))
    want, _ = serve(reference(cls), chunks(data))
    assert want.count(b"GenericError") > 3000
    for size in (1 << 16, 4093):
        protocol = answering(cls, Framer)
        got, largest = serve(protocol, chunks(data, size))
        assert got == want
        feeds = protocol._framer.feeds
        assert len(feeds) == -(-len(data) // size)
        assert all(len(items) <= 1 for items in feeds), max(map(len, feeds))
        assert all(isinstance(item, ANSWERS) for items in feeds for item in items)
        replies = sum(item.count for items in feeds for item in items)
        assert replies == got.count(b"GenericError")
        # Each step is bounded by the output limit plus one reply.
        assert largest <= _STEP_OUTPUT + 200


@pytest.mark.parametrize("proto", sorted(PROTOCOLS))
def test_requests_amid_garbage_are_dispatched_in_order(Framer, proto):
    """Requests between errors reach the dispatcher, in order with the
    answers to the errors around them; only they cost Python objects."""
    cls = PROTOCOLS[proto]
    data = garbage(list(KINDS), 100_000, seed=3, requests=True)
    want, _ = serve(reference(cls), chunks(data))
    protocol = answering(cls, Framer)
    got, _ = serve(protocol, chunks(data))
    assert got == want
    items = [item for items in protocol._framer.feeds for item in items]
    requests = sum(type(item) is dict for item in items)
    assert requests > 100
    assert not any(isinstance(item, FrameError) for item in items)
    # Between two requests (or feeds), one answers item at most.
    assert len(items) - requests <= requests + len(protocol._framer.feeds)


def fed(framer, reads, limit, before=None, show=lambda item: item):
    """What ``framer`` makes of ``reads``: each answers item as (count,
    offset, nbytes) and its replies taken ``limit`` bytes at a time, other
    items through ``show``; ``before(i, framer)`` runs before read ``i``."""
    out = []
    for i, data in enumerate(reads):
        if before is not None:
            before(i, framer)
        for item in framer.feed(data):
            if isinstance(item, ANSWERS):
                out.append((item.count, item.offset, item.nbytes))
                while item.remaining:
                    out.append(item.take(limit))
            else:
                out.append(show(item))
    return out


def test_compiled_answers_match_the_twin():
    """The compiled framer's answers items are the pure twin's: the same
    counts, offsets, spans and replies, taken in the same steps."""
    if "cython" not in IMPLEMENTATIONS:
        pytest.skip("compiled framer not built")

    def items(cls, reads, limit):
        framer = cls(strict=True, max_frame_size=300, max_depth=6)
        QMPServerProtocol()._answer_with(framer)
        return fed(framer, reads, limit)

    data = garbage(list(KINDS), 50_000, seed=5, requests=True) + b"[" * 10 + b'"' + b"x" * 400
    for size, limit in ((1 << 16, _STEP_OUTPUT), (777, 1), (5000, None)):
        reads = chunks(data, size)
        assert items(IMPLEMENTATIONS["cython"], reads, limit) == items(IMPLEMENTATIONS["python"], reads, limit)


# Pieces that end, or seem to end, short frames and keywords in every way
# the lexer can: numbers against a minus, brackets that do not match,
# escapes, frames answered and frames dispatched, keywords valid or not.
TRICKY = [
    *b"1 - 2 0 01 1. e E + .5 -0.5e3 [ ] { } , : \" ' \\ x tru true null false nan".split(b" "),
    *(b" ", b"\n", b'"x"', b"'y'", b'"\\n"', b"\x01", b"\xff", b"\xc3\xa9", b'"\xc3\xa9"', b"a" * 40),
    *(b'{"x":1}', b"{}", b"[]", b'{"a" 1}', b"{1:2}", b"[,]", b'{"a":1,}', b"{'y': [true]}", b"[" * 5, b"]" * 5),
    *(b'{"execute":"x"}', b'{"id":1}'),
]


@pytest.mark.parametrize("seed", range(40))
def test_repeated_frames_and_keywords_get_the_twins_answers(seed):
    """Short frames answered once are answered again from what the
    compiled framer remembers, and keywords without the lexer's path per
    token: the same items as the pure twin, however the stream is split,
    under any limit, when ``defer`` changes or the words change midway."""
    if "cython" not in IMPLEMENTATIONS:
        pytest.skip("compiled framer not built")
    rng = random.Random(seed)
    pieces = rng.sample(TRICKY, rng.randint(1, 12))
    data = b"".join(rng.choice(pieces) for _ in range(rng.randint(10, 3000)))
    reads = chunks(data, rng.choice([1, 3, 7, 64, 1000, 1 << 16]))
    limits = rng.choice([{}, {"max_frame_size": 5}, {"max_depth": 2}, {"max_tokens": 3}, {"defer": 6}])
    cls = rng.choice([QMPServerProtocol, QGAServerProtocol])
    take = rng.choice([None, 1, 100, _STEP_OUTPUT])
    defer_at = rng.choice([None, len(reads) // 2])
    reword_at = rng.choice([None, len(reads) // 3])

    def before(i, framer):
        if i == defer_at:
            framer.defer = 7
        if i == reword_at:
            framer.answer_errors(b"<", b">\n")

    def items(Framer):
        framer = Framer(strict=True, **limits)
        cls()._answer_with(framer)
        return fed(framer, reads, take, before, show=repr)

    assert items(IMPLEMENTATIONS["cython"]) == items(IMPLEMENTATIONS["python"])


# -- big replies, never read ----------------------------------------------------------------


async def test_thousands_of_schema_requests_in_one_write(tmp_path, client):
    """2,000 query-qmp-schema (414 MB of answers) in one write, never read:
    the cap is checked before each reply, so the server holds the cap plus
    one reply and the rest of the requests wait; once the client reads,
    all 2,000 answers arrive, byte for byte."""
    async with serve_vms(tmp_path, 2) as vms:
        schema_reply = b'{"return": ' + bytes(vms[0].schema.reply) + b"}\r\n"
        attacker = await client(vms.qmp_paths[0])
        good = await client(vms.qmp_paths[1])
        session = vms[0].endpoints[0]._session
        transport = session.transport
        before = rss()
        await attacker.send(b'{"execute":"query-qmp-schema"}' * 2000)
        await wait_until(lambda: not transport.is_reading() and transport.get_write_buffer_size() > OUTPUT_CAP // 2)
        await round_trips(good, 10)
        assert transport.get_write_buffer_size() <= output_bound(len(schema_reply))
        assert session.written <= output_bound(len(schema_reply)) + (4 << 20)  # + kernel socket buffers
        assert session.protocol.queued > 1000  # the rest wait, unread work
        assert rss() - before < 2 * OUTPUT_CAP + (64 << 20)
        flood = Flood(attacker, b"", 0, read=False, reply=schema_reply)
        await flood.drain(2000 * len(schema_reply))
        assert flood.received == 2000 * len(schema_reply) and flood.mismatch is None
        await attacker.send(b'{"execute":"query-name","id":"end"}')
        assert await attacker.read_message() == {"return": {"name": "vm0"}, "id": "end"}
        attacker.close()
        await still_served(vms.qmp_paths[0])


# -- member names ---------------------------------------------------------------------------


async def test_huge_member_names_do_not_grow_the_order_cache(tmp_path, client):
    """Requests whose argument names are new and large each time: every one
    is answered as QEMU does, and the member-order cache stays within its
    bounds in entries and bytes."""
    async with serve_vms(tmp_path, 2) as vms:
        attacker = await client(vms.qmp_paths[0])
        good = await client(vms.qmp_paths[1])
        _qemu_output._ORDER_CACHE.clear()
        _qemu_output._order_cache_bytes = 0
        largest = (0, 0)
        for size in (1500, 40 << 10):  # cached (up to the byte bound), never cached
            count = 3000 if size < 4096 else 200
            for start in range(0, count, 100):
                batch = []
                for i in range(start, start + 100):
                    first, second = f"a{i:06d}".ljust(size, "x"), f"b{i:06d}".ljust(size, "y")
                    batch.append(
                        b'{"execute":"query-status","id":%d,"arguments":{"%s":1,"%s":2}}'
                        % (i, first.encode(), second.encode())
                    )
                await attacker.send(b"".join(batch))
                for i in range(start, start + 100):
                    answer = await attacker.read_message()
                    assert answer["id"] == i and answer["error"]["class"] == "GenericError"
                    assert answer["error"]["desc"].endswith("' is unexpected")
                entries, size_now = _qemu_output.order_cache_size()
                largest = max(largest, (size_now, entries))
                assert entries <= _qemu_output._ORDER_CACHE_MAX
                assert size_now <= _qemu_output._ORDER_CACHE_BYTES
            await round_trips(good, 3)
        assert largest[0] > _qemu_output._ORDER_CACHE_BYTES // 2  # the cache was used, and bounded
        attacker.close()
        await still_served(vms.qmp_paths[0])


def test_order_cache_counts_bytes_of_every_entry():
    _qemu_output._ORDER_CACHE.clear()
    _qemu_output._order_cache_bytes = 0
    keys = ("execute", "arguments", "id")
    order = _qemu_output.qdict_order(keys)
    assert set(order) == set(keys)
    entries, size = _qemu_output.order_cache_size()
    assert entries == 1 and size >= sum(map(len, keys))
    big = ("k" * 10_000, "j")
    assert _qemu_output.qdict_order(big) == _qemu_output.qdict_order(big)
    assert _qemu_output.order_cache_size()[0] == 1  # too large to keep


# -- descriptors ---------------------------------------------------------------------------


async def test_descriptor_flood_is_capped_per_vm(tmp_path, client):
    """getfd and add-fd past the limit fail with a GenericError naming it,
    and the descriptors sent with them (or with nothing) are closed."""
    async with serve_vms(tmp_path, 2) as vms:
        vm = vms[0]
        attacker = await client(vms.qmp_paths[0])
        good = await client(vms.qmp_paths[1])
        baseline = open_fds()
        spare = os.open(os.devnull, os.O_RDONLY)
        try:
            answers = []
            for i in range(MAX_FDS + 40):
                command = {"execute": "getfd", "arguments": {"fdname": f"fd{i}"}, "id": i}
                if i % 2:
                    command = {"execute": "add-fd", "id": i}
                attacker.send_fds(orjson.dumps(command), [spare] * 4)
                answers.append(await attacker.read_message())
                if i % 50 == 0:
                    await round_trips(good, 1)
            # Bare descriptors with no command at all.
            for _ in range(100):
                attacker.send_fds(b" ", [spare] * 16)
            await attacker.send(b'{"execute":"query-name","id":"sync"}')
            assert await attacker.read_message() == {"return": {"name": "vm0"}, "id": "sync"}
        finally:
            os.close(spare)
        accepted = [answer for answer in answers if "return" in answer]
        refused = [answer for answer in answers if "error" in answer]
        assert len(accepted) == MAX_FDS and len(refused) == 40
        assert all(answer["error"]["class"] == "GenericError" for answer in refused)
        assert all(f"limit {MAX_FDS}" in answer["error"]["desc"] for answer in refused)
        assert vm.fds_held == MAX_FDS
        # The server holds the VM's descriptors, nothing that came after.
        assert open_fds() - baseline <= MAX_FDS
        # Releasing one makes room again.
        assert await attacker.execute("closefd", {"fdname": "fd0"}, id="c") == {"return": {}, "id": "c"}
        with open(os.devnull) as null:
            attacker.send_fds(b'{"execute":"getfd","arguments":{"fdname":"again"},"id":"g"}', [null.fileno()])
        assert await attacker.read_message() == {"return": {}, "id": "g"}
        attacker.close()
        await still_served(vms.qmp_paths[0])
    assert open_fds() <= baseline


async def test_guest_agent_garbage_flood_is_capped(tmp_path, client):
    """The guest agent socket of one VM flooded with 0xFF by a client that
    never reads: its answers stop at the cap, the next VM's agent answers
    guest-ping, and every byte is answered once when the client reads."""
    reply = STRAY_FF.replace(b"\r\n", b"\n")
    async with serve_vms(tmp_path, 2, agents=True, output_cap=1 << 20) as vms:
        attacker = await Peer.connect(vms.qga_paths[0])
        good = await Peer.connect(vms.qga_paths[1])
        try:
            await vms[0].agent.endpoints[0].wait_connected()
            session = vms[0].agent.endpoints[0]._session
            transport = session.transport
            flood = Flood(attacker, b"\xff" * 65536, 1 << 30, read=False, reply=reply)
            try:
                await wait_until(lambda: not transport.is_reading() and transport.get_write_buffer_size() > 900_000)
                for i in range(5):
                    await good.send(b'{"execute":"guest-sync","arguments":{"id":%d}}' % i)
                    assert await good.read_line(b"\n") == b'{"return": %d}\n' % i
                assert not flood.writer.done()
                assert transport.get_write_buffer_size() <= output_bound(len(reply), 1 << 20)
                flood.stopping = True
                flood.reader = asyncio.ensure_future(flood._read())
                await asyncio.wait_for(flood.writer, DEADLINE)
                total = flood.sent * len(reply)
                await wait_until(lambda: flood.received >= total)
                flood.reader.cancel()
                assert flood.received == total and flood.mismatch is None, flood.mismatch
            finally:
                flood.stop()
            await attacker.send(b'{"execute":"guest-ping"}')
            assert await attacker.read_line(b"\n") == b'{"return": {}}\n'
        finally:
            attacker.close()
            good.close()


# -- large requests: a slice of the loop per turn ------------------------------------------

ESCAPED = b'"\\n\\"\\u00e9\\\\", 1234567890123456789, '


def big_request(size: int, request_id: object = "big", command: bytes = b"query-status") -> bytes:
    """A valid request of about ``size`` bytes: escapes next to 19-digit integers."""
    items = ESCAPED * (size // len(ESCAPED)) + b"0"
    return b'{"execute": "%s", "arguments": {"data": [%s]}, "id": %s}' % (command, items, orjson.dumps(request_id))


def large_frames() -> bytes:
    """Large requests and large frames that are not requests, between small
    requests and garbage: what a deferring server decodes a step at a time."""
    return b"".join(
        [
            b'{"execute": "query-status", "id": 1}',
            big_request(20_000, 2),
            b'{"execute": "query-name", "id": 3}\xff,]',
            b"[" + ESCAPED * 600 + b"0]",  # not an object
            b'{"execute": "query-status", "arguments": {"a": [' + ESCAPED * 600 + b'1 2]}, "id": 4}',  # grammar
            b'{"execute": "query-status", "id": 5, "arguments": {"k": 1, "x": "' + b"\\u00e9" * 4000 + b'", "k": 2}}',
            big_request(30_000, 6, b"query-name") + big_request(9_000, 7),  # two in one read
            b"{'execute': 'query-status', 'arguments': {'s': '" + b"\\'" * 6000 + b"'}, 'id': 8}",  # QMP's dialect
            b'{"exec-oob": "query-status", "arguments": {"d": [' + ESCAPED * 600 + b'0]}, "id": 9}',
            b'{"execute": "query-status", "id": 10}',
        ]
    )


def serve_stepping(protocol, reads, *, read_while_decoding: bool) -> tuple[bytes, int]:
    """Like serve(), for a protocol that decodes large requests a step at a
    time: (all answers, steps taken).  ``read_while_decoding``: every read
    is fed at once (a transport would pause reading, but the sans-IO object
    keeps what comes meanwhile behind the request being decoded)."""
    out = [protocol.data_to_send()]
    steps = 0
    reads = list(reads)
    while reads or protocol.can_progress or protocol.decoding:
        if reads and (read_while_decoding or not protocol.reading_paused):
            protocol.receive_data(reads.pop(0))
        elif protocol.can_progress:
            request = protocol.next_event()
            if request is not None:
                out.append(protocol.send(request, {}))
        elif protocol.decoding:
            assert protocol.reading_paused
            protocol.step()
            steps += 1
        out.append(protocol.data_to_send())
    return b"".join(out), steps


@pytest.mark.parametrize("proto", sorted(PROTOCOLS))
@pytest.mark.parametrize("read_while_decoding", [False, True])
def test_large_requests_decoded_in_steps_get_the_same_answers(Framer, proto, read_while_decoding):
    """Requests over the defer size are decoded a step at a time, and the
    answers are byte for byte those of a server that decodes each frame at
    once: values, errors, frames that are not requests, duplicate keys,
    QMP's dialect, out-of-band requests, and what came after them in the
    same read."""
    cls = PROTOCOLS[proto]
    data = large_frames()
    want, _ = serve(reference(cls), chunks(data, 7001))
    # Each request answered with its id; the frames that are not requests
    # (not an object, a grammar error, a duplicate key, 0xFF, stray bytes)
    # with QEMU's errors.
    assert all(b'"id": %d' % i in want for i in (1, 2, 3, 6, 7, 8, 9, 10))
    assert want.count(b"GenericError") >= 6
    protocol = answering(cls, Framer, defer=4096)
    got, steps = serve_stepping(protocol, chunks(data, 7001), read_while_decoding=read_while_decoding)
    assert got == want
    pending = [item for items in protocol._framer.feeds for item in items if type(item) is PendingFrame]
    assert len(pending) == 8  # every large frame, whatever it turned out to be
    compiled = Framer is IMPLEMENTATIONS.get("cython")
    # The compiled framer checks and decodes 4 KiB a step; the pure twin
    # (about behaviour) decodes each frame at its first step.
    assert steps > 20 if compiled else steps == len(pending)
    assert not protocol.decoding and not protocol.reading_paused


def test_a_new_guest_agent_client_forgets_the_request_being_decoded(Framer):
    """qemu-ga's parser outlives a client; a request the old client sent
    and was being decoded when it left is forgotten with its others."""
    protocol = answering(QGAServerProtocol, Framer, defer=4096)
    protocol.receive_data(big_request(100_000) + b'{"execute": "guest-ping", "id": "after"}')
    assert protocol.decoding and protocol.next_event() is None
    protocol.connection_made()
    assert not protocol.decoding and not protocol.reading_paused
    protocol.data_to_send()
    protocol.receive_data(b'{"execute": "guest-ping", "id": "next"}')
    # (no commands here: the dispatcher answers it, by its id)
    assert protocol.next_event() is None
    answers = protocol.data_to_send()
    assert b'"id": "next"' in answers and b'"after"' not in answers and b'"big"' not in answers


async def test_large_request_is_decoded_a_slice_per_turn_of_the_loop(tmp_path, client):
    """A 4 MiB request to one VM is decoded 4 KiB a turn of the loop, with
    the attacker's reading paused: another VM's client gets five answers
    while it is still decoding, then the request is answered as QEMU would
    (its argument is unexpected), and so is the one sent after it."""
    async with serve_vms(tmp_path, 2) as vms:
        attacker = await client(vms.qmp_paths[0])
        good = await client(vms.qmp_paths[1])
        session = vms[0].endpoints[0]._session
        protocol = session.protocol
        seen = []
        step = protocol.step

        def first_step():
            if not seen:
                seen.append(protocol._stalled)
            return step()

        protocol.step = first_step
        await attacker.send(big_request(4 << 20) + b'{"execute": "query-name", "id": "next"}')
        await wait_until(lambda: seen)
        pending = seen[0]
        compiled = type(protocol._framer).__module__ == "qmpcore.framing._framer"
        if compiled:
            before = pending.steps
            assert protocol.decoding and not session.transport.is_reading()
        await round_trips(good, 5)
        if compiled:
            # Five round trips took a few turns of the loop, each turn one
            # step of the large request; it needs hundreds of them.
            assert pending.steps - before < 100 and protocol.decoding
        answer = await asyncio.wait_for(attacker.read_message(), DEADLINE)
        assert answer == {"id": "big", "error": {"class": "GenericError", "desc": "Parameter 'data' is unexpected"}}
        assert await attacker.read_message() == {"return": {"name": "vm0"}, "id": "next"}
        assert pending.steps > 400 if compiled else pending.steps == 1
        if not session.transport.is_reading():
            # (the rest after its last step, the whole decoding in the pure
            # twin, while the other client read: share.MAX_REST at most)
            assert session._resting is not None
            await wait_until(session.transport.is_reading)
        assert session.transport.is_reading()


# -- a costly client's share of the loop -----------------------------------------------------


REQUESTS = 24
NEXT = b'{"execute": "query-name", "id": "next"}'


@pytest.mark.parametrize("attack", ["garbage", "large requests"])
async def test_a_costly_client_rests_its_work_time_per_busy_other_client(
    tmp_path, client, monkeypatch, work_clock, attack
):
    """After costly work for one client (a read that held garbage, a slice
    of its error answers, a step of a large request), the server holds that
    client back for the work's time per other client that read meanwhile
    (never longer than MAX_REST): its share of the loop while others are
    busy, and no rest at all while they are idle.  Nothing it sent is lost.
    The clock the work is measured with is a fake one (work_clock)."""
    unit = work_clock.unit
    async with serve_vms(tmp_path, 4) as vms:
        goods = [await client(path) for path in vms.qmp_paths[1:]]
        attacker = await client(vms.qmp_paths[0])
        session = vms[0].endpoints[0]._session
        loop = asyncio.get_running_loop()
        rests: list[float] = []
        call_later = loop.call_later

        def spy(delay, callback, *args):
            if callback == session._wake:
                rests.append(delay)
            return call_later(delay, callback, *args)

        monkeypatch.setattr(loop, "call_later", spy)
        if attack == "garbage":
            flood = Flood(attacker, b"," * 8192, 1 << 30, read=True, reply=EXPECTING)
            await wait_until(lambda: flood.received > 64 * 4096 * len(EXPECTING))
        else:
            # Requests over the deferring size, each decoded in steps (the
            # pure twin takes each in one step): a writer that never stops.
            requests = b"".join(big_request(300 << 10, i) for i in range(REQUESTS))
            sending = asyncio.ensure_future(loop.sock_sendall(attacker.sock, requests + NEXT))
            await wait_until(lambda: work_clock.readings > 20)  # (some steps taken)
        # The other clients idle: the attacker is never held back.
        assert rests == [] and work_clock.readings > 20
        # Busy: each rest is the fake work's time per client that read.
        await asyncio.gather(*(round_trips(good, 20) for good in goods))
        assert rests and set(rests) <= {unit, 2 * unit, 3 * unit}, set(rests)
        # Long work: a rest never exceeds MAX_REST.
        work_clock.step = 8.0
        rests.clear()
        await asyncio.gather(*(round_trips(good, 20) for good in goods))
        if attack == "garbage":
            assert rests and max(rests) == share.MAX_REST
            flood.stopping = True
            await flood.writer
            total = flood.sent * len(EXPECTING)
            await wait_until(lambda: flood.received >= total)
            assert flood.received == total and flood.mismatch is None
            flood.stop()
        else:
            await asyncio.wait_for(sending, DEADLINE)
            for i in range(REQUESTS):
                answer = await attacker.read_message(timeout=DEADLINE)
                assert answer == {"id": i, "error": {"class": "GenericError", "desc": "Parameter 'data' is unexpected"}}
            assert await attacker.read_message() == {"return": {"name": "vm0"}, "id": "next"}
        monkeypatch.undo()
        attacker.close()
        await still_served(vms.qmp_paths[0])
