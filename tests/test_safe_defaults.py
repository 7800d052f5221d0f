"""Safe defaults of the embedded server: private unix sockets, loopback TCP.

Every unix socket the server creates is mode 0600 whatever the umask (a
QMP socket is root of the VM), including after a restart and in a child
process; TCP listens only where it is told, and a loopback address stays
loopback.
"""

from __future__ import annotations

import os
import stat

import pytest

import qmpcore
from qmpcore.server import (
    GuestAgentServer,
    QMPServer,
    SimulatedGuestAgent,
    SimulatedVM,
    serve_vm,
    serve_vms,
    start_in_subprocess,
)


def mode(path: str) -> int:
    info = os.stat(path)
    assert stat.S_ISSOCK(info.st_mode), path
    return stat.S_IMODE(info.st_mode)


@pytest.fixture
def open_umask():
    """The most permissive umask: the server must not rely on the caller's."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


async def test_qmp_socket_is_private(tmp_path, open_umask) -> None:
    path = str(tmp_path / "vm.qmp")
    async with serve_vm(path):
        assert mode(path) == 0o600


async def test_every_socket_of_many_vms_is_private(tmp_path, open_umask) -> None:
    async with serve_vms(tmp_path, 3, agents=True) as vms:
        paths = vms.qmp_paths + vms.qga_paths
        assert len(paths) == 6
        assert {mode(path) for path in paths} == {0o600}


async def test_guest_agent_socket_is_private_after_restart(tmp_path, open_umask) -> None:
    path = str(tmp_path / "vm.qga")
    server = GuestAgentServer(SimulatedGuestAgent(), path)
    await server.start()
    try:
        assert mode(path) == 0o600
        await server.close()
        assert not os.path.exists(path)
        await server.start()
        assert mode(path) == 0o600
        agent = await qmpcore.connect_guest_agent(path, timeout=10)
        await agent.close()
    finally:
        await server.close()


def test_child_process_sockets_are_private(tmp_path) -> None:
    with start_in_subprocess(tmp_path, 2, agents=True) as server:
        assert {mode(path) for path in server.qmp_paths + server.qga_paths} == {0o600}


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
async def test_tcp_on_loopback_stays_on_loopback(host: str) -> None:
    vm = SimulatedVM()
    server = QMPServer(vm, (host, 0))
    await server.start()
    try:
        bound_host, port = server.address
        assert bound_host == "127.0.0.1" and port > 0
        client = await qmpcore.connect(("127.0.0.1", port), timeout=10)
        assert (await client.execute("query-status"))["status"] == "running"
        await client.close()
    finally:
        await server.close()
