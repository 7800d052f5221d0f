"""QEMU's schema about itself (``query-qmp-schema``), for users.

:class:`Schema` is built from the ``return`` value of ``query-qmp-schema``
(:meth:`Schema.from_reply`), from the QEMU 7.2 copy shipped in the package
(:meth:`Schema.bundled`), or by a client (``await vm.schema()``).  It offers:

* lookups: :meth:`~Schema.command`, :meth:`~Schema.members`,
  :meth:`~Schema.enum_values`, :meth:`~Schema.features`, ... following
  QEMU's rules (arrays, alternates, flat unions and their variants, the
  implicit object types introspection numbers);
* feature probes in libvirt's path language: :meth:`~Schema.query` and
  :meth:`~Schema.lookup` (see :mod:`qmpcore.protocol.schema_path`);
* :meth:`~Schema.check`, which raises the :class:`~qmpcore.CommandError`
  QEMU 7.2 would answer for a command and its arguments (same class, same
  ``desc``) and warns (:class:`~qmpcore.DeprecatedWarning`,
  :class:`~qmpcore.UnstableWarning`) when deprecated or unstable parts of
  the schema are used.

Nothing here does I/O; the schema is read-only once built.
"""

from __future__ import annotations

import collections
import functools
import pathlib
import threading
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import orjson

from ..errors import CommandError, DeprecatedWarning, ProtocolError, SchemaPathError, UnstableWarning
from . import _qapi
from ._schema_fast import Predicates
from .schema_path import resolve

__all__ = ["Schema", "CRASHING_INPUTS", "schema_for"]

_INT_TYPES_72 = "qapi_int_types_7.2.json"

#: Valid inputs that make QEMU 7.2 abort (``assert``), by command: a
#: predicate over the arguments and what happens.  :meth:`Schema.check`
#: warns about them.
CRASHING_INPUTS: dict[str, tuple[Any, str]] = {
    "blockdev-reopen": (
        lambda a: a.get("options") == [],
        "QEMU 7.2 aborts on blockdev-reopen with an empty 'options' list",
    ),
    "block-dirty-bitmap-merge": (
        lambda a: a.get("bitmaps") == [],
        "QEMU 7.2 aborts on block-dirty-bitmap-merge with an empty 'bitmaps' list",
    ),
    "calc-dirty-rate": (
        lambda a: a.get("mode") == "dirty-bitmap",
        "QEMU 7.2 aborts on calc-dirty-rate in 'dirty-bitmap' mode",
    ),
}
# Commands declared with 'gen': false take extra members QEMU checks itself.
_OPEN_ARGUMENTS = frozenset({"device_add"})


