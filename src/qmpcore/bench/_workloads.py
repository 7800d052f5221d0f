"""Byte streams that the framing benchmarks feed, built once and shared.

``benchmarks/`` (pytest-benchmark) and ``python -m qmpcore bench`` measure
the same workloads, built here.  A :class:`Workload` holds the stream twice:
as the chunks a socket would deliver (what a framer is fed) and pre-split
into frames (what the orjson floor and ``json.loads`` get, since they cannot
frame).  Recorded QEMU data comes from the corpus when it can be found;
otherwise a synthetic stream of the same shape stands in and says so.
"""

from __future__ import annotations

import json
import os
import pathlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

__all__ = [
    "SMALL_REPLY",
    "EVENT",
    "Workload",
    "corpus_root",
    "small_reply",
    "event",
    "schema",
    "events",
    "event_stream",
    "libvirt",
    "big_frame",
    "framing_workloads",
    "describe",
]

#: The reply a status poll gets, as QEMU prints it.
SMALL_REPLY = b'{"return": {"status": "running", "singlestep": false, "running": true}}\r\n'
#: An event with data, as QEMU prints it (corpus 99_quit_shutdown).
EVENT = (
    b'{"timestamp": {"seconds": 1795584133, "microseconds": 205741}, '
    b'"event": "SHUTDOWN", "data": {"guest": false, "reason": "host-qmp-quit"}}\r\n'
)

#: What one socket read returns for bulk data (asyncio reads up to 256 KiB;
#: 64 KiB is a common pipe/socket buffer size).
READ_SIZE = 64 << 10
#: Messages per run for the one-message-per-read workloads, so a run is long
#: enough to time and per-call overhead is averaged, not hidden.
MESSAGES_PER_RUN = 1000
SCHEMA_FILE = "qmp_schema_7.2.json"
LIBVIRT_FILES = ("caps_2.6.0.x86_64.replies", "caps_7.2.0_x86_64.replies")


@dataclass(frozen=True)
class Workload:
    """One benchmark input, delivered as ``chunks`` and pre-split as ``frames``."""

    name: str
    """Short identifier (``--only`` and JSON output use it)."""
    title: str
    """Label for tables."""
    chunks: Sequence[bytes]
    """The stream in the pieces a framer is fed, in order."""
    frames: Sequence[bytes]
    """The same stream split into complete frames."""
    line_framed: bool = True
    """True when every frame is one line, so readline-based clients work."""
    per_message: bool = True
    """Report time per message (small frames) rather than per stream."""
    synthetic: bool = False
    """True when generated because the recorded data was not found."""
    hostile: bool = False
    """True when the stream also holds garbage (``frames`` are its valid
    frames only): what a misbehaving peer sends, which no baseline frames."""
    nbytes: int = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "nbytes", sum(len(c) for c in self.chunks))  # the frames' bytes, and any garbage

    @property
    def nframes(self) -> int:
        return len(self.frames)


def corpus_root() -> pathlib.Path | None:
    """The recorded-traffic folder (holding ``qemu-7.2/``), or None.

    Looked up in ``$QMPCORE_CORPUS``, then in a checkout's ``tests/data/corpus``
    or a ``shared/corpus`` in the working directory or any folder above it
    (running from a checkout with the package installed elsewhere), then
    beside any folder above this file (running from the source tree).
    """
    env = os.environ.get("QMPCORE_CORPUS")
    candidates: list[pathlib.Path] = [pathlib.Path(env)] if env else []
    for start in (pathlib.Path.cwd().resolve(), pathlib.Path(__file__).resolve()):
        for folder in (start, *start.parents):
            candidates += [folder / "tests" / "data" / "corpus", folder / "shared" / "corpus"]
    for path in candidates:
        if (path / "qemu-7.2" / SCHEMA_FILE).is_file():
            return path
    return None


def _chunked(stream: bytes, size: int) -> list[bytes]:
    if size == 1:
        # Iterating a 'c' memoryview yields CPython's cached 1-byte objects,
        # so even a 10 MiB stream costs one pointer per byte.
        return list(memoryview(stream).cast("c"))
    return [stream[i : i + size] for i in range(0, len(stream), size)]


