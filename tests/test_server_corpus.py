"""The embedded server answers the recorded QEMU 7.2 sessions byte for byte.

Each corpus file's ``C:`` writes go to the server over a real unix socket,
chunked as recorded; every ``S:`` line must come back identical (timestamps
are pinned: the simulated VM's clock reads zero and the recorded stamps are
zeroed), and ``S: <nothing within ...>`` must get nothing.  Versions are set
to the recorded QEMU's, so even the greetings match.

Files 13-17 and 24 are not replayed: for input over QEMU's limits qmpcore
answers with one error where QEMU cascades (a deliberate difference).  The
tests marked ``qemu`` send the same inputs to a real QEMU and compare.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import subprocess

import pytest

import corpus_support
from conftest import QEMU_CORPUS
from qemu_support import QEMU_GA, launcher, qga_argv, require  # noqa: F401 - fixture
from qmpcore.server import GuestAgentServer, SimulatedGuestAgent, SimulatedVM, serve_vm
from server_support import Peer, normalize

VERSION = (7, 2, 22)
PACKAGE = "Debian 1:7.2+dfsg-7+deb12u18+b3"

QMP_SESSIONS = [
    "01_greeting_and_capabilities.txt",
    "02_before_negotiation.txt",
    "03_basic_queries.txt",
    "04_command_errors.txt",
    "05_malformed_json.txt",
    "06_top_level_scalars.txt",
    "07_single_quotes.txt",
    "08_string_escapes_echo.txt",
    "09_control_chars_nul_invalid_utf8.txt",
    "10_number_echo.txt",
    "11_framing_split_and_batched.txt",
    "12_sync_0xff_and_recovery.txt",
    "18_oob.txt",
    "19_exec_oob_without_cap.txt",
    "21_stop_cont_events.txt",
    "22_pretty_monitor.txt",
    "23_misc_lexer_edges.txt",
    "26_no_events_before_negotiation.txt",
    "28_output_format.txt",
    "99_quit_shutdown.txt",
    "99b_quit_no_trailing_newline.txt",
]
QGA_SESSIONS = ["qga_01_sync_ping_info.txt", "qga_02_errors.txt", "qga_04_resync_variants.txt"]

_TOTAL = re.compile(r"\[total (\d+) bytes, sha256 ([0-9a-f]+)\]")


def corpus_vm() -> SimulatedVM:
    """A VM that looks like the recorded one (its monitors are chardevs
    ``compat_monitor0`` and ``qp``), with a clock that reads zero."""
    return SimulatedVM(version=VERSION, package=PACKAGE, chardevs=("compat_monitor0", "qp"), clock=lambda: 0.0)


def steps_of(name: str) -> list[corpus_support.Step]:
    steps = corpus_support.load(QEMU_CORPUS / name)
    if name == "18_oob.txt":
        # The last write (20 schema queries and an exec-oob) has no recorded
        # reply bytes, only their order, which depends on QEMU's threads.
        steps = steps[:-1]
    return steps


async def replay(
    peer: Peer, steps: list[corpus_support.Step], *, clock_zeroed: bool = True, line_end: bytes = b"\r\n"
) -> None:
    """Play ``steps`` against ``peer``'s server and check every reply
    (``line_end`` ends each message: CRLF for QMP, LF for the agent)."""
    for step in steps:
        if step.side == "C":
            assert step.data is not None, f"cannot rebuild {step.note[:80]}"
            if step.bytewise:
                for byte in step.data:
                    await peer.send(bytes([byte]))
                    await asyncio.sleep(0.005)
            else:
                await peer.send(step.data)
        elif step.data is not None:
            want = normalize(step.data)
            if clock_zeroed:
                got = await peer.read_exactly(len(want))
            else:  # live timestamps vary in length: read whole messages
                got = b""
                while len(normalize(got)) < len(want):
                    got += await peer.read_line(line_end)
                got = normalize(got)
            assert got == want
        elif step.note.startswith("<nothing within"):
            await peer.expect_nothing()
        elif "EOF" in step.note or "Reset" in step.note:
            # QEMU resets when input is left unread (99) and closes cleanly
            # otherwise (99b); either is an orderly end for a client.
            assert await peer.read_until_closed() == b""
        else:
            total = _TOTAL.search(step.note)
            assert total, f"unusable step {step.note[:80]}"
            got = await peer.read_exactly(int(total.group(1)))
            assert hashlib.sha256(got).hexdigest().startswith(total.group(2))
    if not peer.eof:
        await peer.expect_nothing()


@pytest.mark.parametrize("name", QMP_SESSIONS)
async def test_qmp_session(corpus_dir, tmp_path, name):
    path = tmp_path / "qmp.sock"
    async with serve_vm(path, corpus_vm(), pretty=name.startswith("22_")):
        async with await Peer.connect(str(path)) as peer:
            await replay(peer, steps_of(name))


async def test_reconnect_after_partial_command(corpus_dir, tmp_path):
    """20a leaves half a command behind; 20b's new session starts clean."""
    path = tmp_path / "qmp.sock"
    async with serve_vm(path, corpus_vm()):
        for name in ("20a_disconnect_partial.txt", "20b_reconnect_clean.txt"):
            async with await Peer.connect(str(path)) as peer:
                await replay(peer, steps_of(name))


