"""The CLI against servers that send what no QEMU would.

Each test starts a QMP server written here (an asyncio server in a thread
that answers each command with the bytes the test chose) and runs
``python -m qmpcore`` as a subprocess against it, through a pipe or a
pseudo-terminal: deep replies and events, terminal escape sequences in
text, huge integers, an event in the same read as the capabilities reply,
command lists of the wrong types.
"""

from __future__ import annotations

import asyncio
import json
import os
import select
import signal
import threading

import pytest

from test_cli import WAIT, Terminal, qemu, read_line, run, spawn, stop  # noqa: F401 (qemu is a fixture)

GREETING = (
    b'{"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}, "package": ""}, "capabilities": ["oob"]}}\r\n'
)
TIMESTAMP = b'"timestamp": {"seconds": 1700000000, "microseconds": 1}'
DEPTH = 1000  # the client's limit is QEMU's: 1024 levels


def reply(body: bytes):
    """An answer: ``{"return": body}`` with the request's id."""

    def answer(request):
        ident = b', "id": ' + json.dumps(request["id"]).encode() if "id" in request else b""
        return b'{"return": ' + body + ident + b"}\r\n"

    return answer


def error(desc_json: bytes, error_class: bytes = b"GenericError"):
    """An error answer; ``desc_json`` is the JSON string as sent (escapes and all)."""

    def answer(request):
        ident = b', "id": ' + json.dumps(request["id"]).encode() if "id" in request else b""
        return b'{"error": {"class": "' + error_class + b'", "desc": ' + desc_json + b"}" + ident + b"}\r\n"

    return answer


def event(name: bytes, data: bytes = b"{}") -> bytes:
    return b'{"event": "' + name + b'", "data": ' + data + b", " + TIMESTAMP + b"}\r\n"


DEEP = b"[" * DEPTH + b"]" * DEPTH


class HostileQMP:
    """A QMP server in a thread; ``answers`` maps command names to answer functions.

    Unknown commands get ``{"return": {}}``; :meth:`push` writes bytes to
    every connected client (events at a moment the test chooses).
    """

    def __init__(self, path, answers=None, greeting=GREETING):
        self.path = str(path)
        self.answers = {"qmp_capabilities": reply(b"{}"), **(answers or {})}
        self.greeting = greeting
        self.requests = []
        self.connected = threading.Semaphore(0)
        self._writers = set()
        self._tasks = set()
        self._loop = asyncio.new_event_loop()
        started = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(started,), daemon=True)
        self._thread.start()
        assert started.wait(WAIT), "server did not start"

    def _run(self, started):
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(asyncio.start_unix_server(self._serve, self.path))
        started.set()
        self._loop.run_forever()

    async def _serve(self, reader, writer):
        self._tasks.add(asyncio.current_task())
        self._writers.add(writer)
        try:
            writer.write(self.greeting)
            self.connected.release()
            while line := await reader.readline():
                request = json.loads(line)
                self.requests.append(request)
                writer.write(self.answers.get(request.get("execute"), reply(b"{}"))(request))
                await writer.drain()
        except (ConnectionError, ValueError, asyncio.CancelledError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()
            self._tasks.discard(asyncio.current_task())

    def wait_connected(self):
        assert self.connected.acquire(timeout=WAIT), "the CLI did not connect"

    def push(self, data: bytes):
        def write():
            for writer in self._writers:
                writer.write(data)

        self._loop.call_soon_threadsafe(write)

    async def _shutdown(self):
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    def close(self):
        asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(WAIT)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(WAIT)
        self._loop.close()


@pytest.fixture
def hostile(tmp_path):
    """A factory: ``hostile(answers)`` starts a server and returns it (closed after the test)."""
    servers = []

    def start(answers=None, **options):
        server = HostileQMP(tmp_path / f"hostile{len(servers)}.sock", answers, **options)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()


def finish(term):
    """Everything the terminal's child prints until it exits; its exit status."""
    chunks = [term.output]
    while True:
        ready, _, _ = select.select([term.fd], [], [], WAIT)
        assert ready, "the child did not finish"
        try:
            chunk = os.read(term.fd, 65536)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk.decode(errors="replace"))
    term.output = ""
    return "".join(chunks), term.proc.wait(WAIT)


