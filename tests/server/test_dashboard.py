"""/dashboard, /monitor and the admin drain/enable endpoints; the page itself in headless Chromium under load."""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from gpufleet import Pool
from tests.server.conftest import live_server

ARTIFACTS = Path(os.environ.get("GPUFLEET_ARTIFACTS", "out/artifacts"))
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _echo(batch: list) -> list:
    time.sleep(0.002)
    return [{"echo": x} for x in batch]


@pytest.fixture()
def served() -> Iterator[str]:
    with Pool(_echo, cpu_devices=2, max_batch_size=8, max_wait_ms=1) as pool, \
            live_server(pool, model_name="echo", token="s3cret") as (url, _):
        yield url


@pytest.fixture()
def load(served: str) -> Iterator[None]:
    """Steady traffic from a few client threads while a test runs."""
    stop = threading.Event()

    def client() -> None:
        with httpx.Client(headers={"Authorization": "Bearer s3cret"}, timeout=10) as c:
            while not stop.is_set():
                c.post(served + "/predict", json={"x": 1})

    threads = [threading.Thread(target=client, daemon=True) for _ in range(4)]
    for t in threads:
        t.start()
    yield
    stop.set()
    for t in threads:
        t.join(10)


def _requests(url: str) -> dict[str, int]:
    s = httpx.get(url + "/stats", headers={"Authorization": "Bearer s3cret"}).json()
    return {g["device"]: g["total_requests"] for g in s["per_gpu_stats"]}


def test_page_monitor_and_admin_endpoints(served: str) -> None:
    page = httpx.get(served + "/dashboard")  # the page is static and open; its data needs the token
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "<canvas" in page.text and "http" not in page.text.split("<script>")[1].split("fetch(")[0]
    assert httpx.get(served + "/monitor").status_code == 401
    auth = {"Authorization": "Bearer s3cret"}
    mon = httpx.get(served + "/monitor?history=5", headers=auth).json()
    assert [r["device"] for r in mon["latest"]] == ["cpu:0", "cpu:1"] and "history" in mon
    assert httpx.post(served + "/admin/devices/cpu:1/drain").status_code == 401
    r = httpx.post(served + "/admin/devices/cpu:1/drain", headers=auth)
    assert r.status_code == 200 and r.json() == {"device": "cpu:1", "enabled": False, "workers": [1]}
    health = httpx.get(served + "/health", headers=auth).json()
    assert [b["enabled"] for b in health["backends"]] == [True, False]
    assert httpx.post(served + "/admin/devices/cpu:1/enable", headers=auth).json()["enabled"] is True
    bad = httpx.post(served + "/admin/devices/cpu:7/drain", headers=auth)
    assert bad.status_code == 400 and "cpu:7" in bad.json()["error"]
    assert httpx.post(served + "/admin/devices/cpu:1/explode", headers=auth).status_code == 404


@pytest.mark.skipif(CHROMIUM is None, reason="Debian chromium is not installed (make test installs it)")
@pytest.mark.timeout(120)
def test_dashboard_in_chromium_updates_and_drains_a_device(served: str, load: None, tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.add_init_script("localStorage.setItem('gpufleet-token', 's3cret')")
            page.goto(served + "/dashboard")
            # charts update within 3 s of loading: the first draw at load, then at least one refresh
            page.wait_for_function("window.gpufleetUpdates >= 2", timeout=3000)
            assert page.locator('[data-dev="cpu:0"] canvas').count() == 1
            assert page.locator('[data-dev="cpu:1"] canvas').count() == 1
            assert page.locator("#error").inner_text() == ""
            page.wait_for_function("Number(document.getElementById('rps').innerText.split(' ')[0]) > 0",
                                   timeout=5000)
            # drain cpu:1 from its button: its counter stops rising while cpu:0's keeps rising
            page.click('tr[data-device="cpu:1"] button.drain')
            page.wait_for_selector('tr[data-device="cpu:1"] button.enable', timeout=5000)
            time.sleep(0.5)  # items already queued on cpu:1 finish
            before = _requests(served)
            time.sleep(1.5)
            after = _requests(served)
            assert after["cpu:1"] == before["cpu:1"], (before, after)
            assert after["cpu:0"] > before["cpu:0"], (before, after)
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)
            # and back
            page.click('tr[data-device="cpu:1"] button.enable')
            page.wait_for_selector('tr[data-device="cpu:1"] button.drain', timeout=5000)
            deadline = time.monotonic() + 10
            while _requests(served)["cpu:1"] == after["cpu:1"] and time.monotonic() < deadline:
                time.sleep(0.2)
            assert _requests(served)["cpu:1"] > after["cpu:1"]
        finally:
            browser.close()
