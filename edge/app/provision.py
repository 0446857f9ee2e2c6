"""``reedge provision``: the files that make an SBC run one station, written into an image folder
(``--image-root``: an SD card's mounted root, a rootfs being built) or the running system (``--system``).

What it writes, and only that (every file is reedge's own, so writing is reversible by deleting it):

- ``/etc/reedge/station.toml``: the station file, byte for byte;
- ``/etc/systemd/system/reedge.service``: ``reedge run`` as a ``Type=notify`` service with a
  ``WatchdogSec`` (``edge.app.systemd`` pings it from the scan loop), ``Restart=always``, real-time
  and memory-locking rights for the sampler, and the hardening that leaves GPIO, SPI and serial
  ports reachable (see ``HARDENING``);
- ``/etc/sysusers.d/reedge.conf``: the ``reedge`` user and its device groups (gpio, spi, i2c, dialout);
- ``/etc/systemd/system.conf.d/reedge-watchdog.conf``: systemd pets the SoC's hardware watchdog
  (``RuntimeWatchdogSec``), so a hung kernel or a stuck PID 1 reboots the board;
- ``/etc/modules-load.d/reedge-watchdog.conf``: loads ``bcm2835_wdt``, the Pi's watchdog driver.

It never edits a file it did not write (``config.txt`` included): what the board still needs there
(``dtparam=spi=on`` for a station with converters, ``dtparam=watchdog=on``) is printed as a to-do.

Idempotent: each file is compared with what is there and written (atomically) only when it differs;
a second run reports every file unchanged. Three safety layers meet here, from fast to coarse: the
C core's dead-man (outputs safe within ``deadman_ms``), systemd's service watchdog (restarts a hung
controller), the hardware watchdog (reboots a hung machine), and outside all software the watchdog
relay on the core's heartbeat line.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, TextIO

from edge.files import write_atomic
from edge.spec.board import Board, load_board
from edge.spec.station import Station, load_station

STATION_PATH = "/etc/reedge/station.toml"
UNIT_PATH = "/etc/systemd/system/reedge.service"
SYSUSERS_PATH = "/etc/sysusers.d/reedge.conf"
WATCHDOG_PATH = "/etc/systemd/system.conf.d/reedge-watchdog.conf"
MODULES_PATH = "/etc/modules-load.d/reedge-watchdog.conf"
STATE_DIR = "/var/lib/reedge"
IMAGE_REEDGE_BIN = "/opt/reedge/.venv/bin/reedge"   # where the image recipe installs the venv
DEVICE_GROUPS = ("dialout", "gpio", "spi", "i2c")
BCM_WATCHDOG_MAX_S = 15     # bcm2835_wdt cannot count longer than ~15.9 s

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


@dataclass(frozen=True)
class Change:
    path: str
    what: Literal["created", "updated", "unchanged"]


@dataclass(frozen=True)
class Options:
    reedge_bin: str = IMAGE_REEDGE_BIN
    service_watchdog_s: int = 10      # WatchdogSec: reedge run pings every half of it
    hardware_watchdog_s: int = 10     # RuntimeWatchdogSec


def plan(station_file: pathlib.Path, options: Options) -> tuple[list[PlannedFile], list[str]]:
    """The files for this station, and the to-dos reedge leaves to the technician. Refuses a
    station that names no board: its wiring was never checked against the hardware."""
    station = load_station(station_file)
    if station.board is None:
        raise ProvisionError(f"{station_file}: the station names no board, so its wiring was never checked "
                             "against the hardware: add board = \"rpi5\" (or rpi4, cm4_industrial, sim) to "
                             "[station] (boards/README.md)")
    board = load_board(station.board)
    if not options.reedge_bin.startswith("/"):
        raise ProvisionError(f"--reedge-bin {options.reedge_bin!r}: expected an absolute path on the target")
    if not 1 <= options.hardware_watchdog_s <= BCM_WATCHDOG_MAX_S and board.chips:
        raise ProvisionError(f"--hw-watchdog-sec {options.hardware_watchdog_s}: the Pi's watchdog counts "
                             f"1 to {BCM_WATCHDOG_MAX_S} s")
    if not 2 <= options.service_watchdog_s <= 600:
        raise ProvisionError(f"--watchdog-sec {options.service_watchdog_s}: expected 2 to 600 s")
    files = [
        # world-readable: the service runs as reedge, and the group that could narrow it does not exist until
        # systemd-sysusers runs at first boot; the file holds no secret (credentials are files it names)
        PlannedFile(STATION_PATH, station_file.read_bytes(), 0o644),
        PlannedFile(UNIT_PATH, unit_text(station, options).encode()),
        PlannedFile(SYSUSERS_PATH, sysusers_text().encode()),
    ]
    if board.chips:  # a real Pi-family board: the SoC's watchdog
        files.append(PlannedFile(WATCHDOG_PATH, watchdog_text(options).encode()))
        files.append(PlannedFile(MODULES_PATH, b"# reedge provision: the Raspberry Pi's hardware watchdog driver\n"
                                               b"bcm2835_wdt\n"))
    return files, _todos(station, board)


def unit_text(station: Station, options: Options) -> str:
    ident = station.identity
    lines = [
        "# Written by `reedge provision`; it is rewritten on the next provision: change the options there.",
        "[Unit]",
        f"Description=reeproduce-edge controller, station {ident.site}/{ident.station_id} ({ident.kind})",
        f"Documentation=file://{STATION_PATH}",
        "After=network-online.target time-sync.target systemd-sysusers.service",
        "Wants=network-online.target",
        "# never give up restarting: while it is down the core's outputs are safe and the relay has dropped",
        "StartLimitIntervalSec=0",
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


def sysusers_text() -> str:
    lines = ["# Written by `reedge provision`: the controller's user and the groups that own its devices",
             f"u reedge - \"reeproduce-edge controller\" {STATE_DIR}"]
    lines += [f"m reedge {group}" for group in DEVICE_GROUPS]
    return "\n".join(lines) + "\n"


def watchdog_text(options: Options) -> str:
    return ("# Written by `reedge provision`: systemd pets the hardware watchdog; a hung kernel reboots the board\n"
            "[Manager]\n"
            f"RuntimeWatchdogSec={options.hardware_watchdog_s}s\n"
            f"RebootWatchdogSec={BCM_WATCHDOG_MAX_S}s\n")   # the most bcm2835_wdt counts: it refuses longer


def _todos(station: Station, board: Board) -> list[str]:
    """What the board's firmware config must say for this station; reedge does not edit config.txt."""
    todos: list[str] = []
    if board.chips:
        todos.append("dtparam=watchdog=on")
    for driver in station.core.drivers:
        if driver.type == "spidev":
            bus = board.spi_bus_for(driver.params.get("dev", ""))
            if bus is not None and bus.enable:
                todos.append(bus.enable.split(" in ")[0])
    return list(dict.fromkeys(todos))


