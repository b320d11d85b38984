"""A small local Ray cluster (2 CPUs, no dashboard) shared by the test session, always shut down."""

from __future__ import annotations

from collections.abc import Iterator
from types import ModuleType

import pytest


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[ModuleType]:
    import ray  # the `ray` extra is part of the test environment (make test installs it)

    ray.shutdown()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield ray
    finally:
        ray.shutdown()
