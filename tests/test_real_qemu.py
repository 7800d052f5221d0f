"""Both clients against a real qemu-system-x86_64 (``-M none``), and the
same scenarios against qmpcore's embedded server, which must answer alike.

Scenarios that leave the target as they found it share one per module;
the ones that stop, kill, restart or quit it get their own.
"""

from __future__ import annotations

import asyncio
import os
import signal

import orjson
import pytest

import qmpcore
from qemu_support import VM_KINDS, fresh_vm, launcher, module_launcher, shared_vm  # noqa: F401 -- fixtures

pytestmark = pytest.mark.qemu

WAIT = 10.0  # bound on anything that should happen at once
NEGOTIATION_DESC = "Expecting capabilities negotiation with 'qmp_capabilities'"


def until(coro, timeout: float = WAIT):
    return asyncio.wait_for(coro, timeout)


@pytest.fixture(scope="module", params=VM_KINDS)
def pretty_vm(request, module_launcher):  # noqa: F811
    return module_launcher.vm(request.param, pretty=True)


# -- the asyncio client -------------------------------------------------------------------


async def test_greeting_and_version(shared_vm):  # noqa: F811
    async with await qmpcore.connect(shared_vm.path) as qmp:
        assert qmp.version >= (7, 0) and qmp.version.major == qmp.greeting["QMP"]["version"]["qemu"]["major"]
        assert "oob" in qmp.capabilities and qmp.enabled_capabilities == ()
        info = await qmp.execute("query-version")
        assert (info["qemu"]["major"], info["qemu"]["minor"], info["qemu"]["micro"]) == tuple(qmp.version[:3])
        assert info["package"] == qmp.version.package


async def test_negotiation_mode_errors(shared_vm):  # noqa: F811
    async with await qmpcore.connect(shared_vm.path, negotiate=False) as qmp:
        for command in ("query-status", "no-such-command", "stop"):
            with pytest.raises(qmpcore.CommandError) as info:
                await qmp.execute(command)
            assert (info.value.error_class, info.value.desc, info.value.command) == (
                "CommandNotFound",
                NEGOTIATION_DESC,
                command,
            )
        with pytest.raises(qmpcore.CommandError) as info:
            await qmp.execute("qmp_capabilities", {"enable": ["nonexistent"]})
        assert info.value.desc == "Parameter 'null' does not accept value 'nonexistent'"
        await qmp.negotiate(oob=True)
        assert qmp.oob
        with pytest.raises(qmpcore.CommandError) as info:
            await qmp.execute("qmp_capabilities")
        assert info.value.desc == "Capabilities negotiation is already complete, command ignored"
        assert (await qmp.execute("query-status"))["status"] == "running"


async def test_query_status(shared_vm):  # noqa: F811
    async with await qmpcore.connect(shared_vm.path) as qmp:
        status = await qmp.execute("query-status")
        assert status["status"] == "running" and status["running"] is True


async def test_query_qmp_schema(shared_vm, corpus_dir):  # noqa: F811
    async with await qmpcore.connect(shared_vm.path) as qmp:
        schema = await qmp.execute("query-qmp-schema", timeout=WAIT)
        assert len(orjson.dumps(schema)) > 150_000
        names = {entry["name"] for entry in schema}
        assert {"query-status", "qmp_capabilities", "STOP", "SHUTDOWN"} <= names
        if qmp.version[:3] == (7, 2, 22) or shared_vm.kind == "embedded":  # the recorded build's reply
            recorded = orjson.loads((corpus_dir / "qemu-7.2" / "qmp_schema_7.2.json").read_bytes())
            assert schema == recorded["return"]


