"""What the mapping hands to the ledger must be accountable, whatever came in."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from collector.mapping import MAX_NAME_CHARS, MAX_TOKENS, MappedRequest

HEX32, HEX16 = re.compile("[0-9a-f]{32}"), re.compile("[0-9a-f]{16}")
EPOCH_2000 = datetime(2000, 1, 1, tzinfo=UTC)
UNFORESEEN = "span could not be read"
TOKENS = ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens")


def assert_rows_sound(mapped: MappedRequest, now_ns: int) -> None:
    """What the mapping hands to the ledger is accountable: ids, times, tokens, names, costs all sane."""
    # The mapping turns an exception it did not foresee into this rejection: for the fuzzer, that is a crash.
    unforeseen = [reason for reason in mapped.rejected if reason.startswith(UNFORESEEN)]
    assert not unforeseen, unforeseen
    now = datetime.fromtimestamp(now_ns / 1e9, UTC)
    for row in mapped.attempts.to_pylist():
        assert HEX32.fullmatch(row["trace_id"]) and row["trace_id"] != "0" * 32, row
        assert HEX16.fullmatch(row["span_id"]) and row["span_id"] != "0" * 16, row
        assert row["parent_span_id"] is None or HEX16.fullmatch(row["parent_span_id"]), row
        assert EPOCH_2000 <= row["start_time"] <= now + timedelta(days=1), row
        assert row["end_time"] >= row["start_time"] and row["duration_s"] >= 0, row
        counts = [row[k] for k in TOKENS]
        assert all(c is None or 0 <= c <= MAX_TOKENS for c in counts), row
        assert (row["cache_read_tokens"] or 0) + (row["cache_write_tokens"] or 0) <= (row["input_tokens"] or 0), row
        assert row["provider"] and len(row["provider"]) <= MAX_NAME_CHARS, row
        model = row["request_model"] or row["response_model"]
        assert model is None or 0 < len(model) <= MAX_NAME_CHARS, row  # a span naming no model is stored unpriced
        assert model is not None or row["cost_usd"] is None, row
        assert row["outcome"] in ("success", "error")
        for money in ("cost_usd", "counterfactual_usd", "reported_cost_usd"):
            assert row[money] is None or row[money] >= 0, row
    for row in mapped.tasks.to_pylist():
        assert HEX32.fullmatch(row["trace_id"]) and HEX16.fullmatch(row["span_id"]), row
        assert row["task_id"], row
        assert EPOCH_2000 <= row["start_time"] <= now + timedelta(days=1) and row["end_time"] >= row["start_time"]
