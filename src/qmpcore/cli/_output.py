"""What the CLI prints: JSON of any depth and size, and peer text made safe.

Everything here treats the peer as hostile.  JSON is written without
recursion (a 1000-deep event prints like any other), integers of any
length print exactly and in subquadratic time, and memory stays bounded
while writing: the text is produced in chunks, and indentation stops
growing past :data:`MAX_INDENT_DEPTH` (deeper containers print on one
line), so a deep frame cannot multiply into gigabytes of spaces.

JSON output escapes every control character (C0, DEL, C1), lone
surrogates and the Unicode line separators and bidirectional overrides,
so it is valid JSON that can neither drive a terminal nor disguise
itself.  Plain text from the peer (an error's ``desc``, HMP output)
passes through :func:`printable`, which escapes the same characters when
the text goes to a terminal and only what could not be written otherwise
when it goes to a file or pipe.
"""

from __future__ import annotations

import decimal
import json.encoder
import re
import sys
from collections.abc import Iterator
from typing import Any, TextIO

__all__ = [
    "MAX_INDENT_DEPTH",
    "INT_DIGITS",
    "allow_long_integers",
    "dump",
    "iter_json",
    "write_json",
    "int_text",
    "printable",
    "one_line",
    "hmp_text",
    "write_result",
]

#: Containers nested deeper than this print on one line inside pretty output.
MAX_INDENT_DEPTH = 32

#: Integers up to this many digits are decoded exactly by the CLI (see
#: :func:`allow_long_integers`); Python's own default is 4,300.
INT_DIGITS = 20_000

_WRITE_CHUNK = 1 << 16
_SMALL_INT_BITS = 12_000  # about 3,600 digits: str() is quick and always allowed

