"""``reedge provision`` into an image folder (a temp dir standing in for an SD card's root): the files a
station needs appear once, a second run changes nothing and says so, a tampered file is put back,
nothing is written for a station that names no board, and ``--system`` refuses without root.
"""

from __future__ import annotations

import configparser
import io
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile

import pytest

from edge.app.provision import (
    MODULES_PATH,
    STATION_PATH,
    SYSUSERS_PATH,
    UNIT_PATH,
    WATCHDOG_PATH,
    Options,
    ProvisionError,
    provision,
)
from tests.test_boards import HARDWARE_STATION

ROOT = pathlib.Path(__file__).resolve().parent.parent


@pytest.fixture
def station(tmp_path: pathlib.Path) -> pathlib.Path:
    path = tmp_path / "hd-02.toml"
    path.write_text(HARDWARE_STATION.replace('board = "cm4_industrial"', 'board = "rpi5"'))
    return path


@pytest.fixture
def image(tmp_path: pathlib.Path) -> pathlib.Path:
    root = tmp_path / "rootfs"
    (root / "boot" / "firmware").mkdir(parents=True)
    (root / "boot" / "firmware" / "config.txt").write_text("[all]\ndtparam=audio=on\n")
    return root


def run(station: pathlib.Path, image: pathlib.Path, options: Options | None = None) -> tuple[list[str], str]:
    out = io.StringIO()
    changes = provision(station, image_root=image, system=False, options=options, out=out)
    return [f"{c.what} {c.path}" for c in changes], out.getvalue()