# -- depth and size ------------------------------------------------------------------


def test_exec_prints_a_1000_deep_reply(hostile):
    server = hostile({"deep": reply(DEEP)})
    done = run("exec", server.path, "deep")
    assert done.returncode == 0, done.stderr
    assert done.stdout == DEEP.decode() + "\n"


def test_exec_pretty_prints_a_1000_deep_reply_on_a_terminal(hostile):
    server = hostile({"deep": reply(b'{"a": ' + DEEP + b"}")})
    term = Terminal("exec", server.path, "deep")
    try:
        output, status = finish(term)
    finally:
        term.close()
    assert status == 0, output
    lines = output.replace("\r\n", "\n").splitlines()
    assert lines[:3] == ["{", '  "a": [', "    ["]
    # Indentation stops growing at 32 levels; deeper levels print on one line.
    assert max(len(line) - len(line.lstrip(" ")) for line in lines) == 2 * 32
    assert "".join(line.strip() for line in lines) == '{"a": ' + DEEP.decode() + "}"


@pytest.mark.parametrize("digits", [4301, 5000, 19_999])
def test_exec_prints_long_integers_exactly(hostile, digits):
    number = ("9" + "0123456789" * digits)[:digits]
    server = hostile({"big": reply(b'{"n": -' + number.encode() + b', "m": ' + number.encode() + b"}")})
    done = run("exec", server.path, "big")
    assert done.returncode == 0, done.stderr
    assert done.stdout == '{"n":-' + number + ',"m":' + number + "}\n"


def test_events_keeps_the_event_sent_with_the_capabilities_reply(hostile):
    server = hostile({"qmp_capabilities": lambda request: reply(b"{}")(request) + event(b"FIRST")})
    proc = spawn("events", server.path)
    try:
        first = json.loads(read_line(proc))
        assert first["event"] == "FIRST"
        server.push(event(b"DEEP", b'{"x": ' + DEEP + b"}"))
        deep = read_line(proc)
        assert (
            deep
            == '{"event":"DEEP","data":{"x":'
            + DEEP.decode()
            + '},"timestamp":{"seconds":1700000000,"microseconds":1}}\n'
        )
        server.push(event(b"AFTER"))
        assert json.loads(read_line(proc))["event"] == "AFTER"
    finally:
        status = stop(proc, signal.SIGINT)
    assert status == 130


# -- escape sequences ----------------------------------------------------------------

# OSC (set the window title), CSI 2J (clear the screen), 8-bit CSI, BEL,
# a bare carriage return (overwrites the line) and a right-to-left override.
NASTY_JSON = b'"\\u001b]0;owned\\u0007\\u001b[2Jcleared\\u009b31m\\rfake\\u202eevil"'
NASTY = "\x1b]0;owned\x07\x1b[2Jcleared\x9b31m\rfake\u202eevil"
RAW_CONTROLS = ("\x1b]", "\x1b[2J", "\x07", "\x9b", "\u202e")


def test_error_text_is_escaped_on_a_terminal(hostile):
    server = hostile({"bad": error(NASTY_JSON), "human-monitor-command": reply(NASTY_JSON)})
    term = Terminal("exec", server.path, "bad")
    try:
        output, status = finish(term)
    finally:
        term.close()
    assert status == 1
    assert not any(raw in output for raw in RAW_CONTROLS), repr(output)
    assert r"GenericError: \x1b]0;owned\x07\x1b[2Jcleared\x9b31m\rfake\u202eevil" in output

    term = Terminal("exec", server.path, "human-monitor-command", "command-line=info status")
    try:
        output, status = finish(term)
    finally:
        term.close()
    assert status == 0
    assert not any(raw in output for raw in RAW_CONTROLS), repr(output)
    assert r"\x1b]0;owned" in output


