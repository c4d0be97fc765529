"""costline: local-first LLM routing with an exact cost ledger."""

__version__ = "0.1.0"
