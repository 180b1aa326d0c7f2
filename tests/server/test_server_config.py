"""ServerConfig: defaults, validation on creation, env mapping, and what it hands to create_app and uvicorn."""

from __future__ import annotations

import dataclasses

import pytest

from gpufleet.errors import ConfigError
from gpufleet.server import ServerConfig, create_app
from gpufleet.server.config import server_config
from gpufleet.server.uvicorn_server import DrainingServer, uvicorn_config


def test_defaults_bind_loopback_and_are_frozen() -> None:
    cfg = ServerConfig()
    assert (cfg.host, cfg.port, cfg.token, cfg.http_workers, cfg.log_level, cfg.log_format) == (
        "127.0.0.1", 8000, None, 0, "info", "text")  # 0: from the machine
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.port = 1  # type: ignore[misc]
    with pytest.raises(TypeError):
        ServerConfig("0.0.0.0")  # type: ignore[misc]  # keyword-only


@pytest.mark.parametrize("bad", [{"port": 70000}, {"port": -1}, {"max_body_mb": 0}, {"drain_timeout_s": -1},
                                 {"request_timeout_s": 0}, {"http_workers": -1}, {"log_level": "loud"},
                                 {"log_format": "xml"}])
def test_bad_values_raise_config_error(bad: dict) -> None:
    with pytest.raises(ConfigError):
        ServerConfig(**bad)


def test_log_level_is_case_insensitive() -> None:
    assert ServerConfig(log_level="WARNING").log_level == "warning"


def test_options_win_over_env_and_none_is_not_given() -> None:
    env = {"GPUFLEET_HTTP_WORKERS": "4"}
    assert server_config({"port": 9000, "token": None}, env) == ServerConfig(port=9000, http_workers=4)
    assert server_config({"http_workers": 2}, env).http_workers == 2
    with pytest.raises(ConfigError, match="unknown server option"):
        server_config({"max_batch_size": 8}, {})


def test_app_and_uvicorn_options_come_from_the_config() -> None:
    cfg = ServerConfig(port=0, token="t", max_body_mb=2, drain_timeout_s=0.2, model_name="m", log_format="json")
    app = create_app(object(), **cfg.app_options())  # type: ignore[arg-type]
    state = app.state.gpufleet
    assert (state.model_name, state.token, state.max_body_bytes) == ("m", b"t", 2 * 1024 * 1024)
    uv = uvicorn_config(app, cfg)
    assert (uv.host, uv.port, uv.access_log, uv.lifespan, uv.log_config) == ("127.0.0.1", 0, False, "off", None)
    assert uv.timeout_graceful_shutdown == 1  # at least a second
    server = DrainingServer(app, cfg)
    assert server.state is state and server.drain_timeout_s == 0.2


def test_machine_defaults_rule() -> None:
    from gpufleet.server.config import machine_defaults

    assert machine_defaults(gpus=0, cores=64) == {"http_workers": 1}  # CPU devices: the workers need the cores
    assert machine_defaults(gpus=1, cores=2)["http_workers"] == 1
    assert machine_defaults(gpus=1, cores=16) == {"http_workers": 8, "max_batch_size": 64, "max_wait_ms": 2.0}
    assert machine_defaults(gpus=1, cores=64)["http_workers"] == 8
    assert machine_defaults(gpus=2, cores=32)["http_workers"] == 16
    assert machine_defaults(gpus=8, cores=12)["http_workers"] == 6
    assert machine_defaults(gpus=1)["http_workers"] >= 1  # this machine's cores


def test_serve_settings_flags_and_env_win_over_the_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    from gpufleet.server import run

    monkeypatch.setattr(run, "_gpu_count", lambda config: 1)  # as on a GPU machine (the rule itself is above)
    for name in ("GPUFLEET_MAX_BATCH_SIZE", "MAX_BATCH_SIZE", "GPUFLEET_MAX_WAIT_MS", "MAX_BATCH_WAIT_TIME",
                 "ENABLE_BATCHING", "GPUFLEET_HTTP_WORKERS"):
        monkeypatch.delenv(name, raising=False)
    pool, cfg = run._machine_settings({"max_batch_size": None}, ServerConfig())
    assert (pool.max_batch_size, pool.max_wait_ms) == (64, 2.0) and cfg.http_workers >= 1
    pool, cfg = run._machine_settings({"max_batch_size": 16}, ServerConfig(http_workers=3))
    assert (pool.max_batch_size, pool.max_wait_ms, cfg.http_workers) == (16, 2.0, 3)
    monkeypatch.setenv("MAX_BATCH_WAIT_TIME", "0.004")
    pool, _ = run._machine_settings({}, ServerConfig())
    assert (pool.max_batch_size, pool.max_wait_ms) == (64, 4.0)
    monkeypatch.setattr(run, "_gpu_count", lambda config: 0)  # CPU devices: one front end, the pool's own batching
    pool, cfg = run._machine_settings({}, ServerConfig())
    assert (pool.max_batch_size, pool.max_wait_ms, cfg.http_workers) == (32, 4.0, 1)
