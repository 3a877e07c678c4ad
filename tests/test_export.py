"""rtdeploy export: ONNX parity (original and pruned), metadata, broken graphs, batch modes,
INT8, graph counting, and the CLI's bad-input handling."""
from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch_pruning as tp
from onnx import TensorProto, helper, numpy_helper

from rtdeploy.checkpoint import ModelMeta, load_checkpoint, save_checkpoint
from rtdeploy.cli.app import main
from rtdeploy.data import load_splits, sample_path
from rtdeploy.errors import ConfigError, PipelineError
from rtdeploy.export.onnx_export import read_exporter
from rtdeploy.export import (ExportConfig, OnnxMeta, Tolerance, check_parity, count_macs, count_params,
                             export_checkpoint, int8_path, make_session, read_metadata, run_session, simplify,
                             to_onnx, write_metadata)
from rtdeploy.models import create_model
from rtdeploy.models.complexity import count_macs_params

SIZE = 32
SAMPLE_CLASSES = sorted(p.name for p in sample_path().iterdir() if p.is_dir())
small_sample = partial(load_splits, max_per_class=6)  # 42 test images: fast, still real


def make_checkpoint(path: Path, *, pruned: bool = False, history: list | None = None, seed: int = 0) -> Path:
    """A tiny_se checkpoint over the embedded sample's classes; `pruned` halves its channels
    with torch-pruning directly (independent of rtdeploy's own pruning code)."""
    torch.manual_seed(seed)
    model = create_model("tiny_se", len(SAMPLE_CLASSES)).eval()
    for m in model.modules():  # zero_init_residual leaves bn2 at 0: give every layer some weight
        if isinstance(m, torch.nn.BatchNorm2d):
            torch.nn.init.uniform_(m.weight, 0.5, 1.5)
            torch.nn.init.uniform_(m.bias, -0.1, 0.1)
    if pruned:
        tp.pruner.MetaPruner(model, torch.randn(1, 3, SIZE, SIZE), importance=tp.importance.MagnitudeImportance(p=1),
                             pruning_ratio=0.5, ignored_layers=[model.fc]).step()
    meta = ModelMeta("tiny_se", SAMPLE_CLASSES, SIZE, (0.45, 0.47, 0.42), (0.2, 0.19, 0.18),
                     history=history or [{"stage": "train", "seed": 0, "data": "sample"}])
    save_checkpoint(path, model, meta)
    return path


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("ckpts")
    compress = {"stage": "compress", "criterion": "cap", "ratio": 0.5, "versions": {"torch": "x"}}
    return {"original": make_checkpoint(d / "original.pt"),
            "pruned": make_checkpoint(d / "pruned.pt", pruned=True,
                                      history=[{"stage": "train", "seed": 0, "data": "sample"}, compress])}


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.mark.parametrize("which", ["original", "pruned"])
def test_parity_passes_on_real_test_images(ckpts, tmp_path, which):
    out = tmp_path / f"{which}.onnx"
    r = export_checkpoint(ckpts[which], out, data="sample", load=small_sample)
    assert r.parity.passed and r.parity.inputs == "test split" and r.parity.images == 42
    assert r.parity.max_abs_diff < 1e-4 and r.parity.top1_agreement == 1.0
    assert r.simplified and r.nodes["after"] <= r.nodes["before"] and r.checker_passed  # dynamo optimises itself
    assert r.size_bytes == out.stat().st_size and 0.0 <= r.accuracy <= 1.0
    model, meta = load_checkpoint(ckpts[which])
    graph = onnx.load(str(out))
    torch_macs, torch_params = count_macs_params(model, SIZE)
    assert abs(count_params(graph) - torch_params) / torch_params < 0.05  # BN folded into conv biases
    assert abs(count_macs(graph) - torch_macs) / torch_macs < 0.1         # torch-pruning also counts BN/SE


def test_pruned_graph_is_smaller(ckpts, tmp_path):
    sizes = {}
    for which, path in ckpts.items():
        export_checkpoint(path, tmp_path / f"{which}.onnx")
        graph = onnx.load(str(tmp_path / f"{which}.onnx"))
        sizes[which] = (count_params(graph), count_macs(graph))
    assert sizes["pruned"][0] < 0.5 * sizes["original"][0]
    assert sizes["pruned"][1] < 0.5 * sizes["original"][1]


