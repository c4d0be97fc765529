"""The simulated backends, re-exported for tests: ``from fakes import FakeOllama, OllamaReply, FakeAnthropic``."""

from costline.demo.fake_anthropic import *  # noqa: F403
from costline.demo.fake_anthropic import __all__ as _anthropic_all
from costline.demo.fake_ollama import *  # noqa: F403
from costline.demo.fake_ollama import __all__ as _ollama_all

__all__ = sorted(set(_anthropic_all) | set(_ollama_all))
