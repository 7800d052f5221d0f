"""The framers' rules, stated once: byte classes, shortcuts, joined errors.

Both framers take their byte tables and constants from this module (the
compiled one copies them into C arrays when it is imported), the pure twin
calls the functions below, and ``tests/test_framer_rules.py`` checks the
compiled framer's C versions against them.  Change a rule here and both
framers follow.

**Byte classes** (:data:`BYTE_CLASS`): how a byte starts a token in QEMU
7.2's lexer.  :data:`DQ_PLAIN` / :data:`SQ_PLAIN` hold the bytes that
continue a double / single-quoted string without ending it or starting an
escape; :data:`RECOVER_SKIP` the bytes skipped after a lexical error.

**The one-line shortcut** (:func:`plain_line`): when no frame is in progress
(and the framer is neither ``raw`` nor ``strict``), a whole line up to its
``\\n`` may go to ``orjson.loads`` at once, provided that it is at most
``max_frame_size`` bytes and ``max_tokens`` bytes long (a token is at least a
byte), orjson accepts it as one value, and :func:`plain_line` holds: nesting
within ``max_depth``, no run of :data:`LONG_INT` digits outside strings
(orjson may round such an integer), and no ``0e``/``0E`` starting a number
(JSON reads ``0e5`` as one number, QEMU's lexer as ``0`` then ``e5``).
Anything else is lexed byte by byte; the shortcut only ever saves time.

**Joined errors** (:func:`push`): consecutive errors become one
:class:`~qmpcore.errors.FrameError` with ``count`` and ``nbytes``:

* ``strict`` (server role): only errors QEMU would answer identically are
  joined, i.e. with the same ``reason`` and ``sync``; a server answers
  ``count`` times.  A run of 0xFF bytes gives one ``FrameError(sync=True,
  count=N)`` followed by one :data:`SYNC`.
* not ``strict`` (client role): any run of parse errors (lexical errors and
  undecodable frames) with nothing between them is one error carrying the
  first one's ``reason`` and ``offset``; and consecutive :data:`SYNC` items
  are one (a 0xFF run is one resynchronisation).
* Limit errors (size, depth, token count) are never joined.

**Answers** (:class:`Answers`): a strict framer told how its server words
an error reply (``Framer.answer_errors(prefix, suffix, not_object)``)
reports every run of errors, of any kinds, with nothing but errors between
them, as one :class:`Answers` item: the replies QEMU owes, one per error
(``prefix`` + the reason as QEMU's JSON text + ``suffix``), produced only
as the server takes them.  With ``not_object``, a frame that decodes to
anything but a JSON object is one more error with those words.  Limit
errors stay :class:`~qmpcore.errors.FrameError` items, and no :data:`SYNC`
is reported.  A run ends with the ``feed()`` that found it.

Joining happens within the items of one ``feed()``; items already returned
are never changed, so splitting a stream differently can only split a run:
:func:`coalesce` applied to the concatenated items of any split gives the
items of the whole stream fed at once.
"""

from __future__ import annotations

import re
from json.encoder import encode_basestring_ascii as _json_string
from typing import Any

from ..errors import FrameError
from .wire import SYNC, TOO_BIG, TOO_DEEP, TOO_MANY

__all__ = [
    "BYTE_CLASS",
    "DQ_PLAIN",
    "SQ_PLAIN",
    "RECOVER_SKIP",
    "LONG_INT",
    "EXACT_INT_MIN",
    "EXACT_INT_END",
    "exact_int",
    "WHOLE_SLACK",
    "MIN_CAPACITY",
    "SHRINK_RATIO",
    "DEFER_STEP",
    "DEFER_SIZE",
    "plain_line",
    "joinable",
    "push",
    "coalesce",
    "capacity_after",
    "qemu_string",
    "Answers",
]

# Byte classes (the compiled framer's C_* constants have these values).
C_OTHER = 0
C_WS = 1
C_STRUCT = 2
C_DQUOTE = 3
C_SQUOTE = 4
C_ZERO = 5
C_DIGIT = 6
C_MINUS = 7
C_LOWER = 8

WHITESPACE = b" \t\r\n"
STRUCTURAL = b"{}[]:,"

#: Integers with this many digits may be outside what orjson keeps exact
#: (it reads integers outside [-2**63, 2**64) as floats): such an integer
#: is checked against that range (:func:`exact_int`).
LONG_INT = 19
#: The range of integers orjson decodes exactly.
EXACT_INT_MIN = -(2**63)
EXACT_INT_END = 2**64
#: Whitespace around a lone frame that still lets the chunk go to orjson whole.
WHOLE_SLACK = 8
#: The compiled framer's smallest buffer, and how empty a larger one must be
#: before it gives memory back (see :func:`capacity_after`).
MIN_CAPACITY = 4096
SHRINK_RATIO = 4
#: Bytes a deferred frame (``Framer(defer=)``) is decoded by per step.
DEFER_STEP = 4 << 10
#: Frames over this many bytes are decoded a step at a time by the servers
#: of :mod:`qmpcore.server` and :mod:`qmpcore.proxy` (a read's worth or two:
#: QEMU's 207 KB schema is decoded at once).
DEFER_SIZE = 256 << 10