def test_metadata_round_trips(ckpts, tmp_path):
    out = tmp_path / "m.onnx"
    export_checkpoint(ckpts["pruned"], out)
    meta = read_metadata(out)
    assert meta.arch == "tiny_se" and meta.classes == SAMPLE_CLASSES and meta.img_size == SIZE
    assert meta.mean == (0.45, 0.47, 0.42) and meta.std == (0.2, 0.19, 0.18)
    assert meta.pruning == {"criterion": "cap", "ratio": 0.5} and meta.seed == 0 and meta.data == "sample"
    assert meta.precision == "fp32" and meta.rtdeploy_version
    # visible to plain ONNX Runtime users too
    props = ort.InferenceSession(str(out)).get_modelmeta().custom_metadata_map
    assert json.loads(props["rtdeploy.classes"]) == SAMPLE_CLASSES
    # and a write/read cycle keeps everything, unknown keys included
    again = OnnxMeta(**{**meta.__dict__, "extra": {"note": "kept"}})
    assert read_metadata(write_metadata(onnx.load(str(out)), again)) == again
    assert read_metadata(to_onnx(create_model("tiny", 2), SIZE, opset=17, dynamic_batch=True, exporter="torchscript")) is None


def _tampered(graph: onnx.ModelProto) -> bytes:
    """The same graph with its first convolution's weights disturbed: still valid ONNX, wrong maths."""
    broken = onnx.ModelProto()
    broken.CopyFrom(graph)
    conv_w = next(n.input[1] for n in broken.graph.node if n.op_type == "Conv")
    init = next(i for i in broken.graph.initializer if i.name == conv_w)
    w = numpy_helper.to_array(init).copy()
    w.flat[: w.size // 4] *= 1.5
    init.CopyFrom(numpy_helper.from_array(w, conv_w))
    return broken.SerializeToString()


def test_parity_catches_a_broken_graph(ckpts):
    model, _ = load_checkpoint(ckpts["original"])
    graph, _ = simplify(to_onnx(model, SIZE, opset=17, dynamic_batch=True, exporter="torchscript"), "onnxsim")
    images = small_sample("sample", img_size=SIZE).test.normalised()
    assert check_parity(graph.SerializeToString(), model, images).passed
    bad = check_parity(_tampered(graph), model, images, inputs="test split")
    assert not bad.passed and bad.max_abs_diff > bad.allowed_abs_diff


def test_broken_simplifier_fails_export_and_writes_nothing(ckpts, tmp_path, monkeypatch):
    import rtdeploy.export.pipeline as pipeline

    real = pipeline.simplify
    monkeypatch.setattr(pipeline, "simplify", lambda g, s: (onnx.load_from_string(_tampered(real(g, s)[0])), True))
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    with pytest.raises(PipelineError, match="disagree"):
        export_checkpoint(ckpts["original"], out_dir / "m.onnx", data="sample", load=small_sample)
    assert _leftovers(out_dir) == []


@pytest.mark.parametrize("dynamic", [True, False])
def test_static_and_dynamic_batch(ckpts, tmp_path, dynamic):
    out = tmp_path / "m.onnx"
    r = export_checkpoint(ckpts["original"], out, ExportConfig(dynamic_batch=dynamic, batch_size=3))
    assert r.parity.passed and r.batch_size == (None if dynamic else 3)
    sess = ort.InferenceSession(str(out))
    assert sess.get_inputs()[0].name == "input" and sess.get_outputs()[0].name == "logits"
    assert sess.get_inputs()[0].shape[1:] == [3, SIZE, SIZE]
    batches = (1, 5) if dynamic else (3,)
    assert isinstance(sess.get_inputs()[0].shape[0], str) == dynamic
    for n in batches:
        logits = sess.run(None, {"input": np.zeros((n, 3, SIZE, SIZE), np.float32)})[0]
        assert logits.shape == (n, len(SAMPLE_CLASSES))
    if not dynamic:
        with pytest.raises(Exception):
            sess.run(None, {"input": np.zeros((1, 3, SIZE, SIZE), np.float32)})


@pytest.mark.parametrize("simplifier", ["onnxslim", "none"])
def test_other_simplifiers(ckpts, tmp_path, simplifier):
    r = export_checkpoint(ckpts["pruned"], tmp_path / "m.onnx", ExportConfig(simplifier=simplifier, opset=18, exporter="torchscript"))
    assert r.parity.passed and r.opset == 18 and r.simplified == (simplifier != "none")
    assert (r.nodes["after"] == r.nodes["before"]) == (simplifier == "none")


def test_int8_export_reports_accuracy(ckpts, tmp_path):
    out = tmp_path / "m.onnx"
    cfg = ExportConfig(int8=True, calib_data="sample", calib_images=32)
    r = export_checkpoint(ckpts["pruned"], out, cfg, data="sample", load=small_sample)
    q = r.int8
    assert int8_path(out).is_file() and q.path == str(int8_path(out)) and q.calib_images == 32
    assert 0.0 <= q.accuracy <= 1.0 and q.fp32_accuracy == pytest.approx(r.accuracy) and q.accuracy_images == 42
    assert q.parity.passed and q.parity.top1_agreement >= 0.9 and q.parity.allowed_abs_diff is None
    graph = onnx.load(str(int8_path(out)))
    assert {"QuantizeLinear", "DequantizeLinear"} <= {n.op_type for n in graph.graph.node}
    assert read_metadata(graph).precision == "int8" and read_metadata(graph).classes == SAMPLE_CLASSES
    assert count_params(graph) == count_params(onnx.load(str(out)))  # same weights, fewer bits
    conv_weights = {n.input[0] for n in graph.graph.node if n.op_type == "DequantizeLinear"}
    stored = [i.data_type for i in graph.graph.initializer if i.name in conv_weights and len(i.dims) == 4]
    assert stored and set(stored) == {TensorProto.INT8}  # conv weights are int8 (per-channel scales)


def test_graph_mac_count_is_exact_on_a_hand_built_graph():
    w = numpy_helper.from_array(np.zeros((8, 3, 3, 3), np.float32), "w")
    fc = numpy_helper.from_array(np.zeros((8, 5), np.float32), "fc")
    nodes = [helper.make_node("Conv", ["input", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("GlobalAveragePool", ["c"], ["p"]),
             helper.make_node("Flatten", ["p"], ["f"]),
             helper.make_node("MatMul", ["f", "fc"], ["logits"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 16, 16])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 5])], [w, fc])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    assert count_macs(model) == 16 * 16 * 8 * 3 * 3 * 3 + 8 * 5
    assert count_params(model) == 8 * 3 * 3 * 3 + 8 * 5


