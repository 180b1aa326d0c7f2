"""The embedded JPEG classifier behind ``gpufleet serve --http-workers 2``: the front ends run its preprocess."""

from __future__ import annotations

import base64
import io
import signal

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.e2e.serving import free_port, start_server, wait_ready


def _jpeg(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


@pytest.mark.timeout(180)
def test_jpegs_through_two_front_ends() -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = start_server("resnet18", port, "--http-workers", "2", "--max-batch-size", "4")
    try:
        wait_ready(proc, base, timeout_s=150)
        stats = httpx.get(f"{base}/stats", timeout=10).json()
        for i in range(4):
            r = httpx.post(f"{base}/predict", json={"image": base64.b64encode(_jpeg(i)).decode()}, timeout=60)
            assert r.status_code == 200, r.text
            body = r.json()
            assert set(body) == {"class", "score"} and 0 <= body["class"] < 1000 and 0 < body["score"] <= 1
        bad = httpx.post(f"{base}/predict", json={"image": base64.b64encode(b"not a jpeg").decode()}, timeout=60)
        assert bad.status_code == 400 and "JPEG" in bad.json()["error"]
        after = httpx.get(f"{base}/stats", timeout=10).json()
        assert after["total_requests"] - stats["total_requests"] == 4
        assert after["errors"] == stats["errors"]  # the bad JPEG was answered by the front end
        assert "preprocess" not in after["stages"]  # the engine ran no preprocess: the front ends did
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)
