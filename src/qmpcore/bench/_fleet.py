"""The fleet sections of ``python -m qmpcore bench``.

Many VMs are polled with ``query-status``, round after round, by
:class:`qmpcore.Fleet` and by qemu.qmp (one ``QMPClient`` per VM in one
event loop, each command under ``asyncio.wait_for`` for its timeout).  Each
client runs in a fresh child process of its own (:func:`_child_main`
reading its job from stdin), so the resident memory
it adds per connection is measured without the other's leftovers.

The VMs are simulated by the embedded server in another child process
(``fleet``), or are real QEMUs (``real-qemu``).  A second pass makes 1% of
the simulated VMs hang and reports the latency of the healthy ones.  Both
clients run on each event loop asked for (``--loop``: asyncio's, and uvloop
when installed); the server stays on asyncio's.
"""

from __future__ import annotations

import asyncio
import gc
import importlib
import json
import os
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable, Sequence
from typing import Any

from ._report import QEMU_QMP_MISSING, Row
from ._socket import bench_loops
from ._timing import percentile

__all__ = ["fleet_section", "real_qemu_section", "run_job", "CLIENTS"]

#: Per-command timeout while polling (--quick, full run).
POLL_TIMEOUT = {True: 0.5, False: 2.0}
#: Bound on one measuring child's whole run.
CHILD_TIMEOUT = 600.0
CLIENTS = ("qmpcore", "qemu.qmp")


# -- child side: one client polling every VM ---------------------------------------


def _rss() -> int:
    """Resident memory of this process in bytes (Linux; 0 elsewhere)."""
    try:
        with open("/proc/self/statm", encoding="ascii") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


class _Poller:
    """What the measurement needs from a client: connect all, one command to one VM."""

    count: int

    async def connect(self) -> None:
        raise NotImplementedError

    def command(self, index: int) -> asyncio.Future[Any]:
        """Start one command, the client's cheapest way; a future of its result."""
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError


class _QmpcorePoller(_Poller):
    def __init__(self, paths: Sequence[str], timeout: float) -> None:
        from ..client.fleet import Fleet

        self.count = len(paths)
        self.fleet = Fleet(paths, command_timeout=timeout, connect_timeout=30)
        self.vms = self.fleet.vms

    async def connect(self) -> None:
        await self.fleet.start()
        if not await self.fleet.wait_connected(timeout=60):
            raise RuntimeError(f"only {self.fleet.stats().connected} of {self.count} VMs connected")

    def command(self, index: int) -> asyncio.Future[Any]:
        return self.fleet.submit(self.vms[index], "query-status")

    async def close(self) -> None:
        await self.fleet.close()


class _QemuQmpPoller(_Poller):
    def __init__(self, paths: Sequence[str], timeout: float) -> None:
        from qemu.qmp import QMPClient

        self.count = len(paths)
        self.paths = list(paths)
        self.timeout = timeout
        self.clients = [QMPClient(f"vm{i}") for i in range(len(paths))]

    async def connect(self) -> None:
        slots = asyncio.Semaphore(64)  # the same cap as Fleet's default

        async def one(client: Any, path: str) -> None:
            async with slots:
                await client.connect(path)

        await asyncio.gather(*(one(c, p) for c, p in zip(self.clients, self.paths)))

    def command(self, index: int) -> asyncio.Future[Any]:
        return asyncio.ensure_future(asyncio.wait_for(self.clients[index].execute("query-status"), self.timeout))

    async def close(self) -> None:
        await asyncio.gather(*(c.disconnect() for c in self.clients), return_exceptions=True)


async def _poll_rounds(poller: _Poller, rounds: int) -> dict[str, Any]:
    """Poll every VM ``rounds`` times; per-command latency from the round's start.

    One done-callback per command, which times it and counts the round
    down (no ``gather`` on top, whose own callback per future would cost
    each client as much again as a light client's command).
    """
    latencies: list[float] = []
    failures = 0
    left = 0
    clock = time.perf_counter
    loop = asyncio.get_running_loop()
    round_done: asyncio.Future[None] = loop.create_future()

    def timed(fut: asyncio.Future[Any]) -> None:
        nonlocal failures, left
        if fut.cancelled() or fut.exception() is not None:  # timeouts and errors are counted
            failures += 1
        else:
            latencies.append(clock() - start)
        left -= 1
        if not left:
            round_done.set_result(None)

    cpu = time.process_time()
    began = clock()
    for _ in range(rounds):
        start = clock()
        left = poller.count
        round_done = loop.create_future()
        for i in range(poller.count):
            poller.command(i).add_done_callback(timed)
        if left:
            await round_done
    elapsed = clock() - began
    cpu = time.process_time() - cpu
    latencies.sort()
    return {
        "elapsed": elapsed,
        "ok": len(latencies),
        "failed": failures,
        "per_second": len(latencies) / elapsed if elapsed else 0.0,
        "p50_ms": percentile(latencies, 0.50) * 1e3,
        "p99_ms": percentile(latencies, 0.99) * 1e3,
        "round_ms": elapsed / max(rounds, 1) * 1e3,
        "cpu_us": cpu / max(len(latencies) + failures, 1) * 1e6,
    }


