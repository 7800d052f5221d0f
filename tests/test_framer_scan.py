"""The compiled framer's block scan (src/_scan.h) changes speed, never items.

Inside a frame the compiled framer crosses 64 bytes at a time with bitmasks
and leaves anything unusual to its byte loop.  These tests build frames
long enough to span many blocks, with every kind of token the byte loop
treats specially placed at every offset of a block, and compare the items
and ``buffered`` of the compiled framer, with each block scan variant this
CPU has (AVX2, SSE2, portable, none), against the pure twin.
"""

from __future__ import annotations

import platform
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import HERE, IMPLEMENTATIONS

sys.path.insert(0, str(HERE / "fuzz"))
from framer_check import canonical

if "cython" not in IMPLEMENTATIONS:
    pytestmark = pytest.mark.skip("compiled framer not built")
else:
    from qmpcore.framing import _framer

CY = IMPLEMENTATIONS.get("cython")
PY = IMPLEMENTATIONS["python"]


def _variants() -> list[str]:
    if CY is None:
        return []
    before = _framer._scan_impl()
    try:
        found = []
        for name in ("none", "portable", "sse2", "avx2"):
            if _framer._scan_impl(name) == name:
                found.append(name)
        return found
    finally:
        _framer._scan_impl(before)


VARIANTS = _variants()


@pytest.fixture(scope="module", params=VARIANTS or ["none"])
def variant(request):
    """Each test runs once per block scan variant, then the best is restored."""
    before = _framer._scan_impl()
    assert _framer._scan_impl(request.param) == request.param
    yield request.param
    _framer._scan_impl(before)


def _compare(chunks: list[bytes], **kwargs) -> list:
    c, p = CY(**kwargs), PY(**kwargs)
    c_items, p_items = [], []
    for chunk in chunks:
        c_items.extend(c.feed(chunk))
        p_items.extend(p.feed(chunk))
        assert c.buffered == p.buffered
    assert canonical(c_items) == canonical(p_items), (c_items[:3], p_items[:3])
    return c_items


def _split(data: bytes, sizes: list[int]) -> list[bytes]:
    out, i, k = [], 0, 0
    while i < len(data):
        size = sizes[k % len(sizes)] if sizes else len(data)
        out.append(data[i : i + max(size, 1)])
        i += max(size, 1)
        k += 1
    return out


def test_the_best_variant_is_in_use():
    # What this CPU has: on x86-64 at least SSE2 (its baseline), and the
    # module chooses the best at import (never the portable masks, which
    # are slower than the byte loops; they run only when asked for).
    assert VARIANTS[:2] == ["none", "portable"]
    best = _framer._scan_impl()
    if platform.machine() in ("x86_64", "AMD64"):
        assert "sse2" in VARIANTS and best == VARIANTS[-1]
    else:
        assert best == "none"
    assert _framer._scan_impl("") == best


#: Plain middles: what the blocks cross.
_PLAIN = [
    b'"name"',
    b'"a longer string value with spaces, commas, colons: and [brackets] {braces}"',
    b'""',
    b"true",
    b"false",
    b"null",
    b"12345",
    b"1",
    b"[]",
    b"{}",
    b'{"k": "v"}',
    b"[1, 2, 3]",
    b'"\xc3\xa9t\xc3\xa9 \xe2\x82\xac"',
    b'"UPPER Case 0.5e3 -1"',
]
#: What the byte loop must see (each stops a block, or must be taken over exactly).
_SPECIAL = [
    b'"a\\"b"',
    b'"\\u00e9\\n"',
    b"'single'",
    b"'it\\'s'",
    b"0",
    b"01",
    b"007",
    b"0.5",
    b"-7",
    b"1.5",
    b"1e5",
    b"12e3",
    b"0e5",
    b"1234567890123456789",
    b"123456789012345678901234567890",
    b"-123456789012345678901234567890",
    b"inf",
    b"-nan",
    b"abc",
    b"Nope",
    b'"tab\there"',
    b'"nl\nhere"',
    b'"\x01"',
    b'"\xff"',
    b'"\xfe"',
    b"\xff",
    b"\x01",
    b"@",
    b"\\",
    b"}",
    b"]",
    b"]}",
    b"}}}}",
    b"[[[[[[",
    b",,",
    b"::",
    b'"unterminated',
]
_WS = [b"", b" ", b"  ", b"\n", b"\r\n", b"\t", b" \n   "]


@st.composite
def _frames(draw):
    """A stream of one or more long frames with special tokens among plain ones."""
    parts = [b'{"return": [']
    for _ in range(draw(st.integers(1, 60))):
        pool = _SPECIAL if draw(st.integers(0, 9)) == 0 else _PLAIN
        parts.append(draw(st.sampled_from(pool)))
        parts.append(draw(st.sampled_from([b",", b", ", b",\n  ", b" : ", b""])))
        parts.append(draw(st.sampled_from(_WS)))
    parts.append(draw(st.sampled_from([b"1]}", b"1]}\r\n", b'"x"]} {"a": 1}\n', b"", b"1]"])))
    data = b"".join(parts)
    if draw(st.booleans()):
        data = data * draw(st.integers(2, 4))
    return data


