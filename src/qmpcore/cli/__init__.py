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

from ..client.address import AddressError
from ..client.address import parse_address as _parse_address

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
EXIT_HELP = (
    "Exit status: 0 ok, 1 command failed, 2 bad usage, 3 no connection, a timeout or a broken connection, "
    "130 interrupted, 141 output pipe closed."
)
_COMMAND_OBJECT = re.compile(r"^(?P<command>[^\s{'\"]+)\s+(?P<object>\{.*)$", re.DOTALL)


class UsageError(ValueError):
    """A command line that cannot be understood (exit status 2)."""


def parse_address(text: str) -> str | tuple[str, int]:
    """``host:port`` or ``[v6]:port`` becomes a TCP address; anything else a unix path.

    The package's one parser (:func:`qmpcore.client.address.parse_address`)
    reads it; an existing file always wins, so a socket named ``vm:1`` in
    the current directory is still reachable.  A text that looks like
    ``host:port`` but is not one is a usage error that says what is wrong
    (``port 'abc' is not a number in 'host:abc'``).
    """
    if not text:
        raise UsageError("empty address (give a unix socket path or host:port)")
    try:
        address = _parse_address(text, text=True)
    except AddressError as exc:
        hint = f" (for a unix socket in this directory write ./{text})" if exc.part else ""
        raise UsageError(f"{exc}{hint}") from None
    sockaddr = address.sockaddr
    return sockaddr if isinstance(sockaddr, str) else (sockaddr[0], sockaddr[1])


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
    command_and_object = _COMMAND_OBJECT.match(line)
    if command_and_object is not None:  # command {"json": ...}: no word splitting
        return command_and_object["command"], parse_arguments([command_and_object["object"]])
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
    """JSON text of a reply or event: indented for people, one line for programs.

    Any depth and any integer length, control characters escaped (see
    :mod:`qmpcore.cli._output`).
    """
    from ._output import dump as dump_json

    return dump_json(value, pretty)


