"""Test support: the real stack and the brute-force window reference live in bench/stack.py (the
benchmarks use them without pytest); the tests import them from here as before."""

from bench.stack import (  # noqa: F401
    ROOT, Stack, async_wait_for, expected_windows, free_port, last_aggregates, read_topic, wait_for)
