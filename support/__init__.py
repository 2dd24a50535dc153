"""Helpers that tests and benchmarks share: data locations, sample slides, live servers.

Not part of the product (never installed); benchmarks import it instead of importing `tests`.
"""