async def run_job(job: dict[str, Any]) -> dict[str, Any]:
    """Connect one client to every VM of ``job["paths"]`` and poll them."""
    make = _QmpcorePoller if job["client"] == "qmpcore" else _QemuQmpPoller
    gc.collect()
    base = _rss()
    poller = make(job["paths"], float(job["timeout"]))
    began = time.perf_counter()
    await poller.connect()
    connect_s = time.perf_counter() - began
    try:
        await _poll_rounds(poller, 1)  # warm-up: every connection has done one command
        gc.collect()
        per_connection = (_rss() - base) / poller.count
        result = await _poll_rounds(poller, int(job["rounds"]))
    finally:
        await poller.close()
    result.update(connect_s=connect_s, rss_per_connection=per_connection)
    if job.get("heap"):
        result["heap_per_connection"] = await _heap_per_connection(make(job["paths"], float(job["timeout"])))
    return result


async def _heap_per_connection(poller: _Poller) -> float:
    """Python heap each connection holds after one command (tracemalloc).

    Measured apart from the timed rounds (tracing slows everything), once
    imports and per-thread buffers exist, so only what each connection
    keeps is counted: objects, buffers, queues, loop handles.
    """
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        try:
            await poller.connect()
            await _poll_rounds(poller, 1)
            gc.collect()
            return (tracemalloc.get_traced_memory()[0] - before) / poller.count
        finally:
            await poller.close()
    finally:
        tracemalloc.stop()


def _child_main() -> None:
    job = json.loads(sys.stdin.read())
    try:
        # Import the client before the memory baseline is taken.
        importlib.import_module("qmpcore.fleet" if job["client"] == "qmpcore" else "qemu.qmp")
        from ..client.loop import run

        result = run(run_job(job), loop=job.get("loop", "asyncio"))
    except Exception as exc:
        result = {"error": f"{type(exc).__name__}: {exc}"}
    sys.stdout.write(json.dumps(result) + "\n")


# -- parent side --------------------------------------------------------------------


def _measure(client: str, paths: Sequence[str], rounds: int, timeout: float, loop: str) -> dict[str, Any]:
    """Run one client's job in a fresh child process; its result or an ``error``."""
    from ..server._process import child_environment

    job = {"client": client, "paths": list(paths), "rounds": rounds, "timeout": timeout, "loop": loop}
    job["heap"] = len(paths) >= MIN_VMS_FOR_RSS
    try:
        done = subprocess.run(
            [sys.executable, "-c", "from qmpcore.bench._fleet import _child_main; _child_main()"],
            input=json.dumps(job).encode(),
            capture_output=True,
            env=child_environment(),
            timeout=CHILD_TIMEOUT,
        )
    except subprocess.TimeoutExpired:
        return {"error": f"did not finish within {CHILD_TIMEOUT:g} s"}
    try:
        result: dict[str, Any] = json.loads(done.stdout.decode().strip().splitlines()[-1])
        return result
    except (ValueError, IndexError):
        tail = done.stderr.decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
        return {"error": f"exited with status {done.returncode}: {tail[0]}"}


def _have_qemu_qmp() -> str | None:
    """None when qemu.qmp can be imported, else the reason."""
    try:
        importlib.import_module("qemu.qmp")
    except ImportError:
        return QEMU_QMP_MISSING
    return None


def _measure_all(
    paths: Sequence[str], rounds: int, timeout: float, progress: Callable[[str], None], label: str, loop: str
) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for client in CLIENTS:
        missing = _have_qemu_qmp() if client != "qmpcore" else None
        if missing:
            results[client] = {"error": missing}
            continue
        progress(f"{label}: {client} polling {len(paths)} VMs on {loop}")
        results[client] = _measure(client, paths, rounds, timeout, loop)
    return results


