"""Loop selection (``qmpcore.run``) and everything on uvloop.

uvloop is in the ``test`` extra, so these run in CI: the clients, Fleet and
the embedded server must work on it, not just import.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys

import pytest

if sys.platform == "win32":  # uvloop does not exist there (nor in the test extra)
    pytest.skip("uvloop is not available on Windows", allow_module_level=True)

import uvloop  # in the test extra: these tests must run, not skip

import qmpcore
from qmpcore.client import loop as loops
from qmpcore.server import serve_vm, serve_vms

BOTH = ["asyncio", "uvloop"]


async def running_loop_name() -> str:
    return loops.loop_name()


# -- selection --------------------------------------------------------------------------


def test_run_auto_prefers_uvloop_when_installed(monkeypatch):
    monkeypatch.delenv(loops.LOOP_ENV, raising=False)
    assert loops.resolve_loop() == "uvloop"
    assert qmpcore.run(running_loop_name()) == "uvloop"


@pytest.mark.parametrize("name", BOTH)
def test_run_on_the_named_loop(name):
    assert qmpcore.run(running_loop_name(), loop=name) == name


@pytest.mark.parametrize("name", BOTH)
def test_environment_chooses_what_auto_means(monkeypatch, name):
    monkeypatch.setenv(loops.LOOP_ENV, name)
    assert qmpcore.run(running_loop_name()) == name
    monkeypatch.setenv(loops.LOOP_ENV, "tokio")
    with pytest.raises(ValueError, match="QMPCORE_LOOP='tokio'"):
        loops.resolve_loop()


def test_without_uvloop_auto_is_asyncio_and_uvloop_says_how_to_install(monkeypatch):
    monkeypatch.delenv(loops.LOOP_ENV, raising=False)
    monkeypatch.setattr(loops, "_uvloop", lambda: None)
    assert not loops.uvloop_available()
    assert qmpcore.run(running_loop_name()) == "asyncio"
    coro = running_loop_name()
    with pytest.raises(ImportError, match=r'pip install "qmpcore\[uvloop\]"'):
        qmpcore.run(coro, loop="uvloop")
    assert coro.cr_frame is None  # closed, so no "never awaited" warning


def test_unknown_loop_name_is_refused():
    coro = running_loop_name()
    with pytest.raises(ValueError, match="unknown event loop 'trio'"):
        qmpcore.run(coro, loop="trio")
    assert coro.cr_frame is None


def test_run_closes_its_loop_and_cancels_leftover_tasks():
    seen: dict[str, object] = {}

    async def main() -> int:
        async def forever() -> None:
            try:
                await asyncio.sleep(3600)
            finally:
                seen["cleaned"] = True

        seen["task"] = asyncio.get_running_loop().create_task(forever())
        seen["loop"] = asyncio.get_running_loop()
        await asyncio.sleep(0)
        return 7

    assert qmpcore.run(main(), loop="uvloop") == 7
    assert seen["cleaned"] and seen["loop"].is_closed()  # type: ignore[attr-defined]


def test_new_event_loop_and_factory():
    for name in BOTH:
        made = loops.new_event_loop(name)
        try:
            assert loops.loop_name(made) == name
        finally:
            made.close()
    assert loops.loop_factory("uvloop") is uvloop.new_event_loop


# -- clients, Fleet and the embedded server on uvloop -----------------------------------


def test_client_and_server_on_uvloop(tmp_path):
    path = str(tmp_path / "vm.qmp")

    async def main() -> list[object]:
        assert loops.loop_name() == "uvloop"
        async with serve_vm(path) as vm:
            vm.register("echo", lambda call: call.arguments)
            async with await qmpcore.connect(path, command_timeout=10) as qmp:
                status = await qmp.execute("query-status")
                echoed = await qmp.execute("echo", {"x": [1, "two"]})
                pipelined = await asyncio.gather(*(qmp.submit("query-status") for _ in range(50)))
                with pytest.raises(qmpcore.CommandError):
                    await qmp.execute("no-such-command")
                vm.emit_event("HELLO", {"n": 1})
                event = await qmp.wait_event("HELLO", timeout=10)
                return [status, echoed, len(pipelined), event.data, qmp.counters["commands"]]

    status, echoed, count, data, commands = qmpcore.run(main(), loop="uvloop")
    assert status["status"] == "running"  # type: ignore[index]
    assert echoed == {"x": [1, "two"]}
    assert count == 50 and data == {"n": 1}
    assert commands == 1 + 1 + 1 + 50 + 1  # qmp_capabilities included


def test_timeouts_and_event_flood_on_uvloop(tmp_path):
    path = str(tmp_path / "vm.qmp")

    async def main() -> tuple[int, int]:
        async with serve_vm(path) as vm:
            vm.hang_command("query-status")
            async with await qmpcore.connect(path) as qmp:
                with pytest.raises(qmpcore.TimeoutError):
                    await qmp.execute("query-status", timeout=0.05)
                stream = qmp.events("FLOOD", maxsize=5000)
                vm.flood_events(3000)
                got = 0
                while got < 3000:
                    await stream.get(timeout=10)
                    got += 1
                stream.close()
                return got, qmp.counters["timeouts"]

    assert qmpcore.run(main(), loop="uvloop") == (3000, 1)


def test_send_fd_on_uvloop(tmp_path):
    path = str(tmp_path / "vm.qmp")
    r, w = os.pipe()

    async def main() -> list[object]:
        async with serve_vm(path) as vm:
            async with await qmpcore.connect(path, command_timeout=10) as qmp:
                await qmp.send_fd(r)
                first = await qmp.execute("getfd", {"fdname": "pipe"})
                second = await qmp.execute("getfd", {"fdname": "other"}, fds=[w])
                return [first, second, sorted(vm.fds)]

    try:
        assert qmpcore.run(main(), loop="uvloop") == [{}, {}, ["other", "pipe"]]
    finally:
        os.close(r)
        os.close(w)


def test_handed_over_socket_on_uvloop(tmp_path):
    path = str(tmp_path / "vm.qmp")

    async def main() -> object:
        async with serve_vm(path):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.connect(path)
            async with await qmpcore.connect(sock=sock) as qmp:
                return await qmp.execute("query-status")

    assert qmpcore.run(main(), loop="uvloop")["status"] == "running"  # type: ignore[index]


def test_guest_agent_on_uvloop(tmp_path):
    async def main() -> object:
        async with serve_vms(tmp_path, 1, agents=True) as vms:
            async with await qmpcore.connect_guest_agent(vms.qga_paths[0], command_timeout=10) as qga:
                await qga.execute("guest-ping")
                return await qga.execute("guest-get-host-name")

    assert qmpcore.run(main(), loop="uvloop") == {"host-name": "vm0"}


def test_fleet_on_uvloop(tmp_path):
    count = 20

    async def main() -> tuple[dict[str, object], int, list[tuple[str, str]], list[str]]:
        async with serve_vms(tmp_path, count) as vms:
            async with qmpcore.Fleet(vms.qmp_paths, command_timeout=10, connect_timeout=10) as fleet:
                assert await fleet.wait_connected(timeout=30)
                results = await fleet.execute_all("query-status")
                events = fleet.events("PING")
                for vm in vms[:3]:
                    vm.emit_event("PING")
                seen = [await events.get(timeout=10) for _ in range(3)]
                events.close()
                names = [(vm, ev.name) for vm, ev in seen]
                return results, fleet.stats().connected, names, fleet.vms[:3]

    results, connected, seen, first = qmpcore.run(main(), loop="uvloop")
    assert connected == count and len(results) == count
    assert all(value["status"] == "running" for value in results.values())  # type: ignore[index]
    assert sorted(seen) == [(vm, "PING") for vm in sorted(first)]


def test_sync_client_beside_a_uvloop_program(tmp_path):
    # The blocking client keeps its own loop: a uvloop policy in the
    # program around it changes nothing.
    path = str(tmp_path / "vm.qmp")

    async def main() -> object:
        async with serve_vm(path):
            return await asyncio.to_thread(_sync_status, path)

    assert qmpcore.run(main(), loop="uvloop")["status"] == "running"  # type: ignore[index]


def _sync_status(path: str) -> object:
    with qmpcore.connect_sync(path, timeout=10, command_timeout=10) as qmp:
        return qmp.execute("query-status")


# -- the bench's --loop option ----------------------------------------------------------


def bench(*args: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "qmpcore", "bench", *map(str, args)],
        capture_output=True,
        text=True,
        env=dict(os.environ),
        timeout=240,
        stdin=subprocess.DEVNULL,
    )


def test_bench_loops_default_to_every_installed_loop():
    from qmpcore.bench._socket import bench_loops

    assert bench_loops(argparse.Namespace()) == ["asyncio", "uvloop"]
    assert bench_loops(argparse.Namespace(loop=["uvloop", "uvloop"])) == ["uvloop"]


def test_bench_socket_section_on_uvloop_has_every_peer():
    done = bench("--quick", "--only", "socket", "--loop", "uvloop", "--json", "-")
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout)["rows"]
    by = {(row["case"], row["variant"]): row for row in rows}
    assert set(by) == {
        ("round trip (simulated VM, uvloop)", "uvloop"),
        ("100 pipelined (simulated VM, uvloop)", "uvloop"),
        ("event flood (simulated VM, uvloop)", "uvloop"),
        ("round trip (simulated VM, blocking)", "blocking"),
        ("event flood (simulated VM, blocking)", "blocking"),
    }
    for (case, variant), row in by.items():
        peers = ["raw socket", "raw asyncio", "raw asyncio on uvloop", "qemu.qmp"]
        if variant == "blocking":
            peers = ["raw socket", "qemu.qmp legacy"]
        assert list(row["baselines"]) == peers, case
        for found in row["baselines"].values():  # every peer measured, in the same run
            assert found["value"] > 0 and found["ratio"] == pytest.approx(row["qmpcore"] / found["value"])


def test_bench_fleet_section_on_both_loops():
    done = bench("--quick", "--only", "fleet", "--vms", 5, "--rounds", 1, "--loop", "asyncio", "--loop", "uvloop")
    assert done.returncode == 0, done.stderr
    assert "5 VMs × 1 rounds: commands/s" in done.stdout
    assert "5 VMs × 1 rounds, uvloop: commands/s" in done.stdout
    assert "1 of 5 hung (timeout 0.5 s), uvloop: p99 latency" in done.stdout


def test_bench_refuses_an_unknown_loop():
    done = bench("--only", "socket", "--loop", "trio")
    assert done.returncode == 2 and "invalid choice: 'trio'" in done.stderr


def test_bench_without_uvloop(monkeypatch, capsys):
    from qmpcore import bench as bench_module
    from qmpcore.bench._socket import bench_loops

    monkeypatch.setattr(loops, "_uvloop", lambda: None)
    assert bench_loops(argparse.Namespace(loop=None)) == ["asyncio"]
    assert bench_module.main(["--only", "socket", "--loop", "uvloop"]) == 2
    assert 'needs uvloop (pip install "qmpcore[uvloop]")' in capsys.readouterr().err


def test_bench_fleet_reports_heap_per_connection():
    done = bench("--quick", "--only", "fleet", "--vms", 100, "--rounds", 1, "--loop", "uvloop", "--json", "-")
    assert done.returncode == 0, done.stderr
    by_case = {row["case"]: row for row in json.loads(done.stdout)["rows"]}
    heap = by_case["100 VMs × 1 rounds, uvloop: Python heap per connection"]
    assert heap["unit"] == "KiB" and 0 < heap["qmpcore"] < 64
    assert heap["baselines"]["qemu.qmp"]["value"] > 0
