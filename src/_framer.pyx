# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Compiled framer: the hot loop of qmpcore.

This is the algorithm of ``qmpcore/framing/pure.py`` (read that file for the
rules) as a byte-level C state machine.  Both produce the same items for any
input, however it is split.  Differences are in the machinery only:

* When no partial frame is held, a chunk is scanned where it lies; only the
  tail of an unfinished frame is copied into the framer's own buffer, which
  is compacted in place and grown geometrically.
* Frames reach ``orjson.loads`` as a memoryview over the bytes already in
  memory (or the chunk object itself when it holds exactly one frame), so
  decoding does not copy them first.
* The scan knows exactly which frames need the exact (slow) decoder: those
  with single-quoted strings or integers of 19 or more characters.
* Consecutive errors are counted in C fields and become one ``FrameError``
  when anything else is output or the feed() ends (the rules for joining
  them are :mod:`qmpcore.framing.rules`); only the first error of a run
  costs a Python object.  The byte tables and constants are copied from
  that module too, so the two framers cannot drift apart.
* The buffer is freed when nothing is held after a feed() and halved when
  at most a quarter is used.
* Frames orjson cannot take as they are (QMP's single quotes and ``\\'``,
  QEMU's ``inf``/``nan``, modified UTF-8, integers orjson would round or
  Python cannot read from text) are rewritten as plain JSON in one C pass
  (_prepare) and decoded by one C call: orjson, or the json module's C
  scanner where integers must stay exact.  The same pass finds what a
  strict (server-role) decoder must refuse.  Only frames that are not valid
  (and frames nested too deep for the json module) reach QEMU's parser in
  Python, which also finds the words of the error.
