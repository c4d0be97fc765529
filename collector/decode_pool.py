"""Decoding and mapping off the main process.

Turning OTLP into ledger rows is pure Python work (~11 µs a span) and would hold the GIL that the HTTP threads and
the ledger writer need. Large requests therefore go to a pool of worker processes (``collector.decode_workers``),
which return the rows as Arrow tables; the main process keeps only HTTP, the write queue and DuckDB. Small requests
(and every request while the pool is still starting) are decoded in the request thread, where the pool's round
trip would cost more than it saves. A worker that dies takes only its request with it (answered 503, retried by
the sender), and the pool is started again.
"""

from __future__ import annotations

import ctypes
import fcntl
import logging
import multiprocessing
import os
import select
import signal
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager, suppress

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span

from collector.mapping import MappedRequest, map_spans
from collector.otlp_decode import decode_json
from collector.price_cache import FastPricer
from collector.protobuf_rows import map_protobuf
from costline import spans as S
from costline.config import Config
from costline.pricing import Pricer

log = logging.getLogger(__name__)

POOL_MIN_BYTES = 32 * 1024  # below this, a request is decoded in place

_worker_pricer: FastPricer | None = None


class DecoderUnavailable(Exception):
    """A worker process died while decoding; the request was not read and can be retried."""


def decode_and_map(body: bytes, is_json: bool, pricer: FastPricer) -> MappedRequest:
    """Raises :class:`collector.otlp_decode.DecodeError` for a malformed payload."""
    if is_json:
        return map_spans(decode_json(body), pricer)
    return map_protobuf(body, pricer)


def warm_up(config: Config, pricer: FastPricer) -> MappedRequest:
    """Map one attempt on each configured model, now, and return the rows (nothing is stored).

    The first request would otherwise pay for the price catalogue's import and this hour's rates (~1 s of CPU).
    """
    now_ns = time.time_ns()
    models = [("ollama", model) for model in config.router.models] + [("anthropic", config.escalation.model)]
    spans = [
        Span(
            trace_id=(n + 1).to_bytes(16, "big"),
            span_id=(n + 1).to_bytes(8, "big"),
            parent_span_id=(n + 1).to_bytes(8, "little"),
            name=f"chat {model}",
            start_time_unix_nano=now_ns - 1_000_000_000,
            end_time_unix_nano=now_ns,
            attributes=[
                KeyValue(key=key, value=AnyValue(**{"int_value" if isinstance(v, int) else "string_value": v}))
                for key, v in (
                    (S.OPERATION_NAME, "chat"),
                    (S.PROVIDER_NAME, provider),
                    (S.REQUEST_MODEL, model),
                    (S.ATTEMPT_TIER, "primary" if provider == "ollama" else "escalation"),
                    (S.USAGE_INPUT_TOKENS, 1000),
                    (S.USAGE_OUTPUT_TOKENS, 100),
                )
            ],
        )
        for n, (provider, model) in enumerate(models)
    ]
    request = ExportTraceServiceRequest(resource_spans=[ResourceSpans(scope_spans=[ScopeSpans(spans=spans)])])
    return decode_and_map(request.SerializeToString(), False, pricer)


PR_SET_PDEATHSIG = 1


def die_with(parent: int) -> None:
    """End this process as soon as ``parent`` ends, however it ends (``kill -9`` included).

    A thread waits on a pidfd of the parent (Linux >= 5.3), which becomes readable when the parent exits. Where
    pidfds are missing, the kernel's parent-death signal stands in for it (it follows the parent *thread*, which
    is why it is only the fallback). Workers that outlive the collector would also keep multiprocessing's resource
    tracker alive, since it exits once every holder of its pipe has.
    """
    try:
        watched = os.pidfd_open(parent)
    except ProcessLookupError:  # already gone
        os._exit(1)
    except (AttributeError, OSError):
        _parent_death_signal()
        if os.getppid() != parent:
            os._exit(1)
        return

    def watch() -> None:
        select.select([watched], [], [])
        os._exit(1)

    threading.Thread(target=watch, name="costline-parent-watch", daemon=True).start()


def _parent_death_signal() -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the worker ends when the collector shuts the pool down
        log.debug("no way to follow the collector's death on this platform")


def _init_worker(config: Config, parent: int) -> None:
    global _worker_pricer
    die_with(parent)
    _worker_pricer = FastPricer(Pricer(config))
    warm_up(config, _worker_pricer)


def _work(body: bytes, is_json: bool) -> MappedRequest:
    assert _worker_pricer is not None
    return decode_and_map(body, is_json, _worker_pricer)


def _ping() -> bool:
    return True


PIPE_BYTES = 1 << 20


