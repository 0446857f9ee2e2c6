"""The plant historian in ``reedge demo``: the station's stream stored as a plant stores it, and its fleet page.

Beside the demo's broker, in this process: ``edge.historian``'s consumer (``HistorianConsumer``; MQTT
3.1.1 on the embedded broker, which has no shared subscriptions: one worker, the plain filter) stores
every message into an SQLite file in the report folder (``historian.db``, made new at each demo), and
the fleet page (``edge.historian.web``) serves it on a free loopback port. Both start before the
controller, so the historian sees the batch from its first message.

After the batch the demo waits (with a deadline) until the historian has processed every message the demo's
watch received (both subscribed before the station started, so they get the same messages), then checks
the page as a reader would: it lists the station and, when the batch finished, the batch, whose report
link answers with its one-page report. A historian that does not get
there fails the demo, with the reason; it never hides the demo's own checks (they are printed first).

The consumer stops with the batch act (the broker stops there); the page stays up until the demo ends,
and with ``--keep-page`` (or on a terminal) until Enter, so the page can be looked at after the batch.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import sys
import time
import urllib.error
import urllib.request
from typing import Literal

from edge.historian.consumer import HistorianConsumer
from edge.historian.store import StoreError, open_store
from edge.historian.web import FleetPage, report_path, start_page
from edge.spec.broker import BrokerUrl

STORED_WAIT_S = 30.0      # what the watch got reaches the database well within this (a second or two)


class DemoHistorian:
    """The consumer and the page of one demo (module docstring)."""

    def __init__(self, url: BrokerUrl, report_dir: pathlib.Path, *, protocol: Literal["5", "3.1.1"]) -> None:
        report_dir.mkdir(parents=True, exist_ok=True)
        self.db = report_dir / "historian.db"
        for old in (self.db, self.db.with_name("historian.db-wal"), self.db.with_name("historian.db-shm")):
            old.unlink(missing_ok=True)          # a new plant each demo: the previous run's batch is not this one's
        self.db_url = f"sqlite:///{self.db.resolve()}"
        self.log: list[str] = []                 # the consumer's own lines: kept, the demo prints its summary
        self.consumer = HistorianConsumer(url, self.db_url, group="demo", client_id=f"reedge-demo-historian-"
                                          f"{os.getpid()}", protocol=protocol, report_s=3600.0, log=self.log.append)
        self.page: FleetPage | None = None
        self._consuming = False

    def start(self) -> DemoHistorian:
        self.consumer.start()
        self._consuming = True
        self.page = start_page(self.db_url, "127.0.0.1:0")
        return self

    @property
    def url(self) -> str:
        assert self.page is not None
        return self.page.url

    def stop_consuming(self) -> None:
        if self._consuming:
            self._consuming = False
            self.consumer.stop()

    def close(self) -> None:
        self.stop_consuming()
        if self.page is not None:
            self.page.close()
            self.page = None

    def check(self, site: str, station: str, batch_id: str, received: int) -> tuple[bool, str]:
        """(passed, the line that says so): every one of the ``received`` messages the demo's watch got is
        processed (stored, a duplicate, quarantined or an ignored command), none quarantined, and the page shows
        the station and, when the batch finished, the batch and its report."""
        deadline = time.monotonic() + STORED_WAIT_S
        while self._processed() < received:
            if time.monotonic() > deadline:
                last = f" (its last word: {self.log[-1]})" if self.log else ""
                return False, (f"historian FAILED: {self._processed()} of the {received} messages the watch received"
                               f" reached {self.db} within {STORED_WAIT_S:g} s{last}")
            time.sleep(0.1)
        self.stop_consuming()                    # its last batch is committed: nothing more is coming
        t = self.consumer.totals
        if t.quarantined:
            return False, f"historian FAILED: {t.quarantined} message(s) quarantined (see the table quarantine)"
        page = _get(self.url)
        if page is None or f"{site}/{station}" not in page:
            return False, f"historian FAILED: the fleet page {self.url} does not list {site}/{station}"
        counts = f"historian: {t.stored} messages stored, {t.duplicate} duplicates, {t.quarantined} quarantined"
        if not self._finished(site, station, batch_id):
            return True, f"{counts}; the fleet page lists {site}/{station} (batch {batch_id} did not finish)"
        report = _get(self.url.rstrip("/") + report_path(site, station, batch_id))
        if batch_id not in page:
            return False, f"historian FAILED: the fleet page {self.url} does not list batch {batch_id}"
        if report is None or "Consumption and emissions" not in report:
            return False, f"historian FAILED: batch {batch_id}'s report does not load from the fleet page"
        return True, f"{counts}; the fleet page lists batch {batch_id} and its report"

    def _processed(self) -> int:
        t = self.consumer.totals
        return t.stored + t.duplicate + t.quarantined + t.ignored

    def _finished(self, site: str, station: str, batch_id: str) -> bool:
        with contextlib.suppress(StoreError), open_store(self.db_url, migrate=False) as store:
            return bool(store.query("SELECT 1 FROM batches WHERE site = ? AND station = ? AND batch_id = ? AND "
                                    "end_record IS NOT NULL", (site, station, batch_id)))
        return False

    def hold(self, keep: bool) -> None:
        """With ``keep`` (``--keep-page``) or on a terminal: keep the page up until Enter (or the end of input)."""
        if self.page is None or not (keep or (sys.stdin.isatty() and sys.stdout.isatty())):
            return
        print(f"  fleet page stays up at {self.url}: press Enter to stop it", flush=True)
        with contextlib.suppress(EOFError, KeyboardInterrupt, OSError):
            sys.stdin.readline()


def _get(url: str) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=30) as resp:
            return str(resp.read().decode("utf-8"))
    except (OSError, urllib.error.URLError, UnicodeDecodeError):
        return None
