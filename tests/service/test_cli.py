"""`histosearch serve`'s own set-up: the descriptor limit and the connection policy it runs with."""

from __future__ import annotations

import resource
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.cli import connection_policy, raise_open_file_limit
from service.settings import Settings


@pytest.fixture()
def restored_file_limit() -> Iterator[tuple[int, int]]:
    before = resource.getrlimit(resource.RLIMIT_NOFILE)
    yield before
    resource.setrlimit(resource.RLIMIT_NOFILE, before)


def test_the_soft_descriptor_limit_is_raised_to_fit_every_connection(
    restored_file_limit: tuple[int, int],
) -> None:
    _, hard = restored_file_limit
    if hard != resource.RLIM_INFINITY and hard < 2048 + 256:
        pytest.skip(f"the hard descriptor limit here ({hard}) is below what the test asks")
    resource.setrlimit(resource.RLIMIT_NOFILE, (512, hard))
    raise_open_file_limit(2048)
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert soft >= 2048 + 256


def test_the_connection_policy_is_the_settings(tmp_path: Path) -> None:
    settings = Settings(
        index_dir=tmp_path,
        header_timeout_seconds=3,
        body_min_bytes_per_second=100,
        body_grace_seconds=7,
        max_connections=99,
        max_connections_per_client=9,
    )
    policy = connection_policy(settings)
    assert (policy.header_timeout, policy.body_min_rate, policy.body_grace) == (3, 100, 7)
    assert (policy.max_connections, policy.max_connections_per_client) == (99, 9)
