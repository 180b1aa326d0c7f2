"""Deployment files (Dockerfile, docker-compose.yml, deploy/): no container runtime here, so check what can go
wrong without one: the YAML parses, GPU reservations have the shape Docker and Kubernetes expect, every env
name is one ``gpufleet serve`` reads, every flag exists, probes and scrapes point at routes the app serves and
at the port it listens on, and the grace period outlasts the drain."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from gpufleet.errors import ConfigError

yaml = pytest.importorskip("yaml")

ROOT = Path(__file__).resolve().parents[1]
# Read by the NVIDIA container toolkit / CUDA, not by gpufleet: allowed in deployment files.
RUNTIME_ENV = {"NVIDIA_VISIBLE_DEVICES", "NVIDIA_DRIVER_CAPABILITIES", "CUDA_VISIBLE_DEVICES", "DEBIAN_FRONTEND",
               "PYTHONUNBUFFERED", "PIP_NO_CACHE_DIR", "VIRTUAL_ENV", "PATH"}


def _load(rel: str) -> Any:
    return yaml.safe_load((ROOT / rel).read_text())


def _serve_command() -> Any:
    import typer.main

    from gpufleet.cli import app

    group = typer.main.get_command(app)
    return group.commands["serve"]  # type: ignore[attr-defined]


def _serve_flags() -> set[str]:
    return {opt for p in _serve_command().params for opt in getattr(p, "opts", []) if opt.startswith("--")}


def _reads(name: str, value: str) -> bool:
    """Whether ``gpufleet serve`` reads env var ``name`` (given ``value``): pool, server or a CLI flag's envvar."""
    from gpufleet.config import env_overrides as pool_env
    from gpufleet.server.config import env_overrides as server_env

    cli = {e for p in _serve_command().params for e in ([p.envvar] if isinstance(p.envvar, str) else p.envvar or [])}
    if name in cli:
        return True
    for read in (pool_env, server_env):
        for v in (value, "false"):  # ENABLE_BATCHING only says something when false
            try:
                if read({name: v}):
                    return True
            except ConfigError:
                return True  # read, and the value checked
    return False


def _routes() -> set[str]:
    from gpufleet import Pool
    from gpufleet.server import create_app

    with Pool(lambda batch: batch, cpu_devices=1) as pool:
        return {r.path for r in create_app(pool).routes}


def _option(args: list[str], flag: str, default: str) -> str:
    return args[args.index(flag) + 1] if flag in args else default


def _check_args(args: list[str]) -> None:
    unknown = {a for a in args if a.startswith("--")} - _serve_flags()
    assert not unknown, f"serve has no flag(s) {unknown}"


def _check_env(env: dict[str, str], where: str) -> None:
    for name, value in env.items():
        assert name in RUNTIME_ENV or _reads(name, str(value)), f"{where}: gpufleet serve does not read {name}"


def _dockerfile() -> list[tuple[str, str]]:
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_dockerfile_cuda_base_non_root_healthcheck_entrypoint_and_env() -> None:
    import json

    lines = _dockerfile()
    first = dict(lines)
    assert re.match(r"nvidia/cuda:[\d.]+-(cudnn-)?runtime-", first["FROM"]), first["FROM"]
    assert first["USER"] not in ("root", "0")
    assert "/v2/health/ready" in first["HEALTHCHECK"] and "GPUFLEET_TOKEN" in first["HEALTHCHECK"]
    assert json.loads(first["ENTRYPOINT"]) == ["gpufleet", "serve"]
    args = json.loads(first["CMD"])
    _check_args(args)
    assert _option(args, "--host", "127.0.0.1") == "0.0.0.0"
    port = _option(args, "--port", "8000")
    assert f"127.0.0.1:{port}/v2/health/ready" in first["HEALTHCHECK"]
    env: dict[str, str] = {}
    for word, rest in lines:
        if word == "ENV":
            env.update(dict(re.findall(r"(\w+)=(\S+)", rest)))
    _check_env(env, "Dockerfile")
    exposed = {p for word, rest in lines if word == "EXPOSE" for p in rest.split()}
    assert {port, env["GPUFLEET_GRPC_PORT"]} <= exposed
    assert "/v2/health/ready" in _routes()


