"""The bridge from the running controller to MQTT: once per scan, everything new becomes outbox messages.

``reedge run`` builds one ``Publisher`` (only when a broker is configured or given) and calls
``scan(ctl)`` right after every ``ctl.step()``, on the controller's thread. A scan, in order:

1. **Commands** that arrived since the last scan are executed here, on this thread: paho's
   thread only sorts them into the intake (``_on_command``, ``edge.telemetry.intake``), so a
   command never races the scan it changes. Up to ``MAX_COMMANDS_PER_SCAN``, those the sender's
   roles allow first, within ``COMMAND_BUDGET_S``. Commands the intake turns away (over the
   sender's rate limit, or finding the queue full: a flood) are answered ``busy`` and acknowledged
   by the publisher's answering thread, in groups (one outbox transaction each), never by the scan:
   at any inbound rate every command is answered, and the broker, which sends a station only so
   many unacknowledged commands, can go on delivering those queued behind a flood. Their audit
   events are counts, at most one per sender every ``BUSY_AUDIT_S`` (``_busy_events``).
   ``CommandHandler`` checks, authorises and answers each one; its audit event and then its reply
   are put with this scan's messages (in that order: a reply is never out before its audit event,
   even when a stop's flush runs out of time between the two), and only once they are stored is the
   command acknowledged to the broker (``MqttSession.subscribe_acked``): a command whose answer was
   never stored (the station died, the disk refused) is sent again by the broker on the next
   connection, and the command ledger turns that second copy into a replay of the stored answer,
   never a second run. ``resend`` (a consumer lost messages the broker had acknowledged) is served
   from the outbox's history (``Outbox.resend``, ``[mqtt] history_mb``) and wakes the session, which
   sends the queued copies like any pending message; without a history it is refused
   (``edge.telemetry.commands``).
2. **Events**: every ``ProcessEvent`` the controller appended (phase changes, relayed core
   events with their exact kind, alarms, operator actions, recovery), through
   ``edge.telemetry.events`` with its priorities. The controller drains the core's event ring
   itself; the publisher never drains it a second time.
3. **Batch records**: the ``BatchRecorder``'s record (``edge.batch.record``) as a ``start`` message
   when a batch id appears and an ``end`` message when its record is finished, again for each later
   revision (``mqtt_schemas/batch.json``). Which were put is kept in ``batch-records.json`` in the
   state dir, so a batch recovered after a power loss does not get a second start record (a crash
   between the put and that file gives a duplicate, never a gap).
4. **Telemetry**: the core's sample ring drained through the ``Aggregator``, one message per
   closed window; the ring has exactly this one consumer (``pump`` also drains it while the
   controller starts up, so the first window starts at the core's first tick).
5. **State**, retained, when it changed (``StateTracker``).

**The station description** (``edge.telemetry.description``: channels with units, ranges and resolution,
outputs, interlocks, versions) is put by ``start``, before anything else of this boot, and again by the
scan that finds it changed (a sensor node's HELLO reporting another firmware); every telemetry window and
the birth carry its SHA-256, and the windows' values are rounded to each channel's resolution.

Then one ``Outbox.put_many`` (one transaction, fsynced by the group commit) and the session is woken. Order inside
a scan: command answers (audit event, reply), events, batch records, telemetry, state (the outbox
keeps it per stream anyway).

**The state's outputs** are what a dashboard should see, not what the sampler does every tick:
the watchdog line (it toggles every tick) is left out, and a burst-fired output (``duty_cycle_ms``)
reports its energised level (the opposite of its ``safe_level``: 1 for an ordinary heater) while
the controller asks for a non-zero duty and the gate lets it (``requested`` true, ``forced``
false), and its safe level otherwise (its sampled level flips every few ms within the burst
period). Otherwise the retained state would change at every scan. The telemetry still carries
each output's sampled level per window.

**Stopping** (``stop``): from then on no command is executed. The commands still queued, and
any that arrive during the flush (answered by the answering thread, in groups: the network thread
only sorts them, and keeps flushing), are answered ``refused`` ("station stopping": the ledger
keeps that answer for the id, so the sender uses a new id once the station is back) and
acknowledged once the answer is stored; what is still unanswered when the session has stopped
stays unacknowledged, and the broker delivers it at the next start. Then everything
left is put: events, batch records, state (with ``ctl``), the sample ring and the open
telemetry window (always), and the session flushes. ``stop`` blocks for the flush: the caller
must have stopped the core first (``reedge run`` does), or the dead-man trips and latches.

**Nothing is lost silently.** If the disk refuses a put (``OutboxError``: full, failing), the
scan's messages are kept in memory and put again at the next scan, and the failure is written to
stderr once per streak; the control loop never stops for it (the dead-man is waiting). Past
``MAX_RETAINED_DRAFTS`` kept messages, telemetry is dropped first (``counters.dropped``); if the
rest alone is still too many, the oldest are kept and newer ones are not accepted
(``counters.overflowed``); both are written to stderr. A command's answer is never among them: a
command is acknowledged to the broker only together with its stored answer, so its answer stays in
memory however long the disk refuses; while ``MAX_RETAINED_ANSWERS`` of them wait, the scan runs no
more commands (they wait in the intake, bounded) and the answering thread no busy answers. What the
disk still refuses at ``stop`` is written to stderr and counted (``counters.unstored``) before the
files are closed.
"""

