"""qmpcore.Schema: lookups, libvirt's path language, QEMU's argument checks."""

from __future__ import annotations

import json
import pathlib
import sys
import warnings
from typing import Any

import pytest

import qmpcore
from qmpcore import CommandError, DeprecatedWarning, Schema, SchemaPathError, UnstableWarning

DATA = pathlib.Path(__file__).parent / "data"
LIBVIRT = json.loads((DATA / "libvirt" / "schema_queries_7.2.json").read_text())


def _libvirt_schema_entries() -> list[dict[str, Any]]:
    """The query-qmp-schema reply in libvirt's recorded QEMU 7.2 session."""
    text = (DATA / "corpus" / "libvirt" / "caps_7.2.0_x86_64.replies").read_text()
    commands: dict[str, str] = {}
    for block in text.split("\n\n"):
        if not block.strip():
            continue
        message = json.loads(block)
        if "execute" in message:
            commands[message["id"]] = message["execute"]
        elif commands.get(message.get("id")) == "query-qmp-schema":
            return message["return"]  # type: ignore[no-any-return]
    raise AssertionError("no query-qmp-schema reply in the libvirt session")


@pytest.fixture(scope="module")
def libvirt_schema() -> Schema:
    return Schema.from_reply(_libvirt_schema_entries())


@pytest.fixture(scope="module")
def bundled() -> Schema:
    return Schema.bundled()


# -- libvirt's probes, libvirt's answers ------------------------------------


@pytest.mark.parametrize("path,flag", LIBVIRT["queries"], ids=[q for q, _ in LIBVIRT["queries"]])
def test_libvirt_queries_agree_with_libvirt(libvirt_schema: Schema, path: str, flag: str) -> None:
    assert libvirt_schema.query(path) is (flag in LIBVIRT["flags"])


def test_libvirt_queries_cover_true_and_false() -> None:
    answers = [flag in LIBVIRT["flags"] for _, flag in LIBVIRT["queries"]]
    assert answers.count(True) == 29 and answers.count(False) == 6


def test_answers_come_from_the_schema_given(libvirt_schema: Schema, bundled: Schema) -> None:
    # libvirt's 7.2 build has five block drivers the bundled build lacks.
    for driver in (
        "io_uring",
        "nvme-io_uring",
        "virtio-blk-vfio-pci",
        "virtio-blk-vhost-user",
        "virtio-blk-vhost-vdpa",
    ):
        assert libvirt_schema.query(f"blockdev-add/arg-type/+{driver}")
        assert libvirt_schema.query(f"blockdev-add/arg-type/driver/^{driver}")
        assert not bundled.query(f"blockdev-add/arg-type/+{driver}")
        assert not bundled.query(f"blockdev-add/arg-type/driver/^{driver}")
    assert len(libvirt_schema) == len(bundled) + 5


# -- every operator -----------------------------------------------------------


