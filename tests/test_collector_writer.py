"""The write queue's group commit: requests still being decoded join the next commit, within the linger."""

from __future__ import annotations

import threading
from pathlib import Path

import duckdb

from collector.ledger import LedgerWriter, open_ledger
from collector.mapping import MappedRequest, map_spans
from collector.otlp_decode import SpanRecord
from collector.price_cache import FastPricer
from collector.writer import BatchWriter, Pending
from costline import spans as S
from costline.config import Config
from costline.pricing import Pricer

PRICER = FastPricer(Pricer(Config()))
NOW_NS = 1_764_000_000 * 1_000_000_000  # fixed span times, and the mapping's clock


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
    mapped = map_spans(spans, PRICER, now_ns=NOW_NS)
    assert mapped.attempts.num_rows == rows
    return mapped


def _two_requests(writer: BatchWriter, *, second_waits_for_first: bool) -> tuple[Pending, Pending]:
    """The first request is queued while the second is still being decoded (inside ``incoming()``).

    The second is submitted as soon as the first is queued, or, with ``second_waits_for_first``, only once the
    first is committed: the commit must not wait for it beyond the linger.
    """
    decoding, first_queued = threading.Event(), threading.Event()
    second: list[Pending] = []
    first: list[Pending] = []

    def decode_then_submit() -> None:
        with writer.incoming():
            decoding.set()
            assert first_queued.wait(10)
            if second_waits_for_first:
                first[0].done.wait(30)
            second.append(writer.submit(_request(100, 3)))

    thread = threading.Thread(target=decode_then_submit)
    thread.start()
    assert decoding.wait(10)
    first.append(writer.submit(_request(1, 2)))
    first_queued.set()
    first[0].wait(60)
    thread.join(60)
    second[0].wait(10)
    return first[0], second[0]


def test_a_request_still_decoding_joins_the_commit_within_the_linger(tmp_path: Path) -> None:
    writer, commits, con = _writer(tmp_path, linger_s=60.0)
    try:
        _two_requests(writer, second_waits_for_first=False)
        stored = con.execute("SELECT count(*) FROM attempts").fetchone()
    finally:
        writer.stop()
    assert commits == [5]  # one commit for both requests
    assert stored == (5,)


def test_without_a_linger_each_request_commits_on_its_own(tmp_path: Path) -> None:
    writer, commits, _ = _writer(tmp_path, linger_s=0.0)
    try:
        _two_requests(writer, second_waits_for_first=True)  # a commit that waited would wait for nothing
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
        # The second request is decoded only after the first is committed: the commit waited out its linger.
        _two_requests(writer, second_waits_for_first=True)
    finally:
        writer.stop()
    assert commits == [2, 3]
