from .layers import SEBlock, attention_blocks, has_attention
from .registry import create_model, list_models, register
from .structure import apply_structure, describe, layer_widths

__all__ = ["SEBlock", "attention_blocks", "has_attention", "create_model", "list_models",
           "register", "apply_structure", "describe", "layer_widths"]
