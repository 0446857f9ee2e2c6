"""The Python face of the C core, and the only module that imports ``edge._core``.

``Core`` takes a :class:`~edge.spec.core.CoreSpec`, hands it to the C core and gives the
controller what it needs by name: latest values with their status, drained samples and
events as typed objects, output requests, duty, heartbeat, reset, statistics. The core
keeps the interlocks whatever Python does; this class only asks.

Every C error code becomes a :class:`CoreError` with the core's own message; a refused
output request is :class:`OutputRefused` and a refused reset :class:`ResetRefused`, each
saying why, so the caller can log and publish the reason.
"""

from __future__ import annotations

import contextlib
import enum
import importlib
import math
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from edge.spec.core import ChannelSpec, CoreSpec, OutputSpec, RuleSpec

ERRLEN = 512
INJECT_NOW = -(2**63)  # EC_INJECT_NOW (INT64_MIN): the core reads its clock under the lock that stores the value


def native() -> tuple[Any, Any]:
    """(ffi, lib) of the compiled core; built by ``pip install``, never at import."""
    core = importlib.import_module("edge._core")
    return core.ffi, core.lib


class ChannelStatus(enum.IntFlag):
    OK = 0
    FAULT = 1    # sensor fault / open circuit
    RANGE = 2    # outside the channel's or the thermocouple's range
    STALE = 4    # not updated within its max age
    NODATA = 8   # never had a value


class EventKind(enum.IntEnum):
    TRIP = 1
    CLEAR = 2
    RESET = 3
    RESET_REFUSED = 4
    REFUSED = 5
    PERMISSIVE_DROP = 6
    KEEPALIVE_DROP = 7
    FORCED_SAFE = 8
    OVERRUN = 9
    DRIVER_ERROR = 10
    STARTED = 11
    STOPPED = 12
    CORE_FAULT = 13


class CoreError(RuntimeError):
    """A C core call failed; ``code`` is the EC_E* value, the message the core's reason."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class OutputRefused(CoreError):
    """The gate refused to energise an output (a trip forces it safe, or a permissive fails)."""


class ResetRefused(CoreError):
    """A reset was asked while the rule's condition still holds."""


@dataclass(frozen=True)
class ChannelValue:
    name: str
    value: float          # NaN on FAULT / NODATA; a RANGE or STALE value is a number with its flag
    status: ChannelStatus
    t_ns: int

    @property
    def ok(self) -> bool:
        return self.status == ChannelStatus.OK


@dataclass(frozen=True)
class Sample:
    tick: int
    t_ns: int
    outputs: int          # bit i: level of output i
    tripped: int          # bit i: rule i tripped
    values: tuple[float, ...]
    status: tuple[int, ...]


@dataclass(frozen=True)
class CoreEvent:
    seq: int
    kind: EventKind
    t_ns: int             # core clock
    wall_ns: int          # CLOCK_MONOTONIC
    rule: str | None
    output: str | None
    channel: str | None
    first_out: bool
    sensor_bad: bool
    local_input: bool
    value: float
    threshold: float
    detail: str           # one line a person can read


@dataclass(frozen=True)
class OutputState:
    level: int
    requested: bool       # the controller asked for it away from its safe level
    forced: bool          # a tripped rule holds it at its safe level


@dataclass(frozen=True)
class RuleState:
    tripped: bool
    resettable: bool      # latched, evaluated this run on fresh data, and its condition has cleared
    first_out: bool
    threshold: float = math.nan   # effective: the configured one unless tighten_rule made it stricter


@dataclass(frozen=True)
class Stats:
    ticks: int
    overruns: int
    samples_lost: int
    events_lost: int
    jitter_max_ns: int
    exec_max_ns: int
    realtime: bool        # SCHED_FIFO obtained
    memory_locked: bool   # mlockall obtained
    running: bool
    jitter_hist: tuple[int, ...]
    bucket_ns: int
    core_fault: int = 0   # EC_FAULT_* bits latched: clock stopped / went backwards, output write failed
    proof_pending: bool = False   # the watchdog proof test is still running (every output held safe)

    def jitter_percentile_ns(self, p: float) -> float:
        """Wake-up lateness at percentile p (0..100), to the histogram's bucket width."""
        return hist_percentile(self.jitter_hist, self.bucket_ns, p, self.jitter_max_ns)


