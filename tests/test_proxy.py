"""qmpcore.proxy.Proxy in front of the embedded server: ids, negotiation, events,
policies, slow clients, fds, reconnection, TLS listeners and recording."""

from __future__ import annotations

import asyncio
import os
import socket

import orjson
import pytest

import qmpcore
from qmpcore.proxy import READ_ONLY, Policy, Proxy, ProxyListener
from qmpcore.server import QMPServer, SimulatedVM, serve_vm
from tls_support import Certs, certs  # noqa: F401 -- fixtures

WAIT = 10.0


@pytest.fixture
async def served(tmp_path):
    """A simulated VM on a unix socket and a proxy in front of it (one open and one read-only listener)."""
    async with serve_vm(str(tmp_path / "qmp.sock")) as vm:
        proxy = Proxy(
            str(tmp_path / "qmp.sock"),
            [str(tmp_path / "proxy.sock"), ProxyListener(str(tmp_path / "ro.sock"), READ_ONLY)],
            record=tmp_path / "record.txt",
        )
        async with proxy:
            yield vm, proxy


async def raw_client(path, negotiate: bool = True):
    """A hand-written client: reader, writer and the greeting."""
    reader, writer = await asyncio.open_unix_connection(path)
    greeting = orjson.loads(await asyncio.wait_for(reader.readline(), WAIT))
    if negotiate:
        writer.write(b'{"execute": "qmp_capabilities"}\n')
        assert orjson.loads(await asyncio.wait_for(reader.readline(), WAIT)) == {"return": {}}
    return reader, writer, greeting


async def test_each_client_sees_a_monitor_with_its_own_ids(served, tmp_path):
    vm, proxy = served
    path = str(tmp_path / "proxy.sock")
    r1, w1, greeting = await raw_client(path, negotiate=False)
    assert set(greeting["QMP"]) == {"version", "capabilities"} and greeting["QMP"]["capabilities"] == ["oob"]
    # Negotiation mode is per client: this one has not negotiated yet.
    w1.write(b'{"execute": "query-status", "id": "same"}\n')
    reply = orjson.loads(await asyncio.wait_for(r1.readline(), WAIT))
    assert reply["error"]["class"] == "CommandNotFound" and reply["id"] == "same"
    w1.write(b'{"execute": "qmp_capabilities"}\n')
    assert orjson.loads(await r1.readline()) == {"return": {}}
    r2, w2, _ = await raw_client(path)
    # Both use the same ids, any JSON value; each gets its own reply back.
    for n in range(20):
        ident = {"n": n, "who": [1, None]}
        w1.write(orjson.dumps({"execute": "query-status", "id": ident}) + b"\n")
        w2.write(orjson.dumps({"execute": "query-name", "id": ident}) + b"\n")
    for reader, expect in ((r1, "status"), (r2, None)):
        for n in range(20):
            reply = orjson.loads(await asyncio.wait_for(reader.readline(), WAIT))
            assert reply["id"] == {"n": n, "who": [1, None]}
            assert (expect in reply["return"]) if expect else reply["return"] == {}
    # QEMU's own errors come back as QEMU wrote them, with the client's id.
    w2.write(b'{"execute": "no-such-command", "id": 7}\n')
    reply = orjson.loads(await r2.readline())
    assert reply == {
        "id": 7,
        "error": {"class": "CommandNotFound", "desc": "The command no-such-command has not been found"},
    }
    # JSON errors are answered per client, as QEMU would.
    w2.write(b"{nonsense}\n")
    assert orjson.loads(await r2.readline())["error"]["class"] == "GenericError"
    for w in (w1, w2):
        w.close()
        await w.wait_closed()
    assert vm.endpoints[0].accepted == 1  # QEMU saw one client: the proxy


async def test_events_reach_every_negotiated_client(served, tmp_path):
    vm, proxy = served
    clients = [await qmpcore.connect(str(tmp_path / "proxy.sock")) for _ in range(3)]
    ro = await qmpcore.connect(str(tmp_path / "ro.sock"))
    waiting, writer, _ = await raw_client(str(tmp_path / "proxy.sock"), negotiate=False)
    try:
        await clients[0].execute("stop")
        for client in [*clients, ro]:
            assert (await client.wait_event("STOP", timeout=WAIT)).name == "STOP"
        vm.emit_event("DEVICE_DELETED", {"device": "d0", "path": "/machine/d0"})
        for client in [*clients, ro]:
            ev = await client.wait_event("DEVICE_DELETED", timeout=WAIT)
            assert ev.data == {"device": "d0", "path": "/machine/d0"}
        # The client still negotiating got no event (as from QEMU).
        writer.write(b'{"execute": "qmp_capabilities"}\n')
        assert orjson.loads(await asyncio.wait_for(waiting.readline(), WAIT)) == {"return": {}}
        assert proxy.stats.events == 2
    finally:
        writer.close()
        for client in [*clients, ro]:
            await client.close()