# Characters that must not reach a terminal raw: C0 and C1 controls, DEL,
# lone surrogates (unencodable), line/paragraph separators, bidi controls.
_UNSAFE_JSON = re.compile("[\x7f-\x9f\ud800-\udfff\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_UNSAFE_TEXT = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_SURROGATE = re.compile("[\ud800-\udfff]")
_LONE_CR = re.compile("\r(?!\n)")
_encode_basestring = json.encoder.encode_basestring
_encode_compact = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def _u_escape(found: re.Match[str]) -> str:
    return f"\\u{ord(found.group()):04x}"


def _text_escape(found: re.Match[str]) -> str:
    code = ord(found.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def allow_long_integers(digits: int = INT_DIGITS) -> None:
    """Let this process decode integers of up to ``digits`` digits exactly.

    Python refuses to convert longer digit strings (4,300 by default), and
    the decoder then reads such a number as QEMU does an out-of-range one:
    a float, ``inf``.  Parsing costs time quadratic in the length of one
    number, so the limit stays finite: per byte of input the cost is bounded.
    """
    getter = getattr(sys, "get_int_max_str_digits", None)
    if getter is None:  # Python before 3.10.7 has no limit at all
        return
    current = getter()
    if current and current < digits:
        sys.set_int_max_str_digits(digits)


def int_text(value: int) -> str:
    """``str(value)`` for any length, whatever the interpreter's digit limit.

    Long integers are converted by halving their bits recursively and joining
    the halves with decimal arithmetic (whose big multiplication is fast), so
    the time is subquadratic and the recursion only log2(bits) deep.
    """
    if value.bit_length() <= _SMALL_INT_BITS:
        return str(value)
    context = decimal.Context(prec=decimal.MAX_PREC, Emax=decimal.MAX_EMAX, Emin=decimal.MIN_EMIN)
    powers: dict[int, decimal.Decimal] = {}

    def convert(n: int, bits: int) -> decimal.Decimal:
        if bits <= _SMALL_INT_BITS:
            return decimal.Decimal(n)
        low_bits = bits // 2
        power = powers.get(low_bits)
        if power is None:
            power = powers[low_bits] = context.power(decimal.Decimal(2), low_bits)
        high = convert(n >> low_bits, bits - low_bits)
        low = convert(n & ((1 << low_bits) - 1), low_bits)
        return context.add(context.multiply(high, power), low)

    magnitude = abs(value)
    text = str(convert(magnitude, magnitude.bit_length()))
    return "-" + text if value < 0 else text


def _string(text: str) -> str:
    return _UNSAFE_JSON.sub(_u_escape, _encode_basestring(text))


def _scalar(value: Any) -> str:
    if isinstance(value, str):
        return _string(value)
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int):
        return int_text(value)
    if isinstance(value, float):
        if value != value:
            return "NaN"
        if value in (float("inf"), float("-inf")):
            return "Infinity" if value > 0 else "-Infinity"
        return repr(value)
    return _string(str(value))  # not produced by the decoder; shown, not fatal


class _Level:
    """One open container while writing: its items and how to lay them out."""

    __slots__ = ("items", "is_dict", "first", "newline", "closing", "comma", "colon")

    def __init__(self, items: Iterator[Any], is_dict: bool, newline: str, closing: str, pretty: bool) -> None:
        self.items = items
        self.is_dict = is_dict
        self.first = True
        self.newline = newline  # "" when this container is on one line
        self.closing = closing
        self.comma = "," if newline or not pretty else ", "
        self.colon = ": " if pretty else ":"


def iter_json(value: Any, pretty: bool = False) -> Iterator[str]:
    """The JSON text of ``value`` in pieces, without recursion.

    Pretty output is laid out like ``json.dumps(indent=2)`` down to
    :data:`MAX_INDENT_DEPTH`; compact output like ``separators=(",", ":")``.
    """
    stack: list[_Level] = []
    pending = value
    while True:
        if isinstance(pending, (dict, list, tuple)) and pending:
            depth = len(stack) + 1
            newline = "\n" + "  " * depth if pretty and depth <= MAX_INDENT_DEPTH else ""
            close_at = ("\n" + "  " * (depth - 1)) if newline else ""
            if isinstance(pending, dict):
                stack.append(_Level(iter(pending.items()), True, newline, close_at + "}", pretty))
                yield "{"
            else:
                stack.append(_Level(iter(pending), False, newline, close_at + "]", pretty))
                yield "["
        elif isinstance(pending, dict):
            yield "{}"
        elif isinstance(pending, (list, tuple)):
            yield "[]"
        else:
            yield _scalar(pending)
        while stack:  # find the next value to write, closing finished containers
            level = stack[-1]
            item: Any = next(level.items, _END)
            if item is _END:
                stack.pop()
                yield level.closing
                continue
            lead = level.newline if level.first else level.comma + level.newline
            level.first = False
            if level.is_dict:
                key, pending = item
                yield lead + _string(key if isinstance(key, str) else str(key)) + level.colon
            else:
                pending = item
                if lead:
                    yield lead
            break
        else:
            return


_END = object()


def _compact_quickly(value: Any) -> str | None:
    """Compact JSON from the C encoder when it can (same text as
    :func:`iter_json`); None for what it cannot do (depth, long integers)."""
    try:
        text = _encode_compact(value)
    except (RecursionError, ValueError, TypeError):
        return None
    # Structural characters are ASCII, so escaping over the whole text only
    # touches the inside of strings.
    return _UNSAFE_JSON.sub(_u_escape, text)


def dump(value: Any, pretty: bool = False) -> str:
    """JSON text of a reply or event: indented for people, one line for programs."""
    if not pretty:
        text = _compact_quickly(value)
        if text is not None:
            return text
    return "".join(iter_json(value, pretty))


def write_json(stream: TextIO, value: Any, pretty: bool = False, end: str = "\n") -> None:
    """Write ``value`` as JSON to ``stream`` in bounded pieces, then ``end``."""
    if not pretty:
        text = _compact_quickly(value)  # as long as the frame it came from
        if text is not None:
            stream.write(text + end)
            return
    pieces: list[str] = []
    size = 0
    for piece in iter_json(value, pretty):
        pieces.append(piece)
        size += len(piece)
        if size >= _WRITE_CHUNK:
            stream.write("".join(pieces))
            pieces.clear()
            size = 0
    pieces.append(end)
    stream.write("".join(pieces))


def printable(text: str, terminal: bool) -> str:
    """Peer text made safe to write: control characters escaped on a terminal.

    Newlines and tabs stay; a carriage return stays only before a newline.
    Off a terminal only lone surrogates are escaped (they cannot be encoded).
    """
    if terminal:
        return _UNSAFE_TEXT.sub(_text_escape, _LONE_CR.sub("\\\\r", text))
    return _SURROGATE.sub(_text_escape, text)


def one_line(text: str, terminal: bool) -> str:
    """Like :func:`printable`, with line breaks escaped too (for error messages)."""
    text = printable(text, terminal)
    return text.replace("\r", "\\r").replace("\n", "\\n")


def hmp_text(output: str, terminal: bool) -> str:
    """``human-monitor-command`` output as the text it is, ending in one newline
    (empty output prints nothing)."""
    text = printable(output.replace("\r\n", "\n"), terminal)
    if text and not text.endswith("\n"):
        text += "\n"
    return text


def write_result(stream: TextIO, command: str, result: Any, *, pretty: bool, terminal: bool) -> None:
    """A command's result: HMP output as text (escaped for a terminal),
    anything else as JSON, indented when ``pretty``."""
    if command == "human-monitor-command" and isinstance(result, str):
        stream.write(hmp_text(result, terminal))
    else:
        write_json(stream, result, pretty)
