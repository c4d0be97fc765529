"""`Collector`: the ledger, the write queue, the metrics and the two HTTP servers, started and stopped together."""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType

import duckdb

from collector.decode_pool import Decoder, warm_up
from collector.http import MAX_IN_FLIGHT_BYTES, InFlightBytes, MetricsHandler, OtlpHandler, make_server
from collector.lake_sync import LakeSync
from collector.ledger import LedgerWriter, WriteResult, open_ledger
from collector.metrics import LedgerMetrics, make_registry
from collector.price_cache import FastPricer
from collector.query import Queries
from collector.writer import BatchWriter
from costline.config import Config
from costline.net import is_loopback
from costline.pricing import Pricer

log = logging.getLogger("costline.collector")

UNPRICED_LOG_INTERVAL_S = 600.0


class Collector:
    """Opens the ledger at construction (raising :class:`collector.ledger.LedgerError` if it is locked or
    corrupt); :meth:`start` binds the OTLP and metrics servers; :meth:`stop` stops accepting, commits what is
    queued, and closes the ledger."""

    def __init__(self, config: Config) -> None:
        self.config = config
        col = config.collector
        self._con = open_ledger(col.ledger, memory_limit=f"{col.ledger_memory_mb}MB")
        try:
            self._token = config.ingest_token
            self._con_lock = threading.Lock()
            self.metrics = LedgerMetrics(config, self._cursor)
            self.metrics.seed(self._con)
            self.registry = make_registry(self.metrics)
            # The shared ledger, when configured: this collector's committed rows are appended to it.
            self.lake = LakeSync(config.lake, self._cursor) if config.lake.enabled else None
            if self.lake is not None:
                self.registry.register(self.lake)
            self._pricer = FastPricer(Pricer(config))
            self.decoder = Decoder(config, self._pricer, col.decode_workers)
            self.metrics.warm_up(warm_up(config, self._pricer).attempts)
            self._writer_con = self._con.cursor()
            self.queries = Queries(
                self._cursor,
                timeout_s=col.query_timeout_s,
                max_result_bytes=col.max_query_result_mb << 20,
            )
            self._writer = BatchWriter(
                LedgerWriter(self._writer_con),
                self._on_commit,
                max_queued_spans=col.max_queued_spans,
                linger_s=col.commit_linger_ms / 1000,
                reopen=self._reopen,
                probe=self._probe,
            )
        except BaseException:
            self._con.close()
            raise
        self._servers: list[ThreadingHTTPServer] = []
        self._threads: list[threading.Thread] = []
        self._unpriced_logged: dict[tuple[str, str], float] = {}
        self._unpriced_many_logged = -math.inf
        self._started = False
        self._stopped = False

    # --- lifecycle --------------------------------------------------------------------------------------------

    def start(self) -> Collector:
        col = self.config.collector
        if not is_loopback(col.host) and self._token is None:
            log.warning(
                "collector listens on %s, beyond loopback, without COSTLINE_INGEST_TOKEN: anyone who can reach it "
                "can write spans into the ledger; set COSTLINE_INGEST_TOKEN to require a bearer token",
                col.host,
            )
        self._writer.start()
        if self.lake is not None:
            self.lake.start()
        otlp = _listen(col.host, col.otlp_port, OtlpHandler, "collector.otlp_port")
        try:
            metrics = _listen(col.host, col.metrics_port, MetricsHandler, "collector.metrics_port")
        except OSError:
            otlp.server_close()
            raise
        for server in (otlp, metrics):
            server.not_ready = self.not_ready  # type: ignore[attr-defined]
            server.token = self._token  # type: ignore[attr-defined]
            server.read_timeout_s = col.read_timeout_s  # type: ignore[attr-defined]
        otlp.decoder = self.decoder  # type: ignore[attr-defined]
        otlp.writer = self._writer  # type: ignore[attr-defined]
        otlp.max_bytes = col.max_request_bytes  # type: ignore[attr-defined]
        self._in_flight = InFlightBytes(max(MAX_IN_FLIGHT_BYTES, col.max_request_bytes))
        otlp.in_flight = self._in_flight  # type: ignore[attr-defined]
        metrics.registry = self.registry  # type: ignore[attr-defined]
        metrics.queries = self.queries  # type: ignore[attr-defined]
        self._servers = [otlp, metrics]
        for server, name in ((otlp, "otlp"), (metrics, "metrics")):
            thread = threading.Thread(
                target=server.serve_forever, kwargs={"poll_interval": 0.05}, name=f"costline-{name}-http", daemon=True
            )
            thread.start()
            self._threads.append(thread)
        self._started = True
        log.info("OTLP receiver on %s/v1/traces, metrics on %s/metrics", self.otlp_url, self.metrics_url)
        return self

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        for server in self._servers:
            server.shutdown()
            server.server_close()
        if not self.queries.close():
            log.error("a query did not end after its interrupt; closing the ledger anyway")
        self._writer.stop()
        if self.lake is not None:
            self.lake.stop()  # after the writer: its last commits reach the lake too
        self.decoder.close()
        self._writer_con.close()
        self._con.close()

    def __enter__(self) -> Collector:
        if not self._started:
            try:
                self.start()
            except BaseException:
                self.stop()  # a port in use must not leave the ledger locked
                raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def ready(self) -> bool:
        return self.not_ready() is None

    def not_ready(self) -> str | None:
        """Why requests would be refused now, or None when the collector takes them."""
        if not self._started:
            return "starting"
        if self._stopped:
            return "stopping"
        if self.decoder.warming:
            return "decoder processes are starting"
        return self._writer.trouble()

    @property
    def otlp_in_flight_bytes(self) -> int:
        """Request bytes received and not yet answered."""
        return self._in_flight.held

    # --- addresses --------------------------------------------------------------------------------------------

    @property
    def otlp_url(self) -> str:
        return self._url(0)

    @property
    def metrics_url(self) -> str:
        return self._url(1)

    def _url(self, index: int) -> str:
        if not self._servers:
            raise RuntimeError("the collector is not started")
        host, port = self._servers[index].server_address[:2]
        shown = f"[{host}]" if ":" in str(host) else host
        return f"http://{shown}:{port}"

    # --- commits ----------------------------------------------------------------------------------------------

    def _on_commit(self, result: WriteResult, rejected: int) -> None:
        unpriced = self.metrics.apply(result, rejected)
        now = time.monotonic()
        many = 0  # attempts of models beyond the ones named in the log: one line for all of them
        for key, count in unpriced.items():
            last = self._unpriced_logged.get(key)
            if last is None and len(self._unpriced_logged) >= self.config.collector.max_series_per_metric:
                many += count
            elif last is None or now - last >= UNPRICED_LOG_INTERVAL_S:
                self._unpriced_logged[key] = now
                provider, model = key
                log.warning(
                    "%d attempt(s) of provider=%s model=%s could not be priced and were stored with a NULL cost; "
                    'add [prices."%s"] to the config to price them',
                    count,
                    provider,
                    model,
                    model,
                )
        if many and now - self._unpriced_many_logged >= UNPRICED_LOG_INTERVAL_S:
            self._unpriced_many_logged = now
            log.warning(
                "%d more attempt(s) could not be priced, of models beyond the %d already named in this log; "
                "`costline report --by model` lists them",
                many,
                len(self._unpriced_logged),
            )

    @property
    def connection(self) -> duckdb.DuckDBPyConnection:
        """A new cursor on the ledger (read it while the collector runs; close it when done)."""
        return self._cursor()

    def _cursor(self) -> duckdb.DuckDBPyConnection:
        with self._con_lock:
            return self._con.cursor()

    # --- a ledger that failed ---------------------------------------------------------------------------------

    def _probe(self) -> None:
        self._writer_con.execute("SELECT 1").fetchall()

    def _reopen(self) -> LedgerWriter:
        """Close the invalidated ledger and open it again (on the writer thread); raises while it cannot be."""
        col = self.config.collector
        with self._con_lock:
            for con in (self._writer_con, self._con):
                with contextlib.suppress(duckdb.Error):
                    con.close()
            self._con = open_ledger(col.ledger, memory_limit=f"{col.ledger_memory_mb}MB")
            self._writer_con = self._con.cursor()
            try:
                self._probe()
            except duckdb.Error:
                self._writer_con.close()
                self._con.close()
                raise
        return LedgerWriter(self._writer_con)


def _listen(host: str, port: int, handler: type[BaseHTTPRequestHandler], key: str) -> ThreadingHTTPServer:
    """The server, or an OSError that names the port and the key that set it."""
    try:
        return make_server(host, port, handler)
    except OSError as exc:
        raise OSError(exc.errno, f"{exc.strerror} (port {port}, {key})") from None
