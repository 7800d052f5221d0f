"""Framer speed beside its baselines, one group per workload.

Each group holds qmpcore's framers (compiled and pure, decoding and raw)
and, from the same run, the orjson floor on pre-split frames, ``json.loads``,
line splitting + ``json.loads``, and qemu.qmp's receive path.  Compare the
rows of a group; pytest-benchmark's relative column gives the ratios.
``test_scan_variant`` times the compiled framer's raw framing with each block
scan this CPU has (none: the byte loops alone, portable, SSE2, AVX2: see
src/_scan.h).
"""

from __future__ import annotations

import functools
import time

import pytest

from qmpcore.bench import _framing as contenders
from qmpcore.bench._workloads import Workload, framing_workloads

WORKLOAD_NAMES = [
    "small-reply",
    "event",
    "schema",
    "events-1000",
    "libvirt-2.6.0",
    "libvirt-7.2.0",
    "libvirt-7.2.0-compact",
    "big-64KiB",
    "big-1B",
    "dialect-escapes",
    "dialect-single-quotes",
    "dialect-long-integers",
    "garbage-commas",
    "garbage-ff",
    "garbage-control",
    "garbage-frames",
]
FRAMERS = ["cython", "python"]
#: A prepared run slower than this gets a few pedantic rounds instead of
#: pytest-benchmark's calibration (the 10 MiB frame fed byte by byte).
SLOW_RUN = 0.2


@functools.cache
def workload(name: str) -> Workload:
    found = framing_workloads(names=[name])
    if not found or found[0].name != name:
        pytest.skip(f"workload {name} unavailable (corpus not found)")
    return found[0]


def measure(benchmark, name: str, factory, *args, **kw) -> None:
    wl = workload(name)
    benchmark.group = wl.title
    benchmark.extra_info.update(bytes=wl.nbytes, frames=wl.nframes, reads=len(wl.chunks))
    try:
        t0 = time.perf_counter()
        run = contenders.prepare(factory, wl, *args, **kw)
        slow = time.perf_counter() - t0 > SLOW_RUN
    except contenders.NotApplicable as why:
        pytest.skip(str(why))
    if slow:
        count = benchmark.pedantic(run, rounds=3, iterations=1)
    else:
        count = benchmark(run)
    assert count == wl.nframes


@pytest.mark.parametrize("raw", [False, True], ids=["decode", "raw"])
@pytest.mark.parametrize("impl", FRAMERS)
@pytest.mark.parametrize("name", WORKLOAD_NAMES)
def test_qmpcore(benchmark, name, impl, raw):
    cls = contenders.framer_classes().get(impl)
    if cls is None:
        pytest.skip("compiled framer not in use (not built, or QMPCORE_NO_EXTENSIONS=1)")
    measure(benchmark, name, contenders.framer, cls, raw=raw)


@pytest.mark.parametrize("baseline", list(contenders.BASELINES))
@pytest.mark.parametrize("name", WORKLOAD_NAMES)
def test_baseline(benchmark, name, baseline):
    measure(benchmark, name, contenders.BASELINES[baseline])


SCAN_WORKLOADS = ["schema", "libvirt-7.2.0", "libvirt-7.2.0-compact", "big-64KiB", "events-1000"]


@pytest.mark.parametrize("variant", ["none", "portable", "sse2", "avx2"])
@pytest.mark.parametrize("name", SCAN_WORKLOADS)
def test_scan_variant(benchmark, name, variant):
    if variant not in contenders.scan_variants():
        pytest.skip(f"block scan {variant} not available here")
    cls = contenders.framer_classes()["cython"]
    wl = workload(name)
    benchmark.group = f"{wl.title}: raw framing by block scan"
    benchmark.extra_info.update(bytes=wl.nbytes, frames=wl.nframes, reads=len(wl.chunks))
    run = contenders.with_scan(variant, contenders.prepare(contenders.framer, wl, cls, raw=True))
    assert benchmark(run) == wl.nframes
