"""Benchmarks (not tests): run them as scripts, e.g. ``make bench-engine``."""
