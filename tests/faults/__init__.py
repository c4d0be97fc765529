"""Fault-injection helpers for the fault, fuzz and security suites (and ``bench/soak.py``): OTLP batches with
known span ids, a flaky HTTP proxy, ``costline serve`` as a subprocess, and the ledger's invariants."""
