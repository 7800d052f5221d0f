"""The ``tls`` and ``proxy`` sections of ``python -m qmpcore bench``.

``tls``: round trip and fleet commands/s over TLS beside plain TCP, against
simulated VMs served on TCP by a child process, and against a real QEMU
(one ``tls-creds-x509`` monitor and one plain TCP monitor) when QEMU is
installed.  Certificates are made for the run (needs ``trustme``).

``proxy``: round trip through ``qmpcore proxy`` (a child process) beside
the same round trip straight to the VM (the target is at most 1.3 times
the direct figure), and an event flood fanned out by the proxy to 100
clients (all in this process), as microseconds per event delivered to
every client.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from ._report import Figure, Row
from ._timing import FULL, QUICK, time_runs

__all__ = ["tls_section", "proxy_section"]

FANOUT_CLIENTS = 100
_START_TIMEOUT = 30.0


class _Unavailable(Exception):
    pass


# -- certificates and child processes ------------------------------------------


def _certificates(directory: str) -> dict[str, str]:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, as files."""
    try:
        import trustme
    except ImportError:
        raise _Unavailable("needs trustme to make certificates (pip install trustme)") from None
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    client = ca.issue_cert("bench.example", common_name="bench", organization_name="qmpcore bench")
    files = {
        "ca": os.path.join(directory, "ca-cert.pem"),
        "cert": os.path.join(directory, "server-cert.pem"),
        "key": os.path.join(directory, "server-key.pem"),
        "client": os.path.join(directory, "client.pem"),
    }
    ca.cert_pem.write_to_path(files["ca"])
    server.cert_chain_pems[0].write_to_path(files["cert"])
    server.private_key_pem.write_to_path(files["key"])
    client.private_key_and_cert_chain_pem.write_to_path(files["client"])
    return files


def _client_context(files: dict[str, str]) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=files["ca"])
    context.load_cert_chain(files["client"])
    return context


@contextlib.contextmanager
def _child(argv: list[str], lines: int) -> Iterator[list[str]]:
    """Run ``argv`` (a Python child) until the block ends; yield its first ``lines`` lines of output."""
    from ..server._process import child_environment

    proc = subprocess.Popen(
        [sys.executable, *argv],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=child_environment(),
    )
    try:
        assert proc.stdout is not None
        out = [proc.stdout.readline().decode().strip() for _ in range(lines)]
        if not all(out):
            raise RuntimeError(f"{argv[:3]} did not start")
        yield out
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        for stream in (proc.stdin, proc.stdout):
            if stream is not None:
                stream.close()


async def _serve_tcp(count: int, cert: str | None, key: str | None) -> None:  # pragma: no cover - child
    from ..server import QMPServer, SimulatedVM

    context = None
    if cert is not None:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert, key)
    servers = []
    for i in range(count):
        server = QMPServer(SimulatedVM(f"vm{i}"), ("127.0.0.1", 0), ssl=context)
        await server.start()
        servers.append(server)
    sys.stdout.write(json.dumps([s.address[1] for s in servers]) + "\n")
    sys.stdout.flush()
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # until the parent closes it


# -- measuring ------------------------------------------------------------------


def _round_trip(address: Any, options: dict[str, Any], per_run: int, quick: bool) -> float:
    """Microseconds per ``query-status`` round trip with the asyncio client."""
    from ..client.aio import connect

    loop = asyncio.new_event_loop()
    try:
        client = loop.run_until_complete(connect(address, timeout=30, command_timeout=30, **options))

        async def run() -> None:
            for _ in range(per_run):
                await client.execute("query-status")

        try:
            loop.run_until_complete(run())  # warm-up
            timing = time_runs({"rt": lambda: loop.run_until_complete(run())}, QUICK if quick else FULL)["rt"]
        finally:
            loop.run_until_complete(client.close())
    finally:
        loop.close()
    return timing.median / per_run * 1e6


