"""Issue 11: one source of truth for defaults, the recipes, and the epoch-selection rule."""
import json
from dataclasses import asdict, fields, replace

import pytest

from rtdeploy.compress import CompressConfig, finetune_defaults
from rtdeploy.defaults import COMPRESS_RECIPES, EXPORTER, OPSETS, TRAIN_RECIPES, resolve, shown
from rtdeploy.errors import ConfigError
from rtdeploy.export import ExportConfig
from rtdeploy.export.onnx_export import DEFAULT_EXPORTER, DEFAULT_OPSETS
from rtdeploy.prune import PruneConfig
from rtdeploy.train import TrainConfig
from rtdeploy.train.selection import keep_peak, selection_split, significant_lead


def test_library_defaults_are_the_default_recipes():
    t, c = TRAIN_RECIPES["default"], COMPRESS_RECIPES["default"]
    cfg = TrainConfig()
    for name in ("epochs", "lr", "schedule", "label_smoothing", "select", "batch_size", "momentum", "weight_decay"):
        assert getattr(cfg, name) == getattr(t, name), name
    cc = CompressConfig()
    assert (cc.criterion, cc.loss, cc.distill, cc.r1, cc.kd_weight) == (c.criterion, c.loss, c.distill, c.r1, c.kd_weight)
    assert (cc.train.epochs, cc.train.lr, cc.train.schedule, cc.train.select) == (c.epochs, c.lr, c.schedule, c.select)
    assert (PruneConfig().ratio, PruneConfig().round_to, PruneConfig().scope) == (c.ratio, c.round_to, c.scope)
    assert (cc.sparsity_epochs, cc.sparsity_reg, cc.step_epochs, PruneConfig().steps) == \
        (c.sparsity_epochs, c.sparsity_reg, c.step_epochs, c.prune_steps) == (0, 1e-4, 10, 1)
    assert ExportConfig().exporter == DEFAULT_EXPORTER == EXPORTER and DEFAULT_OPSETS is OPSETS


def test_paper_recipe_is_the_old_behaviour():
    """The paper's protocol as rtdeploy ran it before round 2 (select on test, no augmentation)."""
    t, c = TRAIN_RECIPES["paper"], COMPRESS_RECIPES["paper"]
    assert (t.epochs, t.lr, t.schedule, t.label_smoothing) == (30, 0.05, "cosine", 0.0)
    assert (t.val_frac, t.augment, t.crop_scale, t.select) == (0.0, False, 1.0, "test")
    assert (c.criterion, c.loss, c.epochs, c.lr, c.schedule, c.distill) == ("cap", "aml", 30, 0.01, "cosine", False)
    assert (c.augment, c.crop_scale, c.select, c.ratio, c.round_to) == (False, 1.0, "test", 0.7, 8)


def test_resolve_puts_given_options_over_the_recipe_and_rejects_unknown_recipes():
    r = resolve(TRAIN_RECIPES, "paper", epochs=3, lr=None)
    assert r.epochs == 3 and r.lr == 0.05
    with pytest.raises(ConfigError, match="--recipe must be one of default, paper"):
        resolve(TRAIN_RECIPES, "papr")
    assert shown(TRAIN_RECIPES, "epochs") == "100 (paper: 30)" and shown(TRAIN_RECIPES, "batch_size") == "64"


def test_every_train_option_of_a_recipe_reaches_train_config():
    """No recipe field is silently dropped between the recipe and the library's config."""
    names = {f.name for f in fields(TrainConfig)} | {"val_frac", "test_frac", "augment", "crop_scale", "img_size"}
    assert {f.name for f in fields(TRAIN_RECIPES["default"])} <= names
    ft = finetune_defaults(COMPRESS_RECIPES["paper"])
    assert (ft.epochs, ft.lr, ft.schedule, ft.select) == (30, 0.01, "cosine", "test")


@pytest.mark.parametrize("best,last,n,lead", [
    (0.89, 0.85, 210, False),   # 4 points on 210 images: within 2 standard errors (2 x 2.3)
    (0.90, 0.80, 210, True),    # 10 points: a real drop after the peak
    (0.86, 0.85, 10_000, True),  # one point is significant on a large validation split
    (0.85, 0.85, 210, False),
])
def test_significant_lead(best, last, n, lead):
    assert significant_lead(best, last, n) is lead


def test_keep_peak_by_rule():
    assert keep_peak("test", 0.80, 0.79, 100) is True  # the paper keeps its best test epoch
    assert keep_peak("last", 0.99, 0.10, 100) is False
    assert keep_peak("val", 0.99, 0.10, 100) is True and keep_peak("val", 0.80, 0.79, 100) is False


def test_selection_split_never_falls_back_to_test():
    class S:
        val, test = None, object()
    ds, rule, label = selection_split(S, "val")
    assert rule == "last" and "no validation split" in label
    ds, rule, label = selection_split(S, "test")
    assert ds is S.test and rule == "test" and "paper" in label


def test_plain_train_runs_the_default_recipe(cli, image_folder, tmp_path):
    """The summary of a plain `train` (only --epochs lowered for time) records the library's defaults."""
    data = image_folder(n_classes=3, per_class=10, size=24)
    out = tmp_path / "m.pt"
    code, _, err = cli("train", "--data", data, "--arch", "tiny_se", "--img-size", 16, "--epochs", 2, "--out", out)
    assert code == 0, err
    s = json.loads(out.with_suffix(".json").read_text())
    assert s["config"] == {**asdict(TrainConfig(epochs=2)), "milestones": list(TrainConfig().milestones)}
    assert s["augment"] is True and s["crop_scale"] == 0.5 and s["split"]["val"] == 3
    assert s["eval_split"] == "val" and 0 <= s["test_accuracy"] <= 1


