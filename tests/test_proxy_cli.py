"""The CLI's TLS flags, ``qmpcore proxy`` and ``qmpcore serve --replay``, each run as a subprocess."""

from __future__ import annotations

import asyncio
import os
import signal
import sys

import pytest

import qmpcore
from qmpcore.server import serve_vm
from tls_support import Certs, certs, free_port  # noqa: F401 -- fixtures

WAIT = 20.0
ENV = dict(os.environ, PYTHONUNBUFFERED="1")


async def qmpcore_cli(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "qmpcore",
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=ENV,
    )
    out, err = await asyncio.wait_for(proc.communicate(), WAIT)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def spawn(*args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "qmpcore",
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=ENV,
    )


async def stop(proc: asyncio.subprocess.Process) -> str:
    """SIGTERM, then the exit status must be 0; returns stderr."""
    proc.send_signal(signal.SIGTERM)
    _, err = await asyncio.wait_for(proc.communicate(), WAIT)
    assert proc.returncode == 0, err
    return err.decode()


async def test_exec_over_tls(certs: Certs) -> None:  # noqa: F811
    async with serve_vm(("127.0.0.1", 0), ssl=certs.server_context()) as vm:
        host, port = vm.endpoints[0].address
        address = f"{host}:{port}"
        tls = ["--tls-ca", str(certs.ca_file), "--tls-cert", str(certs.client_cert), "--tls-key", str(certs.client_key)]
        status, out, err = await qmpcore_cli("exec", address, "query-status", *tls)
        assert status == 0, err
        assert '"status":"running"' in out
        status, out, _ = await qmpcore_cli("exec", address, "query-name", *tls, "--tls-server-name", "localhost")
        assert status == 0 and out.strip() == "{}"
        # Each failure says what failed, with exit status 3 (no connection).
        status, _, err = await qmpcore_cli("exec", address, "query-name", *tls, "--tls-server-name", "wrong.example")
        assert status == 3 and "not issued for 'wrong.example'" in err
        status, _, err = await qmpcore_cli("exec", address, "query-name", "--tls-ca", str(certs.ca_file))
        assert status == 3 and "refused this client's certificate" in err
        status, _, err = await qmpcore_cli("exec", address, "query-name", *tls[2:])  # the system's CAs
        assert status == 3 and "not signed by a CA this client trusts" in err
        status, _, err = await qmpcore_cli("exec", address, "query-name", "--tls-ca", "/nonexistent/ca.pem")
        assert status == 2 and "TLS files" in err


async def test_proxy_command(tmp_path) -> None:
    target, open_path, ro_path = (str(tmp_path / name) for name in ("qmp.sock", "p.sock", "ro.sock"))
    record = tmp_path / "record.txt"
    async with serve_vm(target) as vm:
        proc = await spawn(
            "proxy",
            target,
            "--listen",
            open_path,
            "--listen",
            ro_path,
            "--policy",
            "read-only",
            "--record",
            str(record),
        )
        try:
            assert proc.stdout is not None
            lines = [(await asyncio.wait_for(proc.stdout.readline(), WAIT)).decode().strip() for _ in range(2)]
            assert lines == [open_path, ro_path]
            async with await qmpcore.connect(ro_path) as ro, await qmpcore.connect(open_path) as rw:
                with pytest.raises(qmpcore.CommandError, match="policy 'read-only'"):
                    await ro.execute("stop")
                await rw.execute("stop")
                assert (await ro.wait_event("STOP", timeout=WAIT)).name == "STOP"
            assert not vm.running
        finally:
            if proc.returncode is None:
                await stop(proc)
    assert "is refused by the proxy" in record.read_text()

    # ... and the recording answers in place of the VM.
    replay = str(tmp_path / "replay.sock")
    proc = await spawn("serve", replay, "--replay", str(record))
    try:
        assert proc.stdout is not None
        assert (await asyncio.wait_for(proc.stdout.readline(), WAIT)).decode().strip() == replay
        async with await qmpcore.connect(replay) as qmp:
            # Answers come in recorded order, whichever client they went to.
            with pytest.raises(qmpcore.CommandError, match="policy 'read-only'"):
                await qmp.execute("stop")
            assert await qmp.execute("stop") == {}
            assert (await qmp.wait_event("STOP", timeout=WAIT)).name == "STOP"
            with pytest.raises(qmpcore.CommandError, match="not in record.txt"):
                await qmp.execute("quit")
    finally:
        await stop(proc)


async def test_proxy_usage_errors(tmp_path) -> None:
    status, _, err = await qmpcore_cli("proxy", str(tmp_path / "qmp.sock"), "--policy", "read-only")
    assert status == 2 and "--policy applies to the --listen before it" in err
    status, _, err = await qmpcore_cli(
        "proxy", str(tmp_path / "qmp.sock"), "--listen", str(tmp_path / "p"), "--policy", "permit=all"
    )
    assert status == 2 and "allow=PATTERNS" in err
    status, _, err = await qmpcore_cli("proxy", str(tmp_path / "qmp.sock"), "--listen", str(tmp_path / "p"))
    assert status == 3 and "qmp.sock" in err  # no QEMU there


async def test_serve_over_tls(certs: Certs) -> None:  # noqa: F811
    proc = await spawn(
        "serve",
        f"127.0.0.1:{free_port()}",
        "--listen-cert",
        str(certs.server_cert),
        "--listen-key",
        str(certs.server_key),
        "--listen-ca",
        str(certs.ca_file),
    )
    try:
        assert proc.stdout is not None
        host, _, port = (await asyncio.wait_for(proc.stdout.readline(), WAIT)).decode().strip().rpartition(":")
        address = (host, int(port))
        async with await qmpcore.connect(address, ssl=certs.client_context(), timeout=WAIT) as qmp:
            assert (await qmp.execute("query-status"))["status"] == "running"
        with pytest.raises(qmpcore.TLSError):  # --listen-ca: a certificate is required
            await qmpcore.connect(address, ssl=certs.client_context(cert=None), timeout=WAIT)
    finally:
        await stop(proc)
