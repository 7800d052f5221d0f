"""The drop-in adapters beside the libraries they replace.

Two cases, each through three APIs:

* round trip -- one command in flight (``query-status``), repeated;
* event flood -- the server sends N events as fast as the client reads them;
  the client takes them one by one through the API's own event interface.

APIs and contenders (the last of each group is qmpcore's native client,
the floor the adapter builds on):

* asyncio: ``qemu.qmp.QMPClient`` / ``qmpcore.compat.qemu_qmp`` / ``qmpcore.connect``
* blocking: ``qemu.qmp.legacy`` / ``qmpcore.compat.legacy`` / ``qmpcore.connect_sync``
* old: ``qmp`` 1.1.0 (when installed) / ``qmpcore.compat.qmp``

Run ``python benchmarks/bench_compat.py`` (``--quick``, ``--json FILE``,
``--target PATH`` for a real QEMU monitor: round trips only).  By default the
server is qmpcore's embedded QEMU-like server in a child process.  Contenders
are interleaved and each figure is the median of several runs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Any

import qmpcore

Measure = Callable[[str, int, Callable[[int], None] | None], float]

COMMAND = "query-status"


def _optional(module: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError:
        return None


# -- asyncio APIs ------------------------------------------------------------


def qemu_qmp_style(module: str) -> tuple[Measure, Measure]:
    """Round trip and flood through a qemu.qmp-shaped ``QMPClient``."""
    api = importlib.import_module(module)

    async def roundtrip(path: str, n: int, _: Any = None) -> float:
        q = api.QMPClient("bench")
        await q.connect(path)
        try:
            t0 = time.perf_counter()
            for _ in range(n):
                await q.execute(COMMAND)
            return time.perf_counter() - t0
        finally:
            await q.disconnect()

    async def flood(path: str, n: int, start: Callable[[int], None]) -> float:
        q = api.QMPClient("bench")
        await q.connect(path)
        try:
            t0 = time.perf_counter()
            start(n)
            for _ in range(n):
                await q.events.get()
            return time.perf_counter() - t0
        finally:
            await q.disconnect()

    return _in_loop(roundtrip), _in_loop(flood)


def qmpcore_async() -> tuple[Measure, Measure]:
    async def roundtrip(path: str, n: int, _: Any = None) -> float:
        async with await qmpcore.connect(path) as q:
            t0 = time.perf_counter()
            for _ in range(n):
                await q.execute(COMMAND)
            return time.perf_counter() - t0

    async def flood(path: str, n: int, start: Callable[[int], None]) -> float:
        async with await qmpcore.connect(path) as q:
            events = q.events(maxsize=n)
            t0 = time.perf_counter()
            start(n)
            for _ in range(n):
                await events.get()
            return time.perf_counter() - t0

    return _in_loop(roundtrip), _in_loop(flood)


def _in_loop(fn: Callable[..., Any]) -> Measure:
    def run(path: str, n: int, start: Callable[[int], None] | None = None) -> float:
        return asyncio.run(fn(path, n, start))

    return run


# -- blocking APIs ------------------------------------------------------------


def legacy_style(module: str, pull: Callable[[Any], Any]) -> tuple[Measure, Measure]:
    """Round trip and flood through a ``QEMUMonitorProtocol``; ``pull`` takes
    one event (waiting for it)."""
    api = importlib.import_module(module)

    def roundtrip(path: str, n: int, _: Any = None) -> float:
        with _fresh_loop():
            mon = api.QEMUMonitorProtocol(path)
            mon.connect()
            try:
                t0 = time.perf_counter()
                for _ in range(n):
                    mon.cmd(COMMAND)
                return time.perf_counter() - t0
            finally:
                mon.close()

    def flood(path: str, n: int, start: Callable[[int], None] | None = None) -> float:
        with _fresh_loop():
            mon = api.QEMUMonitorProtocol(path)
            mon.connect()
            try:
                t0 = time.perf_counter()
                start(n)  # type: ignore[misc]
                for _ in range(n):
                    pull(mon)
                return time.perf_counter() - t0
            finally:
                mon.close()

    return roundtrip, flood


def qmpcore_sync() -> tuple[Measure, Measure]:
    def roundtrip(path: str, n: int, _: Any = None) -> float:
        with qmpcore.connect_sync(path) as q:
            t0 = time.perf_counter()
            for _ in range(n):
                q.execute(COMMAND)
            return time.perf_counter() - t0

    def flood(path: str, n: int, start: Callable[[int], None] | None = None) -> float:
        with qmpcore.connect_sync(path, event_queue=n) as q:
            t0 = time.perf_counter()
            start(n)  # type: ignore[misc]
            for _ in range(n):
                q.pull_event(timeout=60)
            return time.perf_counter() - t0

    return roundtrip, flood


@contextlib.contextmanager
def _fresh_loop() -> Iterator[None]:
    """qemu.qmp.legacy runs on the thread's event loop: give it a new one."""
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        yield
    finally:
        asyncio.set_event_loop(None)
        loop.close()


