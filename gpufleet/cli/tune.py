"""``gpufleet tune``: flags map onto :func:`gpufleet.tools.tune.tune`; the result goes to a ``serve --config`` file."""

from __future__ import annotations

import json
import sys
from typing import Any, Optional

import typer

from gpufleet.errors import GpufleetError

__all__ = ["register"]


def _fail(message: str, code: int = 2) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def _ints(text: str, flag: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        _fail(f"{flag} must be comma-separated integers, got {text!r}")
    if not values or min(values) < 1:
        _fail(f"{flag} must list integers >= 1, got {text!r}")
    return values


def _floats(text: str, flag: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        _fail(f"{flag} must be comma-separated numbers, got {text!r}")
    if not values or min(values) < 0:
        _fail(f"{flag} must list numbers >= 0, got {text!r}")
    return values


def _table(trials: list[Any], slo: float, live: dict[str, Any] | None = None) -> Any:
    from rich.table import Table

    table = Table(title=f"gpufleet tune: p99 target {slo:g} ms", expand=False)
    table.add_column("config", no_wrap=True)
    for col in ("c", "req/s", "p50 ms", "p99 ms", "failed", "GPU %", "GPU GB", ""):
        table.add_column(col, justify="left" if col in ("config", "") else "right")

    def rows(label: str, measurements: list[Any], note: str = "") -> None:
        for i, m in enumerate(measurements):
            table.add_row(label if i == 0 else "", str(m.concurrency), f"{m.rps:,.0f}", f"{m.p50_ms:.1f}",
                          f"{m.p99_ms:.1f}", str(m.failed), "-" if m.gpu_util is None else f"{m.gpu_util:.0f}",
                          "-" if m.gpu_mem_gb is None else f"{m.gpu_mem_gb:.1f}", "ok" if m.meets else "miss")
        if not measurements:
            table.add_row(label, "", "", "", "", "", "", "", note)

    for t in trials:
        rows(t.candidate.label(), t.measurements, f"failed: {t.error}" if t.error else "")
    if live is not None:
        rows(live["candidate"].label() + " (running)", live["measurements"])
    return table


def register(app: typer.Typer) -> None:
    """Add the ``tune`` command to the ``gpufleet`` app."""

    @app.command()
    def tune(
        model: str = typer.Argument(..., help="Embedded name, module:Class, path/file.py:Class or .onnx."),
        slo_p99_ms: float = typer.Option(..., "--slo-p99-ms", help="The p99 latency target, in ms."),
        payload: str = typer.Option("jpeg224", "--payload", help="orientation | jpeg224 | file:PATH"),
        gpus: Optional[str] = typer.Option(None, "--gpus", help='"all" or "0,2" (default: all / GPU_IDS).'),  # noqa: UP045
        cpu_devices: Optional[int] = typer.Option(None, "--cpu-devices", help="Use N CPU devices (no GPU)."),  # noqa: UP045
        budget_s: float = typer.Option(300.0, "--budget-s", help="Stop starting trials after this many seconds."),
        out: str = typer.Option("tuned.toml", "--out", help="Write the chosen config here (serve --config)."),
        json_output: bool = typer.Option(False, "--json", help="Print the result as JSON."),
        http: bool = typer.Option(True, "--http/--no-http",
                                  help="Measure through a real `gpufleet serve` (default) or an in-process Pool."),
        concurrency: str = typer.Option("8,32,128,256", "--concurrency", help="Closed-loop clients, rising."),
        batch_sizes: str = typer.Option("8,16,32,64,128,256", "--batch-sizes", help="Max batch sizes, doubling."),
        waits_ms: str = typer.Option("2,0.5,5,10", "--waits-ms", help="Max waits (ms); the first is the start."),
        duration_s: float = typer.Option(3.0, "--duration-s", help="Measured seconds per concurrency level."),
        warmup_s: float = typer.Option(1.0, "--warmup-s", help="Unmeasured seconds before each level."),
        backends: str = typer.Option("thread,process", "--backends", help="Worker backends tried (thread, process)."),
        max_workers_per_device: int = typer.Option(2, "--max-workers-per-device", help="Most workers per GPU tried."),
        max_http_workers: Optional[int] = typer.Option(  # noqa: UP045
            None, "--max-http-workers", help="Largest front-end count tried (default: half the cores)."),
        load_processes: Optional[int] = typer.Option(  # noqa: UP045
            None, "--load-processes", help="Client processes of the load (default: from the concurrency)."),
    ) -> None:
        """Find the fastest serving config whose p99 meets --slo-p99-ms here, and write it for serve --config.

        Exits 1 when no configuration met the target. Ctrl-C ends the search early: the best configuration of the
        trials finished until then is written, and the exit code is 130."""
        from gpufleet.server.config_file import write_config
        from gpufleet.tools.tune import TuneSpec
        from gpufleet.tools.tune import tune as run_tune

        if gpus is not None and cpu_devices is not None:
            _fail("--gpus and --cpu-devices exclude each other")
        try:
            spec = TuneSpec(model=model, slo_p99_ms=slo_p99_ms, payload=payload, devices=gpus,
                            cpu_devices=cpu_devices, budget_s=budget_s, concurrency=_ints(concurrency, "--concurrency"),
                            duration_s=duration_s, warmup_s=warmup_s, http=http,
                            batch_sizes=_ints(batch_sizes, "--batch-sizes"), waits_ms=_floats(waits_ms, "--waits-ms"),
                            max_http_workers=max_http_workers, load_processes=load_processes,
                            backends=tuple(b.strip() for b in backends.split(",") if b.strip()),
                            max_workers_per_device=max_workers_per_device)
        except GpufleetError as exc:
            _fail(str(exc))
        live_view = not json_output and sys.stderr.isatty()
        state: dict[str, Any] = {"trials": [], "running": None}

        def plain_measure(cand: Any, m: Any) -> None:
            typer.echo(f"  {cand.label()}: c={m.concurrency} {m.rps:,.0f} req/s p99 {m.p99_ms:.1f} ms "
                       f"{'ok' if m.meets else 'miss'}", err=True)

        def plain_trial(t: Any) -> None:
            if t.error:
                typer.echo(f"  {t.candidate.label()}: failed: {t.error}", err=True)

        try:
            if live_view:
                from rich.console import Console
                from rich.live import Live

                with Live(_table([], slo_p99_ms), console=Console(stderr=True), refresh_per_second=4) as live:
                    def on_measure(cand: Any, m: Any) -> None:
                        running = state["running"]
                        if running is None or running["candidate"] != cand:
                            running = state["running"] = {"candidate": cand, "measurements": []}
                        running["measurements"].append(m)
                        live.update(_table(state["trials"], slo_p99_ms, running))

                    def on_trial(t: Any) -> None:
                        state["trials"].append(t)
                        state["running"] = None
                        live.update(_table(state["trials"], slo_p99_ms))

                    result = run_tune(spec, on_trial=on_trial, on_measure=on_measure)
            else:
                typer.echo(f"tuning {model} for p99 <= {slo_p99_ms:g} ms within {budget_s:g} s ...", err=True)
                result = run_tune(spec, on_trial=plain_trial, on_measure=plain_measure)
        except GpufleetError as exc:
            _fail(str(exc))
        if result.best is not None:
            best = result.best.best
            assert best is not None
            write_config(out, result.serve_options(), machine=result.machine,
                         tune={"slo_p99_ms": slo_p99_ms, "payload": payload, "rps": best.rps,
                               "p99_ms": best.p99_ms, "concurrency": best.concurrency},
                         comment=f"gpufleet tune {model} --slo-p99-ms {slo_p99_ms:g}: {best.rps:,.0f} req/s at "
                                 f"c={best.concurrency}, p99 {best.p99_ms:.1f} ms\n"
                                 f"serve it: gpufleet serve --config {out}")
        if json_output:
            typer.echo(json.dumps({**result.as_dict(), "out": out if result.best else None}, indent=2))
        else:
            from rich.console import Console

            console = Console()
            if not live_view:
                console.print(_table(result.trials, slo_p99_ms))
            for line in result.not_tried:
                console.print(f"not tried: {line}", highlight=False)
            if result.best is not None:
                best = result.best.best
                assert best is not None
                console.print(f"chosen: {result.best.candidate.label()}: {best.rps:,.0f} req/s at "
                              f"c={best.concurrency}, p99 {best.p99_ms:.1f} ms (of {len(result.trials)} trials, "
                              f"{result.elapsed_s:.0f} s)", highlight=False)
                console.print(f"wrote {out}: gpufleet serve --config {out}", highlight=False)
        if result.interrupted:  # Ctrl-C: the best of the trials finished until then is written above
            typer.echo(f"interrupted after {len(result.trials)} trial(s)"
                       + (f": wrote the best so far to {out}" if result.best is not None else
                          ": none met the target yet, nothing written"), err=True)
            raise typer.Exit(130)
        if result.best is None:
            typer.echo(f"error: no configuration met p99 <= {slo_p99_ms:g} ms; raise --slo-p99-ms or lower "
                       "--concurrency (see the table)", err=True)
            raise typer.Exit(1)