@pytest.mark.parametrize(
    "path,expected",
    [
        # names and the command/event attributes
        ("query-status", True),
        ("no-such-command", False),
        ("query-status/ret-type", True),
        ("query-status/arg-type", True),
        ("query-status/bogus", False),
        ("SHUTDOWN/arg-type/reason", True),
        ("SHUTDOWN/arg-type/guest", True),
        ("SHUTDOWN/arg-type/nope", False),
        # members and optional members
        ("block-commit/arg-type/top", True),
        ("block-commit/arg-type/*top", True),
        ("block-commit/arg-type/*device", False),  # required
        ("human-monitor-command/arg-type/*command-line", False),
        ("human-monitor-command/arg-type/command-line", True),
        # variants of flat unions, nested
        ("blockdev-add/arg-type/+file", True),
        ("blockdev-add/arg-type/+nope", False),
        ("blockdev-add/arg-type/+qcow2/encrypt/+luks/key-secret", True),
        ("blockdev-add/arg-type/+qcow2/encrypt/+aes/key-secret", True),
        ("blockdev-add/arg-type/+qcow2/encrypt/+luks/nope", False),
        ("chardev-add/arg-type/backend/+file/data/logfile", True),
        # enum values, and an enum value's features
        ("blockdev-add/arg-type/+file/aio/^native", True),
        ("blockdev-add/arg-type/+file/aio/^threads", True),
        ("blockdev-add/arg-type/+file/aio/^nope", False),
        ("blockdev-add/arg-type/+file/aio/native", False),  # enums take only ^
        ("query-cpu-model-expansion/arg-type/type/^full", True),
        # builtin JSON types
        ("query-status/ret-type/running/!boolean", True),
        ("query-status/ret-type/running/!string", False),
        ("block-commit/arg-type/speed/!int", True),
        ("block-commit/arg-type/speed/!number", False),
        ("human-monitor-command/arg-type/command-line/!string", True),
        # features of commands, objects
        ("blockdev-snapshot/$allow-write-only-overlay", True),
        ("blockdev-snapshot/$nope", False),
        ("blockdev-add/arg-type/+file/$dynamic-auto-read-only", True),
        ("human-monitor-command/$savevm-monitor-nodes", True),
        ("device_add/$json-cli", True),
        # arrays are entered without a component
        ("query-block/ret-type/device", True),
        ("query-block/ret-type/inserted/node-name", True),
        ("migrate-set-parameters/arg-type/block-bitmap-mapping/bitmaps/transform", True),
        ("migrate-set-parameters/arg-type/block-bitmap-mapping/bitmaps/transform/persistent", True),
        # alternates: branches tried in turn
        ("blockdev-add/arg-type/+qcow2/file/+file/filename", True),
        ("blockdev-add/arg-type/+qcow2/file/!string", True),
        ("blockdev-add/arg-type/+qcow2/backing/!null", True),
        ("blockdev-add/arg-type/+qcow2/backing/!boolean", False),
        ("block-dirty-bitmap-merge/arg-type/bitmaps/!string", True),
        ("block-dirty-bitmap-merge/arg-type/bitmaps/node", True),
        # modifiers that do not fit the entry answer no
        ("query-status/^running", False),
        ("query-status/+x", False),
        ("query-status/*ret-type", False),
        ("blockdev-add/arg-type/^file", False),
        ("blockdev-add/arg-type/!object", False),
        ("block-commit/arg-type/speed/^1", False),
        ("block-commit/arg-type/speed/name", False),
    ],
)
def test_query_operators(bundled: Schema, path: str, expected: bool) -> None:
    assert bundled.query(path) is expected


def test_enum_value_features(bundled: Schema) -> None:
    # QEMU 7.2 marks some enum values deprecated or unstable (members[].features).
    found = [
        (entry["name"], member["name"], feature)
        for entry in bundled
        if entry["meta-type"] == "enum"
        for member in entry["members"]
        for feature in member.get("features", ())
    ]
    assert found
    for name, value, feature in found:
        commands = [c for c in bundled.commands if bundled.lookup(f"{c}/arg-type") and _reaches(bundled, c, name)]
        for command in commands[:1]:
            path = _path_to(bundled, bundled.command(command)["arg-type"], name)  # type: ignore[index]
            if path is not None:
                assert bundled.query(f"{command}/arg-type/{path}/^{value}/${feature}")
                assert not bundled.query(f"{command}/arg-type/{path}/^{value}/$nope")


def _reaches(schema: Schema, command: str, type_name: str) -> bool:
    return _path_to(schema, schema.command(command)["arg-type"], type_name) is not None  # type: ignore[index]


def _path_to(schema: Schema, start: str, target: str, depth: int = 0) -> str | None:
    """A members-only path from object ``start`` to a member of type ``target``."""
    if depth > 3:
        return None
    for member in schema.members(start):
        kind = schema.entry(member["type"])
        element = member["type"]
        while kind is not None and kind["meta-type"] == "array":
            element = kind["element-type"]
            kind = schema.entry(element)
        if element == target:
            return str(member["name"])
        if kind is not None and kind["meta-type"] == "object" and not kind.get("variants"):
            rest = _path_to(schema, element, target, depth + 1)
            if rest is not None:
                return f"{member['name']}/{rest}"
    return None


def test_lookup_returns_entries(bundled: Schema) -> None:
    entry = bundled.lookup("blockdev-add/arg-type/+file/aio")
    assert entry is not None and entry["meta-type"] == "enum" and entry["values"] == ["threads", "native", "io_uring"]
    assert bundled.lookup("query-status") == bundled.command("query-status")
    assert bundled.lookup("query-status/ret-type/running") == bundled.entry("bool")
    # Boolean components match without an entry, as in libvirt.
    assert bundled.query("blockdev-add/arg-type/+file/aio/^native")
    assert bundled.lookup("blockdev-add/arg-type/+file/aio/^native") is None
    assert bundled.lookup("blockdev-add/arg-type/+nope") is None


@pytest.mark.parametrize(
    "path",
    [
        "",
        "blockdev-snapshot/$allow-write-only-overlay/more",
        "block-commit/arg-type/speed/!int/more",
        "blockdev-add/arg-type/+file/aio/^native/native",
        "blockdev-add/arg-type/+file/aio/^native/$f/more",
    ],
)
def test_malformed_paths_raise(bundled: Schema, path: str) -> None:
    with pytest.raises(SchemaPathError):
        bundled.query(path)
    assert issubclass(SchemaPathError, ValueError)


