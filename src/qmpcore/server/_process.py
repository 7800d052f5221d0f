"""Simulated VMs in a child process, steered from the parent.

Benchmarks keep the server off the client's CPU by running
:func:`qmpcore.server.serve_vms` in a child process.  The child reports its
socket paths once they listen, then executes hook calls (``emit_event``,
``delay_command``, ...) that the parent sends as JSON lines on its stdin;
it answers each on stdout.  When the parent goes away, the child's stdin
closes and it exits, so no server outlives its test.

Run directly as ``python -c 'from qmpcore.server._process import main; main()' CONFIG_JSON``.
"""

from __future__ import annotations

import asyncio
import json
import os
import select
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

__all__ = ["ServerProcess", "RemoteSimulator", "start_in_subprocess", "child_environment"]

_STARTUP_TIMEOUT = 60.0
_CALL_TIMEOUT = 10.0

# Hooks a parent may call, per target.
_SHARED_METHODS = frozenset(
    {"delay_command", "hang_command", "drop_on_command", "clear_faults", "send_raw", "drop_connections", "connected"}
)
_VM_METHODS = _SHARED_METHODS | {"emit_event", "flood_events", "stop", "cont", "restart", "status"}
_AGENT_METHODS = _SHARED_METHODS | {"enable"}
_ATTRIBUTES = frozenset({"status", "connected"})


# -- child side -------------------------------------------------------------------


def _write_line(message: dict[str, Any]) -> None:
    sys.stdout.buffer.write(json.dumps(message).encode() + b"\n")
    sys.stdout.buffer.flush()


async def _invoke(vms: Any, request: dict[str, Any]) -> Any:
    vm = vms[int(request["index"])]
    target_name = request.get("target", "vm")
    method = request["method"]
    allowed = _VM_METHODS if target_name == "vm" else _AGENT_METHODS
    target = vm if target_name == "vm" else vm.agent
    if target is None or method not in allowed:
        raise ValueError(f"no {target_name} method {method!r}")
    if method in _ATTRIBUTES:
        return getattr(target, method)
    args: list[Any] = list(request.get("args", ()))
    kwargs: dict[str, Any] = dict(request.get("kwargs", {}))
    if method == "send_raw":
        args[0] = bytes.fromhex(args[0])
    result = getattr(target, method)(*args, **kwargs)
    if method == "flood_events":
        return None  # started; the parent reads the events
    if asyncio.iscoroutine(result):
        result = await result
    return result


async def _child(config: dict[str, Any]) -> None:
    from . import serve_vms

    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 20)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    async with serve_vms(
        config["directory"],
        int(config["count"]),
        agents=bool(config.get("agents")),
        prefix=config.get("prefix", "vm"),
        pretty=bool(config.get("pretty")),
        **config.get("vm_options", {}),
    ) as vms:
        _write_line({"ready": True, "pid": os.getpid(), "qmp": vms.qmp_paths, "qga": vms.qga_paths})
        while True:
            line = await reader.readline()
            if not line:
                break  # the parent is gone
            request = json.loads(line)
            if request.get("method") == "shutdown":
                _write_line({"id": request.get("id"), "result": None})
                break
            try:
                result = await _invoke(vms, request)
            except Exception as exc:
                _write_line({"id": request.get("id"), "error": f"{type(exc).__name__}: {exc}"})
            else:
                _write_line({"id": request.get("id"), "result": result})


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    asyncio.run(_child(json.loads(argv[0])))


# -- parent side -----------------------------------------------------------------


class _LineReader:
    """JSON lines from the child's stdout, each wait bounded by a timeout."""

    def __init__(self, process: subprocess.Popen[bytes]) -> None:
        self._process = process
        self._buffer = b""

    def read(self, timeout: float) -> dict[str, Any]:
        stdout = self._process.stdout
        assert stdout is not None
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("server process did not answer")
            ready, _, _ = select.select([stdout], [], [], left)
            if ready:
                chunk = os.read(stdout.fileno(), 65536)
                if not chunk:
                    raise RuntimeError(f"server process exited (status {self._process.wait()})")
                self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        message: dict[str, Any] = json.loads(line)
        return message


