"""The faults a soak run injects into the embedded server, at random.

Each is what a broken QEMU or network does to a client: connections
dropped (cleanly, with a reset, mid-frame, instead of a reply), garbage,
random bytes and 0xFF bursts on the stream, replies delayed past their
timeout or never sent, event floods and server restarts.  And what a
hostile one does: floods of stray ``, ] } :`` bytes, large frames full of
escapes next to long integers (the costly kind to decode), and flapping
(accepting, greeting and hanging up, again and again).
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["FAULTS", "GARBAGE", "FaultInjector"]

#: Fault kinds and their relative frequencies.
FAULTS: Sequence[tuple[str, int]] = (
    ("drop", 3),
    ("drop-reset", 1),
    ("drop-mid-frame", 2),
    ("drop-instead-of-reply", 2),
    ("garbage", 3),
    ("random-bytes", 1),
    ("ff-burst", 2),
    ("delay", 4),
    ("hang", 1),
    ("flood", 2),
    ("restart", 2),
    ("garbage-flood", 1),
    ("escaped-frame", 1),
    ("flapping", 1),
)

#: Bytes a garbage flood repeats.
FLOOD_GARBAGE = (b",", b"]", b"}", b":", b",]}:")

#: What a server may write that is not a reply to anything.
GARBAGE = (
    b"}\r\n",
    b"]]]\r\n",
    b"this is not json\r\n",
    b'{"return": 5}\r\n',
    b'{"return": {}, "id": 4000000000}\r\n',
    b'{"return": {}, "id": "x"}\r\n',
    b'{"error": {"class": "GenericError", "desc": "no id"}}\r\n',
    b'{"event": 7}\r\n',
    b'{"QMP": {"version": {}, "capabilities": []}}\r\n',
    b"\x00\x01\x02\r\n",
    b'{"a": 01}\r\n',
    b"{" * 2000 + b"}" * 2000 + b"\r\n",
)


class FaultInjector:
    """Hits random simulated VMs with random faults, several times a second.

    ``command`` is the command that delays, hangs and drops apply to;
    ``spared`` says whether a VM must be left alone right now; every fault
    is counted in ``counts``.
    """

    def __init__(
        self,
        vms: Sequence[Any],
        rnd: random.Random,
        *,
        command: str,
        timeout: float,
        counts: Counter[str],
        spared: Callable[[Any], bool] = lambda vm: False,
    ) -> None:
        self.vms = list(vms)
        self.rnd = rnd
        self.command = command
        self.timeout = timeout
        self.counts = counts
        self.spared = spared
        self.tasks: list[asyncio.Future[Any]] = []

    async def run(self, running: Callable[[], bool]) -> None:
        """Inject faults while ``running()``; then wait for restarts to finish."""
        rnd = self.rnd
        names = [name for name, _ in FAULTS]
        weights = [weight for _, weight in FAULTS]
        interval = 1.0 / len(self.vms)
        while running():
            await asyncio.sleep(rnd.expovariate(1 / interval))
            vm = rnd.choice(self.vms)
            if self.spared(vm):
                continue
            kind = rnd.choices(names, weights)[0]
            self.counts[kind] += 1
            self.apply(vm, kind)
        await asyncio.gather(*self.tasks, return_exceptions=True)

    def apply(self, vm: Any, kind: str) -> None:
        """Inject one fault of ``kind`` into ``vm`` now."""
        rnd = self.rnd
        if kind == "drop":
            vm.drop_connections()
        elif kind == "drop-reset":
            vm.drop_connections(reset=True)
        elif kind == "drop-mid-frame":
            vm.drop_connections(mid_frame=True)
        elif kind == "drop-instead-of-reply":
            vm.drop_on_command(self.command, mid_frame=rnd.random() < 0.5, times=1)
        elif kind == "garbage":
            vm.send_raw(rnd.choice(GARBAGE))
        elif kind == "random-bytes":
            vm.send_raw(rnd.randbytes(rnd.randrange(1, 512)))
        elif kind == "ff-burst":
            vm.send_raw(b"\xff" * rnd.randrange(1, 64))
        elif kind == "delay":
            vm.delay_command(self.command, rnd.uniform(0.01, 1.5 * self.timeout), times=1)
        elif kind == "hang":
            vm.hang_command(self.command, times=1)
            # A stuck command blocks the monitor, as in QEMU; the VM recovers
            # when its connection is dropped later.
            asyncio.get_running_loop().call_later(2 * self.timeout, vm.drop_connections)
        elif kind == "flood":
            vm.flood_events(rnd.randrange(100, 5000))
        elif kind == "restart":
            self.tasks.append(asyncio.ensure_future(_restart(vm, rnd.uniform(0.0, 0.5))))
        elif kind == "garbage-flood":
            vm.send_raw(rnd.choice(FLOOD_GARBAGE) * rnd.randrange(1 << 10, 4 << 10))
        elif kind == "escaped-frame":
            vm.send_raw(escaped_frame(rnd.randrange(16 << 10, 512 << 10)))  # (some decoded a step at a time)
        elif kind == "flapping":
            self.tasks.append(asyncio.ensure_future(_flap(vm, rnd.uniform(0.2, 1.0))))
        else:
            raise ValueError(f"unknown fault {kind!r}")


def escaped_frame(size: int) -> bytes:
    """A valid event of about ``size`` bytes: escapes next to 19-digit integers."""
    unit = b'"\\n\\"\\u00e9\\\\", 1234567890123456789, '
    body = unit * max(1, size // len(unit))
    return (
        b'{"event": "X-HOSTILE", "data": {"a": [' + body + b'0]}, "timestamp": {"seconds": 1, "microseconds": 0}}\r\n'
    )


async def _flap(vm: Any, seconds: float) -> None:
    """Drop every connection as soon as it is made, for ``seconds``."""
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    while loop.time() < end:
        vm.drop_connections()
        await asyncio.sleep(0.005)


async def _restart(vm: Any, pause: float) -> None:
    """Stop listening and drop the client, then come back on the same path."""
    endpoint = vm.endpoints[0]
    await endpoint.close()
    await asyncio.sleep(pause)
    await endpoint.start()
