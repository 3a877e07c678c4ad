"""PyTorch module -> ONNX graph -> simplified graph, each step checked.

The TorchScript-based exporter (dynamo=False) is used: the dynamo exporter needs onnxscript,
which is not a dependency, and for these plain CNNs both give the same graph. Export goes to
memory; nothing touches the disk until every check has passed.
"""
from __future__ import annotations

import io
import logging
import warnings

import onnx
import torch
from torch import nn

from ..defaults import OPSET
from ..errors import ConfigError, PipelineError

log = logging.getLogger(__name__)

INPUT_NAME, OUTPUT_NAME = "input", "logits"
DEFAULT_OPSET = OPSET  # 17: supported by ONNX Runtime >= 1.14, TensorRT >= 8.6 and OpenVINO
MIN_OPSET = 13      # per-channel QDQ quantisation needs 13
SIMPLIFIERS = ("onnxsim", "onnxslim", "none")


def max_opset() -> int:
    from torch.onnx import _constants

    return int(getattr(_constants, "ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET", 20))


def check_opset(opset: int) -> None:
    top = max_opset()
    if not MIN_OPSET <= opset <= top:
        raise ConfigError(f"--opset must be between {MIN_OPSET} and {top} (this torch's ONNX exporter), got {opset}")


def check_simplifier(name: str) -> None:
    if name not in SIMPLIFIERS:
        raise ConfigError(f"--simplifier must be one of {', '.join(SIMPLIFIERS)}, got {name!r}")


def to_onnx(model: nn.Module, img_size: int, *, opset: int, dynamic_batch: bool, batch_size: int = 1) -> onnx.ModelProto:
    """Trace `model` (eval mode) into an ONNX graph: input "input" [N,3,S,S] float32, output "logits"."""
    model = model.eval().cpu()
    example = torch.zeros(batch_size, 3, img_size, img_size)
    axes = {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}} if dynamic_batch else None
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's own deprecation notices; not the user's concern
        try:
            torch.onnx.export(model, (example,), buf, dynamo=False, input_names=[INPUT_NAME],
                              output_names=[OUTPUT_NAME], opset_version=opset, dynamic_axes=axes,
                              do_constant_folding=True)
        except Exception as e:  # noqa: BLE001 - any exporter failure is a failed stage
            raise PipelineError(f"torch.onnx.export failed at opset {opset}: {str(e).splitlines()[0]}; "
                                "try another --opset") from e
    return onnx.load_from_string(buf.getvalue())


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
