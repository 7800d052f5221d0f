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
  with single-quoted strings or integers outside [-2**63, 2**64).
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
from libc.string cimport memchr, memcmp, memcpy, memmove, memset

import hashlib
import json
import os
import sys

import orjson

from qmpcore.framing import rules as _rules
from qmpcore.framing.wire import (
    NOT_YET, SYNC, TOO_BIG, TOO_DEEP, TOO_MANY, ParseError, PendingFrame, decode_frame, stray_reason,
)
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
    PyObject *_new_bytes "PyBytes_FromStringAndSize"(const char *s, Py_ssize_t size)  # (a new reference)
    char *_bytes_of "PyBytes_AS_STRING"(PyObject *o)
    int _PyBytes_Resize(PyObject **string, Py_ssize_t newsize) except -1
    void Py_XDECREF(PyObject *o)
    int PyBUF_READ
    object PyUnicode_FromKindAndData(int kind, const void *buffer, Py_ssize_t size)
    int PyUnicode_4BYTE_KIND
    Py_ssize_t PY_SSIZE_T_MAX

cdef object _loads = orjson.loads
cdef object _json_loads = json.JSONDecoder().decode
cdef object _max_digits = getattr(sys, "get_int_max_str_digits", lambda: 0)
cdef object _NO = object()  # "not decoded here"
cdef object _JSONDecodeError = orjson.JSONDecodeError
cdef object _blake2b = hashlib.blake2b
cdef object _SYNC = SYNC
cdef object _NOT_YET = NOT_YET
cdef object _PendingFrame = PendingFrame
# The key that stands for an open object member's when a segment of a
# deferred frame is decoded on its own: unguessable, so no frame holds it.
cdef str _STAND_IN = "\x00qmpcore-" + os.urandom(8).hex()
cdef bytes _STAND_IN_TEXT = b'"\\u0000' + _STAND_IN[1:].encode() + b'":'
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
cdef unsigned char STRAY_RUN[256]     # for _garbage(): 1 for , : ] }, 2 for whitespace

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
        STRAY_RUN[i] = 1 if i in b",:]}" else 2 if CLASS[i] == C_WS else 0
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


cdef Py_ssize_t _next_cp(const unsigned char *s, Py_ssize_t n, Py_ssize_t i, long *out) noexcept:
    """Decode the character of a bad token at ``s[i]`` as QEMU shows it
    (invalid modified UTF-8 is U+FFFD) into ``out``; return where the next
    one starts."""
    cdef Py_ssize_t length
    cdef long cp
    cdef unsigned char byte = s[i], nxt, mask
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
    out[0] = 0xFFFD if cp < 0 else cp
    return i


cdef object _display(const unsigned char *s, Py_ssize_t n):
    """:func:`qmpcore.framing.qemu_json.display` in C: a bad token as QEMU
    shows it (up to the first NUL, invalid modified UTF-8 as U+FFFD)."""
    cdef const unsigned char *z = <const unsigned char *>memchr(s, 0, n)
    cdef Py_ssize_t i = 0, k = 0
    cdef long cp
    cdef Py_UCS4 *out
    if z != NULL:
        n = z - s
    out = <Py_UCS4 *>PyMem_Malloc((n + 1) * sizeof(Py_UCS4))
    if out == NULL:
        raise MemoryError()
    try:
        while i < n:
            i = _next_cp(s, n, i, &cp)
            out[k] = <Py_UCS4>cp
            k += 1
        return PyUnicode_FromKindAndData(PyUnicode_4BYTE_KIND, out, k)
    finally:
        PyMem_Free(out)


def _display_bytes(token):
    """The compiled form of :func:`qmpcore.framing.qemu_json.display` (for tests)."""
    cdef bytes b = bytes(token)
    return _display(<const unsigned char *>PyBytes_AS_STRING(b), PyBytes_GET_SIZE(b))


# -- answers to errors (strict mode, Framer.answer_errors) -------------------
#
# A strict framer told how its server answers errors records a run of them
# in one C buffer, an entry per run of identical errors:
#
#     kind (1 byte) [length (varint) data]   count (varint)
#
# data is the bad token (A_STRAY), the reason as QEMU's JSON text (A_TEXT)
# or the invalid keyword (A_KEYWORD); the other kinds are replies of the
# server's _Template.  The count is written when the next entry starts (the
# pending entry is always the last).  The run leaves feed() as one Answers
# item, which builds the replies as the server takes them: a few bytes of
# garbage never sit as kilobytes of replies, and no error costs a Python
# object.  The twin is qmpcore.framing.rules.Answers.

cdef struct Buf:
    char *p
    Py_ssize_t len
    Py_ssize_t cap


cdef int _grow(char **mem, Py_ssize_t *cap, Py_ssize_t need, Py_ssize_t first) except -1:
    """Make the allocation ``*mem`` of ``*cap`` bytes hold ``need``: doubling
    from ``first`` bytes, so that appending costs amortised linear time."""
    cdef Py_ssize_t size
    cdef char *grown
    if need <= cap[0]:
        return 0
    size = cap[0] * 2 if cap[0] else first
    while size < need:
        size *= 2
    grown = <char *>PyMem_Realloc(mem[0], size)
    if grown == NULL:
        raise MemoryError()
    mem[0] = grown
    cap[0] = size
    return 0


cdef inline int _buf_room(Buf *b, Py_ssize_t extra) except -1:
    """Room for ``extra`` more bytes in ``b``."""
    return _grow(&b.p, &b.cap, b.len + extra, 256)


cdef inline int _buf_add(Buf *b, const char *s, Py_ssize_t n) except -1:
    if b.len + n > b.cap:
        _buf_room(b, n)
    memcpy(b.p + b.len, s, n)
    b.len += n
    return 0


cdef int _out_room(PyObject **obj, Buf *b, Py_ssize_t extra) except -1:
    """Room for ``extra`` more bytes in ``b``, the storage of the bytes
    object ``obj[0]`` being filled (which may move)."""
    cdef Py_ssize_t cap
    if b.len + extra <= b.cap:
        return 0
    cap = max(b.cap * 2, b.len + extra)
    _PyBytes_Resize(obj, cap)
    b.p = _bytes_of(obj[0])
    b.cap = cap
    return 0


cdef inline int _out_add(PyObject **obj, Buf *b, const char *s, Py_ssize_t n) except -1:
    if b.len + n > b.cap:
        _out_room(obj, b, n)
    memcpy(b.p + b.len, s, n)
    b.len += n
    return 0


cdef inline int _buf_varint(Buf *b, Py_ssize_t v) except -1:
    if b.len + 10 > b.cap:
        _buf_room(b, 10)
    while v >= 0x80:
        b.p[b.len] = <char>((v & 0x7F) | 0x80)
        b.len += 1
        v >>= 7
    b.p[b.len] = <char>v
    b.len += 1
    return 0


cdef inline Py_ssize_t _varint(const unsigned char *p, Py_ssize_t *at) noexcept:
    cdef Py_ssize_t v = 0, i = at[0]
    cdef int shift = 0
    while p[i] & 0x80:
        v |= <Py_ssize_t>(p[i] & 0x7F) << shift
        shift += 7
        i += 1
    v |= <Py_ssize_t>p[i] << shift
    at[0] = i + 1
    return v


# Entry kinds.
DEF A_STRAY = 0       # data: the bad token (QEMU: stray '<token>')
DEF A_TEXT = 1        # data: the reason as QEMU's JSON text
DEF A_KEYWORD = 2     # data: the keyword (QEMU: invalid keyword '<keyword>')
DEF A_FIXED = 3       # + i: the template's reply T_FIXED + i (no data)
# The template's replies: one per stray byte, then these.
DEF T_EXPECTING = 256
DEF T_GRAMMAR = 256   # + i (1..11): _GRAMMAR_REASONS[i] (7 and 9 unused: worded with their token)
DEF T_NOT_OBJECT = 268
DEF T_NO_EXECUTE = 269
DEF T_FIXED = 256
DEF T_COUNT = 270


cdef const char *_HEX = "0123456789ABCDEF"
cdef object _NOT_OBJECT = object()  # _answer(): "the frame is not an object"
cdef object _ANSWERING = object()   # Framer._pr while answers are recorded


cdef inline Py_ssize_t _esc_u(char *o, long v) noexcept:
    o[0] = 0x5C
    o[1] = 0x75
    o[2] = _HEX[(v >> 12) & 15]
    o[3] = _HEX[(v >> 8) & 15]
    o[4] = _HEX[(v >> 4) & 15]
    o[5] = _HEX[v & 15]
    return 6


cdef inline Py_ssize_t _esc_cp(char *o, long cp) noexcept:
    """Character ``cp`` as QEMU writes it in a JSON string (at most 12
    bytes): printable ASCII as is but ``"`` and ``\\``, the short escapes,
    everything else ``\\uXXXX`` in uppercase (astral: a surrogate pair)."""
    if 0x20 <= cp < 0x7F:
        if cp == 0x22 or cp == 0x5C:
            o[0] = 0x5C
            o[1] = <char>cp
            return 2
        o[0] = <char>cp
        return 1
    if cp == 0x08 or cp == 0x0C or cp == 0x0A or cp == 0x0D or cp == 0x09:
        o[0] = 0x5C
        o[1] = b"b" if cp == 0x08 else b"f" if cp == 0x0C else b"n" if cp == 0x0A else b"r" if cp == 0x0D else b"t"
        return 2
    if cp >= 0x10000:
        cp -= 0x10000
        _esc_u(o, 0xD800 + (cp >> 10))
        return 6 + _esc_u(o + 6, 0xDC00 + (cp & 0x3FF))
    return _esc_u(o, cp)


cdef int _esc_token(Buf *b, const unsigned char *s, Py_ssize_t n) except -1:
    """Append QEMU's JSON text of ``display(s[:n])`` (see _display)."""
    cdef const unsigned char *z = <const unsigned char *>memchr(s, 0, n)
    cdef Py_ssize_t i = 0
    cdef long cp
    if z != NULL:
        n = z - s
    _buf_room(b, 12 * n)
    while i < n:
        if 0x20 <= s[i] < 0x7F and s[i] != 0x22 and s[i] != 0x5C:
            b.p[b.len] = <char>s[i]
            b.len += 1
            i += 1
            continue
        i = _next_cp(s, n, i, &cp)
        b.len += _esc_cp(b.p + b.len, cp)
    return 0


cdef int _esc_text(Buf *b, str text) except -1:
    """Append QEMU's JSON text of the string ``text`` (no quotes)."""
    cdef Py_UCS4 ch
    _buf_room(b, 12 * len(text))
    for ch in text:
        b.len += _esc_cp(b.p + b.len, ch)
    return 0


# Short frames QEMU's parser (in Python) refused, and its words, for
# strict framers answering errors: a flood of one such frame costs a dict
# lookup each.  Bounded: VERDICTS_MAX frames of VERDICT_FRAME bytes at most.
DEF VERDICT_FRAME = 64
DEF VERDICTS_MAX = 1024
cdef dict _VERDICTS = {}

cdef bytes _STRAY_HEAD = b"JSON parse error, stray '"
cdef bytes _KEYWORD_HEAD = b"JSON parse error, invalid keyword '"


