"""Every torchvision classifier either works or is refused up front (benchmarks/tv_sweep.py).

The committed table (benchmarks/results/tv_sweep.json) must cover every name torchvision lists,
with no failures; models re-run here must land in the same outcome class, with the same reason
when refused. The CLI is exercised for one model that works and one that is refused.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torchvision.models as tvm

from benchmarks import tv_sweep

TABLE = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "tv_sweep.json"


@pytest.fixture(scope="module")
def table() -> dict[str, dict]:
    return {r["name"]: r for r in json.loads(TABLE.read_text())["rows"]}


def test_table_covers_every_torchvision_classifier_without_failures(table):
    assert set(table) == set(tvm.list_models(module=tvm))
    failed = {n: r.get("error") for n, r in table.items() if r["outcome"] == "failed"}
    assert not failed
    for name, row in table.items():
        assert row["outcome"] in ("worked", "refused", "pending"), name
        if row["outcome"] == "refused":  # one line that names the model and says why
            assert row["reason"].startswith(f"tv/{name} cannot be pruned: ") and "\n" not in row["reason"]
        if row["outcome"] == "worked":
            assert row["params"]["after"] < row["params"]["before"] and row["parity_top1"] >= 0.99


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    return tv_sweep.tiny_folder(tmp_path_factory.mktemp("sweep") / "data")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["shufflenet_v2_x0_5", "swin_t", "mobilenet_v3_small", "squeezenet1_1"])
def test_preflight_outcome_matches_the_table(name, table, tiny_data, tmp_path):
    row = tv_sweep.preflight_one(name, tiny_data, tmp_path / name)
    expected = table[name]
    assert row["outcome"] in ("refused", "pending"), row.get("error")  # never a crash
    if "img_size" not in expected:
        return  # the committed sweep did not reach this model yet: no outcome to compare with
    if expected["outcome"] == "refused":
        assert row["outcome"] == "refused" and row["reason"] == expected["reason"]
    else:  # worked (or pipeline not run yet): it must pass preflight
        assert row["outcome"] == "pending", row.get("reason")
    assert row["img_size"] == expected["img_size"]


@pytest.mark.slow
def test_squeezenet_runs_the_whole_pipeline(table, tiny_data, tmp_path):
    """A fully convolutional classifier (no Linear layer): its last conv is kept whole."""
    row = tv_sweep.preflight_one("squeezenet1_1", tiny_data, tmp_path / "pre")
    row = tv_sweep.pipeline_one(row, tiny_data, tmp_path / "run")
    assert row["outcome"] == "worked", row.get("error")
    assert table["squeezenet1_1"]["outcome"] in ("worked", "pending")


@pytest.mark.slow
def test_real_cli_works_for_one_and_refuses_another(tiny_data, tmp_path, cli):
    for arch in ("tv/mobilenet_v3_small", "tv/shufflenet_v2_x0_5"):
        base = tmp_path / f"{arch[3:]}.pt"
        code, _, err = cli("train", "--data", tiny_data, "--arch", arch, "--img-size", 32, "--epochs", 1,
                           "--batch-size", 16, "--out", base)
        assert code == 0, err
    code, _, err = cli("compress", tmp_path / "mobilenet_v3_small.pt", "--data", tiny_data, "--criterion", "l1",
                       "--ratio", 0.5, "--epochs", 1, "--batch-size", 16, "--loss", "ce", "--out", tmp_path / "p.pt")
    assert code == 0, err
    code, _, err = cli("export", tmp_path / "p.pt", "--out", tmp_path / "p.onnx")
    assert code == 0 and (tmp_path / "p.onnx").exists(), err
    code, _, err = cli("compress", tmp_path / "shufflenet_v2_x0_5.pt", "--data", tiny_data, "--criterion", "l1",
                       "--ratio", 0.5, "--epochs", 1, "--out", tmp_path / "s.pt")
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "cannot be pruned" in lines[0] and "channel shuffle" in lines[0]
    assert not (tmp_path / "s.pt").exists()
