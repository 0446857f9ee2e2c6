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

**Published, not used**: ``last``, ``min``, ``max`` and ``mean`` are rounded to each channel's
resolution (``rounding``, from ``edge.telemetry.description``) only here, in the message; the core
and the controller never see a rounded value. **UTC**: with a ``wall_clock`` (the controller's: unix
seconds), each drain measures the offset from the core clock to it, and the windows closed by that
drain carry ``start_utc`` and ``end_utc`` (RFC 3339, ms, Z) beside the core-clock ``start_ns`` and
``end_ns``: on a station both clocks run at the same pace and the offset is fixed (to within the time
of one read, well under a ms) until NTP steps the wall clock; on the rig the wall clock is the plant's.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from edge.core import ChannelStatus, Core
from edge.timestamps import rfc3339_ms

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

    def body(self, rnd: Callable[[float], float]) -> dict[str, Any]:
        none = self.valid == 0
        return {"last": rnd(self.last) if math.isfinite(self.last) else None,
                "min": None if none else rnd(self.lo), "max": None if none else rnd(self.hi),
                "mean": None if none else rnd(self.total / self.valid),
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
    ``outputs`` and ``rules`` (optional) name the bits of each sample's output and trip masks;
    ``rounding`` (optional) is one function per channel for the published values, ``wall_clock`` the
    clock whose UTC the windows carry (module docstring).
    """

    def __init__(self, channels: Sequence[str], *, window_s: float = DEFAULT_WINDOW_S,
                 outputs: Sequence[str] = (), rules: Sequence[str] = (),
                 rounding: Sequence[Callable[[float], float]] | None = None,
                 wall_clock: Callable[[], float] | None = None) -> None:
        if isinstance(window_s, bool) or not isinstance(window_s, int | float) or not (
                MIN_WINDOW_S <= window_s <= MAX_WINDOW_S):
            raise ValueError(f"telemetry window must be {MIN_WINDOW_S} to {MAX_WINDOW_S} s, got {window_s!r}")
        self.channels = tuple(channels)
        self.outputs = tuple(outputs)
        self.rules = tuple(rules)
        if rounding is not None and len(rounding) != len(self.channels):
            raise ValueError(f"rounding: {len(rounding)} functions for {len(self.channels)} channels")
        self.rounding = tuple(rounding) if rounding is not None else tuple(float for _ in self.channels)
        self.wall_clock = wall_clock
        self.utc_offset_ns: int | None = None     # wall clock minus core clock, measured at the last drain
        self.window_ns = round(window_s * 1e9)
        self._open: _Window | None = None
        self._last_tick: int | None = None

    @classmethod
    def for_core(cls, core: Core, window_s: float = DEFAULT_WINDOW_S, *,
                 rounding: Sequence[Callable[[float], float]] | None = None,
                 wall_clock: Callable[[], float] | None = None) -> Aggregator:
        return cls(core.channel_names, window_s=window_s, outputs=core.output_names, rules=core.rule_names,
                   rounding=rounding, wall_clock=wall_clock)

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
        if self.wall_clock is not None:
            self.utc_offset_ns = round(self.wall_clock() * 1e9) - core.now_ns()
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
            "channels": {name: ch.body(rnd) for name, ch, rnd in zip(self.channels, w.channels, self.rounding,
                                                                        strict=True)},
        }
        if self.utc_offset_ns is not None:
            body["window"]["start_utc"] = rfc3339_ms(start + self.utc_offset_ns)
            body["window"]["end_utc"] = rfc3339_ms(start + self.window_ns + self.utc_offset_ns)
        if self.outputs:
            body["outputs"] = {name: (w.outputs >> i) & 1 for i, name in enumerate(self.outputs)}
        if self.rules:
            body["tripped"] = [name for i, name in enumerate(self.rules) if (w.tripped >> i) & 1]
        return body
