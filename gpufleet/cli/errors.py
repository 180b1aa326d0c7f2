"""How the CLI words an error: the message, and where in the user's own code it started.

A model that fails in ``setup`` (or anywhere the engine wraps its exception) reaches the CLI as a
``GpufleetError`` whose ``__cause__`` chain holds the model's traceback (in this process) or its text (a
``RemoteTraceback`` from a worker process). :func:`describe` adds the last frame of that traceback that lies in
the user's code (not gpufleet, not the standard library, not installed packages):

    error: worker-0@cpu:0 failed in setup: KeyError: 'weights'
      at mymodel.py:29 in load_weights: return {}["weights"]
"""

from __future__ import annotations

import os
import re
import sysconfig
import traceback
from pathlib import Path

__all__ = ["describe", "user_frame"]

_PACKAGE = str(Path(__file__).resolve().parents[1])
_NOT_USER = tuple(p for p in {_PACKAGE, *(sysconfig.get_paths().get(k) for k in ("stdlib", "platstdlib", "purelib",
                                                                                  "platlib"))} if p)
_REMOTE_FRAME = re.compile(r'^\s*File "(?P<file>[^"]+)", line (?P<line>\d+), in (?P<func>\S+)\n(?P<src>\s+\S.*)?',
                           re.MULTILINE)

Frame = tuple[str, int, str, str]  # file, line, function, source text


def _is_user(filename: str) -> bool:
    if filename.startswith("<"):  # <frozen ...>, <string>
        return False
    path = os.path.realpath(filename)
    return not any(path == p or path.startswith(p + os.sep) for p in _NOT_USER)


def _frames(exc: BaseException) -> list[Frame]:
    if type(exc).__name__ == "RemoteTraceback":  # engine.wire: the worker process's formatted traceback
        return [(m["file"], int(m["line"]), m["func"], (m["src"] or "").strip())
                for m in _REMOTE_FRAME.finditer(str(exc))]
    return [(f.filename, f.lineno or 0, f.name, (f.line or "").strip())
            for f in traceback.extract_tb(exc.__traceback__)]


def user_frame(exc: BaseException) -> Frame | None:
    """The last frame in the user's code of the innermost exception in ``exc``'s chain that has one."""
    found: Frame | None = None
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        mine = [f for f in _frames(cur) if _is_user(f[0])]
        if mine:
            found = mine[-1]
        cur = cur.__cause__ if cur.__cause__ is not None else (None if cur.__suppress_context__ else cur.__context__)
    return found


def describe(exc: BaseException) -> str:
    """``str(exc)``, plus a line ``  at FILE:LINE in FUNC: SOURCE`` when the error started in the user's code."""
    frame = user_frame(exc)
    if frame is None:
        return str(exc)
    file, line, func, src = frame
    try:
        shown = os.path.relpath(file)
        if shown.startswith(".."):
            shown = file
    except ValueError:  # another drive (Windows)
        shown = file
    return f"{exc}\n  at {shown}:{line} in {func}" + (f": {src}" if src else "")