_limits = st.one_of(
    st.just({}),
    st.fixed_dictionaries(
        {},
        optional={
            "max_frame_size": st.integers(60, 700),
            "max_depth": st.integers(1, 8),
            "max_tokens": st.integers(20, 300),
        },
    ),
)


@settings(max_examples=300, deadline=None)
@given(
    data=_frames(),
    sizes=st.lists(st.sampled_from([1, 7, 63, 64, 65, 100, 127, 128, 129, 500, 4096]), max_size=4),
    limits=_limits,
    raw=st.booleans(),
    strict=st.booleans(),
)
def test_long_frames_match_the_twin(variant, data, sizes, limits, raw, strict):
    _compare(_split(data, sizes), raw=raw, strict=strict, **limits)


@pytest.mark.parametrize("special", _SPECIAL, ids=repr)
def test_every_offset_in_a_block(variant, special):
    # The special token at each of 130 offsets into a plain frame: in the
    # first, second and third block, at and across their edges.
    plain = b'"key": "value", "list": [true, false, null, 123], "o": {"x": "y"}, '
    for offset in range(130):
        pad = b" " * (offset % 7) + b'"' + b"p" * max(offset - offset % 7 - 2, 0) + b'"'
        frame = b'{"a": [' + pad + b", " + special + b", " + plain * 3 + b"1]}\n"
        for raw in (False, True):
            _compare([frame], raw=raw)
            _compare([frame[:64], frame[64:]], raw=raw)


@pytest.mark.parametrize("limit", ["max_frame_size", "max_tokens", "max_depth"])
def test_limits_reached_inside_blocks(variant, limit):
    body = b'{"a": [' + b'"abcdefgh", [{"k": 1}], ' * 40 + b"1]}\n"
    for value in range(1, 200):
        if limit == "max_depth" and value > 6:
            break
        _compare([body, body], **{limit: value})
        _compare([body[:100], body[100:] + body], **{limit: value})


def test_long_integers_across_blocks(variant):
    # Digit runs that cross a block edge: 18 digits stay in the fast path,
    # 19 need the exact decoder (rules.LONG_INT).
    for digits in (17, 18, 19, 20, 64, 65, 130):
        for offset in range(40, 70):
            frame = b'{"a": "' + b"x" * offset + b'", "n": ' + b"9" * digits + b', "m": [1, 22, 333]}\n'
            items = _compare([frame])
            assert items[0]["n"] == int("9" * digits)


def test_frames_ending_in_blocks(variant):
    # Many small frames back to back, each ending somewhere inside a block.
    stream = b"".join(
        b'{"return": {"id": ' + str(i).encode() + b', "s": "' + b"z" * (i % 70) + b'"}}\r\n' for i in range(300)
    )
    for sizes in ([len(stream)], [64], [65536], [1000, 3]):
        items = _compare(_split(stream, sizes))
        assert len(items) == 300


# -- the one-line shortcut's check (Framer._plain) -----------------------------

_ATOMS = ["0", "1", "-0", "0e5", "0E1", "10e5", "1.0e5", "0.5", "9" * 18, "9" * 19, "1" * 30 + ".5", "true", "null"]
# the edges of what orjson reads exactly (the byte loop decides those runs)
_ATOMS += [str(2**64 - 1), str(2**64), str(-(2**63)), str(-(2**63) - 1), "1" * 21, "2" * 19 + "e1"]
_STRINGS = ['""', '"0e5"', '"' + "7" * 25 + '"', '"a\\"0e1"', '"\\\\"', '"[[[["', '"x\\u0030e"', '"' + "s" * 70 + '"']


@st.composite
def _long_lines(draw):
    def value(depth):
        kind = draw(st.integers(0, 3 if depth < 9 else 1))
        if kind == 0:
            return draw(st.sampled_from(_ATOMS))
        if kind == 1:
            return draw(st.sampled_from(_STRINGS))
        items = [value(depth + 1) for _ in range(draw(st.integers(0, 4)))]
        sep = draw(st.sampled_from([",", ", ", ",\n  "]))
        if kind == 2:
            return "[" + sep.join(items) + "]"
        return "{" + sep.join(f'"k{i}": {v}' for i, v in enumerate(items)) + "}"

    pad = '"' + "p" * draw(st.integers(0, 70)) + '"'
    return ("[" + pad + ", " + value(0) + "]\n").encode()


@settings(max_examples=400, deadline=None)
@given(line=_long_lines(), max_depth=st.integers(1, 12))
def test_shortcut_check_is_the_rule_on_long_lines(variant, line, max_depth):
    import orjson

    from qmpcore.framing import rules

    orjson.loads(line)  # the rule is stated for lines orjson accepts
    assert _framer._plain_line(line, max_depth) == rules.plain_line(line, max_depth)
