"""QAPI command metadata and QEMU's argument checks, from introspection data.

QEMU checks a command's ``arguments`` in the generated marshaller, with its
QObject input visitor, before the command runs.  :class:`Schema` reproduces
those checks from ``query-qmp-schema`` output (the bundled QEMU 7.2 schema by
default), with QEMU's wording:

* ``Parameter 'model.name' is missing``
* ``Invalid parameter type for 'capabilities[0]', expected: object``
* ``Parameter 'type' does not accept value 'fullx'``
* ``Parameter 'bogus' is unexpected``

Members are visited in schema order, so the first error is QEMU's first
error.  Checks that live in command implementations (value ranges, unknown
device models, ...) are not part of the schema and are not done here.
"""

from __future__ import annotations

import functools
import pathlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from ._qemu_output import Encoded, qdict_order

__all__ = ["CommandInfo", "Schema", "DATA_DIR"]

#: Package data: canned replies recorded from QEMU 7.2 and qemu-ga 7.2.
DATA_DIR = pathlib.Path(__file__).resolve().parent.parent / "data"

_SCHEMA_72 = "qmp_schema_7.2.json"
# Introspection hides type names behind numbers, but QEMU names alternates in
# type errors ("expected: BlockdevRef"); these are the 7.2 schema's.
_ALTERNATE_NAMES_72 = {
    "290": "BlockDirtyBitmapOrStr",
    "334": "StrOrNull",
    "518": "BlockdevRef",
    "527": "BlockdevRefOrNull",
    "528": "Qcow2OverlapChecks",
    "626": "StatsValue",
}
# Commands declared with 'gen': false take extra members QEMU checks itself.
_OPEN_ARGUMENTS = frozenset({"device_add"})

_INT_MIN = -(1 << 63)
_INT_MAX = (1 << 64) - 1
_INT64_MAX = (1 << 63) - 1


@dataclass(frozen=True)
class CommandInfo:
    """What a server knows about one command before running it.

    ``check_arguments(arguments)`` returns QEMU's error text for bad
    arguments, or ``None``.  A disabled command answers ``CommandNotFound``
    ``Command X has been disabled``; ``success_response=False`` commands send
    no reply when they succeed (``guest-shutdown``).
    """

    name: str
    allow_oob: bool = False
    enabled: bool = True
    success_response: bool = True
    check_arguments: Callable[[dict[str, Any]], str | None] | None = None


class _Invalid(Exception):
    """One argument error; ``args[0]`` is QEMU's text."""


def _ghash(key: str) -> int:
    """GLib's ``g_str_hash`` (djb2 over signed chars), unsigned 32-bit."""
    h = 5381
    for byte in key.encode("utf-8", "surrogatepass"):
        h = (h * 33 + (byte - 256 if byte >= 0x80 else byte)) & 0xFFFFFFFF
    return h if h >= 2 else 2


# Above this many bytes of member names, GLib's table order is not worked
# out: g_str_hash runs byte by byte in Python (about 0.5 us a byte), and a
# client chooses the names.  Real member names are far shorter.
_GHASH_BYTES_MAX = 1024

_PRIME_MOD = (1, 2, 3, 7, 13, 31, 61, 127, 251, 509, 1021, 2039, 4093, 8191)


