"""QEMU 7.2's JSON output, byte for byte (corpus 03, 08, 10, 22, 28)."""

from __future__ import annotations

import math
import random

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qmpcore.protocol._qemu_output import (
    Encoded,
    _exact,
    _fast,
    _Slow,
    encode_qga,
    encode_qmp,
    format_float,
    qdict_order,
    to_json,
)

STATUS = {"running": True, "singlestep": False, "status": "running"}  # QAPI order
VERSION = {"qemu": {"major": 7, "minor": 2, "micro": 22}, "package": "Debian 1:7.2+dfsg-7+deb12u18+b3"}


# -- member order ------------------------------------------------------------------


@pytest.mark.parametrize(
    "value, text",
    [
        (STATUS, b'{"status": "running", "singlestep": false, "running": true}'),
        (VERSION, b'{"qemu": {"micro": 22, "minor": 2, "major": 7}, "package": "Debian 1:7.2+dfsg-7+deb12u18+b3"}'),
        ({"return": {}, "id": 4}, b'{"return": {}, "id": 4}'),
        ({"id": 4, "return": {}}, b'{"return": {}, "id": 4}'),
        ({"error": {"class": "C", "desc": "d"}, "id": 1}, b'{"id": 1, "error": {"class": "C", "desc": "d"}}'),
        (
            {"event": "STOP", "timestamp": {"seconds": 1, "microseconds": 2}},
            b'{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "STOP"}',
        ),
        # corpus 28: an id object echoed with keys in QDict order
        ({"b": 1, "a": [1, {"z": None}]}, b'{"a": [1, {"z": null}], "b": 1}'),
        ({"nested": [1, 2, {"x": None}]}, b'{"nested": [1, 2, {"x": null}]}'),
    ],
)
def test_member_order_is_qdict_order(value, text):
    assert to_json(value) == text
    assert _exact(value, False).encode() == text


def test_same_bucket_keys_come_newest_first():
    # "status" and "singlestep" share a bucket: insertion order decides.
    assert qdict_order(("singlestep", "status")) == ("status", "singlestep")
    assert qdict_order(("status", "singlestep")) == ("singlestep", "status")
    assert qdict_order(("a",)) == ("a",)
    assert qdict_order(()) == ()


# -- strings -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, out",
    [
        ('\u00e9 \u00e9 / \b\f\n\r\t \\ "', b'"\\u00E9 \\u00E9 / \\b\\f\\n\\r\\t \\\\ \\""'),
        ("\U0001f600", b'"\\uD83D\\uDE00"'),
        ("\x00", b'"\\u0000"'),
        ("\x7f", b'"\\u007F"'),
        ("\x1b\x1f", b'"\\u001B\\u001F"'),
        ("\u00e9\U0001f600", b'"\\u00E9\\uD83D\\uDE00"'),
        ("it's", b'"it\'s"'),
        ('has "dq" inside', b'"has \\"dq\\" inside"'),
        ("\\u00e9", b'"\\\\u00e9"'),  # a backslash, not an escape: stays lowercase
        ("\\\u00e9", b'"\\\\\\u00E9"'),
        ("a,b: c", b'"a,b: c"'),
        ("", b'""'),
    ],
)
def test_strings_are_ascii_with_uppercase_escapes(text, out):
    assert to_json(text) == out
    assert to_json([text]) == b"[" + out + b"]"
    assert to_json({text: text}) == b"{" + out + b": " + out + b"}"


# -- numbers -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "value, out",
    [
        (9223372036854775807, b"9223372036854775807"),
        (9223372036854775808, b"9223372036854775808"),
        (18446744073709551615, b"18446744073709551615"),
        (18446744073709551616, b"1.8446744073709552e+19"),
        (-9223372036854775808, b"-9223372036854775808"),
        (-9223372036854775809, b"-9.2233720368547758e+18"),
        (10**400, b"inf"),
        (-(10**400), b"-inf"),
        (0.1, b"0.10000000000000001"),
        (1.0, b"1"),
        (0, b"0"),
        (-0.0, b"-0"),
        (100.0, b"100"),
        (float("inf"), b"inf"),
        (float("-inf"), b"-inf"),
        (float("nan"), b"nan"),
        (-float("nan"), b"-nan"),
        (1e300, b"1.0000000000000001e+300"),
        (True, b"true"),
        (False, b"false"),
        (None, b"null"),
    ],
)
def test_numbers_print_like_qemu(value, out):
    assert to_json(value) == out
    assert to_json({"id": value}) == b'{"id": ' + out + b"}"


