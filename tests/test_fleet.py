"""qmpcore.Fleet: many VMs in one loop, against simulated VMs and real QEMU."""

from __future__ import annotations

import asyncio
import errno
import os
import resource

import pytest

import qmpcore
from conftest import IN_CI
from qmpcore.fleet import Backoff, Fleet, FleetStats, ensure_fd_limit
from qmpcore.server import serve_vms, start_in_subprocess

FAST = Backoff(initial=0.02, maximum=0.2)
STATUS = {"status": "running", "singlestep": False, "running": True}


def outcome(results):
    """Sort per-VM results into ok / timed out / lost / other."""
    kinds = {"ok": set(), "timeout": set(), "lost": set(), "other": set()}
    for vm, result in results.items():
        if isinstance(result, qmpcore.TimeoutError):
            kinds["timeout"].add(vm)
        elif isinstance(result, qmpcore.ConnectionLost):
            kinds["lost"].add(vm)
        elif isinstance(result, BaseException):
            kinds["other"].add(vm)
        else:
            kinds["ok"].add(vm)
    return kinds


# -- many simulated VMs in a separate process -------------------------------------


def test_thousand_vms_hang_die_and_restart(tmp_path):
    """1,000 VMs polled by one Fleet while some hang, some drop, some quit and restart."""
    count = 1000
    hung, dropped, died = range(0, 10), range(10, 20), range(20, 30)
    with start_in_subprocess(tmp_path, count) as server:

        async def scenario():
            async with Fleet(server.qmp_paths, command_timeout=1.0, reconnect=FAST, max_concurrency=100) as fleet:
                vms = fleet.vms
                assert await fleet.wait_connected(timeout=60)
                first = await fleet.execute_all("query-status")
                assert all(first[vm] == STATUS for vm in vms)

                for i in hung:
                    server.vm(i).hang_command("query-status")
                for i in died:
                    assert await fleet.execute(vms[i], "quit") == {}
                assert await wait_for_state(fleet, lambda s: s.connected == count - len(died))
                for i in dropped:
                    server.vm(i).drop_connections()

                second = outcome(await fleet.execute_all("query-status"))
                assert second["timeout"] == {vms[i] for i in hung}
                assert second["lost"] >= {vms[i] for i in died}
                assert second["other"] == set()
                healthy = set(vms) - {vms[i] for i in (*hung, *died, *dropped)}
                assert healthy <= second["ok"]  # every healthy VM answers every round

                for i in died:
                    server.vm(i).restart()
                for i in hung:  # a hung monitor recovers only with a new connection
                    server.vm(i).clear_faults()
                    server.vm(i).drop_connections()
                assert await fleet.wait_connected(timeout=30), _disconnected(fleet)
                third = await fleet.execute_all("query-status")
                assert all(third[vm] == STATUS for vm in vms), outcome(third)

                stats = fleet.stats()
                assert stats.vms == count and stats.connected == count
                assert stats.timeouts >= len(hung)
                assert stats.reconnects >= len(died) + len(dropped) + len(hung)
                assert stats.in_flight == 0
                assert stats.last_errors == {}

        asyncio.run(asyncio.wait_for(scenario(), 120))


def _disconnected(fleet):
    """Which VMs are not connected, and why (for failure messages)."""
    errors = fleet.stats().last_errors
    return {vm: repr(errors.get(vm)) for vm in fleet.vms if not fleet.is_connected(vm)}


async def wait_for_state(fleet, predicate, timeout=10.0):
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate(fleet.stats()):
        if loop.time() > deadline:
            return False
        await asyncio.sleep(0.01)
    return True


# -- behaviour, on a few in-process VMs -------------------------------------------------


async def test_results_are_per_vm_values_or_exceptions(tmp_path):
    async with serve_vms(tmp_path, 3) as vms:
        async with Fleet(vms.qmp_paths, reconnect=False) as fleet:
            assert fleet.vms == vms.qmp_paths
            ok = await fleet.execute_all("query-name")
            assert [ok[p] for p in fleet.vms] == [{"name": f"vm{i}"} for i in range(3)]
            bad = await fleet.execute_all("no-such-command")
            assert all(isinstance(r, qmpcore.CommandError) for r in bad.values())
            assert {r.error_class for r in bad.values()} == {"CommandNotFound"}
            one = await fleet.execute(fleet.vms[1], "query-name")
            assert one == {"name": "vm1"}
            with pytest.raises(qmpcore.CommandError):
                await fleet.execute(fleet.vms[0], "no-such-command")
            subset = await fleet.execute_all("query-name", vms=fleet.vms[:1])
            assert list(subset) == fleet.vms[:1]
            with pytest.raises(KeyError):
                await fleet.execute("nope", "query-status")


