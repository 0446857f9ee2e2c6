"""One conversation with a MicroPython sensor node over its raw REPL (mpremote's serial transport).

Why a module of its own: ``reedge flash`` and ``reedge boards list --probe`` both open a node's
port, stop its firmware, run a few lines of Python on it and restart it; the ways that can go
wrong (port missing, port held by another program, a board that does not speak MicroPython) must
read the same in both. mpremote (pinned, 1.29.0) is used as a library: ``SerialTransport`` does
the raw REPL, including the fallback from raw-paste mode to plain raw REPL that some boards need.

Entering the raw REPL interrupts whatever the node runs (Ctrl-C); ``restart`` soft-resets it
(Ctrl-B, Ctrl-D from the friendly REPL), which re-runs ``boot.py`` and ``main.py`` with a fresh
heap, so newly copied modules are the ones imported.

Why it is not on :class:`edge.devices.serial_device.SerialDevice`: a session is one conversation run by the
caller's thread for one job (flash, probe), and every failure must end it with a :class:`NodeError` the
technician reads; reopening in the background with back-off would hide exactly that. The long-running link to
a node (``edge.devices.node.client.SensorNode``) is on the base.
"""

from __future__ import annotations

import ast
import contextlib
import os
import pathlib
import time
from types import TracebackType

import serial  # type: ignore[import-untyped]
from mpremote.transport import TransportError, TransportExecError  # type: ignore[import-untyped]
from mpremote.transport_serial import SerialTransport  # type: ignore[import-untyped]

#: Safety net for a node that stops answering mid-command; a healthy node answers in milliseconds.
READ_TIMEOUT_S = 10.0


class NodeError(RuntimeError):
    """A node could not be reached or did not do what was asked; the message says what to check."""


class NodeSession:
    """An open raw-REPL session: ``exec``/``eval`` Python on the node, read and write files."""

    def __init__(self, port: str, *, baudrate: int = 115200, timeout: float = READ_TIMEOUT_S) -> None:
        self.port = port
        _check_port_free(port, baudrate)
        try:
            self.transport = SerialTransport(port, baudrate=baudrate, timeout=timeout)
        except TransportError as exc:
            raise NodeError(f"{port}: cannot open the port: {exc}") from None
        try:
            # twice: a firmware loop that catches one KeyboardInterrupt must still stop
            self.transport.serial.write(b"\r\x03\x03")
            time.sleep(0.05)
            self.transport.enter_raw_repl(soft_reset=False, timeout_overall=timeout)
        except (TransportError, OSError, serial.SerialException) as exc:
            self.transport.close()
            raise NodeError(f"{port}: no MicroPython raw REPL answered ({exc}): is this a MicroPython board? "
                            "A Pico without MicroPython shows up as another USB device; flash the MicroPython "
                            "UF2 first (hold BOOTSEL while plugging it in)") from None

    def __enter__(self) -> NodeSession:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        with contextlib.suppress(OSError, serial.SerialException):
            self.transport.close()

    # ---- running code

    def exec(self, code: str) -> bytes:
        """Run ``code`` on the node; its printed output. A Python error on the node is a NodeError."""
        try:
            return bytes(self.transport.exec(code))
        except TransportExecError as exc:
            raise NodeError(f"{self.port}: the node raised: {_last_line(exc.error_output)}") from None
        except (TransportError, OSError, serial.SerialException) as exc:
            raise NodeError(f"{self.port}: the node stopped answering ({exc}); check the cable and retry") from None

    def eval(self, code: str) -> object:
        """Run ``code``, whose last act is ``print(repr(value))``, and parse the value."""
        text = self.exec(code).decode("utf-8", "replace").strip()
        try:
            return ast.literal_eval(text)
        except (ValueError, SyntaxError):
            raise NodeError(f"{self.port}: unexpected answer from the node: {text[:200]!r}") from None

    # ---- files

    def write_file(self, path: str, data: bytes) -> None:
        try:
            self.transport.fs_writefile(path, data, chunk_size=256)
        except (TransportError, OSError) as exc:
            raise NodeError(f"{self.port}: writing {path} failed: {exc}") from None

    def read_file(self, path: str) -> bytes:
        try:
            return bytes(self.transport.fs_readfile(path, chunk_size=256))
        except (TransportError, OSError) as exc:
            raise NodeError(f"{self.port}: reading {path} failed: {exc}") from None

    def identify(self) -> dict[str, object]:
        """MicroPython version, machine, unique id, and the node.json that ``reedge flash`` wrote."""
        answer = self.eval(_IDENTIFY)
        if not isinstance(answer, dict):
            raise NodeError(f"{self.port}: unexpected answer from the node: {answer!r}")
        return answer

    def restart(self) -> None:
        """Leave the raw REPL and soft-reset: boot.py and main.py run again with a fresh heap."""
        try:
            self.transport.exit_raw_repl()
            self.transport.serial.write(b"\x04")
            self.transport.serial.flush()
        except (OSError, serial.SerialException) as exc:
            raise NodeError(f"{self.port}: restarting the node failed: {exc}") from None


def _check_port_free(port: str, baudrate: int) -> None:
    """Port missing and port busy are the two commonest mistakes: name them, not 'failed to access'."""
    if not port.startswith(("socket://", "rfc2217://", "loop://")) and not pathlib.Path(port).exists():
        raise NodeError(f"{port}: no such port. Plug the node in and run `reedge boards list` to see its port")
    try:
        probe = serial.Serial(port, baudrate=baudrate, exclusive=True, timeout=0)
    except serial.SerialException as exc:
        text = str(exc)
        if "lock" in text.lower() or "busy" in text.lower():
            raise NodeError(f"{port}: the port is busy: another program holds it (a running `reedge run`, "
                            "mpremote, Thonny, screen?); stop it and retry") from None
        if isinstance(exc.__context__, PermissionError) or "Permission denied" in text:
            raise NodeError(f"{port}: permission denied: add this user to the 'dialout' group "
                            f"(sudo usermod -aG dialout {os.environ.get('USER', 'USER')}) and log in again") from None
        raise NodeError(f"{port}: cannot open the port: {text}") from None
    probe.close()


def _last_line(text: str) -> str:
    lines = [line for line in str(text).strip().splitlines() if line.strip()]
    return lines[-1] if lines else "an error without a message"


_IDENTIFY = """\
import sys, os
try:
    import machine
    uid = ''.join('%02x' % b for b in machine.unique_id())
except Exception:
    uid = ''
try:
    import json
    with open('node.json') as f:
        ident = json.load(f)
except Exception:
    ident = None
print(repr({'implementation': sys.implementation.name,
            'version': '.'.join(str(n) for n in sys.implementation.version[:3]),
            'machine': getattr(sys.implementation, '_machine', sys.platform),
            'unique_id': uid, 'node': ident}))
"""