def test_config_errors_name_the_flag():
    for kwargs, flag in (({"int8": True}, "--calib-data"), ({"calib_data": "sample"}, "--int8"),
                         ({"opset": 9}, "--opset"), ({"simplifier": "magic"}, "--simplifier"),
                         ({"batch_size": 0}, "--batch-size"), ({"calib_images": 0}, "--calib-images")):
        with pytest.raises(ConfigError, match=flag):
            ExportConfig(**kwargs)
    with pytest.raises(ConfigError, match="--atol"):
        Tolerance(atol=-1)


def test_cli_export_writes_model_and_report(ckpts, tmp_path, capsys):
    out, report = tmp_path / "m.onnx", tmp_path / "m.json"
    assert main(["export", str(ckpts["original"]), "--out", str(out), "--report", str(report)]) == 0
    r = json.loads(report.read_text())
    assert isinstance(r["opset"], int) and r["simplified"] is True
    assert r["nodes"]["after"] <= r["nodes"]["before"] and r["size_bytes"] == out.stat().st_size
    assert r["parity"]["passed"] is True and r["parity"]["top1_agreement"] == 1.0
    assert isinstance(r["parity"]["max_abs_diff"], float) and r["versions"]["onnxruntime"] == ort.__version__
    assert r["int8"] is None and "parity vs PyTorch" in capsys.readouterr().out