def hist_percentile(hist: tuple[int, ...] | list[int], bucket_ns: int, p: float, max_ns: int) -> float:
    """Upper edge of the bucket holding percentile p; the overflow bucket reports the maximum."""
    total = sum(hist)
    if total == 0:
        return math.nan
    want = p / 100.0 * total
    seen = 0
    for i, n in enumerate(hist):
        seen += n
        if n and seen >= want:
            return float(max_ns) if i == len(hist) - 1 else float(min((i + 1) * bucket_ns, max(max_ns, 1)))
    return float(max_ns)


_STATUS = tuple(ChannelStatus(i) for i in range(16))   # every combination of the four flags, made once
_OUTPUT_STATES = tuple(OutputState(i & 1, bool(i & 2), bool(i & 4)) for i in range(8))   # (level, requested, forced)


class CoreSnapshot:
    """What the core says at one instant: latest values, outputs, rules, effective thresholds and the
    clock, copied by ONE C call (``ec_core_snapshot``) under the core's lock, which the sampler holds
    through each tick: every field is as tick ``tick`` left it, none torn between two ticks (two
    separate ``latest()`` calls could be). It is a copy: the core's own later ticks, and this scan's
    own requests and ``tighten_rule`` calls, are not in it (a request never changes ``forced``,
    ``tripped`` or a value: only a tick does). The dicts are built on first use, at most once."""

    __slots__ = ("_bits", "_cache", "_names", "_stamps", "_status", "_thresholds", "_values", "first_out_index",
                 "t_ns", "tick")

    def __init__(self, names: tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]], tick: int, t_ns: int,
                 values: list[float], status: list[int], stamps: list[int], bits: tuple[int, int, int, int, int],
                 first_out: int, thresholds: list[float]) -> None:
        self.tick = tick
        self.t_ns = t_ns
        self._names = names
        self._values, self._status, self._stamps = values, status, stamps
        self._bits = bits          # levels, requested, forced, tripped, resettable
        self.first_out_index = first_out
        self._thresholds = thresholds
        self._cache: dict[str, Any] = {}

    @property
    def t_s(self) -> float:
        return self.t_ns / 1e9

    @property
    def values(self) -> dict[str, ChannelValue]:
        """As ``Core.latest()``."""
        got = self._cache.get("values")
        if got is None:
            got = self._cache["values"] = {
                n: ChannelValue(n, v, _STATUS[st] if st < 16 else ChannelStatus(st), t)
                for n, v, st, t in zip(self._names[0], self._values, self._status, self._stamps, strict=False)}
        return got

    @property
    def readings(self) -> dict[str, float]:
        """Each channel's value, NaN where its status is not OK (what the process control acts on)."""
        got = self._cache.get("readings")
        if got is None:
            got = self._cache["readings"] = {n: (v if st == 0 else math.nan) for n, v, st in
                                             zip(self._names[0], self._values, self._status, strict=False)}
        return got

    @property
    def stamps(self) -> dict[str, float]:
        """When each channel's latest reading was taken (s, the core's clock)."""
        got = self._cache.get("stamps")
        if got is None:
            got = self._cache["stamps"] = {n: t / 1e9 for n, t in zip(self._names[0], self._stamps, strict=False)}
        return got

    @property
    def outputs(self) -> dict[str, OutputState]:
        """As ``Core.outputs()``."""
        got = self._cache.get("outputs")
        if got is None:
            lv, rq, fo = self._bits[0], self._bits[1], self._bits[2]
            got = self._cache["outputs"] = {
                n: _OUTPUT_STATES[((lv >> i) & 1) | (((rq >> i) & 1) << 1) | (((fo >> i) & 1) << 2)]
                for i, n in enumerate(self._names[1])}
        return got

    @property
    def rules(self) -> dict[str, RuleState]:
        """As ``Core.rules()``."""
        got = self._cache.get("rules")
        if got is None:
            tr, rs, first = self._bits[3], self._bits[4], self.first_out_index
            got = self._cache["rules"] = {n: RuleState(bool((tr >> i) & 1), bool((rs >> i) & 1), first == i,
                                                       self._thresholds[i])
                                          for i, n in enumerate(self._names[2])}
        return got

    @property
    def tripped(self) -> tuple[str, ...]:
        """The tripped rules' names, in the station's order."""
        tr = self._bits[3]
        return tuple(n for i, n in enumerate(self._names[2]) if (tr >> i) & 1) if tr else ()


