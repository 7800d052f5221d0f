"""``qmpcore shell``: an interactive QMP / guest agent prompt, or a script.

Lines are JSON (``{"execute": "stop"}``), ``command {"json": ...}`` or
``command key=value ...``.  Replies print as indented JSON (HMP output as
text); events print as they arrive, above the line being typed.  On a
terminal the prompt has line editing, a history file and tab completion of
command names (from ``query-commands``, or the guest agent's
``guest-info``).  Ctrl-D ends the session; Ctrl-C abandons the line being
typed or the command being waited for.

With ``-f FILE``, or when standard input is not a terminal, the lines are a
script: replies print one JSON line each, and the first line that fails
ends the run with its line number on stderr and a non-zero exit status (1
the command failed, 2 the line could not be understood, 3 the connection
broke or a command timed out).

The client runs on an event loop in a helper thread, so reading the
keyboard (blocking, in the main thread) never stops events from arriving.
Nothing the server sends can stop the shell: replies and events of any
shape print (or say why they could not), and the peer's text is escaped
before it reaches a terminal.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import sys
import threading
from concurrent.futures import Future
from typing import IO, Any

from ..errors import CommandError, ConnectionLost, QMPError
from . import (
    EXIT_COMMAND_ERROR,
    EXIT_CONNECTION,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    UsageError,
    connect,
    describe_error,
    parse_address,
    parse_line,
)
from ._output import allow_long_integers, dump, one_line, printable, write_result

__all__ = ["run_shell"]

HISTORY_LENGTH = 1000


class _LoopThread:
    """An event loop running in a daemon thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="qmpcore-shell", daemon=True)
        self._thread.start()

    def submit(self, coro: Any) -> Future[Any]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=5)
        if not self._thread.is_alive():
            self.loop.close()


class _Console:
    """Output that does not trample the line being typed."""

    def __init__(self, interactive: bool, prompt: str, script: IO[str] | None = None) -> None:
        self.interactive = interactive
        self.prompt = prompt
        self.terminal = sys.stdout.isatty()
        self.line_number = 0
        self.at_prompt = False
        self._script = script
        self._lock = threading.Lock()
        self._readline: Any = None
        if interactive:
            try:
                import readline

                self._readline = readline
            except ImportError:  # no GNU readline here: plain input()
                pass

    def read(self) -> str:
        """One line from the user or the script; EOFError at the end."""
        if self._script is not None:
            line = self._script.readline()
            if not line:
                raise EOFError
            self.line_number += 1
            return line.rstrip("\r\n")
        with self._lock:
            self.at_prompt = True
        try:
            line = input(self.prompt if self.interactive else "")
        finally:
            with self._lock:
                self.at_prompt = False
        self.line_number += 1
        return line

    def show(self, text: str) -> None:
        """Print a message (the caller is not at the prompt)."""
        with self._lock:
            sys.stdout.write(text + "\n")
            sys.stdout.flush()

    def show_result(self, command: str, result: Any) -> None:
        """Print a command's result: indented JSON, or HMP output as text."""
        with self._lock:
            write_result(sys.stdout, command, result, pretty=self.interactive, terminal=self.terminal)
            sys.stdout.flush()

    def show_event(self, raw: Any) -> None:
        """Print an event as one JSON line, redrawing the prompt below it."""
        self.show_async(dump(raw))  # formatted before taking the lock

    def show_async(self, text: str) -> None:
        """Print a line that arrived by itself (above the prompt being typed at)."""
        with self._lock:
            redraw = self.at_prompt and self.interactive
            sys.stdout.write(f"\r\x1b[K{text}\n" if redraw else f"{text}\n")
            if redraw:
                typed = self._readline.get_line_buffer() if self._readline else ""
                sys.stdout.write(f"{self.prompt}{typed}")
            sys.stdout.flush()

    def setup_readline(self, history: str, commands: list[str], schema: Any = None) -> None:
        readline = self._readline
        if readline is None:
            return
        try:
            readline.read_history_file(history)
        except (OSError, ValueError):
            pass
        readline.set_history_length(HISTORY_LENGTH)
        names = sorted(commands)

        def complete(text: str, state: int) -> str | None:
            line = readline.get_line_buffer()
            if schema is not None:  # argument names and enum values too
                from ._schema import completions

                matches = completions(schema, line[: readline.get_begidx()], text)
                return matches[state] if state < len(matches) else None
            if line[: readline.get_begidx()].strip():
                return None  # only the command name is completed
            matches = [n + " " for n in names if n.startswith(text)]
            return matches[state] if state < len(matches) else None

        readline.set_completer_delims(" \t")
        readline.set_completer(complete)
        binding = "bind ^I rl_complete" if "libedit" in (readline.__doc__ or "") else "tab: complete"
        readline.parse_and_bind(binding)

    def save_history(self, history: str) -> None:
        if self._readline is None:
            return
        try:
            self._readline.write_history_file(history)
        except OSError as exc:
            print(f"qmpcore: cannot save history to {history}: {exc}", file=sys.stderr)


