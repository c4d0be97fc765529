"""Exactly once by identity: a span is its (trace_id, span_id), whatever its start time, and distinct ids never
collide — not even B3/Datadog-style 64-bit trace ids whose root span id equals the trace id."""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from collector.ledger import LedgerWriter, open_ledger
from collector.mapping import map_spans
from collector.otlp_decode import SpanRecord
from collector.price_cache import FastPricer
from costline import spans as S
from costline.config import Config
from costline.pricing import Pricer

PRICER = FastPricer(Pricer(Config()))
NOW_NS = 1_764_000_000 * 10**9  # fixed: the mapping takes its 'now' from the test
DAY_NS = 86_400 * 10**9

ids = st.tuples(st.integers(1, 2**128 - 1), st.integers(1, 2**64 - 1))
b3 = st.integers(1, 2**64 - 1).map(lambda n: (n, n))  # 64-bit trace id, root span id equal to it
starts = st.integers(NOW_NS - 30 * DAY_NS, NOW_NS)


def _span(trace: int, span: int, start: int) -> SpanRecord:
    attributes = {S.PROVIDER_NAME: "ollama", S.REQUEST_MODEL: "qwen3:8b", S.USAGE_INPUT_TOKENS: 10}
    return SpanRecord(f"{trace:032x}", f"{span:016x}", "", "chat", 3, start, start + 10**9, 0, "", attributes)


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(
    first=st.lists(st.tuples(st.one_of(ids, b3), starts), min_size=1, max_size=30),
    again=st.lists(st.tuples(st.integers(0, 29), starts), max_size=30),
)
def test_each_span_is_stored_once_whatever_its_start_time(
    first: list[tuple[tuple[int, int], int]], again: list[tuple[int, int]]
) -> None:
    resent = [(first[i % len(first)][0], start) for i, start in again]  # the same ids, any other start time
    resent += [((t ^ 1 << 64, s), start) for (t, s), start in first[:3]]  # the same span ids in other traces
    distinct = {identity for identity, _ in first + resent}
    with tempfile.TemporaryDirectory() as directory:
        con = open_ledger(Path(directory) / "ledger.duckdb")
        try:
            writer = LedgerWriter(con)
            for n, batch in enumerate((first, resent, first)):
                if n == 2:
                    writer = LedgerWriter(con)  # a restarted collector seeds its keys from the ledger
                mapped = map_spans([_span(t, s, start) for (t, s), start in batch], PRICER, now_ns=NOW_NS)
                assert not mapped.rejected
                writer.write([mapped.attempts], [mapped.tasks])
            stored = con.execute("SELECT trace_id, span_id FROM attempts").fetchall()
        finally:
            con.close()
    assert sorted(stored) == sorted((f"{t:032x}", f"{s:016x}") for t, s in distinct)


def test_span_ids_that_differ_only_in_their_lowest_bits_are_distinct_spans(tmp_path: Path) -> None:
    """The in-memory keys keep 48 bits of a span id; a candidate they give is confirmed on the exact ids."""
    con = open_ledger(tmp_path / "ledger.duckdb")
    try:
        writer = LedgerWriter(con)
        first = [_span(7, 0xABCDEF0123450001 + n, NOW_NS - DAY_NS) for n in range(1 << 15)]  # past the tail: a run
        near = _span(7, 0xABCDEF0123450000, NOW_NS - DAY_NS)  # the same 48 high bits as all of the above
        near_again = _span(7, 0xABCDEF0123450000, NOW_NS)
        results = []
        for batch in (first, [near], [near_again]):
            mapped = map_spans(batch, PRICER, now_ns=NOW_NS)
            results.append(writer.write([mapped.attempts], [mapped.tasks]))
        stored = con.execute("SELECT count(*) FROM attempts").fetchone()
    finally:
        con.close()
    assert stored == ((1 << 15) + 1,)
    assert [r.duplicates for r in results] == [0, 0, 1]
