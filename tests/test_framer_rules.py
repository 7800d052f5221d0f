"""The framers' shared rules: one statement, joined errors, buffer size.

Each behaviour test runs on both implementations (``Framer`` fixture); the
statement tests compare the compiled framer's C tables and checks with
:mod:`qmpcore.framing.rules`, which the pure twin uses directly.
"""

from __future__ import annotations

import gc
import pickle
import random
import sys

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import HERE, IMPLEMENTATIONS

sys.path.insert(0, str(HERE / "fuzz"))
from framer_check import canonical

from qmpcore import SYNC, FrameError
from qmpcore.framing import rules
from qmpcore.framing.rules import coalesce

EXPECTING = "JSON parse error, expecting value"
STRAY_FF = "JSON parse error, stray '\ufffd'"
needs_compiled = pytest.mark.skipif("cython" not in IMPLEMENTATIONS, reason="compiled framer not built")


def feed_all(framer, chunks):
    out = []
    for chunk in chunks:
        out.extend(framer.feed(chunk))
    return out


# -- 1. one statement of the rules ---------------------------------------------


@needs_compiled
def test_compiled_tables_are_the_rules():
    from qmpcore.framing import _framer

    tables = _framer._tables()
    for name in ("BYTE_CLASS", "DQ_PLAIN", "SQ_PLAIN", "RECOVER_SKIP", "LONG_INT", "WHOLE_SLACK"):
        assert tables[name] == getattr(rules, name), name
    assert tables["MIN_CAPACITY"] == rules.MIN_CAPACITY and tables["SHRINK_RATIO"] == rules.SHRINK_RATIO
    names = ("C_OTHER", "C_WS", "C_STRUCT", "C_DQUOTE", "C_SQUOTE", "C_ZERO", "C_DIGIT", "C_MINUS", "C_LOWER")
    assert tables["classes"] == tuple(getattr(rules, n) for n in names)


def test_rule_tables_say_what_the_docs_say():
    assert {c for c in range(256) if rules.BYTE_CLASS[c] == rules.C_STRUCT} == set(b"{}[]:,")
    assert {c for c in range(256) if rules.BYTE_CLASS[c] == rules.C_WS} == set(b" \t\r\n")
    assert not rules.DQ_PLAIN[0x22] and not rules.DQ_PLAIN[0x5C] and rules.DQ_PLAIN[0x27]
    assert not rules.SQ_PLAIN[0x27] and rules.SQ_PLAIN[0x22]
    assert sum(rules.DQ_PLAIN) == 0xFE - 0x20 - 2
    assert rules.RECOVER_SKIP[0x09] and not rules.RECOVER_SKIP[0x0A] and not rules.RECOVER_SKIP[0xFE]
    assert rules.RECOVER_SKIP[0x22] and not rules.RECOVER_SKIP[ord(",")]


# Lines orjson accepts, rich in what the shortcut must refuse.
_atoms = st.sampled_from(
    ["0", "1", "-0", "0e5", "0E1", "10e5", "1.0e5", "0.5", "9" * 18, "9" * 19, "-" + "1" * 19, "1" * 30 + ".5", "true"]
    # the edges of what orjson reads exactly, and long runs in floats
    + [str(2**64 - 1), str(2**64), str(-(2**63)), str(-(2**63) - 1), "9" * 20, "1" * 21]
    + ["1e-" + "0" * 18 + "1", "1E+" + "0" * 18 + "2", "0." + "3" * 19, "4" * 19 + "e1"]
)
_strings = st.sampled_from(['""', '"0e5"', '"' + "7" * 25 + '"', '"a\\"0e1"', '"\\\\"', '"[[[["', '"x\\u0030e"'])


@st.composite
def _lines(draw):
    def value(depth):
        kind = draw(st.integers(0, 3 if depth < 6 else 1))
        if kind == 0:
            return draw(_atoms)
        if kind == 1:
            return draw(_strings)
        items = [value(depth + 1) for _ in range(draw(st.integers(0, 3)))]
        if kind == 2:
            return "[" + ",".join(items) + "]"
        return "{" + ",".join(f'"k{i}":{v}' for i, v in enumerate(items)) + "}"

    return (value(0) + "\n").encode()


