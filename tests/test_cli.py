"""``python -m qmpcore``: each subcommand run as a subprocess.

Against the embedded server (``qmpcore serve`` itself, or simulated VMs in
a child process when a test needs their hooks) and against real QEMU; the
shell is driven through a pseudo-terminal.
"""

from __future__ import annotations

import asyncio
import json
import os
import pty
import re
import select
import signal
import subprocess
import sys
import time

import pytest

from conftest import IN_CI
from qmpcore import cli
from qmpcore.server import serve_vm, start_in_subprocess

ENV = dict(os.environ)  # subprocesses run the qmpcore this test runs on
ENV["TERM"] = "xterm"
WAIT = 20.0  # upper bound for any single wait on a subprocess


def run(*args, timeout=WAIT, input=None):
    return subprocess.run(
        [sys.executable, "-m", "qmpcore", *map(str, args)],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=timeout,
        input=input,
        stdin=None if input is not None else subprocess.DEVNULL,
    )


def spawn(*args):
    return subprocess.Popen(
        [sys.executable, "-m", "qmpcore", *map(str, args)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=ENV,
        bufsize=0,  # unbuffered, so select() on stdout tells the truth
    )


def read_line(proc, timeout=WAIT):
    """One line of a child's stdout, or fail after ``timeout``."""
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    assert ready, "no output in time"
    return proc.stdout.readline().decode()


def stop(proc, sig=signal.SIGTERM):
    """Signal a child, wait for it (killing it if it lingers); its exit status."""
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        return proc.wait(WAIT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise
    finally:
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


class Terminal:
    """A child on a pseudo-terminal: type into it, wait for text to appear."""

    def __init__(self, *args, env=None):
        master, slave = pty.openpty()
        self.fd = master
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "qmpcore", *map(str, args)],
            stdin=slave,
            stdout=slave,
            stderr=slave,
            env=env or ENV,
            start_new_session=True,
        )
        os.close(slave)
        self.output = ""

    def expect(self, pattern, timeout=WAIT):
        """Wait until ``pattern`` (a regex) shows up; return the match."""
        deadline = time.monotonic() + timeout
        while True:
            found = re.search(pattern, self.output)
            if found:
                self.output = self.output[found.end() :]
                return found
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{pattern!r} not seen; output so far: {self.output!r}")
            ready, _, _ = select.select([self.fd], [], [], left)
            if ready:
                try:
                    chunk = os.read(self.fd, 65536)
                except OSError:  # the child closed the terminal
                    chunk = b""
                if not chunk:
                    raise AssertionError(f"{pattern!r} not seen before exit; output: {self.output!r}")
                self.output += chunk.decode(errors="replace")

    def type(self, text):
        os.write(self.fd, text.encode())

    def close(self):
        try:
            if self.proc.poll() is None:
                self.proc.kill()
            return self.proc.wait(WAIT)
        finally:
            os.close(self.fd)


@pytest.fixture
def served(tmp_path):
    """``qmpcore serve DIR --vms 2``: the socket paths it prints."""
    proc = spawn("serve", tmp_path, "--vms", 2)
    try:
        paths = [read_line(proc).strip() for _ in range(2)]
        assert paths == [str(tmp_path / "vm0.qmp"), str(tmp_path / "vm1.qmp")]
        yield paths
    finally:
        status = stop(proc)
    assert status == 0
    assert not os.path.exists(paths[0])  # sockets removed on SIGTERM


@pytest.fixture
def hooked(tmp_path):
    """Simulated VMs (and guest agents) whose hooks the test can call."""
    with start_in_subprocess(tmp_path, 2, agents=True) as server:
        yield server


# -- exec ----------------------------------------------------------------------------


def test_exec_prints_compact_reply(served):
    done = run("exec", served[0], "query-status")
    assert done.returncode == 0, done.stderr
    assert done.stdout == '{"status":"running","singlestep":false,"running":true}\n'
    assert json.loads(run("exec", served[1], "query-name").stdout) == {"name": "vm1"}


