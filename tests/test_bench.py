"""rtdeploy bench: report keys and sane values, checkpoints and the torch row, outputs, and the
one-line exit-2 errors for bad models and options."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from rtdeploy.bench import BenchConfig, bench_models
from rtdeploy.bench.worker import _stopwatch
from rtdeploy.cli.app import main
from rtdeploy.errors import ConfigError
from rtdeploy.export import ExportConfig, export_checkpoint

from test_export import make_checkpoint

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("bench")
    base = make_checkpoint(d / "base.pt")
    pruned = make_checkpoint(d / "pruned.pt", pruned=True)
    export_checkpoint(base, d / "base.onnx")
    export_checkpoint(pruned, d / "pruned.onnx")
    export_checkpoint(base, d / "static.onnx", ExportConfig(dynamic_batch=False, batch_size=1))
    return {"base": d / "base.onnx", "pruned": d / "pruned.onnx", "static": d / "static.onnx", "base_ckpt": base}


def _check_result(r: dict, batch_sizes: set[int]) -> None:
    lat = r["latency_ms"]
    assert r["provider"] == "CPUExecutionProvider" and r["threads"] == 1 and r["batch_size"] in batch_sizes
    assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"] and lat["mean"] > 0
    assert r["throughput_ips"] == pytest.approx(r["batch_size"] * 1e3 / lat["mean"])
    assert r["session_ms"] > 0 and r["first_inference_ms"] > 0 and r["runs"] == 5 * len(r["rounds"])
    assert [x["round"] for x in r["rounds"]] == [1, 2] and all(x["runs"] == 5 for x in r["rounds"])
    assert lat["p50"] == pytest.approx(sorted(x["p50_ms"] for x in r["rounds"])[0] / 2
                                       + sorted(x["p50_ms"] for x in r["rounds"])[1] / 2)
    assert set(r["speedup"]) >= {"median", "ci95"} and r["speedup"]["ci95"] is None  # 2 rounds: no interval


def test_cli_bench_json_markdown_plot(models, tmp_path):
    out_json, out_md, out_png = tmp_path / "b.json", tmp_path / "b.md", tmp_path / "b.png"
    argv = ["bench", str(models["base"]), str(models["pruned"]), "--runs", "5", "--warmup", "1", "--rounds", "2",
            "--batch-sizes", "1,2", "--data", "sample", "--json", str(out_json), "--markdown", str(out_md),
            "--plot", str(out_png)]
    assert main(argv) == 0
    report = json.loads(out_json.read_text())
    env = report["environment"]
    assert env["machine"]["cpu"] and env["versions"]["onnxruntime"] and env["threads"] == [1]
    assert env["graph_optimization_level"] == "all" and env["isolation"] == "one process per measurement"
    base, pruned = report["models"]
    assert [base["name"], pruned["name"]] == ["base", "pruned"] and base["path"] == str(models["base"])
    for m, path in ((base, models["base"]), (pruned, models["pruned"])):
        assert m["size_bytes"] == path.stat().st_size and m["params"] > 0 and m["macs"] > 0
        assert 0.0 <= m["accuracy"] <= 1.0 and m["accuracy_images"] == 252  # the sample's test split at 30 %
        assert len(m["results"]) == 2
        for r in m["results"]:
            _check_result(r, {1, 2})
    assert all(r["speedup"]["median"] == 1.0 for r in base["results"]) and base["mac_ratio"] == 1.0
    assert pruned["mac_ratio"] > 2 and pruned["params"] < base["params"]
    assert "| base |" in out_md.read_text() and "speed-up" in out_md.read_text()
    assert out_png.read_bytes()[:8] == PNG_MAGIC


def test_checkpoint_is_exported_on_the_fly_with_a_torch_row(models):
    report = bench_models([models["base_ckpt"], models["pruned"]],
                          BenchConfig(runs=5, warmup=1, rounds=1, torch=True, isolate=False))
    onnx_row, torch_row, pruned = report.models
    assert (onnx_row.source, onnx_row.runtime, torch_row.runtime) == ("checkpoint", "onnxruntime", "torch")
    assert torch_row.name == "base (torch)" and torch_row.results[0].provider == "torch-eager"
    assert onnx_row.torch_macs > 0 and onnx_row.torch_params > 0 and pruned.torch_macs is None
    assert onnx_row.macs == pytest.approx(onnx_row.torch_macs, rel=0.1)
    assert onnx_row.accuracy is None and report.settings["data"] is None
    assert onnx_row.results[0].speedup.median == 1.0 and pruned.mac_ratio > 2


def test_time_boxed_runs():
    """--seconds keeps running past --runs until the time box is spent, and a run longer than the
    box still gives one latency. A fake clock where each run takes 2^-10 s (exact in binary):
    with the real one, a loaded 2-core machine could spend the whole 20 ms box in one call."""
    now = [0.0]

    def run(cost_s: float):
        def call():
            now[0] += cost_s
        return call

    step = 2.0 ** -10
    lat = _stopwatch(run(step), warmup=3, runs=1, seconds=20 * step, clock=lambda: now[0])
    assert lat == [step * 1e3] * 20
    assert _stopwatch(run(1.0), warmup=0, runs=5, seconds=20 * step, clock=lambda: now[0]) == [1e3]
    real = _stopwatch(lambda: None, warmup=0, runs=1, seconds=0.02)
    assert len(real) >= 1 and all(t >= 0 for t in real)


def _non_image_onnx(path: Path, shape: list) -> Path:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def _bad_model(kind: str, models: dict, tmp: Path) -> list[str]:
    if kind == "missing":
        return [str(tmp / "missing.onnx")]
    if kind == "text-as-onnx":
        (tmp / "notes.onnx").write_text("these are my notes, not a model\n")
        return [str(tmp / "notes.onnx")]
    if kind == "not-nchw":
        return [str(_non_image_onnx(tmp / "vec.onnx", [1, 10]))]
    if kind == "one-channel":
        return [str(_non_image_onnx(tmp / "gray.onnx", [1, 1, 32, 32]))]
    return [str(models["base"])]


@pytest.mark.parametrize("kind,options", [
    ("missing", []), ("text-as-onnx", []), ("not-nchw", []), ("one-channel", []),
    ("ok", ["--batch-sizes", "0"]), ("ok", ["--batch-sizes", "1,x"]), ("ok", ["--threads", "0"]),
    ("ok", ["--runs", "0"]), ("ok", ["--provider", "tensorrt"]), ("ok", ["--provider", "cuda"]),
    ("ok", ["--provider", "tpu"]), ("ok", ["--graph-opt", "max"]), ("static", ["--batch-sizes", "1,4"]),
])
def test_bad_input_exits_2_with_one_line_and_writes_nothing(models, tmp_path, capsys, kind, options):
    if kind == "static":
        paths = [str(models["static"])]
    else:
        paths = _bad_model(kind, models, tmp_path)
    out = tmp_path / "out.json"
    before = sorted(p.name for p in tmp_path.iterdir())
    assert main(["bench", *paths, "--runs", "2", "--rounds", "1", "--json", str(out), *options]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("rtdeploy: error:"), err
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    if "--provider" in options and options[1] != "tpu":
        assert "CPUExecutionProvider" in err[0]  # lists what is available


def test_config_checks_name_their_flag():
    for kwargs, flag in (({"batch_sizes": (1, 0)}, "--batch-sizes"), ({"threads": ()}, "--threads"),
                         ({"warmup": -1}, "--warmup"), ({"seconds": 0}, "--seconds")):
        with pytest.raises(ConfigError, match=flag):
            BenchConfig(**kwargs)


def test_plot_without_matplotlib_is_a_clear_error(monkeypatch):
    from rtdeploy import plots

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ConfigError, match="rtdeploy\\[plot\\]"):
        plots._pyplot()


def test_mac_count_of_a_foreign_onnx_without_metadata(tmp_path):
    """A plain ONNX classifier (no rtdeploy metadata, static size) still gets params and MACs."""
    w = numpy_helper.from_array(np.ones((4, 3, 1, 1), np.float32), "w")
    nodes = [helper.make_node("Conv", ["images", "w"], ["c"]), helper.make_node("GlobalAveragePool", ["c"], ["p"]),
             helper.make_node("Flatten", ["p"], ["logits"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["N", 3, 8, 8])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 4])], [w])
    path = tmp_path / "foreign.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    report = bench_models([path], BenchConfig(runs=3, warmup=0, rounds=1, isolate=False), data="sample")
    m = report.models[0]
    assert (m.params, m.macs, m.arch, m.accuracy) == (12, 8 * 8 * 4 * 3, None, None)
    assert report.notes and "no rtdeploy metadata" in report.notes[0]
