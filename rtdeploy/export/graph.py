"""Reading an ONNX image classifier: validation, its input, params and MACs counted on the graph.

Counting on the graph (rather than on the PyTorch module) works for any .onnx file, including
INT8 QDQ models and files made by other tools, so every bench row is counted the same way.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, shape_inference

from ..errors import ModelFileError
from ..names import show

_QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
# op type -> (index of the data input, index of the weight input) for the compute-heavy ops
_CONV_OPS = {"Conv": (0, 1), "ConvInteger": (0, 1), "QLinearConv": (0, 3)}
_MATMUL_OPS = {"MatMul": (0, 1), "MatMulInteger": (0, 1), "QLinearMatMul": (0, 3), "Gemm": (0, 1)}
_SKIP_DTYPES = (TensorProto.INT64, TensorProto.INT32, TensorProto.BOOL)  # shapes, axes, indices


@dataclass
class InputSpec:
    """The image input: name and NCHW dims; `batch`/`height`/`width` are None where symbolic."""

    name: str
    batch: int | None
    channels: int
    height: int | None
    width: int | None

    @property
    def dynamic_batch(self) -> bool:
        return self.batch is None


def load_onnx(path: str | os.PathLike) -> onnx.ModelProto:
    """Load and structurally check `path`; ModelFileError when it is missing or not ONNX."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"model {show(path)} {not_a_file(path)}; pass an .onnx file or an rtdeploy checkpoint")
    try:
        model = onnx.load(str(path))
    except Exception as e:  # DecodeError, OSError
        first = (str(e).splitlines() or [type(e).__name__])[0][:160]
        raise ModelFileError(f"{show(path)} is not a valid ONNX model ({first}); export one with 'rtdeploy export'") from e
    _check_opset(model, path)
    try:
        onnx.checker.check_model(model)
    except Exception as e:  # DecodeError, ValidationError, OSError: all mean "not a usable ONNX file"
        first = (str(e).splitlines() or [type(e).__name__])[0][:160]
        raise ModelFileError(f"{path} is not a valid ONNX model ({first}); export one with 'rtdeploy export'") from e
    if not model.graph.node or not model.graph.output:
        raise ModelFileError(f"{path} is not a valid ONNX model (empty graph); export one with 'rtdeploy export'")
    return model


def not_a_file(path: Path) -> str:
    """Why `path` (not a regular file) cannot be a model, in words."""
    if path.is_dir():
        return "is a directory"
    if path.exists():
        return "is not a regular file (a device, FIFO or socket)"
    return "does not exist"


# The oldest default-domain opset ONNX Runtime still runs.
_MIN_OPSET = 7


def _check_opset(model: onnx.ModelProto, path: Path) -> None:
    """The standard-operator opset must be one the installed onnx knows (ONNX Runtime releases
    track it): a file from a newer exporter would otherwise load and fail only when measured."""
    top = onnx.defs.onnx_opset_version()
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx") and not _MIN_OPSET <= imp.version <= top:
            raise ModelFileError(f"{show(path)} uses ONNX opset {imp.version}, outside what this onnx/onnxruntime "
                                 f"runs ({_MIN_OPSET}..{top}); re-export it with an opset in that range "
                                 f"('rtdeploy export --opset 17')")


def graph_inputs(model: onnx.ModelProto) -> list:
    """Real inputs (old exporters also list initializers as inputs)."""
    inits = {i.name for i in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in inits]


def image_input(model: onnx.ModelProto, where: str = "model") -> InputSpec:
    """The one float32 NCHW, 3-channel input of an image classifier, or ModelFileError."""
    inputs = graph_inputs(model)
    if len(inputs) != 1:
        raise ModelFileError(f"{where} has {len(inputs)} inputs; an image classifier has one (N,3,H,W) input")
    inp = inputs[0]
    tensor = inp.type.tensor_type
    dims = [d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim]
    shape = "x".join("?" if d is None else str(d) for d in dims) or "no shape"
    if tensor.elem_type != TensorProto.FLOAT or len(dims) != 4 or dims[1] != 3:
        dtype = TensorProto.DataType.Name(tensor.elem_type) if tensor.elem_type else "unknown"
        raise ModelFileError(f"{where}: input {inp.name!r} is {dtype} {shape}, not an image batch; "
                             "expected float32 N x 3 x H x W (NCHW, RGB)")
    return InputSpec(inp.name, dims[0], 3, dims[2], dims[3])


