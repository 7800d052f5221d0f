"""Timing for ``python -m qmpcore bench``: interleaved repeats, median per run.

Contenders of one row are timed in turn within each repeat (A B C, A B C,
...), so a slow phase of a noisy machine hits them all alike and the ratios
stay meaningful even when the absolute figures wobble.
"""

from __future__ import annotations

import gc
import math
import statistics
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import NamedTuple

__all__ = ["Timing", "Budget", "QUICK", "FULL", "time_runs", "gc_paused", "percentile"]


class Budget(NamedTuple):
    """How long to time: each repeat lasts about ``min_time`` seconds."""

    min_time: float
    repeats: int


#: ``--quick`` and full runs.
QUICK = Budget(0.01, 3)
FULL = Budget(0.1, 5)


@dataclass(frozen=True)
class Timing:
    """Seconds per run of one contender."""

    median: float
    best: float
    runs: int


@contextmanager
def gc_paused() -> Iterator[None]:
    """Keep the cyclic collector out of timed loops (as :mod:`timeit` does)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _once(run: Callable[[], object]) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def time_runs(runs: Mapping[str, Callable[[], object]], budget: Budget = FULL) -> dict[str, Timing]:
    """Time each zero-argument ``run``; every repeat lasts about ``budget.min_time``.

    The runs should be warmed up already (the contenders' ``prepare`` does).
    """
    min_time, repeats = budget
    loops = {name: max(1, math.ceil(min_time / max(_once(run), 1e-9))) for name, run in runs.items()}
    samples: dict[str, list[float]] = {name: [] for name in runs}
    with gc_paused():
        for _ in range(repeats):
            for name, run in runs.items():
                n = loops[name]
                start = time.perf_counter()
                for _ in range(n):
                    run()
                samples[name].append((time.perf_counter() - start) / n)
            gc.collect()
    return {name: Timing(statistics.median(s), min(s), loops[name] * repeats) for name, s in samples.items()}


def percentile(sorted_values: list[float], fraction: float) -> float:
    """The ``fraction`` quantile (nearest rank) of already sorted values."""
    if not sorted_values:
        return math.nan
    index = min(len(sorted_values) - 1, max(0, math.ceil(fraction * len(sorted_values)) - 1))
    return sorted_values[index]
