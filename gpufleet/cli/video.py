"""``gpufleet video INPUT...``: decode, infer across devices, write JSONL / annotated video, print a summary."""

from __future__ import annotations

import json
from typing import Any, Optional

import typer

from gpufleet.errors import GpufleetError

__all__ = ["register", "print_summary"]


def print_summary(summary: dict, console: Any = None) -> None:
    """The human-readable summary: per input, then fps, per-stage times and CPU use."""
    from rich.console import Console
    from rich.table import Table

    con = console if console is not None else Console()
    table = Table("stream", "status", "frames", "fps", "decoder", "segments", "outputs")
    for r in summary["inputs"]:
        outs = ", ".join(p for p in (r["jsonl"], r["out"]) if p) or "-"
        status = r["status"] if r["status"] != "failed" else "[red]failed"
        table.add_row(r["stream"], status, str(r["frames"]), f"{r['fps']:.1f}", r["decoder"] or "-",
                      str(r["segments"]), outs)
    con.print(table)
    stages = "  ".join(f"{k} {v:.2f}" for k, v in summary["stages_ms_per_frame"].items())
    con.print(f"{summary['frames']} frames in {summary['elapsed_s']:.2f}s = [bold]{summary['fps']:.1f} fps[/] on "
              f"{', '.join(summary['devices']) or '-'} · avg batch {summary['avg_batch_size']} · "
              f"CPU cores used {summary['cpu_cores_used']:.2f}")
    con.print(f"per frame (ms, summed over threads): {stages}")
    if summary.get("per_process"):
        con.print("per process: " + "  ".join(
            f"{p['device']} {p['frames']} frames {p['fps']:.1f} fps ({p['cpu_cores_used']:.2f} cores)"
            for p in summary["per_process"]))
    if "recall" in summary:
        con.print(f"recall vs ground truth: {summary['recall']:.1%}")


def register(app: typer.Typer) -> None:
    """Add the ``video`` command to ``app``."""

    @app.command()
    def video(
        inputs: list[str] = typer.Argument(..., metavar="INPUT...", help="Video files or stream URLs (rtsp/http/udp)."),
        model: str = typer.Option("textdet", "--model", help="Embedded model name or 'package.module:attribute'."),
        runtime: str = typer.Option("auto", "--runtime", help="auto | onnx | torch (embedded models)."),
        gpus: Optional[str] = typer.Option(None, "--gpus", help='Devices: "all", "0,2" (default: all / GPU_IDS).'),  # noqa: UP045
        cpu_devices: Optional[int] = typer.Option(None, "--cpu-devices", min=1, help="Use N CPU devices."),  # noqa: UP045
        decoder: str = typer.Option("auto", "--decoder", help="auto | nvdec | cpu"),
        encoder: str = typer.Option("auto", "--encoder", help="auto | nvenc | cpu (libx264)"),
        out: Optional[str] = typer.Option(None, "--out", help="Annotated video (mp4); one per input."),  # noqa: UP045
        jsonl: Optional[str] = typer.Option(None, "--jsonl", help="Per-frame results, one JSON line per frame."),  # noqa: UP045
        batch_size: int = typer.Option(0, "--batch-size", min=0, help="0 = probe the best batch size."),
        max_batch_size: int = typer.Option(256, "--max-batch-size", min=1),
        queue_size: int = typer.Option(50, "--queue-size", min=1, help="Frames in flight per decoder."),
        every_nth: int = typer.Option(1, "--every-nth", min=1, help="Process every Nth frame."),
        segments: int = typer.Option(0, "--segments", min=0, help="Split one file into N parts (0 = auto)."),
        steal_frames: int = typer.Option(
            30, "--steal-frames", min=0,
            help="A decoder that is done takes the back half of the part with the most frames left when both "
                 "halves keep at least N frames: no decoder idles while a longer input goes on (0 = never)."),
        reconnect: int = typer.Option(5, "--reconnect", min=1, help="Attempts to (re)connect a stream."),
        progress: Optional[bool] = typer.Option(None, "--progress/--no-progress", help="Default: when a TTY."),  # noqa: UP045
        process_per_gpu: Optional[bool] = typer.Option(  # noqa: UP045
            None, "--process-per-gpu/--one-process",
            help="One worker process per device, inputs dealt out between them (default: with 2+ GPUs and "
                 "2+ inputs)."),
        json_output: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
        backend: str = typer.Option("local", "--backend", help="local: this machine's GPUs (NVDEC decodes into "
                                    "their memory). ray is not supported: run gpufleet video on each node."),
    ) -> None:
        """Detect (or classify) on every frame of one or more videos across all devices, in frame order."""
        problem = None
        if backend == "ray":
            problem = ("gpufleet video does not run on --backend ray: frames are decoded by NVDEC straight into "
                       "this machine's GPU memory and served there; sending every decoded frame to another node would "
                       "cost more than it gains. Run gpufleet video on each node (one input list per node) instead.")
        elif backend != "local":
            problem = f"--backend must be local (or ray, which video does not support), got {backend!r}"
        if problem is not None:
            typer.echo(f"error: {problem}", err=True)
            raise typer.Exit(2)

        import os

        missing = [i for i in inputs if "://" not in i and not os.path.exists(i.removeprefix("file:"))]
        if len(missing) == len(inputs):  # nothing could run: say so now, not after loading the model
            typer.echo(f"error: {', '.join(missing)}: no such file", err=True)
            raise typer.Exit(2)
        from gpufleet.video import VideoConfig, run

        try:
            cfg = VideoConfig(model=model, runtime=runtime, devices=gpus, cpu_devices=cpu_devices, decoder=decoder,
                              encoder=encoder, out=out, jsonl=jsonl, batch_size=batch_size,
                              max_batch_size=max_batch_size, queue_size=queue_size, every_nth=every_nth,
                              segments=segments, steal_frames=steal_frames, reconnect_attempts=reconnect,
                              progress=False if json_output else progress, process_per_gpu=process_per_gpu)
            summary = run(inputs, config=cfg, on_stream_end=_report_end)
        except GpufleetError as exc:
            from gpufleet.cli.errors import describe

            typer.echo(f"error: {describe(exc)}", err=True)
            raise typer.Exit(2) from None
        for r in summary["inputs"]:
            if r["encoder"]:
                note = f" ({r['encoder_note']}: fell back)" if r["encoder_note"] else ""
                typer.echo(f"{r['stream']}: encoder {r['encoder']}{note}", err=True)
        if json_output:
            typer.echo(json.dumps(summary, indent=2))
        elif summary["failed"] < len(summary["inputs"]) or summary["interrupted"]:
            print_summary(summary)  # (when every input failed, their error lines above are the whole story)
        if summary["interrupted"]:
            typer.echo("interrupted: outputs closed and playable", err=True)
        raise typer.Exit(summary["exit_code"])


def _report_end(e: Any) -> None:
    """One line on stderr per stream (a ``StreamEnd``): the decoder it used, or why it failed."""
    if e.status == "failed":
        typer.echo(f"error: {e.error}", err=True)
    elif e.decoder:
        note = f" ({e.decoder_note})" if e.decoder_note else ""
        typer.echo(f"{e.stream}: decoder {e.decoder}{note}, {e.frames} frames, {e.status}", err=True)