def test_format_float_matches_printf():
    assert format_float(2.5) == "2.5"
    assert format_float(1 / 3) == "0.33333333333333331"
    assert format_float(math.pi) == "3.1415926535897931"


# -- pretty=on (corpus 22) ------------------------------------------------------------


def test_pretty_greeting_matches_corpus():
    greeting = {"QMP": {"version": VERSION, "capabilities": ["oob"]}}
    assert encode_qmp(greeting, pretty=True) == (
        b'{\r\n    "QMP": {\r\n        "version": {\r\n            "qemu": {\r\n'
        b'                "micro": 22,\r\n                "minor": 2,\r\n                "major": 7\r\n'
        b'            },\r\n            "package": "Debian 1:7.2+dfsg-7+deb12u18+b3"\r\n        },\r\n'
        b'        "capabilities": [\r\n            "oob"\r\n        ]\r\n    }\r\n}\r\n'
    )


def test_pretty_empty_containers_close_on_their_own_line():
    assert encode_qmp({"return": {}}, pretty=True) == b'{\r\n    "return": {\r\n    }\r\n}\r\n'
    assert encode_qmp({"return": []}, pretty=True) == b'{\r\n    "return": [\r\n    ]\r\n}\r\n'
    assert encode_qmp({}, pretty=True) == b"{\r\n}\r\n"
    assert to_json({}, pretty=True) == b"{\n}"
    assert to_json(7, pretty=True) == b"7"


def test_pretty_reply_matches_corpus():
    message = {"return": STATUS, "id": "pretty"}
    assert encode_qmp(message, pretty=True) == (
        b'{\r\n    "return": {\r\n        "status": "running",\r\n        "singlestep": false,\r\n'
        b'        "running": true\r\n    },\r\n    "id": "pretty"\r\n}\r\n'
    )


# -- framing and spliced text --------------------------------------------------------


def test_line_endings():
    assert encode_qmp({"return": {}}) == b'{"return": {}}\r\n'
    assert encode_qga({"return": {}}) == b'{"return": {}}\n'


def test_encoded_text_is_spliced_and_keeps_its_order():
    body = Encoded(b'{"status": "running", "singlestep": false, "running": true}')
    assert to_json(body) == bytes(body)
    assert to_json({"return": body, "id": 1}) == b'{"return": ' + bytes(body) + b', "id": 1}'
    # Pretty output re-encodes it without reordering what QEMU already ordered.
    assert encode_qmp({"return": body}, pretty=True) == encode_qmp({"return": STATUS}, pretty=True)


def test_deep_nesting_has_no_recursion_limit():
    value: object = []
    for _ in range(5000):
        value = [value]
    text = to_json(value)
    assert text == b"[" * 5001 + b"]" * 5001
    nested: object = None
    for _ in range(1500):
        nested = {"a": nested}
    assert to_json(nested).count(b'{"a": ') == 1500


def test_unencodable_values_raise_type_error():
    with pytest.raises(TypeError):
        to_json({1: "x"})
    with pytest.raises(TypeError):
        to_json(object())
    with pytest.raises(TypeError):
        to_json({"x": {1, 2}})


def test_fast_path_declines_what_it_cannot_print_exactly():
    for value in (0.5, 2**64, {"a": "x,y"}, ["\x7f"], {"é": 1}, Encoded(b"1")):
        with pytest.raises(_Slow):
            _fast(value)
    assert _fast({"a": [1, "b", None, True]}) == b'{"a": [1, "b", null, true]}'


# -- both paths agree ------------------------------------------------------------------