def test_exec_arguments_as_key_value_and_json(served):
    done = run("exec", served[0], "human-monitor-command", "command-line=info status")
    assert done.stdout == "VM status: running\n"  # HMP output is text, not a JSON string
    done = run("exec", served[0], "human-monitor-command", '{"command-line": "info name"}')
    assert done.returncode == 0 and "vm0" in done.stdout
    done = run("exec", served[0], "query-name")
    assert json.loads(done.stdout) == {"name": "vm0"}  # other commands stay JSON


def test_exec_command_error_exits_1(served):
    done = run("exec", served[0], "no-such-command")
    assert done.returncode == 1
    assert done.stdout == ""
    assert "CommandNotFound: The command no-such-command has not been found" in done.stderr


def test_exec_usage_and_connection_errors(served, tmp_path):
    assert run("exec", served[0], "query-status", "oops").returncode == 2
    assert run("exec", served[0], "query-status", "[1]").returncode == 2
    assert run("exec").returncode == 2
    done = run("exec", tmp_path / "missing.sock", "query-status")
    assert done.returncode == 3 and "missing.sock" in done.stderr
    assert run("exec", "--timeout", "0", served[0], "query-status").returncode == 2


def test_exec_pretty_on_a_terminal(served):
    term = Terminal("exec", served[0], "query-status")
    try:
        term.expect(r'\{\r?\n  "status": "running",\r?\n  "singlestep": false')
        assert term.proc.wait(WAIT) == 0
    finally:
        term.close()


async def test_exec_over_tcp():
    async with serve_vm(("127.0.0.1", 0)) as vm:
        host, port = vm.endpoints[0].address
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "qmpcore", "exec", f"{host}:{port}", "query-status",
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV,
        )  # fmt: skip
        out, err = await asyncio.wait_for(proc.communicate(), WAIT)
        assert proc.returncode == 0, err
        assert json.loads(out)["status"] == "running"


def test_exec_guest_agent(hooked):
    done = run("exec", "--qga", hooked.qga_paths[0], "guest-ping")
    assert done.returncode == 0, done.stderr
    assert done.stdout == "{}\n"
    info = json.loads(run("exec", "--qga", hooked.qga_paths[0], "guest-info").stdout)
    assert info["version"] == "7.2.0"


# -- events --------------------------------------------------------------------------


def wait_connected(server, index, timeout=WAIT):
    deadline = time.monotonic() + timeout
    while server.vm(index).connected < 1:
        assert time.monotonic() < deadline, "client did not connect"
        time.sleep(0.02)


def test_events_follows_named_events_until_interrupted(hooked):
    proc = spawn("events", hooked.qmp_paths[0], "STOP", "SHUTDOWN")
    try:
        wait_connected(hooked, 0)
        line = ""
        for _ in range(50):  # the subscription starts just after the connection
            hooked.vm(0).emit_event("RESUME")
            hooked.vm(0).emit_event("STOP")
            ready, _, _ = select.select([proc.stdout], [], [], 0.2)
            if ready:
                line = proc.stdout.readline().decode()
                break
        event = json.loads(line)
        assert event["event"] == "STOP" and set(event["timestamp"]) == {"seconds", "microseconds"}
    finally:
        status = stop(proc, signal.SIGINT)
    assert status == 130


def test_events_exits_3_when_the_connection_breaks(hooked):
    proc = spawn("events", hooked.qmp_paths[1])
    try:
        wait_connected(hooked, 1)
        hooked.vm(1).drop_connections()
        assert proc.wait(WAIT) == 3
        assert b"closed the connection" in proc.stderr.read()
    finally:
        stop(proc)


def test_events_rejects_guest_agent(hooked):
    done = run("events", "--qga", hooked.qga_paths[0])
    assert done.returncode == 2 and "no events" in done.stderr


# -- shell ---------------------------------------------------------------------------


