"""The engine: Pool, batchers, balancers and workers. Imports no server, CLI, video or Ray code."""

from gpufleet.engine.pool import Pool

__all__ = ["Pool"]
