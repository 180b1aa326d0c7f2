"""An audio model that reports its real-time factor (RTF): a toy text-to-speech that declares how many
seconds of audio each output holds (``output_seconds``), so ``pool.stats()`` — ``/stats`` and ``/metrics``
when served — show ``media_s`` and ``rtf`` = device-busy seconds per second of audio (below 1: faster than
real time), overall and per device. A speech recogniser declares the seconds it consumed the same way. CPU:

    python examples/audio_rtf.py
"""

from __future__ import annotations

import numpy as np

import gpufleet

RATE = 16_000  # samples per second
CHAR_S = 0.06  # seconds of speech per character


class ToyTTS(gpufleet.Model):
    """Items: text; results: ``{"text", "audio"}`` with ``audio`` float32 PCM at 16 kHz (a tone per character,
    shaped by a small FFT filter: real work that grows with the audio length)."""

    def setup(self, device: gpufleet.Device) -> None:
        self.t = np.arange(int(RATE * CHAR_S), dtype=np.float32) / RATE
        self.envelope = np.hanning(len(self.t)).astype(np.float32)

    def predict(self, batch: list) -> list:
        out = []
        for text in batch:
            tones = [np.sin(2 * np.pi * (110 + 8 * (ord(c) % 64)) * self.t) * self.envelope for c in text]
            wave = np.concatenate(tones) if tones else np.zeros(0, np.float32)
            spectrum = np.fft.rfft(wave)
            spectrum[len(spectrum) // 4:] *= 0.1  # a low-pass "vocoder"
            out.append({"text": text, "audio": np.fft.irfft(spectrum, n=len(wave)).astype(np.float32)})
        return out

    def output_seconds(self, output: dict) -> float:
        """Seconds of audio in one output: the pool sums them into ``media_s`` and derives ``rtf``."""
        return len(output["audio"]) / RATE


def main() -> None:
    texts = [f"sentence number {i} of the toy speech benchmark" * (1 + i % 3) for i in range(48)]
    with gpufleet.Pool(ToyTTS, cpu_devices=2, max_batch_size=8) as pool:
        results = list(pool.map(texts))
        stats = pool.stats()
    expected_s = sum(len(t) for t in texts) * CHAR_S
    produced_s = sum(len(r["audio"]) for r in results) / RATE
    assert abs(produced_s - expected_s) < 1e-6 and abs(stats["media_s"] - expected_s) < 1e-3, stats["media_s"]
    busy = sum(d["busy_s"] for d in stats["per_gpu_stats"])
    assert stats["rtf"] is not None and abs(stats["rtf"] - busy / stats["media_s"]) < 1e-3
    for d in stats["per_gpu_stats"]:
        print(f"{d['device']}: {d['media_s']:.1f} s of audio in {d['busy_s']:.3f} s busy, RTF {d['rtf']:.5f}")
    print(f"all devices: {stats['media_s']:.1f} s of audio, RTF {stats['rtf']:.5f} "
          f"({1 / stats['rtf']:.0f}x real time)")


if __name__ == "__main__":
    main()
