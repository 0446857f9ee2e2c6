"""The record of one batch: kept in ``STATE_DIR/batches/ID/``, continued across a power loss, published at its end.

A ``BatchRecorder`` runs beside the controller (``reedge run`` calls ``scan`` after every controller scan,
on the same thread) and keeps, for the batch the controller runs:

- ``record.json``: what went in (recipe text and hash, operator, feed and its mass), what was done (every
  phase with its times, every trip, alarm, operator action and recovery, the power losses it came through),
  what it consumed (metered energy, H2, Ar, cooling water, each with its gaps and whether it is complete;
  the heater-duty model beside the energy; the H2 absorbed by an HD charge) and what came out (mass out,
  yield), with the derived figures (kWh/kg, NL/kg, kg CO2e/kg at the station's grid factor). It is written
  whole and atomically (temporary file, fsync, rename, fsync of the folder) at every change and every few
  seconds, with a SHA-256 over its content: after a crash it is the previous version or the new one, and
  a damaged file is detected, never trusted;
- ``trend.csv``: one row of every channel, the setpoint and the heater duty every ``trend_every_s`` (the
  report's process plot), appended and synced with the record.

**One record across a power loss.** The record is ``open`` until the sequence finishes. When the controller
comes back and recovers the batch (``Controller.recover``), the recorder finds the open record of that
batch id and continues it: the phase that was running is closed where the controller's run state was last
saved, the outage is listed in ``interruptions``, the meter trackers carry on from their saved state (the
meters' own totalisers counted through the outage, so nothing consumed in it is lost), and the trend file
goes on. The recorder's own state is under the record's checksum: a damaged one is set aside, never trusted.
An open record whose batch was not recovered (the run state was lost) is closed at start-up as aborted, its
figures incomplete. A batch id names one record, ever: ``Controller.start_batch`` refuses a used one.

**The end.** When the sequence reaches ``done`` or ``aborted`` the meters' windows close at that instant and
the record waits (at most ``close_wait_s``) for a reading of every meter taken at or after it: the share of
the last poll interval that lies before the end counts, the rest does not. A meter that does not answer in
that time leaves its figure incomplete. The record then becomes ``end`` (revision 1), its accounting fixed
once and for all, and is what the publisher sends on the ``batch`` stream. A mass out weighed later
(``set_mass_out``) amends it: revision 2, published again; consumers keep the highest revision.

**The disk may refuse.** Every write may fail (full, read-only, a broken folder): the failure is reported
once per streak and the write tried again at the next scan; the controller's scan never stops for it.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import hashlib
import io
import json
import math
import os
import pathlib
import time
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from edge.batch import quality
from edge.batch.accounting import CounterTracker, meter_fault
from edge.control.controller import BATCH_ID
from edge.files import write_atomic
from edge.spec.accounting import AccountingConfig
from edge.timestamps import rfc3339_ms

if TYPE_CHECKING:
    from edge.control.controller import Controller, ProcessEvent
    from edge.spec.station import Station

FORMAT = "reedge-batch-record"
VERSION = 1
RECORD_FILE = "record.json"
TREND_FILE = "trend.csv"
BATCHES_DIR = "batches"
MAX_EVENTS = 400          # per record; more are counted (the record goes out in one MQTT message)
MAX_PHASES = 200
MAX_INTERRUPTIONS = 50
MAX_TO_PUBLISH = 20       # batch messages kept for a publisher (none without MQTT)
TREND_WRITE_S = 1.0       # wall seconds between appends of the buffered trend rows (fsync'd with the record)
NL_PER_MOL = 22.414       # normal litres (0 degC, 1.01325 bar) per mole of ideal gas
R = 8.314
METERS = (("energy", "kWh"), ("h2", "NL"), ("ar", "NL"), ("cooling_water", "L"))
RECORDED_KINDS = frozenset({"trip", "alarm", "operator", "recovery", "refused"})   # controller event kinds kept


class RecordError(RuntimeError):
    """A record folder that cannot be used: missing, unreadable, or damaged (its checksum fails)."""


def batch_dir(state_dir: pathlib.Path, batch_id: str) -> pathlib.Path:
    if not BATCH_ID.fullmatch(batch_id):
        raise RecordError(f"batch id {batch_id!r} cannot name a folder (letters, digits, . _ : -; at most 64)")
    return state_dir / BATCHES_DIR / batch_id


def _digest(doc: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def write_record(folder: pathlib.Path, body: dict[str, Any], trend: dict[str, Any],
                 local: dict[str, Any] | None = None) -> None:
    """Atomically replace ``folder/record.json``. ``local``: the recorder's own state (tracker totals, times),
    under the same checksum: a continued record is only as right as that state."""
    doc: dict[str, Any] = {"format": FORMAT, "version": VERSION, "body": body, "trend": trend, "recorder": local}
    doc["sha256"] = _digest(doc)
    write_atomic(folder / RECORD_FILE, json.dumps(doc, indent=1, allow_nan=False).encode(), mode=0o640)


def read_record(folder: pathlib.Path) -> dict[str, Any]:
    """The whole document of ``folder/record.json``, checked (format, version, sha256, a body);
    RecordError says what is wrong in one sentence."""
    folder = pathlib.Path(folder)
    if not folder.is_dir():
        raise RecordError(f"{folder}: no such batch folder")
    path = folder / RECORD_FILE
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise RecordError(f"{path}: no batch record there") from exc
    except (OSError, ValueError) as exc:
        raise RecordError(f"{path}: unreadable ({exc})") from exc
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or doc.get("version") != VERSION:
        raise RecordError(f"{path}: not a {FORMAT} version {VERSION} file")
    checked = {k: doc.get(k) for k in ("format", "version", "body", "trend", "recorder")}
    if doc.get("sha256") != _digest(checked):
        raise RecordError(f"{path}: record damaged (its checksum does not match its content)")
    if not isinstance(doc.get("body"), dict):
        raise RecordError(f"{path}: record damaged (it has no body)")
    return doc


def _start_index(ctl: Controller, batch_id: str) -> int | None:
    """Where ``batch_id``'s start event is in ``ctl.events`` (None: not there)."""
    return next((i for i in range(len(ctl.events) - 1, -1, -1) if ctl.events[i].kind == "batch"
                 and dict(ctl.events[i].data.get("batch") or {}).get("id") == batch_id), None)