def test_paper_recipe_selects_on_test_and_says_so(cli, image_folder, tmp_path):
    data = image_folder(n_classes=3, per_class=10, size=24)
    out = tmp_path / "m.pt"
    code, stdout, err = cli("train", "--data", data, "--arch", "tiny_se", "--img-size", 16, "--epochs", 2,
                            "--recipe", "paper", "--out", out)
    assert code == 0, err
    s = json.loads(out.with_suffix(".json").read_text())
    assert s["config"]["lr"] == 0.05 and s["config"]["schedule"] == "cosine" and s["config"]["select"] == "test"
    assert s["augment"] is False and s["split"]["val"] == 0 and s["eval_split"] == "test"
    accs = [e["eval_accuracy"] for e in s["epochs"]]
    assert s["best_accuracy"] == max(accs) and s["test_accuracy"] == pytest.approx(max(accs), abs=1e-6)
    assert "selected on test" in stdout


def test_help_shows_the_recipe_defaults(cli):
    code, out, _ = cli("compress", "--help")
    assert code == 0
    flat = "".join(out.replace("│", "").split())  # the help box wraps lines anywhere
    assert "150(paper:30)" in flat and "auto(paper:cap)" in flat and "0.05(paper:0.01)" in flat


@pytest.mark.parametrize("ratio,epochs", [(None, 150), (0.3, 150), (0.7, 150), (0.8, 225), (0.85, 300),
                                          (0.9, 450), (0.99, 450)])
def test_deeper_pruning_fine_tunes_longer(ratio, epochs):
    """150 x (1 - 0.7) / (1 - ratio) above 0.7, at most 3x; None (a searched ratio): 150."""
    assert COMPRESS_RECIPES["default"].epochs_for(ratio) == epochs
    assert COMPRESS_RECIPES["paper"].epochs_for(ratio) == 30  # the paper's length at every ratio


def test_library_fine_tuning_length_follows_the_ratio():
    assert CompressConfig(prune=PruneConfig(ratio=0.8)).train.epochs == 225
    assert CompressConfig(prune=PruneConfig(ratio=0.8, target_macs=0.1)).train.epochs == 150  # ratio searched
    assert CompressConfig(prune=PruneConfig(ratio=0.8), train=TrainConfig(epochs=7)).train.epochs == 7


@pytest.mark.parametrize("flags,epochs", [
    ((), 150), (("--ratio", "0.8"), 225), (("--ratio", "0.8", "--epochs", "7"), 7), (("--target-macs", "0.2"), 150),
    (("--recipe", "paper", "--ratio", "0.8"), 30), (("--ratio", "0.9", "--scope", "global"), 450),
])
def test_cli_fine_tuning_length_is_the_library_rule(cli, image_folder, tmp_path, monkeypatch, flags, epochs):
    """The plain command's fine-tuning length at each ratio is the one the library picks."""
    import rtdeploy.compress as compress_mod

    data = image_folder(n_classes=3, per_class=8, size=24)
    parent = tmp_path / "m.pt"
    assert cli("train", "--data", data, "--arch", "tiny_se", "--img-size", 16, "--epochs", 1, "--out", parent)[0] == 0
    seen = {}

    def stop(ckpt, splits, cfg, **kw):
        seen["epochs"] = cfg.train.epochs
        raise ConfigError("stopped by the test")

    monkeypatch.setattr(compress_mod, "compress", stop)
    code, _, err = cli("compress", parent, "--data", data, "--out", tmp_path / "p.pt", *flags)
    assert code == 2 and "stopped by the test" in err and seen == {"epochs": epochs}


def test_resume_refusal_names_the_settings_that_differ():
    """A '.last' of a 0.8 run from before the ratio-aware length (150 epochs) names the difference."""
    from rtdeploy.compress import _settings_key, check_resume_settings

    before = replace(finetune_defaults(), epochs=150)
    old = {"settings": _settings_key(CompressConfig(prune=PruneConfig(ratio=0.8), train=before))}
    with pytest.raises(ConfigError, match=r"other compress settings \(train\.epochs: 150 there, 225 now\); repeat"):
        check_resume_settings("m.pt.last", old, CompressConfig(prune=PruneConfig(ratio=0.8)))
    check_resume_settings("m.pt.last", {"settings": _settings_key(CompressConfig())}, CompressConfig())  # same: fine
    for damaged in (None, 5, "not json", json.dumps([1, 2]), json.dumps({"loss": "x" * 10_000, "a\nb": 1})):
        with pytest.raises(ConfigError) as e:
            check_resume_settings("m.pt.last", {"settings": damaged}, CompressConfig())
        msg = str(e.value)
        assert "other compress settings" in msg and len(msg) < 400 and "\n" not in msg, msg


@pytest.mark.parametrize("ratio", [0.0, 1.0, 1.5, -0.1, float("nan"), float("inf")])
def test_epochs_for_refuses_ratios_outside_0_1(ratio):
    with pytest.raises(ConfigError, match="--ratio must be in"):
        COMPRESS_RECIPES["default"].epochs_for(ratio)
