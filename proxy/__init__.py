"""`costline proxy`: the Ollama and OpenAI HTTP APIs in front of the router, so any client routes through the chain."""

from proxy.app import build_app

__all__ = ["build_app"]
