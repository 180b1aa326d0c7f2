"""The Ray backend: one Ray actor per GPU anywhere in a Ray cluster, behind the same ``Pool`` (``gpufleet[ray]``).

    backend.py  make_fleet and RayWorker: the pool's side (batches out, answers in, restarts)
    actor.py    GpuActor: the model copy in a Ray worker process, running the engine's batch step
    cluster.py  connecting to the cluster and reading its GPUs per node

``Pool(model, backend="ray", ray_address=None | "auto" | "ray://head:10001")``; see docs/cluster.md.
"""

from __future__ import annotations

from typing import Any

from gpufleet.errors import ConfigError

__all__ = ["require_ray"]


def require_ray() -> Any:
    """The ``ray`` module, or a ``ConfigError`` naming the extra to install."""
    try:
        import ray
    except ImportError:
        raise ConfigError('backend="ray" needs Ray: pip install "gpufleet[ray]"') from None
    return ray
