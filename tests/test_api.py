"""The Python API (rtdeploy.api, exported at the top level) on plain nn.Modules and loaders."""
from __future__ import annotations

import copy
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import rtdeploy
from rtdeploy.errors import ConfigError, PipelineError, UserInputError
from rtdeploy.models import create_model
from rtdeploy.prune import UnprunableError

ROOT = Path(__file__).resolve().parents[1]
SECTION = "## Use from Python"


def _python_example() -> str:
    """The README's "Use from Python" example (docs_python_api.md until that is merged into it)."""
    for doc in (ROOT / "README.md", ROOT / "docs_python_api.md"):
        text = doc.read_text() if doc.exists() else ""
        if SECTION in text:
            section = text.split(SECTION, 1)[1].split("\n## ", 1)[0]
            return re.search(r"```python\n(.*?)```", section, re.S).group(1)
    pytest.fail(f"no '{SECTION}' section in README.md or docs_python_api.md")


@pytest.mark.slow
def test_the_documented_example_runs(tmp_path):
    script = tmp_path / "example.py"
    script.write_text(_python_example())
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, env=env,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "fold: exact" in proc.stdout and "parity: True" in proc.stdout
    before, after = map(lambda s: int(s.replace(",", "")), re.search(r"MACs ([\d,]+) -> ([\d,]+)", proc.stdout).groups())
    assert after < 0.7 * before
    assert (tmp_path / "mobilenet_v3_cap50.onnx").stat().st_size > 0
    assert float(re.search(r"p50 latency ([\d.]+) ms", proc.stdout).group(1)) > 0


def test_api_is_exported_lazily_from_the_package():
    for name in ("capture_attention", "fold_attention", "prune_channels", "finetune", "export_onnx", "benchmark"):
        assert callable(getattr(rtdeploy, name)), name
    with pytest.raises(AttributeError):
        rtdeploy.not_a_function  # noqa: B018
    code = "import sys, rtdeploy; print('rtdeploy.api' in sys.modules, 'torch_pruning' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120).stdout
    assert out.split() == ["False", "False"]  # `import rtdeploy` stays cheap (the CLI imports it)


def _loader(n: int = 16, size: int = 32, classes: int = 3) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(n, 3, size, size, generator=g), torch.arange(n) % classes
    return DataLoader(TensorDataset(x, y), batch_size=8)


def test_fold_prune_finetune_on_a_users_module():
    torch.manual_seed(0)
    model = create_model("tv/regnet_y_400mf", 3)
    fold = rtdeploy.fold_attention(model, images=_loader(), max_images=16)
    assert fold.ok and fold.verdict.startswith("exact") and fold.removed
    report = rtdeploy.prune_channels(model, criterion="cap", ratio=0.5, img_size=32)
    assert report.criterion == "cap" and report.macs_after < 0.6 * report.macs_before
    loader = _loader()
    tuned = rtdeploy.finetune(model, train=loader, val=loader.dataset, epochs=1, lr=0.01)
    assert len(tuned.epochs) == 1 and 0.0 <= tuned.best_accuracy <= 1.0


def test_prune_refuses_bad_settings_and_unprunable_models_before_touching_them():
    model = create_model("tiny", 3)
    with pytest.raises(ConfigError, match="either ratio or target_macs"):
        rtdeploy.prune_channels(model, criterion="l1", ratio=0.5, target_macs=0.5, img_size=32)
    with pytest.raises(ConfigError, match="cap"):
        rtdeploy.prune_channels(model, criterion="cap", ratio=0.5, img_size=32)
    shuffle = create_model("tv/shufflenet_v2_x0_5", 3)
    before = copy.deepcopy(shuffle.state_dict())
    with pytest.raises(UnprunableError, match="channel shuffle") as e:
        rtdeploy.prune_channels(shuffle, criterion="l1", ratio=0.5, img_size=32)
    assert isinstance(e.value, UserInputError) and e.value.exit_code == 2
    assert all(torch.equal(v, shuffle.state_dict()[k]) for k, v in before.items())


def test_export_checks_classes_and_parity_then_benchmarks(tmp_path):
    torch.manual_seed(0)
    model = create_model("tiny", 3).eval()
    with pytest.raises(ConfigError, match="3 outputs but 2 classes"):
        rtdeploy.export_onnx(model, out=tmp_path / "m.onnx", img_size=32, classes=["a", "b"],
                             mean=(0.5,) * 3, std=(0.2,) * 3)
    report = rtdeploy.export_onnx(model, out=tmp_path / "m.onnx", img_size=32, classes=["a", "b", "c"],
                                  mean=(0.5,) * 3, std=(0.2,) * 3)
    assert report.parity.passed and report.metadata["classes"] == ["a", "b", "c"]
    with pytest.raises(UserInputError, match="--force"):
        rtdeploy.export_onnx(model, out=tmp_path / "m.onnx", img_size=32, classes=["a", "b", "c"],
                             mean=(0.5,) * 3, std=(0.2,) * 3)
    bench = rtdeploy.benchmark([tmp_path / "m.onnx"], runs=5, warmup=1, isolate=False)
    assert bench.models[0].results[0].latency_ms.p50 > 0


def test_export_refuses_a_model_onnx_runtime_disagrees_with(tmp_path):
    """Parity is judged, not just reported: a tolerance nothing can meet fails and writes nothing."""
    from rtdeploy.export import Tolerance

    model = create_model("tiny", 3).eval()
    with pytest.raises(PipelineError, match="disagree"):
        rtdeploy.export_onnx(model, out=tmp_path / "m.onnx", img_size=32, classes=["a", "b", "c"],
                             mean=(0.5,) * 3, std=(0.2,) * 3, tolerance=Tolerance(atol=0.0, rtol=0.0, min_top1=1.0),
                             parity_images=torch.randn(4, 3, 32, 32) * 1e3)
    assert not (tmp_path / "m.onnx").exists()
