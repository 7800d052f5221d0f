"""Typed command wrappers generated from a QAPI schema (``qmpcore stubs``).

:func:`generate` writes a Python module with

* a ``TypedDict`` for every object type the commands take or return (keys
  spelled as on the wire, optional ones ``NotRequired``), ``Literal`` aliases
  for enums, unions for alternates and for flat unions (one ``TypedDict``
  per variant, its tag a ``Literal``);
* a ``TypedDict`` for each event's ``data`` (``SHUTDOWN``: ``ShutdownData``);
* ``QMP`` (wraps :class:`qmpcore.QMPClient`) and ``SyncQMP`` (wraps
  :class:`qmpcore.SyncQMPClient`) with one typed method per command:
  ``await QMP(client).query_status()`` returns ``StatusInfo``;
  ``blockdev_add(driver="file", node_name="f", filename="/x")`` is checked
  against the ``file`` variant.  Keyword arguments are member names with
  ``-`` written ``_``; optional ones default to ``OMIT`` (left out).

Introspection hides type names; the well-known ones are restored from a
table of paths (``query-status/ret-type`` is ``StatusInfo``), the others
are named after where they are first used (``BlockCommitArguments``).
"""

from __future__ import annotations

import keyword
import re
from collections.abc import Mapping
from typing import Any

from ..protocol.schema import Schema

__all__ = ["generate"]

