"""Every 5xx leaves one trace in the log: request id, error, the model's traceback; alike failures counted."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import httpx
import pytest

from gpufleet import Pool
from gpufleet.engine.wire import RemoteTraceback
from gpufleet.errors import WorkerError
from gpufleet.logs import JsonFormatter
from gpufleet.server.failures import FailureLog, kind_of
from tests.server.conftest import live_server
from tests.server.slow_model import Failing

LOGGER = "gpufleet.server.failures"


def _model_error() -> WorkerError:
    try:
        raise RuntimeError("boom")
    except RuntimeError as exc:
        err = WorkerError("m: predict failed: RuntimeError: boom")
        err.__cause__ = exc
        return err


def test_first_of_a_kind_in_full_then_counted(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    flog = FailureLog(window_s=60, clock=lambda: now[0])
    caplog.set_level(logging.INFO, LOGGER)
    err = _model_error()
    for i in range(4):
        flog.failed("POST", "/predict", 500, 0.003, f"r{i}", err)
    full = [r for r in caplog.records if r.name == LOGGER]
    assert len(full) == 1 and full[0].request_id == "r0" and full[0].exc_info is not None
    assert "POST /predict -> 500" in full[0].getMessage() and "(request r0)" in full[0].getMessage()
    now[0] = 61.0  # the window closed: the count comes out, then this one in full again
    flog.failed("POST", "/predict", 500, 0.003, "r9", err)
    lines = [r.getMessage() for r in caplog.records if r.name == LOGGER]
    assert len(lines) == 3 and lines[1].startswith("3 more like it in the last minute")
    assert "last request r3" in lines[1]
    assert "(request r9)" in lines[2]


def test_kinds_differ_by_place_and_remote_tracebacks_are_read() -> None:
    a, b = _model_error(), _model_error()
    assert kind_of(a) == kind_of(b) and kind_of(a)[1] == "RuntimeError"
    remote = WorkerError("ValueError: bad")
    remote.__cause__ = RemoteTraceback('Traceback (most recent call last):\n  File "/m/model.py", line 7, in predict\n'
                                       '    raise ValueError("bad")\nValueError: bad\n')
    assert kind_of(remote) == ("WorkerError", "ValueError", "/m/model.py:7")


@pytest.fixture(scope="module")
def failing_url() -> Iterator[str]:
    with Pool(Failing, cpu_devices=1, max_batch_size=1) as pool, live_server(pool, model_name="failing") as (url, _):
        yield url


def test_failing_model_logs_request_id_error_and_traceback(failing_url: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, LOGGER)
    r = httpx.post(failing_url + "/predict", json="boom", headers={"X-Request-Id": "trace-me-1"})
    assert r.status_code == 500 and r.headers["x-request-id"] == "trace-me-1"
    for i in range(3):
        r = httpx.post(failing_url + "/predict", json="boom", headers={"X-Request-Id": f"more-{i}"})
        assert r.status_code == 500
    assert httpx.post(failing_url + "/predict", json="fine").status_code == 200
    records = [r for r in caplog.records if r.name == LOGGER]
    assert len(records) == 1, [r.getMessage() for r in records]  # the next three are counted, not printed
    rec = records[0]
    text = logging.Formatter("%(message)s").format(rec)
    assert "(request trace-me-1)" in text and "RuntimeError: boom" in text
    assert "slow_model.py" in text and 'raise RuntimeError("boom")' in text  # the model's file and line
    line = json.loads(JsonFormatter().format(rec))
    assert line["request_id"] == "trace-me-1" and line["status"] == 500 and "RuntimeError: boom" in line["error"]
    assert "slow_model.py" in line["exc"]
