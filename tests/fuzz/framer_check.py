"""Differential check of the two framers on one fuzz input.

An input is a small header followed by the stream bytes::

    byte 0      flags: bit0 strict, bit1 raw, bit2 small limits,
                bits 3-4 how chunks are passed (bytes/bytearray/memoryview/mixed),
                bit5 reset both framers half-way through,
                bit6 also pass a bad argument (str, int) between chunks
    bytes 1-3   small limits (used with bit2): frame size, depth, tokens
    byte 4      number of chunk lengths that follow (mod 16)
    ...         that many chunk lengths (0-255; reused cyclically)
    rest        the stream

Both implementations are fed the same chunks.  The check fails on any
exception (but the ``TypeError`` a bad argument must raise, leaving the
framer as it was), any difference in the items or in ``buffered``, ``buffered``
above ``max_frame_size`` plus the current chunk, or (without a reset)
items that depend on how the stream was split (once the runs of errors
that a split cut in two are joined again, see ``qmpcore.framing.rules``),
or work beyond :data:`WORK_PER_BYTE` per byte (see :func:`check_work`).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

from qmpcore.errors import FrameError
from qmpcore.framing import _framer
from qmpcore.framing import pure as _framer_py
from qmpcore.framing.rules import coalesce
from qmpcore.framing.wire import SYNC

__all__ = ["Config", "parse_input", "make_input", "check", "canonical"]

HEADER = 5
#: Linear time, checked on every input: the pure twin's work counter (bytes
#: examined by its scans, copies and decodes; the compiled framer runs the
#: same algorithm) may grow by at most this much per byte and per feed().
WORK_PER_BYTE = 16
WORK_PER_FEED = 8
STRICT, RAW, SMALL, RESET, BAD_ARGS = 0x01, 0x02, 0x04, 0x20, 0x40
_VIEWS = (bytes, bytearray, memoryview)


class Config(NamedTuple):
    """What one fuzz input asks for."""

    kwargs: dict
    views: int  # 0-2: one type for every chunk, 3: rotate
    reset: bool
    bad_args: bool
    splits: tuple[int, ...]
    stream: bytes

    def chunks(self) -> Iterator[Any]:
        """The stream, cut by the chunk lengths (cyclically), in the chosen types."""
        data = self.stream
        sizes = self.splits if any(self.splits) else (*self.splits, len(data) or 1)
        pos = i = 0
        while pos < len(data) or i == 0:
            size = sizes[i % len(sizes)]
            kind = _VIEWS[i % 3 if self.views == 3 else self.views]
            yield kind(data[pos : pos + size])
            pos += size
            i += 1


def parse_input(data: bytes) -> Config:
    """Decode the header of a fuzz input (short inputs get zero padding)."""
    head = data[:HEADER].ljust(HEADER, b"\0")
    flags = head[0]
    kwargs: dict = {"strict": bool(flags & STRICT), "raw": bool(flags & RAW)}
    if flags & SMALL:
        kwargs.update(max_frame_size=1 + head[1] * 4, max_depth=1 + head[2] % 16, max_tokens=1 + head[3])
    count = head[4] % 16
    splits = tuple(data[HEADER : HEADER + count])
    return Config(kwargs, (flags >> 3) & 3, bool(flags & RESET), bool(flags & BAD_ARGS), splits, data[HEADER + count :])


def make_input(
    stream: bytes, *, flags: int = 0, limits: Sequence[int] = (0, 0, 0), splits: Sequence[int] = ()
) -> bytes:
    """Build a fuzz input (used for seeds and regression files)."""
    return bytes([flags, *limits, len(splits)]) + bytes(splits) + stream


def canonical(items: list[Any]) -> list[Any]:
    """A flat, exactly comparable form of framer output.

    Unlike ``==`` it tells 1 from 1.0 and True, matches NaN with NaN, and
    unlike ``repr`` it copes with deep nesting and huge integers.
    """
    out: list[Any] = []
    stack: list[Any] = list(reversed(items))
    while stack:
        x = stack.pop()
        t = type(x)
        if t is dict:
            out.append(("dict", len(x)))
            for k, v in reversed(list(x.items())):
                stack.append(v)
                stack.append(k)
        elif t is list:
            out.append(("list", len(x)))
            stack.extend(reversed(x))
        elif t is float:
            out.append(("float", "nan" if math.isnan(x) else x.hex()))
        elif t is int:
            out.append(("int", hex(x)))
        elif t is FrameError:
            out.append(("error", x.reason, x.offset, x.sync, x.count, x.nbytes))
        elif x is SYNC:
            out.append(("sync",))
        elif t in (str, bytes, bool) or x is None:
            out.append((t.__name__, x))
        else:
            raise AssertionError(f"unexpected item type {t.__name__}")
    return out


def _describe(cfg: Config) -> str:
    return f"kwargs={cfg.kwargs} splits={cfg.splits} views={cfg.views} reset={cfg.reset} stream={cfg.stream[:200]!r}"


def _feed_bad_arguments(framers: Sequence[Any]) -> None:
    """Anything but bytes-like data is a TypeError and changes nothing."""
    for framer in framers:
        before = framer.buffered
        for bad in ("{}", 7, None, [1]):
            try:
                framer.feed(bad)
            except TypeError:
                pass
            else:
                raise AssertionError(f"{type(framer).__module__}: feed({bad!r}) did not raise TypeError")
        if framer.buffered != before:
            raise AssertionError(f"{type(framer).__module__}: a rejected argument changed buffered")


def check_work(framer: Any, nbytes: int, feeds: int, cfg: Config | None = None) -> None:
    """Fail when the pure framer examined more than a fixed amount per byte."""
    budget = WORK_PER_BYTE * nbytes + WORK_PER_FEED * feeds
    if framer._work > budget:
        where = _describe(cfg) if cfg is not None else ""
        raise AssertionError(f"work {framer._work} > {budget} for {nbytes} bytes in {feeds} feeds\n{where}")


def check(data: bytes) -> None:
    """Run one fuzz input; raise AssertionError when the framers misbehave."""
    cfg = parse_input(data)
    framers = (_framer.Framer(**cfg.kwargs), _framer_py.Framer(**cfg.kwargs))
    limit = framers[0].max_frame_size
    chunks = list(cfg.chunks())
    reset_at = len(chunks) // 2 if cfg.reset else -1
    total: list[Any] = []  # items of every chunk, as returned
    for index, chunk in enumerate(chunks):
        if cfg.bad_args:
            _feed_bad_arguments(framers)
        c_items = framers[0].feed(chunk)
        py_items = framers[1].feed(chunk)
        got_c, got_py = canonical(c_items), canonical(py_items)
        if got_c != got_py:
            raise AssertionError(
                f"items differ at chunk {index}:\n  cython {c_items!r:.2000}\n  python {py_items!r:.2000}\n{_describe(cfg)}"
            )
        sizes = [f.buffered for f in framers]
        if sizes[0] != sizes[1]:
            raise AssertionError(
                f"buffered differs at chunk {index}: cython {sizes[0]}, python {sizes[1]}\n{_describe(cfg)}"
            )
        if sizes[0] > limit + len(chunk):
            raise AssertionError(f"buffered {sizes[0]} > limit {limit} + chunk {len(chunk)}\n{_describe(cfg)}")
        total += c_items
        if index == reset_at:
            for f in framers:
                f.reset()
                if f.buffered:
                    raise AssertionError("buffered is not 0 after reset()")
    check_work(framers[1], len(cfg.stream), len(chunks), cfg)
    if reset_at < 0 and len(chunks) > 1:
        whole = canonical(_framer.Framer(**cfg.kwargs).feed(cfg.stream))  # equal to the pure one, checked above
        if whole != canonical(coalesce(total, cfg.kwargs["strict"])):
            raise AssertionError(f"items depend on how the stream is split\n{_describe(cfg)}")
