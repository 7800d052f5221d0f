"""Frames over ``Framer(defer=)`` come out as PendingFrame and are decoded a
step at a time: the result is exactly what ``feed()`` gives without defer,
on both framers, however small the steps."""

from __future__ import annotations

import ctypes
import sys

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qmpcore import FrameError
from qmpcore.framing.wire import PendingFrame
from qmpcore.protocol import QMPClientProtocol
from qmpcore.protocol.events import Event, Return


def decode_all(framer, data: bytes) -> tuple[list, list[int]]:
    """Items of ``data``, each PendingFrame stepped to its result; and the
    steps each one took."""
    out, steps = [], []
    for item in framer.feed(data):
        if type(item) is PendingFrame:
            assert not item.done
            item.finish()
            steps.append(item.steps)
            out.append(item.result)
        else:
            out.append(item)
    return out, steps


_scalars = st.one_of(
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(),
    st.none(),
    st.text(max_size=12),
    st.text(alphabet=st.sampled_from('ab"\\\n\u00e9\U0001f600\x00'), min_size=20, max_size=80),
)
_keys = st.sampled_from(["a", "b", "", "k\\", 'q"', "\u00e9", "x y"])


def _values(depth: int = 0) -> st.SearchStrategy:
    if depth > 4:
        return _scalars
    return st.one_of(
        _scalars,
        st.lists(st.deferred(lambda: _values(depth + 1)), max_size=8),
        st.lists(st.tuples(_keys, st.deferred(lambda: _values(depth + 1))), max_size=6),  # members, duplicates kept
    )


def _text(value) -> str:
    """JSON text of ``value``; a list of pairs is an object (keys may repeat)."""
    if isinstance(value, list) and value and all(isinstance(v, tuple) for v in value):
        return "{" + ", ".join(orjson.dumps(k).decode() + ": " + _text(v) for k, v in value) + "}"
    if isinstance(value, list):
        return "[" + ",".join(_text(v) for v in value) + "]"
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return orjson.dumps(value).decode()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=st.lists(_values(), min_size=1, max_size=6), step=st.sampled_from([1, 2, 5, 17, 64]), strict=st.booleans())
def test_deferred_frames_decode_as_feed_does(Framer, value, step, strict):
    frame = ('{"return": ' + _text(value) + ', "id": 1}\n').encode()
    (expected,) = Framer(strict=strict).feed(frame)
    f = Framer(defer=8, strict=strict)
    f.defer_step = step
    (got,), (steps,) = decode_all(f, frame)
    assert got == expected
    assert steps >= 1


@pytest.mark.parametrize(
    "frame",
    [
        # QEMU's dialect: single quotes, \', inf, exact integers, modified UTF-8
        b"{'return': ["
        + b", ".join([b'"a\\"b\\n\\u00e9", 12345678901234567890, \'it\\\'s\', inf, "\xc0\x80"'] * 40)
        + b"]}",
        b'{"a": {"k": [' + b"1, " * 40 + b'2], "k": 5, "z": [' + b"[3, 4], " * 20 + b'5]}, "": 1, "a": {"k": 2}}',
        b'{"event": "X", "data": {"deep": ' + b'{"d": [' * 30 + b"1, 2, 3" + b"]}" * 30 + b"}}",
        # invalid: QEMU's words, as without defer
        b"[" + b"1, " * 60 + b"1 2]",
        b'["' + "\u00e9".encode() * 60 + b'", "\\ud800", 1]',
        b"{" + b'"a": 1, ' * 30 + b"}",
        b"[" + b"tru, " * 30 + b"1]",
        # duplicate keys (strict: QEMU's first error), across steps
        b'{"a": 1, ' + b'"b": [1, 2, 3], ' * 10 + b'"a": 2, "c" 3}',
        b'{"k": {' + b'"x": "' + b"y" * 100 + b'", ' + b'"z": 1, ' * 10 + b'"x": 2}, "k": 1}',
        # long strings, cut inside: top level, in a list, as a member, as a key
        b'"' + b"abc\\n\xc3\xa9\\u00e9\\ud83d\\ude00" * 20 + b'"',
        b'["' + b"x" * 200 + b'", 1, {"k": "' + b"y\\u00e9" * 40 + b'"}, "z"]',
        b'{"a": "'
        + b"q" * 200
        + b'", "a": "'
        + b"r" * 200
        + b'", "b": {"'
        + b"k" * 300
        + b'": ["'
        + b"s" * 200
        + b'"]}}',
        b"{'a': '" + b"it\\'s " * 40 + b"', 'b': [['" + b"x" * 100 + b"']]}",
        b'["' + b"x" * 200 + b'\\ud800"]',
    ],
)
@pytest.mark.parametrize("step", [1, 3, 32, 1 << 20])
@pytest.mark.parametrize("strict", [False, True])
def test_deferred_dialect_and_invalid_frames(Framer, frame, step, strict):
    expected = Framer(strict=strict).feed(frame + b"\n")
    f = Framer(defer=16, strict=strict)
    f.defer_step = step
    got, steps = decode_all(f, frame + b"\n")
    assert got == expected
    if isinstance(expected[0], FrameError):
        assert got[0].offset == expected[0].offset and got[0].nbytes == expected[0].nbytes


