"""``reedge provision``: the files that make an SBC run one station, written into an image folder
(``--image-root``: an SD card's mounted root, a rootfs being built) or the running system (``--system``).

What it writes, and only that (every file is reedge's own, so writing is reversible by deleting it):

- ``/etc/reedge/station.toml``: the station file, byte for byte, 0640; and each credential file the station
  names by a relative path (``[mqtt] password_file``, ``ca_file``, ``cert_file``, ``key_file``), copied
  beside it, 0640, where the copied station looks for it;
- ``/etc/systemd/system/reedge.service``: ``reedge run`` as a ``Type=notify`` service with a
  ``WatchdogSec`` (``edge.app.systemd`` pings it from the scan loop), ``Restart=always`` within a start
  limit (``START_LIMIT``: a controller that cannot start is not restarted forever), real-time
  and memory-locking rights for the sampler, and the hardening that leaves GPIO, SPI and serial
  ports reachable (see ``HARDENING``);
- ``/etc/systemd/system/reedge-setup.service``: run before each start, as root: creates the ``reedge``
  user (``systemd-sysusers``) and gives it its files (``systemd-tmpfiles``). Not left to the boot-time
  ``systemd-sysusers.service``: that one runs only after an OS update (``ConditionNeedsUpdate=/etc``);
- ``/etc/systemd/system/reedge-gave-up.service``: one journal line (``journalctl -t reedge``) saying the
  service gave up restarting, what state the plant is in and how to start it again;
- ``/etc/systemd/system/multi-user.target.wants/reedge.service``: the link ``systemctl enable`` makes,
  so an image starts the controller at its first boot;
- ``/etc/sysusers.d/reedge.conf``: the ``reedge`` user and its device groups (gpio, spi, i2c, dialout);
- ``/etc/tmpfiles.d/reedge.conf``: who owns what: ``/etc/reedge``, the station and the credential files
  in it root:reedge, 0750/0640 (the group does not exist before the user is made, so ownership is given
  at start, not here); ``/var/lib/reedge`` is the unit's ``StateDirectory=``, given to reedge by systemd;
- for a board with a hardware watchdog (``[watchdog]`` of its board file):
  ``/etc/systemd/system.conf.d/reedge-watchdog.conf``: systemd pets it (``RuntimeWatchdogSec``, within
  what it counts), so a hung kernel or a stuck PID 1 reboots the board; and
  ``/etc/modules-load.d/reedge-watchdog.conf``: loads its driver (``bcm2835_wdt`` on the Pis).

It never edits a file it did not write (``config.txt`` included): what the board still needs there
(``dtparam=spi=on`` for a station with converters, ``dtparam=watchdog=on``) is printed as a to-do,
judged as the firmware reads ``config.txt`` (``edge.app.config_txt``). A credential file named by an
absolute path is not copied either: a to-do says where it must be and who must read it.

Idempotent: each file is compared with what is there and written (atomically) only when it differs;
a second run reports every file unchanged. Three safety layers meet here, from fast to coarse: the
C core's dead-man (outputs safe within ``deadman_ms``), systemd's service watchdog (restarts a hung
controller), the hardware watchdog (reboots a hung machine), and outside all software the watchdog
relay on the core's heartbeat line.
"""

from __future__ import annotations

import os
import pathlib
import posixpath
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, TextIO

from edge.app.config_txt import read_config_txt
from edge.files import write_atomic
from edge.spec.board import Board, load_board
from edge.spec.reader import counted, parse_toml, read_text
from edge.spec.station import Station, load_station

CONFIG_DIR = "/etc/reedge"
STATION_PATH = "/etc/reedge/station.toml"
UNIT_PATH = "/etc/systemd/system/reedge.service"
SETUP_UNIT_PATH = "/etc/systemd/system/reedge-setup.service"
GAVE_UP_UNIT_PATH = "/etc/systemd/system/reedge-gave-up.service"
WANTS_PATH = "/etc/systemd/system/multi-user.target.wants/reedge.service"
SYSUSERS_PATH = "/etc/sysusers.d/reedge.conf"
TMPFILES_PATH = "/etc/tmpfiles.d/reedge.conf"
WATCHDOG_PATH = "/etc/systemd/system.conf.d/reedge-watchdog.conf"
MODULES_PATH = "/etc/modules-load.d/reedge-watchdog.conf"
STATE_DIR = "/var/lib/reedge"
IMAGE_REEDGE_BIN = "/opt/reedge/.venv/bin/reedge"   # where the image recipe installs the venv
DEVICE_GROUPS = ("dialout", "gpio", "spi", "i2c")
CREDENTIAL_KEYS = ("ca_file", "cert_file", "key_file", "password_file")   # [mqtt] files the service reads
#: 5 failed starts within 10 minutes and systemd stops restarting (a station file it cannot read, a
#: missing device): the outputs are safe meanwhile (dead-man, relay), and reedge-gave-up.service says so
START_LIMIT_BURST = 5
START_LIMIT_INTERVAL = "10min"

