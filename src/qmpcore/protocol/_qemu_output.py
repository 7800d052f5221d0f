"""Encode Python values exactly as QEMU 7.2 prints JSON.

QEMU's output differs from every stock JSON encoder in small ways, and a
server that wants to be byte-identical to QEMU has to copy all of them:

* separators are ``", "`` and ``": "``;
* strings are pure ASCII: ``\\b \\f \\n \\r \\t \\" \\\\`` use the short form,
  every other control character, 0x7F and everything above it becomes
  ``\\uXXXX`` with *uppercase* hex (astral characters as surrogate pairs);
  ``/`` is not escaped;
* doubles print with ``%.17g`` (``0.1`` is ``0.10000000000000001``, ``1.0``
  is ``1``, infinities and NaN print as the bare words ``inf``/``nan``);
  integers print as integers when they fit int64 or uint64 and as doubles
  otherwise (QEMU's parser stores bigger ones as doubles);
* object members come out in the iteration order of QEMU's ``QDict`` hash
  table (512 buckets of ``tdb_hash``, newest entry first within a bucket),
  not in insertion order: that is why a reply reads ``{"return": ..., "id":
  ...}`` but an error ``{"id": ..., "error": ...}``;
* ``pretty=on`` monitors indent by four spaces and put every member on its
  own line, even closing an empty object on a new line.

:func:`to_json` gives QEMU's text; :func:`encode_qmp` and :func:`encode_qga`
add each monitor's line ending.  Plain values (ASCII strings without ``,``
or ``:``, integers in range) take an orjson fast path; everything else goes
through the exact encoder below, which gives identical bytes.
"""

from __future__ import annotations

import math
import re
import sys
from json.encoder import encode_basestring_ascii as _json_string
from typing import Any

import orjson

from ..framing import qdict_order as _qdict_order

__all__ = [
    "Encoded",
    "to_json",
    "encode_qmp",
    "encode_qga",
    "qdict_order",
    "format_float",
    "order_cache_size",
]

_INT_MIN = -(1 << 63)
_INT_MAX = (1 << 64) - 1
# orjson gives up at 255 levels; deeper values take the exact encoder.
_FAST_DEPTH = 200
# Printable ASCII except ',' and ':', so that orjson's compact output can be
# turned into QEMU's separators with two byte replacements.
_NOT_PLAIN = re.compile(r"[^ -+\--9;-~]")
# An escaped backslash, or a \u escape whose hex QEMU prints in uppercase.
_ESCAPE = re.compile(r"\\\\|\\u[0-9a-f]{4}")
# Printable ASCII except '"' and '\': such a string is its own JSON body.
_NEEDS_ESCAPE = re.compile(r"[^ !#-\[\]-~]")


class Encoded(bytes):
    """Already encoded compact JSON text, spliced into the output as is.

    Lets a server keep a large canned reply (such as ``query-qmp-schema``)
    as bytes instead of re-encoding it for every request.  The text must be
    in QEMU's compact format; pretty output re-encodes it.
    """

    __slots__ = ()


class _Slow(Exception):
    """Raised by the fast path when the value needs the exact encoder."""


# Member orders already worked out, bounded in entries and in bytes (a
# client chooses the keys of its requests); key tuples larger than
# _ORDER_ENTRY_MAX bytes are not kept.  Full: cleared and filled again.
_ORDER_CACHE: dict[tuple[str, ...], tuple[str, ...]] = {}
_ORDER_CACHE_MAX = 8192
_ORDER_CACHE_BYTES = 4 << 20
_ORDER_ENTRY_MAX = 4096
_order_cache_bytes = 0
_STR_SIZE_MIN = sys.getsizeof("")


def _order_size(keys: tuple[str, ...]) -> int:
    """Bytes that caching ``keys`` holds: the key strings and two tuples."""
    return sum(map(sys.getsizeof, keys)) + 2 * sys.getsizeof(keys)


def qdict_order(keys: tuple[str, ...]) -> tuple[str, ...]:
    """The order in which QEMU iterates a QDict whose keys were inserted in
    the order ``keys``: by hash bucket, newest first within a bucket."""
    global _order_cache_bytes
    if len(keys) < 2:
        return keys
    if len(keys) * _STR_SIZE_MIN > _ORDER_ENTRY_MAX:
        return _qdict_order(keys)  # never cached (nor hashed, nor sized)
    order = _ORDER_CACHE.get(keys)
    if order is None:
        order = _qdict_order(keys)
        size = _order_size(keys)
        if size <= _ORDER_ENTRY_MAX:
            if len(_ORDER_CACHE) >= _ORDER_CACHE_MAX or _order_cache_bytes + size > _ORDER_CACHE_BYTES:
                _ORDER_CACHE.clear()
                _order_cache_bytes = 0
            _ORDER_CACHE[keys] = order
            _order_cache_bytes += size
    return order


def order_cache_size() -> tuple[int, int]:
    """(entries, bytes) held by the member-order cache now."""
    return len(_ORDER_CACHE), _order_cache_bytes


def format_float(value: float) -> str:
    """``%.17g`` as glibc prints it (``inf``, ``-inf``, ``nan``, ``-nan``)."""
    if value != value:
        return "-nan" if math.copysign(1.0, value) < 0 else "nan"
    return f"{value:.17g}"


