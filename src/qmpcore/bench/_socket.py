"""The ``socket`` section of ``python -m qmpcore bench``: one connection.

Three cases, each measured for qmpcore (asyncio and blocking clients), the
floor (a blocking raw socket with hand-written QMP and ``orjson``) and
qemu.qmp:

* round trip: ``query-status`` commands one after another;
* 100 pipelined: 100 ``query-status`` commands issued together;
* event flood: the server sends events as fast as the client reads them.

The server is one simulated VM of the embedded server in a child process,
or a real QEMU given with ``--target PATH`` (no event flood there: QEMU has
no way to make one).  A monitor takes one client at a time, so contenders
take turns: connect, warm up, measure, disconnect.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import tempfile
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import orjson

from ._report import QEMU_QMP_MISSING, Figure, Row
from ._timing import FULL, Budget, time_runs

__all__ = ["socket_section"]

QUERY = b'{"execute": "query-status"}\r\n'
PIPELINE = 100
#: (round trips per run, events per flood run), by mode.
SIZES = {"quick": (200, 2000), "full": (2000, 20000)}

Trigger = Callable[[int], None]
"""Makes the server send that many FLOOD events (None against real QEMU)."""


class _RawQMP:
    """The floor: a blocking socket, hand-written QMP, ``orjson`` on each line."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(30)
        self.sock.connect(path)
        self.buffer = b""
        self.lines(1)  # greeting
        self.sock.sendall(b'{"execute": "qmp_capabilities"}\r\n')
        self.lines(1)

    def lines(self, count: int) -> list[Any]:
        """Read ``count`` lines and decode each."""
        out: list[Any] = []
        buffer = self.buffer
        loads = orjson.loads
        while len(out) < count:
            end = buffer.find(b"\n")
            if end < 0:
                chunk = self.sock.recv(65536)  # below malloc's mmap threshold
                if not chunk:
                    raise ConnectionError("server closed the connection")
                buffer += chunk
                continue
            start = 0
            while end >= 0 and len(out) < count:
                out.append(loads(buffer[start:end]))
                start = end + 1
                end = buffer.find(b"\n", start)
            buffer = buffer[start:]
        self.buffer = buffer
        return out

    def close(self) -> None:
        self.sock.close()


# Each contender factory: (path, trigger) -> context manager yielding the
# three runs {"round trip": f(n), "pipelined": f(), "flood": f(n)}.
Runs = dict[str, Callable[..., Any]]


@contextlib.contextmanager
def _raw(path: str, trigger: Trigger | None) -> Iterator[Runs]:
    conn = _RawQMP(path)
    try:

        def round_trip(n: int) -> None:
            for _ in range(n):
                conn.sock.sendall(QUERY)
                conn.lines(1)

        def pipelined() -> None:
            conn.sock.sendall(QUERY * PIPELINE)
            conn.lines(PIPELINE)

        def flood(n: int) -> None:
            assert trigger is not None
            trigger(n)
            conn.lines(n)

        yield {"round trip": round_trip, "pipelined": pipelined, "flood": flood}
    finally:
        conn.close()


@contextlib.contextmanager
def _qmpcore_sync(path: str, trigger: Trigger | None) -> Iterator[Runs]:
    from ..client.sync import connect_sync

    client = connect_sync(path, timeout=30, command_timeout=30)
    try:

        def round_trip(n: int) -> None:
            for _ in range(n):
                client.execute("query-status")

        def flood(n: int) -> None:
            assert trigger is not None
            trigger(n)
            for _ in range(n):
                client.pull_event(timeout=30)

        yield {"round trip": round_trip, "flood": flood}
    finally:
        client.close()


@contextlib.contextmanager
def _async(
    connect: Callable[[], Any], runs: Callable[[Any, asyncio.AbstractEventLoop], Runs], close: Callable[[Any], Any]
) -> Iterator[Runs]:
    """Drive an asyncio client from plain calls: one loop, reused by every run."""
    loop = asyncio.new_event_loop()
    try:
        client = loop.run_until_complete(connect())
        try:
            yield runs(client, loop)
        finally:
            loop.run_until_complete(close(client))
    finally:
        loop.close()


def _async_runs(
    client: Any,
    loop: asyncio.AbstractEventLoop,
    flood: Callable[[int], Awaitable[None]],
    start: Callable[[str], Awaitable[Any]],
) -> Runs:
    """Round trips through an asyncio client's ``execute``, and a pipelined
    burst of commands each begun by ``start`` (the client's cheapest way)."""

    async def round_trip(n: int) -> None:
        for _ in range(n):
            await client.execute("query-status")

    async def pipelined() -> None:
        await asyncio.gather(*(start("query-status") for _ in range(PIPELINE)))

    return _blocking(loop, round_trip=round_trip, pipelined=pipelined, flood=flood)