async def test_command_errors(shared_vm):  # noqa: F811
    cases = [
        ("nope", None, "CommandNotFound", "The command nope has not been found"),
        (
            "query-command-line-options",
            {"option": 1},
            "GenericError",
            "Invalid parameter type for 'option', expected: string",
        ),
        ("query-status", {"bogus": 1}, "GenericError", "Parameter 'bogus' is unexpected"),
        ("human-monitor-command", {}, "GenericError", "Parameter 'command-line' is missing"),
        ("getfd", {"fdname": "nothing"}, "GenericError", "No file descriptor supplied via SCM_RIGHTS"),
    ]
    async with await qmpcore.connect(shared_vm.path) as qmp:
        for command, arguments, cls, desc in cases:
            with pytest.raises(qmpcore.CommandError) as info:
                await qmp.execute(command, arguments)
            err = info.value
            assert (err.error_class, err.desc, err.command) == (cls, desc, command)
            assert err.reply["error"] == {"class": cls, "desc": desc}
        assert (await qmp.execute("query-status"))["running"]  # the connection is fine


async def test_stop_cont_events_arrive_before_the_reply(shared_vm):  # noqa: F811
    async with await qmpcore.connect(shared_vm.path) as qmp:
        runstate = qmp.events("STOP", "RESUME")
        try:
            assert await qmp.execute("stop") == {}
            assert len(runstate) == 1  # queued before stop's reply was read
            assert (await qmp.execute("query-status"))["status"] == "paused"
            stop = await qmp.wait_event("STOP", timeout=WAIT)  # from the backlog
            assert stop.timestamp is not None and stop.raw["event"] == "STOP"
            assert await qmp.execute("cont") == {}
            resume = await qmp.wait_event("RESUME", timeout=WAIT)
            assert resume.timestamp >= stop.timestamp
            assert [(await runstate.get(WAIT)).name for _ in range(2)] == ["STOP", "RESUME"]
        finally:
            await qmp.execute("cont")


# Commands whose replies tell which command they answer.
KEYED = [("query-status", "status"), ("query-version", "qemu"), ("query-kvm", "present"), ("query-yank", None)]


@pytest.mark.parametrize("oob", [False, True])
async def test_pipelined_commands_complete_with_their_own_replies(shared_vm, oob):  # noqa: F811
    async with await qmpcore.connect(shared_vm.path, oob=oob) as qmp:
        commands = [KEYED[i % len(KEYED)] for i in range(24)]
        tasks = [asyncio.ensure_future(qmp.execute(name)) for name, _ in commands]
        await asyncio.sleep(0)
        # With oob, QEMU would stop reading after 8: the client holds the rest.
        assert qmp.counters["held"] == (16 if oob else 0)
        results = await until(asyncio.gather(*tasks))
        for (name, key), result in zip(commands, results):
            assert (key in result) if key else isinstance(result, list), (name, result)


async def test_exec_oob_overtakes_queued_commands(shared_vm):  # noqa: F811
    async with await qmpcore.connect(shared_vm.path, oob=True) as qmp:
        assert qmp.oob
        order = []
        tasks = []
        for i in range(20):
            task = asyncio.ensure_future(qmp.execute("query-qmp-schema"))
            task.add_done_callback(lambda _, i=i: order.append(f"ib{i}"))
            tasks.append(task)
        await asyncio.sleep(0)
        assert qmp.counters["held"] == 12  # QEMU would stop reading after 8
        oob = asyncio.ensure_future(qmp.execute_oob("query-yank"))
        oob.add_done_callback(lambda _: order.append("oob"))
        *_, yank = await until(asyncio.gather(*tasks, oob), 60)
        assert isinstance(yank, list)
        assert [o for o in order if o != "oob"] == [f"ib{i}" for i in range(20)]
        assert order.index("oob") < order.index("ib19")
        with pytest.raises(qmpcore.CommandError) as info:
            await qmp.execute_oob("query-status")
        assert info.value.desc == "The command query-status does not support OOB"


async def test_exec_oob_needs_negotiation(shared_vm):  # noqa: F811
    async with await qmpcore.connect(shared_vm.path) as qmp:
        with pytest.raises(qmpcore.StateError):
            await qmp.execute_oob("query-yank")