#: Hardening that keeps /dev/gpiochip*, /dev/spidev* and the serial ports reachable. Left out on
#: purpose, each with its reason: PrivateDevices (hides every device node), ProtectClock and any
#: DeviceAllow (switch on the device allow-list, which then refuses gpiochip/spidev/tty),
#: RestrictRealtime (refuses the sampler's SCHED_FIFO), PrivateUsers (drops the device groups),
#: MemoryDenyWriteExecute (libffi closures in cffi may need writable+executable pages).
HARDENING = (
    "NoNewPrivileges=yes",
    "ProtectSystem=strict",
    "ProtectHome=yes",
    "PrivateTmp=yes",
    "ProtectKernelTunables=yes",
    "ProtectKernelModules=yes",
    "ProtectKernelLogs=yes",
    "ProtectControlGroups=yes",
    "ProtectHostname=yes",
    "ProtectProc=invisible",
    "RestrictNamespaces=yes",
    "RestrictSUIDSGID=yes",
    "LockPersonality=yes",
    "RemoveIPC=yes",
    "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6",
    "SystemCallArchitectures=native",
    "UMask=0027",
)


class ProvisionError(RuntimeError):
    """Provisioning refused before anything was written; the message says why and what to do."""


@dataclass(frozen=True)
class PlannedFile:
    path: str            # absolute path on the target system
    content: bytes
    mode: int = 0o644
    link_to: str = ""    # a symbolic link to this absolute path instead of a file (content unused)


@dataclass(frozen=True)
class Change:
    path: str
    what: Literal["created", "updated", "unchanged"]


@dataclass(frozen=True)
class Options:
    reedge_bin: str = IMAGE_REEDGE_BIN
    service_watchdog_s: int = 10      # WatchdogSec: reedge run pings every half of it
    hardware_watchdog_s: int = 10     # RuntimeWatchdogSec, within the board's [watchdog] max_s


@dataclass(frozen=True)
class Plan:
    files: list[PlannedFile]
    settings: list[str]           # what config.txt must say for this station ("dtparam=spi=on")
    credentials: list[str]        # [mqtt] files named by absolute paths: the technician puts them there
    board: Board
    register_files: list[str]     # sim drivers' register files: the plant makes them, reedge must write them


