"""The schema through the clients: ``vm.schema()``, ``validate=True``, Fleet, the CLI."""

from __future__ import annotations

import ast
import asyncio
import json
import os
import pathlib
import subprocess
import sys
from typing import Any

import pytest

import qmpcore
from qmpcore import CommandError, Fleet, Schema
from qmpcore.protocol import schema as schema_module
from qmpcore.server import serve_vm, serve_vms

SRC = pathlib.Path(__file__).resolve().parent.parent / "src"
ENV = dict(os.environ)
WAIT = 60.0

BAD = ("blockdev-add", {"driver": "nope"})
BAD_DESC = "Parameter 'driver' does not accept value 'nope'"


@pytest.fixture(autouse=True)
def empty_cache() -> None:
    schema_module._cache.clear()
    schema_module._cache_bytes = 0


def _count_fetches(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    calls: list[Any] = []
    real = schema_module.schema_for

    def counting(version: Any, reply: Any) -> Schema:
        calls.append(version)
        return real(version, reply)

    for module in (qmpcore.client.aio, qmpcore.client.sync):  # type: ignore[attr-defined]
        monkeypatch.setattr(module, "schema_for", counting)
    return calls


async def test_schema_is_fetched_once_per_connection_and_shared(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import qmpcore.client.aio
    import qmpcore.client.sync

    fetched = _count_fetches(monkeypatch)
    async with serve_vm(str(tmp_path / "vm.sock")):
        async with await qmpcore.connect(str(tmp_path / "vm.sock")) as client:
            schema = await client.schema()
            assert list(schema) == list(Schema.bundled())
            assert await client.schema() is schema
            assert schema.version == tuple(client.version)  # type: ignore[arg-type]
            assert schema.query("blockdev-add/arg-type/+file/aio/^io_uring")
        assert len(fetched) == 1
        async with await qmpcore.connect(str(tmp_path / "vm.sock")) as other:
            # asked again (each QEMU answers for itself), the same answer shares one Schema
            assert await other.schema() is schema
            assert len(fetched) == 2
            assert await other.schema(refresh=True) is schema and len(fetched) == 3


async def test_validate_fails_without_a_round_trip(tmp_path: pathlib.Path) -> None:
    path = str(tmp_path / "vm.sock")
    async with serve_vm(path):
        async with await qmpcore.connect(path) as plain:
            with pytest.raises(CommandError) as remote:
                await plain.execute(*BAD)
        assert remote.value.reply is not None and remote.value.desc == BAD_DESC
        async with await qmpcore.connect(path, validate=True) as client:
            with pytest.raises(CommandError) as local:
                await client.execute(*BAD)
            # QEMU's own answer, word for word, but nothing was sent.
            assert (local.value.error_class, local.value.desc) == (remote.value.error_class, BAD_DESC)
            assert local.value.reply is None
            with pytest.raises(CommandError, match="has not been found"):
                await client.execute("no-such-command")
            future = client.submit(*BAD)
            with pytest.raises(CommandError, match="does not accept"):
                await future
            # integer types introspection does not tell (the simulator does not check them)
            with pytest.raises(CommandError, match="expects uint8_t") as narrow:
                await client.execute("migrate-set-parameters", {"compress-level": 300})
            assert narrow.value.reply is None
            assert (await client.execute("query-status"))["status"] == "running"
        with pytest.raises(ValueError, match="negotiate"):
            await qmpcore.connect(path, validate=True, negotiate=False)


def test_blocking_client_validates(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import qmpcore.client.aio
    import qmpcore.client.sync

    fetched = _count_fetches(monkeypatch)
    path = str(tmp_path / "vm.sock")

    async def serve(ready: asyncio.Event, stop: asyncio.Event) -> None:
        async with serve_vm(path):
            ready.set()
            await stop.wait()

    import threading

    loop = asyncio.new_event_loop()
    ready, stop = asyncio.Event(), asyncio.Event()
    thread = threading.Thread(target=loop.run_until_complete, args=(serve(ready, stop),))
    thread.start()
    try:
        for _ in range(500):
            if ready.is_set():
                break
            threading.Event().wait(0.01)
        with qmpcore.connect_sync(path, validate=True) as client:
            with pytest.raises(CommandError) as local:
                client.execute(*BAD)
            assert local.value.desc == BAD_DESC and local.value.reply is None
            assert client.execute("query-status")["status"] == "running"
            first = client.schema()
            assert client.schema() is first
        with qmpcore.connect_sync(path) as again:
            assert again.schema() is first
        assert len(fetched) == 2
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(WAIT)
        loop.close()


async def test_fleet_validates(tmp_path: pathlib.Path) -> None:
    async with serve_vms(tmp_path, 3) as vms:
        async with Fleet(vms.qmp_paths, validate=True, reconnect=False) as fleet:
            results = await fleet.execute_all(*BAD)
            assert len(results) == 3
            for result in results.values():
                assert isinstance(result, CommandError) and result.desc == BAD_DESC and result.reply is None
            statuses = await fleet.execute_all("query-status")
            assert all(r["status"] == "running" for r in statuses.values())


def test_cache_is_bounded_in_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    entries = list(Schema.bundled())
    size = len(json.dumps(entries).encode())
    monkeypatch.setattr(schema_module, "CACHE_BYTES", size * 3)
    for micro in range(10):
        schema_module.schema_for((7, 2, micro, "p"), entries)
    assert len(schema_module._cache) == 3
    assert schema_module._cache_bytes <= size * 3
    assert (7, 2, 9, "p") in schema_module._cache and (7, 2, 0, "p") not in schema_module._cache
    assert schema_module.schema_for(None, entries) is not schema_module.schema_for(None, entries)


def test_a_different_answer_is_not_shared() -> None:
    """A peer claiming another's version and package gets its own schema."""
    entries = list(Schema.bundled())
    first = schema_module.schema_for((7, 2, 0, "x"), entries)
    assert schema_module.schema_for((7, 2, 0, "x"), list(entries)) is first
    forged = entries[:-1]
    other = schema_module.schema_for((7, 2, 0, "x"), forged)
    assert other is not first and len(other) == len(entries) - 1
    assert schema_module.schema_for((7, 2, 0, "x"), entries) is not other


# -- the command line ----------------------------------------------------------


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "qmpcore", *args],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=WAIT,
        stdin=subprocess.DEVNULL,
    )


def test_cli_describes_a_command() -> None:
    done = run("schema", "--bundled", "blockdev-add")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert out.startswith("command blockdev-add\n")
    assert "    driver: enum: blkdebug | " in out
    assert "    when driver = file:" in out
    assert "      filename: str" in out
    assert "      aio?: enum: threads | native | io_uring" in out
    assert "x-check-cache-dropped?: bool  [unstable]" in out
    assert "  returns: {}" in out
    listing = run("schema", "--bundled")
    assert listing.returncode == 0 and "query-status\n" in listing.stdout
    assert len(listing.stdout.splitlines()) == 216


@pytest.mark.parametrize(
    "path,status,first",
    [
        ("blockdev-add/arg-type/+file/aio/^io_uring", 0, "true"),
        ("blockdev-add/arg-type/+io_uring", 1, "false"),
        ("query-status/ret-type/status", 0, "true"),
        ("blockdev-snapshot/$allow-write-only-overlay/x", 2, ""),
    ],
)
def test_cli_answers_path_queries(path: str, status: int, first: str) -> None:
    done = run("schema", "--bundled", path)
    assert done.returncode == status, done.stderr
    assert done.stdout.split("\n")[0] == first
    if path == "query-status/ret-type/status":
        assert json.loads(done.stdout.split("\n", 1)[1])["meta-type"] == "enum"


def test_cli_usage_errors() -> None:
    assert run("schema").returncode == 2
    assert run("schema", "--bundled", "a", "b").returncode == 2
    done = run("schema", "--bundled", "no-such-command")
    assert done.returncode == 1 and "no-such-command" in done.stderr


async def test_cli_asks_a_running_qemu(tmp_path: pathlib.Path) -> None:
    path = str(tmp_path / "vm.sock")
    async with serve_vm(path):
        for args, status, text in (
            (["schema", path, "query-status"], 0, "command query-status"),
            (["schema", path, "blockdev-add/arg-type/+nbd/tls-hostname"], 0, "true"),
            (["schema", path, "blockdev-add/arg-type/+vxhs"], 1, "false"),
            (["stubs", path], 0, '"""Typed QMP commands for QEMU 7.2'),
        ):
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "qmpcore", *args,
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV, stdin=subprocess.DEVNULL,
            )  # fmt: skip
            out, err = await asyncio.wait_for(proc.communicate(), WAIT)
            assert proc.returncode == status, err
            assert out.decode().startswith(text)


