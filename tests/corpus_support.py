"""Read the recorded QEMU 7.2 sessions in ../shared/corpus/qemu-7.2.

Each file is a list of steps: ``C:`` client writes and ``S:`` server output
(Python bytes literals).  Very long writes are stored abbreviated as
``b'HEAD' ... <N bytes omitted> ... b'TAIL'  [total T bytes, sha256 H]``;
:func:`load` rebuilds them when the omitted middle is a repetition of the
pattern around it, checked against the recorded sha256 prefix.
"""

from __future__ import annotations

import ast
import dataclasses
import hashlib
import pathlib
import re

_ABBREVIATED = re.compile(
    r"^(?P<head>b(?P<q1>['\"]).*(?P=q1)) \.\.\. <(?P<omitted>\d+) bytes omitted> \.\.\. "
    r"(?P<tail>b(?P<q2>['\"]).*(?P=q2))\s+\[total (?P<total>\d+) bytes, sha256 (?P<sha>[0-9a-f]+)\]$"
)


@dataclasses.dataclass
class Step:
    side: str  # "C" or "S"
    data: bytes | None  # None: nothing received / could not rebuild
    bytewise: bool = False  # the C: write was sent one byte at a time
    note: str = ""  # the raw text for S: <...> lines


def _repeat_after(head: bytes, count: int) -> bytes:
    """``count`` bytes continuing the periodic pattern at the end of ``head``."""
    for size in range(1, 17):
        unit = head[-size:]
        if len(head) >= 4 * size and head.endswith(unit * 4):
            return (unit * (count // size + 1))[:count]
    return head[-1:] * count


def _repeat_before(tail: bytes, count: int) -> bytes:
    """``count`` bytes leading into the periodic pattern at the start of ``tail``."""
    for size in range(1, 17):
        unit = tail[:size]
        if len(tail) >= 4 * size and tail.startswith(unit * 4):
            return (unit * (count // size + 1))[-count:] if count else b""
    return tail[:1] * count


def _rebuild(line: str) -> bytes | None:
    m = _ABBREVIATED.match(line)
    if not m:
        return None
    head = ast.literal_eval(m.group("head"))
    tail = ast.literal_eval(m.group("tail"))
    omitted = int(m.group("omitted"))
    sha = m.group("sha")

    def ok(middle: bytes) -> bool:
        data = head + middle + tail
        return len(data) == int(m.group("total")) and hashlib.sha256(data).hexdigest().startswith(sha)

    candidates = [_repeat_after(head, omitted), _repeat_before(tail, omitted)]
    for middle in candidates:
        if ok(middle):
            return head + middle + tail
    # An opening run followed by a closing run (deep nesting): balance them.
    pairs = {b"[": b"]", b"{": b"}"}
    opener, closer = head[-1:], tail[:1]
    if pairs.get(opener) == closer:
        known = head + tail
        first, odd = divmod(known.count(closer) + omitted - known.count(opener), 2)
        if not odd and 0 <= first <= omitted:
            middle = opener * first + closer * (omitted - first)
            if ok(middle):
                return head + middle + tail
    return None


def load(path: pathlib.Path) -> list[Step]:
    """The steps of one corpus file, in order."""
    steps: list[Step] = []
    for raw in path.read_text(encoding="utf-8", errors="surrogateescape").splitlines():
        side, sep, rest = raw.partition(": ")
        if not sep or side not in ("C", "S", "C (in 1-byte writes, 0.005s apart)"):
            continue
        bytewise = side.startswith("C (")
        side = side[0]
        if rest.startswith(("b'", 'b"')):
            if "bytes omitted>" in rest:
                steps.append(Step(side, _rebuild(rest), bytewise, rest))
            else:
                steps.append(Step(side, ast.literal_eval(rest), bytewise))
        else:
            steps.append(Step(side, None, bytewise, rest))
    return steps


def client_bytes(steps: list[Step]) -> list[bytes]:
    """The client's writes, as recorded (byte-wise writes split per byte)."""
    out: list[bytes] = []
    for step in steps:
        if step.side == "C" and step.data is not None:
            if step.bytewise:
                out.extend(step.data[i : i + 1] for i in range(len(step.data)))
            else:
                out.append(step.data)
    return out


def server_bytes(steps: list[Step]) -> list[bytes]:
    """What the server sent, chunked as recorded."""
    return [s.data for s in steps if s.side == "S" and s.data]
