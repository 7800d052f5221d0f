"""``python -m qmpcore`` (also installed as ``qmpcore``): QMP from the shell.

::

    qmpcore exec /run/vm1/qmp.sock query-status
    qmpcore exec 127.0.0.1:4444 device_del id=net0
    qmpcore exec --qga /run/vm1/qga.sock guest-info
    qmpcore events /run/vm1/qmp.sock STOP RESUME
    qmpcore shell /run/vm1/qmp.sock
    qmpcore serve /tmp/vms --vms 10
    qmpcore bench --quick

An address is a unix socket path or ``host:port`` (``[::1]:4444`` for
IPv6).  Arguments are one JSON object or ``key=value`` words; a value is
read as JSON when it parses (``true``, ``3``, ``[1,2]``, ``'"3"'`` for the
string) and as a plain string otherwise; ``a.b=1`` nests.

Exit status: 0 success, 1 the command failed (the error's class and
description go to stderr), 2 bad usage, 3 no connection, a timeout or a
broken connection, 130 interrupted, 141 the output pipe closed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shlex
import sys
from collections.abc import Sequence
from typing import Any

__all__ = [
    "main",
    "build_parser",
    "parse_address",
    "parse_arguments",
    "parse_line",
    "dump",
    "EXIT_OK",
    "EXIT_COMMAND_ERROR",
    "EXIT_USAGE",
    "EXIT_CONNECTION",
    "EXIT_INTERRUPTED",
]

EXIT_OK = 0
EXIT_COMMAND_ERROR = 1
EXIT_USAGE = 2
EXIT_CONNECTION = 3
EXIT_INTERRUPTED = 130
EXIT_PIPE = 141  # as if killed by SIGPIPE

DEFAULT_TIMEOUT = 10.0
_HOST_PORT = re.compile(r"^(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<host>[^:/\[\]]+)):(?P<port>[0-9]{1,5})$")


class UsageError(ValueError):
    """A command line that cannot be understood (exit status 2)."""


def parse_address(text: str) -> str | tuple[str, int]:
    """``host:port`` or ``[v6]:port`` becomes a TCP address; anything else a unix path.

    An existing file always wins, so a socket named ``vm:1`` in the current
    directory is still reachable.
    """
    if not text:
        raise UsageError("empty address")
    found = _HOST_PORT.match(text)
    if found is None or os.path.exists(text):
        return text
    port = int(found["port"])
    if not 0 < port < 65536:
        raise UsageError(f"bad port in address {text!r}")
    return (found["v6"] or found["host"], port)


def _value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def parse_arguments(words: Sequence[str]) -> dict[str, Any] | None:
    """Command arguments from one JSON object or ``key=value`` words (None if none)."""
    if not words:
        return None
    if len(words) == 1 and words[0].lstrip().startswith("{"):
        try:
            given = json.loads(words[0])
        except ValueError as exc:
            raise UsageError(f"arguments are not valid JSON: {exc}") from None
        if not isinstance(given, dict):
            raise UsageError("arguments must be a JSON object")
        return given
    args: dict[str, Any] = {}
    for word in words:
        key, sep, raw = word.partition("=")
        if not sep or not key:
            raise UsageError(f"expected key=value, got {word!r}")
        *parents, leaf = key.split(".")
        node = args
        for part in parents:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise UsageError(f"{key!r} conflicts with an earlier argument")
            node = child
        if leaf in node:
            raise UsageError(f"argument {key!r} given twice")
        node[leaf] = _value(raw)
    return args


def parse_line(line: str) -> tuple[str, dict[str, Any] | None]:
    """A shell line: ``{"execute": ..., "arguments": ...}`` or ``command key=value ...``."""
    line = line.strip()
    if line.startswith("{"):
        try:
            message = json.loads(line)
        except ValueError as exc:
            raise UsageError(f"not valid JSON: {exc}") from None
        if not isinstance(message, dict) or not isinstance(message.get("execute"), str):
            raise UsageError('a JSON line must be an object with an "execute" string')
        args = message.get("arguments")
        if args is not None and not isinstance(args, dict):
            raise UsageError('"arguments" must be an object')
        return message["execute"], args
    try:
        words = shlex.split(line)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if not words:
        raise UsageError("empty command")
    return words[0], parse_arguments(words[1:])


def dump(value: Any, pretty: bool) -> str:
    """JSON text of a reply or event: indented for people, one line for programs."""
    if pretty:
        return json.dumps(value, indent=2, ensure_ascii=False)
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _silence_stdout() -> None:
    """Point stdout at /dev/null so flushing it at exit cannot fail again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def _fail(message: str, status: int) -> int:
    print(f"qmpcore: {message}", file=sys.stderr)
    return status


async def connect(args: argparse.Namespace, address: str | tuple[str, int]) -> Any:
    """The asyncio client for ``address``: QMP, or a guest agent with ``--qga``."""
    from ..client import aio

    if args.qga:
        return await aio.connect_guest_agent(address, timeout=args.timeout, command_timeout=args.timeout)
    return await aio.connect(address, timeout=args.timeout, command_timeout=args.timeout)