"""

cimport cython
from cpython.buffer cimport PyBUF_SIMPLE, PyObject_GetBuffer, PyBuffer_Release
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.mem cimport PyMem_Free, PyMem_Malloc, PyMem_Realloc
from cpython.object cimport PyObject
from libc.string cimport memchr, memcmp, memcpy, memmove

import json
import sys

import orjson

from qmpcore.framing import rules as _rules
from qmpcore.framing.wire import SYNC, TOO_BIG, TOO_DEEP, TOO_MANY, ParseError, decode_frame, stray_reason
from qmpcore.errors import FrameError

cdef extern from "_scan.h":
    # Block scanning (AVX2, SSE2 or portable): see src/_scan.h.
    const char *qc_impl_name
    void qc_choose(const char *want) noexcept nogil
    Py_ssize_t qc_blocks(const unsigned char *p, Py_ssize_t pos, Py_ssize_t n, Py_ssize_t last,
                         Py_ssize_t max_depth, Py_ssize_t max_tokens, Py_ssize_t long_int,
                         Py_ssize_t *brace, Py_ssize_t *bracket, Py_ssize_t *ntok,
                         Py_ssize_t *stop) noexcept nogil
    Py_ssize_t qc_plain(const unsigned char *p, Py_ssize_t pos, Py_ssize_t n, Py_ssize_t max_depth,
                        Py_ssize_t long_int, Py_ssize_t *depth, Py_ssize_t *stop) noexcept nogil

cdef extern from "Python.h":
    object PyMemoryView_FromMemory(char *mem, Py_ssize_t size, int flags)
    int PyBUF_READ
    object PyUnicode_FromKindAndData(int kind, const void *buffer, Py_ssize_t size)
    int PyUnicode_4BYTE_KIND

cdef object _loads = orjson.loads
cdef object _json_loads = json.JSONDecoder().decode
cdef object _max_digits = getattr(sys, "get_int_max_str_digits", lambda: 0)
cdef object _NO = object()  # "not decoded here"
cdef object _JSONDecodeError = orjson.JSONDecodeError
cdef object _SYNC = SYNC
cdef object _FrameError = FrameError
cdef object _ParseError = ParseError
cdef object _decode_frame = decode_frame
cdef object _stray_reason = stray_reason
cdef long[5] _MIN_CP = [0x80, 0x800, 0x10000, 0x200000, 0x4000000]
cdef object _TOO_BIG = TOO_BIG
cdef object _TOO_DEEP = TOO_DEEP
cdef object _TOO_MANY = TOO_MANY
cdef object _EXPECTING = "JSON parse error, expecting value"
# QEMU's words for a stray byte on its own, by byte.
cdef list _STRAY1 = [stray_reason(bytes([i])) for i in range(256)]

# Lexer states (same numbering as the pure framer).
DEF START = 0
DEF DQ = 1
DEF DQ_ESC = 2
DEF SQ = 3
DEF SQ_ESC = 4
DEF ZERO = 5
DEF DIGITS = 6
DEF SIGN = 7
DEF MANT = 8
DEF MANT_DIGITS = 9
DEF EXP_E = 10
DEF EXP_SIGN = 11
DEF EXP_DIGITS = 12
DEF KEYWORD = 13
DEF RECOVERY = 14

# Byte classes.
DEF C_OTHER = 0
DEF C_WS = 1
DEF C_STRUCT = 2
DEF C_DQUOTE = 3
DEF C_SQUOTE = 4
DEF C_ZERO = 5
DEF C_DIGIT = 6
DEF C_MINUS = 7
DEF C_LOWER = 8

# Constants of qmpcore.framing.rules (read there for what they mean).
cdef Py_ssize_t LONG_INT = _rules.LONG_INT
cdef Py_ssize_t WHOLE_SLACK = _rules.WHOLE_SLACK
cdef Py_ssize_t MIN_CAPACITY = _rules.MIN_CAPACITY
cdef Py_ssize_t SHRINK_RATIO = _rules.SHRINK_RATIO

cdef unsigned char CLASS[256]
cdef unsigned char DQ_PLAIN[256]    # bytes that continue a "..." string
cdef unsigned char SQ_PLAIN[256]    # bytes that continue a '...' string
cdef unsigned char RECOVER_SKIP[256]  # bytes skipped after a lexical error
cdef unsigned char PLAIN_KIND[256]    # for _plain(): what a byte of valid JSON starts
cdef unsigned char VALUE_START[256]   # bytes a JSON value can start with

DEF K_BORING = 0
DEF K_DIGIT = 1
DEF K_QUOTE = 2
DEF K_OPEN = 3
DEF K_CLOSE = 4


cdef void _init_tables():
    cdef int i
    for i in range(256):
        CLASS[i] = _rules.BYTE_CLASS[i]
        DQ_PLAIN[i] = _rules.DQ_PLAIN[i]
        SQ_PLAIN[i] = _rules.SQ_PLAIN[i]
        RECOVER_SKIP[i] = _rules.RECOVER_SKIP[i]
    for i in range(256):
        PLAIN_KIND[i] = K_BORING
        VALUE_START[i] = i in b'{["-0123456789tfn'  # (orjson refuses QMP's single quotes)
    for i in range(ord("0"), ord("9") + 1):
        PLAIN_KIND[i] = K_DIGIT
    PLAIN_KIND[ord('"')] = K_QUOTE
    PLAIN_KIND[ord("{")] = K_OPEN
    PLAIN_KIND[ord("[")] = K_OPEN
    PLAIN_KIND[ord("}")] = K_CLOSE
    PLAIN_KIND[ord("]")] = K_CLOSE


_init_tables()
qc_choose(NULL)


def _scan_impl(name=None):
    """The block scan in use (``avx2``, ``sse2``, or ``none``: the byte loops
    alone); with ``name`` (those or ``portable``), use that one if this CPU
    has it, else the best it has (for tests and measurements).  Every
    variant gives the same items."""
    cdef bytes want
    if name is not None:
        want = name.encode("ascii")
        qc_choose(want)
    return qc_impl_name.decode("ascii")


def _tables():
    """The tables and constants this module runs on (compared with
    :mod:`qmpcore.framing.rules` by the tests)."""
    return {
        "BYTE_CLASS": bytes([CLASS[i] for i in range(256)]),
        "DQ_PLAIN": bytes([DQ_PLAIN[i] for i in range(256)]),
        "SQ_PLAIN": bytes([SQ_PLAIN[i] for i in range(256)]),
        "RECOVER_SKIP": bytes([RECOVER_SKIP[i] for i in range(256)]),
        "LONG_INT": LONG_INT,
        "WHOLE_SLACK": WHOLE_SLACK,
        "MIN_CAPACITY": MIN_CAPACITY,
        "SHRINK_RATIO": SHRINK_RATIO,
        "classes": (C_OTHER, C_WS, C_STRUCT, C_DQUOTE, C_SQUOTE, C_ZERO, C_DIGIT, C_MINUS, C_LOWER),
    }


cdef object _display(const unsigned char *s, Py_ssize_t n):
    """:func:`qmpcore.framing.qemu_json.display` in C: a bad token as QEMU
    shows it (up to the first NUL, invalid modified UTF-8 as U+FFFD)."""
    cdef const unsigned char *z = <const unsigned char *>memchr(s, 0, n)
    cdef Py_ssize_t i = 0, k = 0, length
    cdef long cp
    cdef unsigned char byte, nxt, mask
    cdef Py_UCS4 *out
    if z != NULL:
        n = z - s
    out = <Py_UCS4 *>PyMem_Malloc((n + 1) * sizeof(Py_UCS4))
    if out == NULL:
        raise MemoryError()
    try:
        while i < n:
            byte = s[i]
            i += 1
            if byte < 0x80:
                cp = byte
            elif byte >= 0xFE or not byte & 0x40:
                cp = -1
            else:
                length = 0
                mask = 0x80
                while byte & mask:
                    length += 1
                    mask >>= 1
                cp = byte & (mask - 1)
                while length > 1:
                    nxt = s[i] if i < n else 0
                    if nxt & 0xC0 != 0x80:
                        cp = -2
                        break
                    i += 1
                    cp = (cp << 6) | (nxt & 0x3F)
                    length -= 1
                if cp == -2:
                    cp = -1
                else:
                    length = 0
                    mask = 0x80
                    while byte & mask:
                        length += 1
                        mask >>= 1
                    if cp > 0x10FFFF or 0xD800 <= cp <= 0xDFFF or _nonchar(cp):
                        cp = -1
                    elif cp < _MIN_CP[length - 2] and not (cp == 0 and length == 2):
                        cp = -1
            out[k] = 0xFFFD if cp < 0 else <Py_UCS4>cp
            k += 1
        return PyUnicode_FromKindAndData(PyUnicode_4BYTE_KIND, out, k)
    finally:
        PyMem_Free(out)


def _display_bytes(token):
    """The compiled form of :func:`qmpcore.framing.qemu_json.display` (for tests)."""
    cdef bytes b = bytes(token)
    return _display(<const unsigned char *>PyBytes_AS_STRING(b), PyBytes_GET_SIZE(b))


def _plain_line(line, Py_ssize_t max_depth):
    """The compiled form of :func:`qmpcore.framing.rules.plain_line` (for tests)."""
    cdef bytes b = bytes(line)
    return _plain(<const unsigned char *>PyBytes_AS_STRING(b), PyBytes_GET_SIZE(b), max_depth)


cdef inline bint _is_digit(unsigned char c):
    return 0x30 <= c <= 0x39


cdef bint _plain(const unsigned char *p, Py_ssize_t n, Py_ssize_t max_depth) noexcept:
    """``p[:n]`` is valid JSON: does :func:`qmpcore.framing.rules.plain_line`
    hold (within max_depth, no run of LONG_INT digits outside strings, no
    ``0e``/``0E`` starting a digit run)?"""
    cdef Py_ssize_t i = 0, depth = 0, run = 0, stop = 0
    cdef unsigned char k
    while i < n:
        if run == 0 and i >= stop and n - i >= 64:
            # whole blocks at a time (src/_scan.h), from a token boundary
            i = qc_plain(p, i, n, max_depth, LONG_INT, &depth, &stop)
            if i < 0:
                return False
            if i >= n:
                break
        k = PLAIN_KIND[p[i]]
        i += 1
        if k == K_BORING:
            run = 0
        elif k == K_DIGIT:
            # JSON allows 0e5; QEMU's lexer ends the number at the "e".
            if run == 0 and p[i - 1] == 0x30 and i < n and (p[i] == 0x65 or p[i] == 0x45):
                return False
            run += 1
            if run >= LONG_INT:
                return False
        elif k == K_QUOTE:
            run = 0
            while True:
                k = p[i]
                if k == 0x5C:
                    i += 2
                else:
                    i += 1
                    if k == 0x22:
                        break
        elif k == K_OPEN:
            run = 0
            depth += 1
            if depth > max_depth:
                return False
        else:
            run = 0
            depth -= 1
    return True


# What _prepare() found in a frame.
DEF F_LONG = 1      # an integer orjson may round: decode with the json module
DEF F_SPECIAL = 2   # inf/nan or an integer too long for text: json module
DEF F_BAD = 4       # not valid: Prep.reason says why, or QEMU's parser must
DEF F_NONCHAR = 8   # a Unicode noncharacter (an error in strict mode)
DEF F_CHANGED = 16  # the text was rewritten into Prep.buf
DEF F_HI = 32       # a string with bytes >= 0x80 (UTF-8 not checked here)
DEF F_MEMBERS = 64  # an object got a second member (strict: maybe a duplicate)

# QEMU's parser as a pushdown automaton over tokens: what comes next.
DEF G_VALUE = 0     # a value (in an object: a key or a member's value)
DEF G_FIRST = 1     # after { or [: its closer, or a value
DEF G_ARR_NEXT = 2  # after a list item: , or ]
DEF G_COLON = 3     # after a key
DEF G_OBJ_NEXT = 4  # after a member's value: , or }
DEF G_DONE = 5      # the frame's value is complete
# Levels of the stack.
DEF L_ARR = 0
DEF L_KEY = 1       # object, parsing a key
DEF L_MEMBER = 2    # object, parsing a member's value

# QEMU's words for the errors the automaton finds (index: Prep.reason).
cdef tuple _GRAMMAR_REASONS = (
    None,
    "JSON parse error, expecting value",
    "JSON parse error, expected separator in list",
    "JSON parse error, missing : in object pair",
    "JSON parse error, expected separator in dict",
    "JSON parse error, key is not a string in object",
    "JSON parse error, premature EOI",
    None,  # 7: invalid keyword (worded with the keyword)
)


cdef struct Prep:
    char *buf           # rewritten text (when F_CHANGED)
    Py_ssize_t len
    Py_ssize_t cap
    Py_ssize_t copied   # input bytes accounted for in buf
    int flags
    int reason          # index into _GRAMMAR_REASONS when the automaton failed
    Py_ssize_t kw_at    # (reason 7: the invalid keyword's place)
    Py_ssize_t kw_len
    Py_ssize_t colons   # ":" outside strings: object members, for valid JSON
    int state           # G_*
    Py_ssize_t depth
    Py_ssize_t max_depth
    unsigned char *levels  # L_* per open container
    Py_ssize_t levels_cap
    unsigned char *fixed   # the caller's small array levels starts in


cdef int _rewrite(Prep *r, const unsigned char *p, Py_ssize_t at, const char *text,
                  Py_ssize_t size, Py_ssize_t resume) except -1:
    """Output p[r.copied:at], then ``text`` instead of p[at:resume]."""
    cdef Py_ssize_t need = r.len + (at - r.copied) + size
    cdef Py_ssize_t cap
    cdef char *mem
    if need > r.cap:
        cap = r.cap * 2 if r.cap else 256
        while cap < need:
            cap *= 2
        mem = <char *>PyMem_Realloc(r.buf, cap)
        if mem == NULL:
            raise MemoryError()
        r.buf = mem
        r.cap = cap
    memcpy(r.buf + r.len, p + r.copied, at - r.copied)
    r.len += at - r.copied
    memcpy(r.buf + r.len, text, size)
    r.len += size
    r.copied = resume
    r.flags |= F_CHANGED
    return 0


cdef inline long _hex4(const unsigned char *p, Py_ssize_t i, Py_ssize_t n) noexcept:
    """The value of four hex digits at p[i], or -1."""
    cdef long v = 0
    cdef Py_ssize_t j
    cdef unsigned char c
    if i + 4 > n:
        return -1
    for j in range(i, i + 4):
        c = p[j]
        if 0x30 <= c <= 0x39:
            v = v * 16 + (c - 0x30)
        elif 0x61 <= c <= 0x66:
            v = v * 16 + (c - 0x57)
        elif 0x41 <= c <= 0x46:
            v = v * 16 + (c - 0x37)
        else:
            return -1
    return v


cdef inline bint _nonchar(long cp) noexcept:
    return 0xFDD0 <= cp <= 0xFDEF or (cp & 0xFFFE) == 0xFFFE


cdef inline bint _fail(Prep *r, int reason) noexcept:
    r.reason = reason
    r.flags |= F_BAD
    return False


cdef inline bint _complete(Prep *r, bint is_string) noexcept:
    """A value is complete: hand it to the container it belongs to."""
    cdef unsigned char level
    if r.depth == 0:
        r.state = G_DONE
        return True
    level = r.levels[r.depth - 1]
    if level == L_ARR:
        r.state = G_ARR_NEXT
    elif level == L_KEY:
        if not is_string:
            return _fail(r, 5)
        r.state = G_COLON
    else:
        r.state = G_OBJ_NEXT
    return True


cdef bint _grow_levels(Prep *r) noexcept:
    """Room for one more open container, up to max_depth (doubling)."""
    cdef Py_ssize_t cap = r.levels_cap * 2
    cdef unsigned char *mem
    if r.depth >= r.max_depth:
        return False
    if cap > r.max_depth:
        cap = r.max_depth
    if r.levels == r.fixed:
        mem = <unsigned char *>PyMem_Malloc(cap)
        if mem != NULL:
            memcpy(mem, r.levels, r.depth)
    else:
        mem = <unsigned char *>PyMem_Realloc(r.levels, cap)
    if mem == NULL:
        return False
    r.levels = mem
    r.levels_cap = cap
    return True


cdef inline bint _close(Prep *r) noexcept:
    r.depth -= 1
    return _complete(r, False)


cdef bint _grammar(Prep *r, unsigned char c) noexcept:
    """Step the automaton on a token starting with byte ``c`` (for strings
    and scalars: before their content is checked).  False when the frame is
    found invalid here, or the token is left to the caller: it is a value
    (string or scalar) exactly when True is returned and r.state is G_VALUE."""
    cdef int state = r.state
    cdef unsigned char k = CLASS[c]
    if state == G_FIRST:
        if (c == 0x7D and r.levels[r.depth - 1] != L_ARR) or (c == 0x5D and r.levels[r.depth - 1] == L_ARR):
            return _close(r)
        state = G_VALUE
        r.state = G_VALUE
    if state == G_VALUE:
        if c == 0x7B or c == 0x5B:
            if r.depth >= r.levels_cap and not _grow_levels(r):
                r.flags |= F_BAD  # (cannot happen within max_depth but for lack of memory)
                return False
            r.levels[r.depth] = L_KEY if c == 0x7B else L_ARR
            r.depth += 1
            r.state = G_FIRST
            return True
        if k == C_STRUCT:
            return _fail(r, 1)
        return True  # a string or scalar: the caller checks and completes it
    if state == G_ARR_NEXT:
        if c == 0x5D:
            return _close(r)
        if c == 0x2C:
            r.state = G_VALUE
            return True
        return _fail(r, 2)
    if state == G_COLON:
        if c == 0x3A:
            r.levels[r.depth - 1] = L_MEMBER
            r.state = G_VALUE
            return True
        return _fail(r, 3)
    if state == G_OBJ_NEXT:
        if c == 0x7D:
            return _close(r)
        if c == 0x2C:
            r.levels[r.depth - 1] = L_KEY
            r.flags |= F_MEMBERS
            r.state = G_VALUE
            return True
        return _fail(r, 4)
    r.flags |= F_BAD  # tokens after a complete value: not a frame the lexer makes
    return False


cdef int _prepare(const unsigned char *p, Py_ssize_t n, bint strict, Py_ssize_t max_digits,
                  Prep *r) except -1:
    """One pass over a complete frame (its tokens are lexically valid):
    check it with QEMU's grammar, rewrite QEMU's dialect as plain JSON, flag
    what needs more than orjson.  Stops at the first error (F_BAD)."""
    cdef Py_ssize_t i = 0, j, s, d0, nd
    cdef unsigned char c, q, e, k
    cdef long cp, lo
    cdef bint isint, neg
    while i < n:
        c = p[i]
        k = CLASS[c]
        if k == C_WS:
            i += 1
            continue
        if not _grammar(r, c):
            return 0
        if k == C_STRUCT:
            if c == 0x3A:
                r.colons += 1
            i += 1
        elif k == C_DQUOTE or k == C_SQUOTE:
            q = c
            if q == 0x27:
                _rewrite(r, p, i, '"', 1, i + 1)
            i += 1
            while i < n:
                c = p[i]
                if c == q:
                    if q == 0x27:
                        _rewrite(r, p, i, '"', 1, i + 1)
                    i += 1
                    break
                if c == 0x5C:  # backslash
                    e = p[i + 1] if i + 1 < n else 0
                    if e == 0x27:  # \' : QMP's escape, not JSON's
                        _rewrite(r, p, i, "'", 1, i + 2)
                        i += 2
                    elif e == 0x75:  # \u
                        cp = _hex4(p, i + 2, n)
                        j = i + 6
                        if 0xD800 <= cp <= 0xDBFF:
                            lo = -1
                            if j + 1 < n and p[j] == 0x5C and p[j + 1] == 0x75:
                                lo = _hex4(p, j + 2, n)
                            if not 0xDC00 <= lo <= 0xDFFF:
                                r.flags |= F_BAD
                                return 0
                            cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00)
                            j += 6
                        elif cp < 0 or 0xDC00 <= cp <= 0xDFFF:
                            r.flags |= F_BAD
                            return 0
                        if _nonchar(cp):
                            r.flags |= F_NONCHAR
                        i = j
                    elif e == 0x22 or e == 0x5C or e == 0x2F or e == 0x62 or e == 0x66 or e == 0x6E \
                            or e == 0x72 or e == 0x74:
                        i += 2
                    else:
                        r.flags |= F_BAD
                        return 0
                elif c == 0x22:  # a bare " inside '...'
                    _rewrite(r, p, i, '\\"', 2, i + 1)
                    i += 1
                elif c >= 0x80:
                    r.flags |= F_HI
                    if c == 0xC0 and i + 1 < n and p[i + 1] == 0x80:  # modified UTF-8 NUL
                        _rewrite(r, p, i, "\\u0000", 6, i + 2)
                        i += 2
                        continue
                    if c == 0xEF and i + 2 < n:
                        if (p[i + 1] == 0xB7 and 0x90 <= p[i + 2] <= 0xAF) or (p[i + 1] == 0xBF and p[i + 2] >= 0xBE):
                            r.flags |= F_NONCHAR
                    elif 0xF0 <= c <= 0xF4 and i + 3 < n:
                        if (p[i + 1] & 0x0F) == 0x0F and p[i + 2] == 0xBF and p[i + 3] >= 0xBE:
                            r.flags |= F_NONCHAR
                    i += 1
                else:
                    i += 1
            if not _complete(r, True):
                return 0
        elif k == C_MINUS or k == C_ZERO or k == C_DIGIT or k == C_LOWER:
            s = i
            neg = c == 0x2D
            if neg:
                i += 1
            if i < n and CLASS[p[i]] == C_LOWER:
                j = i
                while i < n and CLASS[p[i]] == C_LOWER:
                    i += 1
                nd = i - j
                if not neg and ((nd == 4 and (memcmp(p + j, b"true", 4) == 0 or memcmp(p + j, b"null", 4) == 0))
                                or (nd == 5 and memcmp(p + j, b"false", 5) == 0)):
                    pass
                elif not strict and nd == 3 and memcmp(p + j, b"inf", 3) == 0:
                    _rewrite(r, p, j, "Infinity", 8, i)
                    r.flags |= F_SPECIAL
                elif not strict and nd == 3 and memcmp(p + j, b"nan", 3) == 0:
                    _rewrite(r, p, s, "NaN", 3, i)  # -nan is nan too
                    r.flags |= F_SPECIAL
                else:
                    r.reason = 7  # QEMU: invalid keyword
                    r.kw_at = s
                    r.kw_len = i - s
                    r.flags |= F_BAD
                    return 0
            else:
                d0 = i
                while i < n and _is_digit(p[i]):
                    i += 1
                nd = i - d0
                isint = True
                if i < n and p[i] == 0x2E:
                    isint = False
                    i += 1
                    while i < n and _is_digit(p[i]):
                        i += 1
                if i < n and (p[i] == 0x65 or p[i] == 0x45) and not (isint and nd == 1 and p[d0] == 0x30):
                    # (0e5 is 0, then e5, to QEMU's lexer)
                    isint = False
                    i += 1
                    if i < n and (p[i] == 0x2B or p[i] == 0x2D):
                        i += 1
                    while i < n and _is_digit(p[i]):
                        i += 1
                if isint and nd >= LONG_INT:
                    r.flags |= F_LONG
                    if nd > 640 and max_digits < 0:  # (no limit below 640 digits)
                        max_digits = _max_digits()
                    if 0 < max_digits < nd:  # Python reads no such text; QEMU makes it a double
                        _rewrite(r, p, d0, "1e999", 5, i)
                        r.flags |= F_SPECIAL
            if not _complete(r, False):
                return 0
        else:
            r.flags |= F_BAD
            return 0
    if r.state != G_DONE:
        _fail(r, 6)
    return 0


cdef Py_ssize_t _entries(object value) except -1:
    """Object members in ``value`` at any depth (no recursion)."""
    cdef list stack = [value]
    cdef Py_ssize_t count = 0
    cdef object v, x
    while stack:
        v = stack.pop()
        if type(v) is dict:
            count += len(<dict>v)
            for x in (<dict>v).values():
                if type(x) is dict or type(x) is list:
                    stack.append(x)
        elif type(v) is list:
            for x in <list>v:
                if type(x) is dict or type(x) is list:
                    stack.append(x)
    return count


@cython.final
cdef class Framer:
    """Split a byte stream into QMP frames and decode them (compiled).

    See :class:`qmpcore.framing.pure.Framer`; the two behave identically.
    """

    cdef readonly Py_ssize_t max_frame_size
    cdef readonly Py_ssize_t max_depth
    cdef readonly Py_ssize_t max_tokens
    cdef readonly bint raw
    cdef readonly bint strict

    # Held bytes of an unfinished frame.
    cdef char *_buf
    cdef Py_ssize_t _len
    cdef Py_ssize_t _cap
    cdef long long _base       # stream offset of index 0 of the scanned buffer

    # Lexer and frame state; indices are into the buffer being scanned.
    cdef int _state
    cdef bint _in_frame
    cdef bint _skip
    cdef bint _slow            # frame needs the exact decoder
    cdef Py_ssize_t _start
    cdef Py_ssize_t _tok
    cdef Py_ssize_t _brace
    cdef Py_ssize_t _bracket
    cdef Py_ssize_t _ntok
    cdef Py_ssize_t _nofast    # a line already known not to be one plain frame
    cdef Py_ssize_t _blocks_at  # _inside(): no block scan before here (a block refused it)
    cdef object _why           # _decode_prepared(): QEMU's words for the error found

    # The error run not yet output (reason is None when there is none):
    # its sync flag, how many errors, and the stream offsets it spans.
    cdef object _pr
    cdef bint _ps
    cdef Py_ssize_t _pc
    cdef long long _po
    cdef long long _pe

    # The buffer of the feed() in progress.
    cdef const unsigned char *_p
    cdef Py_ssize_t _n
    cdef object _chunk         # the caller's object when scanned in place

    def __cinit__(self):
        self._buf = NULL
        self._len = 0
        self._cap = 0

    def __init__(self, max_frame_size=64 << 20, max_depth=1024, *, max_tokens=2 << 20,
                 raw=False, strict=False):
        if max_frame_size < 1 or max_depth < 1 or max_tokens < 1:
            raise ValueError("limits must be positive")
        self.max_frame_size = max_frame_size
        self.max_depth = max_depth
        self.max_tokens = max_tokens
        self.raw = bool(raw)
        self.strict = bool(strict)
        self._base = 0
        self._len = 0
        self._nofast = -1
        self._blocks_at = 0
        self._pr = None
        self._clear(START)

    def __dealloc__(self):
        PyMem_Free(self._buf)

    @property
    def buffered(self):
        """Bytes held for an unfinished frame."""
        return self._len

    @property
    def capacity(self):
        """Bytes allocated for the buffer (given back after a large frame)."""
        return self._cap

    def reset(self):
        """Forget any partial frame and start afresh (offsets keep counting)."""
        self._base += self._len
        self._len = 0
        self._nofast = -1
        self._blocks_at = 0
        self._clear(START)

    cdef inline void _clear(self, int state) noexcept:
        self._state = state
        self._in_frame = False
        self._skip = False
        self._slow = False
        self._start = 0
        self._tok = 0
        self._brace = 0
        self._bracket = 0
        self._ntok = 0

    cdef int _reserve(self, Py_ssize_t size) except -1:
        cdef Py_ssize_t cap
        cdef char *mem
        if size <= self._cap:
            return 0
        cap = self._cap * 2 if self._cap else 4096
        while cap < size:
            cap *= 2
        mem = <char *>PyMem_Realloc(self._buf, cap)
        if mem == NULL:
            raise MemoryError()
        self._buf = mem
        self._cap = cap
        return 0

    def feed(self, data):
        """Add bytes from the stream; return the items they complete."""
        cdef Py_buffer view
        cdef list out = []
        if type(data) is bytes:
            # bytes cannot change under us: read them in place, no buffer
            # request (one-byte feeds cost per call, not per byte held).
            if (self._len == 0 and self._state == START and not self._in_frame
                    and not self.raw and not self.strict):
                # The usual case: one whole reply or event in one read.  (Inside
                # a frame being skipped for a limit nothing is held either.)
                if self._one_line(<const unsigned char *>PyBytes_AS_STRING(data),
                                  PyBytes_GET_SIZE(data), data, out):
                    return out
            self._feed(<const unsigned char *>PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data), data, out)
            return out
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(
                f"Framer.feed() takes bytes, bytearray or memoryview, not {type(data).__name__}")
        PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
        try:
            self._feed(<const unsigned char *>view.buf, view.len, data, out)
        finally:
            PyBuffer_Release(&view)
        return out

    cdef int _feed(self, const unsigned char *buf, Py_ssize_t size, object data, list out) except -1:
        """feed() on the bytes ``buf[:size]`` of ``data``."""
        cdef Py_ssize_t keep, pos
        try:
            if self._len == 0:
                # Nothing held: scan the chunk where it lies.
                self._p = buf
                self._n = size
                self._chunk = data
                pos = 0
            else:
                if self._len + size > self._cap:
                    self._reserve(self._len + size)
                memcpy(self._buf + self._len, buf, size)
                pos = self._len
                self._len += size
                self._p = <const unsigned char *>self._buf
                self._n = self._len
                self._chunk = None
            self._scan(pos, out)
            # Keep only what an unfinished frame needs.
            if self._in_frame and not self._skip:
                if self._n - self._start > self.max_frame_size:
                    self._limit(_TOO_BIG, self._base + self._start + self.max_frame_size, out)
                    keep = self._n
                else:
                    keep = self._start
            else:
                keep = self._n
            if self._chunk is not None:
                if keep < self._n:
                    self._reserve(self._n - keep)
                    memcpy(self._buf, self._p + keep, self._n - keep)
            elif keep:
                memmove(self._buf, self._buf + keep, self._n - keep)
            self._len = self._n - keep
            self._base += keep
            self._start -= keep
            self._tok -= keep
            self._nofast -= keep
            self._blocks_at -= keep
            if self._pr is not None:
                self._flush(out)
            if self._len == 0 or self._len * SHRINK_RATIO <= self._cap:
                self._shrink()
        finally:
            self._chunk = None
            self._p = NULL
        return 0

    cdef void _shrink(self) noexcept:
        """Give memory back: all of it when nothing is held, half of it
        (repeatedly) when at most a quarter is used (rules.capacity_after)."""
        cdef Py_ssize_t cap = self._cap
        cdef char *mem
        if self._len == 0:
            if cap:
                PyMem_Free(self._buf)
                self._buf = NULL
                self._cap = 0
            return
        if cap <= MIN_CAPACITY or self._len * SHRINK_RATIO > cap:
            return
        while cap > MIN_CAPACITY and self._len * 2 <= cap // 2:
            cap //= 2
        mem = <char *>PyMem_Realloc(self._buf, cap)
        if mem != NULL:  # else keep the larger buffer
            self._buf = mem
            self._cap = cap

    cdef int _scan(self, Py_ssize_t pos, list out) except -1:
        cdef const unsigned char *p = self._p
        cdef Py_ssize_t n = self._n
        cdef unsigned char c, cls
        cdef int state
        cdef Py_ssize_t nxt
        while pos < n:
            state = self._state
            c = p[pos]
            if state == START:
                if self._in_frame and not self._skip:
                    pos = self._inside(pos)
                    if pos >= n:
                        break
                    c = p[pos]
                cls = CLASS[c]
                if cls == C_WS:
                    pos += 1
                    while pos < n and CLASS[p[pos]] == C_WS:
                        pos += 1
                    continue
                if (not self._in_frame and pos > self._nofast and not self.raw and not self.strict
                        and self._pr is None and VALUE_START[c]):
                    # (not amid garbage, nor for a line no value starts like)
                    nxt = self._fast_line(pos, out)
                    if nxt:
                        pos = nxt
                        continue
                if not self._in_frame and not self.raw and (cls == C_OTHER or (cls == C_STRUCT and c != 0x7B and c != 0x5B)):
                    pos = self._garbage(pos, out)
                    continue
                if cls == C_STRUCT:
                    self._begin(pos)
                    self._token_done(pos + 1, c, out)
                    pos += 1
                    continue
                if cls == C_DQUOTE:
                    # Most strings end in the same chunk with no escape:
                    # finish them here without a trip through the DQ state.
                    self._begin(pos)
                    pos += 1
                    while pos < n and DQ_PLAIN[p[pos]]:
                        pos += 1
                    if pos < n and p[pos] == 0x22:
                        pos += 1
                        self._token_done(pos, 0, out)
                    else:
                        self._state = DQ
                    continue
                elif cls == C_SQUOTE:
                    self._begin(pos)
                    self._slow = True
                    self._state = SQ
                elif cls == C_ZERO:
                    self._begin(pos)
                    self._state = ZERO
                elif cls == C_DIGIT:
                    self._begin(pos)
                    self._state = DIGITS
                elif cls == C_MINUS:
                    self._begin(pos)
                    self._state = SIGN
                elif cls == C_LOWER:
                    self._begin(pos)
                    self._state = KEYWORD
                else:
                    self._error(pos, out)
                pos += 1
            elif state == DQ:
                while pos < n and DQ_PLAIN[p[pos]]:
                    pos += 1
                if pos >= n:
                    break
                c = p[pos]
                if c == 0x22:
                    self._state = START
                    self._token_done(pos + 1, 0, out)
                elif c == 0x5C:
                    self._state = DQ_ESC
                else:
                    self._error(pos, out)
                pos += 1
            elif state == SQ:
                while pos < n and SQ_PLAIN[p[pos]]:
                    pos += 1
                if pos >= n:
                    break
                c = p[pos]
                if c == 0x27:
                    self._state = START
                    self._token_done(pos + 1, 0, out)
                elif c == 0x5C:
                    self._state = SQ_ESC
                else:
                    self._error(pos, out)
                pos += 1
            elif state == DQ_ESC or state == SQ_ESC:
                if 0x20 <= c <= 0xFD:
                    self._state = state - 1
                else:
                    self._error(pos, out)
                pos += 1
            elif state == RECOVERY:
                while pos < n and RECOVER_SKIP[p[pos]]:
                    pos += 1
                if pos < n:
                    self._state = START
            elif state == KEYWORD:
                while pos < n and CLASS[p[pos]] == C_LOWER:
                    pos += 1
                if pos < n:
                    self._state = START
                    self._token_done(pos, 0, out)
            elif state == DIGITS or state == MANT_DIGITS or state == EXP_DIGITS:
                while pos < n and _is_digit(p[pos]):
                    pos += 1
                if pos >= n:
                    break
                c = p[pos]
                if state != EXP_DIGITS and (c == 0x65 or c == 0x45):  # e E
                    self._state = EXP_E
                    pos += 1
                elif state == DIGITS and c == 0x2E:  # .
                    self._state = MANT
                    pos += 1
                else:
                    if state == DIGITS and pos - self._tok >= LONG_INT:
                        self._slow = True
                    self._state = START
                    self._token_done(pos, 0, out)
            elif state == ZERO:
                if c == 0x2E:
                    self._state = MANT
                elif _is_digit(c):
                    self._error(pos, out)
                else:
                    if c == 0x65 or c == 0x45:  # 0e5: orjson would read one number
                        self._slow = True
                    self._state = START
                    self._token_done(pos, 0, out)
                    continue
                pos += 1
            elif state == SIGN:
                if c == 0x30:
                    self._state = ZERO
                elif _is_digit(c):
                    self._state = DIGITS
                elif CLASS[c] == C_LOWER and not self.strict:  # QEMU's -inf, -nan
                    self._state = KEYWORD
                else:
                    self._error(pos, out)
                pos += 1
            elif state == MANT or state == EXP_SIGN:
                if _is_digit(c):
                    self._state = MANT_DIGITS if state == MANT else EXP_DIGITS
                else:
                    self._error(pos, out)
                pos += 1
            else:  # EXP_E
                if c == 0x2B or c == 0x2D:
                    self._state = EXP_SIGN
                elif _is_digit(c):
                    self._state = EXP_DIGITS
                else:
                    self._error(pos, out)
                pos += 1
        return 0

    cdef Py_ssize_t _garbage(self, Py_ssize_t pos, list out) except -1:
        """Between frames, a byte no frame starts with: a lone , : ] or }
        (its own frame: "expecting value"), or a lexical error.  Errors the
        same byte would repeat are joined here, a run at a time, with exactly
        the items byte-by-byte scanning gives; returns where scanning resumes."""
        cdef const unsigned char *p = self._p
        cdef Py_ssize_t n = self._n
        cdef Py_ssize_t q, last, k
        cdef unsigned char c = p[pos], d
        if CLASS[c] == C_STRUCT:
            self._err(_EXPECTING, 0, 0, self._base + pos, 1, False, out)
            q = pos + 1
            last = -1
            k = 0
            while q < n:
                d = p[q]
                if d == 0x2C or d == 0x3A or d == 0x5D or d == 0x7D:
                    last = q
                    k += 1
                elif CLASS[d] != C_WS:
                    break
                q += 1
            if k:
                self._pc += k
                self._pe = self._base + last + 1
            return q
        # A lexical error; bytes recovery would stop at again (control
        # bytes, 0xFE, 0xFF) repeat it exactly.
        self._error(pos, out)
        q = pos + 1
        if not RECOVER_SKIP[c]:
            while q < n and p[q] == c:
                q += 1
            if q > pos + 1:
                if c == 0xFF and not self.strict:
                    pass  # one SYNC stands for the run
                else:
                    self._pc += q - pos - 1
                    self._pe = self._base + q
        return q

    cdef bint _one_line(self, const unsigned char *p, Py_ssize_t n, object data,
                        list out) except -1:
        """Take ``data`` whole when it is exactly one line holding one plain frame."""
        if n == 0 or p[n - 1] != 0x0A or memchr(p, 0x0A, n - 1) != NULL:
            return False
        if n > self.max_frame_size or n > self.max_tokens or CLASS[p[0]] == C_WS:
            return False
        try:
            value = _loads(data)
        except _JSONDecodeError:
            return False
        if not _plain(p, n, self.max_depth):
            return False
        self._put(value, out)
        self._base += n
        self._nofast = -1
        return True

    cdef inline Py_ssize_t _inside(self, Py_ssize_t pos) noexcept:
        """Scan the plain middle of a frame: whitespace, brackets, commas,
        colons, strings without escapes, integers and keywords.

        Counters live in locals here; anything else (a frame that may end,
        a limit, an escape, a float, the end of the chunk) stops the loop
        and the general state machine takes over at that byte.  Whole
        64-byte blocks go to qc_blocks() (src/_scan.h), which crosses them
        with bitmasks and stops at a token boundary before any block this
        loop would stop in; a block it refused is then crossed here first.
        """
        cdef const unsigned char *p = self._p
        cdef Py_ssize_t n = self._n
        cdef Py_ssize_t brace = self._brace, bracket = self._bracket, ntok = self._ntok
        cdef Py_ssize_t last = self._start + self.max_frame_size  # last allowed token end
        cdef Py_ssize_t max_depth = self.max_depth, max_tokens = self.max_tokens
        cdef Py_ssize_t q, blocks_at = self._blocks_at, start = self._start
        cdef unsigned char c, k
        while pos < n:
            if pos >= blocks_at and n - pos >= 64 and pos - start >= 128:
                # (small frames, such as replies and events, end in the first
                # blocks: the byte loop is as fast there)
                pos = qc_blocks(p, pos, n, last, max_depth, max_tokens, LONG_INT,
                                &brace, &bracket, &ntok, &blocks_at)
                if pos >= n:
                    break
            c = p[pos]
            k = CLASS[c]
            if k == C_WS:
                pos += 1
                continue
            if ntok >= max_tokens:
                break
            if k == C_DQUOTE:
                q = pos + 1
                while q < n and DQ_PLAIN[p[q]]:
                    q += 1
                if q >= n or p[q] != 0x22 or q >= last:
                    break
                pos = q + 1
            elif k == C_STRUCT:
                if pos >= last:
                    break
                if c == 0x7B or c == 0x5B:  # { [
                    if brace + bracket >= max_depth:
                        break
                    if c == 0x7B:
                        brace += 1
                    else:
                        bracket += 1
                elif c == 0x7D:  # }
                    if brace <= 1 and (brace <= 0 or bracket <= 0):
                        break  # the frame may end here
                    brace -= 1
                elif c == 0x5D:  # ]
                    if bracket <= 1 and (bracket <= 0 or brace <= 0):
                        break
                    bracket -= 1
                pos += 1
            elif k == C_LOWER or k == C_DIGIT:
                q = pos + 1
                if k == C_LOWER:
                    while q < n and CLASS[p[q]] == C_LOWER:
                        q += 1
                else:
                    while q < n and 0x30 <= p[q] <= 0x39:
                        q += 1
                    if q < n and (p[q] == 0x2E or p[q] == 0x65 or p[q] == 0x45):
                        break  # a float: the general path
                    if q - pos >= LONG_INT:
                        self._slow = True
                if q >= n or q > last:
                    break
                pos = q
            else:
                break
            ntok += 1
        self._brace = brace
        self._bracket = bracket
        self._ntok = ntok
        self._blocks_at = blocks_at
        return pos

    cdef Py_ssize_t _fast_line(self, Py_ssize_t pos, list out) except -1:
        """Decode a whole line at once when it holds exactly one plain frame.

        A shortcut only: orjson must accept the line as one value, and the
        scan in _plain() must find nothing the lexer would treat specially.
        Returns the position after the line, or 0.
        """
        cdef const unsigned char *p = self._p
        cdef const unsigned char *nl = <const unsigned char *>memchr(p + pos, 0x0A, self._n - pos)
        cdef Py_ssize_t end
        cdef object frame
        if nl == NULL:
            self._nofast = self._n - 1  # no line ends in what is held: not before more comes
            return 0
        end = nl - p + 1
        self._nofast = end - 1  # whatever happens, do not try this line again
        if end - pos > self.max_frame_size or end - pos > self.max_tokens:
            return 0
        if pos == 0 and end == self._n and self._chunk is not None:
            frame = self._chunk
        else:
            frame = self._view(pos, end)
        try:
            value = _loads(frame)
        except _JSONDecodeError:
            return 0
        if not _plain(p + pos, end - pos, self.max_depth):
            return 0
        self._put(value, out)
        return end

    cdef inline object _view(self, Py_ssize_t start, Py_ssize_t end):
        """The bytes of a frame for orjson: copied when small (orjson reads
        bytes faster than a memoryview), viewed in place when large."""
        if end - start < 4096:
            return PyBytes_FromStringAndSize(<const char *>self._p + start, end - start)
        return PyMemoryView_FromMemory(<char *>self._p + start, end - start, PyBUF_READ)

    cdef inline void _begin(self, Py_ssize_t pos) noexcept:
        self._tok = pos
        if not self._in_frame:
            self._in_frame = True
            self._start = pos

    cdef int _limit(self, object reason, long long offset, list out) except -1:
        self._put(_FrameError(reason, offset), out)
        self._skip = True
        return 0

    cdef inline int _put(self, object item, list out) except -1:
        """Output an item that is not joined with anything."""
        if self._pr is not None:
            self._flush(out)
        out.append(item)
        return 0

    cdef int _flush(self, list out) except -1:
        """Output the error run held in C fields, if any."""
        if self._pr is None:
            return 0
        out.append(_FrameError(self._pr, self._po, self._ps, self._pc, self._pe - self._po))
        if self._ps:
            out.append(_SYNC)  # strict 0xFF: the SYNC follows its error run
        self._pr = None
        return 0

    cdef object _stray(self, Py_ssize_t first, Py_ssize_t pos):
        """QEMU's message for the bad token ``p[first:pos + 1]``."""
        if first == pos:
            return _STRAY1[self._p[pos]]
        return "JSON parse error, stray '" + _display(self._p + first, pos + 1 - first) + "'"

    cdef int _err(self, object reason, Py_ssize_t first, Py_ssize_t pos, long long offset,
                  Py_ssize_t nbytes, bint sync, list out) except -1:
        """One error: ``reason``, or (when None) a stray token ``p[first:pos + 1]``.
        Joined with the run before it when qmpcore.framing.rules.joinable allows."""
        if self._pr is not None and self._ps == sync:
            if self.strict:
                if reason is None:
                    reason = self._stray(first, pos)
                joined = reason is self._pr or reason == self._pr
            else:
                joined = True
            if joined:
                self._pc += 1
                self._pe = offset + nbytes
                return 0
        self._flush(out)
        self._pr = self._stray(first, pos) if reason is None else reason
        self._ps = sync
        self._pc = 1
        self._po = offset
        self._pe = offset + nbytes
        return 0

    cdef int _sync(self, list out) except -1:
        """A 0xFF outside strict mode: one SYNC for a run of them."""
        cdef Py_ssize_t n
        if self._pr is not None:
            self._flush(out)
        else:
            n = len(out)
            if n and out[n - 1] is _SYNC:
                return 0
        out.append(_SYNC)
        return 0

    cdef inline int _token_done(self, Py_ssize_t end, unsigned char c, list out) except -1:
        if not self._skip and end - self._start > self.max_frame_size:
            self._limit(_TOO_BIG, self._base + self._start + self.max_frame_size, out)
        if c == 0x7B:
            self._brace += 1
        elif c == 0x7D:
            self._brace -= 1
        elif c == 0x5B:
            self._bracket += 1
        elif c == 0x5D:
            self._bracket -= 1
        if not self._skip:
            if (c == 0x7B or c == 0x5B) and self._brace + self._bracket > self.max_depth:
                self._limit(_TOO_DEEP, self._base + end - 1, out)
            else:
                self._ntok += 1
                if self._ntok > self.max_tokens:
                    self._limit(_TOO_MANY, self._base + self._tok, out)
        if self._brace < 0 or self._bracket < 0 or (self._brace == 0 and self._bracket == 0):
            if not self._skip:
                self._emit(end, out)
            self._clear(START)
        return 0

    cdef int _emit(self, Py_ssize_t end, list out) except -1:
        cdef Py_ssize_t start = self._start
        cdef Py_ssize_t i
        cdef bint whole, tried
        cdef object frame
        if self.raw:
            self._put(PyBytes_FromStringAndSize(<const char *>self._p + start, end - start), out)
            return 0
        if end - start == 1 and CLASS[self._p[start]] == C_STRUCT:
            # A lone , : ] or } (after a frame, say): no value can start so.
            self._err(_EXPECTING, 0, 0, self._base + start, 1, False, out)
            return 0
        # orjson first, unless the frame needs more or is small garbage
        # amid garbage (then the C pass says why without an exception).
        tried = not self._slow and not self.strict and not (self._pr is not None and end - start < 4096)
        if tried:
            # A chunk that holds just this frame goes to orjson as it is.
            whole = False
            if self._chunk is not None and start + (self._n - end) <= WHOLE_SLACK:
                whole = True
                for i in range(start):
                    if CLASS[self._p[i]] != C_WS:
                        whole = False
                for i in range(end, self._n):
                    if CLASS[self._p[i]] != C_WS:
                        whole = False
            if whole:
                frame = self._chunk
            else:
                frame = self._view(start, end)
            try:
                value = _loads(frame)
            except _JSONDecodeError:
                pass
            else:
                self._put(value, out)
                return 0
        self._why = None
        value = self._decode_prepared(start, end, tried)
        if self._why is not None:
            self._err(self._why, 0, 0, self._base + start, end - start, False, out)
            return 0
        if value is not _NO:
            self._put(value, out)
            return 0
        frame = PyBytes_FromStringAndSize(<const char *>self._p + start, end - start)
        try:
            value = _decode_frame(frame, self.strict, self._slow)
        except _ParseError as exc:
            self._err(exc.args[0], 0, 0, self._base + start, end - start, False, out)
        else:
            self._put(value, out)
        return 0

    cdef object _decode_prepared(self, Py_ssize_t start, Py_ssize_t end, bint tried):
        """Decode ``p[start:end]`` after _prepare(): the value, or _NO with
        _why set to QEMU's words when the frame surely is not valid, or _NO
        alone when QEMU's parser must decide.
        ``tried``: orjson refused these very bytes."""
        cdef Prep r
        cdef object doc, value
        cdef const unsigned char *p = self._p + start
        cdef Py_ssize_t n = end - start
        cdef Py_ssize_t limit = -1  # sys.get_int_max_str_digits(), read when needed
        cdef unsigned char levels[64]
        r.buf = NULL
        r.len = r.cap = r.copied = r.colons = r.depth = 0
        r.flags = r.reason = 0
        r.state = G_VALUE
        r.levels = r.fixed = levels
        r.levels_cap = 64
        r.max_depth = self.max_depth + 1
        try:
            _prepare(p, n, self.strict, limit, &r)
            if r.flags & F_BAD:
                if r.reason and not (r.flags & F_HI or (self.strict and r.flags & (F_NONCHAR | F_MEMBERS))):
                    # nothing before it QEMU would refuse first: its words
                    if r.reason == 7:
                        self._why = "JSON parse error, invalid keyword '" + \
                            (<const char *>p)[r.kw_at:r.kw_at + r.kw_len].decode("ascii") + "'"
                    else:
                        self._why = _GRAMMAR_REASONS[r.reason]
                return _NO
            if self.strict and r.flags & F_NONCHAR:
                return _NO
            if r.flags & F_CHANGED:
                _rewrite(&r, p, n, "", 0, n)
                doc = PyBytes_FromStringAndSize(r.buf, r.len)
            else:
                doc = PyBytes_FromStringAndSize(<const char *>p, n)
        finally:
            PyMem_Free(r.buf)
            if r.levels != r.fixed:
                PyMem_Free(r.levels)
        value = _NO
        if not r.flags & (F_LONG | F_SPECIAL) and not (tried and not r.flags & F_CHANGED):
            try:
                value = _loads(doc)
            except _JSONDecodeError:
                pass
        if value is _NO:
            # Exact integers, NaN/Infinity, numbers beyond a double (orjson
            # refuses 1e400): the json module's C scanner, on text decoded
            # strictly (json.loads(bytes) would let UTF-8 surrogates through).
            try:
                value = _json_loads(doc.decode("utf-8"))
            except (ValueError, RecursionError):
                return _NO
        if self.strict and r.colons != _entries(value):
            return _NO  # a duplicate key: QEMU refuses it
        return value

    cdef int _error(self, Py_ssize_t pos, list out) except -1:
        """Lexical error at ``pos`` (that byte is consumed)."""
        cdef Py_ssize_t first = pos
        if self._in_frame and not self._skip and pos + 1 - self._start > self.max_frame_size:
            self._limit(_TOO_BIG, self._base + self._start + self.max_frame_size, out)
        if not self._skip and DQ <= self._state <= KEYWORD:
            first = self._tok
        if self._p[pos] == 0xFF:
            if self.strict:
                self._err(None, first, pos, self._base + pos, 1, True, out)  # its SYNC follows the run
            else:
                self._sync(out)
        elif not self._skip:
            self._err(None, first, pos, self._base + pos, 1, False, out)
        self._clear(RECOVERY)
        return 0