# -- the run ----------------------------------------------------------------------


def contenders() -> dict[str, list[tuple[str, tuple[Measure, Measure]]]]:
    groups: dict[str, list[tuple[str, tuple[Measure, Measure]]]] = {"asyncio": [], "blocking": [], "old qmp.py": []}
    if _optional("qemu.qmp"):
        groups["asyncio"].append(("qemu.qmp 0.0.6", qemu_qmp_style("qemu.qmp")))
        groups["blocking"].append(
            ("qemu.qmp.legacy", legacy_style("qemu.qmp.legacy", lambda m: m.pull_event(wait=True)))
        )
    groups["asyncio"].append(("compat.qemu_qmp", qemu_qmp_style("qmpcore.compat.qemu_qmp")))
    groups["asyncio"].append(("qmpcore.connect", qmpcore_async()))
    groups["blocking"].append(
        ("compat.legacy", legacy_style("qmpcore.compat.legacy", lambda m: m.pull_event(wait=True)))
    )
    groups["blocking"].append(("qmpcore.connect_sync", qmpcore_sync()))
    if _optional("qmp") and hasattr(_optional("qmp"), "QEMUMonitorProtocol"):
        groups["old qmp.py"].append(("qmp 1.1.0", legacy_style("qmp", lambda m: m.pull_event(wait=True))))
    groups["old qmp.py"].append(("compat.qmp", legacy_style("qmpcore.compat.qmp", lambda m: m.pull_event(wait=True))))
    return groups


def measure(
    path: str, flood_start: Callable[[int], None] | None, *, rounds: int, events: int, repeats: int
) -> list[dict[str, Any]]:
    """Median time of each case for each contender, contenders interleaved.

    A contender that fails (qmp 1.1.0 can misread an event flood) is
    reported with its error instead of a time.
    """
    results: list[dict[str, Any]] = []
    cases = [("round trip", 0, rounds)]
    if flood_start is not None:
        cases.append(("event flood", 1, events))
    for group, members in contenders().items():
        for case, which, n in cases:
            samples: dict[str, list[float]] = {name: [] for name, _ in members}
            failed: dict[str, str] = {}

            def run(name: str, runs: tuple[Measure, Measure], count: int) -> float | None:
                if name in failed:  # noqa: B023 (called within this iteration)
                    return None
                try:
                    return runs[which](path, count, flood_start) / count  # noqa: B023 (called within this iteration)
                except Exception as exc:
                    failed[name] = f"{type(exc).__name__}: {exc}"[:60]  # noqa: B023 (called within this iteration)
                    return None

            for name, runs in members:  # warm-up, not counted
                run(name, runs, max(1, n // 10))
            for _ in range(repeats):
                for name, runs in members:
                    per = run(name, runs, n)
                    if per is not None:
                        samples[name].append(per)
            first = members[0][0]
            reference = statistics.median(samples[first]) if samples[first] else None
            for name, _ in members:
                row: dict[str, Any] = {"api": group, "case": case, "contender": name, "n": n}
                if name in failed:
                    row["error"] = failed[name]
                else:
                    per = statistics.median(samples[name])
                    row.update(
                        us_per_op=per * 1e6, ops_per_s=1 / per, speedup_vs_first=reference / per if reference else None
                    )
                results.append(row)
    return results


def render(results: list[dict[str, Any]]) -> str:
    lines = [f"{'API':<11} {'case':<12} {'contender':<22} {'µs/op':>9} {'ops/s':>10} {'speedup':>8}"]
    for r in results:
        head = f"{r['api']:<11} {r['case']:<12} {r['contender']:<22}"
        if "error" in r:
            lines.append(f"{head} failed: {r['error']}")
            continue
        speedup = "" if r["speedup_vs_first"] is None else f"{r['speedup_vs_first']:>7.2f}x"
        lines.append(f"{head} {r['us_per_op']:>9.1f} {r['ops_per_s']:>10.0f} {speedup:>8}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds and repeats")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    parser.add_argument("--target", metavar="PATH", help="a real QEMU monitor socket (round trips only)")
    opts = parser.parse_args(argv)
    rounds, events, repeats = (300, 3000, 3) if opts.quick else (2000, 20000, 5)

    with contextlib.ExitStack() as stack:
        if opts.target:
            path, flood_start = opts.target, None
        else:
            from qmpcore.server import start_in_subprocess

            workdir = stack.enter_context(tempfile.TemporaryDirectory())
            server = stack.enter_context(start_in_subprocess(workdir, 1))
            path = server.qmp_paths[0]
            vm = server.vm(0)

            def flood_start(n: int) -> None:
                vm.flood_events(n, "FLOOD", {"x": 1})

        results = measure(path, flood_start, rounds=rounds, events=events, repeats=repeats)
    print(
        f"qmpcore {qmpcore.__version__} ({qmpcore.implementation} framer), "
        f"server: {opts.target or 'embedded (child process)'}"
    )
    print(render(results))
    if opts.json:
        with open(opts.json, "w") as f:
            json.dump({"target": opts.target, "results": results}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