@needs_compiled
@settings(max_examples=400, deadline=None)
@given(_lines(), st.integers(1, 8))
def test_compiled_shortcut_check_is_the_rule(line, max_depth):
    from qmpcore.framing import _framer

    orjson.loads(line)  # the rule is stated for lines orjson accepts
    assert _framer._plain_line(line, max_depth) == rules.plain_line(line, max_depth)


@pytest.mark.parametrize(
    "line,depth,ok",
    [
        (b'{"a": [1, 2]}\n', 2, True),
        (b'{"a": [1, 2]}\n', 1, False),
        (b'{"a": "[[[[[["}\n', 1, True),
        (b"[0e5]\n", 4, False),
        (b"[10e5, 1.5e3]\n", 4, True),
        (b'["0e5"]\n', 4, True),
        (b"[1234567890123456789]\n", 4, True),
        (b"[123456789012345678]\n", 4, True),
        # integers orjson reads exactly: [-2**63, 2**64)
        (b"[18446744073709551615, -9223372036854775808]\n", 4, True),
        (b"[18446744073709551616]\n", 4, False),
        (b"[-9223372036854775809]\n", 4, False),
        (b"[123456789012345678901]\n", 4, False),
        # long digit runs in floats are never taken as integers
        (b"[1.1234567890123456789]\n", 4, False),
        (b"[1234567890123456789.5]\n", 4, False),
        (b"[1234567890123456789e2]\n", 4, False),
        (b"[1e-1234567890123456789]\n", 4, False),
        (b"[1E+1234567890123456789]\n", 4, False),
        (b'["1234567890123456789"]\n', 4, True),
    ],
)
def test_plain_line_examples(line, depth, ok):
    assert rules.plain_line(line, depth) is ok


@pytest.mark.parametrize("value", [2**64 - 1, 2**64, -(2**63), -(2**63) - 1, 10**19, -(10**18), 10**25])
def test_long_integers_decode_exactly(value):
    line = b'{"return": [%d, "x\\"y", %d]}\n' % (value, value)
    for name, cls in IMPLEMENTATIONS.items():
        assert cls().feed(line) == [{"return": [value, 'x"y', value]}], name


# -- 2. FrameError count and nbytes ----------------------------------------


def test_frame_error_count_and_nbytes():
    one = FrameError("bad", 3)
    assert (one.count, one.nbytes) == (1, 1)
    assert repr(one) == "FrameError('bad', 3)" and str(one) == "bad (at byte 3)"
    run = FrameError("bad", 3, sync=True, count=5, nbytes=9)
    assert repr(run) == "FrameError('bad', 3, sync=True, count=5, nbytes=9)"
    assert str(run) == "bad (at byte 3; 5 errors in 9 bytes)"
    assert eval(repr(run)) == run and hash(eval(repr(run))) == hash(run)
    assert pickle.loads(pickle.dumps(run)) == run and pickle.loads(pickle.dumps(one)) == one
    assert run != FrameError("bad", 3, sync=True, count=5, nbytes=8)
    assert run != FrameError("bad", 3, sync=True, count=4, nbytes=9)
    assert FrameError("bad", 3, count=2) == FrameError("bad", 3, count=2, nbytes=2)


# -- 3. joined errors -------------------------------------------------------


