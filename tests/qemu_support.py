"""Start and stop real qemu-system-x86_64 and qemu-ga for tests.

Tests that need them are marked ``qemu``; when a binary is missing they
skip locally and fail in CI (``conftest.IN_CI``).  Every process started
here is killed at fixture teardown, and its sockets and state files live in
pytest's temporary directories.  The same scenarios also run against
qmpcore's embedded server (:class:`Embedded`), which must answer alike.
"""

from __future__ import annotations

import ast
import os
import pathlib
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from typing import Any

import orjson
import pytest

from conftest import IN_CI
from qmpcore.server import ServerProcess, start_in_subprocess

QEMU = shutil.which("qemu-system-x86_64") or "/usr/bin/qemu-system-x86_64"
QEMU_GA = shutil.which("qemu-ga") or "/usr/sbin/qemu-ga"
START_TIMEOUT = 20.0

#: Agent commands that would act on the machine running the tests.
QGA_BLOCKED = (
    "guest-shutdown,guest-suspend-disk,guest-suspend-ram,guest-suspend-hybrid,"
    "guest-exec,guest-exec-status,guest-file-open,guest-file-write,guest-set-time,"
    "guest-set-user-password,guest-set-vcpus,guest-set-memory-blocks,guest-fsfreeze-freeze,"
    "guest-fsfreeze-freeze-list,guest-fstrim,guest-ssh-add-authorized-keys,"
    "guest-ssh-remove-authorized-keys"
)


def require(binary: str) -> None:
    """Skip (locally) or fail (in CI) when ``binary`` is not installed."""
    if not (os.path.isfile(binary) and os.access(binary, os.X_OK)):
        message = f"{binary} is not installed"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)


def _listening(path: pathlib.Path) -> bool:
    """True once a socket bound to ``path`` listens (the file appears at bind,
    a little before listen).  Checked in /proc/net/unix, without connecting,
    since QEMU would take a connection as its one client."""
    if not path.exists():
        return False
    try:
        table = pathlib.Path("/proc/net/unix").read_text()
    except OSError:  # not Linux: the file is the best sign there is
        return True
    suffix = " " + str(path)
    return any(line.endswith(suffix) and line.split()[3] == "00010000" for line in table.splitlines())


def _wait_for_socket(path: pathlib.Path, proc: subprocess.Popen, log: pathlib.Path) -> None:
    """Wait until ``path`` accepts connections."""
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode}: {log.read_text()[-2000:]}")
        if _listening(path):
            return
        time.sleep(0.01)
    raise RuntimeError(f"{path} did not appear within {START_TIMEOUT} s")


def _wait_until_started(path: pathlib.Path, argv: list[str]) -> None:
    """Wait until QEMU has started its machine (or, with ``-S``, created it).

    QEMU greets from its monitor thread while its main thread may still be
    initialising: a test's session could then see the RESUME event of the
    machine starting.  One short session first waits that out.
    """
    import qmpcore

    paused = "-S" in argv
    deadline = time.monotonic() + START_TIMEOUT
    with qmpcore.connect_sync(str(path), timeout=START_TIMEOUT) as qmp:
        while not paused and qmp.execute("query-status", timeout=START_TIMEOUT)["status"] == "prelaunch":
            if time.monotonic() > deadline:
                raise RuntimeError(f"QEMU at {path} did not start its machine within {START_TIMEOUT} s")
            time.sleep(0.01)


