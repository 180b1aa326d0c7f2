"""Process-wide locks around CUDA set-up, shared by the engine's workers and the models' graph capture."""

from __future__ import annotations

import threading

__all__ = ["CUDA_SETUP_LOCK"]

# Thread workers of one process set up their CUDA models one at a time, and CUDA graphs are captured under
# this lock: PyTorch's graph capture touches process-wide state (the RNG generators' registration, the
# legacy stream), and two workers capturing at once failed on 2x H200 ("Cannot register the state during
# capturing stage", cudaErrorStreamCaptureInvalidated). Re-entrant, so a capture inside setup nests.
# It lives in devices (below both engine and models) so that models need not import the engine.
CUDA_SETUP_LOCK = threading.RLock()
