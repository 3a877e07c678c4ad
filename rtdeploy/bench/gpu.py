"""GPU measurement (CUDA and TensorRT execution providers of onnxruntime-gpu) through I/O binding.

Two latencies per round, because they answer different questions:
- device-only: the input already lives on the GPU (an OrtValue bound once) and the output stays
  there; this is what the network costs when it sits inside a GPU pipeline.
- end to end: a host numpy batch in, host logits out (copies included), as `session.run` does.

FP16: TensorRT builds FP16 engines itself (trt_fp16_enable); for CUDA the graph is converted to
FP16 with onnxruntime's converter, keeping float32 inputs and outputs (keep_io_types), so callers
feed the same arrays. Imported only by the worker when a GPU provider is asked for.
"""
from __future__ import annotations

import numpy as np


def _fp16_graph(path: str) -> bytes:
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    return convert_float_to_float16(onnx.load(path), keep_io_types=True).SerializeToString()


def _providers(spec: dict) -> tuple[list, str | bytes]:
    """(providers with options, model path or FP16 bytes) for the spec."""
    providers, model = list(spec["providers"]), spec["path"]
    if spec.get("fp16"):
        if providers[0] == "TensorrtExecutionProvider":
            providers[0] = ("TensorrtExecutionProvider", {"trt_fp16_enable": True})
        else:
            model = _fp16_graph(model)
    return providers, model


def measure_gpu(spec: dict, x: np.ndarray, opts, give_up_at: float | None) -> dict:
    import onnxruntime as ort

    from .worker import _stopwatch, _timed

    providers, model = _providers(spec)
    sess, session_ms = _timed(lambda: ort.InferenceSession(model, sess_options=opts, providers=providers))
    wanted, got = spec["providers"][0], sess.get_providers()[0]
    if got != wanted:
        raise RuntimeError(f"ONNX Runtime fell back from {wanted} to {got}; the {wanted} libraries "
                           "(CUDA/cuDNN/TensorRT) are not usable on this machine")
    feed = {spec["input_name"]: x}
    _, first_ms = _timed(lambda: sess.run(None, feed))  # TensorRT builds its engine here
    binding = sess.io_binding()
    binding.bind_ortvalue_input(spec["input_name"], ort.OrtValue.ortvalue_from_numpy(x, "cuda", 0))
    for out in sess.get_outputs():
        binding.bind_output(out.name, "cuda", 0)
    device = _stopwatch(lambda: sess.run_with_iobinding(binding), spec["warmup"], spec["runs"], spec["seconds"],
                        give_up_at=give_up_at)
    e2e = _stopwatch(lambda: sess.run(None, feed), spec["warmup"], spec["runs"], spec["seconds"],
                     give_up_at=give_up_at)
    return {"session_ms": session_ms, "first_ms": first_ms, "latencies_ms": e2e, "device_latencies_ms": device,
            "provider": got, "fp16": bool(spec.get("fp16"))}
