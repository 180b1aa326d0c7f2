"""A :class:`Pool` shared with other processes: ``serve_pool(pool, path)`` in the process that owns the devices,
``RemotePool(path)`` in each client process (e.g. the HTTP front ends of ``gpufleet serve --http-workers``).

The engine knows nothing of its clients' protocol: a client submits items and gets results, exactly as
with a local pool, on one asyncio event loop: :meth:`RemotePool.submit` returns an ``asyncio.Future``, and the
queries are the coroutines that :class:`~gpufleet.engine.pool.Pool` offers too (``stats_async``,
``health_async``, ``set_enabled_async``). The wire is :mod:`gpufleet.engine.wire` on a Unix stream socket.

>>> server = serve_pool(pool, "/tmp/engine.sock")                  # doctest: +SKIP
>>> remote = RemotePool("/tmp/engine.sock"); await remote.connect()  # doctest: +SKIP
>>> await remote.submit({"image": "..."})                           # doctest: +SKIP
"""

from gpufleet.engine.remote.client import RemotePool
from gpufleet.engine.remote.server import PoolServer, serve_pool
from gpufleet.engine.remote.stream import new_event_loop

__all__ = ["PoolServer", "RemotePool", "new_event_loop", "serve_pool"]
