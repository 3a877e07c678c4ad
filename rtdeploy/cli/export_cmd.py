"""`rtdeploy export`: checkpoint -> checked, simplified ONNX (and optionally INT8)."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .. import report as fmt
from ..defaults import EXPORTER, OPSETS
from ..fields import MAX_BATCH, MAX_IMAGES
from ..fsutil import check_file_name, plan_outputs, write_text
from .app import app
from .common import Data, DataRoot, Force, bounded, console, data_input, err_console, load_every_image

MAX_TOLERANCE = 1e6  # --atol/--rtol: finite; logits differ by far less


@app.command()
def export(
    ckpt: Annotated[Path, typer.Argument(help="An rtdeploy checkpoint (.pt) from train or compress.")],
    out: Annotated[Path, typer.Option("--out", help="ONNX file to write; with --int8 the INT8 copy goes beside it as <name>.int8.onnx.")],
    opset: Annotated[Optional[int], typer.Option("--opset", help=f"ONNX opset: 18-20 with --exporter dynamo (default {OPSETS['dynamo']}), 13-20 with torchscript (default {OPSETS['torchscript']}).", show_default=False)] = None,
    exporter: Annotated[str, typer.Option("--exporter", help="dynamo (torch.export + onnxscript, torch's current exporter) or torchscript (the deprecated tracing exporter, a fallback).")] = EXPORTER,
    dynamic_batch: Annotated[bool, typer.Option("--dynamic-batch/--static-batch", help="Symbolic batch dimension, or a fixed one (--batch-size).")] = True,
    batch_size: Annotated[int, typer.Option("--batch-size", callback=bounded("--batch-size", 1, MAX_BATCH, integer=True), help="The fixed batch of a --static-batch graph.")] = 1,
    simplifier: Annotated[str, typer.Option("--simplifier", help="onnxsim, onnxslim or none.")] = "onnxsim",
    data: Data = None, data_root: DataRoot = None,
    atol: Annotated[float, typer.Option("--atol", callback=bounded("--atol", 0, MAX_TOLERANCE), help="Parity: allowed max |ONNX - PyTorch| logit difference, plus --rtol x max |logit|.")] = 1e-3,
    rtol: Annotated[float, typer.Option("--rtol", callback=bounded("--rtol", 0, MAX_TOLERANCE), help="Parity: relative part of the allowed difference.")] = 1e-4,
    min_agreement: Annotated[float, typer.Option("--min-agreement", callback=bounded("--min-agreement", 0, 1), help="Parity: minimum top-1 agreement with PyTorch (0-1).")] = 0.99,
    parity_images: Annotated[int, typer.Option("--parity-images", callback=bounded("--parity-images", 0, MAX_IMAGES, integer=True), help="Test images compared with PyTorch (0 = all); 16 random inputs without --data.")] = 256,
    int8: Annotated[bool, typer.Option("--int8", help="Also write a static INT8 (QDQ, per-channel) copy; needs --calib-data.")] = False,
    calib_data: Annotated[Optional[str], typer.Option("--calib-data", help="Images to calibrate INT8 on ('sample', 'eurosat' or a class folder); its train split is used.")] = None,
    calib_images: Annotated[int, typer.Option("--calib-images", callback=bounded("--calib-images", 1, MAX_IMAGES, integer=True), help="How many calibration images.")] = 256,
    int8_min_agreement: Annotated[float, typer.Option("--int8-min-agreement", callback=bounded("--int8-min-agreement", 0, 1), help="Fail when INT8 and FP32 top-1 agree on fewer images than this (0-1).")] = 0.9,
    int8_reduce_range: Annotated[bool, typer.Option("--int8-reduce-range", help="7-bit INT8 weights: avoids overflow in the uint8 x int8 kernels of AVX2 CPUs without VNNI.")] = False,
    report: Annotated[Optional[Path], typer.Option("--report", help="Also write the export report as JSON.")] = None,
    force: Force = False,
):
    """Export a checkpoint to ONNX, simplify it, and check it: onnx.checker, then ONNX Runtime
    against PyTorch (max logit difference, top-1 agreement) on the checkpoint's own test split
    with --data (random inputs otherwise). Any failed check writes nothing and exits 1.

    The file carries its classes, input size, normalisation and pruning summary as metadata.

    Example: rtdeploy export runs/pruned.pt --out runs/pruned.onnx --data sample --int8 --calib-data sample
    """
    from ..export import ExportConfig, Tolerance, export_checkpoint, int8_path

    cfg = ExportConfig(opset=opset, exporter=exporter, dynamic_batch=dynamic_batch, batch_size=batch_size, simplifier=simplifier,
                       tolerance=Tolerance(atol, rtol, min_agreement), parity_images=parity_images, int8=int8,
                       calib_data=calib_data, calib_images=calib_images, int8_min_agreement=int8_min_agreement,
                       int8_reduce_range=int8_reduce_range)
    check_file_name("--out", out)  # before '<out stem>.int8.onnx' is derived from it
    plan_outputs([ckpt, data_input(data), data_input(calib_data)],
                 {"--out": out, "--out (its INT8 copy '<out stem>.int8.onnx')": int8_path(out) if int8 else None,
                  "--report": report}, force=force)
    with err_console.status("exporting") as status:
        r = export_checkpoint(ckpt, out, cfg, data=data, data_root=data_root, load=load_every_image,
                              on_stage=lambda text: status.update(text))
    console.print(fmt.rich_table(_rows(r), title=f"rtdeploy export: {r.path}"))
    if report:
        write_text(report, fmt.to_json(r))


def _rows(r) -> list[dict]:
    p = r.parity
    allowed = f"{p.allowed_abs_diff:.2g}" if p.allowed_abs_diff is not None else "-"
    batch = "dynamic" if r.dynamic_batch else f"static {r.batch_size}"
    rows = [{"": "model", "value": f"{r.arch} from {r.checkpoint}"},
            {"": "graph", "value": f"{r.exporter.split(':')[0]} exporter, opset {r.opset}, batch {batch}, {r.nodes['before']} -> {r.nodes['after']} nodes "
                                   f"({r.simplifier if r.simplified else 'not simplified'})"},
            {"": "size", "value": f"{r.size_bytes:,} bytes"},
            {"": "onnx.checker", "value": "passed (full check)" if r.checker_passed else "failed"},
            {"": "parity vs PyTorch", "value": f"{'passed' if p.passed else 'FAILED'}: max |diff| {p.max_abs_diff:.2g} "
                                               f"(allowed {allowed}), top-1 agreement {fmt.pct(p.top1_agreement)} "
                                               f"on {p.images} {p.inputs} images"}]
    if r.accuracy is not None:
        rows.append({"": "FP32 accuracy (ORT)", "value": f"{fmt.pct(r.accuracy)} on {r.accuracy_images} test images"})
    if r.int8:
        q = r.int8
        rows += [{"": "INT8 file", "value": f"{q.path} ({q.size_bytes:,} bytes, {q.nodes} nodes, {q.format}, {q.activations} activations, per-channel {q.weights} weights"
                                            f"{', reduced range' if q.reduce_range else ''})"},
                 {"": "INT8 calibration", "value": f"{q.calib_images} images from {q.calib_data}"},
                 {"": "INT8 vs FP32", "value": f"top-1 agreement {fmt.pct(q.parity.top1_agreement)}, max |diff| "
                                               f"{q.parity.max_abs_diff:.3g} on {q.accuracy_images} {q.parity.inputs} images"}]
        if q.accuracy is not None:
            rows.append({"": "INT8 accuracy", "value": f"{fmt.pct(q.accuracy)} (FP32 {fmt.pct(q.fp32_accuracy)})"})
    rows.append({"": "time", "value": f"{r.seconds:.1f} s"})
    return rows