def _fleet_rate(addresses: list[Any], options: dict[str, Any], rounds: int) -> float:
    """Commands per second of ``Fleet.execute_all("query-status")`` over ``addresses``."""
    from ..client.fleet import Fleet

    async def run() -> float:
        async with Fleet(addresses, reconnect=False, connect_timeout=30, command_timeout=30, **options) as fleet:
            if not await fleet.wait_connected(timeout=60):
                raise RuntimeError("the fleet did not connect")
            await fleet.execute_all("query-status")  # warm-up
            start = time.perf_counter()
            for _ in range(rounds):
                results = await fleet.execute_all("query-status")
                if any(isinstance(r, BaseException) for r in results.values()):
                    raise RuntimeError("a fleet command failed")
            return len(addresses) * rounds / (time.perf_counter() - start)

    return asyncio.run(run())


def tls_section(opts: Any, progress: Callable[[str], None]) -> list[Row]:
    """TLS beside plain TCP: round trip and fleet commands/s."""
    from . import SectionUnavailable

    quick = bool(opts.quick)
    vms = opts.vms or (20 if quick else 100)
    rounds = opts.rounds or (5 if quick else 20)
    per_run = 100 if quick else 500
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="qmpcore-bench-tls-") as directory:
        try:
            files = _certificates(directory)
        except _Unavailable as why:
            raise SectionUnavailable(str(why)) from None
        tls = {"ssl": _client_context(files)}
        child = ["-m", "qmpcore.bench._tls_proxy", "serve-tcp", str(vms)]
        with _child(child, 1) as plain_out, _child([*child, files["cert"], files["key"]], 1) as tls_out:
            plain = [("127.0.0.1", port) for port in json.loads(plain_out[0])]
            secure = [("127.0.0.1", port) for port in json.loads(tls_out[0])]
            progress("tls: round trip")
            figures = {name: _round_trip(addrs[0], o, per_run, quick) for name, addrs, o in _pairs(plain, secure, tls)}
            rows.append(_row("round trip (simulated VM)", "µs/cmd", True, figures))
            progress("tls: fleet")
            rates = {name: _fleet_rate(addrs, o, rounds) for name, addrs, o in _pairs(plain, secure, tls)}
            rows.append(_row(f"fleet query-status, {vms} VMs", "cmd/s", False, rates))
        progress("tls: real QEMU")
        rows += _real_qemu_rows(files, tls, per_run, quick)
    return rows


def _pairs(plain: list[Any], secure: list[Any], tls: dict[str, Any]) -> list[tuple[str, list[Any], dict[str, Any]]]:
    return [("TLS", secure, tls), ("plain TCP", plain, {})]


def _row(case: str, unit: str, lower: bool, figures: Mapping[str, Figure], **extra: Any) -> Row:
    return Row("tls", case, unit, lower, figures["TLS"], {"plain TCP": figures["plain TCP"]}, variant="TLS", **extra)


def _real_qemu_rows(files: dict[str, str], tls: dict[str, Any], per_run: int, quick: bool) -> list[Row]:
    """The round trip to one real QEMU over its TLS monitor and over its plain TCP monitor."""
    from ._qemu import QemuMissing, find_qemu

    try:
        qemu = find_qemu()
    except QemuMissing as why:
        return [_row("round trip (QEMU)", "µs/cmd", True, {"TLS": str(why), "plain TCP": str(why)})]
    creds = os.path.dirname(files["ca"])
    ports = [_free_port(), _free_port()]
    argv = [qemu, "-M", "none", "-nodefaults", "-display", "none"]
    argv += ["-object", f"tls-creds-x509,id=tls0,dir={creds},endpoint=server,verify-peer=on"]
    for name, port, extra in (("tlsmon", ports[0], ",tls-creds=tls0"), ("tcpmon", ports[1], "")):
        argv += ["-chardev", f"socket,id={name},host=127.0.0.1,port={port},server=on,wait=off{extra}"]
        argv += ["-mon", f"chardev={name},mode=control"]
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for port in ports:
            _wait_listening(port, proc)
        figures = {
            "TLS": _round_trip(("127.0.0.1", ports[0]), tls, per_run, quick),
            "plain TCP": _round_trip(("127.0.0.1", ports[1]), {}, per_run, quick),
        }
    finally:
        proc.kill()
        proc.wait()
    return [_row("round trip (QEMU)", "µs/cmd", True, figures)]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_listening(port: int, proc: subprocess.Popen[bytes]) -> None:
    """Wait until something listens on the port (read from /proc: QEMU takes a probe as its client)."""
    wanted = f"0100007F:{port:04X}"
    deadline = time.monotonic() + _START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"QEMU exited with {proc.returncode}")
        try:
            with open("/proc/net/tcp", encoding="ascii") as table:
                if any(f[1] == wanted and f[3] == "0A" for f in (line.split() for line in table)):
                    return
        except OSError:  # not Linux
            time.sleep(1.0)
            return
        time.sleep(0.02)
    raise RuntimeError(f"QEMU did not listen on port {port}")


