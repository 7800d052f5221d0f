"""Seed inputs for the fuzz targets, built from the recorded QEMU sessions.

Framer seeds are the client and server byte streams of every file in
``../shared/corpus/qemu-7.2`` (client streams in server-role ``strict``
mode, as the embedded server reads them) plus slices of the libvirt
transcripts, in several framer modes.  Client-protocol seeds are small
programs (see :mod:`client_check`): ordinary QMP and guest agent sessions,
and the recorded server output fed as raw bytes.  Server-protocol seeds
are the recorded client streams, answered in several ways.
"""

from __future__ import annotations

import hashlib
import pathlib
from collections.abc import Iterator

from client_check import OPS
from framer_check import RAW, SMALL, STRICT, make_input
from server_check import ERRORS, LATE, PRETTY, QGA
from server_check import make_input as make_server_input

import corpus_support
from conftest import LIBVIRT_CORPUS, QEMU_CORPUS

__all__ = ["MAX_LEN", "TARGETS", "seeds", "write_seeds"]

#: Longest input the fuzzers generate.
MAX_LEN = 16384
#: Longest seed: short inputs keep the fuzzers fast; they grow when it pays.
MAX_SEED = 4096

Seed = tuple[str, bytes]


def _streams() -> Iterator[tuple[str, bytes, bytes]]:
    """``(name, client bytes, server bytes)`` per recorded session."""
    for path in sorted(QEMU_CORPUS.glob("*.txt")):
        steps = corpus_support.load(path)
        client = b"".join(corpus_support.client_bytes(steps))
        server = b"".join(corpus_support.server_bytes(steps))
        yield path.stem, client[:MAX_SEED], server[:MAX_SEED]
    for path in sorted(LIBVIRT_CORPUS.glob("*.replies")):
        text = path.read_bytes()
        for index in range(4):
            yield f"{path.stem}.{index}", b"", text[index * MAX_SEED : (index + 1) * MAX_SEED]


def framer_seeds() -> Iterator[Seed]:
    for name, client, server in _streams():
        if client:
            yield f"{name}.client", make_input(client, flags=STRICT)
            yield f"{name}.client.small", make_input(client, flags=STRICT | SMALL, limits=(8, 3, 40), splits=(7, 1, 30))
        if server:
            yield f"{name}.server", make_input(server)
            yield f"{name}.server.split", make_input(server, flags=0x58, splits=(1, 13, 200))
            yield f"{name}.server.raw", make_input(server, flags=RAW | SMALL, limits=(60, 5, 255))


def _program(*ops: object) -> bytes:
    out: list[int] = []
    for op in ops:
        if isinstance(op, str):
            out.append(OPS[op])
        elif isinstance(op, bytes):
            out.extend(op)
        else:
            out.append(int(op))  # type: ignore[call-overload]
    return bytes(out)


def client_seeds() -> Iterator[Seed]:
    qmp = 0
    yield (
        "qmp.session",
        _program(
            qmp,
            "GREETING",
            1,
            "FLUSH",
            "NEGOTIATE",
            1,
            "REPLY",
            0,
            "FLUSH",
            "SEND",
            0,
            "SEND",
            1,
            "EVENT",
            0,
            "REPLY",
            0,
            "ERROR",
            0,
            "DELIVER",
            20,
            "FLUSH",
            "SEND",
            0x80,
            "SEND",
            2,
            "PRETTY",
            1,
            "REPLY",
            0,
            "DELIVER",
            7,
            "DELIVER",
            200,
            "FLUSH",
        ),
    )
    yield (
        "qmp.pipeline",
        _program(
            qmp,
            "GREETING",
            0,
            "NEGOTIATE",
            0,
            "FLUSH",
            "REPLY",
            0,
            "FLUSH",
            *(["SEND", 0] * 12),
            *(["REPLY", 0, "FLUSH"] * 12),
        ),
    )
    yield (
        "qmp.abandon",
        _program(
            qmp,
            "GREETING",
            1,
            "NEGOTIATE",
            1,
            "FLUSH",
            "REPLY",
            0,
            "FLUSH",
            *(["SEND", 5] * 10),
            "ABANDON",
            0,
            "ABANDON",
            3,
            "STALE",
            0,
            "FOREIGN",
            6,
            "FOREIGN",
            7,
            "REPLY",
            0,
            "FLUSH",
            "FF",
            0,
            "GARBAGE",
            3,
            b"}{[",
            "REPLY",
            1,
            "FLUSH",
            "CLOSE",
        ),
    )
    qga = 1
    yield (
        "qga.session",
        _program(
            qga,
            "SEND",
            0,
            "SYNCREPLY",
            "FLUSH",
            "REPLY",
            0,
            "FLUSH",
            "SEND",
            1,
            "SEND",
            2,
            "SEND",
            3,
            "REPLY",
            0,
            "FLUSH",
            "ABANDON",
            0,
            "SYNCREPLY",
            "DELIVER",
            3,
            "FLUSH",
            "REPLY",
            0,
            "FLUSH",
        ),
    )
    for path in sorted(QEMU_CORPUS.glob("*.txt")):
        steps = corpus_support.load(path)
        ops: list[object] = [path.stem.startswith("qga"), "SEND", 0]
        for chunk in corpus_support.server_bytes(steps):
            for start in range(0, min(len(chunk), 1024), 255):
                piece = chunk[start : start + 255]
                ops += ["GARBAGE", len(piece), piece, "DELIVER", 255, "SEND", len(ops) & 7]
        yield f"{path.stem}.raw", _program(*ops)[:MAX_SEED]


def server_seeds() -> Iterator[Seed]:
    for name, client, _ in _streams():
        if not client:
            continue
        qga = QGA if name.startswith("qga") else 0
        yield f"{name}.served", make_server_input(client, flags=qga)
        yield f"{name}.served.late", make_server_input(client, flags=qga | LATE | ERRORS | PRETTY, splits=[3, 40])
        yield f"{name}.served.small", make_server_input(client, flags=qga | SMALL, splits=[17])


_SEEDS = {"framer": framer_seeds, "client": client_seeds, "server": server_seeds}
#: The fuzz targets, by name.
TARGETS = tuple(_SEEDS)


def seeds(target: str) -> Iterator[Seed]:
    """The seeds of ``target`` (one of :data:`TARGETS`)."""
    return _SEEDS[target]()


def write_seeds(target: str, directory: pathlib.Path) -> int:
    """Write the seeds of ``target`` into ``directory``; return how many."""
    directory.mkdir(parents=True, exist_ok=True)
    count = 0
    for _, data in seeds(target):
        (directory / hashlib.sha1(data).hexdigest()).write_bytes(data)
        count += 1
    return count
