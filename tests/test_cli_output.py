"""The CLI's printer (``qmpcore.cli._output``) on its own: same text as
``json.dumps`` where that works, and no failure where it does not."""

from __future__ import annotations

import json
import random
import sys

import pytest

from qmpcore.cli import _output
from qmpcore.framing import Framer


def random_value(rng, depth=0):
    roll = rng.random()
    if depth > 5 or roll < 0.35:
        return rng.choice(
            [0, 1, -7, 2**63, -(2**70), 1.5, -0.0, 1e300, "", "plain", 'q"\\/', "é ü 漢", None, True, False]
        )
    if roll < 0.65:
        return [random_value(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    return {f"k{i}": random_value(rng, depth + 1) for i in range(rng.randint(0, 4))}


def test_same_text_as_json_dumps():
    rng = random.Random(12)
    for _ in range(1000):
        value = random_value(rng)
        assert _output.dump(value, True) == json.dumps(value, indent=2, ensure_ascii=False)
        compact = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
        assert _output.dump(value) == compact  # the C encoder's fast path
        assert "".join(_output.iter_json(value)) == compact  # the path for what it cannot do


def test_any_depth_without_recursion():
    deep: list = []
    inner = deep
    for _ in range(sys.getrecursionlimit() * 3):
        inner.append([])
        inner = inner[0]
    levels = sys.getrecursionlimit() * 3 + 1
    assert _output.dump(deep) == "[" * levels + "]" * levels
    pretty = _output.dump(deep, True).splitlines()
    assert max(len(line) - len(line.lstrip()) for line in pretty) == 2 * _output.MAX_INDENT_DEPTH
    assert len(pretty) == 2 * _output.MAX_INDENT_DEPTH + 1  # 32 indented levels, then one line


def test_pretty_output_grows_linearly_with_depth():
    # A deep frame must not multiply into indentation: bounded per input byte.
    deep: list = [1] * 1000
    for _ in range(1000):
        deep = [deep]
    compact = _output.dump(deep)
    assert len(_output.dump(deep, True)) < 3 * len(compact) + 4 * _output.MAX_INDENT_DEPTH**2


@pytest.mark.parametrize("digits", [1, 19, 4300, 4301, 12_345, 100_000])
def test_integers_print_exactly_whatever_the_interpreter_limit(digits):
    number = (10**digits - 1) // 9 * 7 * (-1 if digits % 2 else 1)  # 77...7, made without str()
    text = ("-" if number < 0 else "") + "7" * digits
    assert _output.int_text(number) == text
    assert _output.dump({"n": [number]}) == '{"n":[' + text + "]}"


def test_the_decoder_keeps_long_integers_once_allowed():
    before = sys.get_int_max_str_digits()
    try:
        sys.set_int_max_str_digits(4300)
        _output.allow_long_integers()
        assert sys.get_int_max_str_digits() == _output.INT_DIGITS
        frame = b'{"return": ' + b"9" * 19_000 + b"}\n"
        (reply,) = Framer().feed(frame)
        assert reply["return"] == int("9" * 19_000)
        sys.set_int_max_str_digits(0)  # unlimited stays unlimited
        _output.allow_long_integers()
        assert sys.get_int_max_str_digits() == 0
    finally:
        sys.set_int_max_str_digits(before)


def test_json_escapes_what_a_terminal_would_obey():
    value = {"\x1b[2J": "\x00\x07\x1b]0;t\x07\x7f\x85\x9b\u2028\u2029\u202e\u2066\ud800 ok é"}
    text = _output.dump(value)
    assert text == (
        '{"\\u001b[2J":"\\u0000\\u0007\\u001b]0;t\\u0007\\u007f\\u0085\\u009b\\u2028\\u2029\\u202e\\u2066\\ud800 ok é"}'
    )
    assert json.loads(text) == value
    assert text.isprintable()


def test_printable_text():
    nasty = "a\x1b[2Jb\r\nc\rd\te\x9bf\x00\u202e\ud800"
    assert _output.printable(nasty, terminal=True) == "a\\x1b[2Jb\r\nc\\rd\te\\x9bf\\x00\\u202e\\ud800"
    assert _output.printable(nasty, terminal=False) == "a\x1b[2Jb\r\nc\rd\te\x9bf\x00\u202e\\ud800"
    assert _output.one_line("x\ny\r\n", terminal=False) == "x\\ny\\r\\n"
    assert _output.hmp_text("VM status: running\r\n", terminal=True) == "VM status: running\n"
    assert _output.hmp_text("two\r\nlines", terminal=True) == "two\nlines\n"
    assert _output.hmp_text("", terminal=True) == ""


def test_write_json_writes_in_bounded_pieces():
    class Recorder:
        def __init__(self):
            self.writes = []

        def write(self, text):
            self.writes.append(len(text))

    big = [["x" * 100] * 10] * 2000  # about 2 MB of output
    recorder = Recorder()
    _output.write_json(recorder, big, pretty=True)
    assert sum(recorder.writes) == len(_output.dump(big, True)) + 1
    assert len(recorder.writes) > 10
    assert max(recorder.writes) < 2 * 65536


async def test_the_shell_event_printer_outlives_an_event_it_cannot_show():
    from types import SimpleNamespace

    from qmpcore.cli import _shell

    class Client:
        def events(self):
            async def stream():
                for name in ("A", "BAD", "C"):
                    yield SimpleNamespace(raw={"event": name})

            return stream()

    class Console(_shell._Console):
        def __init__(self):
            super().__init__(False, "qmp> ")
            self.interactive = True  # as on a terminal, without reading one
            self.shown = []

        def show_event(self, raw):
            if raw["event"] == "BAD":
                raise ValueError("cannot show this one")
            self.shown.append(raw["event"])

        def show_async(self, text):
            self.shown.append(text)

    console = Console()
    await _shell._print_events(console, Client(), _shell.threading.Event())
    assert console.shown == [
        "A",
        "(an event could not be shown: ValueError: cannot show this one)",
        "C",
        "(the server closed the connection; Ctrl-D to leave)",
    ]


def test_only_real_command_names_are_offered_for_completion():
    from qmpcore.cli._shell import _names

    entries = [
        {"name": "query-status"},
        {"name": "__com.redhat_drive_add"},
        {"name": "guest-exec", "enabled": False},
        {"name": "\x1b[2Jevil"},
        {"name": "with space"},
        {"name": ""},
        {"name": "x" * 129},
        {"name": 7},
        {"name": {"a": 1}},
        "junk",
        None,
        {"name": "query-status"},
    ]
    assert _names(entries) == ["__com.redhat_drive_add", "query-status"]
    assert _names({"name": "x"}) == [] and _names(None) == []
