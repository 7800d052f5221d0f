"""``python -m qmpcore bench``: qmpcore beside its baselines, measured in one run.

With no arguments it needs nothing but qmpcore: the socket and fleet
sections start simulated VMs from the embedded server in a child process.
qemu.qmp is compared against when installed (``pip install '.[bench]'`` in
the qmpcore checkout; the quotes keep zsh from globbing the brackets).

Sections: ``framing`` (framing + decode of recorded and synthetic streams),
``socket`` (round trip, 100 pipelined commands, event flood on one
connection), ``fleet`` (many VMs polled with ``query-status``),
``real-qemu`` (only with ``--real-qemu N``: N real QEMU processes polled;
the report says why when it did not run); ``schema`` (the cost of checking
a command against the schema before sending it, beside a round trip); with
``--only``: ``tls`` (TLS beside plain TCP), ``proxy`` (round trip through
``qmpcore proxy``, event fan-out to 100 clients) and ``hostile`` (good VMs
polled beside hostile ones).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

from . import _framing as framing
from ._report import Figure, Progress, Row, machine, render, to_json
from ._timing import FULL, QUICK, time_runs
from ._workloads import Workload, framing_workloads

__all__ = ["add_arguments", "run", "main", "SECTIONS"]


class Options(argparse.Namespace):
    quick: bool
    json: str | None
    only: list[str] | None
    vms: int | None
    rounds: int | None
    target: str | None
    real_qemu: int
    loop: list[str] | None


def framing_section(opts: argparse.Namespace, progress: Callable[[str], None]) -> list[Row]:
    """Every framing workload, for each qmpcore variant, beside the baselines."""
    classes = framing.framer_classes()
    live = next(iter(classes))  # the compiled one when it is importable
    variants: dict[str, Callable[[Workload], framing.Run]] = {
        live: lambda w: framing.framer(w, classes[live]),
    }
    if live != "python":
        variants["python"] = lambda w: framing.framer(w, classes["python"])
    variants[f"{live} raw"] = lambda w: framing.framer(w, classes[live], raw=True)

    rows: list[Row] = []
    for workload in framing_workloads(quick=opts.quick):
        progress(f"framing: {workload.title}")
        prepared = framing.contender_runs(workload, {**variants, **framing.BASELINES})
        ready = {name: run for name, run in prepared.items() if not isinstance(run, str)}
        timings = time_runs(ready, QUICK if opts.quick else FULL)
        per = workload.nframes if workload.per_message else 1
        scale = 1e6 / per if workload.per_message else 1e3

        def figure(name: str) -> Figure:
            found = prepared[name]  # noqa: B023 (called within this iteration)
            return found if isinstance(found, str) else timings[name].median * scale  # noqa: B023 (called within this iteration)

        baselines = {name: figure(name) for name in framing.BASELINES}
        for variant in variants:
            value = figure(variant)
            extra: dict[str, Figure] = {}
            if not workload.per_message and not isinstance(value, str):
                extra["MB/s"] = workload.nbytes / (value / scale * per) / 1e6
            rows.append(
                Row(
                    "framing",
                    workload.title,
                    "µs/msg" if workload.per_message else "ms",
                    True,
                    value,
                    baselines,
                    variant=variant,
                    extra=extra,
                )
            )
    return rows


class SectionUnavailable(Exception):
    """A section cannot run here (no QEMU, no target); the text says why."""


Section = Callable[[argparse.Namespace, Callable[[str], None]], list[Row]]


def _socket_section(opts: argparse.Namespace, progress: Callable[[str], None]) -> list[Row]:
    from ._socket import socket_section

    return socket_section(opts, progress)


def _fleet_section(opts: argparse.Namespace, progress: Callable[[str], None]) -> list[Row]:
    from ._fleet import fleet_section

    return fleet_section(opts, progress)


def _hostile_section(opts: argparse.Namespace, progress: Callable[[str], None]) -> list[Row]:
    from ._hostile import hostile_section

    return hostile_section(opts, progress)


def _real_qemu_section(opts: argparse.Namespace, progress: Callable[[str], None]) -> list[Row]:
    from ._fleet import real_qemu_section

    return real_qemu_section(opts, progress)


def _tls_section(opts: argparse.Namespace, progress: Callable[[str], None]) -> list[Row]:
    from ._tls_proxy import tls_section

    return tls_section(opts, progress)


def _proxy_section(opts: argparse.Namespace, progress: Callable[[str], None]) -> list[Row]:
    from ._tls_proxy import proxy_section

    return proxy_section(opts, progress)


def _schema_section(opts: argparse.Namespace, progress: Callable[[str], None]) -> list[Row]:
    from ._schema import schema_section

    return schema_section(opts, progress)


SECTIONS: dict[str, Section] = {
    "framing": framing_section,
    "socket": _socket_section,
    "fleet": _fleet_section,
    "real-qemu": _real_qemu_section,
    "tls": _tls_section,  # only with --only: it starts QEMU when installed
    "proxy": _proxy_section,
    "hostile": _hostile_section,
    "schema": _schema_section,
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``bench`` subcommand's options."""
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smaller workloads, fewer repeats (about 25 s of CPU time; the full run 3.5 min)",
    )
    parser.add_argument(
        "--json", metavar="FILE", help="also write every figure and ratio as JSON to FILE ('-' for stdout)"
    )
    parser.add_argument(
        "--only",
        metavar="SECTION",
        action="append",
        choices=list(SECTIONS),
        help="run only this section (repeatable): " + ", ".join(SECTIONS),
    )
    parser.add_argument(
        "--vms", type=int, metavar="N", help="simulated VMs in the fleet section (default 1000, --quick 200)"
    )
    parser.add_argument("--rounds", type=int, metavar="N", help="polling rounds in the fleet sections")
    parser.add_argument("--target", metavar="PATH", help="run the socket section against this QMP socket (a real QEMU)")
    parser.add_argument(
        "--real-qemu", type=int, default=0, metavar="N", help="also start N real QEMUs (-M none) and poll them"
    )
    parser.add_argument(
        "--loop",
        action="append",
        choices=["asyncio", "uvloop"],
        help="event loop of the socket and fleet rows (repeatable; default: both when uvloop is installed)",
    )


