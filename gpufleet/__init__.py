"""gpufleet: run any model on every GPU of a machine as if it were one fast device.

>>> import gpufleet
>>> with gpufleet.Pool(lambda batch: [x + 1 for x in batch], cpu_devices=2) as pool:
...     list(pool.map([1, 2, 3]))
[2, 3, 4]
"""

from typing import TYPE_CHECKING, Any

from gpufleet.client import AsyncClient, Client, ClientError, InferResult, Retry
from gpufleet.config import PoolConfig
from gpufleet.devices import Device, discover, select
from gpufleet.engine import Pool
from gpufleet.engine.progress import report_progress
from gpufleet.errors import (
    ConfigError,
    DeadlineExceeded,
    DeviceError,
    GpufleetError,
    InputError,
    PoolClosed,
    QueueFullError,
    WorkerDied,
    WorkerError,
)
from gpufleet.models import FunctionModel, Model, OnnxModel

if TYPE_CHECKING:
    from gpufleet.models.torch_model import TorchModel

__version__ = "0.1.0"

__all__ = [
    "AsyncClient",
    "Client",
    "ClientError",
    "ConfigError",
    "DeadlineExceeded",
    "Device",
    "DeviceError",
    "FunctionModel",
    "GpufleetError",
    "InferResult",
    "InputError",
    "Model",
    "OnnxModel",
    "Pool",
    "PoolClosed",
    "PoolConfig",
    "QueueFullError",
    "Retry",
    "TorchModel",
    "WorkerDied",
    "WorkerError",
    "__version__",
    "discover",
    "report_progress",
    "select",
]


def __getattr__(name: str) -> Any:
    if name == "TorchModel":  # imported on first use: torch takes ~2 s to import (see gpufleet.models)
        from gpufleet.models.torch_model import TorchModel

        return TorchModel
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