class Schema:
    """One QEMU binary's QAPI schema (the list ``query-qmp-schema`` returns).

    Entries are the introspection dicts as QEMU sent them (read-only):
    ``{"name": ..., "meta-type": "command" | "event" | "object" | "enum" |
    "array" | "alternate" | "builtin", ...}``.  Type names other than
    builtins are numbers (QEMU hides them); commands and events keep theirs.
    """

    def __init__(
        self,
        entries: Iterable[Mapping[str, Any]],
        *,
        version: tuple[int, int, int, str] | None = None,
    ) -> None:
        self._entries = list(entries)
        self._types: dict[str, Mapping[str, Any]] = {}
        for entry in self._entries:
            _well_formed(entry)
            self._types[entry["name"]] = entry
        #: ``(major, minor, micro, package)`` of the QEMU this came from, if known.
        self.version = version
        self._checker = _qapi.Schema(self._entries, self._alternate_names(), int_types=self._resolve_int_types())
        self._reaching: frozenset[str] | None = None
        self._variants: dict[str, dict[str, str]] = {}
        self._fast = Predicates(self._types, self._checker._int_types, self._checker._alternate_branch)
        self._valid: dict[str, Callable[[Any], bool]] = {}
        self._indexes: dict[str, dict[str, tuple[tuple[str, ...], str | None]]] = {}

    @classmethod
    def from_reply(cls, reply: Any, *, version: tuple[int, int, int, str] | None = None) -> Schema:
        """A schema from ``query-qmp-schema``'s ``return`` value (a list), or a
        whole reply (``{"return": [...]}``)."""
        if isinstance(reply, Mapping) and "return" in reply:
            reply = reply["return"]
        if not isinstance(reply, list):
            raise ValueError("query-qmp-schema returns a list of entries")
        return cls(reply, version=version)

    @classmethod
    @functools.cache
    def bundled(cls) -> Schema:
        """The schema of QEMU 7.2 (x86_64) shipped in the package (loaded once)."""
        return cls(_bundled_entries(), version=(7, 2, 22, ""))

    # -- lookups ------------------------------------------------------------

    def __contains__(self, name: object) -> bool:
        return name in self._types

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[Mapping[str, Any]]:
        return iter(self._entries)

    @property
    def commands(self) -> list[str]:
        """Names of every command, in schema order."""
        return [e["name"] for e in self._entries if e.get("meta-type") == "command"]

    @property
    def events(self) -> list[str]:
        """Names of every event, in schema order."""
        return [e["name"] for e in self._entries if e.get("meta-type") == "event"]

    def entry(self, name: str) -> Mapping[str, Any] | None:
        """The entry called ``name`` (command, event or type), or ``None``."""
        return self._types.get(name)

    def command(self, name: str) -> Mapping[str, Any] | None:
        """The command ``name``'s entry (``arg-type``, ``ret-type``, ...), or ``None``."""
        entry = self._types.get(name)
        return entry if entry is not None and entry.get("meta-type") == "command" else None

    def event(self, name: str) -> Mapping[str, Any] | None:
        """The event ``name``'s entry (``arg-type``), or ``None``."""
        entry = self._types.get(name)
        return entry if entry is not None and entry.get("meta-type") == "event" else None

    def type(self, name: str) -> Mapping[str, Any]:
        """The type entry ``name`` (as ``arg-type``, members' ``type`` give it)."""
        entry = self._types.get(name)
        if entry is None:
            raise KeyError(f"the schema has no type {name!r}")
        return entry

    def members(self, type_name: str, case: str | None = None) -> list[Mapping[str, Any]]:
        """Members of the object ``type_name``: the common ones, then those of
        variant ``case`` (``{"name", "type", "default"?, "features"?}``;
        optional members have ``"default"``).  For arrays, the element's."""
        entry = self._object(type_name)
        if entry is None:
            return []
        members = list(entry.get("members", ()))
        if case is not None:
            variant = self.variant(entry["name"], case)
            if variant is None:
                raise KeyError(f"type {type_name!r} has no variant {case!r}")
            members += self.members(variant)
        return members

    def variants(self, type_name: str) -> dict[str, str]:
        """A union's variants: case -> variant type (empty for plain objects;
        shared: treat as read-only)."""
        found = self._variants.get(type_name)
        if found is None:
            entry = self._object(type_name)
            found = {v["case"]: v["type"] for v in entry.get("variants", ())} if entry is not None else {}
            self._variants[type_name] = found
        return found

    def variant(self, type_name: str, case: str) -> str | None:
        """The type of a union's variant ``case``, or ``None``."""
        return self.variants(type_name).get(case)

    def tag(self, type_name: str) -> str | None:
        """The discriminator member of a flat union, or ``None``."""
        entry = self._object(type_name)
        return entry.get("tag") if entry is not None else None

    def enum_values(self, type_name: str) -> list[str]:
        """Values of the enum ``type_name`` (through arrays), in order."""
        entry = self._types.get(type_name)
        while entry is not None and entry.get("meta-type") == "array":
            entry = self._types.get(entry.get("element-type", ""))
        if entry is None or entry.get("meta-type") != "enum":
            return []
        return list(entry.get("values", ()))

    def features(self, name: str, member: str | None = None) -> list[str]:
        """Features (``deprecated``, ``unstable``, ...) of a command, event or
        type; with ``member``, of that object member or enum value."""
        entry = self._types.get(name)
        if entry is None:
            return []
        if member is None:
            return list(entry.get("features", ()))
        for item in entry.get("members", ()):
            if item.get("name") == member:
                return list(item.get("features", ()))
        return []

    def is_optional(self, member: Mapping[str, Any]) -> bool:
        """True for an optional member (introspection gives it a ``default``)."""
        return "default" in member

    def type_name(self, type_name: str) -> str:
        """A readable name for a type: builtins by name, ``[T]`` for arrays,
        ``enum``/``object``/``alternate`` for the numbered ones."""
        entry = self._types.get(type_name)
        if entry is None:
            return type_name
        meta = entry.get("meta-type")
        if meta == "builtin":
            return type_name
        if meta == "array":
            return f"[{self.type_name(entry['element-type'])}]"
        if meta == "alternate":
            return " | ".join(self.type_name(m["type"]) for m in entry.get("members", ()))
        return str(meta)

    def _object(self, type_name: str) -> Mapping[str, Any] | None:
        entry = self._types.get(type_name)
        while entry is not None and entry.get("meta-type") == "array":
            entry = self._types.get(entry.get("element-type", ""))
        if entry is None or entry.get("meta-type") != "object":
            return None
        return entry

    # -- libvirt's path language ----------------------------------------------

    def query(self, path: str) -> bool:
        """Whether ``path`` matches, as libvirt answers it: e.g.
        ``blockdev-add/arg-type/+file/aio/^io_uring`` (see
        :mod:`qmpcore.protocol.schema_path`).  Raises
        :class:`~qmpcore.SchemaPathError` for a malformed path."""
        return resolve(self._types, path)[0]

    def lookup(self, path: str) -> Mapping[str, Any] | None:
        """The schema entry ``path`` ends on, or ``None`` when it does not
        match (or ends on a boolean component: ``^``, ``!``, ``$``)."""
        return resolve(self._types, path)[1]

    # -- checks before sending ---------------------------------------------

    def check(self, command: str, arguments: Mapping[str, Any] | None = None) -> None:
        """Raise the :class:`~qmpcore.CommandError` QEMU 7.2 answers for
        ``command`` with ``arguments``, or return.

        Covers what QEMU checks before the command runs: unknown commands
        (``CommandNotFound``), missing, unexpected and wrong-typed members,
        enum values and integer ranges (``GenericError``), each with QEMU's
        ``desc``.  Warns with :class:`~qmpcore.DeprecatedWarning` /
        :class:`~qmpcore.UnstableWarning` when the command, a member, an
        enum value or a type in use has that feature, and with
        :class:`RuntimeWarning` for inputs known to crash QEMU 7.2.
        """
        entry = self._types.get(command)
        if entry is None or entry.get("meta-type") != "command":
            raise CommandError("CommandNotFound", f"The command {command} has not been found", command)
        if arguments is None:
            arguments = {}
        elif not isinstance(arguments, Mapping):
            raise CommandError("GenericError", "QMP input member 'arguments' must be an object", command)
        valid = self._valid.get(command)
        if valid is None:
            try:
                valid = self._fast.of(entry.get("arg-type", ""), command not in _OPEN_ARGUMENTS)
            except RecursionError:  # types nested thousands deep (a hostile schema): exact path only
                valid = _refuse
            self._valid[command] = valid
        if not valid(arguments):  # the exact visitor words QEMU's error
            desc = self._checker.check_arguments(command, arguments)
            if desc is not None:
                raise CommandError("GenericError", desc, command)
        if self._has_features(command):
            self._warn(command, entry, arguments)
        crash = CRASHING_INPUTS.get(command)
        if crash is not None and crash[0](arguments):
            warnings.warn(crash[1], RuntimeWarning, stacklevel=2)

    def errors(self, command: str, arguments: Mapping[str, Any] | None = None) -> CommandError | None:
        """The error :meth:`check` would raise, or ``None`` (no warnings)."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                self.check(command, arguments)
            except CommandError as exc:
                return exc
        return None

    # -- deprecated and unstable parts in use --------------------------------

    def _has_features(self, command: str) -> bool:
        """Whether a deprecated or unstable part is reachable from ``command``
        (most commands: no, and their checks skip the second walk)."""
        entry = self._types[command]
        return bool(_marked(entry)) or entry.get("arg-type", "") in self._feature_types()

    def _feature_types(self) -> frozenset[str]:
        """Types from which a deprecated or unstable part can be reached."""
        if self._reaching is None:
            direct: list[str] = []
            users: dict[str, list[str]] = collections.defaultdict(list)
            for entry in self._entries:
                name = entry["name"]
                if entry.get("meta-type") in ("command", "event"):
                    continue
                if _marked(entry) or any(_marked(m) for m in entry.get("members", ())):
                    direct.append(name)
                for used in _uses(entry):
                    users[used].append(name)
            reaching = set(direct)
            todo = list(direct)
            while todo:
                for user in users.get(todo.pop(), ()):
                    if user not in reaching:
                        reaching.add(user)
                        todo.append(user)
            self._reaching = frozenset(reaching)
        return self._reaching

    def _warn(self, command: str, entry: Mapping[str, Any], arguments: Mapping[str, Any]) -> None:
        found: list[tuple[str, str]] = []
        self._feature_types()  # computed once, then read as self._reaching
        _note(found, entry, f"command '{command}'")
        self._walk_features(entry.get("arg-type", ""), arguments, "", found, 0)
        for feature, what in found:
            category = DeprecatedWarning if feature == "deprecated" else UnstableWarning
            warnings.warn(f"{what} is {feature} ({command})", category, stacklevel=3)

    def _walk_features(self, type_name: str, value: Any, path: str, found: list[Any], depth: int) -> None:
        """Note the deprecated and unstable parts ``value`` uses, entering
        only what can hold one."""
        if depth > 64 or type_name not in self._reaching:  # type: ignore[operator]
            return
        entry = self._types[type_name]
        meta = entry.get("meta-type")
        if meta == "object":
            if isinstance(value, Mapping):
                if "features" in entry and _marked(entry):
                    _note(found, entry, f"type of '{path}'" if path else "its arguments' type")
                self._walk_members(entry, value, path, found, depth)
                tag = entry.get("tag")
                if tag is not None and tag in value:
                    variant = self.variants(type_name).get(value[tag])
                    if variant is not None:
                        variant_entry = self._types.get(variant, {})
                        if "features" in variant_entry:
                            _note(found, variant_entry, f"variant '{value[tag]}' of '{path or tag}'")
                        self._walk_members(variant_entry, value, path, found, depth)
        elif meta == "array":
            if isinstance(value, list):
                for index, item in enumerate(value):
                    self._walk_features(entry["element-type"], item, f"{path}[{index}]", found, depth + 1)
        elif meta == "enum":
            if isinstance(value, str):
                for member in entry.get("members", ()):
                    if member.get("name") == value:
                        _note(found, member, f"value '{value}' of '{path}'")
        elif meta == "alternate":
            branch = self._checker._alternate_branch(entry, value)
            if branch is not None:
                self._walk_features(branch, value, path, found, depth + 1)

    def _walk_members(
        self, entry: Mapping[str, Any], value: Mapping[str, Any], path: str, found: list[Any], depth: int
    ) -> None:
        table = self._feature_members(entry)
        for key, item in value.items():
            info = table.get(key)
            if info is None:
                continue
            marks, inner = info
            where = f"{path}.{key}" if path else key
            for feature in marks:
                found.append((feature, f"member '{where}'"))
            if inner is not None:
                self._walk_features(inner, item, where, found, depth + 1)

    def _feature_members(self, entry: Mapping[str, Any]) -> dict[str, tuple[tuple[str, ...], str | None]]:
        """An object's members worth a look: name -> (its deprecated or
        unstable marks, its type if one can be reached through it)."""
        name = entry.get("name", "")
        table = self._indexes.get(name)
        if table is None:
            reaching = self._feature_types()
            table = {}
            for member in entry.get("members", ()):
                marks = tuple(f for f in member.get("features", ()) if f in ("deprecated", "unstable"))
                inner = member["type"] if member["type"] in reaching else None
                if marks or inner is not None:
                    table[member["name"]] = (marks, inner)
            self._indexes[name] = table
        return table

    # -- what introspection hides: alternates' names, integer types ----------

    def _alternate_names(self) -> dict[str, str]:
        """QEMU names alternates in type errors (``expected: BlockdevRef``);
        introspection numbers them.  Alternates shaped like one of 7.2's get
        its name."""
        known = _alternates_72()
        names = {}
        for entry in self._entries:
            if entry.get("meta-type") == "alternate":
                name = known.get(_signature(self._types, entry))
                if name is not None:
                    names[entry["name"]] = name
        return names

    def _resolve_int_types(self) -> dict[tuple[str, str], str]:
        """QEMU's integer types of this schema's members, from the table of
        7.2's (keyed by path, so it applies to any build that has the path)."""
        table = _int_table()
        result: dict[tuple[str, str], str] = {}
        for path, kind in table.items():
            head, _, member = path.rpartition("/")
            try:
                owner = self.lookup(head)
            except SchemaPathError:
                continue
            owner = self._object(owner["name"]) if owner is not None else None
            if owner is None and head.count("/") >= 1:
                owner = self._alternate_object(head)
            if owner is not None and any(m.get("name") == member for m in owner.get("members", ())):
                result[(owner["name"], member)] = kind
        return result

    def _alternate_object(self, path: str) -> Mapping[str, Any] | None:
        entry = self.lookup(path)
        if entry is None or entry.get("meta-type") != "alternate":
            return None
        for member in entry.get("members", ()):
            target = self._object(member["type"])
            if target is not None:
                return target
        return None


