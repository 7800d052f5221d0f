"""Logging like a well-kept library: silent by default, a DEBUG trace on demand.

The trace names the connection in every record and covers connecting, the
greeting, negotiation, every command sent and reply received (cut past 200
characters), events and state changes; the normal path logs nothing above
DEBUG.
"""

from __future__ import annotations

import logging
import subprocess
import sys

import orjson
import pytest

import qmpcore
from fake_server import FakeServer, Peer, event_frame
from qmpcore.client._log import TRACE_LIMIT, abbreviate

WAIT = 10.0


def test_the_package_logger_has_a_null_handler():
    handlers = logging.getLogger("qmpcore").handlers
    assert any(isinstance(h, logging.NullHandler) for h in handlers)


def test_nothing_reaches_stderr_of_an_unconfigured_program():
    # A warning from a peer, with logging never configured: Python's last
    # resort handler would print it to stderr without the NullHandler.
    code = (
        "import logging, qmpcore\n"
        "logging.getLogger('qmpcore.client').warning('from a peer')\n"
        "logging.getLogger('qmpcore').warning('from a peer')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stderr == ""


def _script(peer: Peer) -> None:
    peer.handshake()
    cmd = peer.recv_command()
    peer.send(event_frame("STOP"))
    peer.reply(cmd, {"status": "paused", "big": "x" * 1000})
    cmd = peer.recv_command()
    peer.error(cmd, "DeviceNotFound", "Device 'nic0' not found")
    cmd = peer.recv_command()
    assert cmd["execute"] == "quit"
    peer.reply(cmd)
    peer.close()


def _check_trace(records: list[logging.LogRecord], address: str) -> None:
    assert records, "no trace"
    assert all(r.levelno == logging.DEBUG for r in records), [(r.levelname, r.getMessage()) for r in records]
    assert all(r.name.startswith("qmpcore") for r in records)
    messages = [r.getMessage() for r in records]
    assert all(m.startswith(f"{address}: ") for m in messages), messages
    text = "\n".join(messages)
    for expected in (
        ": connecting",
        ": greeting from QEMU 7.2.22, capabilities ['oob']; state: negotiation",
        ': sent {"execute":"qmp_capabilities","id":1}',
        ": capabilities negotiated []; state: ready",
        ': sent {"execute":"stop","id":2}',
        ': event {"timestamp":{"seconds":1795584128,"microseconds":785071},"event":"STOP"}',
        ': reply to stop (id 2): {"status":"paused","big":"xxx',
        ": error reply to device_del (id 3): DeviceNotFound: \"Device 'nic0' not found\"",
        ': sent {"execute":"quit","id":4}',
        ": reply to quit (id 4): {}",
        ": closed by quit; state: closed",
        ": connected",
    ):
        assert expected in text, (expected, text)
    long = next(m for m in messages if ": reply to stop" in m)
    size = len(orjson.dumps({"status": "paused", "big": "x" * 1000}))
    assert long.endswith(f"xxx... ({size} bytes in all)") and len(long) < len(address) + TRACE_LIMIT + 80


async def test_asyncio_client_trace(tmp_path, caplog):
    caplog.set_level(logging.DEBUG, logger="qmpcore")
    async with FakeServer(tmp_path, _script) as server:
        async with qmpcore.connect(server.address, timeout=WAIT) as qmp:
            await qmp.execute("stop")
            with pytest.raises(qmpcore.DeviceNotFound):
                await qmp.execute("device_del", {"id": "nic0"})
            await qmp.execute("quit")
            await qmp.wait_closed()
    _check_trace(caplog.records, server.address)


def test_blocking_client_trace(tmp_path, caplog):
    caplog.set_level(logging.DEBUG, logger="qmpcore")
    with FakeServer(tmp_path, _script) as server:
        with qmpcore.connect_sync(server.address, timeout=WAIT) as qmp:
            qmp.execute("stop")
            with pytest.raises(qmpcore.DeviceNotFound):
                qmp.execute("device_del", {"id": "nic0"})
            qmp.execute("quit")
            assert not qmp.poll()
    _check_trace(caplog.records, server.address)


async def test_no_records_when_debug_is_off(tmp_path, caplog, monkeypatch):
    caplog.set_level(logging.INFO, logger="qmpcore")
    calls = []
    for module in ("qmpcore.client.core", "qmpcore.client._log"):  # no trace is even formatted
        monkeypatch.setattr(f"{module}.abbreviate", lambda item: calls.append(item) or "")
    async with FakeServer(tmp_path, _script) as server:
        async with qmpcore.connect(server.address, timeout=WAIT) as qmp:
            await qmp.execute("stop")
            with pytest.raises(qmpcore.DeviceNotFound):
                await qmp.execute("device_del", {"id": "nic0"})
            await qmp.execute("quit")
            await qmp.wait_closed()
    assert caplog.records == [] and calls == []


async def test_connect_failure_is_traced_at_debug(tmp_path, caplog):
    caplog.set_level(logging.DEBUG, logger="qmpcore")
    path = tmp_path / "missing.sock"
    with pytest.raises(qmpcore.ConnectError):
        await qmpcore.connect(path, timeout=WAIT)
    messages = [(r.levelno, r.getMessage()) for r in caplog.records]
    assert (logging.DEBUG, f"{path}: connecting") in messages
    assert any(
        level == logging.DEBUG and m.startswith(f"{path}: connect failed: no such socket (is QEMU started")
        for level, m in messages
    )
    assert all(level == logging.DEBUG for level, _ in messages)


def test_guest_agent_trace(tmp_path, caplog):
    def script(peer: Peer) -> None:
        data = peer.conn.recv(4096)
        assert data.startswith(b"\xff")
        sync_id = orjson.loads(data[1:])["arguments"]["id"]
        peer.send(b"\xff" + b'{"return": %d}\n' % sync_id)
        cmd = peer.recv_command()
        peer.reply(cmd, {})
        peer.recv()

    caplog.set_level(logging.DEBUG, logger="qmpcore")
    with FakeServer(tmp_path, script) as server:
        with qmpcore.connect_guest_agent_sync(server.address, timeout=WAIT) as ga:
            assert ga.execute("guest-ping") == {}
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "guest agent synced (id " in text and "state: ready" in text
    assert "reply to guest-ping (id 1): {}" in text and "\\xff" in text  # the resync byte, escaped


def test_abbreviate_escapes_and_cuts():
    assert abbreviate(b"\x1b[2J{}\r\n") == "\\x1b[2J{}"
    assert abbreviate({"a": "\x1b\u202e'"}) == '{"a":"\\u001b\\xe2\\x80\\xae\'"}'
    big = b"y" * 10000
    text = abbreviate(big)
    assert text == "y" * TRACE_LIMIT + "... (10000 bytes in all)"
    deep: list = []
    for _ in range(100000):
        deep = [deep]
    assert len(abbreviate(deep)) < 2 * TRACE_LIMIT  # bounded work and size however deep
    assert abbreviate(10**5000).startswith("<unprintable") or len(abbreviate(10**5000)) < 2 * TRACE_LIMIT
