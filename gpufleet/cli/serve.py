"""``gpufleet serve`` and ``gpufleet load``: flags map onto ``gpufleet.server.serve`` and ``gpufleet.tools.load``.

Server flags map onto a :class:`gpufleet.server.ServerConfig` (``GPUFLEET_HTTP_WORKERS`` fills
``--http-workers``, ``GPUFLEET_TOKEN`` ``--token``). Pool flags default to ``None`` so that only flags the
user gave override the environment (``GPUFLEET_*``, ``GPU_IDS``, ``MAX_BATCH_SIZE``, ``MAX_BATCH_WAIT_TIME``,
...).
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any, Optional

import typer

from gpufleet.errors import GpufleetError

__all__ = ["register"]


def _fail(message: str, code: int = 2) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def _from_config(ctx: typer.Context, path: str) -> dict[str, Any]:
    """Every ``serve`` parameter's value: the command line's where given there, else the ``--config`` file's,
    else the flag's default. A file made on another machine gets a warning line naming what differs."""
    from gpufleet.server.config_file import machine_differences, read_config

    names = [n for n in ctx.params if n != "config"]
    try:
        options, machine = read_config(path, names)
    except GpufleetError as exc:
        _fail(str(exc))
    values = dict(ctx.params)
    for name, value in options.items():
        source = ctx.get_parameter_source(name)
        if source is None or source.name in ("DEFAULT", "DEFAULT_MAP", "ENVIRONMENT"):
            values[name] = value
    differs = machine_differences(machine) if machine else []
    if differs:
        typer.echo(f"warning: {path} was measured on another machine ({'; '.join(differs)}); "
                   "re-run `gpufleet tune` here for this machine's figures", err=True)
    return values