def files_under(root: pathlib.Path) -> dict[str, tuple[bytes, int]]:
    return {str(p.relative_to(root)): (p.read_bytes(), p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()}


def test_first_run_writes_the_station_service_and_watchdog(station: pathlib.Path, image: pathlib.Path) -> None:
    changes, text = run(station, image)
    assert changes == [f"created {p}" for p in (STATION_PATH, UNIT_PATH, SYSUSERS_PATH, WATCHDOG_PATH, MODULES_PATH)]
    assert "5 file(s) written" in text
    assert (image / STATION_PATH.lstrip("/")).read_bytes() == station.read_bytes()
    assert ((image / STATION_PATH.lstrip("/")).stat().st_mode & 0o777) == 0o644
    wd = configparser.ConfigParser()
    wd.read_string((image / WATCHDOG_PATH.lstrip("/")).read_text())
    assert wd["Manager"]["RuntimeWatchdogSec"] == "10s"
    assert wd["Manager"]["RebootWatchdogSec"] == "15s"      # 2min was more than bcm2835_wdt can count
    assert "bcm2835_wdt" in (image / MODULES_PATH.lstrip("/")).read_text().split()
    sysusers = (image / SYSUSERS_PATH.lstrip("/")).read_text()
    assert "u reedge -" in sysusers and "m reedge gpio" in sysusers and "m reedge spi" in sysusers


def test_unit_is_a_notify_service_with_watchdog_and_device_friendly_hardening(
        station: pathlib.Path, image: pathlib.Path) -> None:
    run(station, image, Options(reedge_bin="/opt/x/bin/reedge", service_watchdog_s=7))
    unit = configparser.ConfigParser(strict=True, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read_string((image / UNIT_PATH.lstrip("/")).read_text())
    service = unit["Service"]
    assert service["Type"] == "notify" and service["WatchdogSec"] == "7s" and service["Restart"] == "always"
    assert service["ExecStart"] == f"/opt/x/bin/reedge run --station {STATION_PATH} --state-dir /var/lib/reedge"
    assert "gpio" in service["SupplementaryGroups"].split() and "dialout" in service["SupplementaryGroups"].split()
    assert service["ProtectSystem"] == "strict" and service["NoNewPrivileges"] == "yes"
    # each of these would cut the controller off its GPIO/SPI/serial devices or its real-time sampler
    for breaking in ("PrivateDevices", "ProtectClock", "DeviceAllow", "DevicePolicy", "RestrictRealtime",
                     "PrivateUsers"):
        assert breaking not in service, breaking
    assert "CAP_SYS_NICE" in service["AmbientCapabilities"]
    assert unit["Install"]["WantedBy"] == "multi-user.target"
    assert "hd-02" in unit["Unit"]["Description"]


def test_second_run_changes_nothing_and_says_so(station: pathlib.Path, image: pathlib.Path) -> None:
    run(station, image)
    before = files_under(image)
    changes, text = run(station, image)
    assert all(c.startswith("unchanged ") for c in changes) and len(changes) == 5
    assert "nothing changed" in text
    assert files_under(image) == before  # not even rewritten with the same bytes


def test_a_tampered_file_is_put_back_and_only_it(station: pathlib.Path, image: pathlib.Path) -> None:
    run(station, image)
    unit = image / UNIT_PATH.lstrip("/")
    unit.write_text(unit.read_text().replace("Restart=always", "Restart=no"))
    changes, text = run(station, image)
    assert [c for c in changes if not c.startswith("unchanged")] == [f"updated {UNIT_PATH}"]
    assert "Restart=always" in unit.read_text() and "1 file(s) written" in text


def test_config_txt_todos_are_printed_not_applied(station: pathlib.Path, image: pathlib.Path) -> None:
    config = image / "boot" / "firmware" / "config.txt"
    before = config.read_text()
    _, text = run(station, image)
    assert "to do by hand: /boot/firmware/config.txt: add 'dtparam=spi=on'" in text
    assert "add 'dtparam=watchdog=on'" in text
    assert config.read_text() == before
    config.write_text(before + "dtparam=spi=on\ndtparam=watchdog=on\n")
    _, text = run(station, image)
    assert "to do by hand" not in text


def test_a_commented_out_setting_is_still_a_todo(station: pathlib.Path, image: pathlib.Path) -> None:
    config = image / "boot" / "firmware" / "config.txt"
    config.write_text("[all]\n#dtparam=spi=on\n  # dtparam=watchdog=on\ndtparam=audio=on # dtparam=spi=on\n")
    _, text = run(station, image)
    assert "add 'dtparam=spi=on'" in text and "add 'dtparam=watchdog=on'" in text
    config.write_text("[all]\n  dtparam=spi=on   # for the thermocouple converters\ndtparam=watchdog=on\n")
    _, text = run(station, image)
    assert "to do by hand" not in text


def test_the_service_user_can_read_what_provision_wrote(station: pathlib.Path) -> None:
    """The unit runs as reedge, not root: the station file it is started with must be readable by another user
    (runuser as nobody stands in for reedge, whose account sysusers makes at first boot)."""
    if os.geteuid() != 0 or shutil.which("runuser") is None:
        pytest.skip("needs root and runuser to read as another user")
    with tempfile.TemporaryDirectory() as folder:
        root = pathlib.Path(folder)
        root.chmod(0o755)                        # an image root, as mounted: traversable by everyone
        provision(station, image_root=root, system=False, out=io.StringIO())
        unit = configparser.ConfigParser(strict=False)
        unit.read_string((root / UNIT_PATH.lstrip("/")).read_text())
        assert unit["Service"]["User"] == "reedge"
        read = subprocess.run(["runuser", "-u", "nobody", "--", "cat", str(root / STATION_PATH.lstrip("/"))],
                              capture_output=True, timeout=30)
        assert read.returncode == 0 and read.stdout == station.read_bytes(), read.stderr


def test_sim_station_gets_no_hardware_watchdog(image: pathlib.Path) -> None:
    changes, _ = run(ROOT / "stations" / "sintering_furnace_sim.toml", image)
    paths = [c.split()[1] for c in changes]
    assert paths == [STATION_PATH, UNIT_PATH, SYSUSERS_PATH]


def test_station_without_board_is_refused_and_nothing_written(tmp_path: pathlib.Path, image: pathlib.Path) -> None:
    example = (ROOT / "stations" / "hd_reactor_sim.toml").read_text()
    no_board = tmp_path / "no_board.toml"
    no_board.write_text("\n".join(line for line in example.splitlines() if not line.startswith("board = ")))
    assert "board =" not in no_board.read_text()
    before = files_under(image)
    with pytest.raises(ProvisionError, match="names no board"):
        run(no_board, image)
    assert files_under(image) == before


def test_bad_station_is_refused_and_nothing_written(tmp_path: pathlib.Path, station: pathlib.Path,
                                                     image: pathlib.Path) -> None:
    station.write_text(station.read_text().replace('chip = "/dev/gpiochip0"', 'chip = "/dev/gpiochip7"'))
    before = files_under(image)
    with pytest.raises(ValueError, match=r"drivers\.cabinet\.chip: board 'rpi5' has no GPIO chip /dev/gpiochip7"):
        run(station, image)
    assert files_under(image) == before


def test_watchdog_beyond_the_pi_hardware_is_refused(station: pathlib.Path, image: pathlib.Path) -> None:
    with pytest.raises(ProvisionError, match="1 to 15 s"):
        run(station, image, Options(hardware_watchdog_s=30))
    assert files_under(image) == {"boot/firmware/config.txt": files_under(image)["boot/firmware/config.txt"]}


def test_cli_writes_the_image_and_exits_0_then_reports_nothing_changed(station: pathlib.Path,
                                                                       image: pathlib.Path) -> None:
    cmd = [sys.executable, "-m", "edge", "provision", "--station", str(station), "--image-root", str(image)]
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert first.returncode == 0, first.stderr
    assert f"created   {UNIT_PATH}" in first.stdout
    second = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert second.returncode == 0 and "nothing changed" in second.stdout


def test_system_refuses_without_root(station: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # the tests may run as root (CI): the check reads the effective uid, so give it an ordinary one
    import edge.app.provision

    monkeypatch.setattr("edge.app.provision.os.geteuid", lambda: 1000)
    written: list[object] = []

    def record(*args: object) -> list[object]:
        written.append(args)
        return []

    monkeypatch.setattr(edge.app.provision, "apply", record)
    with pytest.raises(ProvisionError, match=r"--system writes /etc and needs root.*nothing was written"):
        provision(station, image_root=None, system=True)
    assert written == []


def test_exactly_one_target(station: pathlib.Path, image: pathlib.Path) -> None:
    with pytest.raises(ProvisionError, match="exactly one target"):
        provision(station, image_root=image, system=True)
    cmd = [sys.executable, "-m", "edge", "provision", "--station", str(station)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 2 and "--image-root" in done.stderr