def _history_path(args: argparse.Namespace) -> str:
    return args.history or os.environ.get("QMPCORE_HISTORY") or os.path.expanduser("~/.qmpcore_history")


#: Completion keeps at most this many command names (QEMU 7.2 has about 230).
MAX_COMMAND_NAMES = 4096


# What a QAPI command name can be (downstream ones look like __com.redhat_x).
_COMMAND_NAME = re.compile(r"[A-Za-z0-9_.+-]{1,128}")


def _names(entries: Any, key: str = "name") -> list[str]:
    """The ``name`` members of a list of objects that can be command names;
    anything else (numbers, objects, escape sequences) is ignored."""
    if not isinstance(entries, list):
        return []
    found = {
        e[key]
        for e in entries
        if isinstance(e, dict)
        and isinstance(e.get(key), str)
        and _COMMAND_NAME.fullmatch(e[key])
        and e.get("enabled", True)
    }
    return sorted(found)[:MAX_COMMAND_NAMES]


async def _command_names(client: Any, qga: bool, timeout: float) -> list[str]:
    """Command names the server knows, for completion (empty if it will not say)."""
    try:
        if qga:
            info = await client.execute("guest-info", timeout=timeout)
            return _names(info.get("supported_commands") if isinstance(info, dict) else None)
        return _names(await client.execute("query-commands", timeout=timeout))
    except QMPError:
        return []


async def _schema_of(client: Any, timeout: float | None) -> Any:
    """QEMU's schema for completion and ``help``, or None if it will not say
    (asked once per connection)."""
    try:
        return await client.schema(timeout=timeout)
    except (QMPError, ValueError, KeyError, TypeError, AttributeError):
        return None


async def _print_events(console: _Console, client: Any, leaving: threading.Event) -> None:
    """Print events as they come; say so when the server ends the connection.

    An event that cannot be printed is reported and the next one printed:
    nothing a server sends ends this loop early.
    """
    try:
        async for event in client.events():
            try:
                console.show_event(event.raw)
            except (ValueError, TypeError, RecursionError, MemoryError) as exc:
                console.show_async(f"(an event could not be shown: {type(exc).__name__}: {exc})")
        why = "the server closed the connection"
    except QMPError as exc:
        why = one_line(str(exc), console.terminal)
    except Exception as exc:  # a bug here must not end the printing silently
        why = f"events stopped: {type(exc).__name__}: {one_line(str(exc), console.terminal)}"
    if leaving.is_set():
        return
    if console.interactive:
        console.show_async(f"({why}; Ctrl-D to leave)")
    else:
        print(f"qmpcore: ({why})", file=sys.stderr, flush=True)


def _wait(future: Future[Any]) -> Any:
    """The future's result; Ctrl-C cancels the command instead of the shell."""
    try:
        return future.result()
    except KeyboardInterrupt:
        future.cancel()
        raise


def _open_script(args: argparse.Namespace) -> IO[str] | None:
    if not getattr(args, "file", None):
        return None
    try:
        return open(args.file, encoding="utf-8", errors="surrogateescape")
    except OSError as exc:
        raise UsageError(f"cannot read the script {args.file}: {exc.strerror or exc}") from None


