"""The ``socket`` section of ``python -m qmpcore bench``: one connection.

Three cases, each measured in the same run for qmpcore (asyncio and
blocking clients), the floors (a blocking raw socket, and a bare asyncio
protocol, both with hand-written QMP and ``orjson``) and qemu.qmp's two
APIs, each its fastest documented way (``QMPClient`` with a task per
command; the blocking ``QEMUMonitorProtocol`` of ``qemu.qmp.legacy``):

* round trip: ``query-status`` commands one after another;
* 100 pipelined: 100 ``query-status`` commands issued together;
* event flood: the server sends events as fast as the client reads them.

The server is one simulated VM of the embedded server in a child process,
or a real QEMU given with ``--target PATH`` (no event flood there: QEMU has
no way to make one).  A monitor takes one client at a time, so contenders
take turns: connect, warm up, measure, disconnect.

The asyncio contenders run on each loop asked for (``--loop``; by default
asyncio's and, when installed, uvloop); the blocking ones need no loop and
are measured once.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import socket
import tempfile
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import orjson

from ..client.loop import new_event_loop
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
    connect: Callable[[], Any],
    runs: Callable[[Any, asyncio.AbstractEventLoop], Runs],
    close: Callable[[Any], Any],
    loop_name: str,
) -> Iterator[Runs]:
    """Drive an asyncio client from plain calls: one loop, reused by every run."""
    loop = new_event_loop(loop_name)
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


class _RawAsyncQMP(asyncio.Protocol):
    """The asyncio floor: a bare protocol, hand-written QMP, ``orjson`` on
    each line, replies completing futures in order (no ids, no timeouts)."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.waiting: list[asyncio.Future[Any]] = []
        self.next = 0
        self.events = 0
        self.events_wanted = 0
        self.events_done: asyncio.Future[None] | None = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer + data if self.buffer else data
        end = buffer.find(b"\n")
        start = 0
        loads = orjson.loads
        while end >= 0:
            msg = loads(buffer[start:end])
            if "event" in msg:
                self.events += 1
                if self.events == self.events_wanted and self.events_done is not None:
                    self.events_done.set_result(None)
            else:
                fut = self.waiting[self.next]
                self.next += 1
                fut.set_result(msg.get("return"))
                if self.next == len(self.waiting):
                    self.waiting.clear()
                    self.next = 0
            start = end + 1
            end = buffer.find(b"\n", start)
        self.buffer = buffer[start:]

    def send(self, data: bytes, count: int) -> list[asyncio.Future[Any]]:
        """Write ``data`` holding ``count`` commands; a future for each reply."""
        assert self.transport is not None
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in range(count)]
        self.waiting += futures
        self.transport.write(data)
        return futures


def _raw_async(path: str, trigger: Trigger | None, loop_name: str) -> Any:
    async def connect() -> _RawAsyncQMP:
        loop = asyncio.get_running_loop()
        greeted = loop.create_future()
        proto = _RawAsyncQMP()
        proto.waiting.append(greeted)  # the greeting has no "event" member either
        await loop.create_unix_connection(lambda: proto, path)
        await greeted
        await proto.send(b'{"execute": "qmp_capabilities"}\r\n', 1)[0]
        return proto

    async def close(proto: _RawAsyncQMP) -> None:
        if proto.transport is not None:
            proto.transport.close()
        await asyncio.sleep(0)

    def runs(proto: _RawAsyncQMP, loop: asyncio.AbstractEventLoop) -> Runs:
        async def round_trip(n: int) -> None:
            for _ in range(n):
                await proto.send(QUERY, 1)[0]

        async def pipelined() -> None:
            await asyncio.gather(*proto.send(QUERY * PIPELINE, PIPELINE))

        async def flood(n: int) -> None:
            assert trigger is not None
            proto.events = 0
            proto.events_wanted = n
            proto.events_done = loop.create_future()
            trigger(n)
            await asyncio.wait_for(proto.events_done, 30)

        return _blocking(loop, round_trip=round_trip, pipelined=pipelined, flood=flood)

    return _async(connect, runs, close, loop_name)


def _qmpcore_aio(path: str, trigger: Trigger | None, loop_name: str) -> Any:
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

    return _async(lambda: connect(path, timeout=30, command_timeout=30), runs, lambda c: c.close(), loop_name)


def _qemu_qmp(path: str, trigger: Trigger | None, loop_name: str) -> Any:
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

    return _async(connect, runs, lambda c: c.disconnect(), loop_name)


@contextlib.contextmanager
def _qemu_qmp_legacy(path: str, trigger: Trigger | None) -> Iterator[Runs]:
    """qemu.qmp's blocking API: ``QEMUMonitorProtocol`` runs its own asyncio loop."""
    from qemu.qmp.legacy import QEMUMonitorProtocol

    loop = new_event_loop("asyncio")
    asyncio.set_event_loop(loop)  # the one it picks up (it makes one otherwise)
    try:
        conn = QEMUMonitorProtocol(path)
        conn.connect()
        try:

            def round_trip(n: int) -> None:
                for _ in range(n):
                    conn.cmd("query-status")

            def flood(n: int) -> None:
                assert trigger is not None
                trigger(n)
                for _ in range(n):
                    conn.pull_event(wait=30)

            yield {"round trip": round_trip, "flood": flood}
        finally:
            conn.close()
    finally:
        asyncio.set_event_loop(None)
        loop.close()


