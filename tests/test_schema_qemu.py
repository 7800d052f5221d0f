"""Schema.check against a real QEMU 7.2 (``-M none``): same verdicts, same errors.

Valid arguments built from the schema are mutated at random (members
removed, unknown members added, values replaced by other JSON types, wrong
enum values, out-of-range integers, nested); every case goes to QEMU and
through :meth:`qmpcore.Schema.check`, and the two must agree: the same
error class and ``desc`` when QEMU's argument checks fail, no error from
``check`` when they pass.  Commands that would stop QEMU or crash QEMU 7.2
are left out (``schema_support.NEVER``); those that would act on the host
carry one more unknown member so that they never run
(``schema_support.GUARDED``).  The seed is random per run and shown on
failure (``QMPCORE_SCHEMA_SEED`` replays it).
"""

from __future__ import annotations

import json
import os
import random
import re
import socket
from collections.abc import Iterator
from typing import Any

import pytest

from qemu_support import Launcher, module_launcher  # noqa: F401 -- fixture
from qmpcore import CommandError, Schema
from qmpcore.protocol._qapi import DATA_DIR
from schema_support import GUARD, NEVER, Builder, guarded, mutate, probe_integer

pytestmark = pytest.mark.qemu

CASES = 4000
BATCH = 64
# What QEMU's input visitor says; other errors come from running the command.
_VISITOR = re.compile(
    r"^(Parameter '.*' is (missing|unexpected)"
    r"|Invalid parameter type for '.*', expected: \S+"
    r"|Parameter '.*' does not accept value '.*'"
    r"|Parameter '.*' expects u?int\d+(_t)?"
    r"|QMP input member 'arguments' must be an object"
    r"|The command \S+ has not been found)$"
)


class RawQMP:
    """A bare QMP connection that sends any JSON (qmpcore's encoder refuses
    integers beyond 64 bits, which QEMU reads as numbers) and pipelines."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(30)
        self.sock.connect(path)
        self.buffer = b""
        self.next_id = 0
        self._line()  # greeting
        assert "return" in self.batch([("qmp_capabilities", None)])[0]

    def _line(self) -> dict:
        while b"\n" not in self.buffer:
            data = self.sock.recv(1 << 16)
            if not data:
                raise ConnectionError("QEMU closed the connection")
            self.buffer += data
        line, self.buffer = self.buffer.split(b"\n", 1)
        return json.loads(line)  # type: ignore[no-any-return]

    def batch(self, commands: list[tuple[str, Any]]) -> list[dict]:
        """Send every command at once; return the replies in order."""
        ids = []
        out = []
        for command, arguments in commands:
            self.next_id += 1
            ids.append(self.next_id)
            message: dict[str, Any] = {"execute": command, "id": self.next_id}
            if arguments is not None:
                message["arguments"] = arguments
            out.append(json.dumps(message).encode())
        self.sock.sendall(b"\n".join(out) + b"\n")
        replies: dict[int, dict] = {}
        while len(replies) < len(ids):
            reply = self._line()
            if "id" in reply:
                replies[reply["id"]] = reply
        return [replies[i] for i in ids]

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(scope="module")
def qemu(module_launcher: Launcher) -> Iterator[RawQMP]:  # noqa: F811
    vm = module_launcher.qemu()
    client = RawQMP(str(vm.path))
    try:
        yield client
    finally:
        client.close()


@pytest.fixture(scope="module")
def schema(qemu: RawQMP) -> Schema:
    """The running QEMU's own schema (the bundled one is the same build)."""
    entries = qemu.batch([("query-qmp-schema", None)])[0]["return"]
    return Schema.from_reply(entries)


def _verdict(reply: dict) -> tuple[str, str] | None:
    """QEMU's argument-check error, or ``None`` if its checks passed."""
    error = reply.get("error")
    if error is None or not _VISITOR.match(error["desc"]):
        return None
    return error["class"], error["desc"]


def _local(schema: Schema, command: str, arguments: Any) -> tuple[str, str] | None:
    error: CommandError | None = schema.errors(command, arguments)
    return None if error is None else (error.error_class, error.desc)


def test_the_bundled_schema_is_this_qemus(schema: Schema) -> None:
    assert list(schema) == list(Schema.bundled())


