"""``qmpcore shell``: an interactive QMP / guest agent prompt.

Lines are JSON (``{"execute": "stop"}``) or ``command key=value ...``.
Replies print as indented JSON; events print as they arrive, above the
line being typed.  On a terminal the prompt has line editing, a history
file and tab completion of command names (from ``query-commands``, or the
guest agent's ``guest-info``).  Ctrl-D ends the session; Ctrl-C abandons
the line being typed or the command being waited for.

The client runs on an event loop in a helper thread, so reading the
keyboard (blocking, in the main thread) never stops events from arriving.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from ..errors import CommandError, ConnectionLost, QMPError
from . import (
    EXIT_CONNECTION,
    EXIT_OK,
    UsageError,
    connect,
    dump,
    parse_address,
    parse_line,
)

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

    def __init__(self, interactive: bool, prompt: str) -> None:
        self.interactive = interactive
        self.prompt = prompt
        self.at_prompt = False
        self._lock = threading.Lock()
        self._readline: Any = None
        if interactive:
            try:
                import readline

                self._readline = readline
            except ImportError:  # no GNU readline here: plain input()
                pass

    def read(self) -> str:
        """One line from the user; EOFError at the end."""
        with self._lock:
            self.at_prompt = True
        try:
            return input(self.prompt if self.interactive else "")
        finally:
            with self._lock:
                self.at_prompt = False

    def show(self, text: str) -> None:
        """Print a reply or message (the caller is not at the prompt)."""
        with self._lock:
            sys.stdout.write(text + "\n")
            sys.stdout.flush()

    def show_async(self, text: str) -> None:
        """Print an event, redrawing the prompt and typed text below it."""
        with self._lock:
            if self.at_prompt and self.interactive:
                typed = self._readline.get_line_buffer() if self._readline else ""
                sys.stdout.write(f"\r\x1b[K{text}\n{self.prompt}{typed}")
            else:
                sys.stdout.write(text + "\n")
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


async def _command_names(client: Any, qga: bool, timeout: float) -> list[str]:
    """Command names the server knows, for completion (empty if it will not say)."""
    try:
        if qga:
            info = await client.execute("guest-info", timeout=timeout)
            return [c["name"] for c in info.get("supported_commands", []) if c.get("enabled", True)]
        return [c["name"] for c in await client.execute("query-commands", timeout=timeout)]
    except (QMPError, KeyError, TypeError, AttributeError):
        return []


async def _schema_of(client: Any, timeout: float | None) -> Any:
    """QEMU's schema for completion and ``help``, or None if it will not say
    (asked once per connection)."""
    try:
        return await client.schema(timeout=timeout)
    except (QMPError, ValueError, KeyError, TypeError, AttributeError):
        return None


async def _print_events(client: Any, show: Callable[[str], None], leaving: threading.Event) -> None:
    """Print events as they come; say so when the server ends the connection."""
    try:
        async for event in client.events():
            show(dump(event.raw, False))
        why = "the server closed the connection"
    except QMPError as exc:
        why = str(exc)
    if not leaving.is_set():
        show(f"({why}; Ctrl-D to leave)")


def _wait(future: Future[Any]) -> Any:
    """The future's result; Ctrl-C cancels the command instead of the shell."""
    try:
        return future.result()
    except KeyboardInterrupt:
        future.cancel()
        raise


def run_shell(args: argparse.Namespace) -> int:
    """Run the interactive shell until end of input; return the exit status."""
    address = parse_address(args.address)
    interactive = sys.stdin.isatty()
    console = _Console(interactive, "qga> " if args.qga else "qmp> ")
    runner = _LoopThread()
    status = EXIT_OK
    try:
        try:
            client = _wait(runner.submit(connect(args, address)))
        except (QMPError, OSError, TimeoutError) as exc:
            print(f"qmpcore: {args.address}: {exc}", file=sys.stderr)
            return EXIT_CONNECTION
        history = _history_path(args)
        if interactive:
            names = _wait(runner.submit(_command_names(client, args.qga, args.timeout)))
            schema = None if args.qga else _wait(runner.submit(_schema_of(client, args.timeout)))
            console.setup_readline(history, names, schema)
            version = getattr(client, "version", None)
            where = f"QEMU {version.major}.{version.minor}.{version.micro}" if version else "guest agent"
            console.show(f"Connected to {where} at {args.address}. Ctrl-D to leave.")
        leaving = threading.Event()
        if not args.qga:
            runner.submit(_print_events(client, console.show_async, leaving))
        try:
            status = _loop(console, runner, client)
        finally:
            leaving.set()
            if interactive:
                console.save_history(history)
            runner.submit(client.close()).result(timeout=5)
    finally:
        runner.stop()
    return status


def _loop(console: _Console, runner: _LoopThread, client: Any) -> int:
    while True:
        try:
            line = console.read()
        except EOFError:
            if console.interactive:
                console.show("")
            return EXIT_OK
        except KeyboardInterrupt:
            console.show("")
            continue
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if line.split()[0] == "help":
            from ._schema import shell_help

            console.show(shell_help(_wait(runner.submit(_schema_of(client, None))), line.split()[1:]))
            continue
        try:
            command, arguments = parse_line(line)
        except UsageError as exc:
            console.show(f"error: {exc}")
            continue
        try:
            result = _wait(runner.submit(client.execute(command, arguments)))
        except KeyboardInterrupt:
            console.show("interrupted")
            continue
        except CommandError as exc:
            console.show(f"error: {exc.error_class}: {exc.desc}")
            continue
        except ConnectionLost as exc:
            console.show(f"error: {exc}")
            return EXIT_CONNECTION
        except QMPError as exc:  # timeouts; a closed client
            console.show(f"error: {exc}")
            if client.closed:
                return EXIT_CONNECTION
            continue
        console.show(dump(result, console.interactive))
