"""``qmpcore serve``: simulated VMs from the embedded server, until interrupted.

``serve PATH`` serves one VM's QMP monitor on the unix socket PATH;
``serve DIR --vms N`` serves N VMs with sockets ``DIR/vm0.qmp`` ...
``DIR/vm<N-1>.qmp`` (DIR is created if missing).  Each socket path is
printed on its own line once it listens, so a script can wait for the
output before connecting.  SIGINT or SIGTERM stops serving and removes the
sockets.

A socket file already at one of those paths is replaced only when it is
stale (nothing listens on it): ``serve`` never takes the path of a running
QEMU or of another server, and never replaces a file that is not a socket.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import os
import signal
import socket
import stat
import sys
from collections.abc import AsyncIterator

from . import EXIT_OK, EXIT_USAGE, UsageError
from ._output import one_line

__all__ = ["run_serve", "socket_paths", "check_free", "stop_on_signals"]

# connect() errors that mean "something is there": it accepted, or its
# backlog is full (a non-blocking unix connect says EAGAIN then).
_BUSY = (errno.EAGAIN, errno.EWOULDBLOCK, errno.EINPROGRESS)


def socket_paths(args: argparse.Namespace) -> list[str]:
    """The sockets ``serve`` will create for these arguments."""
    if args.vms is None:
        return [args.path]
    return [os.path.join(args.path, f"vm{i}.qmp") for i in range(args.vms)]


def _listening(path: str) -> bool | None:
    """True if something accepts connections on the unix socket ``path``,
    False if it is stale, None if that cannot be told (e.g. no permission)."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.setblocking(False)
        probe.connect(path)
        return True
    except OSError as exc:
        if exc.errno in _BUSY:
            return True
        if exc.errno in (errno.ECONNREFUSED, errno.ENOENT):
            return False
        return None
    finally:
        probe.close()


def check_free(path: str) -> None:
    """Make ``path`` free for a new socket: remove a stale socket there;
    raise :class:`UsageError` if a live one or another kind of file is there."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    except OSError as exc:
        raise UsageError(f"{path}: {exc.strerror}") from None
    if not stat.S_ISSOCK(mode):
        kind = "a directory" if stat.S_ISDIR(mode) else "a file that is not a socket"
        raise UsageError(f"{path} is {kind}; not replacing it (choose another path)")
    live = _listening(path)
    if live is None:
        raise UsageError(f"{path}: cannot tell whether something listens on this socket; not replacing it")
    if live:
        raise UsageError(
            f"{path}: something is listening on this socket (a running QEMU or another server); "
            "not replacing it (stop that process or choose another path)"
        )
    try:
        os.unlink(path)  # stale: nothing has listened on it since its server died
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise UsageError(f"{path}: cannot remove the stale socket: {exc.strerror}") from None


@contextlib.asynccontextmanager
async def _serving(args: argparse.Namespace) -> AsyncIterator[list[str]]:
    from ..server import serve_vm, serve_vms

    if getattr(args, "replay", None) is not None:
        from ..server._replay import serve_replay

        if args.vms is not None:
            raise UsageError("--replay serves one recording: no --vms")
        async with serve_replay(args.replay, args.path):
            yield [args.path]
    elif getattr(args, "listen_cert", None) is not None:
        from ._proxy import serve_tls

        async with serve_tls(args) as address:  # TLS on host:port
            yield [address]
    elif args.vms is None:
        async with serve_vm(args.path, pretty=args.pretty):
            yield [args.path]
    else:
        async with serve_vms(args.path, args.vms, pretty=args.pretty) as vms:
            yield vms.qmp_paths


def stop_on_signals() -> asyncio.Event:
    """An event that SIGINT and SIGTERM set (where the loop can handle signals)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    return stop


async def _serve(args: argparse.Namespace) -> None:
    stop = stop_on_signals()
    async with _serving(args) as paths:
        sys.stdout.write("".join(f"{path}\n" for path in paths))
        sys.stdout.flush()
        await stop.wait()


def run_serve(args: argparse.Namespace) -> int:
    """Serve until SIGINT/SIGTERM; return the exit status."""
    if args.vms is not None and args.vms < 1:
        raise UsageError("--vms must be at least 1")
    if args.vms is not None and os.path.exists(args.path) and not os.path.isdir(args.path):
        raise UsageError(f"{args.path} is not a directory (with --vms, PATH is the directory for the sockets)")
    for path in socket_paths(args):
        check_free(path)
    try:
        asyncio.run(_serve(args))
    except OSError as exc:
        text = exc.strerror or str(exc)
        where = exc.filename if isinstance(exc.filename, str) else args.path
        print(f"qmpcore serve: {one_line(f'{where}: {text}', sys.stderr.isatty())}", file=sys.stderr)
        return EXIT_USAGE
    return EXIT_OK
