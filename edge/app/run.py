"""``reedge run``: the controller of one station, as it runs beside the furnace (and on the HIL rig).

One process: the C core samples and guards in its own thread; this loop scans the process
controller once per ``scan_s`` of core time, feeds the serial instruments, reports every event,
answers operator commands and tells systemd it is alive. On start it first recovers a batch a
power loss interrupted (``Controller.recover``), then starts the batch it was asked for.

Output: one line per event for the journal, or JSON lines with ``--json`` (what the HIL rig
reads): ``{"type": "ready"|"event"|"status"|"reply"|"exit", ...}``. The journal gets what changed:
a status line when the phase or the hold changes, never a heartbeat (the periodic status, every
``STATUS_EVERY_S`` with the instruments' counters, is ``--json``'s and MQTT's); each instrument's port
state change is an event (``connection``, from ``edge.devices.serial_device``). The state dir is checked
at start (``_check_state_dir``: a technician's sentence, not the core's ``latch file ...`` error) and
before every batch (``Controller.storage_check``). Operator commands, one JSON object
per line on stdin with ``--commands stdin`` (``edge.app.stdin_commands``), and MQTT commands go through the
one operator-command path (``edge.operator``): the same verbs and checks. ``{"cmd": "record_mass",
"mass_out_kg": 24.8}`` is the product weighed at unloading, for the batch record (``batch_id`` is optional
on stdin: the current batch).

**The batch record** (``edge.batch.record``): every scan, the meters' counter readings and the
controller's events go into the record of the running batch in ``STATE_DIR/batches/ID/``; the
publisher sends it on the ``batch`` stream.

**MQTT** (``edge.telemetry.publisher``): with a broker in the station file's ``[mqtt]`` or given
with ``--broker`` (which replaces the station's list; ``--site``/``--station-id`` replace the
topic identity), every scan turns what is new (telemetry windows, events, batch records, state)
into outbox messages in the state dir, and MQTT commands, validated and authorised, drive the
same Controller methods on this thread; each is answered, and also reported here as a ``reply``
line with ``"source": "mqtt"``. On shutdown the outbox is flushed for ``--mqtt-flush-s``; what
is left is sent at the next start. The core is stopped *before* that flush (``_stop_core``):
the controller no longer steers, so every output goes to its safe level at once, and a stopped
core has no dead-man to trip; a flush that waits for a broker that is down would otherwise run
past the dead-man and latch a ``controller_deadman`` trip into the latch file, and the restart
would come back tripped. Commands that arrive from the end of the scan loop on are answered
"station stopping", never executed (``Publisher.stop``). Without a broker the controller runs without MQTT and says so
once on stderr: ``reedge run`` never starts a broker of its own (a station publishing into a
broker nobody reads would look healthy while every message went nowhere).

**On the virtual rig** (``--rig DIR``, the binding the rig wrote: ``edge.app.rig_binding``; never on a
real station): the sim driver's register file and the serial ports are the rig's; the core's clock is
the plant's, so the controller-liveness timeouts (the dead-man, output keep-alives, injected-channel
ages) are multiplied by the time scale: they guard the software, whose speed does not scale with the
plant's clock, and keep their wall-clock meaning. Outages are measured on the plant's clock too
(it runs on through a simulated power loss). ``SIGUSR1`` hangs the scan loop for the
controller-hang scenario: the core's dead-man, not this process, must make the plant safe.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import pathlib
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TextIO

from edge.app.rig_binding import RigBinding
from edge.app.stdin_commands import Line, StdinCommands, answer
from edge.app.systemd import Notifier
from edge.batch.record import BatchRecorder
from edge.control.controller import SAVE_EVERY_S, BatchRejected, Controller, ProcessEvent
from edge.control.tuning import LoopTuning, TuneRejected, result_fields
from edge.core import Core, CoreEvent
from edge.devices.modbus import ModbusBus
from edge.devices.node.client import SensorNode
from edge.devices.pfeiffer import GaugePoller
from edge.devices.serial_device import LinkChange
from edge.files import writable_problem
from edge.operator.execute import Operator
from edge.operator.target import ControllerTarget
from edge.spec.broker import BrokerSettings, BrokerSettingsError, BrokerUrlError, Protocol, parse_broker_list
from edge.spec.instruments.modbus import ModbusConfig
from edge.spec.instruments.pfeiffer import PfeifferConfig
from edge.spec.reader import SpecError
from edge.spec.recipe import Recipe
from edge.spec.recipe_reader import load_recipe
from edge.spec.station import Station, load_station
from edge.spec.station.layers import safety_layers
from edge.telemetry.aggregate import DEFAULT_WINDOW_S, MAX_WINDOW_S, MIN_WINDOW_S
from edge.telemetry.outbox import DEFAULT_QUOTA
from edge.telemetry.publisher import DEFAULT_FLUSH_S, Publisher, PublisherSettings
from edge.telemetry.session import SessionEvent
from edge.telemetry.topics import TopicError, check_level

STATUS_EVERY_S = 1.0     # wall seconds between --json status lines (and on every change)
END_READINGS_WAIT_S = 3.0  # at stop right after a batch ended, how long to wait for the meters' end readings


class RunError(RuntimeError):
    """Something the technician must fix before the controller can run (printed, exit 2)."""


@dataclass
class TuneRequest:
    """``reedge autotune``: tune this loop instead of running a batch, then stop; ``result`` is what the tune
    this run started came to (``tune_result``: ``state`` "done" with the gains, or "failed" with ``why``)."""

    loop: str
    setpoint_c: float
    result: dict[str, Any] | None = None
    tuning: LoopTuning | None = None     # the tune this request started: its result, no other's


@dataclass
class Devices:
    """The serial devices of a running station and the batch recorder fed by them (one per ``reedge run``)."""

    recorder: BatchRecorder
    pollers: dict[str, GaugePoller] = dataclasses.field(default_factory=dict)     # Pfeiffer gauges
    buses: list[ModbusBus] = dataclasses.field(default_factory=list)              # Modbus meters, one per port
    nodes: dict[str, SensorNode] = dataclasses.field(default_factory=dict)        # MicroPython sensor nodes

    def firmware(self) -> dict[str, str | None]:
        """Each sensor node's firmware as its HELLO reported it (None: not linked), for the MQTT description."""
        return {n: (h.firmware if (h := node.hello) is not None else None) for n, node in self.nodes.items()}

    def link_changes(self) -> list[LinkChange]:
        """Every instrument's port state changes since the last call (opened, could not open, lost, reopened)."""
        changes = [dataclasses.replace(c, device=f"gauge {name}")      # by the station file's instrument name
                   for name, p in self.pollers.items() for c in p.drain_link_changes()]
        changes += [c for bus in self.buses for c in bus.drain_link_changes()]
        return changes + [c for node in self.nodes.values() for c in node.drain_link_changes()]

    def counter_samples(self) -> list[Any]:
        return [s for bus in self.buses for s in bus.drain_samples()]

    def status(self) -> dict[str, Any]:
        instruments = {n: dataclasses.asdict(p.counters()) for n, p in self.pollers.items()}
        for bus in self.buses:
            instruments.update({n: dataclasses.asdict(c) for n, c in bus.counters().items()})
        return {"instruments": instruments,
                "sensor_nodes": {n: dataclasses.asdict(node.stats()) for n, node in self.nodes.items()}}


