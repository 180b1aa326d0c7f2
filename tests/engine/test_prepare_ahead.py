"""A model's ``prepare_batch`` on a thread worker: run on a thread of its own, one batch ahead of the device
loop (the next batch is prepared while the previous one is still being collected), with results identical to
the same model without it, per-item errors included."""

from __future__ import annotations

import threading
import time

import pytest

from gpufleet import Pool
from gpufleet.errors import InputError


class _Bad:
    def __init__(self, message: str) -> None:
        self.message = message


def _decode(x: object) -> object:
    """The stand-in for JPEG decoding: ``b"12"`` -> 12; ``b"bad"`` becomes a marker its item fails with."""
    if isinstance(x, bytes):
        return _Bad(f"cannot decode {x!r}") if x == b"bad" else int(x)
    return x


class Decoding:
    """launch/collect model that decodes what ``prepare_batch`` left encoded, as the classifier does."""

    def setup(self, device: object) -> None:
        self.second_prepared = threading.Event()
        self.overlapped: bool | None = None
        self.prepared = 0
        self.prep_threads: set[str] = set()
        self.launch_threads: set[str] = set()

    def prepare_batch(self, batch: list) -> list:
        self.prep_threads.add(threading.current_thread().name)
        self.prepared += 1
        if self.prepared == 2:
            self.second_prepared.set()
        if any(x == b"boom" for x in batch):
            raise RuntimeError("the whole batch's prepare fails: launch decodes it")
        return [_decode(x) for x in batch]

    def launch(self, batch: list) -> list:
        self.launch_threads.add(threading.current_thread().name)
        return [_decode(x) for x in batch]

    def collect(self, handle: list) -> list:
        if self.overlapped is None:  # the first batch: the next one is prepared while this one is collected
            self.overlapped = self.second_prepared.wait(10)
        return [x if isinstance(x, _Bad) else x * 2 for x in handle]

    def predict(self, batch: list) -> list:
        return self.collect(self.launch(batch))

    def postprocess(self, out: object) -> object:
        if isinstance(out, _Bad):
            raise InputError(out.message)
        return out


class NotAhead(Decoding):
    prepare_batch = None  # type: ignore[assignment]

    def collect(self, handle: list) -> list:
        return [x if isinstance(x, _Bad) else x * 2 for x in handle]


def _results(model: object, items: list) -> list:
    with Pool(model, cpu_devices=1, max_batch_size=4, max_wait_ms=20) as pool:
        futures = [pool.submit(x) for x in items]
        out = []
        for f in futures:
            try:
                out.append(("ok", f.result(timeout=30)))
            except Exception as exc:  # noqa: BLE001
                out.append((type(exc).__name__, str(exc)))
        worker = pool.workers[0]
        return [out, worker.model]


@pytest.mark.timeout(60)
def test_prepared_ahead_on_its_own_thread_with_the_same_results() -> None:
    items: list = [str(i).encode() for i in range(40)]
    items[5] = b"bad"
    items[17] = 7  # already decoded
    items[30] = b"boom"  # fails the whole batch's prepare_batch: served unprepared
    ahead, model = _results(Decoding(), items)
    plain, _ = _results(NotAhead(), items)
    assert ahead == plain
    assert ahead[0] == ("ok", 0) and ahead[5][0] == "InputError" and ahead[17] == ("ok", 14)
    assert ahead[30][0] != "ok" and ahead[29] == ("ok", 58)  # unprepared: only the undecodable item fails
    assert model.overlapped is True
    assert model.prep_threads and not model.prep_threads & model.launch_threads


@pytest.mark.timeout(60)
def test_a_crash_in_the_prepare_thread_fails_its_items_and_stops_the_worker() -> None:
    class Crashing(NotAhead):
        def prepare_batch(self, batch: list) -> list:
            raise SystemExit("not an Exception: escapes the step's fallback")

    with Pool(Crashing, cpu_devices=1, max_batch_size=4, max_wait_ms=1, allow_degraded=True) as pool:
        futures = [pool.submit(str(i).encode()) for i in range(6)]
        for f in futures:
            with pytest.raises(Exception):  # noqa: B017,PT011 - WorkerError or NoHealthyWorker, never a hang
                f.result(timeout=30)


