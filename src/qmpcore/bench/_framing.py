"""The framing contenders: qmpcore's framers and the baselines they face.

Each factory takes a :class:`~qmpcore.bench._workloads.Workload` and returns
a zero-argument function that processes the whole workload once and returns
the number of messages it produced; everything that is not the work being
measured (building inputs, an event loop) happens in the factory.  A
contender that cannot process a workload raises :class:`NotApplicable` with
the reason, which reports print in its place.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import orjson

from ..errors import FrameError
from ..framing import SYNC
from ._report import QEMU_QMP_MISSING
from ._workloads import Workload

__all__ = [
    "Run",
    "NotApplicable",
    "framer",
    "orjson_floor",
    "json_presplit",
    "lines_json",
    "qemu_qmp_recv",
    "framer_classes",
    "scan_variants",
    "with_scan",
    "BASELINES",
    "prepare",
    "contender_runs",
]

Run = Callable[[], int]

#: qemu.qmp's reader limit (``QMPClient._limit``): longer lines fail.
QEMU_QMP_LIMIT = 10 << 20


class NotApplicable(Exception):
    """This contender cannot process this workload; the message says why."""


def framer_classes() -> dict[str, type]:
    """The live framer first (``cython`` unless disabled or not built), then ``python``."""
    from ..framing import Framer, implementation, pure

    classes: dict[str, type] = {implementation: Framer}
    classes["python"] = pure.Framer
    return classes


def scan_variants() -> list[str]:
    """The compiled framer's block scans this CPU runs (``none``: its byte
    loops alone, ``portable``, ``sse2``, ``avx2``); empty without it."""
    from ..framing import implementation

    if implementation != "cython":
        return []
    from ..framing import _framer

    best = _framer._scan_impl()
    try:
        return [name for name in ("none", "portable", "sse2", "avx2") if _framer._scan_impl(name) == name]
    finally:
        _framer._scan_impl(best)


def with_scan(variant: str, run: Run) -> Run:
    """``run`` with the compiled framer's block scan set to ``variant`` while it runs."""
    from ..framing import _framer

    def scanned() -> int:
        best = _framer._scan_impl()
        _framer._scan_impl(variant)
        try:
            return run()
        finally:
            _framer._scan_impl(best)

    return scanned


def framer(workload: Workload, cls: type, *, raw: bool = False) -> Run:
    """qmpcore: feed every chunk to one fresh framer.

    Raises :class:`NotApplicable` if the framer reports an error for the
    workload (such as a limit), since it would then not do the same work;
    in a ``hostile`` workload errors are expected and only values count.
    """
    chunks = workload.chunks
    if workload.hostile:
        if raw:
            raise NotApplicable("raw framers return stray , ] } : as frames")

        def run_hostile() -> int:
            feed = cls().feed
            count = 0
            for chunk in chunks:
                for item in feed(chunk):
                    count += not isinstance(item, FrameError) and item is not SYNC
            return count

        return run_hostile
    check = cls(raw=raw).feed
    for chunk in chunks:
        for item in check(chunk):
            if isinstance(item, FrameError):
                raise NotApplicable(f"framer error: {item}")

    def run() -> int:
        feed = cls(raw=raw).feed
        count = 0
        for chunk in chunks:
            count += len(feed(chunk))
        return count

    return run


def _require_json(workload: Workload) -> None:
    if workload.hostile:
        raise NotApplicable("garbage in the stream: baselines take pre-split JSON")


def orjson_floor(workload: Workload) -> Run:
    """The floor: ``orjson.loads`` on frames someone else already split."""
    _require_json(workload)
    frames = workload.frames
    loads = orjson.loads

    def run() -> int:
        return len([loads(f) for f in frames])

    return run


def json_presplit(workload: Workload) -> Run:
    """``json.loads`` on pre-split frames (the standard library's decode cost)."""
    _require_json(workload)
    frames = workload.frames
    loads = json.loads

    def run() -> int:
        return len([loads(f) for f in frames])

    return run


