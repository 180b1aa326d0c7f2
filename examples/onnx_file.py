"""An ONNX file on every device: ``gpufleet.Pool("model.onnx")`` (ONNX Runtime; its CUDA provider on GPUs),
checked against ONNX Runtime run directly. The file is exported here from a small PyTorch network; any
``.onnx`` whose first input takes a batch along axis 0 works the same, and ``gpufleet serve model.onnx``
serves it. CPU devices here (``cpu_devices=2``); on a GPU machine drop that and every GPU serves.

    python examples/onnx_file.py
"""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

import gpufleet


def export(path: Path) -> None:
    """A small image classifier as ONNX, its batch axis dynamic."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                              torch.nn.Flatten(), torch.nn.Linear(8, 5), torch.nn.Softmax(dim=1)).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(net, (torch.randn(1, 3, 32, 32),), str(path), input_names=["image"],
                          output_names=["probs"], dynamic_axes={"image": {0: "n"}, "probs": {0: "n"}},
                          dynamo=False)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "classifier.onnx"
        export(path)
        images = np.random.default_rng(0).random((64, 3, 32, 32), dtype=np.float32)
        with gpufleet.Pool(str(path), cpu_devices=2, max_batch_size=16) as pool:
            probs = np.stack(list(pool.map(images)))  # one row of the "probs" output per image
            stats = pool.stats()
        expected = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"image": images})[0]
    assert probs.shape == (64, 5)
    assert np.allclose(probs, expected, atol=1e-6), f"pool and onnxruntime differ by {abs(probs - expected).max()}"
    print(f"{len(probs)} images through {path.name} on {stats['num_gpus']} devices, avg batch "
          f"{stats['avg_batch_size']:.1f}; classes of the first 8: {probs[:8].argmax(1).tolist()}")


if __name__ == "__main__":
    main()
