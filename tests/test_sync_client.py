"""The blocking clients against scripted fake servers, from plain threads."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable

import pytest

import qmpcore
from conftest import run_in_thread
from fake_server import FakeServer, Peer, event_frame, events_before_replies, numbered_events
from qmpcore import sync

WAIT = 10.0


def serve_plain(peer: Peer) -> None:
    peer.handshake()
    peer.serve()


def test_execute_and_attributes(tmp_path):
    with FakeServer(tmp_path, serve_plain) as server:
        with qmpcore.connect_sync(server.address) as qmp:
            assert isinstance(qmp, qmpcore.SyncQMPClient)
            assert qmp.version == (7, 2, 22, "fake") and qmp.capabilities == ("oob",)
            assert qmp.execute("query-status") == {}
            assert qmp.execute("echo", {"x": [1, 2]}) == {"echo": {"x": [1, 2]}}
        assert qmp.closed and qmp.connection_error is None
        with pytest.raises(qmpcore.StateError):
            qmp.execute("after")
        qmp.close()  # idempotent


def test_tcp(tmp_path):
    with FakeServer(tmp_path, serve_plain, tcp=True) as server:
        with qmpcore.connect_sync(tuple(server.address)) as qmp:
            assert qmp.execute("x") == {}
            with pytest.raises(qmpcore.StateError):
                qmp.send_fd(0)
            assert qmp.execute("y") == {}


def test_oob(tmp_path):
    def script(peer: Peer) -> None:
        assert peer.handshake()["arguments"] == {"enable": ["oob"]}
        cmd = peer.recv_command()
        assert cmd["exec-oob"] == "query-yank"
        peer.reply(cmd, ["y"])
        peer.serve()

    with FakeServer(tmp_path, script) as server:
        with qmpcore.connect_sync(server.address, oob=True) as qmp:
            assert qmp.oob and qmp.execute_oob("query-yank") == ["y"]
    with FakeServer(tmp_path, serve_plain) as server:
        with qmpcore.connect_sync(server.address) as qmp:
            with pytest.raises(qmpcore.StateError):
                qmp.execute_oob("query-yank")


def test_negotiation_mode(tmp_path):
    def script(peer: Peer) -> None:
        peer.greet()
        cmd = peer.recv_command()
        peer.error(cmd, "CommandNotFound", "Expecting capabilities negotiation with 'qmp_capabilities'")
        peer.reply(peer.recv_command())
        peer.serve()

    with FakeServer(tmp_path, script) as server:
        with qmpcore.connect_sync(server.address, negotiate=False) as qmp:
            with pytest.raises(qmpcore.CommandError) as info:
                qmp.execute("stop")
            assert info.value.error_class == "CommandNotFound" and info.value.command == "stop"
            qmp.negotiate()
            assert qmp.execute("stop") == {}


def test_no_greeting_times_out(tmp_path):
    with FakeServer(tmp_path, lambda peer: peer.recv()) as server:
        with pytest.raises(qmpcore.TimeoutError, match="not ready"):
            qmpcore.connect_sync(server.address, timeout=0.3)


def test_garbage_instead_of_greeting(tmp_path):
    def script(peer: Peer) -> None:
        peer.send(b"SSH-2.0-OpenSSH\r\n")
        peer.recv()

    with FakeServer(tmp_path, script) as server:
        with pytest.raises(qmpcore.ProtocolError, match="greeting"):
            qmpcore.connect_sync(server.address, timeout=WAIT)


def test_missing_socket(tmp_path):
    with pytest.raises(FileNotFoundError):
        qmpcore.connect_sync(tmp_path / "none.sock")


def test_threads_share_one_client(tmp_path):
    """Replies reach the right thread, whichever thread read them."""

    def script(peer: Peer) -> None:
        peer.handshake()

        def answer(peer: Peer, cmd: dict) -> bool:
            peer.reply(cmd, cmd["arguments"])
            return True

        peer.serve(answer)

    results = {}

    def worker(n: int) -> None:
        results[n] = [qmp.execute("echo", {"t": n, "i": i}) for i in range(50)]

    with FakeServer(tmp_path, script) as server:
        with qmpcore.connect_sync(server.address) as qmp:
            threads = [threading.Thread(target=worker, args=(n,)) for n in range(6)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(WAIT * 3)
            assert not any(t.is_alive() for t in threads)
    assert results == {n: [{"t": n, "i": i} for i in range(50)] for n in range(6)}


def test_timeout_then_late_reply_is_dropped(tmp_path):
    def script(peer: Peer) -> None:
        peer.handshake()
        slow = peer.recv_command()
        fast = peer.recv_command()
        peer.reply(slow, "late")
        peer.reply(fast, "fast")
        peer.serve()

    with FakeServer(tmp_path, script) as server:
        with qmpcore.connect_sync(server.address) as qmp:
            with pytest.raises(qmpcore.TimeoutError):
                qmp.execute("slow", timeout=0.2)
            assert qmp.execute("fast", timeout=WAIT) == "fast"
            assert qmp.counters["late_replies"] == 1 and qmp.counters["timeouts"] == 1


def test_events(tmp_path):
    script = events_before_replies(
        event_frame("STOP") + event_frame("JOB", {"id": "a"}) + event_frame("JOB", {"id": "b"}),
        event_frame("RESUME"),
    )
    with FakeServer(tmp_path, script) as server:
        with qmpcore.connect_sync(server.address) as qmp:
            stream = qmp.events("JOB", "RESUME", timeout=WAIT)
            qmp.execute("stop")
            assert qmp.wait_event("JOB", match={"id": "b"}, timeout=WAIT).data == {"id": "b"}
            assert qmp.pull_event(timeout=WAIT).name == "STOP"
            assert qmp.pull_event(timeout=WAIT).data == {"id": "a"}
            with pytest.raises(qmpcore.TimeoutError):
                qmp.pull_event(timeout=0.05)
            with pytest.raises(qmpcore.TimeoutError):
                qmp.wait_event("SHUTDOWN", timeout=0.05)
            qmp.execute("cont")
            assert [next(stream).name for _ in range(3)] == ["JOB", "JOB", "RESUME"]
            stream.close()
            assert qmp.counters["events_received"] == 4


def test_event_waits_read_the_socket_themselves(tmp_path):
    """With no command running, waiting for an event reads what arrives."""

    def script(peer: Peer) -> None:
        peer.handshake()
        cmd = peer.recv_command()
        peer.reply(cmd)
        peer.send(event_frame("LATER"))
        peer.serve()

    with FakeServer(tmp_path, script) as server:
        with qmpcore.connect_sync(server.address) as qmp:
            qmp.execute("go")
            assert qmp.wait_event("LATER", timeout=WAIT).name == "LATER"


def test_event_flood_is_bounded(tmp_path):
    total = 200_000
    frame = event_frame("E", {"n": 1})

    def script(peer: Peer) -> None:
        peer.handshake()
        cmd = peer.recv_command()
        for _ in range(total // 10_000):
            peer.send(frame * 10_000)
        peer.reply(cmd)
        peer.serve()

    with FakeServer(tmp_path, script) as server:
        with qmpcore.connect_sync(server.address, event_queue=100) as qmp:
            stream = qmp.events(maxsize=10)
            qmp.execute("flood", timeout=60)
            counters = qmp.counters
            assert counters["events_received"] == total
            assert counters["events_dropped"] == total - 10 and counters["events_queued"] == 100
            assert next(stream).data == {"n": 1}


def test_block_policy_with_a_consumer_thread(tmp_path):
    total = 3000

    seen = []
    with FakeServer(tmp_path, events_before_replies(numbered_events(total))) as server:
        with qmpcore.connect_sync(server.address) as qmp:
            stream = qmp.events(maxsize=5, policy="block", timeout=WAIT)

            def consume() -> None:
                for ev in stream:
                    seen.append(ev.data["n"])
                    if len(seen) == total:
                        return

            consumer = threading.Thread(target=consume)
            consumer.start()
            assert qmp.execute("flood", timeout=WAIT * 3) == {}
            consumer.join(WAIT)
            assert not consumer.is_alive()
    assert seen == list(range(total))


def test_raise_policy(tmp_path):
    with FakeServer(tmp_path, events_before_replies(numbered_events(25))) as server:
        with qmpcore.connect_sync(server.address) as qmp:
            stream = qmp.events(maxsize=5, policy="raise")
            qmp.execute("flood")
            with pytest.raises(sync.EventOverflow) as info:
                next(stream)
            assert info.value.dropped == 20


def test_garbage_and_unknown_id_are_reported(tmp_path):
    def script(peer: Peer) -> None:
        peer.handshake()
        cmd = peer.recv_command()
        peer.send(b'garbage\r\n{"return": 1, "id": 999}\r\n')
        peer.reply(cmd, "ok")
        peer.serve()

    with FakeServer(tmp_path, script) as server:
        with qmpcore.connect_sync(server.address) as qmp:
            assert qmp.execute("x", timeout=WAIT) == "ok"
            assert qmp.counters["protocol_errors"] == 2
            assert "unknown id 999" in str(qmp.last_protocol_error)


def test_close_mid_frame(tmp_path):
    def script(peer: Peer) -> None:
        peer.handshake()
        peer.recv_command()
        peer.send(b'{"return": {"sta')

    with FakeServer(tmp_path, script) as server:
        with qmpcore.connect_sync(server.address) as qmp:
            with pytest.raises(qmpcore.ConnectionLost, match="middle of a frame"):
                qmp.execute("x", timeout=WAIT)
            with pytest.raises(qmpcore.ConnectionLost):
                qmp.pull_event(timeout=WAIT)
            assert qmp.closed and qmp.connection_error is not None


def test_connection_loss_fails_waiters_in_every_thread(tmp_path):
    def script(peer: Peer) -> None:
        peer.handshake()
        for _ in range(3):
            peer.recv_command()
        peer.reset()

    errors = []

    def worker() -> None:
        try:
            qmp.execute("x", timeout=WAIT)
        except qmpcore.ConnectionLost as exc:
            errors.append(exc)

    with FakeServer(tmp_path, script) as server:
        with qmpcore.connect_sync(server.address) as qmp:
            threads = [threading.Thread(target=worker) for _ in range(3)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(WAIT)
    assert len(errors) == 3


def test_quit_then_reset_is_clean(tmp_path):
    def script(peer: Peer) -> None:
        peer.handshake()
        cmd = peer.recv_command()
        peer.send(event_frame("SHUTDOWN", {"guest": False, "reason": "host-qmp-quit"}))
        peer.reply(cmd)
        peer.reset()

    with FakeServer(tmp_path, script) as server:
        with qmpcore.connect_sync(server.address) as qmp:
            assert qmp.execute("quit", timeout=WAIT) == {}
            assert qmp.pull_event(timeout=WAIT).name == "SHUTDOWN"
            with pytest.raises(qmpcore.ConnectionLost):
                qmp.pull_event(timeout=WAIT)  # nothing more can come
            assert qmp.closed and qmp.connection_error is None
            assert list(qmp.events()) == []


def test_close_from_another_thread_wakes_a_reader(tmp_path):
    received = threading.Event()

    def script(peer: Peer) -> None:
        peer.handshake()
        peer.recv_command()
        received.set()
        peer.recv()

    outcome = []
    with FakeServer(tmp_path, script) as server:
        qmp = qmpcore.connect_sync(server.address)

        def worker() -> None:
            try:
                qmp.execute("never", timeout=WAIT * 2)
            except qmpcore.QMPError as exc:
                outcome.append(exc)

        t = threading.Thread(target=worker)
        t.start()
        assert received.wait(WAIT)
        qmp.close()
        t.join(WAIT)
        assert not t.is_alive()
    assert isinstance(outcome[0], qmpcore.ConnectionLost)


def test_fd_passing(tmp_path):
    got = []

    def script(peer: Peer) -> None:
        peer.handshake()
        cmd = peer.recv_command()
        got.append(len(peer.fds))
        peer.reply(cmd)
        cmd = peer.recv_command()
        got.append(len(peer.fds))
        peer.reply(cmd)
        for fd in peer.fds:
            os.close(fd)
        peer.serve()

    r, w = os.pipe()
    try:
        with FakeServer(tmp_path, script) as server:
            with qmpcore.connect_sync(server.address) as qmp:
                qmp.send_fd(r)
                qmp.execute("getfd", {"fdname": "r"})
                qmp.execute("add-fd", fds=[w])
    finally:
        os.close(r)
        os.close(w)
    assert got == [1, 2]


# -- guest agent ------------------------------------------------------------------


def qga_script(peer: Peer) -> None:
    """A minimal qemu-ga: answers the resync as qemu-ga 7.2 does, then echoes."""
    item = peer.recv()
    assert item is qmpcore.SYNC
    peer.send(b'{"error": {"class": "GenericError", "desc": "JSON parse error, stray \'\\uFFFD\'"}}\n')
    cmd = peer.recv_command()
    assert cmd["execute"] == "guest-sync-delimited"
    peer.send(b'\xff{"return": %d}\n' % cmd["arguments"]["id"])
    while True:
        cmd = peer.recv()
        if cmd is None:
            return
        if cmd["execute"] == "guest-nope":
            peer.error(cmd, "CommandNotFound", "The command guest-nope has not been found")
        elif cmd["execute"] != "guest-shutdown":
            peer.reply(cmd, {"pong": cmd["execute"]})


def test_guest_agent(tmp_path):
    with FakeServer(tmp_path, qga_script) as server:
        with qmpcore.connect_guest_agent_sync(server.address, timeout=WAIT) as ga:
            assert isinstance(ga, qmpcore.SyncGuestAgentClient)
            assert ga.execute("guest-ping") == {"pong": "guest-ping"}
            with pytest.raises(qmpcore.CommandError) as info:
                ga.execute("guest-nope")
            assert info.value.error_class == "CommandNotFound"
            assert ga.execute("guest-shutdown") is None
            assert ga.execute("guest-info") == {"pong": "guest-info"}


def test_guest_agent_that_never_answers(tmp_path):
    with FakeServer(tmp_path, lambda peer: peer.serve(lambda p, cmd: True)) as server:
        with pytest.raises(qmpcore.TimeoutError):
            qmpcore.connect_guest_agent_sync(server.address, timeout=0.3)


# -- public hooks: a handed-over socket, reading without waiting, listeners --------


def connected_socket(address) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(WAIT)
    sock.connect(address)
    return sock


def test_connect_over_a_connected_socket(tmp_path):
    with FakeServer(tmp_path, serve_plain) as server:
        sock = connected_socket(server.address)
        with qmpcore.connect_sync(sock=sock, timeout=WAIT) as qmp:
            assert qmp.address.sockaddr == server.address
            assert qmp.fileno() == sock.fileno() >= 0
            assert qmp.execute("x") == {}
        assert qmp.fileno() == -1 and sock.fileno() == -1
    with pytest.raises(TypeError):
        qmpcore.connect_sync(server.address, sock=sock)
    with pytest.raises(ValueError):
        qmpcore.connect_sync(sock=sock)  # closed


def test_handed_over_socket_is_closed_when_the_handshake_fails():
    mine, theirs = socket.socketpair()
    with theirs:
        with pytest.raises(qmpcore.TimeoutError):
            qmpcore.connect_sync(sock=mine, timeout=0.2)
        assert mine.fileno() == -1


def test_guest_agent_over_a_connected_socket(tmp_path):
    with FakeServer(tmp_path, qga_script) as server:
        with qmpcore.connect_guest_agent_sync(sock=connected_socket(server.address), timeout=WAIT) as ga:
            assert ga.execute("guest-ping") == {"pong": "guest-ping"}


def frames_after_reply(frames: bytes, sent: threading.Event, hang_up: bool = False) -> Callable[[Peer], None]:
    """A script that answers one command, then sends ``frames`` (and hangs up), then sets ``sent``."""

    def script(peer: Peer) -> None:
        peer.handshake()
        peer.reply(peer.recv_command())
        peer.send(frames)
        if hang_up:
            peer.close()
        sent.set()
        if not hang_up:
            peer.serve()

    return script


def test_pull_event_without_waiting_reads_what_has_arrived(tmp_path):
    sent = threading.Event()
    with FakeServer(tmp_path, frames_after_reply(event_frame("STOP"), sent)) as server:
        with qmpcore.connect_sync(server.address) as qmp:
            qmp.execute("go")
            assert sent.wait(WAIT)
            assert qmp.pull_event(timeout=0).name == "STOP"  # nothing had read it yet
            with pytest.raises(qmpcore.TimeoutError):
                qmp.pull_event(timeout=0)


def test_poll_routes_what_has_arrived_and_notices_the_end(tmp_path):
    sent = threading.Event()
    script = frames_after_reply(event_frame("STOP") + event_frame("RESUME"), sent, hang_up=True)
    with FakeServer(tmp_path, script) as server:
        qmp = qmpcore.connect_sync(server.address)
        heard, ends = [], []
        qmp.add_event_listener(lambda ev: heard.append(ev.name), on_close=ends.append)
        qmp.execute("go")
        assert sent.wait(WAIT)
        for _ in range(100):  # one chunk per call, never waiting
            if not qmp.poll():
                break
        assert heard == ["STOP", "RESUME"]
        assert ends == [qmp.connection_error] and isinstance(ends[0], qmpcore.ConnectionLost)
        assert qmp.pull_event(timeout=0).name == "STOP"  # still queued
        assert not qmp.poll()
        qmp.close()


def test_event_listener_runs_on_the_reading_thread(tmp_path):
    with FakeServer(tmp_path, events_before_replies(event_frame("STOP"), event_frame("RESUME"))) as server:
        with qmpcore.connect_sync(server.address, event_queue=1) as qmp:
            heard, ends = [], []
            remove = qmp.add_event_listener(
                lambda ev: heard.append((ev.name, threading.current_thread().name)), on_close=ends.append
            )
            reader = threading.Thread(target=qmp.execute, args=("stop",), name="reader")
            reader.start()
            reader.join(WAIT)
            assert heard == [("STOP", "reader")]
            remove()
            qmp.execute("cont")
            assert heard == [("STOP", "reader")]
        assert ends == []  # removed before the end


# -- queued bytes always have a thread that writes them ---------------------------


def wait_for_state(qmp: sync.SyncQMPClient, reached: Callable[[sync.SyncQMPClient], bool]) -> None:
    """Wait until the threads using ``qmp`` bring it to a state (checked under its lock)."""
    guard = time.monotonic() + WAIT  # only against a hang: the state comes from the threads' progress
    while True:
        with qmp._cond:
            if reached(qmp):
                return
        assert time.monotonic() < guard, "the client's threads never reached the expected state"
        time.sleep(0.001)


def reading_without_writing(qmp: sync.SyncQMPClient) -> bool:
    return qmp._reading and not qmp._writing and not qmp._out


def test_bytes_left_by_a_writer_whose_wait_ended_are_written_by_the_reader(tmp_path, monkeypatch):
    """A writer that is done once its bytes are out leaves the next command to the thread reading.

    That thread began reading while the writer wrote, so it took nothing to
    write and sits on the socket; the command behind the writer's bytes
    must still go out (the server answers nothing until it has it).
    """
    go = threading.Event()

    def script(peer: Peer) -> None:
        peer.handshake()
        assert go.wait(WAIT)
        peer.send(event_frame("STOP"))
        peer.serve()
        for fd in peer.fds:
            os.close(fd)

    entered, release = threading.Event(), threading.Event()
    send_nowait = sync._SyncClient._send_nowait

    def gated(self: sync._SyncClient, entry: sync._Out) -> int:
        if entry.ancillary is not None and not release.is_set():  # the send_fd byte: hold the writer here
            entered.set()
            assert release.wait(WAIT)
        return send_nowait(self, entry)

    monkeypatch.setattr(sync._SyncClient, "_send_nowait", gated)
    results: dict = {}
    r, w = os.pipe()
    try:
        with FakeServer(tmp_path, script) as server:
            with qmpcore.connect_sync(server.address, timeout=WAIT) as qmp:
                reader = run_in_thread(results, "event", lambda: qmp.pull_event(timeout=WAIT))
                wait_for_state(qmp, reading_without_writing)
                writer = run_in_thread(results, "fd", lambda: qmp.send_fd(r, timeout=WAIT))
                assert entered.wait(WAIT)  # writing the fd's byte, the lock released
                command = run_in_thread(results, "t", lambda: qmp.execute("t", {"n": 1}, timeout=WAIT))
                wait_for_state(qmp, lambda qmp: qmp._sleepers == 1 and len(qmp._out) == 2)
                go.set()  # the event ends the reader's wait; the command's thread reads next
                reader.join(WAIT)
                wait_for_state(qmp, lambda qmp: qmp._reading and qmp._writing and len(qmp._out) == 2)
                release.set()  # the writer's byte goes out, its wait ends, it leaves
                writer.join(WAIT)
                command.join(WAIT * 2)
                assert results["event"].name == "STOP" and results["fd"] is None
                assert results["t"] == {"echo": {"n": 1}}
                assert qmp.counters["timeouts"] == 0
    finally:
        os.close(r)
        os.close(w)


def test_bytes_of_a_command_that_timed_out_are_written_by_the_reader(tmp_path):
    """A command that gives up at once leaves its bytes queued; the thread reading writes them."""

    def script(peer: Peer) -> None:
        peer.handshake()
        first = peer.recv_command()
        gone = peer.recv_command()  # answered last: the first reply waits for it
        peer.reply(first, "first")
        peer.reply(gone, "late")
        peer.serve()

    results: dict = {}
    with FakeServer(tmp_path, script) as server:
        with qmpcore.connect_sync(server.address, timeout=WAIT) as qmp:
            first = run_in_thread(results, "first", lambda: qmp.execute("first", timeout=WAIT))
            wait_for_state(qmp, lambda qmp: reading_without_writing(qmp) and qmp._written == qmp._queued)
            with pytest.raises(qmpcore.TimeoutError):
                qmp.execute("gone", timeout=0)  # another thread reads: nothing is written here
            first.join(WAIT * 2)
            assert results["first"] == "first"
            assert qmp.execute("after") == {}
            assert qmp.counters["timeouts"] == 1 and qmp.counters["late_replies"] == 1


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts descriptors in /proc")
def test_close_releases_every_descriptor(tmp_path):
    before = open_fds()
    with FakeServer(tmp_path, serve_plain) as server:
        qmp = qmpcore.connect_sync(server.address, timeout=WAIT)
        assert qmp.execute("x") == {}
        assert open_fds() > before
        qmp.close()
    assert open_fds() == before  # the server's end is closed too once it has stopped


def test_blocking_connects_take_the_parameters_of_the_asyncio_ones():
    import inspect

    pairs = ((qmpcore.connect_sync, qmpcore.connect), (qmpcore.connect_guest_agent_sync, qmpcore.connect_guest_agent))
    for blocking, asynchronous in pairs:
        assert inspect.signature(blocking).parameters == inspect.signature(asynchronous).parameters
    with pytest.raises(TypeError):
        qmpcore.connect_sync("/nonexistent/qmp.sock", timout=1)  # a misspelt keyword, as before
    with pytest.raises(ValueError, match="validate=True needs negotiate=True"):
        qmpcore.connect_sync("/nonexistent/qmp.sock", validate=True, negotiate=False)