@pytest.mark.parametrize("strict", [False, True])
@pytest.mark.parametrize("garbage", [b",", b"]", b"}", b":", b"]}:,"])
def test_structural_garbage_after_a_frame_is_one_error(Framer, strict, garbage):
    data = b'{"a": 1}\n' + garbage * (65536 // len(garbage))
    items = Framer(strict=strict).feed(data + b'{"b": 2}\n')
    n = 65536 // len(garbage) * len(garbage)
    assert items == [{"a": 1}, FrameError(EXPECTING, 9, count=n, nbytes=n), {"b": 2}]


@pytest.mark.parametrize("size", [1, 2, 4096])
def test_run_of_ff_strict_is_one_error_then_one_sync(Framer, size):
    data = b'{"a": 1}\n' + b"\xff" * size + b'{"b": 2}\n'
    assert Framer(strict=True).feed(data) == [
        {"a": 1},
        FrameError(STRAY_FF, 9, sync=True, count=size, nbytes=size),
        SYNC,
        {"b": 2},
    ]
    assert Framer().feed(data) == [{"a": 1}, SYNC, {"b": 2}]


def test_strict_joins_only_identical_answers(Framer):
    f = Framer(strict=True)
    assert f.feed(b"\x01\x01 \x01") == [FrameError("JSON parse error, stray '\x01'", 0, count=3, nbytes=4)]
    assert f.feed(b"\x01\x02") == [
        FrameError("JSON parse error, stray '\x01'", 4),
        FrameError("JSON parse error, stray '\x02'", 5),
    ]
    # a run of errors with a 0xFF in it: QEMU answers each one
    assert f.feed(b",,\xff\xff,") == [
        FrameError(EXPECTING, 6, count=2),
        FrameError(STRAY_FF, 8, sync=True, count=2),
        SYNC,
        FrameError(EXPECTING, 10),
    ]


def test_client_role_joins_any_parse_errors(Framer):
    f = Framer()
    # stray \x01, "," and "]" alone, stray \x02, then a frame QEMU cannot parse
    assert f.feed(b'\x01@,]\x02{"a" 1}') == [FrameError("JSON parse error, stray '\x01'", 0, count=5, nbytes=12)]
    assert f.feed(b"\x01\xff\xff\x02") == [
        FrameError("JSON parse error, stray '\x01'", 12),
        SYNC,
        FrameError("JSON parse error, stray '\x02'", 15),
    ]


def test_limit_errors_are_never_joined(Framer):
    items = Framer(max_frame_size=8).feed(b'["aaaaaaaaaa"]["bbbbbbbbbbb"],,')
    assert items == [
        FrameError("JSON token size limit exceeded", 8),
        FrameError("JSON token size limit exceeded", 22),
        FrameError(EXPECTING, 29, count=2),
    ]


@pytest.mark.parametrize("strict", [False, True])
def test_joined_items_do_not_depend_on_the_split(Framer, strict):
    rnd = random.Random(11)
    data = bytes(rnd.choice(b',]\xff\x01\x02 "ab{}1') for _ in range(3000))
    whole = Framer(strict=strict).feed(data)
    assert coalesce(whole, strict) == whole  # a feed's output is already joined
    for _ in range(20):
        cuts = sorted(rnd.sample(range(1, len(data)), rnd.randrange(1, 50)))
        chunks = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)])]
        assert coalesce(feed_all(Framer(strict=strict), chunks), strict) == whole
    answers = sum(i.count for i in whole if isinstance(i, FrameError))
    singly = Framer(strict=strict)
    assert sum(i.count for b in data for i in singly.feed(bytes([b])) if isinstance(i, FrameError)) == answers


# -- 4. the buffer is given back ----------------------------------------------


def test_buffer_is_given_back_after_a_large_frame(Framer):
    f = Framer()
    big = b'{"return": "' + b"x" * (8 << 20) + b'"}\n'
    chunk = 1 << 16
    for i in range(0, len(big) - chunk, chunk):
        assert f.feed(big[i : i + chunk]) == []
        assert f.capacity >= f.buffered == i + chunk
    assert f.capacity >= 8 << 20
    (item,) = f.feed(big[i + chunk :] + b'{"next": ')
    assert item == {"return": "x" * (8 << 20)}
    assert f.buffered == len(b'{"next": ')
    assert f.capacity <= rules.MIN_CAPACITY * rules.SHRINK_RATIO
    assert f.feed(b"1}\n") == [{"next": 1}]
    assert f.buffered == 0 and f.capacity <= rules.MIN_CAPACITY
    if type(f).__module__.endswith("_framer"):
        assert f.capacity == 0  # the compiled framer holds nothing when idle


def test_capacity_stays_within_a_ratio_of_what_is_held(Framer):
    rnd = random.Random(4)
    f = Framer()
    for _ in range(300):
        size = rnd.choice([10, 1000, 100_000, 1 << 20])
        f.feed(b'["' + b"y" * size)
        assert f.capacity <= rules.SHRINK_RATIO * max(f.buffered, rules.MIN_CAPACITY)
        assert f.feed(b'"]\n') == [["y" * size]]
        assert f.capacity <= rules.MIN_CAPACITY


