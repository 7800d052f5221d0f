"""Framer behaviour, each test on both implementations (``Framer`` fixture)."""

from __future__ import annotations

import contextlib
import json
import math
import random
import re
import sys

import pytest

import corpus_support
from conftest import LIBVIRT_CORPUS
from qmpcore import SYNC, FrameError, encode
from qmpcore.framing.rules import coalesce

SMALL = b'{"return": {"status": "running", "singlestep": false, "running": true}}\r\n'


def feed_all(framer, chunks):
    out = []
    for chunk in chunks:
        out.extend(framer.feed(chunk))
    return out


def splits(data: bytes, rnd: random.Random, cuts: int):
    points = sorted(rnd.sample(range(1, len(data)), min(cuts, len(data) - 1))) if len(data) > 1 else []
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)])]


# -- 1. frames -------------------------------------------------------------


def test_compact_frame(Framer):
    assert Framer().feed(SMALL) == [json.loads(SMALL)]


def test_several_frames_in_one_chunk(Framer):
    data = b'{"a": 1}{"b": [2]}\r\n{"c": "}"}  \n\n{"d": null}\r\n'
    assert Framer().feed(data) == [{"a": 1}, {"b": [2]}, {"c": "}"}, {"d": None}]


def test_frame_split_at_every_byte_position(Framer):
    data = b'{"return": {"a": [1, "x}]\\"y", {"b": -1.5e3}], "c": true}, "id": "q"}\r\n'
    expected = [json.loads(data)]
    for i in range(len(data) + 1):
        f = Framer()
        assert feed_all(f, [data[:i], data[i:]]) == expected, i
        assert f.buffered == 0
    f = Framer()
    assert feed_all(f, [data[i : i + 1] for i in range(len(data))]) == expected


def test_whitespace_and_crlf_between_frames(Framer):
    data = b'\r\n \t{"a":1}\r\n\r\n\t {"b":2}\n \r'
    f = Framer()
    assert f.feed(data) == [{"a": 1}, {"b": 2}]
    assert f.buffered == 0


def test_pretty_monitor_output(Framer, corpus_dir):
    steps = corpus_support.load(corpus_dir / "qemu-7.2" / "22_pretty_monitor.txt")
    items = feed_all(Framer(), corpus_support.server_bytes(steps))
    assert len(items) == 8
    assert items[0]["QMP"]["version"]["qemu"] == {"micro": 22, "minor": 2, "major": 7}
    assert items[2] == {"return": {"status": "running", "singlestep": False, "running": True}, "id": "pretty"}
    assert items[3]["event"] == "STOP" and items[5]["event"] == "RESUME"
    assert items[-1] == {"error": {"class": "GenericError", "desc": "JSON parse error, expecting value"}}


@pytest.mark.parametrize("name,count", [("caps_2.6.0.x86_64.replies", 51), ("caps_7.2.0_x86_64.replies", 110)])
def test_libvirt_transcripts(Framer, corpus_dir, name, count):
    data = (LIBVIRT_CORPUS / name).read_bytes()
    expected = [json.loads(block) for block in data.split(b"\n\n")]
    assert len(expected) == count
    assert Framer().feed(data) == expected
    rnd = random.Random(name)
    assert feed_all(Framer(), splits(data, rnd, 500)) == expected


# -- 2. every recorded server stream ----------------------------------------


@contextlib.contextmanager
def deep_recursion():
    """Room for json.loads and == on the corpus's 1024-deep frames, whatever
    the caller's stack already holds (pytest-xdist workers hold more); the
    old limit is restored afterwards."""
    old = sys.getrecursionlimit()
    sys.setrecursionlimit(max(old, 10000))
    try:
        yield
    finally:
        sys.setrecursionlimit(old)


def nested_lists(depth: int) -> list:
    """``[[...[]...]]`` ``depth`` deep, built without recursion."""
    value: list = []
    for _ in range(depth - 1):
        value = [value]
    return value


def is_nested_lists(value, depth: int) -> bool:
    """Is ``value`` exactly ``nested_lists(depth)``?  (Checked without recursion.)"""
    for _ in range(depth - 1):
        if type(value) is not list or len(value) != 1:
            return False
        value = value[0]
    return value == []