async def test_schema_reply_is_the_recorded_one(corpus_dir, tmp_path):
    """25: query-qmp-schema answers with QEMU 7.2's 207,016 bytes."""
    path = tmp_path / "qmp.sock"
    recorded = (QEMU_CORPUS / "qmp_schema_7.2.json").read_bytes()
    async with serve_vm(path, corpus_vm()):
        async with await Peer.connect(str(path)) as peer:
            await peer.negotiate()
            await peer.send(b'{"execute":"query-qmp-schema","id":"schema"}\n')
            assert await peer.read_exactly(len(recorded)) == recorded
            await peer.expect_nothing()


def corpus_agent() -> SimulatedGuestAgent:
    return SimulatedGuestAgent(version="7.2.22")


@pytest.mark.parametrize("name", QGA_SESSIONS)
async def test_qga_session(corpus_dir, tmp_path, name):
    path = tmp_path / "qga.sock"
    async with GuestAgentServer(corpus_agent(), str(path)):
        async with await Peer.connect(str(path)) as peer:
            await replay(peer, steps_of(name))


async def test_qga_stale_partial_input(corpus_dir, tmp_path):
    """qga_03a's unfinished command swallows qga_03b's first one; 0xFF
    recovers, exactly as qemu-ga does."""
    path = tmp_path / "qga.sock"
    async with GuestAgentServer(corpus_agent(), str(path)):
        for name in ("qga_03a_stale_partial.txt", "qga_03b_after_stale.txt"):
            async with await Peer.connect(str(path)) as peer:
                await replay(peer, steps_of(name))


# -- the same inputs against a real QEMU ---------------------------------------

# Commands beyond the corpus whose answers the simulator must share with
# QEMU 7.2 (-M none): argument checks, state changes and their events.
CROSS_CHECK = [
    b'{"execute":"qmp_capabilities","arguments":{"enable":[1]}}',
    b'{"execute":"qmp_capabilities","arguments":{"enable":"oob"}}',
    b'{"execute":"qmp_capabilities","arguments":{"bogus":1}}',
    b'{"execute":"qmp_capabilities"}',
    b'{"execute":"qmp_capabilities","arguments":{"enable":"oob"}}',
    b'{"execute":"query-status","arguments":{"b":1,"a":2}}',
    b'{"execute":"migrate-set-capabilities","arguments":{"capabilities":[{"capability":"xbzrle","state":true},{"capability":"xbzrle","state":1}]}}',
    b'{"execute":"migrate-set-capabilities","arguments":{"capabilities":[{"capability":"nope","state":true}]}}',
    b'{"execute":"migrate-set-capabilities","arguments":{"capabilities":[{"state":true}]}}',
    b'{"execute":"migrate-set-capabilities","arguments":{"capabilities":[{"capability":"xbzrle","state":true,"zz":1}]}}',
    b'{"execute":"migrate-set-capabilities","arguments":{"capabilities":[1]}}',
    b'{"execute":"query-cpu-model-expansion","arguments":{"type":"full","model":{"name":1}}}',
    b'{"execute":"query-cpu-model-expansion","arguments":{"type":"full","model":{}}}',
    b'{"execute":"query-cpu-model-expansion","arguments":{"type":"fullx","model":{"name":"x"}}}',
    b'{"execute":"object-add","arguments":{"qom-type":"nope","id":"x"}}',
    b'{"execute":"object-add","arguments":{"id":"x"}}',
    b'{"execute":"object-add","arguments":{"qom-type":"iothread","id":"x","bogus":1}}',
    b'{"execute":"object-add","arguments":{"qom-type":"iothread","id":"x","poll-max-ns":1.5}}',
    b'{"execute":"human-monitor-command","arguments":{"command-line":"x","cpu-index":true}}',
    b'{"execute":"human-monitor-command","arguments":{"zzz":1,"aaa":2}}',
    b'{"execute":"netdev_add","arguments":{"type":"user","id":"n1","ipv4":"x"}}',
    b'{"execute":"blockdev-add","arguments":{"driver":"raw","node-name":"n2","file":1}}',
    b'{"execute":"migrate-set-parameters","arguments":{"tls-creds":1}}',
    b'{"execute":"device_add","arguments":{"foo":1}}',
    b'{"execute":"stop","id":null}',
    b'{"execute":"stop"}',
    b'{"execute":"query-status","id":[]}',
    b'{"execute":"human-monitor-command","arguments":{"command-line":"info status"}}',
    b'{"execute":"cont"}',
    b'{"execute":"cont"}',
    b'{"execute":"human-monitor-command","arguments":{"command-line":"stop"}}',
    b'{"execute":"human-monitor-command","arguments":{"command-line":"cont"}}',
    b'{"execute":"human-monitor-command","arguments":{"command-line":"bogus"}}',
    b'{"execute":"human-monitor-command","arguments":{"command-line":"info version"}}',
    b'{"execute":"system_reset"}',
    b'{"execute":"system_powerdown"}',
    b'{"execute":"getfd","arguments":{"fdname":"x"}}',
    b'{"execute":"closefd","arguments":{"fdname":"x"}}',
    b'{"execute":"remove-fd","arguments":{"fdset-id":7}}',
    b'{"execute":"query-fdsets"}',
    b'{"execute":"query-name"}',
    b'{"execute":"query-kvm"}',
    b'{"execute":"query-yank"}',
    b'{"exec-oob":"query-yank","id":"o"}',
    b'{"execute":"query-version"}',
]