@cython.final
cdef class _Template:
    """How a server words an error reply (``prefix`` + reason as JSON text
    + ``suffix``), with the replies most errors get built once: one per
    stray byte, then the fixed ones (T_*)."""

    cdef bytes prefix
    cdef bytes suffix
    cdef bytes kw_head   # prefix + _KEYWORD_HEAD
    cdef bytes kw_tail   # "'" + suffix
    cdef bytes blob
    cdef Py_ssize_t starts[T_COUNT + 1]
    # (envelope) the words around an unexpected member's name, as JSON
    # text, and the names that are not unexpected
    cdef bytes member_head
    cdef bytes member_tail
    cdef tuple known

    cdef int reply(self, Buf *b, int kind, const unsigned char *data, Py_ssize_t n) except -1:
        """Append the reply to an error of ``kind`` with ``data[:n]``."""
        _buf_add(b, PyBytes_AS_STRING(self.prefix), PyBytes_GET_SIZE(self.prefix))
        if kind == A_STRAY:
            _buf_add(b, PyBytes_AS_STRING(_STRAY_HEAD), PyBytes_GET_SIZE(_STRAY_HEAD))
            _esc_token(b, data, n)
            _buf_add(b, "'", 1)
        elif kind == A_KEYWORD:
            _buf_add(b, PyBytes_AS_STRING(_KEYWORD_HEAD), PyBytes_GET_SIZE(_KEYWORD_HEAD))
            _buf_add(b, <const char *>data, n)  # (lowercase letters, maybe a minus)
            _buf_add(b, "'", 1)
        else:  # A_TEXT
            _buf_add(b, <const char *>data, n)
        _buf_add(b, PyBytes_AS_STRING(self.suffix), PyBytes_GET_SIZE(self.suffix))
        return 0


# Templates by (prefix, suffix, not_object): servers share a few.
cdef dict _TEMPLATES = {}


cdef bytes _escaped(str text):
    cdef Buf b
    b.p = NULL
    b.len = b.cap = 0
    try:
        _esc_text(&b, text)
        return PyBytes_FromStringAndSize(b.p, b.len)
    finally:
        PyMem_Free(b.p)


cdef _Template _template(bytes prefix, bytes suffix, object not_object, object envelope):
    cdef object key = (prefix, suffix, not_object, envelope)
    cdef _Template t = _TEMPLATES.get(key)
    cdef Buf b, text
    cdef unsigned char c
    cdef int i
    if t is not None:
        return t
    t = _Template.__new__(_Template)
    t.prefix = prefix
    t.suffix = suffix
    t.kw_head = prefix + _KEYWORD_HEAD
    t.kw_tail = b"'" + suffix
    t.known = None
    if envelope is not None:
        head, tail = envelope[1].split("{}")
        t.member_head = _escaped(head)
        t.member_tail = _escaped(tail)
        t.known = tuple(name.encode("ascii") for name in envelope[2])
    b.p = text.p = NULL
    b.len = b.cap = text.len = text.cap = 0
    try:
        for i in range(T_COUNT):
            t.starts[i] = b.len
            text.len = 0
            if i < 256:
                c = <unsigned char>i
                t.reply(&b, A_STRAY, &c, 1)
                continue
            if i == T_NOT_OBJECT:
                _esc_text(&text, "" if not_object is None else not_object)
            elif i == T_NO_EXECUTE:
                _esc_text(&text, "" if envelope is None else envelope[0])
            else:
                _esc_text(&text, _EXPECTING if i == T_EXPECTING else _GRAMMAR_REASONS[i - T_GRAMMAR] or "")
            t.reply(&b, A_TEXT, <const unsigned char *>text.p, text.len)
        t.starts[T_COUNT] = b.len
        t.blob = PyBytes_FromStringAndSize(b.p, b.len)
    finally:
        PyMem_Free(b.p)
        PyMem_Free(text.p)
    if len(_TEMPLATES) >= 16:
        _TEMPLATES.clear()
    _TEMPLATES[key] = t
    return t


@cython.final
cdef class Answers:
    """QEMU's replies to a run of errors, produced as they are taken.

    Items of a strict framer after :meth:`Framer.answer_errors`: ``count``
    errors (every one owed its own reply, in order) found from stream byte
    ``offset`` on, over ``nbytes`` bytes.  :meth:`take` gives the replies'
    bytes; ``remaining`` says how many are still owed.
    """

    cdef char *_rec
    cdef Py_ssize_t _len
    cdef Py_ssize_t _next     # where the entry after the current one starts
    cdef int _kind            # the current entry
    cdef Py_ssize_t _data
    cdef Py_ssize_t _size
    cdef Py_ssize_t _left     # replies it still owes
    cdef _Template _tpl
    cdef readonly Py_ssize_t count
    cdef readonly Py_ssize_t remaining
    cdef readonly long long offset
    cdef readonly long long nbytes

    def __cinit__(self):
        self._rec = NULL

    def __dealloc__(self):
        PyMem_Free(self._rec)

    def __repr__(self):
        return f"Answers(count={self.count}, offset={self.offset}, nbytes={self.nbytes}, remaining={self.remaining})"

    def take(self, limit=None):
        """The next replies as bytes: all of them (``limit`` None), or
        replies until at least ``limit`` bytes are given (one at least)."""
        cdef Py_ssize_t lim = -1 if limit is None else max(<Py_ssize_t>limit, 1)
        cdef Py_ssize_t stop = PY_SSIZE_T_MAX if lim < 0 else lim
        cdef Buf out, one  # out: the storage of ``obj``; one: a reply built here
        cdef PyObject *obj = NULL
        cdef object result
        cdef _Template tpl = self._tpl
        cdef const char *blob = PyBytes_AS_STRING(tpl.blob)
        cdef const Py_ssize_t *starts = tpl.starts
        cdef const unsigned char *rec = <const unsigned char *>self._rec
        cdef Py_ssize_t size, times, done, part, t, at, head, tail
        cdef bytes hb, tb
        # The cursor, in locals while copying (written back at the end).
        cdef Py_ssize_t remaining = self.remaining, left = self._left, nxt = self._next
        cdef Py_ssize_t data = self._data, dsize = self._size, reclen = self._len
        cdef int kind = self._kind
        one.p = NULL
        one.len = one.cap = 0
        out.len = 0
        out.cap = min(lim, 1 << 16) + 256 if lim > 0 else 4096
        obj = _new_bytes(NULL, out.cap)
        if obj == NULL:
            raise MemoryError()
        out.p = _bytes_of(obj)
        try:
            while remaining and out.len < stop:
                if not left:
                    # Entries of one stray byte owed once: copied in a row.
                    while (nxt + 4 <= reclen and rec[nxt] == A_STRAY and rec[nxt + 1] == 1
                           and rec[nxt + 3] == 1):
                        t = rec[nxt + 2]
                        size = starts[t + 1] - starts[t]
                        if out.len + size > out.cap:
                            _out_room(&obj, &out, size)
                        memcpy(out.p + out.len, blob + starts[t], size)
                        out.len += size
                        nxt += 4
                        remaining -= 1
                        if not remaining or out.len >= stop:
                            break
                    if not remaining or out.len >= stop:
                        break
                    # The entry at nxt becomes the current one.
                    kind = rec[nxt]
                    at = nxt + 1
                    dsize = 0
                    if kind < A_FIXED:
                        dsize = _varint(rec, &at)
                    data = at
                    at += dsize
                    left = _varint(rec, &at)
                    nxt = at
                t = -1
                if kind >= A_FIXED:
                    t = T_FIXED + kind - A_FIXED
                elif kind == A_STRAY and dsize == 1:
                    t = rec[data]
                at = out.len
                if t >= 0:
                    size = starts[t + 1] - starts[t]
                    _out_add(&obj, &out, blob + starts[t], size)
                elif kind == A_STRAY:
                    one.len = 0
                    tpl.reply(&one, kind, rec + data, dsize)
                    size = one.len
                    _out_add(&obj, &out, one.p, size)
                else:  # the words around the data, then it, copied in place
                    hb = tpl.kw_head if kind == A_KEYWORD else tpl.prefix
                    tb = tpl.kw_tail if kind == A_KEYWORD else tpl.suffix
                    head = PyBytes_GET_SIZE(hb)
                    tail = PyBytes_GET_SIZE(tb)
                    size = head + dsize + tail
                    if out.len + size > out.cap:
                        _out_room(&obj, &out, size)
                    memcpy(out.p + at, PyBytes_AS_STRING(hb), head)
                    memcpy(out.p + at + head, rec + data, dsize)
                    memcpy(out.p + at + head + dsize, PyBytes_AS_STRING(tb), tail)
                    out.len = at + size
                times = left
                if times > 1 and lim >= 0 and (lim - at + size - 1) // size < times:
                    times = (lim - at + size - 1) // size
                if times > 1:  # the same reply again: doubling copies
                    part = size * times
                    _out_room(&obj, &out, part - size)
                    done = size
                    while done < part:
                        memcpy(out.p + at + done, out.p + at, min(done, part - done))
                        done += min(done, part - done)
                    out.len = at + part
                left -= times
                remaining -= times
            if not remaining:
                PyMem_Free(self._rec)
                self._rec = NULL
                self._len = 0
            _PyBytes_Resize(&obj, out.len)  # (in place: smaller)
            result = <object>obj
            return result
        finally:
            self.remaining = remaining
            self._left = left
            self._next = nxt
            self._kind = kind
            self._data = data
            self._size = dsize
            Py_XDECREF(obj)
            PyMem_Free(one.p)


def _plain_line(line, Py_ssize_t max_depth):
    """The compiled form of :func:`qmpcore.framing.rules.plain_line` (for tests)."""
    cdef bytes b = bytes(line)
    return _plain(<const unsigned char *>PyBytes_AS_STRING(b), PyBytes_GET_SIZE(b), max_depth)


cdef inline bint _is_digit(unsigned char c):
    return 0x30 <= c <= 0x39


cdef bint _exact_token(const unsigned char *t, Py_ssize_t n) noexcept:
    """Does orjson decode the integer token ``t[:n]`` (``-?[0-9]+``) exactly,
    i.e. is it within [-2**63, 2**64)?  (:func:`qmpcore.framing.rules.exact_int`)"""
    cdef bint neg = n > 0 and t[0] == 0x2D
    if neg:
        t += 1
        n -= 1
    if n < LONG_INT:
        return True
    if n == 19:
        return not neg or memcmp(t, b"9223372036854775808", 19) <= 0
    if n == 20:
        return not neg and memcmp(t, b"18446744073709551615", 20) <= 0
    return False


cdef bint _plain_long(const unsigned char *p, Py_ssize_t start, Py_ssize_t end, Py_ssize_t n) noexcept:
    """``p[start:end]`` is a whole run of LONG_INT or more digits in valid
    JSON: is it an integer orjson keeps exact (not part of a float)?"""
    cdef unsigned char b
    if end < n and (p[end] == 0x2E or p[end] == 0x65 or p[end] == 0x45):
        return False  # the integer part of a float
    if start > 0:
        b = p[start - 1]
        if b == 0x2D:
            if start > 1 and (p[start - 2] == 0x65 or p[start - 2] == 0x45):
                return False  # an exponent
            start -= 1
        elif b == 0x2E or b == 0x65 or b == 0x45 or b == 0x2B:
            return False  # a fraction or an exponent
    return _exact_token(p + start, end - start)


