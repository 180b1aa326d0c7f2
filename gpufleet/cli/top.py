"""``gpufleet top [URL]``: a live terminal view of a running server, or of this machine's devices.

With a URL it polls the server's ``/stats`` (queue depth, batch size, req/s, p99 per device) and the GPU
series of ``/metrics``; without one it samples local devices through :class:`gpufleet.devices.monitor.Monitor`.
Refreshes in place; ``q`` (or Ctrl-C) quits; ``--once`` prints one frame and exits.
"""

from __future__ import annotations

import contextlib
import json
import select
import sys
import time
import urllib.request
from typing import Any

import typer

__all__ = ["gather_server", "register", "render"]


def _get(url: str, token: str | None, timeout: float = 5.0) -> bytes:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 - the user's own server URL
        return resp.read()


def _gpu_series(metrics_text: str) -> dict[str, dict[str, float]]:
    """``{device: {"memory_used_gb", "memory_total_gb", "util_gpu"}}`` from the server's Prometheus text."""
    from prometheus_client.parser import text_string_to_metric_families

    names = {"gpufleet_gpu_memory_used_bytes": ("memory_used_gb", 1e-9),
             "gpufleet_gpu_memory_total_bytes": ("memory_total_gb", 1e-9),
             "gpufleet_gpu_utilization_ratio": ("util_gpu", 100.0)}
    out: dict[str, dict[str, float]] = {}
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            if sample.name in names:
                key, scale = names[sample.name]
                out.setdefault(sample.labels.get("device", "?"), {})[key] = sample.value * scale
    return out


def gather_server(base: str, token: str | None, previous: dict[str, Any] | None) -> dict[str, Any]:
    """One frame of data from a server: per-device rows plus totals; req/s from the change since ``previous``."""
    now = time.monotonic()
    stats = json.loads(_get(base + "/stats", token))
    try:
        gpus = _gpu_series(_get(base + "/metrics", token).decode())
    except Exception:  # noqa: BLE001 - metrics are optional for the view
        gpus = {}
    rows = []
    prev_rows = {r["device"]: r for r in (previous or {}).get("rows", [])}
    dt = now - previous["t"] if previous else 0.0
    for g in stats.get("per_gpu_stats", []):
        dev = g.get("device", str(g.get("gpu_id")))
        prev = prev_rows.get(dev)
        rps = (g["total_requests"] - prev["total_requests"]) / dt if prev and dt > 0 else None
        rows.append({"device": dev, "name": g.get("name", ""), "queue": g.get("current_queue_depth", 0),
                     "outstanding": g.get("outstanding", 0), "avg_batch": g.get("avg_batch_size", 0.0),
                     "total_requests": g.get("total_requests", 0), "errors": g.get("errors", 0), "rps": rps,
                     **gpus.get(dev, {})})
    e2e = stats.get("stages", {}).get("e2e", {})
    return {"t": now, "source": base, "rows": rows, "p99_ms": e2e.get("p99_ms"), "p50_ms": e2e.get("p50_ms"),
            "total_requests": stats.get("total_requests", 0), "errors": stats.get("errors", 0),
            "balancer": stats.get("balancer"), "workers": stats.get("num_workers")}


def gather_local(monitor: Any) -> dict[str, Any]:
    rows = [{"device": r["device"], "name": r.get("name", ""), **r} for r in monitor.sample()]
    return {"t": time.monotonic(), "source": "local devices", "rows": rows}


def _bar(value: float | None, width: int = 10) -> str:
    if value is None:
        return "-"
    filled = int(round(max(0.0, min(100.0, value)) / 100 * width))
    return "█" * filled + "░" * (width - filled) + f" {value:5.1f}%"


def render(frame: dict[str, Any]) -> Any:
    """A rich renderable of one frame."""
    from rich.table import Table

    title = f"gpufleet top · {frame['source']}"
    if frame.get("p99_ms") is not None:
        title += f" · e2e p50 {frame['p50_ms']:.1f} ms p99 {frame['p99_ms']:.1f} ms · requests " \
                 f"{frame['total_requests']} · errors {frame['errors']}"
    table = Table(title=title, title_justify="left", expand=False)
    for col in ("device", "util", "memory GB", "temp °C", "power W", "queue", "avg batch", "req/s"):
        table.add_column(col, justify="right" if col not in ("device", "util") else "left")

    def num(v: Any, spec: str) -> str:
        return "-" if v is None else format(v, spec)

    for r in frame["rows"]:
        mem = "-" if r.get("memory_used_gb") is None else \
            f"{r['memory_used_gb']:.1f}/{num(r.get('memory_total_gb'), '.0f')}"
        table.add_row(r["device"], _bar(r.get("util_gpu")), mem, num(r.get("temperature_c"), ".0f"),
                      num(r.get("power_w"), ".0f"), num(r.get("queue"), "d"), num(r.get("avg_batch"), ".1f"),
                      num(r.get("rps"), ",.0f"))
    table.caption = "q quits"
    return table


@contextlib.contextmanager
def _keys():
    """Yield a function returning a pressed key (or '') without blocking; cbreak mode on a terminal only."""
    if not sys.stdin.isatty():
        yield lambda: ""
        return
    import termios
    import tty

    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    tty.setcbreak(fd)
    try:
        yield lambda: sys.stdin.read(1) if select.select([sys.stdin], [], [], 0)[0] else ""
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def register(app: typer.Typer) -> None:
    @app.command()
    def top(
        url: str = typer.Argument("", help="A gpufleet server (http://host:port); empty: this machine's devices."),
        interval: float = typer.Option(1.0, "--interval", min=0.1, help="Seconds between refreshes."),
        once: bool = typer.Option(False, "--once", help="Print one frame and exit."),
        token: str = typer.Option("", "--token", envvar="GPUFLEET_TOKEN"),
        cpu_devices: int = typer.Option(0, "--cpu-devices", min=0, help="Local view: simulate N CPU devices."),
    ) -> None:
        """Live per-device view: utilisation, memory, temperature, power, queue depth, batch size, req/s, p99."""
        from rich.console import Console
        from rich.live import Live

        console = Console()
        base = url.rstrip("/")
        if base and not base.startswith(("http://", "https://")):
            typer.echo(f"error: URL must start with http:// or https://, got {url!r}", err=True)
            raise typer.Exit(2)
        monitor = None
        if not base:
            from gpufleet.devices import select as select_devices
            from gpufleet.devices.monitor import Monitor

            monitor = Monitor(select_devices(cpu_devices=cpu_devices or None))

        def frame(prev: dict[str, Any] | None) -> dict[str, Any]:
            try:
                return gather_server(base, token or None, prev) if base else gather_local(monitor)
            except OSError as exc:
                typer.echo(f"error: cannot reach {base}: {exc}", err=True)
                raise typer.Exit(2) from None

        current = frame(None)
        if once:
            time.sleep(min(interval, 1.0))  # a second reading gives rates and CPU utilisation
            console.print(render(frame(current)))
            return
        with _keys() as key, Live(render(current), console=console, refresh_per_second=4, screen=False) as live:
            try:
                while True:
                    end = time.monotonic() + interval
                    while time.monotonic() < end:
                        if key() in ("q", "Q"):
                            return
                        time.sleep(0.05)
                    current = frame(current)
                    live.update(render(current))
            except KeyboardInterrupt:
                return
