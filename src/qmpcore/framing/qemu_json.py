"""QEMU's JSON dialect: the slow, exact decoder both framers fall back to.

The framers hand every complete frame to ``orjson.loads`` first.  Only frames
that orjson refuses or might get wrong come here:

* single-quoted strings and the ``\\'`` escape (the QMP extension),
* QEMU's non-JSON numbers ``inf``, ``-inf`` and ``nan``,
* integers too large for orjson to keep exact,
* modified UTF-8 (``C0 80`` is NUL),
* anything malformed, to get QEMU's own error message.

The parser mirrors ``qobject/json-parser.c`` of QEMU 7.2: the first error
wins and its wording is QEMU's, so a server built on qmpcore answers bad
input exactly like QEMU.  This module is pure Python and is shared by the
compiled and the pure framer, so both produce identical items.
"""

from __future__ import annotations

import re
from typing import Any

__all__ = ["ParseError", "parse", "transcode", "display", "has_nonchars"]


class ParseError(Exception):
    """Raised by :func:`parse`; ``args[0]`` is QEMU's error message."""


# One token of a frame that the framer already lexed.  Strings may hold any
# byte 0x20-0xFD (the lexer rejected the rest), so DOTALL is not needed but
# harmless.
_TOKEN = re.compile(
    rb"""[ \t\r\n]*(?:
      (?P<s>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')
    | (?P<n>-?(?:0(?P<f0>\.[0-9]+(?:[eE][-+]?[0-9]+)?)?|[1-9][0-9]*(?P<f>(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?)))
    | (?P<k>-?[a-z]+)
    | (?P<p>[{}\[\]:,])
    )""",
    re.VERBOSE | re.DOTALL,
)

_NONCHARS = re.compile(
    "[\ufdd0-\ufdef\ufffe\uffff" + "".join(chr(p << 16 | 0xFFFE) + chr(p << 16 | 0xFFFF) for p in range(1, 17)) + "]"
)

_SIMPLE_ESCAPES = {
    ord('"'): '"',
    ord("'"): "'",
    ord("\\"): "\\",
    ord("/"): "/",
    ord("b"): "\b",
    ord("f"): "\f",
    ord("n"): "\n",
    ord("r"): "\r",
    ord("t"): "\t",
}

_SPECIAL_FLOATS = {
    b"inf": float("inf"),
    b"-inf": float("-inf"),
    b"nan": float("nan"),
    b"-nan": float("nan"),
}


def has_nonchars(text: str) -> bool:
    """True if ``text`` holds a Unicode noncharacter (QEMU rejects them)."""
    return _NONCHARS.search(text) is not None


def _tokenize(frame: bytes) -> list[tuple[str, bytes]]:
    tokens: list[tuple[str, bytes]] = []
    pos = 0
    end = len(frame.rstrip(b" \t\r\n"))
    match = _TOKEN.match
    while pos < end:
        m = match(frame, pos)
        if m is None:  # cannot happen for a frame the framer produced
            raise ParseError(f"JSON parse error, stray '{display(frame[pos : pos + 1])}'")
        kind = m.lastgroup
        text = m.group(kind)  # type: ignore[arg-type]
        if kind == "n" and (m.group("f") or m.group("f0")):
            kind = "f"
        tokens.append((kind or "", text))
        pos = m.end()
    return tokens


def _hex4(tok: bytes, i: int) -> int:
    digits = tok[i : i + 4]
    if len(digits) != 4 or not all(c in b"0123456789abcdefABCDEF" for c in digits):
        return -1
    return int(digits, 16)


def _valid_codepoint(cp: int, strict: bool) -> bool:
    if cp < 0 or cp > 0x10FFFF or 0xD800 <= cp <= 0xDFFF:
        return False
    if strict and (0xFDD0 <= cp <= 0xFDEF or (cp & 0xFFFE) == 0xFFFE):
        return False
    return True