def _selected(opts: argparse.Namespace) -> list[str]:
    if opts.only:
        return list(dict.fromkeys(opts.only))
    names = ["framing", "socket", "fleet", "schema"]
    if opts.real_qemu:
        names.append("real-qemu")
    return names


def _left_out(opts: argparse.Namespace) -> list[str]:
    """Why a section a default run leaves out did not run (shown in the report)."""
    if opts.only or opts.real_qemu:
        return []
    from ._qemu import QemuMissing, find_qemu

    try:
        binary = find_qemu()
    except QemuMissing as exc:
        return [f"real-qemu: skipped, not asked for with --real-qemu N, and {exc}"]
    return [f"real-qemu: skipped, it runs only when asked: --real-qemu N starts N {binary} -M none and polls them"]


def run(opts: argparse.Namespace) -> int:
    """Run the selected sections, print the table, write JSON if asked."""
    for name in ("vms", "rounds", "real_qemu"):
        value = getattr(opts, name, None)
        if value is not None and value < 0:
            print(f"qmpcore bench: --{name.replace('_', '-')} must not be negative", file=sys.stderr)
            return 2
    if "uvloop" in (getattr(opts, "loop", None) or []):
        from ..client.loop import uvloop_available

        if not uvloop_available():
            print('qmpcore bench: --loop uvloop needs uvloop (pip install "qmpcore[uvloop]")', file=sys.stderr)
            return 2
    progress = Progress()
    rows: list[Row] = []
    skipped: list[str] = _left_out(opts)
    status = 0
    for name in _selected(opts):
        try:
            rows += SECTIONS[name](opts, progress)
        except SectionUnavailable as why:
            skipped.append(f"{name}: skipped, {why}")
        except Exception as exc:
            skipped.append(f"{name}: failed, {type(exc).__name__}: {exc}")
            status = 1
        finally:
            progress.done()
    info = machine()
    data = {**to_json(rows, info), "skipped": skipped}
    if opts.json == "-":
        _write_json(sys.stdout, data)
        return status
    sys.stdout.write(render(rows, info) + "".join(f"\n{line}\n" for line in skipped))
    if opts.json:
        with open(opts.json, "w", encoding="utf-8") as f:
            _write_json(f, data)
    return status


def _write_json(stream: Any, data: dict[str, Any]) -> None:
    json.dump(data, stream, indent=2)
    stream.write("\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m qmpcore bench", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv, namespace=Options()))