_STRING_FIELDS = ("name", "meta-type", "arg-type", "ret-type", "element-type", "json-type", "tag")


def _well_formed(entry: Any) -> None:
    """Raise ValueError unless ``entry`` has the shape introspection gives
    (a schema can come from a peer: nothing later trips over it)."""
    if not isinstance(entry, Mapping) or not isinstance(entry.get("name"), str):
        raise ValueError(f"not a query-qmp-schema entry (no 'name'): {entry!r:.80}")
    name = entry["name"]
    for field in _STRING_FIELDS:
        if field in entry and not isinstance(entry[field], str):
            raise ValueError(f"schema entry {name!r:.80}: {field!r} is not a string")
    if not isinstance(entry.get("meta-type"), str):
        raise ValueError(f"schema entry {name!r:.80} has no 'meta-type'")
    member_keys = (
        ("type",)
        if entry["meta-type"] == "alternate"
        else ("name", "type")
        if entry["meta-type"] == "object"
        else ("name",)
    )
    for field, keys in (("members", member_keys), ("variants", ("case", "type"))):
        items = entry.get(field, [])
        if not isinstance(items, list) or not all(
            isinstance(i, Mapping) and all(isinstance(i.get(k), str) for k in keys) for i in items
        ):
            raise ValueError(f"schema entry {name!r:.80}: malformed {field!r}")
        for item in items:
            if "type" in item and not isinstance(item["type"], str):
                raise ValueError(f"schema entry {name!r:.80}: malformed {field!r}")
            if not isinstance(item.get("features", []), list):
                raise ValueError(f"schema entry {name!r:.80}: malformed features")
    values = entry.get("values", [])
    features = entry.get("features", [])
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise ValueError(f"schema entry {name!r:.80}: malformed 'values'")
    if not isinstance(features, list) or not all(isinstance(f, str) for f in features):
        raise ValueError(f"schema entry {name!r:.80}: malformed 'features'")