@pytest.mark.parametrize("args", [
    ["--int8"],                                  # no calibration data
    ["--calib-data", "sample"],                  # calibration data without --int8
    ["--opset", "5"],
    ["--simplifier", "magic"],
    ["--static-batch", "--batch-size", "0"],
    ["--min-agreement", "1.5"],
], ids=["int8-no-calib", "calib-no-int8", "opset", "simplifier", "batch0", "agreement"])
def test_cli_bad_options_exit_2_and_write_nothing(ckpts, tmp_path, capsys, args):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    assert main(["export", str(ckpts["original"]), "--out", str(out_dir / "m.onnx"), *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("rtdeploy: error:")
    assert _leftovers(out_dir) == []


def test_cli_bad_paths_exit_2(ckpts, tmp_path, capsys):
    text = tmp_path / "notes.pt"
    text.write_text("not a checkpoint")
    existing = tmp_path / "exists.onnx"
    existing.write_bytes(b"old")
    for argv in (["export", str(tmp_path / "missing.pt"), "--out", str(tmp_path / "a.onnx")],
                 ["export", str(text), "--out", str(tmp_path / "b.onnx")],
                 ["export", str(ckpts["original"]), "--out", str(existing)]):
        assert main(argv) == 2
        assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert existing.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exists.onnx", "notes.pt"]


def test_parity_catches_a_batch_size_baked_into_a_dynamic_graph(ckpts):
    """A graph that claims a dynamic batch but only runs at the traced one must fail parity."""
    model, _ = load_checkpoint(ckpts["original"])
    graph = to_onnx(model, SIZE, opset=17, dynamic_batch=True, exporter="torchscript")
    # Reshape the logits through a constant shape of [4, classes]: runs at batch 4 only
    shape = numpy_helper.from_array(np.array([4, len(SAMPLE_CLASSES)], np.int64), "baked_shape")
    graph.graph.initializer.append(shape)
    for node in graph.graph.node:
        node.output[:] = ["raw" if o == "logits" else o for o in node.output]
    graph.graph.node.append(helper.make_node("Reshape", ["raw", "baked_shape"], ["logits"]))
    images = torch.randn(4, 3, SIZE, SIZE)
    assert run_session(make_session(graph), images).shape == (4, len(SAMPLE_CLASSES))  # fine at batch 4
    r = check_parity(graph.SerializeToString(), model, images)
    assert not r.passed and "Reshape" in r.error and r.images == 4


@pytest.mark.parametrize("exporter", ["dynamo", "torchscript"])
@pytest.mark.parametrize("which", ["original", "pruned"])
def test_both_exporters_pass_parity_and_record_themselves(ckpts, tmp_path, exporter, which):
    out = tmp_path / "m.onnx"
    r = export_checkpoint(ckpts[which], out, ExportConfig(exporter=exporter), data="sample", load=small_sample)
    assert r.parity.passed and r.parity.inputs == "test split" and r.parity.max_abs_diff < 1e-4
    assert r.opset == {"dynamo": 18, "torchscript": 17}[exporter] and r.exporter.startswith(f"{exporter}: ")
    graph = onnx.load(str(out))
    assert read_exporter(graph) == r.exporter and torch.__version__ in r.exporter
    assert next(o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")) == r.opset
    assert "BatchNormalization" not in {n.op_type for n in graph.graph.node}  # folded into the convolutions
    props = ort.InferenceSession(str(out)).get_modelmeta().custom_metadata_map
    assert props["rtdeploy.exporter"] == r.exporter and read_metadata(out).classes == SAMPLE_CLASSES


def test_torchscript_deprecation_warning_is_not_silenced(ckpts):
    model, _ = load_checkpoint(ckpts["original"])
    with pytest.warns(DeprecationWarning, match="TorchScript"):
        to_onnx(model, SIZE, opset=17, dynamic_batch=True, exporter="torchscript")


def test_dynamo_batch_is_dynamic(ckpts):
    model, _ = load_checkpoint(ckpts["pruned"])
    graph = to_onnx(model, SIZE, opset=18, dynamic_batch=True, exporter="dynamo")
    x = torch.randn(5, 3, SIZE, SIZE)
    with torch.no_grad():
        ref = model(x).numpy()
    assert np.abs(run_session(make_session(graph), x) - ref).max() < 1e-4


@pytest.mark.parametrize("kwargs,flag", [({"exporter": "jit"}, "--exporter"),
                                         ({"exporter": "dynamo", "opset": 17}, "--opset 17: the dynamo exporter")])
def test_exporter_settings_are_checked(kwargs, flag):
    with pytest.raises(ConfigError, match=flag):
        ExportConfig(**kwargs)
