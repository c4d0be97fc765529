"""``python -m dashboards [--check] [--runbook-base-url URL]``: regenerate grafana/ and prometheus/ files."""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace

from dashboards.generate import ROOT, render, stale, write
from dashboards.stack import DEFAULT as DEFAULT_STACK


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dashboards", description=__doc__)
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 when a generated file is stale")
    parser.add_argument(
        "--runbook-base-url", default=DEFAULT_STACK.runbook_base_url, help="where docs/runbook.md is served"
    )
    args = parser.parse_args(argv)
    files = render(stack=replace(DEFAULT_STACK, runbook_base_url=args.runbook_base_url))
    if args.check:
        outdated = stale(files)
        for path in outdated:
            print(f"stale: {path} (run `make dashboards`)", file=sys.stderr)
        return 1 if outdated else 0
    for path in write(files):
        print(f"wrote {path}")
    print(f"{len(files)} files up to date under {ROOT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