def test_capacity_after_rule():
    assert rules.capacity_after(1 << 20, 0) == 0
    assert rules.capacity_after(1 << 20, 1 << 19) == 1 << 20
    assert rules.capacity_after(1 << 20, 100) == rules.MIN_CAPACITY
    assert rules.capacity_after(1 << 20, 50_000) == 1 << 17
    assert rules.capacity_after(rules.MIN_CAPACITY, 10) == rules.MIN_CAPACITY


# -- 5. QEMU's dialect decoded in compiled code --------------------------------

_pieces = st.sampled_from(
    [
        '"plain"',
        "'single'",
        "'it\\'s \"q\"'",
        '"dq \\\' esc"',
        '"\\" \\\\ \\/ \\b\\f\\n\\r\\t"',
        '"\\u00e9\\ud83d\\ude00"',
        '"\\ud800"',
        '"\\udc00x"',
        '"\\ud800\\u0041"',
        '"\\ufdd0"',
        '"\\uffff"',
        '"\\udbff\\udfff"',
        '"\\u12"',
        '"\\x"',
        '"\xc3\xa9"',
        '"\xc0\x80"',
        '"\xef\xb7\x90"',
        '"\xef\xbf\xbe"',
        '"\xf4\x8f\xbf\xbf"',
        '"\xed\xa0\x80"',
        '"\xe0\xc0\x80"',
        '"\xff"',
        "1",
        "-0",
        "1.5",
        "1e400",
        "-1e400",
        "0.10000000000000001",
        "123456789012345678",
        "1234567890123456789",
        "-9223372036854775809",
        "18446744073709551616",
        "99999999999999999999999999999999999",
        "inf",
        "-inf",
        "nan",
        "-nan",
        "true",
        "null",
        "tru",
        "0e5",
        "[]",
        "{}",
    ]
)


@st.composite
def _dialect_frames(draw):
    def value(depth):
        kind = draw(st.integers(0, 2 if depth < 4 else 0))
        if kind == 0:
            return draw(_pieces)
        items = [value(depth + 1) for _ in range(draw(st.integers(0, 3)))]
        if kind == 1:
            return "[" + ", ".join(items) + "]"
        keys = [draw(st.sampled_from(['"a"', '"b"', "'a'", '"\\u0061"'])) for _ in items]
        return "{" + ", ".join(f"{k}: {v}" for k, v in zip(keys, items)) + "}"

    return value(0).encode("latin-1")


def _same(a, b):
    return canonical(a) == canonical(b)


@needs_compiled
@settings(max_examples=600, deadline=None)
@given(_dialect_frames(), st.booleans())
def test_compiled_decoding_of_the_dialect_matches_the_twin(frame, strict):
    data = frame + b"\n" + frame + b" " + frame
    c_items = IMPLEMENTATIONS["cython"](strict=strict).feed(data)
    py_items = IMPLEMENTATIONS["python"](strict=strict).feed(data)
    assert _same(c_items, py_items), (c_items, py_items)


@pytest.mark.parametrize("strict", [False, True])
def test_digits_beyond_pythons_text_limit_in_a_long_frame(Framer, strict):
    digits = b"7" * 5000
    data = b'{"a": [1, -' + digits + b", 12345678901234567890123, 'q']}\n"
    (item,) = Framer(strict=strict).feed(data)
    assert item == {"a": [1, float("-inf"), 12345678901234567890123, "q"]}


_tokens = st.sampled_from(
    ["{", "}", "[", "]", ":", ",", '"a"', "'b'", '"\xc3\xa9"', '"\xff"', '"\\x"', '"\\ufdd0"', "1", "0e5", "tru", "inf"]
)


@needs_compiled
@settings(max_examples=800, deadline=None)
@given(st.lists(_tokens, max_size=14), st.sampled_from(["", " "]), st.booleans())
def test_compiled_errors_in_token_soup_match_the_twin(tokens, sep, strict):
    # QEMU's parser reports the first of grammar and literal errors; the
    # compiled framer finds grammar errors in C: same items, same words.
    data = ("{" + sep.join(tokens) + "\n").encode("latin-1") + b'{"end": 1}\n'
    c_items = IMPLEMENTATIONS["cython"](strict=strict).feed(data)
    py_items = IMPLEMENTATIONS["python"](strict=strict).feed(data)
    assert _same(c_items, py_items), (c_items, py_items)