# -- the proxy ---------------------------------------------------------------------


def _fanout(address: str, flood: Callable[[int], None], events: int) -> float:
    """Microseconds per event delivered to each of FANOUT_CLIENTS clients."""
    from ..client.aio import connect

    async def run() -> float:
        clients = [await connect(address, timeout=30, event_queue=0) for _ in range(FANOUT_CLIENTS)]
        try:
            streams = [client.events("FLOOD", maxsize=events) for client in clients]

            async def drain(stream: Any) -> None:
                for _ in range(events):
                    await stream.get(timeout=60)

            start = time.perf_counter()
            flood(events)
            await asyncio.gather(*(drain(stream) for stream in streams))
            return (time.perf_counter() - start) / events * 1e6
        finally:
            for client in clients:
                await client.close()

    return asyncio.run(run())


def proxy_section(opts: Any, progress: Callable[[str], None]) -> list[Row]:
    """Round trip through the proxy beside direct, and event fan-out to 100 clients."""
    from ..server import start_in_subprocess

    quick = bool(opts.quick)
    per_run = 100 if quick else 500
    events = 200 if quick else 2000
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="qmpcore-bench-proxy-") as directory:
        with start_in_subprocess(directory, 1) as server:
            target = server.qmp_paths[0]
            listen = os.path.join(directory, "proxy.sock")
            progress("proxy: round trip")
            direct = _round_trip(target, {}, per_run, quick)  # first: the monitor takes one client, the proxy
            with _child(["-m", "qmpcore", "proxy", target, "--listen", listen, "--client-buffer", "67108864"], 1):
                proxied = _round_trip(listen, {}, per_run, quick)
                rows.append(
                    Row(
                        "proxy",
                        "round trip (simulated VM)",
                        "µs/cmd",
                        True,
                        proxied,
                        {"direct": direct},
                        variant="via proxy",
                        note="target: at most 1.3× direct",
                    )
                )
                progress("proxy: fan-out")
                vm = server.vm(0)
                per_event = _fanout(listen, lambda n: vm.flood_events(n), events)
                rows.append(
                    Row(
                        "proxy",
                        f"event flood to {FANOUT_CLIENTS} clients",
                        "µs/event",
                        True,
                        per_event,
                        variant="via proxy",
                        extra={"deliveries/s": FANOUT_CLIENTS * 1e6 / per_event},
                    )
                )
    rows += _proxy_real_qemu(per_run, quick)
    return rows


def _proxy_real_qemu(per_run: int, quick: bool) -> list[Row]:
    from ._qemu import QemuGroup, QemuMissing

    try:
        group = QemuGroup(1)
        paths = group.start()
    except QemuMissing:
        return []
    try:
        listen = os.path.join(os.path.dirname(paths[0]), "proxy.sock")
        with _child(["-m", "qmpcore", "proxy", paths[0], "--listen", listen], 1):
            proxied = _round_trip(listen, {}, per_run, quick)
        direct = _round_trip(paths[0], {}, per_run, quick)
    finally:
        group.close()
    return [
        Row("proxy", "round trip (QEMU)", "µs/cmd", True, proxied, {"direct": direct}, variant="via proxy"),
    ]


def _main() -> None:  # pragma: no cover - the child process
    if sys.argv[1] == "serve-tcp":
        count = int(sys.argv[2])
        cert, key = (sys.argv[3], sys.argv[4]) if len(sys.argv) > 4 else (None, None)
        asyncio.run(_serve_tcp(count, cert, key))


if __name__ == "__main__":
    _main()
