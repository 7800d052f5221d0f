"""Where the reference libraries fail, the adapters succeed.

qemu.qmp reads one line per message with a 10 MiB limit, and qmp.py 1.1.0
hands each line to ``json.loads``: neither reads QEMU's ``pretty=on``
monitor, two messages on one line, or (qemu.qmp) a reply over 10 MiB.  The
adapters frame by JSON structure, so they read all of them.  Each case runs
on both backends: the reference must fail as documented, the adapter must
return the right values.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest

from compat_scenarios import (
    TIMEOUT,
    Lab,
    lab_for,
    load_api,
    normalize,
    require_qemu,
    within,
)

BIG = 20 << 20  # over qemu.qmp's 10 MiB line limit


def big_reply(vm, call) -> str:
    return "x" * BIG


def event_and_reply_on_one_line(vm, call) -> dict:
    """The event goes out without a line end, so the reply follows on its line."""
    vm.send_raw(b'{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "STOP"}')
    return {"ok": True}


HANDLERS = {"x-big": big_reply, "x-two": event_and_reply_on_one_line}


# -- one function per (API, case); each returns what the caller observed --


@contextlib.asynccontextmanager
async def session(q: Any, address: Any):
    """Connected ``q``; a failure inside is not masked by disconnect()'s."""
    await within(q.connect(address))
    try:
        yield q
    except BaseException:
        with contextlib.suppress(Exception):
            await within(q.disconnect())
        raise
    await within(q.disconnect())


@contextlib.contextmanager
def monitor(api: Any, address: Any):
    """A connected blocking monitor, closed without masking a failure."""
    mon = api.QEMUMonitorProtocol(address)
    try:
        mon.connect()
        yield mon
    except BaseException:
        with contextlib.suppress(Exception):
            mon.close()
        raise
    mon.close()


async def qemu_qmp_pretty(api, lab: Lab) -> Any:
    vm = lab.qemu(pretty=True)
    async with session(api.QMPClient("pretty"), vm.address) as q:
        with q.listener("STOP") as stop:
            status = await within(q.execute("query-status"))
            await within(q.execute("cont"))  # QEMU runs with -S
            await within(q.execute("stop"))
            event = await within(stop.get())
        return [q.greeting._asdict()["QMP"]["capabilities"], status, normalize(event)]


async def qemu_qmp_embedded(api, lab: Lab, command: str) -> Any:
    server = lab.embedded_server(HANDLERS)
    async with session(api.QMPClient("embedded"), server.address) as q:
        value = await within(q.execute(command))
        return [len(value) if isinstance(value, str) else value, normalize(q.events.clear())]


def blocking_pretty(api, lab: Lab, method: str) -> Any:
    """QEMU with pretty=on, through ``mon.cmd`` or ``mon.command``."""
    vm = lab.qemu(pretty=True)
    with monitor(api, vm.address) as mon:
        status = getattr(mon, method)("query-status")
        mon.cmd("cont")  # QEMU runs with -S
        mon.clear_events()
        mon.cmd("stop")
        return [status, normalize(mon.pull_event(wait=TIMEOUT))]


def blocking_embedded(api, lab: Lab, method: str, command: str) -> Any:
    """One command to the embedded server, through ``mon.cmd`` or ``mon.command``."""
    server = lab.embedded_server(HANDLERS)
    with monitor(api, server.address) as mon:
        value = getattr(mon, method)(command)
        return [len(value) if isinstance(value, str) else value, normalize(mon.get_events())]


STATUS = {"running": False, "singlestep": False, "status": "prelaunch"}
STOP = {"event": "STOP", "timestamp": "<timestamp>"}
TWO = [{"ok": True}, [STOP]]

#: case -> (api, runner, needs QEMU, what the adapter returns,
#:          exception the reference raises, or None when it copes)
CASES: dict[str, tuple] = {
    "qemu_qmp-pretty": ("qemu_qmp", qemu_qmp_pretty, True, [["oob"], STATUS, STOP], "ConnectError"),
    "qemu_qmp-20MiB": (
        "qemu_qmp",
        lambda a, l: qemu_qmp_embedded(a, l, "x-big"),
        False,
        [BIG, []],
        "ExecInterruptedError",
    ),
    "qemu_qmp-two-on-a-line": (
        "qemu_qmp",
        lambda a, l: qemu_qmp_embedded(a, l, "x-two"),
        False,
        TWO,
        "ExecInterruptedError",
    ),
    "legacy-pretty": ("legacy", lambda a, l: blocking_pretty(a, l, "cmd"), True, [STATUS, STOP], "ConnectError"),
    "legacy-20MiB": (
        "legacy",
        lambda a, l: blocking_embedded(a, l, "cmd", "x-big"),
        False,
        [BIG, []],
        "ExecInterruptedError",
    ),
    "legacy-two-on-a-line": (
        "legacy",
        lambda a, l: blocking_embedded(a, l, "cmd", "x-two"),
        False,
        TWO,
        "ExecInterruptedError",
    ),
    "qmp-pretty": ("qmp", lambda a, l: blocking_pretty(a, l, "command"), True, [STATUS, STOP], "JSONDecodeError"),
    "qmp-20MiB": ("qmp", lambda a, l: blocking_embedded(a, l, "command", "x-big"), False, [BIG, []], None),
    "qmp-two-on-a-line": (
        "qmp",
        lambda a, l: blocking_embedded(a, l, "command", "x-two"),
        False,
        TWO,
        "JSONDecodeError",
    ),
}


def run_case(case: str, backend: str, tmp_path) -> Any:
    api_name, runner, needs_qemu, _, _ = CASES[case]
    if needs_qemu:
        require_qemu()
    api = load_api(backend, api_name)
    with lab_for(tmp_path) as lab:
        if api_name == "qemu_qmp":
            return asyncio.run(asyncio.wait_for(runner(api, lab), 3 * TIMEOUT))
        loop = asyncio.new_event_loop()  # the legacy wrapper uses one
        asyncio.set_event_loop(loop)
        try:
            return runner(api, lab)
        finally:
            asyncio.set_event_loop(None)
            loop.close()


def case_params() -> list:
    """Each case; those that start QEMU carry the ``qemu`` mark."""
    return [pytest.param(case, marks=[pytest.mark.qemu] if spec[2] else []) for case, spec in CASES.items()]


@pytest.mark.parametrize("case", case_params())
def test_adapter_succeeds(case: str, tmp_path) -> None:
    expected = CASES[case][3]
    assert run_case(case, "qmpcore", tmp_path) == expected


@pytest.mark.parametrize("case", case_params())
def test_reference_behaviour(case: str, tmp_path) -> None:
    """What the reference does with the same input (documents the gap)."""
    expected, failure = CASES[case][3], CASES[case][4]
    if failure is None:
        assert run_case(case, "reference", tmp_path) == expected
        return
    with pytest.raises(Exception) as info:
        run_case(case, "reference", tmp_path)
    assert type(info.value).__name__ == failure
