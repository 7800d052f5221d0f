"""Translations between qmpcore's clients and the compat APIs.

Shared by every adapter: command messages, error replies, raw messages
with caller-chosen ids, and the greeting model.
"""

from __future__ import annotations

import os
import socket
import stat
from collections.abc import Mapping
from typing import Any

from ..errors import CommandError, ConnectionLost
from ..errors import ConnectError as _CoreConnectError
from ..errors import ProtocolError as _CoreProtocolError
from ..errors import TimeoutError as _CoreTimeoutError
from ._errors import (
    BadReplyError,
    ConnectError,
    ExecuteError,
    GreetingError,
    NegotiationError,
)
from ._message import Message
from ._models import ErrorResponse, Greeting

__all__ = [
    "MAX_FRAME_SIZE",
    "command_message",
    "execute_error",
    "RawCommand",
    "greeting_or_error",
    "connect_error",
    "listen_socket",
    "split_address",
]

#: Largest frame the adapters accept (QEMU's own input limit).
MAX_FRAME_SIZE = 64 << 20

#: Prefix of the ids qemu.qmp assigns itself (callers may not use it).
RESERVED_ID_PREFIX = "__qmp#"


def command_message(command: str, arguments: Mapping[str, object] | None, oob: bool, wire_id: Any = None) -> Message:
    """The message qemu.qmp would have sent: ``execute``/``exec-oob``,
    ``arguments`` when given, then ``id``."""
    msg: dict[str, object] = {"exec-oob" if oob else "execute": command}
    if arguments is not None:
        msg["arguments"] = arguments
    if wire_id is not None:
        msg["id"] = wire_id
    return Message._from_dict(msg)


def execute_error(
    err: CommandError, command: str, arguments: Mapping[str, object] | None, oob: bool
) -> ExecuteError | BadReplyError:
    """The qemu.qmp exception for a qmpcore :class:`CommandError`."""
    raw = err.reply if isinstance(err.reply, dict) else {"error": {"class": err.error_class, "desc": err.desc}}
    received = Message._from_dict(raw)
    sent = command_message(command, arguments, oob, raw.get("id"))
    try:
        response = ErrorResponse(received)
    except (KeyError, TypeError):
        return BadReplyError("QMP error reply is malformed", received, sent)
    return ExecuteError(response, sent, received)


_COMMAND_MEMBERS = frozenset(("execute", "exec-oob", "arguments", "id"))


class RawCommand:
    """A whole command message from the caller, as the legacy APIs take it.

    qmpcore assigns the id on the wire; the caller's ``id`` (or its absence)
    is put back into the reply, so the caller sees what it would have seen.
    """

    __slots__ = ("command", "arguments", "oob", "has_id", "id")

    def __init__(
        self, command: str, arguments: dict | None = None, oob: bool = False, has_id: bool = False, id: Any = None
    ) -> None:
        self.command = command
        self.arguments = arguments
        self.oob = oob
        self.has_id = has_id
        self.id = id

    @classmethod
    def parse(cls, msg: Mapping[str, Any], *, check_id: bool = True) -> RawCommand:
        """Check ``msg``; ``check_id`` applies qemu.qmp's rules (a string, not
        starting with ``__qmp#``)."""
        has_id = "id" in msg
        mid = msg.get("id")
        if check_id and has_id:
            if not isinstance(mid, str):
                raise TypeError(f"ID ('{mid}') must be a string.")
            if mid.startswith(RESERVED_ID_PREFIX):
                raise ValueError(f"ID ('{mid}') must not start with '{RESERVED_ID_PREFIX}'.")
        oob = "exec-oob" in msg
        if msg.keys() - _COMMAND_MEMBERS or ("execute" in msg) == oob:
            raise ValueError(
                "a command message needs exactly one of 'execute' and 'exec-oob' and may "
                f"only add 'arguments' and 'id'; got members {sorted(msg)}"
            )
        arguments = msg.get("arguments")
        if isinstance(arguments, Mapping) and type(arguments) is not dict:
            arguments = dict(arguments)
        return cls(msg["exec-oob" if oob else "execute"], arguments, oob, has_id, mid)

    def reply(self, value: Any = None, error: CommandError | None = None) -> dict[str, Any]:
        """The reply dict with the caller's id, in QEMU's member order."""
        if error is None:
            if self.has_id:
                return {"return": value, "id": self.id}
            return {"return": value}
        raw = (
            error.reply
            if isinstance(error.reply, dict)
            else {"error": {"class": error.error_class, "desc": error.desc}}
        )
        out: dict[str, Any] = {}
        for key, item in raw.items():
            if key != "id":
                out[key] = item
            elif self.has_id:
                out[key] = self.id
        if self.has_id and "id" not in out:
            out["id"] = self.id
        return out


def greeting_or_error(raw: dict | None) -> Greeting:
    """qemu.qmp's :class:`Greeting` view of a greeting qmpcore received;
    :class:`GreetingError` if it lacks what qemu.qmp requires."""
    try:
        return Greeting(Message._from_dict(raw or {}))
    except (KeyError, TypeError) as exc:
        raise GreetingError("Did not understand Greeting", exc) from exc


def connect_error(exc: Exception) -> ConnectError:
    """qemu.qmp's error for a failed connect: the socket could not be opened
    ("connection"), or the greeting or negotiation failed ("session")."""
    if isinstance(exc, _CoreConnectError) and not isinstance(
        exc, (_CoreProtocolError, ConnectionLost, _CoreTimeoutError)
    ):
        if isinstance(exc.__cause__, Exception):  # report what qemu.qmp reports: the socket's own error
            exc = exc.__cause__
    if isinstance(exc, CommandError):
        cause: Exception = NegotiationError("Negotiation failed", exc)
    elif isinstance(exc, _CoreProtocolError):
        cause = GreetingError("Did not understand Greeting", exc)
    elif isinstance(exc, ConnectionLost):
        cause = EOFError()  # the server hung up instead of greeting
        cause.__cause__ = exc
    elif isinstance(exc, _CoreTimeoutError):
        cause = exc
    else:
        return ConnectError("Failed to establish connection", exc)
    return ConnectError("Failed to establish session", cause)


def listen_socket(address: str | tuple[str, int], backlog: int = 1) -> socket.socket:
    """A socket listening on a unix path (a stale socket file there is
    replaced) or on ``(host, port)``."""
    if isinstance(address, tuple):
        host, port = address
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        target: Any = (host, port)
    else:
        path = os.fspath(address)
        try:
            if stat.S_ISSOCK(os.stat(path).st_mode):
                os.unlink(path)
        except FileNotFoundError:
            pass
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        target = path
    try:
        sock.bind(target)
        sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    return sock


def split_address(address: str, bad_port: type) -> str | tuple[str, int]:
    """``"host:port"`` becomes ``(host, port)``; anything else is a path.
    A non-numeric port raises ``bad_port`` with qemu.qmp's message."""
    parts = address.split(":")
    if len(parts) != 2:
        return address
    host, port = parts
    try:
        return (host, int(port))
    except ValueError:
        raise bad_port(f"Bad port: '{port}' in '{address}'.") from None
