"""Where each collector's spans wait, and what becomes of spans spooled for a collector no longer configured.

One collector: the spool is ``telemetry.spool_dir`` itself, as it always was. Several: one subdirectory per collector,
named after its address, all under one ``spool_max_mb`` allowance. Files left in a directory that no configured
collector owns (the list changed, or one collector became several) are split by trace id among today's collectors at
start: they were never acknowledged, and leaving them would lose them.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlsplit

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from router.fanout import pick
from router.spool import REJECTED, SUFFIX, Spool

log = logging.getLogger(__name__)


def spool_directory(root: Path, endpoint: str, endpoints: Sequence[str]) -> Path:
    if len(endpoints) == 1:
        return root
    url = urlsplit(endpoint)
    readable = re.sub(r"[^A-Za-z0-9.-]+", "_", url.netloc) or "collector"
    # The digest tells apart two collectors behind one host and port (different paths).
    digest = hashlib.blake2b(endpoint.encode(), digest_size=4).hexdigest()
    return root / f"{readable}-{digest}"


def open_spools(root: Path, endpoints: Sequence[str], max_bytes: int) -> list[Spool]:
    """One spool per collector, in the order of ``endpoints``, sharing ``max_bytes``; stale files rerouted first."""
    spools: list[Spool] = []

    def used() -> int:
        return sum(spool.size() for spool in spools)

    for endpoint in endpoints:
        spools.append(Spool(spool_directory(root, endpoint, endpoints), max_bytes, used=used))
    reroute_stale(root, endpoints, spools)
    return spools


def reroute_stale(root: Path, endpoints: Sequence[str], spools: Sequence[Spool]) -> int:
    """Split every spooled file that no configured collector owns among ``spools``; the number of files moved."""
    owned = {spool.directory for spool in spools}
    moved = 0
    for directory in _spool_directories(root):
        if directory in owned:
            continue
        stale = Spool(directory, max_bytes=0)  # only claimed and emptied, never added to
        for path in stale.pending():
            with stale.claim(path) as payload:
                if payload is None:
                    continue  # another router is moving or sending it
                if _split(payload, endpoints, spools):
                    stale.done(path)
                    moved += 1
                else:
                    log.error("could not move spooled spans %s to their collector; kept there", path)
    if moved:
        log.info("moved %d spooled batches from collectors no longer configured to today's collectors", moved)
    return moved


def _spool_directories(root: Path) -> list[Path]:
    """The root and its subdirectories that hold spooled files, whoever they were for."""
    if not root.is_dir():
        return []
    children = [child for child in sorted(root.iterdir()) if child.is_dir() and child.name != REJECTED]
    return [root, *(child for child in children if any(child.glob(f"*{SUFFIX}")))]


def _split(payload: bytes, endpoints: Sequence[str], spools: Sequence[Spool]) -> bool:
    """Respool one export request as one request per collector; False when a part did not fit (nothing is lost:
    the caller keeps the original, and a part that did fit is stored once however often it is sent)."""
    try:
        request = ExportTraceServiceRequest.FromString(payload)
    except Exception:  # not OTLP: sent as it is to the first collector, which keeps or rejects it
        return spools[0].add(payload, 0) is not None
    parts: dict[int, ExportTraceServiceRequest] = {}
    counts: dict[int, int] = {}
    for resource_spans in request.resource_spans:
        for scope_spans in resource_spans.scope_spans:
            by_collector: dict[int, list] = {}
            for span in scope_spans.spans:
                by_collector.setdefault(pick(span.trace_id, endpoints), []).append(span)
            for index, spans in by_collector.items():
                part = parts.setdefault(index, ExportTraceServiceRequest())
                rs = part.resource_spans.add(resource=resource_spans.resource, schema_url=resource_spans.schema_url)
                rs.scope_spans.add(scope=scope_spans.scope, schema_url=scope_spans.schema_url).spans.extend(spans)
                counts[index] = counts.get(index, 0) + len(spans)
    stored = [spools[index].add(part.SerializeToString(), counts[index]) for index, part in parts.items()]
    return all(path is not None for path in stored)
