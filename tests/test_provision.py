"""``reedge provision`` into an image folder (a temp dir standing in for an SD card's root): the files a
station needs appear once, a second run changes nothing and says so, a tampered file is put back,
nothing is written for a station that names no board, and ``--system`` refuses without root. What the
service needs is checked as its user after the image's first start is played (systemd-sysusers and
systemd-tmpfiles as reedge-setup.service runs them, into the image), and every unit passes
``systemd-analyze verify``. The units are not started under a systemd here: one booted as PID 1 of a
PID namespace over the shared root runs the host's whole boot (it empties /tmp, starts the host's
services), which no test may do to a machine others use.
"""

from __future__ import annotations

import configparser
import io
import os
import pathlib
import shlex
import shutil
import subprocess
import sys
import tempfile

import pytest

from edge.app.provision import (
    GAVE_UP_UNIT_PATH,
    MODULES_PATH,
    SETUP_UNIT_PATH,
    STATION_PATH,
    SYSUSERS_PATH,
    TMPFILES_PATH,
    UNIT_PATH,
    WANTS_PATH,
    WATCHDOG_PATH,
    Options,
    ProvisionError,
    provision,
)
from tests.test_boards import HARDWARE_STATION

ROOT = pathlib.Path(__file__).resolve().parent.parent
EVERY_BOARD = [STATION_PATH, UNIT_PATH, SETUP_UNIT_PATH, GAVE_UP_UNIT_PATH, WANTS_PATH, SYSUSERS_PATH, TMPFILES_PATH]
PI_BOARD = [*EVERY_BOARD, WATCHDOG_PATH, MODULES_PATH]
UNITS = (UNIT_PATH, SETUP_UNIT_PATH, GAVE_UP_UNIT_PATH)


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
    assert changes == [f"created {p}" for p in PI_BOARD]
    assert "9 files written" in text
    assert (image / STATION_PATH.lstrip("/")).read_bytes() == station.read_bytes()
    assert ((image / STATION_PATH.lstrip("/")).stat().st_mode & 0o777) == 0o640   # not world-readable
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
    assert all(c.startswith("unchanged ") for c in changes) and len(changes) == len(PI_BOARD)
    assert "nothing changed" in text
    assert files_under(image) == before  # not even rewritten with the same bytes


def test_a_tampered_file_is_put_back_and_only_it(station: pathlib.Path, image: pathlib.Path) -> None:
    run(station, image)
    unit = image / UNIT_PATH.lstrip("/")
    unit.write_text(unit.read_text().replace("Restart=always", "Restart=no"))
    changes, text = run(station, image)
    assert [c for c in changes if not c.startswith("unchanged")] == [f"updated {UNIT_PATH}"]
    assert "Restart=always" in unit.read_text() and "1 file written" in text


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


SPI_TODO = "add 'dtparam=spi=on'"


@pytest.mark.parametrize(("config_txt", "why"), [
    ("#dtparam=spi=on\n", ""),                                          # commented out
    ("  # dtparam=spi=on\n", ""),
    ("dtparam=audio=on # dtparam=spi=on\n", ""),
    ("dtparam=spi=on   # for the converters\n", "comment after the value"),   # not a comment to the firmware
    ("dtparam = spi=on\n", "spaces around '='"),
    ("[pi4]\ndtparam=spi=on\n", "a model filter this board does not match"),   # the board is a Pi 5
    ("[gpio4=1]\ndtparam=spi=on\n", "[gpio4=1], a condition reedge cannot check"),
    ("[none]\ndtparam=spi=on\n[all]\n", "[none]"),
    ("dtparam=spi=on\ndtparam=spi=off\n", "config.txt line 3 sets spi=off"),   # the last value wins
    ("dtoverlay=spi-mux\ndtparam=spi=on\n", "follows dtoverlay=spi-mux of config.txt line 2, which has its own 'spi' "
                                              "parameter"),
    ("include missing.txt\n", ""),
])
def test_a_setting_the_firmware_would_not_apply_is_still_a_todo(station: pathlib.Path, image: pathlib.Path,
                                                               config_txt: str, why: str) -> None:
    config = image / "boot" / "firmware" / "config.txt"
    config.write_text("dtparam=watchdog=on\n" + config_txt)
    # an overlay whose parameters include one named spi: names are NUL-ended strings in the blob
    (image / "boot" / "firmware" / "overlays").mkdir()
    (image / "boot" / "firmware" / "overlays" / "spi-mux.dtbo").write_bytes(b"\xd0\r\xfe\xed...\0status\0spi\0cs\0")
    _, text = run(station, image)
    todo = next((line for line in text.splitlines() if SPI_TODO in line), None)
    assert todo is not None, text
    assert why in todo, todo
    assert "watchdog" not in text.split("to do by hand", 1)[-1], text