def _table(pick: Any) -> bytes:
    return bytes(pick(c) for c in range(256))


def _class_of(c: int) -> int:
    if c in WHITESPACE:
        return C_WS
    if c in STRUCTURAL:
        return C_STRUCT
    if c == 0x22:
        return C_DQUOTE
    if c == 0x27:
        return C_SQUOTE
    if c == 0x30:
        return C_ZERO
    if 0x31 <= c <= 0x39:
        return C_DIGIT
    if c == 0x2D:
        return C_MINUS
    if 0x61 <= c <= 0x7A:
        return C_LOWER
    return C_OTHER


#: What token a byte starts (``C_*`` values above).
BYTE_CLASS = _table(_class_of)
#: Bytes that continue a ``"..."`` string: 0x20-0xFD but ``"`` and ``\\``.
DQ_PLAIN = _table(lambda c: int(0x20 <= c <= 0xFD and c not in b'"\\'))
#: Bytes that continue a ``'...'`` string: 0x20-0xFD but ``'`` and ``\\``.
SQ_PLAIN = _table(lambda c: int(0x20 <= c <= 0xFD and c not in b"'\\"))
#: Bytes skipped after a lexical error: all but structural characters,
#: control bytes other than tab, and 0xFE/0xFF (quotes are not honoured).
RECOVER_SKIP = _table(lambda c: int((0x20 <= c <= 0xFD or c == 0x09) and c not in STRUCTURAL))


def run_pattern(table: bytes) -> re.Pattern[bytes]:
    """A regex matching a (possibly empty) run of the bytes ``table`` marks."""
    return re.compile(b"[" + b"".join(re.escape(bytes([c])) for c in range(256) if table[c]) + b"]*")


# -- the one-line shortcut ---------------------------------------------------

_STRINGS = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
# A whole run of LONG_INT or more digits.
_LONG_RUN = re.compile(rb"(?<![0-9])[0-9]{%d,}" % LONG_INT)
_ZERO_EXPONENT = re.compile(rb"(?<![0-9])0[eE]")
_INNERMOST = re.compile(rb"\[\]|\{\}")
_NOT_BRACKET = bytes(c for c in range(256) if c not in b"[]{}")


def exact_int(token: bytes) -> bool:
    """Does orjson decode the integer token ``token`` (``-?[0-9]+``) exactly?"""
    return EXACT_INT_MIN <= int(token) < EXACT_INT_END


def _long_runs_exact(rest: bytes) -> bool:
    """Is every run of :data:`LONG_INT` digits in ``rest`` (valid JSON, strings
    blanked) a whole integer that orjson keeps exact?  Runs in fractions and
    exponents, and integer parts of floats, are not."""
    for m in _LONG_RUN.finditer(rest):
        start, end = m.span()
        if end < len(rest) and rest[end] in b".eE":
            return False  # the integer part of a float
        if end - start > 20:
            return False
        before = rest[start - 1 : start]
        if before == b"-":
            if start > 1 and rest[start - 2] in b"eE":
                return False  # an exponent
            start -= 1
        elif before and before in b".eE+":
            return False  # a fraction or an exponent
        if not exact_int(rest[start:end]):
            return False
    return True


def plain_line(line: bytes, max_depth: int) -> bool:
    """For ``line`` that orjson accepted as one value: may its value stand
    for the frame QEMU's lexer would make of it?  True when it nests at most
    ``max_depth`` deep and, outside strings, every run of :data:`LONG_INT`
    digits is a whole integer orjson keeps exact (:func:`exact_int`) and no
    ``0e``/``0E`` starts a digit run."""
    rest = _STRINGS.sub(b'""', line) if b'"' in line else line
    if _ZERO_EXPONENT.search(rest) or (_LONG_RUN.search(rest) and not _long_runs_exact(rest)):
        return False
    brackets = rest.translate(None, _NOT_BRACKET)
    if len(brackets) <= max_depth:
        return True
    for _ in range(max_depth):  # valid JSON is balanced: peel one level a pass
        brackets = _INNERMOST.sub(b"", brackets)
        if not brackets:
            return True
    return False


# -- joined errors -----------------------------------------------------------

_LIMITS = frozenset((TOO_BIG, TOO_DEEP, TOO_MANY))