def _oracle_server_items(stream: bytes):
    """What QEMU sent, decoded independently: one frame per line, 0xFF as SYNC
    (call under deep_recursion(): corpus 15 nests 1024 deep)."""
    items = []
    for i, part in enumerate(stream.split(b"\xff")):
        if i:
            items.append(SYNC)
        for line in part.split(b"\n"):
            if line.strip():
                line = re.sub(rb"(?<=[:\[,] )(-?)inf\b", rb"\1Infinity", line)
                items.append(json.loads(line))
    return items


def _server_files(corpus_dir):
    return sorted(p for p in (corpus_dir / "qemu-7.2").glob("*.txt") if not p.name.startswith("22_"))


def test_every_recorded_server_stream(Framer, corpus_dir):
    rnd = random.Random(7)
    checked = 0
    for path in _server_files(corpus_dir):
        chunks = corpus_support.server_bytes(corpus_support.load(path))
        stream = b"".join(chunks)
        if not stream:
            continue
        with deep_recursion():
            expected = _oracle_server_items(stream)
            assert feed_all(Framer(), chunks) == expected, path.name
            for cuts in (3, 40):
                assert feed_all(Framer(), splits(stream, rnd, cuts)) == expected, path.name
        checked += 1
    assert checked >= 30


def test_qga_sync_marker_in_stream(Framer, corpus_dir):
    steps = corpus_support.load(corpus_dir / "qemu-7.2" / "qga_01_sync_ping_info.txt")
    items = feed_all(Framer(), corpus_support.server_bytes(steps))
    assert items[0]["error"]["class"] == "GenericError"
    assert items[1] is SYNC
    assert items[2] == {"return": 1234567890123}
    assert items[4] is SYNC and items[5] == {"return": -7, "id": "with-id"}


def test_schema_reply(Framer, corpus_dir):
    data = (corpus_dir / "qemu-7.2" / "qmp_schema_7.2.json").read_bytes()
    assert len(data) == 207016
    expected = [json.loads(data)]
    assert Framer().feed(data) == expected
    assert feed_all(Framer(), splits(data, random.Random(3), 100)) == expected
    assert Framer(raw=True).feed(data) == [data.rstrip()]


# -- 3. strings --------------------------------------------------------------


def test_structural_characters_inside_strings(Framer):
    data = b'{"a": "{[}]", "b": \'}{"][\', "c": "\\"}", "d": "\'"}\n'
    assert Framer().feed(data) == [{"a": "{[}]", "b": '}{"][', "c": '"}', "d": "'"}]


def test_escapes_and_surrogate_pairs(Framer):
    data = b'{"s": "\\" \\\\ \\/ \\b\\f\\n\\r\\t \\u00e9 \\ud83d\\ude00"}\r\n'
    assert Framer().feed(data) == [{"s": '" \\ / \b\f\n\r\t \u00e9 \U0001f600'}]


def test_single_quote_extension(Framer):
    f = Framer()
    assert f.feed(b"{'execute': 'it\\'s \"x\"'}") == [{"execute": 'it\'s "x"'}]
    assert f.feed(b'{"id": "dq with \\\' escape", \'k\': \'has "dq"\'}') == [
        {"id": "dq with ' escape", "k": 'has "dq"'}
    ]


def test_frames_without_single_quotes_skip_transcoding(Framer, monkeypatch):
    from qmpcore.framing import qemu_json as _qemu_json
    from qmpcore.framing import wire as _wire

    def boom(frame):
        raise AssertionError("transcoded a frame without single quotes")

    monkeypatch.setattr(_wire, "transcode", boom)
    monkeypatch.setattr(_qemu_json, "transcode", boom)
    data = b'{"a": "x\\"y", "b": [1, {"c": "it\'s"}]}\n{"d":1}{"e":2}'
    assert Framer().feed(data) == [{"a": 'x"y', "b": [1, {"c": "it's"}]}, {"d": 1}, {"e": 2}]


# -- 4. 0xFF -------------------------------------------------------------


