"""The fleet page (edge/historian/web.py) in a real headless Chromium, on stores filled by ingest().

The plant is tests/historian_plant.py: two stations, a complete and a lower-bound batch, an unweighed
one, a running one, an open and an explained gap, an alarm message and a batch id that are hostile
HTML. Chromium loads the page and its batch report (``--dump-dom``: the DOM after the page ran, so a
script that got through would have left its mark in the title); the JSON twins are compared between
SQLite and a real PostgreSQL filled with the same messages. A client that connects and says nothing holds
up neither another client nor the historian's stop; a report is drawn anew when late telemetry of its
time is stored.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import signal
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections import OrderedDict
from collections.abc import Iterator
from html.parser import HTMLParser
from typing import Any
from urllib.parse import urljoin

import pytest

from edge.historian.ingest import Received, ingest
from edge.historian.store import open_store
from edge.historian.web import FleetPage, _ReportCache, batch_report, parse_address, start_page
from tests.historian_db import empty_pg
from tests.historian_plant import HOSTILE_ALARM, HOSTILE_BATCH, plant
from tests.mqtt_broker import SAFETY_S, Mosquitto, wait_until
from tests.pg_server import PgServer
from tests.test_historian_consumer import publish

CHROMIUM = pathlib.Path("/usr/bin/chromium")
WALL_CLOCK_FIELDS = {"first_seen", "opened", "state"}   # when this test ingested: differs between the two stores


def chromium() -> pathlib.Path:
    """The browser; fails under CI (``./dev test`` installs it) and skips elsewhere when it is missing."""
    if CHROMIUM.is_file():
        return CHROMIUM
    message = "chromium is not installed (./dev test installs it: apt-get install chromium)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def dump_dom(url: str, profile: pathlib.Path) -> str:
    """The page's DOM after it loaded, serialised by headless Chromium."""
    done = subprocess.run([str(chromium()), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                           "--no-first-run", "--disable-background-networking", "--disable-component-update",
                           "--disable-sync", f"--user-data-dir={profile}", "--dump-dom", url],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "</html>" in done.stdout, done.stderr[-2000:]
    return done.stdout


class Page(HTMLParser):
    """What a reader of the DOM sees: the title, every table's rows (cell texts and classes) by section,
    the links, and which elements there are."""

    def __init__(self, dom: str) -> None:
        super().__init__()
        self.title = ""
        self.tables: dict[str, list[list[tuple[str, str]]]] = {}
        self.links: dict[str, str] = {}
        self.tags: set[str] = set()
        self.images: list[str] = []
        self._section = ""
        self._cell: list[str] | None = None
        self._cls = ""
        self._link: str | None = None
        self._text: list[str] = []
        self._in_title = False
        self.text = ""
        self.feed(dom)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        self.tags.add(tag)
        if tag == "section":
            self._section = a.get("id") or ""
        elif tag == "tr":
            self.tables.setdefault(self._section, []).append([])
        elif tag in ("td", "th"):
            self._cell, self._cls = [], a.get("class") or ""
        elif tag == "a":
            self._link, self._text = a.get("href") or "", []
        elif tag == "title":
            self._in_title = True
        elif tag == "img":
            self.images.append(a.get("src") or "")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None:
            self.tables[self._section][-1].append(("".join(self._cell).strip(), self._cls))
            self._cell = None
        elif tag == "a" and self._link is not None:
            self.links.setdefault("".join(self._text).strip() + " " + str(len(self.links)), self._link)
            self._link = None
        elif tag == "title":
            self._in_title = False

    def handle_data(self, data: str) -> None:
        self.text += data
        if self._cell is not None:
            self._cell.append(data)
        if self._link is not None:
            self._text.append(data)
        if self._in_title:
            self.title += data

    def rows(self, section: str) -> list[list[str]]:
        return [[text for text, _ in row] for row in self.tables.get(section, [])]

    def row(self, section: str, *first: str) -> list[tuple[str, str]]:
        found = [r for r in self.tables.get(section, []) if tuple(t for t, _ in r[:len(first)]) == first]
        assert len(found) == 1, f"{section}: one row starting {first}, got {self.rows(section)}"
        return found[0]


def fill(url: str) -> None:
    with open_store(url) as store:
        result = ingest(store, plant())
    assert result.quarantined == 0 and result.stored == len(plant()), result


@pytest.fixture(scope="module")
def sqlite_page(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FleetPage]:
    url = f"sqlite:///{tmp_path_factory.mktemp('fleet') / 'plant.db'}"
    fill(url)
    with start_page(url, "127.0.0.1:0") as page:
        yield page


def get(url: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, method=method, data=b"x=1" if method in ("POST", "PUT", "PATCH") else None)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def test_chromium_shows_the_fleet_its_figures_the_gaps_and_a_batch_report(sqlite_page: FleetPage,
                                                                           tmp_path: pathlib.Path) -> None:
    page = Page(dump_dom(sqlite_page.url, tmp_path / "profile"))
    assert page.title == "Fleet: the plant historian", "a script in a message ran (or the page did not load)"
    assert not page.tags & {"script", "img", "b"}, "markup from a message reached the page as markup"

    hd = page.row("stations", "pilot-line/hd-01")
    assert [t for t, _ in hd[1:5]] == ["online", "absorption", "running", "2027-01-19 09:00"], hd
    assert hd[6] == ("1", "num") and hd[8][0] == "hd-2027-003"                  # trips in its batches; the current one
    assert hd[7] == (f"chamber_temp_deviation: {HOSTILE_ALARM}", "alarm")      # the hostile text, as text
    assert [t for t, _ in page.row("stations", "pilot-line/sint-01")[1:3]] == ["offline", "-"]

    month = page.row("figures", "pilot-line/hd-01", "2027-01")
    assert month[2:6] == [("2", "num"), ("45", "num"), ("2 (1 of 2)", "num incomplete"), ("62.2", "num")], month
    assert page.row("figures", "pilot-line (site)", "2027-01")[3] == ("≥ 45", "num incomplete")
    assert any(HOSTILE_BATCH in " ".join(r) for r in page.rows("figures")) is False    # notes are in a list
    done = [t for t, _ in page.row("batches", "pilot-line/hd-01", "hd-2027-001")]
    assert done[3:] == ["done", "2027-01-15 08:00", "2027-01-15 14:00", "25", "2", "56", "0.5", "1", "report"], done
    hostile = page.row("batches", "pilot-line/hd-01", HOSTILE_BATCH)
    assert hostile[7] == ("≥ 1.5", "num incomplete"), hostile                   # a lower bound, flagged
    assert [t for t, _ in page.row("batches", "pilot-line/hd-01", "hd-2027-003")[3:4]] == ["running"]
    unweighed = page.row("batches", "pilot-line/sint-01", "sint-2027-001")        # no per-kg figure, and why
    assert unweighed[6:8] == [("not weighed", "missing"), ("not weighed", "missing")], unweighed

    gaps = {r[3]: r for r in page.rows("gaps")[1:]}
    assert gaps["4..5"][2] == "telemetry" and gaps["4..5"][6].startswith("open"), gaps
    assert gaps["9..10"][6] == "explained: thinned", gaps

    link = next(href for text, href in page.links.items() if text.startswith("report") and "lot" in href)
    report = Page(dump_dom(urljoin(sqlite_page.url, link), tmp_path / "profile"))
    assert report.title.startswith(f"Batch {HOSTILE_BATCH}"), report.title
    assert "b" not in report.tags - {"body"} and "script" not in report.tags
    quantities = {r[0]: r for r in report.rows("") if r}
    assert quantities["Electricity, metered"][1] == "≥ 30.0 kWh", quantities        # the report's own rules
    assert any(src.startswith("data:image/png;base64,") and len(src) > 20_000 for src in report.images)
    assert "no trend: the historian holds no telemetry of this batch's time" in report.text   # none was sent
    status, _, html = get(sqlite_page.url + "batch/pilot-line/hd-01/hd-2027-001")       # the stored telemetry's
    assert status == 200 and b"no trend" not in html


def test_the_page_has_no_write_path(sqlite_page: FleetPage, tmp_path: pathlib.Path) -> None:
    db = sqlite_page._server.db_url.removeprefix("sqlite://")
    before = pathlib.Path(db).read_bytes()
    for method in ("POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"):
        status, headers, _ = get(sqlite_page.url + "api/batches", method)
        assert (status, headers.get("Allow")) == (405, "GET"), method
    for path in ("nope", "batch/pilot-line/hd-01/no-such-batch", "batch/only-two/parts"):
        assert get(sqlite_page.url + path)[0] == 404, path
    assert pathlib.Path(db).read_bytes() == before
    with pytest.raises(ValueError, match="--http must be HOST:PORT"):
        parse_address("localhost")
    with pytest.raises(ValueError, match="--http must be HOST:PORT"):
        parse_address("127.0.0.1:99999")


def _same(value: Any) -> str:
    """The JSON without the fields that say when this test ran, as text."""
    def strip(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: strip(x) for k, x in v.items() if k not in WALL_CLOCK_FIELDS}
        return [strip(x) for x in v] if isinstance(v, list) else v
    return json.dumps(strip(value), sort_keys=True, indent=0)


def test_the_json_twins_are_the_same_on_postgresql_and_sqlite(sqlite_page: FleetPage, pg_server: PgServer) -> None:
    empty_pg(pg_server.url)         # the suite's PostgreSQL (tests/historian_db.py), as other tests left it
    fill(pg_server.url)
    with start_page(pg_server.url, "127.0.0.1:0") as pg_page:
        for api in ("api/stations", "api/batches", "api/gaps", "api/figures"):
            status, headers, body = get(pg_page.url + api)
            assert status == 200 and headers["Content-Type"] == "application/json", body[:300]
            lite = json.loads(get(sqlite_page.url + api)[2])
            assert _same(json.loads(body)) == _same(lite), api     # as text: true is not 1, 2.0 not 2
        stations = json.loads(get(pg_page.url + "api/stations")[2])
        assert [s["status"] for s in stations] == ["online", "offline"]
        status, _, html = get(pg_page.url + "batch/pilot-line/hd-01/hd-2027-001")
        assert status == 200 and b"Consumption and emissions" in html and b"no trend" not in html


def _batches_on(url: str) -> int:
    try:
        status, _, body = get(url + "api/batches")
    except OSError:
        return -1
    return len(json.loads(body)) if status == 200 else -1


def test_historian_run_serves_the_page_while_it_consumes_and_takes_it_down_when_stopped(
        tmp_path: pathlib.Path) -> None:
    """``reedge historian run --http 127.0.0.1:0`` as a process: the page shows what the consumer stores as it
    comes, and SIGTERM stops both (the port answers no more)."""
    broker = Mosquitto(tmp_path / "mosquitto").start()
    lines: list[str] = []
    proc = subprocess.Popen([sys.executable, "-m", "edge", "historian", "run", "--broker", broker.url, "--db",
                             str(tmp_path / "plant.db"), "--group", "fleet", "--client-id", "fleet-1", "--http",
                             "127.0.0.1:0"], env={**os.environ, "PYTHONPATH": str(pathlib.Path(__file__).parents[1])},
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True).start()  # type: ignore[arg-type]
        found: list[str] = []

        def page_address() -> bool:
            found[:] = re.findall(r"fleet page at (http://\S+/)", "".join(lines))
            return bool(found) or proc.poll() is not None

        wait_until(page_address, "the fleet page's address on stderr")
        assert found, "".join(lines)
        url = found[0]
        assert _batches_on(url) == 0
        publish(broker, [Received(*m) for m in plant()])
        wait_until(lambda: _batches_on(url) == 4, "the plant's batches on the page")
        idle = socket.create_connection(parse_address(url[len("http://"):-1]))    # connects, never says a word
        status, _, html = get(url)
        assert status == 200 and b"lot/7 &lt;b&gt;bold&lt;/b&gt;" in html and b"<b>bold" not in html
        proc.send_signal(signal.SIGTERM)      # the idle client still connected: it holds up nothing
        assert proc.wait(timeout=SAFETY_S) == 0, "".join(lines)
        with pytest.raises(OSError):
            urllib.request.urlopen(url, timeout=5)
        idle.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        broker.close()


def test_an_idle_connection_holds_up_neither_another_client_nor_close(tmp_path: pathlib.Path) -> None:
    url = f"sqlite:///{tmp_path / 'plant.db'}"
    open_store(url).close()
    page = start_page(url, "127.0.0.1:0")
    idle = socket.create_connection(parse_address(page.url[len("http://"):-1]))   # connects, never says a word
    try:
        status, _, body = get(page.url + "api/stations")
        assert status == 200 and json.loads(body) == []
        closing = threading.Thread(target=page.close, daemon=True)
        closing.start()
        closing.join(SAFETY_S)
        assert not closing.is_alive(), "close() held up by the idle connection"
    finally:
        idle.close()


def test_a_report_is_drawn_anew_when_late_telemetry_of_its_time_is_stored(tmp_path: pathlib.Path) -> None:
    messages = [Received(*m) for m in plant()]
    late = [m for m in messages if "/telemetry" in m.topic][-2:]     # the batch's last two windows come late
    cache = _ReportCache(OrderedDict())
    with open_store(f"sqlite:///{tmp_path / 'plant.db'}") as store:
        ingest(store, [m for m in messages if m not in late])
        before = batch_report(store, "pilot-line", "hd-01", "hd-2027-001", cache)
        assert ingest(store, late).stored == 2
        after = batch_report(store, "pilot-line", "hd-01", "hd-2027-001", cache)
        assert before is not None and after is not None and after != before
        assert batch_report(store, "pilot-line", "hd-01", "hd-2027-001", cache) is after    # kept, not redrawn
