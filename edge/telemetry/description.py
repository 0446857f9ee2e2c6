"""The station description: what a consumer needs to read every other stream, as one retained message.

A dashboard must label an axis, a historian must know what a number means, and neither should have to
read the station file. So the station publishes, retained on ``reedge/v1/{site}/{station}/description``
(``mqtt_schemas/description.json``): its identity; every channel with its index (the order of the
core and of the telemetry), kind, unit, range, source and **resolution**; every output with its safe
level (the level a trip forces); every interlock with what trips it (channel, kind, threshold, debounce)
and what it forces safe; the permissives, alarms, loops, limiters and equipment limits; the process's
phase names and the recipes a ``start`` command may name; the software version and each sensor node's
firmware (as expected by the station file and as its HELLO reported it).

**Which description labels which data.** The body is written in the JSON Canonicalization Scheme
(RFC 8785, JCS: keys sorted, no whitespace, numbers as ECMAScript prints them, UTF-8) and its
SHA-256 over exactly those bytes is its identity: the birth (``status`` online) and every telemetry
window carry it as ``description_sha256``. A consumer either hashes the body bytes it received (the
envelope splices them unchanged) or re-canonicalises the parsed body with any JCS library; both give
the same digest. A window whose digest differs from the description it holds means: fetch the new one.

**When it is put**: once at every start (the retained message is fresh after a broker lost its store)
and again whenever its content changes while the station runs (a sensor node reporting another firmware
in its HELLO); a new station file or software version is a new start. It goes through the outbox like
any message: durable, its own sequence numbers (stream ``description``), never thinned.

**Resolution** (what telemetry values are rounded to; the core and the controller keep every digit,
only the published statistics are rounded): the channel's ``resolution`` key in the station file
(a step in its unit), else what its instrument delivers (a Pfeiffer gauge: 4 significant digits; a
Modbus integer register: its scale; a Modbus float32: 6 significant digits), else digital channels
0/1 and every other channel ``DEFAULT_DIGITS`` significant digits, which is finer than any sensor the
station reads and ends float noise such as ``20.899999999999995`` (published ``20.9``).
"""

from __future__ import annotations

import decimal
import hashlib
import json
import math
import pathlib
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any, Literal, NamedTuple

from edge import __version__
from edge.control.controller import SEQUENCERS
from edge.spec.alarms import DEVIATION_KINDS, AlarmSpec
from edge.spec.core import ChannelSpec, RuleSpec
from edge.spec.instruments.modbus import ModbusConfig
from edge.spec.instruments.pfeiffer import PfeifferConfig
from edge.spec.reader import SpecError
from edge.spec.recipe import STATION_KIND_OF
from edge.spec.recipe_reader import parse_recipe
from edge.spec.station import Station
from edge.telemetry.envelope import with_description
from edge.telemetry.session import MqttSession

DEFAULT_DIGITS = 6      # significant digits of a channel that names no resolution and has no instrument saying one
PFEIFFER_DIGITS = 4     # the gauge's u_expo_new reading: four significant digits (edge.devices.pfeiffer)
FLOAT32_DIGITS = 6      # what an IEEE float32 carries for certain
OTHER_PHASES = ("idle", "aborting", "done", "aborted")   # every process's phases outside its normal order
PROCESS_OF_KIND = {kind: process for process, kind in STATION_KIND_OF.items()}


class CanonicalError(ValueError):
    """A value that has no RFC 8785 form (NaN, infinity, a non-JSON type)."""


# ---- RFC 8785 (JCS) -------------------------------------------------------------------------------

def canonical(value: Any) -> bytes:
    """``value`` in the JSON Canonicalization Scheme (RFC 8785), UTF-8."""
    return _jcs(value).encode("utf-8")