def test_malformed_schemas_raise_not_hang() -> None:
    loop = Schema.from_reply(
        [
            {"name": "c", "meta-type": "command", "arg-type": "a", "ret-type": "a"},
            {"name": "a", "meta-type": "array", "element-type": "a"},
        ]
    )
    with pytest.raises(SchemaPathError, match="malformed QAPI schema"):
        loop.query("c/arg-type/x")
    nested: list[dict[str, Any]] = [{"name": "c", "meta-type": "command", "arg-type": "0"}]
    nested += [{"name": str(i), "meta-type": "alternate", "members": [{"type": str(i + 1)}]} for i in range(999)]
    nested.append({"name": "999", "meta-type": "builtin", "json-type": "int"})
    with pytest.raises(SchemaPathError):
        Schema.from_reply(nested).query("c/arg-type/!int")
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 20_000))  # the bound is the schema's, not the interpreter's
    try:
        with pytest.raises(SchemaPathError):
            Schema.from_reply(nested).query("c/arg-type/!int")
    finally:
        sys.setrecursionlimit(limit)
    dangling = Schema.from_reply([{"name": "c", "meta-type": "command", "arg-type": "9"}])
    with pytest.raises(SchemaPathError):
        dangling.query("c/arg-type/x")
    assert dangling.query("c/ret-type") is False


def test_names_starting_with_other_characters(bundled: Schema) -> None:
    # A leading non-letter is dropped, so such names are written " name".
    assert bundled.query("query-status/ ret-type")
    assert bundled.query("block-commit/arg-type/ top")


# -- lookups ------------------------------------------------------------------


def test_lookups(bundled: Schema) -> None:
    assert "query-status" in bundled.commands and "SHUTDOWN" in bundled.events
    assert len(bundled.commands) == 216 and len(bundled.events) == 52
    arg = bundled.command("blockdev-add")["arg-type"]  # type: ignore[index]
    assert bundled.tag(arg) == "driver"
    assert "file" in bundled.variants(arg)
    names = [m["name"] for m in bundled.members(arg, "file")]
    assert names[0] == "driver" and "filename" in names and "aio" in names
    filename = next(m for m in bundled.members(arg, "file") if m["name"] == "filename")
    assert not bundled.is_optional(filename)
    assert bundled.enum_values(bundled.lookup("blockdev-add/arg-type/+file/aio")["name"]) == [
        "threads",
        "native",
        "io_uring",
    ]  # type: ignore[index]
    assert bundled.features("blockdev-snapshot") == ["allow-write-only-overlay"]
    assert "unstable" in bundled.features(bundled.variant(arg, "file"), "x-check-cache-dropped")  # type: ignore[arg-type]
    assert bundled.command("SHUTDOWN") is None and bundled.event("SHUTDOWN") is not None
    assert bundled.type_name("str") == "str" and bundled.type_name("[int]") == "[int]"
    with pytest.raises(KeyError):
        bundled.type("nope")
    with pytest.raises(KeyError):
        bundled.members(arg, "nope")


def test_from_reply_accepts_the_whole_reply() -> None:
    entries = _libvirt_schema_entries()
    assert len(Schema.from_reply({"return": entries})) == len(entries)
    with pytest.raises(ValueError):
        Schema.from_reply({"return": {}})
    with pytest.raises(ValueError):
        Schema.from_reply([{"meta-type": "command"}])


def test_bundled_is_loaded_once() -> None:
    assert Schema.bundled() is Schema.bundled()
    assert qmpcore.Schema is Schema


# -- checks: QEMU 7.2's errors, word for word ---------------------------------


