"""The asyncio client against scripted fake servers: behaviour and faults.

Each server script runs in a thread (tests/fake_server.py); every wait in
these tests has a timeout, so a regression fails instead of hanging.
"""

from __future__ import annotations

import asyncio
import os
import socket
import threading

import pytest

import qmpcore
from fake_server import FakeServer, Peer, event_frame, events_before_replies, handshake_then_serve, numbered_events
from qmpcore import aio

WAIT = 10.0  # upper bound for anything that should happen at once


def until(coro, timeout: float = WAIT):
    return asyncio.wait_for(coro, timeout)


# -- connecting ---------------------------------------------------------------------


async def test_connect_reads_greeting_and_negotiates(tmp_path):
    seen = []

    def script(peer: Peer) -> None:
        seen.append(peer.handshake())
        peer.serve()

    async with FakeServer(tmp_path, script) as server:
        async with await qmpcore.connect(server.address) as qmp:
            assert qmp.version == (7, 2, 22, "fake")
            assert qmp.capabilities == ("oob",) and qmp.enabled_capabilities == ()
            assert qmp.greeting["QMP"]["version"]["package"] == "fake"
            assert not qmp.oob and not qmp.closed
            assert await qmp.execute("query-status") == {}
            assert await qmp.execute("echo", {"a": 1}) == {"echo": {"a": 1}}
        assert qmp.closed and qmp.connection_error is None
    assert seen[0] == {"execute": "qmp_capabilities", "id": 1}


async def test_connect_with_oob(tmp_path):
    def script(peer: Peer) -> None:
        cmd = peer.handshake()
        assert cmd["arguments"] == {"enable": ["oob"]}
        cmd = peer.recv_command()
        assert cmd["exec-oob"] == "query-yank"
        peer.reply(cmd, [])
        peer.serve()

    async with FakeServer(tmp_path, script) as server:
        async with await qmpcore.connect(server.address, oob=True) as qmp:
            assert qmp.oob
            assert await qmp.execute_oob("query-yank") == []


async def test_tcp_address(tmp_path):
    async with FakeServer(tmp_path, handshake_then_serve, tcp=True) as server:
        host, port = server.address
        async with await qmpcore.connect((host, port)) as qmp:
            assert await qmp.execute("x") == {}
            with pytest.raises(qmpcore.StateError):
                await qmp.send_fd(0)
            with pytest.raises(qmpcore.StateError):
                await qmp.execute("getfd", {"fdname": "x"}, fds=[0])
            assert await qmp.execute("y") == {}


@pytest.mark.parametrize(
    "address, error", [(42, TypeError), (("h", 0), ValueError), (("", 1), ValueError), ("", ValueError)]
)
async def test_bad_address(address, error):
    with pytest.raises(error):
        await qmpcore.connect(address)


async def test_missing_socket(tmp_path):
    with pytest.raises(FileNotFoundError):
        await qmpcore.connect(tmp_path / "nothing.sock", timeout=WAIT)


async def test_no_greeting_times_out(tmp_path):
    def script(peer: Peer) -> None:
        peer.recv()  # say nothing; wait for the client to give up

    async with FakeServer(tmp_path, script) as server:
        with pytest.raises(qmpcore.TimeoutError, match="not ready"):
            await qmpcore.connect(server.address, timeout=0.3)


async def test_garbage_instead_of_greeting(tmp_path):
    def script(peer: Peer) -> None:
        peer.send(b"HTTP/1.1 400 Bad Request\r\n\r\n")
        peer.recv()

    async with FakeServer(tmp_path, script) as server:
        with pytest.raises(qmpcore.ProtocolError, match="expected a QMP greeting"):
            await until(qmpcore.connect(server.address))


async def test_server_closes_before_greeting(tmp_path):
    async with FakeServer(tmp_path, lambda peer: None) as server:
        with pytest.raises(qmpcore.ConnectionLost):
            await until(qmpcore.connect(server.address))


async def test_negotiation_mode(tmp_path):
    def script(peer: Peer) -> None:
        peer.greet()
        cmd = peer.recv_command()
        peer.error(cmd, "CommandNotFound", "Expecting capabilities negotiation with 'qmp_capabilities'")
        cmd = peer.recv_command()
        assert cmd["execute"] == "qmp_capabilities"
        peer.reply(cmd)
        peer.serve()

    async with FakeServer(tmp_path, script) as server:
        async with await qmpcore.connect(server.address, negotiate=False) as qmp:
            with pytest.raises(qmpcore.CommandError) as info:
                await qmp.execute("query-status")
            assert info.value.error_class == "CommandNotFound"
            await qmp.negotiate()
            with pytest.raises(qmpcore.StateError):
                await qmp.negotiate()
            assert await qmp.execute("query-status") == {}