def _decode_run(run: bytes, strict: bool) -> str:
    """Decode unescaped string bytes as modified UTF-8, like QEMU."""
    try:
        if b"\xc0\x80" in run:
            run = run.replace(b"\xc0\x80", b"\x00")
        text = run.decode("utf-8")
    except UnicodeDecodeError:
        raise ParseError("JSON parse error, invalid UTF-8 sequence in string") from None
    if strict and has_nonchars(text):
        raise ParseError("JSON parse error, invalid UTF-8 sequence in string")
    return text


def _parse_string(tok: bytes, strict: bool) -> str:
    body = tok[1:-1]
    if b"\\" not in body:
        if body.isascii():
            return body.decode("ascii")
        return _decode_run(body, strict)
    out: list[str] = []
    i = 1
    end = len(tok) - 1
    while i < end:
        j = tok.find(b"\\", i, end)
        if j < 0:
            out.append(_decode_run(tok[i:end], strict))
            break
        if j > i:
            out.append(_decode_run(tok[i:j], strict))
        c = tok[j + 1]
        if c == 0x75:  # 'u'
            cp = _hex4(tok, j + 2)
            nxt = j + 6
            if 0xD800 <= cp <= 0xDBFF and tok[nxt : nxt + 2] == b"\\u":
                trail = _hex4(tok, nxt + 2)
                if 0xDC00 <= trail <= 0xDFFF:
                    cp = 0x10000 + ((cp & 0x3FF) << 10) | (trail & 0x3FF)
                    nxt += 6
                else:
                    cp = -1
            if not _valid_codepoint(cp, strict):
                shown = tok[j:nxt].decode("latin-1")
                raise ParseError(f"JSON parse error, {shown} is not a valid Unicode character")
            out.append(chr(cp))
            i = nxt
        else:
            ch = _SIMPLE_ESCAPES.get(c)
            if ch is None:
                raise ParseError("JSON parse error, invalid escape sequence in string")
            out.append(ch)
            i = j + 2
    return "".join(out)


_OPEN_OBJECT = ("p", b"{")
_OPEN_ARRAY = ("p", b"[")
_CLOSE_OBJECT = ("p", b"}")
_CLOSE_ARRAY = ("p", b"]")
_COLON = ("p", b":")
_COMMA = ("p", b",")


def _literal(kind: str, text: bytes, strict: bool) -> Any:
    if kind == "s":
        return _parse_string(text, strict)
    if kind == "n":
        try:
            return int(text)
        except ValueError:  # over Python's int-from-text digit limit
            return float(text)  # what QEMU makes of any out-of-range integer
    if kind == "f":
        return float(text)
    if text == b"true":
        return True
    if text == b"false":
        return False
    if text == b"null":
        return None
    if not strict and text in _SPECIAL_FLOATS:
        return _SPECIAL_FLOATS[text]
    raise ParseError("JSON parse error, invalid keyword '{}'".format(text.decode("ascii")))


def _parse_tokens(tokens: list[tuple[str, bytes]], strict: bool) -> Any:
    """QEMU's recursive descent, unrolled onto an explicit stack so that
    nesting depth costs no Python recursion.  Errors are raised at the same
    point, with the same words, as ``qobject/json-parser.c``."""
    pos = 0
    end = len(tokens)

    def pop() -> tuple[str, bytes]:
        nonlocal pos
        if pos >= end:
            raise ParseError("JSON parse error, premature EOI")
        pos += 1
        return tokens[pos - 1]

    # Each open container: [container, key-or-None, expecting_key]
    stack: list[list[Any]] = []
    while True:
        # Parse one value (or open a container and go parse its first one).
        tok = pop()
        if tok == _OPEN_OBJECT or tok == _OPEN_ARRAY:
            is_object = tok == _OPEN_OBJECT
            if pos >= end:
                raise ParseError("JSON parse error, premature EOI")
            if tokens[pos] == (_CLOSE_OBJECT if is_object else _CLOSE_ARRAY):
                pos += 1
                value: Any = {} if is_object else []
            else:
                stack.append([{} if is_object else [], None, is_object])
                continue
        elif tok[0] == "p":
            raise ParseError("JSON parse error, expecting value")
        else:
            value = _literal(tok[0], tok[1], strict)
        # Hand the value to the containers it completes.
        while True:
            if not stack:
                return value
            top = stack[-1]
            container = top[0]
            if isinstance(container, list):
                container.append(value)
                tok = pop()
                if tok == _CLOSE_ARRAY:
                    value = stack.pop()[0]
                    continue
                if tok != _COMMA:
                    raise ParseError("JSON parse error, expected separator in list")
                break
            if top[2]:  # that value was a key
                if not isinstance(value, str):
                    raise ParseError("JSON parse error, key is not a string in object")
                if pop() != _COLON:
                    raise ParseError("JSON parse error, missing : in object pair")
                top[1] = value
                top[2] = False
                break
            if strict and top[1] in container:
                raise ParseError("JSON parse error, duplicate key")
            container[top[1]] = value
            tok = pop()
            if tok == _CLOSE_OBJECT:
                value = stack.pop()[0]
                continue
            if tok != _COMMA:
                raise ParseError("JSON parse error, expected separator in dict")
            top[2] = True
            break