def test_shell_on_a_terminal(hooked, tmp_path):
    history = tmp_path / "history"
    term = Terminal("shell", hooked.qmp_paths[0], "--history", history)
    try:
        term.expect(r"Connected to QEMU 7\.2\.0")
        term.expect(r"qmp> ")
        term.type("query-statu\t")  # completion from query-commands
        term.expect(r"query-status ")
        term.type("\r")
        term.expect(r'"status": "running"')
        term.expect(r"qmp> ")
        term.type('{"execute": "query-name"}\r')
        term.expect(r'"name": "vm0"')
        term.type("human-monitor-command command-line='info status'\r")
        term.expect(r"VM status: running")
        term.type("no-such-command\r")
        term.expect(r"error: CommandNotFound")
        term.type("bad key\r")
        term.expect(r"error: expected key=value")
        term.expect(r"qmp> ")
        term.type("query-na")  # events show while a line is being typed
        hooked.vm(0).emit_event("STOP")
        term.expect(r'"event":"STOP"')
        term.expect(r"qmp> query-na")
        term.type("\x15\x04")  # clear the line, then Ctrl-D
        assert term.proc.wait(WAIT) == 0
        assert "closed the connection" not in term.output
    finally:
        term.close()
    lines = history.read_text().splitlines()
    assert "query-status" in lines[0] and '{"execute": "query-name"}' in lines


def test_shell_reads_a_script_from_a_pipe(served):
    script = 'query-name\n{"execute": "query-status"}\nno-such-command\nquery-name\n'
    done = run("shell", served[1], input=script)
    assert done.returncode == 1  # the script stops at its first failure
    lines = done.stdout.splitlines()
    assert lines == ['{"name":"vm1"}', '{"status":"running","singlestep":false,"running":true}']
    assert "line 3: CommandNotFound: The command no-such-command has not been found" in done.stderr


def test_shell_says_when_the_server_goes_away(hooked, tmp_path):
    term = Terminal("shell", hooked.qmp_paths[1], "--history", tmp_path / "history")
    try:
        term.expect(r"qmp> ")
        hooked.vm(1).drop_connections()
        term.expect(r"\(the server closed the connection; Ctrl-D to leave\)")
        term.type("query-status\r")
        term.expect(r"error: ")
        assert term.proc.wait(WAIT) == 3
    finally:
        term.close()


def test_shell_guest_agent(hooked):
    done = run("shell", "--qga", hooked.qga_paths[1], input="guest-ping\n")
    assert done.returncode == 0 and done.stdout == "{}\n"


def test_shell_connection_error(tmp_path):
    done = run("shell", tmp_path / "nothing")
    assert done.returncode == 3


# -- serve, bench, parsing -------------------------------------------------------------


def test_serve_one_vm_pretty(tmp_path):
    path = tmp_path / "one.qmp"
    proc = spawn("serve", path, "--pretty")
    try:
        assert read_line(proc).strip() == str(path)
        done = run("exec", path, "query-status")
        assert json.loads(done.stdout)["running"] is True
    finally:
        assert stop(proc, signal.SIGINT) == 0


def test_serve_rejects_bad_count(tmp_path):
    assert run("serve", tmp_path, "--vms", "0").returncode == 2


def test_version_and_help():
    assert run("--version").stdout.startswith("qmpcore ")
    helped = run("--help")
    assert helped.returncode == 0
    for word in ("exec", "events", "shell", "serve", "bench"):
        assert word in helped.stdout


@pytest.mark.parametrize(
    "text, address",
    [
        ("127.0.0.1:4444", ("127.0.0.1", 4444)),
        ("localhost:1", ("localhost", 1)),
        ("[::1]:4444", ("::1", 4444)),
        ("/run/vm/qmp.sock", "/run/vm/qmp.sock"),
        ("qmp.sock", "qmp.sock"),
        ("dir/vm:1", "dir/vm:1"),
    ],
)
def test_parse_address(text, address):
    assert cli.parse_address(text) == address


def test_parse_address_prefers_existing_files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "vm:4444").touch()
    assert cli.parse_address("vm:4444") == "vm:4444"
    with pytest.raises(cli.UsageError):
        cli.parse_address("host:99999")


