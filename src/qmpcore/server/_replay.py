"""``qmpcore serve --replay FILE``: a QMP server answering from a recording.

A recording is a transcript in the corpus format (``C:``/``S:`` lines of
Python bytes literals), as ``qmpcore proxy --record`` writes it (with
``# @SECONDS client N`` lines saying whose each line is) or as the
recorded QEMU sessions in ``tests/data/corpus`` are (one client).

Each client of the replay server gets the recorded greeting, then, for
each command it sends, the reply recorded for the same command with the
same arguments (the first one not yet replayed to it, then the last one
again), with the client's own id; events recorded between that command
and the next come first, as QEMU sent them.  A command the recording
does not have is answered with a ``GenericError`` saying so.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import os
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import orjson

from ..framing import Framer
from ..protocol._qemu_output import encode_qmp
from ._transport import Address, Connection, Listener, bind_socket

__all__ = ["Recording", "Exchange", "load_recording", "ReplayServer", "serve_replay"]

_CLIENT_LINE = re.compile(r"^# @[0-9.]+ client (\d+)")
_NO_ID = object()
_DEFAULT_GREETING = {
    "QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}, "package": ""}, "capabilities": ["oob"]}
}


@dataclass
class Exchange:
    """One recorded command, what answered it and the events around it."""

    command: str
    arguments_key: bytes
    reply: dict[str, Any] | None = None
    events: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Recording:
    """The commands of a recording, by ``(command, arguments)``."""

    path: str
    greeting: dict[str, Any]
    exchanges: dict[tuple[str, bytes], list[Exchange]]

    def __len__(self) -> int:
        return sum(len(found) for found in self.exchanges.values())


def _arguments_key(arguments: Any) -> bytes:
    return orjson.dumps(arguments or {}, option=orjson.OPT_SORT_KEYS)


def _id_key(message: dict[str, Any]) -> Any:
    return orjson.dumps(message["id"], option=orjson.OPT_SORT_KEYS) if "id" in message else _NO_ID


def load_recording(path: str | os.PathLike[str]) -> Recording:
    """Read a transcript; raise ValueError naming the line that cannot be read."""
    path = os.fspath(path)
    streams: dict[int, list[tuple[str, bytes]]] = {}
    client = 0
    with open(path, encoding="utf-8") as file:
        for number, line in enumerate(file, 1):
            found = _CLIENT_LINE.match(line)
            if found is not None:
                client = int(found.group(1))
                continue
            side, sep, rest = line.rstrip("\n").partition(": ")
            if not sep or side not in ("C", "S") or not rest.startswith(("b'", 'b"')):
                continue  # comments, titles, <nothing ...> notes
            try:
                data = ast.literal_eval(rest)
            except (ValueError, SyntaxError):
                raise ValueError(f"{path}:{number}: not a bytes literal") from None
            if not isinstance(data, bytes):
                raise ValueError(f"{path}:{number}: not a bytes literal")
            streams.setdefault(client, []).append((side, data))
    greeting: dict[str, Any] | None = None
    exchanges: dict[tuple[str, bytes], list[Exchange]] = {}
    for steps in streams.values():
        client_in, server_out = Framer(strict=False), Framer(strict=False)
        by_id: dict[Any, Exchange] = {}
        last: Exchange | None = None
        for side, data in steps:
            for message in (client_in if side == "C" else server_out).feed(data):
                if type(message) is not dict:
                    continue
                if side == "C":
                    name = message.get("execute", message.get("exec-oob"))
                    if not isinstance(name, str):
                        continue
                    last = Exchange(name, _arguments_key(message.get("arguments")))
                    exchanges.setdefault((name, last.arguments_key), []).append(last)
                    by_id[_id_key(message)] = last
                elif "QMP" in message:
                    greeting = greeting or message
                elif "event" in message:
                    if last is not None:
                        last.events.append(message)
                elif "return" in message or "error" in message:
                    target = by_id.pop(_id_key(message), None) or last
                    if target is not None and target.reply is None:
                        target.reply = message
    return Recording(path, greeting or _DEFAULT_GREETING, exchanges)


class _ReplaySession:
    """One client of the replay server."""

    def __init__(self, recording: Recording) -> None:
        self.recording = recording
        self.framer = Framer(strict=False)
        self.used: dict[tuple[str, bytes], int] = {}
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        transport.write(encode_qmp(self.recording.greeting))

    def data_received(self, data: bytes) -> None:
        out = []
        for message in self.framer.feed(data):
            if type(message) is not dict:
                out.append(encode_qmp({"error": {"class": "GenericError", "desc": "JSON parse error"}}))
                continue
            out.append(self._answer(message))
        if out:
            self.transport.write(b"".join(out))

    def _answer(self, message: dict[str, Any]) -> bytes:
        name = message.get("execute", message.get("exec-oob"))
        if not isinstance(name, str):
            return self._reply(
                message, {"error": {"class": "GenericError", "desc": "QMP input lacks member 'execute'"}}
            )
        key = (name, _arguments_key(message.get("arguments")))
        found = self.recording.exchanges.get(key)
        if not found:
            desc = f"qmpcore replay: {name} with these arguments is not in {os.path.basename(self.recording.path)}"
            return self._reply(message, {"error": {"class": "GenericError", "desc": desc}})
        index = self.used.get(key, 0)
        self.used[key] = index + 1
        exchange = found[min(index, len(found) - 1)]
        events = b"".join(encode_qmp(event) for event in exchange.events)
        if exchange.reply is None:  # e.g. quit: QEMU closed instead of answering
            return events
        reply = {k: v for k, v in exchange.reply.items() if k != "id"}
        return events + self._reply(message, reply)

    @staticmethod
    def _reply(message: dict[str, Any], reply: dict[str, Any]) -> bytes:
        if "id" in message:
            # QEMU's member order: "return" before "id", "id" before "error".
            reply = {"id": message["id"], **reply} if "error" in reply else {**reply, "id": message["id"]}
        return encode_qmp(reply)

    def connection_lost(self, exc: BaseException | None) -> None:
        self.transport = None

    def pause_writing(self) -> None:
        pass

    def resume_writing(self) -> None:
        pass


class ReplayServer:
    """Serve ``recording`` on ``address`` (any number of clients, each replayed on its own)."""

    def __init__(self, recording: Recording, address: Address, *, mode: int = 0o600) -> None:
        self.recording = recording
        self._requested = address
        self._mode = mode
        self._listener: Listener | None = None
        self._connections: list[Connection] = []

    @property
    def address(self) -> Any:
        return self._listener.address if self._listener is not None else self._requested

    async def start(self) -> ReplayServer:
        loop = asyncio.get_running_loop()
        self._listener = Listener(loop, bind_socket(self._requested, mode=self._mode), self._accept)
        return self

    def _accept(self, sock: Any) -> None:
        self._connections = [c for c in self._connections if not c.is_closing()]
        self._connections.append(Connection(asyncio.get_running_loop(), sock, _ReplaySession(self.recording)))

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        for connection in self._connections:
            connection.close()
        self._connections.clear()
        await asyncio.sleep(0)


@contextlib.asynccontextmanager
async def serve_replay(recording: str | os.PathLike[str], address: Address) -> AsyncIterator[ReplayServer]:
    """Serve the recording in file ``recording`` on ``address`` until the block ends."""
    server = await ReplayServer(load_recording(recording), address).start()
    try:
        yield server
    finally:
        await server.close()
