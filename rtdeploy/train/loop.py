"""The one training loop: `rtdeploy train` and the fine-tuning in `compress` both use it.

Deterministic by construction: batch order and augmentation are functions of (seed, epoch),
so a run resumed after epoch k replays epochs k+1.. exactly as an uninterrupted run would.
"""
from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import torch
from torch import nn

from ..data import make_loader
from .config import TrainConfig, resolve_device
from .evaluate import evaluate
from .selection import keep_peak

log = logging.getLogger(__name__)


@dataclass
class EpochStats:
    epoch: int
    train_loss: float
    train_accuracy: float
    eval_accuracy: float
    lr: float
    seconds: float
    images_per_s: float


@dataclass
class TrainReport:
    epochs: list[EpochStats] = field(default_factory=list)
    best_epoch: int = 0  # the epoch kept (see selection.py) and its eval accuracy
    best_accuracy: float = 0.0
    seconds: float = 0.0
    resumed_from_epoch: int = 0
    peak_epoch: int = 0  # the epoch with the highest eval accuracy (kept only when the rule says so)
    peak_accuracy: float = 0.0
    selection: str = "val"

    @property
    def final_accuracy(self) -> float:
        return self.epochs[-1].eval_accuracy if self.epochs else 0.0


@dataclass
class StepInfo:
    epoch: int
    step: int
    steps: int
    loss: float
    accuracy: float
    images_per_s: float


def make_optimizer(model: nn.Module, cfg: TrainConfig, steps_per_epoch: int):
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                          weight_decay=cfg.weight_decay)
    total = cfg.epochs * steps_per_epoch
    if cfg.schedule == "cosine":
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total)
    elif cfg.schedule == "onecycle":
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=total)
    elif cfg.schedule == "step":
        marks = [math.ceil(f * cfg.epochs) * steps_per_epoch for f in cfg.milestones]
        sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=marks, gamma=0.1)
    else:
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    return opt, sched


def fit(model: nn.Module, train_ds, eval_ds, loss_fn: nn.Module, cfg: TrainConfig, *,
        teacher: nn.Module | None = None,
        on_step: Callable[[StepInfo], None] | None = None,
        on_epoch: Callable[[EpochStats], None] | None = None,
        save: Callable[[nn.Module, dict, TrainReport], None] | None = None,
        resume: dict | None = None) -> tuple[nn.Module, TrainReport]:
    """Train `model`; return the model of the epoch kept by `cfg.select` (see selection.py:
    the peak eval epoch, or the last one) and the report. `eval_ds` is the split selection
    looks at: the validation split, or the test split for the paper's protocol.

    `save(best_model, resume_state, report)` runs after every epoch; `resume_state` is plain
    tensors/data (loadable with weights_only) that `resume=` takes back.
    """
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    model.to(device)
    if teacher is not None:
        teacher.to(device).eval()
    steps = len(make_loader(train_ds, cfg.batch_size, shuffle=True, seed=cfg.seed))
    opt, sched = make_optimizer(model, cfg, steps)
    report, best_state, start = TrainReport(selection=cfg.select), copy.deepcopy(model.state_dict()), 0
    if resume:
        start, best_state = _restore(resume, model, opt, sched, report)
    t0 = time.perf_counter() - report.seconds
    for epoch in range(start, cfg.epochs):
        stats = _train_epoch(model, train_ds, loss_fn, opt, sched, cfg, epoch, device, teacher, on_step)
        stats.eval_accuracy = evaluate(model, eval_ds, cfg.batch_size, device).accuracy
        report.epochs.append(stats)
        if stats.eval_accuracy > report.peak_accuracy or epoch == 0:
            report.peak_epoch, report.peak_accuracy = epoch + 1, stats.eval_accuracy
            best_state = copy.deepcopy(model.state_dict())
        kept = _select(model, best_state, report, cfg.select, len(eval_ds))
        report.seconds = time.perf_counter() - t0
        if on_epoch:
            on_epoch(stats)
        if save:
            save(kept, _resume_state(epoch + 1, model, opt, sched, best_state, report), report)
    return _select(model, best_state, report, cfg.select, len(eval_ds)), report


def _select(model: nn.Module, peak_state: dict, report: TrainReport, rule: str, n_eval: int) -> nn.Module:
    """The model of the epoch the rule keeps so far; sets report.best_epoch/best_accuracy."""
    last = report.epochs[-1]
    if keep_peak(rule, report.peak_accuracy, last.eval_accuracy, n_eval):
        report.best_epoch, report.best_accuracy = report.peak_epoch, report.peak_accuracy
        return _best(model, peak_state)
    report.best_epoch, report.best_accuracy = last.epoch, last.eval_accuracy
    return _best(model, model.state_dict())


def _best(model: nn.Module, best_state: dict) -> nn.Module:
    best = copy.deepcopy(model)
    best.load_state_dict(best_state)
    return best.eval()


def _train_epoch(model, ds, loss_fn, opt, sched, cfg, epoch, device, teacher, on_step) -> EpochStats:
    model.train()
    loader = make_loader(ds, cfg.batch_size, shuffle=True, seed=cfg.seed, epoch=epoch, workers=cfg.workers)
    seen = correct = 0
    total_loss, t0 = 0.0, time.perf_counter()
    lr = opt.param_groups[0]["lr"]
    for step, (x, y) in enumerate(loader):
        if x.shape[0] < 2:  # a trailing batch of one would break BatchNorm's batch statistics
            continue
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with torch.no_grad():
            t_logits = teacher(x) if teacher is not None else None
        logits = model(x)
        loss = loss_fn(logits, y, t_logits)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss became {loss.item()} at epoch {epoch + 1}; lower --lr")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        seen += y.numel()
        correct += (logits.argmax(1) == y).sum().item()
        total_loss += loss.item() * y.numel()
        if on_step:
            on_step(StepInfo(epoch + 1, step + 1, len(loader), total_loss / seen, correct / seen,
                             seen / (time.perf_counter() - t0)))
    secs = time.perf_counter() - t0
    return EpochStats(epoch + 1, total_loss / max(seen, 1), correct / max(seen, 1), 0.0, lr, secs,
                      seen / max(secs, 1e-9))


def _resume_state(done: int, model, opt, sched, best_state, report: TrainReport) -> dict:
    return {"epoch": done, "model": copy.deepcopy(model.state_dict()), "optimizer": copy.deepcopy(opt.state_dict()),
            "scheduler": sched.state_dict(), "best_state": best_state,
            "report": {"epochs": [asdict(e) for e in report.epochs], "best_epoch": report.best_epoch,
                       "best_accuracy": report.best_accuracy, "seconds": report.seconds,
                       "peak_epoch": report.peak_epoch, "peak_accuracy": report.peak_accuracy}}


def _restore(state: dict, model, opt, sched, report: TrainReport) -> tuple[int, dict]:
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["scheduler"])
    r = state["report"]
    report.epochs = [EpochStats(**e) for e in r["epochs"]]
    report.best_epoch, report.best_accuracy = r["best_epoch"], r["best_accuracy"]
    # '.last' files written before the selection rule recorded only the peak as "best"
    report.peak_epoch = r.get("peak_epoch", r["best_epoch"])
    report.peak_accuracy = r.get("peak_accuracy", r["best_accuracy"])
    report.seconds = r["seconds"]
    report.resumed_from_epoch = state["epoch"]
    return state["epoch"], state["best_state"]
