"""Valid and mutated command arguments built from a QAPI schema, for tests.

``Builder(entries)`` makes the smallest valid ``arguments`` of a command
(every required member, first enum value, shortest alternate branch, empty
lists), walks libvirt-style paths to a member (``cmd/arg-type/+case/member``)
and mutates valid arguments at random (missing, extra, wrong-typed and
wrong-enum members, nested).  Used by the differential tests against a
real QEMU 7.2 and to (re)derive the table of QEMU's integer types.
"""

from __future__ import annotations

import copy
import random
import re
from collections.abc import Iterator, Mapping
from typing import Any

#: Valid inputs that crash QEMU 7.2 (kept out of every random test).
CRASHERS = {"blockdev-reopen", "block-dirty-bitmap-merge", "calc-dirty-rate"}
#: Commands never sent at random: they stop QEMU or check their own arguments.
NEVER = CRASHERS | {"quit", "device_add", "qmp_capabilities", "x-exit-preconfig", "system_powerdown"}
#: Commands that would act on the host or grow QEMU if they ran (files,
#: sockets, objects, memory): sent with one more unknown member, ``GUARD``.
#: QEMU reports unknown members only after checking all the others, so the
#: command never runs and its other errors still come first.
GUARDED = {
    "migrate",
    "migrate-incoming",
    "dump-guest-memory",
    "pmemsave",
    "memsave",
    "screendump",
    "human-monitor-command",
    "getfd",
    "add-fd",
    "closefd",
    "chardev-add",
    "chardev-change",
    "object-add",
    "netdev_add",
    "blockdev-create",
    "blockdev-add",
    "block-export-add",
    "nbd-server-start",
    "snapshot-save",
    "snapshot-load",
    "snapshot-delete",
    "qom-set",
    "transaction",
}
GUARD = "zz-guard"


def guarded(command: str) -> bool:
    return command in GUARDED or command.startswith("xen-")


class Builder:
    """Argument values for the commands of one schema (introspection list)."""

    def __init__(self, entries: list[Mapping[str, Any]]) -> None:
        self.types = {e["name"]: e for e in entries}
        self.commands = [e["name"] for e in entries if e["meta-type"] == "command"]

    # -- valid values -------------------------------------------------------

    def minimal(self, type_name: str, depth: int = 0) -> Any:
        entry = self.types[type_name]
        meta = entry["meta-type"]
        if meta == "builtin":
            return {"string": "", "int": 0, "number": 0, "boolean": False, "null": None, "value": 0}[entry["json-type"]]
        if meta == "enum":
            return entry["values"][0]
        if meta == "array":
            return []
        if meta == "alternate":
            branches = [m["type"] for m in entry["members"]]
            simple = [b for b in branches if self.types[b]["meta-type"] != "object"]
            return self.minimal((simple or branches)[0], depth + 1)
        return self.minimal_object(type_name, depth)

    def minimal_object(self, type_name: str, depth: int = 0, case: str | None = None) -> dict:
        entry = self.types[type_name]
        value: dict[str, Any] = {}
        tag = entry.get("tag")
        for member in entry["members"]:
            if member["name"] == tag:
                value[tag] = case if case is not None else self.minimal(member["type"], depth + 1)
            elif "default" not in member:
                value[member["name"]] = self.minimal(member["type"], depth + 1)
        if tag is not None:
            for variant in entry.get("variants", ()):
                if variant["case"] == value[tag]:
                    value.update(self.minimal_object(variant["type"], depth + 1))
        return value

    def arguments(self, command: str) -> dict:
        """The smallest valid arguments of ``command``."""
        return self.minimal_object(self.types[command]["arg-type"])

    # -- paths ----------------------------------------------------------------

    def object_of(self, type_name: str) -> Mapping[str, Any] | None:
        """The object ``type_name`` stands for (through arrays and alternates)."""
        entry = self.types[type_name]
        while entry["meta-type"] == "array":
            entry = self.types[entry["element-type"]]
        if entry["meta-type"] == "alternate":
            for member in entry["members"]:
                target = self.object_of(member["type"])
                if target is not None:
                    return target
            return None
        return entry if entry["meta-type"] == "object" else None

    def int_members(self) -> Iterator[tuple[str, str, str, str]]:
        """``(path, owner type, member, member type)`` for every integer member
        reachable from a command's arguments, each owner/member pair once, by
        its shortest path."""
        seen: set[tuple[str, str]] = set()
        frontier: list[tuple[str, str]] = []
        for command in self.commands:
            frontier.append((f"{command}/arg-type", self.types[command]["arg-type"]))
        visited: set[str] = set()
        while frontier:
            following: list[tuple[str, str]] = []
            for path, type_name in frontier:
                if type_name in visited:
                    continue
                visited.add(type_name)
                entry = self.types[type_name]
                for member in entry["members"]:
                    element = self.types[member["type"]]
                    while element["meta-type"] == "array":
                        element = self.types[element["element-type"]]
                    if element.get("json-type") == "int" and (type_name, member["name"]) not in seen:
                        seen.add((type_name, member["name"]))
                        yield f"{path}/{member['name']}", type_name, member["name"], member["type"]
                    target = self.object_of(member["type"])
                    if target is not None:
                        following.append((f"{path}/{member['name']}", target["name"]))
                for variant in entry.get("variants", ()):
                    following.append((f"{path}/+{variant['case']}", variant["type"]))
            frontier = following

    def at_path(self, path: str, leaf: Any) -> tuple[str, dict]:
        """``(command, arguments)``: valid arguments with the member ``path``
        names set to ``leaf`` (a list holding ``leaf`` for lists)."""
        command, _, *parts = path.split("/")
        type_name = self.types[command]["arg-type"]
        args = self.arguments(command)
        holder: dict = args
        for index, part in enumerate(parts):
            entry = self.types[type_name]
            last = index == len(parts) - 1
            if part.startswith("+"):
                case = part[1:]
                variant = next(v for v in entry["variants"] if v["case"] == case)
                keep = {m["name"] for m in entry["members"] if m["name"] in holder}
                for key in list(holder):
                    if key not in keep:
                        del holder[key]
                holder.update(self.minimal_object(type_name, case=case))
                type_name = variant["type"]
                continue
            member = next(m for m in entry["members"] if m["name"] == part)
            member_type = self.types[member["type"]]
            if last:
                holder[part] = [leaf] if member_type["meta-type"] == "array" else leaf
                break
            target = self.object_of(member["type"])
            assert target is not None, path
            inner = self.minimal_object(target["name"])
            holder[part] = [inner] if member_type["meta-type"] == "array" else inner
            holder = inner
            type_name = target["name"]
        return command, args