class ServerProcess:
    """Handle on simulated VMs served by a child process.

    ``qmp_paths``/``qga_paths`` are the sockets; :meth:`vm` and :meth:`agent`
    return proxies whose methods run the same hooks as
    :class:`~qmpcore.server.SimulatedVM` does in-process (each call blocks
    until the child has applied it, normally well under a millisecond;
    ``flood_events`` returns as soon as the flood has started).  Use as a
    context manager, or call :meth:`stop`.
    """

    def __init__(self, process: subprocess.Popen[bytes], reader: _LineReader, ready: dict[str, Any]) -> None:
        self._process = process
        self._reader = reader
        self.pid: int = ready["pid"]
        self.qmp_paths: list[str] = list(ready["qmp"])
        self.qga_paths: list[str] = list(ready["qga"])
        self._lock = threading.Lock()
        self._next_id = 0

    @property
    def running(self) -> bool:
        return self._process.poll() is None

    def vm(self, index: int) -> RemoteSimulator:
        """Proxy for the hooks of VM ``index``."""
        return RemoteSimulator(self, index, "vm")

    def agent(self, index: int) -> RemoteSimulator:
        """Proxy for the hooks of VM ``index``'s guest agent."""
        return RemoteSimulator(self, index, "agent")

    def call(
        self, index: int, method: str, *args: Any, target: str = "vm", timeout: float = _CALL_TIMEOUT, **kwargs: Any
    ) -> Any:
        """Run ``method(*args, **kwargs)`` on a simulator in the child."""
        with self._lock:
            self._next_id += 1
            request = {
                "id": self._next_id,
                "index": index,
                "target": target,
                "method": method,
                "args": args,
                "kwargs": kwargs,
            }
            self._send(request)
            reply = self._reader.read(timeout)
        if "error" in reply:
            raise RuntimeError(f"server process: {reply['error']}")
        return reply.get("result")

    def stop(self, timeout: float = 10.0) -> None:
        """Close every VM and wait for the child to exit (killing it if it
        does not)."""
        if self._process.poll() is None:
            try:
                with self._lock:
                    self._send({"id": 0, "method": "shutdown"})
                    self._reader.read(timeout)
            except (OSError, RuntimeError, TimeoutError):
                pass
        self._reap(timeout)

    def _reap(self, timeout: float) -> None:
        process = self._process
        try:
            if process.stdin is not None:
                process.stdin.close()
        except OSError:
            pass
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def _send(self, message: dict[str, Any]) -> None:
        assert self._process.stdin is not None
        self._process.stdin.write(json.dumps(message).encode() + b"\n")
        self._process.stdin.flush()


class RemoteSimulator:
    """The hooks of one simulated VM (or guest agent) in a child process."""

    def __init__(self, process: ServerProcess, index: int, target: str) -> None:
        self._process = process
        self._index = index
        self._target = target

    def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return self._process.call(self._index, method, *args, target=self._target, **kwargs)

    @property
    def status(self) -> str:
        return str(self._call("status"))

    @property
    def connected(self) -> int:
        return int(self._call("connected"))

    def emit_event(self, name: str, data: dict[str, Any] | None = None) -> None:
        self._call("emit_event", name, data)

    def flood_events(self, count: int, name: str = "FLOOD", data: dict[str, Any] | None = None) -> None:
        """Start sending ``count`` events (returns at once)."""
        self._call("flood_events", count, name, data)

    def delay_command(self, command: str, seconds: float, *, times: int | None = None) -> None:
        self._call("delay_command", command, seconds, times=times)

    def hang_command(self, command: str, *, times: int | None = None) -> None:
        self._call("hang_command", command, times=times)

    def drop_on_command(
        self, command: str, *, mid_frame: bool = False, reset: bool = False, times: int | None = 1
    ) -> None:
        self._call("drop_on_command", command, mid_frame=mid_frame, reset=reset, times=times)

    def clear_faults(self, command: str | None = None) -> None:
        self._call("clear_faults", command)

    def send_raw(self, data: bytes) -> None:
        self._call("send_raw", bytes(data).hex())

    def drop_connections(self, *, mid_frame: bool = False, reset: bool = False) -> None:
        self._call("drop_connections", mid_frame=mid_frame, reset=reset)

    def stop(self) -> None:
        self._call("stop")

    def cont(self) -> None:
        self._call("cont")

    def restart(self) -> None:
        self._call("restart")

    def enable(self, name: str, enabled: bool = True) -> None:
        self._call("enable", name, enabled)


def child_environment() -> dict[str, str]:
    """This environment, with this qmpcore first on ``PYTHONPATH``, so that a
    child Python imports the same package (a source tree included)."""
    import qmpcore

    package_root = os.path.dirname(os.path.dirname(os.path.abspath(qmpcore.__file__)))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    return env


def start_in_subprocess(
    directory: str | os.PathLike[str],
    count: int,
    *,
    agents: bool = False,
    prefix: str = "vm",
    pretty: bool = False,
    timeout: float = _STARTUP_TIMEOUT,
    **vm_options: Any,
) -> ServerProcess:
    """Serve ``count`` simulated VMs from a child process (blocking until
    they listen); arguments as for :func:`qmpcore.server.serve_vms`, except
    that ``vm_options`` must be JSON values."""
    config = {
        "directory": os.fspath(directory),
        "count": count,
        "agents": agents,
        "prefix": prefix,
        "pretty": pretty,
        "vm_options": vm_options,
    }
    process = subprocess.Popen(
        [sys.executable, "-c", "from qmpcore.server._process import main; main()", json.dumps(config)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=child_environment(),
    )
    reader = _LineReader(process)
    try:
        ready = reader.read(timeout)
        if not ready.get("ready"):
            raise RuntimeError(f"server process failed to start: {ready}")
    except BaseException:
        process.kill()
        process.wait()
        raise
    return ServerProcess(process, reader, ready)


if __name__ == "__main__":
    main()
