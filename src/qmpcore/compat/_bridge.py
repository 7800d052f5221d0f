"""Translations between qmpcore's clients and the compat APIs.

Shared by every adapter: command messages, error replies, raw messages
with caller-chosen ids, and the greeting model.
"""

from __future__ import annotations

import asyncio
import builtins
import errno
import inspect
import logging
import os
import socket
import ssl
import stat
from collections import deque
from collections.abc import Callable, Mapping
from ssl import SSLContext
from typing import Any, cast

from ..errors import CommandError, ConnectionLost, TLSError
from ..errors import ConnectError as _CoreConnectError
from ..errors import ProtocolError as _CoreProtocolError
from ..errors import TimeoutError as _CoreTimeoutError
from ._errors import (
    BadReplyError,
    ConnectError,
    ExecuteError,
    GreetingError,
    NegotiationError,
    ProtocolError,
    QMPError,
)
from ._message import Message
from ._models import ErrorResponse, Greeting
from ._util import exception_summary

__all__ = [
    "MAX_FRAME_SIZE",
    "command_message",
    "execute_error",
    "exec_id",
    "tls_arguments",
    "plain_error",
    "log_connect_failure",
    "broken_send",
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


def exec_id(number: int) -> str:
    """qemu.qmp's id for its ``number``-th command (``"__qmp#00000"``)."""
    return f"{RESERVED_ID_PREFIX}{number:05d}"


def execute_error(
    err: CommandError, command: str, arguments: Mapping[str, object] | None, oob: bool, wire_id: Any = None
) -> ExecuteError | BadReplyError:
    """The qemu.qmp exception for a qmpcore :class:`CommandError`; the
    messages carry ``wire_id`` (the id qemu.qmp would have used) if given."""
    raw = err.reply if isinstance(err.reply, dict) else {"error": {"class": err.error_class, "desc": err.desc}}
    if wire_id is not None and "id" in raw:
        raw = {key: (wire_id if key == "id" else value) for key, value in raw.items()}
    received = Message._from_dict(cast(dict[str, object], raw))
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
        self,
        command: str,
        arguments: dict[str, Any] | None = None,
        oob: bool = False,
        has_id: bool = False,
        id: Any = None,
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


def greeting_or_error(raw: dict[str, Any] | None) -> Greeting:
    """qemu.qmp's :class:`Greeting` view of a greeting qmpcore received;
    :class:`GreetingError` if it lacks what qemu.qmp requires."""
    try:
        return Greeting(Message._from_dict(raw or {}))
    except (KeyError, TypeError) as exc:
        raise GreetingError("Did not understand Greeting", exc) from exc


def connect_error(exc: Exception) -> ConnectError:
    """qemu.qmp's error for a failed connect: the socket could not be opened
    ("connection"), or the greeting or negotiation failed ("session").
    ``exc`` is the root cause (never a qmpcore class) and should be raised
    as ``__cause__``, as qemu.qmp does."""
    if isinstance(exc, _CoreConnectError) and not isinstance(
        exc, (_CoreProtocolError, ConnectionLost, _CoreTimeoutError)
    ):
        if isinstance(exc.__cause__, Exception):  # report what qemu.qmp reports: the socket's own error
            exc = exc.__cause__
    if isinstance(exc, CommandError):
        cause: Exception = NegotiationError("Negotiation failed", AssertionError())
    elif isinstance(exc, _CoreProtocolError):
        cause = GreetingError("Did not understand Greeting", ProtocolError(str(exc)))
    elif isinstance(exc, (ConnectionLost, _CoreTimeoutError)):
        cause = plain_error(exc)
    else:
        return ConnectError("Failed to establish connection", plain_error(exc))
    return ConnectError("Failed to establish session", cause)


def log_connect_failure(logger: logging.Logger, error: ConnectError) -> None:
    """Log a failed connect at ERROR as qemu.qmp does: the failed step
    (greeting, negotiation), then the phase."""
    cause = error.exc
    if isinstance(cause, GreetingError):
        logger.error("Did not understand Greeting: %s", exception_summary(cause.exc))
    elif isinstance(cause, NegotiationError):
        logger.error("Negotiation failed: %s", exception_summary(cause.exc))
    elif error.error_message == "Failed to establish session" and isinstance(cause, (EOFError, OSError)):
        logger.error("Failed to receive Greeting: %s", exception_summary(cause))
    logger.error("%s: %s", error.error_message, exception_summary(cause))


def plain_error(exc: Exception) -> Exception:
    """``exc`` as the error qemu.qmp would have shown: qmpcore's own classes
    become builtin ones (an errno is kept), so none leaks through an adapter."""
    module = type(exc).__module__
    if not module.startswith("qmpcore.") or module.startswith("qmpcore.compat"):
        return exc
    if isinstance(exc, TLSError):
        # qemu.qmp shows the ssl module's error (or EOFError when QEMU hangs
        # up on a refused certificate): keep its class, with qmpcore's words.
        cause = exc.__cause__
        if isinstance(cause, ssl.SSLError):
            return type(cause)(str(exc))
        return EOFError(str(exc)) if exc.reason == "refused" else ssl.SSLError(str(exc))
    if isinstance(exc, builtins.TimeoutError):  # qmpcore's TimeoutError
        return asyncio.TimeoutError()
    if isinstance(exc, ConnectionLost):  # the server hung up
        return EOFError()
    if isinstance(exc, OSError) and exc.errno is not None:
        return OSError(exc.errno, exc.strerror or os.strerror(exc.errno))
    return QMPError(str(exc))


def broken_send(err: Exception) -> OSError:
    """The ``OSError`` a failed ``sendmsg`` raised under qmpcore's error
    (qemu.qmp calls ``sendmsg`` itself and lets it through)."""
    cause = err.__cause__
    if isinstance(cause, OSError) and cause.errno is not None:
        return OSError(cause.errno, cause.strerror or os.strerror(cause.errno))
    return BrokenPipeError(errno.EPIPE, os.strerror(errno.EPIPE))


def tls_arguments(ssl: SSLContext | None, connect: Callable[..., Any]) -> dict[str, Any]:
    """``{"ssl": ssl}`` for qmpcore's ``connect``; ``{}`` without TLS.

    :raise NotImplementedError: when this qmpcore's connect takes no ``ssl``.
    """
    if ssl is None:
        return {}
    if "ssl" not in inspect.signature(connect).parameters:
        raise NotImplementedError(
            "TLS needs a qmpcore whose connect() accepts ssl=; this one does not (connect without ssl=)"
        )
    return {"ssl": ssl}


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
    except OSError as err:
        sock.close()
        # asyncio's wording, which qemu.qmp's errors carry
        if isinstance(address, tuple):
            why = (err.strerror or str(err)).lower()
            raise OSError(err.errno, f"error while attempting to bind on address {target!r}: {why}") from None
        if err.errno == errno.EADDRINUSE:
            raise OSError(errno.EADDRINUSE, f"Address {target!r} is already in use") from None
        raise
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


class LateReplies:
    """Commands an adapter gave up on, to log their late replies as qemu.qmp does.

    qmpcore drops a reply to an abandoned command and counts it
    (``counters["late_replies"]``); qemu.qmp logs ``Unknown ID '...', message
    dropped.`` at WARNING instead.  The adapters note each abandoned id here
    and, when they next look at the client, log one line per late reply.
    """

    __slots__ = ("abandoned", "seen")

    #: Abandoned ids remembered (the oldest are forgotten first).
    kept = 1000

    def __init__(self) -> None:
        self.abandoned: deque[object] = deque(maxlen=self.kept)
        self.seen = 0  # late replies already logged

    def reset(self) -> None:
        """A new connection: nothing abandoned, nothing seen."""
        self.abandoned.clear()
        self.seen = 0

    def note(self, logger: logging.Logger, late_replies: int) -> None:
        """Log the late replies counted since the last call."""
        abandoned = self.abandoned
        while self.seen < late_replies and abandoned:
            self.seen += 1
            logger.warning("Unknown ID '%s', message dropped.", abandoned.popleft())