def test_error_text_is_kept_exact_in_a_pipe_on_one_line(hostile):
    server = hostile({"bad": error(NASTY_JSON), "multi": error(b'"line 1\\nline 2"')})
    done = run("exec", server.path, "bad")
    assert done.returncode == 1
    assert done.stderr == "qmpcore: GenericError: " + NASTY.replace("\r", "\\r") + "\n"
    done = run("exec", server.path, "multi")
    assert done.stderr == "qmpcore: GenericError: line 1\\nline 2\n"


def test_json_output_escapes_control_characters(hostile):
    server = hostile({"nasty": reply(b'{"s": ' + NASTY_JSON + b', "\\u001b[2J": 1}')})
    done = run("exec", server.path, "nasty")
    assert done.returncode == 0
    assert done.stdout == (
        '{"s":"\\u001b]0;owned\\u0007\\u001b[2Jcleared\\u009b31m\\rfake\\u202eevil","\\u001b[2J":1}\n'
    )
    assert json.loads(done.stdout) == {"s": NASTY, "\x1b[2J": 1}


# -- the shell -----------------------------------------------------------------------


def test_shell_survives_hostile_command_lists_events_and_replies(hostile, tmp_path):
    names = b'[{"name": 7}, "junk", {"name": {"x": 1}}, {"name": "query-status"}, {"name": "deep"}, null]'
    server = hostile(
        {
            "query-commands": reply(names),
            "deep": reply(DEEP),
            "bad": error(NASTY_JSON),
            "human-monitor-command": reply(NASTY_JSON),
        }
    )
    term = Terminal("shell", server.path, "--history", tmp_path / "history")
    try:
        term.expect(r"Connected to QEMU 7\.2\.0")
        term.expect(r"qmp> ")
        term.type("query-sta\t")  # the one string name completes; the others were ignored
        term.expect(r"query-status ")
        term.type("\r")
        term.expect(r"\{\}")
        term.expect(r"qmp> ")
        server.push(event(b"DEEP", DEEP))
        term.expect(re_escape('"event":"DEEP","data":' + DEEP.decode()))
        server.push(event(b"\\u001b[2J"))  # an event name that would clear the screen
        term.expect(re_escape('"event":"\\u001b[2J"'))
        term.type("deep\r")
        term.expect(re_escape("[" * 32 + "]" * 32))
        term.expect(r"qmp> ")
        term.type("bad\r")
        term.expect(re_escape(r"error: GenericError: \x1b]0;owned\x07\x1b[2Jcleared\x9b31m\rfake\u202eevil"))
        term.type('human-monitor-command {"command-line": "info status"}\r')
        term.expect(re_escape(r"\x1b]0;owned\x07"))
        term.type('{"execute": 5}\r')  # not a command name: an error line, not a crash
        term.expect(r"error: a JSON line must be an object")
        term.type("query-status\r")
        term.expect(r"\{\}")
        term.expect(r"qmp> ")
        term.type("\x04")
        output, status = finish(term)
    finally:
        term.close()
    assert status == 0
    assert "Traceback" not in output
    assert [r["execute"] for r in server.requests if r["execute"] != "qmp_capabilities"] == [
        "query-commands",
        "query-qmp-schema",  # for argument completion and help; refused here, which the shell survives
        "query-status",
        "deep",
        "bad",
        "human-monitor-command",
        "query-status",
    ]
    assert server.requests[-2]["arguments"] == {"command-line": "info status"}


def re_escape(text):
    import re

    return re.escape(text)


# -- scripts -------------------------------------------------------------------------