@dataclass
class RunOptions:
    station: pathlib.Path
    state_dir: pathlib.Path
    recipe: pathlib.Path | None = None
    batch_id: str | None = None
    operator: str = ""
    feed: str = ""                         # what was loaded (batch record)
    mass_in_kg: float | None = None
    scan_s: float = 1.0
    json_lines: bool = False
    commands_stdin: bool = False
    exit_when_done: bool = False
    rig: pathlib.Path | None = None
    broker: str | None = None              # --broker: replaces the station's [mqtt] brokers
    mqtt_protocol: Protocol | None = None  # --mqtt-protocol: replaces [mqtt] protocol
    site: str | None = None                # --site / --station-id: the topic identity
    station_id: str | None = None
    recipes_dir: pathlib.Path | None = None   # recipes for MQTT start commands (default: beside --recipe)
    telemetry_window_s: float = DEFAULT_WINDOW_S
    outbox_quota_bytes: int = DEFAULT_QUOTA
    mqtt_flush_s: float = DEFAULT_FLUSH_S
    autotune: TuneRequest | None = None    # reedge autotune: a loop's tune instead of a batch, then stop


class Reporter:
    """Events and status out, one line each: human-readable for the journal, or JSON for a machine."""

    def __init__(self, json_lines: bool, stream: TextIO = sys.stdout) -> None:
        self.json_lines = json_lines
        self.stream = stream
        self._lock = threading.Lock()

    def write(self, line_type: str, text: str, **fields: Any) -> None:
        with self._lock:
            if self.json_lines:
                line = json.dumps(_finite({"type": line_type, **fields, "message": text}), default=str)
            else:
                line = f"{fields.get('kind', line_type)}: {text}"
            try:
                self.stream.write(line + "\n")
                self.stream.flush()
            except (BrokenPipeError, ValueError):
                pass                 # the reader went away (rig stopped): control goes on

    def event(self, e: ProcessEvent) -> None:
        data = {k: (v.kind.name.lower() if isinstance(v, CoreEvent) else v) for k, v in e.data.items()}
        self.write("event", e.message, t_s=e.t_s, kind=e.kind, data=data)


