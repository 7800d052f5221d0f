"""Sans-IO QMP server: QEMU 7.2's monitor and dispatcher, minus the commands.

The shape is h11's, as in the client protocols: bytes from the client go in
with :meth:`~QMPServerProtocol.receive_data`; commands that the application
must run come out of :meth:`~QMPServerProtocol.next_event` as
:class:`Request` objects; the application answers each with
:meth:`~QMPServerProtocol.send`, which returns the bytes to write now, and
takes what the protocol answered on its own (greeting, errors) from
:meth:`~QMPServerProtocol.data_to_send`.  (``send_return`` and
``send_error`` are the older spelling: they queue the answer for
``data_to_send`` instead of returning it.)  Everything QEMU answers without
running a command is answered here, in QEMU's words and order:

* the greeting, capabilities negotiation (``qmp_capabilities`` is handled
  here) and negotiation mode, where every other command is
  ``CommandNotFound`` and no events are delivered;
* JSON errors (one ``GenericError`` per error QEMU's parser reports) and
  ``QMP input must be a JSON object``: the strict framer is told the
  reply's words (``Framer.answer_errors``) and hands over each run of such
  errors, of any mix of kinds, as one answers item whose replies are built
  in C as they are taken (a run of identical ones by repeating one reply),
  so no error costs a Python object; the other envelope checks, in the
  order QEMU iterates the request's members;
* unknown and disabled commands, ``exec-oob`` rules, and argument errors
  from the command's :class:`~qmpcore.protocol._qapi.CommandInfo`.

In-band commands run one at a time, as in QEMU: the next one is released
only when the previous one has been answered, and errors queued behind it
wait their turn.  ``exec-oob`` commands skip the queue.  ``reading_paused``
tells the I/O layer to stop reading while the queue is full (QEMU suspends
the monitor the same way), so memory stays bounded.

``output_limit`` bounds the work one call does on the client's behalf:
once that many bytes of answers the protocol produced itself wait in
:meth:`~ServerProtocolBase.data_to_send`, it stops answering queued input
(``can_progress`` stays true) until the I/O layer has taken the bytes and
calls :meth:`~ServerProtocolBase.next_event` again.  An I/O layer that caps
a client's unread output checks that cap between calls, so a client that
sends garbage and never reads cannot make the server produce more than the
cap plus one chunk.

Large requests: with :meth:`~ServerProtocolBase.defer_frames`, a request
over that many bytes is decoded a slice at a time (:meth:`step`, one call
per turn of the I/O layer's loop), so one client's 64 MiB request never
holds the loop that serves the others; what the client sent after it
waits its turn, and reading pauses meanwhile (``reading_paused``).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any

from ..errors import CommandError, FrameError, StateError
from ..framing import ANSWERS, Framer
from ..framing.wire import SYNC, PendingFrame
from ._qapi import CommandInfo, Schema
from ._qemu_output import Encoded, encode_qmp, qdict_order, to_json

__all__ = [
    "NO_ID",
    "Request",
    "ServerProtocolBase",
    "QMPServerProtocol",
    "DEFAULT_VERSION",
    "event_bytes",
    "event_head",
]


class _NoId:
    __slots__ = ()

    def __repr__(self) -> str:
        return "NO_ID"

    def __reduce__(self) -> str:
        return "NO_ID"


#: ``Request.id`` of a request that had no ``id`` member (``null`` is an id).
NO_ID: Any = _NoId()

#: ``query-version``'s value for a QEMU 7.2 without a distribution package.
DEFAULT_VERSION: dict[str, Any] = {
    "qemu": {"major": 7, "minor": 2, "micro": 0},
    "package": "",
}

_INT_MIN = -(1 << 63)
_INT_MAX = (1 << 64) - 1  # (ids beyond int64 and uint64 print as doubles)

_NOT_OBJECT = "QMP input must be a JSON object"
_NO_EXECUTE = "QMP input lacks member 'execute'"
_UNEXPECTED = "QMP input member '{}' is unexpected"
# Members qmp_dispatch reads; an object with one other member is refused
# before any state matters (the framer answers it: Framer.answer_errors).
_ENVELOPE = (_NO_EXECUTE, _UNEXPECTED, ("execute", "exec-oob", "arguments", "id"))

# How many in-band requests QEMU queues before it stops reading (monitor/qmp.c).
_QUEUE_OOB = 8
_QUEUE_PLAIN = 1

# qmp_capabilities as QEMU's schema declares it, for its argument checks.
_NEGOTIATION_SCHEMA = Schema(
    [
        {"name": "qmp_capabilities", "meta-type": "command", "arg-type": "args"},
        {
            "name": "args",
            "meta-type": "object",
            "members": [{"name": "enable", "default": None, "type": "[cap]"}],
        },
        {"name": "[cap]", "meta-type": "array", "element-type": "cap"},
        {"name": "cap", "meta-type": "enum", "values": ["oob"]},
    ]
)
_CAPABILITIES_INFO = _NEGOTIATION_SCHEMA.command_info("qmp_capabilities")


class Request:
    """A command the application must answer (exactly once).

    ``id`` is the client's id (any JSON value), or :data:`NO_ID`.  ``oob`` is
    true for ``exec-oob`` requests, which may be answered in any order.
    """

    __slots__ = ("command", "arguments", "id", "oob", "info", "_open")

    def __init__(
        self,
        command: str,
        arguments: dict[str, Any],
        id: Any = NO_ID,
        oob: bool = False,
        info: CommandInfo | None = None,
    ) -> None:
        self.command = command
        self.arguments = arguments
        self.id = id
        self.oob = oob
        self.info = info
        self._open = True

    @property
    def has_id(self) -> bool:
        return self.id is not NO_ID

    def __repr__(self) -> str:
        extra = "" if self.id is NO_ID else f", id={self.id!r}"
        if self.oob:
            extra += ", oob=True"
        return f"Request({self.command!r}, {self.arguments!r}{extra})"


class _Repeat:
    """Identical parse errors waiting in the in-band queue: ``reply`` is
    owed ``count`` times (consecutive errors with one text coalesce here,
    whether the framer reported them as one FrameError or many)."""

    __slots__ = ("reason", "reply", "count")

    def __init__(self, reason: str, reply: bytes, count: int) -> None:
        self.reason = reason
        self.reply = reply
        self.count = count


class ServerProtocolBase:
    """What QMP monitors and the guest agent share: QEMU's ``qmp_dispatch``.

    Subclasses set the line ending, say whether ``exec-oob`` is allowed, and
    may answer some commands themselves (:meth:`_handle_locally`).
    """

    _terminator = b"\r\n"
    #: Bytes written just before the successful reply to these commands.
    _reply_prefixes: Mapping[str, bytes] = {}
    #: QEMU's ``pretty=on`` output (QMP monitors only).
    pretty = False

    def __init__(
        self,
        commands: Mapping[str, CommandInfo] | None = None,
        *,
        max_frame_size: int = 64 << 20,
        max_depth: int = 1024,
        max_tokens: int = 2 << 20,
        output_limit: int | None = None,
    ) -> None:
        self.commands: Mapping[str, CommandInfo] = commands if commands is not None else {}
        self._framer = Framer(max_frame_size, max_depth, max_tokens=max_tokens, strict=True)
        self._answer_with(self._framer)
        #: Bytes of self-produced answers after which queued input waits
        #: for the next :meth:`next_event` call (None: no limit).
        self.output_limit = output_limit
        self._out: list[bytes] = []
        self._out_size = 0
        self._queue: deque[Any] = deque()
        self._ready: deque[Request] = deque()
        self._current: Request | None = None
        self._oob_open: set[Request] = set()
        self._stalled: PendingFrame | None = None  # a large request being decoded
        self._after: list[Any] = []  # framer items behind it
        #: Whether the last :meth:`receive_data` held malformed input (the
        #: server then reads such a client a little at a time).
        self.malformed = False

    def _answer_with(self, framer: Any) -> None:
        """Have the strict ``framer`` report errors, and frames refused
        before any state matters, as answers items in this server's words."""
        template = self._error_bytes(NO_ID, "GenericError", "|")
        cut = template.index(b"|")
        framer.answer_errors(template[:cut], template[cut + 1 :], _NOT_OBJECT, _ENVELOPE)

    # -- input ------------------------------------------------------------

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Feed bytes from the client; answers and requests become available."""
        items = self._framer.feed(data)
        if self._stalled is not None:
            self._after.extend(items)  # (behind the request being decoded)
            return
        if len(items) == 1 and self._current is None and not self._queue:
            # One in-band request with nothing ahead of it (a polled VM's
            # usual read): what _take and _pump would do, without the queue.
            message = items[0]
            limit = self.output_limit
            if type(message) is dict and "execute" in message and (limit is None or self._out_size < limit):
                self.malformed = False
                request = self._dispatch(message)
                if request is not None:
                    self._current = request
                    self._ready.append(request)
                return
        self.malformed = self._take(items)
        self._pump()

    def _take(self, items: list[Any]) -> bool:
        """Queue framer items in stream order; stop at a PendingFrame and
        hold what follows it until it is decoded.  True if any was an error."""
        queue = self._queue
        malformed = False
        for item in items:
            if type(item) is dict:
                if self._skips_queue(item):
                    # Out-of-band: dispatched now, even while an in-band
                    # command runs (after what came before it, if it can go).
                    self._pump()
                    request = self._dispatch(item)
                    if request is not None:
                        self._oob_open.add(request)
                        self._ready.append(request)
                    continue
            elif item is SYNC:
                continue  # the strict framer already reported 0xFF as an error
            elif isinstance(item, ANSWERS):
                malformed = True  # (answered in turn by _pump)
            elif isinstance(item, FrameError):
                malformed = True
                count = item.count
                last = queue[-1] if queue else None
                if type(last) is _Repeat and last.reason == item.reason:
                    last.count += count
                    continue
                item = _Repeat(item.reason, self._error_bytes(NO_ID, "GenericError", item.reason), count)
            elif type(item) is PendingFrame:
                self._stalled = item
                self._after = items[items.index(item) + 1 :]
                return malformed
            queue.append(item)
        return malformed

    # -- large requests, a step at a time ----------------------------------

    def defer_frames(self, size: int) -> None:
        """Decode requests over ``size`` bytes a step at a time (0: never).

        While one is decoded, :attr:`decoding` and :attr:`reading_paused`
        are true; each :meth:`step` does a bounded slice of the work (about
        ``qmpcore.framing.rules.DEFER_STEP`` bytes), and the last one queues
        the request and what came after it, in stream order.
        """
        self._framer.defer = size

    @property
    def decoding(self) -> bool:
        """True while a large request is decoded: call :meth:`step`."""
        return self._stalled is not None

    def step(self) -> bool:
        """Decode one more slice of the large request (see
        :meth:`defer_frames`); True when none is left to decode."""
        stalled = self._stalled
        if stalled is None:
            return True
        if not stalled.step():
            return False
        items = self._after
        items.insert(0, stalled.result)
        self._stalled = None
        self._after = []
        self._take(items)
        self._pump()
        return self._stalled is None

    def next_event(self) -> Request | None:
        """The next :class:`Request` to run, or ``None``.

        Queued input that needs no command (errors) is answered on the way,
        up to ``output_limit`` bytes per call: ``None`` with
        :attr:`can_progress` still true means "take :meth:`data_to_send`
        and call again".
        """
        ready = self._ready
        if not ready and self._queue:
            self._pump()
        return ready.popleft() if ready else None

    @property
    def can_progress(self) -> bool:
        """True when :meth:`next_event` has work to do now: a request to
        hand out, or queued input while no in-band command runs."""
        return bool(self._ready) or (self._current is None and bool(self._queue))

    @property
    def reading_paused(self) -> bool:
        """True while the in-band queue is full or a large request is
        decoded: stop reading until it drains."""
        queue = self._queue
        return self._stalled is not None or (bool(queue) and len(queue) >= self._queue_limit())

    @property
    def buffered(self) -> int:
        """Bytes of an unfinished frame held by the parser."""
        return self._framer.buffered

    @property
    def queued(self) -> int:
        """In-band items (requests and errors) waiting their turn."""
        return len(self._queue)

    # -- answers ----------------------------------------------------------

    def send(self, request: Request, value: Any = None, *, error: CommandError | None = None) -> bytes:
        """Answer ``request``; return the bytes to write now.

        The answer is ``{"return": value}`` (``None`` is ``{}``), or the
        error ``error`` (its ``error_class`` and ``desc``).  The bytes
        include, first, anything :meth:`data_to_send` was holding, so the
        caller writes everything in order.  The next in-band request is
        released for :meth:`next_event`, not answered here.
        """
        current = request is self._current
        if not (current and request._open):
            self._check(request)
        if error is not None:
            reply = self._error_bytes(request.id, error.error_class, error.desc)
        else:
            info = request.info
            reply = b""
            if info is None or info.success_response:
                # Encode first: a value JSON cannot hold raises with the request
                # still open, so the caller can answer with an error instead.
                request_id = request.id
                if (
                    type(value) is Encoded
                    and type(request_id) is int
                    and _INT_MIN <= request_id <= _INT_MAX
                    and not self.pretty
                ):
                    # (a canned value and a plain id: _return_bytes in one step)
                    reply = b'{"return": %s, "id": %d}%s' % (value, request_id, self._terminator)
                else:
                    reply = self._return_bytes(request_id, {} if value is None else value)
                if self._reply_prefixes:
                    reply = self._reply_prefixes.get(request.command, b"") + reply
        request._open = False
        if current:
            self._current = None
        else:
            self._oob_open.discard(request)
        out = self._out
        if not out:
            return reply
        out.append(reply)
        return self.data_to_send()

    def send_return(self, request: Request, value: Any = None) -> None:
        """Like :meth:`send`, but queue the answer for :meth:`data_to_send`."""
        self._out.append(self.send(request, value))
        self._pump()

    def send_error(self, request: Request, error_class: str, desc: str) -> None:
        """Like :meth:`send` with an error, but queue the answer for
        :meth:`data_to_send`."""
        self._out.append(self.send(request, error=CommandError(error_class, desc)))
        self._pump()

    def send_raw(self, data: bytes) -> None:
        """Queue bytes verbatim (for tests that need malformed output)."""
        self._out.append(bytes(data))

    def data_to_send(self) -> bytes:
        """Everything queued for the client since the last call."""
        out = self._out
        self._out_size = 0
        if not out:
            return b""
        data = out[0] if len(out) == 1 else b"".join(out)
        out.clear()
        return data

    @property
    def pending(self) -> int:
        """Requests handed out and not yet answered."""
        return len(self._oob_open) + (self._current is not None)

    # -- QEMU's dispatcher ------------------------------------------------

    def _pump(self) -> None:
        """Release queued in-band items until one needs the application or
        ``output_limit`` bytes of answers wait to be taken."""
        queue = self._queue
        limit = self.output_limit
        out = self._out
        while self._current is None and queue:
            if limit is not None and self._out_size >= limit:
                return
            item = queue[0]
            if isinstance(item, ANSWERS):
                # (at least one reply, then until the limit is reached)
                data = item.take(None if limit is None else limit - self._out_size)
                out.append(data)
                self._out_size += len(data)
                if not item.remaining:
                    queue.popleft()
                continue
            if type(item) is _Repeat:
                reply = item.reply
                times = item.count
                if limit is not None:
                    # Never more than the limit allows (but at least one).
                    times = min(times, max(1, (limit - self._out_size) // len(reply)))
                out.append(reply * times if times > 1 else reply)
                self._out_size += len(reply) * times
                item.count -= times
                if not item.count:
                    queue.popleft()
                continue
            queue.popleft()
            request = self._dispatch(item)
            if request is not None:
                self._current = request
                self._ready.append(request)

    def _dispatch(self, message: Any) -> Request | None:
        """QEMU's ``qmp_dispatch`` up to the command's own code."""
        if type(message) is not dict:
            self._write_error(NO_ID, "GenericError", _NOT_OBJECT)
            return None
        request_id = message.get("id", NO_ID)
        name = message.get("execute")
        arguments = message.get("arguments")
        oob = False
        if not (
            type(name) is str
            and len(message) == 1 + (request_id is not NO_ID) + (arguments is not None)
            and (arguments is None or type(arguments) is dict)
        ):
            # Not just a string "execute", an object "arguments" and an
            # "id" (the members of an ordinary request, which no order of
            # QEMU's checks can fail): check in QEMU's member order.
            checked = self._check_envelope(message, request_id)
            if checked is None:
                return None
            name, oob = checked
            arguments = message.get("arguments")
        info = self._lookup(name)
        if info is None:
            self._fail(request_id, f"The command {name} has not been found", "CommandNotFound")
            return None
        if not info.enabled:
            self._fail(request_id, f"Command {name} has been disabled", "CommandNotFound")
            return None
        if oob and not info.allow_oob:
            self._fail(request_id, f"The command {name} does not support OOB")
            return None
        if arguments is None:
            arguments = {}
        if info.check_arguments is not None:
            problem = info.check_arguments(arguments)
            if problem is not None:
                self._fail(request_id, problem)
                return None
        request = Request(name, arguments, request_id, oob, info)
        if self._handle_locally(request):
            return None
        return request

    def _check_envelope(self, message: dict[str, Any], request_id: Any) -> tuple[str, bool] | None:
        """The command's name and whether it came as ``exec-oob``; None
        (and the error answered) when a member is wrong, the first one in
        QDict order as QEMU reports it."""
        oob_allowed = self._oob_allowed()
        exec_key = None
        for key in _member_order(message):
            value = message[key]
            if key == "execute" or (key == "exec-oob" and oob_allowed):
                if type(value) is not str:
                    self._fail(request_id, f"QMP input member '{key}' must be a string")
                    return None
                if exec_key is not None:
                    self._fail(request_id, f"QMP input member '{key}' clashes with '{exec_key}'")
                    return None
                exec_key = key
            elif key == "arguments":
                if type(value) is not dict:
                    self._fail(request_id, "QMP input member 'arguments' must be an object")
                    return None
            elif key != "id":
                self._fail(request_id, _UNEXPECTED.format(key))
                return None
        if exec_key is None:
            self._fail(request_id, _NO_EXECUTE)
            return None
        return message[exec_key], exec_key == "exec-oob"

    def _fail(self, request_id: Any, desc: str, error_class: str = "GenericError") -> None:
        self._write_error(request_id, error_class, desc)
        return None

    def _check(self, request: Request) -> None:
        if not request._open:
            raise StateError(f"{request!r} was already answered")
        if request is not self._current and request not in self._oob_open:
            raise StateError(f"{request!r} does not belong to this connection")

    def _drop_requests(self) -> None:
        """Forget queued and unanswered requests (the client went away)."""
        for request in (self._current, *self._oob_open):
            if request is not None:
                request._open = False
        self._current = None
        self._oob_open.clear()
        self._queue.clear()
        self._stalled = None
        self._after = []
        self._ready.clear()
        self._out.clear()
        self._out_size = 0

    # -- hooks for subclasses ----------------------------------------------

    def _skips_queue(self, message: dict[str, Any]) -> bool:
        """QEMU runs ``exec-oob`` messages at once, even without ``oob``."""
        return "exec-oob" in message and "execute" not in message

    def _oob_allowed(self) -> bool:
        return False

    def _queue_limit(self) -> int:
        return _QUEUE_PLAIN

    def _lookup(self, name: str) -> CommandInfo | None:
        return self.commands.get(name)

    def _handle_locally(self, request: Request) -> bool:
        """Answer ``request`` here instead of handing it out; True if done."""
        return False

    # -- output -----------------------------------------------------------

    def _write_return(self, request_id: Any, value: Any) -> None:
        reply = self._return_bytes(request_id, value)
        self._out_size += len(reply)
        self._out.append(reply)

    def _write_error(self, request_id: Any, error_class: str, desc: str) -> None:
        reply = self._error_bytes(request_id, error_class, desc)
        self._out_size += len(reply)
        self._out.append(reply)

    def _return_bytes(self, request_id: Any, value: Any) -> bytes:
        if self.pretty:
            return _pretty_reply({"return": value}, request_id)
        # (canned replies are spliced in as they are)
        body = value if type(value) is Encoded else to_json(value)
        # QDict order puts "return" before "id" (and "id" before "error").
        if request_id is NO_ID:
            return b'{"return": %s}%s' % (body, self._terminator)
        if type(request_id) is int and _INT_MIN <= request_id <= _INT_MAX:
            return b'{"return": %s, "id": %d}%s' % (body, request_id, self._terminator)
        return b'{"return": %s, "id": %s}%s' % (body, to_json(request_id), self._terminator)

    def _error_bytes(self, request_id: Any, error_class: str, desc: str) -> bytes:
        if self.pretty:
            return _pretty_reply({"error": {"class": error_class, "desc": desc}}, request_id)
        error = b'{"class": ' + to_json(error_class) + b', "desc": ' + to_json(desc) + b"}}"
        if request_id is NO_ID:
            return b'{"error": ' + error + self._terminator
        return b'{"id": ' + to_json(request_id) + b', "error": ' + error + self._terminator


def _pretty_reply(message: dict[str, Any], request_id: Any) -> bytes:
    """A reply as a ``pretty=on`` monitor writes it."""
    if request_id is not NO_ID:
        message["id"] = request_id
    return encode_qmp(message, pretty=True)


def _member_order(message: dict[str, Any]) -> Sequence[str]:
    """QEMU checks the members of a request in QDict order."""
    keys = tuple(message)
    return keys if len(keys) < 2 else qdict_order(keys)


class QMPServerProtocol(ServerProtocolBase):
    """One QMP client connection, from the server's side.

    ``commands`` maps command names to :class:`~qmpcore.protocol._qapi.CommandInfo`
    (a live mapping: commands registered later are found).  ``version`` is
    ``query-version``'s value, ``capabilities`` what the greeting offers.
    The greeting is queued as soon as the object exists.
    """

    def __init__(
        self,
        commands: Mapping[str, CommandInfo] | None = None,
        *,
        version: Mapping[str, Any] | None = None,
        capabilities: Sequence[str] = ("oob",),
        pretty: bool = False,
        max_frame_size: int = 64 << 20,
        max_depth: int = 1024,
        max_tokens: int = 2 << 20,
        output_limit: int | None = None,
    ) -> None:
        self.pretty = bool(pretty)  # (before the base class words its error replies)
        super().__init__(
            commands,
            max_frame_size=max_frame_size,
            max_depth=max_depth,
            max_tokens=max_tokens,
            output_limit=output_limit,
        )
        self.version = dict(version if version is not None else DEFAULT_VERSION)
        self.offered = tuple(capabilities)
        self.enabled: Sequence[str] = ()
        self.negotiated = False
        self._send({"QMP": {"version": self.version, "capabilities": list(self.offered)}})

    @property
    def oob_enabled(self) -> bool:
        return "oob" in self.enabled

    def send_event(self, name: str, data: Mapping[str, Any] | None = None, *, timestamp: float | None = None) -> bool:
        """Queue an event; False (and nothing sent) before negotiation."""
        if not self.negotiated:
            return False
        self._out.append(event_bytes(name, data, timestamp, pretty=self.pretty))
        return True

    # -- negotiation mode ---------------------------------------------------

    def _oob_allowed(self) -> bool:
        return self.oob_enabled

    def _queue_limit(self) -> int:
        return _QUEUE_OOB if self.oob_enabled else _QUEUE_PLAIN

    def _lookup(self, name: str) -> CommandInfo | None:
        if name == "qmp_capabilities":
            return _CAPABILITIES_INFO
        if not self.negotiated:
            return None
        return self.commands.get(name)

    def _fail(self, request_id: Any, desc: str, error_class: str = "GenericError") -> None:
        if not self.negotiated and error_class == "CommandNotFound":
            desc = "Expecting capabilities negotiation with 'qmp_capabilities'"
        self._write_error(request_id, error_class, desc)
        return None

    def _handle_locally(self, request: Request) -> bool:
        if request.command != "qmp_capabilities":
            return False
        if self.negotiated:
            self._write_error(
                request.id, "CommandNotFound", "Capabilities negotiation is already complete, command ignored"
            )
            return True
        wanted = list(request.arguments.get("enable") or ())
        missing = [cap for cap in wanted if cap not in self.offered]
        if missing:
            self._write_error(request.id, "GenericError", f"Capability {', '.join(missing)} not available")
            return True
        self.enabled = tuple(dict.fromkeys(wanted))
        self.negotiated = True
        self._write_return(request.id, {})
        return True

    # -- output -------------------------------------------------------------

    def _send(self, message: Any) -> None:
        self._out.append(encode_qmp(message, pretty=self.pretty))


def _split_timestamp(timestamp: float | None) -> tuple[int, int]:
    """(seconds, microseconds) of ``timestamp`` (default: now)."""
    micros = time.time_ns() // 1000 if timestamp is None else int(round(timestamp * 1_000_000))
    return divmod(micros, 1_000_000)


def event_head(name: str, timestamp: float | None = None) -> bytes:
    r"""The start of a compact event message, up to and including the name
    (the caller adds ``, "data": ...`` and ``}\r\n``)."""
    seconds, micros = _split_timestamp(timestamp)
    return b'{"timestamp": {"seconds": %d, "microseconds": %d}, "event": %s' % (seconds, micros, to_json(name))


def event_bytes(
    name: str,
    data: Mapping[str, Any] | None = None,
    timestamp: float | None = None,
    *,
    pretty: bool = False,
) -> bytes:
    """One event message as a QEMU monitor writes it.

    ``timestamp`` is seconds since the epoch (default: now).  Events without
    data have no ``data`` member, as in QEMU.
    """
    if pretty:
        seconds, micros = _split_timestamp(timestamp)
        message: dict[str, Any] = {"event": name, "timestamp": {"seconds": seconds, "microseconds": micros}}
        if data is not None:
            message["data"] = data
        return encode_qmp(message, pretty=True)
    if data is None:
        return event_head(name, timestamp) + b"}\r\n"
    return event_head(name, timestamp) + b', "data": ' + to_json(data) + b"}\r\n"
