"""``reedge station check``: validate a station file and say which layers of defence it has; ``reedge station acl``:
the broker's ACL for a site's stations (``edge.telemetry.access.site_acl``).

The loader (``edge.spec.station``) refuses a file that is wrong; this command also says what a valid
file lacks, as the short table a safety engineer reads (``edge.spec.station.layers``), plus what this
machine would give the sampler (SCHED_FIFO, mlockall), judged the way the core asks for them, without
starting it. A missing layer that nothing else covers is a loud WARNING on stderr as well.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import resource
import sys
import threading
from dataclasses import asdict, dataclass, replace

from edge.spec.station import Station, load_station
from edge.spec.station.layers import Layer, safety_layers
from edge.telemetry.access import AclError, site_acl
from edge.telemetry.topics import StationTopics, TopicError

CAP_IPC_LOCK = 14   # linux/capability.h: mlock beyond RLIMIT_MEMLOCK
CAP_SYS_NICE = 23   # linux/capability.h: SCHED_FIFO beyond RLIMIT_RTPRIO


@dataclass(frozen=True)
class RealtimeOutlook:
    """What the core would obtain on this machine, and why (``sched_ok``/``mlock_ok`` None: not asked)."""

    sched_ok: bool | None
    sched_why: str
    mlock_ok: bool | None
    mlock_why: str


def _capabilities() -> int:
    """The effective capability set of this process (0 where /proc cannot say)."""
    try:
        for line in pathlib.Path("/proc/self/status").read_text().splitlines():
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    except (OSError, ValueError):
        pass
    return 0


def _vm_bytes() -> int | None:
    """This process's mapped size (VmSize): what mlockall(MCL_CURRENT) must lock and the limit is checked against."""
    try:
        for line in pathlib.Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return None


def _limit_text(value: int) -> str:
    return "unlimited" if value == resource.RLIM_INFINITY else str(value)


def _size(n: int) -> str:
    return f"{n >> 20} MiB" if n >= 1 << 20 else f"{n >> 10} KiB"


def _fifo_trial(priority: int) -> str | None:
    """Ask the kernel for SCHED_FIFO at ``priority`` on a throwaway thread (as the core's pthread_create with
    PTHREAD_EXPLICIT_SCHED does for the sampler); None if granted, else the kernel's reason."""
    result: list[str | None] = ["no answer"]

    def attempt() -> None:
        try:
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(priority))   # 0: this thread only
            result[0] = None
        except OSError as exc:
            result[0] = exc.strerror or str(exc)

    thread = threading.Thread(target=attempt, name="rt-trial", daemon=True)
    thread.start()
    thread.join()
    return result[0]


def realtime_outlook(rt_priority: int, lock_memory: bool) -> RealtimeOutlook:
    """Whether the sampler would run SCHED_FIFO and with its memory locked here, and the limits that decide it.

    The core falls back silently (``stats.sched``/``stats.mlock`` say what it got); this says it before a run."""
    caps = _capabilities()
    if rt_priority <= 0:
        sched_ok, sched_why = None, "not asked (core.rt_priority = 0)"
    else:
        soft, _hard = resource.getrlimit(resource.RLIMIT_RTPRIO)
        nice_cap = bool(caps >> CAP_SYS_NICE & 1)
        by = ("CAP_SYS_NICE" if nice_cap else
              f"RLIMIT_RTPRIO {_limit_text(soft)}" if soft == resource.RLIM_INFINITY or soft >= rt_priority else None)
        refused = _fifo_trial(rt_priority)
        if refused is None:
            sched_ok, sched_why = True, f"SCHED_FIFO {rt_priority} granted in a trial ({by or 'allowed'})"
        elif by is None:
            sched_ok, sched_why = False, (f"SCHED_FIFO {rt_priority} would be refused: RLIMIT_RTPRIO "
                                          f"{_limit_text(soft)} < {rt_priority} and no CAP_SYS_NICE (run as the "
                                          f"service with LimitRTPRIO={rt_priority} or AmbientCapabilities="
                                          "CAP_SYS_NICE); the sampler falls back to the normal scheduler")
        else:
            sched_ok, sched_why = False, (f"SCHED_FIFO {rt_priority} refused by the kernel ({refused}) although "
                                          f"{by} allows it (a cgroup without real-time budget?); the sampler "
                                          "falls back to the normal scheduler")
    if not lock_memory:
        mlock_ok, mlock_why = None, "not asked (core.lock_memory = false)"
    else:
        soft, _hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)
        size = _vm_bytes()
        if caps >> CAP_IPC_LOCK & 1:
            mlock_ok, mlock_why = True, "mlockall would succeed (CAP_IPC_LOCK)"
        elif soft == resource.RLIM_INFINITY:
            mlock_ok, mlock_why = True, "mlockall would succeed (RLIMIT_MEMLOCK unlimited)"
        elif size is not None and size <= soft:
            mlock_ok, mlock_why = True, (f"mlockall would succeed at this size ({_size(size)} mapped, "
                                         f"RLIMIT_MEMLOCK {_size(soft)}); the controller maps more")
        else:
            mapped = f"{_size(size)} mapped" if size is not None else "the mapped size"
            mlock_ok, mlock_why = False, (f"mlockall would fail: RLIMIT_MEMLOCK {_size(soft)} < {mapped} and no "
                                          "CAP_IPC_LOCK (LimitMEMLOCK=infinity in the service); page faults can "
                                          "delay a tick")
    return RealtimeOutlook(sched_ok, sched_why, mlock_ok, mlock_why)