def plan(station_file: pathlib.Path, options: Options) -> Plan:
    """The files for this station, what reedge leaves to the technician, and its board. Refuses a
    station that names no board: its wiring was never checked against the hardware."""
    station = load_station(station_file)
    if station.board is None:
        raise ProvisionError(f"{station_file}: the station names no board, so its wiring was never checked "
                             "against the hardware: add board = \"rpi5\" (or rpi4, cm4_industrial, sim) to "
                             "[station] (boards/README.md)")
    board = load_board(station.board)
    if not options.reedge_bin.startswith("/"):
        raise ProvisionError(f"--reedge-bin {options.reedge_bin!r}: expected an absolute path on the target")
    if any(c.isspace() or c in "%\"'\\" for c in options.reedge_bin):
        # ExecStart= splits at spaces and expands %: "/opt/re%iedge/..." would run /opt/reedge/...
        raise ProvisionError(f"--reedge-bin {options.reedge_bin!r}: systemd would split or expand this path in "
                             "ExecStart=: install reedge where its path has no space, quote, backslash or '%'")
    if board.watchdog is not None and not 1 <= options.hardware_watchdog_s <= board.watchdog.max_s:
        raise ProvisionError(f"--hw-watchdog-sec {options.hardware_watchdog_s}: the {board.name}'s watchdog "
                             f"({board.watchdog.driver}) counts 1 to {board.watchdog.max_s} s")
    if not 2 <= options.service_watchdog_s <= 600:
        raise ProvisionError(f"--watchdog-sec {options.service_watchdog_s}: expected 2 to 600 s")
    latch = station.core.latch_file
    if latch is not None and not posixpath.normpath(latch).startswith(STATE_DIR + "/"):
        raise ProvisionError(f"{station_file}: core.latch_file {latch!r}: the service may write only under "
                             f"{STATE_DIR} (ProtectSystem=strict): leave latch_file out (reedge run keeps the "
                             f"latched trips in {STATE_DIR}/latched-trips) or put it under {STATE_DIR}/")
    copied, absolute = _credentials(station_file)
    files = [
        # 0640, root:reedge once reedge-setup.service has run (the group does not exist before)
        PlannedFile(STATION_PATH, station_file.read_bytes(), 0o640),
        *copied,
        PlannedFile(UNIT_PATH, unit_text(station, options).encode()),
        PlannedFile(SETUP_UNIT_PATH, setup_unit_text().encode()),
        PlannedFile(GAVE_UP_UNIT_PATH, gave_up_unit_text().encode()),
        PlannedFile(WANTS_PATH, b"", link_to=UNIT_PATH),   # what `systemctl enable reedge` makes
        PlannedFile(SYSUSERS_PATH, sysusers_text().encode()),
        PlannedFile(TMPFILES_PATH, tmpfiles_text([f.path for f in copied] + [path for path in absolute
                                                  if path.startswith(CONFIG_DIR + "/")]).encode()),
    ]
    if board.watchdog is not None:  # the SoC's hardware watchdog
        files.append(PlannedFile(WATCHDOG_PATH, watchdog_text(options, board.watchdog.max_s).encode()))
        files.append(PlannedFile(MODULES_PATH, f"# reedge provision: the {board.name}'s hardware watchdog driver\n"
                                               f"{board.watchdog.driver}\n".encode()))
    registers = [d.params["path"] for d in station.core.drivers if d.type == "sim" and "path" in d.params]
    return Plan(files, _todos(station, board), absolute, board, registers)


def _credentials(station_file: pathlib.Path) -> tuple[list[PlannedFile], list[str]]:
    """The [mqtt] files the service reads: a relative path is copied beside the station (where the copy
    looks for it); an absolute one is the technician's to put there (returned as the second list)."""
    mqtt = parse_toml(read_text(station_file, "station file"), str(station_file)).get("mqtt", {})
    files: list[PlannedFile] = []
    absolute: list[str] = []
    for key in CREDENTIAL_KEYS:
        name = mqtt.get(key) if isinstance(mqtt, dict) else None
        if not isinstance(name, str):
            continue
        if name.startswith("~"):
            raise ProvisionError(f"{station_file}: mqtt.{key} {name!r}: the service has no home folder "
                                 "(ProtectHome=yes): name a file beside the station or an absolute path")
        if name.startswith("/"):
            absolute.append(posixpath.normpath(name))
            continue
        target = posixpath.normpath(posixpath.join(CONFIG_DIR, name))
        if not target.startswith(CONFIG_DIR + "/"):
            raise ProvisionError(f"{station_file}: mqtt.{key} {name!r} leaves the station's folder: name a file "
                                 "in it or below it, or an absolute path")
        files.append(PlannedFile(target, (station_file.parent / name).read_bytes(), 0o640))
    return files, absolute


