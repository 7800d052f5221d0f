"""What a soak run measures: resource snapshots and the report it prints."""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import os
import tracemalloc
from collections import Counter
from typing import Any

__all__ = ["Usage", "SoakReport"]


@dataclasses.dataclass(frozen=True)
class Usage:
    """A snapshot of this process's resources; subtract two for the growth."""

    #: Resident set size in bytes.
    rss: int
    #: Bytes traced by :mod:`tracemalloc` (0 when it is not tracing).
    traced: int
    #: Open file descriptors.
    fds: int

    @classmethod
    def now(cls) -> Usage:
        return cls(_rss(), tracemalloc.get_traced_memory()[0] if tracemalloc.is_tracing() else 0, _fds())

    def __sub__(self, other: Usage) -> Usage:
        return Usage(self.rss - other.rss, self.traced - other.traced, self.fds - other.fds)


def _rss() -> int:
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):  # not Linux: the peak is the best there is
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _fds() -> int:
    for path in ("/proc/self/fd", "/dev/fd"):
        with contextlib.suppress(OSError):
            return len(os.listdir(path)) - 1  # minus the listing's own descriptor
    return 0


@dataclasses.dataclass
class SoakReport:
    """What a soak run did and whether every invariant held."""

    seconds: float
    vms: int
    seed: int
    commands: int = 0
    #: Commands per client: "asyncio", "blocking" and "fleet".
    by_client: Counter[str] = dataclasses.field(default_factory=collections.Counter)
    ok: int = 0
    failed: Counter[str] = dataclasses.field(default_factory=collections.Counter)
    faults: Counter[str] = dataclasses.field(default_factory=collections.Counter)
    #: Commands still unresolved ``GRACE`` seconds after their timeout.
    lost: int = 0
    #: Replies that reached the wrong caller (wrong token or VM).
    misrouted: int = 0
    events_received: int = 0
    events_dropped: int = 0
    #: Floods checked exactly: received + dropped == sent.
    flood_checks: int = 0
    reconnects: int = 0
    #: Warnings logged by qmpcore (protocol faults the clients saw and survived).
    warnings: int = 0
    #: Times the client reconnected because its connection stopped answering.
    stall_recoveries: int = 0
    rss_growth: int = 0
    fds_leaked: int = 0
    #: Everything else that went wrong, in words.
    problems: list[str] = dataclasses.field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not (self.lost or self.misrouted or self.problems)

    def problem(self, text: str) -> None:
        if len(self.problems) < 50:
            self.problems.append(text)

    def as_dict(self) -> dict[str, Any]:
        """The report as JSON-ready values (counters become plain dicts)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        for name in ("by_client", "failed", "faults"):
            out[name] = dict(out[name])
        out["problems"] = list(self.problems)
        out["passed"] = self.passed
        return out

    def summary(self) -> str:
        """The human-readable summary ``qmpcore soak`` prints."""

        def parts(counter: Counter[str]) -> str:
            return ", ".join(f"{name} {n}" for name, n in counter.most_common()) or "none"

        lines = [
            f"qmpcore soak: {self.seconds:.0f} s, {self.vms} fleet VMs + 2 clients, seed {self.seed}",
            f"  commands   {self.commands} ({parts(self.by_client)}): ok {self.ok}; failed: {parts(self.failed)}",
            f"  faults     {sum(self.faults.values())}: {parts(self.faults)}",
            f"  events     {self.events_received} received, {self.events_dropped} dropped and counted;"
            f" {self.flood_checks} floods accounted exactly",
            f"  reconnects {self.reconnects} (client reconnects after a stall: {self.stall_recoveries});"
            f" protocol faults survived {self.warnings}",
            f"  memory     RSS growth after warm-up {self.rss_growth / (1 << 20):.1f} MiB;"
            f" descriptors left open {self.fds_leaked}",
            f"  lost {self.lost}, misrouted {self.misrouted}, other problems {len(self.problems)}"
            f" -> {'PASS' if self.passed else 'FAIL'}",
        ]
        lines += [f"  ! {text}" for text in self.problems]
        return "\n".join(lines)
