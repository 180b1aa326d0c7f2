"""Log set-up: text or JSON lines, request ids from the context."""

from __future__ import annotations

import json
import logging

import pytest

from gpufleet.logs import REQUEST_ID, configure


@pytest.fixture(autouse=True)
def _restore_logging():
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_json_lines_carry_the_request_id(capsys: pytest.CaptureFixture[str]) -> None:
    configure("info", "json")
    log = logging.getLogger("gpufleet.test")
    token = REQUEST_ID.set("abc123")
    try:
        log.info("served %d items", 3)
    finally:
        REQUEST_ID.reset(token)
    log.debug("hidden at info level")
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("failed")
    lines = [json.loads(line) for line in capsys.readouterr().err.strip().splitlines()]
    assert lines[0]["message"] == "served 3 items" and lines[0]["request_id"] == "abc123"
    assert lines[0]["level"] == "info" and lines[0]["logger"] == "gpufleet.test" and lines[0]["ts"].endswith("Z")
    assert len(lines) == 2 and "request_id" not in lines[1] and "ValueError: boom" in lines[1]["exc"]


def test_text_format_and_bad_format(capsys: pytest.CaptureFixture[str]) -> None:
    configure("warning", "text", prefix="[x] ")
    logging.getLogger("gpufleet.t").warning("careful")
    assert "WARNING [x] gpufleet.t: careful" in capsys.readouterr().err
    with pytest.raises(ValueError, match="text, json"):
        configure("info", "yaml")

def test_records_go_to_the_current_stderr_after_it_was_swapped_and_closed(monkeypatch: pytest.MonkeyPatch) -> None:
    import io

    first = io.StringIO()
    monkeypatch.setattr("sys.stderr", first)
    configure("info", "text")
    first.close()  # what a test runner does with the stream it captured into
    second = io.StringIO()
    monkeypatch.setattr("sys.stderr", second)
    logging.getLogger("gpufleet.test").info("after the swap")
    assert "after the swap" in second.getvalue() and "Logging error" not in second.getvalue()
