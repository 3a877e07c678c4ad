"""PyTorch module -> ONNX graph -> simplified graph, each step checked.

Two exporters (--exporter): "dynamo" (the default: torch.export + onnxscript, the exporter torch
keeps developing) and "torchscript" (the older tracing exporter, which torch deprecates; kept as
a fallback for models torch.export cannot capture and for opsets below 18). Both graphs go
through the same simplifier and parity check, and the file records which exporter made it
(metadata key rtdeploy.exporter). There is no silent fallback: when dynamo fails, the error
says so and names --exporter torchscript, so a file never comes from an exporter the user did
not choose. Warnings are not silenced: torch's deprecation notice for the TorchScript exporter
reaches the user. Export goes to memory; nothing touches the disk until every check has passed.
"""
from __future__ import annotations

import io
import logging

import onnx
import torch
from torch import nn

from ..defaults import EXPORTER, OPSETS
from ..errors import ConfigError, PipelineError

log = logging.getLogger(__name__)

INPUT_NAME, OUTPUT_NAME = "input", "logits"
DEFAULT_OPSET = OPSETS["torchscript"]  # 17: supported by ONNX Runtime >= 1.14, TensorRT >= 8.6 and OpenVINO
MIN_OPSET = 13      # per-channel QDQ quantisation needs 13
EXPORTERS = ("dynamo", "torchscript")
DEFAULT_EXPORTER = EXPORTER
DYNAMO_MIN_OPSET = 18  # onnxscript's ops are opset 18; its down-converter fails on Reduce* below 18
DEFAULT_OPSETS = OPSETS
EXPORTER_KEY = "rtdeploy.exporter"
SIMPLIFIERS = ("onnxsim", "onnxslim", "none")


def max_opset() -> int:
    from torch.onnx import _constants

    return int(getattr(_constants, "ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET", 20))


def check_exporter(exporter: str) -> None:
    if exporter not in EXPORTERS:
        raise ConfigError(f"--exporter must be one of {', '.join(EXPORTERS)}, got {exporter!r}")


def check_opset(opset: int, exporter: str = "torchscript") -> None:
    top = max_opset()
    if isinstance(opset, bool) or not isinstance(opset, int) or not MIN_OPSET <= opset <= top:
        raise ConfigError(f"--opset must be between {MIN_OPSET} and {top} (this torch's ONNX exporter), got {opset}")
    if exporter == "dynamo" and opset < DYNAMO_MIN_OPSET:
        raise ConfigError(f"--opset {opset}: the dynamo exporter writes opset {DYNAMO_MIN_OPSET} or newer; "
                          f"use --opset {DYNAMO_MIN_OPSET}, or --exporter torchscript for opset {opset}")


def exporter_record(exporter: str) -> str:
    """The value of the rtdeploy.exporter metadata key: which exporter, under which torch."""
    name = "torch.onnx.export(dynamo=True)" if exporter == "dynamo" else "torch.onnx.export(dynamo=False) (TorchScript)"
    return f"{exporter}: {name}, torch {torch.__version__}"


def record_exporter(model: onnx.ModelProto, exporter: str) -> None:
    """Add (or replace) the rtdeploy.exporter metadata entry."""
    for prop in list(model.metadata_props):
        if prop.key == EXPORTER_KEY:
            model.metadata_props.remove(prop)
    model.metadata_props.add(key=EXPORTER_KEY, value=exporter_record(exporter))


def read_exporter(model: onnx.ModelProto) -> str | None:
    return next((p.value for p in model.metadata_props if p.key == EXPORTER_KEY), None)


def check_simplifier(name: str) -> None:
    if name not in SIMPLIFIERS:
        raise ConfigError(f"--simplifier must be one of {', '.join(SIMPLIFIERS)}, got {name!r}")


