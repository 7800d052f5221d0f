"""Simulated QEMU VMs and guest agents: command tables, built-ins, faults.

A simulator owns what a QEMU process would own: the commands it knows (the
QEMU 7.2 schema for a VM, qemu-ga 7.2's command list for an agent), the
handlers that run them, the VM's state, and test faults.  It knows nothing
about sockets: :mod:`qmpcore.server` attaches endpoints (listening sockets)
to it and runs its handlers for each request.

Handlers take one :class:`Call` and return the command's value (``None``
means ``{}``), or an awaitable of it; raising :class:`~qmpcore.CommandError`
answers with that error class and text.
"""

from __future__ import annotations

import asyncio
import functools
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import orjson

from ..errors import CommandError
from ..protocol._qapi import DATA_DIR, CommandInfo, Schema
from ..protocol._qemu_output import Encoded, to_json

__all__ = ["Call", "Handler", "Simulator", "SimulatedVM", "SimulatedGuestAgent"]

Handler = Callable[["Call"], Any]

_GUEST_INFO_72 = "qga_guest_info_7.2.json"
#: Default cap on descriptors a simulator holds from its clients (getfd,
#: add-fd); descriptors that arrive while it holds that many are closed.
MAX_FDS = 128
# x-query-ramblock of a machine without RAM (corpus 04).
_RAMBLOCK_NONE = "              Block Name    PSize              Offset               Used              Total\n"


class Call:
    """One command being run: what a handler gets.

    ``target`` is the :class:`SimulatedVM` or :class:`SimulatedGuestAgent`;
    :meth:`take_fd` claims a descriptor the client passed with SCM_RIGHTS.
    """

    __slots__ = ("command", "arguments", "id", "oob", "target", "_session", "_after")

    def __init__(self, command: str, arguments: dict[str, Any], id: Any, oob: bool, target: Simulator, session: Any):
        self.command = command
        self.arguments = arguments
        self.id = id
        self.oob = oob
        self.target = target
        self._session = session
        self._after: Callable[[], Any] | None = None

    def take_fd(self) -> int | None:
        """The descriptor received with the client's latest message, or None.

        Like QEMU, only the first one is kept (the rest are closed) and it
        can be taken once; the caller owns it.
        """
        take = getattr(self._session, "take_fd", None)
        return take() if take is not None else None

    def after_reply(self, callback: Callable[[], Any]) -> None:
        """Run ``callback`` once the reply has been written."""
        self._after = callback


@dataclass
class _Fault:
    kind: str  # "delay", "hang" or "drop"
    seconds: float = 0.0
    mid_frame: bool = False
    reset: bool = False
    times: int | None = None  # None: every time


class _CommandTable(Mapping[str, CommandInfo]):
    """Own registrations over a shared base table (one per schema, so a
    thousand VMs do not each hold 216 schema entries)."""

    __slots__ = ("own", "base")

    def __init__(self, own: dict[str, CommandInfo], base: Mapping[str, CommandInfo]) -> None:
        self.own = own
        self.base = base

    def get(self, name: str, default: Any = None) -> Any:
        info = self.own.get(name)
        if info is None:
            info = self.base.get(name, default)
        return info

    def __getitem__(self, name: str) -> CommandInfo:
        info: CommandInfo | None = self.get(name)
        if info is None:
            raise KeyError(name)
        return info

    def __iter__(self) -> Iterator[str]:
        yield from self.base
        for name in self.own:
            if name not in self.base:
                yield name

    def __len__(self) -> int:
        return len(self.base) + sum(1 for name in self.own if name not in self.base)