async def test_submit_is_execute_without_a_coroutine(tmp_path):
    async with serve_vms(tmp_path, 3) as vms:
        vms[2].delay_command("query-status", 30)
        async with Fleet(vms.qmp_paths, command_timeout=0.3, reconnect=False) as fleet:
            a, b, c = fleet.vms
            futures = [
                fleet.submit(a, "query-name"),
                fleet.submit(b, "no-such-command"),
                fleet.submit(c, "query-status"),
            ]
            assert all(isinstance(f, asyncio.Future) for f in futures)
            assert fleet.stats().in_flight == 3
            results = await asyncio.gather(*futures, return_exceptions=True)
            assert results[0] == {"name": "vm0"}
            assert isinstance(results[1], qmpcore.CommandError)
            assert isinstance(results[2], qmpcore.TimeoutError)
            stats = fleet.stats()
            assert (stats.in_flight, stats.commands, stats.timeouts) == (0, 3, 1)
            assert set(stats.last_errors) == {b, c}
            assert await fleet.execute(b, "query-name") == {"name": "vm1"}
            assert set(fleet.stats().last_errors) == {c}
            # bad arguments fail that call at once, and each VM's result in execute_all
            with pytest.raises(TypeError):
                fleet.submit(a, "query-name", ["not", "a", "dict"])
            bad = await fleet.execute_all("query-name", ["not", "a", "dict"])
            assert all(isinstance(r, TypeError) for r in bad.values())
            vms[0].drop_connections()
            assert await wait_for_state(fleet, lambda st: st.connected == 2)
            with pytest.raises(qmpcore.ConnectionLost):
                await fleet.submit(a, "query-name")


async def test_named_addresses(tmp_path):
    async with serve_vms(tmp_path, 2) as vms:
        named = {"web": vms.qmp_paths[0], "db": vms.qmp_paths[1]}
        async with Fleet(named) as fleet:
            assert fleet.vms == ["web", "db"]
            results = await fleet.execute_all("query-name")
            assert results == {"web": {"name": "vm0"}, "db": {"name": "vm1"}}


async def test_slow_vm_costs_the_others_nothing(tmp_path):
    async with serve_vms(tmp_path, 4) as vms:
        vms[0].delay_command("query-status", 30)
        async with Fleet(vms.qmp_paths, command_timeout=0.3) as fleet:
            results = outcome(await fleet.execute_all("query-status"))
            assert results["timeout"] == {fleet.vms[0]}
            assert results["ok"] == set(fleet.vms[1:])
            assert fleet.stats().timeouts == 1
            assert isinstance(fleet.stats().last_errors[fleet.vms[0]], qmpcore.TimeoutError)


async def test_connects_are_capped(tmp_path, monkeypatch):
    """max_concurrency caps simultaneous socket connects (greetings are awaited outside the cap)."""
    from qmpcore.client import fleet as fleet_module

    real_open = fleet_module._open_socket
    active = peak = 0

    async def counting_open(*args, **kwargs):
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        try:
            await asyncio.sleep(0.01)
            return await real_open(*args, **kwargs)
        finally:
            active -= 1

    monkeypatch.setattr(fleet_module, "_open_socket", counting_open)
    async with serve_vms(tmp_path, 12) as vms:
        async with Fleet(vms.qmp_paths, max_concurrency=3) as fleet:
            assert fleet.stats().connected == 12
    assert peak == 3


async def test_vm_not_up_yet_is_retried_and_comes_back(tmp_path):
    paths = [str(tmp_path / f"vm{i}.qmp") for i in range(3)]
    async with Fleet(paths, reconnect=FAST) as fleet:  # nothing listens yet
        stats = fleet.stats()
        assert stats.connected == 0 and stats.reconnecting == 3
        assert set(stats.last_errors) == set(paths)
        results = await fleet.execute_all("query-status")
        assert all(isinstance(r, qmpcore.ConnectionLost) for r in results.values())
        async with serve_vms(tmp_path, 3):
            assert await fleet.wait_connected(timeout=10)
            assert all(r == STATUS for r in (await fleet.execute_all("query-status")).values())
            assert fleet.stats().reconnects == 0  # first connections, not reconnections


async def test_no_reconnect_when_disabled(tmp_path):
    async with serve_vms(tmp_path, 2) as vms:
        async with Fleet(vms.qmp_paths, reconnect=False) as fleet:
            vms[0].drop_connections()
            assert await wait_for_state(fleet, lambda s: s.connected == 1)
            await asyncio.sleep(0.1)
            stats = fleet.stats()
            assert stats.connected == 1 and stats.reconnecting == 0 and stats.reconnects == 0
            assert isinstance(stats.last_errors[fleet.vms[0]], qmpcore.ConnectionLost)


