"""The embedded server serving QMP over TLS, and the clients' TLS errors against it."""

from __future__ import annotations

import asyncio
import socket

import pytest

import qmpcore
from qmpcore.server import serve_vm
from tls_support import Certs, certs  # noqa: F401 -- fixtures

WAIT = 10.0


async def test_clients_over_tls(certs: Certs) -> None:  # noqa: F811
    async with serve_vm(("127.0.0.1", 0), ssl=certs.server_context()) as vm:
        address = vm.endpoints[0].address
        async with await qmpcore.connect(address, ssl=certs.client_context(), timeout=WAIT) as qmp:
            assert (await qmp.execute("query-status"))["status"] == "running"
            replies = await asyncio.gather(*(qmp.execute("query-name") for _ in range(50)))
            assert replies == [{}] * 50
            await qmp.execute("stop")
            assert (await qmp.wait_event("STOP", timeout=WAIT)).name == "STOP"
            await qmp.execute("cont")

        def blocking() -> None:
            with qmpcore.connect_sync(address, ssl=certs.client_context(), timeout=WAIT) as qmp:
                assert qmp.execute("query-status")["status"] == "running"
                assert len(qmp.execute("query-qmp-schema")) > 1000  # many records

        await asyncio.to_thread(blocking)


async def test_server_refuses_a_client_without_certificate(certs: Certs) -> None:  # noqa: F811
    async with serve_vm(("127.0.0.1", 0), ssl=certs.server_context()) as vm:
        address = vm.endpoints[0].address
        with pytest.raises(qmpcore.TLSError) as info:
            await qmpcore.connect(address, ssl=certs.client_context(cert=None), timeout=WAIT)
        assert info.value.reason == "refused"
        with pytest.raises(qmpcore.TLSError) as info:
            await qmpcore.connect(address, ssl=certs.client_context(cert="stranger"), timeout=WAIT)
        assert info.value.reason == "refused"
        # The next client is served.
        async with await qmpcore.connect(address, ssl=certs.client_context(), timeout=WAIT) as qmp:
            assert (await qmp.execute("query-name")) == {}


async def test_client_errors_against_the_embedded_server(certs: Certs) -> None:  # noqa: F811
    async with serve_vm(("127.0.0.1", 0), ssl=certs.server_context(verify_peer=False)) as vm:
        address = vm.endpoints[0].address
        with pytest.raises(qmpcore.TLSError) as info:
            await qmpcore.connect(address, ssl=certs.client_context(ca=certs.other_ca), timeout=WAIT)
        assert info.value.reason == "unknown_ca"
        with pytest.raises(qmpcore.TLSError) as info:
            await qmpcore.connect(address, ssl=certs.client_context(), server_hostname="other.example", timeout=WAIT)
        assert info.value.reason == "name_mismatch"
        async with await qmpcore.connect(address, ssl=certs.client_context(cert=None), timeout=WAIT) as qmp:
            assert (await qmp.execute("query-name")) == {}


async def test_plain_client_on_a_tls_server_is_disconnected(certs: Certs) -> None:  # noqa: F811
    async with serve_vm(("127.0.0.1", 0), ssl=certs.server_context()) as vm:
        address = vm.endpoints[0].address
        loop = asyncio.get_running_loop()
        with socket.create_connection(address, timeout=WAIT) as sock:
            sock.setblocking(False)
            await loop.sock_sendall(sock, b'{"execute": "qmp_capabilities"}\r\n')
            received = b""
            while True:
                chunk = await asyncio.wait_for(loop.sock_recv(sock, 4096), WAIT)
                if not chunk:
                    break
                received += chunk
        assert b"QMP" not in received  # no greeting in clear; at most a TLS alert
        async with await qmpcore.connect(address, ssl=certs.client_context(), timeout=WAIT) as qmp:
            assert (await qmp.execute("query-name")) == {}


def test_tls_needs_a_tcp_address(tmp_path, certs: Certs) -> None:  # noqa: F811
    async def scenario() -> None:
        with pytest.raises(ValueError, match="only for TCP"):
            async with serve_vm(str(tmp_path / "qmp.sock"), ssl=certs.server_context()):
                pass

    asyncio.run(scenario())


async def test_guest_agent_over_tls(certs: Certs) -> None:  # noqa: F811
    from qmpcore.server import GuestAgentServer, SimulatedGuestAgent

    server = GuestAgentServer(SimulatedGuestAgent(hostname="tls-guest"), ("127.0.0.1", 0), ssl=certs.server_context())
    await server.start()
    try:
        address = server.address
        async with await qmpcore.connect_guest_agent(address, ssl=certs.client_context(), timeout=WAIT) as qga:
            assert (await qga.execute("guest-get-host-name"))["host-name"] == "tls-guest"

        def blocking() -> None:
            with qmpcore.connect_guest_agent_sync(address, ssl=certs.client_context(), timeout=WAIT) as qga:
                assert qga.execute("guest-ping") == {}

        await asyncio.to_thread(blocking)
    finally:
        await server.close()


async def test_blocking_client_shared_by_threads_over_tls(certs: Certs) -> None:  # noqa: F811
    """One thread reads for all while others encrypt their commands: every reply reaches its caller."""
    import concurrent.futures

    async with serve_vm(("127.0.0.1", 0), ssl=certs.server_context()) as vm:
        address = vm.endpoints[0].address

        def blocking() -> list[object]:
            with qmpcore.connect_sync(address, ssl=certs.client_context(), timeout=WAIT) as qmp:
                commands = ["query-status", "query-name", "query-kvm", "query-version"] * 25
                with concurrent.futures.ThreadPoolExecutor(4) as pool:
                    return list(pool.map(lambda c: (c, qmp.execute(c, timeout=WAIT)), commands))

        results = await asyncio.to_thread(blocking)
        assert len(results) == 100
        for command, value in results:
            key = {"query-status": "status", "query-kvm": "present", "query-version": "qemu"}.get(command)
            assert (key in value) if key else value == {}
