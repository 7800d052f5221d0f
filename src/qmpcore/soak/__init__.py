"""Soak test: clients against the embedded server while it injects faults.

``python -m qmpcore soak --minutes N`` serves simulated VMs in this process
and runs, for N minutes, an asyncio :class:`~qmpcore.QMPClient`, a blocking
:class:`~qmpcore.SyncQMPClient` (in a thread) and a :class:`~qmpcore.Fleet`
against them, while a :class:`~qmpcore.soak._faults.FaultInjector` hits
random VMs with what a broken QEMU or network does.  It checks throughout
that

* every command completes or fails with a qmpcore exception
  (:class:`~qmpcore.CommandError`, :class:`~qmpcore.TimeoutError`,
  :class:`~qmpcore.ConnectionLost`) within its timeout -- one that outlives
  it is *lost*;
* each reply reaches its caller: commands carry a unique token that the
  server echoes with the VM's name -- any other answer is *misrouted*;
* events are delivered or counted as dropped (exactly, on quiet floods);
* memory (RSS) stays bounded and no descriptor outlives the run,

then prints a summary.  The exit status is 0 when every invariant held.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import logging
import os
import random
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable
from typing import Any

from ..errors import CommandError, ConnectionLost, QMPError
from ..errors import TimeoutError as QMPTimeoutError
from ._faults import FaultInjector
from ._report import SoakReport, Usage

__all__ = ["Usage", "SoakReport", "soak", "add_arguments", "run", "main"]

#: The command every load generator sends; the server echoes it.
ECHO = "x-soak-echo"
#: How much later than its timeout a command may end before it counts as lost
#: (the event loop is shared with the server and the injector).
GRACE = 2.0
#: Memory growth after warm-up above which the run fails.
RSS_BOUND = 64 << 20
#: Descriptors that may stay open after the run (asyncio internals).
FD_SLACK = 2


# -- one soak run -------------------------------------------------------------------


class _Soak:
    """The servers, the load generators, the fault injector and the checks."""

    def __init__(self, seconds: float, vms: int, seed: int, timeout: float, directory: str) -> None:
        self.report = SoakReport(seconds, vms, seed)
        self.rnd = random.Random(seed)
        self.timeout = timeout
        self.directory = directory
        self.deadline = 0.0
        self.vms: list[Any] = []
        self.solo: Any = None  # the VM the asyncio client talks to
        self.blocking: Any = None  # the VM the blocking client talks to
        self.quiet = False  # the asyncio client is accounting a flood
        self.tokens = itertools.count(1)
        self.lock = threading.Lock()  # the blocking client reports from its thread

    # -- commands ----------------------------------------------------------------

    def token(self) -> int:
        return next(self.tokens)

    async def guarded(self, call: Awaitable[Any], timeout: float) -> Any:
        """Await one command; return its result or its (clear) exception."""
        report = self.report
        try:
            return await asyncio.wait_for(call, timeout + GRACE)
        except QMPError as exc:
            return exc
        except asyncio.TimeoutError:
            report.lost += 1
            report.problem(f"a command was unresolved {GRACE} s after its {timeout} s timeout")
            return ConnectionLost("lost")
        except Exception as exc:
            report.problem(f"unclear failure {type(exc).__name__}: {exc}")
            return exc

    def tally(self, result: Any, token: int, vm: str, who: str) -> None:
        """Count one command's outcome; check the reply was meant for us."""
        with self.lock:
            self._tally(result, token, vm)
            self.report.by_client[who] += 1

    def _tally(self, result: Any, token: int, vm: str) -> None:
        report = self.report
        report.commands += 1
        if isinstance(result, BaseException):
            report.failed[type(result).__name__] += 1
            if not isinstance(result, (CommandError, QMPTimeoutError, ConnectionLost)):
                report.problem(f"{vm}: failed with {type(result).__name__}: {result}")
        elif result == {"token": token, "vm": vm}:
            report.ok += 1
        else:
            report.misrouted += 1
            report.problem(f"{vm}: token {token} answered with {result!r:.200}")

    # -- servers -----------------------------------------------------------------

    async def start_servers(self, count: int) -> None:
        from ..server import QMPServer, SimulatedVM

        for index in range(count + 2):
            vm = SimulatedVM(f"vm{index}")
            vm.register(ECHO, _echo)
            self.vms.append(vm)
            await QMPServer(vm, os.path.join(self.directory, f"vm{index}.qmp")).start()
        self.blocking = self.vms.pop()
        self.solo = self.vms.pop()

    async def stop_servers(self) -> None:
        for vm in [*self.vms, self.solo, self.blocking]:
            for endpoint in vm.endpoints:
                await endpoint.close()
            vm.close_fds()

    def running(self) -> bool:
        return time.monotonic() < self.deadline

    # -- the single client ----------------------------------------------------------

    async def client_loop(self) -> None:
        """One QMPClient: bursts of concurrent commands, a slow event
        consumer, exact accounting of floods, reconnects when needed."""
        from ..client import aio

        path = self.solo.address
        rnd = self.rnd
        while self.running():
            try:
                client = await aio.connect(path, timeout=self.timeout)
            except (OSError, QMPError, asyncio.TimeoutError):
                await asyncio.sleep(0.02)
                continue
            self.report.reconnects += 1
            try:
                await self.client_session(client, rnd)
            finally:
                await client.close()

    async def client_session(self, client: Any, rnd: random.Random) -> None:
        stream = client.events(maxsize=64)
        base = client.counters["events_received"]
        seen = [0]
        consumer = asyncio.ensure_future(_consume(stream, seen, 0.0005))
        timeouts = 0
        try:
            while self.running() and not client.closed:
                if rnd.random() < 0.02:
                    await self.flood_check(client, stream, seen)
                    continue
                calls = []
                for _ in range(rnd.randrange(1, 13)):  # more than QEMU's 8 in flight
                    token = self.token()
                    calls.append(
                        (
                            token,
                            self.guarded(client.execute(ECHO, {"token": token}, timeout=self.timeout), self.timeout),
                        )
                    )
                results = await asyncio.gather(*(call for _, call in calls))
                for (token, _), result in zip(calls, results):
                    self.tally(result, token, self.solo.name, "asyncio")
                timeouts = timeouts + 1 if all(isinstance(r, QMPTimeoutError) for r in results) else 0
                if timeouts >= 3:  # garbage left the stream mid-frame: start afresh
                    self.report.stall_recoveries += 1
                    break
        finally:
            consumer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await consumer
            received = client.counters["events_received"] - base
            self.report.events_dropped += stream.dropped
            self.account(received, seen[0] + stream.dropped + len(stream), "client")
            stream.close()

    async def flood_check(self, client: Any, stream: Any, seen: list[int]) -> None:
        """Flood on a quiet, healthy connection: every event arrives or is counted."""
        self.quiet = True
        try:
            await asyncio.sleep(0.05)  # faults already in flight land first
            probe = await self.guarded(client.execute("query-status", timeout=self.timeout), self.timeout)
            if isinstance(probe, BaseException):
                return
            received = client.counters["events_received"]
            accounted = seen[0] + stream.dropped + len(stream)
            sent = await self.solo.flood_events(self.rnd.randrange(1000, 20000))
            probe = await self.guarded(client.execute("query-status", timeout=self.timeout), self.timeout)
            if isinstance(probe, BaseException) or client.closed:
                return
            got = client.counters["events_received"] - received
            counted = seen[0] + stream.dropped + len(stream) - accounted
            if got != sent or counted != sent:
                self.report.problem(f"flood of {sent} events: {got} received, {counted} delivered or dropped")
            self.report.flood_checks += 1
        finally:
            self.quiet = False

    def account(self, received: int, accounted: int, who: str) -> None:
        self.report.events_received += received
        if received != accounted:
            self.report.problem(f"{who}: {received} events received but {accounted} delivered, dropped or queued")

    # -- the blocking client ----------------------------------------------------------

    async def blocking_client(self) -> None:
        """Run :meth:`blocking_loop` in a thread; a thread still busy well
        after the end means a blocking call hung."""
        done = asyncio.get_running_loop().create_future()
        loop = asyncio.get_running_loop()

        def target() -> None:
            try:
                self.blocking_loop(self.blocking.address)
            finally:
                loop.call_soon_threadsafe(_set_done, done)

        threading.Thread(target=target, name="qmpcore-soak-blocking", daemon=True).start()
        try:
            await asyncio.wait_for(
                asyncio.shield(done), self.deadline - time.monotonic() + self.timeout + 2 * GRACE + 5
            )
        except asyncio.TimeoutError:
            self.report.lost += 1
            self.report.problem("the blocking client hung past the end of the run")

    def blocking_loop(self, path: str) -> None:
        """One SyncQMPClient: commands one after another, reconnects as needed."""
        from ..client.sync import connect_sync

        while self.running():
            try:
                client = connect_sync(path, timeout=self.timeout)
            except (OSError, QMPError):
                time.sleep(0.02)
                continue
            with self.lock:
                self.report.reconnects += 1
            try:
                timeouts = 0
                while self.running() and not client.closed:
                    token = self.token()
                    started = time.monotonic()
                    try:
                        result = client.execute(ECHO, {"token": token}, timeout=self.timeout)
                    except Exception as exc:
                        result = exc
                    if time.monotonic() - started > self.timeout + GRACE:
                        with self.lock:
                            self.report.lost += 1
                            self.report.problem(f"a blocking command took {time.monotonic() - started:.1f} s")
                    self.tally(result, token, self.blocking.name, "blocking")
                    timeouts = timeouts + 1 if isinstance(result, QMPTimeoutError) else 0
                    if timeouts >= 3:
                        with self.lock:
                            self.report.stall_recoveries += 1
                        break
            finally:
                client.close()

    # -- the fleet ------------------------------------------------------------------

    async def fleet_loop(self) -> None:
        """A Fleet: execute_all rounds and per-VM commands, a slow event consumer."""
        from ..client.fleet import Backoff, Fleet

        addresses = {vm.name: vm.address for vm in self.vms}
        fleet = Fleet(
            addresses,
            connect_timeout=self.timeout,
            command_timeout=self.timeout,
            reconnect=Backoff(initial=0.01, maximum=0.5),
            event_maxsize=256,
        )
        await fleet.start()
        stream = fleet.events()
        seen = [0]
        consumer = asyncio.ensure_future(_consume(stream, seen, 0.0002))
        try:
            singles = [asyncio.ensure_future(self.fleet_singles(fleet, name)) for name in addresses]
            while self.running():
                token = self.token()
                results = await self.guarded(fleet.execute_all(ECHO, {"token": token}), self.timeout)
                if isinstance(results, BaseException):
                    continue
                for name, result in results.items():
                    self.tally(result, token, name, "fleet")
            await asyncio.gather(*singles)
        finally:
            stats = fleet.stats()
            await fleet.close()
            consumer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await consumer
            self.report.reconnects += stats.reconnects
            self.report.events_dropped += stream.dropped
            self.account(stats.events_received, seen[0] + stream.dropped + len(stream._queue), "fleet")

    async def fleet_singles(self, fleet: Any, name: str) -> None:
        """Commands to one VM of the fleet, beside the execute_all rounds."""
        while self.running():
            token = self.token()
            result = await self.guarded(fleet.execute(name, ECHO, {"token": token}), self.timeout)
            self.tally(result, token, name, "fleet")
            if isinstance(result, ConnectionLost):
                await asyncio.sleep(0.01)  # not connected: do not spin

    # -- memory ----------------------------------------------------------------------

    async def watch_memory(self, warmup: float) -> None:
        await asyncio.sleep(warmup)
        base = Usage.now().rss
        while self.running():
            await asyncio.sleep(0.25)
            self.report.rss_growth = max(self.report.rss_growth, Usage.now().rss - base)
        if self.report.rss_growth > RSS_BOUND:
            self.report.problem(f"RSS grew by {self.report.rss_growth >> 20} MiB after warm-up")

    # -- all together ----------------------------------------------------------------

    async def run(self, seconds: float) -> SoakReport:
        before = Usage.now()
        await self.start_servers(self.report.vms)
        counter = _CountingHandler()
        logger = logging.getLogger("qmpcore")
        propagate, logger.propagate = logger.propagate, False
        logger.addHandler(counter)
        try:
            self.deadline = time.monotonic() + seconds
            injector = FaultInjector(
                [*self.vms, self.solo, self.blocking],
                self.rnd,
                command=ECHO,
                timeout=self.timeout,
                counts=self.report.faults,
                spared=lambda vm: vm is self.solo and self.quiet,
            )
            jobs = [
                injector.run(self.running),
                self.client_loop(),
                self.blocking_client(),
                self.fleet_loop(),
                self.watch_memory(min(10.0, seconds / 5)),
            ]
            await asyncio.gather(*jobs)
        finally:
            await self.stop_servers()
            logger.removeHandler(counter)
            logger.propagate = propagate
            self.report.warnings = counter.count
        await asyncio.sleep(0.1)  # transports report their end
        self.report.fds_leaked = max(0, (Usage.now() - before).fds)
        if self.report.fds_leaked > FD_SLACK:
            self.report.problem(f"{self.report.fds_leaked} descriptors left open")
        return self.report