def joinable(prev: FrameError, new: FrameError, strict: bool) -> bool:
    """May ``new``, right after ``prev``, be reported as part of it?"""
    if prev.reason in _LIMITS or new.reason in _LIMITS or prev.sync != new.sync:
        return False
    return not strict or prev.reason == new.reason


def push(out: list[Any], item: Any, strict: bool) -> None:
    """Append one framer item to ``out``, joining it with the error (or
    :data:`SYNC`) before it where the rules above allow."""
    if item is SYNC:
        if not out or out[-1] is not SYNC:
            out.append(SYNC)
        return
    if type(item) is FrameError and out:
        at = -1
        if item.sync and out[-1] is SYNC and len(out) > 1:
            at = -2  # strict 0xFF run: the error before the SYNC
        prev = out[at]
        if type(prev) is FrameError and joinable(prev, item, strict):
            end = item.offset + item.nbytes
            out[at] = FrameError(prev.reason, prev.offset, prev.sync, prev.count + item.count, end - prev.offset)
            return
    out.append(item)


def coalesce(items: list[Any], strict: bool) -> list[Any]:
    """``items`` with every joinable run joined (what one ``feed()`` of the
    whole stream returns, given the items of any split of it)."""
    out: list[Any] = []
    for item in items:
        push(out, item, strict)
    return out


def capacity_after(capacity: int, held: int) -> int:
    """The compiled framer's buffer size after a ``feed()`` that left
    ``held`` bytes in a buffer of ``capacity``: none when nothing is held,
    halved down towards twice ``held`` when at most a quarter is used."""
    if held == 0:
        return 0
    if capacity <= MIN_CAPACITY or held * SHRINK_RATIO > capacity:
        return capacity
    cap = capacity
    while cap > MIN_CAPACITY and held * 2 <= cap // 2:
        cap //= 2
    return cap


# -- answers -----------------------------------------------------------------

# An escaped backslash, or a \u escape whose hex QEMU prints in uppercase.
_ESCAPE = re.compile(r"\\\\|\\u[0-9a-f]{4}")


def _upper_hex(match: re.Match[str]) -> str:
    text = match.group(0)
    return text if text == "\\\\" else "\\u" + text[2:].upper()


def qemu_string(text: str) -> str:
    """``text`` as a JSON string literal the way QEMU prints it: pure
    ASCII, short escapes for ``\\b \\f \\n \\r \\t \\" \\\\``, every other
    control character, 0x7F and above as ``\\uXXXX`` in uppercase hex
    (astral characters as surrogate pairs)."""
    out = _json_string(text)
    if "\\u" in out:
        out = _ESCAPE.sub(_upper_hex, out)
    return out


class Answers:
    """QEMU's replies to a run of errors (see "Answers" above), produced as
    they are taken: the readable twin of the compiled framer's ``Answers``.

    ``count`` errors found from stream byte ``offset`` on, over ``nbytes``
    bytes; :meth:`take` gives the replies' bytes, ``remaining`` says how
    many are still owed.
    """

    __slots__ = ("count", "remaining", "offset", "nbytes", "_prefix", "_suffix", "_runs", "_at")

    def __init__(self, prefix: bytes, suffix: bytes, offset: int) -> None:
        self.count = 0
        self.remaining = 0
        self.offset = offset
        self.nbytes = 0
        self._prefix = prefix
        self._suffix = suffix
        # [reason as JSON text, replies owed, reason], a run of identical ones each
        self._runs: list[list[Any]] = []
        self._at = 0  # the run being answered

    def add(self, reason: str, end: int) -> None:
        """One more error, with QEMU's words ``reason``, ending at stream byte ``end``."""
        runs = self._runs
        if runs and runs[-1][2] == reason:
            runs[-1][1] += 1
        else:
            runs.append([qemu_string(reason)[1:-1].encode("ascii"), 1, reason])
        self.count += 1
        self.remaining += 1
        self.nbytes = end - self.offset

    def take(self, limit: int | None = None) -> bytes:
        """The next replies as bytes: all of them (``limit`` None), or
        replies until at least ``limit`` bytes are given (one at least)."""
        lim = -1 if limit is None else max(limit, 1)
        out = bytearray()
        runs = self._runs
        while self.remaining and (lim < 0 or len(out) < lim):
            run = runs[self._at]
            reply = self._prefix + run[0] + self._suffix
            times = run[1]
            if lim >= 0:
                times = min(times, -(-(lim - len(out)) // len(reply)))
            out += reply * times
            run[1] -= times
            self.remaining -= times
            if not run[1]:
                self._at += 1
        return bytes(out)

    def __repr__(self) -> str:
        return f"Answers(count={self.count}, offset={self.offset}, nbytes={self.nbytes}, remaining={self.remaining})"