async def test_merged_events_are_tagged_and_filtered(tmp_path):
    async with serve_vms(tmp_path, 3) as vms:
        async with Fleet(vms.qmp_paths) as fleet:
            everything = fleet.events()
            only_stop = fleet.events("STOP")
            vms[2].emit_event("RESUME")
            vms[1].emit_event("STOP")
            seen = [await everything.get(timeout=5), await everything.get(timeout=5)]
            assert [(vm, ev.name) for vm, ev in seen] == [(fleet.vms[2], "RESUME"), (fleet.vms[1], "STOP")]
            vm, event = await only_stop.get(timeout=5)
            assert (vm, event.name) == (fleet.vms[1], "STOP")
            with pytest.raises(qmpcore.TimeoutError):
                await only_stop.get(timeout=0.05)
            assert fleet.stats().events_received == 2
        # closing the fleet ends the streams
        assert [item async for item in everything] == []


async def test_events_reach_the_fleet_through_the_public_listener(tmp_path):
    """The fleet hears each client's events as they are routed and keeps none
    queued on the client; a caller's own listener on that client hears them too."""
    async with serve_vms(tmp_path, 1) as vms:
        async with Fleet(vms.qmp_paths) as fleet:
            stream = fleet.events()
            client = fleet.client(fleet.vms[0])
            mine = []
            client.add_event_listener(lambda ev: mine.append(ev.name))
            vms[0].emit_event("STOP")
            vm, event = await stream.get(timeout=5)
            assert (vm, event.name) == (fleet.vms[0], "STOP") and mine == ["STOP"]
            assert client.counters["events_queued"] == 0


async def test_event_overflow_is_bounded_and_counted(tmp_path):
    async with serve_vms(tmp_path, 2) as vms:
        async with Fleet(vms.qmp_paths) as fleet:
            stream = fleet.events(maxsize=10)
            await asyncio.wait_for(vms[0].flood_events(500), 10)
            await asyncio.wait_for(vms[1].flood_events(500), 10)
            assert await wait_for_state(fleet, lambda s: s.events_received == 1000)
            assert len(stream._queue) == 10
            stats = fleet.stats()
            assert stats.events_dropped == 990 and stream.dropped == 990
            vm, last = list(stream._queue)[-1]
            assert last.name == "FLOOD"


async def test_poll_rounds_never_overlap(tmp_path):
    async with serve_vms(tmp_path, 3) as vms:
        vms[0].delay_command("query-status", 0.2)  # each round outlasts `every`
        async with Fleet(vms.qmp_paths, command_timeout=5) as fleet:
            rounds = 0
            async for results in fleet.poll("query-status", every=0.01, rounds=3):
                assert fleet.stats().in_flight == 0  # the round finished before the next began
                assert all(r == STATUS for r in results.values())
                rounds += 1
            assert rounds == 3
            assert fleet.stats().commands == 9


async def test_poll_timeout(tmp_path):
    async with serve_vms(tmp_path, 2) as vms:
        vms[0].hang_command("query-status")
        async with Fleet(vms.qmp_paths, command_timeout=60) as fleet:
            polled = fleet.poll("query-status", every=10, timeout=0.2, rounds=1)
            results = await asyncio.wait_for(polled.__anext__(), 10)
            assert isinstance(results[fleet.vms[0]], qmpcore.TimeoutError)


async def test_guest_agents(tmp_path):
    async with serve_vms(tmp_path, 3, agents=True) as vms:
        async with Fleet(vms.qga_paths, guest_agent=True) as fleet:
            results = await fleet.execute_all("guest-ping")
            assert results == {p: {} for p in vms.qga_paths}


async def test_state_errors_and_arguments(tmp_path):
    fleet = Fleet([str(tmp_path / "x")])
    with pytest.raises(qmpcore.StateError):
        await fleet.execute_all("query-status")
    with pytest.raises(ValueError):
        Fleet(["a", "a"])
    with pytest.raises(ValueError):
        Fleet(["a"], command_timeout=0)
    with pytest.raises(ValueError):
        Fleet(["a"], max_concurrency=0)
    with pytest.raises(ValueError):
        fleet.events(maxsize=0)
    await fleet.start()
    with pytest.raises(qmpcore.StateError):
        await fleet.start()
    await fleet.close()
    await fleet.close()  # twice is fine
    assert isinstance(fleet.stats(), FleetStats)


# -- building blocks ------------------------------------------------------------------