def _require_lines(workload: Workload, who: str) -> None:
    _require_json(workload)
    if not workload.line_framed:
        raise NotApplicable(f"{who} cannot frame multi-line messages")


def lines_json(workload: Workload) -> Run:
    """What line-based clients do: split on LF as bytes arrive, ``json.loads`` each line.

    The search resumes where the last one stopped, so this baseline is
    linear in the bytes received, like a well-written ``readline``.
    """
    _require_lines(workload, "line splitting")
    chunks = workload.chunks
    loads = json.loads

    def run() -> int:
        buf = bytearray()
        out: list[Any] = []
        scanned = 0
        for chunk in chunks:
            buf += chunk
            start = 0
            end = buf.find(b"\n", scanned)
            while end >= 0:
                out.append(loads(buf[start : end + 1]))
                start = end + 1
                end = buf.find(b"\n", start)
            if start:
                del buf[:start]
            scanned = len(buf)
        return len(out)

    return run


def qemu_qmp_recv(workload: Workload) -> Run:
    """qemu.qmp's receive path: ``StreamReader.readline`` then ``Message(eager=True)``.

    The bytes are fed to a real :class:`asyncio.StreamReader` with
    qemu.qmp's limit, then read line by line exactly as ``QMPClient`` does.
    All data is present, so no read ever waits and the coroutine is driven
    directly, without the cost of an event loop turn being counted.
    """
    try:
        from qemu.qmp.message import Message
    except ImportError:
        raise NotApplicable(QEMU_QMP_MISSING) from None
    _require_lines(workload, "qemu.qmp")
    if max(len(f) for f in workload.frames) > QEMU_QMP_LIMIT:
        raise NotApplicable("over qemu.qmp's 10 MiB message limit")
    import asyncio
    import weakref

    chunks = workload.chunks
    loop = asyncio.new_event_loop()  # only to construct readers; never run

    async def drain(reader: asyncio.StreamReader) -> int:
        count = 0
        while True:
            line = await reader.readline()
            if not line:
                return count
            Message(line, eager=True)
            count += 1

    def run() -> int:
        reader = asyncio.StreamReader(limit=QEMU_QMP_LIMIT, loop=loop)
        for chunk in chunks:
            reader.feed_data(chunk)
        reader.feed_eof()
        coro = drain(reader)
        try:
            coro.send(None)
        except StopIteration as done:
            return int(done.value)
        coro.close()
        raise RuntimeError("StreamReader waited although all data was present")

    weakref.finalize(run, loop.close)  # the loop's self-pipe goes with the run
    return run


#: Baselines of the framing section, floor first: (name, factory).
BASELINES: dict[str, Callable[[Workload], Run]] = {
    "orjson": orjson_floor,
    "json": json_presplit,
    "lines+json": lines_json,
    "qemu.qmp": qemu_qmp_recv,
}


def prepare(factory: Callable[..., Run], workload: Workload, *args: Any, **kw: Any) -> Run:
    """Build a contender and run it once: a warm-up that also checks it works.

    Raises :class:`NotApplicable` when the factory declines or the run
    produces a different number of messages than the workload holds.
    """
    run = factory(workload, *args, **kw)
    try:
        count = run()
    except NotApplicable:
        raise
    except Exception as exc:  # a baseline that breaks is reported, not fatal
        raise NotApplicable(f"fails: {type(exc).__name__}: {str(exc)[:120]}") from exc
    if count != workload.nframes:
        raise NotApplicable(f"produced {count} messages, expected {workload.nframes}")
    return run


def contender_runs(workload: Workload, variants: dict[str, Callable[[Workload], Run]]) -> dict[str, Run | str]:
    """Prepare several contenders: each a ready run, or the reason it cannot run."""
    out: dict[str, Run | str] = {}
    for name, factory in variants.items():
        try:
            out[name] = prepare(factory, workload)
        except NotApplicable as why:
            out[name] = str(why)
    return out
