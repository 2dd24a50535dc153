"""The base of the project's own exceptions.

Every error histosearch raises on purpose derives from `HistosearchError`, so a caller (a CLI verb,
the service) can tell a refusal it should report from a bug it should not hide.
"""

from __future__ import annotations


class HistosearchError(Exception):
    """An expected failure with a message meant for the user (bad input, a mismatched file)."""
