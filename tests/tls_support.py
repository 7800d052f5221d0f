"""Certificates and TLS-serving QEMUs for the TLS and proxy tests.

Certificates are made per module with ``trustme``: one CA that signs the
server (for ``127.0.0.1`` and ``localhost``) and two clients (one QEMU's
``authz-simple`` allows, one it refuses), and a second CA nobody trusts.
QEMU gets them as a ``tls-creds-x509`` directory (``ca-cert.pem``,
``server-cert.pem``, ``server-key.pem``) with ``verify-peer=on``.
"""

from __future__ import annotations

import json
import pathlib
import socket
import ssl
import time
from typing import Any

import pytest
import trustme

#: The distinguished names of the two client certificates, as gnutls
#: prints them for QEMU's authz (in certificate order, not RFC 4514's).
ALLOWED_DN = "O=qmpcore tests,OU=monitoring,CN=allowed"
REFUSED_DN = "O=qmpcore tests,OU=monitoring,CN=refused"


class Certs:
    """A CA, the server's certificate and the clients' ones, written to ``directory``."""

    def __init__(self, directory: pathlib.Path) -> None:
        self.directory = directory
        self.ca = trustme.CA()
        self.other_ca = trustme.CA()
        server = self.ca.issue_cert("127.0.0.1", "localhost")
        self.allowed = self.ca.issue_cert(
            "allowed.example",
            common_name="allowed",
            organization_name="qmpcore tests",
            organization_unit_name="monitoring",
        )
        self.refused = self.ca.issue_cert(
            "refused.example",
            common_name="refused",
            organization_name="qmpcore tests",
            organization_unit_name="monitoring",
        )
        self.stranger = self.other_ca.issue_cert(
            "allowed.example",
            common_name="allowed",
            organization_name="qmpcore tests",
            organization_unit_name="monitoring",
        )
        self.server = server
        #: QEMU's tls-creds-x509 directory.
        self.qemu_dir = directory / "qemu-creds"
        self.qemu_dir.mkdir()
        self.ca.cert_pem.write_to_path(str(self.qemu_dir / "ca-cert.pem"))
        server.cert_chain_pems[0].write_to_path(str(self.qemu_dir / "server-cert.pem"))
        server.private_key_pem.write_to_path(str(self.qemu_dir / "server-key.pem"))
        #: Files for the CLI flags.
        self.ca_file = self.qemu_dir / "ca-cert.pem"
        self.client_cert = directory / "client-cert.pem"
        self.client_key = directory / "client-key.pem"
        self.allowed.cert_chain_pems[0].write_to_path(str(self.client_cert))
        self.allowed.private_key_pem.write_to_path(str(self.client_key))
        self.server_cert = self.qemu_dir / "server-cert.pem"
        self.server_key = self.qemu_dir / "server-key.pem"

    def client_context(self, cert: Any = "allowed", ca: Any = None) -> ssl.SSLContext:
        """A client context trusting ``ca`` (default: ours) and presenting ``cert``."""
        context = ssl.create_default_context()
        (ca or self.ca).configure_trust(context)
        leaf = getattr(self, cert) if isinstance(cert, str) else cert
        if leaf is not None:
            leaf.configure_cert(context)
        return context

    def server_context(self, verify_peer: bool = True) -> ssl.SSLContext:
        """A server context like QEMU's ``verify-peer=on`` creds."""
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.server.configure_cert(context)
        if verify_peer:
            self.ca.configure_trust(context)
            context.verify_mode = ssl.CERT_REQUIRED
        return context


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return Certs(tmp_path_factory.mktemp("certs"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _tcp_listening(port: int) -> bool:
    """True once something listens on 127.0.0.1:``port`` (read from /proc, without connecting:
    QEMU would take a connection as its one client)."""
    try:
        table = pathlib.Path("/proc/net/tcp").read_text()
    except OSError:  # not Linux
        return True
    wanted = f"0100007F:{port:04X}"
    return any(
        fields[1] == wanted and fields[3] == "0A" for fields in (line.split() for line in table.splitlines()[1:])
    )


def wait_tcp(port: int, proc: Any, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.proc is not None and proc.proc.poll() is not None:
            raise RuntimeError(f"QEMU exited: {proc.log.read_text()[-2000:]}")
        if _tcp_listening(port):
            return
        time.sleep(0.01)
    raise RuntimeError(f"nothing listens on port {port} after {timeout} s")


def tls_qemu_args(certs: Certs, port: int, authz: str | None = ALLOWED_DN) -> list[str]:
    """QEMU options for a QMP monitor on TLS at 127.0.0.1:``port`` (client certificates checked)."""
    args = [
        "-object",
        f"tls-creds-x509,id=tls0,dir={certs.qemu_dir},endpoint=server,verify-peer=on",
    ]
    chardev = f"socket,id=tlsmon,host=127.0.0.1,port={port},server=on,wait=off,tls-creds=tls0"
    if authz is not None:
        args += ["-object", json.dumps({"qom-type": "authz-simple", "id": "auth0", "identity": authz})]
        chardev += ",tls-authz=auth0"
    return args + ["-chardev", chardev, "-mon", "chardev=tlsmon,mode=control"]


def start_tls_qemu(launcher: Any, certs: Certs, authz: str | None = ALLOWED_DN) -> tuple[Any, tuple[str, int]]:
    """A real QEMU serving QMP on TLS (and on its usual unix socket); returns it and the TLS address."""
    port = free_port()
    vm = launcher.qemu(extra=tls_qemu_args(certs, port, authz))
    wait_tcp(port, vm)
    return vm, ("127.0.0.1", port)
