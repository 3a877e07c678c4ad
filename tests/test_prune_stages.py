"""Issue 11: the optional stages around pruning: sparsity training before it
(`compress --sparsity-epochs`) and progressive pruning (`compress --prune-steps`)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from conftest import make_image_folder
from rtdeploy.cli.app import main
from rtdeploy.cli.compress_cmd import check_compress_context
from rtdeploy.compress import CompressConfig
from rtdeploy.errors import ConfigError
from rtdeploy.fields import FieldError
from rtdeploy.models import create_model
from rtdeploy.prune import PruneConfig, classifier_of, conv_widths, prune_model, sparsity_regularizer
from rtdeploy.train import TrainConfig
from rtdeploy.train.job import run_training

IMG = 32


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """(data folder, tiny_se checkpoint trained 2 epochs on it at 32 px, 25 % validation split)."""
    root = tmp_path_factory.mktemp("sparsity")
    data = make_image_folder(root / "data", n_classes=3, per_class=12, size=40)
    from rtdeploy.data import load_splits

    splits = load_splits(str(data), img_size=IMG, seed=1, val_frac=0.25)
    ckpt = root / "base.pt"
    run_training(splits, "tiny_se", TrainConfig(epochs=2, batch_size=8, lr=0.05, seed=1), ckpt)
    return data, ckpt


def _zero_grads(model: nn.Module) -> None:
    for p in model.parameters():
        p.grad = torch.zeros_like(p)


def test_bn_penalty_is_l1_on_batchnorm_scales_only():
    """cap/bn: network slimming's subgradient reg * sign(gamma) on every BN scale, nothing else."""
    model = create_model("tiny", 3)
    regularize = sparsity_regularizer(model, "bn", torch.zeros(1, 3, IMG, IMG), reg=0.01)
    _zero_grads(model)
    regularize(model)
    for name, m in model.named_modules():
        if isinstance(m, nn.BatchNorm2d):
            assert torch.equal(m.weight.grad, 0.01 * torch.sign(m.weight.detach())), name
            assert not m.bias.grad.any(), name
        elif isinstance(m, (nn.Conv2d, nn.Linear)):
            assert not m.weight.grad.any(), name


def test_group_lasso_penalises_the_coupled_weights_of_every_group():
    """Other criteria: torch-pruning's group lasso reaches the convolutions, not only the BN scales."""
    model = create_model("tiny", 3)
    regularize = sparsity_regularizer(model, "l1", torch.zeros(1, 3, IMG, IMG), reg=0.01)
    _zero_grads(model)
    regularize(model)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert all(m.weight.grad.abs().sum() > 0 for m in convs)
    head = classifier_of(model)
    assert not head.bias.grad.any()  # its outputs are the classes: never a pruned channel


def test_bn_criterion_without_batchnorm_is_a_config_error():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3))
    with pytest.raises(ConfigError, match="no BatchNorm"):
        sparsity_regularizer(model, "bn", torch.zeros(1, 3, IMG, IMG), reg=1e-4)


@pytest.mark.parametrize("epochs,reg", [(-1, 1e-4), (1.5, 1e-4), (True, 1e-4), (1, 0.0), (1, float("nan")), (1, -1e-3)])
def test_library_refuses_bad_sparsity_settings(epochs, reg):
    with pytest.raises(ConfigError, match="--sparsity-"):
        CompressConfig(sparsity_epochs=epochs, sparsity_reg=reg)


def test_sparsity_stage_shrinks_bn_scales_and_is_reported(trained, tmp_path, capsys):
    """The penalty pulls the folded BN scales down against the same run with a negligible one
    (same seed, so the difference is the penalty's: 6 steps x lr 0.1 x 0.05 ~ 0.03); the report
    and the table show the stage; the default run has no such stage."""
    data, ckpt = trained
    base = ["compress", str(ckpt), "--data", str(data), "--epochs", "1", "--batch-size", "8", "--seed", "2",
            "--lr", "0.1", "--schedule", "constant", "--sparsity-epochs", "2"]
    assert main([*base, "--out", str(tmp_path / "s.pt"), "--sparsity-reg", "0.05"]) == 0
    out = capsys.readouterr().out
    assert "after sparsity training" in out and "sparsify" in out
    assert main([*base, "--out", str(tmp_path / "n.pt"), "--sparsity-reg", "1e-9"]) == 0
    capsys.readouterr()
    rep = json.loads((tmp_path / "s.json").read_text())
    sp, control = rep["sparsity"], json.loads((tmp_path / "n.json").read_text())["sparsity"]
    assert sp["epochs"] == 2 and sp["reg"] == 0.05 and sp["regularizer"].startswith("bn-l1")
    assert sp["bn_scale_l1_before"] == control["bn_scale_l1_before"]
    assert sp["bn_scale_l1"] < control["bn_scale_l1"] - 0.01, (sp, control)
    assert sp["evaluated_on"] == "validation split"
    assert [r["stage"] for r in rep["stages"]] == ["original", "folded", "sparsified", "pruned", "finetuned"]
    assert rep["settings"]["sparsity_epochs"] == 2
    assert main([*base[:-2], "--out", str(tmp_path / "d.pt")]) == 0
    capsys.readouterr()
    plain = json.loads((tmp_path / "d.json").read_text())
    assert plain["sparsity"] is None and "sparsified" not in [r["stage"] for r in plain["stages"]]


