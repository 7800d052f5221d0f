"""The ``hostile`` section of ``python -m qmpcore bench``: good VMs beside hostile ones.

A :class:`~qmpcore.Fleet` polls simulated good VMs (the embedded server in a
child process) with ``query-status``, once alone (the quiet fleet) and then
once per attack, with K hostile VMs (served by another child process) in
the same fleet:

* ``garbage``: greets, then writes stray ``,]}:`` bytes without end;
* ``escaped``: greets, then sends 1 MiB events of escapes next to 19-digit
  integers, again and again (valid frames, the costly kind to decode);
* ``string``: greets, then sends 1 MiB events holding one string of
  escapes and non-ASCII text, again and again;
* ``silent``: accepts and never greets;
* ``flapping``: greets, negotiates and hangs up at once, every time.

Two more attack the embedded server that serves the good VMs, from K
hostile clients of K more of its VMs (the same process, the same loop):

* ``client-garbage``: writes stray ``,]}:`` bytes without end and reads
  every answer (one error reply per byte);
* ``client-requests``: sends 1 MiB requests of escapes next to 19-digit
  integers, again and again, and reads every answer.

One row per attack: the good VMs' p99 latency beside the quiet fleet's
(the ratio is the slowdown), with their commands/s, p50, the client's
resident memory growth and the hostile VMs' reconnects.  A full run makes
three alternating pairs of runs per attack and shows the median pair, with
the lowest and highest ratio of the three.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from ..framing import implementation
from ._report import Row
from ._timing import percentile

__all__ = ["hostile_section", "ATTACKS"]

ATTACKS = ("garbage", "escaped", "string", "silent", "flapping", "client-garbage", "client-requests")
#: Attacks made by clients of the server that serves the good VMs.
CLIENT_ATTACKS = ("client-garbage", "client-requests")
#: Good and hostile VMs (full run, --quick).
GOOD = {False: 50, True: 20}
HOSTILE = {False: 5, True: 2}
ROUNDS = {False: 1000, True: 50}
#: Quiet and attacked runs per attack, alternating (full run, --quick): the
#: row is the pair with the median ratio (a one-second run's p99 moves with
#: any hiccup of a shared machine).
PAIRS = {False: 3, True: 1}
#: Connect and command timeouts of the measuring fleet.  The pure-Python
#: framer (QMPCORE_NO_EXTENSIONS=1, inherited by the server child) is tens of
#: times slower and decodes a deferred request in one step, so a hostile
#: client's read can hold the server for a large part of a second there.
TIMEOUT = 2.0 if implementation == "cython" else 30.0
#: A bound on one attack's measurement.
ATTACK_SECONDS = 60.0

_GREETING = (
    b'{"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}, "package": ""}, "capabilities": []}}\r\n'
)


# -- the hostile VMs (a child process) --------------------------------------------------


async def _negotiate(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Greet and answer the first command (``qmp_capabilities``)."""
    from ..framing import Framer

    writer.write(_GREETING)
    framer = Framer()
    while True:
        data = await reader.read(1 << 16)
        if not data:
            raise ConnectionError("client went away")
        for item in framer.feed(data):
            if isinstance(item, dict) and "id" in item:
                writer.write(b'{"return": {}, "id": ' + json.dumps(item["id"]).encode() + b"}\r\n")
                await writer.drain()
                return


