"""rtdeploy: RemoteTrimmer (CAP + AML) pruning taken to ONNX deployment.

The Python API (rtdeploy.api) is importable from here: rtdeploy.prune_channels(...), rtdeploy.export_onnx(...),
and so on. It is loaded on first use, so `import rtdeploy` (and the CLI's start-up) stays cheap.
"""
__version__ = "0.1.0"

_API = ("capture_attention", "fold_attention", "prune_channels", "finetune", "export_onnx", "benchmark")
__all__ = ["__version__", *_API]


def __getattr__(name: str):
    if name in _API:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'rtdeploy' has no attribute {name!r}")
