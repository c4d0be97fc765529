"""The span keys a ledger table holds, in memory, so the duplicate check never scans the table.

A key is a span id's 64 bits (:func:`collector.mapping.span_key`). :meth:`SpanKeys.candidates` says which keys of a
batch the table may already hold: a miss is certain (the span is new, the common case), a hit is only a candidate,
which the ledger confirms on the exact (trace_id, span_id) — span ids may repeat across traces.

Memory is about 4 bytes a key (40 MB for 10M stored spans). Keys live in sorted runs that keep 48 of their 64 bits:
the top 16 bits are implicit in a run's bucket offsets (2^16 + 1 of them, 256 KiB a run) and the next 32 are stored
as ``uint32``. Two distinct keys share those 48 bits with odds of one in 2^48 per stored key, and such a false
candidate only costs a confirmation. A lookup is a vectorised binary search within each probe's bucket, so it costs
O(runs × log(n / 2^16)) whatever the ledger's size. New keys wait in a small Python set (cheap to add to and probe,
~70 bytes a key) until :data:`TAIL_KEYS` of them are sorted into a run; runs of similar size are merged (as in a
log-structured merge), never past :data:`MAX_RUN_KEYS`, so a merge's transient copy (8 bytes a key) stays small.
The set may hold keys of rows that are gone: a hit is confirmed, so that only costs a confirmation. It never lacks
the key of a stored row, since the writer adds the keys of every row it inserts.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

TAIL_KEYS = 1 << 15
MAX_RUN_KEYS = 1 << 21  # a merge copies at most this many keys at 8 bytes each (16 MiB)
BUCKET_BITS = 16
_BUCKETS = 1 << BUCKET_BITS
_LOW_SHIFT = np.uint64(16)  # the 16 lowest bits are dropped: 48 bits are kept
_BUCKET_SHIFT = np.uint64(32)  # of the 48 kept bits, the top 16 pick the bucket
_LOW_MASK = np.uint64(0xFFFF_FFFF)


@dataclass(frozen=True, slots=True)
class _Run:
    offsets: np.ndarray  # uint32, _BUCKETS + 1: bucket b's entries are low[offsets[b]:offsets[b + 1]]
    low: np.ndarray  # uint32, ascending within each bucket

    @classmethod
    def from_kept(cls, kept: np.ndarray) -> _Run:
        """From ascending 48-bit values (a key shifted right by 16); no temporary as large as ``kept``."""
        starts = np.arange(_BUCKETS + 1, dtype=np.uint64) << _BUCKET_SHIFT
        offsets = np.searchsorted(kept, starts).astype(np.uint32)
        return cls(offsets, kept.astype(np.uint32))  # the cast keeps the low 32 bits

    def kept(self) -> np.ndarray:
        kept = np.repeat(np.arange(_BUCKETS, dtype=np.uint64), np.diff(self.offsets))
        kept <<= _BUCKET_SHIFT
        kept |= self.low
        return kept

    def __len__(self) -> int:
        return len(self.low)

    @property
    def nbytes(self) -> int:
        return self.offsets.nbytes + self.low.nbytes

    def contains(self, buckets: np.ndarray, low: np.ndarray) -> np.ndarray:
        """Binary search of every probe within its bucket, all probes at once."""
        lo = self.offsets[buckets].astype(np.int64)
        end = self.offsets[buckets + 1].astype(np.int64)
        hi = end.copy()
        last = len(self.low) - 1
        while True:
            active = lo < hi
            if not active.any():
                break
            mid = (lo + hi) >> 1
            below = self.low[np.minimum(mid, last)] < low
            lo = np.where(active & below, mid + 1, lo)
            hi = np.where(active & ~below, mid, hi)
        return (lo < end) & (self.low[np.minimum(lo, last)] == low)


class SpanKeys:
    def __init__(self) -> None:
        self._runs: list[_Run] = []  # oldest (largest) first
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
        """Bytes held by the runs (the tail is a Python set of at most TAIL_KEYS ints besides)."""
        return sum(run.nbytes for run in self._runs)

    def add(self, keys: np.ndarray) -> None:
        keys = np.asarray(keys, dtype=np.uint64)
        if len(keys) >= TAIL_KEYS:  # a seed's chunk: straight into a run, never through the (costly) set
            kept = keys >> _LOW_SHIFT
            kept.sort()
            self._push(kept)
            return
        self._tail.update(keys.tolist())
        if len(self._tail) >= TAIL_KEYS:
            self._push(np.sort(np.fromiter(self._tail, dtype=np.uint64, count=len(self._tail)) >> _LOW_SHIFT))
            self._tail = set()

    def candidates(self, keys: np.ndarray) -> np.ndarray:
        """A bool mask over ``keys``: True where the set may hold the key (to be confirmed), False where it
        certainly does not."""
        keys = np.asarray(keys, dtype=np.uint64)
        found = np.zeros(len(keys), dtype=bool)
        if not len(keys):
            return found
        if self._runs:
            kept = keys >> _LOW_SHIFT
            buckets = (kept >> _BUCKET_SHIFT).astype(np.intp)
            low = (kept & _LOW_MASK).astype(np.uint32)
            for run in self._runs:
                found |= run.contains(buckets, low)
        if self._tail:
            found |= np.fromiter(map(self._tail.__contains__, keys.tolist()), dtype=bool, count=len(keys))
        return found

    def _push(self, kept: np.ndarray) -> None:
        """Add a run of ascending 48-bit values, merging it into the runs before it while they are of similar size."""
        runs = self._runs
        # Merge while the previous run is no more than twice this one: about log2(n / TAIL_KEYS) runs below the
        # cap, each key copied O(log n) times in all.
        while runs and len(runs[-1]) <= 2 * len(kept) and len(runs[-1]) + len(kept) <= MAX_RUN_KEYS:
            kept = np.concatenate((runs.pop().kept(), kept))
            kept.sort(kind="stable")  # a merge of two sorted runs
        runs.append(_Run.from_kept(kept))
