"""The shared ledger (DuckLake, a SQLite file catalog): flush throughput, the lag at one collector's ingest rate, and
`costline report --lake` over a large lake.

1. Flush throughput: a generated ledger of ``--flush-rows`` rows is flushed into an empty lake (``LakeFlusher``,
   the collector's own code: positions, duplicate probe, one transaction per 100k rows), then as many new rows again
   with the first ones already in the lake (the probe now reads lake files).
2. Lag: at ``--ingest-rate`` spans/s (one collector's target, 50k/s) a flush interval of 10 s leaves
   ``rate × 10`` rows to flush; the lag peaks at the interval plus that flush's duration, measured here.
3. ``costline report --lake --since 30d --by model`` as a subprocess over a lake of ``--report-rows`` rows (copied
   from a generated ledger in transactions of 100k rows, one data file each, as the collector's flushes leave them).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import ledger_gen
from reports import report_subprocess

from collector.lake import FLUSH_ROWS, LakeFlusher
from collector.lake_connect import connect_lake
from collector.ledger import open_ledger
from costline.config import LakeConfig

FLUSH_INTERVAL_S = 10.0


def _flush(ledger: Path, lake: LakeConfig) -> tuple[float, int]:
    local = open_ledger(ledger)
    con = connect_lake(lake)
    try:
        flusher = LakeFlusher(local.cursor(), con)
        started = time.perf_counter()
        result = flusher.flush()
        return time.perf_counter() - started, sum(result.rows.values())
    finally:
        con.close()
        local.close()


def flush_throughput(rows: int, ingest_rate: int, workdir: Path, say) -> dict[str, float]:
    lake = LakeConfig(catalog=str(workdir / "flush.sqlite"), data_path=str(workdir / "flush-data"))
    now = datetime(2026, 1, 31, tzinfo=UTC)
    say(f"flush: generating two ledgers of {rows:,} rows …")
    first, second = workdir / "first.duckdb", workdir / "second.duckdb"
    ledger_gen.make_ledger(first, rows, start=now - timedelta(days=30), end=now, seed=1, tasks=False)
    ledger_gen.make_ledger(second, rows, start=now - timedelta(days=30), end=now, seed=2, tasks=False)
    say("flush: into an empty lake …")
    empty_s, copied = _flush(first, lake)
    say("flush: as many new rows into the lake that holds the first ones …")
    full_s, copied_2 = _flush(second, lake)
    interval_rows = int(ingest_rate * FLUSH_INTERVAL_S)
    per_row_s = full_s / max(copied_2, 1)
    return {
        "rows": rows,
        "copied_first": copied,
        "copied_second": copied_2,
        "empty_lake_s": empty_s,
        "empty_lake_rows_per_s": copied / empty_s,
        "second_flush_s": full_s,
        "second_flush_rows_per_s": copied_2 / full_s,
        "ingest_rate": ingest_rate,
        "interval_rows": interval_rows,
        "interval_flush_s": per_row_s * interval_rows,
        "peak_lag_s": FLUSH_INTERVAL_S + per_row_s * interval_rows,
    }


def report_over_lake(rows: int, repeats: int, workdir: Path, say) -> dict[str, object]:
    lake = LakeConfig(catalog=str(workdir / "report.sqlite"), data_path=str(workdir / "report-data"))
    ledger = workdir / "report.duckdb"
    now = datetime.now(UTC)
    say(f"report: generating {rows:,} attempts over 90 days …")
    ledger_gen.make_ledger(ledger, rows, start=now - timedelta(days=90), end=now)
    say("report: copying them into the lake …")
    local = open_ledger(ledger)
    con = connect_lake(lake)
    try:
        flusher = LakeFlusher(local.cursor(), con)
        for table in ("attempts", "tasks"):
            flusher.migrate(table)  # the lake table as a flush creates it
            columns = ", ".join(r[0] for r in local.execute(f"DESCRIBE {table}").fetchall())
            # One transaction (one data file) per FLUSH_ROWS rows in ledger order (DuckDB keeps insertion
            # order), as the collector's flushes leave them, rather than one bulk file.
            reader = local.execute(f"SELECT {columns} FROM {table}").to_arrow_reader(FLUSH_ROWS)
            for batch in reader:
                con.register("rows", batch)
                con.execute(f"INSERT INTO lake.{table} ({columns}) SELECT {columns} FROM rows")
                con.unregister("rows")
        lake_rows = con.execute("SELECT count(*) FROM lake.attempts").fetchone()[0]
    finally:
        con.close()
        local.close()
    config = workdir / "lake.toml"
    config.write_text(
        f"[collector]\nledger = {str(ledger)!r}\n[lake]\ncatalog = {lake.catalog!r}\ndata_path = {lake.data_path!r}\n",
        encoding="utf-8",
    )
    say("report: costline report --lake --since 30d --by model (subprocess) …")
    times, _ = report_subprocess(config, repeats, "--lake")
    return {"lake_rows": lake_rows, "report_s": times, "report_median_s": statistics.median(times)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flush-rows", type=int, default=1_000_000, help="rows per flushed ledger (default 1M)")
    parser.add_argument("--ingest-rate", type=int, default=50_000, help="one collector's spans/s (default 50000)")
    parser.add_argument("--report-rows", type=int, default=2_000_000, help="lake rows for the report (default 2M)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    def say(text: str) -> None:
        if not args.json:
            print(text, flush=True)

    with tempfile.TemporaryDirectory(prefix="costline-lake-bench-") as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        flush = flush_throughput(args.flush_rows, args.ingest_rate, workdir, say)
        report = report_over_lake(args.report_rows, args.repeats, workdir, say)
    if args.json:
        print(json.dumps({"flush": flush, "report": report}))
        return
    print(
        f"flush into an empty lake: {flush['rows']:,} rows in {flush['empty_lake_s']:.2f} s "
        f"({flush['empty_lake_rows_per_s']:,.0f} rows/s); {flush['rows']:,} more with those in the lake: "
        f"{flush['second_flush_s']:.2f} s ({flush['second_flush_rows_per_s']:,.0f} rows/s)"
    )
    print(
        f"lag at {flush['ingest_rate']:,} spans/s: {flush['interval_rows']:,} rows per {FLUSH_INTERVAL_S:g} s interval "
        f"flush in {flush['interval_flush_s']:.2f} s; peak lag {flush['peak_lag_s']:.1f} s"
    )
    print(
        f"costline report --lake --since 30d --by model over {report['lake_rows']:,} lake rows: "
        f"{report['report_median_s']:.3f} s wall (median of {[round(t, 3) for t in report['report_s']]}); target < 2 s"
    )


if __name__ == "__main__":
    main()
