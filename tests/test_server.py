"""The embedded server over real sockets: QEMU's connection behaviour,
built-ins, handlers, fault hooks, many VMs and the child-process mode."""

from __future__ import annotations

import asyncio
import os
import socket
import stat

import orjson
import pytest

from qmpcore import CommandError
from qmpcore.server import (
    GuestAgentServer,
    QMPServer,
    SimulatedGuestAgent,
    SimulatedVM,
    serve_vm,
    serve_vms,
    start_in_subprocess,
)
from server_support import Peer

STATUS = {"status": "running", "singlestep": False, "running": True}


@pytest.fixture
def sock_path(tmp_path):
    return str(tmp_path / "vm.qmp")


async def wait_until(predicate, timeout=5.0):
    async def poll():
        while not predicate():
            await asyncio.sleep(0.005)

    await asyncio.wait_for(poll(), timeout)


async def connected(address, *capabilities):
    peer = await Peer.connect(address)
    await peer.negotiate(*capabilities)
    return peer


# -- sockets and clients ------------------------------------------------------------


async def test_unix_socket_is_private_and_removed_on_close(sock_path):
    async with serve_vm(sock_path) as vm:
        assert stat.S_IMODE(os.stat(sock_path).st_mode) == 0o600
        assert stat.S_ISSOCK(os.stat(sock_path).st_mode)
        assert vm.address == sock_path
    assert not os.path.exists(sock_path)


async def test_stale_socket_is_replaced_but_other_files_are_not(tmp_path, sock_path):
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(sock_path)
    stale.close()
    async with serve_vm(sock_path):
        async with await connected(sock_path) as peer:
            assert await peer.execute("query-status") == {"return": STATUS}
    regular = tmp_path / "file"
    regular.write_text("keep me")
    with pytest.raises(OSError):
        async with serve_vm(str(regular)):
            pass
    assert regular.read_text() == "keep me"


async def test_tcp_on_localhost():
    vm = SimulatedVM()
    async with QMPServer(vm, ("127.0.0.1", 0)) as server:
        host, port = server.address
        assert host == "127.0.0.1" and port > 0
        async with await connected((host, port)) as peer:
            assert await peer.execute("query-status", id=1) == {"return": STATUS, "id": 1}


async def test_one_client_at_a_time(sock_path):
    """Corpus 27: a second client gets nothing until the first one leaves."""
    async with serve_vm(sock_path) as vm:
        first = await connected(sock_path)
        second = await Peer.connect(sock_path)
        await second.expect_nothing()
        assert await first.execute("query-status", id="first") == {"return": STATUS, "id": "first"}
        assert vm.connected == 1
        first.close()
        greeting = await second.greeting()
        assert greeting["QMP"]["capabilities"] == ["oob"]
        second.close()


async def test_new_session_starts_from_scratch(sock_path):
    """Corpus 20: half a command and the negotiation die with the client."""
    async with serve_vm(sock_path) as vm:
        async with await connected(sock_path) as peer:
            await peer.send(b'{"execute":"query-status","id":"half')
        async with await Peer.connect(sock_path) as peer:
            await peer.greeting()
            await peer.send(b'{"execute":"query-status"}')
            assert (await peer.read_message())["error"]["class"] == "CommandNotFound"
        await wait_until(lambda: vm.connected == 0)


async def test_server_close_disconnects_the_client(sock_path):
    vm = SimulatedVM()
    server = await QMPServer(vm, sock_path).start()
    peer = await connected(sock_path)
    await server.close()
    assert await peer.read_until_closed() == b""
    assert not server.serving
    peer.close()


async def test_pretty_monitor(sock_path):
    async with serve_vm(sock_path, pretty=True):
        async with await Peer.connect(sock_path) as peer:
            greeting = await peer.read_exactly(len(b'{\r\n    "QMP": {\r\n'))
            assert greeting == b'{\r\n    "QMP": {\r\n'


# -- built-ins ----------------------------------------------------------------------------


