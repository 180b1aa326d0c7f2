"""docs/configuration.md is generated (``python -m gpufleet.tools.confdoc``): the committed page matches the
code, and every environment variable it lists really sets the field it names."""

from __future__ import annotations

import pytest

from gpufleet import config as pool_config
from gpufleet.server import config as server_config
from gpufleet.tools import confdoc

# A value each field accepts, to probe the variables with.
SAMPLES = {"devices": "0", "cpu_devices": "2", "workers_per_device": "2", "backend": "process",
           "ray_address": "auto", "max_batch_size": "7", "max_wait_ms": "3", "balancer": "speed", "max_queue": "9",
           "timeout_s": "4", "http_workers": "3", "grpc_port": "8001", "heartbeat_timeout_s": "6",
           "spare_process": "1"}


def test_committed_page_is_current() -> None:
    assert confdoc.PAGE.read_text() == confdoc.render(), "stale: run python -m gpufleet.tools.confdoc"


@pytest.mark.parametrize("module", [pool_config, server_config], ids=["pool", "server"])
def test_every_listed_variable_sets_its_field(module) -> None:
    for field, names in module.ENV_NAMES.items():
        for name in names:
            value = "false" if name.endswith("ENABLE_BATCHING") else SAMPLES[field]
            got = module.env_overrides({name: value})
            assert field in got, f"{name} does not set {field}"
