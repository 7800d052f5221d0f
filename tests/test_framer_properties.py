"""Property tests: both framers agree with a simple oracle and with each other.

Streams are built from parts whose items are known in advance (JSON
documents in many spellings, 0xFF, garbage), then fed split at random
points.  A second family mutates recorded corpus streams at random and only
asks that the two implementations agree, item for item.

``HYPOTHESIS_PROFILE=deep`` runs far more examples than CI does.
"""

from __future__ import annotations

import json
import math
import os

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

import corpus_support
from conftest import IMPLEMENTATIONS, QEMU_CORPUS
from qmpcore import SYNC, FrameError
from qmpcore.framing.qemu_json import display
from qmpcore.framing.rules import coalesce

settings.register_profile(
    "ci", max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)
settings.register_profile("deep", max_examples=20_000, deadline=None, suppress_health_check=list(HealthCheck))
# Under sanitizers every example is ~10x slower: a failure is reported as
# found, without the long shrinking phase.
settings.register_profile(
    "sanitizers", settings.get_profile("ci"), phases=[Phase.explicit, Phase.reuse, Phase.generate]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

if "cython" not in IMPLEMENTATIONS:
    pytestmark = pytest.mark.skip("compiled framer not built")

CY = IMPLEMENTATIONS.get("cython")
PY = IMPLEMENTATIONS["python"]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=8), children, max_size=5),
    max_leaves=20,
)

WS = " \t\r\n"


def _sq_string(text: str, draw) -> str:
    out = ["'"]
    for ch in text:
        if ch == "'":
            out.append("\\'")
        elif ch == "\\":
            out.append("\\\\")
        elif ch == '"':
            out.append(draw(st.sampled_from(['"', '\\"'])))
        elif ord(ch) < 0x20:
            out.append(json.dumps(ch)[1:-1])
        else:
            out.append(ch)
    out.append("'")
    return "".join(out)


def _dump(value, draw) -> str:
    """Spell ``value`` in one of the ways QEMU and its clients write JSON."""
    pad = draw(st.sampled_from(["", "", " ", "\r\n  ", "\n\t"]))
    if isinstance(value, str):
        if draw(st.integers(0, 3)) == 0:
            return _sq_string(value, draw)
        return json.dumps(value, ensure_ascii=draw(st.booleans()))
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, list):
        return "[" + pad + ("," + pad).join(_dump(v, draw) for v in value) + pad + "]"
    items = [_dump(k, draw) + pad + ":" + pad + _dump(v, draw) for k, v in value.items()]
    return "{" + pad + ("," + pad).join(items) + pad + "}"


GARBAGE_START = [
    b
    for b in range(256)
    if chr(b) not in WS + "{}[],:\"'-" and not (0x30 <= b <= 0x39) and not (0x61 <= b <= 0x7A) and b != 0xFF
]
RECOVERY_SKIP = bytes(b for b in range(0x20, 0xFE) if chr(b) not in "{}[],:") + b"\t"


@st.composite
def streams(draw):
    """(stream bytes, the items an exact framer must produce)."""
    data = bytearray()
    expected = []
    for _ in range(draw(st.integers(1, 8))):
        kind = draw(st.sampled_from(["doc", "doc", "doc", "ws", "sync", "garbage"]))
        if kind == "doc":
            value = draw(json_values)
            data += _dump(value, draw).encode("utf-8")
            expected.append(value)
            data += draw(st.sampled_from([b"\n", b"\r\n", b" ", b"\t\n"]))
        elif kind == "ws":
            data += draw(st.text(WS, min_size=1, max_size=4)).encode()
        elif kind == "sync":
            data += b"\xff\n"
            expected.append(SYNC)
        else:
            first = draw(st.sampled_from(GARBAGE_START))
            expected.append(FrameError(f"JSON parse error, stray '{display(bytes([first]))}'", len(data)))
            data.append(first)
            data += draw(st.binary(max_size=6).map(lambda b: bytes(RECOVERY_SKIP[x % len(RECOVERY_SKIP)] for x in b)))
            data += b"\n"
    return bytes(data), coalesce(expected, False)