# QAPI names of well-known types, by a path that reaches them.
_KNOWN_NAMES = {
    "query-status/ret-type": "StatusInfo",
    "query-status/ret-type/status": "RunState",
    "query-version/ret-type": "VersionInfo",
    "query-version/ret-type/qemu": "VersionTriple",
    "query-name/ret-type": "NameInfo",
    "query-kvm/ret-type": "KvmInfo",
    "query-uuid/ret-type": "UuidInfo",
    "query-target/ret-type": "TargetInfo",
    "query-target/ret-type/arch": "SysEmuTarget",
    "query-block/ret-type": "BlockInfo",
    "query-block/ret-type/inserted": "BlockDeviceInfo",
    "query-blockstats/ret-type": "BlockStats",
    "query-named-block-nodes/ret-type": "BlockDeviceInfo",
    "query-block-jobs/ret-type": "BlockJobInfo",
    "query-jobs/ret-type": "JobInfo",
    "query-jobs/ret-type/status": "JobStatus",
    "query-cpus-fast/ret-type": "CpuInfoFast",
    "query-machines/ret-type": "MachineInfo",
    "query-commands/ret-type": "CommandInfo",
    "query-chardev/ret-type": "ChardevInfo",
    "query-migrate/ret-type": "MigrationInfo",
    "query-migrate/ret-type/status": "MigrationStatus",
    "query-migrate-parameters/ret-type": "MigrationParameters",
    "query-migrate-capabilities/ret-type": "MigrationCapabilityStatus",
    "query-migrate-capabilities/ret-type/capability": "MigrationCapability",
    "query-hotpluggable-cpus/ret-type": "HotpluggableCPU",
    "query-hotpluggable-cpus/ret-type/props": "CpuInstanceProperties",
    "query-iothreads/ret-type": "IOThreadInfo",
    "query-vnc/ret-type": "VncInfo",
    "query-spice/ret-type": "SpiceInfo",
    "query-balloon/ret-type": "BalloonInfo",
    "query-pci/ret-type": "PciInfo",
    "query-mice/ret-type": "MouseInfo",
    "query-cpu-definitions/ret-type": "CpuDefinitionInfo",
    "query-cpu-model-expansion/ret-type": "CpuModelExpansionInfo",
    "query-cpu-model-expansion/arg-type/model": "CpuModelInfo",
    "query-qmp-schema/ret-type": "SchemaInfo",
    "query-command-line-options/ret-type": "CommandLineOptionInfo",
    "query-memdev/ret-type": "Memdev",
    "query-fdsets/ret-type": "FdsetInfo",
    "query-tpm/ret-type": "TPMInfo",
    "query-dump/ret-type": "DumpQueryResult",
    "query-display-options/ret-type": "DisplayOptions",
    "query-memory-devices/ret-type": "MemoryDeviceInfo",
    "query-rx-filter/ret-type": "RxFilterInfo",
    "qom-list/ret-type": "ObjectPropertyInfo",
    "qom-list-types/ret-type": "ObjectTypeInfo",
    "blockdev-add/arg-type": "BlockdevOptions",
    "blockdev-add/arg-type/driver": "BlockdevDriver",
    "blockdev-add/arg-type/cache": "BlockdevCacheOptions",
    "blockdev-add/arg-type/discard": "BlockdevDiscardOptions",
    "blockdev-add/arg-type/detect-zeroes": "BlockdevDetectZeroesOptions",
    "blockdev-add/arg-type/+file": "BlockdevOptionsFile",
    "blockdev-add/arg-type/+file/aio": "BlockdevAioOptions",
    "blockdev-add/arg-type/+qcow2": "BlockdevOptionsQcow2",
    "blockdev-add/arg-type/+qcow2/file": "BlockdevRef",
    "blockdev-add/arg-type/+qcow2/backing": "BlockdevRefOrNull",
    "blockdev-add/arg-type/+raw": "BlockdevOptionsRaw",
    "blockdev-add/arg-type/+nbd": "BlockdevOptionsNbd",
    "blockdev-add/arg-type/+nbd/server": "SocketAddress",
    "blockdev-create/arg-type/options": "BlockdevCreateOptions",
    "object-add/arg-type": "ObjectOptions",
    "object-add/arg-type/qom-type": "ObjectType",
    "netdev_add/arg-type": "Netdev",
    "netdev_add/arg-type/type": "NetClientDriver",
    "chardev-add/arg-type/backend": "ChardevBackend",
    "chardev-add/ret-type": "ChardevReturn",
    "migrate-set-parameters/arg-type/tls-creds": "StrOrNull",
    "migrate-set-capabilities/arg-type/capabilities": "MigrationCapabilityStatus",
    "transaction/arg-type/actions": "TransactionAction",
    "block-dirty-bitmap-merge/arg-type/bitmaps": "BlockDirtyBitmapOrStr",
    "send-key/arg-type/keys": "KeyValue",
    "input-send-event/arg-type/events": "InputEvent",
    "set-action/arg-type/shutdown": "ShutdownAction",
    "watchdog-set-action/arg-type/action": "WatchdogAction",
    "SHUTDOWN/arg-type/reason": "ShutdownCause",
    "BLOCK_JOB_COMPLETED/arg-type/type": "JobType",
    "MIGRATION/arg-type/status": "MigrationStatus",
}
_BUILTINS = {"str": "str", "int": "int", "number": "float", "bool": "bool", "null": "None", "any": "Any"}
# What the generated classes define themselves.
_RESERVED = {"client", "_execute", "OMIT", "Omit"}


def _camel(text: str) -> str:
    return "".join(part[:1].upper() + part[1:] for part in re.split(r"[^0-9A-Za-z]+", text) if part)


def _identifier(wire: str) -> str:
    name = re.sub(r"[^0-9A-Za-z_]", "_", wire)
    if name[:1].isdigit():
        name = "_" + name
    if keyword.iskeyword(name) or name in ("self", "arguments"):
        name += "_"
    return name