# -- 6. throughput, counted: no Python per byte ---------------------------------


@pytest.mark.parametrize(
    "frame",
    [
        b'{"a": 1, "a": 2 3}',
        b'{"a": {"x": 1, "x": 2}, "b" 1}',
        b'{"a": 1, "b": [1, {"c": 1, "c": 2}], }',
        b'{"a": 1, "b": [1, {"c": 1, "d": 2}], }',
        b'[{"a": 1, "b": 1}, {"a": 2, "b": 2}, 1 2]',
        b"{'it\\'s': 1, \"it's\": 2}",
        b'{"\\u0061": 1, "a": 2}',
        b'{"\xc3\xa9": 1, "\\u00e9": 2}',
        b'{"a": 1, "b": 2, "a": {"x" 1}}',
        b'{"a": [{"a": 1, "b": []}, {"a": 1}], "b": 2, "a": 3}',
        b'{"a": 1, "a"}',
    ],
)
def test_strict_duplicate_keys_and_errors_in_qemus_order(frame):
    # QEMU checks a key when its member is complete: a duplicate before a
    # grammar error is the error, one after it is not.
    items = {name: cls(strict=True).feed(frame + b"\n") for name, cls in IMPLEMENTATIONS.items()}
    assert len({repr(v) for v in items.values()}) == 1, items


