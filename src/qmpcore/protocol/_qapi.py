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
    check_arguments: Callable[[dict], str | None] | None = None


class _Invalid(Exception):
    """One argument error; ``args[0]`` is QEMU's text."""


def _ghash(key: str) -> int:
    """GLib's ``g_str_hash`` (djb2 over signed chars), unsigned 32-bit."""
    h = 5381
    for byte in key.encode("utf-8", "surrogatepass"):
        h = (h * 33 + (byte - 256 if byte >= 0x80 else byte)) & 0xFFFFFFFF
    return h if h >= 2 else 2


_PRIME_MOD = (1, 2, 3, 7, 13, 31, 61, 127, 251, 509, 1021, 2039, 4093, 8191)


def _ghash_table_order(keys: Iterable[str]) -> list[str]:
    """Iteration order of a GLib string hash table filled with ``keys``.

    QEMU reports the first leftover member of such a table as unexpected.
    Exact for tables that never grow (up to 7 keys); after growth the
    relocation order is approximated by re-inserting in slot order.  Only
    the choice between several unexpected members depends on it.
    """
    shift = 3
    slots: list[str | None] = [None] * 8

    def place(table: list[str | None], key: str, shift: int) -> None:
        mask = (1 << shift) - 1
        index = (_ghash(key) * 11) % _PRIME_MOD[shift]
        step = 0
        while table[index] is not None:
            step += 1
            index = (index + step) & mask
        table[index] = key

    count = 0
    for key in keys:
        place(slots, key, shift)
        count += 1
        if len(slots) <= count + count // 16:
            size = int(count * 1.333)
            shift = max(3, size.bit_length())
            grown: list[str | None] = [None] * (1 << shift)
            for old in slots:
                if old is not None:
                    place(grown, old, shift)
            slots = grown
    return [key for key in slots if key is not None]


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
            return exc.args[0]
        return None

    # -- the input visitor ------------------------------------------------

    def _object(self, type_name: str, value: Mapping[str, Any], path: str, closed: bool = True) -> None:
        entry = self._types.get(type_name)
        if entry is None or entry.get("meta-type") != "object":
            return
        # QEMU fills a GLib hash table from the QDict, removes each member it
        # visits and reports the first one left over.
        present = qdict_order(tuple(value))
        left = dict.fromkeys(present)
        self._members(entry, value, path, left)
        tag = entry.get("tag")
        if tag is not None and tag in value:
            for variant in entry.get("variants", ()):
                if variant["case"] == value[tag]:
                    self._members(self._types.get(variant["type"], {}), value, path, left)
                    break
        if closed and left:
            first = next(key for key in _ghash_table_order(present) if key in left)
            raise _Invalid(f"Parameter '{_path(path, first)}' is unexpected")

    def _members(self, entry: Mapping[str, Any], value: Mapping[str, Any], path: str, left: dict) -> None:
        for member in entry.get("members", ()):
            name = member["name"]
            if name in value:
                left.pop(name, None)
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
            branch = member["type"]
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
