"""A real QEMU 7.2 behind qmpcore's proxy, with three different clients at once:
qmpcore's asyncio client, qemu.qmp's own QMPClient and QEMU's qmp-shell
(``python -m qemu.qmp.qmp_shell``), plus a read-only listener."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys

import pytest
from qemu.qmp import QMPClient as ReferenceClient

import qmpcore
from qemu_support import launcher  # noqa: F401 -- fixtures
from qmpcore.proxy import READ_ONLY, Proxy, ProxyListener
from tls_support import Certs, certs, start_tls_qemu  # noqa: F401 -- fixtures

pytestmark = pytest.mark.qemu

WAIT = 15.0
PROMPT = b"(QEMU) "


class Shell:
    """QEMU's qmp-shell in a child process, driven through its stdin."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.output = b""

    @classmethod
    async def start(cls, path: str) -> Shell:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "qemu.qmp.qmp_shell",
            path,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
        )
        shell = cls(proc)
        banner = await shell._until_prompt()
        assert b"Welcome to the QMP low-level shell" in banner, banner
        return shell

    async def _until_prompt(self) -> bytes:
        assert self.proc.stdout is not None
        data = await asyncio.wait_for(self.proc.stdout.readuntil(PROMPT), WAIT)
        self.output += data
        return data

    async def run(self, line: str) -> str:
        """Send one line; return what the shell printed before its next prompt."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")
        await self.proc.stdin.drain()
        return (await self._until_prompt())[: -len(PROMPT)].decode()

    async def kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGKILL)
            await self.proc.wait()


async def test_three_clients_and_a_read_only_listener(launcher, tmp_path):  # noqa: F811
    vm = launcher.qemu()
    open_path, ro_path = str(tmp_path / "proxy.sock"), str(tmp_path / "ro.sock")
    proxy = Proxy(str(vm.path), [open_path, ProxyListener(ro_path, READ_ONLY)], record=tmp_path / "record.txt")
    await proxy.start()
    ours = await qmpcore.connect(open_path)
    reference = ReferenceClient("reference")
    await reference.connect(open_path)
    shell = await Shell.start(open_path)
    readonly = await qmpcore.connect(ro_path)
    try:
        assert ours.version[:2] == (7, 2) and reference.greeting is not None
        # Every client's commands are answered to it, whatever the others do meanwhile.
        status, versions, shell_out = await asyncio.gather(
            asyncio.gather(*(ours.execute("query-status") for _ in range(30))),
            asyncio.gather(*(reference.execute("query-version") for _ in range(30))),
            shell.run("query-name"),
        )
        assert all(s["status"] == "running" for s in status)
        assert all(v["qemu"]["major"] == 7 for v in versions)
        assert "{'return': {}}" in shell_out or '{"return": {}}' in shell_out

        # Every event reaches each client.
        await ours.execute("stop")
        assert (await ours.wait_event("STOP", timeout=WAIT)).name == "STOP"
        assert (await asyncio.wait_for(reference.events.get(), WAIT)).get("event") == "STOP"
        assert (await readonly.wait_event("STOP", timeout=WAIT)).name == "STOP"
        await shell.run("query-status")  # the event arrived before this reply
        assert "STOP" in await shell.run("")  # a blank line prints the events received
        await reference.execute("cont")
        assert (await ours.wait_event("RESUME", timeout=WAIT)).name == "RESUME"
        assert (await asyncio.wait_for(reference.events.get(), WAIT)).get("event") == "RESUME"

        # The read-only listener refuses quit and stop; QEMU never sees them.
        for command in ("quit", "stop"):
            with pytest.raises(qmpcore.CommandError) as info:
                await readonly.execute(command)
            assert info.value.desc == f"The command {command} is refused by the proxy's policy 'read-only'"
        assert (await readonly.execute("query-status"))["status"] == "running"

        # One client killed mid-command leaves the others working.
        assert shell.proc.stdin is not None
        shell.proc.stdin.write(b"query-qmp-schema\n")
        await shell.proc.stdin.drain()
        await shell.kill()
        for _ in range(5):
            assert (await ours.execute("query-status"))["status"] == "running"
            assert (await reference.execute("query-name")) == {}
        for _ in range(100):
            if proxy.stats.clients == 3:
                break
            await asyncio.sleep(0.02)
        assert proxy.stats.clients == 3  # ours, reference, readonly
        assert proxy.stats.refused == 2
    finally:
        await shell.kill()
        await readonly.close()
        await reference.disconnect()
        await ours.close()
        await proxy.close()
    text = (tmp_path / "record.txt").read_text()
    assert "client 3 connected" in text and "query-qmp-schema" in text


async def test_proxy_reconnects_to_a_restarted_qemu(launcher, tmp_path):  # noqa: F811
    vm = launcher.qemu()
    path = str(tmp_path / "proxy.sock")
    async with Proxy(str(vm.path), [path]) as proxy:
        client = await qmpcore.connect(path)
        vm.restart()
        await asyncio.wait_for(client.wait_closed(), WAIT)
        await proxy.wait_connected(WAIT)
        async with await qmpcore.connect(path) as again:
            assert (await again.execute("query-status"))["status"] == "running"
        await client.close()
        assert proxy.stats.reconnects == 1


async def test_proxy_to_qemu_over_tls(launcher, certs: Certs, tmp_path):  # noqa: F811
    """The proxy reaches a remote QEMU over TLS and serves it on a local socket."""
    _, address = start_tls_qemu(launcher, certs)
    path = str(tmp_path / "proxy.sock")
    async with Proxy(address, [path], ssl=certs.client_context()):
        async with await qmpcore.connect(path) as qmp:
            assert (await qmp.execute("query-status"))["status"] == "running"
            await qmp.execute("stop")
            assert (await qmp.wait_event("STOP", timeout=WAIT)).name == "STOP"
            await qmp.execute("cont")


async def test_fds_reach_qemu_through_the_proxy(launcher, tmp_path):  # noqa: F811
    vm = launcher.qemu()
    path = str(tmp_path / "proxy.sock")
    async with Proxy(str(vm.path), [path]):
        async with await qmpcore.connect(path) as qmp:
            r, w = os.pipe()
            try:
                await qmp.execute("getfd", {"fdname": "pipe0"}, fds=[r])
            finally:
                os.close(r)
                os.close(w)
            await qmp.execute("closefd", {"fdname": "pipe0"})  # QEMU holds it: closing it works
            with pytest.raises(qmpcore.CommandError, match="pipe0"):
                await qmp.execute("closefd", {"fdname": "pipe0"})
            with pytest.raises(qmpcore.CommandError, match="No file descriptor supplied via SCM_RIGHTS"):
                await qmp.execute("getfd", {"fdname": "none"})
            null = os.open(os.devnull, os.O_RDONLY)
            try:
                fdset = await qmp.execute("add-fd", {"opaque": "through the proxy"}, fds=[null])
            finally:
                os.close(null)
            assert fdset["fdset-id"] >= 0
