"""Coverage-guided fuzzing of the OTLP decode and mapping with atheris (libFuzzer), for ``make soak``.

Run as a script: ``python tests/faults/atheris_otlp.py CORPUS_DIR -max_total_time=30``. The first input byte picks
protobuf or JSON; the rest is the body. Any exception other than DecodeError, or a mapped row that breaks the
ledger's invariants, is a crash (libFuzzer stops and writes the input to ``crash-*``).
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

with atheris.instrument_imports():
    from collector.mapping import map_spans
    from collector.otlp_decode import DecodeError, decode_json, decode_protobuf
    from collector.price_cache import FastPricer
    from costline.config import load_config
    from costline.pricing import Pricer

from faults.otlp import make_batch
from faults.payloads import NOW_NS
from faults.rows import assert_rows_sound

PRICER = FastPricer(Pricer(load_config(env={})))


def one_input(data: bytes) -> None:
    if not data:
        return
    decode = decode_protobuf if data[0] % 2 == 0 else decode_json
    try:
        spans = decode(data[1:])
    except DecodeError:
        return
    mapped = map_spans(spans, PRICER, now_ns=NOW_NS)
    assert mapped.span_count + len(mapped.rejected) + mapped.ignored == len(spans)
    assert_rows_sound(mapped, NOW_NS)


def seed_corpus(directory: Path) -> None:
    """Valid requests to start from: a router-shaped protobuf batch and its JSON twin."""
    directory.mkdir(parents=True, exist_ok=True)
    batch = make_batch(random.Random(1), 3, start_ns=NOW_NS - 60 * 10**9)
    (directory / "protobuf").write_bytes(b"\x00" + batch.body)
    (directory / "json").write_bytes(
        b'\x01{"resourceSpans":[{"scopeSpans":[{"spans":[{"traceId":"0102030405060708090a0b0c0d0e0f10",'
        b'"spanId":"0102030405060708","startTimeUnixNano":"1763999000000000000","endTimeUnixNano":'
        b'"1763999001000000000","attributes":[{"key":"gen_ai.provider.name","value":{"stringValue":"ollama"}},'
        b'{"key":"gen_ai.request.model","value":{"stringValue":"qwen3:8b"}},{"key":"gen_ai.usage.input_tokens",'
        b'"value":{"intValue":"12"}}]}]}]}]}'
    )


if __name__ == "__main__":
    corpus = [arg for arg in sys.argv[1:] if not arg.startswith("-")]
    if corpus:
        seed_corpus(Path(corpus[0]))
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()
