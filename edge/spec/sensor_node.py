"""``[sensor_nodes.NAME]`` of the station file as checked types: how a serial sensor node is reached and
which of its channels and outputs map to core ones (the session itself is ``edge.devices.node.client``)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ChannelMap", "OutputMap", "SensorNodeConfig"]


@dataclass(frozen=True)
class ChannelMap:
    """Node channel ``node`` (a name from its HELLO) feeds core channel ``core`` as ``value * scale + offset``."""

    node: str
    core: str
    scale: float = 1.0
    offset: float = 0.0


@dataclass(frozen=True)
class OutputMap:
    """Node output ``node`` follows the level the core's output gate gives core output ``core``."""

    node: str
    core: str


@dataclass(frozen=True)
class SensorNodeConfig:
    """How one node is reached and mapped; ``expect_*`` left None are not checked."""

    name: str
    port: str
    channels: tuple[ChannelMap, ...] = ()
    outputs: tuple[OutputMap, ...] = ()
    baudrate: int = 115200
    expect_node_id: str | None = None
    expect_firmware: str | None = None
    expect_config_hash: str | None = None
    keepalive_ms: float = 200.0
    reconnect_s: float = 1.0
    hello_retry_s: float = 1.0
    revive_after_s: float = 5.0     # no node frame this long with the port open: send REVIVE_BYTES (0: never)

    def __post_init__(self) -> None:
        where = f"sensor node {self.name!r}"
        if not self.name or not self.port:
            raise ValueError(f"{where}: name and port are required")
        for what, items in (("channel", [c.node for c in self.channels]), ("output", [o.node for o in self.outputs])):
            dup = {n for n in items if items.count(n) > 1}
            if dup:
                raise ValueError(f"{where}: node {what} {sorted(dup)[0]!r} mapped twice")
        cores = [c.core for c in self.channels]
        dup = {n for n in cores if cores.count(n) > 1}
        if dup:
            raise ValueError(f"{where}: core channel {sorted(dup)[0]!r} fed twice")
        if not 20 <= self.keepalive_ms <= 10_000:
            raise ValueError(f"{where}: keepalive_ms must be 20..10000, got {self.keepalive_ms}")
        if self.reconnect_s <= 0 or self.hello_retry_s <= 0 or self.revive_after_s < 0:
            raise ValueError(f"{where}: reconnect_s and hello_retry_s must be > 0, revive_after_s >= 0")
        if self.baudrate <= 0:
            raise ValueError(f"{where}: baudrate must be > 0")