class _GHashTable:
    """GLib's ``GHashTable`` (2.59 and later) reduced to what decides its
    iteration order: open addressing with quadratic probing, tombstones,
    growth and shrinking with in-place rehashing."""

    def __init__(self) -> None:
        self._shift(3)
        self.hashes = [0] * self.size  # 0 unused, 1 tombstone, else the hash
        self.keys: list[str | None] = [None] * self.size
        self.nnodes = 0
        self.noccupied = 0

    def _shift(self, shift: int) -> None:
        self.size = 1 << shift
        self.mod = _PRIME_MOD[shift]
        self.mask = self.size - 1

    def _index(self, hash_value: int) -> int:
        return ((hash_value * 11) & 0xFFFFFFFF) % self.mod  # guint arithmetic

    def _lookup(self, key: str, hash_value: int) -> int:
        index = self._index(hash_value)
        step = 0
        tombstone = -1
        while self.hashes[index] != 0:
            if self.hashes[index] == hash_value and self.keys[index] == key:
                return index
            if self.hashes[index] == 1 and tombstone < 0:
                tombstone = index
            step += 1
            index = (index + step) & self.mask
        return tombstone if tombstone >= 0 else index

    def insert(self, key: str) -> None:
        hash_value = _ghash(key)
        index = self._lookup(key, hash_value)
        old = self.hashes[index]
        if old >= 2:
            return
        self.hashes[index] = hash_value
        self.keys[index] = key
        self.nnodes += 1
        if old == 0:
            self.noccupied += 1
            self._maybe_resize()

    def remove(self, key: str) -> None:
        index = self._lookup(key, _ghash(key))
        if self.hashes[index] < 2:
            return
        self.hashes[index] = 1
        self.keys[index] = None
        self.nnodes -= 1
        self._maybe_resize()

    def _maybe_resize(self) -> None:
        if (self.size > self.nnodes * 4 and self.size > 8) or self.size <= self.noccupied + self.noccupied // 16:
            self._resize()

    def _resize(self) -> None:
        old_size = self.size
        self._shift(max(3, int(self.nnodes * 1.333).bit_length()))
        if self.size > old_size:
            self.hashes += [0] * (self.size - old_size)
            self.keys += [None] * (self.size - old_size)
        moved = [False] * max(self.size, old_size)
        for i in range(old_size):
            node_hash = self.hashes[i]
            if node_hash < 2:
                self.hashes[i] = 0
                continue
            if moved[i]:
                continue
            self.hashes[i] = 0
            key = self.keys[i]
            self.keys[i] = None
            while True:  # place it, evicting whatever was not placed yet
                index = self._index(node_hash)
                step = 0
                while moved[index]:
                    step += 1
                    index = (index + step) & self.mask
                moved[index] = True
                replaced, replaced_key = self.hashes[index], self.keys[index]
                self.hashes[index], self.keys[index] = node_hash, key
                if replaced < 2:
                    break
                node_hash, key = replaced, replaced_key
        del self.hashes[self.size :], self.keys[self.size :]
        self.noccupied = self.nnodes

    def first(self) -> str | None:
        for hash_value, key in zip(self.hashes, self.keys):
            if hash_value >= 2:
                return key
        return None


def _ghash_first_left(keys: Iterable[str], removed: Iterable[str]) -> str | None:
    """The member QEMU reports as unexpected: it fills a GLib hash table with
    the QDict's keys, removes each member as it visits it and names the
    first key the table's iteration gives."""
    table = _GHashTable()
    for key in keys:
        table.insert(key)
    for key in removed:
        table.remove(key)
    return table.first()


def _path(parent: str, name: str) -> str:
    return f"{parent}.{name}" if parent else name


