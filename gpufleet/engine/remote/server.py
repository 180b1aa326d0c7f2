"""The engine's side of a shared pool: :class:`PoolServer` serves one :class:`~gpufleet.Pool` to
:class:`~gpufleet.engine.remote.client.RemotePool` clients on a Unix socket."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import threading
from collections import deque
from concurrent.futures import Future
from functools import partial
from typing import Any

from gpufleet.engine.remote.stream import StreamLink, new_event_loop
from gpufleet.engine.wire import Call, Cancel, FrontMessage, Reply, State, Submit, error_reply
from gpufleet.errors import WorkerError

__all__ = ["PoolServer", "serve_pool"]

log = logging.getLogger(__name__)

_STATE_POLL_S = 0.25


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
        self._links: dict[StreamLink, dict[int, Future]] = {}
        self._done: deque[tuple[StreamLink, int, Future]] = deque()
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
    def _new_link(self) -> StreamLink:
        self._poll_state(again=False)  # so that the new client starts from the current state
        link = StreamLink(self._on_messages, self._on_lost)
        self._links[link] = {}
        link.pack(self._state)
        return link

    def _on_lost(self, link: StreamLink) -> None:
        futures = self._links.pop(link, {})
        for f in futures.values():  # the client is gone: nobody reads these results
            f.cancel()
        if futures:
            log.warning("an IPC client disconnected with %d item(s) in flight; they were cancelled", len(futures))

    def _on_messages(self, link: StreamLink, msgs: list[FrontMessage]) -> None:
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

    def _completed(self, link: StreamLink, rid: int, fut: Future) -> None:
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

    async def _call(self, link: StreamLink, m: Call) -> None:
        try:
            if m.method == "info":
                value: Any = {"pid": os.getpid(), "devices": [dataclasses.asdict(d) for d in self.pool.devices],
                              "timeout_s": self.pool.config.timeout_s, **self.info}
            elif m.method in ("stats", "health"):  # may take milliseconds: keep the socket loop free
                value = await asyncio.get_running_loop().run_in_executor(None, getattr(self.pool, m.method))
            elif m.method == "set_enabled":  # the dashboard's drain/enable, from any front end
                label, enabled = m.args or (None, None)
                value = self.pool.set_enabled(str(label), bool(enabled))
            elif m.method == "configure":  # batching settings, from any front end
                size, wait = m.args or (None, None)
                value = self.pool.configure(max_batch_size=size, max_wait_ms=wait)
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
