"""Real QEMU processes (``-M none``) with QMP sockets, for benchmarks and tests.

:class:`QemuGroup` starts N ``qemu-system-x86_64 -M none`` processes, each
with a QMP monitor on a unix socket in one directory, and can kill, freeze
(SIGSTOP), thaw and restart any of them.  On Linux each QEMU is also asked
to die with the process that started it, so none outlives a crashed run.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence

__all__ = ["QemuMissing", "find_qemu", "QemuGroup"]

#: Seconds allowed for a QEMU to create its monitor socket.
START_TIMEOUT = 30.0


class QemuMissing(RuntimeError):
    """No QEMU binary was found."""


def find_qemu() -> str:
    """The QEMU binary: ``$QMPCORE_QEMU``, else ``qemu-system-x86_64`` on PATH."""
    found = os.environ.get("QMPCORE_QEMU") or shutil.which("qemu-system-x86_64")
    if not found or not os.access(found, os.X_OK):
        raise QemuMissing(
            "qemu-system-x86_64 was not found (install QEMU, e.g. apt-get install "
            "qemu-system-x86, or set QMPCORE_QEMU to the binary)"
        )
    return found


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def _listening(path: str) -> bool:
    """True once a unix socket accepts connections (it exists before it listens)."""
    if not os.path.exists(path):
        return False
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
        return True
    except OSError:
        return False
    finally:
        probe.close()


class QemuGroup:
    """N QEMUs with QMP sockets ``<directory>/qmp-<i>.sock``.

    Use as a context manager (or call :meth:`close`): every process is
    killed and reaped on exit.  ``directory`` defaults to a fresh temporary
    one, removed on close.
    """

    def __init__(
        self,
        count: int,
        directory: str | None = None,
        *,
        binary: str | None = None,
        extra_args: Sequence[str] = (),
    ) -> None:
        if count < 0:
            raise ValueError("count must not be negative")
        self.binary = binary or find_qemu()
        self._own_dir = directory is None
        self.directory = directory or tempfile.mkdtemp(prefix="qmpcore-qemu-")
        self.extra_args = list(extra_args)
        self.paths: list[str] = [os.path.join(self.directory, f"qmp-{i}.sock") for i in range(count)]
        self.procs: list[subprocess.Popen[bytes] | None] = [None] * count

    def _argv(self, i: int) -> list[str]:
        return [
            self.binary,
            "-M", "none",
            "-nodefaults",
            "-display", "none",
            "-qmp", f"unix:{self.paths[i]},server=on,wait=off",
            *self.extra_args,
        ]  # fmt: skip

    def _spawn(self, i: int) -> None:
        try:
            os.unlink(self.paths[i])
        except FileNotFoundError:
            pass
        self.procs[i] = subprocess.Popen(
            self._argv(i),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
        )

    def _wait_ready(self, indices: Sequence[int], timeout: float) -> None:
        """Wait until each QEMU's monitor accepts connections."""
        deadline = time.monotonic() + timeout
        waiting = list(indices)
        while waiting:
            for i in list(waiting):
                proc = self.procs[i]
                if _listening(self.paths[i]):
                    waiting.remove(i)
                elif proc is None or proc.poll() is not None:
                    raise RuntimeError(f"QEMU {i} exited before creating its socket")
            if waiting:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{len(waiting)} QEMU(s) not ready within {timeout:g} s")
                time.sleep(0.02)

    def start(self, timeout: float = START_TIMEOUT) -> list[str]:
        """Start every QEMU and wait for their sockets; return the paths."""
        try:
            for i in range(len(self.paths)):
                self._spawn(i)
            self._wait_ready(range(len(self.paths)), timeout)
        except BaseException:
            self.close()
            raise
        return self.paths

    def _signal(self, i: int, sig: int) -> None:
        proc = self.procs[i]
        if proc is not None and proc.poll() is None:
            proc.send_signal(sig)

    def kill(self, i: int) -> None:
        """Kill QEMU ``i`` (SIGKILL) and reap it."""
        proc = self.procs[i]
        if proc is not None:
            if proc.poll() is None:
                proc.kill()
            proc.wait()

    def freeze(self, i: int) -> None:
        """Stop QEMU ``i`` (SIGSTOP): it keeps its socket and answers nothing."""
        self._signal(i, signal.SIGSTOP)

    def thaw(self, i: int) -> None:
        """Let a frozen QEMU run again (SIGCONT)."""
        self._signal(i, signal.SIGCONT)

    def restart(self, i: int, timeout: float = START_TIMEOUT) -> None:
        """Kill QEMU ``i`` and start a new one on the same socket path."""
        self.kill(i)
        self._spawn(i)
        self._wait_ready([i], timeout)

    def pids(self) -> list[int | None]:
        return [p.pid if p is not None else None for p in self.procs]

    def close(self) -> None:
        """Kill and reap every QEMU; remove the directory if it was created here."""
        for i, proc in enumerate(self.procs):
            if proc is not None:
                self.thaw(i)  # a stopped process still dies of SIGKILL; reaping is quicker awake
                self.kill(i)
        if self._own_dir:
            shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> QemuGroup:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