def _jcs(v: Any) -> str:
    if v is None or isinstance(v, bool):
        return json.dumps(v)
    if isinstance(v, int):
        if abs(v) > 2 ** 53:
            raise CanonicalError(f"integer {v} is beyond what an IEEE double holds exactly")
        return str(v)
    if isinstance(v, float):
        return _es_number(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, Mapping):
        if not all(isinstance(k, str) for k in v):
            raise CanonicalError("object keys must be strings")
        # RFC 8785 sorts by UTF-16 code units; for the station's keys (ASCII names) that is Python's order
        keys = sorted(v, key=lambda k: k.encode("utf-16-be"))
        return "{" + ",".join(json.dumps(k, ensure_ascii=False) + ":" + _jcs(v[k]) for k in keys) + "}"
    if isinstance(v, list | tuple):
        return "[" + ",".join(_jcs(x) for x in v) + "]"
    raise CanonicalError(f"{type(v).__name__} is not a JSON value")


def _es_number(f: float) -> str:
    """ECMAScript's Number::toString (what RFC 8785 prescribes): shortest round-trip digits."""
    if not math.isfinite(f):
        raise CanonicalError(f"{f} has no JSON form")
    if f == 0:
        return "0"
    sign = "-" if f < 0 else ""
    t = decimal.Decimal(repr(abs(f))).normalize().as_tuple()
    digits = "".join(map(str, t.digits))
    k, n = len(digits), len(digits) + int(t.exponent)
    if k <= n <= 21:
        return sign + digits + "0" * (n - k)
    if 0 < n <= 21:
        return sign + digits[:n] + "." + digits[n:]
    if -6 < n <= 0:
        return sign + "0." + "0" * -n + digits
    e = n - 1
    mantissa = digits if k == 1 else digits[0] + "." + digits[1:]
    return f"{sign}{mantissa}e{'+' if e >= 0 else '-'}{abs(e)}"


# ---- resolution and rounding ----------------------------------------------------------------------

@dataclass(frozen=True)
class Resolution:
    """A channel's published resolution: a ``step`` in its unit, or ``digits`` significant digits."""

    step: float | None
    digits: int | None
    source: Literal["station", "instrument", "default"]

    def rounder(self) -> Callable[[float], float]:
        """The function telemetry values go through (finite floats only)."""
        if self.step is not None:
            step = self.step
            places = max(0, -int(decimal.Decimal(repr(step)).normalize().as_tuple().exponent))
            return lambda v: round(round(v / step) * step, places) + 0.0   # + 0.0: no -0.0
        fmt = f".{self.digits}g"
        return lambda v: float(format(v, fmt)) + 0.0


def resolution(station: Station, channel: ChannelSpec) -> Resolution:
    """Where a channel's resolution comes from (module docstring)."""
    if channel.resolution is not None:
        return Resolution(channel.resolution, None, "station")
    for inst in station.instruments.values():
        if isinstance(inst, PfeifferConfig) and inst.channel == channel.name:
            return Resolution(None, PFEIFFER_DIGITS, "instrument")
        if isinstance(inst, ModbusConfig):
            for measurement, target in inst.channels.items():
                reg = inst.registers.get(measurement)
                if target == channel.name and reg is not None:
                    if reg.type == "float32":
                        return Resolution(None, FLOAT32_DIGITS, "instrument")
                    return Resolution(abs(reg.scale), None, "instrument")
    if channel.kind == "digital":
        return Resolution(1.0, None, "default")
    return Resolution(None, DEFAULT_DIGITS, "default")


def rounders(station: Station) -> list[Callable[[float], float]]:
    """One rounding function per channel, in core order (the telemetry's)."""
    return [resolution(station, c).rounder() for c in station.core.channels]


# ---- the description ------------------------------------------------------------------------------

class Description(NamedTuple):
    body: bytes        # RFC 8785, what is published as the message's body
    sha256: str        # of ``body``: the ``description_sha256`` of the birth and of every window


def _bound(x: float) -> float | None:
    return x if math.isfinite(x) else None


def _channel(station: Station, index: int, c: ChannelSpec, sources: Mapping[str, dict[str, Any]]) -> dict[str, Any]:
    r = resolution(station, c)
    out: dict[str, Any] = {
        "index": index, "kind": c.kind, "unit": c.unit or ("degC" if c.kind == "thermocouple" else ""),
        "range": None if c.kind == "digital" else [_bound(c.range_lo), _bound(c.range_hi)],
        "resolution": r.step, "significant_digits": r.digits, "resolution_from": r.source,
        "source": sources.get(c.name) or ({"driver": c.driver, "input": c.input} if c.driver else None),
        "max_age_ms": c.max_age_ms or None,
    }
    if c.tc_type is not None:
        out["tc_type"] = c.tc_type
        out["cold_junction"] = c.cold_junction
    if c.kind == "digital":
        out["inverted"] = c.invert
    return out