def _finite(value: Any) -> Any:
    """Strict JSON: a NaN reading (a broken sensor) goes out as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def _hang(signum: int, frame: object) -> None:
    """The controller-hang scenario: the scan loop blocks for good, the core thread runs on."""
    while True:
        time.sleep(3600)


def broker_settings(station: Station, opts: RunOptions) -> BrokerSettings | None:
    """The loaded station's ``[mqtt]`` broker settings, ``--broker`` replacing its brokers (the file's TLS
    files, login and timings kept, even in a file that names no broker) and ``--mqtt-protocol`` its protocol;
    None when there is no broker at all."""
    settings = station.broker
    if opts.broker is not None:
        try:
            brokers = parse_broker_list(opts.broker)
        except BrokerUrlError as exc:
            raise RunError(f"--broker: {exc}") from exc
        try:
            settings = station.mqtt.with_brokers(brokers)
        except BrokerSettingsError as exc:   # the file's [mqtt] keys do not fit these brokers: say where they are
            raise RunError("\n".join(f"{station.source}: mqtt.{key}: {message} (with --broker {opts.broker})"
                                     for key, message in exc.problems)) from exc
    if settings is not None and opts.mqtt_protocol is not None:
        try:
            settings = dataclasses.replace(settings, protocol=opts.mqtt_protocol)
        except BrokerUrlError as exc:
            raise RunError(f"--mqtt-protocol: {exc}") from exc
    return settings


def _publisher_settings(station: Station, opts: RunOptions) -> PublisherSettings | None:
    """What the publisher needs, every option checked before anything starts; None without a broker."""
    broker = broker_settings(station, opts)
    if broker is None:
        return None
    if not MIN_WINDOW_S <= opts.telemetry_window_s <= MAX_WINDOW_S:
        raise RunError(f"--telemetry-window-s must be {MIN_WINDOW_S} to {MAX_WINDOW_S}, got {opts.telemetry_window_s}")
    if not opts.mqtt_flush_s >= 0:
        raise RunError(f"--mqtt-flush-s must not be negative, got {opts.mqtt_flush_s}")
    try:
        site = check_level(opts.site or station.identity.site, "--site")
        station_id = check_level(opts.station_id or station.identity.station_id, "--station-id")
    except TopicError as exc:
        raise RunError(str(exc)) from exc
    return PublisherSettings(broker=broker, site=site, station=station_id, state_dir=opts.state_dir,
                             window_s=opts.telemetry_window_s, quota_bytes=opts.outbox_quota_bytes,
                             history_bytes=broker.history_mb << 20)    # [mqtt] history_mb, MiB


def _recipes_dir(station: Station, opts: RunOptions) -> pathlib.Path:
    """Where ``start`` commands find recipes: ``--recipes-dir``, else beside ``--recipe``, else beside the station."""
    return opts.recipes_dir or (opts.recipe.parent if opts.recipe is not None else station.source.parent)


def _session_event(ev: SessionEvent) -> None:
    """Connection news for the journal (the session's own log records would repeat them)."""
    with contextlib.suppress(OSError, ValueError):
        print(f"mqtt {ev.kind} {ev.broker}: {ev.detail}", file=sys.stderr, flush=True)


def run(opts: RunOptions) -> int:
    reporter = Reporter(opts.json_lines)
    notifier = Notifier()
    station = load_station(opts.station)
    mqtt_settings = _publisher_settings(station, opts)
    if mqtt_settings is None:
        print(f"reedge run: no MQTT broker configured ([mqtt] brokers in {opts.station}) or given (--broker):"
              " running without MQTT, nothing is published", file=sys.stderr, flush=True)
    binding = RigBinding.read(opts.rig) if opts.rig is not None else None
    if binding is not None:
        station = binding.apply(station)
        signal.signal(signal.SIGUSR1, _hang)
    elif any(d.type == "sim" for d in station.core.drivers) and not all(
            os.path.exists(d.params.get("path", "")) for d in station.core.drivers if d.type == "sim"):
        raise RunError("the station uses the sim driver but its register file does not exist: start the "
                       f"virtual plant first, `reedge plant {opts.station}`, and run the `reedge run ... --rig DIR` "
                       "line it prints (reedge demo / reedge hil run start their own)")
    recipe = None
    if opts.recipe is not None:
        try:
            recipe = load_recipe(opts.recipe)
        except SpecError as exc:
            raise RunError("\n".join(str(e) for e in exc.errors)) from exc
    _check_state_dir(opts.state_dir)
    spec = station.core
    if spec.latch_file is None:
        spec = dataclasses.replace(spec, latch_file=str(opts.state_dir / "latched-trips"))
        station = dataclasses.replace(station, core=spec)
    elif (why := writable_problem(pathlib.Path(spec.latch_file).parent, write=False)) is not None:
        raise RunError(f"the latch file's folder {pathlib.Path(spec.latch_file).parent} ([core] latch_file in "
                       f"{station.source}) cannot be written: {why}. Latched trips must survive a restart: make "
                       "it writable, or remove latch_file to keep them in the state dir, then start again")

    stop = threading.Event()

    def on_term(signum: int, frame: object) -> None:
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):    # SIGHUP: the SSH session or terminal went away
        signal.signal(sig, on_term)
    commands = StdinCommands(sys.stdin) if opts.commands_stdin else None

    with Core(spec) as core, contextlib.ExitStack() as instruments:
        scale = binding.time_scale if binding is not None else 1.0
        save_every_s = SAVE_EVERY_S if binding is None else max(SAVE_EVERY_S / scale, 0.05)
        # the record's periodic save is not scaled on the rig: a continued record needs only its counters' state
        # (the meters count through an outage), and phase changes and trips are written at once anyway
        devices = Devices(BatchRecorder(opts.state_dir, station, site=opts.site or station.identity.site,
                                        station_id=opts.station_id or station.identity.station_id,
                                        config=station.accounting, say=_say, save_every_s=SAVE_EVERY_S))
        meters: list[tuple[str, ModbusConfig]] = []
        for name, inst in station.instruments.items():
            if binding is not None and name in binding.serial:
                inst = dataclasses.replace(inst, port=binding.serial[name])
            if isinstance(inst, PfeifferConfig):
                devices.pollers[name] = GaugePoller(core, inst)
                devices.pollers[name].start()
                instruments.callback(devices.pollers[name].stop)
            else:
                meters.append((name, inst))
        if meters:                     # one worker thread per serial port, all its meters polled in turn
            bus = ModbusBus(core, meters)
            bus.start()
            instruments.callback(bus.stop)
            devices.buses.append(bus)
        for name, node_cfg in station.sensor_nodes.items():
            if binding is not None and name in binding.serial:
                node_cfg = dataclasses.replace(node_cfg, port=binding.serial[name])
            devices.nodes[name] = SensorNode(node_cfg, core)
            devices.nodes[name].start()
            instruments.callback(devices.nodes[name].stop)   # a stopped link: the node's dead-man drops its outputs
        clock: Callable[[], float] = time.time
        if binding is not None:
            epoch = binding.plant_epoch_unix

            def clock() -> float:
                return epoch + core.now_ns() / 1e9

        ctl, operator = controller_for(core, station, opts.state_dir, devices.recorder, _recipes_dir(station, opts),
                                       clock, save_every_s)
        publisher = None
        if mqtt_settings is not None:
            logging.getLogger("edge.telemetry.session").addHandler(logging.NullHandler())  # _session_event says it
            publisher = Publisher(core, ctl, mqtt_settings, devices.recorder, operator,
                                  on_session_event=_session_event, firmware=devices.firmware).start()
        # an early return or an error (else _loop's stop comes first): core stopped first, then recorded and flushed
        instruments.callback(_shut_down, ctl, devices.recorder, publisher, opts.mqtt_flush_s)
        _wait_first_readings(core, stop, publisher.pump if publisher is not None else None)
        _wait_proof_test(core, stop)
        if core.restored_trips:
            tripped = [name for name, r in core.rules().items() if r.tripped]
            reporter.write("event", f"{core.restored_trips} latched trip(s) restored from {spec.latch_file}: "
                           f"{', '.join(tripped)}", t_s=ctl.now_s(), kind="recovery", data={"rules": tripped})
        recovered, rejected = begin(ctl, devices.recorder, reporter, recipe, opts.recipe,
                                    batch_id=opts.batch_id or time.strftime("%Y%m%d-%H%M%S"), operator=opts.operator,
                                    feed=opts.feed, mass_in_kg=opts.mass_in_kg)
        if rejected and opts.exit_when_done:
            for e in ctl.events:         # no scan will print them
                reporter.event(e)
            return 1
        if opts.autotune is not None:
            ctl.tune_only = True        # no batch started by a command while this run tunes (it stops after)
            try:
                ctl.start_autotune(opts.autotune.loop, opts.autotune.setpoint_c)
            except TuneRejected as exc:
                raise RunError(f"autotune refused: {exc}") from None
            opts.autotune.tuning = ctl.tuning
        for layer in safety_layers(station):     # a missing layer nothing else covers: said at every start
            if layer.severity == "loud":
                _say(f"reedge run: WARNING: {layer.title}: {layer.detail}")
        reporter.write("ready", f"controller for {station.identity.site}/{station.identity.station_id} running",
                       pid=os.getpid(), recovered=recovered, t_s=ctl.now_s())
        notifier.ready(f"station {station.identity.station_id}")
        return _loop(ctl, opts, reporter, notifier, commands, operator, stop, binding, devices, publisher)