def _repeated(name: str, title: str, message: bytes, count: int) -> Workload:
    return Workload(name, title, chunks=[message] * count, frames=[message] * count)


def small_reply(count: int = MESSAGES_PER_RUN) -> Workload:
    """``count`` status replies, one per read, as a poll loop receives them."""
    return _repeated("small-reply", "small reply", SMALL_REPLY, count)


def event(count: int = MESSAGES_PER_RUN) -> Workload:
    """``count`` events, one per read."""
    return _repeated("event", "event", EVENT, count)


def _schema_entries(size: int) -> bytes:
    """A deterministic stand-in for the schema list, about ``size`` bytes.

    Each entry carries a short description, so a 10 MiB list stays well
    under QEMU's 2 Mi tokens per message (which a framer enforces).
    """
    kinds = ("command", "event", "object", "enum", "builtin", "array")
    parts: list[bytes] = []
    total = 0
    i = 0
    while total < size:
        entry = json.dumps(
            {
                "name": f"x-query-thing-{i:05d}",
                "meta-type": kinds[i % len(kinds)],
                "members": [{"name": f"m{j}", "type": str(i + j)} for j in range(i % 4)],
                "arg-type": str(i % 97),
                "doc": f"Thing {i}: " + "returns the state of one simulated device. " * 2,
            }
        ).encode()
        parts.append(entry)
        total += len(entry) + 2
        i += 1
    return b", ".join(parts)


def schema() -> Workload:
    """The 207 KB ``query-qmp-schema`` reply, delivered in 64 KiB reads."""
    root = corpus_root()
    synthetic = root is None
    if root is not None:
        frame = (root / "qemu-7.2" / SCHEMA_FILE).read_bytes()
    else:
        frame = b'{"return": [' + _schema_entries(207_000) + b'], "id": "schema"}\r\n'
    return Workload(
        "schema",
        "schema reply (207 KB)" + (" synthetic" if synthetic else ""),
        chunks=_chunked(frame, READ_SIZE),
        frames=[frame],
        per_message=False,
        synthetic=synthetic,
    )


