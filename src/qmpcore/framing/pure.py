"""Pure-Python framer: the readable specification of qmpcore's framing.

The compiled framer (``src/_framer.pyx``) implements exactly this algorithm
in C and must produce the same items for any input, however it is split.

Framing follows QEMU 7.2's JSON lexer and message splitter
(``qobject/json-lexer.c``, ``json-streamer.c``):

* Tokens: whitespace (space, tab, CR, LF) separates them; ``{ } [ ] : ,``
  are one byte each; strings are double- or single-quoted, any byte
  0x20-0xFD is literal inside them and ``\\`` takes any such byte after it;
  numbers are ``-?(0|[1-9][0-9]*)(\\.[0-9]+)?([eE][-+]?[0-9]+)?``; keywords
  are ``[a-z]+`` (unless ``strict``, qmpcore also takes ``-`` before a
  keyword, so QEMU's output ``-inf`` and ``-nan`` frames).  A number or keyword ends at the first byte
  that cannot continue it, which is then lexed afresh.
* Any other byte, a byte below 0x20 in a string, or 0xFE/0xFF is a lexical
  error: the partial frame is dropped, one ``FrameError`` (``stray '...'``)
  is produced, and bytes are skipped (quotes are *not* honoured) up to the
  next ``{ } [ ] : ,``, control byte other than tab, or 0xFE/0xFF.
  A 0xFF yields :data:`SYNC` instead of the error (``strict`` framers yield
  both, so a server can answer it exactly as QEMU does).
* Consecutive errors are reported as one ``FrameError`` with a ``count``
  (in ``strict`` mode only those QEMU answers identically; see
  :mod:`qmpcore.framing.rules`, which also states the byte classes and the
  one-line shortcut both framers use).
* ``{``/``}`` and ``[``/``]`` are counted separately; after each token, when
  both counts are zero or either is negative, the tokens since the frame
  started are one frame.  A scalar at top level is a frame of its own.
* Limits are checked while scanning.  A frame over ``max_frame_size`` bytes,
  deeper than ``max_depth`` or longer than ``max_tokens`` tokens yields one
  ``FrameError``; the rest of it is lexed but not kept, so memory stays
  bounded, and framing resumes where the frame ends.  A lexical error ends
  such a discarded frame silently.

Complete frames are decoded by :func:`qmpcore.framing.wire.decode_frame` (orjson,
with QEMU's dialect as the fallback) unless ``raw`` is set.  After a large
frame the buffer is given back (``capacity`` tells what is allocated).
With ``defer`` set, a complete frame over that many bytes comes out as a
:class:`~qmpcore.framing.wire.PendingFrame` whose steps decode it (client
and server roles).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import partial
from typing import Any

import orjson

from ..errors import FrameError
from . import rules
from .rules import push
from .wire import SYNC, TOO_BIG, TOO_DEEP, TOO_MANY, ParseError, PendingFrame, decode_frame
from .wire import stray_reason as _stray

__all__ = ["Framer"]

# Lexer states.
START = 0
DQ = 1
DQ_ESC = 2
SQ = 3
SQ_ESC = 4
ZERO = 5
DIGITS = 6
SIGN = 7
MANT = 8
MANT_DIGITS = 9
EXP_E = 10
EXP_SIGN = 11
EXP_DIGITS = 12
KEYWORD = 13
RECOVERY = 14

_CLASS = rules.BYTE_CLASS
_WS = rules.run_pattern(bytes(int(k == rules.C_WS) for k in _CLASS))
_DQ_RUN = rules.run_pattern(rules.DQ_PLAIN)
_SQ_RUN = rules.run_pattern(rules.SQ_PLAIN)
_DIGIT_RUN = re.compile(rb"[0-9]*")
_KEYWORD_RUN = rules.run_pattern(bytes(int(k == rules.C_LOWER) for k in _CLASS))
_RECOVERY_RUN = rules.run_pattern(rules.RECOVER_SKIP)

_OPEN = frozenset(b"{[")
_DIGIT = frozenset(b"0123456789")
_VALUE_STATES = frozenset(range(DQ, KEYWORD + 1))
_LIMITS = frozenset((TOO_BIG, TOO_DEEP, TOO_MANY))
_EXPECTING = "JSON parse error, expecting value"


def _envelope_error(frame: bytes, value: dict[str, Any], envelope: tuple[str, str, tuple[str, ...]]) -> str | None:
    """The server's words for the object ``value`` decoded from ``frame``
    when they need no state (see :meth:`Framer.answer_errors`), or None."""
    if len(value) > 1 or not frame.isascii():
        return None
    stack: list[Any] = [value]
    while stack:  # no object in it may have two members
        item = stack.pop()
        if type(item) is dict:
            if len(item) > 1:
                return None
            stack.extend(item.values())
        elif type(item) is list:
            stack.extend(item)
    if not value:
        return envelope[0]
    head = frame.lstrip()[1:].lstrip()
    name = head[1 : head.index(head[:1], 1)]  # (as written: no escape in it)
    if b"\\" in name or name.decode("ascii") in envelope[2]:
        return None
    return envelope[1].replace("{}", name.decode("ascii"))


def _decoded(frame: bytes, offset: int, strict: bool) -> Any:
    """The item a complete frame makes: its value, or a FrameError."""
    try:
        return decode_frame(frame, strict)
    except ParseError as exc:
        return FrameError(exc.args[0], offset, nbytes=len(frame))


class Framer:
    """Split a byte stream into QMP frames and decode them.

    ``feed(data)`` takes ``bytes``, ``bytearray`` or ``memoryview`` and returns
    the list of items completed so far: decoded values, :data:`SYNC` for a
    0xFF byte, or :class:`FrameError` instances (returned, never raised).

    ``_work`` counts the bytes every step examines (scans, copies, decodes):
    the fuzz targets check that it stays within a fixed multiple of the
    bytes fed, i.e. that no input makes the algorithm rescan.
    """

    __slots__ = (
        "max_frame_size",
        "max_depth",
        "max_tokens",
        "raw",
        "strict",
        "defer",
        "defer_step",
        "_buf",
        "_base",
        "_pos",
        "_state",
        "_in_frame",
        "_start",
        "_tok",
        "_brace",
        "_bracket",
        "_ntok",
        "_skip",
        "_nofast",
        "_work",
        "_answers",
    )

    # Lexer state, set by _clear(): which state, inside a frame or not.
    _state: int
    _in_frame: bool

    def __init__(
        self,
        max_frame_size: int = 64 << 20,
        max_depth: int = 1024,
        *,
        max_tokens: int = 2 << 20,
        raw: bool = False,
        strict: bool = False,
        defer: int = 0,
    ) -> None:
        if max_frame_size < 1 or max_depth < 1 or max_tokens < 1:
            raise ValueError("limits must be positive")
        if defer < 0:
            raise ValueError("defer must be 0 (off) or a size in bytes")
        self.max_frame_size = int(max_frame_size)
        self.max_depth = int(max_depth)
        self.max_tokens = int(max_tokens)
        self.raw = bool(raw)
        self.strict = bool(strict)
        #: Frames over this many bytes come out as PendingFrame (0: never).
        self.defer = int(defer)
        #: Bytes decoded per PendingFrame step.
        self.defer_step = rules.DEFER_STEP
        self._buf = bytearray()
        self._base = 0
        self._pos = 0
        self._nofast = -1
        self._work = 0
        self._answers: tuple[bytes, bytes, str | None, tuple[str, str, tuple[str, ...]] | None] | None = None
        self._clear(START)

    # -- public ---------------------------------------------------------

    @property
    def buffered(self) -> int:
        """Bytes held for an unfinished frame."""
        return len(self._buf)

    @property
    def capacity(self) -> int:
        """Bytes allocated for the buffer (given back after a large frame)."""
        return self._buf.__alloc__()

    def reset(self) -> None:
        """Forget any partial frame and start afresh (offsets keep counting)."""
        self._base += len(self._buf)
        self._buf = bytearray()
        self._pos = 0
        self._nofast = -1
        self._clear(START)

    def answer_errors(
        self,
        prefix: bytes,
        suffix: bytes,
        not_object: str | None = None,
        envelope: tuple[str, str, Sequence[str]] | None = None,
    ) -> None:
        """Strict mode: report errors as :class:`~qmpcore.framing.rules.Answers`
        items, the replies a server owes for them (``prefix``, the reason as
        JSON text, ``suffix``).  Errors of the limits stay
        :class:`FrameError` items; no ``SYNC`` items.

        Valid frames are answered so too, with the server's words, when
        their answer needs no state: with ``not_object``, any frame that is
        not a JSON object; with ``envelope`` = (words for an object without
        members, words with ``{}`` standing for the name of an unexpected
        member, names that are not unexpected), an object that has no
        member, or one member whose name is not one of those (when the
        frame is ASCII, no object in it has two members, and the name is
        written without escapes: else the frame is output for the server).
        A frame over ``defer`` bytes is not answered so: its
        :class:`~qmpcore.framing.wire.PendingFrame` gives the value (or the
        :class:`FrameError`), and the server answers it.
        """
        if not self.strict:
            raise ValueError("answer_errors() is for strict (server) framers")
        if envelope is not None:
            envelope = (str(envelope[0]), str(envelope[1]), tuple(map(str, envelope[2])))
            if envelope[1].count("{}") != 1 or not all(name.isascii() for name in envelope[2]):
                raise ValueError("envelope: (words for {}, words with {} for the member's name, known names)")
        self._answers = (bytes(prefix), bytes(suffix), None if not_object is None else str(not_object), envelope)

    def feed(self, data: Any) -> list[Any]:
        """Add bytes from the stream; return the items they complete."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"Framer.feed() takes bytes, bytearray or memoryview, not {type(data).__name__}")
        out: list[Any] = []
        buf = self._buf
        if not buf and self._state == START and not self._in_frame and not self.raw and not self.strict:
            # The usual case: one whole reply or event in one read.  (Inside
            # a frame being skipped for a limit nothing is held either.)
            if type(data) is bytes and data[-1:] == b"\n" and data.find(b"\n", 0, -1) < 0:
                self._work += len(data)
                buf += data
                if self._fast_line(buf, 0, out):
                    self._base += len(buf)
                    self._nofast = -1
                    buf.clear()
                    return out
                buf.clear()
        buf += data
        n = len(buf)
        pos = self._pos
        self._work += len(data)
        while pos < n:
            self._work += 1
            state = self._state
            c = buf[pos]
            if state == START:
                cls = _CLASS[c]
                if cls == rules.C_WS:
                    pos = self._run(_WS, buf, pos)
                    continue
                if not self._in_frame and pos > self._nofast and not (self.raw or self.strict):
                    nxt = self._fast_line(buf, pos, out)
                    if nxt:
                        pos = nxt
                        continue
                if cls == rules.C_STRUCT:
                    if c not in _OPEN and not self._in_frame and not self.raw:
                        # A lone , : ] or }: a frame of its own, which QEMU's
                        # parser refuses without looking further.
                        self._work += 1
                        self._push(out, FrameError(_EXPECTING, self._base + pos, nbytes=1))
                    else:
                        self._begin(pos)
                        self._token_done(pos + 1, c, out)
                    pos += 1
                elif c == 0x22:  # "
                    self._begin(pos)
                    self._state = DQ
                    pos += 1
                elif c == 0x27:  # '
                    self._begin(pos)
                    self._state = SQ
                    pos += 1
                elif c == 0x30:  # 0
                    self._begin(pos)
                    self._state = ZERO
                    pos += 1
                elif cls == rules.C_DIGIT:
                    self._begin(pos)
                    self._state = DIGITS
                    pos += 1
                elif c == 0x2D:  # -
                    self._begin(pos)
                    self._state = SIGN
                    pos += 1
                elif cls == rules.C_LOWER:
                    self._begin(pos)
                    self._state = KEYWORD
                    pos += 1
                else:
                    self._error(pos, out)
                    pos += 1
            elif state == DQ or state == SQ:
                pos = self._run(_DQ_RUN if state == DQ else _SQ_RUN, buf, pos)
                if pos >= n:
                    break
                c = buf[pos]
                if c == 0x5C:  # backslash
                    self._state = state + 1  # DQ_ESC / SQ_ESC
                    pos += 1
                elif c == (0x22 if state == DQ else 0x27):
                    self._state = START
                    self._token_done(pos + 1, c, out)
                    pos += 1
                else:  # control byte, 0xFE or 0xFF
                    self._error(pos, out)
                    pos += 1
            elif state == DQ_ESC or state == SQ_ESC:
                if 0x20 <= c <= 0xFD:
                    self._state = state - 1
                    pos += 1
                else:
                    self._error(pos, out)
                    pos += 1
            elif state == RECOVERY:
                pos = self._run(_RECOVERY_RUN, buf, pos)
                if pos < n:
                    self._state = START
            else:
                pos = self._number_or_keyword(buf, pos, n, state, out)
        self._pos = pos
        self._compact(out)
        return out

    # -- scanning -------------------------------------------------------

    def _run(self, pattern: re.Pattern[bytes], buf: bytearray, pos: int) -> int:
        """The end of the run ``pattern`` matches at ``pos``."""
        end = pattern.match(buf, pos).end()  # type: ignore[union-attr]
        self._work += end - pos
        return end

    def _number_or_keyword(self, buf: bytearray, pos: int, n: int, state: int, out: list[Any]) -> int:
        c = buf[pos]
        if state == KEYWORD:
            pos = self._run(_KEYWORD_RUN, buf, pos)
            if pos < n:
                self._end_value(pos, out)
            return pos
        if state in (DIGITS, MANT_DIGITS, EXP_DIGITS):
            pos = self._run(_DIGIT_RUN, buf, pos)
            if pos >= n:
                return pos
            c = buf[pos]
            if state != EXP_DIGITS and c in b"eE":
                self._state = EXP_E
            elif state == DIGITS and c == 0x2E:  # .
                self._state = MANT
            else:
                self._end_value(pos, out)
                return pos
            return pos + 1
        if state == ZERO:
            if c == 0x2E:
                self._state = MANT
            elif c in _DIGIT:
                self._error(pos, out)
            else:
                self._end_value(pos, out)
                return pos
            return pos + 1
        if state == SIGN:
            if c == 0x30:
                self._state = ZERO
            elif c in _DIGIT:
                self._state = DIGITS
            elif _CLASS[c] == rules.C_LOWER and not self.strict:  # QEMU's output: -inf, -nan
                self._state = KEYWORD
            else:
                self._error(pos, out)
            return pos + 1
        if state == MANT or state == EXP_SIGN:
            if c in _DIGIT:
                self._state = MANT_DIGITS if state == MANT else EXP_DIGITS
            else:
                self._error(pos, out)
            return pos + 1
        # EXP_E
        if c in b"+-":
            self._state = EXP_SIGN
        elif c in _DIGIT:
            self._state = EXP_DIGITS
        else:
            self._error(pos, out)
        return pos + 1

    def _fast_line(self, buf: bytearray, pos: int, out: list[Any]) -> int:
        """Decode a whole line at once when it holds exactly one frame.

        This is only a shortcut: it accepts a line only when orjson decodes
        it as one value that the lexer would frame identically (within the
        limits, nothing for the exact path).  Returns the position after
        the line, or 0.
        """
        nl = buf.find(b"\n", pos)
        self._work += (nl if nl >= 0 else len(buf)) - pos + 1
        if nl < 0:
            self._nofast = len(buf) - 1  # no line ends in what is held: not before more comes
            return 0
        self._nofast = nl  # whatever happens, do not try this line again
        seg = bytes(buf[pos : nl + 1])
        if len(seg) > self.max_frame_size or len(seg) > self.max_tokens or (self.defer and len(seg) > self.defer):
            return 0
        self._work += 3 * len(seg)  # orjson, plain_line's passes
        try:
            value = orjson.loads(seg)
        except orjson.JSONDecodeError:
            return 0
        if not rules.plain_line(seg, self.max_depth):
            return 0
        out.append(value)
        return nl + 1

    # -- tokens and frames ----------------------------------------------

    def _clear(self, state: int) -> None:
        self._state = state
        self._in_frame = False
        self._skip = False
        self._start = 0
        self._tok = 0
        self._brace = 0
        self._bracket = 0
        self._ntok = 0

    def _begin(self, pos: int) -> None:
        self._tok = pos
        if not self._in_frame:
            self._in_frame = True
            self._start = pos

    def _end_value(self, end: int, out: list[Any]) -> None:
        """A number or keyword ended at ``end`` (that byte is lexed again)."""
        self._state = START
        self._token_done(end, 0, out)

    def _limit(self, reason: str, offset: int, out: list[Any]) -> None:
        self._push(out, FrameError(reason, offset))
        self._skip = True

    def _token_done(self, end: int, c: int, out: list[Any]) -> None:
        """A token ended at ``end``; ``c`` is its byte if structural."""
        if not self._skip and end - self._start > self.max_frame_size:
            self._limit(TOO_BIG, self._base + self._start + self.max_frame_size, out)
        if c == 0x7B:
            self._brace += 1
        elif c == 0x7D:
            self._brace -= 1
        elif c == 0x5B:
            self._bracket += 1
        elif c == 0x5D:
            self._bracket -= 1
        if not self._skip:
            if c in _OPEN and self._brace + self._bracket > self.max_depth:
                self._limit(TOO_DEEP, self._base + end - 1, out)
            else:
                self._ntok += 1
                if self._ntok > self.max_tokens:
                    self._limit(TOO_MANY, self._base + self._tok, out)
        brace, bracket = self._brace, self._bracket
        if brace < 0 or bracket < 0 or (brace == 0 and bracket == 0):
            if not self._skip:
                self._emit(self._buf[self._start : end], out)
            self._clear(START)

    def _emit(self, frame: bytearray, out: list[Any]) -> None:
        self._work += len(frame)
        if self.raw:
            out.append(bytes(frame))
            return
        offset = self._base + self._start
        if self.defer and len(frame) > self.defer:
            # (decoded at the first step here: this twin is about behaviour;
            # answering errors too, the result is the value, not its answer)
            out.append(PendingFrame(partial(_decoded, bytes(frame), offset, self.strict), offset, len(frame)))
            return
        value = _decoded(bytes(frame), offset, self.strict)
        if type(value) is not FrameError:
            answers = self._answers
            reason = None
            if answers is None:
                pass
            elif type(value) is not dict:
                reason = answers[2]
            elif answers[3] is not None:
                reason = _envelope_error(bytes(frame), value, answers[3])
            if reason is not None:
                value = FrameError(reason, offset, nbytes=len(frame))
        self._push(out, value)

    def _error(self, pos: int, out: list[Any]) -> None:
        """Lexical error at ``pos`` (that byte is consumed)."""
        buf = self._buf
        if self._in_frame and not self._skip and pos + 1 - self._start > self.max_frame_size:
            self._limit(TOO_BIG, self._base + self._start + self.max_frame_size, out)
        if self._skip:
            token = buf[pos : pos + 1]
        elif self._state in _VALUE_STATES:
            token = buf[self._tok : pos + 1]
        else:
            token = buf[pos : pos + 1]
        self._work += len(token)
        if buf[pos] == 0xFF:
            if self.strict:
                self._push(out, FrameError(_stray(token), self._base + pos, sync=True))
            self._push(out, SYNC)
        elif not self._skip:
            self._push(out, FrameError(_stray(token), self._base + pos))
        self._clear(RECOVERY)

    def _push(self, out: list[Any], item: Any) -> None:
        """Output an item: :func:`~qmpcore.framing.rules.push`, or, when
        answering errors, one more error of the run's Answers."""
        answers = self._answers
        if answers is None:
            push(out, item, self.strict)
        elif item is SYNC:
            return
        elif type(item) is FrameError and item.reason not in _LIMITS:
            last = out[-1] if out else None
            if type(last) is not rules.Answers:
                last = rules.Answers(answers[0], answers[1], item.offset)
                out.append(last)
            last.add(item.reason, item.offset + item.nbytes)
        else:
            out.append(item)

    def _compact(self, out: list[Any]) -> None:
        """Drop bytes no unfinished frame needs; check the size limit."""
        buf = self._buf
        n = len(buf)
        if self._in_frame and not self._skip:
            if n - self._start > self.max_frame_size:
                # The frame outgrew the limit inside this chunk: report it at
                # the same offset as if the whole stream had come at once.
                self._limit(TOO_BIG, self._base + self._start + self.max_frame_size, out)
                keep = n
            else:
                keep = self._start
        else:
            keep = n
        if keep:
            if keep == n:
                self._buf = bytearray()  # give the memory back
            else:
                self._work += n - keep
                del buf[:keep]
                if buf.__alloc__() > rules.SHRINK_RATIO * max(len(buf), rules.MIN_CAPACITY):
                    self._buf = bytearray(buf)
            self._base += keep
            self._pos -= keep
            self._start -= keep
            self._tok -= keep
            self._nofast -= keep
