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
from torch.utils.data import Subset

from .. import distributed
from ..env import peak_rss_mb
from ..data import make_loader
from ..errors import ConfigError
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
    world_size: int = 1  # processes (torchrun ranks) that trained together
    backend: str | None = None  # their torch.distributed backend (gloo, nccl); None alone
    rank_digests: list[str] = field(default_factory=list)  # sha256 of the best model on each rank
    rank_peak_rss_mb: list[float] = field(default_factory=list)  # each process's peak RSS so far

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
        resume: dict | None = None,
        regularize: Callable[[nn.Module], None] | None = None) -> tuple[nn.Module, TrainReport]:
    """Train `model`; return the model of the epoch kept by `cfg.select` (see selection.py:
    the peak eval epoch, or the last one) and the report. `eval_ds` is the split selection
    looks at: the validation split, or the test split for the paper's protocol.

    `save(best_model, resume_state, report)` runs after every epoch; `resume_state` is plain
    tensors/data (loadable with weights_only) that `resume=` takes back. `regularize(model)` runs
    after each backward pass, before the optimiser step (a sparsity penalty adding to .grad).

    Under torchrun (distributed.setup() called) this is data-parallel: `cfg.batch_size` is the
    global batch, cut across the ranks (distributed.sharded_batches), gradients are averaged by
    DistributedDataParallel and BatchNorm uses the global batch's statistics, so N processes
    follow the one-process run. Evaluation counts the whole split; callbacks and `save` run on
    rank 0 only; every rank returns the same model (checked by digest).
    """
    world = distributed.info()
    device = resolve_device(cfg.device)
    if world.enabled and cfg.batch_size < world.world_size:
        raise ConfigError(f"--batch-size {cfg.batch_size} is the global batch and must be at least the "
                          f"number of processes ({world.world_size})")
    torch.manual_seed(cfg.seed)
    model.to(device)
    if teacher is not None:
        teacher.to(device).eval()
    steps = len(make_loader(train_ds, cfg.batch_size, shuffle=True, seed=cfg.seed))
    opt, sched = make_optimizer(model, cfg, steps)
    report = TrainReport(selection=cfg.select, **world.record())
    best_state, start = copy.deepcopy(model.state_dict()), 0
    if resume:
        _check_schedule(resume["scheduler"], sched)
        start, best_state = _restore(resume, model, opt, sched, report)
    if not world.is_main:
        on_step = on_epoch = save = None  # rank 0 alone reports and writes
    t0 = time.perf_counter() - report.seconds
    with distributed.cooperative_stop():
        for epoch in range(start, cfg.epochs):
            stats = _train_epoch(model, train_ds, loss_fn, opt, sched, cfg, epoch, device, teacher, on_step,
                                 regularize)
            stats.eval_accuracy = split_accuracy(model, eval_ds, cfg.batch_size, device)
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
    best = _select(model, best_state, report, cfg.select, len(eval_ds))
    report.rank_digests = distributed.check_identical(best, "the trained model") if world.enabled else []
    report.rank_peak_rss_mb = distributed.gather(round(peak_rss_mb(), 1))
    return best, report


def split_accuracy(model: nn.Module, ds, batch_size: int, device) -> float:
    """Accuracy over the whole split; under torchrun each rank counts a share and the counts
    are summed, so the number is the full split's, not one shard's."""
    world = distributed.info()
    if not world.enabled:
        return evaluate(model, ds, batch_size, device).accuracy
    part = Subset(ds, range(world.rank, len(ds), world.world_size))
    correct = seen = 0
    if len(part):
        r = evaluate(model, part, batch_size, device)
        correct, seen = r.accuracy * r.images, r.images
    correct, seen = distributed.all_sum([round(correct), seen])
    # float32 division, as evaluate()'s mean of 0/1 values: the same number one process reports
    return (torch.tensor(correct, dtype=torch.float32) / seen).item() if seen else 0.0


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


def _train_epoch(model, ds, loss_fn, opt, sched, cfg, epoch, device, teacher, on_step, regularize) -> EpochStats:
    world = distributed.info()
    model.train()
    loader = make_loader(ds, cfg.batch_size, shuffle=True, seed=cfg.seed, epoch=epoch, workers=cfg.workers,
                         shard=(world.rank, world.world_size))
    seen = correct = 0
    total_loss, t0 = 0.0, time.perf_counter()
    lr = opt.param_groups[0]["lr"]
    with distributed.synced_batchnorm(model):
        net = distributed.wrap_ddp(model, device)
        for step, (x, y) in enumerate(loader):
            if world.enabled:
                n_global = distributed.step_sync(y.numel())  # also where a stop request is shared
            elif x.shape[0] < 2:  # a trailing batch of one would break BatchNorm's batch statistics
                continue
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with torch.no_grad():
                t_logits = teacher(x) if teacher is not None else None
            logits = net(x)
            loss = loss_fn(logits, y, t_logits)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss became {loss.item()} at epoch {epoch + 1}; lower --lr")
            opt.zero_grad(set_to_none=True)
            # DDP averages gradients over ranks; weighting each rank's mean loss by its share of
            # the global batch makes that average the gradient of the global batch's mean loss.
            scale = y.numel() * world.world_size / n_global if world.enabled else 1.0
            (loss * scale).backward()
            if regularize is not None:  # on the synchronised gradients: every rank adds the same
                regularize(model)
            opt.step()
            sched.step()
            seen += y.numel()
            correct += (logits.argmax(1) == y).sum().item()
            total_loss += loss.item() * y.numel()
            if on_step:
                on_step(StepInfo(epoch + 1, step + 1, len(loader), total_loss / seen, correct / seen,
                                 seen * world.world_size / (time.perf_counter() - t0)))
    total_loss, correct, seen = distributed.all_sum([total_loss, correct, seen])
    secs = time.perf_counter() - t0
    return EpochStats(epoch + 1, total_loss / max(seen, 1), correct / max(seen, 1), 0.0, lr, secs,
                      seen / max(secs, 1e-9))


def _resume_state(done: int, model, opt, sched, best_state, report: TrainReport) -> dict:
    return {"epoch": done, "model": copy.deepcopy(model.state_dict()), "optimizer": copy.deepcopy(opt.state_dict()),
            "scheduler": sched.state_dict(), "best_state": best_state,
            "report": {"epochs": [asdict(e) for e in report.epochs], "best_epoch": report.best_epoch,
                       "best_accuracy": report.best_accuracy, "seconds": report.seconds,
                       "peak_epoch": report.peak_epoch, "peak_accuracy": report.peak_accuracy}}


def _check_schedule(saved: dict, sched) -> None:
    """A '.last' continues only the run that wrote it: its LR schedule spans that run's --epochs x
    steps per epoch. Loading it into another schedule (other --epochs, --batch-size, --schedule or
    data) makes OneCycleLR fail mid-run or silently trains on a mixed schedule."""
    mine = sched.state_dict()
    shape = ("total_steps", "T_max", "milestones")
    if set(saved) != set(mine) or any(_plain(saved.get(k)) != _plain(mine.get(k)) for k in shape):
        raise ConfigError("--resume was made with other training settings (its learning-rate schedule differs: "
                          "--epochs, --batch-size, --schedule or the data changed); repeat the interrupted "
                          "command with --resume added, or start again without --resume")


def _plain(value):
    return dict(value) if isinstance(value, dict) else value


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