def _refuse(value: Any) -> bool:
    return False


def _marked(entry: Mapping[str, Any]) -> bool:
    features = entry.get("features") or ()
    return "deprecated" in features or "unstable" in features


def _uses(entry: Mapping[str, Any]) -> Iterator[str]:
    """Types an entry refers to."""
    for member in entry.get("members", ()):
        if "type" in member:
            yield member["type"]
    for variant in entry.get("variants", ()):
        yield variant["type"]
    if "element-type" in entry:
        yield entry["element-type"]


def _note(found: list[tuple[str, str]], entry: Mapping[str, Any], what: str) -> None:
    for feature in entry.get("features", ()):
        if feature in ("deprecated", "unstable"):
            found.append((feature, what))


@functools.cache
def _int_table() -> dict[str, str]:
    path = pathlib.Path(_qapi.DATA_DIR) / _INT_TYPES_72
    table: dict[str, str] = orjson.loads(path.read_bytes())
    return table


@functools.cache
def _bundled_entries() -> list[Mapping[str, Any]]:
    entries: list[Mapping[str, Any]] = orjson.loads((_qapi.DATA_DIR / _qapi._SCHEMA_72).read_bytes())["return"]
    return entries


def _signature(types: Mapping[str, Mapping[str, Any]], alternate: Mapping[str, Any]) -> tuple[Any, ...]:
    """What an alternate looks like: its branches' kinds, with member names
    for objects and values for enums."""
    shape: list[tuple[Any, Any]] = []
    for member in alternate.get("members", ()):
        branch = types.get(member.get("type", ""), {})
        meta = branch.get("meta-type")
        if meta == "object":
            shape.append((meta, tuple(m.get("name") for m in branch.get("members", ()))))
        elif meta == "enum":
            shape.append((meta, tuple(branch.get("values", ()))))
        else:
            shape.append((meta, branch.get("json-type")))
    return tuple(shape)


