"""The product as a wheel: built from a clean copy of the tree, installed into a fresh venv, run from an empty folder.

An editable install (``./dev``) or ``PYTHONPATH`` reads the repository's folders; only a wheel shows whether the
schemas, board files, node firmware, example stations and recipes and the HIL scenarios ship (as package data,
found through ``edge.spec.resources`` / ``hil.resources``). The wheel is built with the pip of the running
interpreter (build isolation; the pip cache keeps it quick). The fresh venv gets the product from the wheel only;
its dependencies are the running venv's (a ``.pth`` line, after the venv's own site-packages: nothing downloaded),
so an import of a package the wheel does not declare would not show here.

The packages list of pyproject.toml is checked against the tree without building anything.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
import tomllib
import uuid
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

pytestmark = pytest.mark.one_worker     # the wheel and its venv are built once, by one worker (conftest.py)

ROOT = pathlib.Path(__file__).resolve().parent.parent
#: The top-level data folders and where the wheel puts them (pyproject.toml's package-dir).
DATA = {"mqtt_schemas": "edge/data/mqtt_schemas", "boards": "edge/data/boards", "stations": "edge/data/stations",
        "recipes": "edge/data/recipes", "hil/scenarios": "hil/scenarios", "hil/virtual_node": "hil/virtual_node"}
#: Which station each example recipe is checked against (a new example recipe must be added here).
RECIPE_STATION = {"hd_standard": "hd_reactor_sim", "sintering_standard": "sintering_furnace_sim"}
STATION_BOARD = {**{s: "sim" for s in RECIPE_STATION.values()}, "hd-02": "rpi5"}   # every example station
NOT_SHIPPED = shutil.ignore_patterns(".git", ".venv", "build", "*.egg-info", "__pycache__", "node_modules", "*.so",
                                     ".mypy_cache", ".pytest_cache", ".ruff_cache", ".hypothesis", "reports",
                                     "demo-report", "hil-reports", ".npm-install.lock")
WAIT_S = 60.0          # safety nets, never measurements


def tree_packages() -> set[str]:
    """The code packages of the tree: every folder of edge/ and hil/ with an __init__.py."""
    return {".".join(p.parent.relative_to(ROOT).parts) for base in ("edge", "hil")
            for p in (ROOT / base).rglob("__init__.py") if "node_modules" not in p.parts}


def test_pyproject_lists_every_code_package_and_maps_every_data_folder() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    assert tree_packages() <= listed, f"add to [tool.setuptools] packages: {sorted(tree_packages() - listed)}"
    mapped = {name: folder for name, folder in config["package-dir"].items()}
    assert mapped == {"edge.data.mqtt_schemas": "mqtt_schemas", "edge.data.boards": "boards",
                      "edge.data.stations": "stations", "edge.data.recipes": "recipes"}
    for name in listed:   # every listed package is a folder of the tree (a mapped one, or its own)
        top = next((m for m in mapped if name == m or name.startswith(m + ".")), None)
        folder = ROOT / (mapped[top] + name[len(top):].replace(".", "/") if top else name.replace(".", "/"))
        assert folder.is_dir(), f"{name}: no folder {folder}"


# ============================================================================ the built and installed wheel


@dataclass
class Product:
    wheel: pathlib.Path
    venv: pathlib.Path
    cwd: pathlib.Path            # an empty folder, nowhere near the checkout
    env: dict[str, str]
    data: pathlib.Path           # edge's shipped data as installed
    scenarios: pathlib.Path

    def cmd(self, *args: str) -> list[str]:
        return [str(self.venv / "bin" / "reedge"), *args]

    def run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.cmd(*args), cwd=self.cwd, env=self.env, capture_output=True, text=True,
                              timeout=timeout)


def _installed_python(venv: pathlib.Path, code: str, cwd: pathlib.Path, env: dict[str, str]) -> str:
    done = subprocess.run([str(venv / "bin" / "python"), "-c", code], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@pytest.fixture(scope="module")
def product(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Product]:
    base = tmp_path_factory.mktemp("wheel")
    src, dist, venv, cwd = base / "src", base / "dist", base / "venv", base / "empty"
    shutil.copytree(ROOT, src, ignore=NOT_SHIPPED)          # no stale build/ of the checkout in the wheel
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), str(src)],
                           capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    (wheel,) = dist.glob("reeproduce_edge-*.whl")
    cwd.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "REEDGE_SCHEMAS", "PYTHONHOME")}
    env |= {"PYTHONNOUSERSITE": "1", "PATH": f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"}
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    # --ignore-installed: a checkout's reeproduce_edge.egg-info (editable install) is no installed product here
    installed = subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install",
                                "-q", "--no-deps", "--no-index", "--ignore-installed", str(wheel)], cwd=cwd, env=env,
                               capture_output=True, text=True, timeout=300)
    assert installed.returncode == 0, installed.stderr[-3000:]
    site = pathlib.Path(_installed_python(venv, "import sysconfig; print(sysconfig.get_paths()['purelib'])", cwd,
                                          env))
    deps = dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
    (site / "zz_reedge_test_dependencies.pth").write_text("".join(f"{d}\n" for d in deps))
    where = json.loads(_installed_python(venv, (
        "import json, edge, hil; from edge.spec import resources; from hil.resources import scenarios_dir; "
        "print(json.dumps([edge.__file__, hil.__file__, str(resources.data_root()), str(scenarios_dir())]))"),
        cwd, env))
    yield Product(wheel, venv, cwd, env, pathlib.Path(where[2]), pathlib.Path(where[3]))


@pytest.mark.slow
def test_the_wheel_holds_every_data_file_and_the_product_runs_from_it(product: Product) -> None:
    names = set(zipfile.ZipFile(product.wheel).namelist())
    for folder, inside in DATA.items():
        files = [p for p in (ROOT / folder).rglob("*") if p.is_file() and not NOT_SHIPPED(str(p.parent), [p.name])
                 and "node_modules" not in p.parts and "__pycache__" not in p.parts
                 and p.name not in (".npm-install.lock",)]
        assert files, folder
        missing = [str(p.relative_to(ROOT)) for p in files if f"{inside}/{p.relative_to(ROOT / folder)}" not in names]
        assert missing == [], f"not in the wheel: {missing}"
    for package in tree_packages():
        assert f"{package.replace('.', '/')}/__init__.py" in names, package
    assert any(re.fullmatch(r"edge/_core\.[^/]*\.so", n) for n in names), "the C core"
    site = product.venv / "lib"
    assert product.data.is_relative_to(site) and product.data.name == "data", product.data
    assert product.scenarios.is_relative_to(site) and not product.scenarios.is_relative_to(ROOT)


@pytest.mark.slow
def test_station_check_on_every_example_station(product: Product) -> None:
    stations = sorted((product.data / "stations").glob("*.toml"))
    assert [s.stem for s in stations] == sorted(STATION_BOARD)
    for station in stations:
        out = product.run("station", "check", str(station))
        assert out.returncode == 0, out.stderr
        first = out.stdout.splitlines()[0]
        assert first.startswith(f"{station}: OK  station pilot-line/"), out.stdout
        assert f"\n  board: {STATION_BOARD[station.stem]}\n" in out.stdout, out.stdout


@pytest.mark.slow
def test_recipe_validate_on_every_example_recipe(product: Product) -> None:
    recipes = sorted((product.data / "recipes").glob("*.toml"))
    assert [r.stem for r in recipes] == sorted(RECIPE_STATION)
    for recipe in recipes:
        station = product.data / "stations" / f"{RECIPE_STATION[recipe.stem]}.toml"
        out = product.run("recipe", "validate", "--station", str(station), str(recipe))
        assert out.returncode == 0, out.stderr
        assert re.match(rf"{re.escape(str(recipe))}: OK  .* fits station pilot-line/\S+: \d+ phases", out.stdout), \
            out.stdout


@pytest.mark.slow
def test_boards_list_and_show_every_board(product: Product) -> None:
    out = product.run("boards", "list")
    assert out.returncode == 0, out.stderr
    assert "no USB serial ports found" in out.stdout or "/dev/" in out.stdout, out.stdout
    boards = sorted(p.stem for p in (product.data / "boards").glob("*.toml"))
    assert "sim" in boards and "rpi5" in boards, boards
    for board in boards:
        shown = product.run("boards", "show", board)
        assert shown.returncode == 0, shown.stderr
        assert shown.stdout.startswith(f"{board}: "), shown.stdout


@pytest.mark.slow
def test_flash_dry_run_builds_the_shipped_firmware_for_a_node(product: Product, tmp_path: pathlib.Path) -> None:
    from hil.virtual_node import VirtualNode

    fs = tmp_path / "flash"
    fs.mkdir()
    with VirtualNode(fs) as node:     # a real MicroPython on a pty, from the test's side
        out = product.run("flash", "--node", "hd1_node_a", "--port", node.port, "--dry-run", timeout=180)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr
    assert f"dry run: hd1_node_a on {node.port} (nothing is written)" in out.stdout, out.stdout
    would = re.findall(r"^  would copy   (\S+) \(new, \d+ bytes\)$", out.stdout, re.M)
    assert sorted(would) == ["ads1115.mpy", "main.py", "max31856.mpy", "node.json", "node.mpy", "nodelink.mpy"]
    assert sorted(p.name for p in fs.iterdir()) == [], "a dry run writes nothing"


@pytest.mark.slow
def test_demo_runs_from_the_wheel(product: Product) -> None:
    # the default scenario (hil/scenarios/hd_normal_batch.toml) with its station, recipe and board is read before
    # the time scale is checked: refused for that, it was all found (the whole normal batch is tests/test_cli.py's)
    refused = product.run("demo", "--time-scale", "5000", "--report-dir", str(product.cwd / "refused"))
    assert refused.returncode == 2 and "--time-scale must be within 1 .. 1500" in refused.stderr, refused.stderr
    assert "Traceback" not in refused.stderr and not (product.cwd / "refused").exists()
    # a short shipped scenario, whole (0.8 h of plant time at 200x, about 15 s): the 1500x normal batch aborted
    # on a loaded machine, as the scenarios' comments warn
    report = product.cwd / "demo-report"
    out = product.run("demo", "--scenario", str(product.scenarios / "hd_process_freeze.toml"), "--no-color",
                      "--report-dir", str(report), timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "  scenario hil/scenarios/hd_process_freeze.toml, plant at 200x" in out.stdout, out.stdout[:2000]
    assert "hd_process_freeze: PASS" in out.stdout and "demo complete" in out.stdout
    mqtt = re.search(r"^  MQTT: received (.*); (.*)$", out.stdout, re.M)
    assert mqtt is not None and mqtt.group(2) == "no gaps", out.stdout[-3000:]   # and no INVALID suffix
    assert json.loads((report / "hd_process_freeze.json").read_text())["outcome"] == "pass"
    assert (report / "batch" / "report.html").stat().st_size > 10_000


@pytest.mark.slow
def test_tail_and_a_command_against_a_running_station(product: Product, tmp_path: pathlib.Path) -> None:
    from edge.spec.broker import parse_broker_url
    from edge.telemetry.topics import SCHEMA_BASE, StationTopics
    from edge.telemetry.watch import Watch
    from edge.timestamps import rfc3339_ms
    from hil.regfile import RegisterFile
    from tests.mqtt_broker import Mosquitto

    topics = StationTopics("pilot-line", "hd-01")
    regs_path = tmp_path / "plant.regs"
    station = tmp_path / "station.toml"
    text = (product.data / "stations" / "hd_reactor_sim.toml").read_text()
    station.write_text(text.replace('path = "/dev/shm/reedge-hd-01.regs"', f'path = "{regs_path}"', 1))
    assert str(regs_path) in station.read_text()
    broker = Mosquitto(tmp_path / "broker").start()
    procs: list[subprocess.Popen[str]] = []
    try:
        with RegisterFile.create(regs_path) as regs, \
                Watch(parse_broker_url(broker.url), site=topics.site, station=topics.station,
                      client_id="wheel-test", protocol="5", keep=True) as watch:
            regs.regs.plant_alive = 1        # wall clock: no plant process needed
            run_log = tmp_path / "run.out"
            with open(run_log, "w") as log:
                procs.append(subprocess.Popen(
                    product.cmd("run", "--station", str(station), "--state-dir", str(tmp_path / "state"), "--json",
                                "--broker", broker.url, "--telemetry-window-s", "0.2"),
                    cwd=product.cwd, env=product.env, stdout=log, stderr=subprocess.STDOUT, text=True,
                    start_new_session=True))
            assert watch.wait(lambda w: any(c.envelope is not None and c.envelope.stream == "telemetry"
                                            for c in w.messages), WAIT_S), run_log.read_text()[-3000:]
            tail = subprocess.Popen(product.cmd("tail", "--broker", broker.url, "--station", "hd-01", "--json",
                                                "--seconds", "8"),
                                    cwd=product.cwd, env=product.env, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True, start_new_session=True)
            procs.append(tail)
            time.sleep(3)                    # tail subscribed (its first lines show it, read at the end)
            command_id = str(uuid.uuid4())
            doc = {"schema": f"{SCHEMA_BASE}cmd-hold.json", "command_id": command_id,
                   "issued_at": rfc3339_ms(time.time_ns()), "issuer": "scada-hd", "args": {"reason": "wheel test"}}
            watch.client.publish(topics.cmd("hold", "scada-hd"), json.dumps(doc), qos=1)
            reply = _reply(watch, command_id)
            tail_out, tail_err = tail.communicate(timeout=WAIT_S)
        # the command was read and checked against its schema, and answered for what it asks (no batch to hold)
        assert reply["verb"] == "hold" and reply["code"] != "invalid", reply
        assert (reply["result"], reply["code"]) == ("rejected", "state"), reply
        assert tail.returncode == 0, tail_out[-3000:] + tail_err
        lines = [json.loads(line) for line in tail_out.splitlines()]
        messages = [m for m in lines if "valid" in m]
        assert messages and all(m["valid"] for m in messages), messages[:3]
        assert {"telemetry", "reply"} <= {m.get("stream") for m in messages}, {m.get("stream") for m in messages}
        assert lines[-1] == {"type": "total", "invalid": 0, "lost": 0}, lines[-1]
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=WAIT_S)
        broker.close()
    assert procs[0].returncode == 0, run_log.read_text()[-3000:]


def _reply(watch: Any, command_id: str) -> dict[str, Any]:
    def answered(w: Any) -> bool:
        return any(c.envelope is not None and c.envelope.stream == "reply"
                   and c.envelope.body.get("command_id") == command_id for c in w.messages)

    assert watch.wait(answered, WAIT_S), f"no reply to command {command_id}"
    return next(c.envelope.body for c in watch.snapshot() if c.envelope is not None
                and c.envelope.stream == "reply" and c.envelope.body.get("command_id") == command_id)