def test_bundled_stubs_are_generated_from_the_bundled_schema(tmp_path: pathlib.Path) -> None:
    out = tmp_path / "q.py"
    done = run("stubs", "--bundled", "-o", str(out))
    assert done.returncode == 0, done.stderr
    shipped = (SRC / "qmpcore" / "typed" / "qemu_7_2.py").read_text()
    assert ast.dump(ast.parse(out.read_text())) == ast.dump(ast.parse(shipped))


def test_stubs_call_the_client() -> None:
    from qmpcore.typed.qemu_7_2 import OMIT, QMP, SyncQMP

    sent: list[tuple[str, Any]] = []

    class Recorder:
        async def execute(self, command: str, arguments: Any = None) -> Any:
            sent.append((command, arguments))
            return {"status": "running"}

    class SyncRecorder:
        def execute(self, command: str, arguments: Any = None) -> Any:
            sent.append((command, arguments))
            return {}

    async def calls() -> None:
        qmp = QMP(Recorder())  # type: ignore[arg-type]
        assert (await qmp.query_status())["status"] == "running"
        await qmp.blockdev_add(driver="file", node_name="f", filename="/x", aio="native")
        await qmp.block_commit(device="d", top=OMIT, speed=5)

    asyncio.run(calls())
    SyncQMP(SyncRecorder()).migrate_set_parameters(compress_level=3)  # type: ignore[arg-type]
    assert sent == [
        ("query-status", None),
        ("blockdev-add", {"driver": "file", "node-name": "f", "filename": "/x", "aio": "native"}),
        ("block-commit", {"device": "d", "speed": 5}),
        ("migrate-set-parameters", {"compress-level": 3}),
    ]