async def test_queries(sock_path):
    async with serve_vm(sock_path, name="guest1", version=(8, 1, 2), package="pkg") as vm:
        async with await connected(sock_path) as peer:
            assert await peer.execute("query-name") == {"return": {"name": "guest1"}}
            assert await peer.execute("query-version") == {
                "return": {"qemu": {"major": 8, "minor": 2 - 1, "micro": 2}, "package": "pkg"}
            }
            assert await peer.execute("query-kvm") == {"return": {"enabled": False, "present": True}}
            commands = (await peer.execute("query-commands"))["return"]
            assert {"name": "query-status"} in commands and len(commands) == 216
            vm.register("sim-extra", lambda call: None)
            commands = (await peer.execute("query-commands"))["return"]
            assert commands[-1] == {"name": "sim-extra"}
            schema = (await peer.execute("query-qmp-schema"))["return"]
            assert len(schema) == 1051
            unimplemented = await peer.execute("dump-guest-memory", {"paging": False, "protocol": "fd:x"})
            assert unimplemented["error"]["class"] == "GenericError"


async def test_stop_and_cont_events_come_before_the_reply(sock_path):
    """Corpus 21; a second stop or cont changes nothing and says nothing."""
    async with serve_vm(sock_path) as vm:
        async with await connected(sock_path) as peer:
            await peer.send(b'{"execute":"stop","id":"s"}')
            assert (await peer.read_message())["event"] == "STOP"
            assert await peer.read_message() == {"return": {}, "id": "s"}
            assert vm.status == "paused"
            assert await peer.execute("stop") == {"return": {}}
            assert (await peer.execute("query-status"))["return"]["status"] == "paused"
            await peer.send(b'{"execute":"cont"}')
            assert (await peer.read_message())["event"] == "RESUME"
            assert await peer.read_message() == {"return": {}}
            assert await peer.execute("cont") == {"return": {}}
            await peer.send(b'{"execute":"human-monitor-command","arguments":{"command-line":"stop"}}')
            assert (await peer.read_message())["event"] == "STOP"
            assert await peer.read_message() == {"return": ""}
            reply = await peer.execute("human-monitor-command", {"command-line": "info status"})
            assert reply == {"return": "VM status: paused\r\n"}


async def test_quit_sends_shutdown_then_reply_then_closes(sock_path):
    async with serve_vm(sock_path) as vm:
        async with await connected(sock_path) as peer:
            await peer.send(b'{"execute":"quit","id":"bye"}{"execute":"query-status"}')
            event = await peer.read_message()
            assert event["event"] == "SHUTDOWN"
            assert event["data"] == {"guest": False, "reason": "host-qmp-quit"}
            assert await peer.read_message() == {"return": {}, "id": "bye"}
            assert await peer.read_until_closed() == b""  # nothing after quit runs
        assert vm.has_quit and vm.status == "shutdown"
        assert not os.path.exists(sock_path)
        await vm.restart()
        async with await connected(sock_path) as peer:
            assert await peer.execute("query-status") == {"return": STATUS}


async def test_events_reach_every_negotiated_monitor(tmp_path):
    vm = SimulatedVM(clock=lambda: 12.25)
    async with QMPServer(vm, str(tmp_path / "a")), QMPServer(vm, str(tmp_path / "b"), pretty=True):
        a = await connected(str(tmp_path / "a"))
        b = await Peer.connect(str(tmp_path / "b"))
        await b.read_line(b"\r\n}\r\n")  # pretty greeting, not negotiated
        vm.emit_event("MY_EVENT", {"x": [1, "y"]})
        assert await a.read_line() == (
            b'{"timestamp": {"seconds": 12, "microseconds": 250000}, "event": "MY_EVENT", "data": {"x": [1, "y"]}}\r\n'
        )
        await b.expect_nothing()
        a.close()
        b.close()


async def test_getfd_and_fdsets_with_scm_rights(sock_path):
    async with serve_vm(sock_path) as vm:
        async with await connected(sock_path) as peer:
            reply = await peer.execute("getfd", {"fdname": "x"})
            assert reply["error"]["desc"] == "No file descriptor supplied via SCM_RIGHTS"
            read_end, write_end = os.pipe()
            try:
                peer.send_fds(b'{"execute":"getfd","arguments":{"fdname":"x"}}', [read_end])
                assert await peer.read_message() == {"return": {}}
                held = vm.fds["x"]
                os.write(write_end, b"ping")
                assert os.read(held, 4) == b"ping"  # the very pipe we passed
                assert await peer.execute("closefd", {"fdname": "x"}) == {"return": {}}
                assert "x" not in vm.fds
                with pytest.raises(OSError):
                    os.fstat(held)
                reply = await peer.execute("closefd", {"fdname": "x"})
                assert reply["error"]["desc"] == "File descriptor named 'x' not found"

                peer.send_fds(b'{"execute":"add-fd","arguments":{"opaque":"o"}}', [read_end])
                added = (await peer.read_message())["return"]
                assert added["fdset-id"] == 0
                fdsets = (await peer.execute("query-fdsets"))["return"]
                assert fdsets == [{"fds": [{"fd": added["fd"], "opaque": "o"}], "fdset-id": 0}]
                assert await peer.execute("remove-fd", {"fdset-id": 0}) == {"return": {}}
                assert await peer.execute("query-fdsets") == {"return": []}
            finally:
                os.close(read_end)
                os.close(write_end)


