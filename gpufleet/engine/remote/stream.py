"""One end of the engine <-> front-end Unix stream: frames of :mod:`gpufleet.engine.wire` in, coalesced
frames out; and the event loop both ends run on."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from gpufleet.engine.wire import Codec, FrontMessage

__all__ = ["StreamLink", "new_event_loop"]

log = logging.getLogger(__name__)


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop's event loop when it is installed, else asyncio's."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


class StreamLink(asyncio.Protocol):
    """One stream, either end: frames in, coalesced frames out (one ``write`` per loop iteration)."""

    def __init__(self, on_messages: Callable[[StreamLink, list[FrontMessage]], None],
                 on_lost: Callable[[StreamLink], None]) -> None:
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
