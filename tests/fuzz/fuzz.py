#!/usr/bin/env python3
"""Coverage-guided fuzzing of qmpcore with atheris (libFuzzer for Python).

Targets:

``framer``
    Arbitrary bytes, split at points taken from the input, fed to the
    compiled and the pure-Python framer in every mode; see
    :mod:`framer_check`.
``client``
    The sans-IO QMP and guest agent client protocols driven by arbitrary
    server bytes while commands are sent; see :mod:`client_check`.
``server``
    The sans-IO QMP and guest agent server protocols (the embedded server)
    driven by arbitrary client bytes; see :mod:`server_check`.

Usage (from the repository root)::

    python tests/fuzz/fuzz.py TARGET [CORPUS_DIR ...] [libFuzzer flags]

The first corpus directory (a fresh temporary one if none is given) is
seeded from ``../shared/corpus`` when empty, and receives new inputs.
Coverage comes from qmpcore's Python code, instrumented at import; the
pure framer is the line-for-line model of the compiled one, so its coverage
steers the differential check through the compiled state machine as well.

A long run on all cores, keeping going past crashes (each one is written
to ``crash-*`` for a regression file)::

    python tests/fuzz/fuzz.py framer fuzz-corpus/framer -fork=2 -ignore_crashes=1 -max_total_time=36000
"""

from __future__ import annotations

import pathlib
import sys
import tempfile

import atheris

HERE = pathlib.Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

with atheris.instrument_imports(include=["qmpcore"]):
    import qmpcore
    import qmpcore.framing.pure
    import qmpcore.protocol.qga_client
    import qmpcore.protocol.qga_server
    import qmpcore.protocol.qmp_client
    import qmpcore.protocol.qmp_server  # noqa: F401

import client_check  # noqa: E402
import framer_check  # noqa: E402
import seeds  # noqa: E402
import server_check  # noqa: E402

TARGETS = {"framer": framer_check.check, "client": client_check.check, "server": server_check.check}
DEFAULT_FLAGS = [
    f"-max_len={seeds.MAX_LEN}",
    "-timeout=30",
    "-rss_limit_mb=3072",
    f"-dict={HERE / 'json.dict'}",  # JSON and QMP tokens, QEMU's special bytes
]


def main(argv: list) -> None:
    if len(argv) < 2 or argv[1] not in TARGETS:
        sys.exit(f"usage: {argv[0]} {{{','.join(TARGETS)}}} [CORPUS_DIR ...] [libFuzzer flags]")
    target = argv[1]
    rest = argv[2:]
    dirs = [arg for arg in rest if not arg.startswith("-")]
    if not dirs:
        dirs = [tempfile.mkdtemp(prefix=f"qmpcore-fuzz-{target}-")]
        rest.append(dirs[0])
    corpus = pathlib.Path(dirs[0])
    if not corpus.is_dir() or not any(corpus.iterdir()):
        seeds.write_seeds(target, corpus)
    given = {arg.split("=")[0] for arg in rest if arg.startswith("-")}
    flags = [flag for flag in DEFAULT_FLAGS if flag.split("=")[0] not in given]
    check = TARGETS[target]
    atheris.Setup([argv[0], *flags, *rest], check)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