def test_parse_arguments():
    assert cli.parse_arguments([]) is None
    assert cli.parse_arguments(["a=1", "b=true", "c=x y", 'd="7"', "e=[1,2]", "f.g=null", "f.h=2"]) == {
        "a": 1,
        "b": True,
        "c": "x y",
        "d": "7",
        "e": [1, 2],
        "f": {"g": None, "h": 2},
    }
    assert cli.parse_arguments(['{"x": {"y": 1}}']) == {"x": {"y": 1}}
    for bad in (["a"], ["=1"], ["a=1", "a=2"], ["a=1", "a.b=2"], ["{oops"], ['["list"]']):
        with pytest.raises(cli.UsageError):
            cli.parse_arguments(bad)


def test_parse_line():
    assert cli.parse_line("query-status") == ("query-status", None)
    assert cli.parse_line("  device_del id=net0 ") == ("device_del", {"id": "net0"})
    assert cli.parse_line("hmc command-line='info status'") == ("hmc", {"command-line": "info status"})
    assert cli.parse_line('{"execute": "stop", "arguments": {"a": 1}}') == ("stop", {"a": 1})
    for bad in ('{"arguments": {}}', "{", '{"execute": "x", "arguments": 3}', "'unterminated", ""):
        with pytest.raises(cli.UsageError):
            cli.parse_line(bad)


# -- real QEMU -------------------------------------------------------------------------


@pytest.fixture
def qemu(tmp_path):
    """One QEMU with two QMP monitors: qmp-0.sock and events.sock."""
    from qmpcore.bench._qemu import QemuGroup, QemuMissing, find_qemu

    try:
        find_qemu()
    except QemuMissing as exc:
        if IN_CI:
            pytest.fail(str(exc))
        pytest.skip(str(exc))
    second = tmp_path / "events.sock"
    group = QemuGroup(1, str(tmp_path), extra_args=["-qmp", f"unix:{second},server=on,wait=off"])
    try:
        group.start()
        yield group.paths[0], str(second)
    finally:
        group.close()


@pytest.mark.qemu
def test_real_qemu_exec_events_and_shell(qemu, tmp_path):
    monitor, events_monitor = qemu
    done = run("exec", monitor, "query-status")
    assert done.returncode == 0 and json.loads(done.stdout)["status"] == "running"
    assert run("exec", monitor, "no-such-command").returncode == 1

    follower = spawn("events", events_monitor, "STOP")
    try:
        line = ""
        for _ in range(50):  # until the follower is connected and subscribed
            assert run("exec", monitor, "stop").returncode == 0
            ready, _, _ = select.select([follower.stdout], [], [], 0.2)
            if ready:
                line = follower.stdout.readline().decode()
                break
            assert run("exec", monitor, "cont").returncode == 0
        assert json.loads(line)["event"] == "STOP"
    finally:
        assert stop(follower, signal.SIGINT) == 130

    term = Terminal("shell", monitor, "--history", tmp_path / "history")
    try:
        term.expect(r"Connected to QEMU 7\.")
        term.expect(r"qmp> ")
        term.type("cont\r")
        term.expect(r"RESUME")  # the event arrives before cont's reply
        term.expect(r"qmp> ")
        term.type("qom-list path=/machine\r")
        term.expect(r'"name": "type"')
        term.type("query-statu\t\r")
        term.expect(r'"running": true')
        term.expect(r"qmp> ")  # typed ahead of the prompt, Ctrl-D could be lost
        term.type("\x04")
        assert term.proc.wait(WAIT) == 0
    finally:
        term.close()


def test_soak_subcommand_runs_and_reports():
    done = run("soak", "--minutes", "0.1", "--vms", "2", "--seed", "7", "--json", timeout=60)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["lost"] == 0 and report["misrouted"] == 0


def test_soak_subcommand_rejects_bad_options():
    done = run("soak", "--minutes", "0")
    assert done.returncode == 2 and "must be positive" in done.stderr