async def test_read_only_listener_refuses_and_never_forwards(served, tmp_path):
    vm, proxy = served
    async with await qmpcore.connect(str(tmp_path / "ro.sock")) as ro:
        for command in ("quit", "stop", "system_reset", "human-monitor-command"):
            with pytest.raises(qmpcore.CommandError) as info:
                await ro.execute(command, {"command-line": "info status"} if command.startswith("human") else None)
            assert info.value.error_class == "GenericError"
            assert info.value.desc == f"The command {command} is refused by the proxy's policy 'read-only'"
        assert (await ro.execute("query-status"))["status"] == "running"
    assert proxy.stats.refused == 4
    assert vm.running and vm.endpoints[0].serving  # neither stop nor quit reached it


async def test_policy_patterns(tmp_path):
    policy = Policy.parse("allow=query-*,cont;deny=query-qmp-schema", "ops")
    assert policy.permits("query-status") and policy.permits("cont") and policy.permits("qmp_capabilities")
    assert not policy.permits("query-qmp-schema") and not policy.permits("stop")
    assert Policy.parse("read-only") is READ_ONLY
    with pytest.raises(ValueError, match="allow=PATTERNS"):
        Policy.parse("permit=everything")
    async with serve_vm(str(tmp_path / "qmp.sock")):
        async with Proxy(str(tmp_path / "qmp.sock"), [ProxyListener(str(tmp_path / "p.sock"), policy)]):
            async with await qmpcore.connect(str(tmp_path / "p.sock")) as qmp:
                with pytest.raises(qmpcore.CommandError, match="policy 'ops'"):
                    await qmp.execute("query-qmp-schema")
                await qmp.execute("cont")


async def test_client_hanging_up_mid_command_leaves_others_alone(served, tmp_path):
    vm, proxy = served
    vm.delay_command("query-kvm", 0.3, times=1)  # answered after the client is gone
    path = str(tmp_path / "proxy.sock")
    async with await qmpcore.connect(path) as other:
        reader, writer, _ = await raw_client(path)
        writer.write(b'{"execute": "query-kvm", "id": "mine"}\n')
        await writer.drain()
        await asyncio.sleep(0)
        writer.transport.abort()
        for _ in range(10):
            assert (await other.execute("query-status", timeout=WAIT))["status"] == "running"
        assert (await other.execute("query-kvm", timeout=WAIT))["present"] is not None
        assert proxy.stats.clients == 1


async def test_slow_client_is_cut_off_and_others_get_every_event(tmp_path):
    async with serve_vm(str(tmp_path / "qmp.sock")) as vm:
        async with Proxy(str(tmp_path / "qmp.sock"), [str(tmp_path / "p.sock")]) as proxy:
            fast = await qmpcore.connect(str(tmp_path / "p.sock"), event_queue=0)
            stream = fast.events("FLOOD", maxsize=100_000)
            slow_reader, slow_writer, _ = await raw_client(str(tmp_path / "p.sock"))
            slow_writer.transport.pause_reading()  # never reads again
            count = 60_000  # about 4 MB: far more than the slow client's socket and buffer hold
            sent = await asyncio.wait_for(vm.flood_events(count), 60)
            assert sent == count
            seen = 0
            async for ev in stream:
                assert ev.data == {"seq": seen}
                seen += 1
                if seen == count:
                    break
            assert proxy.stats.slow_clients == 1 and proxy.stats.clients == 1
            assert (await fast.execute("query-name")) == {}
            slow_writer.close()
            await fast.close()


async def test_fds_pass_through(served, tmp_path):
    vm, proxy = served
    async with await qmpcore.connect(str(tmp_path / "proxy.sock")) as qmp:
        r, w = os.pipe()
        try:
            await qmp.execute("getfd", {"fdname": "pipe0"}, fds=[r])
        finally:
            os.close(r)
        await qmp.execute("closefd", {"fdname": "pipe0"})  # QEMU has it: closing it works
        with pytest.raises(qmpcore.CommandError, match="pipe0"):
            await qmp.execute("closefd", {"fdname": "pipe0"})
        os.close(w)
        with pytest.raises(qmpcore.CommandError):  # no descriptor came with this one
            await qmp.execute("getfd", {"fdname": "none"})