def test_compiled_steps_are_bounded_by_the_step_size(Framer):
    frame = b'{"return": [' + b", ".join([b'"a\\"b\\n\\u00e9", 12345678901234567890'] * 3000) + b"]}\n"
    f = Framer(defer=1024)
    f.defer_step = 1024
    (item,) = f.feed(frame)
    assert type(item) is PendingFrame and item.nbytes == len(frame) - 1 and item.offset == 0
    item.finish()
    assert item.result == orjson.loads(frame)
    if Framer.__module__.endswith("_framer"):
        # a check pass and a decode pass, about one step per step size each
        assert 2 * len(frame) // 1024 - 4 <= item.steps <= 2 * len(frame) // 1024 + 4
    else:
        assert item.steps == 1  # the twin is about behaviour: one step


def test_small_frames_are_not_deferred(Framer):
    f = Framer(defer=64)
    assert f.feed(b'{"return": {}}\n') == [{"return": {}}]
    strict = Framer(defer=64, strict=True)
    assert strict.feed(b'{"execute": "query-status"}\n') == [{"execute": "query-status"}]
    with pytest.raises(ValueError):
        Framer(defer=-1)


def test_items_after_a_pending_frame_wait_for_it():
    proto = QMPClientProtocol()
    proto.defer_frames(64)
    proto.receive_data(b'{"QMP": {"version": {}, "capabilities": []}}\n')
    proto.next_event()
    cid, data = proto.send_command("qmp_capabilities")
    big = b'{"event": "BIG", "data": {"x": "' + b"y" * 500 + b'"}, "timestamp": {"seconds": 1, "microseconds": 0}}\n'
    # the reply comes after the large event, in the same read, then more bytes
    events = proto.feed(big + b'{"return": {}, "id": %d}\n' % cid)
    assert events == [] and proto.decoding and proto.decoding_bytes == len(big) - 1
    assert proto.feed(b'{"event": "AFTER", "timestamp": {"seconds": 2, "microseconds": 0}}\n') == []
    assert proto.feed(b"") == []  # the end of the stream waits too
    done = []
    while proto.decoding:
        done.extend(proto.step())
    kinds = [type(ev).__name__ for ev in done]
    assert kinds == ["Event", "Negotiated", "Return", "Event", "ConnectionClosed"]
    assert isinstance(done[0], Event) and done[0].data == {"x": "y" * 500}
    assert isinstance(done[2], Return) and done[2].id == cid
    assert done[3].name == "AFTER"
    assert proto.step() == []


def _str_kind(s: str) -> tuple[int, int]:
    """How CPython stores ``s``: its kind (bytes per character) and its
    ASCII flag, read from the object's state bits (after refcount, type,
    length and hash)."""
    state = ctypes.c_uint32.from_address(id(s) + 4 * ctypes.sizeof(ctypes.c_ssize_t)).value
    kind = (state >> 2) & 7
    assert kind in (1, 2, 4)
    return kind, (state >> 6) & 1


def _same_strings(got, expected) -> None:
    """``got`` equals ``expected`` and each str in it is stored as one
    decode stores it (the same kind, ASCII or not: an ordinary str)."""
    assert got == expected
    stack = [(got, expected)]
    while stack:
        g, e = stack.pop()
        assert type(g) is type(e)
        if isinstance(g, str) and sys.implementation.name == "cpython":
            assert _str_kind(g) == _str_kind(e)
        elif isinstance(g, list):
            stack.extend(zip(g, e))
        elif isinstance(g, dict):
            assert list(g) == list(e)
            stack.extend((k, ek) for k, ek in zip(g, e))
            assert all(hash(k) == hash(ek) for k, ek in zip(g, e))  # (a long key's hash is taken as it is built)
            stack.extend((g[k], e[k]) for k in g)


# Text of long strings: each alphabet makes another kind of str (ASCII,
# latin-1, UCS-2, UCS-4), as characters or as escapes.
_long_text = st.lists(
    st.sampled_from(
        [
            "a",
            "bc",
            "\\n",
            '\\"',
            "\u00e9",
            "\\u00e9",
            "\u20ac",
            "\\u20ac",
            "\U0001f600",
            "\\ud83d\\ude00",
            "\\u0000",
            " ",
        ]
    ),
    min_size=0,
    max_size=60,
).map("".join)
_long_keys = st.one_of(
    _long_text,
    _long_text.map(lambda t: "x" * 250 + t),  # (over 256 characters: strict tells them apart by digest)
    st.sampled_from(["a", "\u00e9", "k" * 40, "x" * 250 + "\u00e9" * 7, "x" * 250 + "\u00e9" * 6 + "\u00e9"]),
)