class _Generator:
    def __init__(self, schema: Schema) -> None:
        self.schema = schema
        self.names: dict[str, str] = {}  # type number -> Python name
        self.taken: set[str] = set(_RESERVED)
        self.defined: list[str] = []  # alias and TypedDict definitions, in order
        self.emitted: set[str] = set()
        self.case_cache: dict[str, list[tuple[str, str, list[Mapping[str, Any]]]]] = {}
        for path, name in _KNOWN_NAMES.items():
            try:
                entry = schema.lookup(path)
            except ValueError:
                continue
            while entry is not None and entry.get("meta-type") == "array":
                entry = schema.entry(entry["element-type"])
            if entry is not None and entry["name"] not in _BUILTINS and entry["name"] not in self.names:
                self._name(entry["name"], name)

    def _name(self, type_name: str, wanted: str) -> str:
        known = self.names.get(type_name)
        if known is not None:
            return known
        name = wanted or "T"
        if name[:1].isdigit():
            name = "T" + name
        base, number = name, 2
        while name in self.taken:
            name = f"{base}{number}"
            number += 1
        self.taken.add(name)
        self.names[type_name] = name
        return name

    # -- type expressions ----------------------------------------------------

    def expr(self, type_name: str, wanted: str) -> str:
        """The annotation for ``type_name``, defining what it needs."""
        if type_name in _BUILTINS:
            return _BUILTINS[type_name]
        entry = self.schema.entry(type_name)
        if entry is None:
            return "Any"
        meta = entry["meta-type"]
        if meta == "builtin":
            return {"string": "str", "int": "int", "number": "float", "boolean": "bool", "null": "None"}.get(
                entry.get("json-type", ""), "Any"
            )
        if meta == "array":
            return f"list[{self.expr(entry['element-type'], wanted)}]"
        if meta == "object" and not entry.get("members") and not entry.get("variants"):
            return "dict[str, Any]"
        name = self._name(type_name, wanted)
        if name not in self.emitted:
            self.emitted.add(name)
            if meta == "enum":
                values = ", ".join(_quote(v) for v in entry.get("values", ()))
                self.defined.append(f"{name}: TypeAlias = Literal[{values}]")
            elif meta == "alternate":
                branches = [self.expr(m["type"], name + "Branch") for m in entry.get("members", ())]
                self.defined.append(f"{name}: TypeAlias = {_quote(' | '.join(branches))}")
            elif meta == "object":
                self._object(entry, name)
            else:
                return "Any"
        return name

    def _typeddict(self, name: str, members: list[Mapping[str, Any]], tag_value: str | None, tag: str | None) -> str:
        """A TypedDict definition: class syntax when every key is an identifier."""
        fields = self._fields(members, name, tag_value, tag)
        if all(m["name"].isidentifier() and not keyword.iskeyword(m["name"]) for m in members):
            body = "".join(f"    {key}: {annotation}\n" for key, annotation in fields) or "    pass\n"
            return f"\n\nclass {name}(TypedDict):\n{body}\n"
        pairs = ", ".join(f"{_quote(key)}: {_quote(annotation)}" for key, annotation in fields)
        return f"{name} = TypedDict({_quote(name)}, {{{pairs}}})"

    def _fields(
        self, members: list[Mapping[str, Any]], owner: str, tag_value: str | None, tag: str | None
    ) -> list[tuple[str, str]]:
        fields = []
        for member in members:
            annotation = self._annotation(member, owner, tag_value, tag)
            if "default" in member:
                annotation = f"NotRequired[{annotation}]"
            fields.append((member["name"], annotation))
        return fields

    def _annotation(self, member: Mapping[str, Any], owner: str, tag_value: str | None, tag: str | None) -> str:
        """A member's annotation: ``tag_value`` for a flat union's tag, else its type's."""
        wire = member["name"]
        if wire == tag and tag_value is not None:
            return tag_value
        return self.expr(member["type"], owner + _camel(wire))

    def _object(self, entry: Mapping[str, Any], name: str) -> None:
        members = list(entry.get("members", ()))
        variants = entry.get("variants")
        if not variants:
            self.defined.append(self._typeddict(name, members, None, None))
            return
        cases = self._cases(entry, name)
        self.defined.append(f"{name}: TypeAlias = {_quote(' | '.join(case for case, _, _ in cases))}")

    def _cases(self, entry: Mapping[str, Any], name: str) -> list[tuple[str, str, list[Mapping[str, Any]]]]:
        """``(TypedDict name, tag Literal, members)`` of each variant of a flat union."""
        known = self.case_cache.get(name)
        if known is not None:
            return known
        tag = entry["tag"]
        members = list(entry.get("members", ()))
        tag_member = next(m for m in members if m["name"] == tag)
        values = self.schema.enum_values(tag_member["type"])
        by_case = {v["case"]: v["type"] for v in entry.get("variants", ())}
        result = []
        for case, variant in by_case.items():
            variant_members = members + list(self.schema.members(variant))
            case_name = self._name(f"{name}@{case}", name + _camel(case))
            literal = f"Literal[{_quote(case)}]"
            self.defined.append(self._typeddict(case_name, variant_members, literal, tag))
            result.append((case_name, literal, variant_members))
        rest = [v for v in values if v not in by_case]
        if rest:
            case_name = self._name("@other@" + name, name + "Other")
            literal = f"Literal[{', '.join(_quote(v) for v in rest)}]"
            self.defined.append(self._typeddict(case_name, members, literal, tag))
            result.append((case_name, literal, members))
        self.case_cache[name] = result
        self.emitted.update(case for case, _, _ in result)
        return result

    # -- methods ---------------------------------------------------------------

    def methods(self) -> tuple[list[str], list[str]]:
        asynchronous: list[str] = []
        blocking: list[str] = []
        for command in self.schema.commands:  # types first named where commands take them
            entry = self.schema.command(command)
            if entry is not None and "arg-type" in entry:
                self.expr(entry["arg-type"], _camel(command) + "Arguments")
        for command in self.schema.commands:
            entry = self.schema.command(command)
            assert entry is not None
            camel = _camel(command)
            returns = self.expr(entry.get("ret-type", ""), camel + "Result") if "ret-type" in entry else "None"
            arg_entry = self.schema.entry(entry.get("arg-type", ""))
            features = entry.get("features", ())
            doc = f"``{command}``" + (f" ({', '.join(features)})" if features else "") + "."
            method = _identifier(command.replace("-", "_"))
            if arg_entry is not None and arg_entry.get("variants"):
                name = self.expr(arg_entry["name"], camel + "Arguments")
                cases = self._cases(arg_entry, name)
                rename = {}
                for _, _, members in cases:
                    for member in members:
                        if _identifier(member["name"]) != member["name"]:
                            rename[_identifier(member["name"])] = member["name"]
                for kind, out in (("async ", asynchronous), ("", blocking)):
                    for _, literal, members in cases if len(cases) > 1 else ():
                        params = self._params(members, literal, arg_entry["tag"], camel)
                        out.append(f"    @overload\n    {kind}def {method}(self, *{params}) -> {returns}: ...\n")
                    call = f"self._execute({_quote(command)}, _wire(arguments, {rename!r}))"
                    out.append(_method(kind, method, ", **arguments: Any", returns, doc, call))
                continue
            members = list(arg_entry.get("members", ())) if arg_entry is not None else []
            params = self._params(members, None, None, camel + "Arguments")
            values = ", ".join(f"{_quote(m['name'])}: {_identifier(m['name'])}" for m in members)
            for kind, out in (("async ", asynchronous), ("", blocking)):
                call = f"self._execute({_quote(command)}, {{{values}}})"
                out.append(_method(kind, method, f"{', *' if params else ''}{params}", returns, doc, call))
        return asynchronous, blocking

    def _params(self, members: list[Mapping[str, Any]], literal: str | None, tag: str | None, owner: str) -> str:
        params = []
        for member in members:
            annotation = self._annotation(member, owner, literal, tag)
            if "default" in member:
                params.append(f"{_identifier(member['name'])}: {annotation} | Omit = OMIT")
            else:
                params.append(f"{_identifier(member['name'])}: {annotation}")
        return "".join(", " + p for p in params)