@pytest.mark.parametrize(
    "before",
    [b"", b'{"execute": "x", "id": [1, {"a": ', b'{"execute": "unterminated', b"[[[[[[", b'{"a": 12', b'["tru'],
)
def test_sync_discards_partial_frame(Framer, before):
    f = Framer()
    assert f.feed(before) == []
    assert f.feed(b'\xff{"execute": "after"}\n') == [SYNC, {"execute": "after"}]
    assert f.buffered == 0


def test_sync_ends_a_number_or_keyword_first(Framer):
    # As in QEMU, any byte ends a number or keyword before it is lexed itself.
    assert Framer().feed(b"12\xff\n") == [12, SYNC]
    assert Framer().feed(b"tru\xff\n") == [FrameError("JSON parse error, invalid keyword 'tru'", 0, nbytes=3), SYNC]


def test_sync_strict_reports_like_qemu(Framer):
    f = Framer(strict=True)
    items = f.feed(b'{"a": "unterminated\xff\xff{"b": 1}')
    assert items == [
        FrameError("JSON parse error, stray '\"unterminated\ufffd'", 19, sync=True),
        SYNC,
        FrameError("JSON parse error, stray '\ufffd'", 20, sync=True),
        SYNC,
        {"b": 1},
    ]


# -- 5. malformed input: QEMU's own replies ---------------------------------


def _server_answers(items):
    """How a QEMU-faithful server answers framer items (SYNC needs no reply of
    its own in strict mode: its FrameError precedes it)."""
    answers = []
    for item in items:
        if item is SYNC:
            continue
        if isinstance(item, FrameError):
            answers.extend([("error", item.reason)] * item.count)
        elif not isinstance(item, dict):
            answers.append(("error", "QMP input must be a JSON object"))
        else:
            answers.append(("command", None))
    return answers


def _recorded_answers(steps):
    answers = []
    for step in steps:
        if step.side == "S" and step.data:
            for line in step.data.split(b"\r\n"):
                if line.strip():
                    reply = json.loads(line)
                    if "error" in reply and "id" not in reply:
                        answers.append(("error", reply["error"]["desc"]))
                    else:
                        answers.append(("command", None))
    return answers


@pytest.mark.parametrize(
    "name",
    [
        "05_malformed_json",
        "06_top_level_scalars",
        "07_single_quotes",
        "09_control_chars_nul_invalid_utf8",
        "11_framing_split_and_batched",
        "12_sync_0xff_and_recovery",
        "23_misc_lexer_edges",
        "02_before_negotiation",
        "08_string_escapes_echo",
    ],
)
def test_errors_in_qemu_order(Framer, corpus_dir, name):
    steps = corpus_support.load(corpus_dir / "qemu-7.2" / f"{name}.txt")
    body = steps[1:]  # after the greeting
    if body[0].data == b'{"execute":"qmp_capabilities"}\n':
        body = body[2:]
    f = Framer(strict=True)
    got = []
    for step in body:
        if step.side == "C":
            chunks = corpus_support.client_bytes([step])
            for chunk in chunks:
                got.extend(f.feed(chunk))
    assert _server_answers(got) == _recorded_answers(body)


def test_errors_keep_the_frames_after_them(Framer):
    data = b'}{"a": 1}@#{"b": 2}\x01{"c": 3}\xfe{"d": 4}]{"e": 5}'
    items = Framer().feed(data)
    assert [i for i in items if not isinstance(i, FrameError)] == [{"a": 1}, {"b": 2}, {"c": 3}, {"d": 4}, {"e": 5}]
    assert [i.reason for i in items if isinstance(i, FrameError)] == [
        "JSON parse error, expecting value",
        "JSON parse error, stray '@'",
        "JSON parse error, stray '\x01'",
        "JSON parse error, stray '\ufffd'",
        "JSON parse error, expecting value",
    ]
    assert [i.offset for i in items if isinstance(i, FrameError)] == [0, 9, 19, 28, 37]


def test_top_level_scalars_wait_for_next_byte(Framer):
    f = Framer()
    assert f.feed(b"1") == []
    assert f.feed(b"\n") == [1]
    assert f.feed(b'"x"') == ["x"]
    assert f.feed(b"true") == []
    assert f.feed(b" ") == [True]
    assert f.feed(b"12 34\n") == [12, 34]


