"""Every response carries X-Request-Id: the client's when it sent a sane one, a new one otherwise."""

from __future__ import annotations

import httpx


def test_request_id_is_echoed_or_generated(url: str) -> None:
    r = httpx.get(url + "/stats", headers={"X-Request-Id": "client-42"})
    assert r.headers["x-request-id"] == "client-42"
    a, b = httpx.get(url + "/stats"), httpx.get(url + "/stats")
    assert a.headers["x-request-id"] and a.headers["x-request-id"] != b.headers["x-request-id"]
    long = httpx.get(url + "/stats", headers={"X-Request-Id": "x" * 500})
    assert len(long.headers["x-request-id"]) == 16  # refused: too long, replaced
    err = httpx.post(url + "/predict", content=b"{", headers={"content-type": "application/json",
                                                                "X-Request-Id": "bad-1"})
    assert err.status_code == 400 and err.headers["x-request-id"] == "bad-1"