class Simulator:
    """Commands, handlers, faults and attached endpoints (VM or agent)."""

    #: Text of the error for known commands that have no handler.
    unimplemented = "The command {} is not implemented by the simulator"

    def __init__(self, base: Mapping[str, CommandInfo], *, max_fds: int = MAX_FDS) -> None:
        #: Descriptors the simulator may hold from clients; past it, getfd
        #: and add-fd fail and arriving descriptors are closed at once.
        self.max_fds = max_fds
        self._own: dict[str, CommandInfo] = {}
        self.commands: Mapping[str, CommandInfo] = _CommandTable(self._own, base)
        self._handlers: dict[str, Handler] = {}
        self._faults: dict[str, list[_Fault]] = {}
        self.endpoints: list[Any] = []
        self.fds: dict[str, int] = {}

    # -- commands -----------------------------------------------------------

    def register(
        self,
        name: str,
        handler: Handler,
        *,
        allow_oob: bool | None = None,
        check_arguments: Callable[[dict[str, Any]], str | None] | None = None,
    ) -> None:
        """Run ``handler`` for ``name`` (replacing any built-in).

        A command the schema knows keeps its argument checks and ``allow-oob``
        flag unless overridden here; a new command takes any arguments.
        """
        known = self.commands.get(name)
        info = known if known is not None else CommandInfo(name)
        if allow_oob is not None:
            info = replace(info, allow_oob=allow_oob)
        if check_arguments is not None:
            info = replace(info, check_arguments=check_arguments)
        if info is not known:
            self._own[name] = info
        self._handlers[name] = handler
        self._commands_changed()

    def command(self, name: str | None = None, **options: Any) -> Callable[[Handler], Handler]:
        """Decorator form of :meth:`register` (the name defaults to the
        function's, with ``_`` turned into ``-``)."""

        def decorate(handler: Handler) -> Handler:
            self.register(name or handler.__name__.replace("_", "-"), handler, **options)
            return handler

        return decorate

    def unregister(self, name: str) -> None:
        """Forget ``name``'s handler and registration."""
        self._handlers.pop(name, None)
        self._own.pop(name, None)
        self._commands_changed()

    def handler(self, name: str) -> Handler:
        """The handler for a known command (an error for unimplemented ones)."""
        found = self._handlers.get(name)
        if found is not None:
            return found
        return self._unimplemented

    def _unimplemented(self, call: Call) -> Any:
        raise CommandError("GenericError", self.unimplemented.format(call.command))

    def _commands_changed(self) -> None:
        pass

    # -- faults -------------------------------------------------------------

    def delay_command(self, command: str, seconds: float, *, times: int | None = None) -> None:
        """Answer ``command`` (``"*"``: any) ``seconds`` late."""
        self._add_fault(command, _Fault("delay", seconds=float(seconds), times=times))

    def hang_command(self, command: str, *, times: int | None = None) -> None:
        """Never answer ``command`` (``"*"``: any).  In-band commands queued
        behind it wait too, as they would behind a stuck QEMU command."""
        self._add_fault(command, _Fault("hang", times=times))

    def drop_on_command(
        self, command: str, *, mid_frame: bool = False, reset: bool = False, times: int | None = 1
    ) -> None:
        """Close the connection instead of answering ``command``; with
        ``mid_frame`` after writing half of the reply.  ``reset`` makes a
        TCP client see ECONNRESET (a unix socket reports a reset only when
        input was left unread, as after QEMU's ``quit`` in corpus 99)."""
        self._add_fault(command, _Fault("drop", mid_frame=mid_frame, reset=reset, times=times))

    def clear_faults(self, command: str | None = None) -> None:
        """Remove the faults of ``command``, or all of them."""
        if command is None:
            self._faults.clear()
        else:
            self._faults.pop(command, None)

    def _add_fault(self, command: str, fault: _Fault) -> None:
        if fault.times is not None and fault.times <= 0:
            return
        self._faults.setdefault(command, []).append(fault)

    def take_fault(self, command: str) -> _Fault | None:
        """The fault to apply to this run of ``command``, if any."""
        if not self._faults:
            return None
        for key in (command, "*"):
            faults = self._faults.get(key)
            if faults:
                fault = faults[0]
                if fault.times is not None:
                    fault.times -= 1
                    if fault.times <= 0:
                        faults.pop(0)
                        if not faults:
                            del self._faults[key]
                return fault
        return None

    # -- connection hooks (applied to every attached endpoint) --------------

    def send_raw(self, data: bytes) -> None:
        """Write ``data`` verbatim to every connected client (garbage tests)."""
        for endpoint in self.endpoints:
            endpoint.send_raw(bytes(data))

    def drop_connections(self, *, mid_frame: bool = False, reset: bool = False) -> None:
        """Close every client connection now (optionally mid-frame or with
        a reset); the sockets keep listening for new clients."""
        for endpoint in self.endpoints:
            endpoint.drop(mid_frame=mid_frame, reset=reset)

    @property
    def address(self) -> Any:
        """Address of the first endpoint serving this simulator (or None)."""
        return self.endpoints[0].address if self.endpoints else None

    @property
    def connected(self) -> int:
        """Number of clients connected to this simulator's endpoints."""
        return sum(1 for endpoint in self.endpoints if endpoint.connected)

    # -- file descriptors ---------------------------------------------------

    @property
    def fds_held(self) -> int:
        """Descriptors from clients the simulator holds now."""
        return len(self.fds)

    def _need_fd(self, call: Call) -> int:
        """The descriptor sent with ``call``; an error when none came or when
        the simulator already holds :attr:`max_fds` (the one sent is closed)."""
        fd = call.take_fd()
        if self.fds_held >= self.max_fds:
            if fd is not None:
                _close(fd)
            raise CommandError(
                "GenericError",
                f"Too many file descriptors passed (limit {self.max_fds}); release some with closefd or remove-fd",
            )
        if fd is None:
            raise CommandError("GenericError", "No file descriptor supplied via SCM_RIGHTS")
        return fd

    def _store_fd(self, name: str, fd: int) -> None:
        old = self.fds.pop(name, None)
        if old is not None:
            _close(old)
        self.fds[name] = fd

    def close_fds(self) -> None:
        """Close every descriptor the simulator holds."""
        for fd in self.fds.values():
            _close(fd)
        self.fds.clear()


