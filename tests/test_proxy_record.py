"""Recording through the proxy and answering from the recording (``serve --replay``)."""

from __future__ import annotations

import asyncio

import orjson
import pytest

import qmpcore
from qmpcore.proxy import Proxy
from qmpcore.server import serve_vm
from qmpcore.server._replay import load_recording, serve_replay

WAIT = 10.0


async def test_a_recording_replays(tmp_path):
    record = tmp_path / "session.txt"
    async with serve_vm(str(tmp_path / "qmp.sock")) as vm:
        async with Proxy(str(tmp_path / "qmp.sock"), [str(tmp_path / "p.sock")], record=record):
            async with await qmpcore.connect(str(tmp_path / "p.sock")) as qmp:
                first = await qmp.execute("query-status")
                await qmp.execute("stop")
                stopped = await qmp.execute("query-status")
                with pytest.raises(qmpcore.CommandError) as refused:
                    await qmp.execute("device_del", {"id": "nothing"})
                name = await qmp.execute("query-name")
        assert not vm.running
    recording = load_recording(record)
    assert len(recording) == 6  # qmp_capabilities and the five commands

    async with serve_replay(record, str(tmp_path / "replay.sock")) as server:
        async with await qmpcore.connect(server.address) as qmp:
            assert qmp.version[:2] == (7, 2)
            # The same commands get the same answers, in order, with this client's ids.
            assert await qmp.execute("query-status") == first
            await qmp.execute("stop")
            assert (await qmp.wait_event("STOP", timeout=WAIT)).name == "STOP"
            assert await qmp.execute("query-status") == stopped
            with pytest.raises(qmpcore.CommandError) as again:
                await qmp.execute("device_del", {"id": "nothing"})
            assert (again.value.error_class, again.value.desc) == (refused.value.error_class, refused.value.desc)
            assert await qmp.execute("query-name") == name
            # Replayed past the end: the last reply again.
            assert await qmp.execute("query-status") == stopped
            with pytest.raises(qmpcore.CommandError, match="not in session.txt"):
                await qmp.execute("query-kvm")
        # Each client is replayed from the start.
        async with await qmpcore.connect(server.address) as qmp:
            assert await qmp.execute("query-status") == first


async def test_a_corpus_session_replays(corpus_dir, tmp_path):
    """The recorded QEMU sessions are recordings too."""
    async with serve_replay(corpus_dir / "qemu-7.2" / "03_basic_queries.txt", str(tmp_path / "r.sock")) as server:
        reader, writer = await asyncio.open_unix_connection(server.address)
        greeting = orjson.loads(await asyncio.wait_for(reader.readline(), WAIT))
        assert greeting["QMP"]["version"]["package"].startswith("Debian")
        writer.write(b'{"execute": "qmp_capabilities", "id": "neg"}\n{"execute": "query-version", "id": [1]}\n')
        assert orjson.loads(await reader.readline()) == {"return": {}, "id": "neg"}
        reply = orjson.loads(await reader.readline())
        assert reply["id"] == [1] and reply["return"]["qemu"] == {"micro": 22, "minor": 2, "major": 7}
        writer.close()
        await writer.wait_closed()


def test_bad_recording(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_text("### title\nC: b'unterminated\n")
    with pytest.raises(ValueError, match="bad.txt:2"):
        load_recording(bad)