@pytest.fixture
def vm(tmp_path):
    """``qmpcore serve PATH``: one simulated VM; its socket path."""
    path = tmp_path / "vm.qmp"
    proc = spawn("serve", path)
    try:
        assert read_line(proc).strip() == str(path)
        yield str(path)
    finally:
        assert stop(proc) == 0


def test_shell_script_stops_at_the_first_failure_and_names_its_line(vm, tmp_path):
    script = tmp_path / "setup.qmp"
    script.write_text(
        "# comments and blank lines count as lines\n"
        "\n"
        "query-name\n"
        'human-monitor-command {"command-line": "info status"}\n'
        "no-such-command\n"
        "stop\n"
    )
    done = run("shell", vm, "-f", script)
    assert done.returncode == 1
    assert done.stdout == "{}\nVM status: running\n"
    assert (
        done.stderr == f"qmpcore: {script}, line 5: CommandNotFound: The command no-such-command has not been found\n"
    )
    assert json.loads(run("exec", vm, "query-status").stdout)["running"] is True  # line 6 never ran


def test_shell_script_from_a_pipe_reports_bad_lines_as_usage_errors(vm):
    done = run("shell", vm, input="query-name\ndevice_del id\n")
    assert done.returncode == 2
    assert done.stdout == "{}\n"
    assert done.stderr == "qmpcore: line 2: expected key=value, got 'id'\n"
    done = run("shell", vm, input="query-name\nquery-status\n")
    assert done.returncode == 0 and len(done.stdout.splitlines()) == 2


def test_shell_script_file_missing(vm, tmp_path):
    done = run("shell", vm, "-f", tmp_path / "none.qmp")
    assert done.returncode == 2 and "cannot read the script" in done.stderr


def test_parse_line_takes_a_json_object_after_the_command():
    from qmpcore import cli

    assert cli.parse_line('human-monitor-command {"command-line": "info  status"}') == (
        "human-monitor-command",
        {"command-line": "info  status"},
    )
    assert cli.parse_line('device_add  {"driver": "virtio-net", "id": "a b", "x": {"y": [1, "}"]}}') == (
        "device_add",
        {"driver": "virtio-net", "id": "a b", "x": {"y": [1, "}"]}},
    )
    assert cli.parse_line("blockdev-del node-name=x a.b=1 a.c=[1]") == (
        "blockdev-del",
        {"node-name": "x", "a": {"b": 1, "c": [1]}},
    )
    for bad in ('x {"a": ', "x {} extra", "x {1: 2}"):
        with pytest.raises(cli.UsageError):
            cli.parse_line(bad)


# -- serve ---------------------------------------------------------------------------


def test_serve_refuses_a_socket_something_listens_on(vm, tmp_path):
    done = run("serve", vm)
    assert done.returncode == 2
    assert "something is listening on this socket" in done.stderr and done.stderr.count("\n") == 1
    assert json.loads(run("exec", vm, "query-status").stdout)["running"] is True  # still served

    fleet = tmp_path / "fleet"
    proc = spawn("serve", fleet, "--vms", 2)
    try:
        assert read_line(proc) == f"{fleet / 'vm0.qmp'}\n"
        done = run("serve", fleet, "--vms", 3)
        assert done.returncode == 2 and f"{fleet / 'vm0.qmp'}: something is listening" in done.stderr
        assert not (fleet / "vm2.qmp").exists()  # refused before creating anything
        assert json.loads(run("exec", fleet / "vm1.qmp", "query-name").stdout) == {"name": "vm1"}
    finally:
        assert stop(proc) == 0


def test_serve_replaces_only_a_stale_socket(tmp_path):
    import socket

    stale = tmp_path / "stale.qmp"
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(stale))  # never listened: its file stays, nothing answers
    proc = spawn("serve", stale)
    try:
        assert read_line(proc) == f"{stale}\n"
        assert json.loads(run("exec", stale, "query-status").stdout)["running"] is True
    finally:
        assert stop(proc) == 0
    assert not stale.exists()

    plain = tmp_path / "notes.txt"
    plain.write_text("keep me")
    done = run("serve", plain)
    assert done.returncode == 2 and "not a socket" in done.stderr
    assert plain.read_text() == "keep me"
    done = run("serve", plain, "--vms", 2)
    assert done.returncode == 2 and "not a directory" in done.stderr


