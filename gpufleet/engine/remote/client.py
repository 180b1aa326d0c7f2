"""The client's side of a shared pool: :class:`RemotePool`, the pool's surface in another process."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from functools import partial
from typing import Any

from gpufleet.devices import Device
from gpufleet.engine.placing import PreprocessPlacement
from gpufleet.engine.remote.stream import StreamLink
from gpufleet.engine.step import preprocess_error
from gpufleet.engine.wire import Call, Cancel, FrontMessage, Reply, State, Submit, error_from
from gpufleet.errors import InputError, PoolClosed

__all__ = ["RemotePool"]


class RemotePool:
    """The :class:`Pool` interface of a pool in another process, for use on one asyncio event loop.

    ``submit`` returns an ``asyncio.Future`` (cancel it to cancel the item); ``stats()``, ``health()`` are
    coroutines; ``ready``, ``draining`` follow the engine's pushes; ``devices`` and ``info`` (what the
    engine passed to :func:`serve_pool`) are read once by :meth:`connect`. ``model`` is ``None``: the model
    lives in the engine process.
    """

    model = None

    def __init__(self, path: str) -> None:
        self.path = path
        self.devices: list[Device] = []
        self.info: dict[str, Any] = {}
        self.on_state: Callable[[RemotePool], None] | None = None  # called after each state push
        self.on_lost: Callable[[RemotePool], None] | None = None  # called once the engine is gone
        self._link: StreamLink | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending: dict[int, asyncio.Future] = {}
        self._next_id = 0
        self._ready = False
        self._draining = False
        # Set by the front end when the model's preprocess may run here (``frontend_preprocess``): CPU work
        # like image decoding then spreads over the front-end processes instead of the engine's one GIL.
        self.preprocess: Callable[[Any], Any] | None = None
        self.preprocess_executor: Any = None
        # Once that preprocess is measured cheap it runs on the event loop, cheaper than the hand-off to a
        # thread (a base64 decode of a JPEG request: ~10 µs).
        self._placing = PreprocessPlacement(keep=0)

    async def connect(self) -> RemotePool:
        loop = self._loop = asyncio.get_running_loop()
        _, self._link = await loop.create_unix_connection(lambda: StreamLink(self._on_messages, self._on_lost),
                                                          self.path)
        self.info = await self._call("info")
        self.devices = [Device(**{**d, "compute_capability": tuple(d["compute_capability"])
                                  if d.get("compute_capability") else None}) for d in self.info.pop("devices")]
        return self

    @property
    def connected(self) -> bool:
        return self._link is not None

    @property
    def ready(self) -> bool:
        return self._link is not None and self._ready and not self._draining

    @property
    def draining(self) -> bool:
        return self._draining

    @property
    def outstanding(self) -> int:
        """Items this client has submitted and not yet got back."""
        return len(self._pending)

    def submit(self, item: Any, *, timeout_s: float | None = None) -> asyncio.Future:
        """Send one item; the future resolves to its result or raises the engine's ``GpufleetError``."""
        link = self._link
        if link is None:
            raise PoolClosed("the engine process is gone")
        rid = self._next_id = self._next_id + 1
        fut = self._loop.create_future()  # type: ignore[union-attr]
        if self.preprocess is None:
            link.send(Submit(rid, item, timeout_s))  # TypeError (unsendable item) propagates before anything is kept
        self._pending[rid] = fut
        fut.add_done_callback(partial(self._settled, rid))
        if self.preprocess is not None:
            if self._placing.inline:
                pre, err = None, None
                try:
                    pre = self._timed_preprocess(item)
                except Exception as exc:  # noqa: BLE001 - a bad item fails alone
                    err = exc
                self._forward(rid, fut, timeout_s, pre, err)
            else:
                work = self._loop.run_in_executor(self.preprocess_executor, self._timed_preprocess, item)  # type: ignore
                work.add_done_callback(partial(self._send_preprocessed, rid, fut, timeout_s))
        return fut

    def _timed_preprocess(self, item: Any) -> Any:
        assert self.preprocess is not None
        return self._placing.run(self.preprocess, item)

    def _send_preprocessed(self, rid: int, fut: asyncio.Future, timeout_s: float | None,
                           work: asyncio.Future) -> None:
        if fut.done():
            return  # cancelled while preprocessing (the client went away)
        exc = work.exception()
        self._forward(rid, fut, timeout_s, None if exc is not None else work.result(), exc)

    def _forward(self, rid: int, fut: asyncio.Future, timeout_s: float | None, item: Any,
                 exc: BaseException | None) -> None:
        """Send a preprocessed item to the engine, or answer ``fut`` with why it cannot go."""
        link = self._link
        if exc is not None:
            err: Exception = preprocess_error(exc)
        elif link is None:
            err = PoolClosed("the engine process is gone")
        else:
            try:
                link.send(Submit(rid, item, timeout_s, True))
                return
            except TypeError as e:
                err = InputError(f"the preprocessed item cannot be sent to the engine: {e}")
        self._pending.pop(rid, None)
        fut.set_exception(err)

    def _settled(self, rid: int, fut: asyncio.Future) -> None:
        # Results pop their id before resolving; an id still pending here was cancelled by the caller.
        if self._pending.pop(rid, None) is not None and self._link is not None:
            self._link.send(Cancel(rid))

    async def _call(self, method: str, args: list | None = None) -> Any:
        link = self._link
        if link is None:
            raise PoolClosed("the engine process is gone")
        rid = self._next_id = self._next_id + 1
        fut = self._loop.create_future()  # type: ignore[union-attr]
        self._pending[rid] = fut
        link.send(Call(rid, method, args))
        try:
            return await fut
        finally:
            self._pending.pop(rid, None)

    async def infer(self, item: Any, *, timeout_s: float | None = None) -> Any:
        """Await one item's result (:meth:`gpufleet.Pool.infer`)."""
        return await self.submit(item, timeout_s=timeout_s)

    async def stats_async(self) -> dict:
        """The engine's :meth:`gpufleet.Pool.stats`."""
        return await self._call("stats")

    async def health_async(self) -> dict:
        """The engine's :meth:`gpufleet.Pool.health`."""
        return await self._call("health")

    async def set_enabled_async(self, device_label: str, enabled: bool) -> list[int]:
        """Stop (or resume) routing to a device in the engine: :meth:`gpufleet.Pool.set_enabled`, remotely."""
        return await self._call("set_enabled", [device_label, enabled])

    async def configure_async(self, *, max_batch_size: int | None = None,
                              max_wait_ms: float | None = None) -> dict[str, Any]:
        """Change the engine's batching while it serves: :meth:`gpufleet.Pool.configure`, remotely."""
        return await self._call("configure", [max_batch_size, max_wait_ms])

    def _on_messages(self, link: StreamLink, msgs: list[FrontMessage]) -> None:
        pending = self._pending
        for m in msgs:
            if type(m) is Reply:
                fut = pending.pop(m.id, None)
                if fut is None or fut.done():
                    continue
                if m.error is None:
                    fut.set_result(m.value)
                else:
                    fut.set_exception(error_from(m.error))
            elif type(m) is State:
                self._ready, self._draining = m.ready, m.draining
                if self.on_state is not None:
                    self.on_state(self)

    def _on_lost(self, link: StreamLink) -> None:
        self._link = None
        pending, self._pending = self._pending, {}
        for fut in pending.values():
            if not fut.done():
                fut.set_exception(PoolClosed("lost the connection to the engine process"))
        if self.on_lost is not None:
            self.on_lost(self)

    def close(self) -> None:
        if self._link is not None:
            self._link.close()
        if self.preprocess_executor is not None:
            self.preprocess_executor.shutdown(wait=False, cancel_futures=True)

    def __repr__(self) -> str:
        return f"RemotePool({self.path!r}, connected={self.connected}, ready={self.ready})"