class _CountingHandler(logging.Handler):
    """Counts qmpcore's warnings instead of printing thousands of them."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1
        if record.levelno >= logging.ERROR:
            sys.stderr.write(self.format(record) + "\n")


def _set_done(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _echo(call: Any) -> dict[str, Any]:
    return {"token": call.arguments.get("token"), "vm": call.target.name}


async def _consume(stream: Any, seen: list[int], pause: float) -> None:
    """A slow event consumer (so that queues fill and drop)."""
    with contextlib.suppress(ConnectionLost):  # how a stream ends when the connection breaks
        async for _ in stream:
            seen[0] += 1
            await asyncio.sleep(pause)


async def soak(
    seconds: float,
    *,
    vms: int = 8,
    seed: int | None = None,
    timeout: float = 1.0,
    directory: str | None = None,
) -> SoakReport:
    """Run the soak for ``seconds`` against ``vms`` simulated VMs (plus one
    for each single client), in the running event loop; return the report.

    Sockets go in ``directory`` (a fresh temporary one by default);
    ``timeout`` is every command's timeout.
    """
    if seed is None:
        seed = random.randrange(1 << 32)
    with contextlib.ExitStack() as stack:
        if directory is None:
            directory = stack.enter_context(tempfile.TemporaryDirectory(prefix="qmpcore-soak-"))
        return await _Soak(seconds, vms, seed, timeout, directory).run(seconds)


# -- command line ---------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``qmpcore soak``."""
    parser.add_argument("--minutes", type=float, default=1.0, help="how long to run (default 1)")
    parser.add_argument("--vms", type=int, default=8, help="simulated VMs in the fleet (default 8)")
    parser.add_argument("--seed", type=int, help="random seed (default: a new one, printed)")
    parser.add_argument("--timeout", type=float, default=1.0, help="each command's timeout in seconds (default 1)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")


def run(args: argparse.Namespace) -> int:
    """Run ``qmpcore soak`` with parsed ``args``; 0 when every invariant held."""
    if args.minutes <= 0 or args.vms < 1 or args.timeout <= 0:
        print("qmpcore soak: --minutes, --vms and --timeout must be positive", file=sys.stderr)
        return 2
    report = asyncio.run(soak(args.minutes * 60, vms=args.vms, seed=args.seed, timeout=args.timeout))
    print(json.dumps(report.as_dict(), indent=2) if args.json else report.summary())
    return 0 if report.passed else 1


def main(argv: list[str] | None = None) -> int:
    """``python -m qmpcore.soak``: the same as ``python -m qmpcore soak``."""
    parser = argparse.ArgumentParser(prog="qmpcore soak", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