def tune_result(request: TuneRequest) -> dict[str, Any]:
    """What the tune this request started came to: ``state`` done with the gains, or failed."""
    tuning = request.tuning
    result = tuning.result if tuning is not None else None
    if result is None:
        return {"state": "failed", "loop": request.loop, "why": (tuning.failed if tuning is not None else None)
                or "aborted"}
    return {"state": "done", **result_fields(request.loop, result)}


def controller_for(core: Core, station: Station, state_dir: pathlib.Path, recorder: BatchRecorder,
                   recipes_dir: pathlib.Path, wall_clock: Callable[[], float],
                   save_every_s: float) -> tuple[Controller, Operator]:
    """The controller on ``core`` with its run state in ``state_dir``, and the operator that takes stdin's and
    MQTT's commands to it: as ``reedge run`` builds them, and the HIL's lockstep rig too."""
    ctl = Controller(core, station, state_path=state_dir / "run-state.json", wall_clock=wall_clock,
                     save_every_s=save_every_s)
    ctl.batch_id_check = recorder.id_in_use     # one record per batch id, ever
    operator = Operator(ControllerTarget(ctl, recipes_dir, recorder), allow_remote_reset=station.allow_remote_reset)
    return ctl, operator


def begin(ctl: Controller, recorder: BatchRecorder, reporter: Reporter, recipe: Recipe | None,
          recipe_path: pathlib.Path | None, **batch: Any) -> tuple[str | None, bool]:
    """After the core's first readings: recover an interrupted batch and continue its record, close the
    records of batches that were not recovered, then start ``recipe`` (``batch``: start_batch's keywords)
    unless a batch was recovered. Returns the recovery message and whether the start was rejected."""
    recovered = ctl.recover()
    recorder.close_orphans(ctl)      # open records of batches that were not recovered
    recorder.scan(ctl)               # the recovered batch's record continues before any new batch
    if recipe is None:
        return recovered, False
    if ctl.sequencer is not None and ctl.sequencer.running:
        reporter.write("event", f"not starting {recipe_path}: batch {ctl.batch.get('id')} was recovered",
                       t_s=ctl.now_s(), kind="batch", data={})
        return recovered, False
    try:
        ctl.start_batch(recipe, **batch)
    except BatchRejected as exc:   # an event like the others (journal, record, MQTT), printed by the scan
        ctl.emit(ctl.now_s(), "batch", f"batch rejected: {exc}", rejected=True)
        return recovered, True
    return recovered, False