def _missing_todos(root: pathlib.Path, todos: Sequence[str]) -> list[str]:
    for candidate in ("boot/firmware/config.txt", "boot/config.txt"):
        config = root / candidate
        if config.is_file():
            active = _active_lines(config.read_text(encoding="utf-8", errors="replace"))
            return [f"/{candidate}: add '{t}'" for t in todos if t not in active]
    return [f"config.txt (not found under {root}): make sure it has '{t}'" for t in todos]


def _active_lines(config_txt: str) -> set[str]:
    """The settings config.txt really makes: comments (whole-line or trailing) and blanks dropped, so that
    ``#dtparam=spi=on`` does not count as SPI enabled."""
    return {line.split("#", 1)[0].strip() for line in config_txt.splitlines()} - {""}


def apply(files: Sequence[PlannedFile], root: pathlib.Path) -> list[Change]:
    """Write each file under ``root`` that differs (content or mode), atomically; report every file."""
    changes: list[Change] = []
    for planned in files:
        target = root / planned.path.lstrip("/")
        exists = target.is_file()
        if exists and target.read_bytes() == planned.content and (target.stat().st_mode & 0o777) == planned.mode:
            changes.append(Change(planned.path, "unchanged"))
            continue
        write_atomic(target, planned.content, mode=planned.mode)
        changes.append(Change(planned.path, "updated" if exists else "created"))
    return changes


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
    files, todos = plan(station_file, options or Options())
    changes = apply(files, root)
    where = "this system" if system else str(root)
    for change in changes:
        print(f"  {change.what:9} {change.path}", file=stream)
    changed = [c for c in changes if c.what != "unchanged"]
    if changed:
        print(f"{len(changed)} file(s) written to {where}", file=stream)
    else:
        print(f"nothing changed: {where} already has these files", file=stream)
    for todo in _missing_todos(root, todos):
        print(f"  to do by hand: {todo}", file=stream)
    if system and changed:
        print("next: systemd-sysusers && systemctl daemon-reload && systemctl enable --now reedge",
              file=stream)
    return changes