def test_compose_reserves_gpus_and_prometheus_scrapes_metrics() -> None:
    compose = _load("docker-compose.yml")
    svc = compose["services"]["gpufleet"]
    (dev,) = svc["deploy"]["resources"]["reservations"]["devices"]
    assert dev["driver"] == "nvidia" and dev["capabilities"] == ["gpu"]
    assert all(isinstance(d, str) for d in dev["device_ids"]), "compose wants device_ids as strings"
    env = dict(e.split("=", 1) for e in svc["environment"])
    _check_env({k: v.split("#")[0].strip() for k, v in env.items()}, "docker-compose.yml")
    assert len(env["GPU_IDS"].split(",")) == len(dev["device_ids"])
    _check_args(svc["command"])
    http = _option(svc["command"], "--port", "8000")
    published = {p.split(":")[1] for p in svc["ports"]}
    assert {http, env["GPUFLEET_GRPC_PORT"]} <= published
    prom = compose["services"]["prometheus"]
    src = prom["volumes"][0].split(":")[0]
    scrape = yaml.safe_load((ROOT / src).read_text())["scrape_configs"][0]
    assert scrape["metrics_path"] == "/metrics" and "/metrics" in _routes()
    assert scrape["static_configs"][0]["targets"] == [f"gpufleet:{http}"]
    grace = int(svc["stop_grace_period"].rstrip("s"))
    assert grace > float(_option(svc["command"], "--drain-timeout-s", "30"))


def test_k8s_gpus_probes_grace_and_scrape_annotations() -> None:
    deploy = _load("deploy/k8s/deployment.yaml")
    service = _load("deploy/k8s/service.yaml")
    pod = deploy["spec"]["template"]
    (c,) = pod["spec"]["containers"]
    assert int(c["resources"]["limits"]["nvidia.com/gpu"]) >= 1
    _check_args(c["args"])
    _check_env({e["name"]: e["value"] for e in c["env"]}, "deployment.yaml")
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert str(ports["http"]) == _option(c["args"], "--port", "8000")
    assert str(ports["grpc"]) == next(e["value"] for e in c["env"] if e["name"] == "GPUFLEET_GRPC_PORT")
    routes = _routes()
    for probe, path in (("readinessProbe", "/v2/health/ready"), ("livenessProbe", "/v2/health/live"),
                        ("startupProbe", "/v2/health/live")):
        get = c[probe]["httpGet"]
        assert get["path"] == path and path in routes and get["port"] in ports
    drain = float(_option(c["args"], "--drain-timeout-s", "30"))
    pre_stop = c["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    assert pod["spec"]["terminationGracePeriodSeconds"] > drain + float(pre_stop[1])
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    for meta in (pod["metadata"], service["metadata"]):
        ann = meta["annotations"]
        assert ann["prometheus.io/scrape"] == "true" and ann["prometheus.io/path"] in routes
        assert int(ann["prometheus.io/port"]) == ports["http"]
    assert service["spec"]["selector"] == deploy["spec"]["selector"]["matchLabels"]
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= set(ports)


def test_the_env_check_catches_a_name_serve_does_not_read() -> None:
    assert _reads("MAX_BATCH_SIZE", "8") and _reads("GPU_IDS", "0,1") and _reads("GPUFLEET_TOKEN", "x")
    assert _reads("ENABLE_BATCHING", "true") and _reads("GPUFLEET_GRPC_PORT", "8001")
    assert not _reads("MAX_BATCHSIZE", "8") and not _reads("GPUFLEET_PORT", "8000")


def test_grafana_dashboard_queries_metrics_the_server_exports() -> None:
    """deploy/grafana/gpufleet.json parses, and every gpufleet_* / process_* series a panel queries is one that
    /metrics exports (histograms as _bucket, counters as _total)."""
    import json

    dash = json.loads((ROOT / "deploy" / "grafana" / "gpufleet.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    assert len(exprs) >= 10
    source = (ROOT / "gpufleet" / "server" / "metrics.py").read_text()
    exported = set(re.findall(r'"(gpufleet_[a-z_]+)"', source))
    for expr in exprs:
        for name in re.findall(r"\b(gpufleet_[a-z_]+|process_[a-z_]+)", expr):
            base = re.sub(r"_(bucket|total)$", "", name)
            assert base in exported or name.startswith("process_"), f"{name} in {expr!r} is not exported"