@pytest.mark.parametrize("flag,value", [("--sparsity-epochs", "-1"), ("--sparsity-epochs", "x"),
                                        ("--sparsity-reg", "0"), ("--sparsity-reg", "inf")])
def test_bad_sparsity_flags_are_one_line_exit_2(trained, tmp_path, capsys, flag, value):
    data, ckpt = trained
    code = main(["compress", str(ckpt), "--data", str(data), "--out", str(tmp_path / "p.pt"), flag, value])
    err = capsys.readouterr().err
    assert code == 2 and flag in err and len(err.strip().splitlines()) == 1, err
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("sparsity", [[1], {"epochs": -2, "reg": 1e-4, "regularizer": "x"},
                                      {"epochs": 1, "reg": 1e-4, "regularizer": "x", "seconds": torch.ones(2)},
                                      {"epochs": 1, "reg": 1e-4, "regularizer": "x", "seconds": float("inf")},
                                      {"epochs": 1, "reg": 1e-4, "regularizer": "x", "evaluated_on": "v" * 10_000}])
def test_damaged_sparsity_record_in_a_resume_file_is_refused(sparsity):
    ctx = {"fold": None, "prune": {"ratio": 0.7}, "accuracy": {}, "seconds": {}, "rows": [], "sparsity": sparsity}
    with pytest.raises(FieldError, match="state.compress.sparsity"):
        check_compress_context(ctx)


@pytest.mark.parametrize("criterion", ["l1", "taylor"])
def test_progressive_pruning_lands_on_the_one_shot_widths(criterion):
    """Steps target fractions of the original widths, so the last one gives the one-shot widths;
    the fine-tuning callback runs after every step but the last; taylor takes fresh gradients."""
    torch.manual_seed(0)
    one, steps = create_model("tiny", 3), create_model("tiny", 3)
    steps.load_state_dict(one.state_dict())
    x, y = torch.randn(8, 3, IMG, IMG), torch.randint(0, 3, (8,))
    calib = [(x, y)] * 2
    example = torch.zeros(1, 3, IMG, IMG)
    prune_model(one, criterion, example, PruneConfig(ratio=0.6, round_to=1), calib=calib)
    seen = []
    report = prune_model(steps, criterion, example, PruneConfig(ratio=0.6, round_to=1, steps=3), calib=calib,
                         between_steps=lambda k: seen.append(k) or {"epochs": 1})
    assert seen == [1, 2]
    assert conv_widths(steps) == conv_widths(one)
    assert [round(s["ratio"], 6) for s in report.steps] == [0.2, 0.4, 0.6]
    macs = [s["macs"] for s in report.steps]
    assert macs[0] > macs[1] > macs[2] == report.macs_after


@pytest.mark.parametrize("criterion", ["cap", "bn"])
def test_progressive_compress_records_each_step(trained, tmp_path, capsys, criterion):
    """cap and bn read the folded s_bar buffers, which must follow their BatchNorm through every
    step; the fine-tuning between steps is timed as fine-tuning, not as pruning."""
    data, ckpt = trained
    base = ["compress", str(ckpt), "--data", str(data), "--epochs", "1", "--batch-size", "8", "--seed", "2",
            "--criterion", criterion]
    assert main([*base, "--out", str(tmp_path / "p.pt"), "--prune-steps", "3", "--step-epochs", "1"]) == 0
    assert main([*base, "--out", str(tmp_path / "o.pt")]) == 0
    capsys.readouterr()
    prog, once = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("p", "o"))
    assert [s["step"] for s in prog["prune"]["steps"]] == [1, 2, 3] and once["prune"]["steps"] == []
    assert all(s["epochs"] == 1 and s["seconds"] > 0 for s in prog["prune"]["steps"][:2])
    assert prog["prune"]["widths_after"] == once["prune"]["widths_after"] and prog["macs"] == once["macs"]
    assert prog["settings"]["prune"]["steps"] == 3 and prog["settings"]["step_epochs"] == 1
    tuned = sum(s["seconds"] for s in prog["prune"]["steps"][:2])
    # (no wall-clock comparison here: a loaded machine can make either part the longer one)
    assert prog["seconds"]["step_finetune"] == pytest.approx(tuned)
    assert 0 <= prog["prune"]["seconds"] <= prog["seconds"]["prune"]
    assert "step_finetune" not in once["seconds"]


