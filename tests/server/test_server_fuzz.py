"""About 1,000 malformed requests: every one gets a 4xx with a JSON error; the server stays healthy."""

from __future__ import annotations

import base64
import os
import random
import struct

import httpx
import orjson

from gpufleet import Pool
from tests.server.conftest import b64, jpeg, live_server

V2 = "/v2/models/orientation/infer"


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _cases(rng: random.Random) -> list[tuple[str, bytes, dict[str, str]]]:
    good = orjson.dumps({"image": b64(jpeg())})
    tensor = {"name": "input", "datatype": "FP32", "shape": [1, 3, 224, 224], "data": [0.0] * (3 * 224 * 224)}
    good_v2 = orjson.dumps({"inputs": [tensor]})
    js = {"content-type": "application/json"}
    cases: list[tuple[str, bytes, dict[str, str]]] = []
    for _ in range(150):
        cases.append(("/predict", rng.randbytes(rng.randint(1, 3000)), {"content-type": "image/jpeg"}))
    for _ in range(100):
        cases.append(("/predict", rng.randbytes(rng.randint(1, 500)), js))
    for _ in range(150):
        cases.append(("/predict", good[: rng.randint(1, len(good) - 1)], js))
    for _ in range(80):
        junk = "".join(rng.choice("!@#$%^&*()ab=") for _ in range(rng.randint(1, 200)))
        cases.append(("/predict", orjson.dumps({"image": junk}), js))
    for _ in range(80):
        cases.append(("/predict", orjson.dumps({"image": base64.b64encode(rng.randbytes(200)).decode()}), js))
    for _ in range(60):
        cases.append(("/predict", orjson.dumps(rng.choice([1, None, [], "x", {"img": 1}, {"image": 5}])), js))
    for _ in range(60):
        ctype = rng.choice(["text/plain", "multipart/form-data", "application/xml", "video/mp4"])
        cases.append(("/predict", b"hello", {"content-type": ctype}))
    for _ in range(10):
        cases.append(("/predict", b"z" * (1024 * 1024 + rng.randint(1, 4096)), {"content-type": "image/png"}))
    for _ in range(50):
        cases.append(("/predict/batch", rng.choice([b"[]", b"{}", b"[1,", b'{"inputs": 3}', rng.randbytes(50)]), js))
    # KServe v2: wrong shapes, dtypes, counts, headers, binary parts
    for _ in range(60):
        shape = rng.choice([[1, 3, 100, 100], [3, 224, 224], [1, 1, 224, 224], [], [0, 3, 224, 224]])
        t = {"name": "input", "datatype": "FP32", "shape": shape, "data": [0.0] * min(10, max(1, len(shape)))}
        cases.append((V2, orjson.dumps({"inputs": [t]}), js))
    for _ in range(40):
        dt = rng.choice(["FP64", "INT32", "BOOL", "FP16", "NOPE", "UINT8"])
        cases.append((V2, orjson.dumps({"inputs": [{**tensor, "datatype": dt, "data": [0] * 4}]}), js))
    for _ in range(60):
        cases.append((V2, good_v2[: rng.randint(1, 4000)], js))
    for _ in range(40):
        cases.append((V2, rng.randbytes(rng.randint(1, 400)), js))
    for _ in range(40):
        head = orjson.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 3, 224, 224],
                                         "parameters": {"binary_data_size": 3 * 224 * 224 * 4}}]})
        tail = rng.randbytes(rng.randint(0, 1000))
        hlen = rng.choice([len(head), len(head) + 5, 0, -3, 10**9])
        cases.append((V2, head + tail, {"content-type": "application/octet-stream",
                                        "inference-header-content-length": str(hlen)}))
    for _ in range(30):
        head = orjson.dumps({"inputs": [{"name": "input", "datatype": "BYTES", "shape": [2],
                                         "parameters": {"binary_data_size": 12}}]})
        tail = struct.pack("<I", 1000) + rng.randbytes(8)
        cases.append((V2, head + tail, {"inference-header-content-length": str(len(head))}))
    rng.shuffle(cases)
    return cases


def test_a_thousand_malformed_requests_are_all_4xx(orientation_pool: Pool) -> None:
    rng = random.Random(1234)
    cases = _cases(rng)
    assert len(cases) >= 1000
    statuses: dict[int, int] = {}
    with live_server(orientation_pool, max_body_mb=1) as (base, _), httpx.Client(base_url=base, timeout=30) as c:
        rss = []
        for i, (path, body, headers) in enumerate(cases):
            if i in (len(cases) // 3, len(cases) - 1):
                rss.append(_rss_mb())
            r = c.post(path, content=body, headers=headers)
            statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
            assert 400 <= r.status_code < 500, (path, body[:80], headers, r.status_code, r.text)
            assert "error" in r.json()
        assert c.get("/health").json()["healthy"] is True
        r = c.post("/predict", json={"image": b64(jpeg(90, seed=5))})
        assert r.status_code == 200 and r.json()["angle"] == 90
    assert {400, 413, 415} <= set(statuses)
    assert rss[1] - rss[0] < 200, f"memory grew from {rss[0]:.0f} MB to {rss[1]:.0f} MB"
