"""ONNX export: checkpoint -> ONNX -> simplify -> checker + parity [-> INT8], and ONNX inspection.

    from rtdeploy.export import ExportConfig, export_checkpoint, read_metadata
    report = export_checkpoint("runs/pruned.pt", "runs/pruned.onnx", ExportConfig(opset=17), data="sample")
    read_metadata("runs/pruned.onnx").classes
"""
from .graph import InputSpec, count_macs, count_params, image_input, load_onnx, node_count
from .metadata import OnnxMeta, meta_from_checkpoint, read_metadata, write_metadata
from .onnx_export import DEFAULT_OPSET, SIMPLIFIERS, check_graph, simplify, to_onnx
from .parity import ParityResult, Tolerance, check_parity, compare_logits, make_session, run_session
from .pipeline import ExportConfig, ExportReport, Int8Report, export_checkpoint, int8_path
from .quantize import quantize_int8

__all__ = ["InputSpec", "count_macs", "count_params", "image_input", "load_onnx", "node_count", "OnnxMeta",
           "meta_from_checkpoint", "read_metadata", "write_metadata", "DEFAULT_OPSET", "SIMPLIFIERS",
           "check_graph", "simplify", "to_onnx", "ParityResult", "Tolerance", "check_parity", "compare_logits",
           "make_session", "run_session", "ExportConfig", "ExportReport", "Int8Report", "export_checkpoint",
           "int8_path", "quantize_int8"]