def test_never_raises_on_content_but_type_checks(Framer):
    f = Framer()
    for bad in ("text", 12, None, [b"x"]):
        with pytest.raises(TypeError):
            f.feed(bad)
    rnd = random.Random(5)
    for _ in range(200):
        f.feed(bytes(rnd.randrange(256) for _ in range(rnd.randrange(64))))
    assert f.feed(b'\xff\n{"ok": 1}\n')[-1] == {"ok": 1}
    assert f.feed(bytearray(b'{"x": 1}\n')) == [{"x": 1}]
    assert f.feed(memoryview(b'__{"y": 2}\n')[2:]) == [{"y": 2}]


# -- 6. limits -------------------------------------------------------------


def test_depth_limit(Framer, corpus_dir):
    # The oracle and the comparison need no recursion (the test ran only
    # after another one had raised the recursion limit, never under xdist).
    f = Framer()
    ok = b'{"id":' + b"[" * 1023 + b"]" * 1023 + b"}\n"
    (item,) = f.feed(ok)
    assert type(item) is dict and list(item) == ["id"] and is_nested_lists(item["id"], 1023)
    assert not is_nested_lists(item["id"], 1022) and not is_nested_lists(nested_lists(1024), 1023)
    deep = b'{"execute":"query-status","id":' + b"[" * 1024 + b"]" * 1024 + b"}\n"
    items = f.feed(deep + b'{"execute":"after"}\n')
    assert items == [
        FrameError("JSON nesting depth limit exceeded", deep.index(b"[" * 1024) + 1023 + len(ok)),
        {"execute": "after"},
    ]
    # corpus 16: 2000 deep at top level; QEMU cascades, qmpcore reports once
    steps = corpus_support.load(corpus_dir / "qemu-7.2" / "16_nesting_2000.txt")
    data = [s.data for s in steps if s.side == "C" and s.data and s.data.startswith(b"[")][0]
    items = Framer().feed(data + b'{"a": 1}\n')
    assert [type(i) for i in items] == [FrameError, dict]
    assert items[0].reason == "JSON nesting depth limit exceeded"


def test_size_limit_and_recovery(Framer):
    f = Framer(max_frame_size=100)
    items = f.feed(b'{"a": "' + b"x" * 200 + b'"}\n{"b": 1}\n')
    assert items == [FrameError("JSON token size limit exceeded", 100), {"b": 1}]
    # the same stream split anywhere gives the same items
    data = b'[1, "' + b"y" * 150 + b'", {"k": [1,2]}]{"c": 2}'
    expected = Framer(max_frame_size=100).feed(data)
    assert expected == [FrameError("JSON token size limit exceeded", 100), {"c": 2}]
    for i in range(0, len(data), 7):
        assert feed_all(Framer(max_frame_size=100), [data[:i], data[i:]]) == expected


def test_skipped_frame_is_not_reframed_by_a_one_line_chunk(Framer):
    # Once a frame is over the limit nothing of it is held; a later chunk
    # that is one line holding one value is still the middle of that frame.
    f = Framer(max_frame_size=40)
    assert f.feed(b'[{"a": "' + b"x" * 60 + b'",\n') == [FrameError("JSON token size limit exceeded", 40)]
    assert f.buffered == 0
    assert f.feed(b'"key"\n') == []
    assert f.feed(b"12\n") == []
    assert f.feed(b": null}]\n") == []
    assert f.feed(b'{"b": 1}\n') == [{"b": 1}]


def test_token_count_limit(Framer):
    items = Framer(max_tokens=10).feed(b"[1,2,3,4,5,6]\n[1,2]\n")
    # the 11th token is the "," at offset 10
    assert items == [FrameError("JSON token count limit exceeded", 10), [1, 2]]


@pytest.mark.slow
def test_huge_unterminated_string_keeps_memory_bounded(Framer):
    limit = 1 << 20
    f = Framer(max_frame_size=limit)
    chunk = b"x" * limit
    items = f.feed(b'{"execute": "')
    for _ in range(300):
        items += f.feed(chunk)
        assert f.buffered <= limit
    assert items == [FrameError("JSON token size limit exceeded", limit)]
    assert f.feed(b'\xff{"execute": "ok"}\n') == [SYNC, {"execute": "ok"}]
    assert f.buffered == 0