MYPY_PROGRAM = """
from typing import Any

import qmpcore
from qmpcore.typed.qemu_7_2 import QMP, StatusInfo, SyncQMP, BlockdevOptions, ShutdownData


async def good(path: str) -> str:
    qmp = QMP(await qmpcore.connect(path))
    status: StatusInfo = await qmp.query_status()
    await qmp.blockdev_add(driver="file", node_name="f", filename="/tmp/f", aio="io_uring")
    await qmp.blockdev_add(driver="qcow2", node_name="q", file="f", backing=None)
    await qmp.migrate_set_parameters(compress_level=3, tls_creds=None)
    options: BlockdevOptions = {"driver": "raw", "file": {"driver": "file", "filename": "/x"}}
    await qmp.block_commit(device="d", speed=1)
    versions = SyncQMP(qmpcore.connect_sync(path)).query_version()
    shutdown: ShutdownData = {"guest": False, "reason": "host-qmp-quit"}
    return status["status"] + str(versions["qemu"]["major"]) + str(options) + str(shutdown)


async def bad(path: str) -> None:
    qmp = QMP(await qmpcore.connect(path))
    await qmp.query_status(bogus=1)  # BAD: unknown member
    await qmp.blockdev_add(driver="file", node_name="f")  # BAD: filename is required
    await qmp.blockdev_add(driver="file", filename="/x", aio="fast")  # BAD: not an enum value
    await qmp.migrate_set_parameters(compress_level="3")  # BAD: wrong type
    await qmp.block_commit(device=1)  # BAD: wrong type
    status = await qmp.query_status()
    status["nope"]  # BAD: no such key
    await qmp.no_such_command()  # BAD: no such command
    shutdown: ShutdownData = {"guest": False, "reason": "tired"}  # BAD: not a ShutdownCause
"""