def parse(frame: bytes, strict: bool = False) -> Any:
    """Decode one complete frame the way QEMU's parser does.

    Raises :class:`ParseError` with QEMU's message.  With ``strict`` the
    checks QEMU applies as a server are all on (noncharacters and duplicate
    keys rejected, ``inf``/``nan`` are invalid keywords); without it the
    decoder accepts what orjson accepts (the last duplicate key wins) plus
    QEMU's output extensions.
    """
    return _parse_tokens(_tokenize(bytes(frame)), strict)


_STRING_PART = re.compile(rb'\\(.)|"', re.DOTALL)


def _dq_part(m: re.Match[bytes]) -> bytes:
    esc = m.group(1)
    if esc is None:
        return b'\\"'  # a bare double quote inside '...'
    return b"'" if esc == b"'" else m.group(0)


def _dq(tok: bytes) -> bytes:
    """Rewrite one string token as a standard double-quoted JSON string."""
    return b'"' + _STRING_PART.sub(_dq_part, tok[1:-1]) + b'"'


_STRING = re.compile(rb""""(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'""", re.DOTALL)


def transcode(frame: bytes) -> bytes:
    """Rewrite QMP's single-quoted strings and ``\\'`` escapes as plain JSON."""
    return _STRING.sub(lambda m: _dq(m.group(0)), bytes(frame))


def _mod_utf8_codepoint(s: bytes, i: int) -> tuple[int, int]:
    """QEMU's ``mod_utf8_codepoint``: (code point or -1, next index)."""
    byte = s[i]
    i += 1
    if byte < 0x80:
        return byte, i
    if byte >= 0xFE or not byte & 0x40:
        return -1, i
    length = 0
    mask = 0x80
    while byte & mask:
        length += 1
        mask >>= 1
    cp = byte & (mask - 1)
    for _ in range(1, length):
        nxt = s[i] if i < len(s) else 0
        if nxt & 0xC0 != 0x80:
            return -1, i
        i += 1
        cp = (cp << 6) | (nxt & 0x3F)
    if cp > 0x10FFFF or 0xD800 <= cp <= 0xDFFF:
        return -1, i
    if 0xFDD0 <= cp <= 0xFDEF or (cp & 0xFFFE) == 0xFFFE:
        return -1, i
    if cp < (0x80, 0x800, 0x10000, 0x200000, 0x4000000)[length - 2] and not (cp == 0 and length == 2):
        return -1, i
    return cp, i


def display(token: bytes) -> str:
    """Text of a bad token as QEMU shows it in ``stray '...'``.

    QEMU handles the token as a C string (it ends at the first NUL) and
    prints invalid modified UTF-8 as U+FFFD.
    """
    token = bytes(token).split(b"\x00", 1)[0]
    if token.isascii():
        return token.decode("ascii")
    out = []
    i = 0
    while i < len(token):
        cp, i = _mod_utf8_codepoint(token, i)
        out.append("\ufffd" if cp < 0 else chr(cp))
    return "".join(out)