@pytest.mark.parametrize("flag,value", [("--prune-steps", "0"), ("--prune-steps", "101"), ("--prune-steps", "2.5"),
                                        ("--step-epochs", "0")])
def test_bad_progressive_flags_are_one_line_exit_2(trained, tmp_path, capsys, flag, value):
    data, ckpt = trained
    code = main(["compress", str(ckpt), "--data", str(data), "--out", str(tmp_path / "p.pt"), flag, value])
    err = capsys.readouterr().err
    assert code == 2 and flag in err and len(err.strip().splitlines()) == 1, err
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("steps", [0, 101, 2.0, True])
def test_library_refuses_bad_prune_steps(steps):
    with pytest.raises(ConfigError, match="--prune-steps"):
        PruneConfig(steps=steps)


def test_global_progressive_pruning_cannot_promise_a_target():
    """A target's ratio is found with one-shot trials; a global ranking redone between steps ends
    at other widths (seen: 0.53 of the MACs for a 0.4 target), so the combination is refused."""
    with pytest.raises(ConfigError, match="--scope local"):
        PruneConfig(steps=3, scope="global", target_macs=0.4)
    PruneConfig(steps=3, scope="local", target_macs=0.4)
    PruneConfig(steps=3, scope="global")


def test_settings_key_of_a_run_without_the_new_stages_is_the_old_one():
    """A '<out>.last' written before --sparsity-epochs/--prune-steps existed still resumes."""
    from rtdeploy.compress import _settings_key

    key = json.loads(_settings_key(CompressConfig()))
    assert not {"sparsity_epochs", "sparsity_reg", "step_epochs"} & set(key) and "steps" not in key["prune"]
    key = json.loads(_settings_key(CompressConfig(sparsity_epochs=2, step_epochs=3, prune=PruneConfig(steps=2))))
    assert key["sparsity_epochs"] == 2 and key["step_epochs"] == 3 and key["prune"]["steps"] == 2


def test_bn_sparsity_on_a_model_without_batchnorm_is_refused_before_any_work():
    from rtdeploy.prune import check_sparsity_model

    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3))
    with pytest.raises(ConfigError, match="pass --criterion l1"):
        check_sparsity_model(model, "cap")
    check_sparsity_model(model, "l1")


def test_interrupt_before_the_first_resume_file_says_run_again(tmp_path, monkeypatch):
    """Ctrl-C during data loading, sparsity training or progressive steps: no '<out>.last' of this
    run exists yet, so the line must not advise --resume; once it exists, it does."""
    import os

    from rtdeploy.cli import app

    monkeypatch.setattr(app, "_command", "compress")
    last = tmp_path / "p.pt.last"
    last.write_bytes(b"an earlier run's")
    os.utime(last, (1, 1))  # left by an earlier run, replaced with --force
    app.expect_resume_file(last, resuming=False)
    assert app._interrupted() == app.INTERRUPTED_NO_RESUME
    last.write_bytes(b"this run's")
    assert app._interrupted() == app.INTERRUPTED
    last.unlink()
    assert app._interrupted() == app.INTERRUPTED_NO_RESUME
    app.expect_resume_file(last, resuming=True)  # continuing: the file given to --resume is intact
    assert app._interrupted() == app.INTERRUPTED


@pytest.mark.parametrize("steps", ["x", [{"step": 0, "ratio": 0.1}], [{"step": 1, "ratio": float("nan")}],
                                   [{"step": 1, "macs": "many"}]])
def test_damaged_progressive_record_in_a_resume_file_is_refused(steps):
    ctx = {"fold": None, "prune": {"ratio": 0.7, "steps": steps}, "accuracy": {}, "seconds": {}, "rows": []}
    with pytest.raises(FieldError, match="state.compress.prune.steps"):
        check_compress_context(ctx)
