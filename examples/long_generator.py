"""A long-running generator (seconds per request, like image generation) behind ``gpufleet serve``: its
progress shows in ``/stats`` while it runs, a client that goes away cancels its queued request, and a request
past the deadline (``--timeout-s``) is answered 504 at the deadline. Two HTTP front-end processes
(``--http-workers 2``) over one engine: all of this crosses the process boundary. Runs on CPU:

    python examples/long_generator.py

The model reports progress with :func:`gpufleet.report_progress` from inside ``predict``; serve it yourself
with ``gpufleet serve examples/long_generator.py:Generator --max-batch-size 1``.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
import time
import zlib

import gpufleet

STEP_S = 0.05  # one "denoising step"


class Generator(gpufleet.Model):
    """Items: ``{"prompt": str, "steps": int}``; results: ``{"prompt", "steps", "checksum", "made"}``, where
    ``made`` counts the items this worker has generated (so a skipped item shows)."""

    def setup(self, device: gpufleet.Device) -> None:
        self.made = 0

    def predict(self, batch: list) -> list:
        steps = max(int(x["steps"]) for x in batch)
        for k in range(steps):
            time.sleep(STEP_S)  # the model's work for one step (a U-Net call, say)
            gpufleet.report_progress({"step": k + 1, "steps": steps})
        out = []
        for x in batch:
            self.made += 1
            out.append({"prompt": x["prompt"], "steps": x["steps"], "made": self.made,
                        "checksum": zlib.crc32(x["prompt"].encode())})
        return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def raw_post(port: int, body: object) -> socket.socket:
    """A bare HTTP request whose connection we can drop while it waits."""
    data = json.dumps(body).encode()
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Content-Length: %d\r\n\r\n%s" % (len(data), data))
    return s


def wait_for(cond, what: str, timeout: float = 10.0) -> None:  # noqa: ANN001
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.02)


def main() -> None:
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "gpufleet", "serve", f"{__file__}:Generator",
                               "--cpu-devices", "1", "--max-batch-size", "1", "--timeout-s", "1.6",
                               "--http-workers", "2", "--port", str(port), "--log-level", "warning"])
    try:
        with gpufleet.Client(f"http://127.0.0.1:{port}", timeout_s=30) as client:
            wait_for(lambda: server.poll() is None and client.ready(), "the server to start", 120)

            def queue_depth() -> int:
                return int(client.stats()["queue_depth"])

            # 1. A one-second request; meanwhile /stats shows how far the worker got.
            answer: dict = {}
            first = threading.Thread(target=lambda: answer.update(client.predict({"prompt": "a red fox",
                                                                                 "steps": 20})))
            first.start()
            seen = []
            wait_for(lambda: bool(seen.append(client.stats()["per_worker_stats"][0]["progress"]) or seen[-1]),
                     "progress in /stats")
            # 2. Meanwhile a second client sends a request, which waits in the queue, and goes away.
            gone = raw_post(port, {"prompt": "nobody waits for this", "steps": 20})
            wait_for(lambda: queue_depth() == 2, "the second request to be queued")
            gone.close()
            wait_for(lambda: queue_depth() == 1, "the dropped request to be cancelled")
            while first.is_alive():
                seen.append(client.stats()["per_worker_stats"][0]["progress"])
                time.sleep(0.1)
            first.join()
            steps = [p["step"] for p in seen if p]
            print(f"progress seen in /stats: steps {steps} of 20")
            assert steps and 0 < steps[0] < 20, seen
            after = client.predict({"prompt": "a blue heron", "steps": 2})
            print("first:", answer, "| next:", after)
            assert answer["made"] == 1 and after["made"] == 2, "the dropped request was generated anyway"

            # 3. A request that needs 3 s, past the 1.6 s deadline: 504 at the deadline.
            t0 = time.monotonic()
            try:
                client.predict({"prompt": "a very detailed cathedral", "steps": 60})
                raise AssertionError("a request past its deadline succeeded")
            except gpufleet.DeadlineExceeded as exc:
                took = time.monotonic() - t0
                print(f"past the deadline: HTTP {exc.status} after {took:.1f}s: {exc}")  # type: ignore[attr-defined]
                assert exc.status == 504 and took < 2.9  # type: ignore[attr-defined]
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(60)


if __name__ == "__main__":
    main()