def _method(kind: str, name: str, params: str, returns: str, doc: str, call: str) -> str:
    """One wrapper method: ``kind`` is ``"async "`` or ``""``, ``params`` what
    follows ``self``, ``call`` the ``_execute`` call whose result it returns."""
    call = f"await {call}" if kind else call
    return f'    {kind}def {name}(self{params}) -> {returns}:\n        """{doc}"""\n        return cast({_quote(returns)}, {call})\n'


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


_HEADER = '''"""Typed QMP commands for {source} (generated by ``qmpcore stubs``; do not edit).

``QMP(client)`` wraps an asyncio :class:`qmpcore.QMPClient`, ``SyncQMP(client)``
a :class:`qmpcore.SyncQMPClient`: one method per command, keyword arguments
named after the members (``-`` written ``_``), optional ones left out unless
given, results typed with the ``TypedDict`` s below.
"""

# fmt: off
from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any, Final, Literal, TypeAlias, TypedDict, cast, overload

if sys.version_info >= (3, 11):
    from typing import NotRequired
else:  # pragma: no cover - Python 3.10
    try:
        from typing_extensions import NotRequired
    except ImportError:  # only type checkers read it

        class NotRequired:
            def __class_getitem__(cls, item: Any) -> Any:
                return item


if TYPE_CHECKING:
    from qmpcore import QMPClient, SyncQMPClient

__all__ = ["QMP", "SyncQMP", "OMIT", "Omit"]


class Omit:
    """The type of :data:`OMIT`: an optional argument that is not sent."""

    def __repr__(self) -> str:
        return "OMIT"


#: Default of optional arguments: leave the member out.
OMIT: Final = Omit()


def _wire(arguments: dict[str, Any], rename: dict[str, str]) -> dict[str, Any] | None:
    wire = {{rename.get(key, key): value for key, value in arguments.items() if value is not OMIT}}
    return wire or None


'''

