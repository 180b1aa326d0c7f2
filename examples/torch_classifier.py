"""A PyTorch module on every device: ``gpufleet.TorchModel`` + ``gpufleet.Pool``, checked against the module
itself. CPU devices here (``cpu_devices=2``); on a GPU machine drop that and every GPU serves.

    python examples/torch_classifier.py
"""

from __future__ import annotations

import numpy as np
import torch

import gpufleet


def build() -> torch.nn.Module:
    module = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                                 torch.nn.Flatten(), torch.nn.Linear(8, 10), torch.nn.Softmax(dim=1)).eval()
    # The same weights in every copy: a generator of its own, because the workers build their copies at once
    # in threads and torch.manual_seed() is process-wide (two builds would interleave their draws).
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return module


class Classifier(gpufleet.TorchModel):
    """Items: float32 ``[3, 32, 32]`` images; results: ``{"class", "score"}``."""

    def __init__(self) -> None:
        super().__init__(build, precision="fp32", example_shape=(3, 32, 32))

    def postprocess(self, output):
        probs = np.asarray(output)
        return {"class": int(probs.argmax()), "score": float(probs.max()), "probs": probs}


def main() -> None:
    images = np.random.default_rng(0).random((64, 3, 32, 32), dtype=np.float32)
    with gpufleet.Pool(Classifier(), cpu_devices=2, max_batch_size=16) as pool:
        results = list(pool.map(images))
        stats = pool.stats()
    with torch.no_grad():
        expected = build()(torch.from_numpy(images)).numpy()
    got = np.stack([r["probs"] for r in results])
    # Same numbers up to float rounding (batching and channels_last change the order of additions).
    assert np.allclose(got, expected, atol=1e-5), f"pool and module differ by {abs(got - expected).max()}"
    first = {k: v for k, v in results[0].items() if k != "probs"}
    print(f"{len(results)} images, {stats['num_gpus']} devices, avg batch {stats['avg_batch_size']:.1f}; "
          f"first: {first}")


if __name__ == "__main__":
    main()