@pytest.mark.timeout(60)
def test_the_prepare_thread_takes_a_batch_only_when_the_device_has_room() -> None:
    """With a slow device, batches prepared or launched never exceed ``pipeline_depth`` (2): the requests wait in
    the batcher meanwhile, so later batches are full instead of many small ones queued for the device."""

    class Slow(NotAhead):
        def setup(self, device: object) -> None:
            super().setup(device)
            self.lock = threading.Lock()
            self.open = self.most = 0
            self.sizes: list[int] = []

        def prepare_batch(self, batch: list) -> list:
            with self.lock:
                self.open += 1
                self.most = max(self.most, self.open)
                self.sizes.append(len(batch))
            return [_decode(x) for x in batch]

        def collect(self, handle: list) -> list:
            time.sleep(0.05)
            with self.lock:
                self.open -= 1
            return super().collect(handle)

    with Pool(Slow, cpu_devices=1, max_batch_size=8, max_wait_ms=1) as pool:
        futures = [pool.submit(str(i).encode()) for i in range(64)]
        assert [f.result(timeout=30) for f in futures] == [2 * i for i in range(64)]
        model = pool.workers[0].model
    assert model.most <= 2
    assert max(model.sizes) == 8 and len(model.sizes) <= 10  # 64 items in full batches, not one by one


class Eager(NotAhead):
    """Prepares as items come (``prepare_eagerly``), on a slow device: the chunk sizes prepared and the batch
    sizes launched are recorded."""

    prepare_eagerly = True

    def setup(self, device: object) -> None:
        super().setup(device)
        self.chunks: list[int] = []
        self.batches: list[int] = []

    def prepare_batch(self, batch: list) -> list:
        self.prep_threads.add(threading.current_thread().name)
        self.chunks.append(len(batch))
        time.sleep(0.002)  # decoding takes a moment: more items queue meanwhile
        return [_decode(x) for x in batch]

    def launch(self, batch: list) -> list:
        self.batches.append(len(batch))
        return super().launch(batch)

    def collect(self, handle: list) -> list:
        time.sleep(0.03)
        return super().collect(handle)


@pytest.mark.timeout(60)
def test_eager_preparing_gives_the_same_results() -> None:
    items: list = [str(i).encode() for i in range(40)]
    items[5] = b"bad"
    items[17] = 7
    eager, model = _results(Eager(), items)
    plain, _ = _results(NotAhead(), items)
    assert eager == plain
    assert model.prep_threads and not model.prep_threads & model.launch_threads


@pytest.mark.timeout(60)
def test_eager_preparing_takes_items_as_they_come_and_the_loop_joins_the_chunks() -> None:
    """Items trickle in while the device is busy: the prepare thread prepares small chunks at once (it does not
    wait for room on the device), and the loop launches them joined, up to the batch size."""
    with Pool(Eager, cpu_devices=1, max_batch_size=16, max_wait_ms=1) as pool:
        futures = []
        for i in range(96):
            futures.append(pool.submit(str(i).encode()))
            time.sleep(0.001)
        assert [f.result(timeout=30) for f in futures] == [2 * i for i in range(96)]
        model = pool.workers[0].model
    assert sum(model.chunks) == sum(model.batches) == 96
    assert max(model.batches) <= 16
    assert len(model.batches) < len(model.chunks)  # chunks joined into batches
    assert max(model.batches) > max(model.chunks)


@pytest.mark.timeout(60)
def test_eager_preparing_stops_cleanly_and_fails_nothing_on_close() -> None:
    with Pool(Eager, cpu_devices=1, max_batch_size=8, max_wait_ms=1) as pool:
        futures = [pool.submit(str(i).encode()) for i in range(30)]
    assert [f.result(timeout=30) for f in futures] == [2 * i for i in range(30)]