def _long_values(depth: int = 0) -> st.SearchStrategy:
    leaf = st.one_of(_long_text.map(lambda t: ("s", t)), st.integers(-5, 5).map(lambda i: ("n", i)))
    if depth > 2:
        return leaf
    inner = st.deferred(lambda: _long_values(depth + 1))
    return st.one_of(
        leaf,
        st.lists(inner, max_size=4).map(lambda v: ("a", v)),
        st.lists(st.tuples(_long_keys, inner), max_size=4).map(lambda v: ("o", v)),
    )


def _long_json(value) -> str:
    kind, v = value
    if kind == "s":
        return '"' + v + '"'
    if kind == "n":
        return str(v)
    if kind == "a":
        return "[" + ", ".join(_long_json(x) for x in v) + "]"
    return "{" + ", ".join('"' + k + '": ' + _long_json(x) for k, x in v) + "}"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    value=_long_values(),
    step=st.sampled_from([1, 2, 3, 7, 16, 40]),
    strict=st.booleans(),
    quotes=st.booleans(),
)
def test_long_strings_and_keys_decode_as_feed_does(Framer, value, step, strict, quotes):
    """Strings and keys cut into many pieces (at any character), of every
    kind of str, duplicate keys and keys that are the start of others."""
    text = _long_json(("o", [("return", value), ("id", ("n", 1))]))
    frame = text.encode()
    if quotes:  # QEMU's single quotes: the same value, rewritten first
        frame = frame.replace(b'\\"', b"\x01").replace(b'"', b"'").replace(b"\x01", b'"')
    (expected,) = Framer(strict=strict).feed(frame + b"\n")
    f = Framer(defer=8, strict=strict)
    f.defer_step = step
    (got,), _ = decode_all(f, frame + b"\n")
    _same_strings(got, expected)


def _steps_of(framer, frame: bytes):
    """The PendingFrame of ``frame`` and its compiled steps object."""
    (item,) = framer.feed(frame + b"\n")
    assert type(item) is PendingFrame
    return item, item._next


_MiB = 1 << 20


@pytest.mark.parametrize(
    "frame",
    [
        b'{"return": "' + b"x" * (16 * _MiB) + b'"}',
        b'{"return": ["' + "\U0001f600".encode() * (4 * _MiB) + b'", 1]}',
        b'{"return": "' + b"ab\\n\\u00e9\\ud83d\\ude00" * (_MiB // 2) + b'"}',
        b'{"return": {"' + b"k" * (4 * _MiB) + b'": {"a": [' + b"1, " * 100_000 + b'2], "b": "c"}}}',
        b'{"return": {"' + "\u00e9".encode() * (2 * _MiB) + b'": 1, "' + "\u00e9".encode() * (2 * _MiB) + b'": 2}}',
        # QEMU's dialect, rewritten as the frame is checked: from the start, late, in a key
        b"{'return': '" + b"x" * (16 * _MiB) + b"'}",
        b'{"return": "' + b"x" * (16 * _MiB) + b"\", 'b': inf}",
        b"{'return': {'" + b"k\\'\xc3\xa9" * _MiB + b"': 1}}",
    ],
    ids=[
        "16MiB-ascii-value",
        "16MiB-ucs4-value",
        "escaped-value",
        "4MiB-key",
        "duplicate-keys",
        "single-quotes",
        "late-rewrite",
        "dialect-key",
    ],
)
@pytest.mark.parametrize("strict", [False, True])
def test_no_step_does_more_than_a_few_steps_worth(frame, strict):
    """Each step of a frame with long strings and keys decodes, copies and
    checks a bounded number of bytes (counted by the compiled steps)."""
    framer_c = pytest.importorskip("qmpcore.framing._framer")
    f = framer_c.Framer(defer=1024, strict=strict)
    step = f.defer_step
    item, steps = _steps_of(f, frame)
    result = item.finish()
    assert result == framer_c.Framer(strict=strict).feed(frame + b"\n")[0]
    assert item.steps >= len(frame) // step
    assert steps._most_work <= 4 * step


@pytest.mark.parametrize(
    "keys",
    [
        ("x" * 300 + "\\u00e9", "x" * 300 + "\u00e9"),  # the same key, written two ways
        ("x" * 300 + "b", "x" * 300 + "c"),
        ("x" * 300, "x" * 301),
        ("\\ud83d\\ude00" * 200, "\U0001f600" * 200),
        ("y" * 256, "y" * 255 + "\\u0079"),
    ],
)
@pytest.mark.parametrize("step", [1, 5, 64, 1 << 20])
@pytest.mark.parametrize("strict", [False, True])
def test_long_keys_that_repeat(Framer, keys, step, strict):
    """Long keys equal or not, whatever their escapes: the same members, or
    in strict mode the same "duplicate key" error, as without defer."""
    a, b = (k.encode() for k in keys)
    frame = b'{"return": {"' + a + b'": [1, 2], "c": 3, "' + b + b'": {"d": 4}}, "id": 1}\n'
    expected = Framer(strict=strict).feed(frame)
    f = Framer(defer=8, strict=strict)
    f.defer_step = step
    got, _ = decode_all(f, frame)
    assert got == expected
    if strict:
        assert isinstance(got[0], FrameError) == (orjson.loads(b'"' + a + b'"') == orjson.loads(b'"' + b + b'"'))
