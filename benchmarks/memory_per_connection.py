"""What each connection holds: Python heap per connection, by allocating line.

``python benchmarks/memory_per_connection.py [N] [qmpcore|client|qemu.qmp]``
starts N simulated VMs in a child process, connects to every one (a
:class:`~qmpcore.Fleet`, N plain :func:`qmpcore.connect` clients, or N
qemu.qmp ``QMPClient``), runs one ``query-status`` on each and prints the
heap tracemalloc saw grow, per connection, with the lines that allocated it.
One-off costs (imports, the per-thread read buffer) show as fractions.
"""

from __future__ import annotations

import asyncio
import gc
import sys
import tempfile
import tracemalloc
from typing import Any

import qmpcore
from qmpcore.server import start_in_subprocess


async def _connect(which: str, paths: list[str]) -> tuple[Any, Any]:
    """Connect as ``which`` and run one command per VM; (handle, closer)."""
    if which == "qmpcore":
        fleet = qmpcore.Fleet(paths, command_timeout=10, connect_timeout=30)
        await fleet.start()
        assert await fleet.wait_connected(timeout=60)
        await fleet.execute_all("query-status")
        return fleet, fleet.close
    if which == "client":
        clients = [await qmpcore.connect(p, command_timeout=10) for p in paths]
        for c in clients:
            await c.execute("query-status")
        return clients, lambda: asyncio.gather(*(c.close() for c in clients))
    from qemu.qmp import QMPClient

    peers = [QMPClient(f"vm{i}") for i in range(len(paths))]
    for c, p in zip(peers, paths):
        await c.connect(p)
    for c in peers:
        await c.execute("query-status")
    return peers, lambda: asyncio.gather(*(c.disconnect() for c in peers))


async def measure(which: str, paths: list[str], lines: int = 25) -> None:
    count = len(paths)
    # One connection first, closed again: the modules it loads and the
    # caches it fills on first use are not what each connection costs.
    _, close = await _connect(which, paths[:1])
    await close()
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    _, close = await _connect(which, paths)
    gc.collect()
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    diff = after.compare_to(before, "lineno")
    print(f"{which}: {sum(s.size_diff for s in diff) / count:.0f} bytes per connection ({count} connections)")
    for stat in diff[:lines]:
        if stat.size_diff / count >= 16:
            where = stat.traceback[0]
            name = where.filename.rsplit("site-packages/", 1)[-1].rsplit("/src/", 1)[-1]
            print(f"  {stat.size_diff / count:7.0f} B  {stat.count_diff / count:5.1f} objects  {name}:{where.lineno}")
    await close()


def main(argv: list[str]) -> None:
    count = int(argv[0]) if argv else 200
    which = argv[1] if len(argv) > 1 else "qmpcore"
    with tempfile.TemporaryDirectory(prefix="qmpcore-memory-") as directory:
        with start_in_subprocess(directory, count) as server:
            asyncio.run(measure(which, list(server.qmp_paths)))


if __name__ == "__main__":
    main(sys.argv[1:])
