"""QEMU's own tools run unchanged on the adapters, against real QEMU 7.2.

``qmp-shell`` and ``qmp_tui`` as shipped in qemu.qmp 0.0.6 run twice: on
qemu.qmp itself, and with ``qemu.qmp`` mapped to :mod:`qmpcore.compat` by
its importer (``python -m qmpcore.compat qemu.qmp.qmp_shell ...``, as a user
would).  What each shows must be the same, up to timestamps.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import pathlib
import re
import subprocess
import sys

import pytest

from compat_scenarios import TIMEOUT, Lab, lab_for, load_api, require, require_qemu
from qmpcore.server._process import child_environment

pytestmark = pytest.mark.qemu

HERE = pathlib.Path(__file__).resolve().parent

#: How each backend starts a module of the qemu.qmp package.
RUNNERS = {
    "reference": [sys.executable, "-m"],
    "qmpcore": [sys.executable, "-m", "qmpcore.compat"],
}


def require_tool(module: str) -> None:
    require(importlib.util.find_spec(module) is not None, f"{module} is not installed (the test extra has it)")


def masked(text: str, workdir: pathlib.Path | None = None) -> str:
    """``text`` without what differs from run to run."""
    if workdir is not None:
        text = text.replace(str(workdir), "<dir>")
    if text.startswith("Traceback"):  # the frames differ: keep the error, unqualified
        last = text.rstrip("\n").rsplit("\n", 1)[-1]
        text = "Traceback ...\n" + re.sub(r"^[\w.]+\.(\w+:)", r"\1", last)
    text = re.sub(r'("seconds": )\d+', r"\1<s>", text)
    text = re.sub(r'("microseconds": )\d+', r"\1<us>", text)
    text = re.sub(r"'seconds': \d+, 'microseconds': \d+", "'seconds': <s>, 'microseconds': <us>", text)
    return text


def run_tool(backend: str, argv: list[str], lab: Lab, stdin: str = "") -> dict:
    """Run ``argv`` (a module and its arguments) on ``backend``; what it showed."""
    env = child_environment()
    env["HOME"] = str(lab.workdir)  # qmp-shell keeps its history there
    proc = subprocess.run(
        [*RUNNERS[backend], *argv],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        cwd=lab.workdir,
        timeout=3 * TIMEOUT,
    )
    return {
        "rc": proc.returncode,
        "stdout": masked(proc.stdout, lab.workdir),
        "stderr": masked(proc.stderr, lab.workdir),
    }


def on_both(tmp_path: pathlib.Path, run) -> dict[str, dict]:
    """``run(backend, lab)`` for each backend, each with a QEMU of its own."""
    require_qemu()
    out = {}
    for backend in RUNNERS:
        with lab_for(tmp_path / backend) as lab:
            (tmp_path / backend).mkdir(exist_ok=True)
            out[backend] = run(backend, lab)
    return out


# --------------------------------------------------------------------------
# qmp-shell
# --------------------------------------------------------------------------

SHELL_SCRIPT = "\n".join(
    [
        "query-status",
        "cont",
        "stop",
        "",  # an empty line shows the events received
        "query-name",
        "no-such-command",
        "query-status bogus=1",
        "human-monitor-command command-line='info version'",
        "qom-get path=/machine property=type",
        "qom-list path=/machine/unattached",
        "object-add qom-type=secret id=s0 data=abc",
        "qom-get path=/objects/s0 property=loaded",
        "transaction(",
        ")",
        "device_del id=nope",
        "not-a-pair",
        "getfd",
        "",
    ]
)

HMP_SCRIPT = "\n".join(["info status", "info version", "stop", "info status", "cpu 7", "nosuchcommand", ""])


@pytest.mark.parametrize(
    "options",
    [[], ["-p"], ["-v"], ["-v", "-p"], ["-N"]],
    ids=["plain", "pretty", "verbose", "verbose-pretty", "skip-negotiation"],
)
def test_qmp_shell_shows_the_same(options: list[str], tmp_path: pathlib.Path) -> None:
    require_tool("qemu.qmp.qmp_shell")

    def run(backend: str, lab: Lab) -> dict:
        vm = lab.qemu()
        return run_tool(backend, ["qemu.qmp.qmp_shell", *options, vm.address], lab, SHELL_SCRIPT)

    seen = on_both(tmp_path, run)
    assert seen["qmpcore"] == seen["reference"]
    assert seen["qmpcore"]["rc"] == 0
    if "-N" not in options:
        assert "Connected to QEMU 7.2" in seen["qmpcore"]["stdout"]  # the greeting the shell keeps


def test_hmp_shell_shows_the_same(tmp_path: pathlib.Path) -> None:
    require_tool("qemu.qmp.qmp_shell")

    def run(backend: str, lab: Lab) -> dict:
        vm = lab.qemu(machine="pc")  # HMP's completion asks CPU 0
        return run_tool(backend, ["qemu.qmp.qmp_shell", "-H", vm.address], lab, HMP_SCRIPT)

    seen = on_both(tmp_path, run)
    assert seen["qmpcore"] == seen["reference"]
    assert "VM status: paused (prelaunch)" in seen["qmpcore"]["stdout"]


def test_qmp_shell_log_option_and_tcp(tmp_path: pathlib.Path) -> None:
    require_tool("qemu.qmp.qmp_shell")

    def run(backend: str, lab: Lab) -> dict:
        vm = lab.qemu(mode="tcp")
        host, port = vm.address
        log = lab.path("shell.log")
        seen = run_tool(backend, ["qemu.qmp.qmp_shell", "-l", log, f"{host}:{port}"], lab, "query-status\nstop\n")
        # qemu.qmp 0.0.6's main() passes the log file as the ``server`` argument
        seen["log_written"] = os.path.exists(log)
        return {
            key: value.replace(str(port), "<port>") if isinstance(value, str) else value for key, value in seen.items()
        }

    seen = on_both(tmp_path, run)
    assert seen["qmpcore"] == seen["reference"]
    # ... so both listen on QEMU's own address and fail to bind, the same way
    assert "address already in use" in seen["qmpcore"]["stderr"]


def test_qmp_shell_connect_failures_read_the_same(tmp_path: pathlib.Path) -> None:
    require_tool("qemu.qmp.qmp_shell")

    def run(backend: str, lab: Lab) -> dict:
        return {
            "missing": run_tool(backend, ["qemu.qmp.qmp_shell", "missing.sock"], lab),
            "bad_port": run_tool(backend, ["qemu.qmp.qmp_shell", "localhost:http"], lab),
        }

    seen = on_both(tmp_path, run)
    assert seen["qmpcore"] == seen["reference"]
    assert seen["qmpcore"]["missing"]["rc"] == 1
    assert "Couldn't connect to missing.sock" in seen["qmpcore"]["missing"]["stderr"]


# --------------------------------------------------------------------------
# qmp_tui
# --------------------------------------------------------------------------


def run_tui(backend: str, lab: Lab, address: str, lines: list[str]) -> list[str]:
    require_tool("urwid_readline")
    proc = subprocess.run(
        [sys.executable, str(HERE / "compat_tui_driver.py"), backend, address, *lines],
        capture_output=True,
        text=True,
        env=child_environment(),
        cwd=lab.workdir,
        timeout=3 * TIMEOUT,
    )
    assert proc.returncode == 0, proc.stderr
    shown = [masked(entry, lab.workdir) for entry in json.loads(proc.stdout)]
    # asyncio reports a task that failed when it is collected: numbered, and
    # whether it is collected before the loop closes is up to the collector.
    return [entry for entry in shown if "Task exception was never retrieved" not in entry]


TUI_LINES = [
    '{"execute": "query-status"}',
    '{"execute": "cont"}',
    '{"execute": "stop"}',
    "not json",
    "[1, 2]",
    '{"execute": "no-such-command"}',
    '{"execute": "query-name", "id": "mine"}',
    '{"execute": "qom-get", "arguments": {"path": "/machine", "property": "type"}}',
    '{"exec-oob": "query-yank"}',
]


def test_qmp_tui_shows_the_same(tmp_path: pathlib.Path) -> None:
    require_tool("qemu.qmp.qmp_tui")

    def run(backend: str, lab: Lab) -> list[str]:
        return run_tui(backend, lab, lab.qemu().address, TUI_LINES)

    seen = on_both(tmp_path, run)
    assert seen["qmpcore"] == seen["reference"]
    shown = "\n".join(seen["qmpcore"])
    assert '"id": "__qmp#00000"' in shown  # ids as qemu.qmp assigns them
    assert '"event": "STOP"' in shown  # events pass the inbound hook too
    assert "[ERROR]: not json: Failed to deserialize QMP message." in shown


def test_qmp_tui_after_quit_the_same(tmp_path: pathlib.Path) -> None:
    """The server goes away: the TUI sees the disconnect, tries again, fails."""
    require_tool("qemu.qmp.qmp_tui")

    def run(backend: str, lab: Lab) -> list[str]:
        lines = ['{"execute": "query-status"}', '{"execute": "quit"}', "@disconnected"]
        return run_tui(backend, lab, lab.qemu().address, lines)

    seen = on_both(tmp_path, run)
    assert seen["qmpcore"] == seen["reference"]
    assert "status: [Disconnected]" in seen["qmpcore"]
    assert any("Failed to establish connection: FileNotFoundError" in entry for entry in seen["qmpcore"])


# --------------------------------------------------------------------------
# Subclasses cannot collide with the adapters' internals
# --------------------------------------------------------------------------


def _instance_names(obj: object) -> set[str]:
    return {name for name in vars(obj) if name.startswith("_")}


@pytest.mark.parametrize(
    ("api", "make"),
    [
        ("qemu_qmp", lambda api: api.QMPClient("vm")),
        ("legacy", lambda api: api.QEMUMonitorProtocol("/nonexistent", nickname="vm")),
    ],
    ids=["QMPClient", "QEMUMonitorProtocol"],
)
def test_private_attributes_are_the_originals_or_prefixed(api: str, make, tmp_path: pathlib.Path) -> None:
    """A subclass written for qemu.qmp (QEMU's QMPShell sets ``_greeting``,
    qmp_tui's App ``address``) only meets private names the original has."""
    import asyncio

    ref_mod, our_mod = load_api("reference", api), load_api("qmpcore", api)
    loop = asyncio.new_event_loop()  # qemu.qmp's legacy class wants one
    asyncio.set_event_loop(loop)
    try:
        reference, ours = make(ref_mod), make(our_mod)
        foreign = {n for n in _instance_names(ours) if not n.startswith("_qmpcore_")} - _instance_names(reference)
        assert not foreign
        if api == "legacy":
            assert "_greeting" not in vars(ours)
            reference.close()
    finally:
        asyncio.set_event_loop(None)
        loop.close()


def test_qmp_shell_keeps_its_greeting_on_the_adapter(tmp_path: pathlib.Path) -> None:
    """QMPShell stores the greeting in ``_greeting``; the adapter's own
    state must not change it, before or after connecting."""
    require_qemu()
    code = f"""
from qmpcore.compat import importer
importer.install()
from qemu.qmp.qmp_shell import QMPShell
with lab_for(pathlib.Path({str(tmp_path)!r})) as lab:
    vm = lab.qemu()
    shell = QMPShell(vm.address)
    assert shell._greeting is None
    shell.connect()
    assert shell._greeting["QMP"]["version"]["qemu"]["major"] == 7
    assert shell.cmd("query-status")["status"] == "prelaunch"
    assert shell._greeting["QMP"]["version"]["qemu"]["major"] == 7
    shell.close()
print("ok")
"""
    env = child_environment()
    env["HOME"] = str(tmp_path)
    env["PYTHONPATH"] = os.pathsep.join((str(HERE), env["PYTHONPATH"]))
    proc = subprocess.run(
        [sys.executable, "-c", "import pathlib\nfrom compat_scenarios import lab_for\n" + code],
        capture_output=True,
        text=True,
        env=env,
        timeout=3 * TIMEOUT,
    )
    assert proc.stdout.strip() == "ok", proc.stderr


def run_tui_in_a_terminal(backend: str, lab: Lab, address: str) -> dict:
    """``qmp_tui`` with urwid's raw display on a pseudo-terminal: connect,
    send a command with alt+enter, read the reply off the screen, quit with
    escape."""
    import fcntl
    import pty
    import select
    import struct
    import termios
    import time

    require_tool("urwid_readline")
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    env = child_environment()
    env["TERM"] = "xterm-256color"
    log = lab.path("tui.log")
    try:
        proc = subprocess.Popen(
            [*RUNNERS[backend], "qemu.qmp.qmp_tui", "--log-file", log, address],
            stdin=slave,
            stdout=slave,
            stderr=slave,
            env=env,
            cwd=lab.workdir,
            start_new_session=True,
        )
    finally:
        os.close(slave)
    screen = bytearray()

    def shown(text: bytes) -> bool:
        """Wait until ``text`` is on the screen; urwid redraws after input,
        so a harmless key (down) is pressed meanwhile."""
        deadline = time.monotonic() + TIMEOUT
        while text not in screen and time.monotonic() < deadline:
            os.write(master, b"\x1b[B")
            ready, _, _ = select.select([master], [], [], 0.3)
            if ready:
                with contextlib.suppress(OSError):
                    screen.extend(os.read(master, 1 << 16))
        return text in screen

    try:
        seen = {"connected": shown(b"[Connected")}
        os.write(master, b'{"execute": "query-name"}')
        os.write(master, b"\x1b\r")  # alt+enter sends
        seen["reply"] = shown(b'"return"') and shown(b"__qmp#00000")
        os.write(master, b"\x1b")  # escape quits
        seen["exit"] = proc.wait(TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(TIMEOUT)
        os.close(master)
    seen["log"] = pathlib.Path(log).read_text() if os.path.exists(log) else None
    return seen


def test_qmp_tui_runs_in_a_terminal(tmp_path: pathlib.Path) -> None:
    require_tool("qemu.qmp.qmp_tui")

    def run(backend: str, lab: Lab) -> dict:
        return run_tui_in_a_terminal(backend, lab, lab.qemu().address)

    seen = on_both(tmp_path, run)
    assert seen["qmpcore"] == seen["reference"]
    assert seen["qmpcore"] == {"connected": True, "reply": True, "exit": 0, "log": ""}