async def test_getfd_and_add_fd_with_real_descriptors(shared_vm):  # noqa: F811
    r, w = os.pipe()
    try:
        async with await qmpcore.connect(shared_vm.path) as qmp:
            await qmp.send_fd(r)
            assert await qmp.execute("getfd", {"fdname": "pipe-r"}) == {}
            assert await qmp.execute("closefd", {"fdname": "pipe-r"}) == {}
            with pytest.raises(qmpcore.CommandError, match="not found"):
                await qmp.execute("closefd", {"fdname": "pipe-r"})
            assert await qmp.execute("getfd", {"fdname": "pipe-w"}, fds=[w]) == {}
            await qmp.execute("closefd", {"fdname": "pipe-w"})
            added = await qmp.execute("add-fd", {"opaque": "qmpcore-test"}, fds=[w])
            fdsets = await qmp.execute("query-fdsets")
            mine = [s for s in fdsets if s["fdset-id"] == added["fdset-id"]]
            assert mine and mine[0]["fds"][0]["fd"] == added["fd"] and mine[0]["fds"][0]["opaque"] == "qmpcore-test"
            await qmp.execute("remove-fd", {"fdset-id": added["fdset-id"]})
    finally:
        os.close(r)
        os.close(w)


async def test_second_client_waits_for_the_first(shared_vm):  # noqa: F811
    async with await qmpcore.connect(shared_vm.path) as first:
        with pytest.raises(qmpcore.TimeoutError):
            await qmpcore.connect(shared_vm.path, timeout=0.5)
        assert (await first.execute("query-status"))["running"]
    async with await qmpcore.connect(shared_vm.path) as second:
        assert (await second.execute("query-status"))["running"]


async def test_pretty_monitor(pretty_vm):
    async with await qmpcore.connect(pretty_vm.path) as qmp:
        assert qmp.version >= (7, 0)
        assert (await qmp.execute("query-status"))["running"]
        await qmp.execute("stop")
        assert (await qmp.wait_event("STOP", timeout=WAIT)).name == "STOP"
        await qmp.execute("cont")
        with pytest.raises(qmpcore.CommandError) as info:
            await qmp.execute("nope")
        assert info.value.desc == "The command nope has not been found"
        schema = await qmp.execute("query-qmp-schema")
        assert any(e["name"] == "query-status" for e in schema)


async def test_quit_shutdown_then_clean_close(fresh_vm):  # noqa: F811
    vm = fresh_vm
    qmp = await qmpcore.connect(vm.path)
    shutdown = qmp.events("SHUTDOWN")
    assert await until(qmp.execute("quit")) == {}
    await until(qmp.wait_closed())
    assert qmp.connection_error is None
    ev = await shutdown.get(WAIT)
    assert ev.data == {"guest": False, "reason": "host-qmp-quit"}
    if vm.kind == "qemu":
        assert vm.wait() == 0
    with pytest.raises(qmpcore.StateError):
        await qmp.execute("query-status")


async def test_sigkill_mid_command_is_connection_lost(fresh_vm):  # noqa: F811
    vm = fresh_vm
    async with await qmpcore.connect(vm.path) as qmp:
        vm.signal(signal.SIGSTOP)  # so the command is surely in flight
        pending = asyncio.ensure_future(qmp.execute("query-status"))
        await asyncio.sleep(0.05)
        assert not pending.done()
        vm.signal(signal.SIGKILL)
        with pytest.raises(qmpcore.ConnectionLost):
            await until(pending)
        await until(qmp.wait_closed())
        assert isinstance(qmp.connection_error, qmpcore.ConnectionLost)


async def test_sigstop_timeout_then_late_reply_is_dropped(fresh_vm):  # noqa: F811
    vm = fresh_vm
    async with await qmpcore.connect(vm.path) as qmp:
        vm.signal(signal.SIGSTOP)
        try:
            with pytest.raises(qmpcore.TimeoutError):
                await qmp.execute("query-status", timeout=0.5)
        finally:
            vm.signal(signal.SIGCONT)
        # QEMU answers the stale query-status first; it must not reach this caller.
        assert "qemu" in await until(qmp.execute("query-version"))
        assert qmp.counters["late_replies"] == 1 and qmp.counters["timeouts"] == 1
        assert (await qmp.execute("query-status"))["running"]