def test_help_texts_match_what_the_commands_do():
    helped = run("serve", "--help").stdout
    assert "vm0.qmp" in helped and ".sock" not in helped and ".qga" not in helped
    assert "--qga" not in run("events", "--help").stdout  # events refuses --qga
    helped = run("shell", "--help").stdout
    assert "-f FILE, --file FILE" in helped and "first failure" in helped
    for sub in ("exec", "events", "shell"):
        assert "3 no connection" in run(sub, "--help").stdout
    helped = run("bench", "--help").stdout
    assert "``" not in helped and "pip install '.[bench]'" in helped


# -- addresses and connection errors ---------------------------------------------------


@pytest.mark.parametrize(
    "text, message",
    [
        ("host:abc", "port 'abc' is not a number in 'host:abc'"),
        ("host:99999", "port 99999 is out of range (1-65535) in 'host:99999'"),
        ("host:0", "port 0 is out of range"),
        (":4444", "no host before the port in ':4444'"),
        ("host:", "no port after the host in 'host:'"),
        ("::1:4444", "an IPv6 address needs brackets: [::1]:4444"),
        ("[::1]", "expected [IPv6]:port, got '[::1]'"),
        ("", "empty address"),
    ],
)
def test_bad_addresses_say_what_is_wrong(text, message):
    from qmpcore import cli

    with pytest.raises(cli.UsageError) as caught:
        cli.parse_address(text)
    assert message in str(caught.value)


def test_bad_address_on_the_command_line():
    done = run("exec", "host:abc", "query-status")
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        "qmpcore exec: port 'abc' is not a number in 'host:abc' (for a unix socket in this directory write ./host:abc)"
    ]


def one_line_naming(stderr, path):
    """The error is one line that names ``path`` once at its start (a hint may repeat it)."""
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith(f"qmpcore: {path}: ")
    assert f"{path}: {path}" not in lines[0]
    return lines[0]


def test_connection_errors_are_one_line_naming_the_address(tmp_path, hostile):
    import socket

    missing = tmp_path / "missing.sock"
    for sub in ("exec", "shell", "events"):
        args = [sub, missing] + (["query-status"] if sub == "exec" else [])
        done = run(*args)
        assert done.returncode == 3, (sub, done.stderr)
        one_line_naming(done.stderr, missing)

    refused = tmp_path / "refused.sock"
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(refused))
    done = run("exec", refused, "query-status")
    assert done.returncode == 3
    assert "refused" in one_line_naming(done.stderr, refused).lower()

    silent = hostile(greeting=b"")  # accepts, never greets
    done = run("exec", "--timeout", "0.5", silent.path, "query-status")
    assert done.returncode == 3
    one_line_naming(done.stderr, silent.path)


# -- real QEMU -------------------------------------------------------------------------


@pytest.mark.qemu
def test_serve_leaves_a_running_qemus_monitor_alone(qemu):  # noqa: F811 (the fixture imported above)
    monitor, _ = qemu
    done = run("serve", monitor)
    assert done.returncode == 2
    assert done.stderr == (
        f"qmpcore serve: {monitor}: something is listening on this socket (a running QEMU or another server); "
        "not replacing it (stop that process or choose another path)\n"
    )
    assert json.loads(run("exec", monitor, "query-status").stdout)["status"] == "running"
    done = run("exec", monitor, "human-monitor-command", "command-line=info version")
    assert done.returncode == 0 and done.stdout.startswith("7.2") and done.stdout.endswith("\n")
    assert "\r" not in done.stdout and '"' not in done.stdout
