"""Shared test configuration: `harness` (real processes) is importable from every test."""
