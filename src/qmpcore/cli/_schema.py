"""``qmpcore schema`` and ``qmpcore stubs``: QEMU's schema from the shell.

::

    qmpcore schema /run/vm1/qmp.sock                  # every command
    qmpcore schema /run/vm1/qmp.sock blockdev-add     # arguments, types, features
    qmpcore schema --bundled 'blockdev-add/arg-type/+file/aio/^io_uring'
    qmpcore stubs /run/vm1/qmp.sock -o vm1_qmp.py     # typed commands for mypy
    qmpcore stubs --bundled -o qemu72.py

A word with a ``/`` is a path in libvirt's schema language: it prints
``true`` or ``false`` (and the entry a type path ends on) and exits 0 when
it matches, 1 when it does not.  ``--bundled`` uses the QEMU 7.2 schema
shipped with qmpcore instead of asking a running QEMU.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Mapping
from typing import Any

from ..protocol.schema import Schema
from . import DEFAULT_TIMEOUT, EXIT_COMMAND_ERROR, EXIT_OK, EXIT_USAGE, UsageError, _fail, run_client
from ._output import printable

__all__ = ["add_parsers", "describe"]


def add_parsers(sub: Any) -> None:
    """Register ``schema`` and ``stubs`` on the ``qmpcore`` subparsers."""
    from ._proxy import add_tls_arguments

    for name, help_text, handler in (
        ("schema", "describe a command or answer a schema path query (libvirt's language)", _cmd_schema),
        ("stubs", "write a module of typed commands (TypedDicts, methods) for mypy", _cmd_stubs),
    ):
        p = sub.add_parser(
            name, help=help_text, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
        )
        p.add_argument("--bundled", action="store_true", help="use the QEMU 7.2 schema shipped with qmpcore")
        p.add_argument(
            "--timeout", type=float, default=DEFAULT_TIMEOUT, metavar="SECONDS", help="for connecting and the query"
        )
        if name == "schema":
            p.add_argument("words", nargs="*", metavar="ADDRESS [COMMAND|PATH]")
        else:
            p.add_argument("words", nargs="*", metavar="ADDRESS")
            p.add_argument("-o", "--output", metavar="FILE.py", help="where to write the module (default: stdout)")
        add_tls_arguments(p)
        p.set_defaults(handler=handler, qga=False)


def _with_schema(args: argparse.Namespace, limit: int, then: Any) -> int:
    """Run ``then(schema, rest)`` on the bundled schema or one fetched from ADDRESS."""
    words = list(args.words)
    if args.bundled:
        if len(words) > limit:
            raise UsageError("--bundled takes no ADDRESS")
        return int(then(Schema.bundled(), words, "QEMU 7.2"))
    if not words or len(words) > limit + 1:
        raise UsageError("give ADDRESS or --bundled")
    args.address = words[0]

    async def body(client: Any) -> int:
        schema = await client.schema()
        version = client.version
        source = f"QEMU {version[0]}.{version[1]}.{version[2]}" if version else str(args.address)
        return int(then(schema, words[1:], source))

    return run_client(args, body)


def _cmd_schema(args: argparse.Namespace) -> int:
    def show(schema: Schema, rest: list[str], source: str) -> int:
        terminal = sys.stdout.isatty()
        if not rest:
            for command in sorted(schema.commands):
                print(printable(command, terminal))
            return EXIT_OK
        target = rest[0]
        if "/" in target:
            try:
                matched = schema.query(target)
                entry = schema.lookup(target)
            except ValueError as exc:
                return _fail(str(exc), EXIT_USAGE)
            print("true" if matched else "false")
            if entry is not None and "/" in target:
                print(json.dumps(entry, indent=2))
            return EXIT_OK if matched else EXIT_COMMAND_ERROR
        text = describe(schema, target)
        if text is None:
            return _fail(f"{source} has no command or event {target!r}", EXIT_COMMAND_ERROR)
        print(printable(text, terminal), end="")  # names come from the peer
        return EXIT_OK

    return _with_schema(args, 1, show)


def _cmd_stubs(args: argparse.Namespace) -> int:
    from ._stubs import generate

    def write(schema: Schema, rest: list[str], source: str) -> int:
        text = generate(schema, source)
        if args.output:
            with open(args.output, "w", encoding="utf-8") as out:
                out.write(text)
        else:
            sys.stdout.write(text)
        return EXIT_OK

    return _with_schema(args, 0, write)


# -- describing a command --------------------------------------------------


def describe(schema: Schema, name: str) -> str | None:
    """A readable description of command or event ``name``: arguments with
    their types, optionality, enum values and features, and the return
    type; ``None`` if there is no such command or event."""
    entry = schema.command(name) or schema.event(name)
    if entry is None:
        return None
    lines = [f"{entry['meta-type']} {name}{_features(entry)}"]
    arg_type = entry.get("arg-type")
    if arg_type is not None:
        lines.append("  arguments:" if schema.members(arg_type) else "  arguments: none")
        _object_lines(schema, arg_type, lines, "    ", set())
    if "ret-type" in entry:
        lines.append(f"  returns: {_type_text(schema, entry['ret-type'])}")
        if schema.members(entry["ret-type"]):
            _object_lines(schema, entry["ret-type"], lines, "    ", set())
    return "\n".join(lines) + "\n"


def _features(entry: Mapping[str, Any]) -> str:
    features = entry.get("features")
    return f"  [{', '.join(features)}]" if features else ""


def _type_text(schema: Schema, type_name: str) -> str:
    entry = schema.entry(type_name)
    if entry is None:
        return type_name
    meta = entry.get("meta-type")
    if meta == "enum":
        return "enum: " + " | ".join(entry.get("values", ()))
    if meta == "array":
        return f"array of {_type_text(schema, entry['element-type'])}"
    if meta == "object":
        if not entry.get("members"):
            return "{}"
        tag = entry.get("tag")
        return f"object (union on '{tag}')" if tag else "object"
    return schema.type_name(type_name)


def _object_lines(schema: Schema, type_name: str, lines: list[str], indent: str, seen: set[str]) -> None:
    entry = schema.entry(type_name)
    while entry is not None and entry.get("meta-type") == "array":
        entry = schema.entry(entry["element-type"])
    if entry is None or entry.get("meta-type") != "object" or entry["name"] in seen or len(indent) > 16:
        return
    seen = seen | {entry["name"]}
    for member in entry.get("members", ()):
        optional = "?" if "default" in member else ""
        lines.append(f"{indent}{member['name']}{optional}: {_type_text(schema, member['type'])}{_features(member)}")
        _enum_features(schema, member["type"], lines, indent + "  ")
        if len(indent) < 8:
            _object_lines(schema, member["type"], lines, indent + "  ", seen)
    for variant in entry.get("variants", ()):
        lines.append(f"{indent}when {entry.get('tag')} = {variant['case']}:")
        _object_lines(schema, variant["type"], lines, indent + "  ", seen)


def _enum_features(schema: Schema, type_name: str, lines: list[str], indent: str) -> None:
    entry = schema.entry(type_name)
    if entry is None or entry.get("meta-type") != "enum":
        return
    for member in entry.get("members", ()):
        if member.get("features"):
            lines.append(f"{indent}value {member['name']}{_features(member)}")


# -- the shell: completion and help ------------------------------------------


# What a QAPI name can be; other names from a peer are never offered (they
# would land on the prompt line, escape sequences included).
_NAME = re.compile(r"[A-Za-z0-9_.+-]{1,128}")


def completions(schema: Schema, before: str, text: str) -> list[str]:
    """Completions (see :func:`_completions`), only of well-formed names."""
    return [c for c in _completions(schema, before, text) if _NAME.fullmatch(c.rstrip(" =").replace("=", "."))]


def _completions(schema: Schema, before: str, text: str) -> list[str]:
    """Completions of the word ``text`` in a shell line whose part before
    that word is ``before``: command names first, then ``name=`` for the
    command's members (``a.b=`` inside object members; a union's variant
    members once its tag is given) and ``name=value`` for enum values."""
    words = before.split()
    if not words or (words == ["help"]):
        return [f"{c} " for c in sorted(schema.commands) if c.startswith(text)]
    entry = schema.command(words[0])
    if entry is None:
        return []
    given = dict(word.split("=", 1) for word in words[1:] if "=" in word)
    if "=" in text:
        key, partial = text.split("=", 1)
        member = _member_at(schema, entry["arg-type"], key, given)
        if member is None:
            return []
        values = schema.enum_values(member["type"])
        if not values and schema.type_name(member["type"]) == "bool":
            values = ["true", "false"]
        return [f"{key}={v} " for v in values if v.startswith(partial)]
    prefix, _, partial = text.rpartition(".")
    if prefix:
        holder = _member_at(schema, entry["arg-type"], prefix, given)
        if holder is None:
            return []
        members = _members_of(schema, holder["type"], {})
        prefix += "."
    else:
        members = _members_of(schema, entry["arg-type"], given)
    return [f"{prefix}{m['name']}=" for m in members if m["name"].startswith(partial) and m["name"] not in given]


def _members_of(schema: Schema, type_name: str, given: Mapping[str, str]) -> list[Mapping[str, Any]]:
    entry = schema.entry(type_name)
    while entry is not None and entry.get("meta-type") in ("array", "alternate"):
        if entry["meta-type"] == "array":
            entry = schema.entry(entry["element-type"])
        else:  # an alternate: its object branch, if any
            objects = [schema.entry(m["type"]) for m in entry.get("members", ())]
            entry = next((o for o in objects if o is not None and o.get("meta-type") == "object"), None)
    if entry is None or entry.get("meta-type") != "object":
        return []
    tag = entry.get("tag")
    case = given.get(tag) if tag is not None else None
    if case is not None and case in schema.variants(entry["name"]):
        return schema.members(entry["name"], case)
    return list(entry.get("members", ()))


def _member_at(schema: Schema, type_name: str, dotted: str, given: Mapping[str, str]) -> Mapping[str, Any] | None:
    member: Mapping[str, Any] | None = None
    for index, part in enumerate(dotted.split(".")):
        members = _members_of(schema, type_name, given if index == 0 else {})
        member = next((m for m in members if m["name"] == part), None)
        if member is None:
            return None
        type_name = member["type"]
    return member


def shell_help(schema: Schema | None, words: list[str]) -> str:
    """The shell's ``help [COMMAND]``."""
    if schema is None:
        return "help needs the server's schema (QMP only)"
    if not words:
        return "Commands: " + " ".join(sorted(schema.commands)) + "\nhelp COMMAND describes one."
    text = describe(schema, words[0])
    return text.rstrip("\n") if text is not None else f"no command or event {words[0]!r}"