def _widen_pipes(pool: ProcessPoolExecutor) -> None:
    """Let a whole request body and its rows fit in the pool's pipes (Linux's default is 64 KiB).

    With small pipes, a worker that has decoded a request blocks writing the rows until the collector's result
    thread, which needs the GIL, drains them; that stall left the worker idle ~25 % of the time (1.7 ms median gap
    between requests, bench/README.md). The pipes belong to the executor, hence the private attributes; where they
    are missing the pool still works, only slower.
    """
    set_size = getattr(fcntl, "F_SETPIPE_SZ", None)
    try:
        ends = [pool._call_queue._writer, pool._result_queue._reader]  # type: ignore[attr-defined]
    except AttributeError:
        log.debug("decoder pool pipes not found; left at the system's size")
        return
    if set_size is None:
        return
    for end in ends:
        try:
            fcntl.fcntl(end.fileno(), set_size, PIPE_BYTES)
        except OSError as exc:  # above /proc/sys/fs/pipe-max-size for an unprivileged user
            log.debug("decoder pool pipe left at the system's size: %s", exc)


@contextmanager
def _without_main_module() -> Iterator[None]:
    """Spawned workers re-import the parent's ``__main__`` (for ``costline serve``: the whole CLI, with the model
    clients), which would cost each worker tens of MB. Workers need only this module, so hide the script."""
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    spec = getattr(main, "__spec__", None)
    if main is None or (path is None and spec is None):
        yield
        return
    with suppress(AttributeError):
        del main.__file__
    main.__spec__ = None
    try:
        yield
    finally:
        if path is not None:
            main.__file__ = path
        main.__spec__ = spec


class Decoder:
    def __init__(self, config: Config, pricer: FastPricer, workers: int) -> None:
        self._config = config
        self._pricer = pricer
        self._workers = workers
        self.pool_min_bytes = POOL_MIN_BYTES
        self._pool: ProcessPoolExecutor | None = None
        self._ready = threading.Event()
        self._lock = threading.Lock()
        self._closed = False
        self._warming = False

    def __call__(self, body: bytes, is_json: bool) -> MappedRequest:
        pool = self._pool_if_ready() if self._workers > 0 and len(body) >= self.pool_min_bytes else None
        if pool is None:
            return decode_and_map(body, is_json, self._pricer)
        # Even when every worker is busy, the request waits for one rather than being decoded here: decoding holds
        # the GIL, which the writer thread needs between its DuckDB calls, and the writer is what the whole
        # collector waits on (bench/README.md: 41-44k spans/s with this process decoding too, 50-53k without).
        try:
            return pool.submit(_work, body, is_json).result()
        except BrokenProcessPool:
            self._restart(pool)
            raise DecoderUnavailable("a decoder process died; retry the request") from None

    def start(self) -> None:
        """Start the worker processes now rather than at the first large request; :attr:`warming` until they are up
        (or have failed to start, when requests are decoded in the collector process)."""
        if self._workers > 0:
            self._warming = True
            try:
                self._pool_if_ready()
            except Exception as exc:  # e.g. no process can be spawned: requests are decoded here
                self._warming = False
                log.error("decoder processes did not start (%s); decoding in the collector process", exc)

    @property
    def warming(self) -> bool:
        return self._warming

    def wait_ready(self, timeout: float) -> bool:
        """True once requests go to the worker processes."""
        return self._ready.wait(timeout)

    def _pool_if_ready(self) -> ProcessPoolExecutor | None:
        if self._ready.is_set():
            return self._pool
        with self._lock:
            if self._pool is None and not self._closed:
                self._start_pool()
        return None

    def _start_pool(self) -> None:
        pool = ProcessPoolExecutor(
            max_workers=self._workers,
            mp_context=multiprocessing.get_context("spawn"),  # never fork a process that holds DuckDB and threads
            initializer=_init_worker,
            initargs=(self._config, os.getpid()),
        )
        self._pool = pool
        _widen_pipes(pool)
        with _without_main_module():  # the first submit starts every worker process
            warmups = [pool.submit(_ping) for _ in range(self._workers)]

        def _when_started() -> None:
            try:
                for future in warmups:
                    future.result(timeout=120)
            except Exception as exc:  # the request threads keep decoding in place
                log.error("decoder processes did not start (%s); decoding in the collector process", exc)
            else:
                self._ready.set()
            finally:
                self._warming = False

        threading.Thread(target=_when_started, name="costline-decoder-start", daemon=True).start()

    def _restart(self, broken: ProcessPoolExecutor) -> None:
        with self._lock:
            if self._pool is not broken:
                return
            log.error("a decoder process died; starting the decoder pool again")
            self._ready.clear()
            broken.shutdown(wait=False, cancel_futures=True)
            self._pool = None
            if not self._closed:
                self._start_pool()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            pool, self._pool = self._pool, None
            self._ready.clear()
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