# -- 7. numbers and odd values -----------------------------------------------


def test_integers_of_any_size_are_exact(Framer):
    nums = [
        9223372036854775807,
        9223372036854775808,
        18446744073709551615,
        18446744073709551616,
        -9223372036854775809,
        10**40,
        -(10**30),
    ]
    data = b"".join(b'{"n": %d}\r\n' % n for n in nums) + b"[%d]" % (10**25)
    assert Framer().feed(data) == [{"n": n} for n in nums] + [[10**25]]
    assert Framer().feed(b"123456789012345678901234567890 ") == [123456789012345678901234567890]


@pytest.mark.parametrize("data", [b"[0E3]\n", b"[-0e3, 1]\n", b'{"a": 0e+1}\n', b"0e5\n"])
def test_zero_with_exponent_is_two_tokens_as_in_qemu(Framer, data):
    # JSON reads 0e3 as a number; QEMU's lexer ends "0" at the "e".
    whole = Framer().feed(data)
    assert any(isinstance(item, FrameError) for item in whole)
    for i in range(len(data) + 1):
        assert coalesce(feed_all(Framer(), [data[:i], data[i:]]), False) == whole


def test_integers_beyond_pythons_text_limit(Framer):
    digits = b"9" * 5000
    (item,) = Framer().feed(b'{"n": ' + digits + b"}\n")
    assert item == {"n": math.inf}  # QEMU reads such a number as a double too


def test_qemu_non_json_numbers(Framer):
    (item,) = Framer().feed(b'{"return": [inf, -inf, nan, 1e400, -1e400, 0.10000000000000001]}\r\n')
    values = item["return"]
    assert values[0] == math.inf and values[1] == -math.inf and math.isnan(values[2])
    assert values[3] == math.inf and values[4] == -math.inf and values[5] == 0.1


def test_nul_and_surrogates(Framer):
    f = Framer()
    first = b'{"a": "\\u0000", "b": "\xc0\x80"}\n'
    assert f.feed(first) == [{"a": "\x00", "b": "\x00"}]
    (err,) = f.feed(b'{"id": "\\ud800"}\n')
    assert err == FrameError("JSON parse error, \\ud800 is not a valid Unicode character", len(first), nbytes=16)
    bad = b'{"id": "a\x00b"}\n'
    # The stray NUL, then the "}" recovery stops at: two errors, joined
    # outside strict mode (the first one's reason), two answers in it.
    offset = len(first) + 17 + bad.index(b"\x00")
    assert f.feed(bad) == [FrameError("JSON parse error, stray '\"a'", offset, count=2, nbytes=4)]
    items = Framer(strict=True).feed(bad)
    assert [e.reason for e in items] == ["JSON parse error, stray '\"a'", "JSON parse error, expecting value"]
    assert [(e.offset, e.count, e.nbytes) for e in items] == [(9, 1, 1), (12, 1, 1)]


def test_raw_mode_returns_frame_bytes(Framer):
    f = Framer(raw=True)
    assert f.feed(b' {"a": 1}\r\n[2]"s"3 ') == [b'{"a": 1}', b"[2]", b'"s"', b"3"]
    assert f.feed(b"{'x': 1}\n") == [b"{'x': 1}"]


def test_buffered_and_reset(Framer):
    f = Framer()
    assert f.feed(b'  {"a": [1, 2') == []
    assert f.buffered == len(b'{"a": [1, 2')
    f.reset()
    assert f.buffered == 0
    assert f.feed(b'{"b": 3}\n') == [{"b": 3}]


# -- 8. encode --------------------------------------------------------------


def test_encode_is_compact_with_crlf():
    frame = encode({"execute": "query-status", "arguments": {"x": [1, "é"]}, "id": 7})
    assert frame == b'{"execute":"query-status","arguments":{"x":[1,"\xc3\xa9"]},"id":7}\r\n'


def test_encode_round_trips_through_the_framer(Framer):
    obj = {"execute": "x", "arguments": {"s": 'it\'s "q" \n', "n": [1, 2.5, None, True]}}
    assert Framer(strict=True).feed(encode(obj)) == [obj]