@pytest.mark.slow
def test_mypy_checks_calls_against_the_stubs(tmp_path: pathlib.Path) -> None:
    pytest.importorskip("mypy")
    program = tmp_path / "program.py"
    program.write_text(MYPY_PROGRAM)
    done = subprocess.run(
        [sys.executable, "-m", "mypy", "--no-incremental", "--strict", "--follow-imports=silent",
         "--no-warn-unused-ignores", str(program)],
        capture_output=True, text=True, timeout=600, cwd=tmp_path, env={**ENV, "MYPYPATH": str(SRC)},
    )  # fmt: skip
    lines = MYPY_PROGRAM.split("\n")
    bad = {number for number, line in enumerate(lines, 1) if "# BAD" in line}
    flagged = {
        int(line.split(":")[1])
        for line in done.stdout.splitlines()
        if line.split(":")[0].endswith("program.py") and ": error:" in line
    }
    assert flagged == bad, done.stdout


# -- the shell -----------------------------------------------------------------


@pytest.mark.parametrize(
    "before,text,expected",
    [
        ("", "query-statu", ["query-status "]),
        ("help ", "query-stat", ["query-stats ", "query-stats-schemas ", "query-status "]),
        ("blockdev-add ", "driv", ["driver="]),
        ("blockdev-add ", "driver=qco", ["driver=qcow ", "driver=qcow2 "]),
        ("blockdev-add driver=file ", "filen", ["filename="]),
        ("blockdev-add driver=file ", "aio=n", ["aio=native "]),
        ("blockdev-add driver=file ", "cache.d", ["cache.direct="]),
        ("blockdev-add driver=file ", "cache.direct=", ["cache.direct=true ", "cache.direct=false "]),
        ("blockdev-add driver=qcow2 ", "file.driver=fil", ["file.driver=file "]),
        ("blockdev-add driver=file filename=/x ", "filen", []),  # given already
        ("query-status ", "", []),
        ("no-such-command ", "a", []),
    ],
)
def test_shell_completions(before: str, text: str, expected: list[str]) -> None:
    from qmpcore.cli._schema import completions

    assert completions(Schema.bundled(), before, text) == expected


async def test_shell_help(tmp_path: pathlib.Path) -> None:
    path = str(tmp_path / "vm.sock")
    async with serve_vm(path):
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "qmpcore", "shell", path,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV,
        )  # fmt: skip
        out, err = await asyncio.wait_for(proc.communicate(b"help query-status\nhelp nope\nquery-status\n"), WAIT)
    assert proc.returncode == 0, err
    text = out.decode()
    assert "command query-status\n  arguments: none\n  returns: object\n    running: bool" in text
    assert "no command or event 'nope'" in text
    assert '"status":"running"' in text


@pytest.mark.parametrize(
    "reply",
    [
        {"not": "a list"},
        [1],
        [{"name": "c", "meta-type": "command", "arg-type": 5}],
        [{"name": "o", "meta-type": "object", "members": [{"name": "a"}]}],
        [{"name": "o", "meta-type": "object", "members": "x"}],
        [{"name": "e", "meta-type": "enum", "values": [1]}],
        [{"name": "a", "meta-type": "alternate", "members": [{"name": "x"}]}],
        [{"name": "u", "meta-type": "object", "members": [], "variants": [{"case": "x"}]}],
        [{"name": "c", "meta-type": "command", "features": "deprecated"}],
    ],
)
def test_a_malformed_schema_from_a_peer_is_a_protocol_error(reply: Any) -> None:
    with pytest.raises(qmpcore.ProtocolError, match="malformed"):
        schema_module.schema_for((7, 2, 0, ""), reply)
