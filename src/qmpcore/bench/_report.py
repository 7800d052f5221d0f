"""Rows, the printed table, the JSON file and the progress line of the benchmark.

Every row holds qmpcore's figure and, from the same run, the figure of each
baseline.  The ratio is always qmpcore's figure divided by the baseline's,
in the row's own unit; the unit says whether lower or higher is better, so
``0.2×`` on a time means five times faster and ``5×`` on commands/s means
five times the throughput.
"""

from __future__ import annotations

import os
import platform
import sys
from dataclasses import dataclass, field
from typing import Any, TextIO

__all__ = ["Row", "Progress", "render", "to_json", "machine", "EXTRAS_HINT", "QEMU_QMP_MISSING"]

Figure = float | str
"""A measured number, or the reason a contender could not be measured."""

#: How to install the peers the benchmark compares against (quoted: zsh
#: would otherwise read the brackets as a glob).
EXTRAS_HINT = "pip install '.[bench]' in the qmpcore checkout"
QEMU_QMP_MISSING = f"qemu.qmp is not installed ({EXTRAS_HINT})"


@dataclass
class Row:
    """One line of the table: qmpcore's figure beside its baselines."""

    section: str
    case: str
    unit: str
    lower_is_better: bool
    value: Figure
    baselines: dict[str, Figure] = field(default_factory=dict)
    variant: str = ""
    note: str = ""
    extra: dict[str, Figure] = field(default_factory=dict)
    """Further figures of qmpcore's own (such as MB/s), shown after its value."""

    def ratio(self, baseline: str) -> float | None:
        other = self.baselines.get(baseline)
        if isinstance(self.value, str) or not isinstance(other, (int, float)) or not other:
            return None
        return self.value / other

    def to_dict(self) -> dict[str, Any]:
        return {
            "section": self.section,
            "case": self.case,
            "variant": self.variant,
            "unit": self.unit,
            "better": "lower" if self.lower_is_better else "higher",
            "qmpcore": self.value,
            "baselines": {name: {"value": value, "ratio": self.ratio(name)} for name, value in self.baselines.items()},
            "extra": self.extra,
            "note": self.note,
        }


def _number(value: Figure) -> str:
    if isinstance(value, str):
        return "n/a"
    magnitude = abs(value)
    if magnitude >= 1e6:
        return f"{value / 1e6:.2f}M"
    if magnitude >= 1e4:
        return f"{value / 1e3:.0f}k"
    if magnitude >= 100:
        return f"{value:.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}" if magnitude >= 0.1 or magnitude == 0 else f"{value:.3f}"


def _ratio(ratio: float | None) -> str:
    if ratio is None:
        return ""
    return f"{ratio:.2f}×" if ratio < 10 else f"{ratio:.0f}×"


def _section_table(rows: list[Row]) -> list[str]:
    baselines: list[str] = []
    extras: list[str] = []
    for row in rows:
        baselines += [b for b in row.baselines if b not in baselines]
        extras += [e for e in row.extra if e not in extras]
    header = ["case", "", "unit", "qmpcore"] + extras + baselines
    lines: list[list[str]] = []
    reasons: dict[str, str] = {}
    previous_case = None
    for row in rows:
        first = row.case != previous_case
        previous_case = row.case
        cells = [row.case if first else "", row.variant, row.unit if first else "", _number(row.value)]
        cells += [_number(row.extra[e]) if e in row.extra else "" for e in extras]
        for name in baselines:
            value = row.baselines.get(name)
            if value is None:
                cells.append("")
            elif isinstance(value, str):
                mark = reasons.setdefault(value, f"[{len(reasons) + 1}]")
                cells.append(f"n/a {mark}" if first else "")
            else:
                shown = _number(value) if first else ""
                cells.append(f"{shown:>6} {_ratio(row.ratio(name)):>6}")
        lines.append(cells)
    widths = [max(len(r[i]) for r in [header] + lines) for i in range(len(header))]
    out = ["  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip()]
    out.append("  ".join("-" * w for w in widths))
    out += ["  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip() for cells in lines]
    notes = [row for row in rows if row.note]
    out += [f"  {row.case}: {row.note}" for row in notes]
    out += [f"  {mark} {reason}" for reason, mark in reasons.items()]
    return out


SECTION_TITLES = {
    "framing": "Framing + decode (time; ratio = qmpcore ÷ baseline, below 1 = qmpcore faster)",
    "socket": "One connection over a unix socket (ratio = qmpcore ÷ baseline)",
    "fleet": "Fleet polling query-status (ratio = qmpcore ÷ baseline)",
    "real-qemu": "Real QEMU processes (ratio = qmpcore ÷ baseline)",
}


def render(rows: list[Row], info: dict[str, Any]) -> str:
    """The human-readable report: machine line, then one table per section."""
    out = [
        f"qmpcore {info['qmpcore']} ({info['implementation']} framer), "
        f"Python {info['python']}, {info['cpu']} × {info['cores']} cores, {info['os']}"
    ]
    sections: dict[str, list[Row]] = {}
    for row in rows:
        sections.setdefault(row.section, []).append(row)
    for section, section_rows in sections.items():
        out += ["", SECTION_TITLES.get(section, section)] + _section_table(section_rows)
    return "\n".join(out) + "\n"


def to_json(rows: list[Row], info: dict[str, Any]) -> dict[str, Any]:
    return {"machine": info, "rows": [row.to_dict() for row in rows]}


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    import orjson

    import qmpcore

    try:
        from importlib.metadata import version

        peer = version("qemu.qmp")
    except Exception:
        peer = None
    return {
        "qmpcore": qmpcore.__version__,
        "implementation": qmpcore.implementation,
        "python": platform.python_version(),
        "orjson": orjson.__version__,
        "qemu.qmp": peer,
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "os": f"{platform.system()} {platform.release()}",
    }


class Progress:
    """One self-overwriting status line on stderr, only when it is a terminal."""

    def __init__(self, stream: TextIO = sys.stderr) -> None:
        self._stream = stream
        self._enabled = stream.isatty()
        self._width = 0

    def __call__(self, text: str) -> None:
        if not self._enabled:
            return
        text = text[:100]
        self._stream.write("\r" + text.ljust(self._width))
        self._stream.flush()
        self._width = len(text)

    def done(self) -> None:
        if self._enabled and self._width:
            self._stream.write("\r" + " " * self._width + "\r")
            self._stream.flush()
            self._width = 0
