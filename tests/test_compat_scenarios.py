"""The drop-in adapters behave like the libraries they replace.

Every scenario in :mod:`compat_scenarios` runs against real QEMU 7.2 on the
reference packages (``qemu.qmp`` 0.0.6, ``qmp`` 1.1.0) and on
``qmpcore.compat``; the records must be equal value by value.
"""

from __future__ import annotations

from typing import Any

import pytest

from compat_scenarios import BACKENDS, SCENARIOS, require_qemu, run_scenario

pytestmark = pytest.mark.qemu

#: Records of this session, so the comparison does not run scenarios twice.
RECORDS: dict[tuple[str, str], dict] = {}

#: Behaviours every backend must show (key path -> expected value).
EXPECTED: dict[str, dict[tuple[str, ...], Any]] = {
    "connect_unix": {
        ("runstates",): ["CONNECTING", "RUNNING", "DISCONNECTING", "IDLE"],
        ("connect_again", "raised", "type"): "StateError",
    },
    "execute_errors": {
        ("not_found", "raised", "type"): "ExecuteError",
        ("not_found", "raised", "error_class"): "CommandNotFound",
        ("bad_argument", "raised", "str"): "Parameter 'bogus' is unexpected",
        ("still_running", "ok"): {},
    },
    "events": {
        ("delivered_before_reply",): [True, True, True],
        ("resume_l_get", "event"): "RESUME",
    },
    "disconnect_reconnect": {
        ("execute_disconnecting", "raised", "state"): "DISCONNECTING",
        ("third", "ok", "status"): "prelaunch",
    },
    "interrupted_execute": {("pending", "raised", "type"): "ExecInterruptedError"},
    "fd_passing": {("getfd", "ok"): {}, ("closefd", "ok"): {}},
    "legacy_events": {
        ("pull", "ok", "event"): "STOP",
        ("pull_timeout", "raised", "type"): "TimeoutError",
    },
    "legacy_fd_passing": {("getfd", "ok"): {}},
    "old_events": {("pull", "ok", "event"): "STOP"},
    "old_fd_via_sock_fd": {("getfd", "ok"): {"return": {}}},
    "machine_lifecycle": {
        ("qmp_args", "ok"): {"return": "none-machine"},
        ("event_wait_stop", "ok", "event"): "STOP",
        ("event_wait_none", "raised", "type"): "TimeoutError",
        ("shutdown", "close"): "",
        ("logged",): [],
    },
    "machine_vm_dies": {
        ("first", "raised", "type"): "ExecInterruptedError",
        ("second", "raised", "state"): "DISCONNECTING",
        ("event_wait", "raised", "type"): "TimeoutError",
        ("event_wait", "raised", "str"): "",
        ("event_wait", "raised", "qmpcore_errors_shown"): [],
        ("close",): "EOFError",
    },
    "machine_vm_dies_idle": {("command", "raised", "state"): "DISCONNECTING", ("close",): "EOFError"},
    "machine_timeouts": {
        ("command", "raised", "str"): "",
        ("command", "raised", "qmpcore_errors_shown"): [],
        ("logged",): [
            ["WARNING", "Unknown ID '__qmp#00000', message dropped."],
            ["WARNING", "Unknown ID 'None', message dropped."],
        ],
        ("after", "ok"): {},
    },
    "machine_launch_failures": {
        ("socketpair", "raised", "cause_is_exc"): True,
        ("socketpair", "raised", "exc", "type"): "EOFError",
        ("socketpair_logged",): [
            ["ERROR", "Failed to receive Greeting: EOFError"],
            ["ERROR", "Failed to establish session: EOFError"],
        ],
        ("server", "raised", "str"): "",
    },
    "shell_calls": {("greeting_before",): None, ("completion",): [True, True]},
    "tui_calls": {
        ("raw_id_in_use", "raised", "type"): "ValueError",
        ("raw_first", "ok", "id"): "user-dup",
        ("after_quit",): "DISCONNECTING",
        ("reconnect", "raised", "cause_is_exc"): True,
    },
}


def record(name: str, backend: str, tmp_path) -> dict:
    key = (name, backend)
    if key not in RECORDS:
        require_qemu()
        RECORDS[key] = run_scenario(name, backend, tmp_path / backend)
    return RECORDS[key]


def lookup(rec: dict, path: tuple[str, ...]) -> Any:
    for part in path:
        rec = rec[part]
    return rec


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", list(SCENARIOS))
def test_scenario(name: str, backend: str, tmp_path) -> None:
    rec = record(name, backend, tmp_path)
    for path, expected in EXPECTED.get(name, {}).items():
        assert lookup(rec, path) == expected, path


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_same_as_reference(name: str, tmp_path) -> None:
    ref = record(name, "reference", tmp_path)
    ours = record(name, "qmpcore", tmp_path)
    differing = sorted(k for k in ref.keys() | ours.keys() if ref.get(k) != ours.get(k))
    assert not differing, {k: {"reference": ref.get(k), "qmpcore": ours.get(k)} for k in differing}