def _close(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass


def _version_dict(version: Sequence[int] | Mapping[str, Any], package: str) -> dict[str, Any]:
    if isinstance(version, Mapping):
        return {"qemu": dict(version["qemu"]), "package": version.get("package", package)}
    major, minor, micro = version
    return {"qemu": {"major": int(major), "minor": int(minor), "micro": int(micro)}, "package": package}


class SimulatedVM(Simulator):
    """A QEMU 7.2 VM as its QMP monitors see it.

    Built-in commands: ``query-status``, ``query-version``, ``query-name``,
    ``query-kvm``, ``query-commands``, ``query-qmp-schema`` (QEMU 7.2's
    real 207 KB reply), ``query-yank`` (oob), ``stop``/``cont`` (STOP and
    RESUME come before the reply), ``system_reset``, ``system_powerdown``,
    ``quit`` (SHUTDOWN, the reply, then every monitor closes),
    ``getfd``/``closefd``, ``add-fd``/``remove-fd``/``query-fdsets`` (at
    most ``max_fds`` descriptors held; past it they fail with a
    ``GenericError`` naming the limit),
    ``human-monitor-command`` (``info status|version|name``, ``stop``,
    ``cont``), ``x-query-ramblock`` and ``migrate-pause`` (always failing:
    no migration runs).  ``clock`` gives event timestamps
    (tests pin it to compare output byte for byte).  Every other command of the schema
    passes QEMU's argument checks and then fails with ``GenericError``
    unless a handler is registered for it.
    """

    def __init__(
        self,
        name: str | None = None,
        *,
        version: Sequence[int] | Mapping[str, Any] = (7, 2, 0),
        package: str = "",
        status: str = "running",
        schema: Schema | None = None,
        chardevs: Sequence[str] = ("compat_monitor0",),
        kvm: tuple[bool, bool] = (False, True),
        clock: Callable[[], float] = time.time,
        max_fds: int = MAX_FDS,
    ) -> None:
        self.schema = schema if schema is not None else Schema.qemu_7_2()
        super().__init__(self.schema.command_infos(), max_fds=max_fds)
        self.name = name
        self.version = _version_dict(version, package)
        self.status = status
        self.chardevs = list(chardevs)
        self.kvm = {"enabled": bool(kvm[0]), "present": bool(kvm[1])}
        #: Source of event timestamps (seconds since the epoch).
        self.clock = clock
        self.has_quit = False
        #: The VM's guest agent, when one is simulated (see ``serve_vms``).
        self.agent: SimulatedGuestAgent | None = None
        self._fdsets: dict[int, list[tuple[int, str | None]]] = {}
        self._status_reply: dict[str, Encoded] = {}
        self._commands_reply: Encoded | None = None
        for command, handler in self._builtins().items():
            self._handlers[command] = handler

    def _builtins(self) -> dict[str, Handler]:
        return {
            "query-status": self._query_status,
            "query-version": lambda call: self.version,
            "query-name": lambda call: {"name": self.name} if self.name is not None else {},
            "query-kvm": lambda call: self.kvm,
            "query-commands": self._query_commands,
            "query-qmp-schema": self._query_schema,
            "query-yank": lambda call: [{"type": "chardev", "id": chardev} for chardev in self.chardevs],
            "stop": lambda call: self.stop(),
            "cont": lambda call: self.cont(),
            "system_reset": lambda call: self.emit_event("RESET", {"guest": False, "reason": "host-qmp-system-reset"}),
            "system_powerdown": lambda call: self.emit_event("POWERDOWN"),
            "quit": self._quit,
            "getfd": self._getfd,
            "closefd": self._closefd,
            "add-fd": self._add_fd,
            "remove-fd": self._remove_fd,
            "query-fdsets": self._query_fdsets,
            "human-monitor-command": self._hmp,
            "x-query-ramblock": lambda call: {"human-readable-text": _RAMBLOCK_NONE},
            "migrate-pause": self._migrate_pause,
        }

    @staticmethod
    def _migrate_pause(call: Call) -> None:
        # An oob command that fails when no postcopy migration runs (corpus 18).
        raise CommandError("GenericError", "migrate-pause is currently only supported during postcopy-active state")

    # -- state ----------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self.status == "running"

    def stop(self) -> None:
        """Pause the VM; STOP is emitted if it was running (as QEMU does)."""
        if self.status == "running":
            self.status = "paused"
            self.emit_event("STOP")

    def cont(self) -> None:
        """Resume the VM; RESUME is emitted if it was paused."""
        if self.status != "running":
            self.status = "running"
            self.emit_event("RESUME")

    def emit_event(self, name: str, data: Mapping[str, Any] | None = None) -> None:
        """Send an event now to every negotiated client of every monitor."""
        stamp = self.clock()
        for endpoint in self.endpoints:
            endpoint.send_event(name, data, stamp)

    def flood_events(
        self, count: int, name: str = "FLOOD", data: Mapping[str, Any] | None = None
    ) -> asyncio.Future[int]:
        """Send ``count`` events as fast as every client reads them.

        Without ``data`` each event carries ``{"seq": n}`` (0, 1, ...).
        Returns a future for the number of events written to the clients;
        writing respects the socket's flow control, so memory stays bounded.
        """
        floods = [endpoint.flood(count, name, data) for endpoint in self.endpoints]
        tasks = [task for task in floods if task is not None]
        loop = asyncio.get_running_loop()
        if not tasks:
            done = loop.create_future()
            done.set_result(0)
            return done

        async def total() -> int:
            return sum(await asyncio.gather(*tasks))

        return asyncio.ensure_future(total())

    # -- built-in commands ----------------------------------------------------

    def _query_status(self, call: Call) -> Encoded:
        reply = self._status_reply.get(self.status)
        if reply is None:
            value = {"running": self.status == "running", "singlestep": False, "status": self.status}
            reply = self._status_reply[self.status] = Encoded(to_json(value))
        return reply

    def _commands_changed(self) -> None:
        self._commands_reply = None

    def _query_commands(self, call: Call) -> Encoded:
        if self._commands_reply is None:
            self._commands_reply = Encoded(to_json([{"name": name} for name in self.commands]))
        return self._commands_reply

    def _query_schema(self, call: Call) -> Any:
        if self.schema.reply is not None:
            return self.schema.reply
        raise CommandError("GenericError", "no schema reply available")

    def _quit(self, call: Call) -> None:
        self.emit_event("SHUTDOWN", {"guest": False, "reason": "host-qmp-quit"})
        self.status = "shutdown"
        self.has_quit = True
        call.after_reply(self._exit)

    def _exit(self) -> None:
        """What QEMU exiting looks like: every monitor closes its client
        (after the last reply) and its listening socket."""
        for endpoint in list(self.endpoints):
            endpoint.stop_soon()
        self.close_fds()

    async def restart(self) -> None:
        """Start again after ``quit``: running, every monitor listening."""
        self.status = "running"
        self.has_quit = False
        for endpoint in self.endpoints:
            await endpoint.start()

    def _getfd(self, call: Call) -> None:
        fd = self._need_fd(call)
        fdname = call.arguments["fdname"]
        if fdname[:1].isdigit():
            _close(fd)
            raise CommandError("GenericError", "Parameter 'fdname' expects a name not starting with a digit")
        self._store_fd(fdname, fd)

    def _closefd(self, call: Call) -> None:
        fdname = call.arguments["fdname"]
        fd = self.fds.pop(fdname, None)
        if fd is None:
            raise CommandError("GenericError", f"File descriptor named '{fdname}' not found")
        _close(fd)

    def _add_fd(self, call: Call) -> dict[str, int]:
        fd = self._need_fd(call)
        fdset = call.arguments.get("fdset-id")
        if fdset is None:
            fdset = next(n for n in range(len(self._fdsets) + 1) if n not in self._fdsets)
        self._fdsets.setdefault(fdset, []).append((fd, call.arguments.get("opaque")))
        return {"fd": fd, "fdset-id": fdset}

    def _remove_fd(self, call: Call) -> None:
        fdset = call.arguments["fdset-id"]
        fd = call.arguments.get("fd")
        entries = self._fdsets.get(fdset)
        if entries is not None:
            keep = [entry for entry in entries if fd is not None and entry[0] != fd]
            if len(keep) < len(entries):
                for entry in entries:
                    if entry not in keep:
                        _close(entry[0])
                if keep:
                    self._fdsets[fdset] = keep
                else:
                    del self._fdsets[fdset]
                return
        shown = f"fdset-id:{fdset}" if fd is None else f"fdset-id:{fdset}, fd:{fd}"
        raise CommandError("GenericError", f"File descriptor named '{shown}' not found")

    @property
    def fds_held(self) -> int:
        return len(self.fds) + sum(len(entries) for entries in self._fdsets.values())

    def _query_fdsets(self, call: Call) -> list[dict[str, Any]]:
        result = []
        for fdset in sorted(self._fdsets, reverse=True):
            fds = []
            for fd, opaque in self._fdsets[fdset]:
                entry: dict[str, Any] = {"fd": fd}
                if opaque is not None:
                    entry["opaque"] = opaque
                fds.append(entry)
            result.append({"fds": fds, "fdset-id": fdset})
        return result

    def _hmp(self, call: Call) -> str:
        words = call.arguments["command-line"].split()
        if not words:
            return ""
        if words[0] == "info" and len(words) > 1:
            topic = words[1]
            if topic == "status":
                return f"VM status: {self.status}\r\n"
            if topic == "version":
                qemu = self.version["qemu"]
                return f"{qemu['major']}.{qemu['minor']}.{qemu['micro']}{self.version['package']}\r\n"
            if topic == "name":
                return f"{self.name}\r\n" if self.name is not None else ""
        elif words == ["stop"]:
            self.stop()
            return ""
        elif words == ["cont"] or words == ["c"]:
            self.cont()
            return ""
        return f"unknown command: '{' '.join(words)}'\r\n"

    def close_fds(self) -> None:
        super().close_fds()
        for entries in self._fdsets.values():
            for fd, _ in entries:
                _close(fd)
        self._fdsets.clear()


# qemu-ga's argument types for the commands simulated here.
_QGA_SCHEMA = Schema(
    [
        {"name": "int64", "meta-type": "builtin", "json-type": "int64"},
        {"name": "str", "meta-type": "builtin", "json-type": "string"},
        {"name": "none", "meta-type": "object", "members": []},
        {"name": "sync", "meta-type": "object", "members": [{"name": "id", "type": "int64"}]},
        {"name": "shutdown", "meta-type": "object", "members": [{"name": "mode", "default": None, "type": "str"}]},
        {"name": "guest-sync", "meta-type": "command", "arg-type": "sync"},
        {"name": "guest-sync-delimited", "meta-type": "command", "arg-type": "sync"},
        {"name": "guest-ping", "meta-type": "command", "arg-type": "none"},
        {"name": "guest-info", "meta-type": "command", "arg-type": "none"},
        {"name": "guest-get-time", "meta-type": "command", "arg-type": "none"},
        {"name": "guest-get-host-name", "meta-type": "command", "arg-type": "none"},
        {"name": "guest-shutdown", "meta-type": "command", "arg-type": "shutdown"},
    ]
)


@functools.cache
def _qemu_ga_72_commands() -> dict[str, CommandInfo]:
    """qemu-ga 7.2's commands as its recorded ``guest-info`` lists them
    (shared by every simulated agent; treat as read-only)."""
    info = orjson.loads((DATA_DIR / _GUEST_INFO_72).read_bytes())["return"]
    table: dict[str, CommandInfo] = {}
    for entry in info["supported_commands"]:
        name = entry["name"]
        checks = _QGA_SCHEMA.command_info(name)
        table[name] = CommandInfo(
            name,
            enabled=entry["enabled"],
            success_response=entry["success-response"],
            check_arguments=checks.check_arguments if checks is not None else None,
        )
    return table


class SimulatedGuestAgent(Simulator):
    """qemu-ga 7.2 as a client sees it.

    Knows qemu-ga's commands (those disabled in the recorded ``guest-info``
    stay disabled unless :meth:`enable` is called).  Built-ins:
    ``guest-sync``, ``guest-sync-delimited``, ``guest-ping``, ``guest-info``
    (the recorded reply, kept up to date), ``guest-get-time``,
    ``guest-get-host-name`` and ``guest-shutdown`` (no reply, as in QEMU).
    """

    def __init__(self, *, version: str = "7.2.0", hostname: str = "simulated-guest") -> None:
        super().__init__(_qemu_ga_72_commands())
        self.version = version
        self.hostname = hostname
        self._info_reply: Encoded | None = None
        self._handlers.update(
            {
                "guest-sync": self._sync,
                "guest-sync-delimited": self._sync,
                "guest-ping": lambda call: None,
                "guest-info": self._guest_info,
                "guest-get-time": lambda call: time.time_ns(),
                "guest-get-host-name": lambda call: {"host-name": self.hostname},
                "guest-shutdown": self._shutdown,
            }
        )
        self.shutdown_requests: list[str] = []

    def enable(self, name: str, enabled: bool = True) -> None:
        """Enable (or disable) a qemu-ga command, like ``-b`` does."""
        current = self.commands.get(name)
        if current is None:
            raise KeyError(name)
        self._own[name] = replace(current, enabled=enabled)
        self._commands_changed()

    def _commands_changed(self) -> None:
        self._info_reply = None

    @staticmethod
    def _sync(call: Call) -> int:
        sync_id: int = call.arguments["id"]
        return sync_id

    def _guest_info(self, call: Call) -> Encoded:
        if self._info_reply is None:
            commands = [
                {"enabled": info.enabled, "name": name, "success-response": info.success_response}
                for name, info in ((name, self.commands[name]) for name in self.commands)
            ]
            self._info_reply = Encoded(to_json({"version": self.version, "supported_commands": commands}))
        return self._info_reply

    def _shutdown(self, call: Call) -> None:
        self.shutdown_requests.append(call.arguments.get("mode", "powerdown"))
