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

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from functools import partial
from typing import Any

from gpufleet.devices import Device
from gpufleet.engine.placing import PreprocessPlacement
from gpufleet.engine.step import preprocess_error
from gpufleet.engine.wire import Call, Cancel, Codec, FrontMessage, Reply, State, Submit, error_from, error_reply
from gpufleet.errors import InputError, PoolClosed, WorkerError

__all__ = ["PoolServer", "RemotePool", "new_event_loop", "serve_pool"]

log = logging.getLogger(__name__)

_STATE_POLL_S = 0.25


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop's event loop when it is installed, else asyncio's."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


class _Link(asyncio.Protocol):
    """One stream, either end: frames in, coalesced frames out (one ``write`` per loop iteration)."""

    def __init__(self, on_messages: Callable[[_Link, list[FrontMessage]], None],
                 on_lost: Callable[[_Link], None]) -> None:
        self.codec = Codec(FrontMessage)
        self.transport: asyncio.Transport | None = None
        self._in = bytearray()
        self._out = bytearray()
        self._flush_scheduled = False
        self._on_messages, self._on_lost = on_messages, on_lost

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.flush()  # what was packed before the connection was up (the engine's first state push)

    def data_received(self, data: bytes) -> None:
        self._in += data
        try:
            msgs = self.codec.unpack(self._in)
        except Exception as exc:  # noqa: BLE001 - a corrupt stream ends the connection, not the process
            log.error("closing a corrupt IPC stream: %s", exc)
            self.close()
            return
        if msgs:
            self._on_messages(self, msgs)
        self.flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self._on_lost(self)

    def pack(self, msg: FrontMessage) -> None:
        """Queue a frame; it is written by :meth:`flush` (call it, or :meth:`send` schedules one)."""
        self.codec.pack(msg, self._out)

    def send(self, msg: FrontMessage) -> None:
        self.codec.pack(msg, self._out)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        self._flush_scheduled = False
        if self._out and self.transport is not None:
            out, self._out = self._out, bytearray()  # the transport may keep a reference: never reuse it
            self.transport.write(out)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class PoolServer:
    """Serves one pool to :class:`RemotePool` clients on a Unix socket, from its own thread and event loop.

    Socket I/O runs on that thread so it overlaps the pool's workers. Completions arrive on worker threads;
    they are queued and the loop is woken once per burst (not once per item), and each connection gets
    one coalesced write per wake-up. ``info`` is shipped to clients by the ``info`` RPC (with ``devices``).
    Clients see the pool's readiness, unless held back (``accepting=False`` until :meth:`set_accepting`)
    or draining (:meth:`set_draining`).
    """

    def __init__(self, pool: Any, path: str, *, info: dict[str, Any] | None = None, accepting: bool = True) -> None:
        self.pool, self.path, self.info = pool, path, dict(info or {})
        self._accepting = accepting
        self._links: dict[_Link, dict[int, Future]] = {}
        self._done: deque[tuple[_Link, int, Future]] = deque()
        self._wake_pending = False
        self._draining = False
        self._state = State(False, False)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        self._error: BaseException | None = None

    # -- life cycle ---------------------------------------------------------------------------------------
    def start(self) -> PoolServer:
        self._thread = threading.Thread(target=self._run, name="gpufleet-ipc", daemon=True)
        self._thread.start()
        self._started.wait()
        if self._error is not None:
            raise self._error
        return self

    def _run(self) -> None:
        loop = self._loop = new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            server = loop.run_until_complete(loop.create_unix_server(self._new_link, self.path))
        except BaseException as exc:  # noqa: BLE001 - reported to start()
            self._error = exc
            self._started.set()
            loop.close()
            return
        self._started.set()
        loop.call_later(_STATE_POLL_S, self._poll_state)
        try:
            loop.run_forever()
        finally:
            server.close()
            for link in list(self._links):
                link.close()
            loop.run_until_complete(asyncio.sleep(0))  # let the transports close
            loop.close()

    def close(self) -> None:
        """Stop serving: connections close and their queued items are cancelled."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(loop.stop)
            except RuntimeError:  # closed meanwhile
                pass
        if self._thread is not None:
            self._thread.join(10)
        try:
            os.unlink(self.path)
        except OSError:
            pass

    def set_draining(self, draining: bool = True) -> None:
        """Tell every client now (thread-safe): clients then report not ready and refuse new work."""
        self._draining = draining
        self._push_state()

    def set_accepting(self, accepting: bool = True) -> None:
        """Let clients report ready (when the pool is), e.g. once every client process is up (thread-safe)."""
        self._accepting = accepting
        self._push_state()

    def _push_state(self) -> None:
        if self._loop is not None and not self._loop.is_closed():
            try:
                self._loop.call_soon_threadsafe(self._poll_state, False)
            except RuntimeError:  # closed meanwhile
                pass

    @property
    def connections(self) -> int:
        return len(self._links)

    # -- connections --------------------------------------------------------------------------------------
    def _new_link(self) -> _Link:
        self._poll_state(again=False)  # so that the new client starts from the current state
        link = _Link(self._on_messages, self._on_lost)
        self._links[link] = {}
        link.pack(self._state)
        return link

    def _on_lost(self, link: _Link) -> None:
        futures = self._links.pop(link, {})
        for f in futures.values():  # the client is gone: nobody reads these results
            f.cancel()
        if futures:
            log.warning("an IPC client disconnected with %d item(s) in flight; they were cancelled", len(futures))

    def _on_messages(self, link: _Link, msgs: list[FrontMessage]) -> None:
        futures = self._links.get(link)
        if futures is None:
            return
        submit = self.pool.submit
        for m in msgs:
            if type(m) is Submit:
                try:
                    fut = submit(m.item, timeout_s=m.timeout_s, preprocessed=m.pre)
                except Exception as exc:  # noqa: BLE001 - admission errors (QueueFullError, ...) answer at once
                    link.pack(error_reply(m.id, exc))
                    continue
                futures[m.id] = fut
                fut.add_done_callback(partial(self._completed, link, m.id))
            elif type(m) is Cancel:
                f = futures.pop(m.id, None)
                if f is not None:
                    f.cancel()
            elif type(m) is Call:
                asyncio.ensure_future(self._call(link, m))

    def _completed(self, link: _Link, rid: int, fut: Future) -> None:
        """On whichever thread finished ``fut``: queue it, and wake the loop unless a wake-up is pending."""
        self._done.append((link, rid, fut))
        if not self._wake_pending:
            self._wake_pending = True
            try:
                self._loop.call_soon_threadsafe(self._send_done)  # type: ignore[union-attr]
            except RuntimeError:  # the loop stopped: the server is closing
                pass

    def _send_done(self) -> None:
        self._wake_pending = False  # before draining: a completion queued from now on schedules a new wake-up
        done, touched = self._done, set()
        while done:
            link, rid, fut = done.popleft()
            futures = self._links.get(link)
            if futures is None or futures.pop(rid, None) is None:
                continue  # cancelled by its client, or the client is gone
            if fut.cancelled():
                continue
            exc = fut.exception()
            try:
                link.pack(Reply(rid, fut.result()) if exc is None else error_reply(rid, exc))
            except TypeError as err:
                link.pack(error_reply(rid, WorkerError(f"the model's result cannot be sent to the front end: {err}")))
            touched.add(link)
        for link in touched:
            link.flush()

    async def _call(self, link: _Link, m: Call) -> None:
        try:
            if m.method == "info":
                value: Any = {"pid": os.getpid(), "devices": [dataclasses.asdict(d) for d in self.pool.devices],
                              **self.info}
            elif m.method in ("stats", "health"):  # may take milliseconds: keep the socket loop free
                value = await asyncio.get_running_loop().run_in_executor(None, getattr(self.pool, m.method))
            elif m.method == "set_enabled":  # the dashboard's drain/enable, from any front end
                label, enabled = m.args or (None, None)
                value = self.pool.set_enabled(str(label), bool(enabled))
            else:
                raise ValueError(f"unknown RPC method {m.method!r}")
            result = Reply(m.id, value)
        except Exception as exc:  # noqa: BLE001 - the caller gets the error
            result = error_reply(m.id, exc)
        if link in self._links:
            link.send(result)

    def _poll_state(self, again: bool = True) -> None:
        state = State(bool(self.pool.ready) and self._accepting and not self._draining, self._draining)
        if state != self._state:
            self._state = state
            for link in self._links:
                link.send(state)
        if again:
            self._loop.call_later(_STATE_POLL_S, self._poll_state)  # type: ignore[union-attr]


def serve_pool(pool: Any, path: str, *, info: dict[str, Any] | None = None, accepting: bool = True) -> PoolServer:
    """Start serving ``pool`` on the Unix socket ``path``; ``close()`` the returned server when done."""
    return PoolServer(pool, path, info=info, accepting=accepting).start()


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
        self._link: _Link | None = None
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
        _, self._link = await loop.create_unix_connection(lambda: _Link(self._on_messages, self._on_lost), self.path)
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

    def _on_messages(self, link: _Link, msgs: list[FrontMessage]) -> None:
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

    def _on_lost(self, link: _Link) -> None:
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
