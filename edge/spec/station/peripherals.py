"""[instruments.*], [sensor_nodes.*], [mqtt] and [accounting]: what the Python side talks to and reports."""

from __future__ import annotations

from collections.abc import Collection, Mapping

from edge.spec.access import CommandSettings
from edge.spec.access import read_settings as _read_command_settings
from edge.spec.accounting import AccountingConfig
from edge.spec.broker import BrokerSettings
from edge.spec.broker import read_broker_settings as _read_broker_settings
from edge.spec.core import (
    ChannelSpec,
    OutputSpec,
)
from edge.spec.instruments import InstrumentConfig, instrument_kinds
from edge.spec.instruments.modbus import ModbusConfig, shared_port_problems
from edge.spec.instruments.pfeiffer import PfeifferConfig
from edge.spec.reader import Table as _Table
from edge.spec.reader import integer_in as _integer_in
from edge.spec.reader import join as _join
from edge.spec.reader import number as _number
from edge.spec.reader import number_in as _number_in
from edge.spec.reader import string as _string
from edge.spec.reader import text as _text
from edge.spec.reader import unknown as _unknown
from edge.spec.sensor_node import ChannelMap, OutputMap, SensorNodeConfig
from edge.spec.station.values import (
    _named_tables,
)

# ============================================================================ [instruments.*]


def read_instruments(top: _Table, channels: Mapping[str, ChannelSpec | None]) -> dict[str, InstrumentConfig]:
    """[instruments.NAME]: serial instruments the Python side polls and injects (``edge.devices``), read by the
    kind its ``type`` names (``edge.spec.instruments``): a Pfeiffer gauge feeds one injected channel, a Modbus
    instrument any of its measurements. No channel is fed twice (two sources would interleave silently);
    Modbus instruments on one port are one bus."""
    section = top.table("instruments", expected="[instruments.NAME] tables")
    if section is None:
        return {}
    kinds = instrument_kinds()
    found: dict[str, InstrumentConfig] = {}
    fed: dict[str, str] = {}
    for name, t in _named_tables(section):
        if t is None:
            continue
        kind = t.data.get("type")
        read = kinds.get(kind) if isinstance(kind, str) else None
        if read is None:
            t.report("type", _unknown("instrument type", str(kind), kinds))
            t.accept(*t.data)
            continue
        cfg = read(t)            # the kind's reader checks every key of its table
        if not isinstance(cfg, PfeifferConfig | ModbusConfig):
            continue
        if isinstance(cfg, ModbusConfig):
            if _check_modbus_channels(t, name, cfg, channels, fed):
                found[name] = cfg
            continue
        channel = channels.get(cfg.channel)
        if cfg.channel not in channels:
            t.report("channel", _unknown("channel", cfg.channel, channels))
        elif channel is not None and channel.kind != "injected":
            t.report("channel", f"{cfg.channel!r} is a {channel.kind} channel: an instrument feeds an injected one")
        elif cfg.channel in fed:
            t.report("channel", f"{cfg.channel!r} is already fed by instruments.{fed[cfg.channel]}")
        else:
            fed[cfg.channel] = name
            found[name] = cfg
    _check_instrument_ports(section, found)
    return found


def _check_modbus_channels(t: _Table, name: str, cfg: ModbusConfig, channels: Mapping[str, ChannelSpec | None],
                           fed: dict[str, str]) -> bool:
    """Each ``channels`` target is an injected channel with a max age (a silent meter must go STALE) that
    nothing else feeds."""
    ok = True
    ct = _Table(t.problems, cfg.channels, _join(t.path, "channels"))
    for meas, target in cfg.channels.items():
        spec = channels.get(target)
        if target not in channels:
            ct.report(meas, _unknown("channel", target, channels))
        elif spec is not None and (spec.kind != "injected" or spec.max_age_ms <= 0):
            ct.report(meas, f"{target!r} must be an injected channel with max_age_ms (it is {spec.kind})")
        elif spec is not None and spec.max_age_ms < 2 * cfg.poll_ms:
            ct.report(meas, f"{target!r} has max_age_ms {spec.max_age_ms:g}, less than two polls ({cfg.poll_ms:g} ms"
                            " each): it would go STALE between answers")
        elif target in fed:
            ct.report(meas, f"{target!r} is already fed by instruments.{fed[target]}")
        else:
            fed[target] = name
            continue
        ok = False
    return ok


