"""``serve_multi``: the process that owns the pool (the GPUs) and N HTTP front-end processes over it.

    main process                                  front end 1..N (spawned)
    Pool (workers, batchers, devices)             uvicorn + create_app(RemotePool)
    PoolServer thread  <-- Unix socket frames -->  RemotePool on uvicorn's loop
    supervisor: spawn, watch, restart, drain      own SO_REUSEPORT socket on host:port

Why processes: one Python process tops out at one core of HTTP parsing, JSON and base64 shared by one GIL
with the pool's threads; N front ends parse in parallel and the engine only batches and runs the model.

Shutdown: SIGTERM/SIGINT here → every front end reports draining at once (state push) → SIGTERM to the
front ends, each drains its in-flight requests (bounded by ``drain_timeout_s``) and exits → the caller
closes the pool (draining it) → exit 0. A second signal kills the front ends. A front end that dies is
restarted; the engine cancels its in-flight items and keeps serving the others.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import shutil
import signal
import socket
import tempfile
import time
from dataclasses import replace
from multiprocessing.connection import wait
from types import FrameType
from typing import Any

from gpufleet.engine.remote import serve_pool
from gpufleet.errors import ConfigError
from gpufleet.server import v2
from gpufleet.server.config import ServerConfig
from gpufleet.server.frontend import ModelLoader, bind_socket, run_frontend

__all__ = ["serve_multi"]

log = logging.getLogger(__name__)

START_TIMEOUT_S = 120.0  # a front end imports starlette, uvicorn and numpy: seconds on a loaded machine
MAX_START_FAILURES = 3


class _Frontends:
    """The N front-end processes: start, watch and restart them, and stop them on a signal."""

    def __init__(self, cfg: ServerConfig, ipc_path: str, model: str, load_model: ModelLoader) -> None:
        self.n = cfg.http_workers
        self.args = (cfg, ipc_path, model, load_model)  # run_frontend's, pickled once per spawn
        self.ctx = multiprocessing.get_context("spawn")
        self.procs: list[Any] = [None] * self.n
        self.restarts = 0
        self.stop_signal: int | None = None
        self.force = False

    def on_signal(self, sig: int, frame: FrameType | None) -> None:
        if self.stop_signal is not None:
            self.force = True  # a second signal: stop now
        self.stop_signal = sig

    def _start(self, i: int) -> Any:
        listening = self.ctx.Event()
        p = self.ctx.Process(target=run_frontend, args=(*self.args, listening), name=f"gpufleet-http-{i}", daemon=True)
        p.start()
        self.procs[i] = p
        return listening

    def _wait_listening(self, i: int, listening: Any) -> bool:
        """Wait until front end ``i`` listens; False if it died, timed out or a signal came first."""
        p, deadline = self.procs[i], time.monotonic() + START_TIMEOUT_S
        while not listening.wait(0.05):
            if not p.is_alive() or self.stop_signal is not None or time.monotonic() > deadline:
                return False
        return True

    def spawn(self, i: int) -> bool:
        return self._wait_listening(i, self._start(i))

    def start_all(self) -> None:
        """Start every front end at once (their imports take seconds) and wait until all listen."""
        events = [self._start(i) for i in range(self.n)]
        for i, listening in enumerate(events):
            if not self._wait_listening(i, listening) and self.stop_signal is None:
                raise ConfigError(f"HTTP front end {i} failed to start (exit code {self.procs[i].exitcode}); "
                                  "see its log above")

    def watch(self) -> None:
        """Until a signal: restart any front end that exits."""
        failures = 0
        while self.stop_signal is None:
            wait([p.sentinel for p in self.procs], timeout=0.2)
            for i, p in enumerate(self.procs):
                if p.is_alive() or self.stop_signal is not None:
                    continue
                log.warning("HTTP front end %d (pid %d) exited with code %s; restarting it", i, p.pid, p.exitcode)
                self.restarts += 1
                if self.spawn(i):
                    failures = 0
                    log.warning("HTTP front end %d restarted (pid %d)", i, self.procs[i].pid)
                elif self.stop_signal is None:
                    failures += 1
                    if failures >= MAX_START_FAILURES:
                        raise ConfigError(f"HTTP front end {i} failed to restart {failures} times in a row")
                    time.sleep(0.5 * failures)

    def stop(self, timeout: float) -> None:
        """SIGTERM every front end and wait (up to ``timeout``) for them to drain; SIGKILL what remains."""
        alive = [p for p in self.procs if p is not None and p.is_alive()]
        for p in alive:
            try:
                os.kill(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + timeout
        while alive and not self.force and time.monotonic() < deadline:
            wait([p.sentinel for p in alive], timeout=0.1)
            alive = [p for p in alive if p.is_alive()]
        for p in alive:
            log.warning("HTTP front end pid %d did not stop in time; killing it", p.pid)
            p.kill()
        for p in self.procs:
            if p is not None:
                p.join(5)


def serve_multi(pool: Any, cfg: ServerConfig, model: str, load_model: ModelLoader,
                reserve: socket.socket | None = None) -> int:
    """Serve ``pool`` with ``cfg.http_workers`` HTTP front-end processes until SIGTERM/SIGINT; returns the exit
    code. ``cfg.model_name`` must be set; front ends load ``model`` (serve's MODEL spec) with ``load_model``
    to run its preprocess. The caller owns the pool and closes it afterwards (that drains the items still
    queued). ``reserve`` is the port's socket when the caller bound it already (``serve`` does, before the
    model loads); it is closed on return."""
    log.setLevel(getattr(logging, cfg.log_level.upper(), logging.INFO))  # our lines follow --log-level, as uvicorn's
    # Bound, never listening: reserves the port (and resolves port 0) for the front ends' SO_REUSEPORT group.
    if reserve is None:
        reserve = bind_socket(cfg.host, cfg.port)
    tmp = tempfile.mkdtemp(prefix="gpufleet-")
    path = os.path.join(tmp, "engine.sock")
    cfg = replace(cfg, port=reserve.getsockname()[1])
    grpc_reserve = None
    if cfg.grpc_port is not None:  # every front end serves gRPC on one SO_REUSEPORT port too (grpc_service.py)
        grpc_reserve = bind_socket(cfg.host, cfg.grpc_port)
        cfg = replace(cfg, grpc_port=grpc_reserve.getsockname()[1])
    # Not ready until every front end listens: a load balancer then sees the whole layout at once.
    # Front ends run the model's preprocess themselves when the model says it is a pure function of the item:
    # the engine's workers (threads, or process workers' children) then skip it. With one GPU child process
    # serving base64 JPEG requests, decoding the base64 there took 40% of its time (py-spy, 1x H200, 2026-12-01).
    pre = bool(getattr(pool.model, "frontend_preprocess", False))
    server = serve_pool(pool, path, info={"model_spec": v2.model_spec(pool).to_dict(), "frontend_preprocess": pre},
                        accepting=False)
    n = cfg.http_workers
    fronts = _Frontends(cfg, path, model, load_model)
    old = {s: signal.signal(s, fronts.on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        fronts.start_all()
        if fronts.stop_signal is None:
            server.set_accepting()
            pids = ", ".join(str(p.pid) for p in fronts.procs)
            log.info("serving %s on http://%s:%d: %d HTTP front end(s) (pids %s) over the engine (pid %d, "
                        "%d worker(s) on %s), IPC unix:%s", cfg.model_name, cfg.host, cfg.port, n, pids,
                        os.getpid(), len(pool.workers), ", ".join(d.label for d in pool.devices), path)
            fronts.watch()
        sig = fronts.stop_signal
        log.warning("signal %s: draining %d HTTP front end(s) (up to %.0fs)",
                    signal.Signals(sig).name if sig else "?", n, cfg.drain_timeout_s)
        server.set_draining()
        fronts.stop(cfg.drain_timeout_s + 10)
        return 0
    except BaseException:
        server.set_draining()
        fronts.force = True
        fronts.stop(0)
        raise
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        server.close()
        reserve.close()
        if grpc_reserve is not None:
            grpc_reserve.close()
        shutil.rmtree(tmp, ignore_errors=True)
