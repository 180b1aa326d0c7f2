"""What every endpoint shares: server state, bounded body reading, JSON encoding, and submitting items to
the pool so that a client that goes away cancels its queued work."""

from __future__ import annotations

import asyncio
import base64
import hmac
from collections.abc import Sequence
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from gpufleet.errors import DeadlineExceeded, PoolClosed, WorkerError
from gpufleet.server.errors import HTTPError

if TYPE_CHECKING:
    from gpufleet.engine import Pool
    from gpufleet.server.metrics import Metrics

__all__ = ["ServerState", "dumps", "gather", "json_response", "not_json_able", "read_body", "results", "submit_all"]

_OPTS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS


def _default(obj: Any) -> Any:
    """Whatever orjson does not know natively: torch tensors, odd numpy dtypes, bytes, sets."""
    if hasattr(obj, "tolist"):  # torch tensors and numpy arrays/scalars orjson rejects (e.g. float16)
        if hasattr(obj, "detach"):
            obj = obj.detach().cpu()
        return obj.tolist()
    if isinstance(obj, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(obj)).decode()
    if isinstance(obj, (set, frozenset, tuple)):
        return list(obj)
    raise TypeError(f"cannot encode {type(obj).__name__} as JSON")


def not_json_able(detail: object) -> WorkerError:
    """The one error (500) for a model result that cannot be encoded, on every route (own API and KServe)."""
    return WorkerError(f"the model's result is not JSON-serializable: {detail}")


def dumps(obj: Any) -> bytes:
    return orjson.dumps(obj, default=_default, option=_OPTS)


def json_response(obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(dumps(obj), status_code=status, headers=headers, media_type="application/json")


class ServerState:
    """One app's pool, settings and live counters. ``draining`` flips when the server is told to stop.

    ``pool`` is a :class:`gpufleet.Pool` or a ``RemotePool`` (same interface, asyncio futures)."""

    def __init__(self, pool: Pool, *, model_name: str, token: str | None, max_body_bytes: int,
                 request_timeout_s: float | None, drain_timeout_s: float, metrics: Metrics,
                 frontend_id: str | None = None) -> None:
        self.pool = pool
        self.frontend_id = frontend_id
        self.model_name = model_name
        self.token = token.encode() if token else None
        self.max_body_bytes = max_body_bytes
        self.request_timeout_s = request_timeout_s
        self.drain_timeout_s = drain_timeout_s
        self.metrics = metrics
        self.draining = False
        self.inflight = 0
        self._idle: asyncio.Event | None = None

    def deadline_s(self, timeout_s: float | None) -> float | None:
        """Seconds the items of a request may take: the request's own ``timeout_s``, else the server's, else
        the pool's default (``None``: no bound)."""
        if timeout_s is not None:
            return timeout_s
        if self.request_timeout_s is not None:
            return self.request_timeout_s
        config = getattr(self.pool, "config", None)  # a Pool; a RemotePool was told the engine's at connect
        return config.timeout_s if config is not None else getattr(self.pool, "info", {}).get("timeout_s")

    def authorized(self, header: str | None) -> bool:
        if self.token is None:
            return True
        if not header or not header.startswith("Bearer "):
            return False
        return hmac.compare_digest(header[7:].strip().encode(), self.token)

    @property
    def ready(self) -> bool:
        return not self.draining and self.pool.ready

    def admit(self) -> None:
        """Raise 503 unless new work may start now."""
        if self.draining:
            raise HTTPError(503, "the server is draining and takes no new requests")
        if not self.pool.ready:
            raise PoolClosed("the model is not ready")

    def enter(self) -> None:
        self.inflight += 1  # only touched on the event loop thread: no lock needed

    def leave(self) -> None:
        self.inflight -= 1
        if self.inflight == 0 and self._idle is not None:
            self._idle.set()

    async def wait_idle(self, timeout: float | None) -> bool:
        """Wait until no request is in flight (or ``timeout`` passes); True when idle."""
        if self.inflight == 0:
            return True
        self._idle = asyncio.Event()
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
            return True
        except asyncio.TimeoutError:
            return self.inflight == 0


async def read_body(request: Request, limit: int) -> bytes:
    """The request body; 413 as soon as ``Content-Length`` or the bytes actually streamed pass ``limit``."""
    length = request.headers.get("content-length")
    if length is not None:
        try:
            declared = int(length)
        except ValueError:
            raise HTTPError(400, f"invalid Content-Length {length!r}") from None
        if declared > limit:
            raise HTTPError(413, f"request body of {declared} bytes exceeds the limit of {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:  # chunked uploads have no Content-Length: count while streaming
            raise HTTPError(413, f"request body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def submit_all(state: ServerState, items: Sequence[Any],
               timeout_s: float | None = None) -> list[Future | asyncio.Future]:
    """Submit every item or none: if admission fails half-way, the ones already queued are cancelled."""
    pool, t = state.pool, timeout_s if timeout_s is not None else state.request_timeout_s
    futures: list[Future | asyncio.Future] = []
    try:
        for item in items:
            futures.append(pool.submit(item, timeout_s=t))
    except BaseException:
        for f in futures:
            f.cancel()
        raise
    return futures


async def _disconnected(request: Request) -> None:
    receive = request.receive
    while (await receive())["type"] != "http.disconnect":
        pass


async def results(futures: list[Future | asyncio.Future], timeout_s: float | None) -> list[Any]:
    """Every future's result (concurrent futures of a local pool, asyncio futures of a remote one), in order;
    ``DeadlineExceeded`` once ``timeout_s`` passes, even while an item still runs (a thread worker cannot stop
    its ``predict``; its late answer is dropped)."""
    waiters = [asyncio.wrap_future(f) for f in futures]  # an asyncio future (remote pool) is returned as it is
    both = waiters[0] if len(waiters) == 1 else asyncio.gather(*waiters)
    if timeout_s is None:
        got = await both
    else:
        try:
            got = await asyncio.wait_for(both, timeout_s)
        except asyncio.TimeoutError:
            raise DeadlineExceeded(f"no answer within the request's deadline of {timeout_s:g}s") from None
    return [got] if len(waiters) == 1 else got


async def gather(request: Request, futures: list[Future | asyncio.Future],
                 timeout_s: float | None = None) -> list[Any]:
    """:func:`results` of the request's items, bounded by ``timeout_s`` (see :meth:`ServerState.deadline_s`);
    if the client disconnects first, cancel what has not started."""
    watch = asyncio.ensure_future(_disconnected(request))

    def gone(task: asyncio.Future) -> None:
        if not task.cancelled():
            for f in futures:
                f.cancel()

    watch.add_done_callback(gone)
    ok = False
    try:
        got = await results(futures, timeout_s)
        ok = True
        return got
    except asyncio.CancelledError:
        if watch.done() and not watch.cancelled():
            raise HTTPError(499, "client disconnected") from None
        raise
    finally:
        watch.remove_done_callback(gone)
        watch.cancel()
        if not ok:  # one item failed or we were cancelled: don't compute the rest for nobody
            for f in futures:
                f.cancel()