cdef bint _plain(const unsigned char *p, Py_ssize_t n, Py_ssize_t max_depth) noexcept:
    """``p[:n]`` is valid JSON: does :func:`qmpcore.framing.rules.plain_line`
    hold (within max_depth, outside strings every run of LONG_INT digits a
    whole integer orjson keeps exact, no ``0e``/``0E`` starting a digit run)?"""
    cdef Py_ssize_t i = 0, depth = 0, run = 0, stop = 0, j, m
    cdef unsigned char k
    cdef unsigned char pad[256]
    while i < n:
        if run == 0 and i >= stop:
            if n - i > 192:
                # whole blocks at a time (src/_scan.h), from a token boundary
                i = qc_plain(p, i, n, max_depth, LONG_INT, &depth, &stop)
                if i < 0:
                    return False
                if i >= n:
                    break
            elif n - i >= 8:
                # the rest (a short frame, or the tail of a long one) padded
                # with spaces to whole blocks: blocks too, not the byte loop
                m = (n - i + 63) & ~63
                memset(pad, 0x20, sizeof(pad))  # (a constant size: a few stores)
                memcpy(pad, p + i, n - i)
                j = qc_plain(pad, 0, m, max_depth, LONG_INT, &depth, &stop)
                if j < 0:
                    return False
                if j >= n - i:
                    break
                stop += i
                i += j
        k = PLAIN_KIND[p[i]]
        i += 1
        if k == K_BORING:
            run = 0
        elif k == K_DIGIT:
            # JSON allows 0e5; QEMU's lexer ends the number at the "e".
            if run == 0 and p[i - 1] == 0x30 and i < n and (p[i] == 0x65 or p[i] == 0x45):
                return False
            run += 1
            if run >= LONG_INT and (i >= n or PLAIN_KIND[p[i]] != K_DIGIT) and not _plain_long(p, i - run, i, n):
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
DEF F_HI = 32       # a string with bytes >= 0x80 (checked as UTF-8 here)
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
    "JSON parse error, invalid UTF-8 sequence in string",
    None,  # 9: an escape that is not a valid character (worded with it)
    "JSON parse error, invalid escape sequence in string",
    "JSON parse error, duplicate key",  # 11: found only when _prepare() tracks keys
)


cdef struct Prep:
    char *buf           # rewritten text (when F_CHANGED)
    Py_ssize_t len
    Py_ssize_t cap
    Py_ssize_t copied   # input bytes accounted for in buf
    int flags
    int reason          # index into _GRAMMAR_REASONS when the automaton failed
    Py_ssize_t kw_at    # (reasons 7 and 9: the invalid keyword's or escape's place)
    Py_ssize_t kw_len
    Py_ssize_t colons   # ":" outside strings: object members, for valid JSON
    int state           # G_*
    Py_ssize_t depth
    Py_ssize_t max_depth
    unsigned char *levels  # L_* per open container
    Py_ssize_t levels_cap
    unsigned char *fixed   # the caller's small array levels starts in
    Py_ssize_t pos         # where the next _prepare() call resumes
    # Stepwise decoding only (PendingFrame): commas to cut the text at.
    Py_ssize_t cut_every   # output bytes between cuts at least
    Py_ssize_t last_cut    # output position of the last cut
    Py_ssize_t *keys       # per open object: its current key's output span
    Py_ssize_t keys_cap    # (in levels)
    unsigned char in_str   # paused inside a string: its quote
    bint str_key           # (that string is an object's key)
    Py_ssize_t str_out     # (where it starts, in the output and the input)
    Py_ssize_t str_in
    Py_ssize_t str_extra   # input bytes of the string so far beyond one per character
    long str_max           # its largest character so far (by kind: 0x7F, 0xFF, 0xFFFF or more)
    bint str_cut           # the string was cut (stepwise)
    Py_ssize_t sep_out     # output position of the last "{" or "," (stepwise)
    unsigned char sep_c
    Py_ssize_t key_close   # a long key was cut: output position of its closing quote, else -1
    Py_ssize_t work        # bytes copied or decoded besides the scan (counted for _Steps)
    Py_ssize_t base        # stepwise: buf holds the output from here on (before it: the input)
    bint key_paused        # stepwise, strict: the key being read paused (its pieces are in an accumulator)
    Py_ssize_t piece_out   # (where its next piece starts, in the output)


cdef void _prep_init(Prep *r, unsigned char *levels, Py_ssize_t max_depth) noexcept:
    """A fresh Prep over a frame, its level stack starting in ``levels`` (64)."""
    r.buf = NULL
    r.len = r.cap = r.copied = r.colons = r.depth = 0
    r.flags = r.reason = 0
    r.kw_at = r.kw_len = 0
    r.state = G_VALUE
    r.levels = r.fixed = levels
    r.levels_cap = 64
    r.max_depth = max_depth + 1
    r.pos = r.last_cut = r.cut_every = 0
    r.keys = NULL
    r.keys_cap = 0
    r.in_str = 0
    r.str_key = False
    r.str_out = r.str_in = 0
    r.str_extra = r.str_max = 0
    r.str_cut = False
    r.sep_out = 0
    r.sep_c = 0
    r.key_close = -1
    r.work = 0
    r.base = 0
    r.key_paused = False
    r.piece_out = 0


cdef void _prep_free(Prep *r) noexcept:
    PyMem_Free(r.buf)
    r.buf = NULL
    if r.levels != r.fixed:
        PyMem_Free(r.levels)
        r.levels = r.fixed
    PyMem_Free(r.keys)
    r.keys = NULL


cdef inline Py_ssize_t _out(Prep *r, Py_ssize_t i) noexcept:
    """Where input byte ``i`` lands in the output (no rewrite since r.copied)."""
    return r.len + (i - r.copied)


cdef int _keep_key(Prep *r, Py_ssize_t start, Py_ssize_t end) except -1:
    """The key just read is the current one of the innermost object."""
    cdef Py_ssize_t cap
    cdef Py_ssize_t *mem
    if r.depth > r.keys_cap:
        cap = r.keys_cap * 2 if r.keys_cap else 64
        while cap < r.depth:
            cap *= 2
        mem = <Py_ssize_t *>PyMem_Realloc(r.keys, 2 * cap * sizeof(Py_ssize_t))
        if mem == NULL:
            raise MemoryError()
        r.keys = mem
        r.keys_cap = cap
    r.keys[2 * (r.depth - 1)] = start
    r.keys[2 * (r.depth - 1) + 1] = end
    return 0


# Kinds of cut (_Steps): at a comma; inside a value string; before a long
# key (at the comma before it, or after its "{"); inside it; after its ":".
DEF CUT_COMMA = 0
DEF CUT_STR = 1
DEF CUT_KEY_OPEN = 2
DEF CUT_KEY_MID = 3
DEF CUT_KEY_CLOSE = 4


cdef int _cut(Prep *r, Py_ssize_t at, list cuts, Py_ssize_t string, int kind=CUT_COMMA,
              Py_ssize_t extra=0) except -1:
    """Record a cut of ``kind`` at output position ``at``: ``string`` is the
    input position of the string it is in or next to (-1: none), ``extra``
    a long key's opening (CUT_KEY_OPEN) or closing (CUT_KEY_CLOSE) quote;
    with the kinds of the open containers and the keys of the open objects'
    members (none inside a key: its pieces are decoded on their own)."""
    cdef list keys = []
    cdef Py_ssize_t d
    if kind == CUT_KEY_MID:
        cuts.append((at, None, None, string, kind, extra))
        r.last_cut = at
        return 0
    for d in range(r.depth):
        if r.levels[d] == L_MEMBER:
            keys.append((r.keys[2 * d], r.keys[2 * d + 1]))
        else:
            keys.append(None)
    cuts.append((at, PyBytes_FromStringAndSize(<const char *>r.levels, r.depth), keys, string, kind, extra))
    r.last_cut = at
    return 0


cdef int _pause_cut(Prep *r, Py_ssize_t i, list cuts) except -1:
    """_prepare() pauses inside a string at input position ``i``: cut there
    when a step's worth of output has passed since the last cut.  A key is
    cut too: first before it (its pieces are decoded apart from the text
    around them), then at each pause inside it."""
    cdef Py_ssize_t out = _out(r, i), at
    cdef tuple last
    if out - r.last_cut < r.cut_every:
        return 0
    if not r.str_key:
        _cut(r, out, cuts, r.str_in, CUT_STR)
        r.str_cut = True
        return 0
    if not r.str_cut:
        at = r.sep_out if r.sep_c == 0x2C else r.sep_out + 1  # (a comma is left out)
        last = cuts[len(cuts) - 1] if cuts else None
        if last is not None and last[0] == at and last[4] == CUT_COMMA:
            cuts.pop()  # (the same cut, now before the key)
        elif last is not None and last[0] > at:
            return 0  # (cannot happen: no cut between a key and the "{" or "," before it)
        _cut(r, at, cuts, r.str_in, CUT_KEY_OPEN, r.str_out)
        r.str_cut = True
    _cut(r, out, cuts, r.str_in, CUT_KEY_MID)
    return 0


cdef int _cut_string_done(Prep *r, Py_ssize_t end, dict sizes) except -1:
    """A string that was cut ends at input position ``end``: its length and
    largest character, to build it in place (_Steps._build)."""
    sizes[r.str_in] = (end - r.str_in - 2 - r.str_extra, r.str_max)
    r.str_cut = False
    if r.str_key:
        r.key_close = _out(r, end) - 1
    return 0


cdef int _rewrite(Prep *r, const unsigned char *p, Py_ssize_t at, const char *text,
                  Py_ssize_t size, Py_ssize_t resume) except -1:
    """Output p[r.copied:at], then ``text`` instead of p[at:resume].
    Stepwise (_Steps), the text before the first rewrite is not copied: it
    is the output too (r.base)."""
    if r.cut_every and not r.flags & F_CHANGED:
        r.base = r.len = r.copied = at
    _grow(&r.buf, &r.cap, r.len - r.base + (at - r.copied) + size, 256)
    r.work += at - r.copied + size
    memcpy(r.buf + r.len - r.base, p + r.copied, at - r.copied)
    r.len += at - r.copied
    memcpy(r.buf + r.len - r.base, text, size)
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


cdef inline Py_ssize_t _utf8_len(const unsigned char *p, Py_ssize_t i, Py_ssize_t n) noexcept:
    """Length of the well-formed UTF-8 sequence starting at ``p[i]`` (a byte
    >= 0x80), or 0 when it is not one (what Python's strict decoder refuses)."""
    cdef unsigned char c = p[i], lo = 0x80, hi = 0xBF
    cdef Py_ssize_t k, size
    if 0xC2 <= c <= 0xDF:
        size = 2
    elif 0xE0 <= c <= 0xEF:
        size = 3
        if c == 0xE0:
            lo = 0xA0
        elif c == 0xED:
            hi = 0x9F
    elif 0xF0 <= c <= 0xF4:
        size = 4
        if c == 0xF0:
            lo = 0x90
        elif c == 0xF4:
            hi = 0x8F
    else:
        return 0
    if i + size > n or not lo <= p[i + 1] <= hi:
        return 0
    for k in range(i + 2, i + size):
        if not 0x80 <= p[k] <= 0xBF:
            return 0
    return size


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


cdef object _key_text(Prep *r, const unsigned char *p, Py_ssize_t out_start, Py_ssize_t start, Py_ssize_t end):
    """The key token ``p[start:end]`` just read (``out_start`` in the
    output), as a str: QEMU's reading of it."""
    cdef Py_ssize_t k
    cdef bint simple = p[start] == 0x22
    if simple:
        for k in range(start + 1, end - 1):
            if p[k] == 0x5C or p[k] >= 0x80:
                simple = False
                break
    r.work += end - start
    if simple:
        return (<const char *>p)[start + 1:end - 1].decode("ascii")
    return _loads(_out_text(r, p, out_start, _out(r, end)))


