"""Fixtures shared by tests in several packages."""

from __future__ import annotations

from collections.abc import Iterator
from types import ModuleType

import pytest


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[ModuleType]:
    """One small real local Ray cluster for the whole session (2 CPUs, no dashboard)."""
    ray = pytest.importorskip(
        "ray", reason="ray is not installed: install the `ray` extra (pip install '.[ray]')"
    )
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield ray
    ray.shutdown()
