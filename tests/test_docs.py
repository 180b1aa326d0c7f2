"""Every snippet in README.md and docs/*.md runs, so none can rot.

- ```python blocks run in a fresh interpreter on this machine (CPU devices when there is no GPU), in a folder
  holding the files the docs name (``page.jpg``, ``clip.mp4``, ``a.mp4``, ``b.mp4``: small rendered text).
  A block after ``<!-- test: serves -->`` starts a server and does not return: it passes once its port
  answers ``/v2/health/ready``. A block after ``<!-- test: needs-server -->`` talks to ``gpufleet serve
  orientation``, which the test starts first. The one rewrite: port 8000 becomes a free port.
- every ``gpufleet ...`` command line in a shell block is parsed by the real CLI (flags, types, arguments), not
  run: a renamed or mistyped flag fails here.
- a block after ``<!-- no-test -->`` is skipped; keep those for what needs a GPU or another machine.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(?P<lang>[\w-]*)\n(?P<code>.*?)^```", re.S | re.M)
MARKER = re.compile(r"<!--\s*(no-test|test:\s*[\w-]+)\s*-->\s*$")
SHELL = ("bash", "sh", "shell", "console", "")


def blocks() -> list[tuple[str, str, str, str]]:
    """``(id, lang, code, marker)`` of every fenced block; ``id`` is ``file:line``."""
    out = []
    for path in DOCS:
        text = path.read_text()
        for m in FENCE.finditer(text):
            before = text[:m.start()].rstrip("\n").rsplit("\n", 1)[-1]
            mark = MARKER.search(before)
            line = text.count("\n", 0, m.start()) + 1
            out.append((f"{path.relative_to(ROOT)}:{line}", m["lang"], m["code"],
                        re.sub(r"\s+", "", mark.group(1)) if mark else ""))
    return out


PYTHON = [pytest.param(code, mark, id=bid) for bid, lang, code, mark in blocks() if lang == "python"]


def commands() -> list[tuple[str, str]]:
    """``(id, command)`` for each ``gpufleet`` line of the shell blocks (continuation lines joined)."""
    out = []
    for bid, lang, code, mark in blocks():
        if lang not in SHELL or mark == "no-test":
            continue
        for line in code.replace("\\\n", " ").splitlines():
            line = line.strip().removeprefix("$ ")
            if line.startswith("python -m gpufleet "):
                line = line.removeprefix("python -m ")
            if line.startswith("gpufleet "):
                out.append((bid, line))
    return out


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """The files the snippets name: a page of text as JPEG, and three short videos of moving text."""
    from gpufleet.tools import synth

    d = tmp_path_factory.mktemp("docs")
    synth.text_image(size=(320, 240), angle=90, seed=1).save(d / "page.jpg", quality=90)
    try:
        from gpufleet.video.sinks import encode_frames
    except ImportError:  # no PyAV: the video snippets skip
        return d
    for i, name in enumerate(("clip.mp4", "a.mp4", "b.mp4")):
        frames = (f for f, _ in synth.moving_text_frames(6, size=(160, 96), seed=i))
        encode_frames(d / name, frames, fps=30, gop=3)
    return d


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GPUFLEET_", "GPU_IDS", "MAX_BATCH"))}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _ready(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/v2/health/ready", timeout=1).status_code == 200
    except httpx.TransportError:
        return False


def _wait(proc: subprocess.Popen, port: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()[0]
        if _ready(port):
            return
        time.sleep(0.1)
    raise AssertionError(f"nothing answered on port {port}")


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()


@pytest.mark.timeout(300)
@pytest.mark.parametrize(("code", "mark"), PYTHON)
def test_python_snippet_runs(code: str, mark: str, workdir: Path) -> None:
    if mark == "no-test":
        pytest.skip("marked <!-- no-test -->")
    if "video" in code and not (workdir / "clip.mp4").exists():
        pytest.skip("PyAV is not installed")
    port = free_port()
    code = code.replace("8000", str(port))
    cmd = [sys.executable, "-c", code]
    if mark == "test:serves":
        proc = subprocess.Popen(cmd, cwd=workdir, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True)
        try:
            _wait(proc, port)
        finally:
            _stop(proc)
        return
    server = None
    if mark == "test:needs-server":
        server = subprocess.Popen([sys.executable, "-m", "gpufleet", "serve", "orientation", "--port", str(port),
                                   "--log-level", "error"], cwd=workdir, env=_env(), stdout=subprocess.DEVNULL,
                                  stderr=subprocess.STDOUT)
        _wait(server, port)
    try:
        p = subprocess.run(cmd, cwd=workdir, env=_env(), capture_output=True, text=True, timeout=240)
    finally:
        if server is not None:
            _stop(server)
    assert p.returncode == 0, f"the snippet failed:\n{code}\n--- stderr:\n{p.stderr[-4000:]}"


def _parse(args: list[str]) -> None:
    """Parse ``args`` as ``gpufleet`` would (options, types, arguments), without running the command."""
    from typer.main import get_command

    from gpufleet.cli import app

    def left(ctx) -> list[str]:  # what a group passes on to its subcommand (click keeps it "protected")
        return [*getattr(ctx, "_protected_args", getattr(ctx, "protected_args", [])), *ctx.args]

    cmd = get_command(app)
    ctx = cmd.make_context("gpufleet", list(args))
    while hasattr(cmd, "resolve_command"):  # groups: gpufleet, gpufleet mps
        name, cmd, rest = cmd.resolve_command(ctx, left(ctx))
        assert cmd is not None, f"no command {name!r}"
        ctx = cmd.make_context(name, rest, parent=ctx)


@pytest.mark.parametrize(("command",), [pytest.param(c, id=f"{bid} {c[:60]}") for bid, c in commands()])
def test_shell_command_parses(command: str) -> None:
    args = shlex.split(command, comments=True)
    assert args[0] == "gpufleet"
    _parse(args[1:])


def test_every_doc_has_its_snippets_found() -> None:
    ids = {bid.split(":")[0] for bid, *_ in blocks()}
    assert "README.md" in ids and len(PYTHON) >= 5 and len(commands()) >= 15


def test_docs_speak_a_users_words() -> None:
    """Words from the project's history that a reader cannot look up."""
    jargon = re.compile(r"\bW[1-5]\b|\bseeds?\b(?!=)|seed's|\bcall \d\b|BENCH\.md", re.IGNORECASE)
    hits = [f"{p.relative_to(ROOT)}:{i}: {line.strip()}" for p in DOCS
            for i, line in enumerate(p.read_text().splitlines(), 1) if jargon.search(line)]
    assert not hits, "\n".join(hits)