# -- commands ----------------------------------------------------------------------


async def test_command_error(tmp_path):
    def script(peer: Peer) -> None:
        peer.handshake()
        cmd = peer.recv_command()
        peer.error(cmd, "GenericError", "Parameter 'bogus' is unexpected")
        peer.serve()

    async with FakeServer(tmp_path, script) as server:
        async with await qmpcore.connect(server.address) as qmp:
            with pytest.raises(qmpcore.CommandError) as info:
                await qmp.execute("query-status", {"bogus": 1})
            err = info.value
            assert (err.error_class, err.desc, err.command) == (
                "GenericError",
                "Parameter 'bogus' is unexpected",
                "query-status",
            )
            assert err.reply["error"]["class"] == "GenericError"


async def test_oob_without_negotiation_is_refused(tmp_path):
    async with FakeServer(tmp_path, handshake_then_serve) as server:
        async with await qmpcore.connect(server.address) as qmp:
            with pytest.raises(qmpcore.StateError):
                await qmp.execute_oob("query-yank")


async def test_pipelined_commands_out_of_order(tmp_path):
    """Replies come back reversed; each caller still gets its own."""

    def script(peer: Peer) -> None:
        peer.handshake()
        batch = [peer.recv_command() for _ in range(8)]
        assert peer.pending() == 0  # the client holds the rest
        for rounds in range(2):
            for cmd in reversed(batch):
                peer.reply(cmd, cmd["arguments"])
            batch = [peer.recv_command() for _ in range(8 if rounds == 0 else 4)]
        for cmd in reversed(batch):
            peer.reply(cmd, cmd["arguments"])
        peer.serve()

    async with FakeServer(tmp_path, script) as server:
        async with await qmpcore.connect(server.address, oob=True) as qmp:
            tasks = [asyncio.ensure_future(qmp.execute("echo", {"n": i})) for i in range(20)]
            await asyncio.sleep(0)
            assert qmp.counters["held"] == 12
            results = await until(asyncio.gather(*tasks))
            assert results == [{"n": i} for i in range(20)]
            assert qmp.counters["in_flight"] == 0


async def test_submit_returns_futures_and_withdraws_a_cancelled_held_command(tmp_path):
    seen = []

    def script(peer: Peer) -> None:
        peer.handshake()
        batch = [peer.recv_command() for _ in range(8)]
        assert peer.pending() == 0  # the client holds the other two
        for cmd in batch:
            if cmd["execute"] == "fail":
                peer.error(cmd, "GenericError", "no")
            else:
                peer.reply(cmd, cmd["arguments"])
        ninth = peer.recv_command()
        peer.reply(ninth, ninth["arguments"])
        after = peer.recv_command()  # the tenth was withdrawn: this is the next one
        seen.extend([ninth["arguments"], after["arguments"]])
        peer.reply(after, after["arguments"])
        peer.serve(lambda peer, cmd: cmd["execute"] == "never")  # left unanswered

    async with FakeServer(tmp_path, script) as server:
        async with await qmpcore.connect(server.address, oob=True) as qmp:
            futures = [qmp.submit("echo", {"n": i}) for i in range(7)]
            futures.append(qmp.submit("fail"))
            futures += [qmp.submit("echo", {"n": 8}), qmp.submit("echo", {"n": 9})]
            assert all(isinstance(f, asyncio.Future) for f in futures)
            assert qmp.counters["held"] == 2
            futures[9].cancel()
            results = await until(asyncio.gather(*futures[:9], return_exceptions=True))
            assert results[:7] == [{"n": i} for i in range(7)] and results[8] == {"n": 8}
            assert isinstance(results[7], qmpcore.CommandError) and results[7].command == "fail"
            assert await until(qmp.execute("echo", {"n": 10})) == {"n": 10}
            assert seen == [{"n": 8}, {"n": 10}]
            assert qmp.counters["in_flight"] == 0
            with pytest.raises(TypeError):
                qmp.submit("echo", "not a dict")
            with pytest.raises(qmpcore.TimeoutError):
                await qmp.submit("never", timeout=0.05)
        with pytest.raises(qmpcore.QMPError):
            qmp.submit("echo")


async def test_many_pipelined_commands(tmp_path):
    async with FakeServer(tmp_path, handshake_then_serve) as server:
        async with await qmpcore.connect(server.address) as qmp:
            results = await until(asyncio.gather(*(qmp.execute("echo", {"n": i}) for i in range(500))))
            assert results == [{"echo": {"n": i}} for i in range(500)]
            assert qmp.counters["commands"] == 501


