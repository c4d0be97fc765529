"""Shared-ledger tests' helpers: priced Claude attempt spans with known ids, lake catalogs, reading the lake."""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path

import duckdb
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span

from collector.lake_connect import connect_lake
from costline import spans as S
from costline.config import LakeConfig

CLAUDE_MODEL = "claude-sonnet-4-5"
START_NS = 1_767_225_600 * 1_000_000_000  # 2026-01-01 00:00 UTC: a fixed clock, whatever today is


def _kv(key: str, value: str | int) -> KeyValue:
    if isinstance(value, int):
        return KeyValue(key=key, value=AnyValue(int_value=value))
    return KeyValue(key=key, value=AnyValue(string_value=value))


def attempt_spans(count: int, seed: int = 7) -> list[Span]:
    """``count`` Claude attempt spans, each with its own trace, ids and token counts (so each has its own price)."""
    rng = random.Random(seed)
    spans = []
    for index in range(count):
        begin = START_NS + index * 1_000_000_000
        spans.append(
            Span(
                trace_id=rng.randbytes(15) + b"\x01",
                span_id=rng.randbytes(7) + b"\x01",
                name=S.attempt_span_name(CLAUDE_MODEL),
                kind=Span.SPAN_KIND_CLIENT,
                start_time_unix_nano=begin,
                end_time_unix_nano=begin + 500_000_000,
                attributes=[
                    _kv(S.OPERATION_NAME, S.OPERATION_CHAT),
                    _kv(S.PROVIDER_NAME, S.PROVIDER_ANTHROPIC),
                    _kv(S.REQUEST_MODEL, CLAUDE_MODEL),
                    _kv(S.USAGE_INPUT_TOKENS, 1000 + index),
                    _kv(S.USAGE_OUTPUT_TOKENS, 200 + 3 * index),
                ],
            )
        )
    return spans


def body(spans: Sequence[Span]) -> bytes:
    request = ExportTraceServiceRequest(
        resource_spans=[
            ResourceSpans(
                resource={"attributes": [_kv(S.SERVICE_NAME, "lake-suite")]},
                scope_spans=[ScopeSpans(spans=list(spans))],
            )
        ]
    )
    return request.SerializeToString()


def chunks(spans: Sequence[Span], size: int = 25) -> Iterator[Sequence[Span]]:
    for start in range(0, len(spans), size):
        yield spans[start : start + size]


def lake_config(catalog: str, data_path: Path, **extra: float) -> LakeConfig:
    return LakeConfig(catalog=catalog, data_path=str(data_path), **extra)


@contextmanager
def lake_reader(lake: LakeConfig) -> Iterator[duckdb.DuckDBPyConnection]:
    con = connect_lake(lake, read_only=True)
    try:
        yield con
    finally:
        con.close()


def lake_totals(lake: LakeConfig) -> tuple[int, int, Decimal]:
    """Rows, distinct span ids, and dollars of the lake's attempts table."""
    with lake_reader(lake) as con:
        rows, distinct, dollars = con.execute(
            "SELECT count(*), count(DISTINCT (trace_id, span_id)), sum(cost_usd) FROM lake.attempts"
        ).fetchone() or (0, 0, None)
    return rows, distinct, dollars


def distinct_dollars(*ledgers: Path) -> tuple[Decimal, Decimal]:
    """The dollars of every distinct span over the local ledgers, and their naive sum (duplicates counted twice)."""
    con = duckdb.connect()
    try:
        union = " UNION ALL ".join(
            f"SELECT trace_id, span_id, cost_usd FROM read_ledger_{i}.attempts" for i in range(len(ledgers))
        )
        for i, ledger in enumerate(ledgers):
            con.execute(f"ATTACH '{ledger}' AS read_ledger_{i} (READ_ONLY)")
        distinct, naive = con.execute(
            f"SELECT (SELECT sum(cost_usd) FROM (SELECT DISTINCT * FROM ({union}))), sum(cost_usd) FROM ({union})"
        ).fetchone() or (None, None)
    finally:
        con.close()
    return distinct, naive