def events(count: int) -> list[bytes]:
    """``count`` distinct events (STOP/RESUME pairs with rising timestamps)."""
    names = (b"STOP", b"RESUME")
    return [
        b'{"timestamp": {"seconds": %d, "microseconds": %d}, "event": "%s"}\r\n'
        % (1795584128 + i // 1000, (i * 7919) % 1000000, names[i % 2])
        for i in range(count)
    ]


def event_stream(count: int = 1000) -> Workload:
    """A burst of ``count`` events arriving together, in 64 KiB reads."""
    frames = events(count)
    stream = b"".join(frames)
    return Workload(
        f"events-{count}",
        f"{count:,}-event stream",
        chunks=_chunked(stream, READ_SIZE),
        frames=frames,
        per_message=False,
    )


def _split_libvirt(text: bytes) -> list[bytes]:
    # Messages are separated by one blank line; the file ends with "\n".
    return [part + b"\n" for part in text.rstrip(b"\n").split(b"\n\n")]


def libvirt(filename: str, *, compact: bool = False) -> Workload | None:
    """A libvirt capability-probe transcript, or None when it is not found.

    As recorded it is pretty-printed, one message over many lines, which
    line-based clients cannot frame.  ``compact=True`` re-prints each message
    on one line the way QEMU sends it, so every baseline can take part.
    """
    root = corpus_root()
    path = root / "libvirt" / filename if root is not None else None
    if path is None or not path.is_file():
        return None
    frames = _split_libvirt(path.read_bytes())
    version = filename.split("_")[1].rsplit(".x86", 1)[0]
    if compact:
        frames = [json.dumps(json.loads(f)).encode() + b"\r\n" for f in frames]
    stream = b"".join(frames)
    return Workload(
        f"libvirt-{version}" + ("-compact" if compact else ""),
        f"libvirt {version} " + ("(compact)" if compact else "(pretty)"),
        chunks=_chunked(stream, READ_SIZE),
        frames=frames,
        line_framed=compact,
        per_message=False,
    )


def big_frame(size: int = 10 << 20, read_size: int = READ_SIZE) -> Workload:
    """One reply of about ``size`` bytes fed ``read_size`` bytes at a time."""
    frame = b'{"return": [' + _schema_entries(size - 32) + b'], "id": "big"}\r\n'
    label = "1 byte" if read_size == 1 else f"{read_size >> 10} KiB"
    mib = size / (1 << 20)
    return Workload(
        "big-1B" if read_size == 1 else f"big-{read_size >> 10}KiB",
        f"{mib:g} MiB frame, {label} reads",
        chunks=_chunked(frame, read_size),
        frames=[frame],
        per_message=False,
    )


def _one_frame(name: str, title: str, frame: bytes) -> Workload:
    return Workload(name, title, chunks=_chunked(frame, READ_SIZE), frames=[frame], per_message=False)


def dialect(kind: str, size: int = 1 << 20) -> Workload:
    """One ``size``-byte reply in QEMU's dialect, which orjson alone cannot
    decode exactly: escapes beside 19-digit integers, single quotes, or
    integers beyond 64 bits."""
    item, title = {
        "escapes": (b'"a\\"b\\n\\u00e9", 12345678901234567890', "escapes + 20-digit integers"),
        "single-quotes": (b"'abc', 'it\\'s'", "single-quoted strings"),
        "long-integers": (b"-123456789012345678901234567890", "30-digit integers"),
    }[kind]
    body = b", ".join([item] * (size // (len(item) + 2)))
    frame = b'{"return": [' + body + b'], "id": "dialect"}\r\n'
    return _one_frame(f"dialect-{kind}", f"{len(frame) / (1 << 20):.0f} MiB reply, {title}", frame)


def garbage(kind: str, size: int = 1 << 20) -> Workload:
    """What a hostile peer sends: a reply, then ``size`` bytes of garbage
    (stray commas, 0xFF, control bytes, undecodable frames), then a reply."""
    unit, title = {
        "commas": (b",", "stray commas"),
        "ff": (b"\xff", "0xFF bytes"),
        "control": (b"\x01", "control bytes"),
        "frames": (b"{1}", "undecodable frames {1}"),
    }[kind]
    stream = SMALL_REPLY + unit * (size // len(unit)) + SMALL_REPLY
    return Workload(
        f"garbage-{kind}",
        f"{size >> 20} MiB of {title}",
        chunks=_chunked(stream, READ_SIZE),
        frames=[SMALL_REPLY, SMALL_REPLY],
        per_message=False,
        hostile=True,
    )


def framing_workloads(*, quick: bool = False, names: Iterable[str] | None = None) -> list[Workload]:
    """Every framing workload (a smaller big frame when ``quick``).

    ``names`` keeps only the workloads whose name starts with one of them;
    the others are not even built.
    """
    big = (1 << 20) if quick else (10 << 20)
    builders: dict[str, Callable[[], Workload | None]] = {
        "small-reply": small_reply,
        "event": event,
        "schema": schema,
        "events-1000": lambda: event_stream(1000),
        "libvirt-2.6.0": lambda: libvirt(LIBVIRT_FILES[0]),
        "libvirt-7.2.0": lambda: libvirt(LIBVIRT_FILES[1]),
        "libvirt-7.2.0-compact": lambda: libvirt(LIBVIRT_FILES[1], compact=True),
        "big-64KiB": lambda: big_frame(big, READ_SIZE),
        "big-1B": lambda: big_frame(big, 1),
        "dialect-escapes": lambda: dialect("escapes"),
        "dialect-single-quotes": lambda: dialect("single-quotes"),
        "dialect-long-integers": lambda: dialect("long-integers"),
        "garbage-commas": lambda: garbage("commas"),
        "garbage-ff": lambda: garbage("ff"),
        "garbage-control": lambda: garbage("control"),
        "garbage-frames": lambda: garbage("frames"),
    }
    wanted: tuple[str, ...] = tuple(names or ())
    built = (build() for name, build in builders.items() if not wanted or name.startswith(wanted))
    return [w for w in built if w is not None]


def describe(workloads: Iterable[Workload]) -> dict[str, dict[str, object]]:
    """Size facts for reports: bytes, frames, reads per workload."""
    return {
        w.name: {"bytes": w.nbytes, "frames": w.nframes, "reads": len(w.chunks), "synthetic": w.synthetic}
        for w in workloads
    }