def test_random_mutations_agree_with_qemu(qemu: RawQMP, schema: Schema) -> None:
    seed = int(os.environ.get("QMPCORE_SCHEMA_SEED") or random.randrange(1 << 32))
    rng = random.Random(seed)
    builder = Builder(list(schema))
    commands = [c for c in builder.commands if c not in NEVER]
    cases: list[tuple[str, Any]] = []
    for command in commands:  # every command once as built: all valid (but the guarded)
        cases.append((command, builder.arguments(command)))
    while len(cases) < CASES:
        command = rng.choice(commands)
        cases.append((command, mutate(builder, rng, command, builder.arguments(command))))
    for command, arguments in cases:
        if guarded(command):
            arguments[GUARD] = 1
    mismatches = []
    errors = 0
    for start in range(0, len(cases), BATCH):
        chunk = cases[start : start + BATCH]
        for (command, arguments), reply in zip(chunk, qemu.batch(chunk)):
            theirs = _verdict(reply)
            ours = _local(schema, command, arguments)
            errors += theirs is not None
            if theirs != ours:
                mismatches.append((command, arguments, theirs, ours))
    assert not mismatches, f"seed {seed}: {len(mismatches)} differences, first {mismatches[:5]}"
    # the cases are mostly errors, and not all of one kind
    assert len(cases) >= CASES and errors > CASES // 2


def test_not_an_object_and_unknown_commands(qemu: RawQMP, schema: Schema) -> None:
    cases: list[tuple[str, Any]] = [("query-status", []), ("query-status", 1), ("nope", {}), ("__com.x", None)]
    for (command, arguments), reply in zip(cases, qemu.batch(cases)):
        assert _verdict(reply) == _local(schema, command, arguments) is not None


def test_integer_table_matches_qemu(qemu: RawQMP, schema: Schema) -> None:
    """Re-measure every integer member's type the way the table was made."""
    builder = Builder(list(schema))
    table = json.loads((DATA_DIR / "qapi_int_types_7.2.json").read_text())

    def ask(command: str, arguments: dict) -> str | None:
        # The guard member keeps every probe from running: QEMU names an
        # integer's type error before it complains about unknown members.
        reply = qemu.batch([(command, {**arguments, GUARD: 1})])[0]
        return reply["error"]["desc"] if "error" in reply else None

    measured = {}
    for path, _owner, member, _type in builder.int_members():
        if path.split("/")[0] == "device_add":
            continue  # checks its own members
        measured[path] = probe_integer(builder, path, member, ask)
    assert measured == {path: kind for path, kind in table.items() if path in measured}
    assert len(measured) >= 290


def test_first_unexpected_member_follows_glib_hash_order(qemu: RawQMP, schema: Schema) -> None:
    """With several unknown members QEMU names the first in its GLib hash
    table's order: small tables, and tables that grew while being filled."""
    seed = int(os.environ.get("QMPCORE_SCHEMA_SEED") or random.randrange(1 << 32))
    rng = random.Random(seed)
    words = ["a", "b", "id", "x", "bogus", "extra", "node", "name", "zz", "x-y", "device", "speed", "Q", "é"]
    builder = Builder(list(schema))
    arg_type = builder.types["migrate-set-parameters"]["arg-type"]
    known = {m["name"]: builder.minimal(m["type"]) for m in builder.types[arg_type]["members"]}
    cases: list[tuple[str, Any]] = []
    for _ in range(300):  # many members visited and removed: the table shrinks
        names = rng.sample(sorted(known), rng.randint(1, len(known)))
        arguments = {name: known[name] for name in names}
        arguments.update({rng.choice(words) + str(rng.randrange(100)): 1 for _ in range(rng.randint(2, 6))})
        cases.append(("migrate-set-parameters", arguments))
    for _ in range(600):
        count = rng.randint(2, 24)
        keys = {
            rng.choice(words) + str(rng.randrange(100)) if rng.random() < 0.7 else rng.choice(words)
            for _ in range(count)
        }
        command, base = rng.choice(
            [
                ("query-status", {}),
                ("yank", {"instances": []}),
                ("trace-event-set-state", {"name": "", "enable": False}),
            ]
        )
        arguments = dict(base)
        arguments.update({key: 1 for key in keys})
        cases.append((command, arguments))
    mismatches = []
    for start in range(0, len(cases), BATCH):
        chunk = cases[start : start + BATCH]
        for (command, arguments), reply in zip(chunk, qemu.batch(chunk)):
            theirs, ours = _verdict(reply), _local(schema, command, arguments)
            if theirs != ours:
                mismatches.append((len(arguments), command, list(arguments), theirs, ours))
    assert not mismatches, f"seed {seed}: {len(mismatches)} differences, first {mismatches[:3]}"


async def test_clients_validate_against_real_qemu(module_launcher: Launcher) -> None:  # noqa: F811
    import qmpcore

    vm = module_launcher.qemu()
    async with await qmpcore.connect(str(vm.path), validate=True) as client:
        schema = await client.schema()
        assert list(schema) == list(Schema.bundled())
        with pytest.raises(CommandError) as local:
            await client.execute("migrate-set-parameters", {"compress-level": 300})
        assert local.value.reply is None and local.value.desc == "Parameter 'compress-level' expects uint8_t"
        await client.execute("migrate-set-parameters", {"compress-level": 9})
        assert (await client.execute("query-migrate-parameters"))["compress-level"] == 9
