"""RemotePool against a PoolServer in the same process (a thread): the interface a front end sees."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from gpufleet import Pool
from gpufleet.engine.remote import RemotePool, serve_pool
from gpufleet.errors import DeadlineExceeded, InputError, PoolClosed, QueueFullError, WorkerError
from gpufleet.models.base import Model


class Slowish(Model):
    def preprocess(self, item):
        if isinstance(item, str) and item == "bad":
            raise InputError("'bad' is not an item")
        return item

    def predict(self, batch: list) -> list:
        time.sleep(max((x.get("sleep", 0) for x in batch if isinstance(x, dict)), default=0))
        if "boom" in [x for x in batch if isinstance(x, str)]:
            raise RuntimeError("boom")
        return [x * 2 if isinstance(x, np.ndarray) else {"echo": x} for x in batch]


@pytest.fixture()
def sock_dir() -> Iterator[Path]:
    d = tempfile.mkdtemp(prefix="gft-")  # short: Unix socket paths are limited to ~100 bytes
    yield Path(d)
    shutil.rmtree(d, ignore_errors=True)


def test_submit_results_errors_rpcs_and_state(sock_dir: Path) -> None:
    path = str(sock_dir / "e.sock")
    with Pool(Slowish, cpu_devices=2, max_batch_size=4, max_wait_ms=1, max_queue=3) as pool:
        server = serve_pool(pool, path, info={"model_spec": {"x": 1}})

        async def run() -> None:
            remote = await RemotePool(path).connect()
            assert remote.ready and [d.label for d in remote.devices] == ["cpu:0", "cpu:1"]
            assert remote.info["model_spec"] == {"x": 1} and remote.model is None
            assert await remote.submit({"a": [1, 2]}) == {"echo": {"a": [1, 2]}}
            arr = np.arange(6, dtype=np.float16).reshape(2, 3)
            got = await remote.submit(arr)
            assert got.dtype == np.float16 and got.tobytes() == (arr * 2).tobytes()
            with pytest.raises(InputError, match="'bad' is not an item"):
                await remote.submit("bad")
            with pytest.raises(WorkerError):
                await remote.submit("boom")
            # Admission: the 4th outstanding item is refused by the engine's max_queue=3.
            futs = [remote.submit({"sleep": 0.3}) for _ in range(4)]
            results = await asyncio.gather(*futs, return_exceptions=True)
            assert sum(isinstance(r, QueueFullError) for r in results) == 1
            # Deadline: queued behind a 0.5 s batch on each device, 0.1 s timeouts pass.
            blockers = [remote.submit({"sleep": 0.5}) for _ in range(2)]
            await asyncio.sleep(0.1)
            with pytest.raises(DeadlineExceeded):
                await remote.submit("late", timeout_s=0.1)
            await asyncio.gather(*blockers)
            stats, health = await remote.stats_async(), await remote.health_async()
            assert len(stats["per_gpu_stats"]) == 2 and stats["total_requests"] >= 5
            assert health["healthy"] and health["total_backends"] == 2
            # Draining is pushed to clients.
            seen = asyncio.Event()
            remote.on_state = lambda r: seen.set()
            server.set_draining()
            await asyncio.wait_for(seen.wait(), 5)
            assert remote.draining and not remote.ready
            remote.close()

        asyncio.run(run())
        server.close()
        assert pool.outstanding == 0


def test_cancel_and_disconnect_free_the_engine(sock_dir: Path) -> None:
    path = str(sock_dir / "e.sock")
    with Pool(Slowish, cpu_devices=1, max_batch_size=1, max_wait_ms=0) as pool:
        server = serve_pool(pool, path)

        async def run() -> None:
            remote = await RemotePool(path).connect()
            running = remote.submit({"sleep": 0.4})
            queued = [remote.submit({"i": i}) for i in range(5)]
            await asyncio.sleep(0.1)
            for f in queued:
                f.cancel()  # → cancel frames: the engine drops them before they reach the device
            assert await running == {"echo": {"sleep": 0.4}}
            deadline = time.monotonic() + 5
            while pool.outstanding and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            assert pool.outstanding == 0 and pool.stats()["total_requests"] == 1
            # A client that disconnects has its in-flight items cancelled; the engine keeps serving.
            other = await RemotePool(path).connect()
            other.submit({"sleep": 0.3})
            left = [other.submit({"j": j}) for j in range(3)]
            await asyncio.sleep(0.05)
            other.close()
            for f in left:
                with pytest.raises(PoolClosed):
                    await f
            assert await remote.submit("still") == {"echo": "still"}
            lost = asyncio.Event()
            remote.on_lost = lambda r: lost.set()
            server.close()  # the engine goes away: pending work fails, submit refuses
            await asyncio.wait_for(lost.wait(), 5)
            with pytest.raises(PoolClosed):
                remote.submit("x")

        asyncio.run(run())
        assert pool.outstanding == 0


class Tagged(Model):
    """Answers with the item; the engine never preprocesses (the front end does, see the test)."""

    def predict(self, batch: list) -> list:
        return list(batch)


def test_front_end_preprocess_moves_onto_the_loop_once_measured_cheap(sock_dir: Path) -> None:
    import threading
    from concurrent.futures import ThreadPoolExecutor

    path = str(sock_dir / "e.sock")
    with Pool(Tagged, cpu_devices=1, max_batch_size=8, max_wait_ms=1) as pool:
        server = serve_pool(pool, path)

        async def run() -> None:
            remote = await RemotePool(path).connect()
            loop_thread = threading.current_thread().name
            where: list[str] = []

            def pre(item):
                where.append(threading.current_thread().name)
                if item == "bad":
                    raise ValueError("not an item")
                if item == "slow":
                    time.sleep(0.01)
                return f"pre:{item}"

            remote.preprocess = pre
            remote.preprocess_executor = ThreadPoolExecutor(2, thread_name_prefix="pre")
            first = await asyncio.gather(*(remote.submit(i) for i in range(16)))
            assert first == [f"pre:{i}" for i in range(16)] and loop_thread not in where  # measured on threads
            where.clear()
            assert await remote.submit("x") == "pre:x" and where == [loop_thread]  # cheap: now inline
            with pytest.raises(InputError, match="not an item"):
                await remote.submit("bad")  # a bad item fails alone, inline too
            assert await remote.submit("slow") == "pre:slow"  # one slow item lifts the mean ...
            where.clear()
            assert await remote.submit("y") == "pre:y" and where != [loop_thread]  # ... back to the threads
            remote.close()
            remote.preprocess_executor.shutdown()

        asyncio.run(run())
        server.close()
