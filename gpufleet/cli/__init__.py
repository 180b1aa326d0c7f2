"""The ``gpufleet`` command line (typer): gpus, demo, bench. Thin: it maps flags onto the library."""

from __future__ import annotations

import json
import logging
import sys
from importlib import import_module
from typing import Any, Optional

import typer
from typer.core import TyperGroup

try:  # typer >= 0.25 vendors click as typer._click and re-exports only a few of its exceptions
    from typer._click import exceptions as _click
except ImportError:  # pragma: no cover - typer on the real click
    from click import exceptions as _click  # type: ignore[no-redef]

from gpufleet.cli.errors import describe
from gpufleet.errors import GpufleetError

__all__ = ["app", "main"]


class _Group(TyperGroup):
    """The ``gpufleet`` group: every mistake, click's own parse errors included, is one ``error:`` line on
    stderr and exit 2 (typer would draw a boxed panel for those and print plain lines for ours)."""

    def main(self, args: Any = None, prog_name: str | None = None, complete_var: str | None = None,
             standalone_mode: bool = True, **extra: Any) -> Any:
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
            code = rv if isinstance(rv, int) else 0
        except _click.UsageError as exc:
            hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
            typer.echo(f"error: {exc.format_message()}{hint}", err=True)
            code = 2
        except _click.ClickException as exc:
            typer.echo(f"error: {exc.format_message()}", err=True)
            code = exc.exit_code
        except typer.Abort:  # typer's vendored click does not re-export Abort in its exceptions module
            typer.echo("interrupted", err=True)
            code = 130
        except GpufleetError as exc:
            typer.echo(f"error: {describe(exc)}", err=True)
            code = 2
        if standalone_mode:
            sys.exit(code)
        return code

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        # The command list shows each command's first docstring paragraph; typer keeps its line breaks there
        # ("check\n the detections"): give it the paragraph as one line.
        cmd = super().get_command(ctx, cmd_name)
        if cmd is not None and not cmd.short_help and cmd.help:
            cmd.short_help = " ".join(cmd.help.split("\n\n", 1)[0].split())
        return cmd


app = typer.Typer(cls=_Group, add_completion=False, no_args_is_help=False, invoke_without_command=True,
                  pretty_exceptions_enable=False,
                  help="Run any model on every GPU of a machine as if it were one fast device.")


def _fail(message: str, code: int = 2) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def _version(value: bool) -> None:
    if value:
        from gpufleet import __version__

        typer.echo(f"gpufleet {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    ctx: typer.Context,
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log at INFO level."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the version and exit."),
) -> None:
    if ctx.invoked_subcommand is None:  # bare ``gpufleet``: the help, and success (it is what was asked)
        typer.echo(ctx.get_help())
        raise typer.Exit(0)
    from gpufleet.logs import StderrHandler

    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, handlers=[StderrHandler()],
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


@app.command()
def gpus(
    json_output: bool = typer.Option(False, "--json", help="Machine-readable JSON instead of a table."),
    cpu_devices: Optional[int] = typer.Option(None, "--cpu-devices", help="Simulate N CPU devices."),  # noqa: UP045
    ray: bool = typer.Option(False, "--ray", help="List the GPUs of a Ray cluster, node by node."),
    ray_address: Optional[str] = typer.Option(  # noqa: UP045
        None, "--ray-address", envvar="GPUFLEET_RAY_ADDRESS", help='With --ray: "auto" or ray://head:10001.'),
) -> None:
    """List the devices gpufleet would use: architecture, precision, utilisation, MPS (or a Ray cluster's GPUs)."""
    from gpufleet.cli.gpus import gpus as show
    from gpufleet.cli.gpus import ray_gpus

    if ray:
        raise typer.Exit(ray_gpus(json_output=json_output, address=ray_address or "auto"))
    raise typer.Exit(show(json_output=json_output, cpu_devices=cpu_devices))