def _behaviour(attack: str) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Any]:
    from ..soak._faults import escaped_frame

    flood = b",]}:" * (1 << 14)
    big = escaped_frame(1 << 20)
    text = b'{"event": "X-HOSTILE", "data": {"s": "' + b"a\\n\\u00e9\xc3\xa9 " * ((1 << 20) // 16) + b'"}}\r\n'

    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _negotiate(reader, writer)
        while True:
            writer.write(flood)
            await writer.drain()

    async def escaped(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _negotiate(reader, writer)
        while True:
            writer.write(big)
            await writer.drain()

    async def string(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _negotiate(reader, writer)
        while True:
            writer.write(text)
            await writer.drain()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()

    async def flapping(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _negotiate(reader, writer)  # then hang up

    behaviours = {"garbage": garbage, "escaped": escaped, "string": string, "silent": silent, "flapping": flapping}
    return behaviours[attack]


def _client_payload(attack: str) -> bytes:
    from ..soak._faults import escaped_frame

    if attack == "client-garbage":
        return b",]}:" * (1 << 14)
    event = escaped_frame(1 << 20)
    items = event[event.index(b"[") : event.rindex(b"]") + 1]
    return b'{"execute": "query-status", "arguments": {"a": ' + items + b"}}"


class _Attacker:
    """A hostile client of one VM of the server: negotiate, then write the
    attack's payload without end while reading every answer.

    Plain blocking sockets in two threads, reading into one reused buffer:
    the bench measures what the attack costs the server, so the attacker
    itself takes as little of the shared cores as it can.
    """

    def __init__(self, payload: bytes, path: str) -> None:
        self.payload = payload
        self.path = path
        self.connects = 0
        self.ready = threading.Event()
        self.stopping = False
        self.sock: socket.socket | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        buffer = bytearray(1 << 20)
        while not self.stopping:
            sock = socket.socket(socket.AF_UNIX)
            try:
                sock.connect(self.path)
            except OSError:
                sock.close()
                time.sleep(0.1)
                continue
            self.sock = sock
            self.connects += 1
            self.ready.set()

            def drain(sock: socket.socket = sock) -> None:
                try:
                    while sock.recv_into(buffer):
                        pass
                except OSError:
                    pass

            reader = threading.Thread(target=drain, daemon=True)
            reader.start()
            try:
                sock.sendall(b'{"execute": "qmp_capabilities"}')
                while reader.is_alive() and not self.stopping:
                    sock.sendall(self.payload)
            except OSError:
                pass
            finally:
                sock.close()
                reader.join(5)

    def stop(self) -> None:
        self.stopping = True
        sock = self.sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)  # (unblocks both threads)
            except OSError:
                pass
        self.thread.join(5)


def _attack_servers(attack: str, paths: Sequence[str]) -> None:
    payload = _client_payload(attack)
    attackers = [_Attacker(payload, path) for path in paths]
    for attacker in attackers:
        attacker.ready.wait(30)  # (ready once every client is connected and attacking)
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    sys.stdin.read()  # the parent closes our stdin when done
    for attacker in attackers:
        attacker.stop()
    sys.stdout.write(json.dumps({"accepted": sum(a.connects for a in attackers)}) + "\n")
    sys.stdout.flush()


async def _serve_hostile(attack: str, paths: Sequence[str]) -> None:
    behaviour = _behaviour(attack)
    accepted = [0]

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted[0] += 1
        try:
            await behaviour(reader, writer)
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    servers = [await asyncio.start_unix_server(on_connect, path) for path in paths]
    loop = asyncio.get_running_loop()
    stdin_closed = loop.create_future()

    def closed() -> None:
        if not stdin_closed.done():
            stdin_closed.set_result(None)

    loop.add_reader(sys.stdin.fileno(), closed)
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    await stdin_closed  # the parent closes our stdin when done
    loop.remove_reader(sys.stdin.fileno())
    for server in servers:
        server.close()
    sys.stdout.write(json.dumps({"accepted": accepted[0]}) + "\n")
    sys.stdout.flush()


def _hostile_main() -> None:
    job = json.loads(sys.stdin.readline())
    # The hostile peers yield the cores to the measured processes: the bench
    # measures what they cost the fleet's loop and the server, not what
    # their own process takes from a machine with few cores.
    os.nice(19)
    if job["attack"] in CLIENT_ATTACKS:
        _attack_servers(job["attack"], job["paths"])
    else:
        asyncio.run(_serve_hostile(job["attack"], job["paths"]))


class _HostileVMs:
    """K hostile VMs of one attack in a child process (or K hostile
    clients, for :data:`CLIENT_ATTACKS`, of the VMs at ``paths``)."""

    def __init__(self, attack: str, paths: Sequence[str]) -> None:
        from ..server._process import child_environment

        self.proc = subprocess.Popen(
            [sys.executable, "-c", "from qmpcore.bench._hostile import _hostile_main; _hostile_main()"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=child_environment(),
        )
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write((json.dumps({"attack": attack, "paths": list(paths)}) + "\n").encode())
        self.proc.stdin.flush()
        if self.proc.stdout.readline().strip() != b"ready":
            self.stop()
            raise RuntimeError(f"the {attack} VMs did not start")

    def stop(self) -> int:
        """Stop the child; return how many connections it accepted."""
        proc = self.proc
        accepted = 0
        try:
            assert proc.stdin is not None and proc.stdout is not None
            proc.stdin.close()
            line = proc.stdout.readline()
            accepted = int(json.loads(line).get("accepted", 0)) if line.strip() else 0
            proc.wait(10)
        except (OSError, ValueError, subprocess.TimeoutExpired):
            proc.kill()
            proc.wait()
        finally:
            if proc.stdout is not None:
                proc.stdout.close()
        return accepted


# -- the measuring fleet (this process) ------------------------------------------------------


def _rss() -> int:
    try:
        with open("/proc/self/statm", encoding="ascii") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


async def _measure(good: Sequence[str], hostile: Sequence[str], rounds: int, *, greets: bool = True) -> dict[str, Any]:
    """Poll the good VMs of a fleet that also holds ``hostile`` ones.

    With ``greets``, the hostile VMs answer a connect at once: the polling
    starts once each was tried, so the attack is under way from the first
    round however loaded the machine (silent VMs are tried only when their
    ``connect_timeout`` ends)."""
    from ..client.fleet import Backoff, Fleet

    addresses = {f"good{i}": p for i, p in enumerate(good)}
    addresses.update({f"hostile{i}": p for i, p in enumerate(hostile)})
    names = [f"good{i}" for i in range(len(good))]
    fleet = Fleet(
        addresses,
        connect_timeout=TIMEOUT,
        command_timeout=TIMEOUT,
        reconnect=Backoff(initial=0.05, maximum=2.0),
    )
    base = _rss()
    clock = time.perf_counter
    began = clock()
    await fleet.start(wait=False)
    try:
        if not await fleet.wait_connected(names, timeout=30):
            raise RuntimeError(f"only {fleet.stats().connected} VMs connected")
        members = [fleet._members[f"hostile{i}"] for i in range(len(hostile))] if greets else []
        while not all(member.tried for member in members):
            if clock() - began > 30:
                raise RuntimeError("the hostile VMs were not tried within 30 s")
            await asyncio.sleep(0.01)
        connect_s = clock() - began
        latencies: list[float] = []
        failed = 0
        started = clock()
        done_rounds = 0
        start = 0.0

        def timed(fut: asyncio.Future[Any]) -> None:
            # Each command's latency: from its round's start to its own reply.
            nonlocal failed
            if fut.cancelled() or fut.exception() is not None:
                failed += 1
            else:
                latencies.append(clock() - start)

        while done_rounds < rounds and clock() - started < ATTACK_SECONDS:
            start = clock()
            futures = [fleet.submit(name, "query-status") for name in names]
            for fut in futures:
                fut.add_done_callback(timed)
            await asyncio.gather(*futures, return_exceptions=True)
            done_rounds += 1
        elapsed = clock() - started
        stats = fleet.stats()
    finally:
        await fleet.close()
    latencies.sort()
    return {
        "per_second": len(latencies) / elapsed if elapsed else 0.0,
        "p50_ms": percentile(latencies, 0.5) * 1e3 if latencies else float("nan"),
        "p99_ms": percentile(latencies, 0.99) * 1e3 if latencies else float("nan"),
        "failed": failed,
        "rounds": done_rounds,
        "connect_s": connect_s,
        "rss_mib": max(0, _rss() - base) / (1 << 20),
        "reconnects": stats.reconnects,
        "protocol_errors": stats.protocol_errors,
    }


def hostile_section(opts: Any, progress: Callable[[str], None]) -> list[Row]:
    """Per attack, the quiet fleet and then the fleet beside the attack,
    :data:`PAIRS` times: one row per attack, the pair with the median ratio
    of the attacked p99 to the quiet one just before it (so that a change in
    the machine's load between attacks does not move the ratio)."""
    from ..server import start_in_subprocess

    quick = bool(opts.quick)
    count = opts.vms if opts.vms is not None else GOOD[quick]
    rounds = opts.rounds if opts.rounds is not None else ROUNDS[quick]
    k = HOSTILE[quick]
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="qmpcore-bench-") as directory:
        progress(f"hostile: starting {count} good VMs")
        # (and k more, whose hostile clients attack the server of the good ones)
        with start_in_subprocess(directory, count + k) as server:
            good = server.qmp_paths[:count]
            for attack in ATTACKS:
                pairs = []
                for _ in range(PAIRS[quick]):
                    progress("hostile: the quiet fleet")
                    quiet = asyncio.run(_measure(good, [], rounds))
                    if attack in CLIENT_ATTACKS:
                        progress(f"hostile: {k} {attack} beside {count} good VMs, on their server")
                        paths = server.qmp_paths[count:]
                        in_fleet = []
                    else:
                        progress(f"hostile: {k} {attack} VMs beside {count} good ones")
                        paths = in_fleet = [os.path.join(directory, f"{attack}{i}.sock") for i in range(k)]
                    vms = _HostileVMs(attack, paths)
                    try:
                        result: dict[str, Any] = asyncio.run(
                            _measure(good, in_fleet, rounds, greets=attack != "silent")
                        )
                    except Exception as exc:
                        result = {"error": f"{type(exc).__name__}: {exc}"}
                    finally:
                        accepted = vms.stop()
                    pairs.append((result, quiet, accepted))
                rows.append(_median_row(attack, k, count, pairs))
    return rows


def _median_row(attack: str, k: int, count: int, pairs: list[tuple[dict[str, Any], dict[str, Any], int]]) -> Row:
    """The row of the pair with the median ratio (a failed run counts as
    the worst), with the other pairs' ratios beside it."""

    def ratio(pair: tuple[dict[str, Any], dict[str, Any], int]) -> float:
        result, quiet, _ = pair
        return float("inf") if "error" in result else result["p99_ms"] / quiet["p99_ms"]

    ranked = sorted(pairs, key=ratio)
    row = _row(attack, k, count, *ranked[len(ranked) // 2])
    if len(ranked) > 1 and "error" not in ranked[len(ranked) // 2][0]:
        row.extra["lowest ratio"] = ratio(ranked[0])
        row.extra["highest ratio"] = ratio(ranked[-1])
    return row


def _row(attack: str, k: int, count: int, result: dict[str, Any], quiet: dict[str, Any], accepted: int) -> Row:
    case = f"{k} {attack} + {count} good VMs"
    if "error" in result:
        return Row("hostile", case, "ms p99", True, result["error"], {"quiet fleet": quiet["p99_ms"]})
    extra = {
        "cmd/s": result["per_second"],
        "quiet cmd/s": quiet["per_second"],
        "p50 ms": result["p50_ms"],
        "RSS MiB": result["rss_mib"],
        "hostile connects": float(accepted),
    }
    row = Row("hostile", case, "ms p99", True, result["p99_ms"], {"quiet fleet": quiet["p99_ms"]}, extra=extra)
    if result["failed"]:
        row.note = f"good VMs' commands that failed or timed out: {result['failed']}"
    return row
