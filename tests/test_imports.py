"""The engine and device layers import and run without server, CLI, video or Ray code; exports resolve."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

import gpufleet

BLOCKED = (
    "starlette", "uvicorn", "fastapi", "ray", "typer", "av", "PyNvVideoCodec",
    "gpufleet.server", "gpufleet.cli", "gpufleet.video",
)

SCRIPT = textwrap.dedent("""
    import sys

    BLOCKED = {blocked!r}

    def blocked(name):
        return any(name == b or name.startswith(b + ".") for b in BLOCKED)

    class Block:
        def find_spec(self, name, path=None, target=None):
            if blocked(name):
                raise ImportError(f"import of {{name}} is blocked in this test")
            return None

    sys.meta_path.insert(0, Block())

    import gpufleet
    import gpufleet.devices
    import gpufleet.engine

    with gpufleet.Pool(lambda batch: [x + 1 for x in batch], cpu_devices=2) as pool:
        assert list(pool.map(range(20))) == list(range(1, 21))
        assert len(pool.stats()["per_gpu_stats"]) == 2

    try:
        import gpufleet.cli  # noqa: F401
    except ImportError:
        pass
    else:
        raise AssertionError("the import blocker does not work")

    leaked = sorted(m for m in sys.modules if blocked(m))
    assert not leaked, leaked
    print("engine-ok")
""")


@pytest.mark.timeout(120)
def test_engine_runs_without_server_cli_video_or_ray() -> None:
    env_script = SCRIPT.format(blocked=BLOCKED)
    env = {k: v for k, v in os.environ.items() if k not in ("GPU_IDS", "GPUFLEET_GPUS")}
    proc = subprocess.run([sys.executable, "-c", env_script], capture_output=True, text=True, timeout=110, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "engine-ok" in proc.stdout


PLAIN_MODEL = textwrap.dedent("""
    import sys

    class Plus:
        def predict(self, batch):
            return [(x + 1, "torch" in sys.modules) for x in batch]
""")

NO_TORCH = textwrap.dedent("""
    import sys

    import gpufleet
    from plain_model import Plus

    if __name__ == "__main__":
        with gpufleet.Pool(lambda batch: [x + 1 for x in batch], cpu_devices=2) as pool:
            assert list(pool.map(range(5))) == [1, 2, 3, 4, 5]
        with gpufleet.Pool(Plus, cpu_devices=1, backend="process") as pool:
            assert list(pool.map(range(3))) == [(1, False), (2, False), (3, False)], "the child imported torch"
        assert "torch" not in sys.modules, "the parent imported torch"
        assert gpufleet.TorchModel.__name__ == "TorchModel" and "torch" in sys.modules  # on first use
        print("no-torch-ok")
""")


@pytest.mark.timeout(120)
def test_a_model_without_torch_runs_without_importing_it(tmp_path) -> None:
    # torch takes ~2 s of CPU to import: a process serving a plain Python model (its workers, front ends, the
    # CLI, a load generator) does not pay for it.
    (tmp_path / "plain_model.py").write_text(PLAIN_MODEL)
    (tmp_path / "main.py").write_text(NO_TORCH)
    env = {k: v for k, v in os.environ.items() if k not in ("GPU_IDS", "GPUFLEET_GPUS")}
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    proc = subprocess.run([sys.executable, str(tmp_path / "main.py")], capture_output=True, text=True, timeout=110,
                          env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "no-torch-ok" in proc.stdout


def test_public_exports_resolve() -> None:
    assert len(gpufleet.__all__) == len(set(gpufleet.__all__))
    for name in gpufleet.__all__:
        assert hasattr(gpufleet, name), name
    assert issubclass(gpufleet.WorkerError, gpufleet.GpufleetError)


@pytest.mark.parametrize("module", ["gpufleet.engine", "gpufleet.devices", "gpufleet.errors", "gpufleet.config",
                                    "gpufleet.engine.balancer", "gpufleet.engine.batcher", "gpufleet.models"])
def test_module_exports_resolve(module: str) -> None:
    import importlib

    mod = importlib.import_module(module)
    for name in mod.__all__:
        assert hasattr(mod, name), f"{module}.{name}"


def test_grpc_client_without_grpcio_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "grpc", None)  # as if grpcio were not installed
    with pytest.raises(ImportError, match=r'pip install "gpufleet\[grpc\]"'):
        gpufleet.Client("grpc://127.0.0.1:8001")