_json = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(_json)
def test_fast_and_exact_paths_agree(value):
    exact = _exact(value, False).encode("ascii")
    assert to_json(value) == exact
    try:
        assert _fast(value) == exact
    except _Slow:
        pass


@settings(max_examples=200, deadline=None)
@given(_json)
def test_output_is_ascii_json_with_the_same_content(value):
    text = to_json(value)
    assert text.isascii()
    assert b"\n" not in text

    def normal(v):  # what QEMU's parser would give back: big ints become doubles
        if isinstance(v, bool) or v is None or isinstance(v, str):
            return v
        if isinstance(v, int):
            return v if -(2**63) <= v < 2**64 else float(v)
        if isinstance(v, list):
            return [normal(i) for i in v]
        return {k: normal(i) for k, i in v.items()}

    decoded = orjson.loads(text)
    assert decoded == normal(value)
    pretty = orjson.loads(to_json(value, pretty=True))
    assert pretty == decoded


def _tdb_hash_byte_by_byte(key: str) -> int:
    """QEMU's tdb_hash as qobject/qdict.c writes it, one byte at a time."""
    data = key.encode("utf-8", "surrogatepass")
    value = (0x238F13AF * len(data)) & 0xFFFFFFFF
    for i, byte in enumerate(data):
        value = (value + (byte << (i * 5 % 24))) & 0xFFFFFFFF
    return (1103515243 * value + 12345) & 0xFFFFFFFF


@pytest.mark.parametrize("length", [0, 1, 7, 23, 24, 25, 48, 49, 1000, 70_001])
def test_tdb_hash_matches_qemus_loop_for_every_length(length):
    from qmpcore.framing.qdict import tdb_hash as _tdb_hash

    for alphabet in ("abcxyz", "a\u00e9\U0001f600\x7f\x00"):
        key = "".join(alphabet[(i * 7 + length) % len(alphabet)] for i in range(length))
        assert _tdb_hash(key) == _tdb_hash_byte_by_byte(key)


def test_compiled_qdict_order_matches_the_twin():
    """The compiled QDict order (a counting sort in C, what the server
    uses) is the pure twin's for keys of any length and alphabet, surrogates
    and NUL included, and both are QEMU's: by bucket, newest first."""
    from qmpcore.framing import qdict

    compiled = pytest.importorskip("qmpcore.framing._framer").qdict_order
    rng = random.Random(5)
    alphabet = "abcxyz\u00e9\U0001f600\x7f\x00\udc80"
    for _ in range(2000):
        count = rng.randrange(0, 40)
        # (the members of one object: distinct names)
        keys = tuple(
            dict.fromkeys("".join(rng.choice(alphabet) for _ in range(rng.randrange(60))) for _ in range(count))
        )
        ranked = sorted(range(len(keys)), key=lambda i: (_tdb_hash_byte_by_byte(keys[i]) % qdict.BUCKETS, -i))
        want = tuple(keys[i] for i in ranked)
        assert qdict.qdict_order(keys) == want
        assert compiled(keys) == want
    many = tuple(f"k{i}" for i in range(100_000))
    assert compiled(many) == qdict.qdict_order(many)
    with pytest.raises(TypeError, match="member names are str"):
        compiled(("a", 1))


def test_the_server_uses_the_compiled_qdict_order_when_built():
    import qmpcore.framing as framing

    if framing.implementation == "cython":
        from qmpcore.framing import _framer

        assert framing.qdict_order is _framer.qdict_order
    else:
        from qmpcore.framing import qdict

        assert framing.qdict_order is qdict.qdict_order


def test_many_unexpected_members_are_answered_in_qdict_order():
    """A request with 200,000 members: QEMU names the first one left over in
    its QDict order (bucket, newest first); the check finds it without
    building the order of the members it visits."""
    from qmpcore.framing import qdict
    from qmpcore.protocol._qapi import Schema

    members = {f"k{i}": i for i in range(200_000)}
    first = qdict.qdict_order(tuple(members))[0]
    problem = Schema.qemu_7_2().check_arguments("query-status", members)
    assert problem == f"Parameter '{first}' is unexpected"
