"""What is plugged in: USB serial ports, and which of them are MicroPython sensor nodes.

``reedge boards list`` reads this. The port list comes from pyserial's ``list_ports`` through a
seam (``list_serial``'s ``source``) so that tests hand in a fixed list; ``probe`` goes further
and asks a port's raw REPL who it is (only when asked: it interrupts the node's firmware for a
moment, then restarts it).

How a node is recognised without probing: Raspberry Pi's USB vendor id 2E8A; MicroPython's own
product id under it is 0005 (what every MicroPython rp2 build enumerates as). Another 2E8A
product (a Pico running C firmware, the debug probe) is a Raspberry Pi device but not a node
until MicroPython is flashed; a Pico in BOOTSEL mode is a USB drive, not a serial port, so it
does not appear here at all.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Literal, Protocol

from serial.tools import list_ports  # type: ignore[import-untyped]

from edge.devices.node.session import NodeError, NodeSession

VID_RASPBERRY_PI = 0x2E8A
PID_MICROPYTHON = 0x0005
#: Other MicroPython boards that enumerate with MicroPython's own ids (pyboard: F055:9800).
MICROPYTHON_IDS = {(VID_RASPBERRY_PI, PID_MICROPYTHON), (0xF055, 0x9800)}

Kind = Literal["micropython", "raspberry-pi", "other", "unknown"]


class PortInfo(Protocol):
    """The fields of pyserial's ``ListPortInfo`` that are read here."""

    device: str
    vid: int | None
    pid: int | None
    serial_number: str | None
    manufacturer: str | None
    product: str | None
    description: str


@dataclass(frozen=True)
class SerialPort:
    device: str
    vid: int | None = None
    pid: int | None = None
    serial_number: str = ""
    manufacturer: str = ""
    product: str = ""
    description: str = ""
    probe: dict[str, object] = field(default_factory=dict)  # filled by probe(): what the node said

    @property
    def usb_id(self) -> str:
        return f"{self.vid:04X}:{self.pid:04X}" if self.vid is not None and self.pid is not None else "-"

    @property
    def kind(self) -> Kind:
        """``unknown``: no USB ids to judge by (a pty, a path given with ``--port``): only a probe can tell."""
        if self.vid is None:
            return "unknown"
        if (self.vid, self.pid) in MICROPYTHON_IDS:
            return "micropython"
        if self.vid == VID_RASPBERRY_PI:
            return "raspberry-pi"
        return "other"

    def meaning(self) -> str:
        """What a technician should make of the port, in one phrase."""
        if self.probe.get("error"):
            return f"no node: {self.probe['error']}"
        node = self.probe.get("node")
        if isinstance(node, dict):
            # the node's number: "node_number" in pico_node's node.json (whose "node_id" is the name), else "node_id"
            number = node.get("node_number", node.get("node_id"))
            number = number if isinstance(number, int) and not isinstance(number, bool) else "?"
            return f"node '{node.get('name', '?')}' (id {number}, station {node.get('station', '?')})"
        if self.probe:
            return f"MicroPython {self.probe.get('version', '?')}, not flashed by reedge (no node.json)"
        return {"micropython": "MicroPython node (not probed)",
                "raspberry-pi": "Raspberry Pi device without MicroPython's id: C firmware or debug probe?",
                "other": "not a node (RS-485 adapter, modem...)",
                "unknown": "not probed: no USB ids to tell what it is (add --probe to ask it)"}[self.kind]

    def as_json(self) -> dict[str, object]:
        data = asdict(self)
        data.update(usb_id=self.usb_id, kind=self.kind, meaning=self.meaning())
        return data


def _pyserial_ports() -> list[PortInfo]:
    return list(list_ports.comports())


def list_serial(source: Callable[[], Iterable[PortInfo]] = _pyserial_ports,
                extra: Sequence[str] = ()) -> list[SerialPort]:
    """USB serial ports sorted by device, plus ``extra`` ports given by path (a pty, a by-id name)."""
    found: dict[str, SerialPort] = {}
    for info in source():
        if info.vid is None and not info.device.startswith(("/dev/ttyACM", "/dev/ttyUSB")):
            continue  # built-in UARTs (ttyS*, ttyAMA*) are listed by the board file, not here
        found[info.device] = SerialPort(
            device=info.device, vid=info.vid, pid=info.pid, serial_number=info.serial_number or "",
            manufacturer=info.manufacturer or "", product=info.product or "", description=info.description or "")
    for device in extra:
        found.setdefault(device, SerialPort(device=device, description="given with --port"))
    return [found[key] for key in sorted(found)]


def probe(port: SerialPort) -> SerialPort:
    """Ask the port's raw REPL who it is; the node is restarted afterwards. Errors are kept, not raised."""
    try:
        with NodeSession(port.device) as session:
            answer = session.identify()
            session.restart()
    except NodeError as exc:
        return replace(port, probe={"error": str(exc).removeprefix(f"{port.device}: ")})
    return replace(port, probe=answer)


def format_table(ports: Sequence[SerialPort]) -> str:
    """A plain table: port, VID:PID, serial number, maker / product, what it is."""
    if not ports:
        return "no USB serial ports found (is the node plugged in? `dmesg | tail` shows what the kernel saw)"
    rows = [("PORT", "VID:PID", "SERIAL", "MANUFACTURER / PRODUCT", "WHAT")]
    for p in ports:
        maker = " / ".join(part for part in (p.manufacturer, p.product) if part) or p.description or "-"
        rows.append((p.device, p.usb_id, p.serial_number or "-", maker, p.meaning()))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    return "\n".join("  ".join([*(row[i].ljust(widths[i]) for i in range(4)), row[4]]).rstrip() for row in rows)