MIB = 1 << 20
_DIALECT = b"{'return': [" + b", ".join(
    [b'"a\\"b\\n\\u00e9", 12345678901234567890, \'it\\\'s\', inf, "\xc3\xa9"'] * 20000
)
_HOSTILE = {
    "commas": b'{"a": 1}\n' + b"," * MIB,
    "closers": b'{"a": 1}\n' + b"]}:," * (MIB // 4),
    "0xff": b"\xff" * MIB,
    "control bytes": b"\x01" * MIB,
    "undecodable frames": b"{1}" * (MIB // 3),
    "grammar errors": b'["a" 1]{"k" 2}' * (MIB // 15),
    "garbage lines": b"\x01\n@ \n" * (MIB // 5),
    "invalid keywords": b"abc\n" * (MIB // 4),
    "dialect frame": _DIALECT + b"]}\n",
    "long integers": b"[" + b", ".join([b"-" + b"9" * 30] * (MIB // 32)) + b"]\n",
    # invalid frames with non-ASCII strings before the error: the words are
    # QEMU's first error, found in C (strings checked as UTF-8 in order)
    "bad frame after UTF-8": b'[["' + b'\xc3\xa9x\\n", "' * (MIB // 16) + b'x" 2]]\n',
    "lone surrogate after UTF-8": b'["' + b"\xc3\xa9\\n" * (MIB // 8) + b'\\ud800", 1]\n',
    # many members, then an error or a duplicate key: which comes first is
    # found in C (strict framers keep each object's keys for that)
    "members then an error": b"{" + b",".join(b'"k%d": 1' % i for i in range(MIB // 12)) + b", }\n",
    "members then a duplicate": b"{" + b",".join(b'"k%d": 1' % i for i in range(MIB // 12)) + b', "k7": 2}\n',
}


def _python_calls(run):
    """How many Python functions ``run()`` calls (from C or Python)."""
    calls = 0

    def profile(frame, event, arg):
        nonlocal calls
        if event == "call":
            calls += 1

    gc.disable()  # no collector callbacks (hypothesis installs some) in the count
    sys.setprofile(profile)
    try:
        result = run()
    finally:
        sys.setprofile(None)
        gc.enable()
    return calls, result


@needs_compiled
@pytest.mark.parametrize("strict", [False, True])
@pytest.mark.parametrize("name", sorted(_HOSTILE))
def test_compiled_framer_needs_no_python_per_byte(name, strict):
    # Each 64 KiB read costs a few Python calls at most (the first error of
    # a run, json's decode() for exact integers), however many bytes or
    # errors it holds: before, every stray byte or dialect frame ran QEMU's
    # parser in Python (millions of calls per MiB).
    data = _HOSTILE[name]
    if strict and name in ("dialect frame",):
        data = data.replace(b"inf", b"1.5")  # QEMU refuses inf from clients
    chunks = [data[i : i + 65536] for i in range(0, len(data), 65536)]
    f = IMPLEMENTATIONS["cython"](strict=strict)
    calls, items = _python_calls(lambda: [item for chunk in chunks for item in f.feed(chunk)])
    # (one call per item output: strict framers cannot join errors QEMU
    # words differently, such as the alternating ones of "grammar errors"
    # and "garbage lines")
    assert calls <= 8 * len(chunks) + len(items), (calls, items[:4])
    if not (strict and name in ("grammar errors", "garbage lines")):
        assert len(items) <= 3 * len(chunks)
    if name in ("commas", "closers"):
        assert sum(i.count for i in items if isinstance(i, FrameError)) == len(data) - 9


# -- 7. the bench's hostile and dialect workloads ------------------------------


@pytest.mark.parametrize("kind", ["commas", "ff", "control", "frames"])
def test_bench_garbage_workloads(Framer, kind):
    from qmpcore.bench import _framing, _workloads

    wl = _workloads.garbage(kind, 4096)
    assert wl.hostile and wl.nbytes == sum(map(len, wl.chunks)) > 4096
    assert _framing.prepare(_framing.framer, wl, Framer)() == 2  # the two replies around the garbage
    with pytest.raises(_framing.NotApplicable):
        _framing.orjson_floor(wl)


@pytest.mark.parametrize("kind", ["escapes", "single-quotes", "long-integers"])
def test_bench_dialect_workloads_decode_exactly(Framer, kind):
    from qmpcore.bench import _workloads

    wl = _workloads.dialect(kind, 4096)
    (frame,) = wl.frames
    (value,) = feed_all(Framer(), wl.chunks)
    assert value["id"] == "dialect" and len(value["return"]) > 50
    if kind == "long-integers":
        assert value["return"][0] == -123456789012345678901234567890
    elif kind == "escapes":
        assert value["return"][:2] == ['a"b\n\u00e9', 12345678901234567890]
    else:
        assert value["return"][:2] == ["abc", "it's"]


@needs_compiled
@settings(max_examples=1500, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.binary(max_size=4),
            st.sampled_from([b"\xc0\x80", b"\xef\xb7\x90", b"\xef\xbf\xbe", b"\xf4\x8f\xbf\xbf", b"\xed\xa0\x80"]),
            st.sampled_from(
                [b"\xe0\x80\x80", b"\xf8\x88\x80\x80\x80", b"\xfc\x84\x80\x80\x80\x80", b"\xf4\x90\x80\x80"]
            ),
            st.text(max_size=3).map(lambda t: t.encode("utf-8", "surrogatepass")),
        ),
        max_size=8,
    )
)
def test_compiled_display_is_qemus(parts):
    from qmpcore.framing import _framer
    from qmpcore.framing.qemu_json import display

    token = b"".join(parts)
    assert _framer._display_bytes(token) == display(token)


@pytest.mark.parametrize("strict", [False, True])
def test_long_bad_token_is_worded_in_c(Framer, strict):
    # A string of 192 KiB of non-ASCII bytes ended by a control byte: one
    # error, whose words (the whole token, as QEMU shows it) are built at C
    # speed by the compiled framer.
    n = 1 << 16
    data = b'"' + b"\xc3\xa9\x80" * n + b"\x01"
    f = Framer(strict=strict)
    calls, (err,) = _python_calls(lambda: f.feed(data))
    assert err.reason == "JSON parse error, stray '\"" + "\u00e9\ufffd" * n + "\x01'"
    if type(f).__module__.endswith("_framer"):
        assert calls <= 2  # FrameError.__init__ only


@pytest.mark.parametrize("max_depth", [3, 64, 65, 10**12])
def test_grammar_check_at_any_depth_limit(Framer, max_depth):
    # The C pass keeps one byte per open container, grown as needed: a huge
    # max_depth costs nothing up front.
    depth = min(max_depth, 3000)
    data = b"[" * depth + b"1 2" + b"]" * depth + b'{"a": 1}\n'
    items = Framer(max_depth=max_depth).feed(data)
    reason = "JSON parse error, expected separator in list"
    assert items == [FrameError(reason, 0, nbytes=2 * depth + 3), {"a": 1}]
