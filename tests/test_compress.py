"""`rtdeploy compress` end to end (the real CLI entry point), its report, its checkpoint, its errors."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import make_image_folder
from rtdeploy.attention import capture_attention
from rtdeploy.checkpoint import ModelMeta, load_checkpoint, save_checkpoint
from rtdeploy.cli.app import main
from rtdeploy.compress import CompressConfig, compress
from rtdeploy.evaluation import splits_for
from rtdeploy.models import attention_blocks, create_model
from rtdeploy.prune import PruneConfig, fold_attention, prune_model
from rtdeploy.train import TrainConfig, evaluate
from rtdeploy.train.job import run_training

IMG = 32


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """(data folder, tiny_se checkpoint trained 2 epochs on it at 32 px)."""
    root = tmp_path_factory.mktemp("compress")
    data = make_image_folder(root / "data", n_classes=3, per_class=8, size=40)
    from rtdeploy.data import load_splits

    splits = load_splits(str(data), img_size=IMG, seed=3)
    ckpt = root / "base.pt"
    run_training(splits, "tiny_se", TrainConfig(epochs=2, batch_size=8, lr=0.05, seed=3), ckpt)
    return data, ckpt


def cli(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_compress_cli_end_to_end(trained, tmp_path, capsys):
    data, ckpt = trained
    out, report_path = tmp_path / "pruned.pt", tmp_path / "report.json"
    code, stdout, err = cli(capsys, "compress", ckpt, "--data", data, "--ratio", 0.5, "--round-to", 8,
                            "--epochs", 2, "--batch-size", 8, "--calib-images", 12, "--out", out,
                            "--report", report_path)
    assert code == 0, err
    r = json.loads(report_path.read_text())
    assert r["criterion"] == "cap" and r["ratio"] == 0.5 and r["seed"] == 0  # auto: cap for an SE model
    assert set(r["params"]) == {"before", "after"} and set(r["macs"]) == {"before", "after"}
    assert all(isinstance(v, int) for v in (*r["params"].values(), *r["macs"].values()))
    assert r["macs"]["after"] < 0.5 * r["macs"]["before"] and r["params"]["after"] < r["params"]["before"]
    assert set(r["accuracy"]) == {"original", "folded", "pruned", "finetuned", "finetuned_selection",
                                  "finetuned_last_epoch_eval"}
    assert all(isinstance(a, float) and 0.0 <= a <= 1.0 for a in r["accuracy"].values())
    assert {"capture", "fold", "prune", "finetune", "save"} <= set(r["seconds"])
    assert all(v >= 0 for v in r["seconds"].values())
    assert "torch-pruning" in r["versions"] and r["settings"]["prune"]["round_to"] == 8
    assert r["fold"]["ok"] and len(r["fold"]["blocks"]) == 5

    model, meta = load_checkpoint(out)  # a plain, SE-free, narrower tiny_se that rebuilds from metadata
    assert not attention_blocks(model) and model.layer2[0].conv1.out_channels == 16
    history = meta.pruning
    assert history["criterion"] == "cap" and history["ratio"] == 0.5 and history["epochs"] == 2
    assert history["accuracy"] == r["accuracy"] and history["macs"] == r["macs"]["after"]
    test = splits_for(meta, str(data)).test
    assert evaluate(model, test).accuracy == pytest.approx(r["accuracy"]["finetuned"])
    for row in ("original", "folded", "pruned", "fine-tuned"):
        assert row in stdout
    assert "calibration" in err or "done" in err  # progress went to stderr, not into the table


def test_compress_library_without_se_with_target_macs_and_distillation(trained, tmp_path):
    data, _ = trained
    from rtdeploy.data import load_splits

    splits = load_splits(str(data), img_size=IMG, seed=3)
    plain = tmp_path / "plain.pt"
    meta = ModelMeta("tiny", splits.classes, IMG, splits.mean, splits.std)
    save_checkpoint(plain, create_model("tiny", len(splits.classes)), meta)
    cfg = CompressConfig(criterion="bn", loss="ce", distill=True,
                         prune=PruneConfig(target_macs=0.5, round_to=1),
                         train=TrainConfig(epochs=1, batch_size=8, lr=0.01))
    stages = []
    r = compress(plain, splits, cfg, out=tmp_path / "p.pt", on_stage=lambda ev: stages.append(ev.name))
    assert r.accuracy["folded"] is None and "capture" not in r.seconds
    assert r.macs["after"] / r.macs["before"] == pytest.approx(0.5, rel=0.1)
    assert 0 < r.ratio < 1 and r.settings["distill"] is True
    assert stages[0] == stages[1] == "evaluate_original" and stages[-1] == "save"
    assert (tmp_path / "p.pt").exists() and not (tmp_path / "p.json").exists()  # no report path given


@pytest.mark.parametrize("arch,size,keep_se", [("tiny_se", 32, False), ("tiny_se", 32, True),
                                               ("resnet18_se", 64, False)])
def test_reloaded_pruned_checkpoint_reproduces_outputs_exactly(tmp_path, arch, size, keep_se):
    torch.manual_seed(0)
    model = create_model(arch, 4).eval()
    x = torch.randn(4, 3, size, size)
    if not keep_se:  # fold + strip, as compress does; keep_se: pruned through SE blocks left in place
        fold_attention(model, capture_attention(model, x), x)
    prune_model(model, "l1", x[:1], PruneConfig(ratio=0.6, round_to=8))
    for m in model.modules():  # non-default statistics so that every saved tensor matters
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    path = tmp_path / "p.pt"
    save_checkpoint(path, model, ModelMeta(arch, [f"c{i}" for i in range(4)], size, (0.5,) * 3, (0.25,) * 3))
    reloaded, _ = load_checkpoint(path)
    with torch.no_grad():
        assert torch.equal(model(x), reloaded(x))
    assert len(attention_blocks(reloaded)) == (len(attention_blocks(create_model(arch, 4))) if keep_se else 0)


def _tiny_checkpoint(path: Path, classes: list[str]) -> Path:
    save_checkpoint(path, create_model("tiny", len(classes)), ModelMeta("tiny", classes, IMG, (0.5,) * 3, (0.25,) * 3))
    return path


@pytest.mark.parametrize("case", ["ratio", "round_to", "cap_without_se", "classes", "existing_out"])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(trained, tmp_path, capsys, case):
    data, ckpt = trained
    args = {"ratio": [ckpt, "--ratio", 1.5], "round_to": [ckpt, "--round-to", 0],
            "cap_without_se": [_tiny_checkpoint(tmp_path / "tiny.pt", ["class_0", "class_1", "class_2"]),
                               "--criterion", "cap"],
            "classes": [ckpt], "existing_out": [ckpt]}[case]
    if case == "classes":
        data = make_image_folder(tmp_path / "other", n_classes=3, per_class=4, size=40, class_names=["a", "b", "c"])
    out, report = tmp_path / "p.pt", tmp_path / "p.json"
    if case == "existing_out":
        report.write_text("{}")
    code, stdout, err = cli(capsys, "compress", *args, "--data", data, "--epochs", 1, "--out", out)
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("rtdeploy: error:") and "Traceback" not in err
    needle = {"ratio": "--ratio", "round_to": "--round-to", "cap_without_se": "--criterion bn",
              "classes": "classes do not match", "existing_out": "--force"}[case]
    assert needle in lines[0]
    assert not out.exists() and (case == "existing_out" or not report.exists())
    assert not list(tmp_path.glob(".p.*.tmp"))


def test_ratio_emptying_a_layer_and_conflicting_flags(trained, tmp_path, capsys):
    data, ckpt = trained
    code, _, err = cli(capsys, "compress", ckpt, "--ratio", 0.95, "--round-to", 1, "--out", tmp_path / "p.pt")
    assert code == 2 and "would remove every channel" in err
    code, _, err = cli(capsys, "compress", ckpt, "--ratio", 0.5, "--target-macs", 0.2, "--out", tmp_path / "p.pt")
    assert code == 2 and "either --ratio or --target-macs" in err
    assert not (tmp_path / "p.pt").exists()


def test_help_teaches(capsys):
    code, out, _ = cli(capsys, "compress", "--help")
    assert code == 0
    for text in ("--criterion", "--target-macs", "--round-to", "--distill", "Example:"):
        assert text in out
