"""A real local Ray for the Ray backend's tests: four fake GPU resources on one node (the actors run on CPU)."""

from __future__ import annotations

import pytest

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def local_ray():
    """Ray with ``num_gpus=4`` (fake) for this module; shut down after it, so another module can start a
    multi-node cluster."""
    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=2, num_gpus=4, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()