_TYPE_WORD = re.compile(r"expects (\w+)$")


def probe_integer(builder: Builder, path: str, member: str, ask: Any) -> str | None:
    """QEMU's integer type of the member at ``path``, asked of a real QEMU.

    ``ask(command, arguments)`` returns the error ``desc`` or ``None``.  A
    string tells signed (``expected: integer``) from unsigned (``expects
    uint64``); then 2**31 (signed) or 2**32 (unsigned) names a narrower type.
    ``None`` when QEMU's answers are not about this member.
    """
    first = ask(*builder.at_path(path, "s"))
    if first is None or (f"'{member}" not in first and f"{member}'" not in first):
        return None
    if first.endswith("expected: integer"):
        second = ask(*builder.at_path(path, 1 << 31))
        match = _TYPE_WORD.search(second or "")
        return match.group(1) if match and match.group(1).startswith("int") else "int64"
    match = _TYPE_WORD.search(first)
    if match is None:
        return None
    second = ask(*builder.at_path(path, 1 << 32))
    narrow = _TYPE_WORD.search(second or "")
    return narrow.group(1) if narrow and narrow.group(1).startswith("uint") else match.group(1)


# -- random mutations ------------------------------------------------------

_WRONG = ["x", 1, -1, 1.5, True, None, [], {}, [1], {"a": 1}, 1 << 63, 1 << 64, -(1 << 63) - 1, 4294967296, 256]


def _slots(value: Any, prefix: tuple = ()) -> Iterator[tuple]:
    """Paths (tuples of keys/indexes) of every value nested in ``value``."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield prefix + (key,)
            yield from _slots(item, prefix + (key,))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield prefix + (index,)
            yield from _slots(item, prefix + (index,))


def _dicts(value: Any, prefix: tuple = ()) -> Iterator[tuple]:
    if isinstance(value, dict):
        yield prefix
        for key, item in value.items():
            yield from _dicts(item, prefix + (key,))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _dicts(item, prefix + (index,))


def _get(value: Any, path: tuple) -> Any:
    for key in path:
        value = value[key]
    return value


def mutate(builder: Builder, rng: random.Random, command: str, args: dict) -> dict:
    """``args`` with one to three random changes."""
    args = copy.deepcopy(args)
    for _ in range(rng.choice((1, 1, 1, 2, 3))):
        kind = rng.random()
        slots = list(_slots(args))
        if kind < 0.25 and slots:  # remove a member or element
            path = rng.choice(slots)
            parent = _get(args, path[:-1])
            del parent[path[-1]]
        elif kind < 0.45:  # add an unknown member somewhere
            where = rng.choice(list(_dicts(args)))
            _get(args, where)[rng.choice(("bogus", "zz", "a", "x-y", "extra"))] = copy.deepcopy(rng.choice(_WRONG))
        elif kind < 0.85 and slots:  # a value of another type
            path = rng.choice(slots)
            _get(args, path[:-1])[path[-1]] = copy.deepcopy(rng.choice(_WRONG + ["fullx", "", "on"]))
        else:  # add an optional member with its minimal value or a wrong one
            entry = builder.types[builder.types[command]["arg-type"]]
            optional = [m for m in entry["members"] if "default" in m]
            if optional:
                member = rng.choice(optional)
                if rng.random() < 0.5:
                    args[member["name"]] = builder.minimal(member["type"])
                else:
                    args[member["name"]] = copy.deepcopy(rng.choice(_WRONG))
    return args
