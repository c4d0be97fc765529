"""Dashboards and alert rules as code.

Python here generates everything under ``grafana/`` and ``prometheus/`` (``make dashboards``); the generated files
are committed, and a test fails when they differ from what the generator produces. Thresholds live in
:mod:`dashboards.thresholds`, metric names in :mod:`dashboards.metrics`.
"""