async def test_deadlines_of_many_commands_stay_bounded_and_fire_in_order(tmp_path):
    def script(peer: Peer) -> None:
        peer.handshake()
        peer.serve(lambda peer, cmd: cmd["execute"] == "never")

    async with FakeServer(tmp_path, script) as server:
        async with await qmpcore.connect(server.address, command_timeout=30) as qmp:
            for _ in range(20):
                await until(asyncio.gather(*(qmp.submit("echo", {"n": i}) for i in range(50))))
            # answered commands leave no deadline behind for long
            assert len(qmp._deadlines) <= 2 * 50 + 64
            loop = asyncio.get_running_loop()
            started = loop.time()
            late = qmp.submit("never", timeout=0.4)
            early = qmp.submit("never", timeout=0.1)
            done, _ = await asyncio.wait([late, early], return_when=asyncio.FIRST_COMPLETED)
            assert done == {early} and isinstance(early.exception(), qmpcore.TimeoutError)
            assert not late.done()
            with pytest.raises(qmpcore.TimeoutError):
                await late
            assert loop.time() - started >= 0.39
            assert qmp.counters["timeouts"] == 2
            assert await until(qmp.execute("echo")) == {}  # still usable


async def test_timeout_then_late_reply_is_dropped(tmp_path):
    def script(peer: Peer) -> None:
        peer.handshake()
        slow = peer.recv_command()
        fast = peer.recv_command()  # sent after the first timed out
        peer.reply(slow, "late")
        peer.reply(fast, "fast")
        peer.serve()

    async with FakeServer(tmp_path, script) as server:
        async with await qmpcore.connect(server.address) as qmp:
            with pytest.raises(qmpcore.TimeoutError) as info:
                await qmp.execute("slow", timeout=0.2)
            assert isinstance(info.value, TimeoutError) and "slow" in str(info.value)
            assert isinstance(info.value, asyncio.TimeoutError)  # a class of its own before 3.11
            assert await until(qmp.execute("fast")) == "fast"
            assert qmp.counters["late_replies"] == 1 and qmp.counters["timeouts"] == 1
            assert qmp.counters["protocol_errors"] == 0


async def test_default_command_timeout(tmp_path):
    def script(peer: Peer) -> None:
        peer.handshake()
        peer.recv_command()
        peer.recv()

    async with FakeServer(tmp_path, script) as server:
        async with await qmpcore.connect(server.address, command_timeout=0.2) as qmp:
            with pytest.raises(qmpcore.TimeoutError):
                await until(qmp.execute("never"))


async def test_cancelled_command_reply_is_dropped(tmp_path):
    def script(peer: Peer) -> None:
        peer.handshake()
        first = peer.recv_command()
        second = peer.recv_command()
        peer.reply(first, "first")
        peer.reply(second, "second")
        peer.serve()

    async with FakeServer(tmp_path, script) as server:
        async with await qmpcore.connect(server.address) as qmp:
            task = asyncio.ensure_future(qmp.execute("first"))
            await asyncio.sleep(0.05)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert await until(qmp.execute("second")) == "second"
            assert qmp.counters["late_replies"] == 1


async def test_send_fd_and_fds_with_command(tmp_path):
    received = []

    def script(peer: Peer) -> None:
        peer.handshake()
        cmd = peer.recv_command()
        received.append((cmd["execute"], list(peer.fds)))
        peer.reply(cmd)
        cmd = peer.recv_command()
        received.append((cmd["execute"], list(peer.fds)))
        peer.reply(cmd, {"fd": 3})
        for fd in peer.fds:
            os.close(fd)
        peer.serve()

    r, w = os.pipe()
    try:
        async with FakeServer(tmp_path, script) as server:
            async with await qmpcore.connect(server.address) as qmp:
                await qmp.send_fd(r)
                assert await until(qmp.execute("getfd", {"fdname": "x"})) == {}
                assert await until(qmp.execute("add-fd", fds=[w])) == {"fd": 3}
    finally:
        os.close(r)
        os.close(w)
    assert received[0][0] == "getfd" and len(received[0][1]) == 1
    assert received[1][0] == "add-fd" and len(received[1][1]) == 2


# -- events -------------------------------------------------------------------------


async def test_event_before_reply_is_delivered(tmp_path):
    def script(peer: Peer) -> None:
        peer.handshake()
        cmd = peer.recv_command()
        peer.send(event_frame("STOP") + b'{"return": {}, "id": %d}\r\n' % cmd["id"])
        peer.serve()

    async with FakeServer(tmp_path, script) as server:
        async with await qmpcore.connect(server.address) as qmp:
            await qmp.execute("stop")
            ev = await qmp.wait_event("STOP", timeout=WAIT)
            assert ev.name == "STOP" and ev.timestamp == pytest.approx(1795584128.785071)
            assert qmp.counters["events_received"] == 1 and qmp.counters["events_queued"] == 0


