"""A spare child per process worker: spawned ahead of need, it takes over when the serving child dies.

    importing ──▶ imported ──(Warm)──▶ setting_up ──▶ warm
        └────────────┴─────────(Start: take over)──────┴──▶ serves (set up first if it was not)

``spare_process=True`` (``"imports"``) keeps an *imports-only* spare: interpreter started, modules imported,
the model unpickled, no device touched; a restart still sets the model up (CUDA context, weights, graphs).
``spare_process="warm"`` keeps a *warm* spare: told ``Warm`` once the serving child is ready (so the two do
not compete during a start-up), it sets the model up completely on its device and waits; when it takes over,
its ``Ready`` is already in the pipe, so the restart is the hand-over. Taken while still importing or
setting up, it finishes that first and then serves. Its cost is a second model copy and CUDA context on
the device. The child writes its state into one shared byte, which the parent reads for ``stats()``.
"""

from __future__ import annotations

import logging
from typing import Any

import msgspec

from gpufleet.engine import wire

__all__ = ["FAILED", "IMPORTED", "IMPORTING", "SETTING_UP", "STATES", "WARM", "Spare", "set_state", "spare_mode"]

log = logging.getLogger(__name__)

IMPORTING, IMPORTED, SETTING_UP, WARM, FAILED = range(5)
STATES = ("importing", "imported", "setting_up", "warm", "failed")


def spare_mode(setting: bool | str | None, is_cuda: bool) -> str:
    """``"off"``, ``"imports"`` or ``"warm"`` from ``PoolConfig.spare_process`` (``None``: imports-only for
    GPU workers, where spawning and importing take seconds; off for CPU workers)."""
    if setting is None:
        return "imports" if is_cuda else "off"
    if isinstance(setting, str):
        return setting
    return "imports" if setting else "off"


def set_state(state: Any, value: int) -> None:
    """In the child: publish its state (``state`` is the shared byte, ``None`` for a child that is no spare)."""
    if state is not None:
        state.value = value


class Spare:
    """The parent's handle on a spare child of generation ``gen``: its process, pipe and shared state."""

    def __init__(self, gen: int, proc: Any, conn: Any, state: Any, warm: bool) -> None:
        self.gen, self.proc, self.conn, self._state = gen, proc, conn, state
        self.warm = warm  # to be warmed up (``spare_process="warm"``)
        self.told_warm = False

    @property
    def state(self) -> str:
        """One of :data:`STATES`, or ``"dead"`` once its process exited."""
        if not self.proc.is_alive() and self._state.value != FAILED:
            return "dead"
        return STATES[self._state.value]

    @property
    def pid(self) -> int:
        return int(self.proc.pid)

    def warm_up(self) -> None:
        """Tell a warm spare to set the model up now (once; it reads it after its imports)."""
        if self.warm and not self.told_warm:
            self.told_warm = True
            self._send(wire.Warm())

    def take(self) -> bool:
        """Tell it to serve; False when it is gone or failed its warm-up (then :meth:`drop` it)."""
        if not self.proc.is_alive() or self._state.value == FAILED:
            return False
        return self._send(wire.Start())

    def failure(self) -> str:
        """Why its warm-up failed, from the ``SetupFailed`` it left in the pipe (or its exit)."""
        try:
            while self.conn.poll(0):
                msg = msgspec.msgpack.decode(self.conn.recv_bytes(), type=wire.ChildMessage)
                if isinstance(msg, wire.SetupFailed):
                    return f"{msg.error.type}: {msg.error.message}"
        except (EOFError, OSError, msgspec.DecodeError):
            pass
        return f"its process exited (code {self.proc.exitcode})"

    def drop(self) -> None:
        """Let it go: closing its pipe ends it; it is killed if it lingers."""
        try:
            self.conn.close()
        except OSError:
            pass
        self.proc.join(1.0)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(1.0)

    def _send(self, msg: Any) -> bool:
        try:
            self.conn.send_bytes(msgspec.msgpack.encode(msg))
        except (OSError, ValueError):
            return False
        return True