cdef bytes _out_text(Prep *r, const unsigned char *p, Py_ssize_t a, Py_ssize_t b):
    """The output from position ``a`` to ``b`` (<= where _prepare() is):
    before r.base the input, then what was rewritten, then what was not."""
    cdef list parts = []
    cdef Py_ssize_t upto
    if a < r.base:
        upto = b if b < r.base else r.base
        parts.append(PyBytes_FromStringAndSize(<const char *>p + a, upto - a))
        a = upto
    if a < r.len and a < b:
        upto = b if b < r.len else r.len
        parts.append(PyBytes_FromStringAndSize(r.buf + a - r.base, upto - a))
        a = upto
    if a < b:
        parts.append(PyBytes_FromStringAndSize(<const char *>p + r.copied + (a - r.len), b - a))
    return parts[0] if len(parts) == 1 else b"".join(parts)


DEF KEY_ID_CHARS = 256  # (stepwise, strict) longer keys are told apart by length and digest


cdef object _key_id(str key, object digest):
    """What tells a key from the others of its object (stepwise, strict):
    the key, or for a long one its length and a digest of its text."""
    if len(key) <= KEY_ID_CHARS and digest is None:
        return key
    if digest is None:
        digest = _blake2b(digest_size=32)
        digest.update(key.encode("utf-8"))
    return (len(key), digest.digest())


cdef int _key_piece(Prep *r, const unsigned char *p, Py_ssize_t b, list acc) except -1:
    """The next piece of a key that pauses (stepwise, strict), up to output
    position ``b``, into ``acc``: [its length so far, its pieces while it
    is short (else None), a digest of its text once it is long]."""
    cdef str piece = _loads(b'"' + _out_text(r, p, r.piece_out, b) + b'"')
    r.work += b - r.piece_out
    r.piece_out = b
    if not r.key_paused:
        r.key_paused = True
        acc[:] = [0, [], None]
    acc[0] += len(piece)
    if acc[1] is not None:
        (<list>acc[1]).append(piece)
        if acc[0] > KEY_ID_CHARS:
            acc[2] = _blake2b(digest_size=32)
            for piece in acc[1]:
                acc[2].update(piece.encode("utf-8"))
            acc[1] = None
    else:
        acc[2].update(piece.encode("utf-8"))
    return 0


cdef int _member_done(Prep *r, list dups) except -1:
    """A member was completed: QEMU's "duplicate key" if its object had
    that key already (``dups``: per open container, None or [keys, the
    current member's key])."""
    cdef list entry = dups[r.depth - 1]
    if entry[1] in <set>entry[0]:
        _fail(r, 11)
    else:
        (<set>entry[0]).add(entry[1])
    return 0


cdef Py_ssize_t _string_body(const unsigned char *p, Py_ssize_t n, Py_ssize_t i, unsigned char q, bint strict,
                             Prep *r, Py_ssize_t stop) except -2:
    """The rest of a string from ``p[i]`` (after its opening quote ``q``):
    the position after its closing quote, or -1 when it is invalid (F_BAD).
    From ``stop`` on it may pause: r.in_str set, the position returned."""
    cdef Py_ssize_t j, s
    cdef unsigned char c, e
    cdef long cp, lo
    while i < n:
        if i >= stop:
            r.in_str = q
            return i
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
                r.str_extra += 1
                i += 2
            elif e == 0x75:  # \u
                cp = _hex4(p, i + 2, n)
                j = i + 6
                if 0xD800 <= cp <= 0xDBFF:
                    lo = -1
                    if j + 1 < n and p[j] == 0x5C and p[j + 1] == 0x75:
                        lo = _hex4(p, j + 2, n)
                    if not 0xDC00 <= lo <= 0xDFFF:
                        cp = -1
                    else:
                        cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00)
                        j += 6
                if cp < 0 or 0xDC00 <= cp <= 0xDFFF or (strict and _nonchar(cp)):
                    r.kw_at = i  # QEMU names the escape (a pair when both halves were read)
                    r.kw_len = j - i
                    for s in range(i + 2, i + 6):  # (\u12" : the string ends first)
                        if s >= n or p[s] == q:
                            r.kw_len = s + 1 - i if s < n else s - i
                            break
                    _fail(r, 9)
                    return -1
                if _nonchar(cp):
                    r.flags |= F_NONCHAR
                r.str_extra += j - i - 1
                if cp > r.str_max:
                    r.str_max = cp
                i = j
            elif e == 0x22 or e == 0x5C or e == 0x2F or e == 0x62 or e == 0x66 or e == 0x6E \
                    or e == 0x72 or e == 0x74:
                r.str_extra += 1
                i += 2
            else:
                _fail(r, 10)
                return -1
        elif c == 0x22:  # a bare " inside '...'
            _rewrite(r, p, i, '\\"', 2, i + 1)
            i += 1
        elif c >= 0x80:
            r.flags |= F_HI
            if c == 0xC0 and i + 1 < n and p[i + 1] == 0x80:  # modified UTF-8 NUL
                _rewrite(r, p, i, "\\u0000", 6, i + 2)
                r.str_extra += 1
                i += 2
                continue
            # Checked here, in token order, so that an error later in
            # the frame is QEMU's first one without its parser.
            j = _utf8_len(p, i, n)
            if j == 0:
                _fail(r, 8)
                return -1
            if (j == 3 and c == 0xEF and ((p[i + 1] == 0xB7 and 0x90 <= p[i + 2] <= 0xAF)
                                          or (p[i + 1] == 0xBF and p[i + 2] >= 0xBE))) \
                    or (j == 4 and (p[i + 1] & 0x0F) == 0x0F and p[i + 2] == 0xBF and p[i + 3] >= 0xBE):
                if strict:
                    _fail(r, 8)
                    return -1
                r.flags |= F_NONCHAR
            r.str_extra += j - 1
            # (the kind of str the character needs: latin-1, UCS-2 or UCS-4)
            cp = 0xFF if c <= 0xC3 else (0xFFFF if j < 4 else 0x10FFFF)
            if cp > r.str_max:
                r.str_max = cp
            i += j
        else:
            i += 1
    return i


cdef bint _string_done(Prep *r, const unsigned char *p, Py_ssize_t out_start, Py_ssize_t start, Py_ssize_t end,
                       list cuts, list dups, list acc) except -1:
    """The string ``p[start:end]`` is complete: hand it to its container
    (False: the frame is invalid there); keep it if it is a key (``acc``:
    its pieces when it paused, see _key_piece)."""
    cdef object key
    if not _complete(r, True):
        return False
    if r.state == G_COLON:
        if cuts is not None:
            _keep_key(r, out_start, _out(r, end))
        if dups is not None:
            if cuts is None:
                key = _key_text(r, p, out_start, start, end)
            elif r.key_paused:
                _key_piece(r, p, _out(r, end) - 1, acc)
                r.key_paused = False
                key = _key_id("".join(acc[1]), None) if acc[1] is not None else (acc[0], acc[2].digest())
            else:
                key = _key_id(_key_text(r, p, out_start, start, end), None)
            (<list>dups[r.depth - 1])[1] = key
    return True


cdef int _prepare(const unsigned char *p, Py_ssize_t n, bint strict, Py_ssize_t max_digits,
                  Prep *r, Py_ssize_t stop, list cuts, list dups=None, dict sizes=None, list acc=None) except -1:
    """One pass over a complete frame (its tokens are lexically valid):
    check it with QEMU's grammar, rewrite QEMU's dialect as plain JSON, flag
    what needs more than orjson.  Stops at the first error (F_BAD).

    Resumable: it starts at r.pos and, given ``stop`` < n, returns at the
    first token boundary from ``stop`` on (r.pos < n: call again).  With
    ``cuts`` (a list), records cuts (at commas, and inside long value
    strings, where it may then pause too) to decode the output by (_cut);
    then ``sizes`` gets the length and largest character of each string
    that was cut (_cut_string_done).  With ``dups`` (an empty list), finds
    duplicate keys too (_member_done); stepwise, long keys are read a piece
    at a time into ``acc`` (_key_piece)."""
    cdef Py_ssize_t i = r.pos, j, s, d0, nd, ks = 0, ks_in = 0, depth_before = r.depth
    cdef unsigned char c, q, e, k
    cdef bint isint, neg
    cdef int state_before = r.state
    if r.in_str:  # resume inside a string
        q = r.in_str
        r.in_str = 0
        i = _string_body(p, n, i, q, strict, r, stop)
        if i < 0:
            return 0
        if r.in_str:
            r.pos = i
            _pause_cut(r, i, cuts)
            if dups is not None and r.str_key:
                _key_piece(r, p, _out(r, i), acc)
            return 0
        if r.str_cut:
            _cut_string_done(r, i, sizes)
        if not _string_done(r, p, r.str_out, r.str_in, i, cuts, dups, acc):
            return 0
    while i < n:
        if dups is not None:
            if r.state == G_OBJ_NEXT and (state_before != G_OBJ_NEXT or depth_before != r.depth):
                _member_done(r, dups)
                if r.flags & F_BAD:
                    return 0
            depth_before = r.depth
            state_before = r.state
        if i >= stop:
            r.pos = i
            return 0
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
                if r.key_close >= 0:  # after a long key: its member goes on
                    _cut(r, _out(r, i) + 1, cuts, -1, CUT_KEY_CLOSE, r.key_close)
                    r.key_close = -1
            elif c == 0x2C and cuts is not None and _out(r, i) - r.last_cut >= r.cut_every:
                _cut(r, _out(r, i), cuts, -1)
            elif c == 0x7B and dups is not None:  # a new object: no keys yet
                while len(dups) < r.depth:
                    dups.append(None)
                dups[r.depth - 1] = [set(), None]
            if cuts is not None and (c == 0x2C or c == 0x7B):
                r.sep_out = _out(r, i)
                r.sep_c = c
            i += 1
        elif k == C_DQUOTE or k == C_SQUOTE:
            q = c
            ks = _out(r, i)
            ks_in = i
            if q == 0x27:
                _rewrite(r, p, i, '"', 1, i + 1)
            i += 1
            if cuts is not None:
                r.str_key = r.depth > 0 and r.levels[r.depth - 1] == L_KEY
                r.str_extra = r.str_max = 0
                r.piece_out = _out(r, i)
            i = _string_body(p, n, i, q, strict, r, stop if cuts is not None else n)
            if i < 0:
                return 0
            if r.in_str:  # paused inside it (stepwise): resume there
                r.str_out = ks
                r.str_in = ks_in
                r.pos = i
                _pause_cut(r, i, cuts)
                if dups is not None and r.str_key:
                    _key_piece(r, p, _out(r, i), acc)
                return 0
            if not _string_done(r, p, ks, ks_in, i, cuts, dups, acc):
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
                if isint and nd >= LONG_INT and not _exact_token(p + s, i - s):
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
    r.pos = n
    if r.state != G_DONE:
        _fail(r, 6)
    return 0


cdef object _words(Prep *r, const unsigned char *p, bint strict, bint keys_tracked=False):
    """QEMU's words for the error _prepare() found, or None when QEMU's
    parser must say (it may find another error first)."""
    if not r.reason or (strict and r.flags & F_MEMBERS and not keys_tracked):
        return None  # (strings before it were checked; a duplicate key was not looked for)
    if r.reason == 7:
        return "JSON parse error, invalid keyword '" + \
            (<const char *>p)[r.kw_at:r.kw_at + r.kw_len].decode("ascii") + "'"
    if r.reason == 9:
        return "JSON parse error, " + (<const char *>p)[r.kw_at:r.kw_at + r.kw_len].decode("latin-1") + \
            " is not a valid Unicode character"
    return _GRAMMAR_REASONS[r.reason]