def unit_text(station: Station, options: Options) -> str:
    ident = station.identity
    lines = [
        "# Written by `reedge provision`; it is rewritten on the next provision: change the options there.",
        "[Unit]",
        f"Description=reeproduce-edge controller, station {ident.site}/{ident.station_id} ({ident.kind})",
        f"Documentation=file://{STATION_PATH}",
        "After=network-online.target time-sync.target reedge-setup.service",
        "Wants=network-online.target",
        "Requires=reedge-setup.service",
        "# a controller that cannot start (station file unreadable, device missing) is not restarted forever:",
        "# the outputs are safe while it is down (dead-man, watchdog relay); reedge-gave-up.service says so",
        f"StartLimitIntervalSec={START_LIMIT_INTERVAL}",
        f"StartLimitBurst={START_LIMIT_BURST}",
        "OnFailure=reedge-gave-up.service",
        "",
        "[Service]",
        "Type=notify",
        "NotifyAccess=main",
        f"ExecStart={options.reedge_bin} run --station {STATION_PATH} --state-dir {STATE_DIR}",
        f"WatchdogSec={options.service_watchdog_s}s",
        "Restart=always",
        "RestartSec=2s",
        "TimeoutStartSec=60s",
        "TimeoutStopSec=20s",
        "User=reedge",
        "Group=reedge",
        f"SupplementaryGroups={' '.join(DEVICE_GROUPS)}",
        "StateDirectory=reedge",
        "StateDirectoryMode=0750",
        "# the sampler: SCHED_FIFO and mlockall (it falls back silently and reports what it got)",
        "AmbientCapabilities=CAP_SYS_NICE CAP_IPC_LOCK",
        "CapabilityBoundingSet=CAP_SYS_NICE CAP_IPC_LOCK",
        "LimitRTPRIO=99",
        "LimitMEMLOCK=infinity",
        "# hardening that keeps /dev/gpiochip*, /dev/spidev* and serial ports reachable (edge/app/provision.py)",
        *HARDENING,
        "",
        "[Install]",
        "WantedBy=multi-user.target",
        "",
    ]
    return "\n".join(lines)


def setup_unit_text() -> str:
    return "\n".join([
        "# Written by `reedge provision`: the reedge user and its files, before each start of reedge.service",
        "[Unit]",
        "Description=reeproduce-edge: the reedge user and the ownership of its files",
        f"Documentation=file://{TMPFILES_PATH}",
        "After=systemd-sysusers.service systemd-tmpfiles-setup.service",
        "Before=reedge.service",
        "",
        "[Service]",
        "Type=oneshot",
        f"ExecStart=/usr/bin/systemd-sysusers {SYSUSERS_PATH}",
        f"ExecStart=/usr/bin/systemd-tmpfiles --create {TMPFILES_PATH}",
        "",
    ])


def gave_up_unit_text() -> str:
    line = (f"reedge.service failed {START_LIMIT_BURST} times within {START_LIMIT_INTERVAL} and is no longer "
            "restarted. The plant's outputs are safe and the watchdog relay has dropped. Find the cause with "
            "journalctl -u reedge, fix it, then run: systemctl reset-failed reedge && systemctl start reedge")
    return "\n".join([
        "# Written by `reedge provision`: one clear journal line when reedge.service hits its start limit",
        "[Unit]",
        "Description=reeproduce-edge: reedge.service gave up restarting",
        "",
        "[Service]",
        "Type=oneshot",
        "SyslogIdentifier=reedge",
        "SyslogLevel=crit",
        f"ExecStart=/usr/bin/echo \"{line}\"",
        "",
    ])


def tmpfiles_text(credentials: Sequence[str]) -> str:
    """systemd-tmpfiles lines: the service reads its station and credentials through group reedge."""
    lines = ["# Written by `reedge provision`: applied by reedge-setup.service before each start of reedge",
             f"d {CONFIG_DIR} 0750 root reedge -",
             f"z {STATION_PATH} 0640 root reedge -"]
    # a credential's own folders too: provision made them with its umask (0700 root under umask 077)
    folders = {str(parent) for path in credentials for parent in pathlib.PurePosixPath(path).parents
               if str(parent).startswith(CONFIG_DIR + "/")}
    lines += [f"d {folder} 0750 root reedge -" for folder in sorted(folders)]
    lines += [f"z {path} 0640 root reedge -" for path in credentials]
    return "\n".join(lines) + "\n"


def sysusers_text() -> str:
    lines = ["# Written by `reedge provision`: the controller's user and the groups that own its devices",
             f"u reedge - \"reeproduce-edge controller\" {STATE_DIR}"]
    lines += [f"m reedge {group}" for group in DEVICE_GROUPS]
    return "\n".join(lines) + "\n"


def watchdog_text(options: Options, max_s: int) -> str:
    return ("# Written by `reedge provision`: systemd pets the hardware watchdog; a hung kernel reboots the board\n"
            "[Manager]\n"
            f"RuntimeWatchdogSec={options.hardware_watchdog_s}s\n"
            f"RebootWatchdogSec={max_s}s\n")   # the most the board's watchdog counts: the kernel refuses longer


