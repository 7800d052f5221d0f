"""Both guest agent clients against a real qemu-ga on a unix socket, and
the same scenarios against qmpcore's embedded guest agent.

qemu-ga runs on the test machine itself, so every command that could act
on it (shutdown, exec, file writes, freeze, ...) is blocked with ``-b``
(and disabled alike in the embedded agent).
"""

from __future__ import annotations

import asyncio
import signal

import pytest

import qmpcore
from qemu_support import (  # noqa: F401 -- fixtures
    fresh_agent,
    launcher,
    leave_half_command,
    module_launcher,
    shared_agent,
)

pytestmark = pytest.mark.qemu

WAIT = 10.0


def until(coro, timeout: float = WAIT):
    return asyncio.wait_for(coro, timeout)


async def test_sync_ping_info(shared_agent):  # noqa: F811
    async with await qmpcore.connect_guest_agent(shared_agent.path, timeout=WAIT) as ga:
        assert isinstance(ga, qmpcore.GuestAgentClient)
        assert await ga.execute("guest-sync-delimited", {"id": 123456789}) == 123456789
        assert await ga.execute("guest-sync", {"id": -7}) == -7
        assert await ga.execute("guest-ping") == {}
        info = await ga.execute("guest-info")
        assert info["version"].startswith(("7.", "8.", "9.", "1"))
        commands = {c["name"]: c for c in info["supported_commands"]}
        assert commands["guest-ping"]["enabled"] and not commands["guest-shutdown"]["enabled"]
        sid = await ga.sync(timeout=WAIT)
        assert 0 <= sid < 2**53
        assert ga.counters["protocol_errors"] == 0


async def test_errors(shared_agent):  # noqa: F811
    cases = [
        ("guest-nope", None, "CommandNotFound", "The command guest-nope has not been found"),
        ("guest-sync", {}, "GenericError", "Parameter 'id' is missing"),
        (
            "guest-sync-delimited",
            {"id": "notint"},
            "GenericError",
            "Invalid parameter type for 'id', expected: integer",
        ),
        ("qmp_capabilities", None, "CommandNotFound", "The command qmp_capabilities has not been found"),
        ("guest-shutdown", None, "CommandNotFound", "Command guest-shutdown has been disabled"),
    ]
    async with await qmpcore.connect_guest_agent(shared_agent.path, timeout=WAIT) as ga:
        for command, arguments, cls, desc in cases:
            with pytest.raises(qmpcore.CommandError) as info:
                await ga.execute(command, arguments, expect_reply=True)
            assert (info.value.error_class, info.value.desc, info.value.command) == (cls, desc, command)
        assert await ga.execute("guest-ping") == {}


async def test_no_reply_command_error_is_dropped(shared_agent):  # noqa: F811
    async with await qmpcore.connect_guest_agent(shared_agent.path, timeout=WAIT) as ga:
        assert await ga.execute("guest-shutdown") is None  # blocked here: qemu-ga answers with an error
        assert await until(ga.execute("guest-ping")) == {}
        assert ga.counters["late_replies"] == 1 and ga.counters["protocol_errors"] == 0


async def test_commands_run_one_at_a_time(shared_agent):  # noqa: F811
    async with await qmpcore.connect_guest_agent(shared_agent.path, timeout=WAIT) as ga:
        results = await until(asyncio.gather(*(ga.execute("guest-sync", {"id": i}) for i in range(20))))
        assert results == list(range(20))


async def test_previous_client_left_half_a_command(shared_agent):  # noqa: F811
    """qga_03a/03b: qemu-ga keeps a dead client's partial input; the resync clears it."""
    leave_half_command(shared_agent.path, b'{"execute":"guest-ping","arguments":{')
    async with await qmpcore.connect_guest_agent(shared_agent.path, timeout=WAIT) as ga:
        assert await ga.execute("guest-sync", {"id": 1}) == 1
        assert await ga.execute("guest-ping") == {}
    leave_half_command(shared_agent.path, b'{"execute":"guest-sync","arguments":{"id":"unterminated')
    with qmpcore.connect_guest_agent_sync(shared_agent.path, timeout=WAIT) as ga:
        assert ga.execute("guest-ping") == {}


def test_blocking_client(shared_agent):  # noqa: F811
    with qmpcore.connect_guest_agent_sync(shared_agent.path, timeout=WAIT) as ga:
        assert isinstance(ga, qmpcore.SyncGuestAgentClient)
        assert ga.execute("guest-ping") == {}
        assert ga.execute("guest-sync-delimited", {"id": 5}) == 5
        assert "version" in ga.execute("guest-info")
        with pytest.raises(qmpcore.CommandError) as info:
            ga.execute("guest-nope")
        assert info.value.error_class == "CommandNotFound"
        assert ga.sync(timeout=WAIT) >= 0


async def test_timeout_then_resync(fresh_agent):  # noqa: F811
    agent = fresh_agent
    async with await qmpcore.connect_guest_agent(agent.path, timeout=WAIT) as ga:
        agent.signal(signal.SIGSTOP)
        try:
            with pytest.raises(qmpcore.TimeoutError):
                await ga.execute("guest-info", timeout=0.5)
        finally:
            agent.signal(signal.SIGCONT)
        # The next command resyncs first; the late guest-info reply is skipped.
        assert await until(ga.execute("guest-sync", {"id": 77})) == 77
        assert await ga.execute("guest-ping") == {}
        assert ga.counters["protocol_errors"] == 0


def test_blocking_timeout_then_resync(fresh_agent):  # noqa: F811
    agent = fresh_agent
    with qmpcore.connect_guest_agent_sync(agent.path, timeout=WAIT) as ga:
        agent.signal(signal.SIGSTOP)
        try:
            with pytest.raises(qmpcore.TimeoutError):
                ga.execute("guest-info", timeout=0.5)
        finally:
            agent.signal(signal.SIGCONT)
        assert ga.execute("guest-sync", {"id": 78}, timeout=WAIT) == 78


async def test_agent_killed_mid_command(fresh_agent):  # noqa: F811
    agent = fresh_agent
    ga = await qmpcore.connect_guest_agent(agent.path, timeout=WAIT)
    agent.signal(signal.SIGSTOP)
    pending = asyncio.ensure_future(ga.execute("guest-info"))
    await asyncio.sleep(0.05)
    agent.signal(signal.SIGKILL)
    with pytest.raises(qmpcore.ConnectionLost):
        await until(pending)
    await ga.close()


async def test_virtio_serial_channel_without_agent_times_out(launcher, tmp_path):  # noqa: F811
    """The host side of a virtio-serial port accepts, but no guest agent answers."""
    channel = tmp_path / "agent.sock"
    vm = launcher.qemu_with_agent_channel(channel)
    with pytest.raises(qmpcore.TimeoutError):
        await qmpcore.connect_guest_agent(channel, timeout=0.5)
    async with await qmpcore.connect(vm.path) as qmp:  # the VM itself is fine
        assert (await qmp.execute("query-status"))["status"] == "prelaunch"
