"""Own API, health, stats, metrics and errors against a real uvicorn on loopback."""

from __future__ import annotations

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gpufleet import Pool
from tests.server.conftest import b64, jpeg, live_server


@pytest.fixture(scope="module")
def client(url: str):
    with httpx.Client(base_url=url, timeout=30) as c:
        yield c


def test_predict_json_and_raw_bytes_give_the_right_angle(client: httpx.Client) -> None:
    for angle in (0, 90, 180, 270):
        data = jpeg(angle, seed=angle + 1)
        r = client.post("/predict", json={"image": b64(data)})
        assert r.status_code == 200, r.text
        assert r.json()["angle"] == angle and set(r.json()) == {"angle", "class", "score"}
        for ctype in ("image/jpeg", "application/octet-stream"):
            r = client.post("/predict", content=data, headers={"content-type": ctype})
            assert r.status_code == 200 and r.json()["angle"] == angle


def test_predict_batch_list_and_inputs_object(client: httpx.Client) -> None:
    items = [{"image": b64(jpeg(a, seed=7))} for a in (0, 90, 180, 270)]
    for body in (items, {"inputs": items}):
        r = client.post("/predict/batch", json=body)
        assert r.status_code == 200, r.text
        assert [o["angle"] for o in r.json()["outputs"]] == [0, 90, 180, 270]


def test_health_stats_in_seed_shapes(client: httpx.Client) -> None:
    h = client.get("/health")
    assert h.status_code == 200
    body = h.json()
    assert body["healthy"] is True and body["draining"] is False
    assert body["total_backends"] == 2 and body["healthy_count"] == 2
    assert {"address", "healthy", "total_requests", "error_count"} <= set(body["backends"][0])
    client.post("/predict", json={"image": b64(jpeg())})
    s = client.get("/stats").json()
    assert s["num_gpus"] == 2 and s["total_batches"] >= 1 and s["avg_batch_size"] > 0
    assert {"gpu_id", "current_queue_depth", "total_requests", "total_batches", "avg_batch_size"} <= \
        set(s["per_gpu_stats"][0])


def test_metrics_parse_with_prometheus_parser(client: httpx.Client) -> None:
    client.post("/predict", json={"image": b64(jpeg())})
    client.post("/predict", content=b"nope", headers={"content-type": "text/plain"})
    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(r.text)}
    for name in ("gpufleet_http_requests", "gpufleet_http_request_duration_seconds", "gpufleet_queue_depth",
                 "gpufleet_avg_batch_size", "gpufleet_stage_latency_seconds"):
        assert name in families, sorted(families)
    statuses = {(s.labels["endpoint"], s.labels["status"]) for s in families["gpufleet_http_requests"].samples}
    assert ("predict", "200") in statuses and ("predict", "415") in statuses
    devices = {s.labels["device"] for s in families["gpufleet_queue_depth"].samples}
    assert devices == {"cpu:0", "cpu:1"}
    stages = {s.labels["stage"] for s in families["gpufleet_stage_latency_seconds"].samples}
    assert {"predict", "e2e"} <= stages


@pytest.mark.parametrize(("body", "ctype", "status", "words"), [
    (b"{not json", "application/json", 400, "malformed JSON"),
    (b"", "application/json", 400, "empty"),
    (b'{"image": "@@@not base64"}', "application/json", 400, "base64"),
    (b'{"picture": "x"}', "application/json", 400, "image"),
    (b"\x00\x01garbage", "image/jpeg", 400, "decode"),
    (b"hello", "text/plain", 415, "content type"),
])
def test_bad_requests_say_what_is_wrong(client: httpx.Client, body: bytes, ctype: str, status: int,
                                        words: str) -> None:
    r = client.post("/predict", content=body, headers={"content-type": ctype})
    assert r.status_code == status, r.text
    assert words in r.json()["error"]


def test_body_limit_by_content_length_and_while_streaming(orientation_pool: Pool) -> None:
    with live_server(orientation_pool, max_body_mb=1) as (base, _), httpx.Client(base_url=base) as client:
        big = b"x" * (1024 * 1024 + 10)
        r = client.post("/predict", content=big, headers={"content-type": "image/jpeg"})
        assert r.status_code == 413 and "limit" in r.json()["error"]

        def chunks():  # no Content-Length: chunked transfer encoding, counted while streaming
            for _ in range(20):
                yield b"y" * 65536

        r = client.post("/predict", content=chunks(), headers={"content-type": "image/jpeg"})
        assert r.status_code == 413
        assert client.get("/health").status_code == 200
        assert client.post("/predict", content=jpeg(), headers={"content-type": "image/jpeg"}).status_code == 200


def test_unknown_route_and_method_are_json(client: httpx.Client) -> None:
    r = client.get("/nope")
    assert r.status_code == 404 and "error" in r.json()
    r = client.get("/predict")
    assert r.status_code == 405 and "error" in r.json()


def test_token_auth_keeps_liveness_open(orientation_pool: Pool) -> None:
    with live_server(orientation_pool, token="s3cret") as (base, _), httpx.Client(base_url=base) as c:
        assert c.get("/health").status_code == 200
        assert c.get("/v2/health/live").status_code == 200
        for path in ("/stats", "/metrics", "/v2/health/ready", "/v2/models/orientation"):
            r = c.get(path)
            assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        r = c.post("/predict", json={"image": b64(jpeg())}, headers={"authorization": "Bearer wrong"})
        assert r.status_code == 401 and "token" in r.json()["error"]
        good = {"authorization": "Bearer s3cret"}
        assert c.post("/predict", json={"image": b64(jpeg())}, headers=good).status_code == 200
        assert c.get("/stats", headers=good).status_code == 200


def test_draining_turns_readiness_and_new_work_to_503(orientation_pool: Pool) -> None:
    with live_server(orientation_pool) as (base, app), httpx.Client(base_url=base) as c:
        app.state.gpufleet.draining = True
        assert c.post("/predict", json={"image": b64(jpeg())}).status_code == 503
        assert c.get("/v2/health/ready").status_code == 503
        assert c.get("/v2/models/orientation/ready").status_code == 503
        h = c.get("/health")
        assert h.status_code == 503 and h.json()["draining"] is True and h.json()["healthy"] is False
        assert c.get("/v2/health/live").status_code == 200
        app.state.gpufleet.draining = False
        assert c.get("/v2/health/ready").status_code == 200