def _format_int(value: int) -> str:
    if _INT_MIN <= value <= _INT_MAX:
        return str(value)
    try:
        return format_float(float(value))
    except OverflowError:  # strtod() saturates to infinity
        return "inf" if value > 0 else "-inf"


def _upper_hex(match: re.Match[str]) -> str:
    text = match.group(0)
    return text if text == "\\\\" else "\\u" + text[2:].upper()


def _string(text: str) -> str:
    out = _json_string(text)
    if "\\u" in out:
        out = _ESCAPE.sub(_upper_hex, out)
    return out


# -- fast path ---------------------------------------------------------------


def _prepare(value: Any, depth: int) -> Any:
    """Copy of ``value`` with dicts in QDict order; raise :class:`_Slow` for
    anything orjson would not print like QEMU."""
    kind = type(value)
    if kind is str:
        if _NOT_PLAIN.search(value):
            raise _Slow
        return value
    if kind is dict:
        if depth > _FAST_DEPTH:
            raise _Slow
        keys = tuple(value)
        out = {}
        for key in qdict_order(keys):
            if type(key) is not str or _NOT_PLAIN.search(key):
                raise _Slow
            out[key] = _prepare(value[key], depth + 1)
        return out
    if kind is list or kind is tuple:
        if depth > _FAST_DEPTH:
            raise _Slow
        return [_prepare(item, depth + 1) for item in value]
    if kind is int:
        if _INT_MIN <= value <= _INT_MAX:
            return value
        raise _Slow
    if kind is bool or value is None:
        return value
    raise _Slow  # floats, Encoded, subclasses, unknown types


def _fast(value: Any) -> bytes:
    text = orjson.dumps(_prepare(value, 0))
    # No string holds ',' or ':', so every one of them is a separator.
    return text.replace(b",", b", ").replace(b":", b": ")


# -- exact encoder -----------------------------------------------------------


def _scalar(value: Any) -> str:
    if isinstance(value, str):
        return _string(value)
    if value is True:
        return "true"
    if value is False:
        return "false"
    if value is None:
        return "null"
    if isinstance(value, int):
        return _format_int(value)
    if isinstance(value, float):
        return format_float(value)
    raise TypeError(f"cannot encode {type(value).__name__} as QMP JSON")


def _members(value: dict[Any, Any], keep_order: bool) -> list[tuple[str, Any]]:
    for key in value:
        if not isinstance(key, str):
            raise TypeError(f"QMP object keys must be str, not {type(key).__name__}")
    if keep_order:
        return list(value.items())
    return [(key, value[key]) for key in qdict_order(tuple(value))]


def _exact(value: Any, pretty: bool) -> str:
    """QEMU's json-writer, iteratively (values may nest thousands deep)."""
    out: list[str] = []
    write = out.append
    comma = "," if pretty else ", "
    # One frame per open container: [closing bracket, iterator over
    # (key, value) pairs (key None in arrays), is_object, members written,
    # keep_order].  Text decoded from Encoded is already in QEMU's order.
    stack: list[list[Any]] = []
    key: Any = None
    item = value
    keep_order = False
    while True:
        if stack:
            frame = stack[-1]
            if frame[3]:
                write(comma)
            if pretty:
                write("\n" + "    " * len(stack))
            frame[3] += 1
            if frame[2]:
                write(_string(key))
                write(": ")
            keep_order = frame[4]
        if pretty and isinstance(item, Encoded):
            item = orjson.loads(bytes(item))
            keep_order = True
        if isinstance(item, Encoded):
            write(item.decode("ascii"))
        elif isinstance(item, dict):
            write("{")
            stack.append(["}", iter(_members(item, keep_order)), True, 0, keep_order])
        elif isinstance(item, (list, tuple)):
            write("[")
            stack.append(["]", ((None, v) for v in item), False, 0, keep_order])
        else:
            write(_scalar(item))
        while stack:
            frame = stack[-1]
            nxt = next(frame[1], None)
            if nxt is not None:
                key, item = nxt
                break
            stack.pop()
            if pretty:
                write("\n" + "    " * len(stack))
            write(frame[0])
        else:
            return "".join(out)


# -- public ------------------------------------------------------------------


def to_json(value: Any, *, pretty: bool = False) -> bytes:
    """``value`` as QEMU's ``qobject_to_json`` (or ``..._pretty``) prints it.

    Pretty output uses bare ``\\n`` line breaks, as QEMU's writer does; the
    monitor turns them into CRLF (:func:`encode_qmp`).
    """
    if not pretty:
        kind = type(value)
        if kind is str and not _NEEDS_ESCAPE.search(value):
            text: str = value
            return b'"' + text.encode("ascii") + b'"'
        if kind is int and _INT_MIN <= value <= _INT_MAX:
            return b"%d" % value
        if kind is Encoded:
            return bytes(value)
        try:
            return _fast(value)
        except (_Slow, orjson.JSONEncodeError, RecursionError):
            pass
    return _exact(value, pretty).encode("ascii")


def encode_qmp(value: Any, *, pretty: bool = False) -> bytes:
    """One QMP monitor message: QEMU's JSON, then CRLF (every ``\\n`` of
    pretty output becomes CRLF too, as the monitor writes them)."""
    text = to_json(value, pretty=pretty)
    if pretty:
        text = text.replace(b"\n", b"\r\n")
    return text + b"\r\n"


def encode_qga(value: Any) -> bytes:
    """One guest agent message: QEMU's compact JSON and a bare ``\\n``."""
    return to_json(value) + b"\n"
