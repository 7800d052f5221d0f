"""The clients' DEBUG trace: one logger, and messages cut to a readable size.

Records go to the ``qmpcore.client`` logger at DEBUG only, each starting
with the connection's address.  Callers check :func:`tracing` once per read
or write, so a program that does not trace pays one call per chunk.
Frames are shown escaped (control characters from a peer never reach a
terminal raw) and cut past :data:`TRACE_LIMIT` characters.
"""

from __future__ import annotations

import logging
import reprlib
from typing import Any

import orjson

__all__ = ["log", "tracing", "abbreviate", "TRACE_LIMIT"]

log = logging.getLogger("qmpcore.client")

#: Characters of a frame or value shown in a trace record.
TRACE_LIMIT = 200

_isEnabledFor = log.isEnabledFor
_DEBUG = logging.DEBUG

_short = reprlib.Repr()
_short.maxlevel = 6
_short.maxdict = _short.maxlist = _short.maxtuple = 16
_short.maxstring = _short.maxother = TRACE_LIMIT


#: Control characters (a peer's terminal escapes among them) shown as ``\\xNN``.
_CONTROL = {c: f"\\x{c:02x}" for c in (*range(32), 127)}


def tracing() -> bool:
    """True when DEBUG records of the clients would be emitted."""
    return _isEnabledFor(_DEBUG)


def _cut(text: str, total: int) -> str:
    if len(text) <= TRACE_LIMIT:
        return text
    return f"{text[:TRACE_LIMIT]}... ({total} characters in all)"


def abbreviate(item: Any) -> str:
    """A short, escaped, printable form of bytes on the wire or a decoded value.

    Values are shown as JSON; bytes outside printable ASCII are escaped as in
    a bytes literal, and the text is cut past :data:`TRACE_LIMIT` with the
    full size named.  (Bounded output; the work is linear in the item, and
    only done when tracing.)
    """
    if not isinstance(item, (bytes, bytearray, memoryview)):
        try:
            item = orjson.dumps(item)
        except (TypeError, orjson.JSONEncodeError):  # too deep, an integer past 64 bits, ...
            try:
                return _cut(_short.repr(item), len(_short.repr(item)))
            except ValueError:  # an integer too long to print
                return f"<unprintable {type(item).__name__}>"
    size = len(item)
    head = bytes(item[: TRACE_LIMIT + 1]).rstrip(b"\r\n")
    text = head.decode("ascii", "backslashreplace").translate(_CONTROL)
    if size > TRACE_LIMIT:
        return f"{text[:TRACE_LIMIT]}... ({size} bytes in all)"
    return text
