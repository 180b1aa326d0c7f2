"""/metrics carries process metrics and batch-size / queue-wait histograms; /openapi.json describes every route."""

from __future__ import annotations

import httpx
from starlette.routing import Route

from gpufleet import Model, Pool
from gpufleet.server import create_app
from gpufleet.server.openapi import spec
from tests.server.conftest import live_server


def test_metrics_have_process_metrics_and_histograms() -> None:
    with Pool(lambda batch: [x + 1 for x in batch], cpu_devices=1, max_wait_ms=5) as pool, \
            live_server(pool, model_name="inc") as (url, _):
        assert httpx.post(url + "/predict/batch", json=list(range(20))).status_code == 200
        text = httpx.get(url + "/metrics").text
    for name in ("process_cpu_seconds_total", "process_resident_memory_bytes", "process_start_time_seconds",
                 "process_open_fds"):
        assert f"\n{name} " in text, name
    assert "# TYPE gpufleet_batch_size histogram" in text and "# TYPE gpufleet_queue_wait_seconds histogram" in text
    lines = dict(line.rsplit(" ", 1) for line in text.splitlines() if line and not line.startswith("#"))
    labels = 'device="cpu:0",gpu_id="0"'
    assert float(lines[f"gpufleet_batch_size_count{{{labels}}}"]) >= 1
    assert float(lines[f"gpufleet_batch_size_sum{{{labels}}}"]) == 20
    assert float(lines[f'gpufleet_queue_wait_seconds_bucket{{{labels},le="+Inf"}}']) == 20
    assert float(lines[f"gpufleet_queue_wait_seconds_count{{{labels}}}"]) == 20


class _Speech(Model):
    """Each output is 0.5 s of audio: the model declares it, so /stats and /metrics show the real-time factor."""

    def predict(self, batch: list) -> list:
        return [[0.0] * 8 for _ in batch]

    def output_seconds(self, output: list) -> float:
        return 0.5


def test_real_time_factor_and_idle_time_in_stats_and_metrics() -> None:
    with Pool(_Speech, cpu_devices=1, max_wait_ms=1) as pool, live_server(pool, model_name="tts") as (url, _):
        assert httpx.post(url + "/predict/batch", json=list(range(10))).status_code == 200
        stats = httpx.get(url + "/stats").json()
        text = httpx.get(url + "/metrics").text
    dev = stats["per_gpu_stats"][0]
    assert stats["media_s"] == dev["media_s"] == 5.0 and stats["rtf"] == dev["rtf"] is not None
    lines = dict(line.rsplit(" ", 1) for line in text.splitlines() if line and not line.startswith("#"))
    labels = 'device="cpu:0",gpu_id="0"'
    assert float(lines[f"gpufleet_media_seconds_total{{{labels}}}"]) == 5.0
    assert float(lines[f"gpufleet_real_time_factor{{{labels}}}"]) == dev["rtf"]
    assert float(lines[f"gpufleet_device_busy_seconds_total{{{labels}}}"]) == dev["busy_s"]
    # the loop waits between requests; the wait under way counts, so the later scrape reads at least as much
    assert float(lines[f"gpufleet_device_idle_seconds_total{{{labels}}}"]) >= dev["idle_s"] > 0


def test_openapi_describes_every_route_and_docs_page() -> None:
    with Pool(lambda batch: batch, cpu_devices=1) as pool:
        app = create_app(pool, model_name="m", token="secret")
        paths = spec()["paths"]
        for route in app.routes:
            assert isinstance(route, Route) and route.path in paths, route.path
            for method in route.methods - {"HEAD"}:
                assert method.lower() in paths[route.path], (method, route.path)
        with live_server(pool, model_name="m", token="secret") as (url, _):
            doc = httpx.get(url + "/openapi.json")  # open, like /health: the description is no secret
            assert doc.status_code == 200 and doc.json()["openapi"].startswith("3.")
            assert "/v2/models/{name}/infer" in doc.json()["paths"] and "/predict" in doc.json()["paths"]
            page = httpx.get(url + "/docs")
            assert page.status_code == 200 and "openapi.json" in page.text
