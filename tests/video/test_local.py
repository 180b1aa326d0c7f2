"""The in-process video job's Ctrl-C boundary: a SIGINT during a frame's write waits for the write to finish,
and once the run is closing its outputs a further SIGINT is only noted."""

from __future__ import annotations

import os
import signal
import time

import pytest

from gpufleet.video.local import _FrameBoundary


def _sigint_self() -> None:
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(0.05)  # the handler runs on the main thread at the next bytecode boundary


def test_a_sigint_during_a_write_is_raised_once_the_frame_is_written() -> None:
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    with _FrameBoundary() as boundary:
        assert signal.getsignal(signal.SIGINT) is not signal.default_int_handler
        boundary.busy = True
        boundary.done()  # nothing pending: returns
        boundary.busy = True
        _sigint_self()  # mid-write: held
        assert boundary.pending
        with pytest.raises(KeyboardInterrupt):
            boundary.done()
        assert boundary.closing
        _sigint_self()  # while the outputs close: noted, not raised
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_sigint_between_frames_is_raised_at_once_and_a_second_one_is_only_noted(caplog) -> None:
    with _FrameBoundary() as boundary:
        with pytest.raises(KeyboardInterrupt):
            _sigint_self()
        assert boundary.closing
        _sigint_self()
    assert "interrupted again" in caplog.text
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
