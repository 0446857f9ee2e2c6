"""A virtual Raspberry Pi Pico sensor node: real MicroPython on a pseudo-terminal.

The interpreter is MicroPython's own WebAssembly port (npm package pinned in ``package.json``,
installed into ``node_modules/`` by :func:`ensure_runtime`), run by Node.js (``runner.mjs``).
Its console is bridged to a pty, so pyserial and mpremote talk to ``VirtualNode.port`` exactly as
to ``/dev/ttyACM0``: friendly and raw REPL, Ctrl-A/B/C/D, soft reset, ``main.py`` run at boot.

What differs from a real board, and why:

* raw-paste mode hangs in this port's event-driven REPL, so the bridge answers mpremote's probe
  with ``R\\x00`` ("understood, not supported") and mpremote falls back to plain raw mode;
* ``machine`` is a harness module (``lib/machine.py``): pins, SPI with MAX31856 models, I2C with
  ADS1115 models, WDT, resets. The firmware never knows; the test sets the chips' readings through
  :meth:`VirtualNode.set_max31856`, :meth:`VirtualNode.set_ads1115`, :meth:`VirtualNode.set_input`
  and reads driven outputs with :meth:`VirtualNode.outputs`;
* the console's receive side is bounded as on a Pico (TinyUSB's 256-byte CDC FIFO plus the rp2
  port's 512-byte stdin ring): bytes the firmware does not read stay in the pty and the host's
  writes block, as USB flow control throttles a host writing faster than the firmware reads;
* the console's transmit side waits as a Pico's does: while a host holds the port open and does not read,
  a write that finds the buffer full waits up to 500 ms (MicroPython's USB CDC TX timeout) and then drops;
  with no host holding the port (only the harness's own descriptor) it drops at once;
* every change of a driven pin is logged with the node's own ``ticks_ms`` (:meth:`VirtualNode.pin_log`),
  so a test times the firmware on the node's clock instead of racing it from outside, and every
  stretch in which the interpreter's process got no CPU (:meth:`VirtualNode.stalls`), which a Pico
  never loses;
* the flash is the host folder ``fs_dir``: read at every boot, written through on every file close,
  so files survive resets and the test can look at them.

``port`` is a stable symlink (like ``/dev/serial/by-id/...``) to the current pty: :meth:`unplug`
and :meth:`replug` give the node a new pty (and a fresh boot, as a bus-powered Pico gets) while
``port`` keeps its name.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import tty
from pathlib import Path
from types import TracebackType
from typing import Any, NamedTuple

from hil import npm
from hil.resources import virtual_node_dir

HERE = virtual_node_dir()
PACKAGE = "@micropython/micropython-webassembly-pyscript"
PINNED_VERSION = "1.29.0-6"
MIN_NODE = (18, 3)

EXIT_SOFT_RESET = 80
EXIT_HARD_RESET = 81
EXIT_SOFT_RESET_RAW = 82
EXIT_WATCHDOG = 83


class VirtualNodeError(RuntimeError):
    """The virtual node cannot be set up or started; the message says what to do."""


def ensure_runtime() -> str:
    """Node.js present and the pinned MicroPython installed (``npm ci``, once per checkout); returns node's path.

    Safe to call from parallel test processes: the install runs under a file lock.
    """
    path = npm.node(MIN_NODE, "the virtual sensor node (MicroPython's WebAssembly port)", VirtualNodeError)
    npm.ensure_installed(HERE, PACKAGE, PINNED_VERSION, VirtualNodeError)
    return path


def _max31856_entry(temp_c: float | None, cold_junction_c: float | None, fault: int | None,
                    old: dict[str, Any], present: bool | None = None) -> dict[str, Any]:
    new = dict(old)
    if present is not None:
        new["present"] = bool(present)
    if temp_c is not None:
        new["tc_c"] = float(temp_c)
    if cold_junction_c is not None:
        new["cj_c"] = float(cold_junction_c)
    if fault is not None:
        if not 0 <= fault <= 0xFF:
            raise ValueError(f"MAX31856 fault status is one byte, got {fault}")
        new["fault"] = int(fault)
    return new


def _level(value: object, what: str) -> int:
    if value not in (0, 1):
        raise ValueError(f"{what} is a logic level, 0 or 1, got {value!r}")
    return 1 if value else 0


def pin_name(pin: int | str) -> str:
    """The key used in outputs/inputs: ``GP<n>`` for GPIO numbers, ``LED`` for the on-board LED."""
    if isinstance(pin, int):
        if not 0 <= pin <= 29:
            raise ValueError(f"the Pico has GPIO 0..29, got {pin}")
        return f"GP{pin}"
    if pin in ("LED", "WL_GPIO0"):
        return "LED"
    if pin.startswith("GP") and pin[2:].isdigit():
        return pin_name(int(pin[2:]))
    raise ValueError(f"unknown pin {pin!r} (GPIO number, 'GP<n>' or 'LED')")


class PinChange(NamedTuple):
    """One change of a driven pin: which boot, the node's ticks_ms then, the pin's name and its new level."""

    boot: int
    t_ms: int
    pin: str
    level: int


class Stall(NamedTuple):
    """The interpreter got no CPU for ``lost_ms`` up to ``t_ms`` (node ticks_ms) of ``boot``: the host was busy."""

    boot: int
    t_ms: int
    lost_ms: int


class VirtualNode:
    """A running virtual Pico. Use as a context manager; ``close()`` kills everything it started."""

    def __init__(self, fs_dir: Path, *, peripherals: dict[str, Any] | None = None,
                 unique_id: str = "e66038b7130f2e2d") -> None:
        self.fs_dir = Path(fs_dir).resolve()
        if not self.fs_dir.is_dir():
            raise VirtualNodeError(f"node filesystem folder {self.fs_dir} does not exist")
        if len(unique_id) != 16 or any(c not in "0123456789abcdef" for c in unique_id):
            raise ValueError("unique_id is 16 lower-case hex digits (8 bytes, like a Pico's flash id)")
        self._node = ensure_runtime()
        self._uid = unique_id
        self._dir = Path(tempfile.mkdtemp(prefix="vnode-"))
        self._state = self._dir / "state"
        self._state.mkdir()
        self.port = str(self._dir / "ttyACM0")
        self._lock = threading.RLock()
        self._peripherals: dict[str, Any] = {"pins": {}, "max31856": {}, "ads1115": {}}
        self._proc: subprocess.Popen[bytes] | None = None
        self._master = -1
        self._slave = -1
        self._closing = False
        self._expect_exit = False
        self.boots = 0
        self.resets: list[str] = []      # why each reboot after the first happened
        self._log = open(self._dir / "node.log", "ab")  # noqa: SIM115 - closed in close()
        self._watcher: threading.Thread | None = None
        try:
            if peripherals:
                self.set_peripherals(peripherals)
            else:
                self._write_peripherals()
            self._open_pty()
            self._boot("power_on", raw=False)
        except BaseException:
            self.close()
            raise

    # ---- life cycle ----

    def __enter__(self) -> VirtualNode:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def _open_pty(self) -> None:
        master, slave = os.openpty()
        tty.setraw(slave)                # a CDC ACM port: no echo, no line editing, binary clean
        os.set_blocking(master, False)   # the runner reads and writes the master without blocking
        self._master, self._slave = master, slave
        tmp = self._dir / "ttyACM0.new"
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        tmp.symlink_to(os.ttyname(slave))
        tmp.replace(self.port)

    def _close_pty(self) -> None:
        for fd in (self._master, self._slave):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._master = self._slave = -1

    def _boot(self, cause: str, *, raw: bool) -> None:
        with self._lock:
            self.boots += 1
            args = [self._node, str(HERE / "runner.mjs"), f"fs={self.fs_dir}", f"state={self._state}",
                    f"lib={HERE / 'lib'}", f"mode={'raw' if raw else 'friendly'}", f"cause={cause}",
                    f"boot={self.boots}", f"uid={self._uid}", f"pty_fd={self._master}",
                    f"pty={os.ttyname(self._slave)}", f"parent={os.getpid()}"]
            self._log.write(f"--- boot {self.boots} ({cause}, {'raw' if raw else 'friendly'} REPL)\n".encode())
            self._log.flush()
            self._proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=self._log, stderr=self._log,
                                          pass_fds=(self._master,), start_new_session=True)
            self._expect_exit = False
            self._watcher = threading.Thread(target=self._watch, args=(self._proc,), daemon=True,
                                             name="vnode-watch")
            self._watcher.start()

    def _watch(self, proc: subprocess.Popen[bytes]) -> None:
        """Reboot the node when the interpreter asks for it (Ctrl-D, machine.reset(), watchdog)."""
        code = proc.wait()
        with self._lock:
            if self._closing or self._expect_exit or proc is not self._proc:
                return
            cause = {EXIT_SOFT_RESET: "soft", EXIT_SOFT_RESET_RAW: "soft", EXIT_HARD_RESET: "hard",
                     EXIT_WATCHDOG: "watchdog"}.get(code)
            if cause is None:
                self._log.write(f"--- runner exited with {code}: node is dead\n".encode())
                self._log.flush()
                self.resets.append(f"crash:{code}")
                return
            self.resets.append(cause)
            self._boot(cause, raw=code == EXIT_SOFT_RESET_RAW)

    def _stop_proc(self) -> None:
        with self._lock:
            self._expect_exit = True
            proc = self._proc
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)

    def reset(self) -> None:
        """Hard reset (the RUN pin): a fresh interpreter, files kept, ``main.py`` runs on boot."""
        self._stop_proc()
        with self._lock:
            self.resets.append("hard")
            self._pins_released()
            self._boot("hard", raw=False)

    def unplug(self) -> None:
        """Pull the USB cable: the node loses power and the port disappears (open handles see a hang-up)."""
        self._stop_proc()
        with self._lock:
            self._pins_released()
            self._close_pty()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.port)

    def replug(self) -> None:
        """Plug the cable back: a new pty behind the same ``port`` name and a power-on boot."""
        with self._lock:
            if self._master >= 0:
                raise VirtualNodeError("replug() without unplug()")
            self._open_pty()
            self.resets.append("power_on")
            self._boot("power_on", raw=False)

    def close(self) -> None:
        """Kill the interpreter, close the pty and remove the temporary folder (the flash folder stays)."""
        with self._lock:
            self._closing = True
        self._stop_proc()
        self._close_pty()
        with contextlib.suppress(Exception):
            self._log.close()
        shutil.rmtree(self._dir, ignore_errors=True)

    @property
    def alive(self) -> bool:
        """The interpreter process runs (a crashed runner is not silently restarted)."""
        proc = self._proc
        return proc is not None and proc.poll() is None

    def log(self) -> str:
        """What the runner printed on its own stderr (loader errors), for test failure messages."""
        try:
            return (self._dir / "node.log").read_text(errors="replace")
        except OSError:
            return ""

    # ---- fake hardware ----

    def _pins_released(self) -> None:
        """At reset every GPIO of an RP2040 is an input again: no output is driven until firmware sets it."""
        out = self._state / "outputs.json"
        tmp = self._state / "outputs.json.tmp"
        tmp.write_text(json.dumps({"pins": {}, "boot": self.boots}))
        tmp.replace(out)

    def outputs(self) -> dict[str, int]:
        """Level of every pin the firmware drives as an output now, by name (``GP15``, ``LED``)."""
        try:
            data = json.loads((self._state / "outputs.json").read_text())
        except (OSError, ValueError):
            return {}
        return {str(k): int(v) for k, v in data.get("pins", {}).items()}

    def pin_log(self) -> list[PinChange]:
        """Every change of a driven pin since the node was created, in order, stamped with the node's ticks_ms."""
        try:
            lines = (self._state / "pins.log").read_text().splitlines()
        except FileNotFoundError:
            return []
        out = []
        for line in lines:
            parts = line.split()
            if len(parts) == 4:          # a line being appended right now is skipped
                out.append(PinChange(int(parts[0]), int(parts[1]), parts[2], int(parts[3])))
        return out

    def stalls(self) -> list[Stall]:
        """Every stretch of 20 ms or more in which the interpreter's process got no CPU (a busy host machine)."""
        try:
            lines = (self._state / "stalls.log").read_text().splitlines()
        except FileNotFoundError:
            return []
        return [Stall(*(int(x) for x in p)) for p in (line.split() for line in lines) if len(p) == 3]

    def tx_timeouts(self) -> int:
        """How many of the firmware's writes waited the full 500 ms for a host that held the port without reading,
        and were dropped (as a Pico's USB CDC drops them)."""
        try:
            return len((self._state / "txtimeouts.log").read_text().splitlines())
        except FileNotFoundError:
            return 0

    def _write_peripherals(self) -> None:
        tmp = self._state / "peripherals.json.tmp"
        tmp.write_text(json.dumps(self._peripherals))
        tmp.replace(self._state / "peripherals.json")

    def set_peripherals(self, peripherals: dict[str, Any]) -> None:
        """Replace every fake reading at once (keys ``pins``, ``max31856``, ``ads1115``; see lib/machine.py)."""
        unknown = set(peripherals) - {"pins", "max31856", "ads1115", "spi"}
        if unknown:
            raise ValueError(f"unknown peripheral kinds {sorted(unknown)} (known: pins, max31856, ads1115, spi)")
        new: dict[str, Any] = {"pins": {}, "max31856": {}, "ads1115": {}}
        miso = peripherals.get("spi", {}).get("miso")
        if miso is not None:
            new["spi"] = {"miso": _level(miso, "spi miso")}
        for pin, level in peripherals.get("pins", {}).items():
            new["pins"][pin_name(pin)] = 1 if level else 0
        for cs, entry in peripherals.get("max31856", {}).items():
            new["max31856"][pin_name(cs)] = _max31856_entry(entry.get("tc_c"), entry.get("cj_c"),
                                                            entry.get("fault"), {}, entry.get("present"))
        for addr, entry in peripherals.get("ads1115", {}).items():
            counts = [int(c) for c in entry.get("counts", [0, 0, 0, 0])]
            if len(counts) != 4:
                raise ValueError("an ADS1115 has 4 inputs: counts needs 4 values")
            new["ads1115"][str(int(addr))] = {"counts": counts}
        with self._lock:
            self._peripherals = new
            self._write_peripherals()

    def set_max31856(self, cs: int | str, *, temp_c: float | None = None, cold_junction_c: float | None = None,
                     fault: int | None = None, present: bool | None = None) -> None:
        """Set what the MAX31856 behind chip-select ``cs`` reports: thermocouple °C, cold junction °C, SR bits;
        ``present=False`` unplugs it (it answers nothing and loses its configuration), ``True`` plugs it back."""
        name = pin_name(cs)
        with self._lock:
            chips = self._peripherals["max31856"]
            chips[name] = _max31856_entry(temp_c, cold_junction_c, fault, chips.get(name, {}), present)
            self._write_peripherals()

    def set_spi_miso(self, level: int | None) -> None:
        """Hold every SPI bus's MISO line stuck at ``level`` (0: shorted to GND, 1: to 3V3); None frees it."""
        with self._lock:
            if level is None:
                self._peripherals.pop("spi", None)
            else:
                self._peripherals["spi"] = {"miso": _level(level, "spi miso")}
            self._write_peripherals()

    def set_ads1115(self, address: int, channel: int, counts: int) -> None:
        """Set the raw conversion result (signed 16-bit) of input ``channel`` (0..3) of the ADS1115 at ``address``."""
        if not 0 <= channel <= 3:
            raise ValueError(f"an ADS1115 has inputs 0..3, got {channel}")
        if not -32768 <= counts <= 32767:
            raise ValueError(f"ADS1115 counts are signed 16-bit, got {counts}")
        with self._lock:
            chip = self._peripherals["ads1115"].setdefault(str(int(address)), {"counts": [0, 0, 0, 0]})
            chip["counts"][channel] = int(counts)
            self._write_peripherals()

    def set_input(self, pin: int | str, level: int) -> None:
        """Level a pin configured as an input reads."""
        with self._lock:
            self._peripherals["pins"][pin_name(pin)] = 1 if level else 0
            self._write_peripherals()

    def wait_for(self, predicate: Any, timeout: float = 30.0, interval: float = 0.01) -> bool:
        """Poll ``predicate(self)`` until true or ``timeout`` (a safety net, not a timing assertion)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate(self):
                return True
            time.sleep(interval)
        return bool(predicate(self))


class MicroPythonError(RuntimeError):
    """A snippet raised inside MicroPython; ``args[0]`` is ``"Type: message"`` as MicroPython gave it."""


class MicroPythonWorker:
    """A bare MicroPython interpreter (no REPL, no fake board) that runs snippets one after another.

    For pushing many inputs through firmware modules: the modules of ``modules_dir`` (``*.py``,
    ``*.mpy``) are importable. State persists between :meth:`run` calls, as in one long script.
    """

    def __init__(self, modules_dir: Path | None = None) -> None:
        node = ensure_runtime()
        args = [node, str(HERE / "worker.mjs")] + ([str(modules_dir)] if modules_dir else [])
        self._proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True, encoding="latin-1", start_new_session=True)

    def run(self, code: str) -> str:
        """Run ``code``; return what it printed, or raise MicroPythonError with MicroPython's own message."""
        assert self._proc.stdin is not None and self._proc.stdout is not None
        self._proc.stdin.write(json.dumps({"code": code}) + "\n")
        self._proc.stdin.flush()
        line = self._proc.stdout.readline()
        if not line:
            err = self._proc.stderr.read() if self._proc.stderr else ""
            raise VirtualNodeError(f"the MicroPython worker died: {err.strip()[-2000:]}")
        reply = json.loads(line)
        if reply["error"]:
            raise MicroPythonError(reply["error"], reply["out"])
        return str(reply["out"])

    def close(self) -> None:
        if self._proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._proc.pid, signal.SIGKILL)
        self._proc.wait(timeout=30)
        for f in (self._proc.stdin, self._proc.stdout, self._proc.stderr):
            if f is not None:
                with contextlib.suppress(OSError):
                    f.close()

    def __enter__(self) -> MicroPythonWorker:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.close()
