"""The exception classes of qemu.qmp 0.0.6, with its messages.

Every class derives from this package's :class:`QMPError`, which is also a
:class:`qmpcore.QMPError`, so code that mixes the adapter with qmpcore's
own clients can catch both with one ``except``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from .. import errors as _core
from ._models import ErrorResponse
from ._runstate import Runstate
from ._util import exception_summary

# A QMP message (``Message``, which imports this module, or a plain dict).
_Msg = Mapping[str, object]

__all__ = [
    "QMPError",
    "ProtocolError",
    "ConnectError",
    "StateError",
    "ExecuteError",
    "ExecInterruptedError",
    "ListenerError",
    "GreetingError",
    "NegotiationError",
    "DeserializationError",
    "UnexpectedTypeError",
    "ServerParseError",
    "BadReplyError",
    "exception_summary",
]


class QMPError(_core.QMPError):
    """Base class of every error the adapter raises."""


class ProtocolError(QMPError):
    """The server, or a bug, broke the protocol; ``error_message`` says how."""

    def __init__(self, error_message: str, *args: object) -> None:
        super().__init__(error_message, *args)
        self.error_message = error_message

    def __str__(self) -> str:
        return self.error_message


class ConnectError(QMPError):
    """Connecting (or accepting) failed; ``exc`` is the root cause."""

    def __init__(self, error_message: str, exc: Exception) -> None:
        super().__init__(error_message, exc)
        self.error_message = error_message
        self.exc = exc

    def __str__(self) -> str:
        cause = str(self.exc) or exception_summary(self.exc)
        return f"{self.error_message}: {cause}"


class StateError(QMPError):
    """A method was called in a :class:`Runstate` that does not allow it."""

    def __init__(self, error_message: str, state: Runstate, required: Runstate) -> None:
        super().__init__(error_message, state, required)
        self.error_message = error_message
        self.state = state
        self.required = required

    def __str__(self) -> str:
        return self.error_message


class ExecuteError(QMPError):
    """The server answered a command with an error.

    ``sent`` and ``received`` are the two :class:`Message` objects, ``error``
    the parsed :class:`ErrorResponse`; ``str()`` is the server's ``desc``.
    """

    def __init__(self, error_response: ErrorResponse, sent: _Msg, received: _Msg) -> None:
        super().__init__(error_response, sent, received)
        self.sent = sent
        self.received = received
        self.error = error_response

    @property
    def error_class(self) -> str:
        """QEMU's error class, such as ``"CommandNotFound"``."""
        return self.error.error.class_

    def __str__(self) -> str:
        return self.error.error.desc


class ExecInterruptedError(QMPError):
    """The connection ended before the command's reply arrived."""


class ListenerError(QMPError):
    """An :class:`EventListener` was registered or removed wrongly."""


class _WrappedProtocolError(ProtocolError):
    def __init__(self, error_message: str, exc: Exception) -> None:
        super().__init__(error_message, exc)
        self.exc = exc

    def __str__(self) -> str:
        return f"{self.error_message}: {self.exc!s}"


class GreetingError(_WrappedProtocolError):
    """The greeting was missing or not understood."""


class NegotiationError(_WrappedProtocolError):
    """``qmp_capabilities`` failed."""


class DeserializationError(ProtocolError):
    """Bytes that are not JSON; ``raw`` holds them."""

    def __init__(self, error_message: str, raw: bytes) -> None:
        super().__init__(error_message, raw)
        self.raw = raw

    def __str__(self) -> str:
        return f"{self.error_message}\n  raw bytes were: {self.raw!s}"


class UnexpectedTypeError(ProtocolError):
    """JSON that is not an object; ``value`` holds it."""

    def __init__(self, error_message: str, value: object) -> None:
        super().__init__(error_message, value)
        self.value = value

    def __str__(self) -> str:
        return f"{self.error_message}\n  json value was: {json.dumps(self.value, indent=2)}"


class _MsgProtocolError(ProtocolError):
    def __init__(self, error_message: str, msg: _Msg, *args: object) -> None:
        super().__init__(error_message, msg, *args)
        self.msg = msg

    def __str__(self) -> str:
        return f"{self.error_message}\n  Message was: {self.msg!s}\n"


class ServerParseError(_MsgProtocolError):
    """An error reply without id: the server could not parse something."""


class BadReplyError(_MsgProtocolError):
    """A reply routed by its id but malformed; ``sent`` is the command."""

    def __init__(self, error_message: str, msg: _Msg, sent: _Msg) -> None:
        super().__init__(error_message, msg, sent)
        self.sent = sent