@pytest.mark.parametrize("config_txt", [
    "dtparam=spi=on\n",
    "dtparam=spi\n",                                        # a bare parameter is on
    "dtparam=i2c_arm=on,spi=on\n",                          # several in one line
    "[pi4]\ndtparam=audio=on\n[pi5]\ndtparam=spi=on\n",     # the Pi 5's section
    "[pi4]\ndtparam=spi=off\n[all]\ndtparam=spi=on\n",      # [all] ends the filter
    "dtoverlay=vc4-kms-v3d\ndtoverlay=\ndtparam=spi=on\n",   # a bare dtoverlay= returns to the base tree
    "dtoverlay=vc4-kms-v3d\ndtparam=spi=on\n",              # the overlay has no spi: the base tree's
    "dtoverlay=spi-mux\ndtoverlay=vc4-kms-v3d:cma-256\ndtparam=spi=on\n",   # spi-mux is out of scope
    "dtparam=spi=off\ndtparam=spi=on\n",
    "include reedge.txt\n",                                  # reedge.txt: dtparam=spi=on
])
def test_a_setting_the_firmware_applies_is_not_a_todo(station: pathlib.Path, image: pathlib.Path,
                                                      config_txt: str) -> None:
    (image / "boot" / "firmware" / "reedge.txt").write_text("dtparam=spi=on\n")
    (image / "boot" / "firmware" / "overlays").mkdir()
    (image / "boot" / "firmware" / "overlays" / "spi-mux.dtbo").write_bytes(b"\xd0\r\xfe\xed...\0status\0spi\0cs\0")
    (image / "boot" / "firmware" / "overlays" / "vc4-kms-v3d.dtbo").write_bytes(b"\xd0\r\xfe\xed...\0cma-256\0")
    (image / "boot" / "firmware" / "config.txt").write_text("dtparam=watchdog=on\n" + config_txt)
    _, text = run(station, image)
    assert "to do by hand" not in text, text


def _setup_commands(root: pathlib.Path) -> list[list[str]]:
    """reedge-setup.service's ExecStart lines, pointed at the image (--root) instead of the running system."""
    commands = []
    for line in (root / SETUP_UNIT_PATH.lstrip("/")).read_text().splitlines():
        if line.startswith("ExecStart="):
            program, *args = line.removeprefix("ExecStart=").split()
            commands.append([program, f"--root={root}", *[str(root / a.lstrip("/")) if a.startswith("/") else a
                                                             for a in args]])
    return commands


