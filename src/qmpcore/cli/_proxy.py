"""TLS flags of the client commands, and ``qmpcore proxy``.

::

    qmpcore exec 10.0.0.5:4444 query-status --tls-ca ca-cert.pem \\
        --tls-cert client-cert.pem --tls-key client-key.pem
    qmpcore proxy /run/vm1/qmp.sock --listen /run/vm1/proxy.sock \\
        --listen /run/vm1/monitoring.sock --policy read-only --record vm1.txt

``proxy`` holds the one connection to TARGET and serves every ``--listen``
address (unix path or host:port); a ``--policy`` applies to the
``--listen`` before it (``read-only``, ``allow-all``, or
``allow=query-*,qom-get;deny=quit``).  TCP listeners serve TLS when
``--listen-cert``/``--listen-key`` are given (``--listen-ca``: clients need
a certificate signed by it).  Each listening address is printed on its own
line once the proxy serves; SIGINT or SIGTERM stops it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ssl
import sys
from collections.abc import AsyncIterator
from typing import Any

from . import EXIT_CONNECTION, EXIT_OK, UsageError, parse_address
from ._serve import stop_on_signals

__all__ = ["add_tls_arguments", "tls_options", "add_proxy_parser", "run_proxy", "add_replay_argument", "serve_tls"]


def add_tls_arguments(parser: argparse.ArgumentParser) -> None:
    """``--tls-ca``, ``--tls-cert``, ``--tls-key``, ``--tls-server-name`` (TLS to a TCP address)."""
    group = parser.add_argument_group("TLS (host:port addresses; QEMU's tls-creds-x509)")
    group.add_argument("--tls-ca", metavar="FILE", help="CA certificate(s) to verify the server with (enables TLS)")
    group.add_argument("--tls-cert", metavar="FILE", help="client certificate, for QEMU's verify-peer=on")
    group.add_argument("--tls-key", metavar="FILE", help="the client certificate's key (default: in --tls-cert)")
    group.add_argument("--tls-server-name", metavar="NAME", help="name the server's certificate must have")


def tls_options(args: argparse.Namespace) -> dict[str, Any]:
    """``ssl``/``server_hostname`` keyword arguments from the TLS flags ({} without them)."""
    ca, cert, key, name = args.tls_ca, args.tls_cert, args.tls_key, args.tls_server_name
    if ca is None and cert is None and key is None and name is None:
        return {}
    if key is not None and cert is None:
        raise UsageError("--tls-key needs --tls-cert")
    try:
        context = ssl.create_default_context(cafile=ca)
        if cert is not None:
            context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise UsageError(f"TLS files: {exc}") from None
    return {"ssl": context, "server_hostname": name}


class _Listen(argparse.Action):
    """``--listen ADDRESS``: one more listener (allow-all until a --policy follows)."""

    def __call__(self, parser: Any, namespace: Any, values: Any, option_string: Any = None) -> None:
        listens = list(getattr(namespace, self.dest) or [])
        listens.append([values, None])
        setattr(namespace, self.dest, listens)


class _Policy(argparse.Action):
    """``--policy POLICY``: the policy of the --listen before it."""

    def __call__(self, parser: Any, namespace: Any, values: Any, option_string: Any = None) -> None:
        listens: list[list[Any]] = getattr(namespace, "listen", None) or []
        if not listens:
            parser.error("--policy applies to the --listen before it")
        if listens[-1][1] is not None:
            parser.error(f"two --policy for --listen {listens[-1][0]}")
        listens[-1][1] = values


def add_proxy_parser(sub: Any) -> None:
    """Register ``qmpcore proxy``."""
    p = sub.add_parser(
        "proxy",
        help="share one QMP monitor between many clients, with policies per socket",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("target", metavar="TARGET", help="QEMU's monitor: unix socket path or host:port")
    p.add_argument("--listen", action=_Listen, required=True, metavar="ADDRESS", help="serve clients here")
    p.add_argument(
        "--policy", action=_Policy, metavar="POLICY", help="read-only, allow-all, or allow=PATTERNS;deny=PATTERNS"
    )
    p.add_argument("--record", metavar="FILE", help="write every message each way to FILE (corpus transcript)")
    p.add_argument("--client-buffer", type=int, default=1 << 20, metavar="BYTES", help="unread output per client")
    p.add_argument("--listen-cert", metavar="FILE", help="serve TLS on TCP listeners with this certificate")
    p.add_argument("--listen-key", metavar="FILE", help="its key (default: in --listen-cert)")
    p.add_argument("--listen-ca", metavar="FILE", help="require client certificates signed by this CA")
    add_tls_arguments(p)
    p.set_defaults(handler=run_proxy)


def add_replay_argument(parser: argparse.ArgumentParser) -> None:
    """``serve --replay FILE``, and ``serve HOST:PORT --listen-cert ...`` (TLS)."""
    parser.add_argument("--replay", metavar="FILE", help="answer from a recording (proxy --record, or the corpus)")
    group = parser.add_argument_group("TLS (PATH is then host:port)")
    group.add_argument("--listen-cert", metavar="FILE", help="serve TLS with this certificate")
    group.add_argument("--listen-key", metavar="FILE", help="its key (default: in --listen-cert)")
    group.add_argument("--listen-ca", metavar="FILE", help="require client certificates signed by this CA")


@contextlib.asynccontextmanager
async def serve_tls(args: argparse.Namespace) -> AsyncIterator[str]:
    """``qmpcore serve HOST:PORT --listen-cert ...``: one simulated VM over TLS; yields ``host:port`` as bound."""
    from ..server import serve_vm

    address = parse_address(args.path)
    if not isinstance(address, tuple) or args.vms is not None:
        raise UsageError("TLS (--listen-cert) serves one VM on host:port")
    async with serve_vm(address, pretty=args.pretty, ssl=_server_context(args)) as vm:
        host, port = vm.endpoints[0].address[:2]
        yield f"{host}:{port}"


def _server_context(args: argparse.Namespace) -> ssl.SSLContext | None:
    if args.listen_cert is None:
        if args.listen_key is not None or args.listen_ca is not None:
            raise UsageError("--listen-key and --listen-ca need --listen-cert")
        return None
    try:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(args.listen_cert, args.listen_key)
        if args.listen_ca is not None:
            context.load_verify_locations(args.listen_ca)
            context.verify_mode = ssl.CERT_REQUIRED
    except (OSError, ssl.SSLError) as exc:
        raise UsageError(f"TLS files: {exc}") from None
    return context


def _listeners(args: argparse.Namespace) -> list[Any]:
    from ..proxy import Policy, ProxyListener

    server_tls = _server_context(args)
    listeners = []
    for text, policy_text in args.listen:
        address = parse_address(text)
        try:
            policy = Policy.parse(policy_text or "allow-all")
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        tls = server_tls if isinstance(address, tuple) else None
        listeners.append(ProxyListener(address, policy, ssl=tls))
    return listeners


async def _run(args: argparse.Namespace, proxy: Any) -> None:
    stop = stop_on_signals()
    async with proxy:
        lines = []
        for address in proxy.addresses:
            lines.append(f"{address[0]}:{address[1]}\n" if isinstance(address, tuple) else f"{address}\n")
        sys.stdout.write("".join(lines))
        sys.stdout.flush()
        await stop.wait()


def run_proxy(args: argparse.Namespace) -> int:
    """Serve until SIGINT/SIGTERM; return the exit status."""
    from ..errors import QMPError
    from ..proxy import Proxy

    if args.client_buffer < 1:
        raise UsageError("--client-buffer must be positive")
    proxy = Proxy(
        parse_address(args.target),
        _listeners(args),
        client_buffer=args.client_buffer,
        record=args.record,
        **tls_options(args),
    )
    try:
        asyncio.run(_run(args, proxy))
    except (QMPError, OSError, TimeoutError) as exc:
        print(f"qmpcore proxy: {args.target}: {exc or type(exc).__name__}", file=sys.stderr)
        return EXIT_CONNECTION
    return EXIT_OK