from __future__ import annotations

import contextlib
import json
import math
import pathlib
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TextIO

import paho.mqtt.client as mqtt

from edge.batch.message import mqtt_end_body, mqtt_start_body
from edge.batch.record import BatchRecorder
from edge.control.controller import Controller, ProcessEvent
from edge.core import Core
from edge.files import write_atomic
from edge.operator.execute import Operator
from edge.operator.target import ControllerTarget
from edge.spec.broker import BrokerSettings
from edge.telemetry.aggregate import DEFAULT_WINDOW_S, Aggregator
from edge.telemetry.commands import (
    CommandHandler,
    CommandLedger,
    Outcome,
)
from edge.telemetry.description import DescribedSession, Describer, rounders
from edge.telemetry.envelope import previous_boot
from edge.telemetry.events import command_event, process_event
from edge.telemetry.intake import MAX_TURNED_WAITING, MAX_WAITING, Intake, Reason, Turned, Waiting
from edge.telemetry.outbox import (
    DEFAULT_HISTORY,
    DEFAULT_QUOTA,
    Draft,
    InvalidMessage,
    Outbox,
    OutboxError,
    Priority,
)
from edge.telemetry.outbox_types import Resent
from edge.telemetry.session import Ack, SessionEvent, StopResult
from edge.telemetry.state import StateTracker, controller_state
from edge.telemetry.topics import STREAMS, StationTopics, window_heads

_Group = tuple[list[Draft], list[Ack]]   # messages, and the commands acknowledged once they are stored
DEFAULT_FLUSH_S = 5.0
MAX_COMMANDS_PER_SCAN = 50      # the rest wait for the next scan: a flood must not stretch a scan
COMMAND_BUDGET_S = 0.05         # and past this much of a scan the rest are answered "busy" (not executed)
MAX_RETAINED_DRAFTS = 20_000    # messages kept in memory while the disk refuses puts
MAX_RETAINED_ANSWERS = 1000     # commands answered but not stored (disk refusing) before no more are run
FAILING_RETRY_S = 0.1           # the answering thread's pause while the disk refuses puts
GROUP_LINGER_S = 0.002          # the answering thread waits this long for the rest of a burst: fewer, fuller groups
BUSY_AUDIT_S = 10.0             # at most one audit event per sender this often for the busy answers of a flood
OUTBOX_FILE = "outbox.db"
LEDGER_FILE = "commands.db"
RECORDS_FILE = "batch-records.json"
STOPPING = ("station stopping: not executed (send it again, with a new command id, once the station is back"
            " online)")


@dataclass(frozen=True)
class PublisherSettings:
    """Where and how a station publishes (from ``reedge run``'s options and the station file)."""

    broker: BrokerSettings
    site: str
    station: str
    state_dir: pathlib.Path
    window_s: float = DEFAULT_WINDOW_S   # telemetry window, seconds of core time
    quota_bytes: int = DEFAULT_QUOTA
    history_bytes: int = DEFAULT_HISTORY   # what the broker acknowledged, kept for resend ([mqtt] history_mb); 0: none


