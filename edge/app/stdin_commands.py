"""Operator commands on ``reedge run``'s stdin (``--commands stdin``): one JSON object per line,
``{"cmd": VERB, ARG: VALUE, ...}``, e.g. ``{"cmd": "hold", "reason": "door check"}`` or
``{"cmd": "record_mass", "mass_out_kg": 24.8}``. Every line goes through the one operator-command path
(``edge.operator``) as ``stdin``: the same verbs, argument checks and refusals as an MQTT command, and one
``reply`` line each. Only the framing is this module's: lines read without blocking the scan.
"""

from __future__ import annotations

import json
import os
import select
from dataclasses import dataclass
from typing import Any, TextIO

from edge.operator.execute import Answer, AuditRecord, Command, Operator, audit

WHO = "stdin"     # who asked, in answers and events: whoever holds the controller's stdin (the rig, a shell)


@dataclass(frozen=True)
class Line:
    """One line read: the command, or why it is not one."""

    command: Command | None
    problem: str = ""


class StdinCommands:
    """Command lines from a stream, read without blocking the scan."""

    def __init__(self, stream: TextIO) -> None:
        self.fd = stream.fileno()
        self.closed = False
        self._pending = b""

    def poll(self) -> list[Line]:
        """Raw reads on the descriptor: select() cannot see lines already in a text stream's buffer."""
        while not self.closed:
            ready, _, _ = select.select([self.fd], [], [], 0)
            if not ready:
                break
            chunk = os.read(self.fd, 65536)
            if not chunk:
                self.closed = True
                break
            self._pending += chunk
        *lines, self._pending = self._pending.split(b"\n")
        return [read_line(raw.decode(errors="replace")) for raw in lines if raw.strip()]


def read_line(text: str) -> Line:
    """``{"cmd": VERB, ...args}`` -> a Command from ``stdin``."""
    try:
        doc: Any = json.loads(text)
        if not isinstance(doc, dict):
            raise ValueError("not an object")
    except ValueError as exc:
        return Line(None, f"not a JSON object: {exc}")
    except RecursionError:
        return Line(None, "not a JSON object: nested too deeply")
    verb = doc.pop("cmd", None)
    if not isinstance(verb, str):
        return Line(None, f"no command: \"cmd\" must name a verb, got {verb!r:.80}")
    return Line(Command(verb, doc, WHO, "stdin"))


def answer(operator: Operator, line: Line) -> AuditRecord:
    """Execute one line through the operator path; its audit record (printed as the ``reply`` line)."""
    if line.command is None:
        return AuditRecord(WHO, "stdin", None, {}, "invalid", line.problem)
    result: Answer = operator.execute(line.command)
    return audit(line.command, result)