class Process:
    """One running QEMU or qemu-ga, with its socket path."""

    kind = "qemu"

    def __init__(self, argv: list[str], path: pathlib.Path, log: pathlib.Path) -> None:
        self.argv = argv
        self.path = path
        self.log = log
        self.proc: subprocess.Popen | None = None
        self.start()

    def start(self) -> None:
        if self.path.exists():
            self.path.unlink()
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        _wait_for_socket(self.path, self.proc, self.log)
        if self.argv[0] == QEMU:
            _wait_until_started(self.path, self.argv)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 10.0) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self) -> None:
        """Kill the process (it may be stopped) and reap it."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        try:
            proc.send_signal(signal.SIGCONT)
            proc.kill()
        except ProcessLookupError:
            pass
        proc.wait(10)

    def restart(self) -> None:
        self.stop()
        self.start()


def qemu_argv(path: pathlib.Path, pretty: bool = False) -> list[str]:
    argv = [QEMU, "-M", "none", "-nodefaults", "-display", "none"]
    if pretty:
        argv += [
            "-chardev",
            f"socket,id=mon0,path={path},server=on,wait=off",
            "-mon",
            "chardev=mon0,mode=control,pretty=on",
        ]
    else:
        argv += ["-qmp", f"unix:{path},server=on,wait=off"]
    return argv


def qga_argv(directory: pathlib.Path, path: pathlib.Path, blocked: str = QGA_BLOCKED) -> list[str]:
    """qemu-ga listening on ``path``, its state in ``directory``, ``blocked`` commands refused."""
    state = directory / "state"
    state.mkdir(exist_ok=True)
    return [
        QEMU_GA,
        "-m",
        "unix-listen",
        "-p",
        str(path),
        "-t",
        str(state),
        "-f",
        str(directory / "qemu-ga.pid"),
        "-b",
        blocked,
    ]


class Embedded:
    """qmpcore's embedded QEMU-like server in a child process, used like :class:`Process`.

    ``path`` is the QMP socket, or the guest agent socket when ``agent``.
    Signals go to the child process, so SIGSTOP/SIGKILL scenarios work too.
    """

    kind = "embedded"

    def __init__(self, directory: pathlib.Path, pretty: bool = False, agent: bool = False) -> None:
        self.directory = directory
        self.pretty = pretty
        self.agent = agent
        self.server: ServerProcess | None = None
        self.start()

    def start(self) -> None:
        self.server = start_in_subprocess(self.directory, 1, agents=self.agent, pretty=self.pretty)
        self.path = pathlib.Path(self.server.qga_paths[0] if self.agent else self.server.qmp_paths[0])
        if self.agent:  # as qemu-ga -b does for the real agent
            for command in QGA_BLOCKED.split(","):
                self.server.agent(0).enable(command, False)

    @property
    def pid(self) -> int:
        assert self.server is not None
        return self.server.pid

    def signal(self, sig: int) -> None:
        os.kill(self.pid, sig)

    def stop(self) -> None:
        if self.server is not None:
            try:
                os.kill(self.pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
            self.server.stop()

    def restart(self) -> None:
        self.stop()
        self.start()


class Launcher:
    """Starts processes in one directory and kills them all at the end."""

    def __init__(self, directory: pathlib.Path) -> None:
        self.directory = directory
        self.processes: list[Any] = []
        self._count = 0

    def _new(self, argv_for: Callable[[pathlib.Path], list[str]], name: str) -> Process:
        self._count += 1
        path = self.directory / f"{name}{self._count}.sock"
        proc = Process(argv_for(path), path, self.directory / f"{name}{self._count}.log")
        self.processes.append(proc)
        return proc

    def qemu(self, pretty: bool = False, extra: list[str] | None = None) -> Process:
        require(QEMU)
        return self._new(lambda p: qemu_argv(p, pretty) + list(extra or ()), "qmp")

    def qemu_with_agent_channel(self, channel: pathlib.Path) -> Process:
        """A paused q35 VM (no guest) whose virtio-serial agent port is ``channel``.

        (The later ``-M q35`` overrides ``-M none``.)
        """
        vm = self.qemu(
            extra=[
                "-M",
                "q35",
                "-m",
                "64",
                "-S",
                "-chardev",
                f"socket,id=qga0,path={channel},server=on,wait=off",
                "-device",
                "virtio-serial",
                "-device",
                "virtserialport,chardev=qga0,name=org.qemu.guest_agent.0",
            ]
        )
        assert vm.proc is not None
        _wait_for_socket(channel, vm.proc, vm.log)
        return vm

    def qga(self) -> Process:
        require(QEMU_GA)
        return self._new(lambda p: qga_argv(self.directory, p), "qga")

    def embedded(self, pretty: bool = False, agent: bool = False) -> Embedded:
        self._count += 1
        directory = self.directory / f"embedded{self._count}"
        directory.mkdir()
        server = Embedded(directory, pretty=pretty, agent=agent)
        self.processes.append(server)
        return server

    def vm(self, kind: str, pretty: bool = False) -> Any:
        """A QMP target: real QEMU (``"qemu"``) or the embedded server."""
        return self.qemu(pretty=pretty) if kind == "qemu" else self.embedded(pretty=pretty)

    def agent(self, kind: str) -> Any:
        """A guest agent target: real qemu-ga (``"qemu-ga"``) or the embedded one."""
        return self.qga() if kind == "qemu-ga" else self.embedded(agent=True)

    def stop_all(self) -> None:
        for proc in self.processes:
            proc.stop()


def _launcher(directory: pathlib.Path) -> Iterator[Launcher]:
    launcher = Launcher(directory)
    try:
        yield launcher
    finally:
        launcher.stop_all()


@pytest.fixture
def launcher(tmp_path: pathlib.Path) -> Iterator[Launcher]:
    """Processes for one test (for scenarios that kill, stop or quit them)."""
    yield from _launcher(tmp_path)


@pytest.fixture(scope="module")
def module_launcher(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Launcher]:
    """Processes shared by a test module."""
    yield from _launcher(tmp_path_factory.mktemp("vm"))


VM_KINDS = ["qemu", "embedded"]
AGENT_KINDS = ["qemu-ga", "embedded"]


@pytest.fixture(scope="module", params=VM_KINDS)
def shared_vm(request: pytest.FixtureRequest, module_launcher: Launcher) -> Any:
    """One QMP target per module, for scenarios that leave it as they found it."""
    return module_launcher.vm(request.param)


@pytest.fixture(params=VM_KINDS)
def fresh_vm(request: pytest.FixtureRequest, launcher: Launcher) -> Any:
    """A QMP target of its own, for scenarios that stop, kill or quit it."""
    return launcher.vm(request.param)


@pytest.fixture(scope="module", params=AGENT_KINDS)
def shared_agent(request: pytest.FixtureRequest, module_launcher: Launcher) -> Any:
    """One guest agent per module, for scenarios that leave it as they found it."""
    return module_launcher.agent(request.param)


@pytest.fixture(params=AGENT_KINDS)
def fresh_agent(request: pytest.FixtureRequest, launcher: Launcher) -> Any:
    """A guest agent of its own, for scenarios that stop or kill it."""
    return launcher.agent(request.param)


def leave_half_command(path: pathlib.Path, data: bytes) -> None:
    """Connect, write ``data`` and disconnect, like a client that died mid-command."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        sock.connect(str(path))
        sock.sendall(data)


