"""Deliberate differences: where the adapters do better than the originals.

Each test shows the adapter's behaviour; where the original fails the same
way every time, that is asserted too, so the README's claims stay true.
"""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from compat_scenarios import TIMEOUT, lab_for, load_api, require_qemu, within
from qmpcore import ConnectionLost
from qmpcore.compat import legacy, qemu_qmp
from qmpcore.compat import qmp as old_qmp


@pytest.fixture
def lab(tmp_path):
    with lab_for(tmp_path) as lab:
        yield lab


@pytest.fixture
def vm(lab):
    require_qemu()
    return lab.qemu()


def test_listener_queue_is_bounded() -> None:
    """A listener nobody reads keeps the newest ``maxsize`` events."""
    listener = qemu_qmp.EventListener(maxsize=3)
    for seq in range(10):
        listener._qmpcore_deliver(qemu_qmp.Message({"event": "E", "data": {"seq": seq}}))
    assert [e["data"]["seq"] for e in listener.clear()] == [7, 8, 9]
    assert listener.dropped == 7
    assert len(listener.history) == 3


def test_default_listener_is_bounded() -> None:
    client = qemu_qmp.QMPClient()
    assert client.events.maxsize == qemu_qmp.EventListener().maxsize > 0


@pytest.mark.qemu
@pytest.mark.filterwarnings("ignore:coroutine .* was never awaited:RuntimeWarning")
async def test_legacy_inside_a_running_event_loop(vm) -> None:
    """The original drives its own event loop and cannot be called from a
    coroutine; the adapter has no event loop at all."""
    with legacy.QEMUMonitorProtocol(vm.address) as mon:
        mon.connect()
        assert mon.cmd("query-status")["status"] == "prelaunch"
    reference = load_api("reference", "legacy").QEMUMonitorProtocol(vm.address)
    with pytest.raises(RuntimeError):
        reference.connect()


@pytest.mark.qemu
def test_old_qmp_usable_after_event_timeout(vm) -> None:
    """qmp 1.1.0's socket file is unusable after a pull_event timeout."""
    mon = old_qmp.QEMUMonitorProtocol(vm.address)
    try:
        mon.connect()
        with pytest.raises(old_qmp.QMPTimeoutError):
            mon.pull_event(wait=0.05)
        assert mon.command("query-name") == {}
    finally:
        mon.close()


@pytest.mark.qemu
def test_legacy_command_timeout_leaves_connection_usable(vm) -> None:
    """A command that times out is abandoned; its late reply does not reach
    the next command."""
    with legacy.QEMUMonitorProtocol(vm.address) as mon:
        mon.connect()
        vm.pause_process()
        mon.settimeout(0.05)
        with pytest.raises(TimeoutError):
            mon.cmd("query-status")
        vm.resume_process()
        mon.settimeout(TIMEOUT)
        assert mon.cmd("query-name") == {}


@pytest.mark.qemu
async def test_disconnect_does_not_hang_on_a_stalled_server(vm, monkeypatch) -> None:
    """A server that stopped reading cannot hold disconnect() forever; the
    pending command fails with ExecInterruptedError."""
    monkeypatch.setattr(qemu_qmp, "CLOSE_TIMEOUT", 0.2)
    q = qemu_qmp.QMPClient()
    await within(q.connect(vm.address))
    vm.pause_process()
    big = {"command-line": "x" * (8 << 20)}  # more than the socket buffers hold
    pending = asyncio.ensure_future(q.execute("human-monitor-command", big))
    await asyncio.sleep(0.05)
    await within(q.disconnect())
    with pytest.raises(qemu_qmp.ExecInterruptedError):
        await within(pending)
    assert q.runstate is qemu_qmp.Runstate.IDLE


@pytest.mark.qemu
async def test_commands_from_many_tasks(vm) -> None:
    """Many commands in flight on one connection, replies matched by id."""
    q = qemu_qmp.QMPClient()
    await within(q.connect(vm.address))
    try:
        names = await within(
            asyncio.gather(*(q.execute("qom-get", {"path": "/machine", "property": "type"}) for _ in range(50)))
        )
        assert set(names) == {"none-machine"}
    finally:
        with contextlib.suppress(EOFError):
            await within(q.disconnect())


@pytest.mark.qemu
def test_legacy_wait_on_a_closed_connection_raises(vm) -> None:
    """Waiting without end for an event that can no longer come raises the
    adapter's StateError (qemu.qmp would hang); no qmpcore error leaks."""
    mon = legacy.QEMUMonitorProtocol(vm.address)
    mon.connect()
    assert mon.cmd("quit") == {}
    assert mon.pull_event(wait=TIMEOUT)["event"] == "SHUTDOWN"
    vm.wait_exit()
    with pytest.raises(qemu_qmp.StateError) as info:
        mon.pull_event(wait=True)
    assert info.value.state is qemu_qmp.Runstate.DISCONNECTING
    assert not isinstance(info.value, ConnectionLost)
    with pytest.raises(EOFError):  # the server hung up first, as qemu.qmp reports
        mon.close()
    mon.close()  # once is enough


def test_failing_filter_does_not_stop_other_listeners() -> None:
    client = qemu_qmp.QMPClient()
    broken = qemu_qmp.EventListener(event_filter=lambda event: 1 / 0)
    after = qemu_qmp.EventListener()
    client.register_listener(broken)
    client.register_listener(after)
    client._qmpcore_dispatch(qemu_qmp.Message({"event": "STOP"}))
    assert [e["event"] for e in after.clear()] == ["STOP"]
    assert broken.empty()
