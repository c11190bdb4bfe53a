"""Benchmarks and reports built on the mixer contract."""