@functools.cache
def _alternates_72() -> dict[tuple[Any, ...], str]:
    entries = _bundled_entries()
    types = {e["name"]: e for e in entries}
    return {_signature(types, types[number]): name for number, name in _qapi._ALTERNATE_NAMES_72.items()}


# -- schemas of running QEMUs, shared by connections --------------------------

#: Bytes of schema JSON the cache of :func:`schema_for` may hold.
CACHE_BYTES = 16 << 20
_cache: collections.OrderedDict[tuple[Any, ...], tuple[Schema, int]] = collections.OrderedDict()
_cache_bytes = 0
_cache_lock = threading.Lock()  # blocking clients run in many threads


def schema_for(version: Any, reply: Any) -> Schema:
    """A :class:`Schema` for a ``query-qmp-schema`` reply of QEMU ``version``
    (``(major, minor, micro, package)``).

    Schemas are kept in memory by version and package (least recently used
    dropped first, at most :data:`CACHE_BYTES` of JSON): a reply equal to
    the one kept gets the same object, its lookups and compiled checks
    ready.  Each connection still asks its own QEMU, so one peer's answer
    never stands for another's.
    """
    key = tuple(version) if version is not None else None
    if key is not None:
        with _cache_lock:
            found = _cache.get(key)
            if found is not None and found[0]._entries == reply:
                _cache.move_to_end(key)
                return found[0]
    try:
        schema = Schema.from_reply(reply, version=key)
    except ValueError as exc:
        raise ProtocolError(f"query-qmp-schema answered a malformed schema: {exc}") from None
    if key is None:
        return schema
    size = len(orjson.dumps(reply))
    global _cache_bytes
    with _cache_lock:
        old = _cache.pop(key, None)
        if old is not None:
            _cache_bytes -= old[1]
        if size <= CACHE_BYTES:
            _cache[key] = (schema, size)
            _cache_bytes += size
            while _cache_bytes > CACHE_BYTES:
                _, (_, dropped) = _cache.popitem(last=False)
                _cache_bytes -= dropped
    return schema