def _on(title: str, loop: str) -> str:
    """A case title with the loop named (asyncio's own is the plain title)."""
    return title if loop == "asyncio" else f"{title}, {loop}"


# (key, label, unit, lower is better, scale)
_FIGURES = (
    ("per_second", "commands/s", "cmd/s", False, 1.0),
    ("p50_ms", "p50 latency", "ms", True, 1.0),
    ("p99_ms", "p99 latency", "ms", True, 1.0),
    ("cpu_us", "client CPU per command", "µs", True, 1.0),
    ("rss_per_connection", "RSS per connection", "KiB", True, 1 / 1024),
    ("heap_per_connection", "Python heap per connection", "KiB", True, 1 / 1024),
    ("connect_s", "connect all", "s", True, 1.0),
)


#: Below this many connections, memory per connection is mostly noise.
MIN_VMS_FOR_RSS = 100


def _rows(
    section: str,
    title: str,
    results: dict[str, Any],
    count: int,
    figures: Sequence[tuple[str, str, str, bool, float]] = _FIGURES,
) -> list[Row]:
    ours = results["qmpcore"]
    rows = []
    for key, label, unit, lower, scale in figures:
        if key in ("rss_per_connection", "heap_per_connection") and count < MIN_VMS_FOR_RSS:
            continue
        value: Any = ours.get("error") or ours[key] * scale
        baselines: dict[str, Any] = {}
        for peer, found in results.items():
            if peer != "qmpcore":
                baselines[peer] = found.get("error") or found[key] * scale
        rows.append(Row(section, f"{title}: {label}", unit, lower, value, baselines))
    failed = {c: r.get("failed") for c, r in results.items() if r.get("failed")}
    if failed and rows:
        rows[0].note = "commands that failed or timed out: " + ", ".join(f"{c} {n}" for c, n in failed.items())
    return rows


def fleet_section(opts: Any, progress: Callable[[str], None]) -> list[Row]:
    """Simulated VMs in a child process, polled by each client; then 1% hung."""
    from ..server import start_in_subprocess

    count = opts.vms if opts.vms is not None else (200 if opts.quick else 1000)
    rounds = opts.rounds if opts.rounds is not None else (5 if opts.quick else 20)
    if count < 1:
        return []
    timeout = POLL_TIMEOUT[bool(opts.quick)]
    loops = bench_loops(opts)
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="qmpcore-bench-") as directory:
        progress(f"fleet: starting {count} simulated VMs")
        with start_in_subprocess(directory, count) as server:
            title = f"{count} VMs × {rounds} rounds"
            for loop in loops:
                results = _measure_all(server.qmp_paths, rounds, timeout, progress, "fleet", loop)
                rows += _rows("fleet", _on(title, loop), results, count)
            hung = list(range(0, count, 100)) if count >= 100 else [0]
            for index in hung:
                server.vm(index).hang_command("query-status")
            hung_rounds = max(2, rounds // 5)
            for loop in loops:
                results = _measure_all(server.qmp_paths, hung_rounds, timeout, progress, "fleet, 1% hung", loop)
                rows += _rows(
                    "fleet",
                    _on(f"{len(hung)} of {count} hung (timeout {timeout:g} s)", loop),
                    results,
                    count,
                    [f for f in _FIGURES if f[0] in ("p50_ms", "p99_ms")],
                )
    return rows


def real_qemu_section(opts: Any, progress: Callable[[str], None]) -> list[Row]:
    """``--real-qemu N``: N real QEMU processes polled by each client."""
    from . import SectionUnavailable
    from ._qemu import QemuGroup, QemuMissing, find_qemu

    count = opts.real_qemu or 0
    if count < 1:
        raise SectionUnavailable("give the number of QEMUs with --real-qemu N")
    try:
        find_qemu()
    except QemuMissing as exc:
        raise SectionUnavailable(str(exc)) from None
    rounds = opts.rounds if opts.rounds is not None else (5 if opts.quick else 20)
    progress(f"real-qemu: starting {count} QEMUs")
    rows: list[Row] = []
    with QemuGroup(count) as group:
        group.start()
        for loop in bench_loops(opts):
            results = _measure_all(group.paths, rounds, POLL_TIMEOUT[bool(opts.quick)], progress, "real-qemu", loop)
            rows += _rows("real-qemu", _on(f"{count} QEMUs × {rounds} rounds", loop), results, count)
    return rows


if __name__ == "__main__":
    _child_main()