@dataclass
class PublisherCounters:
    """What the publisher put, for the exit line and tests."""

    telemetry: int = 0
    events: int = 0
    batch: int = 0
    state: int = 0
    replies: int = 0
    descriptions: int = 0
    first_tick: int | None = None     # of the first telemetry window put
    last_tick: int | None = None      # of the last one
    samples: int = 0                  # samples in the windows put
    ticks_missed: int = 0             # ticks the ring lost (reported in the windows)
    dropped: int = 0                  # telemetry dropped while the disk refused puts (reported)
    overflowed: int = 0               # other messages not accepted while the disk refused puts (reported)
    unstored: int = 0                 # messages the disk still refused at stop (reported)
    refused_stopping: int = 0         # commands answered "station stopping" at stop
    turned_away: int = 0              # commands answered busy at intake (rate limit, full queue), not read

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class Publisher:
    """Publishes one running controller (see the module docstring). ``start``, ``scan`` each scan, ``stop``."""

    def __init__(self, core: Core, ctl: Controller, settings: PublisherSettings, recorder: BatchRecorder,
                 operator: Operator, *, on_session_event: Callable[[SessionEvent], None] | None = None,
                 firmware: Callable[[], Mapping[str, str | None]] | None = None, log: TextIO = sys.stderr) -> None:
        """``operator``: the station's one operator-command path, which MQTT commands go through (as stdin's do);
        ``firmware``: each sensor node's firmware as its HELLO reported it (None: not linked), for the description."""
        self.core = core
        self.recorder = recorder         # its record is what the batch stream sends
        self.settings = settings
        self.topics = StationTopics(settings.site, settings.station)
        self.log = log
        self.counters = PublisherCounters()
        settings.state_dir.mkdir(parents=True, exist_ok=True)
        self.outbox = Outbox(settings.state_dir / OUTBOX_FILE, quota_bytes=settings.quota_bytes,
                             history_bytes=settings.history_bytes, event_topic=self.topics.event)
        ledger: CommandLedger | None = None
        try:   # whatever fails below, the files opened so far are closed again
            previous = previous_boot(self.outbox)        # before this boot puts anything
            target = operator.target
            self.describer = Describer(ctl.station, window_s=settings.window_s, firmware=firmware,
                                       recipes_dir=target.recipes_dir if isinstance(target, ControllerTarget) else None)
            self._description = self.describer.current()
            self.session = DescribedSession(self.outbox, settings.broker, site=settings.site,
                                            station=settings.station, on_event=on_session_event, previous=previous)
            self.session.description_sha256 = self._description.sha256
            self.ledger = ledger = CommandLedger(settings.state_dir / LEDGER_FILE)
            self.handler = CommandHandler(topics=self.topics, settings=ctl.station.commands, operator=operator,
                                          ledger=self.ledger, resend=self._resend if settings.history_bytes else None)
            self.aggregator = Aggregator.for_core(core, settings.window_s, rounding=rounders(ctl.station),
                                                  wall_clock=ctl.wall_clock)
            self.state = StateTracker()
            self.records = _BatchRecords(settings.state_dir / RECORDS_FILE)
            self._watchdog = ctl.station.core.watchdog_output
            # burst outputs: name -> safe level (energised is the other one)
            self._burst = {o.name: int(o.safe_level) for o in ctl.station.core.outputs if o.duty_cycle_ms}
            self.intake = Intake(ctl.station.commands)
            self._lock = threading.Lock()       # the counters, the handoff (scan, network and answering threads)
            self._closing = False               # stop() began: commands are answered, never executed
            self._events_seen = 0
            self._telemetry: list[dict[str, Any]] = []      # windows closed by pump(), put at the next scan
            self._retry: list[_Group] = []                  # what the disk refused, put again next scan
            self._tallies: dict[tuple[str | None, Reason], _BusyTally] = {}   # busy answers not in an event yet
            self._handoff: list[_Group] = []                 # busy answers the disk refused (scan retries)
            self._answerer = threading.Thread(target=self._answer_turned, name="reedge-busy-answers", daemon=True)
            self._failing = False
            self._stopped: StopResult | None = None
            self.session.subscribe_acked(self.topics.cmd_filter, 1, self._on_command)
        except BaseException:
            if ledger is not None:
                ledger.close()
            self.outbox.close()
            raise

    # ---- life cycle ------------------------------------------------------------------------------

    def start(self) -> Publisher:
        """Put the description, connect in the background: messages wait in the outbox until a broker takes them."""
        self._put([([self._description_draft()], [])])
        self.session.start()
        self._answerer.start()
        return self

    def stop(self, ctl: Controller | None = None, flush_timeout_s: float = DEFAULT_FLUSH_S) -> StopResult:
        """Answer waiting commands without executing them, put everything left (events, batch records and
        state with ``ctl``; the sample ring and the open telemetry window always), flush for up to
        ``flush_timeout_s``, publish offline, close the files (module docstring: stop the core first).
        Idempotent; what was not sent stays in the outbox."""
        if self._stopped is not None:
            return self._stopped
        with self._lock:
            self._closing = True
            self.handler.close(STOPPING)              # from now on every command is answered, refused
        self.intake.stopping()                        # commands arriving during the flush: the answering thread
        groups = self._handed_back()
        acks: list[Ack] = []
        answers = [d for o in self._run_commands(2 * MAX_WAITING, acks, math.inf) for d in self._answer(o)]
        answers.extend(self._turned_drafts(MAX_TURNED_WAITING + 1, acks))
        groups.append((answers, acks))
        drafts = self._busy_events(every=True)
        refused = self.counters.refused_stopping
        if refused:
            self._say(f"telemetry: {refused} command(s) still waiting were answered \"{STOPPING}\"")
        try:
            drafts.extend(self._collect(ctl) if ctl is not None else self._windows())
        except Exception as e:    # a broken controller (the error path) must not cost the telemetry
            self._say(f"telemetry: the last events and state could not be collected at stop: {e!r}")
            drafts.extend(self._windows())
        last = self.aggregator.flush()
        if last is not None:
            drafts.append(self._telemetry_draft(last, self._heads()))
        groups.append((drafts, []))
        self._put(groups)
        left = [d for g, _ in self._retry for d in g]
        if left:
            self.counters.unstored = len(left)
            streams = sorted({d.stream for d in left})
            unacked = sum(len(a) for _, a in self._retry)
            self._say(f"telemetry: {len(left)} message(s) ({', '.join(streams)}) the outbox refused until"
                      " the end are lost with this stop" + (f"; the {unacked} command(s) they answered stay"
                                                             " unacknowledged: the broker sends them again"
                                                             if unacked else ""))
        try:
            self._stopped = self.session.stop(flush_timeout_s)
        finally:
            self.intake.close()
            if self._answerer.is_alive():
                self._answerer.join()
            if self.session.network_thread_alive:   # never close the files under a thread that still uses them
                self._say("telemetry: the MQTT network thread did not stop; the outbox and the command ledger"
                          " are left open (the process exit closes them)")
            else:
                self.ledger.close()
                self.outbox.close()
        return self._stopped

    # ---- the scan --------------------------------------------------------------------------------

    def pump(self) -> None:
        """Drain the sample ring into windows (before the scan loop runs: the ring holds a few seconds)."""
        self._telemetry.extend(self.aggregator.drain(self.core))

    def scan(self, ctl: Controller) -> list[Outcome]:
        """One scan's messages, put in one transaction; returns the commands answered in it."""
        if self._closing:
            raise RuntimeError("Publisher.scan after stop(): commands are no longer executed")
        groups = self._handed_back()
        acks: list[Ack] = []
        outcomes = self._run_commands(self._scan_limit(), acks)
        groups.append(([d for o in outcomes for d in self._answer(o)], acks))
        groups.append((self._collect(ctl), []))
        self._put(groups)
        return outcomes

    def _scan_limit(self) -> int:
        """Commands this scan may run: none while MAX_RETAINED_ANSWERS answers wait in memory for a disk that
        refuses puts (they wait in the intake, bounded, instead of answers piling up without bound)."""
        waiting = sum(len(acks) for _, acks in self._retry)
        return MAX_COMMANDS_PER_SCAN if waiting < MAX_RETAINED_ANSWERS else 0

    def forget_events(self, n: int) -> None:
        """The caller deleted the first ``n`` of ``ctl.events`` (all of them seen by a scan)."""
        self._events_seen = max(0, self._events_seen - n)

    def _collect(self, ctl: Controller) -> list[Draft]:
        events = ctl.events[self._events_seen:]
        self._events_seen = len(ctl.events)
        drafts = self._busy_events()
        described = self.describer.current()
        if described.sha256 != self._description.sha256:     # before the windows it labels
            self._description = described
            self.session.description_sha256 = described.sha256
            drafts.append(self._description_draft())
        drafts.extend(self._event_draft(e) for e in events)
        drafts.extend(self._batch_drafts())
        drafts.extend(self._windows())
        body = self.state.update(self._state_body(ctl))
        if body is not None:
            drafts.append(self._draft("state", body))
            self.counters.state += 1
        return drafts

    # ---- commands (queued by paho's thread, executed on the scan's) -----------------------------

    def _on_command(self, message: mqtt.MQTTMessage, ack: Ack) -> None:
        """Network thread: sort the command into the intake (``edge.telemetry.intake``); never executes it."""
        props = getattr(message, "properties", None)
        response = getattr(props, "ResponseTopic", None) if props is not None else None
        correlation = getattr(props, "CorrelationData", None) if props is not None else None
        cmd = Waiting(message.topic, bytes(message.payload), response,
                      bytes(correlation) if correlation is not None else None, ack)
        if self.intake.offer(cmd):
            return
        # the turned-away backlog is full (a flood faster than the answering thread): answer it here, in one
        # transaction, and offer again; not while the disk refuses (the answers would pile up in memory)
        if not self._failing:
            self._answer_turned_now()
        if not self.intake.offer(cmd):     # not acknowledged: the broker sends it again on the next connection
            self._say("telemetry: a command could not be taken in a flood; the broker sends it again")

    def _resend(self, boot_id: str, stream: str, first_seq: int, last_seq: int) -> Resent:
        """The ``resend`` verb (scan thread): the history's rows queued again, and the session woken to send them."""
        got = self.outbox.resend(boot_id, stream, first_seq, last_seq)
        if got.requeued:
            self.session.put_many([])
        return got

    def _answer_turned(self) -> None:
        """The answering thread (``edge.telemetry.intake``): busy answers in groups, one transaction each, and
        once the station stops, the refusals of the commands that still arrive."""
        while self.intake.wait_work():
            time.sleep(GROUP_LINGER_S)
            if self._failing and not self._closing:
                time.sleep(FAILING_RETRY_S)     # the disk refuses puts: leave them in the intake (bounded)
                continue
            try:
                self._answer_turned_now()
                if self._closing:
                    acks: list[Ack] = []
                    drafts = [d for o in self._run_commands(MAX_WAITING, acks, math.inf) for d in self._answer(o)]
                    self._store_now(drafts, acks)
            except Exception as e:    # a bug must not end the thread: the next commands would wait unanswered
                self._say(f"telemetry: answering commands failed ({e!r}); they stay unacknowledged")

    def _handed_back(self) -> list[_Group]:
        """The answers the answering thread could not store, with their acks, for this put."""
        with self._lock:
            handoff, self._handoff = self._handoff, []
        return handoff

    def _answer_turned_now(self) -> None:
        """Every command turned away so far answered ``busy`` in one transaction, then acknowledged."""
        acks: list[Ack] = []
        drafts = self._turned_drafts(MAX_TURNED_WAITING + 1, acks)
        self._store_now(drafts, acks)

    def _store_now(self, drafts: list[Draft], acks: list[Ack]) -> None:
        """Off the scan: store, wake the session, acknowledge; if the disk refuses, the answers go to the scan,
        which keeps them with its own until the disk takes them."""
        if not acks:
            return
        try:
            self.outbox.put_many(drafts)
        except (OutboxError, OSError):
            with self._lock:
                self._handoff.append((drafts, acks))
            return
        self.session.put_many([])
        self._send_acks(acks)

    def _run_commands(self, limit: int, acks: list[Ack], budget_s: float = COMMAND_BUDGET_S) -> list[Outcome]:
        """Up to ``limit`` waiting commands within ``budget_s`` of the scan (the rest answered busy, not run);
        their acks go to ``acks``, to be sent once their answers are stored."""
        cmds = self.intake.take(limit)
        outcomes = self.handler.handle_many(cmds, budget_s) if cmds else []
        for cmd, outcome in zip(cmds, outcomes, strict=True):
            if outcome.reply.get("message") == STOPPING:
                with self._lock:
                    self.counters.refused_stopping += 1
            acks.append(cmd.ack)
        return outcomes

    def _turned_drafts(self, limit: int, acks: list[Ack]) -> list[Draft]:
        """``busy`` replies to up to ``limit`` commands turned away at intake, each sender's after an audit event
        if its last one is ``BUSY_AUDIT_S`` old (``_busy_events``). Their acks go to ``acks``."""
        turned = self.intake.take_turned(limit)
        if not turned:
            return []
        groups: dict[tuple[str | None, Reason], list[Turned]] = {}
        for t in turned:
            groups.setdefault((t.identity, t.reason), []).append(t)
        drafts: list[Draft] = []
        spec = STREAMS["reply"]
        for key, items in groups.items():
            drafts.extend(self._busy_events(key, items))
            why = self._why(key[1])
            for t in items:
                out = self.handler.busy(t.topic, t.command_id, t.correlation_data, why)
                if out.reply_topic is not None:    # None: an unknown verb, which has no reply topic
                    drafts.append(Draft("reply", out.reply_topic, out.reply, Priority.EVENT, spec.qos, spec.retain))
        acks.extend(t.ack for t in turned)
        with self._lock:
            self.counters.replies += len(turned)
            self.counters.turned_away += len(turned)
        return drafts

    def _busy_events(self, key: tuple[str | None, Reason] | None = None, items: Sequence[Turned] = (), *,
                     every: bool = False) -> list[Draft]:
        """The audit events of busy answers given at intake: NOT one per command (a flood of 3,000 would bury the
        station's own events), but one per sender and reason at most every ``BUSY_AUDIT_S``, each counting the
        busy answers since the previous one (``data``: count, first and last command ids). With ``key``: the
        commands ``items`` about to be answered are counted, and if the sender's last event is that old, an
        event is due now, before their replies (so the first busy reply of a streak always follows its audit
        event). Without: the events the scan owes (counts older than ``BUSY_AUDIT_S``; ``every``: all, at stop)."""
        now = time.monotonic()
        due: list[tuple[tuple[str | None, Reason], _BusyTally]] = []
        with self._lock:
            if key is not None:
                ids = [t.command_id for t in items if t.command_id is not None]
                tally = self._tallies.setdefault(key, _BusyTally(now - BUSY_AUDIT_S))
                tally.count += len(items)
                tally.first = tally.first or (ids[0] if ids else None)
                tally.last = ids[-1] if ids else tally.last
                if now - tally.at >= BUSY_AUDIT_S:
                    due.append((key, tally))
            else:
                for k, tally in list(self._tallies.items()):
                    if tally.count and (every or now - tally.at >= BUSY_AUDIT_S):
                        due.append((k, tally))
                    elif not tally.count and now - tally.at >= BUSY_AUDIT_S:
                        del self._tallies[k]       # a sender quiet that long: forgotten (bounded memory)
            out: list[Draft] = []
            for (identity, reason), tally in due:
                ev = command_event(verb=None, command_id=None, issuer=identity or "", result="rejected", code="busy",
                                   message=f"{tally.count} command(s) answered busy without being read:"
                                           f" {self._why(reason)}")
                ev.body["data"] = {"count": tally.count, "reason": reason, "first_command_id": tally.first,
                                   "last_command_id": tally.last}
                out.append(self._draft("event", ev.body, ev.priority))
                self._tallies[(identity, reason)] = _BusyTally(now)
            self.counters.events += len(out)
        return out

    def _why(self, reason: Reason) -> str:
        if reason == "rate":
            s = self.handler.settings
            return (f"over the rate limit of this sender ({s.burst} commands at once, {s.rate_per_minute} a minute;"
                    " [mqtt.commands] burst, rate_per_minute)")
        return "too many commands waiting (a command flood?)"

    def _answer(self, outcome: Outcome) -> list[Draft]:
        """The audit event, then the reply: the outbox sends in this order, so a reply that is out has its audit
        event out before it, even when a stop's flush deadline falls between the two (the rest waits for the
        next start)."""
        with self._lock:
            out = [self._draft("event", outcome.event.body, outcome.event.priority)]
            self.counters.events += 1
            if outcome.reply_topic is not None:
                spec = STREAMS["reply"]
                out.append(Draft("reply", outcome.reply_topic, outcome.reply, Priority.EVENT, spec.qos, spec.retain))
                self.counters.replies += 1
        return out

    # ---- events, batch records, telemetry, state ---------------------------------------------------

    def _event_draft(self, e: ProcessEvent) -> Draft:
        ev = process_event(e)
        self.counters.events += 1
        return self._draft("event", ev.body, ev.priority)

    def _batch_drafts(self) -> list[Draft]:
        """The batch recorder's start and end records (and each later revision of an end), each once: what was
        put is remembered in batch-records.json, so a record queued again after a restart is dropped here."""
        out = []
        for kind, body in self.recorder.take_published():
            batch_id = body["batch_id"]
            if kind == "start" and self.records.start != batch_id and self.records.end != batch_id:
                out.append(self._draft("batch", mqtt_start_body(body)))
                self.records.start = batch_id
            elif kind == "end" and body["record"] == "end" and (
                    self.records.end != batch_id or self.records.revision < body["revision"]):
                out.append(self._draft("batch", mqtt_end_body(body)))
                self.records.end, self.records.revision = batch_id, int(body["revision"])
        self.counters.batch += len(out)
        return out

    def _windows(self) -> list[Draft]:
        """The sample ring drained, and every window closed since the last put."""
        self.pump()
        windows, self._telemetry = self._telemetry, []
        if not windows:
            return []
        heads = self._heads()
        return [self._telemetry_draft(w, heads) for w in windows]

    def _heads(self) -> dict[str, int]:
        """The last number given on each other tracked stream (the window's ``heads``, schema 1.4): what was put
        before this scan's drafts, all of which the outbox sends before any telemetry, so a consumer missing
        one of them after the window knows it lost it (a lower bound: this scan's own events are in the next)."""
        return window_heads(self.outbox.last_sequences())

    def _telemetry_draft(self, body: dict[str, Any], heads: dict[str, int]) -> Draft:
        w = body["window"]
        c = self.counters
        c.telemetry += 1
        c.samples += int(w["samples"])
        c.ticks_missed += int(w["ticks_missed"])
        if c.first_tick is None:
            c.first_tick = int(w["first_tick"])
        c.last_tick = int(w["last_tick"])
        body["description_sha256"] = self._description.sha256
        if heads:
            body["heads"] = dict(heads)
        return self._draft("telemetry", body)

    def _description_draft(self) -> Draft:
        """The description's canonical bytes, stored as they are (its SHA-256 is over exactly these)."""
        spec = STREAMS["description"]
        assert spec.priority is not None
        self.counters.descriptions += 1
        return Draft("description", self.topics.description, self._description.body, spec.priority, spec.qos,
                     spec.retain)

    def _state_body(self, ctl: Controller) -> dict[str, Any]:
        """``controller_state`` with steady outputs (see the module docstring)."""
        body = controller_state(ctl)
        outputs = body["outputs"]
        outputs.pop(self._watchdog, None)
        for name, safe in self._burst.items():
            o = outputs.get(name)
            if o is not None:   # energised (the opposite of safe) while asked for and let through
                o["level"] = 1 - safe if o["requested"] and not o["forced"] else safe
        return body

    def _draft(self, stream: str, body: dict[str, Any], priority: Priority | None = None) -> Draft:
        spec = STREAMS[stream]
        assert spec.priority is not None
        return Draft(stream, self.topics.topic(stream), body, spec.priority if priority is None else priority,
                     spec.qos, spec.retain)

    # ---- storing -----------------------------------------------------------------------------------

    def _put(self, groups: list[_Group]) -> None:
        """One transaction for the scan; on a disk error keep everything for the next scan (docstring). Each
        group's commands are acknowledged once its messages are stored, never before, never without them."""
        groups = [*self._retry, *groups]
        self._retry = []
        drafts = [d for g, _ in groups for d in g]
        acks = [a for _, group_acks in groups for a in group_acks]
        if not drafts:
            self._send_acks(acks)
            return
        try:
            self._store(drafts)
        except OutboxError as e:
            if not self._failing:
                self._say(f"telemetry: the outbox refused {len(drafts)} message(s), kept in memory and retried"
                          f" every scan: {e}")
            self._failing = True
            self._retry = self._bounded(groups)
            return
        if self._failing:
            c = self.counters
            self._say("telemetry: the outbox stores again; nothing was lost" if not (c.dropped or c.overflowed) else
                      f"telemetry: the outbox stores again; {c.dropped} telemetry and {c.overflowed} other"
                      " message(s) were not kept")
            self._failing = False
        try:
            self.records.save()
        except OSError as e:
            self._say(f"telemetry: cannot write {self.records.path} ({e}): a batch record may be sent twice")
        self.session.put_many([])          # wakes the network thread (the messages are already stored)
        self._send_acks(acks)

    @staticmethod
    def _send_acks(acks: list[Ack]) -> None:
        """The answers are stored: the broker may forget those commands now."""
        for ack in acks:
            ack()

    def _store(self, drafts: list[Draft]) -> None:
        try:
            self.outbox.put_many(drafts)
        except InvalidMessage:
            # a bug put a message the outbox cannot store: store the others, name the bad one
            for d in drafts:
                try:
                    self.outbox.put_many([d])
                except InvalidMessage as e:
                    self._say(f"telemetry: a {d.stream} message could not be stored and is dropped: {e}")

    def _bounded(self, groups: list[_Group]) -> list[_Group]:
        """At most MAX_RETAINED_DRAFTS in memory: the oldest telemetry goes first, then newer messages of the
        other streams are not accepted; each is counted and written to stderr (module docstring). Command
        answers (a group with acks) are never dropped: their commands would be acknowledged unanswered
        (``_scan_limit`` bounds them instead)."""
        excess = sum(len(g) for g, _ in groups) - MAX_RETAINED_DRAFTS
        if excess <= 0:
            return groups
        dropped = 0
        thinned: list[_Group] = []
        for drafts, acks in groups:
            kept: list[Draft] = []
            for d in drafts:
                if excess > 0 and d.priority is Priority.TELEMETRY and not acks:
                    excess -= 1
                    dropped += 1
                    continue
                kept.append(d)
            thinned.append((kept, acks))
        self.counters.dropped += dropped
        if dropped:
            self._say(f"telemetry: the outbox still refuses puts: {dropped} telemetry message(s) dropped"
                      f" ({self.counters.dropped} in all)")
        if excess <= 0:
            return thinned
        refused: list[Draft] = []
        out: list[_Group] = []
        for drafts, acks in reversed(thinned):     # the newest first
            if excess > 0 and not acks:
                cut = min(excess, len(drafts))
                refused = drafts[len(drafts) - cut:] + refused
                drafts = drafts[:len(drafts) - cut]
                excess -= cut
            out.append((drafts, acks))
        out.reverse()
        self.counters.overflowed += len(refused)
        streams = sorted({d.stream for d in refused})
        self._say(f"telemetry: the outbox still refuses puts and {MAX_RETAINED_DRAFTS} messages wait in memory:"
                  f" {len(refused)} newer {', '.join(streams)} message(s) not accepted"
                  f" ({self.counters.overflowed} in all); free the disk")
        return [(d, a) for d, a in out if d or a]

    def _say(self, text: str) -> None:
        with contextlib.suppress(OSError, ValueError):
            print(text, file=self.log, flush=True)


@dataclass
class _BusyTally:
    """Busy answers given at intake to one sender for one reason since ``at`` (its last audit event)."""

    at: float
    count: int = 0
    first: str | None = None
    last: str | None = None


class _BatchRecords:
    """Which batch's start and end records (and which revision of the end) were put, in a small JSON file
    written after each put."""

    def __init__(self, path: pathlib.Path) -> None:
        self.path = path
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError:
            raw = {}
        except (OSError, ValueError) as e:
            # an unreadable file at worst repeats a record (a duplicate, by batch id), never loses one
            print(f"telemetry: {path} unreadable ({e}); batch records may be sent again", file=sys.stderr)
            raw = {}
        raw = raw if isinstance(raw, dict) else {}
        self.start: str | None = raw.get("start")
        self.end: str | None = raw.get("end")
        self.revision: int = int(raw.get("revision", 1)) if isinstance(raw.get("revision", 1), int) else 0
        self._saved = (self.start, self.end, self.revision)

    def save(self) -> None:
        if (self.start, self.end, self.revision) == self._saved:
            return
        write_atomic(self.path, json.dumps({"start": self.start, "end": self.end, "revision": self.revision}).encode(),
                     mode=0o640)
        self._saved = (self.start, self.end, self.revision)