def _check_instrument_ports(section: _Table, found: Mapping[str, InstrumentConfig]) -> None:
    """One port is one bus with one protocol: its Modbus instruments share the serial settings and
    each has its own address; a Pfeiffer gauge cannot share a port with Modbus instruments."""
    modbus = [(n, c) for n, c in found.items() if isinstance(c, ModbusConfig)]
    for name, key, message in shared_port_problems(modbus):
        section.problems.add(_join(_join(section.path, name), key), message)
    modbus_ports = {c.port: n for n, c in reversed(modbus)}
    for name, cfg in found.items():
        if isinstance(cfg, PfeifferConfig) and cfg.port in modbus_ports:
            section.problems.add(_join(_join(section.path, name), "port"),
                                  f"{cfg.port} is the Modbus bus of instruments.{modbus_ports[cfg.port]}: "
                                  "a port carries one protocol")


def instrument_feeds(instruments: Mapping[str, InstrumentConfig]) -> dict[str, str]:
    """Injected channel -> the instrument feeding it."""
    feeds: dict[str, str] = {}
    for name, cfg in instruments.items():
        targets = cfg.channels.values() if isinstance(cfg, ModbusConfig) else (cfg.channel,)
        feeds.update((target, f"instruments.{name}") for target in targets)
    return feeds


# ============================================================================ [sensor_nodes.*]


_NODE_KEYS = ("port", "node_id", "firmware", "config_hash", "baudrate", "keepalive_ms", "channels", "outputs")


def read_sensor_nodes(top: _Table, channels: Mapping[str, ChannelSpec | None],
                       outputs: Mapping[str, OutputSpec | None], fed: Mapping[str, str]) -> dict[str, SensorNodeConfig]:
    """[sensor_nodes.NAME]: MicroPython nodes on a serial link (``edge.devices.node.client``). Their channels
    feed injected channels with a max age (a quiet node must make them STALE); their outputs follow core outputs."""
    section = top.table("sensor_nodes", expected="[sensor_nodes.NAME] tables")
    if section is None:
        return {}
    found: dict[str, SensorNodeConfig] = {}
    feeders = dict(fed)
    for name, t in _named_tables(section):
        if t is None:
            continue
        t.accept(*_NODE_KEYS)
        port = t.need("port", _text(4096), "the node's serial port (a /dev/serial/by-id name)")
        maps: list[ChannelMap] = []
        table = t.table("channels", expected="a table: node channel = { core = \"channel\", scale, offset }")
        for node_ch, entry in (_named_tables(table) if table is not None else []):
            if entry is None:
                continue
            entry.accept("core", "scale", "offset")
            core = entry.need("core", _text(64), "the injected core channel it feeds")
            scale = entry.get("scale", _number, 1.0)
            offset = entry.get("offset", _number, 0.0)
            entry.finish()
            if core is None:
                continue
            spec = channels.get(core)
            if core not in channels:
                entry.report("core", _unknown("channel", core, channels))
            elif spec is not None and (spec.kind != "injected" or spec.max_age_ms <= 0):
                entry.report("core", f"{core!r} must be an injected channel with max_age_ms (it is {spec.kind})")
            elif core in feeders:
                entry.report("core", f"{core!r} is already fed by {feeders[core]}")
            else:
                feeders[core] = f"sensor_nodes.{name}"
                maps.append(ChannelMap(node_ch, core, scale, offset))
        outs: list[OutputMap] = []
        table = t.table("outputs", expected="a table: node output = \"core output\"")
        for node_out in list(table.data) if table is not None else []:
            assert table is not None
            core_out = table.get(node_out, _text(64))
            if core_out is not None and core_out not in outputs:
                table.report(node_out, _unknown("output", core_out, outputs))
            elif core_out is not None:
                outs.append(OutputMap(node_out, core_out))
        baudrate = t.get("baudrate", _integer_in(300, 4_000_000), 115200)
        keepalive = t.get("keepalive_ms", _number_in(20.0, 10_000.0), 200.0)
        node_id, firmware, config_hash = (t.get(k, _text(64)) for k in ("node_id", "firmware", "config_hash"))
        t.finish()
        if port is None:
            continue
        try:
            found[name] = SensorNodeConfig(name=name, port=port, channels=tuple(maps), outputs=tuple(outs),
                                           baudrate=baudrate, keepalive_ms=keepalive, expect_node_id=node_id,
                                           expect_firmware=firmware, expect_config_hash=config_hash)
        except ValueError as exc:
            t.report(None, str(exc))
    return found


