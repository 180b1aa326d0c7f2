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
        "127.0.0.1", 8000, None, 1, "info", "text")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.port = 1  # type: ignore[misc]
    with pytest.raises(TypeError):
        ServerConfig("0.0.0.0")  # type: ignore[misc]  # keyword-only


@pytest.mark.parametrize("bad", [{"port": 70000}, {"port": -1}, {"max_body_mb": 0}, {"drain_timeout_s": -1},
                                 {"request_timeout_s": 0}, {"http_workers": 0}, {"log_level": "loud"},
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
