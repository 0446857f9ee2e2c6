"""Process alarms: they inform the operator; the interlocks in the C core protect.

Kinds, what raises them, and what clears them (in between nothing changes)::

    abs_high    pv > threshold               pv < threshold - hysteresis
    abs_low     pv < threshold               pv > threshold + hysteresis
    dev_high    pv - sp > threshold          pv - sp < threshold - hysteresis
    dev_low     sp - pv > threshold          sp - pv < threshold - hysteresis
    dev_band    |pv - sp| > threshold        |pv - sp| < threshold - hysteresis
    rate        |r| > threshold              |r| < threshold - hysteresis
                r = (pv(t) - pv(t - window)) / window * 60; direction "rising" uses r, "falling" -r
    loop_break  the output sits on a limit for more than delay_s and the PV has not moved more
                than ``band`` the way that output should move it (up at the high limit, down at
                the low one); clears when it does, or when the output leaves the limit

``sp`` comes from ``setpoints[setpoint_of]`` (by loop name: the loop's setpoint; ``None`` while the
programmer gives none); the loop-break output from ``outputs[output]`` (by output name: the duty
the loop asks for that output). Pass a loop's output only while the loop runs in auto: a loop in
manual or idle is not watched. A rate is per minute and needs a full window of valid samples.

What happens to an alarm, in this order every ``update``:

* **No setpoint** (deviation kinds): not evaluated, an active condition clears, start-up
  inhibition re-arms; the state reads ``inhibited``. A new program starts with a clean slate.
* **Unfollowable program** (deviation kinds with ``follows_rise_per_min`` / ``follows_fall_per_min``):
  besides the program's setpoint the alarm keeps the *followable* one, which moves towards it no faster
  than the plant can (a sintering furnace cannot cool at 10 degC/min). The PV is judged by its distance
  from the span between the two: wherever the plant may be, between where the program is and where the
  plant could have got to, is in band. So a program that outruns the plant raises nothing (an alarm that
  always fires is a nuisance, ISA-18.2), and a plant that does not even follow at its own rate (a dead
  heater under a setpoint step) still raises, once it falls ``threshold`` behind the followable setpoint.
  The alarm is never switched off: one ``rested`` event says when the program starts to outrun the
  plant (counted per batch), nothing more.
* **Sensor** (a non-finite PV, which is how the core reports a faulted channel, or a channel
  missing from ``values``): not evaluated, the state reads ``sensor`` and ``sensor_bad`` /
  ``sensor_ok`` events mark it. The alarm is *not* cleared: "cannot tell" is not "all is well"
  (a broken detector must not clear an H2 warning). Delay timers, rate windows and loop-break
  references restart when the PV returns.
* **Start-up inhibition** (``inhibit_until_normal``): suppressed until the condition has once
  been clear (below ``threshold - hysteresis``), e.g. a low-temperature alarm on a cold furnace.
* **On-delay** (``delay_s``): the raise condition must hold without a break that long (for
  ``loop_break`` the delay is the stuck time itself).
* **Acknowledgement**, states as in ISA-18.2::

        normal --raise--> unack_active --ack--> ack_active --clear--> normal
                          unack_active --clear--> normal          (latch = false)
                          unack_active --clear--> unack_cleared --ack--> normal   (latch = true)
                          unack_cleared --raise--> unack_active

  Acknowledging silences an alarm (``unacknowledged()`` is what sounds the horn); a latched alarm
  stays in ``active()`` until its condition cleared *and* it was acknowledged.

Events (``raised``, ``cleared``, ``acknowledged``, ``sensor_bad``, ``sensor_ok``, ``rested``) carry the
plant time, name, severity, the measured value and threshold, and a message. A ``raised`` event that is
the third or later raise of the same alarm within ``CHATTER_WINDOW_S``, and a ``cleared`` event of an alarm
that cleared by itself, unacknowledged, within ``FLEETING_S`` of its raise, are marked ``nuisance``
(chattering and fleeting alarms, ISA-18.2): the batch record counts them, so a badly set alarm shows.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal, cast, get_args

from edge.spec.alarms import DEVIATION_KINDS, AlarmSpec, Severity

__all__ = ["AlarmEngine", "AlarmEvent", "AlarmState", "EventKind"]

IsaState = Literal["normal", "unack_active", "ack_active", "unack_cleared"]
AlarmState = Literal["normal", "unack_active", "ack_active", "unack_cleared", "inhibited", "sensor"]
EventKind = Literal["raised", "cleared", "acknowledged", "sensor_bad", "sensor_ok", "rested"]
SNAPSHOT_VERSION = 1
CHATTER_WINDOW_S = 600.0      # three raises of one alarm within this: chattering
CHATTER_RAISES = 3
FLEETING_S = 60.0             # raised and gone by itself, unacknowledged, within this: fleeting


@dataclass(frozen=True)
class AlarmEvent:
    kind: EventKind
    t_s: float               # plant time
    name: str
    severity: Severity
    value: float | None      # the measure compared (pv, pv - sp, rate, PV movement); None if unknown
    threshold: float         # loop_break: its band
    message: str             # the spec's message, or a generated one
    detail: str              # always generated: what was measured against what
    state: AlarmState        # the alarm's state after the event
    nuisance: bool = False   # a chattering raise or a fleeting clear (see the module's docstring)


@dataclass
class _Runtime:
    """What one alarm remembers between scans."""

    isa: IsaState = "normal"
    condition: bool = False           # the condition is on (after delay and hysteresis)
    pending_since: float | None = None
    inhibited: bool = False
    no_setpoint: bool = False
    sensor_bad: bool = False
    value: float | None = None
    history: deque[tuple[float, float]] = field(default_factory=deque)  # rate: (t, pv)
    ref: tuple[float, float, int] | None = None  # loop_break: (t, pv, direction +1 high / -1 low)
    followable: tuple[float, float] | None = None  # deviation kinds: (t, the setpoint the plant can have reached)
    outrun: bool = False              # the program's setpoint is beyond the followable one (one ``rested`` a stretch)
    raises: deque[float] = field(default_factory=deque)  # times of the recent raises (chattering)
    acked_since_raise: bool = False


class AlarmEngine:
    """Every alarm of a station, updated once per scan."""

    def __init__(self, specs: Iterable[AlarmSpec]) -> None:
        self._specs: dict[str, AlarmSpec] = {}
        for spec in specs:
            if spec.name in self._specs:
                raise ValueError(f"two alarms are named {spec.name!r}")
            self._specs[spec.name] = spec
        self._rt = {name: _Runtime(inhibited=spec.inhibit_until_normal) for name, spec in self._specs.items()}

    @property
    def specs(self) -> tuple[AlarmSpec, ...]:
        return tuple(self._specs.values())

    # ---------------------------------------------------------------- the scan

    def update(
        self,
        now_s: float,
        values: Mapping[str, float],
        setpoints: Mapping[str, float | None],
        outputs: Mapping[str, float],
    ) -> list[AlarmEvent]:
        """Evaluate every alarm; the events of this scan, in declaration order."""
        events: list[AlarmEvent] = []
        for spec in self._specs.values():
            self._update_one(spec, self._rt[spec.name], now_s, values, setpoints, outputs, events)
        return events

    def _update_one(
        self,
        spec: AlarmSpec,
        rt: _Runtime,
        now_s: float,
        values: Mapping[str, float],
        setpoints: Mapping[str, float | None],
        outputs: Mapping[str, float],
        events: list[AlarmEvent],
    ) -> None:
        sp: float | None = None
        reach: float | None = None      # deviation kinds: the setpoint the plant can have reached
        if spec.kind in DEVIATION_KINDS:
            sp = setpoints.get(spec.setpoint_of or spec.channel)
            if sp is None or not math.isfinite(sp):
                rt.followable, rt.outrun = None, False   # a new program starts where its setpoint is
                if not rt.no_setpoint:
                    rt.no_setpoint = True
                    rt.inhibited = spec.inhibit_until_normal
                    rt.pending_since = None
                    if rt.condition:
                        self._clear(spec, rt, now_s, "no setpoint: deviation alarms rest", events)
                return
            rt.no_setpoint = False
            reach = self._followable(spec, rt, now_s, sp, events)

        pv = values.get(spec.channel, math.nan)
        if not math.isfinite(pv):
            if not rt.sensor_bad:
                rt.sensor_bad = True
                rt.pending_since = None
                rt.history.clear()
                rt.ref = None
                events.append(self._event("sensor_bad", spec, rt, now_s, f"{spec.channel} has no valid value: "
                                          "the alarm cannot be evaluated (it is not cleared)"))
            return
        if rt.sensor_bad:
            rt.sensor_bad = False
            events.append(self._event("sensor_ok", spec, rt, now_s, f"{spec.channel} reads {_fmt(pv)} again"))

        if spec.kind == "loop_break":
            self._loop_break(spec, rt, now_s, pv, outputs, events)
            return
        excess = self._excess(spec, rt, now_s, pv, sp, reach)
        if excess is None:  # a rate without a full window yet
            rt.pending_since = None
            return
        raise_now = excess > 0.0
        clear_now = excess < -spec.hysteresis
        if rt.inhibited:
            rt.inhibited = not clear_now
            return
        if not rt.condition:
            if not raise_now:
                rt.pending_since = None
                return
            if rt.pending_since is None:
                rt.pending_since = now_s
            if now_s - rt.pending_since >= spec.delay_s:
                self._raise(spec, rt, now_s, self._describe(spec, pv, sp), events)
        elif clear_now:
            self._clear(spec, rt, now_s, self._describe(spec, pv, sp), events)

    def _excess(self, spec: AlarmSpec, rt: _Runtime, now_s: float, pv: float, sp: float | None,
                reach: float | None = None) -> float | None:
        """How far beyond its threshold the alarm's measure is (> 0 raises, < -hysteresis clears);
        records the value events show (pv, pv - sp, or the rate). Deviation kinds: measured from the span
        between the program's setpoint and the followable one (``reach``; the same when the plant keeps up)."""
        thr = spec.threshold
        if spec.kind in DEVIATION_KINDS:
            assert sp is not None and reach is not None
            low, high = min(sp, reach), max(sp, reach)
            above, below = pv - high, low - pv
            rt.value = pv - min(max(pv, low), high)     # signed distance outside the span (pv - sp without one)
            return {"dev_high": above, "dev_low": below}.get(spec.kind, max(above, below)) - thr
        if spec.kind == "rate":
            rate = self._rate(spec, rt, now_s, pv)
            rt.value = rate
            if rate is None:
                return None
            return {"rising": rate, "falling": -rate}.get(spec.direction, abs(rate)) - thr
        rt.value = pv
        return pv - thr if spec.kind == "abs_high" else thr - pv

    def _followable(self, spec: AlarmSpec, rt: _Runtime, now_s: float, sp: float,
                    events: list[AlarmEvent]) -> float:
        """The setpoint the plant can have reached: it moves towards the program's no faster than
        ``follows_rise_per_min`` / ``follows_fall_per_min`` (the program's own when those are not set). One
        ``rested`` event when the program starts to outrun the plant, again only after the plant caught up."""
        last, reach = rt.followable, sp
        if last is not None and now_s > last[0]:
            minutes = (now_s - last[0]) / 60.0
            reach = min(max(sp, last[1] - spec.follows_fall_per_min * minutes),
                        last[1] + spec.follows_rise_per_min * minutes)
        elif last is not None:
            reach = last[1]
        rt.followable = (now_s, reach)
        outrun = abs(reach - sp) > 1e-9 * max(1.0, abs(sp))
        if outrun and not rt.outrun and last is not None:
            rate = (sp - last[1]) / max(now_s - last[0], 1e-9) * 60.0
            limit = spec.follows_rise_per_min if sp > last[1] else spec.follows_fall_per_min
            events.append(self._event("rested", spec, rt, now_s, (
                f"the setpoint moves {_fmt(rate)} {spec.unit}/min, the plant follows at most {_fmt(limit)}: "
                f"{spec.channel} is judged against the setpoint the plant can reach").replace("  ", " ")))
        rt.outrun = outrun
        return reach

    @staticmethod
    def _rate(spec: AlarmSpec, rt: _Runtime, now_s: float, pv: float) -> float | None:
        """Per minute, against the newest sample at least one window old."""
        history = rt.history
        if history and now_s <= history[-1][0]:
            history.pop()  # a repeated (or backwards) time replaces the last sample
        history.append((now_s, pv))
        start = now_s - spec.window_s
        while len(history) >= 2 and history[1][0] <= start:
            history.popleft()
        t0, pv0 = history[0]
        if t0 > start:
            return None
        return (pv - pv0) / (now_s - t0) * 60.0

    def _loop_break(
        self, spec: AlarmSpec, rt: _Runtime, now_s: float, pv: float, outputs: Mapping[str, float],
        events: list[AlarmEvent],
    ) -> None:
        """Stuck: on a limit for more than delay_s without the PV moving ``band`` the right way."""
        u = outputs.get(spec.output or "", math.nan)
        lo, hi = spec.output_limits
        tol = 1e-6 * (hi - lo)
        direction = 0
        if math.isfinite(u) and u >= hi - tol and spec.limit in ("both", "high"):
            direction = 1
        elif math.isfinite(u) and u <= lo + tol and spec.limit in ("both", "low"):
            direction = -1
        stuck = False
        if direction == 0:
            rt.ref = None
        else:
            if rt.ref is None or rt.ref[2] != direction:
                rt.ref = (now_s, pv, direction)
            moved = (pv - rt.ref[1]) * direction
            rt.value = moved
            if moved > spec.band:
                rt.ref = (now_s, pv, direction)
            else:
                stuck = now_s - rt.ref[0] > spec.delay_s
        if rt.inhibited:
            rt.inhibited = stuck
            return
        where = "high" if direction > 0 else "low"
        if stuck and not rt.condition:
            self._raise(spec, rt, now_s, f"output {spec.output} at its {where} limit for more than "
                                         f"{_fmt(spec.delay_s)} s and {spec.channel} moved less than "
                                         f"{_fmt(spec.band)} {spec.unit}".rstrip(), events)
        elif not stuck and rt.condition:
            self._clear(spec, rt, now_s, f"{spec.channel} responds to output {spec.output} again", events)

    # ---------------------------------------------------------------- transitions

    def _raise(self, spec: AlarmSpec, rt: _Runtime, now_s: float, detail: str, events: list[AlarmEvent]) -> None:
        rt.condition = True
        rt.pending_since = None
        rt.acked_since_raise = False
        if rt.isa in ("normal", "unack_cleared"):
            rt.isa = "unack_active"
        rt.raises.append(now_s)
        while rt.raises and rt.raises[0] < now_s - CHATTER_WINDOW_S:
            rt.raises.popleft()
        events.append(self._event("raised", spec, rt, now_s, detail, nuisance=len(rt.raises) >= CHATTER_RAISES))

    def _clear(self, spec: AlarmSpec, rt: _Runtime, now_s: float, detail: str, events: list[AlarmEvent]) -> None:
        rt.condition = False
        rt.pending_since = None
        if rt.isa == "ack_active" or (rt.isa == "unack_active" and not spec.latch):
            rt.isa = "normal"
        elif rt.isa == "unack_active":
            rt.isa = "unack_cleared"
        fleeting = bool(rt.raises) and now_s - rt.raises[-1] < FLEETING_S and not rt.acked_since_raise
        events.append(self._event("cleared", spec, rt, now_s, detail, nuisance=fleeting))

    def acknowledge(self, name: str, now_s: float) -> AlarmEvent | None:
        """The operator saw it. None if there was nothing to acknowledge."""
        spec = self._spec(name)
        rt = self._rt[name]
        if rt.isa == "unack_active":
            rt.isa = "ack_active"
        elif rt.isa == "unack_cleared":
            rt.isa = "normal"
        else:
            return None
        rt.acked_since_raise = True
        return self._event("acknowledged", spec, rt, now_s, "acknowledged by the operator")

    def acknowledge_all(self, now_s: float) -> list[AlarmEvent]:
        events = (self.acknowledge(name, now_s) for name in self._specs)
        return [event for event in events if event is not None]

    # ---------------------------------------------------------------- views

    def active(self) -> list[str]:
        """Alarms an operator must see: condition on, or latched and not yet acknowledged."""
        return [name for name, rt in self._rt.items() if rt.isa != "normal"]

    def unacknowledged(self) -> list[str]:
        """What sounds the horn."""
        return [name for name, rt in self._rt.items() if rt.isa in ("unack_active", "unack_cleared")]

    def states(self) -> dict[str, AlarmState]:
        return {name: self._state(name) for name in self._specs}

    def _state(self, name: str) -> AlarmState:
        rt = self._rt[name]
        if rt.sensor_bad:
            return "sensor"
        if rt.isa == "normal" and (rt.inhibited or rt.no_setpoint):
            return "inhibited"
        return rt.isa

    def _spec(self, name: str) -> AlarmSpec:
        try:
            return self._specs[name]
        except KeyError:
            raise KeyError(f"unknown alarm {name!r} (known: {', '.join(self._specs) or 'none'})") from None

    def _event(self, kind: EventKind, spec: AlarmSpec, rt: _Runtime, now_s: float, detail: str, *,
               nuisance: bool = False) -> AlarmEvent:
        value = None if kind == "sensor_bad" else rt.value
        threshold = spec.band if spec.kind == "loop_break" else spec.threshold
        message = detail if kind == "rested" else spec.message or detail
        return AlarmEvent(kind, now_s, spec.name, spec.severity, value, threshold, message, detail,
                          self._state(spec.name), nuisance)

    @staticmethod
    def _describe(spec: AlarmSpec, pv: float, sp: float | None) -> str:
        unit = f" {spec.unit}" if spec.unit else ""
        thr = f"{_fmt(spec.threshold)}{unit}"
        if spec.kind == "abs_high":
            return f"{spec.channel} = {_fmt(pv)}{unit} (high alarm at {thr})"
        if spec.kind == "abs_low":
            return f"{spec.channel} = {_fmt(pv)}{unit} (low alarm at {thr})"
        if spec.kind == "rate":
            way = "" if spec.direction == "both" else f" {spec.direction}"
            return f"{spec.channel} = {_fmt(pv)}{unit}, rate alarm at {thr}/min{way} over {_fmt(spec.window_s)} s"
        return (f"{spec.channel} = {_fmt(pv)}{unit}, setpoint {_fmt(sp if sp is not None else math.nan)}{unit} "
                f"({spec.kind} alarm at {thr})")

    # ---------------------------------------------------------------- power-fail recovery

    def snapshot(self) -> dict[str, object]:
        """JSON-safe: per alarm its ISA state, condition and inhibition. Timers, rate windows and
        loop-break references are not kept (plant time restarts); they restart on restore."""
        return {
            "version": SNAPSHOT_VERSION,
            "alarms": {name: {"state": rt.isa, "condition": rt.condition, "inhibited": rt.inhibited}
                       for name, rt in self._rt.items()},
        }

    def restore(self, snapshot: Mapping[str, object]) -> list[str]:
        """Resume from ``snapshot()``. Alarms no longer declared are skipped and returned; alarms
        not in the snapshot start fresh. A malformed snapshot raises ValueError and changes nothing."""
        if snapshot.get("version") != SNAPSHOT_VERSION:
            raise ValueError(f"unknown alarm snapshot version {snapshot.get('version')!r}")
        alarms = snapshot.get("alarms")
        if not isinstance(alarms, Mapping):
            raise ValueError("alarm snapshot: 'alarms' must be a mapping")
        restored: dict[str, _Runtime] = {}
        skipped: list[str] = []
        for name, data in alarms.items():
            if not isinstance(name, str) or not isinstance(data, Mapping):
                raise ValueError(f"alarm snapshot: bad entry {name!r}")
            state, condition, inhibited = data.get("state"), data.get("condition"), data.get("inhibited")
            if state not in get_args(IsaState) or not isinstance(condition, bool) or not isinstance(inhibited, bool):
                raise ValueError(f"alarm snapshot: bad entry for {name!r}: {dict(data)!r}")
            if name not in self._specs:
                skipped.append(name)
                continue
            restored[name] = _Runtime(isa=cast(IsaState, state), condition=condition, inhibited=inhibited)
        self._rt.update(restored)
        return skipped


def _fmt(number: float) -> str:
    return f"{number:.4g}"
