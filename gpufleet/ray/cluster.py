"""Connecting to a Ray cluster and reading its GPUs, node by node."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from gpufleet.errors import ConfigError
from gpufleet.ray import require_ray

__all__ = ["RayNode", "connect", "gpu_nodes"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RayNode:
    """One alive node of the cluster and its GPU resources (``gpus`` may be fractional)."""

    node_id: str
    address: str
    hostname: str
    gpus: float
    cpus: float
    gpu_type: str  # Ray's accelerator type label, e.g. "H200", or ""


def connect(address: str | None = None) -> Any:
    """Connect to the cluster at ``address`` (``None``: the one ``ray.init()`` finds, else a local one;
    ``"auto"``; ``"ray://host:10001"``) unless this process is connected already; the ``ray`` module."""
    ray = require_ray()
    if not ray.is_initialized():
        try:
            ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
        except ConnectionError as exc:
            raise ConfigError(f"cannot connect to the Ray cluster at {address!r}: {exc}") from exc
    return ray


def gpu_nodes(ray: Any, only: tuple[str, ...] | None = None) -> list[RayNode]:
    """The alive nodes (all, or those whose node id or IP address is in ``only``), GPU nodes first."""
    nodes = []
    for n in ray.nodes():
        if not n.get("Alive"):
            continue
        res = n.get("Resources", {})
        node = RayNode(node_id=n["NodeID"], address=n.get("NodeManagerAddress", ""),
                       hostname=n.get("NodeManagerHostname", ""), gpus=float(res.get("GPU", 0.0)),
                       cpus=float(res.get("CPU", 0.0)),
                       gpu_type=next((k.split(":", 1)[1] for k in res if k.startswith("accelerator_type:")), ""))
        if only is None or node.node_id in only or node.address in only or node.hostname in only:
            nodes.append(node)
    if only is not None:
        found = {x for n in nodes for x in (n.node_id, n.address, n.hostname)}
        missing = [x for x in only if x not in found]
        if missing:
            raise ConfigError(f"ray_nodes: no alive node {', '.join(missing)} in the Ray cluster")
    return sorted(nodes, key=lambda n: (-n.gpus, n.address, n.node_id))
