"""``gpufleet mps status|start|stop``: the NVIDIA MPS daemon (gpufleet.devices.mps)."""

from __future__ import annotations

import json

import typer

from gpufleet.errors import GpufleetError

__all__ = ["register"]


def _run(action: str, json_output: bool) -> None:
    from gpufleet.devices import mps

    try:
        info = {"status": lambda: mps.status(require_binary=True), "start": mps.start, "stop": mps.stop}[action]()
    except GpufleetError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    if json_output:
        typer.echo(json.dumps(info, indent=2))
        return
    servers = f", servers {', '.join(info['servers'])}" if info["servers"] else ""
    typer.echo(f"MPS daemon: {'running' if info['running'] else 'not running'} (pipe dir {info['pipe_dir']}"
               f"{servers})")


def register(app: typer.Typer) -> None:
    """Add the ``mps`` command group to ``app``."""
    mps_app = typer.Typer(no_args_is_help=True, help="NVIDIA MPS daemon: run several worker processes per GPU "
                                                     "concurrently.")

    @mps_app.command("status")
    def status_cmd(json_output: bool = typer.Option(False, "--json", help="JSON instead of one line.")) -> None:
        """Is the MPS daemon running? (exit 2 when nvidia-cuda-mps-control is absent)"""
        _run("status", json_output)

    @mps_app.command("start")
    def start_cmd(json_output: bool = typer.Option(False, "--json", help="JSON instead of one line.")) -> None:
        """Start the daemon (nvidia-cuda-mps-control -d) unless one runs."""
        _run("start", json_output)

    @mps_app.command("stop")
    def stop_cmd(json_output: bool = typer.Option(False, "--json", help="JSON instead of one line.")) -> None:
        """Stop the daemon (echo quit | nvidia-cuda-mps-control)."""
        _run("stop", json_output)

    app.add_typer(mps_app, name="mps")