async def _answers(address: str) -> list[bytes]:
    """Every CROSS_CHECK input's answer (the bytes up to a quiet moment)."""
    answers = []
    async with await Peer.connect(address) as peer:
        await peer.read_line()  # greetings differ only in version
        for data in CROSS_CHECK:
            await peer.send(data + b"\n")
            out = [await peer.read_line()]
            while out[-1].startswith(b'{"timestamp"'):  # events come before the reply
                out.append(await peer.read_line())
            answers.append(normalize(b"".join(out)))
    return answers


@pytest.mark.qemu
async def test_answers_match_real_qemu(launcher, tmp_path):  # noqa: F811
    qemu = launcher.qemu()
    expected = await _answers(str(qemu.path))
    path = tmp_path / "sim.sock"
    async with serve_vm(path, corpus_vm()) as vm:
        vm.chardevs = ["compat_monitor0"]
        got = await _answers(str(path))
    assert got == expected


@pytest.mark.qemu
@pytest.mark.parametrize("name", [n for n in QMP_SESSIONS if not n.startswith("18_")])
async def test_real_qemu_still_matches_corpus(launcher, name):  # noqa: F811
    """The replay itself is sound: a live QEMU passes it too.  (18 needs the
    recording's second monitor ``qp``.)"""
    qemu = launcher.qemu(pretty=name.startswith("22_"))
    async with await Peer.connect(str(qemu.path)) as peer:
        await replay(peer, steps_of(name), clock_zeroed=False)


# The commands the recorded qemu-ga was started with -b for (its guest-info
# in qga_01 lists them as disabled).
CORPUS_QGA_BLOCKED = (
    "guest-exec,guest-exec-status,guest-set-memory-blocks,guest-set-user-password,"
    "guest-set-vcpus,guest-suspend-hybrid,guest-suspend-ram,guest-suspend-disk,guest-fstrim,"
    "guest-fsfreeze-thaw,guest-fsfreeze-freeze-list,guest-fsfreeze-freeze,guest-file-flush,"
    "guest-file-seek,guest-file-write,guest-file-read,guest-file-close,"
    "guest-ssh-remove-authorized-keys,guest-ssh-add-authorized-keys,guest-file-open,"
    "guest-shutdown,guest-set-time"
)


@pytest.fixture
def real_qga(tmp_path):
    """qemu-ga 7.2 as the corpus recorded it, on a unix socket."""
    require(QEMU_GA)
    path = tmp_path / "qga.sock"
    argv = qga_argv(tmp_path, path, CORPUS_QGA_BLOCKED)
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield str(path)
    finally:
        proc.kill()
        proc.wait(10)


@pytest.mark.qemu
async def test_real_qemu_ga_still_matches_corpus(real_qga):
    """The guest agent replay is sound too, guest-info included."""
    for names in (
        ["qga_01_sync_ping_info.txt"],
        ["qga_02_errors.txt"],
        ["qga_04_resync_variants.txt"],
        ["qga_03a_stale_partial.txt", "qga_03b_after_stale.txt"],
    ):
        for name in names:
            async with await Peer.connect(real_qga) as peer:
                await replay(peer, steps_of(name), clock_zeroed=False, line_end=b"\n")