def run_client(args: argparse.Namespace, body: Any) -> int:
    """Connect, run ``body(client)`` and map failures to exit statuses."""
    from ..errors import CommandError, QMPError

    async def session() -> int:
        client = await connect(args, parse_address(args.address))
        try:
            return await body(client)
        finally:
            await client.close()

    try:
        return asyncio.run(session())
    except CommandError as exc:
        return _fail(f"{exc.error_class}: {exc.desc}", EXIT_COMMAND_ERROR)
    except BrokenPipeError:  # our reader went away (| head): stop quietly
        _silence_stdout()
        return EXIT_PIPE
    except UsageError as exc:
        return _fail(str(exc), EXIT_USAGE)
    except (QMPError, OSError, TimeoutError) as exc:
        return _fail(f"{args.address}: {exc or type(exc).__name__}", EXIT_CONNECTION)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


def cmd_exec(args: argparse.Namespace) -> int:
    arguments = parse_arguments(args.arguments)
    pretty = sys.stdout.isatty()

    async def body(client: Any) -> int:
        result = await client.execute(args.command, arguments)
        print(dump(result, pretty), flush=True)
        return EXIT_OK

    return run_client(args, body)


def cmd_events(args: argparse.Namespace) -> int:
    if args.qga:
        raise UsageError("a guest agent sends no events")

    async def body(client: Any) -> int:
        async for event in client.events(*args.names):
            print(dump(event.raw, False), flush=True)
        return EXIT_OK

    return run_client(args, body)


def cmd_shell(args: argparse.Namespace) -> int:
    from ._shell import run_shell

    return run_shell(args)


def cmd_serve(args: argparse.Namespace) -> int:
    from ._serve import run_serve

    return run_serve(args)


def cmd_bench(args: argparse.Namespace) -> int:
    from .. import bench

    return bench.run(args)


def _timeout(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError("must be positive")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The ``qmpcore`` argument parser with every subcommand."""
    from .. import __version__, bench, soak

    parser = argparse.ArgumentParser(
        prog="qmpcore",
        description="Talk to QEMU's QMP monitor or guest agent, serve simulated VMs, benchmark.",
        epilog="Exit status: 0 ok, 1 command failed, 2 bad usage, 3 connection problem, 130 interrupted.",
    )
    parser.add_argument("--version", action="version", version=f"qmpcore {__version__}")
    sub = parser.add_subparsers(dest="subcommand", metavar="COMMAND", required=True)

    client = argparse.ArgumentParser(add_help=False)
    client.add_argument("address", metavar="ADDRESS", help="unix socket path or host:port")
    client.add_argument("--qga", action="store_true", help="talk to a guest agent instead of a QMP monitor")
    client.add_argument(
        "--timeout",
        type=_timeout,
        default=DEFAULT_TIMEOUT,
        metavar="SECONDS",
        help=f"for connecting and for each command (default {DEFAULT_TIMEOUT:g})",
    )

    p = sub.add_parser("exec", parents=[client], help="run one command and print its reply")
    p.add_argument("command", metavar="COMMAND")
    p.add_argument("arguments", nargs="*", metavar="ARGS", help="one JSON object, or key=value words")
    p.set_defaults(handler=cmd_exec)

    p = sub.add_parser("events", parents=[client], help="print events as they arrive, one JSON line each")
    p.add_argument("names", nargs="*", metavar="NAME", help="only these events")
    p.set_defaults(handler=cmd_events)

    p = sub.add_parser("shell", parents=[client], help="interactive shell with history and completion")
    p.add_argument("--history", metavar="FILE", help="history file (default $QMPCORE_HISTORY or ~/.qmpcore_history)")
    p.set_defaults(handler=cmd_shell)

    p = sub.add_parser("serve", help="run simulated VMs on unix sockets (embedded server)")
    p.add_argument("path", metavar="PATH", help="the socket; with --vms, a directory of sockets vm-0.sock ...")
    p.add_argument("--vms", type=int, metavar="N", help="serve N simulated VMs in directory PATH")
    p.add_argument("--pretty", action="store_true", help="pretty-print replies like QEMU's pretty=on monitor")
    p.set_defaults(handler=cmd_serve)

    p = sub.add_parser("bench", help="benchmark qmpcore beside its baselines", description=bench.__doc__)
    bench.add_arguments(p)
    p.set_defaults(handler=cmd_bench)
    p = sub.add_parser("soak", help="run clients against faulty simulated VMs", description=soak.__doc__)
    soak.add_arguments(p)
    p.set_defaults(handler=soak.run)

    from ._schema import add_parsers as add_schema_parsers

    add_schema_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m qmpcore`` and the ``qmpcore`` script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args))
    except UsageError as exc:
        parser.exit(EXIT_USAGE, f"qmpcore {args.subcommand}: {exc}\n")
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    return EXIT_OK  # not reached; parser.exit raises SystemExit