def _silence_stdout() -> None:
    """Point stdout at /dev/null so flushing it at exit cannot fail again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def _fail(message: str, status: int) -> int:
    from ._output import one_line

    print(f"qmpcore: {one_line(message, sys.stderr.isatty())}", file=sys.stderr)
    return status


def describe_error(address: str, exc: BaseException) -> str:
    """One line for a failure at ``address``, naming the address once.

    Errors that already name it (qmpcore's own) are shown as they are;
    a bare ``OSError`` gets the address in front and loses its ``[Errno N]``.
    """
    from ..errors import CommandError, QMPError

    if isinstance(exc, CommandError):
        return f"{exc.error_class}: {exc.desc}"
    if isinstance(exc, OSError) and not isinstance(exc, QMPError) and exc.strerror:
        text = exc.strerror
    else:
        text = str(exc) or type(exc).__name__
    try:
        parsed = parse_address(address)
    except UsageError:
        parsed = address
    forms = {address, parsed if isinstance(parsed, str) else _host_port_text(*parsed)}
    named = any(f"{form}:" in text or f"'{form}'" in text for form in forms)
    return text if named else f"{address}: {text}"


def _host_port_text(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def connect(args: argparse.Namespace, address: str | tuple[str, int], negotiate: bool = True) -> Any:
    """The asyncio client for ``address``: QMP, or a guest agent with ``--qga``.

    With ``negotiate=False`` a QMP client is returned before
    ``qmp_capabilities``, so the caller can subscribe to events first.
    """
    from ..client import aio
    from ._proxy import tls_options

    tls = tls_options(args)
    if args.qga:
        return await aio.connect_guest_agent(address, timeout=args.timeout, command_timeout=args.timeout, **tls)
    return await aio.connect(address, timeout=args.timeout, command_timeout=args.timeout, negotiate=negotiate, **tls)


def run_client(args: argparse.Namespace, body: Any, negotiate: bool = True) -> int:
    """Connect, run ``body(client)`` and map failures to exit statuses."""
    from ..errors import CommandError, QMPError
    from ._output import allow_long_integers

    allow_long_integers()

    async def session() -> int:
        client = await connect(args, parse_address(args.address), negotiate)
        try:
            return int(await body(client))
        finally:
            await client.close()

    try:
        return asyncio.run(session())
    except CommandError as exc:
        return _fail(describe_error(args.address, exc), EXIT_COMMAND_ERROR)
    except BrokenPipeError:  # our reader went away (| head): stop quietly
        _silence_stdout()
        return EXIT_PIPE
    except UsageError as exc:
        return _fail(str(exc), EXIT_USAGE)
    except (QMPError, OSError, TimeoutError) as exc:
        return _fail(describe_error(args.address, exc), EXIT_CONNECTION)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


def cmd_exec(args: argparse.Namespace) -> int:
    from ._output import write_result

    arguments = parse_arguments(args.arguments)
    parse_address(args.address)  # a bad address is a usage error before connecting
    terminal = sys.stdout.isatty()

    async def body(client: Any) -> int:
        result = await client.execute(args.command, arguments)
        write_result(sys.stdout, args.command, result, pretty=terminal, terminal=terminal)
        sys.stdout.flush()
        return EXIT_OK

    return run_client(args, body)


def cmd_events(args: argparse.Namespace) -> int:
    from ._output import write_json

    if args.qga:
        raise UsageError("a guest agent sends no events")
    parse_address(args.address)

    async def body(client: Any) -> int:
        # Subscribe before qmp_capabilities: an event in the same read as
        # its reply is then queued here, not only in the backlog.
        events = client.events(*args.names)
        await client.negotiate(timeout=args.timeout)
        async for event in events:
            write_json(sys.stdout, event.raw)
            sys.stdout.flush()
        return EXIT_OK

    return run_client(args, body, negotiate=False)


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
    from ._proxy import add_proxy_parser, add_replay_argument, add_tls_arguments

    parser = argparse.ArgumentParser(
        prog="qmpcore",
        description="Talk to QEMU's QMP monitor or guest agent, serve simulated VMs, benchmark.",
        epilog=EXIT_HELP,
    )
    parser.add_argument("--version", action="version", version=f"qmpcore {__version__}")
    sub = parser.add_subparsers(dest="subcommand", metavar="COMMAND", required=True)

    def client(name: str, summary: str, qga: str | None, timeout: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=summary, description=summary[0].upper() + summary[1:] + ".", epilog=EXIT_HELP)
        p.add_argument("address", metavar="ADDRESS", help="unix socket path, host:port or [IPv6]:port")
        p.add_argument("--qga", action="store_true", help=qga or argparse.SUPPRESS)
        p.add_argument(
            "--timeout",
            type=_timeout,
            default=DEFAULT_TIMEOUT,
            metavar="SECONDS",
            help=f"{timeout} (default {DEFAULT_TIMEOUT:g})",
        )
        add_tls_arguments(p)
        return p

    qga = "talk to a guest agent (qemu-ga) instead of a QMP monitor"
    each = "for connecting and for each command"
    p = client("exec", "run one command and print its reply", qga, each)
    p.add_argument("command", metavar="COMMAND", help="the command's name, e.g. query-status")
    p.add_argument(
        "arguments",
        nargs="*",
        metavar="ARGS",
        help="one JSON object, or key=value words (value read as JSON when it parses; a.b=1 nests)",
    )
    p.set_defaults(handler=cmd_exec)

    p = client("events", "print events as they arrive, one JSON line each", None, "for connecting")
    p.add_argument("names", nargs="*", metavar="NAME", help="only these events (default: all)")
    p.set_defaults(handler=cmd_events)

    p = client("shell", "interactive shell with history and completion, or run a script", qga, each)
    p.add_argument("--history", metavar="FILE", help="history file (default $QMPCORE_HISTORY or ~/.qmpcore_history)")
    p.add_argument(
        "-f",
        "--file",
        metavar="FILE",
        help="run the lines of FILE as a script (as when input is not a terminal): stop at the first failure",
    )
    p.set_defaults(handler=cmd_shell)

    p = sub.add_parser(
        "serve",
        help="run simulated VMs on unix sockets (embedded server)",
        description="Serve simulated VMs' QMP monitors until SIGINT or SIGTERM; print each socket's path once "
        "it listens. A socket file already there is replaced only if nothing listens on it.",
        epilog="Exit status: 0 stopped by SIGINT or SIGTERM (sockets removed), 2 bad usage or a socket "
        "that cannot be created or is in use.",
    )
    p.add_argument(
        "path",
        metavar="PATH",
        help="the socket to create; with --vms N, the directory (created if missing) to create "
        "vm0.qmp ... vm<N-1>.qmp in",
    )
    p.add_argument("--vms", type=int, metavar="N", help="serve N simulated VMs with sockets in directory PATH")
    p.add_argument("--pretty", action="store_true", help="pretty-print replies like QEMU's pretty=on monitor")
    add_replay_argument(p)
    p.set_defaults(handler=cmd_serve)
    add_proxy_parser(sub)

    p = sub.add_parser(
        "bench", help="benchmark qmpcore beside its baselines", description=(bench.__doc__ or "").replace("``", "")
    )
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
