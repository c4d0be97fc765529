"""The collector: OTLP/HTTP in, an exactly-once DuckDB ledger and Prometheus metrics out."""
