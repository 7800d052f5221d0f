"""``qmpcore serve``: simulated VMs from the embedded server, until interrupted.

``serve PATH`` serves one VM's QMP monitor on the unix socket PATH;
``serve DIR --vms N`` serves N VMs with sockets ``DIR/vm0.qmp`` ... Each
socket path is printed on its own line once it listens, so a script can
wait for the output before connecting.  SIGINT or SIGTERM stops serving
and removes the sockets.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from collections.abc import AsyncIterator
from typing import Any

from . import EXIT_OK, EXIT_USAGE, UsageError

__all__ = ["run_serve"]


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


async def _serve(args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    async with _serving(args) as paths:
        sys.stdout.write("".join(f"{path}\n" for path in paths))
        sys.stdout.flush()
        await stop.wait()


def run_serve(args: argparse.Namespace) -> Any:
    """Serve until SIGINT/SIGTERM; return the exit status."""
    if args.vms is not None and args.vms < 1:
        raise UsageError("--vms must be at least 1")
    try:
        asyncio.run(_serve(args))
    except OSError as exc:
        print(f"qmpcore serve: {args.path}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return EXIT_OK
