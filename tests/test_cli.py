"""The foundation commands through the real entry point: train, eval, info, and their errors."""
import json

import pytest
from PIL import Image


@pytest.fixture
def trained(cli, image_folder, tmp_path):
    data = image_folder(n_classes=3, per_class=8, size=24)
    out = tmp_path / "m.pt"
    code, stdout, err = cli("train", "--data", data, "--arch", "tiny_se", "--img-size", 16,
                            "--epochs", 2, "--batch-size", 8, "--out", out)
    assert code == 0, err
    return data, out, stdout


def test_help_lists_the_pipeline_commands(cli):
    code, out, _ = cli("--help")
    assert code == 0
    for command in ("train", "eval", "info"):
        assert command in out


def test_train_writes_checkpoint_summary_and_resume_state(trained, tmp_path):
    _, out, stdout = trained
    assert out.exists() and (tmp_path / "m.pt.last").exists()
    summary = json.loads((tmp_path / "m.json").read_text())
    split = summary["split"]
    # the default recipe holds out a validation split (10 % of each class, at least one image)
    assert summary["arch"] == "tiny_se" and split["val"] == 3 and split["train"] + split["val"] + split["test"] == 24
    assert split["test"] == 6  # 30 % of 8 per class, stratified: 2 per class
    assert len(summary["epochs"]) == 2 and 0 <= summary["best_accuracy"] <= 1
    assert summary["eval_split"] == "val" and summary["selected_on"] == "validation split"
    assert 0 <= summary["test_accuracy"] <= 1
    assert "torch" in summary["versions"]
    assert "val accuracy" in stdout and "test accuracy" in stdout


def test_eval_and_info_read_the_checkpoint(cli, trained, tmp_path):
    data, out, _ = trained
    code, stdout, err = cli("eval", out, "--data", data, "--json", tmp_path / "e.json")
    assert code == 0, err
    report = json.loads((tmp_path / "e.json").read_text())
    assert report["images"] == 6 and sum(map(sum, report["confusion"])) == 6
    code, stdout, err = cli("info", out)
    assert code == 0, err
    assert "tiny_se" in stdout and "layer2.0.conv1" in stdout


def test_existing_output_needs_force(cli, trained):
    data, out, _ = trained
    code, _, err = cli("train", "--data", data, "--arch", "tiny", "--img-size", 16, "--epochs", 1, "--out", out)
    assert code == 2 and "--force" in err


def assert_one_line_error(code, err, *needles):
    assert code == 2, err
    assert err.count("\n") == 1 and "Traceback" not in err
    for n in needles:
        assert n in err


def test_unknown_arch(cli, tmp_path):
    code, _, err = cli("train", "--arch", "resnet19", "--out", tmp_path / "x.pt")
    assert_one_line_error(code, err, "resnet19", "resnet18_se")
    assert not (tmp_path / "x.pt").exists()


def test_corrupt_image_names_the_file(cli, image_folder, tmp_path):
    data = image_folder(n_classes=2, per_class=4, size=24)
    (data / "class_0" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    code, _, err = cli("train", "--data", data, "--arch", "tiny", "--img-size", 16, "--epochs", 1,
                       "--out", tmp_path / "x.pt")
    assert_one_line_error(code, err, "broken.png", "--skip-bad-images")
    assert not (tmp_path / "x.pt").exists()


def test_empty_class_folder(cli, image_folder, tmp_path):
    data = image_folder(n_classes=2, per_class=4, size=24)
    (data / "empty").mkdir()
    code, _, err = cli("train", "--data", data, "--arch", "tiny", "--out", tmp_path / "x.pt")
    assert_one_line_error(code, err, "empty")


def test_non_checkpoint_file(cli, tmp_path):
    bogus = tmp_path / "model.pt"
    Image.new("RGB", (4, 4)).save(tmp_path / "img.png")
    bogus.write_bytes((tmp_path / "img.png").read_bytes())
    for command in ("info", "eval"):
        code, _, err = cli(command, bogus)
        assert_one_line_error(code, err, "model.pt")


def test_bad_option_value_is_one_line(cli, tmp_path):
    code, _, err = cli("train", "--epochs", "many", "--out", tmp_path / "x.pt")
    assert_one_line_error(code, err, "--epochs")
    code, _, err = cli("train", "--img-size", 0, "--out", tmp_path / "x.pt")
    assert_one_line_error(code, err, "--img-size")