cdef object _exact(bytes doc):
    """Plain JSON decoded with exact integers, NaN and Infinity: the json
    module's C scanner, on text decoded strictly (json.loads(bytes) would
    let UTF-8 surrogates through).  Its recursion counts against Python's
    limit: a frame nested deeper than that (but within max_depth) gets the
    room it needs rather than QEMU's parser in Python."""
    cdef str text = doc.decode("utf-8")
    cdef int limit
    try:
        return _json_loads(text)
    except RecursionError:
        limit = sys.getrecursionlimit()
        sys.setrecursionlimit(limit + doc.count(b"[") + doc.count(b"{") + 64)
        try:
            return _json_loads(text)
        finally:
            sys.setrecursionlimit(limit)


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


cdef bytes _reopen(tuple cut):
    """Text that opens again the containers open at ``cut``: each array
    before its next item; each object inside its open member (a stand-in
    key, the member's value to follow: after a long key's ":" too) or
    before its next member (at a comma); at a string cut, the string."""
    cdef bytes kinds = cut[1]
    cdef Py_ssize_t d
    cdef list parts = []
    for d in range(len(kinds)):
        if kinds[d] == L_ARR:
            parts.append(b"[")
        elif kinds[d] == L_MEMBER:
            parts.append(b"{" + _STAND_IN_TEXT)
        else:
            parts.append(b"{")
    if cut[4] == CUT_STR:
        parts.append(b'"')
    return b"".join(parts)


cdef bytes _close_all(tuple cut):
    """Text that closes the containers open at ``cut`` (and its string)."""
    cdef bytes kinds = cut[1]
    cdef Py_ssize_t d
    cdef bytes closers = bytes([0x5D if kinds[d] == L_ARR else 0x7D for d in range(len(kinds) - 1, -1, -1)])
    return b'"' + closers if cut[4] == CUT_STR else closers


cdef extern from "Python.h":
    # A string cut into pieces is built in place (_Steps._build_*).
    object PyUnicode_New(Py_ssize_t size, Py_UCS4 maxchar)
    Py_ssize_t PyUnicode_CopyCharacters(PyObject *to, Py_ssize_t to_start, PyObject *src, Py_ssize_t from_start,
                                        Py_ssize_t how_many) except -1
    Py_UCS4 PyUnicode_MAX_CHAR_VALUE(object o)
    int PyUnicode_KIND(object o)
    void *PyUnicode_DATA(object o)


cdef extern from *:
    """
    /* str's hash (SipHash-1-3 over its characters, as CPython computes it
       where sys.hash_info says so), taken 8 bytes at a time as a long key
       is built, so that no step hashes the whole key (_Steps._build_*). */
    #include <stdint.h>
    #include <string.h>
    typedef struct { uint64_t v0, v1, v2, v3; Py_ssize_t done; } qc_sip;
    #define QC_ROTL(x, b) (uint64_t)(((x) << (b)) | ((x) >> (64 - (b))))
    #define QC_SIPROUND(s) do { \
        (s)->v0 += (s)->v1; (s)->v1 = QC_ROTL((s)->v1, 13); (s)->v1 ^= (s)->v0; (s)->v0 = QC_ROTL((s)->v0, 32); \
        (s)->v2 += (s)->v3; (s)->v3 = QC_ROTL((s)->v3, 16); (s)->v3 ^= (s)->v2; \
        (s)->v0 += (s)->v3; (s)->v3 = QC_ROTL((s)->v3, 21); (s)->v3 ^= (s)->v0; \
        (s)->v2 += (s)->v1; (s)->v1 = QC_ROTL((s)->v1, 17); (s)->v1 ^= (s)->v2; (s)->v2 = QC_ROTL((s)->v2, 32); \
    } while (0)
    static void qc_sip_init(qc_sip *s) {
        uint64_t k0 = _Py_HashSecret.siphash.k0, k1 = _Py_HashSecret.siphash.k1;
        s->v0 = k0 ^ 0x736f6d6570736575ULL;
        s->v1 = k1 ^ 0x646f72616e646f6dULL;
        s->v2 = k0 ^ 0x6c7967656e657261ULL;
        s->v3 = k1 ^ 0x7465646279746573ULL;
        s->done = 0;
    }
    /* The whole 8-byte words of data[s->done:upto] (little-endian only). */
    static void qc_sip_blocks(qc_sip *s, const unsigned char *data, Py_ssize_t upto) {
        uint64_t m;
        while (s->done + 8 <= upto) {
            memcpy(&m, data + s->done, 8);
            s->v3 ^= m;
            QC_SIPROUND(s);
            s->v0 ^= m;
            s->done += 8;
        }
    }
    static Py_hash_t qc_sip_end(qc_sip *s, const unsigned char *data, Py_ssize_t size) {
        uint64_t b = (uint64_t)size << 56, t = 0;
        Py_hash_t h;
        if (size == 0)
            return 0;
        qc_sip_blocks(s, data, size);
        memcpy(&t, data + s->done, (size_t)(size - s->done));
        b |= t;
        s->v3 ^= b;
        QC_SIPROUND(s);
        s->v0 ^= b;
        s->v2 ^= 0xff;
        QC_SIPROUND(s);
        QC_SIPROUND(s);
        QC_SIPROUND(s);
        h = (Py_hash_t)((s->v0 ^ s->v1) ^ (s->v2 ^ s->v3));
        return h == -1 ? -2 : h;
    }
    static void qc_set_hash(PyObject *o, Py_hash_t h) { ((PyASCIIObject *)o)->hash = h; }
    """
    ctypedef struct qc_sip:
        Py_ssize_t done
    void qc_sip_init(qc_sip *s) noexcept
    void qc_sip_blocks(qc_sip *s, const unsigned char *data, Py_ssize_t upto) noexcept
    Py_hash_t qc_sip_end(qc_sip *s, const unsigned char *data, Py_ssize_t size) noexcept
    void qc_set_hash(PyObject *o, Py_hash_t h) noexcept