@pytest.mark.parametrize(
    "command,arguments,error_class,desc",
    [
        # from the recorded session corpus/qemu-7.2/04_command_errors.txt
        ("nope", None, "CommandNotFound", "The command nope has not been found"),
        (
            "query-command-line-options",
            {"option": 1},
            "GenericError",
            "Invalid parameter type for 'option', expected: string",
        ),
        ("query-status", {"bogus": 1}, "GenericError", "Parameter 'bogus' is unexpected"),
        ("human-monitor-command", {}, "GenericError", "Parameter 'command-line' is missing"),
        ("query-status", [], "GenericError", "QMP input member 'arguments' must be an object"),
        # integer types introspection does not show (measured on QEMU 7.2)
        (
            "migrate-set-parameters",
            {"compress-level": 256},
            "GenericError",
            "Parameter 'compress-level' expects uint8_t",
        ),
        (
            "migrate-set-parameters",
            {"compress-level": -1},
            "GenericError",
            "Parameter 'compress-level' expects uint8_t",
        ),
        (
            "migrate-set-parameters",
            {"compress-level": "x"},
            "GenericError",
            "Parameter 'compress-level' expects uint64",
        ),
        ("migrate-set-parameters", {"max-bandwidth": 1.5}, "GenericError", "Parameter 'max-bandwidth' expects uint64"),
        (
            "migrate-set-parameters",
            {"max-bandwidth": 1 << 64},
            "GenericError",
            "Parameter 'max-bandwidth' expects uint64",
        ),
        ("balloon", {"value": 1 << 63}, "GenericError", "Invalid parameter type for 'value', expected: integer"),
        (
            "netdev_add",
            {"type": "hubport", "id": "h", "hubid": 1 << 31},
            "GenericError",
            "Parameter 'hubid' expects int32_t",
        ),
        (
            "block-latency-histogram-set",
            {"id": "d", "boundaries": [1, "x"]},
            "GenericError",
            "Parameter 'boundaries[1]' expects uint64",
        ),
        (
            "object-add",
            {"qom-type": "memory-backend-ram", "id": "m", "size": 1, "host-nodes": [70000]},
            "GenericError",
            "Parameter 'null' expects uint16_t",
        ),
        # enum values, alternates, nesting
        ("blockdev-add", {"driver": "nope"}, "GenericError", "Parameter 'driver' does not accept value 'nope'"),
        (
            "blockdev-add",
            {"driver": "qcow2", "node-name": "a", "file": 1},
            "GenericError",
            "Invalid parameter type for 'file', expected: BlockdevRef",
        ),
        ("blockdev-add", {"driver": "file", "node-name": "a"}, "GenericError", "Parameter 'filename' is missing"),
        (
            "blockdev-add",
            {"driver": "file", "filename": "f", "cache": {"direct": 1}},
            "GenericError",
            "Invalid parameter type for 'cache.direct', expected: boolean",
        ),
    ],
)
def test_check_raises_qemus_error(bundled: Schema, command: str, arguments: Any, error_class: str, desc: str) -> None:
    with pytest.raises(CommandError) as info:
        bundled.check(command, arguments)
    assert (info.value.error_class, info.value.desc, info.value.command) == (error_class, desc, command)
    assert bundled.errors(command, arguments) is not None


@pytest.mark.parametrize(
    "command,arguments",
    [
        ("query-status", None),
        ("query-status", {}),
        ("migrate-set-parameters", {"compress-level": 255, "max-bandwidth": -1}),
        ("migrate-set-parameters", {"max-bandwidth": (1 << 64) - 1}),
        ("balloon", {"value": -(1 << 63)}),
        ("blockdev-add", {"driver": "file", "node-name": "a", "filename": "/f", "aio": "native"}),
        ("blockdev-add", {"driver": "qcow2", "node-name": "a", "file": "base", "backing": None}),
        ("device_add", {"driver": "virtio-net-pci", "id": "n", "mac": "52:54:00:12:34:56"}),
    ],
)
def test_check_passes_valid_commands(bundled: Schema, command: str, arguments: Any) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        bundled.check(command, arguments)
    assert bundled.errors(command, arguments) is None


def test_int_types_follow_paths_into_other_builds(libvirt_schema: Schema, bundled: Schema) -> None:
    # The table is keyed by path, so a build whose types are numbered
    # differently gets the same integer types.
    assert len(libvirt_schema._checker._int_types) == len(bundled._checker._int_types) == 299
    error = libvirt_schema.errors("migrate-set-parameters", {"multifd-channels": 300})
    assert error is not None and error.desc == "Parameter 'multifd-channels' expects uint8_t"
    error = libvirt_schema.errors("blockdev-add", {"driver": "qcow2", "node-name": "a", "file": 1})
    assert error is not None and error.desc.endswith("expected: BlockdevRef")


# -- warnings -----------------------------------------------------------------


def _warned(schema: Schema, command: str, arguments: Any) -> list[tuple[type, str]]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        schema.check(command, arguments)
    return [(w.category, str(w.message)) for w in caught]


