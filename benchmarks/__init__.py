"""Benchmarks by concern (quality/, indexer/, service/); each script prints a table and writes JSON.

benchmarks/README.md says which question each script answers and which document cites its result.
"""
