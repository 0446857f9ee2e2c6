"""New PID gains into a station file's text, keeping everything else and the old values.

``reedge autotune --write`` uses it. Only the ``kp``, ``ti_s`` and ``td_s`` lines of one ``[loops.NAME]``
table change (their comments stay); a comment line above the table keeps what they were and when, so a
technician can go back by hand. The result is read back: it must load and carry exactly the new gains.
"""

from __future__ import annotations

import re

from edge.spec.loops import PidGains
from edge.spec.reader import SpecError

__all__ = ["set_gains"]

_KEYS = ("kp", "ti_s", "td_s")


def set_gains(text: str, loop: str, gains: PidGains, note: str, source: str = "station file") -> str:
    """``text`` with ``[loops.<loop>]``'s gains replaced and a ``# <note>: old ...`` line above the table.
    ``SpecError`` when the table or a gain line is not there in a form this can edit."""
    lines = text.splitlines(keepends=True)
    header = re.compile(rf"^\s*\[\s*loops\s*\.\s*\"?{re.escape(loop)}\"?\s*\]\s*(#.*)?$")
    start = next((i for i, line in enumerate(lines) if header.match(line.rstrip("\r\n"))), None)
    if start is None:
        raise SpecError(source, f"loops.{loop}", "no [loops." + loop + "] table written as one: edit the gains by hand")
    end = next((i for i in range(start + 1, len(lines)) if re.match(r"^\s*\[", lines[i])), len(lines))
    new = {"kp": gains.kp, "ti_s": gains.ti_s, "td_s": gains.td_s}
    old: dict[str, str] = {}
    for i in range(start + 1, end):
        found = re.match(r"^(\s*)(kp|ti_s|td_s)(\s*=\s*)([^#\r\n]*?)(\s*(#.*)?)(\r?\n)?$", lines[i])
        if found is None:
            continue
        indent, key, equals, value, comment, _, newline = found.groups()
        old[key] = value.strip()
        lines[i] = f"{indent}{key}{equals}{_figure(new[key])}{comment or ''}{newline or ''}"
    missing = [key for key in _KEYS if key not in old]
    if missing:
        raise SpecError(source, f"loops.{loop}", f"no {', '.join(missing)} line in [loops.{loop}]: write the gains by "
                        "hand (or add the lines, then run again)")
    kept = ", ".join(f"{key} = {old[key]}" for key in _KEYS)
    lines.insert(start, f"# {note}: were {kept}\n")
    return "".join(lines)


def _figure(value: float) -> str:
    """Four significant digits: what a relay tune can tell, without float noise in the file."""
    return f"{float(f'{value:.4g}')!r}"