def _check_state_dir(state_dir: pathlib.Path) -> None:
    """The state dir exists and a file can be created in it, or a technician's sentence (exit 2): the core
    would otherwise fail on its latch file first (``latch file ...: Read-only file system``), which names neither
    the state dir nor what to do. A full disk does not stop the start (the interlocks and telemetry run on);
    it stops a batch from starting (``Controller.storage_check``)."""
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
        why = writable_problem(state_dir, write=False)
    except OSError as exc:
        why = exc.strerror or str(exc)
    if why is not None:
        raise RunError(f"the state dir {state_dir} (--state-dir) cannot be written: {why}. The controller keeps "
                       "its latched trips, run state, batch records and MQTT outbox there. Make it writable (a "
                       "read-only file system: check the disk, e.g. with dmesg, and remount it read-write; "
                       "permissions: give it to the user the service runs as) or point --state-dir at a writable "
                       "disk, then start again")


def _wait_proof_test(core: Core, stop: threading.Event, timeout_s: float = 10.0) -> None:
    """Until the watchdog proof test passed or failed (two steps of at most 3 s wall each): a batch started
    during it would only collect refusals, and one started before it failed would start at all."""
    deadline = time.monotonic() + timeout_s
    while not stop.is_set() and time.monotonic() < deadline and core.stats().proof_pending:
        core.heartbeat()
        time.sleep(0.01)