@app.command()
def demo(
    out: str = typer.Option("out/demo", "--out", help="Folder for input/annotated mp4, JSONL, summary."),
    frames: int = typer.Option(120, "--frames", min=1, help="Number of frames to render."),
    gpus: Optional[str] = typer.Option(None, "--gpus", help='Devices: "all", "0,2" (default: all / GPU_IDS).'),  # noqa: UP045
    cpu_devices: Optional[int] = typer.Option(None, "--cpu-devices", min=1, help="Use N CPU devices."),  # noqa: UP045
    runtime: str = typer.Option("auto", "--runtime", help="auto | onnx | torch"),
    max_batch_size: int = typer.Option(16, "--max-batch-size", min=1),
    decoder: str = typer.Option("auto", "--decoder", help="auto | nvdec | cpu"),
    json_output: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """The main job: render a moving-text video, run the video pipeline with textdet on every device, check
    the detections against ground truth."""
    from gpufleet.tools.demo import run_demo

    try:
        summary = run_demo(out, frames=frames, devices=gpus, cpu_devices=cpu_devices, runtime=runtime,
                           max_batch_size=max_batch_size, decoder=decoder)
    except GpufleetError as exc:
        _fail(describe(exc))
    if json_output:
        typer.echo(json.dumps(summary, indent=2))
        raise typer.Exit(summary["exit_code"])
    from rich.console import Console

    from gpufleet.cli.video import print_summary

    console = Console()
    console.print(f"[bold]gpufleet demo[/]: textdet on {summary['frames']} frames {summary['resolution']} "
                  f"({summary['runtime']} runtime, decoder {', '.join(summary['decoders'])}) on "
                  f"{', '.join(summary['devices'])}")
    print_summary(summary, console)
    console.print(f"wrote {summary['jsonl']}" + (f" and {summary['video']}" if summary["video"] else ""))
    raise typer.Exit(summary["exit_code"])


@app.command()
def bench(
    model: str = typer.Option("resnet50", "--model", help="resnet50, resnet18 (or another torchvision "
                                                       "classifier, random weights), orientation or textdet."),
    batch_sizes: str = typer.Option("1,8,32,64,128,256", "--batch-sizes", help="Comma-separated batch sizes."),
    precision: str = typer.Option("auto", "--precision", help="auto | fp32 | fp16 | bf16"),
    image_size: int = typer.Option(224, "--image-size", min=16),
    seconds: float = typer.Option(5.0, "--seconds", min=0.1, help="Time per measurement."),
    gpus: Optional[str] = typer.Option(None, "--gpus", help='Devices for the pooled run: "all", "0", "0,1".'),  # noqa: UP045
    cpu_devices: Optional[int] = typer.Option(None, "--cpu-devices", min=1),  # noqa: UP045
    workers_per_device: int = typer.Option(1, "--workers-per-device", min=1),
    raw: bool = typer.Option(True, "--raw/--no-raw", help="Measure the model's own ceiling."),
    pool: bool = typer.Option(True, "--pool/--no-pool", help="Measure the same model through Pool.map."),
    cuda_graphs: bool = typer.Option(False, "--cuda-graphs", help="Pool: replay CUDA graphs per batch bucket."),
    backend: str = typer.Option("thread", "--backend", help="Pool workers: thread | process | ray (the GPUs of "
                                "the Ray cluster RAY_ADDRESS points at, or a local one)."),
    scale: bool = typer.Option(False, "--scale", help="Pool on the first 1, 2, 4 ... selected devices, side by "
                                                      "side, with the speedup over one device."),
    compile_: bool = typer.Option(False, "--compile", help="torch.compile the module (raw and pool)."),
    switch_interval_ms: Optional[float] = typer.Option(  # noqa: UP045
        None, "--switch-interval-ms", help="Set Python's thread switch interval (GIL hand-over) for this run."),
    http: bool = typer.Option(False, "--http", help="Also serve the model (gpufleet serve on 127.0.0.1) and load "
                                                    "it over HTTP: JSON + base64 JPEG, closed loop."),
    http_concurrency: int = typer.Option(64, "--http-concurrency", min=1, help="Clients in flight for --http."),
    http_workers: int = typer.Option(1, "--http-workers", min=1, help="HTTP front-end processes for --http."),
    http_clients: int = typer.Option(1, "--http-clients", min=1,
                                     help="Load-generator processes for --http (one core caps ~8k req/s)."),
    progress: Optional[bool] = typer.Option(  # noqa: UP045
        None, "--progress/--no-progress", help="Say what is being measured (default: when a TTY; never with --json)."),
    json_output: bool = typer.Option(False, "--json", help="JSON records instead of a table."),
) -> None:
    """The model's own ceiling beside the same model through Pool.map, and served over HTTP with --http, in one run."""
    from gpufleet.tools.bench import BenchSpec, print_report, run_bench

    try:
        sizes = [int(s) for s in batch_sizes.split(",") if s.strip()]
        if not sizes or min(sizes) < 1:
            raise ValueError
    except ValueError:
        _fail(f"--batch-sizes must be positive integers separated by commas, got {batch_sizes!r}")
    spec = BenchSpec(model=model, batch_sizes=tuple(sizes), precision=precision, image_size=image_size,
                     seconds=seconds, devices=gpus, cpu_devices=cpu_devices, workers_per_device=workers_per_device,
                     raw=raw, pool=pool, cuda_graphs=cuda_graphs, compile=compile_, backend=backend, scale=scale,
                     http=http, http_concurrency=http_concurrency, http_workers=http_workers,
                     http_clients=http_clients)
    if http and http_clients > http_concurrency:
        _fail(f"--http-clients ({http_clients}) must not exceed --http-concurrency ({http_concurrency})")
    if switch_interval_ms is not None:
        if switch_interval_ms <= 0:
            _fail("--switch-interval-ms must be > 0")
        sys.setswitchinterval(switch_interval_ms / 1000.0)
    show = not json_output and (progress if progress is not None else sys.stderr.isatty())
    try:
        with _Steps(show) as on_step:
            report = run_bench(spec, on_step=on_step)
    except GpufleetError as exc:
        _fail(describe(exc))
    if json_output:
        typer.echo(json.dumps(report, indent=2))
    else:
        print_report(report)
    if report.get("interrupted"):
        typer.echo(f"interrupted: {len(report['rows'])} of {len(sizes)} batch size(s) measured", err=True)
        raise typer.Exit(130)


class _Steps:
    """Progress of a long measurement on stderr: a spinner with the current step and the time so far on a
    TTY, one line per step otherwise; nothing when off."""

    def __init__(self, show: bool) -> None:
        self.show = show
        self.status: Any = None
        self.t0 = 0.0

    def __enter__(self) -> Any:
        import time

        self.t0 = time.perf_counter()
        if self.show and sys.stderr.isatty():
            from rich.console import Console

            self.status = Console(stderr=True).status("starting")
            self.status.start()
        return self.step

    def step(self, what: str) -> None:
        import time

        if not self.show:
            return
        line = f"bench [{time.perf_counter() - self.t0:5.1f}s] {what}"
        if self.status is not None:
            self.status.update(line)
        else:
            typer.echo(line, err=True)

    def __exit__(self, *exc: object) -> None:
        if self.status is not None:
            self.status.stop()


# Commands that live in their own modules, each with a ``register(app)``: serve and load, top, video, mps, tune.
for _name in ("serve", "top", "video", "mps", "tune"):
    import_module(f"gpufleet.cli.{_name}").register(app)


def main() -> None:
    """Console entry point (errors become one ``error:`` line and exit 2 in :class:`_Group`)."""
    app(prog_name="gpufleet")  # also under ``python -m gpufleet``: the name users type in the hints


if __name__ == "__main__":
    main()
