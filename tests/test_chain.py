"""The whole chain on the embedded real sample (UC Merced), through the real CLI:
train -> compress (CAP + AML) -> export (parity, INT8) -> bench (original vs pruned)."""
import json

import pytest

pytestmark = pytest.mark.slow


def test_sample_through_the_whole_chain(cli, tmp_path):
    base, pruned = tmp_path / "base.pt", tmp_path / "cap.pt"
    code, _, err = cli("train", "--arch", "tiny_se", "--img-size", 32, "--epochs", 3, "--lr", 0.05,
                       "--batch-size", 32, "--out", base)
    assert code == 0, err
    summary = json.loads((tmp_path / "base.json").read_text())
    assert summary["data"] == "sample" and summary["classes"] == 21
    assert summary["best_accuracy"] > 2 / 21  # real images, 21 classes: it must learn something

    code, out, err = cli("compress", base, "--ratio", 0.5, "--epochs", 2, "--batch-size", 32, "--out", pruned)
    assert code == 0, err
    report = json.loads((tmp_path / "cap.json").read_text())
    assert report["criterion"] == "cap" and report["macs"]["after"] < 0.4 * report["macs"]["before"]
    assert report["accuracy"]["folded"] is not None

    for ckpt in (base, pruned):
        code, _, err = cli("export", ckpt, "--out", ckpt.with_suffix(".onnx"), "--data", "sample",
                           "--int8", "--calib-data", "sample", "--report", ckpt.with_suffix(".export.json"))
        assert code == 0, err
        exp = json.loads(ckpt.with_suffix(".export.json").read_text())
        assert exp["parity"]["passed"] and exp["parity"]["top1_agreement"] >= 0.99
        assert exp["int8"]["accuracy"] is not None

    bench_json = tmp_path / "bench.json"
    code, out, err = cli("bench", base.with_suffix(".onnx"), pruned.with_suffix(".onnx"), "--data", "sample",
                         "--runs", 5, "--warmup", 1, "--batch-sizes", "1,8", "--json", bench_json)
    assert code == 0, err
    b = json.loads(bench_json.read_text())
    original, small = b["models"]
    assert small["macs"] < original["macs"] and small["params"] < original["params"]
    # ONNX accuracy on the sample's test split equals what compress measured in PyTorch
    assert small["accuracy"] == pytest.approx(report["accuracy"]["finetuned"], abs=1e-6)
    assert len(small["results"]) == 2 and all(r["throughput_ips"] > 0 for r in small["results"])