def _wait_first_readings(core: Core, stop: threading.Event, idle: Callable[[], None] | None = None,
                         timeout_s: float = 10.0) -> None:
    """``idle`` runs while waiting (the publisher drains the sample ring: nothing is lost before the loop)."""
    deadline = time.monotonic() + timeout_s
    while not stop.is_set() and time.monotonic() < deadline:
        core.heartbeat()
        if idle is not None:
            idle()
        if any(v.ok for v in core.latest().values()):
            return
        time.sleep(0.01)


def _loop(ctl: Controller, opts: RunOptions, reporter: Reporter, notifier: Notifier,
          commands: StdinCommands | None, operator: Operator, stop: threading.Event, binding: RigBinding | None,
          devices: Devices, publisher: Publisher | None = None) -> int:
    scale = binding.time_scale if binding is not None else 1.0
    scan = Scan(ctl, reporter, devices, operator, publisher)
    while not stop.is_set():
        scan.step()
        notifier.watchdog()
        if opts.exit_when_done and ctl.batch_finished() and not devices.recorder.closing:
            break                   # (once its record has its end readings, or gave up waiting for them)
        if opts.autotune is not None and ctl.tuning is not opts.autotune.tuning:   # ours is over, done or not
            opts.autotune.result = tune_result(opts.autotune)
            break
        if commands is not None:
            scan.answer(commands.poll())     # the same path as MQTT's commands, as "stdin"
            if commands.closed and binding is not None:
                break           # the rig that started us is gone (its end of the pipe closed): do not run on
        _sleep_core_time(ctl, opts.scan_s, scale, stop)
    notifier.stopping()
    scan.stop()
    fields: dict[str, Any] = {}
    if publisher is not None:
        result = publisher.stop(ctl, opts.mqtt_flush_s)
        if not result.flushed:
            print(f"reedge run: {result.remaining} MQTT message(s) not yet acknowledged stay in the outbox"
                  " and are sent at the next start", file=sys.stderr, flush=True)
        fields["mqtt"] = {"flushed": result.flushed, "remaining": result.remaining,
                          "offline_published": result.offline_published, **publisher.counters.as_dict()}
        with contextlib.suppress(OSError, ValueError):    # the journal's copy of what the exit line says
            print(f"reedge run: MQTT at stop: {json.dumps(fields['mqtt'])}", file=sys.stderr, flush=True)
    with contextlib.suppress(OSError):
        ctl.save(force=True)
    stats = ctl.core.stats()
    reporter.write("exit", "controller stopped", t_s=ctl.now_s(), ticks=stats.ticks,
                   samples_lost=stats.samples_lost, **fields)
    return 0