cdef bint _hash_as_built():
    """Does qc_sip_* give str's own hash here?  (CPython with SipHash-1-3
    and no small-string cutoff, little-endian: checked on strings of each
    kind and of lengths around the word size.)"""
    cdef qc_sip h
    cdef str text
    cdef Py_ssize_t size
    info = sys.hash_info
    if sys.implementation.name != "cpython" or info.algorithm != "siphash13" or info.cutoff != 0 \
            or info.width != 64 or sys.byteorder != "little":
        return False
    for text in ["", "a", "abcdefg", "abcdefgh", "abcdefghi", "\u00e9" * 9, "\u20ac" * 5, "\U0001f600" * 3,
                 "k" * 100 + "\u00e9", "".join(map(chr, range(40, 300)))]:
        size = len(text) * PyUnicode_KIND(text)
        qc_sip_init(&h)
        qc_sip_blocks(&h, <const unsigned char *>PyUnicode_DATA(text), size // 2)
        if qc_sip_end(&h, <const unsigned char *>PyUnicode_DATA(text), size) != hash(text):
            return False
    return True


cdef bint _HASH_AS_BUILT = _hash_as_built()


@cython.final
cdef class _Steps:
    """The steps of a compiled PendingFrame.

    First _prepare() over ``step`` bytes at a time, which checks the frame,
    rewrites QEMU's dialect as plain JSON and records a cut at a comma, or
    inside a long string, every ``step`` bytes or so.  Then one segment
    (between two cuts) at a time: the containers open at its first cut
    opened again, its text, those open at its last cut closed; decoded by
    one C call and joined into the value.  A string cut into pieces is
    built in place, a piece a step, in a str made at its full size (its
    length and largest character are known from the first pass).  A long
    key's pieces are segments of their own; the member after it is opened
    with a stand-in key, replaced by the key when it is joined.
    Anything unexpected decodes the whole frame the way Framer does.
    """

    cdef bytes frame
    cdef Py_ssize_t offset
    cdef Py_ssize_t step
    cdef bint slow
    cdef bint strict
    cdef list dups       # strict: each open object's keys (duplicates are errors)
    cdef Prep r
    cdef unsigned char levels[64]
    cdef bint checked
    cdef bint use_json   # exact integers, NaN/Infinity: the json module
    cdef list cuts
    cdef dict sizes      # length and largest character of each string cut (by its input position)
    cdef list acc        # strict: the pieces of a long key (_key_piece)
    cdef bint has_doc    # the plain JSON text is known: the frame up to base, then docbuf
    cdef Py_ssize_t doc_len
    cdef Py_ssize_t base
    cdef char *docbuf    # (the rewritten output of the first pass, owned)
    cdef object root
    cdef Py_ssize_t seg  # next segment
    cdef object built    # the str being built of a cut string's pieces (None: none)
    cdef Py_ssize_t built_at    # (characters in it so far)
    cdef Py_UCS4 built_max      # (the widest kind of character among its pieces)
    cdef bint built_hash        # (a key: its hash is taken as it is built)
    cdef qc_sip sip
    cdef object long_key # a long key built, for the member after it
    cdef list slots      # per depth: (output position, key) of the last key decoded there
    cdef Py_ssize_t work  # bytes decoded, copied or checked by the step in progress
    cdef readonly Py_ssize_t _most_work  # the most any step did (tests assert it is bounded)

    def __cinit__(self, bytes frame, Py_ssize_t offset, Py_ssize_t max_depth, Py_ssize_t step, bint slow,
                  bint strict):
        self.frame = frame
        self.offset = offset
        self.step = step if step > 0 else 1
        self.slow = slow
        self.strict = strict
        self.dups = [] if strict else None
        _prep_init(&self.r, self.levels, max_depth)
        self.r.cut_every = self.step
        self.cuts = []
        self.sizes = {}
        self.slots = []
        self.acc = [0, None, None]
        self.docbuf = NULL

    def __dealloc__(self):
        _prep_free(&self.r)
        PyMem_Free(self.docbuf)

    def __call__(self):
        cdef object result
        self.work = 0
        if not self.checked:
            result = self._check()
        else:
            result = self._segment()
        if self.work > self._most_work:
            self._most_work = self.work
        return result

    cdef object _check(self):
        cdef const unsigned char *p = <const unsigned char *>PyBytes_AS_STRING(self.frame)
        cdef Py_ssize_t n = PyBytes_GET_SIZE(self.frame), pos = self.r.pos, work = self.r.work
        cdef object why
        _prepare(p, n, self.strict, -1, &self.r, self.r.pos + self.step, self.cuts, self.dups, self.sizes, self.acc)
        if self.r.flags & F_CHANGED and not self.r.flags & F_BAD:
            if self.r.cap - (self.r.len - self.r.base) < n - self.r.copied:
                # (room for the rest at once: the buffer grows no more unless rewrites make the text longer)
                _grow(&self.r.buf, &self.r.cap, self.r.len - self.r.base + n - self.r.copied + 64, 256)
                self.work += self.r.len - self.r.base
            _rewrite(&self.r, p, self.r.pos, "", 0, self.r.pos)  # (a step's worth at a time)
        self.work += self.r.pos - pos + self.r.work - work
        if self.r.flags & F_BAD:
            why = _words(&self.r, p, self.strict, True)
            _prep_free(&self.r)
            self.cuts = None
            if why is not None:
                return _FrameError(why, self.offset, False, 1, n)
            return self._whole()  # QEMU's parser decides
        if self.r.pos < n:
            return _NOT_YET
        if self.r.flags & F_CHANGED:
            self.doc_len = self.r.len
            self.base = self.r.base
            self.docbuf = self.r.buf  # (kept, not copied)
            self.r.buf = NULL
        else:
            self.doc_len = self.base = n
        self.has_doc = True
        self.use_json = (self.r.flags & (F_LONG | F_SPECIAL)) != 0
        _prep_free(&self.r)
        self.checked = True
        return _NOT_YET

    cdef int _text(self, list parts, Py_ssize_t start, Py_ssize_t end) except -1:
        """Add the plain JSON text from ``start`` to ``end`` to ``parts``."""
        cdef Py_ssize_t upto
        if start < self.base:
            upto = end if end < self.base else self.base
            parts.append(memoryview(self.frame)[start:upto])
            start = upto
        if start < end:
            parts.append(PyMemoryView_FromMemory(self.docbuf + start - self.base, end - start, PyBUF_READ))
        return 0

    cdef bytes _text_of(self, Py_ssize_t start, Py_ssize_t end):
        cdef list parts = []
        self._text(parts, start, end)
        return b"".join(parts)

    cdef object _segment(self):
        cdef list cuts = self.cuts
        cdef Py_ssize_t i = self.seg, start = 0, end = self.doc_len
        cdef tuple prev = None, nxt = None
        cdef int pk = -1, nk = -1
        cdef list parts = []
        cdef object text, value
        if i:
            prev = cuts[i - 1]
            pk = prev[4]
        if i < len(cuts):
            nxt = cuts[i]
            nk = nxt[4]
        try:
            if nk == CUT_KEY_MID or nk == CUT_KEY_CLOSE:  # a piece of a long key
                start = prev[5] + 1 if pk == CUT_KEY_OPEN else prev[0]
                end = nxt[0] if nk == CUT_KEY_MID else nxt[5]
                parts.append(b'"')
                self._text(parts, start, end)
                parts.append(b'"')
                text = b"".join(parts)
                self.work += len(text)
                value = _loads(text)
                if pk == CUT_KEY_OPEN:
                    self._build_start(prev[3], value, _HASH_AS_BUILT)
                else:
                    self._build_add(value)
                if nk == CUT_KEY_CLOSE:
                    self.long_key = self._build_end()
            else:
                if i:
                    start = prev[0] + 1 if pk == CUT_COMMA else prev[0]  # (a comma is left out)
                    parts.append(_reopen(prev))
                if nxt is not None:
                    end = nxt[0]
                self._text(parts, start, end)
                if nxt is not None:
                    parts.append(_close_all(nxt))
                text = b"".join(parts)
                self.work += len(text)
                if self.use_json:
                    value = _exact(text)
                else:
                    value = _loads(text)
                if i:
                    self._join(value, prev, nk == CUT_STR and pk == CUT_STR and nxt[3] == prev[3])
                else:
                    self.root = value
        except (ValueError, RecursionError, LookupError, TypeError, SystemError):
            return self._whole()  # (cannot happen for text _prepare() passed; SystemError: a str not ours alone)
        self.seg = i + 1
        if self.seg <= len(cuts):
            return _NOT_YET
        value = self.root
        self.root = self.cuts = self.sizes = None
        self._drop_doc()
        return value

    cdef void _drop_doc(self) noexcept:
        self.has_doc = False
        PyMem_Free(self.docbuf)
        self.docbuf = NULL

    cdef int _join(self, object part, tuple cut, bint string_goes_on) except -1:
        """Join ``part`` (a segment decoded after _reopen(cut)) into the
        value: down the containers open at the cut, the first item (or the
        stand-in member) continues the open one, the rest follow it; at a
        string cut, the string's next piece is copied into it (_build_*),
        put in its place when it ends; after a long key, the stand-in
        member is the key's."""
        cdef bytes kinds = cut[1]
        cdef list keys = cut[2]
        cdef list later = []
        cdef int kind = cut[4]
        cdef bint string = kind == CUT_STR
        cdef Py_ssize_t d, inner = len(kinds) if string else len(kinds) - 1
        cdef object target = self.root, child, parent = None, slot = None
        for d in range(inner):
            later.append(part)
            later.append(target)
            parent = target
            if kinds[d] == L_ARR:
                child = (<list>part)[0]
                del (<list>part)[0]
                slot = len(<list>target) - 1
            else:
                child = (<dict>part).pop(_STAND_IN)
                slot = self._key(d, keys[d])
            target = target[slot]
            part = child
        if string:
            # target: the string's first piece (or the str it is built in); part: its next
            if self.built is None:
                self._build_start(cut[3], target, False)
            self._build_add(part)
            if not string_goes_on:
                part = self._build_end()
                if parent is None:
                    self.root = part
                else:
                    parent[slot] = part
        else:
            if kind == CUT_KEY_CLOSE:  # the member of a long key, then the members after it
                d = len(kinds) - 1
                child = (<dict>part).pop(_STAND_IN)
                (<dict>target)[self.long_key] = child
                self._keep_slot(d, keys[d][0], self.long_key)
                self.long_key = None
            later.append(part)
            later.append(target)
        # (each a different container; a later member with the open
        # member's key replaces it, as it would in one decode)
        for d in range(len(later) - 2, -1, -2):
            target = later[d + 1]
            if type(target) is list:
                (<list>target).extend(<list>later[d])
            else:
                (<dict>target).update(<dict>later[d])
        return 0

    cdef object _key(self, Py_ssize_t d, tuple span):
        """The key of the member open at depth ``d`` (its output span):
        decoded once, kept while that member is open."""
        cdef tuple kept
        if d < len(self.slots):
            kept = self.slots[d]
            if kept is not None and kept[0] == span[0]:
                return kept[1]
        self.work += <Py_ssize_t>span[1] - <Py_ssize_t>span[0]
        key = _loads(self._text_of(span[0], span[1]))
        self._keep_slot(d, span[0], key)
        return key

    cdef int _keep_slot(self, Py_ssize_t d, object at, object key) except -1:
        while len(self.slots) <= d:
            self.slots.append(None)
        self.slots[d] = (at, key)
        return 0

    cdef int _build_start(self, Py_ssize_t string, str first, bint hashed) except -1:
        """A str for the cut string at input position ``string``, at its
        full size, its first piece copied in (``hashed``: its hash taken
        as it is built, for a key)."""
        cdef tuple size = self.sizes[string]
        self.built = PyUnicode_New(size[0], size[1])
        self.built_at = 0
        self.built_max = 0x7F
        self.built_hash = hashed
        if hashed:
            qc_sip_init(&self.sip)
        return self._build_add(first)

    cdef int _build_add(self, str piece) except -1:
        """Copy the next piece into the str being built."""
        cdef Py_ssize_t n = len(piece)
        cdef Py_UCS4 most = PyUnicode_MAX_CHAR_VALUE(piece)
        if self.built_at + n > len(<str>self.built) or most > PyUnicode_MAX_CHAR_VALUE(self.built):
            raise ValueError("a piece does not fit the string it was measured for")
        if n:
            # (self.built is its only reference: it is not yet in the value)
            PyUnicode_CopyCharacters(<PyObject *>self.built, self.built_at, <PyObject *>piece, 0, n)
        self.built_at += n
        if most > self.built_max:
            self.built_max = most
        self.work += n * PyUnicode_KIND(self.built)
        if self.built_hash:
            qc_sip_blocks(&self.sip, <const unsigned char *>PyUnicode_DATA(self.built),
                          self.built_at * PyUnicode_KIND(self.built))
        return 0

    cdef str _build_end(self):
        """The str built, every character in place, exactly the str one
        decode makes (its kind is the widest of its pieces')."""
        cdef str done = self.built
        self.built = None
        if self.built_at != len(done) or self.built_max != PyUnicode_MAX_CHAR_VALUE(done):
            raise ValueError("a string's pieces do not make the string it was measured for")
        if self.built_hash:  # (its hash, cached as hash() would cache it)
            qc_set_hash(<PyObject *>done, qc_sip_end(&self.sip, <const unsigned char *>PyUnicode_DATA(done),
                                                       len(done) * PyUnicode_KIND(done)))
        return done

    cdef object _whole(self):
        """The frame decoded at once, as Framer decodes it."""
        cdef object doc = self._text_of(0, self.doc_len) if self.has_doc else None
        self.work += len(self.frame)  # (at least: every byte again)
        self._drop_doc()
        self.root = self.cuts = self.sizes = self.built = self.long_key = self.slots = None
        if doc is not None:
            if not self.use_json:
                try:
                    return _loads(doc)
                except _JSONDecodeError:
                    pass
            try:
                return _exact(doc)
            except (ValueError, RecursionError):
                pass
        try:
            return _decode_frame(self.frame, self.strict, self.slow)
        except _ParseError as exc:
            return _FrameError(exc.args[0], self.offset, False, 1, len(self.frame))


# Short frames answered (Framer._answer_frame) and their entries, per
# framer: a flood of one such frame then costs a scan to its end, a hash and
# a compare (Framer._answer_garbage) instead of the lexer's path per token
# and _prepare().  A cached frame is one the lexer delimited from START; the
# same bytes from START lex the same way, so a hit is that frame again.
DEF VC_SLOTS = 64      # direct-mapped
DEF VC_KEY = 32        # frames of at most this many bytes
DEF VC_DATA = 200      # entries with at most this much data

cdef struct Verdict:
    unsigned char klen  # 0: empty slot
    unsigned char kind
    unsigned char dlen
    unsigned char key[VC_KEY]
    char data[VC_DATA]


cdef inline unsigned int _vc_hash(const unsigned char *p, Py_ssize_t n) noexcept:
    cdef unsigned int h = 2166136261u
    cdef Py_ssize_t i
    for i in range(n):
        h = (h ^ p[i]) * 16777619u
    return (h ^ (h >> 13)) & (VC_SLOTS - 1)


cdef inline Py_ssize_t _frame_end(const unsigned char *p, Py_ssize_t pos, Py_ssize_t n) noexcept:
    """Where the lexer ends the frame starting at ``p[pos]`` (a quote, an
    opening bracket, a digit or a minus) if it ends one there with no
    escape and within VC_KEY bytes; -1 when it may not."""
    cdef Py_ssize_t q = pos + 1, lim = min(n, pos + VC_KEY), brace = 0, bracket = 0
    cdef unsigned char c = p[pos], d
    if c == 0x22 or c == 0x27:
        while q < lim and (DQ_PLAIN[p[q]] if c == 0x22 else SQ_PLAIN[p[q]]):
            q += 1
        return q + 1 if q < lim and p[q] == c else -1
    if c != 0x7B and c != 0x5B:  # a number: it ends before a byte no number holds
        while q < lim and (_is_digit(p[q]) or p[q] == 0x2E or p[q] == 0x65 or p[q] == 0x45
                           or p[q] == 0x2B or p[q] == 0x2D):
            q += 1
        return q if q < lim else -1
    q = pos
    while q < lim:
        d = p[q]
        q += 1
        if d == 0x7B:
            brace += 1
        elif d == 0x7D:
            brace -= 1
        elif d == 0x5B:
            bracket += 1
        elif d == 0x5D:
            bracket -= 1
        elif d == 0x22 or d == 0x27:
            while q < lim and (DQ_PLAIN[p[q]] if d == 0x22 else SQ_PLAIN[p[q]]):
                q += 1
            if q >= lim or p[q] != d:
                return -1
            q += 1
            continue
        elif d == 0x5C:
            return -1
        else:
            continue
        if brace < 0 or bracket < 0 or (brace == 0 and bracket == 0):
            return q
    return -1


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
    cdef public Py_ssize_t defer       # frames over this come out as PendingFrame (0: never)
    cdef public Py_ssize_t defer_step  # bytes per PendingFrame step

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

    # Answers being recorded (strict mode after answer_errors()): the
    # entries; the pending one's kind, data and size (its count is _pc);
    # replies owed by the entries before it; where the run starts; the
    # server's template, and whether frames not objects are answered.
    cdef bint _answering
    cdef Buf _rec
    cdef int _akind
    cdef Py_ssize_t _adata
    cdef Py_ssize_t _asize
    cdef Py_ssize_t _acount
    cdef long long _ao
    cdef _Template _tpl
    cdef bint _anot
    cdef Buf _tmp
    cdef Verdict *_vc          # short frames answered, and their entries (NULL: none yet)

    # The buffer of the feed() in progress.
    cdef const unsigned char *_p
    cdef Py_ssize_t _n
    cdef object _chunk         # the caller's object when scanned in place

    def __cinit__(self):
        self._buf = NULL
        self._len = 0
        self._cap = 0
        self._rec.p = self._tmp.p = NULL
        self._rec.len = self._rec.cap = self._tmp.len = self._tmp.cap = 0
        self._vc = NULL

    def __init__(self, max_frame_size=64 << 20, max_depth=1024, *, max_tokens=2 << 20,
                 raw=False, strict=False, defer=0):
        if max_frame_size < 1 or max_depth < 1 or max_tokens < 1:
            raise ValueError("limits must be positive")
        if defer < 0:
            raise ValueError("defer must be 0 (off) or a size in bytes")
        self.defer = defer
        self.defer_step = _rules.DEFER_STEP
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
        PyMem_Free(self._rec.p)
        PyMem_Free(self._tmp.p)
        PyMem_Free(self._vc)

    def answer_errors(self, prefix, suffix, not_object=None, envelope=None):
        """Strict mode: report errors as :class:`Answers` items (see
        :meth:`qmpcore.framing.pure.Framer.answer_errors`)."""
        if not self.strict:
            raise ValueError("answer_errors() is for strict (server) framers")
        if envelope is not None:
            envelope = (str(envelope[0]), str(envelope[1]), tuple(map(str, envelope[2])))
            if envelope[1].count("{}") != 1 or not all(name.isascii() for name in envelope[2]):
                raise ValueError("envelope: (words for {}, words with {} for the member's name, known names)")
        self._tpl = _template(bytes(prefix), bytes(suffix), None if not_object is None else str(not_object), envelope)
        self._anot = not_object is not None
        self._answering = True
        PyMem_Free(self._vc)  # (its entries are in the old words)
        self._vc = NULL

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
        return _grow(&self._buf, &self._cap, size, MIN_CAPACITY)

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
                if self._answering and not self._in_frame and not self.raw:
                    # Garbage, keywords and short frames answered before:
                    # recorded in one loop (the general path takes the rest).
                    nxt = self._answer_garbage(pos)
                    if nxt > pos:
                        pos = nxt
                        continue
                elif not self._in_frame and not self.raw and (cls == C_OTHER or (cls == C_STRUCT and c != 0x7B and c != 0x5B)):
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
                    if state == DIGITS and pos - self._tok >= LONG_INT and not _exact_token(p + self._tok, pos - self._tok):
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
        if self._answering:
            return self._answer_garbage(pos)
        if CLASS[c] == C_STRUCT:
            self._err(_EXPECTING, 0, 0, self._base + pos, 1, False, out)
            q = pos + 1
            last = -1
            k = 0
            while q < n:
                d = STRAY_RUN[p[q]]
                if not d:
                    break
                if d == 1:
                    last = q
                k += d & 1
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
        if n > self.max_frame_size or n > self.max_tokens or CLASS[p[0]] == C_WS or (self.defer and n > self.defer):
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
                    if q - pos >= LONG_INT and not _exact_token(p + pos, q - pos):
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
        if end - pos > self.max_frame_size or end - pos > self.max_tokens or (self.defer and end - pos > self.defer):
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

    cdef int _value(self, object value, Py_ssize_t start, Py_ssize_t end, list out) except -1:
        """Output a decoded frame (answered when it is not an object and
        the server said how: answer_errors())."""
        if self._answering and self._anot and type(value) is not dict:
            return self._answer(_NOT_OBJECT, 0, 0, self._base + start, end - start)
        return self._put(value, out)

    cdef int _answer(self, object reason, Py_ssize_t first, Py_ssize_t pos, long long offset,
                     Py_ssize_t nbytes) except -1:
        """Record one error (see _err) in the run of answers."""
        if reason is None:
            return self._record(A_STRAY, <const char *>self._p + first, pos + 1 - first, offset, nbytes)
        if reason is _EXPECTING:
            return self._record(A_FIXED + T_EXPECTING - T_FIXED, NULL, 0, offset, nbytes)
        if reason is _NOT_OBJECT:
            return self._record(A_FIXED + T_NOT_OBJECT - T_FIXED, NULL, 0, offset, nbytes)
        self._tmp.len = 0
        _esc_text(&self._tmp, reason)
        return self._record(A_TEXT, self._tmp.p, self._tmp.len, offset, nbytes)

    cdef int _record(self, int kind, const char *data, Py_ssize_t size, long long offset,
                     Py_ssize_t nbytes) except -1:
        """Record an error of ``kind`` with ``data[:size]``: counted in the
        pending entry when it is the same, else the new pending entry."""
        cdef Buf *rec = &self._rec
        cdef Py_ssize_t i
        cdef bint same
        if self._pr is not None:
            same = kind == self._akind and size == self._asize
            if same and size <= 16:  # (most are: no call)
                for i in range(size):
                    if rec.p[self._adata + i] != data[i]:
                        same = False
                        break
            elif same:
                same = memcmp(rec.p + self._adata, data, size) == 0
            if same:
                self._pc += 1
                self._pe = offset + nbytes
                return 0
            if self._pc < 0x80 and rec.len < rec.cap:  # the pending entry's count
                rec.p[rec.len] = <char>self._pc
                rec.len += 1
            else:
                _buf_varint(rec, self._pc)
            self._acount += self._pc
        else:
            self._pr = _ANSWERING
            self._ao = offset
        if rec.len + size + 11 > rec.cap:
            _buf_room(rec, size + 11)
        rec.p[rec.len] = <char>kind
        rec.len += 1
        if kind < A_FIXED:
            if size < 0x80:
                rec.p[rec.len] = <char>size
                rec.len += 1
            else:
                _buf_varint(rec, size)
        self._adata = rec.len
        if size <= 8:
            for i in range(size):
                rec.p[rec.len + i] = data[i]
        else:
            memcpy(rec.p + rec.len, data, size)
        rec.len += size
        self._akind = kind
        self._asize = size
        self._pc = 1
        self._pe = offset + nbytes
        return 0

    cdef Py_ssize_t _answer_garbage(self, Py_ssize_t pos) except -1:
        """Between frames when answering errors: the errors one after another
        (a lexical error and the bytes recovery skips, a lone , : ] or },
        an invalid keyword, a short frame answered before), recorded in one
        loop with the same entries the lexer's path per token makes, and
        whitespace; returns where scanning resumes (``pos`` itself when the
        first token is not one of those)."""
        cdef const unsigned char *p = self._p
        cdef Py_ssize_t n = self._n
        cdef long long base = self._base
        cdef unsigned char c
        cdef unsigned char k
        cdef int state = START
        cdef char *rec
        cdef Py_ssize_t q, m, i, end, reclen, cap, pc, acount, adata
        cdef Verdict *v
        while True:
            c = p[pos]
            k = CLASS[c]
            if k == C_STRUCT and c != 0x7B and c != 0x5B:  # , : ] or }: a frame of its own
                if self._pr is not None and self._akind == A_FIXED + T_EXPECTING - T_FIXED:
                    self._pc += 1
                    self._pe = base + pos + 1
                else:
                    self._record(A_FIXED + T_EXPECTING - T_FIXED, NULL, 0, base + pos, 1)
                pos += 1
            elif k == C_OTHER:  # a lexical error, then recovery
                if (self._pr is not None and self._akind == A_STRAY and self._asize == 1
                        and <unsigned char>self._rec.p[self._adata] == c):
                    self._pc += 1
                elif self._pr is not None and self._pc < 0x80 and self._rec.len + 4 <= self._rec.cap:
                    # (_record() inlined for the usual case: the pending
                    # entry's one-byte count, then kind, size 1, the byte)
                    rec = self._rec.p + self._rec.len
                    rec[0] = <char>self._pc
                    rec[1] = A_STRAY
                    rec[2] = 1
                    rec[3] = <char>c
                    self._acount += self._pc
                    self._adata = self._rec.len + 3
                    self._rec.len += 4
                    self._akind = A_STRAY
                    self._asize = 1
                    self._pc = 1
                else:
                    self._record(A_STRAY, <const char *>p + pos, 1, base + pos, 1)
                pos += 1
                end = pos
                while pos < n and RECOVER_SKIP[p[pos]]:
                    pos += 1
                # More lexical errors right after it: the same in locals.
                reclen = self._rec.len
                cap = self._rec.cap
                rec = self._rec.p
                pc = self._pc
                acount = self._acount
                adata = self._adata
                while pos < n:
                    c = p[pos]
                    if CLASS[c] != C_OTHER:
                        break
                    if <unsigned char>rec[adata] == c:
                        pc += 1
                    elif pc < 0x80 and reclen + 4 <= cap:
                        rec[reclen] = <char>pc
                        rec[reclen + 1] = A_STRAY
                        rec[reclen + 2] = 1
                        rec[reclen + 3] = <char>c
                        acount += pc
                        adata = reclen + 3
                        reclen += 4
                        pc = 1
                    else:
                        break  # (_record() at the top of the loop)
                    pos += 1
                    end = pos
                    while pos < n and RECOVER_SKIP[p[pos]]:
                        pos += 1
                self._rec.len = reclen
                self._pc = pc
                self._acount = acount
                self._adata = adata
                self._pe = base + end
                if pos >= n:
                    state = RECOVERY
                    break
            else:
                # A frame of its own, ending within this chunk and under
                # every limit, as _emit() -> _answer_frame() would answer it.
                if k == C_LOWER:
                    q = pos + 1
                    while q < n and CLASS[p[q]] == C_LOWER:
                        q += 1
                else:
                    if self._vc == NULL:
                        break
                    q = _frame_end(p, pos, n)
                if q < 0 or q >= n or q - pos > self.max_frame_size or (self.defer and q - pos > self.defer):
                    break
                m = q - pos
                if k == C_LOWER:
                    if ((m == 4 and (memcmp(p + pos, b"true", 4) == 0 or memcmp(p + pos, b"null", 4) == 0))
                            or (m == 5 and memcmp(p + pos, b"false", 5) == 0)):
                        if not self._anot:
                            break  # (a value for the dispatcher)
                        self._record(A_FIXED + T_NOT_OBJECT - T_FIXED, NULL, 0, base + pos, m)
                    else:
                        self._record(A_KEYWORD, <const char *>p + pos, m, base + pos, m)
                else:
                    v = self._vc + _vc_hash(p + pos, m)
                    if v.klen != m:
                        break
                    i = 0
                    while i < m and v.key[i] == p[pos + i]:
                        i += 1
                    if i < m:
                        break
                    self._record(v.kind, v.data, v.dlen, base + pos, m)
                pos = q
            while pos < n and CLASS[p[pos]] == C_WS:
                pos += 1
            if pos >= n:
                break
        self._clear(state)
        return pos

    cdef int _vc_put(self, Py_ssize_t start, Py_ssize_t end) except -1:
        """Remember the frame ``p[start:end]`` just answered and its entry."""
        cdef Py_ssize_t m = end - start
        cdef Verdict *v
        if self._vc == NULL:
            self._vc = <Verdict *>PyMem_Malloc(VC_SLOTS * sizeof(Verdict))
            if self._vc == NULL:
                raise MemoryError()
            memset(self._vc, 0, VC_SLOTS * sizeof(Verdict))
        v = self._vc + _vc_hash(self._p + start, m)
        v.klen = <unsigned char>m
        v.kind = <unsigned char>self._akind
        v.dlen = <unsigned char>self._asize
        memcpy(v.key, self._p + start, m)
        memcpy(v.data, self._rec.p + self._adata, self._asize)
        return 0

    cdef bint _answer_frame(self, Py_ssize_t start, Py_ssize_t end) except -1:
        """Answering errors, a frame that does not start with ``{``: answer
        it here when _prepare() alone decides it, as _decode_prepared()
        would (QEMU's words for its first error, or not an object when it
        is valid).  False: decode it."""
        cdef Prep r
        cdef const unsigned char *p = self._p + start
        cdef Py_ssize_t n = end - start
        cdef unsigned char levels[64]
        _prep_init(&r, levels, self.max_depth)
        try:
            _prepare(p, n, True, -1, &r, n, None)
        finally:
            _prep_free(&r)
        if r.flags & F_BAD and r.flags & F_MEMBERS:
            # A duplicate key may come first: the pass that keeps keys
            # words it (as _decode_prepared() would, one pass sooner).
            why = self._with_keys(p, n)
            if why is None:
                return False
            self._answer(why, 0, 0, self._base + start, n)
            return True
        if r.flags & F_MEMBERS or r.reason == 9:
            return False  # a duplicate key may come first; an escape worded with its text
        if not r.flags & F_BAD:
            if p[0] == 0x7B:
                return self._answer_object(p, n, r.colons, self._base + start)
            if not self._anot:
                return False
            self._record(A_FIXED + T_NOT_OBJECT - T_FIXED, NULL, 0, self._base + start, n)
        elif r.reason == 7:
            self._record(A_KEYWORD, <const char *>p + r.kw_at, r.kw_len, self._base + start, n)
        elif r.reason:
            self._record(A_FIXED + T_GRAMMAR + r.reason - T_FIXED, NULL, 0, self._base + start, n)
        else:
            return False
        return True

    cdef bint _answer_object(self, const unsigned char *p, Py_ssize_t n, Py_ssize_t colons,
                             long long offset) except -1:
        """A valid object frame ``p[:n]`` whose objects have one member at
        most: answer the envelope errors that need no state (no member;
        one member with an ASCII name that is unexpected)."""
        cdef _Template tpl = self._tpl
        cdef Py_ssize_t i = 1, k
        cdef unsigned char q
        cdef bytes name
        if colons == 0:
            self._record(A_FIXED + T_NO_EXECUTE - T_FIXED, NULL, 0, offset, n)
            return True
        while CLASS[p[i]] == C_WS:
            i += 1
        q = p[i]
        i += 1
        k = i
        while p[k] != q:
            if p[k] == 0x5C:
                return False  # (an escape: the dispatcher reads the name)
            k += 1
        for name in tpl.known:
            if PyBytes_GET_SIZE(name) == k - i and memcmp(PyBytes_AS_STRING(name), p + i, k - i) == 0:
                return False
        self._tmp.len = 0
        _buf_add(&self._tmp, PyBytes_AS_STRING(tpl.member_head), PyBytes_GET_SIZE(tpl.member_head))
        _esc_token(&self._tmp, p + i, k - i)
        _buf_add(&self._tmp, PyBytes_AS_STRING(tpl.member_tail), PyBytes_GET_SIZE(tpl.member_tail))
        self._record(A_TEXT, self._tmp.p, self._tmp.len, offset, n)
        return True

    cdef int _flush_answers(self, list out) except -1:
        """Output the recorded run as one Answers item."""
        cdef Buf *rec = &self._rec
        cdef Answers a = Answers.__new__(Answers)
        cdef char *mem
        _buf_varint(rec, self._pc)
        mem = <char *>PyMem_Realloc(rec.p, rec.len)  # (no slack kept)
        a._rec = mem if mem != NULL else rec.p
        a._len = rec.len
        rec.p = NULL
        rec.len = rec.cap = 0
        a._next = 0
        a._left = 0
        a._tpl = self._tpl
        a.count = a.remaining = self._acount + self._pc
        a.offset = self._ao
        a.nbytes = self._pe - self._ao
        self._pr = None
        self._acount = 0
        out.append(a)
        if self._tmp.cap > 4096:
            PyMem_Free(self._tmp.p)
            self._tmp.p = NULL
            self._tmp.len = self._tmp.cap = 0
        return 0

    cdef int _flush(self, list out) except -1:
        """Output the error run held in C fields, if any."""
        if self._pr is None:
            return 0
        if self._answering:
            return self._flush_answers(out)
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
        if self._answering:
            return self._answer(reason, first, pos, offset, nbytes)
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
        if self.defer and end - start > self.defer:
            # (answering errors too: its result is the value, which the
            # server's dispatcher answers when it is not a request)
            frame = PyBytes_FromStringAndSize(<const char *>self._p + start, end - start)
            self._put(_PendingFrame(_Steps(frame, self._base + start, self.max_depth, self.defer_step, self._slow,
                                           self.strict),
                                    self._base + start, end - start), out)
            return 0
        if self._answering and (self._p[start] != 0x7B or self._tpl.known is not None) and self._answer_frame(start, end):
            if end - start <= VC_KEY and self._asize <= VC_DATA:
                self._vc_put(start, end)
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
                self._value(value, start, end, out)
                return 0
        self._why = None
        value = self._decode_prepared(start, end, tried)
        if self._why is not None:
            self._err(self._why, 0, 0, self._base + start, end - start, False, out)
            return 0
        if value is not _NO:
            self._value(value, start, end, out)
            return 0
        frame = PyBytes_FromStringAndSize(<const char *>self._p + start, end - start)
        if self._answering and end - start <= VERDICT_FRAME:
            reason = _VERDICTS.get(frame)
            if reason is not None:  # (a short frame QEMU's parser refused already)
                return self._answer(reason, 0, 0, self._base + start, end - start)
        try:
            value = _decode_frame(frame, self.strict, self._slow)
        except _ParseError as exc:
            if self._answering and end - start <= VERDICT_FRAME:
                if len(_VERDICTS) >= VERDICTS_MAX:
                    _VERDICTS.clear()
                _VERDICTS[frame] = exc.args[0]
            self._err(exc.args[0], 0, 0, self._base + start, end - start, False, out)
        else:
            self._value(value, start, end, out)
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
        _prep_init(&r, levels, self.max_depth)
        try:
            _prepare(p, n, self.strict, limit, &r, n, None)
            if r.flags & F_BAD:
                self._why = _words(&r, p, self.strict)
                if self._why is None and self.strict and r.flags & F_MEMBERS:
                    self._why = self._with_keys(p, n)  # a duplicate key may come first
                return _NO
            if self.strict and r.flags & F_NONCHAR:
                return _NO
            if r.flags & F_CHANGED:
                _rewrite(&r, p, n, "", 0, n)
                doc = PyBytes_FromStringAndSize(r.buf, r.len)
            else:
                doc = PyBytes_FromStringAndSize(<const char *>p, n)
        finally:
            _prep_free(&r)
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
                value = _exact(doc)
            except (ValueError, RecursionError):
                return _NO
        if self.strict and r.colons != _entries(value):
            self._why = self._with_keys(p, n)  # a duplicate key: QEMU refuses it
            return _NO
        return value

    cdef object _with_keys(self, const unsigned char *p, Py_ssize_t n):
        """QEMU's words for the first error of a frame, duplicate keys
        included: _prepare() again, keeping the keys of every object."""
        cdef Prep r
        cdef unsigned char levels[64]
        _prep_init(&r, levels, self.max_depth)
        try:
            _prepare(p, n, self.strict, -1, &r, n, None, [])
            return _words(&r, p, self.strict, True)
        finally:
            _prep_free(&r)

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


# -- QEMU's QDict member order --------------------------------------------------

cdef extern from "Python.h":
    bint PyUnicode_IS_ASCII(object o)
    const void *PyUnicode_DATA(object o)
    Py_ssize_t PyUnicode_GET_LENGTH(object o)

from cpython.ref cimport Py_INCREF
from cpython.tuple cimport PyTuple_New, PyTuple_SET_ITEM

from qmpcore.framing import qdict as _qdict

DEF QD_BUCKETS = 512
assert QD_BUCKETS == _qdict.BUCKETS


cdef inline unsigned int _tdb_hash(const unsigned char *p, Py_ssize_t n) noexcept nogil:
    """QEMU's tdb_hash (qobject/qdict.c) of p[:n]."""
    cdef unsigned int value = <unsigned int>(0x238F13AF * <unsigned long long>n)
    cdef Py_ssize_t i
    cdef unsigned int shift = 0
    for i in range(n):
        value += (<unsigned int>p[i]) << shift
        shift += 5
        if shift >= 24:
            shift -= 24
    return 1103515243u * value + 12345u


def qdict_order(tuple keys):
    """The order in which QEMU iterates a QDict whose keys were inserted in
    the order ``keys``: by hash bucket, newest first within a bucket (a
    counting sort: linear in the keys' bytes).  The twin of
    :func:`qmpcore.framing.qdict.qdict_order`."""
    cdef Py_ssize_t n = len(keys), i, b
    cdef Py_ssize_t starts[QD_BUCKETS]
    cdef unsigned short *bucket_of
    cdef object key, data
    cdef tuple out
    if n < 2:
        return keys
    bucket_of = <unsigned short *>PyMem_Malloc(n * sizeof(unsigned short))
    if bucket_of == NULL:
        raise MemoryError()
    try:
        for b in range(QD_BUCKETS):
            starts[b] = 0
        for i in range(n):
            key = keys[i]
            if type(key) is not str:
                raise TypeError(f"member names are str, not {type(key).__name__}")
            if PyUnicode_IS_ASCII(key):
                b = _tdb_hash(<const unsigned char *>PyUnicode_DATA(key), PyUnicode_GET_LENGTH(key)) % QD_BUCKETS
            else:
                data = (<str>key).encode("utf-8", "surrogatepass")
                b = _tdb_hash(<const unsigned char *>PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data)) % QD_BUCKETS
            bucket_of[i] = <unsigned short>b
            starts[b] += 1
        # (each bucket's first slot; the newest key of a bucket comes first)
        i = 0
        for b in range(QD_BUCKETS):
            i, starts[b] = i + starts[b], i
        out = PyTuple_New(n)
        for i in range(n - 1, -1, -1):
            key = keys[i]
            Py_INCREF(key)
            PyTuple_SET_ITEM(out, starts[bucket_of[i]], key)
            starts[bucket_of[i]] += 1
        return out
    finally:
        PyMem_Free(bucket_of)