def _ts(unix_s: float) -> str:
    return rfc3339_ms(int(unix_s * 1e9))


def _num(v: float | None, nd: int = 6) -> float | None:
    return None if v is None or not math.isfinite(v) else round(v, nd)


class BatchRecorder:
    """Keeps the record of the controller's batch (module docstring). ``scan`` once per controller scan.

    Every file operation is allowed to fail (a full or read-only disk, a broken folder): the failure is
    reported once per streak and tried again at the next scan; control never stops for the record."""

    def __init__(self, state_dir: pathlib.Path, station: Station, *, site: str, station_id: str,
                 config: AccountingConfig | None = None, say: Callable[[str], None] | None = None,
                 save_every_s: float = 5.0, save_clock: Callable[[], float] = time.monotonic) -> None:
        self.state_dir = state_dir
        self.station = station
        self.site, self.station_id = site, station_id
        self.cfg = config or AccountingConfig()
        self.say = say or (lambda text: None)
        self.save_every_s = save_every_s       # controller (wall) seconds between periodic saves
        # paces the saves and the trend's appends: the wall clock; the plant's (slowed down) in the lockstep rig,
        # where what a power loss leaves on disk must be the same every run
        self.save_clock = save_clock
        self.trackers: dict[str, CounterTracker] = {}
        self._by_source: dict[tuple[str, str], CounterTracker] = {}
        for meter, unit in METERS:
            src = self.cfg.source(meter)
            if src is None:
                continue
            inst, _, meas = src.partition(".")
            rate = self.cfg.max_rate_per_h.get(meter)
            tracker = CounterTracker(meter, src, unit, gap_s=self.cfg.gap_s,
                                     max_rate=math.inf if rate is None else rate / 3600.0)
            self.trackers[meter] = tracker
            self._by_source[(inst, meas)] = tracker
        self._heater_kwh = 0.0                           # the controller's heater model of this batch
        self.body: dict[str, Any] | None = None
        self.folder: pathlib.Path | None = None
        self.channels = [c.name for c in station.core.channels]
        self.outputs = [o.name for o in station.core.outputs if o.name != station.core.watchdog_output]
        units = {c.name: c.unit or ("degC" if c.kind == "thermocouple" else "") for c in
                 station.core.channels}
        self.trend_meta = {"file": TREND_FILE, "units": {"setpoint_c": "degC", "heater_duty": "1", **units,
                                                         **dict.fromkeys(self.outputs, "level")}}
        self.current: dict[str, Any] | None = None       # the body as last written (what is published)
        self._events_seen = 0
        self._end: float | None = None                   # unix time the sequence finished (waiting or ended)
        self._started = 0.0                              # unix time the batch started
        self._next_trend = -math.inf
        self._last_save = -math.inf
        self._dirty = False
        self._urgent = False                             # save at the next scan whatever the rate limit
        self._h2_absorbed: float | None = None
        self._soak_s = 0.0                               # plant seconds inside the soak band (quality)
        self._soak_prev: float | None = None             # core time of the last scan inside it
        self._clocks = (0.0, 0.0)                        # (wall, core) read together by _now: what _unix maps by
        self._trend_buf = io.StringIO()                  # rows not yet appended to trend.csv
        self._trend_ready = False                        # the trend file has its header
        self._trend_written = -math.inf                  # monotonic time rows were last appended
        self._unusable: set[str] = set()                 # batch ids without a record (reported once)
        self._failing: str | None = None                 # the file error of the current streak
        self._final: tuple[str, str | None] | None = None  # outcome and reason when the sequence finished
        self.to_publish: list[tuple[str, dict[str, Any]]] = []   # ("start" | "end", body) for the batch stream

    # ---- input ----

    def feed(self, ctl: Controller, samples: Iterable[Any]) -> None:
        """Counter readings drained from the meters (``edge.devices.modbus.CounterSample``), core-clock stamped."""
        now_ns, wall = ctl.core.now_ns(), ctl.wall_clock()
        for s in samples:
            tracker = self._by_source.get((s.instrument, s.measurement))
            if tracker is not None:
                tracker.add(wall - (now_ns - s.t_ns) / 1e9, float(s.value), s.rollover)

    def forget_events(self, n: int) -> None:
        """The caller deleted the first ``n`` of ``ctl.events`` (all of them seen by a scan)."""
        self._events_seen = max(0, self._events_seen - n)

    def id_in_use(self, batch_id: str) -> str | None:
        """Why ``batch_id`` cannot name a new batch (it has a record already), or None."""
        try:
            folder = batch_dir(self.state_dir, batch_id)
            used = folder.exists() or (self.body is not None and self.body["batch_id"] == batch_id)
        except (RecordError, OSError) as exc:
            return f"batch id {batch_id}: {exc}"
        if used:
            return f"batch id {batch_id} has a record already ({folder}): give the new batch its own id"
        return None

    @property
    def closing(self) -> bool:
        """The sequence finished and the record waits for the meters' end readings."""
        return self.body is not None and self.body["record"] == "open" and self._end is not None

    def scan(self, ctl: Controller, samples: Iterable[Any] = ()) -> None:
        try:
            self._scan(ctl, samples)
        except (OSError, ValueError) as exc:
            self._io_failed(exc)

    def _io_failed(self, exc: BaseException) -> None:
        text = f"batch record: {type(exc).__name__}: {exc} (tried again at the next scan; control goes on)"
        if text != self._failing:
            self.say(text)
        self._failing = text
        self._dirty = True

    def _scan(self, ctl: Controller, samples: Iterable[Any]) -> None:
        batch_id = str(ctl.batch.get("id") or "")
        now = self._now(ctl)
        if batch_id and batch_id not in self._unusable and (self.body is None or self.body["batch_id"] != batch_id):
            if self.body is not None and self.body["record"] == "open":
                # the last batch's own events up to the new one's start, then (waiting for its end readings, or
                # left open by a restart that started a new batch at once) it is finished with what it has
                upto = _start_index(ctl, batch_id)
                for e in ctl.events[self._events_seen:len(ctl.events) if upto is None else upto]:
                    self._event(ctl, e, now)
                self._finish(ctl, self._end if self._end is not None else now)
            self._open(ctl, batch_id)
        body = self.body
        if body is None or body["record"] == "end":
            self.feed(ctl, samples)            # the meters are followed between batches too (the next baseline)
            self._events_seen = len(ctl.events)
            if body is not None and self._dirty:
                self._save(now, force=True)    # a write that failed is tried again
            return
        # the events first: the final phase closes the meters' windows before this scan's readings go in
        for e in ctl.events[self._events_seen:]:
            self._event(ctl, e, now)
        self._events_seen = len(ctl.events)
        self.feed(ctl, samples)
        self._heater_kwh = ctl.heater_model.kwh
        if self._end is None:
            self._soak(ctl)
            self._quality(ctl)
        if now >= self._next_trend:
            self._trend_row(ctl, now)
            self._next_trend = now + self.cfg.trend_every_s
        if self.save_clock() - self._trend_written >= TREND_WRITE_S:
            self.flush_trend(sync=False)       # into the page cache: a killed process loses nothing of it
        if self._end is not None:
            waiting = [t for t in self.trackers.values() if not t.has_reading_after(self._end)]
            if not waiting or now - self._end >= self.cfg.close_wait_s:
                self._finish(ctl, self._end)
                return
        self._save(now, force=False)

    # ---- the record ----

    def _open(self, ctl: Controller, batch_id: str) -> None:
        try:
            folder = batch_dir(self.state_dir, batch_id)
        except RecordError as exc:
            self.say(f"batch record: {exc}; this batch has no local record")
            self._unusable.add(batch_id)
            self.body, self.folder = None, None
            return
        now = self._now(ctl)
        self.folder, self._end, self._final, self._trend_ready = folder, None, None, False
        self._trend_buf = io.StringIO()
        if (folder / RECORD_FILE).exists():
            try:
                doc = read_record(folder)
                self._continue(ctl, doc, now)
                return
            except (RecordError, KeyError, TypeError, ValueError) as exc:
                kept = folder / f"{RECORD_FILE}.damaged-{int(time.time())}"
                os.replace(folder / RECORD_FILE, kept)
                self.say(f"batch record: {exc}; kept as {kept.name}, a new record is started (its figures"
                         " cannot cover the time before)")
        self._new(ctl, batch_id, now)

    def _new(self, ctl: Controller, batch_id: str, now: float) -> None:
        assert ctl.recipe is not None
        start = _start_index(ctl, batch_id)
        # the start on the same clock pair as its first phase (entered at the same core instant): the wall
        # clock read apart from the core's put the first phase a few ms before "Started"
        started = (self._unix(ctl.events[start].t_s) if start is not None
                   else float(ctl.batch.get("started_unix_s") or now))
        for tracker in self.trackers.values():
            tracker.open_window(started)
        self._heater_kwh = ctl.heater_model.kwh
        recipe = ctl.recipe
        feed_mass = ctl.batch.get("mass_in_kg")
        self.body = {
            "record": "open", "revision": 0, "batch_id": batch_id, "process": recipe.process,
            "site": self.site, "station": self.station_id,
            "recipe": {"name": str(ctl.batch.get("recipe") or recipe.name)[:200],
                       "sha256": str(ctl.batch.get("recipe_sha256")), "version": recipe.version,
                       "text": recipe.text},
            "operator": str(ctl.batch.get("operator", ""))[:64],
            "feed": {"description": str(ctl.batch.get("feed", ""))[:500],
                     "mass_in_kg": None if feed_mass is None else float(feed_mass)},
            "product": {"mass_out_kg": None, "yield_pct": None},
            "started": _ts(started), "ended": None, "duration_s": None, "outcome": "running", "reason": None,
            "phases": [], "events": [], "events_not_listed": 0, "interruptions": [], "accounting": {},
            "quality": quality.empty(),
        }
        self._started, self._h2_absorbed = started, None
        self._soak_s, self._soak_prev = 0.0, None
        # this batch's events from its start on (the first phase, anything in the first scan)
        seq = ctl.sequencer
        if start is not None:
            self._events_seen = start + 1
        else:                   # its start event is gone (trimmed, a restart): the sequence's own record
            self._events_seen = len(ctl.events)
            for change in seq.changes if seq is not None else ():
                self._phase(change.phase, self._unix(change.t_s))
                if seq is not None and change.phase in seq.FINAL:
                    self._final_phase(seq, self._unix(change.t_s))
            if seq is not None and seq.finished and self._end is None:
                self._final_phase(seq, now)     # recovered finished, its record lost: it ends here
        self._publish("start")
        self._trend_header()
        self._dirty = True
        self._save(now, force=True)

    def _continue(self, ctl: Controller, doc: dict[str, Any], now: float) -> None:
        """The record of this batch id is on disk: a restart. KeyError & co: its state is damaged."""
        body, local = doc["body"], doc["recorder"]
        started, h2_absorbed = float(local["started_unix"]), local["h2_absorbed_nl"]
        end, heater_kwh, saved = local["end_unix"], float(local["heater_model_kwh"]), float(local["saved_unix"])
        phase_t = list(local["phase_t"])
        snaps = dict(local["trackers"])
        for meter, tracker in self.trackers.items():
            if meter in snaps:
                tracker.restore(snaps[meter])
        self.body, self._started, self._h2_absorbed = body, started, h2_absorbed
        body.setdefault("quality", quality.empty())      # a record written before there was one
        self._soak_s, self._soak_prev = float(local.get("soak_in_band_s") or 0.0), None
        self._end = None if end is None else float(end)
        final = local.get("final")
        self._final = None if final is None else (str(final[0]), None if final[1] is None else str(final[1]))
        for phase, t in zip(body["phases"], phase_t, strict=False):
            phase["_t"] = t
        self._heater_kwh = heater_kwh     # until the next scan reads the recovered controller's
        self._events_seen = 0            # this boot's events (the controller's recovery report) are the record's
        if body["record"] == "end":
            self._events_seen = len(ctl.events)
            self.current = self._public_body()
            self._publish("start")              # the publisher sends what it has not sent yet (it remembers)
            self._publish("end")
            return
        self._publish("start")
        since = getattr(ctl, "outage_from_unix", None)
        since = saved if since is None else max(min(float(since), now), started)
        if body["phases"] and body["phases"][-1]["ended"] is None:
            self._close_phase(since)
        if len(body["interruptions"]) < MAX_INTERRUPTIONS:
            how = ("controller stopped and started again" if local.get("stopped")
                   else "controller restarted after a power loss or a crash")
            body["interruptions"].append({"from": _ts(since), "to": _ts(max(now, since)),
                                          "outage_s": round(max(now - since, 0.0), 3),
                                          "message": f"{how}; batch recovered"})
        seq = ctl.sequencer           # a batch resumed in place enters no phase: open it again
        if seq is not None and seq.running and not any(e.kind == "phase" for e in ctl.events):
            self._phase(seq.phase, now)
        self._next_trend = -math.inf
        self._trend_header()
        self._dirty = True
        self._save(now, force=True)

    def _now(self, ctl: Controller) -> float:
        """The wall clock, and the core clock read with it: every core time until the next call maps through this
        one pair (``_unix``), so times of one instant (the batch's start, its first phase) map to one time."""
        core = ctl.now_s()
        self._clocks = (ctl.wall_clock(), core)
        return self._clocks[0]

    def _unix(self, t_s: float) -> float:
        """A core-clock time of this boot as unix time on the controller's wall-clock seam (the last ``_now``)."""
        wall, core = self._clocks
        return wall - (core - t_s)

    def _quality(self, ctl: Controller) -> None:
        """The sequencer's measured figures (while it is this batch's) and the soak time into the record."""
        assert self.body is not None
        seq = ctl.sequencer
        mine = seq is not None and ctl.batch.get("id") == self.body["batch_id"]
        quality.merge(self.body["quality"], seq.results if seq is not None and mine else {}, self._soak_s)

    def _soak(self, ctl: Controller) -> None:
        """Add this scan's time inside the soak band (both ends of the interval inside; none across a restart)."""
        t = ctl.now_s()
        if ctl.bands.in_band and self._soak_prev is not None:
            self._soak_s += max(t - self._soak_prev, 0.0)
        self._soak_prev = t if ctl.bands.in_band else None

    def _event(self, ctl: Controller, e: ProcessEvent, now: float) -> None:
        t = self._unix(e.t_s)
        if e.kind == "phase":
            phase = str(e.data.get("phase"))
            previous = str(e.data.get("previous"))
            if previous == "absorption":
                self._note_h2_absorbed(ctl)
            self._phase(phase, t)
            seq = ctl.sequencer
            if seq is not None and phase in seq.FINAL and self._end is None:
                self._final_phase(seq, t)
        elif e.kind in RECORDED_KINDS:
            if e.kind == "alarm":
                self._count_alarm(e)
            name = e.data.get("rule") or e.data.get("alarm") or e.data.get("output")
            if e.kind == "alarm" and e.data.get("state") not in (None, "raised"):
                return        # raised alarms are the record's; clears and acks are in the event stream
            self._add_event(t, e.kind, None if name is None else str(name), e.message)

    def _count_alarm(self, e: ProcessEvent) -> None:
        """The batch's nuisance alarms (chattering raises, fleeting clears) and deviation-alarm rests (the
        program asked for more than the plant follows): a badly set alarm shows in the record (ISA-18.2)."""
        assert self.body is not None
        q = self.body["quality"]
        for key, counts in (("nuisance_alarms", e.data.get("nuisance") is True),
                            ("deviation_alarm_rests", e.data.get("state") == "rested")):
            if counts:
                q[key] = int(q.get(key) or 0) + 1
                self._dirty = True

    def _final_phase(self, seq: Any, t: float) -> None:
        """The sequence finished at ``t``: its outcome is kept now (a new batch may replace it before the end
        readings come) and the meters' windows close."""
        self._end = t
        self._final = (str(seq.phase), None if seq.abort_reason is None else str(seq.abort_reason))
        for tracker in self.trackers.values():
            tracker.close_window(t)

    def _phase(self, phase: str, t: float) -> None:
        assert self.body is not None
        phases = self.body["phases"]
        if phases and phases[-1]["ended"] is None:
            self._close_phase(t)
        self._dirty = self._urgent = True     # a phase change is on disk at once (a crash must not lose it)
        if phase in ("done", "aborted"):
            return
        if len(phases) < MAX_PHASES:
            phases.append({"phase": phase, "started": _ts(t), "ended": None, "duration_s": None, "_t": t})

    def _close_phase(self, t: float) -> None:
        assert self.body is not None
        last = self.body["phases"][-1]
        start = float(last.get("_t", t))
        last["ended"], last["duration_s"] = _ts(max(t, start)), round(max(t - start, 0.0), 3)

    def _add_event(self, t: float, kind: str, name: str | None, message: str) -> None:
        assert self.body is not None
        if kind == "trip":
            self.body["quality"]["interlock_trips"] += 1
        if len(self.body["events"]) < MAX_EVENTS:
            self.body["events"].append({"ts": _ts(t), "kind": kind, "name": name, "message": message[:500]})
        else:
            self.body["events_not_listed"] += 1
        self._dirty = True
        self._urgent = self._urgent or kind == "trip"

    def _note_h2_absorbed(self, ctl: Controller) -> None:
        """H2 fed so far minus the H2 still in the retort's gas, when absorption ends (HD: ideal gas in the
        free volume at the charge temperature; an estimate, stated as such in the report)."""
        tracker, vol = self.trackers.get("h2"), self.cfg.free_volume_l
        if tracker is None or vol is None or tracker.first is None:
            return
        r = ctl.readings()
        p_bar, t_c = r.get(self.cfg.pressure_channel, math.nan), r.get(self.cfg.temperature_channel, math.nan)
        if not (math.isfinite(p_bar) and math.isfinite(t_c) and p_bar >= 0.0 and t_c > -200.0):
            return
        gas_nl = p_bar * 1e5 * (vol / 1000.0) / (R * (t_c + 273.15)) * NL_PER_MOL
        self._h2_absorbed = max(tracker.total - gas_nl, 0.0)
        self._dirty = True

    def _accounting(self, t_end: float | None) -> dict[str, Any]:
        assert self.body is not None
        meters: dict[str, Any] = {}
        for meter, _ in METERS:
            tracker = self.trackers.get(meter)
            meters[meter] = None if tracker is None else tracker.quantity(self._started, t_end)
            if meters[meter] is not None:
                for key in ("first", "last"):
                    if meters[meter][key] is not None:
                        r = meters[meter][key]
                        meters[meter][key] = {"ts": _ts(r["t"]), "value": r["value"]}
                meters[meter]["gaps"] = [{"from": _ts(g["from"]), "to": _ts(g["to"]), "duration_s": g["duration_s"]}
                                         for g in meters[meter]["gaps"]]
        energy = meters["energy"]
        kwh = None if energy is None else energy["value"]
        rated = sum(self.cfg.heater_rated_kw.values())
        fault = meter_fault(kwh, self._heater_kwh if rated else None)
        if fault is not None and energy is not None:     # a figure counted by a wrong meter is no figure
            energy["complete"] = False
            energy["notes"].append(fault)
        factor = self.cfg.grid_kg_co2e_per_kwh
        co2 = None if kwh is None or factor is None else kwh * factor
        mass = self.body["feed"]["mass_in_kg"]

        def per_kg(v: float | None) -> float | None:
            return None if v is None or not mass else _num(v / mass)

        return {
            "meters": meters,
            "heater_model_kwh": _num(self._heater_kwh) if rated else None,
            "heater_rated_kw": rated or None,
            "h2_absorbed_nl": _num(self._h2_absorbed),
            "grid_kg_co2e_per_kwh": factor,
            "kg_co2e": _num(co2),
            "per_kg": {"kwh": per_kg(kwh), "nl_h2": per_kg(meters["h2"] and meters["h2"]["value"]),
                       "nl_ar": per_kg(meters["ar"] and meters["ar"]["value"]), "kg_co2e": per_kg(co2)},
            "complete": any(q is not None for q in meters.values()) and all(
                q["complete"] for q in meters.values() if q is not None),
        }

    def _finish(self, ctl: Controller, end: float) -> None:
        """The record becomes ``end``: its accounting is fixed here, once (later readings change nothing)."""
        body = self.body
        assert body is not None
        seq = ctl.sequencer
        if body["phases"] and body["phases"][-1]["ended"] is None:
            self._close_phase(end)
        body["record"], body["revision"] = "end", 1
        body["ended"], body["duration_s"] = _ts(end), round(max(end - self._started, 0.0), 3)
        if self._final is not None:
            outcome, reason = self._final
        elif seq is not None and seq.finished and ctl.batch.get("id") == body["batch_id"]:
            outcome, reason = seq.phase, seq.abort_reason
        else:
            outcome, reason = "aborted", "a new batch started while this one's record was still open"
        body["outcome"] = outcome if outcome in ("done", "aborted") else "aborted"
        body["reason"] = None if reason is None or body["outcome"] == "done" else str(reason)[:1000]
        for tracker in self.trackers.values():
            tracker.close_window(end)
        body["accounting"] = self._accounting(end)
        self._quality(ctl)
        self._end = end
        now = ctl.wall_clock()
        with contextlib.suppress(OSError, ValueError):     # a last trend row; the record matters more
            self._trend_row(ctl, now)
        self._dirty = True
        self._publish("end")
        if self._save(now, force=True):
            self.say(f"batch record {body['batch_id']}: {body['outcome']}, written to {self.folder}")

    def set_mass_out(self, kg: float, now: float) -> None:
        """The product's mass, weighed at unloading (or later). Amends a finished record (a new revision).
        ValueError for a bad mass, or when the amended record cannot be written (then nothing changed)."""
        body = self.body
        if body is None:
            raise ValueError("no batch record to add a mass to")
        if isinstance(kg, bool) or not isinstance(kg, int | float) or not math.isfinite(kg) or not 0 < kg <= 1e5:
            raise ValueError(f"mass out must be a number of kg above 0 and at most 100000, got {kg!r}")
        before = (body["product"], body["revision"])
        mass_in = body["feed"]["mass_in_kg"]
        body["product"] = {"mass_out_kg": float(kg),          # a new dict: what was published is not touched
                           "yield_pct": None if not mass_in else round(100.0 * kg / mass_in, 3)}
        if body["record"] == "end":
            body["revision"] += 1
        self._dirty = True
        if not self._save(now, force=True):
            body["product"], body["revision"] = before
            raise ValueError(f"the record could not be written ({self._failing}): mass out not recorded")
        if body["record"] == "end":
            self._publish("end")

    # ---- files ----

    def _publish(self, kind: str, body: dict[str, Any] | None = None) -> None:
        """Queue a start or end message (a copy: later changes of the record do not change it). The publisher
        takes them in order and remembers what it sent (batch-records.json), so a repeat after a restart is
        dropped there; without MQTT nobody takes them and only the newest few are kept."""
        if body is None:
            if self.body is None:
                return
            body = self._public_body()
        self.to_publish.append((kind, copy.deepcopy(body)))
        del self.to_publish[:-MAX_TO_PUBLISH]

    def take_published(self) -> list[tuple[str, dict[str, Any]]]:
        out, self.to_publish = self.to_publish, []
        return out

    def _public_body(self) -> dict[str, Any]:
        """The body as recorded and published: a finished record's accounting as fixed at its end."""
        assert self.body is not None
        out = dict(self.body)
        out["phases"] = [{k: v for k, v in p.items() if not k.startswith("_")} for p in self.body["phases"]]
        if self.body["record"] != "end":
            out["accounting"] = self._accounting(None)
        return out

    def _save(self, now_unix: float, *, force: bool, stopped: bool = False) -> bool:
        """Write the record if due; True when it is on disk."""
        if self.body is None or self.folder is None:
            return False
        wall = self.save_clock()
        force = force or self._urgent
        if not (force or self._dirty or wall - self._last_save >= self.save_every_s):
            return True
        if not force and wall - self._last_save < min(1.0, self.save_every_s):
            return False                      # many events in a burst (alarms): one write a second at most
        body = self._public_body()
        local = {"started_unix": self._started, "saved_unix": now_unix, "heater_model_kwh": self._heater_kwh,
                 "soak_in_band_s": self._soak_s,
                 "h2_absorbed_nl": self._h2_absorbed, "end_unix": self._end, "stopped": stopped,
                 "final": None if self._final is None else list(self._final),
                 "trackers": {m: t.snapshot() for m, t in self.trackers.items()},
                 "phase_t": [p.get("_t") for p in self.body["phases"]]}
        try:
            self.flush_trend()
            write_record(self.folder, body, self.trend_meta, local)
        except (OSError, ValueError) as exc:
            self._io_failed(exc)
            return False
        if self._failing is not None:
            self.say(f"batch record: {self.folder / RECORD_FILE} written again")
        self._failing = None
        self._last_save, self._dirty, self._urgent = wall, False, False
        self.current = body
        return True

    # trend

    def _trend_header(self) -> None:
        assert self.folder is not None
        path = self.folder / TREND_FILE
        if not path.exists():
            self.folder.mkdir(parents=True, exist_ok=True)
            with open(path, "w", newline="") as f:
                csv.writer(f).writerow(["unix_s", "setpoint_c", "heater_duty", *self.channels, *self.outputs])
        self._trend_ready = True

    def _trend_row(self, ctl: Controller, now: float) -> None:
        readings = ctl.readings()
        outs = ctl.core.outputs()

        def cell(v: float | None) -> str:
            return "" if v is None or not math.isfinite(v) else f"{v:.6g}"

        duty = max(ctl.last_duties.values(), default=math.nan)
        sp = ctl.last_demand.setpoint_c
        row = [f"{now:.3f}", cell(sp), cell(duty), *(cell(readings.get(c)) for c in self.channels),
               *(str(outs[o].level) if o in outs else "" for o in self.outputs)]
        csv.writer(self._trend_buf).writerow(row)

    def flush_trend(self, sync: bool = True) -> None:
        """The buffered trend rows into the file; ``sync``: onto the disk (with the record's save)."""
        if self.folder is None:
            return
        self._trend_written = self.save_clock()
        if not self._trend_ready:
            self._trend_header()
        with open(self.folder / TREND_FILE, "a", newline="") as f:
            f.write(self._trend_buf.getvalue())
            f.flush()
            self._trend_buf = io.StringIO()   # written: a failing fsync must not write the rows twice
            if sync:
                os.fsync(f.fileno())

    def close(self, ctl: Controller) -> None:
        """At stop: everything on disk. A running batch's record stays open (the next start continues it);
        a finished one waiting for end readings is finished now (a meter without one: incomplete)."""
        if self.body is None:
            return
        try:
            now = self._now(ctl)
            if self.body["record"] == "end":
                if self._dirty:
                    self._save(now, force=True)
                return
            for e in ctl.events[self._events_seen:]:
                self._event(ctl, e, now)
            self._events_seen = len(ctl.events)
            if self._end is not None:
                self._finish(ctl, self._end)
                return
            self._dirty = True
            self._save(now, force=True, stopped=True)
        except (OSError, ValueError) as exc:
            self._io_failed(exc)

    def close_orphans(self, ctl: Controller) -> list[str]:
        """Open records of batches the controller did not recover (its run state was lost or replaced): each is
        finished as aborted, its figures marked incomplete (nobody recorded the rest). Their ids."""
        root = self.state_dir / BATCHES_DIR
        current = str(ctl.batch.get("id") or "")
        closed: list[str] = []
        try:
            folders = sorted(root.iterdir()) if root.is_dir() else []
        except OSError as exc:
            self.say(f"batch record: {root}: cannot look for open records: {exc}")
            return closed
        for folder in folders:
            try:
                if folder.name == current or not (folder / RECORD_FILE).is_file():
                    continue
                doc = read_record(folder)
                body = doc["body"]
                if body["record"] != "open":
                    continue
                local = doc["recorder"]
                # it ended when its sequence finished, if it did (then it only missed its end readings)
                ended = float(local["end_unix"] if local.get("end_unix") is not None else local["saved_unix"])
                final = local.get("final") or ["aborted", None]
                outcome = final[0] if final[0] in ("done", "aborted") else "aborted"
                body.update(record="end", revision=1, outcome=outcome, ended=_ts(ended),
                            reason=(final[1] or "") + ("; " if final[1] else "") + "the controller restarted without"
                                   " this batch (its run state was lost or replaced): the record was closed at its"
                                   " last save")
                body["duration_s"] = round(max(ended - float(local["started_unix"]), 0.0), 3)
                acc = body["accounting"]
                acc["complete"] = False
                for q in acc.get("meters", {}).values():
                    if q is not None:
                        q["complete"] = False
                        q["notes"].append("the record was abandoned: what was used after its last save is missing")
                if body["phases"] and body["phases"][-1]["ended"] is None:
                    body["phases"][-1]["ended"] = _ts(ended)
                write_record(folder, body, doc["trend"], dict(doc["recorder"], end_unix=ended))
                self._publish("end", body)
            except (RecordError, OSError, KeyError, TypeError, ValueError) as exc:
                self.say(f"batch record: {folder}: an open record could not be closed: {exc}")
                continue
            self.say(f"batch record {folder.name}: open without its batch; closed as aborted, figures incomplete")
            closed.append(folder.name)
        return closed