def to_onnx(model: nn.Module, img_size: int, *, opset: int, dynamic_batch: bool, batch_size: int = 1,
            exporter: str = DEFAULT_EXPORTER) -> onnx.ModelProto:
    """Export `model` (eval mode) to an ONNX graph: input "input" [N,3,S,S] float32, output "logits"."""
    check_exporter(exporter)
    check_opset(opset, exporter)
    model = model.eval().cpu()
    # A dynamic batch is traced at batch 2: torch.export specialises a size-1 dimension, and a
    # model whose graph then guards on it (ConvNeXt's layer scale broadcast) fails to export.
    example = torch.zeros(2 if dynamic_batch else batch_size, 3, img_size, img_size)
    export = _dynamo if exporter == "dynamo" else _torchscript
    try:
        graph = export(model, example, opset, dynamic_batch)
    except ConfigError:
        raise
    except Exception as e:  # noqa: BLE001 - any exporter failure is a failed stage
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        hint = "retry with --exporter torchscript" if exporter == "dynamo" else "try another --opset"
        raise PipelineError(f"the {exporter} ONNX exporter failed at opset {opset}: {first}; {hint}") from e
    record_exporter(graph, exporter)
    return graph


def _torchscript(model: nn.Module, example: torch.Tensor, opset: int, dynamic_batch: bool) -> onnx.ModelProto:
    axes = {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}} if dynamic_batch else None
    buf = io.BytesIO()
    torch.onnx.export(model, (example,), buf, dynamo=False, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                      opset_version=opset, dynamic_axes=axes, do_constant_folding=True)
    return onnx.load_from_string(buf.getvalue())


def _dynamo(model: nn.Module, example: torch.Tensor, opset: int, dynamic_batch: bool) -> onnx.ModelProto:
    """torch.export + onnxscript. optimize=True: the exporter's own optimiser folds BatchNorm into
    the convolutions (onnxsim does not), so the graph matches the TorchScript exporter's: without
    it, BN stays in the file, counts as parameters and is quantised on its own by INT8."""
    try:
        import onnxscript  # noqa: F401 - the dynamo exporter's dependency
    except ImportError as e:
        raise ConfigError("--exporter dynamo needs the onnxscript package (pip install onnxscript); "
                          "or use --exporter torchscript") from e
    shapes = ({0: torch.export.Dim("batch", min=1, max=65536)},) if dynamic_batch else None
    program = torch.onnx.export(model, (example,), dynamo=True, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                                opset_version=opset, dynamic_shapes=shapes, optimize=True, verbose=False)
    graph = program.model_proto
    got = next((o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")), None)
    if got != opset:
        raise PipelineError(f"the dynamo exporter wrote opset {got}, not the --opset {opset} asked for; "
                            f"use --opset {got} or --exporter torchscript")
    return graph


def simplify(model: onnx.ModelProto, simplifier: str) -> tuple[onnx.ModelProto, bool]:
    """(graph, simplified?) with onnxsim (constant folding + fusions, its own check) or onnxslim."""
    check_simplifier(simplifier)
    if simplifier == "none":
        return model, False
    if simplifier == "onnxsim":
        import onnxsim

        try:
            out, ok = onnxsim.simplify(model)
        except Exception as e:  # noqa: BLE001
            raise PipelineError(f"onnxsim failed: {str(e).splitlines()[0]}; retry with --simplifier onnxslim or none") from e
        if not ok:
            raise PipelineError("onnxsim could not validate its simplified graph; retry with --simplifier onnxslim or none")
        return out, True
    try:
        import onnxslim
    except ImportError as e:
        raise ConfigError("--simplifier onnxslim needs the onnxslim package: pip install 'rtdeploy[slim]'") from e
    try:
        return onnxslim.slim(model), True
    except Exception as e:  # noqa: BLE001
        raise PipelineError(f"onnxslim failed: {str(e).splitlines()[0]}; retry with --simplifier onnxsim or none") from e


def check_graph(model: onnx.ModelProto, what: str = "exported graph") -> None:
    """onnx.checker with full_check (also runs strict shape inference)."""
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as e:  # ValidationError, InferenceError
        raise PipelineError(f"the {what} failed onnx.checker: {str(e).splitlines()[0]}") from e
