"""The writer's in-memory span keys never miss a key that was added, across the tail, runs and merges, and only
near-identical keys (the same 48 high bits) are false candidates, which the ledger confirms away."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from collector import span_keys
from collector.span_keys import SpanKeys

keys = st.integers(0, 2**64 - 1)


@settings(max_examples=60, deadline=None)
@given(chunks=st.lists(st.lists(keys, max_size=40), max_size=30), probes=st.lists(keys, max_size=40))
def test_a_key_is_a_candidate_exactly_when_it_was_added(chunks: list[list[int]], probes: list[int]) -> None:
    with pytest.MonkeyPatch.context() as patch:  # tiny runs, so merges and the run cap happen
        patch.setattr(span_keys, "TAIL_KEYS", 8)
        patch.setattr(span_keys, "MAX_RUN_KEYS", 64)
        held = SpanKeys()
        for chunk in chunks:
            held.add(np.array(chunk, dtype=np.uint64))
    added = {key for chunk in chunks for key in chunk}
    kept_bits = {key >> 16 for key in added}  # runs keep 48 bits: keys differing only in the lowest 16 may match
    asked = probes + [key ^ 1 for key in probes] + sorted(added)[:40]
    found = held.candidates(np.array(asked, dtype=np.uint64)).tolist()
    assert all(found[i] for i, key in enumerate(asked) if key in added)  # never a stored key missed
    assert not any(found[i] for i, key in enumerate(asked) if key >> 16 not in kept_bits)  # nor a key far from all
    assert len(held) >= len(added)


def test_seeded_from_a_column_with_nulls() -> None:
    column = pa.array([5, None, 2**64 - 1, 7], pa.uint64())
    held = SpanKeys.from_batches([pa.RecordBatch.from_arrays([column], ["span_key"])])
    probe = np.array([5, 6, 7, 2**64 - 1, 0], dtype=np.uint64)
    assert held.candidates(probe).tolist() == [True, False, True, True, False]
    assert held.candidates(np.array([], dtype=np.uint64)).tolist() == []
