"""The one model resolver: names, module and file specs, options mapped per model, clear errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from gpufleet.errors import ConfigError
from gpufleet.models.base import FunctionModel
from gpufleet.models.resolve import embedded_names, model_factory, model_name, resolve_model
from gpufleet.models.zoo import ImageClassifier, OrientationModel, TextDetModel

DOUBLER = ("class Doubler:\n    def setup(self, device): pass\n"
           "    def predict(self, batch): return [2 * x for x in batch]\n")


def test_embedded_names_and_their_options() -> None:
    assert embedded_names() == ["orientation", "resnet18", "resnet50", "textdet"]
    assert isinstance(resolve_model("orientation", runtime="onnx", image_size=64, cuda_graphs=True),
                      OrientationModel)  # options it does not take are ignored
    det = resolve_model("textdet", runtime="auto", image_size=100)
    assert isinstance(det, TextDetModel) and det.input_hw == (128, 128)
    assert resolve_model("textdet", input_hw=(64, 96), image_size=32).input_hw == (64, 96)
    clf = resolve_model("resnet18", runtime="auto", image_size=32, cuda_graphs=False, input_hw=(64, 64))
    assert isinstance(clf, ImageClassifier) and clf.image_size == 32 and clf.cuda_graphs is False
    assert resolve_model("mobilenet_v3_small", image_size=32).name == "mobilenet_v3_small"  # any torchvision one


def test_errors_name_what_exists() -> None:
    with pytest.raises(ConfigError, match="orientation, resnet18, resnet50, textdet"):
        resolve_model("resnet")
    with pytest.raises(ConfigError, match="runtime"):
        resolve_model("orientation", runtime="tensorrt")
    with pytest.raises(ConfigError, match="PyTorch only"):
        resolve_model("resnet50", runtime="onnx")
    with pytest.raises(ConfigError, match="multiples of 32"):
        resolve_model("textdet", input_hw=(100, 100))
    with pytest.raises(ConfigError, match="unknown model option"):
        resolve_model("textdet", input_sise=64)
    with pytest.raises(ConfigError, match="not found"):
        resolve_model("missing.onnx")
    with pytest.raises(ConfigError, match="cannot import module"):
        resolve_model("no_such_module_gpufleet:Model")
    with pytest.raises(ConfigError, match="no attribute"):
        resolve_model("gpufleet.models.zoo:NoSuchModel")
    with pytest.raises(ConfigError, match="orientation, resnet18"):
        model_factory(42)


def test_module_and_file_specs(tmp_path: Path) -> None:
    (tmp_path / "resolve_file_model.py").write_text(DOUBLER)
    cls = resolve_model(f"{tmp_path / 'resolve_file_model.py'}:Doubler")
    assert cls.__name__ == "Doubler" and cls().predict([2]) == [4]
    assert resolve_model("gpufleet.models.zoo.orientation:OrientationModel") is OrientationModel
    assert model_name("gpufleet.models.zoo.orientation:OrientationModel") == "OrientationModel"
    assert model_name("textdet") == "textdet" and model_name("a/b/net.onnx") == "net"


def test_module_spec_is_found_in_the_current_folder(tmp_path: Path) -> None:
    (tmp_path / "mymodel.py").write_text(DOUBLER)
    code = ("import sys; sys.path = [p for p in sys.path if p not in ('', '.')]\n"
            "from gpufleet.models.resolve import model_factory\n"
            "print(model_factory('mymodel:Doubler')().predict([21]))")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[42]"


def test_model_factory_kinds() -> None:
    make = model_factory("orientation")
    a, b = make(), make()
    assert isinstance(a, OrientationModel) and a is not b
    assert isinstance(model_factory(lambda batch: batch)(), FunctionModel)
    assert model_factory(OrientationModel) is OrientationModel
