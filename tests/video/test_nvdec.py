"""NVDEC decoding (GPU only): frames arrive as CUDA tensors, equal (within colour conversion) to PyAV's."""

from __future__ import annotations

import pytest
import torch

from gpufleet.video.sources import CpuSource, NvdecSource, nvdec_available, probe

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available() or nvdec_available() is not None,
                       reason="needs CUDA and PyNvVideoCodec"),
]


def test_nvdec_frames_are_cuda_tensors_close_to_pyav(clips) -> None:
    info = probe(str(clips["text"]))
    gpu = [f for chunk in NvdecSource(info, 10, 30, gpu_id=0, chunk=8) for f in chunk]
    cpu = [f for chunk in CpuSource(info, 10, 30) for f in chunk]
    assert [f.index for f in gpu] == [f.index for f in cpu] == list(range(10, 30))
    assert gpu[0].image.is_cuda and gpu[0].image.shape == (3, 180, 320) and gpu[0].image.dtype == torch.uint8
    diff = (gpu[5].image.cpu().permute(1, 2, 0).float() - torch.from_numpy(cpu[5].image).float()).abs()
    assert diff.mean() < 6


def test_nvdec_pipeline_matches_frame_count(clips, tmp_path) -> None:
    from gpufleet.video import run

    # A model of its own: the embedded textdet needs rapidocr's ONNX files, absent on the GPU machine.
    seen: list[str] = []

    def boxes(batch: list) -> list:
        seen.extend(str(x.device) for x in batch)
        return [[{"box": [4, 4, 40, 20], "score": float(x.float().mean()) / 255}] for x in batch]

    summary = run(str(clips["text"]), boxes, decoder="nvdec", jsonl=str(tmp_path / "f.jsonl"),
                  out=str(tmp_path / "a.mp4"), batch_size=8, progress=False)
    assert summary["exit_code"] == 0 and summary["frames"] == 40 and summary["decoders"] == ["nvdec"]
    assert sum(1 for _ in open(tmp_path / "f.jsonl")) == 40
    # With several GPUs a frame may be batched on another GPU's worker (moved there): still a CUDA tensor.
    assert len(seen) == 40 and all(d.startswith("cuda") for d in seen), "NVDEC frames reach the model on a GPU"


def test_decoders_on_their_own_streams_give_the_same_frames_and_results(clips, tmp_path, monkeypatch) -> None:
    """``GPUFLEET_NVDEC_STREAMS=own``: each decoder (and its chunks' stacking and resizing) on a CUDA stream of
    its own gives the same frames, and the same pipeline results, as the default stream."""
    from gpufleet.video import run

    info = probe(str(clips["text"]))
    shared = [f.image.cpu() for chunk in NvdecSource(info, 0, 40, gpu_id=0, chunk=8) for f in chunk]
    monkeypatch.setenv("GPUFLEET_NVDEC_STREAMS", "own")
    source = NvdecSource(info, 0, 40, gpu_id=0, chunk=8)
    assert source.stream is not None
    own = [f.image.cpu() for chunk in source for f in chunk]
    assert len(own) == len(shared) == 40 and all(torch.equal(a, b) for a, b in zip(own, shared))

    def mean(batch: list) -> list:
        return [float(x.float().mean()) for x in batch]

    lines = []
    for streams in ("shared", "own"):
        monkeypatch.setenv("GPUFLEET_NVDEC_STREAMS", streams)
        summary = run([str(clips["text"])] * 4, mean, decoder="nvdec", batch_size=8, progress=False,
                      jsonl=str(tmp_path / (streams + ".{stream}.jsonl")))
        assert summary["exit_code"] == 0 and summary["frames"] == 160
        lines.append(sorted(p.read_text() for p in tmp_path.glob(f"{streams}.*.jsonl")))
    assert len(lines[0]) == 4 and lines[0] == lines[1]


def test_a_span_cut_while_decoding_gives_the_same_frames_as_one_decoder(clips) -> None:
    """Work stealing on NVDEC: the victim stops at the cut, the thief decodes from it; together they give
    exactly the frames of one decoder."""
    from gpufleet.video.segments import Spans

    info = probe(str(clips["text"]))
    whole = [f.image.cpu() for chunk in NvdecSource(info, 0, 40, gpu_id=0, chunk=8) for f in chunk]
    spans = Spans(min_frames=10)
    victim = spans.add("text", 0, 40, info.keyframes)
    source = iter(NvdecSource(info, 0, 40, gpu_id=0, chunk=8, span=victim))
    first = list(next(source))  # frames 0-7 claimed and read
    thief = spans.steal()
    assert thief is not None and (victim.stop, thief.start, thief.stop) == (20, 20, 40)
    first += [f for chunk in source for f in chunk]
    rest = [f for chunk in NvdecSource(info, thief.start, thief.stop, gpu_id=0, chunk=8, span=thief) for f in chunk]
    assert [f.index for f in first] == list(range(20)) and [f.index for f in rest] == list(range(20, 40))
    assert all(torch.equal(f.image.cpu(), w) for f, w in zip(first + rest, whole, strict=True))