# ============================================================================ [mqtt]


def read_mqtt(top: _Table) -> tuple[CommandSettings, BrokerSettings]:
    """[mqtt]: who may command the station ([mqtt.roles]) and how commands are checked ([mqtt.commands]),
    read by ``edge.spec.access``; which brokers and how to reach them (``brokers``, TLS files,
    credentials), read by ``edge.spec.broker``. Each documents its keys."""
    t = top.table("mqtt", expected="a table [mqtt]")
    if t is None:
        return CommandSettings(), BrokerSettings()
    commands = _read_command_settings(t)
    connection = _read_broker_settings(t)
    t.finish()
    return commands, connection

# ============================================================================ [accounting]


_ACCOUNTING_METERS = {"energy": "kWh", "h2": "NL", "ar": "NL", "cooling_water": "L"}


def read_accounting(top: _Table, instruments: Mapping[str, object], outputs: Mapping[str, OutputSpec | None],
                     channels: Mapping[str, ChannelSpec | None],
                     loop_outputs: Collection[str] | None) -> AccountingConfig:
    """[accounting]: the meter counters a batch record's energy and gas come from (``edge.batch``), the
    heaters' rated power for the duty model, the grid's emission factor. Absent: a record without meters."""
    t = top.table("accounting", expected="an [accounting] table")
    if t is None:
        return AccountingConfig()
    sources: dict[str, str | None] = {}
    meters_checked: list[tuple[str, float, bool]] = []      # meter, its poll period + timeout, does it wrap
    for meter, unit in _ACCOUNTING_METERS.items():
        src = t.get(meter, _string)
        sources[meter] = None
        if src is None:
            continue
        inst_name, _, measurement = src.partition(".")
        registers = getattr(instruments.get(inst_name), "registers", None)
        declared = top.data.get("instruments")
        if inst_name not in instruments and isinstance(declared, dict) and inst_name in declared:
            continue          # declared with errors of its own, reported there: no follow-on error here
        if inst_name not in instruments:
            t.report(meter, _unknown("instrument", inst_name, instruments)
                     + f" (expected \"instrument.measurement\", a counter in {unit})")
        elif registers is None:
            t.report(meter, f"instruments.{inst_name} has no counters (a Modbus meter has)")
        elif measurement not in registers:
            t.report(meter, _unknown(f"measurement of instruments.{inst_name}", measurement, registers))
        elif registers[measurement].kind != "counter":
            t.report(meter, f"{src} is a {registers[measurement].kind}, not a counter: the batch figure is the "
                            "difference of a totaliser")
        elif registers[measurement].unit != unit:
            t.report(meter, f"{src} counts {registers[measurement].unit or 'no unit'}, the record counts {unit}"
                            f" (give the register scale and unit = \"{unit}\")")
        elif src in sources.values():
            t.report(meter, f"{src} is already the {next(m for m, v in sources.items() if v == src)} meter")
        else:
            sources[meter] = src
            poll_s = float(getattr(instruments[inst_name], "poll_ms", 0.0)) / 1000.0
            timeout_s = float(getattr(instruments[inst_name], "timeout_ms", 0.0)) / 1000.0
            wraps = registers[measurement].rollover is not None
            if registers[measurement].type in ("int16", "int32"):
                t.report(meter, f"{src} is a signed register: a totaliser counts up (use uint16 / uint32)")
            meters_checked.append((meter, poll_s + timeout_s, wraps))
    rated: dict[str, float] = {}
    rated_t = t.table("heater_rated_kw", expected="a table: duty output = rated kW")
    if rated_t is not None:
        for name in list(rated_t.data):
            kw = rated_t.get(name, _number_in(0.0, 10_000.0, lo_open=True))
            if name not in outputs:
                rated_t.report(name, _unknown("output", name, outputs))
            elif loop_outputs is not None and name not in loop_outputs:
                rated_t.report(name, f"{name} is not driven by a control loop: the model needs a heater's duty")
            elif kw is not None:
                rated[name] = kw
    rates: dict[str, float] = {}
    rates_t = t.table("max_rate_per_h", expected="a table: meter = the most it can count per hour")
    if rates_t is not None:
        for name in list(rates_t.data):
            rate = rates_t.get(name, _number_in(0.0, 1e9, lo_open=True))
            if name not in _ACCOUNTING_METERS:
                rates_t.report(name, _unknown("meter", name, _ACCOUNTING_METERS))
            elif rate is not None:
                rates[name] = rate
    pressure = t.get("pressure_channel", _string, "chamber_pressure")
    temperature = t.get("temperature_channel", _string, "chamber_temp")
    volume = t.get("free_volume_l", _number_in(0.0, 1e6, lo_open=True))
    for key, name in (("pressure_channel", pressure), ("temperature_channel", temperature)):
        if volume is not None and name not in channels:
            t.report(key, _unknown("channel", name, channels))
    gap_s = t.get("gap_s", _number_in(1.0, 86_400.0), 60.0)
    close_wait_s = t.get("close_wait_s", _number_in(0.0, 3600.0), 30.0)
    for meter, poll_s, wraps in meters_checked:
        rate_given = meter in rates or (rates_t is not None and rates_t.has_error(meter))
        if wraps and not rate_given:
            t.report("max_rate_per_h", f"{meter}: {sources[meter]} wraps: give the most it can count per hour"
                                       f" (max_rate_per_h.{meter}), or a reset cannot be told from a roll-over")
        if gap_s < 3 * poll_s:
            t.report("gap_s", f"{gap_s:g} s is less than three polls of {sources[meter]} ({poll_s:g} s each):"
                              " every late answer would be a gap")
        if close_wait_s < poll_s:
            t.report("close_wait_s", f"{close_wait_s:g} s is less than one poll of {sources[meter]} ({poll_s:g} s"
                                     " with its timeout): its end reading could never come in time")
    cfg = AccountingConfig(
        energy=sources["energy"], h2=sources["h2"], ar=sources["ar"], cooling_water=sources["cooling_water"],
        heater_rated_kw=rated, max_rate_per_h=rates,
        grid_kg_co2e_per_kwh=t.get("grid_kg_co2e_per_kwh", _number_in(0.0, 10.0)),
        gap_s=gap_s,
        close_wait_s=close_wait_s,
        trend_every_s=t.get("trend_every_s", _number_in(0.1, 3600.0), 10.0),
        free_volume_l=volume, pressure_channel=pressure, temperature_channel=temperature)
    for sub in (rated_t, rates_t, t):
        if sub is not None:
            sub.finish()
    return cfg