_THRESHOLD_KINDS = ("high", "low", "rate_high", "rate_low", "digital", "discrepancy", "agree")


def _interlock(index: int, r: RuleSpec, units: Mapping[str, str]) -> dict[str, Any]:
    """What trips it (channel, kind, threshold in ``unit``: per minute for a rate) and what it forces safe."""
    unit = units.get(r.channel or "", "")
    return {"index": index, "kind": r.kind, "channel": r.channel, "channel2": r.channel2, "output": r.output,
            "unit": f"{unit}/min" if r.kind in ("rate_high", "rate_low") and unit else unit,
            "threshold": r.threshold if r.kind in _THRESHOLD_KINDS else None, "hysteresis": r.hysteresis,
            "soak_band": r.soak_band, "debounce_ms": r.debounce_ms, "latch": r.latch,
            "local_reset_only": r.local_reset_only, "forces_safe": list(r.action)}


def _alarm(a: AlarmSpec, units: Mapping[str, str]) -> dict[str, Any]:
    """An alarm with every key that decides when it is raised (``unit``: of threshold, hysteresis and band)."""
    unit = a.unit or units.get(a.channel, "")
    out: dict[str, Any] = {"kind": a.kind, "channel": a.channel, "severity": a.severity,
                           "unit": f"{unit}/min" if a.kind == "rate" and unit else unit,
                           "threshold": None if a.kind == "loop_break" else a.threshold, "hysteresis": a.hysteresis,
                           "delay_s": a.delay_s, "latch": a.latch, "inhibit_until_normal": a.inhibit_until_normal,
                           "message": a.message, "on_active": list(a.on_active)}
    if a.kind in DEVIATION_KINDS:
        out["loop"] = a.setpoint_of
        for key in ("follows_rise_per_min", "follows_fall_per_min"):     # inf (no limit) is no JSON number
            rate = float(getattr(a, key))
            out[key] = rate if math.isfinite(rate) else None
    if a.kind == "rate":
        out.update(window_s=a.window_s, direction=a.direction)
    if a.kind == "loop_break":
        out.update(output=a.output, band=a.band, limit=a.limit)
    return out


def describe(station: Station, *, window_s: float, firmware: Mapping[str, str | None],
             recipes: Mapping[str, dict[str, Any]]) -> dict[str, Any]:
    """The description's body as a dict (``mqtt_schemas/description.json``)."""
    core = station.core
    sources: dict[str, dict[str, Any]] = {}
    for name, inst in station.instruments.items():
        if isinstance(inst, PfeifferConfig):
            sources[inst.channel] = {"instrument": name, "type": "pfeiffer"}
        elif isinstance(inst, ModbusConfig):
            for measurement, ch in inst.channels.items():
                sources[ch] = {"instrument": name, "type": "modbus", "measurement": measurement}
    for name, node in station.sensor_nodes.items():
        for m in node.channels:
            sources[m.core] = {"sensor_node": name, "node_channel": m.node}
    units = {c.name: c.unit for c in core.channels}
    loop_of = {lp.output: lp.name for lp in station.loops}
    permissives: dict[str, list[dict[str, Any]]] = {}
    for p in core.permissives:
        cond: dict[str, Any] = {"channel": p.channel, "cmp": p.cmp, "value": p.value}
        if p.cmp == "in":
            cond["value2"] = p.value2
        permissives.setdefault(p.output, []).append(cond)
    process = PROCESS_OF_KIND.get(station.identity.kind)
    seq = SEQUENCERS.get(process or "")
    return {
        "station": {"site": station.identity.site, "id": station.identity.station_id,
                    "kind": station.identity.kind, "description": station.identity.description,
                    "board": station.board},
        "station_file": {"name": pathlib.Path(station.source).name, "sha256": station.content_sha256},
        "software": {"reedge": __version__},
        "firmware": {name: {"expected": node.expect_firmware, "reported": firmware.get(name)}
                     for name, node in station.sensor_nodes.items()},
        "telemetry": {"window_s": window_s, "default_significant_digits": DEFAULT_DIGITS},
        "core": {"period_ms": core.period_ms, "reset_input": core.reset_channel,
                 "watchdog_output": core.watchdog_output, "allow_remote_reset": station.allow_remote_reset},
        "channels": {c.name: _channel(station, i, c, sources) for i, c in enumerate(core.channels)},
        "outputs": {o.name: {"index": i, "safe_level": o.safe_level, "max_on_ms": o.max_on_ms or None,
                             "supplies": list(o.supplies), "loop": loop_of.get(o.name),
                             "watchdog": o.name == core.watchdog_output}
                    for i, o in enumerate(core.outputs)},
        "interlocks": {r.name: _interlock(i, r, units) for i, r in enumerate(core.rules)},
        "permissives": permissives,
        "limiters": {lim.name: {"senses": lim.senses, "setpoint_c": lim.setpoint_c, "opens": lim.opens,
                                "alarm_input": lim.alarm_input} for lim in station.limiters},
        "alarms": {a.name: _alarm(a, units) for a in station.alarms},
        "loops": {lp.name: {"pv": lp.pv, "output": lp.output} for lp in station.loops},
        "limits": {k: (list(v) if isinstance(v, tuple) else dict(v) if isinstance(v, Mapping) else v)
                   for k, v in asdict(station.limits).items()},
        "process": {"name": process, "phases": list(seq.PHASES) if seq is not None else [],
                    "other_phases": list(OTHER_PHASES)},
        "recipes": dict(recipes),
    }