def layers_with_machine(station: Station, outlook: RealtimeOutlook) -> tuple[Layer, ...]:
    """The station's layers, the real-time one completed with what this machine would give."""
    result = []
    for layer in safety_layers(station):
        if layer.key == "realtime" and layer.present:
            got = [why for ok, why in ((outlook.sched_ok, outlook.sched_why), (outlook.mlock_ok, outlook.mlock_why))
                   if ok is not None]
            short = any(ok is False for ok in (outlook.sched_ok, outlook.mlock_ok))
            layer = replace(layer, detail=f"{layer.detail}; here: {'; '.join(got)}",
                            severity="warn" if short else layer.severity)
        result.append(layer)
    return tuple(result)


_MARK = {"ok": "", "warn": "!", "loud": "!!"}


def _table(layers: tuple[Layer, ...]) -> list[str]:
    width = max(len(layer.title) for layer in layers)
    lines = ["  safety layers:"]
    for layer in layers:
        state = ("yes" if layer.present else "NO") + _MARK[layer.severity]
        lines.append(f"    {layer.title:<{width}}  {state:<5} {layer.detail}")
    return lines


def cmd_station_check(args: argparse.Namespace) -> int:
    """Exit 0: the file is valid (missing layers are warnings); 1 with --strict and a missing or weak layer;
    2: the file is refused (every problem on stderr, by ``main``)."""
    path = pathlib.Path(args.file)
    station = load_station(path)
    outlook = realtime_outlook(station.core.rt_priority, station.core.lock_memory)
    layers = layers_with_machine(station, outlook)
    core = station.core
    loud = [layer for layer in layers if layer.severity == "loud"]
    if args.json:
        print(json.dumps({
            "file": str(path), "ok": True,
            "station": {"site": station.identity.site, "id": station.identity.station_id,
                        "kind": station.identity.kind, "board": station.board},
            "layers": [asdict(layer) for layer in layers],
            "realtime_here": asdict(outlook),
            "interlocks": [{"name": r.name, "kind": r.kind, "channel": r.channel, "threshold": r.threshold,
                            "latch": r.latch, "action": list(r.action)} for r in core.rules],
        }, indent=2))
    else:
        print(f"{args.file}: OK  station {station.identity.site}/{station.identity.station_id} "
              f"({station.identity.kind})")
        print(f"  board: {station.board or 'none declared (the wiring is not checked against a board)'}")
        print(f"  period {core.period_ms} ms, {len(core.drivers)} driver(s), {len(core.channels)} channels, "
              f"{len(core.outputs)} outputs, {len(core.rules)} interlocks, {len(core.permissives)} permissive terms")
        for rule in core.rules:
            what = rule.channel or "controller heartbeat"
            print(f"  interlock {rule.name}: {rule.kind} {what} {rule.threshold:g}"
                  f"{' latched' if rule.latch else ''} -> safe: {', '.join(rule.action)}")
        print("\n".join(_table(layers)))
    for layer in loud:
        print(f"WARNING: {args.file}: {layer.title}: {layer.detail}", file=sys.stderr)
    if args.strict and any(not layer.present or layer.severity != "ok" for layer in layers):
        return 1
    return 0


def cmd_station_acl(args: argparse.Namespace) -> int:
    """Print the mosquitto ACL of the given stations (one site); exit 2 with one line on stderr if they cannot
    share one (a station file that is refused: every problem on stderr, by ``main``)."""
    stations = []
    for file in args.files:
        station = load_station(pathlib.Path(file))
        mqtt = station.mqtt
        identity = mqtt.username if mqtt is not None and mqtt.username else None   # else the CN: its station id
        stations.append((station.commands, StationTopics(station.identity.site, station.identity.station_id),
                         identity))
    try:
        text = site_acl(stations)
    except (AclError, TopicError) as e:
        print(f"reedge station acl: {e}", file=sys.stderr)
        return 2
    print(text, end="")
    return 0


def register(ssub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``station check FILE [--json] [--strict]``, ``station acl FILE...``."""
    c = ssub.add_parser("check", help="validate a station file, summarise its interlocks and its layers of defence")
    c.add_argument("file")
    c.add_argument("--json", action="store_true", help="the summary and the layers as JSON")
    c.add_argument("--strict", action="store_true", help="exit 1 when a layer of defence is missing or weak")
    c.set_defaults(func=cmd_station_check)
    c = ssub.add_parser("acl", help="print the broker's ACL (mosquitto acl_file) for the stations of one site: each"
                                    " identity may send only the verbs of its roles (deploy/mosquitto/README.md)")
    c.add_argument("files", nargs="+", metavar="STATION", help="station files, all of one site")
    c.set_defaults(func=cmd_station_acl)