class Scan:
    """One pass of the scan loop, and its end: what ``_loop`` does every ``scan_s``, and what the HIL's lockstep
    rig (``hil.lockstep_rig``) calls on the plant's clock, so both run the same controller. ``clock`` times the
    status lines (wall seconds here, plant seconds in lockstep: the same run gives the same lines)."""

    def __init__(self, ctl: Controller, reporter: Reporter, devices: Devices, operator: Operator,
                 publisher: Publisher | None = None, *, clock: Callable[[], float] = time.monotonic,
                 status_every_s: float = STATUS_EVERY_S) -> None:
        self.ctl, self.reporter, self.devices = ctl, reporter, devices
        self.operator, self.publisher = operator, publisher
        self.clock = clock
        self.status_every_s = status_every_s
        self.sent = 0
        self._last_status: tuple[Any, ...] = ()
        self._last_status_at = -math.inf

    def step(self) -> None:
        ctl, reporter, devices, publisher = self.ctl, self.reporter, self.devices, self.publisher
        ctl.step()
        for c in devices.link_changes():   # events like the controller's: journal, record and MQTT alike
            ctl.emit(ctl.now_s(), "connection", f"{c.device}: {c.text()}", device=c.device, port=c.port,
                     change=c.change, cause=c.cause)
        if publisher is not None:
            for answered in publisher.scan(ctl):     # MQTT commands run here, then everything new is put
                r = answered.reply
                reporter.write("reply", r["message"], cmd=r["verb"], accepted=answered.accepted, code=r["code"],
                               command_id=r["command_id"], source="mqtt", t_s=ctl.now_s())
        # after the commands (their events are the record's too); the publisher sends it at its next scan
        devices.recorder.scan(ctl, devices.counter_samples())
        self.report_events()
        if len(ctl.events) > 10_000:       # reported and published: drop them
            del ctl.events[:self.sent]
            if publisher is not None:
                publisher.forget_events(self.sent)
            devices.recorder.forget_events(self.sent)
            self.sent = 0
        seq = ctl.sequencer
        status = (seq.phase if seq else None, seq.held if seq else None, ctl.batch_finished())
        now = self.clock()
        changed = status != self._last_status
        # the periodic status is for machines (--json, and MQTT's own); a person's journal gets a line when
        # something changed, not a heartbeat (86,400 lines a day on an SD card said nothing)
        if changed or (reporter.json_lines and now - self._last_status_at >= self.status_every_s):
            reporter.write("status", _status_text(*status), t_s=ctl.now_s(),
                           phase=status[0], held=status[1], finished=status[2], batch=ctl.batch.get("id"),
                           **devices.status())
            self._last_status, self._last_status_at = status, now

    def report_events(self) -> None:
        for e in self.ctl.events[self.sent:]:
            self.reporter.event(e)
        self.sent = len(self.ctl.events)

    def answer(self, lines: Iterable[Line]) -> None:
        """Operator command lines (stdin's, ``edge.app.stdin_commands``), each answered with a ``reply`` line."""
        for line in lines:
            done = answer(self.operator, line)
            self.reporter.write("reply", done.message, cmd=done.verb, accepted=done.result == "accepted",
                                code=done.code, source="stdin", t_s=self.ctl.now_s())

    def stop(self, readings_wait_s: float = END_READINGS_WAIT_S) -> None:
        """The core stopped (outputs safe), its last events reported, the record closed; a batch that just ended
        first waits up to ``readings_wait_s`` (wall) for the meters' readings after its end."""
        ctl, recorder = self.ctl, self.devices.recorder
        _stop_core(ctl)                  # outputs safe now, and no dead-man to outlast during the flush
        self.report_events()
        deadline = time.monotonic() + readings_wait_s
        while recorder.closing and time.monotonic() < deadline:
            recorder.scan(ctl, self.devices.counter_samples())
            time.sleep(0.05)
        recorder.close(ctl)              # an unfinished record stays open: the next start continues it


