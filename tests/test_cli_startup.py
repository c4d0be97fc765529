"""Every `costline` command loads the CLI; the heavy halves (router, Anthropic SDK) load only when used."""

from __future__ import annotations

import subprocess
import sys


def test_loading_the_cli_does_not_load_the_router_or_the_anthropic_sdk() -> None:
    probe = "import sys, costline.cli; print(sorted(m for m in ('anthropic', 'router', 'ollama') if m in sys.modules))"
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"


def test_loading_the_cli_does_not_load_price_data_metrics_parsing_or_parquet() -> None:
    # genai_prices (~90 ms) is for pricing calls, prometheus_client for the demo's summary and the collector,
    # pyarrow.parquet for `costline export`: `costline report` needs none of them.
    heavy = ("genai_prices", "prometheus_client", "pyarrow.parquet")
    probe = f"import sys, costline.cli; print(sorted(m for m in {heavy!r} if m in sys.modules))"
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"


def test_version_prints_the_installed_version_and_nothing_else() -> None:
    from importlib.metadata import version
    from pathlib import Path

    costline = str(Path(sys.executable).parent / "costline")
    shown = subprocess.run([costline, "--version"], capture_output=True, text=True, check=True)
    assert shown.stdout == f"costline {version('costline')}\n"
    assert shown.stderr == ""


def test_the_usage_store_loads_without_the_model_clients() -> None:
    # `costline usage` and the collector read router.usage_store; the Anthropic SDK alone takes seconds to import.
    probe = (
        "import sys, router.usage_store; print(sorted(m for m in ('anthropic', 'ollama', 'httpx') if m in sys.modules))"
    )
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"