_CLASSES = '''

class QMP:
    """Typed commands over an asyncio :class:`qmpcore.QMPClient`."""

    def __init__(self, client: QMPClient) -> None:
        self.client = client

    async def _execute(self, command: str, arguments: dict[str, Any] | None) -> Any:
        if arguments is not None:
            arguments = _wire(arguments, {{}})
        return await self.client.execute(command, arguments)

{asynchronous}

class SyncQMP:
    """Typed commands over a blocking :class:`qmpcore.SyncQMPClient`."""

    def __init__(self, client: SyncQMPClient) -> None:
        self.client = client

    def _execute(self, command: str, arguments: dict[str, Any] | None) -> Any:
        if arguments is not None:
            arguments = _wire(arguments, {{}})
        return self.client.execute(command, arguments)

{blocking}'''


def generate(schema: Schema, source: str = "QEMU") -> str:
    """The text of a typed-commands module for ``schema``."""
    generator = _Generator(schema)
    asynchronous, blocking = generator.methods()
    for event in schema.events:  # each event's ``data``: SHUTDOWN -> ShutdownData
        entry = schema.event(event)
        if entry is not None and "arg-type" in entry:
            generator.expr(entry["arg-type"], _camel(event.lower()) + "Data")
    names = sorted(set(generator.names.values()) & generator.emitted)
    text = _HEADER.format(source=source)
    text = text.replace('__all__ = ["QMP", "SyncQMP", "OMIT", "Omit"]', _all(names))
    text += "\n".join(generator.defined) + "\n"
    text += _CLASSES.format(asynchronous="\n".join(asynchronous), blocking="\n".join(blocking))
    return text


def _all(names: list[str]) -> str:
    return "__all__ = [" + ", ".join(_quote(n) for n in ["QMP", "SyncQMP", "OMIT", "Omit", *names]) + "]"