def _ids(root: pathlib.Path, database: str) -> dict[str, tuple[int, int]]:
    rows = [line.split(":") for line in (root / "etc" / database).read_text().splitlines()]
    return {row[0]: (int(row[2]), int(row[3]) if database == "passwd" else 0) for row in rows}


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_the_service_user_reads_its_files_and_no_one_else_does(station: pathlib.Path, umask: int) -> None:
    """The unit runs as reedge, not root. What reedge-setup.service does at the image's first start is played
    into the image (its own ExecStart lines with --root), then each file is checked as reedge (its uid, gid and
    SupplementaryGroups from the image's user database) and as nobody: the station file and the MQTT password
    are readable by reedge alone. (/var/lib/reedge is the unit's StateDirectory=: systemd gives it to reedge.)
    Also when provision runs under a hardened root's umask 077, which makes the password's folder 0700 root."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None or shutil.which("systemd-sysusers") is None:
        pytest.skip("needs root, setpriv and systemd-sysusers to act as another user")
    (station.parent / "secrets").mkdir()
    (station.parent / "secrets" / "mqtt.password").write_text("s3cret\n")
    station.write_text(station.read_text() + '\n[mqtt]\nusername = "hd-02"\npassword_file = "secrets/mqtt.password"\n')
    with tempfile.TemporaryDirectory() as folder:
        root = pathlib.Path(folder)
        root.chmod(0o755)                        # an image root, as mounted: traversable by everyone
        (root / "etc").mkdir()
        (root / "etc").chmod(0o755)              # as on every root (provision would make it with its umask)
        old_umask = os.umask(umask)
        try:
            provision(station, image_root=root, system=False, out=io.StringIO())
        finally:
            os.umask(old_umask)
        password = root / "etc" / "reedge" / "secrets" / "mqtt.password"
        assert password.read_text() == "s3cret\n" and (password.stat().st_mode & 0o777) == 0o640
        commands = _setup_commands(root)
        assert [pathlib.Path(c[0]).name for c in commands] == ["systemd-sysusers", "systemd-tmpfiles"]
        for command in commands:
            setup = subprocess.run(command, capture_output=True, text=True, timeout=60)
            assert setup.returncode == 0, (command, setup.stderr)
        unit = configparser.ConfigParser(strict=False, interpolation=None)
        unit.read_string((root / UNIT_PATH.lstrip("/")).read_text())
        assert unit["Service"]["User"] == "reedge"
        uid, gid = _ids(root, "passwd")["reedge"]
        groups = _ids(root, "group")
        supplementary = ",".join(str(groups[g][0]) for g in unit["Service"]["SupplementaryGroups"].split())
        as_reedge = ["setpriv", f"--reuid={uid}", f"--regid={gid}", f"--groups={supplementary}", "--"]
        as_nobody = ["runuser", "-u", "nobody", "--"]
        checks = [(as_reedge, "-r", root / STATION_PATH.lstrip("/"), 0), (as_reedge, "-r", password, 0),
                  (as_nobody, "-r", root / STATION_PATH.lstrip("/"), 1), (as_nobody, "-r", password, 1)]
        for who, test, path, expected in checks:
            done = subprocess.run([*who, "test", test, str(path)], capture_output=True, timeout=30)
            assert done.returncode == expected, (who[0], test, path, done.stderr)


def test_a_credential_named_by_absolute_path_is_a_todo(station: pathlib.Path, image: pathlib.Path,
                                                      tmp_path: pathlib.Path) -> None:
    secret = tmp_path / "elsewhere" / "mqtt.password"
    secret.parent.mkdir()
    secret.write_text("s3cret\n")
    station.write_text(station.read_text() + f'\n[mqtt]\nusername = "hd-02"\npassword_file = "{secret}"\n')
    changes, text = run(station, image)
    assert len(changes) == len(PI_BOARD)          # not copied: it is not reedge's to place
    assert f"to do by hand: put {secret} on the target: the station names it" in text
    assert f"to do by hand: {secret} is outside /etc/reedge: make sure user reedge can read it" in text


@pytest.mark.parametrize(("addition", "message"), [
    ('\n[mqtt]\nusername = "u"\npassword_file = "../FOLDER/hd-02.toml"\n', r"password_file '\.\./.*' leaves"),
    ('\n[mqtt]\nusername = "u"\npassword_file = "~/hd-02.toml"\n', "the service has no home folder"),
])
def test_a_credential_the_service_could_not_find_is_refused(station: pathlib.Path, image: pathlib.Path,
                                                           addition: str, message: str,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(station.parent))      # ~ is the station's folder: the file exists here
    station.write_text(station.read_text() + addition.replace("FOLDER", station.parent.name))
    before = files_under(image)
    with pytest.raises(ProvisionError, match=message):
        run(station, image)
    assert files_under(image) == before


def test_a_latch_file_the_service_cannot_write_is_refused(station: pathlib.Path, image: pathlib.Path) -> None:
    station.write_text(station.read_text().replace("[core]\n", '[core]\nlatch_file = "/etc/reedge/latched"\n', 1))
    with pytest.raises(ProvisionError, match=r"core\.latch_file '/etc/reedge/latched': the service may write only "
                                             r"under /var/lib/reedge \(ProtectSystem=strict\)"):
        run(station, image)
    station.write_text(station.read_text().replace("/etc/reedge/latched", "/var/lib/reedge/trips"))
    run(station, image)


def test_the_unit_gives_up_after_its_start_limit_with_a_clear_journal_line(station: pathlib.Path,
                                                                          image: pathlib.Path) -> None:
    run(station, image)
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.read_string((image / UNIT_PATH.lstrip("/")).read_text())
    assert unit["Unit"]["StartLimitBurst"] == "5" and unit["Unit"]["StartLimitIntervalSec"] == "10min"
    assert unit["Unit"]["OnFailure"] == "reedge-gave-up.service" and unit["Service"]["Restart"] == "always"
    gave_up = configparser.ConfigParser(strict=False, interpolation=None)
    gave_up.read_string((image / GAVE_UP_UNIT_PATH.lstrip("/")).read_text())
    assert gave_up["Service"]["SyslogIdentifier"] == "reedge"
    line = subprocess.run(shlex.split(gave_up["Service"]["ExecStart"]), capture_output=True, text=True, timeout=30)
    assert line.returncode == 0 and line.stdout.count("\n") == 1, line
    assert "reedge.service failed 5 times within 10min and is no longer restarted" in line.stdout
    assert "systemctl reset-failed reedge && systemctl start reedge" in line.stdout


def test_an_image_starts_the_service_at_boot(station: pathlib.Path, image: pathlib.Path) -> None:
    run(station, image)
    link = image / WANTS_PATH.lstrip("/")
    assert link.is_symlink() and os.readlink(link) == UNIT_PATH
    if shutil.which("systemctl") is not None:     # systemd's own reading of the image
        enabled = subprocess.run(["systemctl", f"--root={image}", "is-enabled", "reedge.service"],
                                 capture_output=True, text=True, timeout=60)
        assert enabled.stdout.strip() == "enabled", enabled


def test_every_unit_passes_systemd_analyze_verify(station: pathlib.Path, image: pathlib.Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    reedge = pathlib.Path(sys.executable).parent / "reedge"     # verify wants ExecStart to exist on this host
    run(station, image, Options(reedge_bin=str(reedge if reedge.exists() else sys.executable)))
    units = [str(image / path.lstrip("/")) for path in UNITS]
    done = subprocess.run([analyze, "verify", *units], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    manager = configparser.ConfigParser(strict=True, interpolation=None)
    manager.optionxform = str  # type: ignore[assignment,method-assign]
    manager.read_string((image / WATCHDOG_PATH.lstrip("/")).read_text())
    assert set(manager["Manager"]) == {"RuntimeWatchdogSec", "RebootWatchdogSec"}


def test_sim_station_gets_no_hardware_watchdog(image: pathlib.Path) -> None:
    changes, text = run(ROOT / "stations" / "sintering_furnace_sim.toml", image)
    paths = [c.split()[1] for c in changes]
    assert paths == EVERY_BOARD
    # the service runs as reedge: the plant's register file must be writable by it, or the core cannot open it
    assert ("to do by hand: /dev/shm/reedge-sf-01.regs: the plant that creates this register file must leave it "
            "writable by user reedge") in text


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
    with pytest.raises(ProvisionError, match=r"the rpi5's watchdog \(bcm2835_wdt\) counts 1 to 15 s"):
        run(station, image, Options(hardware_watchdog_s=30))
    assert files_under(image) == {"boot/firmware/config.txt": files_under(image)["boot/firmware/config.txt"]}


@pytest.mark.parametrize("reedge_bin", ["/home/pi/my tools/.venv/bin/reedge", "/opt/re%iedge/bin/reedge",
                                        '/opt/"reedge"/bin/reedge'])
def test_a_reedge_path_systemd_would_split_or_expand_is_refused(station: pathlib.Path, image: pathlib.Path,
                                                                 reedge_bin: str) -> None:
    """ExecStart= splits at a space ('/home/pi/my' would be run) and expands % ('%i' is the instance name, empty
    here: /opt/reedge/bin/reedge would be run) and unquotes: such a unit was written and provision said it was
    done. Without --reedge-bin, --system takes the running reedge's path, so a venv in "my tools" did it."""
    with pytest.raises(ProvisionError, match="systemd would split or expand this path"):
        run(station, image, Options(reedge_bin=reedge_bin))
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
