"""The plant figures and ``reedge historian report`` (edge/historian/figures.py), on a store filled by ingest().

The CSV is checked against the station's own export of the same record, byte for byte; the month
figures against a plant (tests/historian_plant.py) with one complete batch, one whose energy meter
missed the start (a lower bound) and one whose feed was never weighed.
"""

from __future__ import annotations

import csv
import io
import json
import pathlib
from typing import Any

import pytest

from edge.app import cli
from edge.batch import export, record
from edge.batch.message import mqtt_end_body
from edge.historian.ingest import ingest
from edge.historian.store import open_store
from edge.telemetry.envelope import build
from edge.telemetry.topics import StationTopics
from tests.historian_plant import HOSTILE_BATCH, plant
from tests.test_report import HD_UNITS, hd_body


def report(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = cli.main(["historian", "report", *args])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def plant_db(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("figures") / "plant.db"
    with open_store(str(path)) as store:
        result = ingest(store, plant())
    assert result.quarantined == 0 and result.stored == len(plant())
    return str(path)


def test_report_csv_is_the_stations_own_export_byte_for_byte(tmp_path: pathlib.Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    """The end record a station sent, stored and exported by the historian, gives the very table `reedge report
    --csv` writes from the station's own record folder: same rows, same numbers, same completeness and basis."""
    body: dict[str, Any] = {**hd_body(), "events_not_listed": 0}
    folder = tmp_path / "state" / "batches" / body["batch_id"]
    folder.mkdir(parents=True)
    record.write_record(folder, body, {"file": "trend.csv", "units": HD_UNITS})
    station_csv = io.StringIO()
    assert export.export_csv([tmp_path / "state"], station_csv).batches == 1

    db = tmp_path / "historian.db"
    raw = build(site=body["site"], station=body["station"], boot_id="b0", stream="batch", seq=7,
                created_ns=1_800_000_000_000_000_000, body=mqtt_end_body(body))
    with open_store(str(db)) as store:
        assert ingest(store, [(StationTopics(body["site"], body["station"]).batch, raw, False)]).stored == 1
    code, out, err = report(capsys, "--db", str(db), "--csv")
    assert code == 0, err
    assert out == station_csv.getvalue()
    assert "electricity,182.4,kWh,false,metered; incomplete: first reading 900 s" in out   # a lower bound stays one


def test_month_figures_count_only_complete_weighed_batches_and_say_which_are_left_out(
        plant_db: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = report(capsys, "--db", plant_db, "--json")
    assert code == 0, err
    months = {(m["station"], m["month"]): m for m in json.loads(out)}
    hd = months[("hd-01", "2027-01")]
    # 50 kWh over 25 kg complete; the other batch's 30 kWh is a lower bound: left out, not averaged in
    assert hd["batches"] == 2 and hd["kg_in"] == 45 and hd["kg_in_complete"] is True and hd["trips"] == 1
    assert hd["kwh_per_kg"] == {"value": 2.0, "batches_counted": 1, "batches": 2}
    assert hd["kg_co2e_per_kg"] == {"value": 0.5, "batches_counted": 1, "batches": 2}
    assert hd["nl_h2_per_kg"] == {"value": pytest.approx(2800 / 45), "batches_counted": 2, "batches": 2}
    assert any(HOSTILE_BATCH in n and "kWh/kg left out: a lower bound" in n for n in hd["incomplete"])
    sint = months[("sint-01", "2027-01")]   # never weighed: no per-kg figure at all; no H2 meter: none missing
    assert sint["kg_in_complete"] is False and sint["kwh_per_kg"]["value"] is None
    assert sint["nl_h2_per_kg"] == {"value": None, "batches_counted": 0, "batches": 0}
    site = months[(None, "2027-01")]
    assert site["batches"] == 3 and site["kg_in"] == 45 and site["kg_in_complete"] is False
    assert site["kwh_per_kg"] == {"value": 2.0, "batches_counted": 1, "batches": 3}

    code, out, err = report(capsys, "--db", plant_db)
    lines = out.splitlines()
    assert code == 0 and lines[0].split()[:4] == ["station", "month", "batches", "kg"], out
    row = next(line for line in lines if line.startswith("pilot-line/hd-01"))
    assert row.split()[:4] == ["pilot-line/hd-01", "2027-01", "2", "45"] and "2 (1 of 2)" in row, row
    assert any(line.startswith("pilot-line (site)") and "≥ 45" in line for line in lines), out
    assert any("sint-2027-001 (sint-01): feed not weighed" in line for line in lines), out

    code, out, _ = report(capsys, "--db", plant_db, "--station", "pilot-line/sint-01")
    assert code == 0 and "hd-01" not in out and "pilot-line/sint-01" in out
    code, out, _ = report(capsys, "--db", plant_db, "--month", "2027-02")
    assert code == 0 and "(no finished batch)" in out
    code, out, _ = report(capsys, "--db", plant_db, "--csv", "--month", "2027-01", "--station", "pilot-line/hd-01")
    assert code == 0 and {r["batch_id"] for r in csv.DictReader(io.StringIO(out))} == {"hd-2027-001", HOSTILE_BATCH}


@pytest.mark.parametrize(("args", "says"), [
    (["--month", "2027-13"], "--month must be YYYY-MM"),
    (["--station", "hd-01"], "--station must be SITE/STATION"),
    (["--csv", "--json"], "--csv or --json"),
])
def test_bad_arguments_get_one_line_and_touch_no_database(tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str],
                                                          args: list[str], says: str) -> None:
    db = tmp_path / "never.db"
    code, out, err = report(capsys, "--db", str(db), *args)
    assert code == 2 and out == "" and says in err and len(err.strip().splitlines()) == 1, err
    assert not db.exists()