async def test_events_stream_and_filters(tmp_path):
    def script(peer: Peer) -> None:
        peer.handshake()
        cmd = peer.recv_command()
        peer.send(
            event_frame("BLOCK_JOB_READY", {"device": "a"})
            + event_frame("STOP")
            + event_frame("BLOCK_JOB_READY", {"device": "b"})
            + event_frame("RESUME")
        )
        peer.reply(cmd)
        peer.serve()

    async with FakeServer(tmp_path, script) as server:
        async with await qmpcore.connect(server.address) as qmp:
            everything = qmp.events()
            runstate = qmp.events("STOP", "RESUME")
            await qmp.execute("go")
            ev = await qmp.wait_event("BLOCK_JOB_READY", match={"device": "b"}, timeout=WAIT)
            assert ev.data == {"device": "b"}
            assert [e.name for e in [await everything.get(WAIT) for _ in range(4)]] == [
                "BLOCK_JOB_READY",
                "STOP",
                "BLOCK_JOB_READY",
                "RESUME",
            ]
            names = []
            async for e in runstate:
                names.append(e.name)
                if len(names) == 2:
                    break
            assert names == ["STOP", "RESUME"]
            runstate.close()
            with pytest.raises(qmpcore.TimeoutError):
                await everything.get(0.05)
            with pytest.raises(qmpcore.TimeoutError):
                await qmp.wait_event("SHUTDOWN", timeout=0.05)
            with pytest.raises(qmpcore.TimeoutError):
                await qmp.wait_event(match=lambda e: e.data.get("device") == "c", timeout=0.05)


async def test_wait_event_with_callable_match(tmp_path):
    def script(peer: Peer) -> None:
        peer.handshake()
        cmd = peer.recv_command()
        peer.reply(cmd)
        # (one write: the client may hang up as soon as it has event 3)
        peer.send(b"".join(event_frame("JOB", {"n": i}) for i in range(5)))
        peer.serve()

    async with FakeServer(tmp_path, script) as server:
        async with await qmpcore.connect(server.address) as qmp:
            await qmp.execute("go")
            ev = await qmp.wait_event("JOB", match=lambda e: e.data["n"] == 3, timeout=WAIT)
            assert ev.data == {"n": 3}
            # Events no waiter took stay for the next one.
            assert (await qmp.wait_event(timeout=WAIT)).data == {"n": 0}


