"""docs/configuration.md, generated from the config dataclasses, their environment variables and the CLI.

    python -m gpufleet.tools.confdoc            # rewrite docs/configuration.md
    python -m gpufleet.tools.confdoc --check    # exit 1 when the committed page is stale

Every table comes from the code: :class:`gpufleet.PoolConfig`, ``gpufleet.server.ServerConfig`` and
``gpufleet.video.config.VideoConfig`` (fields, types, defaults, their docstrings), the environment variables
that fill their fields (``ENV_NAMES`` of each config module, short aliases included) and every option of
every ``gpufleet`` command (read from the CLI itself, with its ``envvar``). Nothing here is written by hand.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import sys
from pathlib import Path
from typing import Any

__all__ = ["PAGE", "render"]

PAGE = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"

_ROLE = re.compile(r":(?:class|func|meth|mod|data|attr):`~?(?:[\w.]+\.)?([\w]+)`")


def _md(text: str) -> str:
    """A reStructuredText docstring as Markdown: ``x`` → `x`, :class:`a.B` → `B`."""
    return _ROLE.sub(r"`\1`", text).replace("``", "`")


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _default(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        return f"`{f.default!r}`"
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f"`{f.default_factory()!r}`"  # type: ignore[misc]
    return "(required)"


def _config(title: str, cls: type, env: dict[str, tuple[str, ...]], where: str) -> list[str]:
    doc = inspect.cleandoc(cls.__doc__ or "").split("\n>>>", 1)[0].strip()
    lines = [f"## {title}", "", f"`{where}` — {_md(doc)}", "",
             "| Field | Type | Default | Environment |", "|---|---|---|---|"]
    for f in dataclasses.fields(cls):
        names = ", ".join(f"`{n}`" for n in env.get(f.name, ())) or ""
        lines.append(f"| `{f.name}` | `{_cell(f.type)}` | {_cell(_default(f))} | {names} |")
    return lines + [""]


def _env_table(pool_env: dict[str, tuple[str, ...]], server_env: dict[str, tuple[str, ...]],
               cli_env: dict[str, list[str]]) -> list[str]:
    rows: dict[str, list[str]] = {}
    for prefix, env in (("PoolConfig", pool_env), ("ServerConfig", server_env)):
        for field, names in env.items():
            for name in names:
                rows.setdefault(name, []).append(f"`{prefix}.{field}`")
    for name, flags in cli_env.items():
        rows.setdefault(name, []).extend(flags)
    lines = ["## Environment variables", "",
             "Read by `gpufleet serve` (and `Pool`, which reads the PoolConfig ones itself); a flag or argument "
             "that is given wins. Names without the `GPUFLEET_` prefix are short aliases that existing deployments "
             "use: `GPU_IDS`, `MAX_BATCH_SIZE`, `MAX_BATCH_WAIT_TIME` (seconds), `ENABLE_BATCHING` "
             "(`false` → batches of one), `GPU_LOAD_BALANCE_STRATEGY`. When two names of one field are set, "
             "the first listed wins.", "",
             "| Variable | Sets | Alias |", "|---|---|---|"]
    for name in sorted(rows):
        lines.append(f"| `{name}` | {', '.join(rows[name])} | {'' if name.startswith('GPUFLEET_') else 'yes'} |")
    return lines + [""]


def _commands() -> list[tuple[str, Any]]:
    import typer

    from gpufleet.cli import app

    group = typer.main.get_command(app)
    ctx = group.make_context("gpufleet", [], resilient_parsing=True)  # type: ignore[attr-defined]
    out = []
    for name in group.list_commands(ctx):  # type: ignore[attr-defined]
        cmd = group.get_command(ctx, name)  # type: ignore[attr-defined]
        subs = getattr(cmd, "commands", None)
        if subs:
            out += [(f"{name} {sub}", subs[sub]) for sub in sorted(subs)]
        else:
            out.append((name, cmd))
    return out


def _type_name(p: Any) -> str:
    """The option's value type (``int``, ``float``, ``str`` ...), from click or from Typer's own parameters."""
    t = getattr(p, "type", None)
    if t is not None:
        return str(t.name)
    bare = getattr(p, "bare_type", None)
    return str(bare()) if callable(bare) else "text"


def _cli() -> tuple[list[str], dict[str, list[str]]]:
    lines = ["## Command-line options", "",
             "Every option of every command, as `gpufleet COMMAND --help` shows it.", ""]
    env: dict[str, list[str]] = {}
    for name, cmd in _commands():
        lines += [f"### `gpufleet {name}`", "", _md(inspect.cleandoc((cmd.help or "").split("\f")[0])), "",
                  "| Option | Type | Default | Environment | Help |", "|---|---|---|---|---|"]
        for p in cmd.params:
            if p.name == "help":
                continue
            opts = " / ".join(f"`{o}`" for o in [*p.opts, *getattr(p, "secondary_opts", [])])
            if p.param_type_name == "argument":
                opts = f"`{p.name.upper()}` (argument)"
            envvar = p.envvar if isinstance(p.envvar, str) else ", ".join(p.envvar or ())
            if envvar:
                env.setdefault(envvar, []).append(f"`gpufleet {name} {p.opts[0]}`")
            default = "" if p.default is None or callable(p.default) else f"`{p.default!r}`"
            typ = "flag" if getattr(p, "is_flag", False) else _type_name(p)
            lines.append(f"| {opts} | {_cell(typ)} | {_cell(default)} | {f'`{envvar}`' if envvar else ''} | "
                         f"{_cell(getattr(p, 'help', '') or '')} |")
        lines.append("")
    return lines, env


def render() -> str:
    """The page's text."""
    from gpufleet.config import ENV_NAMES as POOL_ENV
    from gpufleet.config import PoolConfig
    from gpufleet.server.config import ENV_NAMES as SERVER_ENV
    from gpufleet.server.config import ServerConfig
    from gpufleet.video.config import VideoConfig

    cli, cli_env = _cli()
    lines = ["# Configuration reference", "",
             "<!-- Generated by `python -m gpufleet.tools.confdoc` from the config dataclasses, their environment "
             "variables and the CLI; tests/tools/test_confdoc.py fails when this page is stale. Do not edit. -->",
             "", "Three frozen, validated dataclasses hold every option; the CLI maps its flags onto them. "
             "Precedence: a keyword argument or flag that is given, then the environment, then the default.", ""]
    lines += _config("Pool (`gpufleet.PoolConfig`)", PoolConfig, POOL_ENV, "gpufleet.PoolConfig")
    lines += _config("Server (`gpufleet.server.ServerConfig`)", ServerConfig, SERVER_ENV,
                     "gpufleet.server.ServerConfig")
    lines += _config("Video (`gpufleet.video.config.VideoConfig`)", VideoConfig, {},
                     "gpufleet.video.config.VideoConfig")
    lines += _env_table(POOL_ENV, SERVER_ENV, cli_env)
    lines += cli
    return "\n".join(lines).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    text = render()
    if "--check" in args:
        if not PAGE.is_file() or PAGE.read_text() != text:
            print(f"{PAGE.name} is stale: run python -m gpufleet.tools.confdoc", file=sys.stderr)
            return 1
        return 0
    PAGE.write_text(text)
    print(f"wrote {PAGE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
