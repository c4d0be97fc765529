"""The write queue's group commit: requests still being decoded join the next commit, within the linger."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import duckdb

from collector.ledger import LedgerWriter, open_ledger
from collector.mapping import MappedRequest, map_spans
from collector.otlp_decode import SpanRecord
from collector.price_cache import FastPricer
from collector.writer import BatchWriter
from costline import spans as S
from costline.config import Config
from costline.pricing import Pricer

PRICER = FastPricer(Pricer(Config()))
NOW_NS = time.time_ns()


def _writer(tmp_path: Path, linger_s: float) -> tuple[BatchWriter, list[int], duckdb.DuckDBPyConnection]:
    con = open_ledger(tmp_path / "ledger.duckdb")
    commits: list[int] = []  # rows stored by each commit
    writer = BatchWriter(
        LedgerWriter(con.cursor()),
        lambda result, rejected: commits.append(result.attempts.num_rows),
        max_queued_spans=10_000,
        linger_s=linger_s,
    )
    writer.start()
    return writer, commits, con


def _request(first_id: int, rows: int) -> MappedRequest:
    attributes = {
        S.OPERATION_NAME: "chat",
        S.PROVIDER_NAME: "ollama",
        S.REQUEST_MODEL: "qwen3:8b",
        S.ATTEMPT_TIER: "primary",
    }
    spans = [
        SpanRecord(f"{n:032x}", f"{n:016x}", "", "chat", 3, NOW_NS - 10**9, NOW_NS, 0, "", attributes)
        for n in range(first_id, first_id + rows)
    ]
    mapped = map_spans(spans, PRICER)
    assert mapped.attempts.num_rows == rows
    return mapped


def _submit_after_decoding(writer: BatchWriter, request: MappedRequest, decode_s: float) -> None:
    with writer.incoming():
        time.sleep(decode_s)  # the decode worker's time
        pending = writer.submit(request)
    pending.wait(10)


def _two_requests(writer: BatchWriter, decode_s: float) -> None:
    second = threading.Thread(target=_submit_after_decoding, args=(writer, _request(100, 3), decode_s))
    with writer.incoming():  # the second request is being decoded when the first is queued
        second.start()
        time.sleep(0.01)
    writer.submit(_request(1, 2)).wait(10)
    second.join(10)


def test_a_request_still_decoding_joins_the_commit_within_the_linger(tmp_path: Path) -> None:
    writer, commits, con = _writer(tmp_path, linger_s=1.0)
    try:
        _two_requests(writer, decode_s=0.05)
        stored = con.execute("SELECT count(*) FROM attempts").fetchone()
    finally:
        writer.stop()
    assert commits == [5]  # one commit for both requests
    assert stored == (5,)


def test_without_a_linger_each_request_commits_on_its_own(tmp_path: Path) -> None:
    writer, commits, _ = _writer(tmp_path, linger_s=0.0)
    try:
        _two_requests(writer, decode_s=0.05)
    finally:
        writer.stop()
    assert commits == [2, 3]


def test_nothing_on_its_way_means_no_wait(tmp_path: Path) -> None:
    writer, commits, _ = _writer(tmp_path, linger_s=30.0)
    try:
        writer.submit(_request(1, 2)).wait(10)  # would time out if the commit waited out the linger
    finally:
        writer.stop()
    assert commits == [2]


def test_the_linger_bounds_the_wait(tmp_path: Path) -> None:
    writer, commits, _ = _writer(tmp_path, linger_s=0.2)
    try:
        _two_requests(writer, decode_s=1.0)  # the second request takes longer than the linger
    finally:
        writer.stop()
    assert commits == [2, 3]
