"""The in-process video job's Ctrl-C boundary: a SIGINT during a frame's write waits for the write to finish."""

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
        _sigint_self()  # mid-write: held
        assert boundary.pending
        with pytest.raises(KeyboardInterrupt):
            boundary.done()
        boundary.busy = True
        boundary.done()  # nothing pending: returns
        with pytest.raises(KeyboardInterrupt):
            _sigint_self()  # between frames: raised at once
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