async def test_exec_oob_where_offered(served, tmp_path):
    vm, proxy = served
    async with await qmpcore.connect(str(tmp_path / "proxy.sock"), oob=True) as qmp:
        assert qmp.oob
        assert isinstance(await qmp.execute_oob("query-yank"), list)
    # A client that did not enable oob gets QEMU's answer for that.
    reader, writer, _ = await raw_client(str(tmp_path / "proxy.sock"))
    writer.write(b'{"exec-oob": "query-yank", "id": 1}\n')
    reply = orjson.loads(await asyncio.wait_for(reader.readline(), WAIT))
    assert reply == {"id": 1, "error": {"class": "GenericError", "desc": "QMP input member 'exec-oob' is unexpected"}}
    writer.close()


async def test_reconnects_when_qemu_comes_back(tmp_path):
    vm = SimulatedVM()
    path = str(tmp_path / "qmp.sock")
    server = QMPServer(vm, path)
    await server.start()
    proxy = Proxy(path, [str(tmp_path / "p.sock")])
    await proxy.start()
    try:
        client = await qmpcore.connect(str(tmp_path / "p.sock"))
        await server.close()  # QEMU goes away: clients are told
        await asyncio.wait_for(client.wait_closed(), WAIT)
        assert isinstance(client.connection_error, qmpcore.ConnectionLost)
        assert not proxy.stats.upstream_connected
        await server.start()  # ... and comes back
        await proxy.wait_connected(WAIT)
        async with await qmpcore.connect(str(tmp_path / "p.sock")) as again:
            assert (await again.execute("query-status"))["status"] == "running"
        assert proxy.stats.reconnects == 1
    finally:
        await proxy.close()
        await server.close()


async def test_tls_listener(tmp_path, certs: Certs):  # noqa: F811
    async with serve_vm(str(tmp_path / "qmp.sock")):
        listener = ProxyListener(("127.0.0.1", 0), READ_ONLY, ssl=certs.server_context())
        async with Proxy(str(tmp_path / "qmp.sock"), [listener]) as proxy:
            address = proxy.addresses[0]
            async with await qmpcore.connect(address, ssl=certs.client_context(), timeout=WAIT) as qmp:
                assert (await qmp.execute("query-status"))["status"] == "running"
                with pytest.raises(qmpcore.CommandError, match="read-only"):
                    await qmp.execute("quit")
            with pytest.raises(qmpcore.TLSError):
                await qmpcore.connect(address, ssl=certs.client_context(cert=None), timeout=WAIT)


async def test_recording_is_a_transcript(served, tmp_path):
    vm, proxy = served
    async with await qmpcore.connect(str(tmp_path / "proxy.sock")) as qmp:
        await qmp.execute("query-status")
    async with await qmpcore.connect(str(tmp_path / "ro.sock")) as ro:
        with pytest.raises(qmpcore.CommandError):
            await ro.execute("stop")
    await asyncio.sleep(0.05)  # the disconnects are noted as the transports end
    text = (tmp_path / "record.txt").read_text()
    lines = text.splitlines()
    assert lines[0].startswith("### ")
    import ast

    steps = [(line[:1], ast.literal_eval(line[3:])) for line in lines if line.startswith(("C: ", "S: "))]
    assert steps[0][0] == "S" and b'"QMP"' in steps[0][1]
    assert any(side == "C" and b"query-status" in data for side, data in steps)
    assert any(side == "S" and b"policy 'read-only'" in data for side, data in steps)
    assert "client 1 connected" in text and "client 2 disconnected" in text
    # Every C:/S: line follows a line naming its client.
    for before, line in zip(lines, lines[1:]):
        if line.startswith(("C: ", "S: ")):
            assert before.startswith("# @") and " client " in before


def test_bad_listeners(tmp_path, certs: Certs):  # noqa: F811
    with pytest.raises(ValueError, match="at least one listener"):
        Proxy(str(tmp_path / "qmp.sock"), [])

    async def scenario() -> None:
        async with serve_vm(str(tmp_path / "qmp.sock")):
            proxy = Proxy(
                str(tmp_path / "qmp.sock"), [ProxyListener(str(tmp_path / "p.sock"), ssl=certs.server_context())]
            )
            with pytest.raises(ValueError, match="only for TCP"):
                await proxy.start()

    asyncio.run(scenario())
    assert socket