def station_recipes(station: Station, folder: pathlib.Path | None) -> dict[str, dict[str, Any]]:
    """The recipes a ``start`` command may name (file stem -> name, version, SHA-256, phases): the files of
    ``folder`` that load as recipes of the station's process; other files are not recipes of this station."""
    out: dict[str, dict[str, Any]] = {}
    if folder is None:
        return out
    process = PROCESS_OF_KIND.get(station.identity.kind)
    try:
        files = sorted(folder.glob("*.toml"))
    except OSError:
        return out
    for path in files:
        try:
            raw = path.read_bytes()
            recipe = parse_recipe(raw.decode("utf-8"), str(path))
        except (OSError, UnicodeDecodeError, SpecError):
            continue
        if recipe.process == process:
            out[path.stem] = {"name": recipe.name, "version": recipe.version,
                              "sha256": hashlib.sha256(raw).hexdigest(), "phases": [p.name for p in recipe.phases]}
    return out


class Describer:
    """The station's current description; ``current`` rebuilds it only when a node's firmware changed.

    ``firmware`` (optional) gives each sensor node's firmware as its HELLO reported it (None while not
    linked); the last one reported is kept, so a link that drops does not change the description."""

    def __init__(self, station: Station, *, window_s: float, recipes_dir: pathlib.Path | None = None,
                 firmware: Callable[[], Mapping[str, str | None]] | None = None) -> None:
        self.station = station
        self.window_s = window_s
        self._firmware_of = firmware
        self._firmware: dict[str, str | None] = dict.fromkeys(station.sensor_nodes)
        self._recipes = station_recipes(station, recipes_dir)
        self._current = self._build()

    def _build(self) -> Description:
        body = canonical(describe(self.station, window_s=self.window_s, firmware=self._firmware,
                                  recipes=self._recipes))
        return Description(body, hashlib.sha256(body).hexdigest())

    def current(self) -> Description:
        if self._firmware_of is not None:
            changed = False
            for name, fw in self._firmware_of().items():
                if fw is not None and name in self._firmware and self._firmware[name] != fw:
                    self._firmware[name] = fw
                    changed = True
            if changed:
                self._current = self._build()
        return self._current


class DescribedSession(MqttSession):
    """The MQTT session whose birth names the current description (``description_sha256``).

    The birth is built by ``MqttSession`` on its network thread at every connect; this adds one field to
    it (``edge.telemetry.envelope.with_description``). ``description_sha256`` is set by the publisher
    before ``start`` and whenever the description changes (a str assignment: atomic for the reader)."""

    description_sha256: str | None = None

    def _birth(self) -> bytes:
        return with_description(super()._birth(), self.description_sha256)