def _todos(station: Station, board: Board) -> list[str]:
    """What the board's firmware config must say for this station; reedge does not edit config.txt."""
    todos: list[str] = []
    if board.watchdog is not None and board.watchdog.enable:
        todos.append(board.watchdog.enable.split(" in ")[0])
    for driver in station.core.drivers:
        if driver.type == "spidev":
            bus = board.spi_bus_for(driver.params.get("dev", ""))
            if bus is not None and bus.enable:
                todos.append(bus.enable.split(" in ")[0])
    return list(dict.fromkeys(todos))


def _missing_todos(root: pathlib.Path, planned: Plan) -> list[str]:
    """The config.txt settings the board will not get, read as its firmware reads the file, and the
    credential files the target lacks or that reedge cannot give to its user."""
    todos = [f"put {path} on the target: the station names it" for path in planned.credentials
             if not (root / path.lstrip("/")).is_file()]
    todos += [f"{path} is outside {CONFIG_DIR}: make sure user reedge can read it (root:reedge 0640), or keep it "
              f"in {CONFIG_DIR}, whose files are given to reedge at each start"
              for path in planned.credentials if not path.startswith(CONFIG_DIR + "/")]
    todos += [f"{path}: the plant that creates this register file must leave it writable by user reedge (run the "
              "plant as reedge, or chgrp reedge and chmod 0660 it): the core opens it for writing"
              for path in planned.register_files]
    for candidate in ("boot/firmware/config.txt", "boot/config.txt"):
        path = root / candidate
        if path.is_file():
            config = read_config_txt(path, planned.board.config_txt_filters)
            missing = []
            for t in planned.settings:
                if not config.has(t):
                    why = config.reason(t)
                    missing.append(f"/{candidate}: add '{t}'" + (f" ({why})" if why else ""))
            return missing + todos
    return [f"config.txt (not found under {root}): make sure it has '{t}'" for t in planned.settings] + todos


def apply(files: Sequence[PlannedFile], root: pathlib.Path) -> list[Change]:
    """Write each file under ``root`` that differs (content or mode, or a link's target), atomically;
    report every file."""
    changes: list[Change] = []
    for planned in files:
        target = root / planned.path.lstrip("/")
        if planned.link_to:
            exists = target.is_symlink() or target.exists()
            if target.is_symlink() and os.readlink(target) == planned.link_to:
                changes.append(Change(planned.path, "unchanged"))
                continue
            _link_atomic(target, planned.link_to)
        else:
            exists = target.is_file()
            if exists and target.read_bytes() == planned.content and (target.stat().st_mode & 0o777) == planned.mode:
                changes.append(Change(planned.path, "unchanged"))
                continue
            write_atomic(target, planned.content, mode=planned.mode)
        changes.append(Change(planned.path, "updated" if exists else "created"))
    return changes


def _link_atomic(target: pathlib.Path, link_to: str) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.name}.tmp")
    temporary.unlink(missing_ok=True)
    os.symlink(link_to, temporary)
    os.replace(temporary, target)


def provision(station_file: pathlib.Path, *, image_root: pathlib.Path | None, system: bool,
              options: Options | None = None, out: TextIO | None = None) -> list[Change]:
    """Plan, check the target, write; print what changed and what is left to do by hand."""
    stream = out if out is not None else sys.stdout
    if system == (image_root is not None):
        raise ProvisionError("give exactly one target: --image-root DIR (an image folder) or --system")
    if system:
        if os.geteuid() != 0:
            raise ProvisionError("--system writes /etc and needs root: run it with sudo (nothing was written)")
        root = pathlib.Path("/")
        if options is None:
            options = Options(reedge_bin=shutil.which("reedge") or os.path.join(sys.prefix, "bin", "reedge"))
    else:
        assert image_root is not None
        root = image_root
        if not root.is_dir():
            raise ProvisionError(f"--image-root {root}: no such folder (mount the image's root filesystem first)")
    planned = plan(station_file, options or Options())
    changes = apply(planned.files, root)
    where = "this system" if system else str(root)
    for change in changes:
        print(f"  {change.what:9} {change.path}", file=stream)
    changed = [c for c in changes if c.what != "unchanged"]
    if changed:
        print(f"{counted(len(changed), 'file')} written to {where}", file=stream)
    else:
        print(f"nothing changed: {where} already has these files", file=stream)
    for todo in _missing_todos(root, planned):
        print(f"  to do by hand: {todo}", file=stream)
    if system and changed:
        print("next: systemctl daemon-reload && systemctl restart reedge", file=stream)
    return changes