async def test_event_flood_with_slow_consumer_is_bounded(tmp_path):
    """10**6 events while the consumer reads none: drops are counted, memory is bounded."""
    total = 10**6
    frame = event_frame("BLOCK_IO_ERROR", {"device": "d", "operation": "write"})

    def script(peer: Peer) -> None:
        peer.handshake()
        cmd = peer.recv_command()
        chunk = frame * 10_000
        for _ in range(total // 10_000):
            peer.send(chunk)
        peer.reply(cmd)
        peer.serve()

    async with FakeServer(tmp_path, script) as server:
        async with await qmpcore.connect(server.address, event_queue=50) as qmp:
            stream = qmp.events(maxsize=100)
            await asyncio.wait_for(qmp.execute("flood"), 120)
            counters = qmp.counters
            assert counters["events_received"] == total
            assert len(stream) == 100 and stream.dropped == total - 100
            assert counters["events_dropped"] == total - 100
            assert counters["events_queued"] == 50 and counters["backlog_dropped"] == total - 50
            first = await stream.get(WAIT)
            assert first.data["device"] == "d"


async def test_backlog_is_bounded(tmp_path):
    async with FakeServer(tmp_path, events_before_replies(numbered_events(1000))) as server:
        async with await qmpcore.connect(server.address, event_queue=10) as qmp:
            await qmp.execute("go")
            assert qmp.counters["events_queued"] == 10 and qmp.counters["backlog_dropped"] == 990
            assert qmp.counters["events_dropped"] == 0  # no subscription fell behind
            assert (await qmp.wait_event(timeout=WAIT)).data == {"n": 990}  # the oldest kept


async def test_block_policy_pauses_reading(tmp_path):
    total = 5000

    async with FakeServer(tmp_path, events_before_replies(numbered_events(total))) as server:
        async with await qmpcore.connect(server.address) as qmp:
            stream = qmp.events(maxsize=10, policy="block")
            reply = asyncio.ensure_future(qmp.execute("flood"))
            seen = []
            while len(seen) < total:
                seen.append((await stream.get(WAIT)).data["n"])
            assert seen == list(range(total))
            assert await until(reply) == {}
            assert stream.dropped == 0


async def test_raise_policy(tmp_path):
    async with FakeServer(tmp_path, events_before_replies(numbered_events(30))) as server:
        async with await qmpcore.connect(server.address) as qmp:
            stream = qmp.events(maxsize=10, policy="raise")
            await qmp.execute("flood")
            with pytest.raises(aio.EventOverflow) as info:
                await stream.get(WAIT)
            assert info.value.dropped == 20
            assert (await stream.get(WAIT)).data == {"n": 0}


async def test_bad_event_options(tmp_path):
    async with FakeServer(tmp_path, handshake_then_serve) as server:
        async with await qmpcore.connect(server.address) as qmp:
            with pytest.raises(ValueError):
                qmp.events(policy="sometimes")
            with pytest.raises(TypeError):
                qmp.events(3)
            with pytest.raises(TypeError):
                await qmp.wait_event("STOP", match=[1])


# -- a broken server -------------------------------------------------------------------


@pytest.mark.parametrize(
    "junk, errors, words",
    [
        # (a run of errors is one FrameError with a count: the first one's words)
        (b"garbage!!\r\n\x01\xfe{]\r\n", 2, ("invalid keyword 'garbage'", "5 errors")),
        (b'{"return": "stray", "id": 999}\r\n', 1, ("unknown id 999",)),
    ],
    ids=["garbage", "unknown-id"],
)
async def test_junk_is_reported_and_the_connection_continues(tmp_path, junk, errors, words):
    def script(peer: Peer) -> None:
        peer.handshake()
        cmd = peer.recv_command()
        peer.send(junk)
        peer.reply(cmd, "mine")
        peer.serve()

    async with FakeServer(tmp_path, script) as server:
        async with await qmpcore.connect(server.address) as qmp:
            assert await until(qmp.execute("x")) == "mine"
            assert qmp.counters["protocol_errors"] >= errors
            assert isinstance(qmp.last_protocol_error, qmpcore.ProtocolError)
            assert any(word in str(qmp.last_protocol_error) for word in words), qmp.last_protocol_error


async def test_frame_over_the_limit(tmp_path):
    def script(peer: Peer) -> None:
        peer.handshake()
        big = peer.recv_command()
        small = peer.recv_command()
        peer.reply(big, "x" * 1_000_000)
        peer.reply(small, "small")
        peer.serve()

    async with FakeServer(tmp_path, script) as server:
        async with await qmpcore.connect(server.address, max_frame_size=64 * 1024) as qmp:
            big = qmp.submit("big")  # sent now, before "small"; no timeout: the dropped reply fails it
            assert await until(qmp.execute("small")) == "small"
            assert "size limit" in str(qmp.last_protocol_error)
            with pytest.raises(qmpcore.ProtocolError, match="max_frame_size=65536"):
                await until(big)


async def test_close_mid_frame(tmp_path):
    def script(peer: Peer) -> None:
        peer.handshake()
        peer.recv_command()
        peer.send(b'{"return": {"status": "runn')

    async with FakeServer(tmp_path, script) as server:
        qmp = await qmpcore.connect(server.address)
        with pytest.raises(qmpcore.ConnectionLost, match="middle of a frame"):
            await until(qmp.execute("query-status"))
        await until(qmp.wait_closed())
        assert isinstance(qmp.connection_error, qmpcore.ConnectionLost)
        with pytest.raises(qmpcore.ConnectionLost):
            await qmp.execute("again")
        await qmp.close()


async def test_connection_loss_fails_every_pending_command(tmp_path):
    def script(peer: Peer) -> None:
        peer.handshake()
        for _ in range(8):
            peer.recv_command()
        peer.reset()

    async with FakeServer(tmp_path, script) as server:
        qmp = await qmpcore.connect(server.address)
        stream = qmp.events()
        results = await until(asyncio.gather(*(qmp.execute("x") for _ in range(12)), return_exceptions=True))
        assert all(isinstance(r, qmpcore.ConnectionLost) for r in results)
        with pytest.raises(qmpcore.ConnectionLost):
            await stream.get(WAIT)
        with pytest.raises(qmpcore.ConnectionLost):
            await qmp.wait_event("STOP", timeout=WAIT)
        assert qmp.closed and qmp.connection_error is not None
        await qmp.close()


async def test_quit_then_reset_is_a_clean_close(tmp_path):
    def script(peer: Peer) -> None:
        peer.handshake()
        cmd = peer.recv_command()
        assert cmd["execute"] == "quit"
        peer.send(event_frame("SHUTDOWN", {"guest": False, "reason": "host-qmp-quit"}))
        peer.reply(cmd)
        peer.reset()

    async with FakeServer(tmp_path, script) as server:
        qmp = await qmpcore.connect(server.address)
        shutdown = qmp.events("SHUTDOWN")
        assert await until(qmp.execute("quit")) == {}
        await until(qmp.wait_closed())
        assert qmp.connection_error is None
        assert (await shutdown.get(WAIT)).data["reason"] == "host-qmp-quit"
        async for _ in shutdown:  # a clean end stops iteration
            pytest.fail("no more events expected")


async def test_quit_reply_lost_in_the_reset(tmp_path):
    def script(peer: Peer) -> None:
        peer.handshake()
        peer.recv_command()
        peer.reset()

    async with FakeServer(tmp_path, script) as server:
        qmp = await qmpcore.connect(server.address)
        assert await until(qmp.execute("quit")) is None
        assert qmp.connection_error is None


async def test_close_fails_pending_commands(tmp_path):
    def script(peer: Peer) -> None:
        peer.handshake()
        peer.recv_command()
        peer.recv()

    async with FakeServer(tmp_path, script) as server:
        qmp = await qmpcore.connect(server.address)
        pending = asyncio.ensure_future(qmp.execute("never"))
        await asyncio.sleep(0.05)
        await until(qmp.close())
        with pytest.raises(qmpcore.ConnectionLost):
            await until(pending)
        assert qmp.connection_error is None
        with pytest.raises(qmpcore.StateError):
            await qmp.execute("after")
        await qmp.close()  # idempotent


async def test_abort(tmp_path):
    def script(peer: Peer) -> None:
        peer.handshake()
        peer.recv()

    async with FakeServer(tmp_path, script) as server:
        qmp = await qmpcore.connect(server.address)
        qmp.abort()
        await until(qmp.wait_closed())
        assert qmp.closed


# -- public hooks: a handed-over socket, fd passing now, bounded close, listeners ----


def connected_socket(address) -> socket.socket:
    family = socket.AF_UNIX if isinstance(address, str) else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.settimeout(WAIT)
    sock.connect(address)
    return sock


@pytest.mark.parametrize("tcp", [False, True])
async def test_connect_over_a_connected_socket(tmp_path, tcp):
    async with FakeServer(tmp_path, lambda peer: (peer.handshake(), peer.serve()), tcp=tcp) as server:
        sock = connected_socket(server.address)
        qmp = await until(qmpcore.connect(sock=sock))
        async with qmp:
            assert qmp.address.sockaddr == server.address
            assert qmp.fileno() == sock.fileno() >= 0
            assert await until(qmp.execute("echo", {"a": 1})) == {"echo": {"a": 1}}
        assert qmp.fileno() == -1 and sock.fileno() == -1  # the client closed it


async def test_connect_over_a_socket_whose_peer_has_no_name():
    """Server mode: the socket came from accept() or socketpair(), its peer is unnamed."""
    mine, theirs = socket.socketpair()
    with theirs:
        peer = Peer(theirs)
        task = asyncio.get_running_loop().run_in_executor(None, lambda: (peer.handshake(), peer.serve()))
        async with await until(qmpcore.connect(sock=mine)) as qmp:
            assert qmp.address.is_unix and str(qmp.address) == "<socket>"
            assert await until(qmp.execute("x")) == {}
        await until(task)


async def test_connect_guest_agent_over_a_connected_socket(tmp_path):
    from test_sync_client import qga_script

    async with FakeServer(tmp_path, qga_script) as server:
        async with await until(qmpcore.connect_guest_agent(sock=connected_socket(server.address))) as ga:
            assert await until(ga.execute("guest-ping")) == {"pong": "guest-ping"}
            assert ga.fileno() >= 0


async def test_connect_sock_argument_errors(tmp_path):
    unconnected = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    datagram, _peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    closed = socket.socket()
    closed.close()
    try:
        with pytest.raises(TypeError):
            await qmpcore.connect()
        with pytest.raises(TypeError):
            await qmpcore.connect(str(tmp_path / "x"), sock=unconnected)
        with pytest.raises(TypeError):
            await qmpcore.connect(sock=unconnected.fileno())
        with pytest.raises(ValueError, match="not connected"):
            await qmpcore.connect(sock=unconnected)
        with pytest.raises(ValueError, match="stream"):
            await qmpcore.connect_guest_agent(sock=datagram)
        with pytest.raises(ValueError, match="closed"):
            await qmpcore.connect(sock=closed)
        assert unconnected.fileno() >= 0  # refused arguments are not taken over
    finally:
        for s in (unconnected, datagram, _peer):
            s.close()


@pytest.mark.parametrize("fault", ["silence", "garbage"])
async def test_handed_over_socket_is_closed_when_the_handshake_fails(fault):
    mine, theirs = socket.socketpair()
    with theirs:
        if fault == "garbage":
            theirs.sendall(b"not a greeting\r\n")
            theirs.shutdown(socket.SHUT_WR)
        with pytest.raises((qmpcore.ProtocolError, qmpcore.ConnectionLost, qmpcore.TimeoutError)):
            await qmpcore.connect(sock=mine, timeout=0.2)
        assert mine.fileno() == -1


async def test_send_fd_nowait_passes_the_fd_before_returning(tmp_path):
    received = []

    def script(peer: Peer) -> None:
        peer.handshake()
        cmd = peer.recv_command()
        received.append((cmd["execute"], [os.fstat(fd).st_ino for fd in peer.fds]))
        peer.reply(cmd)
        for fd in peer.fds:
            os.close(fd)
        peer.serve()

    async with FakeServer(tmp_path, script) as server:
        async with await qmpcore.connect(server.address) as qmp:
            r, w = os.pipe()
            inode = os.fstat(r).st_ino
            qmp.send_fd_nowait(r)
            os.close(r)  # the server holds its own copy already
            os.close(w)
            assert await until(qmp.execute("getfd", {"fdname": "x"})) == {}
    assert received == [("getfd", [inode])]


async def test_send_fd_nowait_refuses_to_overtake_buffered_writes(tmp_path):
    go = threading.Event()

    def script(peer: Peer) -> None:
        peer.handshake()
        go.wait(WAIT)  # stop reading for a while
        peer.serve()

    async with FakeServer(tmp_path, script) as server:
        async with await qmpcore.connect(server.address) as qmp:
            big = asyncio.ensure_future(qmp.execute("big", {"x": "x" * (8 << 20)}))  # more than socket buffers hold
            await asyncio.sleep(0)
            with pytest.raises(BlockingIOError):
                qmp.send_fd_nowait(0)
            go.set()
            assert await until(big) == {"echo": {"x": "x" * (8 << 20)}}


async def test_send_fd_nowait_over_tcp_is_refused(tmp_path):
    async with FakeServer(tmp_path, lambda peer: (peer.handshake(), peer.serve()), tcp=True) as server:
        async with await qmpcore.connect(server.address) as qmp:
            with pytest.raises(qmpcore.StateError):
                qmp.send_fd_nowait(0)


async def test_close_gives_up_on_a_server_that_stopped_reading(tmp_path):
    go = threading.Event()

    def script(peer: Peer) -> None:
        peer.handshake()
        go.wait(WAIT)
        peer.serve()

    async with FakeServer(tmp_path, script) as server:
        qmp = await qmpcore.connect(server.address)
        pending = asyncio.ensure_future(qmp.execute("big", {"x": "x" * (8 << 20)}))
        await asyncio.sleep(0)
        try:
            await until(qmp.close(timeout=0.1))
            assert qmp.closed and qmp.fileno() == -1
            with pytest.raises(qmpcore.ConnectionLost):
                await until(pending)
        finally:
            go.set()


async def test_event_listener_sees_every_event_in_order(tmp_path):
    names = [f"E{i}" for i in range(50)]

    script = events_before_replies(b"".join(event_frame(name) for name in names))
    async with FakeServer(tmp_path, script) as server:
        qmp = await qmpcore.connect(server.address, event_queue=3)
        heard, ends = [], []
        remove = qmp.add_event_listener(lambda ev: heard.append(ev.name), on_close=ends.append)
        await until(qmp.execute("go"))
        assert heard == names  # whatever the small queues dropped
        assert qmp.counters["backlog_dropped"] == 47
        remove()
        remove()  # removing twice is harmless
        await qmp.close()
        assert heard == names and ends == []


async def test_event_listener_hears_the_end_and_survives_a_failing_callback(tmp_path, caplog):
    def script(peer: Peer) -> None:
        peer.handshake()
        cmd = peer.recv_command()
        peer.send(event_frame("STOP") + event_frame("RESUME"))
        peer.reply(cmd)
        peer.recv_command()
        peer.reset()

    async with FakeServer(tmp_path, script) as server:
        qmp = await qmpcore.connect(server.address)
        heard, ends = [], []

        def broken(ev):
            raise RuntimeError("listener bug")

        qmp.add_event_listener(broken, on_close=lambda error: 1 / 0)
        qmp.add_event_listener(lambda ev: heard.append(ev.name), on_close=ends.append)
        await until(qmp.execute("go"))
        assert (await qmp.wait_event("RESUME", timeout=WAIT)).name == "RESUME"  # routing went on
        with pytest.raises(qmpcore.ConnectionLost):
            await until(qmp.execute("x"))
        await until(qmp.wait_closed())
    assert heard == ["STOP", "RESUME"]
    assert len(ends) == 1 and isinstance(ends[0], qmpcore.ConnectionLost)
    assert "listener bug" in caplog.text and "ZeroDivisionError" in caplog.text
    late = []
    qmp.add_event_listener(late.append, on_close=late.append)  # after the end: told at once
    assert late == [qmp.connection_error]
    with pytest.raises(TypeError):
        qmp.add_event_listener(None)


# -- one API shape --------------------------------------------------------------------


async def test_connect_is_an_async_context_manager_and_a_coroutine(tmp_path):
    async with FakeServer(tmp_path, handshake_then_serve) as server:
        async with qmpcore.connect(server.address, timeout=WAIT) as qmp:  # no await
            assert isinstance(qmp, aio.QMPClient) and await until(qmp.execute("x")) == {}
        assert qmp.closed and qmp.connection_error is None  # closed by the block


async def test_connect_runs_as_a_task(tmp_path):
    async with FakeServer(tmp_path, handshake_then_serve) as server:
        task = asyncio.get_running_loop().create_task(qmpcore.connect(server.address, timeout=WAIT))
        async with await until(task) as qmp:
            assert await until(qmp.execute("x")) == {}


async def test_connect_failure_in_async_with(tmp_path):
    with pytest.raises(qmpcore.ConnectError):
        async with qmpcore.connect(tmp_path / "missing.sock", timeout=WAIT):
            raise AssertionError("not reached")


@pytest.mark.parametrize(
    "limit, value, words",
    [("max_frame_size", 512, "size limit"), ("max_depth", 6, "nesting"), ("max_tokens", 50, "token")],
)
async def test_every_framer_limit_is_settable_from_connect(tmp_path, limit, value, words):
    def script(peer: Peer) -> None:
        peer.handshake()
        cmd = peer.recv_command()
        peer.reply(cmd, {"a": [[[[[[[1]]]]]]], "b": list(range(60)), "c": "x" * 1000})
        cmd = peer.recv_command()
        peer.reply(cmd, 1)
        peer.serve()

    async with FakeServer(tmp_path, script) as server:
        async with qmpcore.connect(server.address, timeout=WAIT, **{limit: value}) as qmp:
            assert getattr(qmp._proto._framer, limit) == value
            big = qmp.submit("big", timeout=0.5)
            assert await until(qmp.execute("small")) == 1
            assert words in str(qmp.last_protocol_error), qmp.last_protocol_error
            if limit == "max_frame_size":  # a reply dropped for its size fails its command at once
                with pytest.raises(qmpcore.ProtocolError, match="max_frame_size=512"):
                    await until(big)
            else:  # depth and token limits fail nothing: they are what junk hits
                with pytest.raises(qmpcore.TimeoutError):
                    await until(big)


async def test_guest_agent_limits_are_settable(tmp_path):
    from test_sync_client import qga_script

    async with FakeServer(tmp_path, qga_script) as server:
        limits = {"max_frame_size": 4096, "max_depth": 8, "max_tokens": 100}
        async with qmpcore.connect_guest_agent(server.address, timeout=WAIT, **limits) as ga:
            framer = ga._proto._framer
            assert (framer.max_frame_size, framer.max_depth, framer.max_tokens) == (4096, 8, 100)
            assert await until(ga.execute("guest-ping")) == {"pong": "guest-ping"}


def test_guest_agent_clients_have_no_event_methods():
    for name in ("events", "wait_event", "pull_event"):
        assert not hasattr(aio.GuestAgentClient, name), name
        assert not hasattr(qmpcore.SyncGuestAgentClient, name), name
    for name in ("events", "wait_event"):
        assert hasattr(aio.QMPClient, name)
    for name in ("events", "wait_event", "pull_event"):
        assert hasattr(qmpcore.SyncQMPClient, name)


def test_blocking_connect_functions_take_every_limit(tmp_path):
    from test_sync_client import qga_script

    limits = {"max_frame_size": 4096, "max_depth": 8, "max_tokens": 100}
    with FakeServer(tmp_path, lambda peer: (peer.handshake(), peer.serve())) as server:
        with qmpcore.connect_sync(server.address, timeout=WAIT, **limits) as qmp:
            framer = qmp._proto._framer
            assert (framer.max_frame_size, framer.max_depth, framer.max_tokens) == (4096, 8, 100)
    with FakeServer(tmp_path, qga_script) as server:
        with qmpcore.connect_guest_agent_sync(server.address, timeout=WAIT, **limits) as ga:
            framer = ga._proto._framer
            assert (framer.max_frame_size, framer.max_depth, framer.max_tokens) == (4096, 8, 100)