def _split(data: bytes, cuts):
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)])]


def _run(cls, chunks, **kw):
    """Items of ``chunks``, exactly as fed (their runs of errors joined
    within each feed only)."""
    f = cls(**kw)
    out = []
    for chunk in chunks:
        out.extend(f.feed(chunk))
        assert f.buffered <= max(kw.get("max_frame_size", 64 << 20), 0) + len(chunk)
    return out


def _joined(cls, chunks, **kw):
    """Items of ``chunks`` with runs across feeds joined: the same for any split."""
    return coalesce(_run(cls, chunks, **kw), kw.get("strict", False))


def _norm(items):
    return [("nan",) if isinstance(i, float) and math.isnan(i) else (type(i).__name__, repr(i)) for i in items]


@given(streams(), st.lists(st.integers(0, 1 << 16), max_size=12))
def test_both_framers_match_the_oracle(stream, cuts):
    data, expected = stream
    chunks = _split(data, cuts)
    assert _run(CY, chunks) == _run(PY, chunks)
    assert _joined(PY, chunks) == expected
    assert _joined(CY, chunks) == expected
    assert _run(CY, [data]) == expected


@given(
    streams(),
    st.lists(st.integers(0, 1 << 16), max_size=12),
    st.sampled_from(
        [
            {"strict": True},
            {"raw": True},
            {"max_frame_size": 40},
            {"max_depth": 3},
            {"max_tokens": 12},
            {"strict": True, "max_frame_size": 64, "max_depth": 4},
        ]
    ),
)
def test_implementations_agree_in_every_mode(stream, cuts, kw):
    data, _ = stream
    whole = _norm(_run(PY, [data], **kw))
    chunks = _split(data, cuts)
    assert _norm(_run(CY, chunks, **kw)) == _norm(_run(PY, chunks, **kw))
    assert _norm(_joined(PY, chunks, **kw)) == whole
    assert _norm(_joined(CY, chunks, **kw)) == whole


def _corpus_streams():
    if not QEMU_CORPUS.is_dir():
        return [b'{"execute": "query-status"}\n']
    out = []
    for path in sorted(QEMU_CORPUS.glob("*.txt")):
        steps = corpus_support.load(path)
        for part in (corpus_support.client_bytes(steps), corpus_support.server_bytes(steps)):
            joined = b"".join(part)
            if 0 < len(joined) < 200_000:
                out.append(joined)
    return out


CORPUS_STREAMS = _corpus_streams()
MUTATIONS = st.lists(
    st.tuples(st.sampled_from(["flip", "insert", "delete", "dup", "ff"]), st.integers(0, 1 << 20), st.integers(0, 255)),
    min_size=1,
    max_size=8,
)


def _mutate(data: bytes, mutations) -> bytes:
    buf = bytearray(data)
    for op, where, byte in mutations:
        i = where % (len(buf) + 1)
        if op == "flip" and i < len(buf):
            buf[i] = byte
        elif op == "insert":
            buf.insert(i, byte)
        elif op == "delete":
            del buf[i : i + byte % 16]
        elif op == "dup":
            buf[i:i] = buf[i : i + byte]
        else:
            buf.insert(i, 0xFF)
    return bytes(buf)


@given(
    st.sampled_from(CORPUS_STREAMS),
    MUTATIONS,
    st.lists(st.integers(0, 1 << 20), max_size=10),
    st.sampled_from([{}, {"strict": True}, {"raw": True}, {"max_frame_size": 256, "max_depth": 8}]),
)
def test_mutated_corpus_streams_agree(data, mutations, cuts, kw):
    data = _mutate(data, mutations)
    chunks = _split(data, cuts)
    items = _run(PY, chunks, **kw)
    assert _norm(_run(CY, chunks, **kw)) == _norm(items)
    assert _norm(_run(CY, [data], **kw)) == _norm(coalesce(items, kw.get("strict", False)))
