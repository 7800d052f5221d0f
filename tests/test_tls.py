"""TLS against a real QEMU 7.2 serving QMP with ``tls-creds-x509,verify-peer=on``.

The asyncio and blocking clients, ``Fleet`` and the qemu.qmp adapter
connect with a plain ``ssl.SSLContext`` (QEMU 7.2 needs the last byte of
each message in a record of its own, which the clients do); an unknown CA,
a wrong name and a client certificate QEMU's ``authz-simple`` refuses each
fail with their own :class:`qmpcore.TLSError`.
"""

from __future__ import annotations

import asyncio
import ssl

import pytest

import qmpcore
from qemu_support import launcher, module_launcher  # noqa: F401 -- fixtures
from qmpcore.compat import qemu_qmp
from qmpcore.fleet import Fleet
from tls_support import Certs, certs, start_tls_qemu  # noqa: F401 -- fixtures

pytestmark = pytest.mark.qemu

WAIT = 15.0


@pytest.fixture(scope="module")
def tls_vm(module_launcher, certs):  # noqa: F811
    """One QEMU whose TLS monitor allows the ``allowed`` client certificate only."""
    return start_tls_qemu(module_launcher, certs)


async def test_asyncio_client(tls_vm, certs):  # noqa: F811
    _, address = tls_vm
    async with await qmpcore.connect(address, ssl=certs.client_context(), timeout=WAIT) as qmp:
        assert qmp.version >= (7, 0)
        assert (await qmp.execute("query-status"))["status"] == "running"
        # Pipelined commands share writes: each reply still arrives.
        names = await asyncio.gather(*(qmp.execute("query-name") for _ in range(20)))
        assert names == [{}] * 20
        await qmp.execute("stop")
        assert (await qmp.wait_event("STOP", timeout=WAIT)).name == "STOP"
        await qmp.execute("cont")
        assert (await qmp.wait_event("RESUME", timeout=WAIT)).name == "RESUME"
        # A big reply crosses many TLS records.
        schema = await qmp.execute("query-qmp-schema", timeout=WAIT)
        assert len(schema) > 1000


def test_blocking_client(tls_vm, certs):  # noqa: F811
    _, address = tls_vm
    with qmpcore.connect_sync(address, ssl=certs.client_context(), timeout=WAIT) as qmp:
        assert qmp.execute("query-status")["status"] == "running"
        assert len(qmp.execute("query-qmp-schema", timeout=WAIT)) > 1000
        qmp.execute("stop")
        assert qmp.wait_event("STOP", timeout=WAIT).name == "STOP"
        qmp.execute("cont")
        assert qmp.wait_event("RESUME", timeout=WAIT).name == "RESUME"


async def test_fleet(tls_vm, certs):  # noqa: F811
    _, address = tls_vm
    async with Fleet({"vm": address}, ssl=certs.client_context(), reconnect=False) as fleet:
        assert await fleet.wait_connected(timeout=WAIT)
        results = await fleet.execute_all("query-status")
        assert results["vm"]["status"] == "running"


async def test_qemu_qmp_adapter(tls_vm, certs):  # noqa: F811
    _, address = tls_vm
    qmp = qemu_qmp.QMPClient("tls")
    await qmp.connect(address, ssl=certs.client_context())
    try:
        assert (await qmp.execute("query-status"))["status"] == "running"
    finally:
        await qmp.disconnect()


def _both_clients(address, context, **options):
    """The TLSError each client raises connecting with ``context``."""
    errors = []

    async def aio():
        with pytest.raises(qmpcore.TLSError) as info:
            await qmpcore.connect(address, ssl=context, timeout=WAIT, **options)
        return info.value

    errors.append(asyncio.run(aio()))
    with pytest.raises(qmpcore.TLSError) as info:
        qmpcore.connect_sync(address, ssl=context, timeout=WAIT, **options)
    errors.append(info.value)
    return errors


def test_unknown_ca(tls_vm, certs):  # noqa: F811
    _, address = tls_vm
    for error in _both_clients(address, certs.client_context(ca=certs.other_ca)):
        assert error.reason == "unknown_ca"
        assert "not signed by a CA this client trusts" in str(error) and "--tls-ca" in str(error)
        assert isinstance(error, qmpcore.QMPError) and str(address[1]) in str(error)


