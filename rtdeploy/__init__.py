"""rtdeploy: RemoteTrimmer (CAP + AML) pruning taken to ONNX deployment."""
__version__ = "0.1.0"
