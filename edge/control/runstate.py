"""The run state on disk: what a batch needs to survive a power loss, written atomically.

One JSON document per station: recipe (content and hash), sequencer phase and its data,
programmer, loops, alarms, accounting, and the wall time of the save. It is written at
every change and every few seconds by: write a temporary file in the same directory,
fsync it, rename it over the old one, fsync the directory. A rename is atomic, so after
a crash at any instant the file is either the previous state or the new one, whole. A
SHA-256 over the content is stored with it, so a file damaged some other way (a bad
sector, a hand edit) is detected and reported rather than trusted.

Why wall time (CLOCK_REALTIME) is stored: after a reboot the monotonic and plant clocks
start again, and the recovery strategy needs to know how long the outage lasted.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import time
from collections.abc import Callable
from typing import Any

from edge.files import write_atomic

FORMAT = "reedge-runstate"
VERSION = 1


class RunStateCorrupt(RuntimeError):
    """The run-state file exists but cannot be trusted; it is kept aside, never silently dropped."""


def _digest(body: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


class RunStateStore:
    """Load and save one station's run state at ``path``."""

    def __init__(self, path: str | os.PathLike[str], *, clock: Callable[[], float] = time.time) -> None:
        """``clock`` stamps each save (unix seconds); the HIL rig passes the plant's clock, which runs on
        across a simulated power loss while the wall clock barely moves."""
        self.path = pathlib.Path(path)
        self.clock = clock
        self.saves = 0

    def save(self, state: dict[str, Any]) -> None:
        """Atomically replace the stored state with ``state`` (JSON-safe)."""
        body = {"format": FORMAT, "version": VERSION, "saved_unix_s": self.clock(), "state": state}
        text = json.dumps({**body, "sha256": _digest(body)}, sort_keys=True, indent=1)
        write_atomic(self.path, text.encode(), mode=0o640)
        self.saves += 1

    def load(self) -> tuple[dict[str, Any], float] | None:
        """(state, unix time of the save), or None when there is no run state.

        A file that does not parse or whose digest does not match raises RunStateCorrupt;
        the caller decides (the controller aborts the run to the safe state and reports it).
        """
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return None
        try:
            doc = json.loads(text)
            body = {k: doc[k] for k in ("format", "version", "saved_unix_s", "state")}
            ok = doc.get("sha256") == _digest(body) and body["format"] == FORMAT and body["version"] == VERSION
        except (ValueError, KeyError, TypeError) as exc:
            raise RunStateCorrupt(f"{self.path}: not a run-state file ({exc})") from exc
        if not ok:
            raise RunStateCorrupt(f"{self.path}: checksum or format mismatch; the file was damaged")
        return dict(body["state"]), float(body["saved_unix_s"])

    def quarantine(self) -> pathlib.Path:
        """Move a corrupt file aside (kept for the investigation) so a new run can start."""
        dest = self.path.with_name(f"{self.path.name}.corrupt-{int(time.time())}")
        os.replace(self.path, dest)
        return dest

    def clear(self) -> None:
        """The batch ended (completed or aborted and recorded): nothing to recover."""
        self.path.unlink(missing_ok=True)
