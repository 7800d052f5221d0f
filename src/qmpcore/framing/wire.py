"""Wire-level pieces shared by both framers: SYNC, encode, frame decoding."""

from __future__ import annotations

import re
from typing import Any

import orjson

from .qemu_json import ParseError, display, parse, transcode

__all__ = ["SYNC", "PendingFrame", "NOT_YET", "encode", "decode_frame", "stray_reason", "ParseError"]

#: FrameError reasons for the limits, in QEMU's words.
TOO_BIG = "JSON token size limit exceeded"
TOO_DEEP = "JSON nesting depth limit exceeded"
TOO_MANY = "JSON token count limit exceeded"


class _Sync:
    """Type of :data:`SYNC`; there is exactly one instance."""

    __slots__ = ()
    _instance = None

    def __new__(cls) -> _Sync:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "SYNC"

    def __reduce__(self) -> str:
        return "SYNC"


#: Item a framer yields for a 0xFF byte on the stream (QGA's resync marker).
SYNC = _Sync()

#: What a :class:`PendingFrame`'s step function returns until it is done.
NOT_YET: Any = object()


class PendingFrame:
    """A complete frame larger than the framer's ``defer`` size, in the
    place of its value: decoded a slice at a time, so that one large frame
    never holds an event loop for longer than a slice takes.

    Call :meth:`step` until it returns True; :attr:`result` is then what
    ``feed()`` would have returned in its place (the value, or a
    :class:`~qmpcore.errors.FrameError`).  The items after it in the same
    list come after it on the stream.
    """

    __slots__ = ("offset", "nbytes", "result", "steps", "_next")

    def __init__(self, next_step: Any, offset: int, nbytes: int) -> None:
        self._next = next_step  # () -> NOT_YET, or the result
        #: Stream offset and size of the frame.
        self.offset = offset
        self.nbytes = nbytes
        #: Steps taken so far.
        self.steps = 0
        self.result: Any = NOT_YET

    @property
    def done(self) -> bool:
        """Has the last step been taken?"""
        return self.result is not NOT_YET

    def step(self) -> bool:
        """Decode one more slice; True when :attr:`result` is ready."""
        if self.result is NOT_YET:
            self.steps += 1
            result = self._next()
            if result is NOT_YET:
                return False
            self.result = result
            self._next = None
        return True

    def finish(self) -> Any:
        """Take every remaining step at once; the result."""
        while not self.step():
            pass
        return self.result

    def __repr__(self) -> str:
        state = "done" if self.done else f"{self.steps} steps"
        return f"<PendingFrame of {self.nbytes} bytes at {self.offset}, {state}>"


_loads = orjson.loads
_dumps = orjson.dumps
_CRLF = b"\r\n"
# orjson turns integers outside [-2**63, 2**64) into floats; any run of 19
# digits might be one, so such frames take the exact path.
_DIGITS_ONLY = bytes(0x30 if 0x30 <= c <= 0x39 else 0x20 for c in range(256))
_NINETEEN = b"0" * 19


_ZERO_EXPONENT = re.compile(rb"(?<![0-9])0[eE]")


def zero_exponent(frame: Any) -> bool:
    """Does ``frame`` hold a number like ``0e5``?  JSON reads one number;
    QEMU's lexer ends the number at the ``e`` (a match inside a string is a
    harmless false alarm: the exact path decodes it the same)."""
    frame = bytes(frame)
    return (b"0e" in frame or b"0E" in frame) and _ZERO_EXPONENT.search(frame) is not None


def long_digits(frame: Any) -> bool:
    """True if ``frame`` holds a run of 19 or more digits."""
    return _NINETEEN in bytes(frame).translate(_DIGITS_ONLY)


def encode(obj: Any) -> bytes:
    """Encode ``obj`` as one compact JSON frame ending in CRLF."""
    return _dumps(obj) + _CRLF


def stray_reason(token: bytes | bytearray) -> str:
    """QEMU's message for a lexical error; ``token`` ends with the bad byte."""
    return f"JSON parse error, stray '{display(bytes(token))}'"


def _entries(value: Any) -> int:
    """Number of object members in ``value``, at any depth."""
    count = 0
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, dict):
            count += len(v)
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)
    return count


def decode_frame(frame: Any, strict: bool = False, hint_slow: bool = False) -> Any:
    """Decode one complete frame; raise :class:`ParseError` with QEMU's words.

    orjson decodes everything it can; the exact QEMU-dialect parser takes
    the rest (single quotes, ``inf``/``nan``, huge integers, modified UTF-8,
    errors).  Every path gives the same value for the same frame, so callers
    may route frames by cheap hints (``hint_slow``) without changing results.
    """
    if hint_slow or b"'" in frame:
        frame = bytes(frame)
        try:
            value = _loads(transcode(frame))
        except orjson.JSONDecodeError:
            return parse(frame, strict)
    else:
        try:
            value = _loads(frame)
        except orjson.JSONDecodeError:
            return parse(bytes(frame), strict)
    if long_digits(frame) or zero_exponent(frame):
        return parse(bytes(frame), strict)
    if strict:
        frame = bytes(frame)
        # QEMU rejects noncharacters and duplicate keys, orjson does not.
        if not frame.isascii() or b"\\" in frame or frame.count(b":") != _entries(value):
            return parse(frame, strict)
    return value