def _qmpcore_aio(path: str, trigger: Trigger | None) -> Any:
    from ..client.aio import connect

    def runs(client: Any, loop: asyncio.AbstractEventLoop) -> Runs:
        async def flood(n: int) -> None:
            assert trigger is not None
            stream = client.events("FLOOD", maxsize=n)
            trigger(n)
            for _ in range(n):
                await stream.get(timeout=30)
            stream.close()

        return _async_runs(client, loop, flood, client.submit)  # a future each, no task

    return _async(lambda: connect(path, timeout=30, command_timeout=30), runs, lambda c: c.close())


def _qemu_qmp(path: str, trigger: Trigger | None) -> Any:
    from qemu.qmp import EventListener, QMPClient

    async def connect() -> Any:
        client = QMPClient("bench")
        await client.connect(path)
        return client

    def runs(client: Any, loop: asyncio.AbstractEventLoop) -> Runs:
        async def flood(n: int) -> None:
            assert trigger is not None
            listener = EventListener("FLOOD")
            with client.listen(listener):
                trigger(n)
                for _ in range(n):
                    await asyncio.wait_for(listener.get(), 30)

        return _async_runs(client, loop, flood, client.execute)  # gather makes a task each

    return _async(connect, runs, lambda c: c.disconnect())


def _blocking(loop: asyncio.AbstractEventLoop, **coroutines: Callable[..., Any]) -> Runs:
    names = {"round_trip": "round trip", "pipelined": "pipelined", "flood": "flood"}
    return {names[key]: (lambda *a, _f=f: loop.run_until_complete(_f(*a))) for key, f in coroutines.items()}


CONTENDERS: dict[str, Callable[[str, Trigger | None], Any]] = {
    "qmpcore": _qmpcore_aio,
    "qmpcore sync": _qmpcore_sync,
    "raw socket": _raw,
    "qemu.qmp": _qemu_qmp,
}
FLOOR = "raw socket"

# case -> (title, unit, operations per run)
CASES = {
    "round trip": ("round trip", "µs/cmd"),
    "pipelined": (f"{PIPELINE} pipelined", "µs/cmd"),
    "flood": ("event flood", "µs/event"),
}


def _measure(
    path: str, trigger: Trigger | None, quick: bool, progress: Callable[[str], None]
) -> dict[str, dict[str, Figure]]:
    """{case: {contender: µs per operation, or why not measured}}."""
    round_trips, flood_size = SIZES["quick" if quick else "full"]
    per_run = {"round trip": round_trips, "pipelined": PIPELINE, "flood": flood_size}
    budget = Budget(0.02, 3) if quick else FULL
    figures: dict[str, dict[str, Figure]] = {case: {} for case in CASES}
    for name, factory in CONTENDERS.items():
        progress(f"socket: {name}")
        try:
            opened = factory(path, trigger)
            runs = opened.__enter__()
        except ImportError:
            for case in CASES:
                figures[case][name] = QEMU_QMP_MISSING
            continue
        try:
            for case in CASES:
                run = runs.get(case)
                if run is None:
                    continue
                if case == "flood" and trigger is None:
                    figures[case][name] = "needs the embedded server (it makes the flood)"
                    continue
                args: tuple[Any, ...] = (per_run[case],) if case != "pipelined" else ()
                run(*args)  # warm-up
                timing = time_runs({name: lambda: run(*args)}, budget)[name]  # noqa: B023 (called within this iteration)
                figures[case][name] = timing.median / per_run[case] * 1e6
        finally:
            opened.__exit__(None, None, None)
    return figures


def socket_section(opts: Any, progress: Callable[[str], None]) -> list[Row]:
    """Round trip, pipelining and event flood against one VM."""
    if opts.target:
        figures = _measure(opts.target, None, opts.quick, progress)
        where = f"QEMU at {opts.target}"
    else:
        from ..server import start_in_subprocess

        with tempfile.TemporaryDirectory(prefix="qmpcore-bench-") as directory:
            with start_in_subprocess(directory, 1) as server:
                vm = server.vm(0)
                figures = _measure(server.qmp_paths[0], lambda n: vm.flood_events(n), opts.quick, progress)
        where = "simulated VM"
    rows = []
    for case, (title, unit) in CASES.items():
        found = figures[case]
        baselines = {FLOOR: found[FLOOR], "qemu.qmp": found["qemu.qmp"]}
        for name, variant in (("qmpcore", "asyncio"), ("qmpcore sync", "blocking")):
            if name == "qmpcore sync" and case == "pipelined":
                continue  # a blocking client waits for each reply
            rows.append(Row("socket", f"{title} ({where})", unit, True, found[name], baselines, variant=variant))
    return rows