def node_count(model: onnx.ModelProto) -> int:
    return len(model.graph.node)


def count_params(model: onnx.ModelProto) -> int:
    """Weights the graph computes with: float/int8 initializers, not Q/DQ scales, zero points or
    shape tensors. Counted per use (through Q/DQ nodes to the op that consumes them): simplifiers
    merge identical tensors (e.g. the all-zero folded convolutions of an untrained
    zero_init_residual ResNet), which must not hide parameters."""
    nodes = model.graph.node
    qparams = {n.input[i] for n in nodes if n.op_type in _QDQ_OPS for i in (1, 2) if i < len(n.input)}
    tensors = {t.name: t for t in model.graph.initializer}
    tensors.update({n.output[0]: a.t for n in nodes if n.op_type == "Constant" for a in n.attribute if a.name == "value"})
    quantized = {n.input[0] for n in nodes if n.op_type == "DequantizeLinear"}  # int8 weights, int32 biases
    sizes = {name: int(np.prod(t.dims, dtype=np.int64)) for name, t in tensors.items()
             if name not in qparams and (name in quantized or t.data_type not in _SKIP_DTYPES)}
    for n in nodes:  # graph order is topological: a weight's Q/DQ output stands for the weight
        if n.op_type in _QDQ_OPS and n.input[0] in sizes:
            sizes[n.output[0]] = sizes[n.input[0]]
    return sum(sizes.get(name, 0) for n in nodes if n.op_type not in _QDQ_OPS for name in n.input)


def _shapes(model: onnx.ModelProto, spec: InputSpec, img_size: int | None) -> dict[str, list[int | None]]:
    """Tensor name -> shape for one image (batch 1), from ONNX shape inference."""
    fixed = onnx.ModelProto()
    fixed.CopyFrom(model)
    size = img_size or spec.height
    hw = (spec.height or size, spec.width or size)
    if None in hw:
        raise ModelFileError("the model's input height/width are symbolic and it carries no input size "
                             "metadata; export it with 'rtdeploy export' (static H and W)")
    for inp in fixed.graph.input:
        if inp.name == spec.name:
            inp.type.CopyFrom(helper.make_tensor_type_proto(TensorProto.FLOAT, [1, 3, *hw]))
    inferred = shape_inference.infer_shapes(fixed, data_prop=True)
    out: dict[str, list[int | None]] = {}
    for vi in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
        out[vi.name] = [d.dim_value if d.HasField("dim_value") else None for d in vi.type.tensor_type.shape.dim]
    out.update({t.name: list(t.dims) for t in inferred.graph.initializer})
    return out


def _known(shape) -> bool:
    return shape is not None and all(d is not None for d in shape)


def count_macs(model: onnx.ModelProto, img_size: int | None = None) -> int:
    """Multiply-accumulates of Conv/Gemm/MatMul (and their integer forms) for one image.

    Conv: output elements x (input channels / groups) x kernel area, the weight's dims past the
    first. MatMul/Gemm: output elements x the reduced dimension K. Element-wise ops are not
    counted (as torch-pruning's counter, within a few percent for CNNs).
    """
    spec = image_input(model)
    shapes = _shapes(model, spec, img_size)
    total = 0
    for n in model.graph.node:
        if n.op_type in _CONV_OPS:
            w, y = shapes.get(n.input[_CONV_OPS[n.op_type][1]]), shapes.get(n.output[0])
            if _known(w) and _known(y):
                total += int(np.prod(y, dtype=np.int64) * np.prod(w[1:], dtype=np.int64))
        elif n.op_type in _MATMUL_OPS:
            total += _matmul_macs(n, shapes)
    return total


def _matmul_macs(n, shapes) -> int:
    a, y = shapes.get(n.input[_MATMUL_OPS[n.op_type][0]]), shapes.get(n.output[0])
    if not (_known(a) and _known(y)) or not a:
        return 0
    trans_a = n.op_type == "Gemm" and any(at.name == "transA" and at.i for at in n.attribute)
    k = a[0] if trans_a else a[-1]
    return int(np.prod(y, dtype=np.int64)) * int(k)
