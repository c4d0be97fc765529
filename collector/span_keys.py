"""The span keys a ledger table holds, in memory, so the duplicate check never scans the table.

A key is a span id's 64 bits (:func:`collector.mapping.span_key`). :meth:`SpanKeys.candidates` says which keys of a
batch the table may already hold: a miss is certain (the span is new, the common case), a hit is only a candidate,
which the ledger confirms on the exact (trace_id, span_id) — span ids may repeat across traces.

Keys live in sorted ``uint64`` runs (8 bytes a key: 80 MB for 10M stored spans), searched with a binary search per
key, so a lookup costs O(runs × log n) whatever the ledger's size. New keys wait in a small Python set (cheap to add
to and probe, ~70 bytes a key) until :data:`TAIL_KEYS` of them are sorted into a run; runs of similar size are
merged (as in a log-structured merge), but never past :data:`MAX_RUN_KEYS`, so a merge's transient copy stays small
(the memory high-water mark is the steady size plus one run). The set may hold keys of rows that are gone (a
replaced row): a hit is confirmed, so that only costs a confirmation; it never lacks a key of a stored row, since
keys are added for every row inserted.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pyarrow as pa

TAIL_KEYS = 1 << 15
MAX_RUN_KEYS = 1 << 21  # 16 MiB: runs are not merged past this
BYTES_PER_KEY = 8


class SpanKeys:
    def __init__(self) -> None:
        self._runs: list[np.ndarray] = []  # each sorted, ascending; oldest (largest) first
        self._tail: set[int] = set()

    @classmethod
    def from_batches(cls, batches: Iterable[pa.RecordBatch]) -> SpanKeys:
        """Seeded from record batches of one ``span_key`` column (NULL keys, of rows without ids, are skipped)."""
        keys = cls()
        for batch in batches:
            column = batch.column(0)
            if column.null_count:
                column = column.drop_null()
            keys.add(column.to_numpy(zero_copy_only=False))
        return keys

    def __len__(self) -> int:
        return sum(len(run) for run in self._runs) + len(self._tail)

    @property
    def nbytes(self) -> int:
        return sum(run.nbytes for run in self._runs) + BYTES_PER_KEY * len(self._tail)

    def add(self, keys: np.ndarray) -> None:
        if not len(keys):
            return
        self._tail.update(np.asarray(keys, dtype=np.uint64).tolist())
        if len(self._tail) >= TAIL_KEYS:
            self._flush_tail()

    def candidates(self, keys: np.ndarray) -> np.ndarray:
        """A bool mask over ``keys``: True where the set holds the key (to be confirmed), False where it certainly
        does not."""
        keys = np.asarray(keys, dtype=np.uint64)
        found = np.zeros(len(keys), dtype=bool)
        if not len(keys):
            return found
        for run in self._runs:
            at = np.searchsorted(run, keys)
            np.minimum(at, len(run) - 1, out=at)
            found |= run[at] == keys
        if self._tail:
            tail = self._tail
            found |= np.fromiter((key in tail for key in keys.tolist()), dtype=bool, count=len(keys))
        return found

    def _flush_tail(self) -> None:
        run = np.sort(np.fromiter(self._tail, dtype=np.uint64, count=len(self._tail)))
        self._tail = set()
        runs = self._runs
        # Merge while the previous run is no more than twice this one: about log2(n / TAIL_KEYS) runs below the
        # cap, each key copied O(log n) times in all.
        while runs and len(runs[-1]) <= 2 * len(run) and len(runs[-1]) + len(run) <= MAX_RUN_KEYS:
            run = np.sort(np.concatenate((runs.pop(), run)), kind="stable")  # a merge of two sorted runs
        runs.append(run)
