"""The ``reedge`` command line as a technician runs it: real processes, real output."""

from __future__ import annotations

import argparse
import ast
import csv
import importlib.metadata
import io
import json
import pathlib
import re
import shlex
import subprocess
import sys
import urllib.request
from typing import Any

import pytest

from edge.app import cli
from tests.test_plant_cli import _lines, _next

ROOT = pathlib.Path(__file__).resolve().parent.parent
STATION = ROOT / "stations" / "hd_reactor_sim.toml"


def reedge(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edge", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


def test_tc_conversion_both_ways() -> None:
    out = reedge("tc", "K", "--mv", "4.096")
    assert out.returncode == 0, out.stderr
    assert abs(float(out.stdout.split()[0]) - 100.0) < 0.01   # NIST table: 4.096 mV at 100 degC
    out = reedge("tc", "K", "--celsius", "100")
    assert out.returncode == 0 and abs(float(out.stdout.split()[0]) - 4.096) < 0.0005


def test_tc_out_of_range_is_one_clear_line() -> None:
    out = reedge("tc", "K", "--mv", "99")
    assert out.returncode == 2
    assert "Traceback" not in out.stderr and "range" in out.stderr


def test_station_check_lists_interlocks() -> None:
    out = reedge("station", "check", str(STATION))
    assert out.returncode == 0, out.stderr
    assert "pilot-line/hd-01" in out.stdout
    assert "interlock h2_leak: high h2_room 25" in out.stdout
    assert "interlock controller_deadman: deadman" in out.stdout


def test_station_check_bad_file_names_the_key(tmp_path: pathlib.Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(STATION.read_text().replace('channel = "h2_room"', 'channel = "h2_rooom"', 1))
    out = reedge("station", "check", str(bad))
    assert out.returncode == 2
    assert "interlocks.h2_leak.channel" in out.stderr and "h2_rooom" in out.stderr
    assert "Traceback" not in out.stderr


def test_demo_refuses_a_time_scale_the_rig_cannot_run_before_starting_anything(tmp_path: pathlib.Path) -> None:
    out = reedge("demo", "--time-scale", "5000", "--report-dir", str(tmp_path / "r"))
    assert out.returncode == 2 and "--time-scale must be within 1 .. 1500" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr and not (tmp_path / "r").exists()


def test_the_rig_commands_are_a_plugin_found_in_the_installed_metadata() -> None:
    found = {e.name: e.value for e in importlib.metadata.entry_points(group=cli.PLUGIN_GROUP)}
    assert found.get("hil") == "hil.cli:register", found
    out = reedge("--help")
    assert out.returncode == 0 and out.stderr == "", out.stderr
    for command in ("demo", "hil", "node"):     # node: `reedge node sim`, the virtual sensor node
        assert re.search(rf"^    {command}  ", out.stdout, re.M), out.stdout


def _half_plugin(sub: argparse._SubParsersAction[Any]) -> None:
    """A plugin that adds a command and then breaks."""
    sub.add_parser("half", help="never finished")
    raise RuntimeError("broken on purpose")


def test_a_broken_plugin_is_one_line_and_every_other_command_still_works(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    group = cli.PLUGIN_GROUP
    plugins = [importlib.metadata.EntryPoint("missing", "no_such_reedge_plugin:register", group),
               importlib.metadata.EntryPoint("half", f"{__name__}:_half_plugin", group),
               importlib.metadata.EntryPoint("clash", "edge.app.boards_cli:register", group)]  # names taken
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda group: plugins)
    parser = cli.build_parser()
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 3 and "Traceback" not in "".join(err), err
    assert err[0].startswith("reedge: plugin missing (no_such_reedge_plugin:register) left out: ModuleNotFoundError")
    assert err[1] == f"reedge: plugin half ({__name__}:_half_plugin) left out: RuntimeError: broken on purpose"
    assert err[2].startswith("reedge: plugin clash (edge.app.boards_cli:register) left out: ")
    with pytest.raises(SystemExit):
        parser.parse_args(["half"])          # what the broken plugin added before failing was taken back
    capsys.readouterr()
    assert cli.main(["tc", "K", "--celsius", "100"]) == 0
    assert capsys.readouterr().out.startswith("4.096")


def test_the_product_never_imports_the_rig() -> None:
    """edge/ is the product, hil/ its test rig: the rig's commands come in as a plugin, never as an import."""
    for path in sorted((ROOT / "edge").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import | ast.ImportFrom):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                rig = [n for n in names if n == "hil" or n.startswith("hil.")]
                assert not rig, f"{path.relative_to(ROOT)}:{node.lineno} imports {rig[0]}"


@pytest.mark.slow
def test_demo_runs_a_whole_hd_batch_on_the_virtual_rig_and_leaves_its_evidence(
        tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """The README's main job. It is the hd_normal_batch scenario, so tests/test_hil.py does not run that one.
    ``--keep-page``: the historian's fleet page stays up at the end until Enter, so it is looked at here."""
    with open(tmp_path / "stderr", "w+") as err:
        demo = subprocess.Popen([sys.executable, "-m", "edge", "demo", "--report-dir", str(tmp_path), "--no-color",
                                 "--keep-page"], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err,
                                text=True)
        try:
            assert demo.stdout is not None and demo.stdin is not None
            lines = _lines(demo.stdout)
            shown = [_next(lines, "the demo's output", 180)]
            while not shown[-1].startswith("  fleet page stays up at "):
                try:
                    shown.append(_next(lines, "the demo's output up to its fleet page, held open", 180))
                except AssertionError as exc:
                    raise AssertionError(f"{exc}:\n" + "\n".join(shown[-60:]) + _read(err)) from None
            _the_fleet_page_shows_the_demo_batch(shown[-1].split(" at ", 1)[1].split(": press", 1)[0])
            demo.stdin.close()       # Enter, or the end of input: the page stops, the demo ends
            while (line := lines.get(timeout=60)) is not None:
                shown.append(line)
            assert demo.wait(timeout=60) == 0, "\n".join(shown[-60:]) + _read(err)
        finally:
            if demo.poll() is None:
                demo.kill()
                demo.wait()
    text = "\n".join(shown) + "\n"
    for phase in ("leak_test", "purge", "h2_admission", "absorption", "degassing", "cooling", "unload", "done"):
        assert re.search(rf"\d h  phase {phase}$", text, re.M), f"progress shows phase {phase}"
    assert "hd_normal_batch: PASS" in text and "demo complete" in text
    mqtt = re.search(r"^  MQTT: received (.*); (.*)$", text, re.M)
    assert mqtt is not None, "the demo published to its embedded broker and a subscriber checked it"
    assert mqtt.group(2) == "no gaps", mqtt.group(0)        # and no INVALID (schema) suffix either
    counts = dict(item.rsplit(" ", 1) for item in mqtt.group(1).split(", "))
    assert int(counts["telemetry"]) > 100 and int(counts["batch"]) == 2 and int(counts["event"]) > 5, counts
    record = json.loads((tmp_path / "hd_normal_batch.json").read_text())
    assert record["outcome"] == "pass" and record["plant_s"] > 10 * 3600
    assert all(m["outcome"] == "pass" for m in record["measurements"])
    png = (tmp_path / "hd_normal_batch.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 50_000
    assert (tmp_path / "hd_normal_batch.junit.xml").exists()
    # the batch record in one line, and its one-page report rendered beside the HIL record
    assert re.search(r"batch record hil-hd-normal \(end, done\): \d+\.\d kWh energy, \d+\.\d NL h2", text), text
    assert (tmp_path / "batch" / "report.html").stat().st_size > 10_000
    assert (tmp_path / "batch" / "report.png").read_bytes().startswith(b"\x89PNG")
    # the live line shows the heater's duty, never its burst-fired on/off; the 600 degC soak holds it part-time
    duties = [int(d) for d in re.findall(r"  heater +(\d+) %  ", text)]
    assert duties and all(0 <= d <= 100 for d in duties) and any(0 < d < 100 for d in duties), duties
    assert not re.search(r"heater (on|off) ", text)
    # act 2, a trip: an H2 leak, the core's interlock, the safe state, measured
    act2 = text.split("reedge demo, act 2, a trip: ", 1)[1]
    for line in ("hd_h2_leak_absorption: PASS", "PASS first_trip = h2_leak", "PASS batch_outcome = aborted",
                 "PASS final_output.heater = 0", "PASS final_output.vent_valve = 1"):
        assert f"\n{line}" in act2 or f"\n  {line}" in act2, line
    assert json.loads((tmp_path / "hd_h2_leak_absorption.json").read_text())["outcome"] == "pass"
    # every command the demo prints works as printed (reedge report --csv once read /var/lib/reedge)
    commands = re.findall(r"`(reedge [^`]+)`", text)
    monkeypatch.chdir(ROOT)
    assert any(c.startswith("reedge report --csv") for c in commands), commands
    for command in commands:            # in this process (the same cli.main), from the folder the demo ran in
        assert cli.main(shlex.split(command)[1:]) == 0, f"`{command}`: {capsys.readouterr().err}"
        printed = capsys.readouterr().out
        if "--csv" in command:
            rows = list(csv.DictReader(io.StringIO(printed)))
            assert {r["batch_id"] for r in rows} == {"hil-hd-normal"} and len(rows) >= 3, printed[:500]
    # README.md shows what it prints (numbers, the report folder and the live status lines aside)
    sample = README_DEMO.search((ROOT / "README.md").read_text())
    assert sample is not None, "README.md: the demo's output sample"
    assert _shape(sample.group(1)) == _shape(text.replace(str(tmp_path), "demo-report"))


def _read(f: Any) -> str:
    f.seek(0)
    return str(f.read())


def _the_fleet_page_shows_the_demo_batch(url: str) -> None:
    """The historian's page, as the demo left it: the station, the batch with its figures, its report."""
    with urllib.request.urlopen(url, timeout=30) as resp:
        page = resp.read().decode()
    assert "pilot-line/hd-01" in page and "hil-hd-normal" in page, page[:2000]
    with urllib.request.urlopen(url + "api/batches", timeout=30) as resp:
        batches = json.loads(resp.read())
    assert [(b["batch_id"], b["outcome"]) for b in batches] == [("hil-hd-normal", "done")], batches
    assert 1.0 < batches[0]["kwh_per_kg"]["value"] < 3.0 and batches[0]["kwh_per_kg"]["complete"] is True
    with urllib.request.urlopen(url.rstrip("/") + batches[0]["report"], timeout=60) as resp:
        assert "Consumption and emissions" in resp.read().decode()


README_DEMO = re.compile(r"<!-- the demo's output: tests/test_cli.py compares it -->\n```text\n(.*?)```", re.S)


def _shape(output: str) -> list[str]:
    """The demo's lines as a reader compares them: the live status lines left out (how many depends on the
    machine), numbers, durations and the broker's port as N."""
    lines = [line.rstrip() for line in output.splitlines() if line.strip() and not line.startswith("  [")]
    return [re.sub(r"-?\d+(\.\d+)?(e[+-]?\d+)?( (h|min|s)\b)?", "N", line) for line in lines]
