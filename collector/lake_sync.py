"""The collector's lake thread: a flush every ``[lake] flush_interval_s``, and its two metrics.

Ingest never waits for the lake: while the catalog or the data path fails, spans are still stored locally, each
flush tries again (opening the lake again if needed), and ``costline_lake_lag_seconds`` grows.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterable

import duckdb
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector as PrometheusCollector

from collector.lake import TABLES, LakeFlusher
from collector.lake_connect import connect_lake, shown_catalog
from costline.config import LakeConfig

log = logging.getLogger("costline.collector.lake")
# Once an hour, data files of flushes killed before their commit that are more than an hour old are deleted; no
# flush runs for anything near an hour, so a file that old and unreferenced belongs to none.
ORPHAN_CHECK_S = 3600.0
ORPHAN_AGE_S = 3600.0


class LakeSync(PrometheusCollector):
    def __init__(
        self,
        lake: LakeConfig,
        local: Callable[[], duckdb.DuckDBPyConnection],
        *,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._config = lake
        self._local = local  # a new cursor on the collector's ledger
        self._monotonic = monotonic
        self._flusher: LakeFlusher | None = None
        self._lake_con: duckdb.DuckDBPyConnection | None = None
        self._local_con: duckdb.DuckDBPyConnection | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="costline-lake-flusher", daemon=True)
        self._started_at = monotonic()
        # The lake held every row committed locally before this moment (the start of the last flush that caught up).
        self._caught_up_at: float | None = None
        self._flushed = {table: 0 for table in TABLES}
        self._error: str | None = None
        self._lock = threading.Lock()
        self._orphans_checked_at: float | None = None

    # --- lifecycle --------------------------------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """A last flush, so that a clean stop leaves the lake caught up; then close the lake."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        self._close()

    def flush_now(self) -> bool:
        """One flush on the calling thread; whether the lake caught up."""
        started = self._monotonic()
        try:
            flusher = self._open()
            result = flusher.flush()
        except Exception as exc:
            message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            if message != self._error:
                log.error("flushing to the shared ledger failed (retrying every flush): %s", message)
            self._error = message
            self._close()  # a failed catalog connection is opened again next time
            return False
        if self._error is not None:
            log.info("the shared ledger is written again")
        self._error = None
        if self._orphans_checked_at is None or started - self._orphans_checked_at >= ORPHAN_CHECK_S:
            self._orphans_checked_at = started
            self._delete_orphans(flusher)
        with self._lock:
            for table, rows in result.rows.items():
                self._flushed[table] += rows
            self._caught_up_at = started
        return True

    def _delete_orphans(self, flusher: LakeFlusher) -> None:
        try:
            deleted = flusher.delete_orphans(ORPHAN_AGE_S)
        except duckdb.Error as exc:
            log.warning("could not delete the data files of interrupted flushes (trying again in an hour): %s", exc)
            return
        if deleted:
            log.info("deleted %d data file(s) left in the shared ledger by interrupted flushes", len(deleted))

    def _run(self) -> None:
        while not self._stop.wait(self._config.flush_interval_s):
            self.flush_now()
        self.flush_now()

    def _open(self) -> LakeFlusher:
        if self._flusher is None:
            self._lake_con = connect_lake(self._config)
            self._local_con = self._local()
            self._flusher = LakeFlusher(self._local_con, self._lake_con)
            log.info("appending stored rows to the shared ledger %s", shown_catalog(self._config.catalog))
        return self._flusher

    def _close(self) -> None:
        for con in (self._lake_con, self._local_con):
            if con is not None:
                with contextlib.suppress(duckdb.Error):
                    con.close()
        self._flusher = self._lake_con = self._local_con = None

    # --- metrics ----------------------------------------------------------------------------------------------

    def lag_seconds(self) -> float:
        """How long ago the lake last held every row this collector had stored (since the start, before the first
        flush that caught up)."""
        with self._lock:
            since = self._started_at if self._caught_up_at is None else self._caught_up_at
        return max(0.0, self._monotonic() - since)

    def describe(self) -> Iterable[GaugeMetricFamily | CounterMetricFamily]:
        return []

    def collect(self) -> Iterable[GaugeMetricFamily | CounterMetricFamily]:
        lag = GaugeMetricFamily(
            "costline_lake_lag_seconds",
            "Seconds since the shared ledger last held every row this collector had stored",
        )
        lag.add_metric([], self.lag_seconds())
        yield lag
        rows = CounterMetricFamily(
            "costline_lake_rows_flushed",
            "Rows this collector appended to the shared ledger since it started (spans already there not counted)",
            labels=["table"],
        )
        with self._lock:
            for table, count in self._flushed.items():
                rows.add_metric([table], count)
        yield rows
