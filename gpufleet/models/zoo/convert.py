"""Convert an ONNX file to a ``torch.nn.Module`` with onnx2torch, so the PyTorch path runs the same model.

PaddleOCR exports keep their weights in ``Constant`` nodes, which onnx2torch rejects (``KeyError``) when a
layer expects them as initializers; those tensors are moved into the graph's initializers first.
"""

from __future__ import annotations

import copy
import logging
import threading
import warnings
from pathlib import Path

import torch

__all__ = ["constants_to_initializers", "load_onnx_as_torch"]

log = logging.getLogger(__name__)

# onnx2torch's Slice indexes with a list; torch warns about it on every new call site. Harmless here.
warnings.filterwarnings("ignore", message="Using a non-tuple sequence", category=UserWarning, module="onnx2torch")

_cache: dict[str, torch.nn.Module] = {}
_lock = threading.Lock()  # workers of one process call setup() concurrently: convert once


def constants_to_initializers(model: object) -> int:
    """Move every top-level ``Constant`` node's tensor into ``model.graph.initializer``; returns how many."""
    from onnx import numpy_helper

    graph = model.graph  # type: ignore[attr-defined]
    keep, moved = [], 0
    for node in graph.node:
        attr = node.attribute[0] if node.op_type == "Constant" and len(node.attribute) == 1 else None
        if attr is not None and attr.name == "value":
            tensor = numpy_helper.from_array(numpy_helper.to_array(attr.t), name=node.output[0])
            graph.initializer.append(tensor)
            moved += 1
        else:
            keep.append(node)
    del graph.node[:]
    graph.node.extend(keep)
    return moved


def load_onnx_as_torch(path: str | Path) -> torch.nn.Module:
    """The ONNX model at ``path`` as a float32 eval-mode ``nn.Module`` on the CPU (a private copy per call).

    Conversion runs once per path and process; each caller gets a deep copy so it can move it to its device.
    """
    key = str(Path(path).resolve())
    with _lock:
        module = _cache.get(key)
        if module is None:
            import onnx
            from onnx2torch import convert

            model = onnx.load(key)
            moved = constants_to_initializers(model)
            module = convert(model).eval()
            log.info("converted %s to torch (%d constants moved to initializers)", key, moved)
            _cache[key] = module
    return copy.deepcopy(module)