async def test_reconnect_after_restart(fresh_vm):  # noqa: F811
    vm = fresh_vm
    qmp = await qmpcore.connect(vm.path)
    assert (await qmp.execute("query-status"))["running"]
    vm.restart()
    await until(qmp.wait_closed())
    assert isinstance(qmp.connection_error, qmpcore.ConnectionLost)
    with pytest.raises(qmpcore.ConnectionLost):
        await qmp.execute("query-status")
    async with await qmpcore.connect(vm.path) as again:
        assert (await again.execute("query-status"))["running"]


# -- the blocking client ----------------------------------------------------------------------


def test_sync_session(shared_vm):  # noqa: F811
    with qmpcore.connect_sync(shared_vm.path, oob=True) as qmp:
        assert qmp.version >= (7, 0) and qmp.oob
        assert qmp.execute("query-status")["running"]
        with pytest.raises(qmpcore.CommandError) as info:
            qmp.execute("query-status", {"bogus": 1})
        assert info.value.desc == "Parameter 'bogus' is unexpected"
        try:
            qmp.execute("stop")
            assert qmp.pull_event(timeout=WAIT).name == "STOP"
        finally:
            qmp.execute("cont")
        assert qmp.wait_event("RESUME", timeout=WAIT).name == "RESUME"
        assert isinstance(qmp.execute_oob("query-yank"), list)
        r, w = os.pipe()
        try:
            qmp.send_fd(r)
            qmp.execute("getfd", {"fdname": "s"})
            qmp.execute("closefd", {"fdname": "s"})
            qmp.execute("getfd", {"fdname": "t"}, fds=[w])
            qmp.execute("closefd", {"fdname": "t"})
        finally:
            os.close(r)
            os.close(w)


def test_sync_negotiation_mode(shared_vm):  # noqa: F811
    with qmpcore.connect_sync(shared_vm.path, negotiate=False) as qmp:
        with pytest.raises(qmpcore.CommandError) as info:
            qmp.execute("query-status")
        assert info.value.desc == NEGOTIATION_DESC
        qmp.negotiate()
        assert qmp.execute("query-status")["running"]


def test_sync_second_client_times_out(shared_vm):  # noqa: F811
    with qmpcore.connect_sync(shared_vm.path):
        with pytest.raises(qmpcore.TimeoutError):
            qmpcore.connect_sync(shared_vm.path, timeout=0.5)


def test_sync_sigstop_and_sigkill(fresh_vm):  # noqa: F811
    vm = fresh_vm
    with qmpcore.connect_sync(vm.path) as qmp:
        vm.signal(signal.SIGSTOP)
        try:
            with pytest.raises(qmpcore.TimeoutError):
                qmp.execute("query-status", timeout=0.5)
        finally:
            vm.signal(signal.SIGCONT)
        assert "qemu" in qmp.execute("query-version", timeout=WAIT)
        assert qmp.counters["late_replies"] == 1
        vm.signal(signal.SIGKILL)
        with pytest.raises(qmpcore.ConnectionLost):
            qmp.execute("query-status", timeout=WAIT)
        assert isinstance(qmp.connection_error, qmpcore.ConnectionLost)


def test_sync_quit(fresh_vm):  # noqa: F811
    vm = fresh_vm
    with qmpcore.connect_sync(vm.path) as qmp:
        assert qmp.execute("quit", timeout=WAIT) == {}
        assert qmp.wait_event("SHUTDOWN", timeout=WAIT).data["reason"] == "host-qmp-quit"
        with pytest.raises(qmpcore.ConnectionLost):
            qmp.pull_event(timeout=WAIT)
        assert qmp.connection_error is None
    if vm.kind == "qemu":
        assert vm.wait() == 0
