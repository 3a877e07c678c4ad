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


# ---------------------------------------------------------------- review 3: bad arguments are typed errors
#
# Each of these used to escape as a bare TypeError/RuntimeError/NotImplementedError from inside
# torch, or as UnprunableError blaming the architecture ("ResNet cannot be pruned ... choose
# another architecture") for a bad img_size or NaN weights, or wrote an ONNX file whose metadata
# rtdeploy itself refuses to read back.

_META = {"classes": ["a", "b", "c"], "mean": (0.5,) * 3, "std": (0.2,) * 3}


@pytest.mark.parametrize("img_size", [0, -3, 16.5, "16", True, 100_000])
def test_bad_img_size_is_a_config_error_before_any_work(tmp_path, img_size):
    model = create_model("tiny", 3).eval()
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ConfigError, match="img_size"):
        rtdeploy.prune_channels(model, criterion="l1", ratio=0.5, img_size=img_size)
    with pytest.raises(ConfigError, match="img_size"):
        rtdeploy.export_onnx(model, out=tmp_path / "m.onnx", img_size=img_size, **_META)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.parametrize("bad", [
    {"classes": ["a", "a", "c"]}, {"classes": "abc"}, {"classes": ["a", "b\nc", "d"]},
    {"mean": (0.5, 0.5)}, {"mean": "0.5"}, {"std": (0.2, 0.0, 0.2)}, {"std": (float("nan"),) * 3},
])
def test_export_refuses_metadata_rtdeploy_cannot_read_back(tmp_path, bad):
    model = create_model("tiny", 3).eval()
    with pytest.raises(ConfigError, match="classes|mean|std"):
        rtdeploy.export_onnx(model, out=tmp_path / "m.onnx", img_size=16, **{**_META, **bad})
    assert not (tmp_path / "m.onnx").exists()


def _nan_model():
    model = create_model("tiny", 3).eval()
    with torch.no_grad():
        model.fc.weight[0, 0] = float("nan")
    return model


@pytest.mark.parametrize("kind", ["meta device", "half", "NaN weights", "not a module"])
def test_api_refuses_a_model_it_cannot_work_on(tmp_path, kind):
    model = {"meta device": lambda: create_model("tiny", 3).to("meta"),
             "half": lambda: create_model("tiny", 3).half(),
             "NaN weights": _nan_model, "not a module": lambda: "resnet18"}[kind]()
    with pytest.raises(ConfigError, match="model"):
        rtdeploy.prune_channels(model, criterion="l1", ratio=0.5, img_size=16)
    with pytest.raises(ConfigError, match="model"):
        rtdeploy.export_onnx(model, out=tmp_path / "m.onnx", img_size=16, **_META)
    with pytest.raises(ConfigError, match="model"):
        rtdeploy.fold_attention(model, images=torch.randn(2, 3, 16, 16))
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.parametrize("images", [torch.randn(2, 1, 16, 16), torch.zeros(2, 3, 16, 16, dtype=torch.uint8),
                                    torch.randn(3, 16, 16), "images/"], ids=["1 channel", "uint8", "3-d", "a string"])
def test_fold_refuses_what_is_not_a_batch_of_images(images):
    model = create_model("tiny_se", 3).eval()
    with pytest.raises(ConfigError, match=r"\[N, 3, H, W\]"):
        rtdeploy.fold_attention(model, images=images)
    with pytest.raises(ConfigError, match=r"\[N, 3, H, W\]"):
        rtdeploy.capture_attention(model, images=images)


class _TwoOutputs(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.net = create_model("tiny", 3)

    def forward(self, x):
        return self.net(x), x


@pytest.mark.parametrize("case", ["parity images empty", "parity images a list", "parity images of another size",
                                  "model returns a tuple"])
def test_export_refuses_bad_parity_images_and_non_classifiers(tmp_path, case):
    model, extra = create_model("tiny", 3).eval(), {}
    if case == "model returns a tuple":
        model = _TwoOutputs().eval()
    else:
        extra["parity_images"] = {"parity images empty": torch.randn(0, 3, 16, 16),
                                  "parity images a list": [torch.randn(2, 3, 16, 16)],
                                  "parity images of another size": torch.randn(2, 3, 20, 20)}[case]
    with pytest.raises(ConfigError, match="parity_images|logits"):
        rtdeploy.export_onnx(model, out=tmp_path / "m.onnx", img_size=16, exporter="torchscript", **_META, **extra)
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.parametrize("setting", [{"ratio": "0.5"}, {"target_macs": "0.5"}, {"ratio": [0.5]}])
def test_prune_settings_of_the_wrong_type_are_config_errors(setting):
    with pytest.raises(ConfigError, match="must be a number"):
        rtdeploy.prune_channels(create_model("tiny", 3).eval(), criterion="l1", img_size=16, **setting)


def test_export_leaves_a_training_model_in_training_mode(tmp_path):
    """Review 3: export_onnx switched the caller's model to eval mode and left it there, so a
    training loop that exports a snapshot each epoch went on training with frozen BatchNorm
    statistics and no dropout."""
    model = create_model("tiny", 3).train()
    rtdeploy.export_onnx(model, out=tmp_path / "m.onnx", img_size=16, exporter="torchscript", **_META)
    assert model.training and all(m.training for m in model.modules())
    assert (tmp_path / "m.onnx").exists()


def _ds(n=8, labels=None, size=16):
    return TensorDataset(torch.randn(n, 3, size, size), torch.arange(n) % 3 if labels is None else labels)


@pytest.mark.parametrize("case", ["train None", "train empty", "label out of range", "float labels", "meta model"])
def test_finetune_refuses_bad_data_and_models_as_config_errors(case):
    """Review 3: each escaped as a bare TypeError/ValueError/IndexError/RuntimeError from torch."""
    model, train = create_model("tiny", 3), _ds()
    if case == "train None":
        train = None
    elif case == "train empty":
        train = _ds(0, torch.zeros(0, dtype=torch.long))
    elif case == "label out of range":
        train = _ds(8, torch.arange(8))
    elif case == "float labels":
        train = _ds(8, torch.zeros(8))
    else:
        model = model.to("meta")
    with pytest.raises(ConfigError):
        rtdeploy.finetune(model, train=train, val=_ds(), epochs=1, device="cpu")