# -- recorded sessions (../shared/corpus/qemu-7.2) ----------------------------

# A reply's own id: first member (before "error") or last, compact or pretty.
_REPLY_ID = re.compile(rb'(,\s*"id": |\{\s*"id": )("(?:[^"\\]|\\.)*"|-?[0-9]+)(\s*\}|,\s*"error")')


def session(corpus_dir: pathlib.Path, name: str, body_only: bool = False) -> list[tuple[str, bytes | None]]:
    """The ``C:``/``S:`` steps of a recorded session as ``(side, bytes)``.

    Steps that are not bytes (``<nothing ...>``, resets, abbreviated lines)
    have None.  ``body_only`` starts after the ``# ---- test body ----``
    marker (the handshake before it is left out).
    """
    steps: list[tuple[str, bytes | None]] = []
    for line in (corpus_dir / "qemu-7.2" / name).read_text(encoding="utf-8").splitlines():
        if line.startswith("# ---- test body"):
            if body_only:
                steps.clear()
            continue
        side, sep, rest = line.partition(": ")
        if not sep or side not in ("C", "S"):
            continue
        literal = rest.startswith(("b'", 'b"')) and "bytes omitted>" not in rest
        steps.append((side, ast.literal_eval(rest) if literal else None))
    return steps


def renumber(data: bytes, ids: dict[bytes, int]) -> bytes:
    """Rewrite the reply ids QEMU recorded into the ids a client allocated.

    ``ids`` maps a recorded id as QEMU printed it (``b'"stop"'``, ``b'6'``)
    to the new id.  Recorded integer ids with no new id become strings, so
    they can never be mistaken for an allocated one.
    """

    def sub(m: re.Match[bytes]) -> bytes:
        old = m.group(2)
        if old in ids:
            new = str(ids[old]).encode()
        elif old.startswith(b'"'):
            new = old
        else:
            new = b'"unmapped ' + old + b'"'
        return m.group(1) + new + m.group(3)

    return _REPLY_ID.sub(sub, data)


def recorded_id(value: object) -> bytes:
    """An id as QEMU prints it in a reply."""
    return orjson.dumps(value)
