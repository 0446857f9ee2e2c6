"""The rig binding (``rig.json``): written by the rig, read by ``reedge run --rig DIR``, one typed module."""

from __future__ import annotations

import pathlib

import pytest

from edge.app.rig_binding import RigBinding, RigBindingError
from edge.spec.station import load_station

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_what_the_rig_writes_the_controller_reads(tmp_path: pathlib.Path) -> None:
    binding = RigBinding(register_file="/dev/shm/x.regs", time_scale=600.0, plant_epoch_unix=1.8e9,
                         serial={"vacuum_gauge": "/dev/pts/7"})
    assert binding.write(tmp_path) == tmp_path / "rig.json"
    assert RigBinding.read(tmp_path) == binding
    assert [p.name for p in tmp_path.iterdir()] == ["rig.json"]      # nothing left beside it


@pytest.mark.parametrize(("text", "words"), [
    (None, "not a rig binding ([Errno 2]"),
    ("{", "not a rig binding (Expecting property name"),
    ('{"time_scale": 600}', "not a rig binding ('register_file')"),
    ('["register_file"]', "not a rig binding ("),
    ('{"register_file": "r", "time_scale": "fast"}', "not a rig binding (could not convert"),
    ('{"register_file": "r", "time_scale": 0.5}', "time_scale must be >= 1, not 0.5"),
    ('{"register_file": "r", "time_scale": NaN}', "time_scale must be >= 1, not nan"),
    ('{"register_file": "r", "time_scale": 10, "serial": 3}', "not a rig binding ("),
])
def test_a_missing_or_bad_binding_is_one_clear_error(tmp_path: pathlib.Path, text: str | None, words: str) -> None:
    if text is not None:
        (tmp_path / "rig.json").write_text(text)
    with pytest.raises(RigBindingError) as info:
        RigBinding.read(tmp_path)
    assert str(info.value).startswith(f"{tmp_path / 'rig.json'}: {words}"), info.value


def test_on_the_rig_the_liveness_timeouts_keep_their_wall_clock_meaning() -> None:
    station = load_station(ROOT / "stations" / "hd_reactor_sim.toml")
    rigged = RigBinding(register_file="/dev/shm/rig.regs", time_scale=100.0).apply(station)
    assert all(d.params["path"] == "/dev/shm/rig.regs" for d in rigged.core.drivers if d.type == "sim")
    deadman = [r for r in station.core.rules if r.kind == "deadman"]
    assert deadman and all(r.threshold * 100.0 == next(x for x in rigged.core.rules if x.name == r.name).threshold
                           for r in deadman)