_CHANNEL_KIND = {"analog": 0, "thermocouple": 1, "digital": 2, "injected": 3}
_RULE_KIND = {"high": 0, "low": 1, "rate_high": 2, "rate_low": 3, "digital": 4, "fault": 5, "stale": 6,
              "deadman": 7, "discrepancy": 8, "agree": 9}
_CMP = {"lt": 0, "gt": 1, "eq": 2, "in": 3}


class Core:
    """One C core instance built from a CoreSpec. Use as a context manager: start, stop, free.

    Thread-safe: every call into the core goes through one lock (cffi releases the GIL during
    C calls, so without it a ``close()`` could free the core under another thread's call), and
    a call's error message is written and read under that lock, so it always belongs to its own call.
    """

    def __init__(self, spec: CoreSpec) -> None:
        self._ffi, self._lib = native()
        self.spec = spec
        self._lock = threading.RLock()
        self._ptr: Any = None
        self.restored_trips = 0
        self.channel_names = tuple(c.name for c in spec.channels)
        self.output_names = tuple(o.name for o in spec.outputs)
        self.rule_names = tuple(r.name for r in spec.rules)
        self._channel_index = {n: i for i, n in enumerate(self.channel_names)}
        self._output_index = {n: i for i, n in enumerate(self.output_names)}
        self._rule_index = {n: i for i, n in enumerate(self.rule_names)}
        self._events_buf = self._ffi.new("ec_event[]", 256)
        self._err = self._ffi.new("char[]", ERRLEN)           # _call's, used under the lock only
        self._snap_buf = self._ffi.new("ec_snapshot *")   # reused under the lock: copied out before release
        self._names = (self.channel_names, self.output_names, self.rule_names)
        self._build()

    # ---- construction ----

    def _call(self, what: str, fn: Any, *args: Any, refused: int | None = None,
              exc: type[CoreError] = CoreError) -> int:
        """Call ``fn(core, *args, err, errlen)``; a negative code raises with the core's own reason. The
        error buffer is the core's one, written and read under the lock: the message is this call's."""
        err = self._err
        with self._lock:
            err[0] = b"\0"
            rc: int = fn(self._core(), *args, err, ERRLEN)
            text = self._ffi.string(err).decode(errors="replace") if rc < 0 else ""
        if rc < 0:
            msg = text or self._ffi.string(self._lib.ec_strerror(rc)).decode()
            kind = exc if refused is not None and rc == refused else CoreError
            raise kind(rc, msg if what.split(" ")[-1] in msg else f"{what}: {msg}")
        return rc

    def _build(self) -> None:
        lib, ffi, spec = self._lib, self._ffi, self.spec
        cfg = ffi.new("ec_core_cfg *")
        lib.ec_core_cfg_default(cfg)
        cfg.period_ms = spec.period_ms
        cfg.rt_priority = spec.rt_priority
        cfg.lock_memory = int(spec.lock_memory)
        cfg.sample_ring = spec.sample_ring
        cfg.event_ring = spec.event_ring
        cfg.reset_channel = self._channel_index[spec.reset_channel] if spec.reset_channel else -1
        cfg.watchdog_output = self._output_index[spec.watchdog_output] if spec.watchdog_output else -1
        cfg.watchdog_feedback = self._channel_index[spec.watchdog_feedback] if spec.watchdog_feedback else -1
        cfg.max_tick_gap_ms = spec.max_tick_gap_ms
        cfg.allow_remote_reset = int(spec.allow_remote_reset)
        pp = ffi.new("ec_core **")
        err = ffi.new("char[]", ERRLEN)
        if lib.ec_core_new(cfg, pp, err, ERRLEN) < 0:
            raise CoreError(-1, f"core: {ffi.string(err).decode(errors='replace')}")
        self._ptr = pp[0]
        try:
            driver_index = {}
            for d in spec.drivers:
                driver_index[d.name] = self._call(f"driver {d.name!r}", lib.ec_core_add_driver, d.type.encode(),
                                                  d.param_string().encode())
            for ch in spec.channels:
                self._add_channel(ch, driver_index)
            for o in spec.outputs:
                self._add_output(o, driver_index)
            for r in spec.rules:
                self._add_rule(r)
            for p in spec.permissives:
                pc = ffi.new("ec_permissive_cfg *")
                pc.output = self._output_index[p.output]
                pc.channel = self._channel_index[p.channel]
                pc.cmp = _CMP[p.cmp]
                pc.value = p.value
                pc.value2 = p.value2
                self._call(f"permissive on {p.output!r}", lib.ec_core_add_permissive, pc)
            if spec.latch_file:
                self.restored_trips = self._call(f"latch file {spec.latch_file}", lib.ec_core_set_latch_file,
                                                 os.fsencode(spec.latch_file))
        except BaseException:
            self.close()
            raise

    def _add_channel(self, ch: ChannelSpec, driver_index: dict[str, int]) -> None:
        c = self._ffi.new("ec_channel_cfg *")
        self._lib.ec_channel_cfg_default(c)
        c.name = ch.name.encode()
        c.kind = _CHANNEL_KIND[ch.kind]
        c.driver = driver_index[ch.driver] if ch.driver is not None else -1
        c.input = ch.input
        c.scale = ch.scale
        c.offset = ch.offset
        c.range_lo = ch.range_lo
        c.range_hi = ch.range_hi
        c.tc_type = (ch.tc_type or "\0").encode()
        c.cj_channel = self._channel_index[ch.cold_junction] if ch.cold_junction else -1
        c.cj_fixed_c = ch.cj_fixed_c
        c.invert = int(ch.invert)
        c.median_n = ch.median_n
        c.ema_tau_ms = ch.ema_tau_ms
        c.max_age_ms = ch.max_age_ms
        c.rate_window_ms = ch.rate_window_ms
        self._call(f"channel {ch.name!r}", self._lib.ec_core_add_channel, c)

    def _add_output(self, o: OutputSpec, driver_index: dict[str, int]) -> None:
        c = self._ffi.new("ec_output_cfg *")
        self._lib.ec_output_cfg_default(c)
        c.name = o.name.encode()
        c.driver = driver_index[o.driver]
        c.line = o.line
        c.safe_level = o.safe_level
        c.max_on_ms = o.max_on_ms
        c.duty_cycle_ms = o.duty_cycle_ms
        self._call(f"output {o.name!r}", self._lib.ec_core_add_output, c)

    def _add_rule(self, r: RuleSpec) -> None:
        c = self._ffi.new("ec_rule_cfg *")
        self._lib.ec_rule_cfg_default(c)
        c.name = r.name.encode()
        c.kind = _RULE_KIND[r.kind]
        c.channel = self._channel_index[r.channel] if r.channel is not None else -1
        c.threshold = r.threshold
        c.hysteresis = r.hysteresis
        c.debounce_ms = r.debounce_ms
        c.latch = int(r.latch)
        c.output = self._output_index[r.output] if r.output is not None else -1
        c.channel2 = self._channel_index[r.channel2] if r.channel2 is not None else -1
        c.local_reset_only = int(r.local_reset_only)
        mask = 0
        for name in r.action:
            mask |= 1 << self._output_index[name]
        c.action = mask
        self._call(f"interlock {r.name!r}", self._lib.ec_core_add_rule, c)

    # ---- life cycle ----

    def _core(self) -> Any:
        if self._ptr is None:
            raise CoreError(-3, "core is closed")
        return self._ptr

    def start(self) -> None:
        self._call("start", self._lib.ec_core_start)

    def stop(self) -> None:
        """Stop the sampler (or a core stepped by run_ticks): every output safe, for good."""
        with self._lock:
            if self._ptr is not None:
                self._lib.ec_core_stop(self._ptr)

    def close(self) -> None:
        with self._lock:
            if self._ptr is not None:
                self._lib.ec_core_free(self._ptr)
                self._ptr = None

    def __enter__(self) -> Core:
        self.start()
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()

    def run_ticks(self, n: int = 1) -> None:
        """Run n ticks inline (core not started): deterministic stepping for tests."""
        with self._lock:
            rc = self._lib.ec_core_run_ticks(self._core(), n)
        if rc < 0:
            raise CoreError(rc, "run_ticks: only a core that was never started runs ticks inline")

    # ---- runtime ----

    def _plain(self, fn: Any, *args: Any) -> int:
        with self._lock:
            return int(fn(self._core(), *args))

    def heartbeat(self) -> None:
        """Feed the dead-man. Only the scan thread may (the one that started the core, or first ran
        run_ticks): from any other thread the core refuses, so a helper cannot keep a stuck scan alive."""
        if self._plain(self._lib.ec_core_heartbeat) < 0:
            raise CoreError(self._lib.EC_ESTATE, "heartbeat refused: only the scan thread (the one that started "
                                                 "the core) feeds the dead-man")

    def now_ns(self) -> int:
        return self._plain(self._lib.ec_core_now_ns)

    def _output(self, name: str) -> int:
        try:
            return self._output_index[name]
        except KeyError:
            raise KeyError(f"unknown output {name!r} (known: {', '.join(self.output_names)})") from None

    def request_output(self, name: str, level: int) -> None:
        """Ask for an output level; away from its safe level the gate may refuse (OutputRefused)."""
        self._call(f"output {name!r}", self._lib.ec_core_request_output, self._output(name), level,
                   refused=self._lib.EC_EREFUSED, exc=OutputRefused)

    def set_duty(self, name: str, duty: float) -> None:
        """Time-proportioned drive of an output, 0..1 of its energised level (burst fire)."""
        self._call(f"output {name!r}", self._lib.ec_core_set_duty, self._output(name), duty,
                   refused=self._lib.EC_EREFUSED, exc=OutputRefused)

    def inject(self, name: str, value: float, status: ChannelStatus = ChannelStatus.OK,
               t_ns: int | None = None) -> None:
        """Push a value into an injected channel (serial node, Modbus instrument) with its own time.

        ``t_ns=None`` is "now", read by the core under the same lock as the store: reading the
        clock here first let concurrent feeders store out of order (and be refused)."""
        index = self._channel_index.get(name)
        if index is None:
            raise KeyError(f"unknown channel {name!r}")
        self._call(f"inject {name!r}", self._lib.ec_core_inject, index, value, int(status),
                   INJECT_NOW if t_ns is None else t_ns)

    def reset(self, rule: str | None = None, remote: bool = False) -> None:
        """Reset latched trips (all, or one) whose condition has cleared.

        A trip restored from the latch file is refused until a tick has evaluated it on fresh data.
        remote=True is a reset asked from afar (MQTT): the core itself refuses it unless the station
        allows remote reset, and never resets a local_reset_only rule nor a core fault."""
        index = -1 if rule is None else self._rule_index[rule]
        if remote:
            refused = self._lib.EC_EREFUSED
            err = self._ffi.new("char[]", ERRLEN)
            with self._lock:
                rc = self._lib.ec_core_reset_remote(self._core(), index, err, ERRLEN)
            if rc < 0:
                msg = self._ffi.string(err).decode(errors="replace")
                raise ResetRefused(rc, msg) if rc in (refused, self._lib.EC_ECONDITION) else CoreError(rc, msg)
            return
        self._call("reset", self._lib.ec_core_reset, index, refused=self._lib.EC_ECONDITION, exc=ResetRefused)

    def snapshot(self) -> CoreSnapshot:
        """Values, outputs, rules and the clock of one tick, in one C call (see ``CoreSnapshot``)."""
        ffi, s = self._ffi, self._snap_buf
        with self._lock:
            self._lib.ec_core_snapshot(self._core(), s)
            nc, nr = s.n_channels, s.n_rules
            return CoreSnapshot(self._names, s.tick, s.now_ns, ffi.unpack(s.value, nc), ffi.unpack(s.status, nc),
                                ffi.unpack(s.t_ns, nc), (s.levels, s.requested, s.forced, s.tripped, s.resettable),
                                s.first_out, ffi.unpack(s.threshold, nr))

    def latest(self) -> dict[str, ChannelValue]:
        return self.snapshot().values

    def value(self, name: str) -> ChannelValue:
        return self.latest()[name]

    def outputs(self) -> dict[str, OutputState]:
        return self.snapshot().outputs

    def rules(self) -> dict[str, RuleState]:
        return self.snapshot().rules

    def threshold(self, rule: str) -> float:
        """The rule's effective threshold (the configured one unless tightened)."""
        out = self._ffi.new("double *")
        self._plain(self._lib.ec_core_rule_threshold, self._rule_index[rule], out)
        return float(out[0])

    def tighten_rule(self, rule: str, threshold: float) -> None:
        """Make a high, low or agree rule stricter for a while (``threshold`` = the configured value
        restores it). The core refuses anything looser than the station configured, and any move back
        towards it while the rule is tripped (CoreError with the reason): Python can only add caution."""
        index = self._rule_index.get(rule)
        if index is None:
            raise KeyError(f"unknown rule {rule!r} (known: {', '.join(self.rule_names)})")
        self._call(f"rule {rule!r}", self._lib.ec_core_tighten_rule, index, float(threshold))

    def first_out(self) -> str | None:
        return next((n for n, r in self.rules().items() if r.first_out), None)

    def drain_samples(self, max_samples: int = 1 << 30) -> list[Sample]:
        out: list[Sample] = []
        n_ch = len(self.channel_names)
        for s in self.iter_samples(max_samples):
            out.append(Sample(s.tick, s.t_ns, s.outputs, s.tripped, tuple(s.value[0:n_ch]),
                              tuple(s.status[0:n_ch])))
        return out

    def iter_samples(self, max_samples: int = 1 << 30) -> Iterator[Any]:
        """Raw ec_sample records (cffi structs), for fast aggregation.

        Each record is the caller's own copy (about 0.6 us each): a view into a drain buffer could
        be overwritten by a later drain (another thread's) or outlive the buffer. The sample ring
        has one consumer: drain samples from one thread only."""
        left = max_samples
        buf = self._ffi.new("ec_sample[]", min(1024, max(left, 1)))
        while left > 0:
            n = self._plain(self._lib.ec_core_drain_samples, buf, min(1024, left))
            yield from [self._ffi.new("ec_sample *", buf[i]) for i in range(n)]
            left -= n
            if n < 1024:
                return

    def drain_events(self) -> list[CoreEvent]:
        events: list[CoreEvent] = []
        while True:
            with self._lock:
                n = self._lib.ec_core_drain_events(self._core(), self._events_buf, 256)
                events.extend(self._event(self._events_buf[i]) for i in range(n))
            if n < 256:
                return events

    def _name(self, names: tuple[str, ...], i: int) -> str | None:
        return names[i] if 0 <= i < len(names) else None

    def _event(self, e: Any) -> CoreEvent:
        lib = self._lib
        kind = EventKind(e.kind)
        rule = self._name(self.rule_names, e.rule)
        output = self._name(self.output_names, e.output)
        channel = self._name(self.channel_names, e.channel)
        detail = self._describe(kind, rule, output, channel, e)
        return CoreEvent(int(e.seq), kind, int(e.t_ns), int(e.wall_ns), rule, output, channel,
                         bool(e.flags & lib.EC_EVF_FIRST_OUT), bool(e.flags & lib.EC_EVF_SENSOR_BAD),
                         bool(e.flags & lib.EC_EVF_LOCAL_INPUT), float(e.value), float(e.threshold), detail)

    def _describe(self, kind: EventKind, rule: str | None, output: str | None, channel: str | None,
                  e: Any) -> str:
        if kind is EventKind.CORE_FAULT:
            return f"CORE FAULT ({self._fault_text(e.aux)}): every output safe, watchdog line stopped"
        if kind is EventKind.REFUSED and e.flags & self._lib.EC_EVF_CORE_FAULT:   # aux is the refusal, not bits
            return f"{output} refused: held safe by a core fault (reset needed)"
        if e.flags & self._lib.EC_EVF_CORE_FAULT:
            return f"core fault ({self._fault_text(e.aux)}) {kind.name.lower().replace('_', ' ')}"
        if kind is EventKind.TRIP and e.flags & self._lib.EC_EVF_LATCH_BAD:
            why = {self._lib.EC_LATCH_SHORT: "too short", self._lib.EC_LATCH_HEADER: "wrong magic or version",
                   self._lib.EC_LATCH_CHECKSUM: "checksum wrong"}.get(e.aux, "unreadable")
            return f"interlock {rule} held tripped: the latch file could not be trusted ({why}); reset needed"
        if kind is EventKind.TRIP and e.rule >= 0 and e.output >= 0:
            why = "feedback not OK" if e.flags & self._lib.EC_EVF_SENSOR_BAD else f"feedback {e.value:g}"
            first = " FIRST OUT" if e.flags & self._lib.EC_EVF_FIRST_OUT else ""
            return f"interlock {rule} tripped{first}: {output} written {e.aux} but {channel} {why}"
        if kind is EventKind.TRIP and e.flags & self._lib.EC_EVF_RESTORED:
            return f"interlock {rule} still tripped after a restart (latched: reset needed)"
        if kind is EventKind.TRIP:
            why = "sensor not OK" if e.flags & self._lib.EC_EVF_SENSOR_BAD else f"{e.value:g} vs {e.threshold:g}"
            first = " FIRST OUT" if e.flags & self._lib.EC_EVF_FIRST_OUT else ""
            return f"interlock {rule} tripped{first}: {channel or 'controller'} {why}"
        if kind is EventKind.REFUSED and e.aux == self._lib.EC_REFUSE_FORCED and e.rule < 0 and channel:
            return f"{output} refused: watchdog proof test running ({channel} must drop and pick up)"
        if kind is EventKind.REFUSED:
            if e.aux == self._lib.EC_REFUSE_FORCED:
                return f"{output} refused: held safe by interlock {rule}"
            return f"{output} refused: permissive on {channel} does not hold ({e.value:g})"
        if kind is EventKind.PERMISSIVE_DROP:
            return f"{output} dropped: permissive on {channel} stopped holding ({e.value:g})"
        if kind is EventKind.KEEPALIVE_DROP:
            return f"{output} dropped: not refreshed for {e.value:.0f} ms (max {e.threshold:g} ms)"
        if kind is EventKind.FORCED_SAFE:
            return f"{output} forced to its safe level by interlock {rule}"
        if kind in (EventKind.CLEAR, EventKind.RESET, EventKind.RESET_REFUSED):
            return f"interlock {rule} {kind.name.lower().replace('_', ' ')}"
        if kind is EventKind.OVERRUN:
            return f"sampler overrun: {e.value:.0f} tick(s) missed"
        if kind is EventKind.DRIVER_ERROR:
            return f"driver {self.spec.drivers[int(e.value)].name} {'write' if e.aux else 'read'} failed"
        return kind.name.lower()

    def _fault_text(self, bits: int) -> str:
        lib = self._lib
        names = [text for bit, text in ((lib.EC_FAULT_CLOCK_BACKWARDS, "clock went backwards"),
                                        (lib.EC_FAULT_CLOCK_STOPPED, "clock stopped"),
                                        (lib.EC_FAULT_OUTPUT_WRITE, "output write failed"),
                                        (lib.EC_FAULT_TICK_GAP, "sampler tick gap"),
                                        (lib.EC_FAULT_WATCHDOG_PROOF, "watchdog relay proof test failed"))
                 if bits & bit]
        return ", ".join(names) or "unknown"

    def stats(self) -> Stats:
        st = self._ffi.new("ec_stats *")
        self._plain(self._lib.ec_core_stats, st)
        return Stats(st.ticks, st.overruns, st.samples_lost, st.events_lost, st.jitter_max_ns, st.exec_max_ns,
                     st.sched == self._lib.EC_SCHED_FIFO, st.mlock == self._lib.EC_MLOCK_OK, bool(st.running),
                     tuple(st.jitter_hist), self._lib.EC_JITTER_BUCKET_NS, int(st.core_fault),
                     bool(st.proof_pending))

    def core_fault_text(self) -> str:
        """The latched core fault in words ("" when there is none): why every output is held safe."""
        bits = self.stats().core_fault
        return self._fault_text(bits) if bits else ""
