from .config import TrainConfig, resolve_device
from .evaluate import EvalResult, evaluate, predict, summarize
from .losses import LOSSES, AdaptiveMiningLoss, Distilled, create_loss
from .loop import EpochStats, StepInfo, TrainReport, fit

__all__ = ["TrainConfig", "resolve_device", "EvalResult", "evaluate", "predict", "summarize", "LOSSES",
           "AdaptiveMiningLoss", "Distilled", "create_loss", "EpochStats", "StepInfo", "TrainReport", "fit"]
