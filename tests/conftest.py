"""Fixtures and hooks shared by tests in several packages."""

from __future__ import annotations

from collections.abc import Generator, Iterator
from pathlib import Path
from types import ModuleType

import pytest

from support.data import SHARED_DATA, missing_data_reason


def _missing_shared_data(error: BaseException) -> str | None:
    """Why `error` is the shared data's absence (a clear skip reason), or None if it is not."""
    root = str(SHARED_DATA)
    named = f"{getattr(error, 'filename', None) or ''} {error}"
    start = named.find(root + "/")
    if start < 0:
        return None
    dataset = named[start + len(root) + 1 :].split("/", 1)[0].split()[0].strip("'\"")
    return missing_data_reason(SHARED_DATA / dataset)


def _skip_if_shared_data_is_missing() -> Generator[None, object, object]:
    try:
        return (yield)
    except Exception as error:
        reason = _missing_shared_data(error)
        if reason is None:
            raise
        pytest.skip(reason)


# Tests read real data sets from ../shared/data (or $HISTOSEARCH_SHARED_DATA). Where a set is
# absent, a test that tries to read it is skipped, naming the set and where it was looked for,
# instead of failing with a bare FileNotFoundError; any other failure is reported as it is.
@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Generator[None, object, object]:
    return (yield from _skip_if_shared_data_is_missing())


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, object, object]:
    return (yield from _skip_if_shared_data_is_missing())


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The shared data root; tests that need one set check it with `missing_data_reason`."""
    return SHARED_DATA


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[ModuleType]:
    """One small real local Ray cluster for the whole session (2 CPUs, no dashboard)."""
    ray = pytest.importorskip(
        "ray", reason="ray is not installed: install the `ray` extra (pip install '.[ray]')"
    )
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield ray
    ray.shutdown()
