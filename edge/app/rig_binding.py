"""The rig binding (``DIR/rig.json``): what the virtual rig tells ``reedge run --rig DIR`` about itself.

One typed module for both sides: the rig (``hil.rig``, a plugin of the product) writes it, the
controller reads it. It belongs to the product because ``reedge run`` reads it; it is never used on
a real station. A missing or bad file is a ``RigBindingError`` naming the file, and nothing runs.
"""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
from collections.abc import Mapping
from dataclasses import dataclass

from edge.files import write_atomic
from edge.spec.station import Station

FILE_NAME = "rig.json"


class RigBindingError(ValueError):
    """``rig.json`` is missing, unreadable or not a rig binding (``reedge run`` prints it and exits 2)."""


@dataclass(frozen=True)
class RigBinding:
    """The rig a controller runs on: the plant's register file, its time scale, its serial ports."""

    register_file: str                   # the sim driver's register file (shared memory)
    time_scale: float                    # plant seconds per wall second, >= 1
    plant_epoch_unix: float = 0.0        # the plant clock's origin as a unix time (run-state stamps)
    serial: Mapping[str, str] = dataclasses.field(default_factory=dict)   # instrument or node -> its pty

    def __post_init__(self) -> None:
        if not (self.time_scale >= 1.0 and math.isfinite(self.time_scale)):
            raise RigBindingError(f"time_scale must be >= 1, not {self.time_scale}")

    def write(self, directory: pathlib.Path) -> pathlib.Path:
        """``directory/rig.json``, written atomically; returns its path."""
        path = directory / FILE_NAME
        data = {"register_file": self.register_file, "time_scale": self.time_scale,
                "plant_epoch_unix": self.plant_epoch_unix, "serial": dict(self.serial)}
        write_atomic(path, json.dumps(data, indent=1).encode())
        return path

    @classmethod
    def read(cls, directory: pathlib.Path) -> RigBinding:
        path = directory / FILE_NAME
        try:
            raw = json.loads(path.read_text())
            return cls(register_file=str(raw["register_file"]), time_scale=float(raw["time_scale"]),
                       plant_epoch_unix=float(raw.get("plant_epoch_unix", 0.0)),
                       serial={str(k): str(v) for k, v in dict(raw.get("serial", {})).items()})
        except RigBindingError as exc:
            raise RigBindingError(f"{path}: {exc}") from None
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise RigBindingError(f"{path}: not a rig binding ({exc})") from exc

    def apply(self, station: Station) -> Station:
        """The station as wired to the rig, with the liveness timeouts kept in wall-clock terms."""
        s = self.time_scale
        core = station.core
        drivers = tuple(dataclasses.replace(d, params={**d.params, "path": self.register_file})
                        if d.type == "sim" else d for d in core.drivers)
        channels = tuple(dataclasses.replace(c, max_age_ms=c.max_age_ms * s) if c.kind == "injected" else c
                         for c in core.channels)
        outputs = tuple(dataclasses.replace(o, max_on_ms=o.max_on_ms * s) for o in core.outputs)
        rules = tuple(dataclasses.replace(r, threshold=r.threshold * s) if r.kind == "deadman" else r
                      for r in core.rules)
        core = dataclasses.replace(core, drivers=drivers, channels=channels, outputs=outputs, rules=rules)
        return dataclasses.replace(station, core=core, accounting=station.accounting.scaled(s))
