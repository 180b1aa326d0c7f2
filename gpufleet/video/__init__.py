"""Video: decode -> (GPU) preprocess -> batched inference over a :class:`gpufleet.Pool` -> ordered sinks.

>>> from gpufleet import video
>>> summary = video.run("clip.mp4", "textdet", jsonl="frames.jsonl", out="annotated.mp4")  # doctest: +SKIP
>>> for r in video.frames(["cam1.mp4", "rtsp://cam2/stream"], "textdet"):  # doctest: +SKIP
...     print(r.stream, r.frame, r.pts, r.results)

Decoders: ``nvdec`` (PyNvVideoCodec, frames stay on the GPU as torch tensors) and ``cpu`` (PyAV). One file is
split at keyframes and decoded in parallel; several inputs run at once; results come back in frame order.
"""

from gpufleet.video.config import VideoConfig
from gpufleet.video.job import FrameResult, StreamEnd, VideoJob
from gpufleet.video.pipeline import frames, run
from gpufleet.video.sources import SourceError, VideoInfo, probe

__all__ = ["FrameResult", "SourceError", "StreamEnd", "VideoConfig", "VideoInfo", "VideoJob", "frames", "probe",
           "run"]