def test_name_mismatch(tls_vm, certs):  # noqa: F811
    _, address = tls_vm
    context = certs.client_context()
    for error in _both_clients(address, context, server_hostname="vm7.example"):
        assert error.reason == "name_mismatch"
        assert "'vm7.example'" in str(error) and "--tls-server-name" in str(error)
    # The name the certificate gives works.
    with qmpcore.connect_sync(address, ssl=context, server_hostname="localhost", timeout=WAIT) as qmp:
        assert qmp.execute("query-name") == {}


def test_client_certificate_refused_by_authz(tls_vm, certs):  # noqa: F811
    _, address = tls_vm
    for error in _both_clients(address, certs.client_context(cert="refused")):
        assert error.reason == "refused"
        assert "tls-authz" in str(error) and "--tls-cert" in str(error)


def test_client_certificate_from_another_ca(tls_vm, certs):  # noqa: F811
    _, address = tls_vm
    for error in _both_clients(address, certs.client_context(cert="stranger")):
        assert error.reason == "refused"


def test_no_client_certificate(tls_vm, certs):  # noqa: F811
    _, address = tls_vm
    for error in _both_clients(address, certs.client_context(cert=None)):
        assert error.reason == "refused"


async def test_qemu_qmp_adapter_names_the_tls_failure(tls_vm, certs):  # noqa: F811
    _, address = tls_vm
    qmp = qemu_qmp.QMPClient("tls")
    with pytest.raises(qemu_qmp.ConnectError) as info:
        await qmp.connect(address, ssl=certs.client_context(ca=certs.other_ca))
    # As qemu.qmp: the ssl module's error class (no qmpcore class leaks
    # through the adapter), with qmpcore's words naming what failed.
    error = info.value.exc
    assert type(error) is ssl.SSLCertVerificationError and not isinstance(error, qmpcore.QMPError)
    assert "not signed by a CA this client trusts" in str(error)


async def test_tls_options_are_checked(tmp_path, certs):  # noqa: F811
    context = certs.client_context()
    with pytest.raises(ValueError, match="only for TCP"):
        await qmpcore.connect(tmp_path / "qmp.sock", ssl=context)
    with pytest.raises(ValueError, match="only for TCP"):
        qmpcore.connect_sync(tmp_path / "qmp.sock", ssl=context)
    with pytest.raises(TypeError, match="needs ssl"):
        await qmpcore.connect(("127.0.0.1", 1), server_hostname="x")
    with pytest.raises(TypeError, match="SSLContext"):
        await qmpcore.connect(("127.0.0.1", 1), ssl=True)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="only for TCP"):
        Fleet([str(tmp_path / "qmp.sock")], ssl=context)
    assert issubclass(qmpcore.TLSError, qmpcore.QMPError) and issubclass(qmpcore.TLSError, ConnectionError)
    assert ssl.SSLContext  # the user's own context is all it takes


async def test_qemu_connects_to_us_over_tls(launcher, certs, tmp_path):  # noqa: F811
    """QEMU as the TLS client (``server=off``, ``endpoint=client``), the qemu.qmp
    adapter's ``start_server(address, ssl=)`` as the server checking QEMU's certificate."""
    import socket as socket_module

    creds = tmp_path / "client-creds"
    creds.mkdir()
    certs.ca.cert_pem.write_to_path(str(creds / "ca-cert.pem"))
    certs.allowed.cert_chain_pems[0].write_to_path(str(creds / "client-cert.pem"))
    certs.allowed.private_key_pem.write_to_path(str(creds / "client-key.pem"))
    with socket_module.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    qmp = qemu_qmp.QMPClient("reverse")
    await qmp.start_server(("127.0.0.1", port), ssl=certs.server_context())
    try:
        launcher.qemu(
            extra=[
                "-object",
                f"tls-creds-x509,id=tlsc,dir={creds},endpoint=client",
                "-chardev",
                f"socket,id=rev,host=127.0.0.1,port={port},server=off,tls-creds=tlsc",
                "-mon",
                "chardev=rev,mode=control",
            ]
        )
        await asyncio.wait_for(qmp.accept(), WAIT)
        assert (await qmp.execute("query-status"))["status"] == "running"
        names = await asyncio.gather(*(qmp.execute("query-name") for _ in range(10)))
        assert names == [{}] * 10
    finally:
        await qmp.disconnect()
