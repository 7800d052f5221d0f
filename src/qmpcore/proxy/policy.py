"""Which commands a proxy listener forwards: allow and deny patterns.

Patterns are shell-style (``fnmatch``, case-sensitive): ``query-*``,
``quit``, ``*``.  A command is forwarded when it matches an allow pattern
and no deny pattern; ``qmp_capabilities`` is each client's own business
and always allowed.  A refused command is answered in QEMU's error form,
naming the policy, and never reaches QEMU.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

__all__ = ["Policy", "ALLOW_ALL", "READ_ONLY"]


@dataclass(frozen=True)
class Policy:
    """A named set of allow and deny patterns."""

    name: str = "allow-all"
    allow: tuple[str, ...] = ("*",)
    deny: tuple[str, ...] = ()
    _allow: re.Pattern[str] = field(init=False, repr=False, compare=False)
    _deny: re.Pattern[str] | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for attr in ("allow", "deny"):
            value = getattr(self, attr)
            if isinstance(value, str):
                value = (value,)
            object.__setattr__(self, attr, tuple(value))
        # One regular expression per list: a check is one match, however many patterns.
        object.__setattr__(self, "_allow", _compile(self.allow) or re.compile(r"(?!)"))
        object.__setattr__(self, "_deny", _compile(self.deny))

    def permits(self, command: str) -> bool:
        """True if ``command`` may be forwarded."""
        if command == "qmp_capabilities":
            return True
        if self._deny is not None and self._deny.fullmatch(command):
            return False
        return self._allow.fullmatch(command) is not None

    def refusal(self, command: str) -> str:
        """The ``desc`` of the error that answers a refused ``command``."""
        return f"The command {command} is refused by the proxy's policy '{self.name}'"

    @classmethod
    def parse(cls, text: str, name: str | None = None) -> Policy:
        """A policy from ``allow=query-*,qom-get;deny=quit`` (either part optional).

        ``read-only`` and ``allow-all`` name the built-in policies.
        """
        builtin = {p.name: p for p in (ALLOW_ALL, READ_ONLY)}
        if text in builtin:
            return builtin[text]
        allow: list[str] = []
        deny: list[str] = []
        for part in filter(None, (p.strip() for p in text.split(";"))):
            key, sep, value = part.partition("=")
            patterns = [p.strip() for p in value.split(",") if p.strip()]
            if not sep or key.strip() not in ("allow", "deny"):
                raise ValueError(f"bad policy part {part!r}: expected allow=PATTERNS or deny=PATTERNS")
            (allow if key.strip() == "allow" else deny).extend(patterns)
        return cls(name or text, tuple(allow) if allow else ("*",), tuple(deny))


def _compile(patterns: Iterable[str]) -> re.Pattern[str] | None:
    parts = [fnmatch.translate(p) for p in patterns]
    return re.compile("|".join(f"(?:{p})" for p in parts)) if parts else None


ALLOW_ALL = Policy()
#: Queries only: for monitoring agents that must not change the VM.
READ_ONLY = Policy("read-only", allow=("query-*", "qom-get", "qom-list", "qom-list-types", "qom-list-properties"))
