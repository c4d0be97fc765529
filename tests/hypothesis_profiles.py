"""Hypothesis profiles, registered once for pytest (tests/conftest.py) and for bench/soak.py.

``ci`` is the default everywhere, on CI or not: derandomized, so a commit explores the same examples on every run
and a failure recurs until it is fixed; the failure prints the ``@reproduce_failure`` blob that replays it.
(Hypothesis uses no example database when derandomized: the failing example is found again by every run.)

``soak`` is what ``make soak`` runs: fresh random examples each time, more of them, and every failure kept in
``.hypothesis/examples`` so the next soak tries it first. ``HYPOTHESIS_PROFILE=soak`` (or pytest's
``--hypothesis-profile soak``) selects it for the test suite too.
"""

from __future__ import annotations

import os
from pathlib import Path

from hypothesis import settings
from hypothesis.database import DirectoryBasedExampleDatabase

EXAMPLES_DIR = Path(__file__).resolve().parent.parent / ".hypothesis" / "examples"

CI_MAX_EXAMPLES = 100  # Hypothesis' default
settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True, max_examples=CI_MAX_EXAMPLES)
settings.register_profile(
    "soak",
    derandomize=False,
    database=DirectoryBasedExampleDatabase(EXAMPLES_DIR),
    deadline=None,
    print_blob=True,
    max_examples=1_000,
)


def examples(at_ci: int) -> int:
    """A test's example count: ``at_ci`` in the ``ci`` profile, scaled up with the loaded profile (10x in ``soak``),
    so that a test which sets its own count still explores more when soaking."""
    return at_ci * settings.default.max_examples // CI_MAX_EXAMPLES


def load(default: str = "ci") -> str:
    """Load the profile named by HYPOTHESIS_PROFILE, else ``default``; returns its name."""
    name = os.environ.get("HYPOTHESIS_PROFILE", default)
    settings.load_profile(name)
    return name