async def test_exec_oob_in_flight_is_bounded_per_client(served, tmp_path):
    vm, proxy = served
    vm.delay_command("query-yank", 0.2)
    reader, writer, _ = await raw_client(str(tmp_path / "proxy.sock"), negotiate=False)
    writer.write(b'{"execute": "qmp_capabilities", "arguments": {"enable": ["oob"]}}\n')
    assert orjson.loads(await asyncio.wait_for(reader.readline(), WAIT)) == {"return": {}}
    before = proxy.stats.commands
    writer.write(b"".join(b'{"exec-oob": "query-yank", "id": %d}\n' % n for n in range(40)))
    await writer.drain()
    ids = set()
    most = 0
    while len(ids) < 40:
        most = max(most, proxy.stats.in_flight)
        ids.add(orjson.loads(await asyncio.wait_for(reader.readline(), WAIT))["id"])
    assert ids == set(range(40)) and proxy.stats.commands - before == 40
    assert most == 8  # never more in flight for one client
    assert proxy.stats.in_flight == 0
    writer.close()


async def test_command_timeout_answers_the_client(tmp_path):
    async with serve_vm(str(tmp_path / "qmp.sock")) as vm:
        vm.hang_command("query-kvm", times=1)
        async with Proxy(str(tmp_path / "qmp.sock"), [str(tmp_path / "p.sock")], command_timeout=0.2):
            async with await qmpcore.connect(str(tmp_path / "p.sock")) as qmp:
                with pytest.raises(qmpcore.CommandError) as info:
                    await qmp.execute("query-kvm", timeout=WAIT)
                assert info.value.error_class == "GenericError" and "no reply within 0.2 s" in info.value.desc


async def test_hostile_client_input_is_bounded(served, tmp_path):
    vm, proxy = served
    path = str(tmp_path / "proxy.sock")
    async with await qmpcore.connect(path) as good:
        reader, writer, _ = await raw_client(path)
        # A message longer than max_frame_size is refused as QEMU refuses one over its limit.
        writer.write(b'{"execute": "qom-set", "arguments": {"value": "' + b"x" * (proxy.max_frame_size + 10) + b'"}}\n')
        reply = orjson.loads(await asyncio.wait_for(reader.readline(), WAIT))
        assert reply["error"]["class"] == "GenericError"
        # Garbage gets QEMU's errors; after QEMU's 0xFF resync the connection carries on.
        writer.write(b'"unterminated \x00}{][\n\xff{"execute": "query-name", "id": "after"}\n')
        while True:
            reply = orjson.loads(await asyncio.wait_for(reader.readline(), WAIT))
            if reply.get("id") == "after":
                break
        assert reply["return"] == {}
        assert (await good.execute("query-status"))["status"] == "running"
        writer.close()


async def test_large_request_is_decoded_a_slice_per_turn(served, tmp_path, monkeypatch):
    """A request of 900 KiB (inside the proxy's 1 MiB frame limit) is
    decoded 4 KiB a turn of the proxy's loop, its client's reading paused:
    another client's commands go through meanwhile; then it is forwarded
    and answered, and so is the one sent after it."""
    from qmpcore.proxy._proxy import _ProxyServerProtocol

    seen = []
    step = _ProxyServerProtocol.step

    def first_step(self):
        if not seen:
            seen.append(self._stalled)
        return step(self)

    monkeypatch.setattr(_ProxyServerProtocol, "step", first_step)
    vm, proxy = served
    path = str(tmp_path / "proxy.sock")
    compiled = qmpcore.implementation == "cython"
    async with await qmpcore.connect(path) as good:
        reader, writer, _ = await raw_client(path)
        unit = b'"\\n\\"\\u00e9\\\\", 1234567890123456789, '
        items = unit * ((900 << 10) // len(unit)) + b"0"
        writer.write(b'{"execute": "query-status", "arguments": {"data": [' + items + b']}, "id": 1}')
        writer.write(b'{"execute": "query-name", "id": 2}\n')

        async def decoding() -> None:
            while not seen:
                await asyncio.sleep(0.001)

        await asyncio.wait_for(decoding(), WAIT)
        pending = seen[0]
        before = pending.steps
        for _ in range(3):
            assert (await good.execute("query-status"))["status"] == "running"
        if compiled:
            # Three round trips took a few turns of the loop, a step each;
            # the request needs more than a hundred.
            assert not pending.done and pending.steps - before < 60
        reply = orjson.loads(await asyncio.wait_for(reader.readline(), WAIT))
        assert reply["id"] == 1 and reply["error"]["desc"] == "Parameter 'data' is unexpected"
        after = orjson.loads(await asyncio.wait_for(reader.readline(), WAIT))
        assert after["id"] == 2 and "return" in after
        assert pending.steps > 100 if compiled else pending.steps == 1
        writer.close()
