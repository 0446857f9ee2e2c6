"""Telemetry content: every sample of the core's ring, reduced per channel over a window of core time.

The core samples every millisecond; a historian wants a value a second, but one that does not
hide what happened in between: a pressure spike that lasted 20 ms must show in ``max``, a
thermocouple that broke for three samples must show in ``status``. So each window (default
1 s of *core* time, aligned on multiples of the window, so windows of the same station line up
across restarts) carries per channel ``last``, ``min``, ``max``, ``mean``, ``count`` (samples
in the window), ``valid`` (samples with a number) and ``status`` (the OR of every sample's
flags, by name). A FAULT or NODATA sample has no number (NaN): it is counted, flagged, and left
out of min/max/mean, which are null when no sample of the window had a number.

Fed from ``Core.iter_samples`` (the ring has one consumer: the telemetry thread), so no sample
is skipped; if the ring overflowed anyway, the missing ticks are counted in
``window.ticks_missed`` (seen when the next sample arrives: the ring keeps the oldest samples,
so the hole is after them). A window is emitted when the first sample of a later window arrives
(``flush`` emits the open one at shutdown), so a window is never published half full.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from edge.core import ChannelStatus, Core

DEFAULT_WINDOW_S = 1.0
MIN_WINDOW_S = 0.01
MAX_WINDOW_S = 3600.0
_FLAG_NAMES = tuple((int(f), f.name or "") for f in ChannelStatus if f)


def flag_names(bits: int) -> list[str]:
    """Status bits as names in a fixed order, e.g. ``["FAULT", "STALE"]``; ``[]`` is OK."""
    return [name for bit, name in _FLAG_NAMES if bits & bit]


@dataclass
class _Channel:
    last: float = math.nan
    lo: float = math.inf
    hi: float = -math.inf
    total: float = 0.0
    count: int = 0
    valid: int = 0
    status: int = 0

    def add(self, value: float, status: int) -> None:
        self.count += 1
        self.status |= status
        self.last = value
        if value == value and value not in (math.inf, -math.inf):   # finite: not NaN, not inf
            self.valid += 1
            self.total += value
            if value < self.lo:
                self.lo = value
            if value > self.hi:
                self.hi = value

    def body(self) -> dict[str, Any]:
        none = self.valid == 0
        return {"last": self.last if math.isfinite(self.last) else None,
                "min": None if none else self.lo, "max": None if none else self.hi,
                "mean": None if none else self.total / self.valid,
                "count": self.count, "valid": self.valid, "status": flag_names(self.status)}


@dataclass
class _Window:
    index: int
    first_tick: int
    last_tick: int
    samples: int = 0
    missed: int = 0
    outputs: int = 0
    tripped: int = 0
    channels: list[_Channel] = field(default_factory=list)


class Aggregator:
    """Per-window channel statistics from a stream of samples (see the module docstring).

    ``channels`` are the core's channel names in core order (``Core.channel_names``);
    ``outputs`` and ``rules`` (optional) name the bits of each sample's output and trip masks.
    """

    def __init__(self, channels: Sequence[str], *, window_s: float = DEFAULT_WINDOW_S,
                 outputs: Sequence[str] = (), rules: Sequence[str] = ()) -> None:
        if isinstance(window_s, bool) or not isinstance(window_s, int | float) or not (
                MIN_WINDOW_S <= window_s <= MAX_WINDOW_S):
            raise ValueError(f"telemetry window must be {MIN_WINDOW_S} to {MAX_WINDOW_S} s, got {window_s!r}")
        self.channels = tuple(channels)
        self.outputs = tuple(outputs)
        self.rules = tuple(rules)
        self.window_ns = round(window_s * 1e9)
        self._open: _Window | None = None
        self._last_tick: int | None = None

    @classmethod
    def for_core(cls, core: Core, window_s: float = DEFAULT_WINDOW_S) -> Aggregator:
        return cls(core.channel_names, window_s=window_s, outputs=core.output_names, rules=core.rule_names)

    def add(self, tick: int, t_ns: int, values: Sequence[float], status: Sequence[int], outputs: int = 0,
            tripped: int = 0) -> dict[str, Any] | None:
        """One sample; returns the body of the window it closed, if it closed one."""
        index = t_ns // self.window_ns
        last = self._last_tick
        gap = tick - last - 1 if last is not None and tick > last + 1 else 0   # ticks the ring lost
        done = None
        w = self._open
        if w is not None and index != w.index:
            done = self._body(w)
            w = None
        if w is None:
            w = self._open = _Window(index, tick, tick, channels=[_Channel() for _ in self.channels])
        w.missed += gap
        self._last_tick = tick
        w.last_tick = tick
        w.samples += 1
        w.outputs = outputs
        w.tripped |= tripped
        for ch, value, bits in zip(w.channels, values, status, strict=False):
            ch.add(value, bits)
        return done

    def feed(self, records: Iterable[Any]) -> list[dict[str, Any]]:
        """Raw ``ec_sample`` records (``Core.iter_samples``): the closed windows' bodies, oldest first."""
        n = len(self.channels)
        out = []
        for s in records:
            body = self.add(int(s.tick), int(s.t_ns), s.value[0:n], s.status[0:n], int(s.outputs), int(s.tripped))
            if body is not None:
                out.append(body)
        return out

    def drain(self, core: Core) -> list[dict[str, Any]]:
        """Everything the core's ring holds now; call from the ring's one consumer thread."""
        return self.feed(core.iter_samples())

    def flush(self) -> dict[str, Any] | None:
        """The open window's body (at shutdown: a short last window is better than a lost one)."""
        w, self._open = self._open, None
        return None if w is None else self._body(w)

    def _body(self, w: _Window) -> dict[str, Any]:
        start = w.index * self.window_ns
        body: dict[str, Any] = {
            "window": {"start_ns": start, "end_ns": start + self.window_ns, "first_tick": w.first_tick,
                       "last_tick": w.last_tick, "samples": w.samples, "ticks_missed": w.missed},
            "channels": {name: ch.body() for name, ch in zip(self.channels, w.channels, strict=True)},
        }
        if self.outputs:
            body["outputs"] = {name: (w.outputs >> i) & 1 for i, name in enumerate(self.outputs)}
        if self.rules:
            body["tripped"] = [name for i, name in enumerate(self.rules) if (w.tripped >> i) & 1]
        return body