def _blocking(loop: asyncio.AbstractEventLoop, **coroutines: Callable[..., Any]) -> Runs:
    names = {"round_trip": "round trip", "pipelined": "pipelined", "flood": "flood"}
    return {names[key]: (lambda *a, _f=f: loop.run_until_complete(_f(*a))) for key, f in coroutines.items()}


#: Contenders on an event loop: factory(path, trigger, loop name).
ASYNC_CONTENDERS: dict[str, Callable[[str, Trigger | None, str], Any]] = {
    "qmpcore": _qmpcore_aio,
    "raw asyncio": _raw_async,
    "qemu.qmp": _qemu_qmp,
}
#: Blocking contenders (no loop): factory(path, trigger).
BLOCKING_CONTENDERS: dict[str, Callable[[str, Trigger | None], Any]] = {
    "qmpcore sync": _qmpcore_sync,
    "raw socket": _raw,
    "qemu.qmp legacy": _qemu_qmp_legacy,
}
FLOOR = "raw socket"
ASYNC_FLOOR = "raw asyncio"
PEERS = ("qemu.qmp", "qemu.qmp legacy")


def bench_loops(opts: Any) -> list[str]:
    """The event loops the ``--loop`` options ask for (default: every one installed)."""
    from ..client.loop import uvloop_available

    asked = list(dict.fromkeys(getattr(opts, "loop", None) or []))
    if asked:
        return asked
    return ["asyncio", "uvloop"] if uvloop_available() else ["asyncio"]


# case -> (title, unit, operations per run)
CASES = {
    "round trip": ("round trip", "µs/cmd"),
    "pipelined": (f"{PIPELINE} pipelined", "µs/cmd"),
    "flood": ("event flood", "µs/event"),
}


def _contenders(loops: list[str]) -> dict[str, Callable[[str, Trigger | None], Any]]:
    """Every contender by figure name: blocking ones once, asyncio ones per loop
    (named ``"qmpcore@uvloop"``; plain names are on asyncio's loop)."""
    out: dict[str, Callable[[str, Trigger | None], Any]] = dict(BLOCKING_CONTENDERS)
    for loop_name in loops:
        for name, factory in ASYNC_CONTENDERS.items():
            key = name if loop_name == "asyncio" else f"{name}@{loop_name}"
            out[key] = functools.partial(_on_loop, factory, loop_name)
    if "asyncio" not in loops:  # asyncio's floor is what the other loops are measured against
        out[ASYNC_FLOOR] = functools.partial(_on_loop, _raw_async, "asyncio")
    return out


def _on_loop(
    factory: Callable[[str, Trigger | None, str], Any], loop_name: str, path: str, trigger: Trigger | None
) -> Any:
    return factory(path, trigger, loop_name)


def _measure(
    path: str, trigger: Trigger | None, quick: bool, progress: Callable[[str], None], loops: list[str]
) -> dict[str, dict[str, Figure]]:
    """{case: {contender: µs per operation, or why not measured}}."""
    round_trips, flood_size = SIZES["quick" if quick else "full"]
    per_run = {"round trip": round_trips, "pipelined": PIPELINE, "flood": flood_size}
    budget = Budget(0.02, 3) if quick else FULL
    figures: dict[str, dict[str, Figure]] = {case: {} for case in CASES}
    for name, factory in _contenders(loops).items():
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
    """Round trip, pipelining and event flood against one VM, on each loop."""
    loops = bench_loops(opts)
    if opts.target:
        figures = _measure(opts.target, None, opts.quick, progress, loops)
        where = f"QEMU at {opts.target}"
    else:
        from ..server import start_in_subprocess

        with tempfile.TemporaryDirectory(prefix="qmpcore-bench-") as directory:
            with start_in_subprocess(directory, 1) as server:
                vm = server.vm(0)
                figures = _measure(server.qmp_paths[0], lambda n: vm.flood_events(n), opts.quick, progress, loops)
        where = "simulated VM"
    return _rows(figures, loops, where)


def _rows(figures: dict[str, dict[str, Figure]], loops: list[str], where: str) -> list[Row]:
    """qmpcore's rows, each with every floor and peer of the same run as baselines.

    An asyncio client's row (one case per loop) has the floors, qemu.qmp on
    the same loop and asyncio's own floor (what uvloop should beat); the
    blocking client's row has the blocking floor and ``QEMUMonitorProtocol``.
    """
    rows = []
    for case, (title, unit) in CASES.items():
        found = figures[case]
        for loop_name in loops:
            at = "" if loop_name == "asyncio" else f"@{loop_name}"
            baselines: dict[str, Figure] = {FLOOR: found[FLOOR], ASYNC_FLOOR: found[ASYNC_FLOOR]}
            if at:
                baselines[f"{ASYNC_FLOOR} on {loop_name}"] = found[ASYNC_FLOOR + at]
            baselines["qemu.qmp"] = found["qemu.qmp" + at]
            name = f"{title} ({where})" if not at else f"{title} ({where}, {loop_name})"
            rows.append(Row("socket", name, unit, True, found["qmpcore" + at], baselines, variant=loop_name))
        if case != "pipelined":  # a blocking client waits for each reply
            baselines = {FLOOR: found[FLOOR], "qemu.qmp legacy": found["qemu.qmp legacy"]}
            name = f"{title} ({where}, blocking)"
            rows.append(Row("socket", name, unit, True, found["qmpcore sync"], baselines, variant="blocking"))
    return rows