def test_deprecated_and_unstable_warnings(bundled: Schema) -> None:
    deprecated_commands = [c for c in bundled.commands if "deprecated" in bundled.features(c)]
    unstable_commands = [c for c in bundled.commands if "unstable" in bundled.features(c)]
    assert unstable_commands
    command = next(c for c in unstable_commands if bundled.errors(c, {}) is None)
    assert (UnstableWarning, f"command '{command}' is unstable ({command})") in _warned(bundled, command, {})
    for command in deprecated_commands:
        if bundled.errors(command, {}) is None:
            assert _warned(bundled, command, {})[0][0] is DeprecatedWarning
    # an unstable member
    found = _warned(
        bundled, "blockdev-add", {"driver": "file", "node-name": "a", "filename": "f", "x-check-cache-dropped": True}
    )
    assert (UnstableWarning, "member 'x-check-cache-dropped' is unstable (blockdev-add)") in found
    # a deprecated member
    found = _warned(bundled, "block-job-set-speed", {"device": "d", "speed": 1})
    assert found == []
    # nothing for plain commands
    assert _warned(bundled, "query-status", {}) == []
    assert issubclass(DeprecatedWarning, qmpcore.QMPWarning) and issubclass(UnstableWarning, UserWarning)


def test_deprecated_member_and_enum_value(bundled: Schema) -> None:
    members = [
        (entry["name"], member["name"])
        for entry in bundled
        if entry["meta-type"] == "object"
        for member in entry["members"]
        if "deprecated" in member.get("features", ())
    ]
    assert members  # 7.2 deprecates some members
    # query-named-block-nodes has no deprecated members; block-job-set-speed none either.
    found = _warned(bundled, "blockdev-add", {"driver": "file", "node-name": "a", "filename": "f"})
    assert found == []


def test_crashing_inputs_warn(bundled: Schema) -> None:
    found = _warned(bundled, "calc-dirty-rate", {"calc-time": 1, "mode": "dirty-bitmap"})
    assert found == [(RuntimeWarning, "QEMU 7.2 aborts on calc-dirty-rate in 'dirty-bitmap' mode")]
    found = _warned(bundled, "block-dirty-bitmap-merge", {"node": "n", "target": "t", "bitmaps": []})
    assert found and found[0][0] is RuntimeWarning
    found = _warned(bundled, "blockdev-reopen", {"options": []})
    assert found and found[0][0] is RuntimeWarning
    assert _warned(bundled, "calc-dirty-rate", {"calc-time": 1}) == []


def test_fast_path_agrees_with_the_exact_visitor(bundled: Schema) -> None:
    """check() answers valid commands from compiled predicates and words
    errors with the exact visitor: both must judge alike."""
    import random

    from schema_support import Builder, mutate

    rng = random.Random(1234)
    builder = Builder(list(bundled))
    disagreements = []
    cases = 0
    for command in builder.commands:
        valid = bundled._fast.of(bundled.command(command)["arg-type"], command != "device_add")  # type: ignore[index]
        base = builder.arguments(command)
        for arguments in [base] + [mutate(builder, rng, command, base) for _ in range(25)]:
            cases += 1
            exact = bundled._checker.check_arguments(command, arguments) is None
            if valid(arguments) != exact:
                disagreements.append((command, arguments, exact))
    assert cases > 5000
    assert not disagreements, disagreements[:5]


def test_hostile_schemas_cost_no_crash() -> None:
    """A peer's schema nesting types thousands deep: checks still answer."""
    depth = 5000
    entries: list[dict[str, Any]] = [{"name": "c", "meta-type": "command", "arg-type": "t0", "ret-type": "t0"}]
    for i in range(depth):
        entries.append(
            {"name": f"t{i}", "meta-type": "object", "members": [{"name": "a", "type": f"t{i + 1}", "default": None}]}
        )
    entries.append({"name": f"t{depth}", "meta-type": "builtin", "json-type": "int"})
    schema = Schema.from_reply(entries)
    schema.check("c", {})
    schema.check("c", {"a": {"a": {}}})
    error = schema.errors("c", {"a": {"b": 1}})
    assert error is not None and error.desc == "Parameter 'a.b' is unexpected"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        schema.check("c", {"a": {}})


def test_one_schema_checks_in_many_threads(bundled: Schema) -> None:
    """Compiled checks are built lazily; threads sharing a fresh Schema see
    only complete ones."""
    import threading

    from schema_support import Builder

    schema = Schema.from_reply(list(bundled))
    builder = Builder(list(bundled))
    cases = [(c, builder.arguments(c)) for c in builder.commands]
    failures: list[BaseException] = []
    start = threading.Barrier(6)

    def work(offset: int) -> None:
        start.wait()
        try:
            for command, arguments in cases[offset:] + cases[:offset]:
                schema.check(command, arguments)
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=work, args=(i * 37,)) for i in range(6)]
    with warnings.catch_warnings():  # process-wide: set here, not in the threads
        warnings.simplefilter("ignore")
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
    assert not failures, failures[:3]
    assert len(schema._valid) == len(cases)