def test_backoff_grows_is_capped_and_jittered():
    backoff = Backoff(initial=0.1, maximum=1.0, factor=2.0, jitter=0.5)
    for attempt, base in [(0, 0.1), (1, 0.2), (2, 0.4), (3, 0.8), (4, 1.0), (50, 1.0), (10**6, 1.0)]:
        delays = [backoff.delay(attempt) for _ in range(200)]
        assert all(base * 0.5 <= d <= base for d in delays)
        assert len(set(delays)) > 1  # jittered
    assert Backoff(jitter=0).delay(0) == Backoff().initial
    with pytest.raises(ValueError):
        Backoff(initial=2, maximum=1)
    with pytest.raises(ValueError):
        Backoff(jitter=2)


def test_fd_limit_is_raised_when_possible(monkeypatch):
    limits = {"soft": 1024, "hard": 1 << 20}
    monkeypatch.setattr(resource, "getrlimit", lambda _: (limits["soft"], limits["hard"]))

    def setrlimit(_, value):
        limits["soft"], limits["hard"] = value

    monkeypatch.setattr(resource, "setrlimit", setrlimit)
    assert ensure_fd_limit(5000) >= 5000
    assert limits["soft"] >= 5000 and limits["hard"] == 1 << 20


def test_fd_limit_error_when_it_cannot_be_raised(monkeypatch):
    monkeypatch.setattr(resource, "getrlimit", lambda _: (256, 512))

    def refuse(_, value):
        if value[1] > 512:
            raise ValueError("not allowed")

    monkeypatch.setattr(resource, "setrlimit", refuse)
    with pytest.raises(OSError) as caught:
        ensure_fd_limit(10_000)
    assert caught.value.errno == errno.EMFILE
    assert "10000 connections" in str(caught.value) and "512" in str(caught.value)


async def test_fleet_start_reports_fd_limit(monkeypatch, tmp_path):
    monkeypatch.setattr(resource, "getrlimit", lambda _: (64, 64))
    monkeypatch.setattr(resource, "setrlimit", lambda *_: (_ for _ in ()).throw(ValueError()))
    fleet = Fleet([str(tmp_path / f"vm{i}") for i in range(100)])
    with pytest.raises(OSError, match="open files"):
        await fleet.start()


# -- real QEMU -----------------------------------------------------------------------


@pytest.fixture
def qemus(tmp_path):
    from qmpcore.bench._qemu import QemuGroup, QemuMissing, find_qemu

    try:
        find_qemu()
    except QemuMissing as exc:
        if IN_CI:
            pytest.fail(str(exc))
        pytest.skip(str(exc))
    group = QemuGroup(20, str(tmp_path))
    try:
        group.start()
        yield group
    finally:
        group.close()


@pytest.mark.qemu
async def test_twenty_real_qemus_killed_frozen_restarted(qemus):
    async with Fleet(qemus.paths, command_timeout=1.0, reconnect=FAST) as fleet:
        vms = fleet.vms
        assert await fleet.wait_connected(timeout=30)
        assert all(r == STATUS for r in (await fleet.execute_all("query-status")).values())

        qemus.kill(0)
        qemus.freeze(1)
        qemus.kill(2)
        assert await wait_for_state(fleet, lambda s: s.connected == 18)
        results = outcome(await fleet.execute_all("query-status"))
        assert results["lost"] == {vms[0], vms[2]}
        assert results["timeout"] == {vms[1]}
        assert results["ok"] == set(vms[3:])

        qemus.restart(2)  # a new QEMU on the same socket
        qemus.thaw(1)
        assert await fleet.wait_connected([vms[2]], timeout=30)
        results = await fleet.execute_all("query-status")
        assert results[vms[2]] == STATUS  # reconnected by itself
        assert results[vms[1]] == STATUS  # answers again; its late reply was dropped
        assert isinstance(results[vms[0]], qmpcore.ConnectionLost)
        assert all(results[vm] == STATUS for vm in vms[3:])
        stats = fleet.stats()
        assert stats.reconnects == 1 and stats.timeouts == 1 and stats.connected == 19
        assert os.path.exists(qemus.paths[2])


async def test_wait_sees_a_change_made_before_it_starts_waiting(tmp_path):
    # A VM's state changing in the same turn as the wait begins (here: a
    # callback queued before it) must wake the waiter, not leave it to its
    # timeout: wait_connected() once returned False with every VM connected.
    async with serve_vms(tmp_path, 1) as vms:
        async with Fleet(vms.qmp_paths, reconnect=False) as fleet:
            assert await fleet.wait_connected(timeout=30)  # from here on nothing changes by itself
            changed = []

            def change() -> None:
                changed.append(True)
                fleet._pulse()

            asyncio.get_running_loop().call_soon(change)
            assert await fleet._wait_until(lambda: bool(changed), timeout=5)