class Schema:
    """QAPI introspection data: command metadata and argument checks.

    ``Schema(entries)`` takes the ``return`` value of ``query-qmp-schema``;
    :meth:`qemu_7_2` returns the bundled QEMU 7.2 schema (loaded once).
    """

    def __init__(
        self,
        entries: Iterable[Mapping[str, Any]],
        alternate_names: Mapping[str, str] | None = None,
        int_types: Mapping[tuple[str, str], str] | None = None,
    ) -> None:
        self._types: dict[str, Mapping[str, Any]] = {}
        self.commands: dict[str, Mapping[str, Any]] = {}
        self.events: dict[str, Mapping[str, Any]] = {}
        for entry in entries:
            self._types[entry["name"]] = entry
            meta = entry.get("meta-type")
            if meta == "command":
                self.commands[entry["name"]] = entry
            elif meta == "event":
                self.events[entry["name"]] = entry
        self._alternate_names = dict(alternate_names or {})
        # QEMU's integer type of (object type, member) pairs (introspection
        # says "int" for all of them); members not listed accept any integer.
        self._int_types = dict(int_types or {})
        self._accepts_none: dict[str, bool] = {}
        self._infos: dict[str, CommandInfo] | None = None
        self.reply: Encoded | None = None

    @classmethod
    @functools.cache
    def qemu_7_2(cls) -> Schema:
        """The schema of QEMU 7.2.22 (x86_64), with its canned reply text."""
        data = (DATA_DIR / _SCHEMA_72).read_bytes()
        schema = cls(orjson.loads(data)["return"], _ALTERNATE_NAMES_72)
        # The recorded reply line is '{"return": [...], "id": "schema"}\r\n'.
        start = data.index(b"[")
        end = data.rindex(b"]") + 1
        schema.reply = Encoded(data[start:end])
        return schema

    def command_info(self, name: str) -> CommandInfo | None:
        """:class:`CommandInfo` for a schema command, or ``None``."""
        entry = self.commands.get(name)
        if entry is None:
            return None
        return CommandInfo(
            name,
            allow_oob=bool(entry.get("allow-oob")),
            check_arguments=functools.partial(self.check_arguments, name),
        )

    def command_infos(self) -> dict[str, CommandInfo]:
        """:class:`CommandInfo` of every command, in schema order (built once
        and shared: treat it as read-only)."""
        if self._infos is None:
            self._infos = {name: self.command_info(name) for name in self.commands}  # type: ignore[misc]
        return self._infos

    def check_arguments(self, command: str, arguments: Mapping[str, Any]) -> str | None:
        """QEMU's error text for ``arguments`` of ``command``, or ``None``."""
        if not arguments:
            # Most requests carry no arguments; whether a command accepts
            # none is worked out once.
            accepted = self._accepts_none.get(command)
            if accepted is None:
                accepted = self._accepts_none[command] = self._check(command, {}) is None
            if accepted:
                return None
        return self._check(command, arguments)

    def _check(self, command: str, arguments: Mapping[str, Any]) -> str | None:
        entry = self.commands.get(command)
        if entry is None:
            return None
        try:
            self._object(entry.get("arg-type", "0"), arguments, "", command not in _OPEN_ARGUMENTS)
        except _Invalid as exc:
            return str(exc.args[0])
        return None

    # -- the input visitor ------------------------------------------------

    def _object(self, type_name: str, value: Mapping[str, Any], path: str, closed: bool = True) -> None:
        entry = self._types.get(type_name)
        if entry is None or entry.get("meta-type") != "object":
            return
        # QEMU fills a GLib hash table from the QDict, removes each member it
        # visits and reports the first one left over.
        seen: set[str] = set()
        self._members(entry, value, path, seen)
        tag = entry.get("tag")
        visited = [entry]
        if tag is not None and tag in value:
            for variant in entry.get("variants", ()):
                if variant["case"] == value[tag]:
                    visited.append(self._types.get(variant["type"], {}))
                    self._members(visited[-1], value, path, seen)
                    break
        if closed and len(value) > len(seen):
            # (the QDict order only when something is left: a client chooses
            # how many members, and their order costs their hashes)
            present = qdict_order(tuple(value))
            first = None
            if (
                len(value) - len(seen) > 1
                and len(present) <= _GHASH_BYTES_MAX + 1
                and sum(map(len, present)) <= _GHASH_BYTES_MAX
            ):
                # For huge keys hashing them in Python would hold the loop,
                # so the QDict order decides.
                removed = [m["name"] for e in visited for m in e.get("members", ()) if m["name"] in value]
                first = _ghash_first_left(present, removed)
            if first is None:
                first = next(key for key in present if key not in seen)
            raise _Invalid(f"Parameter '{_path(path, first)}' is unexpected")

    def _members(self, entry: Mapping[str, Any], value: Mapping[str, Any], path: str, seen: set[str]) -> None:
        for member in entry.get("members", ()):
            name = member["name"]
            if name in value:
                seen.add(name)
                kind = self._int_types.get((entry["name"], name)) if self._int_types else None
                if kind is not None:
                    self._integer(member["type"], kind, value[name], _path(path, name), name)
                else:
                    self._value(member["type"], value[name], _path(path, name), name)
            elif "default" not in member:
                raise _Invalid(f"Parameter '{_path(path, name)}' is missing")

    def _value(self, type_name: str, value: Any, path: str, name: str | None) -> None:
        entry = self._types.get(type_name)
        meta = entry.get("meta-type") if entry else None
        if meta == "builtin":
            self._builtin(entry["json-type"], value, path)  # type: ignore[index]
        elif meta == "object":
            if not isinstance(value, dict):
                raise _Invalid(f"Invalid parameter type for '{path}', expected: object")
            self._object(type_name, value, path)
        elif meta == "array":
            if not isinstance(value, list):
                raise _Invalid(f"Invalid parameter type for '{path}', expected: array")
            element = entry["element-type"]  # type: ignore[index]
            for index, item in enumerate(value):
                self._value(element, item, f"{path}[{index}]", None)
        elif meta == "enum":
            if not isinstance(value, str):
                raise _Invalid(f"Invalid parameter type for '{path}', expected: string")
            if value not in entry["values"]:  # type: ignore[index]
                # QEMU names the member here, not the path ("null" in lists).
                raise _Invalid(f"Parameter '{name or 'null'}' does not accept value '{value}'")
        elif meta == "alternate":
            branch = self._alternate_branch(entry, value)  # type: ignore[arg-type]
            if branch is None:
                shown = self._alternate_names.get(type_name, type_name)
                raise _Invalid(f"Invalid parameter type for '{path}', expected: {shown}")
            self._value(branch, value, path, name)
        # Unknown types are not checked.

    def _integer(self, type_name: str, kind: str, value: Any, path: str, name: str | None) -> None:
        """QEMU's checks of a member of integer type ``kind`` (``int64``,
        ``uint8_t``, ...; lists of them too)."""
        entry = self._types.get(type_name)
        if entry is not None and entry.get("meta-type") == "array":
            if not isinstance(value, list):
                raise _Invalid(f"Invalid parameter type for '{path}', expected: array")
            element = entry["element-type"]
            for index, item in enumerate(value):
                self._integer(element, kind, item, f"{path}[{index}]", None)
            return
        if kind.startswith("u"):
            # Unsigned: QEMU also takes negative int64 values (wrapped).
            if type(value) is not int or not _INT_MIN <= value <= _INT_MAX:
                raise _Invalid(f"Parameter '{path}' expects uint64")
            limit = _UINT_LIMITS.get(kind)
            if limit is not None and value & _INT_MAX > limit:
                raise _Invalid(f"Parameter '{name or 'null'}' expects {kind}")
            return
        if not _is_int64(value):
            raise _Invalid(f"Invalid parameter type for '{path}', expected: integer")
        limit = _INT_LIMITS.get(kind)
        if limit is not None and not -limit - 1 <= value <= limit:
            raise _Invalid(f"Parameter '{name or 'null'}' expects {kind}")

    def _alternate_branch(self, entry: Mapping[str, Any], value: Any) -> str | None:
        for member in entry.get("members", ()):
            branch: str = member["type"]
            target = self._types.get(branch, {})
            meta = target.get("meta-type")
            if meta == "builtin":
                json_type = target["json-type"]
                if json_type == "value" or _JSON_TYPES[json_type](value):
                    return branch
            elif (
                (meta == "object" and isinstance(value, dict))
                or (meta == "array" and isinstance(value, list))
                or (meta == "enum" and isinstance(value, str))
            ):
                return branch
        return None

    @staticmethod
    def _builtin(json_type: str, value: Any, path: str) -> None:
        check = _JSON_TYPES.get(json_type)
        if check is not None and not check(value):
            raise _Invalid(f"Invalid parameter type for '{path}', expected: {_EXPECTED[json_type]}")


def _is_int(value: Any) -> bool:
    return type(value) is int and _INT_MIN <= value <= _INT_MAX


def _is_int64(value: Any) -> bool:
    return type(value) is int and _INT_MIN <= value <= _INT64_MAX


_UINT_LIMITS = {"uint8_t": 0xFF, "uint16_t": 0xFFFF, "uint32_t": 0xFFFFFFFF}
_INT_LIMITS = {"int8_t": 0x7F, "int16_t": 0x7FFF, "int32_t": 0x7FFFFFFF}

_JSON_TYPES: dict[str, Callable[[Any], bool]] = {
    "string": lambda v: isinstance(v, str),
    "int": _is_int,
    "int64": _is_int64,  # qemu-ga's guest-sync ids (not in introspection)
    "number": lambda v: type(v) in (int, float),
    "boolean": lambda v: type(v) is bool,
    "null": lambda v: v is None,
    "value": lambda v: True,
}
_EXPECTED = {
    "string": "string",
    "int": "integer",
    "int64": "integer",
    "number": "number",
    "boolean": "boolean",
    "null": "null",
}