# -- handlers -------------------------------------------------------------------------------


async def test_custom_handlers(sock_path):
    vm = SimulatedVM()

    @vm.command()
    def sim_echo(call):
        return {"args": call.arguments, "id": call.id}

    @vm.command("sim-async")
    async def slow(call):
        await asyncio.sleep(0.01)
        return [call.command]

    def fails(call):
        raise CommandError("DeviceNotFound", "Device 'x' not found")

    vm.register("sim-fails", fails)
    vm.register("sim-crashes", lambda call: 1 // 0)
    vm.register("sim-bad-value", lambda call: object())
    vm.register("query-status", lambda call: {"custom": True})
    async with serve_vm(sock_path, vm):
        async with await connected(sock_path) as peer:
            assert await peer.execute("sim-echo", {"a": 1}, id=3) == {"return": {"args": {"a": 1}, "id": 3}, "id": 3}
            assert await peer.execute("sim-async") == {"return": ["sim-async"]}
            assert await peer.execute("sim-fails") == {
                "error": {"class": "DeviceNotFound", "desc": "Device 'x' not found"}
            }
            crashed = await peer.execute("sim-crashes")
            assert crashed["error"] == {"class": "GenericError", "desc": "integer division or modulo by zero"}
            assert (await peer.execute("sim-bad-value"))["error"]["class"] == "GenericError"
            assert await peer.execute("query-status") == {"return": {"custom": True}}
            # A replaced schema command keeps QEMU's argument checks.
            reply = await peer.execute("query-status", {"x": 1})
            assert reply["error"]["desc"] == "Parameter 'x' is unexpected"
            vm.unregister("sim-echo")
            assert (await peer.execute("sim-echo"))["error"]["class"] == "CommandNotFound"


async def test_oob_handler_registration(sock_path):
    vm = SimulatedVM()
    vm.register("sim-oob", lambda call: {"oob": call.oob}, allow_oob=True)
    async with serve_vm(sock_path, vm):
        async with await connected(sock_path, "oob") as peer:
            await peer.send(b'{"exec-oob":"sim-oob","id":1}')
            assert await peer.read_message() == {"return": {"oob": True}, "id": 1}


# -- fault hooks --------------------------------------------------------------------------


async def test_delayed_reply_keeps_in_band_order_but_oob_overtakes(sock_path):
    async with serve_vm(sock_path) as vm:
        vm.delay_command("query-status", 0.2, times=1)
        async with await connected(sock_path, "oob") as peer:
            await peer.send(
                b'{"execute":"query-status","id":"slow"}{"execute":"query-name","id":"next"}'
                b'{"exec-oob":"query-yank","id":"oob"}'
            )
            ids = [(await peer.read_message())["id"] for _ in range(3)]
            assert ids == ["oob", "slow", "next"]
            assert await peer.execute("query-status", id="again") == {"return": STATUS, "id": "again"}


async def test_hung_command_never_answers(sock_path):
    async with serve_vm(sock_path) as vm:
        vm.hang_command("query-status", times=1)
        async with await connected(sock_path, "oob") as peer:
            await peer.send(b'{"execute":"query-status","id":"hung"}{"execute":"query-name","id":"behind"}')
            await peer.expect_nothing()
            await peer.send(b'{"exec-oob":"query-yank","id":"oob"}')
            assert (await peer.read_message())["id"] == "oob"
        # A new client is served normally; the hang was used up.
        async with await connected(sock_path) as peer:
            assert await peer.execute("query-status") == {"return": STATUS}


async def test_drop_on_command_mid_frame(sock_path):
    async with serve_vm(sock_path) as vm:
        vm.drop_on_command("query-status", mid_frame=True)
        async with await connected(sock_path) as peer:
            await peer.send(b'{"execute":"query-status","id":1}')
            partial = await peer.read_until_closed()
            assert partial and b'{"return": {}, "id": 1}\r\n'.startswith(partial) and not partial.endswith(b"\n")
        async with await connected(sock_path) as peer:  # only once
            assert await peer.execute("query-status") == {"return": STATUS}


async def test_drop_with_reset():
    """TCP: the client reads ECONNRESET (unix sockets only report a reset
    when input was left unread, which QEMU's quit in corpus 99 shows)."""
    vm = SimulatedVM()
    async with QMPServer(vm, ("127.0.0.1", 0)) as server:
        vm.drop_on_command("*", reset=True)
        async with await connected(server.address) as peer:
            await peer.send(b'{"execute":"query-name"}')
            await peer.read_until_closed()
            assert peer.reset


async def test_drop_connections_and_send_raw(sock_path):
    async with serve_vm(sock_path) as vm:
        async with await connected(sock_path) as peer:
            vm.send_raw(b"\x00garbage\xff")
            assert await peer.read_exactly(9) == b"\x00garbage\xff"
            vm.drop_connections(mid_frame=True)
            rest = await peer.read_until_closed()
            assert rest.startswith(b'{"timestamp": ') and not rest.endswith(b"\n")
        async with await connected(sock_path) as peer:  # still listening
            assert await peer.execute("query-name") == {"return": {}}


async def test_clear_faults(sock_path):
    async with serve_vm(sock_path) as vm:
        vm.hang_command("query-status")
        vm.delay_command("*", 5)
        vm.clear_faults("query-status")
        vm.clear_faults()
        async with await connected(sock_path) as peer:
            assert await peer.execute("query-status") == {"return": STATUS}


async def test_event_flood_in_order(sock_path):
    async with serve_vm(sock_path) as vm:
        async with await connected(sock_path) as peer:
            count = 20_000
            done = vm.flood_events(count)
            seqs = [(await peer.read_message())["data"]["seq"] for _ in range(count)]
            assert seqs == list(range(count))
            assert await done == count
            done = vm.flood_events(3, "TICK", {"k": "v"})
            messages = [await peer.read_message() for _ in range(3)]
            assert all(m["event"] == "TICK" and m["data"] == {"k": "v"} for m in messages)
            assert await done == 3


async def test_event_flood_to_a_slow_reader_stays_bounded(sock_path):
    async with serve_vm(sock_path) as vm:
        async with await connected(sock_path) as peer:
            count = 100_000
            done = vm.flood_events(count)
            await asyncio.sleep(0.2)  # the client reads nothing meanwhile
            session = vm.endpoints[0]._session
            assert session.transport.get_write_buffer_size() < 2 << 20
            assert not done.done()
            received = 0
            while received < count:
                received += (await peer.read_line()).count(b"\r\n")
            assert await done == count


async def test_flood_without_clients_sends_nothing(sock_path):
    async with serve_vm(sock_path) as vm:
        assert await vm.flood_events(10) == 0


async def test_pipelined_commands_all_answered_in_order(sock_path):
    async with serve_vm(sock_path) as vm:
        vm.delay_command("query-name", 0.05, times=3)
        async with await connected(sock_path) as peer:
            count = 2000
            burst = b"".join(
                b'{"execute":"%s","id":%d}' % (b"query-name" if i % 500 == 0 else b"query-status", i)
                for i in range(count)
            )
            await peer.send(burst)
            ids = [(await peer.read_message())["id"] for _ in range(count)]
            assert ids == list(range(count))


async def test_client_leaving_mid_command(sock_path):
    async with serve_vm(sock_path) as vm:
        vm.delay_command("query-status", 0.1, times=1)
        async with await connected(sock_path) as peer:
            await peer.send(b'{"execute":"query-status"}')
        await asyncio.sleep(0.2)  # the delayed reply finds no client
        async with await connected(sock_path) as peer:
            assert await peer.execute("query-status") == {"return": STATUS}


# -- guest agent ------------------------------------------------------------------------------


async def test_guest_agent(tmp_path):
    path = str(tmp_path / "qga")
    agent = SimulatedGuestAgent(hostname="h1")
    async with GuestAgentServer(agent, path):
        async with await Peer.connect(path) as peer:
            await peer.expect_nothing()  # no greeting
            await peer.send(b'\xff{"execute":"guest-sync-delimited","arguments":{"id":5}}')
            assert (await peer.read_line(b"\n")).startswith(b'{"error"')
            assert await peer.read_line(b"\n") == b'\xff{"return": 5}\n'
            await peer.send(b'{"execute":"guest-get-host-name"}')
            assert orjson.loads(await peer.read_line(b"\n")) == {"return": {"host-name": "h1"}}
            await peer.send(b'{"execute":"guest-info"}')
            info = orjson.loads(await peer.read_line(b"\n"))["return"]
            assert info["version"] == "7.2.0"
            assert {"enabled": False, "name": "guest-shutdown", "success-response": False} in info["supported_commands"]
            agent.enable("guest-shutdown")
            await peer.send(b'{"execute":"guest-shutdown"}{"execute":"guest-ping","id":1}')
            assert await peer.read_line(b"\n") == b'{"return": {}, "id": 1}\n'  # shutdown has no reply
            assert agent.shutdown_requests == ["powerdown"]
            await peer.send(b'{"execute":"guest-exec","arguments":{"path":"x"}}')
            reply = orjson.loads(await peer.read_line(b"\n"))
            assert reply["error"]["desc"] == "Command guest-exec has been disabled"


# -- many VMs ------------------------------------------------------------------------------------


async def test_thousand_vms_in_one_process(tmp_path):
    async with serve_vms(tmp_path, 1000) as vms:
        assert len(vms) == len(vms.qmp_paths) == 1000
        assert vms.qga_paths == []

        async def poll(index):
            async with await connected(vms.qmp_paths[index]) as peer:
                return await peer.execute("query-name")

        replies = await asyncio.gather(*(poll(i) for i in range(1000)))
        assert replies == [{"return": {"name": f"vm{i}"}} for i in range(1000)]
    assert os.listdir(tmp_path) == []


async def test_vms_with_agents(tmp_path):
    async with serve_vms(tmp_path, 3, agents=True, prefix="guest") as vms:
        assert [os.path.basename(p) for p in vms.qga_paths] == ["guest0.qga", "guest1.qga", "guest2.qga"]
        async with await Peer.connect(vms.qga_paths[2]) as peer:
            await peer.send(b'{"execute":"guest-get-host-name"}')
            assert orjson.loads(await peer.read_line(b"\n")) == {"return": {"host-name": "guest2"}}
        vms[1].emit_event("HELLO")


async def test_child_process_server(tmp_path):
    server = await asyncio.to_thread(start_in_subprocess, tmp_path, 20, agents=True)
    try:
        assert server.running and server.pid != os.getpid()
        assert len(server.qmp_paths) == len(server.qga_paths) == 20
        async with await connected(server.qmp_paths[7]) as peer:
            assert await peer.execute("query-name") == {"return": {"name": "vm7"}}
            vm = server.vm(7)
            assert vm.connected == 1
            vm.emit_event("HELLO", {"n": 1})
            assert (await peer.read_message())["data"] == {"n": 1}
            vm.delay_command("query-status", 0.05, times=1)
            assert await peer.execute("query-status") == {"return": STATUS}
            vm.stop()
            assert (await peer.read_message())["event"] == "STOP"
            assert vm.status == "paused"
            vm.flood_events(1000)
            for _ in range(1000):
                assert (await peer.read_message())["event"] == "FLOOD"
            vm.send_raw(b"junk")
            assert await peer.read_exactly(4) == b"junk"
            with pytest.raises(RuntimeError):
                server.call(7, "close_fds")
        server.agent(3).enable("guest-shutdown")
    finally:
        await asyncio.to_thread(server.stop)
    assert not server.running
    assert os.listdir(tmp_path) == []


def test_child_process_exits_with_its_parent_pipe(tmp_path):
    server = start_in_subprocess(tmp_path, 2)
    server._process.stdin.close()  # what the parent dying looks like
    assert server._process.wait(10) == 0
    server.stop()
    assert os.listdir(tmp_path) == []


async def test_client_hanging_up_while_its_input_waits(sock_path):
    """Input stops being read behind a stuck command (bounded memory), yet a
    client that hangs up is noticed and the next one is served."""
    async with serve_vm(sock_path) as vm:
        vm.hang_command("query-name", times=1)
        async with await connected(sock_path) as peer:
            await peer.send(b'{"execute":"query-name"}' + b'{"execute":"query-status"}' * 5000)
            await peer.expect_nothing()
            session = vm.endpoints[0]._session
            assert session.protocol.reading_paused
        async with await connected(sock_path) as peer:
            assert await peer.execute("query-status") == {"return": STATUS}


async def test_output_to_a_client_that_never_reads_is_capped(sock_path):
    """Every '}' earns an error reply; a client that sends megabytes of them
    and reads nothing stops being read once its unread output is large."""
    async with serve_vm(sock_path) as vm:
        async with await connected(sock_path) as peer:
            garbage = b"}" * (1 << 20)
            sent = 0

            async def flood_input():
                nonlocal sent
                while sent < 64 << 20:
                    await peer.loop.sock_sendall(peer.sock, garbage)
                    sent += len(garbage)

            writer = asyncio.ensure_future(flood_input())
            transport = vm.endpoints[0]._session.transport
            await wait_until(lambda: transport.get_write_buffer_size() > 16 << 20, timeout=60)
            await wait_until(lambda: not transport.is_reading())
            assert not writer.done()
            assert transport.get_write_buffer_size() < 32 << 20
            writer.cancel()


async def test_internal_parser_failure_closes_the_connection(sock_path, monkeypatch):
    async with serve_vm(sock_path) as vm:
        async with await connected(sock_path) as peer:
            protocol = vm.endpoints[0]._session.protocol

            def broken(data):
                raise RuntimeError("parser bug")

            monkeypatch.setattr(protocol, "receive_data", broken)
            await peer.send(b'{"execute":"query-status"}')
            assert await peer.read_until_closed() == b""
        async with await connected(sock_path) as peer:
            assert await peer.execute("query-status") == {"return": STATUS}


def test_output_cap_below_a_mebibyte_is_refused(sock_path):
    with pytest.raises(ValueError, match="output_cap must be at least 1048576 bytes"):
        QMPServer(SimulatedVM(), sock_path, output_cap=4096)


async def test_descriptor_limit_is_per_vm_and_settable(sock_path):
    async with serve_vm(sock_path, max_fds=2) as vm:
        async with await connected(sock_path) as peer:
            with open(os.devnull) as null:
                for i in range(3):
                    peer.send_fds(b'{"execute":"getfd","arguments":{"fdname":"f%d"},"id":%d}' % (i, i), [null.fileno()])
                    answers = await peer.read_message()
                    if i < 2:
                        assert answers == {"return": {}, "id": i}
            assert answers == {
                "id": 2,
                "error": {
                    "class": "GenericError",
                    "desc": "Too many file descriptors passed (limit 2); release some with closefd or remove-fd",
                },
            }
            assert sorted(vm.fds) == ["f0", "f1"]


# -- the server's transport: output a slow reader has not taken ------------------------------


async def test_unsent_output_is_held_as_written_and_sent_in_order():
    """A client that reads slowly: what the socket does not take is held as
    the pieces written (views of the very objects, never copied into one
    growing buffer that each write would copy again), sent in order with
    several pieces per system call, and the protocol is paused and resumed
    around the high-water mark."""
    from qmpcore.server._transport import _HIGH_WATER, Connection

    class Recorder(asyncio.Protocol):
        def __init__(self) -> None:
            self.paused = self.resumed = 0

        def pause_writing(self) -> None:
            self.paused += 1

        def resume_writing(self) -> None:
            self.resumed += 1

    ours, theirs = socket.socketpair()
    theirs.setblocking(False)
    loop = asyncio.get_running_loop()
    recorder = Recorder()
    conn = Connection(loop, ours, recorder)
    try:
        pieces = [bytes([65 + i % 26]) * (50_000 + i) for i in range(40)]
        for piece in pieces[:20]:
            conn.write(piece)
        conn.writelines(pieces[20:])
        held = list(conn._buffer)
        assert conn.get_write_buffer_size() == sum(map(len, held)) > _HIGH_WATER
        # (the first held may be the rest of a piece the socket took part of)
        assert all(view.obj is piece for view, piece in zip(reversed(held[1:]), reversed(pieces)))
        assert recorder.paused == 1
        # Small pieces (events, say) are copied together: a system call
        # sends many of them.
        small = [b"%05d," % i for i in range(10_000)]
        for piece in small:
            conn.write(piece)
        assert len(conn._buffer) <= len(held) + 1
        pieces += small
        total = sum(map(len, pieces))
        received = bytearray()
        while len(received) < total:
            try:
                received += theirs.recv(1 << 16)
            except BlockingIOError:
                await asyncio.sleep(0)
        assert bytes(received) == b"".join(pieces)
        await asyncio.sleep(0)
        assert conn.get_write_buffer_size() == 0 and not conn._buffer and recorder.resumed == 1
    finally:
        conn.abort()
        theirs.close()