def _status_text(phase: str | None, held: Any, finished: bool) -> str:
    """The status line's words: ``idle (no batch)``, ``phase leak_test``, ``phase soak (held)``."""
    if phase is None:
        return "idle (no batch)"
    return f"phase {phase}{' (held)' if held else ''}"


def _stop_core(ctl: Controller) -> None:
    """Stop the core (every output to its safe level, no trip) and relay its last events to ``ctl.events``."""
    ctl.core.heartbeat()
    ctl.core.stop()
    ctl.drain_core_events()


def _shut_down(ctl: Controller, recorder: BatchRecorder, publisher: Publisher | None, flush_s: float) -> None:
    """The early-return and error path (idempotent after ``_loop``'s own stop): the core first (see the module
    docstring), then the batch record on disk, then the last messages."""
    try:
        _stop_core(ctl)
    finally:
        try:
            recorder.close(ctl)
        finally:
            if publisher is not None:
                publisher.stop(ctl, flush_s)


def _say(text: str) -> None:
    """A line for the journal (stderr)."""
    with contextlib.suppress(OSError, ValueError):
        print(text, file=sys.stderr, flush=True)


def _sleep_core_time(ctl: Controller, scan_s: float, scale: float, stop: threading.Event) -> None:
    """Until ``scan_s`` of core time passed (the plant's clock on the rig), in short wall-clock naps."""
    end = ctl.now_s() + scan_s
    while not stop.is_set():
        left = end - ctl.now_s()
        if left <= 0:
            return
        stop.wait(min(left / scale, 0.05))