def register(app: typer.Typer) -> None:
    """Add the ``serve`` and ``load`` commands to the ``gpufleet`` app."""

    @app.command()
    def serve(
        ctx: typer.Context,
        model: str = typer.Argument("orientation", help="Embedded name, module:Class, path/file.py:Class or .onnx."),
        host: str = typer.Option("127.0.0.1", "--host", help="Interface to bind (loopback by default)."),
        port: int = typer.Option(8000, "--port"),
        gpus: Optional[str] = typer.Option(None, "--gpus", help='"all" or "0,2" (default: all / GPU_IDS).'),  # noqa: UP045
        cpu_devices: Optional[int] = typer.Option(None, "--cpu-devices", help="Use N CPU devices (no GPU)."),  # noqa: UP045
        workers_per_device: Optional[int] = typer.Option(None, "--workers-per-device"),  # noqa: UP045
        backend: Optional[str] = typer.Option(  # noqa: UP045
            None, "--backend", help="thread (default) | process: one process per worker, restarted when it dies | "
                                    "ray: one Ray actor per GPU of a Ray cluster (front ends stay here)"),
        ray_address: Optional[str] = typer.Option(  # noqa: UP045
            None, "--ray-address", help='--backend ray: the cluster ("auto", ray://head:10001; default: '
                                        'GPUFLEET_RAY_ADDRESS, RAY_ADDRESS, else a local Ray).'),
        max_batch_size: Optional[int] = typer.Option(  # noqa: UP045
            None, "--max-batch-size", help="0 = probe the best size (default: 64 on GPUs, 32 on CPU devices)."),
        max_wait_ms: Optional[float] = typer.Option(  # noqa: UP045
            None, "--max-wait-ms", help="Wait for a batch to fill (default: 2 on GPUs, 5 on CPU devices)."),
        balancer: Optional[str] = typer.Option(None, "--balancer", help="round-robin | queue-depth | speed"),  # noqa: UP045
        max_queue: Optional[int] = typer.Option(None, "--max-queue", help="Outstanding items before 429."),  # noqa: UP045
        timeout_s: Optional[float] = typer.Option(None, "--timeout-s", help="Per-item deadline (504 after)."),  # noqa: UP045
        token: Optional[str] = typer.Option(None, "--token", envvar="GPUFLEET_TOKEN",  # noqa: UP045
                                            help="Require Authorization: Bearer TOKEN (not on /health, live)."),
        max_body_mb: float = typer.Option(16.0, "--max-body-mb", help="Largest request body (413 beyond)."),
        drain_timeout_s: float = typer.Option(30.0, "--drain-timeout-s", help="Bound on draining at SIGTERM."),
        model_name: Optional[str] = typer.Option(None, "--model-name", help="Name under /v2/models/."),  # noqa: UP045
        log_level: str = typer.Option("info", "--log-level", help="critical | error | warning | info | debug"),
        log_format: str = typer.Option("text", "--log-format", help="text | json (one JSON object per line)"),
        http_workers: Optional[int] = typer.Option(  # noqa: UP045
            None, "--http-workers", min=1, help="HTTP front-end processes over the one engine process (default "
                                         "GPUFLEET_HTTP_WORKERS, else from the machine: min(8 x GPUs, cores // 2), "
                                         "1 on CPU devices; 1 = uvicorn in the engine process)."),
        grpc_port: Optional[int] = typer.Option(  # noqa: UP045
            None, "--grpc-port", help="Also serve KServe v2 gRPC on this port (default GPUFLEET_GRPC_PORT or off; "
                                      'needs pip install "gpufleet\\[grpc]").'),
        config: Optional[str] = typer.Option(  # noqa: UP045
            None, "--config", help="A TOML file of serve options (\\[serve] table, e.g. from `gpufleet tune`); "
                                   "flags given here win over it, it wins over the environment."),
    ) -> None:
        """Serve a model over HTTP: /predict, KServe v2 (tritonclient), /health, /stats, /metrics."""
        from gpufleet.server.config import server_config
        from gpufleet.server.run import serve as run_server

        if config is not None:
            values = _from_config(ctx, config)
            model, gpus, cpu_devices = values["model"], values["gpus"], values["cpu_devices"]
            workers_per_device, backend, ray_address = (values["workers_per_device"], values["backend"],
                                                        values["ray_address"])
            max_batch_size, max_wait_ms, balancer = values["max_batch_size"], values["max_wait_ms"], values["balancer"]
            max_queue, timeout_s, token = values["max_queue"], values["timeout_s"], values["token"]
            host, port, max_body_mb = values["host"], values["port"], values["max_body_mb"]
            drain_timeout_s, model_name = values["drain_timeout_s"], values["model_name"]
            log_level, log_format, http_workers = values["log_level"], values["log_format"], values["http_workers"]
            grpc_port = values["grpc_port"]
        if gpus is not None and cpu_devices is not None:
            _fail("--gpus and --cpu-devices exclude each other")
        pool = {"devices": gpus, "cpu_devices": cpu_devices, "workers_per_device": workers_per_device,
                "backend": backend, "ray_address": ray_address,
                "max_batch_size": max_batch_size, "max_wait_ms": max_wait_ms, "balancer": balancer,
                "max_queue": max_queue, "timeout_s": timeout_s}
        try:
            server = server_config({"host": host, "port": port, "token": token, "max_body_mb": max_body_mb,
                                    "drain_timeout_s": drain_timeout_s, "log_level": log_level,
                                    "model_name": model_name, "http_workers": http_workers, "grpc_port": grpc_port,
                                    "log_format": log_format})
            _switch_interval_from_env()
            code = run_server(model, server, **pool)
        except GpufleetError as exc:
            from gpufleet.cli.errors import describe

            _fail(describe(exc))
        raise typer.Exit(code)

    @app.command()
    def load(
        url: str = typer.Argument(..., help="Server URL (…/predict is added when the path is empty)."),
        concurrency: int = typer.Option(256, "--concurrency", "-c", help="Clients in the closed loop."),
        duration: float = typer.Option(30.0, "--duration", help="Measured seconds."),
        warmup: float = typer.Option(5.0, "--warmup", help="Seconds of unmeasured warm-up first."),
        payload: str = typer.Option("orientation", "--payload", help="orientation | jpeg224 (a JPEG: over HTTP "
                                    "as JSON {\"image\": base64}, over gRPC itself) | file:PATH"),
        burst: Optional[int] = typer.Option(None, "--burst", help="Send N requests at once instead."),  # noqa: UP045
        token: Optional[str] = typer.Option(None, "--token", envvar="GPUFLEET_TOKEN"),  # noqa: UP045
        processes: int = typer.Option(1, "--processes", help="Client processes sharing the concurrency."),
        protocol: Optional[str] = typer.Option(  # noqa: UP045
            None, "--protocol", help="http | grpc: KServe v2 ModelInfer through gpufleet.Client (default: from the "
                                     "URL; grpc://host:port is gRPC)."),
        model: Optional[str] = typer.Option(  # noqa: UP045
            None, "--model", help="Over gRPC: the served model's name (e.g. orientation)."),
        max_error_rate: float = typer.Option(
            0.0, "--max-error-rate", help="Exit 1 when more than this share of requests failed (0 = any failure)."),
        progress: Optional[bool] = typer.Option(  # noqa: UP045
            None, "--progress/--no-progress", help="A live line: req/s, errors, p99 (default: when a TTY)."),
        json_output: bool = typer.Option(False, "--json", help="Print the report as JSON."),
    ) -> None:
        """Load-test a gpufleet server: closed-loop req/s and latency percentiles, or a --burst.

        Exits 1 when requests failed (above --max-error-rate) or the server cannot be reached. Ctrl-C ends a
        closed-loop run early: the report covers what was measured until then, and the exit code is 130."""
        import sys

        from gpufleet.tools.load import LoadError, Progress, format_report, run_burst, run_load

        if concurrency < 1:
            _fail(f"--concurrency must be >= 1, got {concurrency}")
        if duration <= 0 or warmup < 0:
            _fail("--duration must be > 0 and --warmup >= 0")
        if processes < 1 or processes > concurrency:
            _fail(f"--processes must be between 1 and --concurrency ({concurrency}), got {processes}")
        if burst is not None and burst < 1:
            _fail(f"--burst must be >= 1, got {burst}")
        if not 0.0 <= max_error_rate <= 1.0:
            _fail(f"--max-error-rate must be between 0 and 1, got {max_error_rate}")
        if protocol not in (None, "http", "grpc"):
            _fail(f"--protocol must be http or grpc, got {protocol!r}")
        if protocol == "grpc" and not url.startswith("grpc://"):
            url = "grpc://" + url.split("://", 1)[-1].split("/", 1)[0]  # host:port of whatever was given
        if url.startswith("grpc://") and burst is not None:
            _fail("--burst is HTTP only; over gRPC run the closed loop")
        if not url.startswith(("http://", "https://", "grpc://")):
            _fail(f"URL must start with http://, https:// or grpc://, got {url!r}")
        show = not json_output and (progress if progress is not None else sys.stderr.isatty())
        try:
            if burst is not None:
                report = run_burst(url, burst, payload=payload, token=token)
            else:
                report = run_load(url, concurrency=concurrency, duration=duration, warmup=warmup, payload=payload,
                                  token=token, processes=processes, progress=Progress() if show else None,
                                  model=model, interruptible=True)
        except ValueError as exc:
            _fail(str(exc))
        except LoadError as exc:
            _fail(str(exc), code=1)
        typer.echo(json.dumps(report, indent=2) if json_output else format_report(report))
        if report.get("interrupted"):  # Ctrl-C: the report covers the run until then
            typer.echo(f"interrupted after {report['duration_s']:.1f}s of measuring" if report["requests"] else
                       "interrupted before the warm-up ended: nothing was measured", err=True)
            raise typer.Exit(130)
        requests = report["burst"] if report["mode"] == "burst" else report["requests"]
        failed = requests - (report["successful"] if report["mode"] == "burst" else report["ok"])
        if failed and report["error_rate"] > max_error_rate:
            typer.echo(f"error: {failed:,} of {requests:,} requests failed ({report['error_rate']:.2%}, "
                       f"above --max-error-rate {max_error_rate:.2%})", err=True)
            raise typer.Exit(1)
        if not requests:
            typer.echo("error: no request completed in the measured window", err=True)
            raise typer.Exit(1)


def _switch_interval_from_env() -> None:
    """``GPUFLEET_SWITCH_INTERVAL_MS``: the engine process's thread switch interval (Python's default is 5 ms)."""
    raw = os.environ.get("GPUFLEET_SWITCH_INTERVAL_MS", "").strip()
    if not raw:
        return
    try:
        ms = float(raw)
        if not ms > 0:
            raise ValueError
    except ValueError:
        _fail(f"GPUFLEET_SWITCH_INTERVAL_MS must be a positive number of milliseconds, got {raw!r}")
    sys.setswitchinterval(ms / 1e3)