def run_shell(args: argparse.Namespace) -> int:
    """Run the shell until end of input (or the first failure of a script)."""
    address = parse_address(args.address)
    script = _open_script(args)
    try:
        return _run(args, address, script)
    finally:
        if script is not None:
            script.close()


def _run(args: argparse.Namespace, address: str | tuple[str, int], script: IO[str] | None) -> int:
    allow_long_integers()
    interactive = script is None and sys.stdin.isatty()
    console = _Console(interactive, "qga> " if args.qga else "qmp> ", script)
    runner = _LoopThread()
    status = EXIT_OK
    try:
        try:
            client = _wait(runner.submit(connect(args, address)))
        except (QMPError, OSError, TimeoutError) as exc:
            print(f"qmpcore: {one_line(describe_error(args.address, exc), sys.stderr.isatty())}", file=sys.stderr)
            return EXIT_CONNECTION
        except KeyboardInterrupt:
            return EXIT_INTERRUPTED
        history = _history_path(args)
        if interactive:
            names = _wait(runner.submit(_command_names(client, args.qga, args.timeout)))
            schema = None if args.qga else _wait(runner.submit(_schema_of(client, args.timeout)))
            console.setup_readline(history, names, schema)
            version = getattr(client, "version", None)
            where = f"QEMU {version.major}.{version.minor}.{version.micro}" if version else "guest agent"
            console.show(f"Connected to {one_line(where, True)} at {one_line(args.address, True)}. Ctrl-D to leave.")
        leaving = threading.Event()
        if not args.qga:
            runner.submit(_print_events(console, client, leaving))
        try:
            status = _loop(console, runner, client, script_name=getattr(args, "file", None))
        finally:
            leaving.set()
            if interactive:
                console.save_history(history)
            runner.submit(client.close()).result(timeout=5)
    finally:
        runner.stop()
    return status


def _failed(console: _Console, script_name: str | None, message: str, status: int) -> int | None:
    """Report a failed line; in a script that ends the run (returns the status)."""
    if console.interactive:
        console.show(f"error: {one_line(message, console.terminal)}")
        return None
    where = f"{script_name}, line" if script_name else "line"
    print(f"qmpcore: {where} {console.line_number}: {one_line(message, sys.stderr.isatty())}", file=sys.stderr)
    sys.stderr.flush()
    return status


def _loop(console: _Console, runner: _LoopThread, client: Any, script_name: str | None = None) -> int:
    while True:
        try:
            line = console.read()
        except EOFError:
            if console.interactive:
                console.show("")
            return EXIT_OK
        except KeyboardInterrupt:
            if not console.interactive:
                return EXIT_INTERRUPTED
            console.show("")
            continue
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if line.split()[0] == "help":
            from ._schema import shell_help

            text = shell_help(_wait(runner.submit(_schema_of(client, None))), line.split()[1:])
            console.show(printable(text, console.terminal))  # names come from the peer
            continue
        try:
            command, arguments = parse_line(line)
        except UsageError as exc:
            status = _failed(console, script_name, str(exc), EXIT_USAGE)
            if status is not None:
                return status
            continue
        try:
            result = _wait(runner.submit(client.execute(command, arguments)))
        except KeyboardInterrupt:
            if not console.interactive:
                return EXIT_INTERRUPTED
            console.show("interrupted")
            continue
        except CommandError as exc:
            status = _failed(console, script_name, f"{exc.error_class}: {exc.desc}", EXIT_COMMAND_ERROR)
        except ConnectionLost as exc:
            _failed(console, script_name, str(exc), EXIT_CONNECTION)
            return EXIT_CONNECTION
        except QMPError as exc:  # timeouts; a closed client
            status = _failed(console, script_name, str(exc), EXIT_CONNECTION)
            if client.closed:
                return EXIT_CONNECTION
        except Exception as exc:  # anything else the client raised: say so, stay alive
            status = _failed(console, script_name, f"{type(exc).__name__}: {exc}", EXIT_USAGE)
        else:
            try:
                console.show_result(command, result)
            except (ValueError, TypeError, RecursionError, MemoryError) as exc:
                status = _failed(console, script_name, f"the reply could not be shown: {exc}", EXIT_COMMAND_ERROR)
            else:
                continue
        if status is not None:
            return status
