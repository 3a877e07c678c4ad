"""One-shot structured channel pruning on torch-pruning's dependency graph.

torch-pruning finds the coupled layers (a conv, its BN, the next conv's inputs, every branch
of a residual sum) and removes channels from all of them at once; a criterion (criteria.py)
ranks the channels. The final classifier is never pruned: its outputs are the classes.
"""
from __future__ import annotations

import copy
import logging
import math
import warnings
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
import torch_pruning as tp
from torch import nn

from ..defaults import COMPRESS
from ..errors import ConfigError, PipelineError
from ..models.complexity import count_macs_params
from ..models.layers import attention_blocks
from ..models.se_kinds import squeeze_layer
from .criteria import NEEDS_GRADIENTS, check_criterion, create_criterion
from .fold import carry_attention_marks

log = logging.getLogger(__name__)

SCOPES = ("local", "global")
_SEARCH_STEPS = 16
_SEARCH_TOLERANCE = 0.02  # --target-macs: stop when within 2 % of the target fraction


@dataclass
class PruneConfig:
    """`ratio`: share of channels removed per layer (local) or over the whole net (global).
    `round_to`: kept widths are multiples of this (8 by default: on ONNX Runtime CPU, AVX2 kernels
    block channels by 8, and widths rounded to 8 ran about 2x faster at equal MACs). 1: no rounding.
    `round_to="auto"`: the multiple that suits `round_to_target` ("cpu": this CPU's SIMD width;
    "cuda"/"tensorrt": tensor-core multiples), see target.py; the choice and its reason are kept.
    `target_macs`: when set, the ratio is searched so that MACs after / before ~= target_macs.
    `target_latency` (a latency.LatencyTarget): the ratio is searched so that the exported model
    meets a latency measured on this machine (latency.py)."""

    ratio: float = COMPRESS.ratio
    scope: str = COMPRESS.scope
    round_to: int | str = COMPRESS.round_to
    target_macs: float | None = None
    taylor_batches: int = 8  # calibration batches backpropagated for --criterion taylor
    round_to_target: str = "cpu"
    round_to_reason: str | None = None   # set when round_to was "auto"
    target_latency: object | None = None  # latency.LatencyTarget
    steps: int = COMPRESS.prune_steps  # > 1: progressive pruning (prune_model's between_steps fine-tunes)

    def __post_init__(self):
        self._resolve_round_to()
        for name in ("ratio", "target_macs"):  # a str or None from library callers: a message, not a TypeError
            value = getattr(self, name)
            if not (value is None and name == "target_macs") and (isinstance(value, bool) or not isinstance(value, (int, float))):
                raise ConfigError(f"--{name.replace('_', '-')} must be a number, got {value!r}")
        if self.target_macs is None and not 0.0 < self.ratio < 1.0:
            raise ConfigError(f"--ratio must be between 0 and 1 (exclusive), got {self.ratio}")
        if self.target_macs is not None and not 0.0 < self.target_macs < 1.0:
            raise ConfigError(f"--target-macs must be a fraction of the original MACs in (0, 1), "
                              f"got {self.target_macs}")
        if isinstance(self.round_to, bool) or not isinstance(self.round_to, int) or not 1 <= self.round_to <= 4096:
            raise ConfigError(f"--round-to must be 'auto' or an integer from 1 (no rounding) to 4096, got {self.round_to!r}")
        if self.scope not in SCOPES:
            raise ConfigError(f"--scope must be local or global, got {self.scope!r}")
        if self.taylor_batches < 1:
            raise ConfigError(f"taylor_batches must be >= 1, got {self.taylor_batches}")
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or not 1 <= self.steps <= 100:
            raise ConfigError(f"--prune-steps must be an integer from 1 (one shot) to 100, got {self.steps!r}")
        if self.steps > 1 and self.scope == "global" and (self.target_macs is not None or self.target_latency is not None):
            # the target's ratio is searched with one-shot trials; a global ranking redone after
            # fine-tuning between steps ends at other widths, so the target would not hold
            raise ConfigError("--prune-steps above 1 with --scope global cannot promise --target-macs or "
                              "--target-latency-ms; use --scope local (its widths do not depend on the ranking) "
                              "or --prune-steps 1")
        if self.target_latency is not None and self.target_macs is not None:
            raise ConfigError("pass either --target-macs or --target-latency-ms, not both")

    def _resolve_round_to(self) -> None:
        """'auto' -> the target's multiple (reason kept); '16' -> 16; anything else is left for the check."""
        if isinstance(self.round_to, str):
            text = self.round_to.strip().lower()
            if text == "auto":
                from .target import choose_round_to

                choice = choose_round_to(self.round_to_target)
                self.round_to, self.round_to_reason = choice.round_to, f"auto -> {choice.round_to}: {choice.reason}"
            elif text.isdigit():
                self.round_to = int(text)


@dataclass
class PruneReport:
    criterion: str
    ratio: float
    scope: str
    round_to: int
    target_macs: float | None
    params_before: int
    params_after: int
    macs_before: int
    macs_after: int
    widths_before: dict[str, int]
    widths_after: dict[str, int]
    seconds: float
    search: list[dict] = field(default_factory=list)  # --target-macs / --target-latency-ms trials
    round_to_reason: str | None = None                 # --round-to auto: what was chosen and why
    target_latency: dict | None = None                 # --target-latency-ms: the target and how it was timed
    steps: list[dict] = field(default_factory=list)    # progressive pruning: each step's ratio, MACs, fine-tuning

    @property
    def macs_fraction(self) -> float:
        return self.macs_after / max(self.macs_before, 1)


class _Pruner(tp.pruner.BasePruner):
    """torch-pruning's pruner with round-to-nearest widths that never reach zero.

    torch-pruning rounds a kept width *down* to a multiple of round_to, so 19 kept channels of 64
    become 16 and 4 of 16 become 0 (and a group that would be emptied is silently left whole).
    Here a width goes to the nearest multiple (at least one multiple, never more than the layer
    has); a layer narrower than round_to keeps its unrounded width, at least 1 channel.
    """

    def _round_to(self, n_pruned: int, current_channels: int, round_to: int) -> int:
        return current_channels - rounded_width(current_channels - n_pruned, current_channels, round_to)


def rounded_width(keep: int, channels: int, round_to: int) -> int:
    """The width kept from `channels` when the ratio keeps `keep`, rounded as described above."""
    if round_to <= 1 or channels < round_to:
        return max(1, min(keep, channels))
    nearest = math.floor(keep / round_to + 0.5) * round_to
    return min(max(nearest, round_to), channels // round_to * round_to)


def classifier_of(model: nn.Module) -> nn.Module:
    """The final Linear layer (the class outputs), which pruning must leave whole. Fully
    convolutional classifiers (SqueezeNet) end in a conv whose channels are the classes."""
    layers = [m for m in model.modules() if isinstance(m, nn.Linear)] or \
        [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    if not layers:
        raise ConfigError("the model has no Linear or Conv2d classifier layer; only image classifiers can be pruned")
    return layers[-1]


def conv_widths(model: nn.Module) -> dict[str, int]:
    return {name: m.out_channels for name, m in model.named_modules() if isinstance(m, nn.Conv2d)}


def _check_not_emptied(model: nn.Module, ratio: float) -> None:
    """Local scope keeps int(C * (1 - ratio)) channels per layer: refuse a ratio that keeps none."""
    for name, c in conv_widths(model).items():
        if c > 1 and int(c * (1 - ratio)) < 1:
            raise ConfigError(f"--ratio {ratio} would remove every channel of layer '{name}' "
                              f"({c} channels); use --ratio below {1 - 1 / c:.4g}")


def check_ratio(model: nn.Module, cfg: PruneConfig) -> None:
    """Before any work: ConfigError when --ratio (local scope) would empty a layer of `model`."""
    if cfg.scope == "local" and cfg.target_macs is None and cfg.target_latency is None:
        _check_not_emptied(model, cfg.ratio)


def _accumulate_gradients(model: nn.Module, calib: Iterable | None, batches: int) -> None:
    """Gradients of the CE loss over a few calibration batches (Taylor importance reads .grad).

    Eval mode, so BatchNorm running statistics are not changed by the calibration."""
    if calib is None:
        raise ConfigError("--criterion taylor needs calibration images (gradients); pass calib batches")
    device = next(model.parameters()).device
    model.eval()
    model.zero_grad(set_to_none=True)
    with torch.enable_grad():
        for i, (x, y) in enumerate(calib):
            if i >= batches:
                break
            F.cross_entropy(model(x.to(device)), y.to(device)).backward()


def _prune_once(model: nn.Module, criterion: str, example_inputs: torch.Tensor, cfg: PruneConfig,
                ratio: float, seed: int) -> None:
    if cfg.scope == "local":
        _check_not_emptied(model, ratio)
    _make_pruner(model, criterion, example_inputs, cfg, ratio, seed, steps=1).step()


def _prune_in_steps(model: nn.Module, criterion: str, example_inputs: torch.Tensor, cfg: PruneConfig, ratio: float,
                    seed: int, calib: Iterable | None, between_steps: Callable[[int], dict] | None) -> list[dict]:
    """Progressive pruning: one torch-pruning pruner with `cfg.steps` iterative steps, whose
    targets are fractions of the ORIGINAL widths (so with --scope local the last step lands on the
    one-shot widths; a global ranking may end elsewhere), ranking again at every step on the
    weights fine-tuned since; `between_steps(k)` fine-tunes after step k < steps and returns what
    to record of it."""
    if cfg.scope == "local":
        _check_not_emptied(model, ratio)
    pruner = _make_pruner(model, criterion, example_inputs, cfg, ratio, seed, steps=cfg.steps)
    record = []
    for k in range(1, cfg.steps + 1):
        if k > 1 and criterion in NEEDS_GRADIENTS:
            _accumulate_gradients(model, calib, cfg.taylor_batches)
        model.eval()
        for group in pruner.step(interactive=True):
            for dep, idxs in group:  # CAP's/bn's s_bar buffers follow their BatchNorm's channels
                if dep.handler == tp.prune_batchnorm_out_channels:
                    carry_attention_marks(dep.target.module, idxs)
            group.prune()
        model.zero_grad(set_to_none=True)
        row = {"step": k, "ratio": ratio * k / cfg.steps, "macs": _macs(model, example_inputs)[0]}
        if k < cfg.steps and between_steps is not None:
            row.update(between_steps(k))
        record.append(row)
    return record


def _make_pruner(model: nn.Module, criterion: str, example_inputs: torch.Tensor, cfg: PruneConfig, ratio: float,
                 seed: int, steps: int) -> "_Pruner":
    ignored = [classifier_of(model)] + [squeeze_layer(se) for se in attention_blocks(model).values()]
    with warnings.catch_warnings():
        # Parameters outside torch-pruning's layer types (ConvNeXt's layer_scale [C,1,1], timm's
        # gamma [C]) are pruned along their last non-singleton dimension, their channel one;
        # torch-pruning warns about each, but the checkpoint records their new shapes, so the
        # user has nothing to act on.
        warnings.filterwarnings("ignore", message="Unwrapped parameters detected")
        return _Pruner(model, example_inputs, importance=create_criterion(criterion, model, seed),
                       pruning_ratio=ratio, global_pruning=cfg.scope == "global", round_to=cfg.round_to,
                       ignored_layers=ignored,  # SE fc1: keep the SE bottleneck at C/16 if SE stays
                       iterative_steps=steps)


def _macs(model: nn.Module, example_inputs: torch.Tensor) -> tuple[int, int]:
    return count_macs_params(model, example_inputs.shape[-1])


def _copy_with_grads(model: nn.Module) -> nn.Module:
    """deepcopy drops .grad; gradient criteria (taylor) need it on the copy too."""
    twin = copy.deepcopy(model)
    for p, q in zip(model.parameters(), twin.parameters()):
        q.grad = None if p.grad is None else p.grad.clone()
    return twin


def _search_ratio(model, criterion, example_inputs, cfg: PruneConfig, macs0: int, seed: int):
    """Bisect the ratio on copies so that MACs after / before ~= cfg.target_macs (monotone in ratio).

    Rounding makes MACs a step function of the ratio, so the search also stops once the bracket
    is finer than the widest layer's channel step; the closest trial wins."""
    # Local scope: every layer keeps the same share whatever the ranking, so the widths (and MACs)
    # do not depend on the criterion and the cheap random ranking finds the same ratio.
    probe = "random" if cfg.scope == "local" else criterion
    resolution = 0.5 / max(conv_widths(model).values())
    lo, hi, trials = 0.0, 0.99, []
    for _ in range(_SEARCH_STEPS):
        if hi - lo < resolution:
            break
        mid = (lo + hi) / 2
        trial = _copy_with_grads(model)
        try:
            _prune_once(trial, probe, example_inputs, cfg, mid, seed)
        except ConfigError:  # this ratio would empty a layer: too much pruning
            hi = mid
            continue
        frac = _macs(trial, example_inputs)[0] / macs0
        trials.append({"ratio": round(mid, 6), "macs_fraction": frac})
        if abs(frac - cfg.target_macs) <= _SEARCH_TOLERANCE * cfg.target_macs:
            break
        lo, hi = (mid, hi) if frac > cfg.target_macs else (lo, mid)
    if not trials:
        raise ConfigError(f"--target-macs {cfg.target_macs}: no ratio reaches it without emptying a layer")
    best = min(trials, key=lambda t: abs(t["macs_fraction"] - cfg.target_macs))
    if abs(best["macs_fraction"] - cfg.target_macs) > 0.1 * cfg.target_macs:
        log.warning("--target-macs %.4g: closest reachable fraction is %.4g (ratio %.4g) at --round-to %d",
                    cfg.target_macs, best["macs_fraction"], best["ratio"], cfg.round_to)
    return best["ratio"], trials


def _verify(model: nn.Module, example_inputs: torch.Tensor, out_shape: torch.Size) -> None:
    empty = [name for name, c in conv_widths(model).items() if c < 1]
    if empty:
        raise ConfigError(f"pruning emptied layer(s) {', '.join(empty)}; lower --ratio")
    model.eval()
    with torch.no_grad():
        out = model(example_inputs)
    if out.shape != out_shape:
        raise PipelineError(f"pruning changed the output shape from {tuple(out_shape)} to {tuple(out.shape)}")
    if not torch.isfinite(out).all():
        raise PipelineError("the pruned model produces non-finite outputs")


def prune_model(model: nn.Module, criterion: str, example_inputs: torch.Tensor, cfg: PruneConfig,
                calib: Iterable | None = None, seed: int = 0,
                between_steps: Callable[[int], dict] | None = None) -> PruneReport:
    """Prune `model` in place, one shot (or in `cfg.steps` steps, `between_steps(k)` fine-tuning
    after each but the last), and check the result (forward, shape, widths).

    `example_inputs`: one batch [1,3,S,S] on the model's device (for tracing and MAC counts).
    `calib`: (images, labels) batches, needed by gradient criteria (taylor).
    """
    check_criterion(criterion)
    t0 = time.perf_counter()
    was_training = model.training
    model.eval()
    with torch.no_grad():
        out_shape = model(example_inputs).shape
    macs0, params0 = _macs(model, example_inputs)
    widths0 = conv_widths(model)
    create_criterion(criterion, model, seed)  # fail on cap-without-attention before any work
    check_ratio(model, cfg)
    if criterion in NEEDS_GRADIENTS:
        _accumulate_gradients(model, calib, cfg.taylor_batches)
    ratio, search = cfg.ratio, []
    if cfg.target_macs is not None:
        ratio, search = _search_ratio(model, criterion, example_inputs, cfg, macs0, seed)
    elif cfg.target_latency is not None:
        from .latency import search_latency

        ratio, search = search_latency(model, lambda m, r: _prune_trial(m, criterion, example_inputs, cfg, r, seed),
                                       example_inputs, cfg.target_latency, macs0)
    steps = []
    if cfg.steps > 1:
        steps = _prune_in_steps(model, criterion, example_inputs, cfg, ratio, seed, calib, between_steps)
    else:
        _prune_once(model, criterion, example_inputs, cfg, ratio, seed)
    model.zero_grad(set_to_none=True)
    _verify(model, example_inputs, out_shape)
    macs1, params1 = _macs(model, example_inputs)
    model.train(was_training)
    log.info("pruned with %s at ratio %.3f: MACs %d -> %d, params %d -> %d", criterion, ratio,
             macs0, macs1, params0, params1)
    return PruneReport(criterion, ratio, cfg.scope, cfg.round_to, cfg.target_macs, params0, params1,
                       macs0, macs1, widths0, conv_widths(model), time.perf_counter() - t0, search,
                       cfg.round_to_reason, cfg.target_latency.describe() if cfg.target_latency is not None else None,
                       steps)


def _prune_trial(model: nn.Module, criterion: str, example_inputs: torch.Tensor, cfg: PruneConfig, ratio: float,
                 seed: int) -> nn.Module:
    """A pruned copy of `model` at `ratio` (local scope: widths do not depend on the ranking, so the
    cheap random one stands in, as in the --target-macs search)."""
    trial = _copy_with_grads(model)
    _prune_once(trial, "random" if cfg.scope == "local" else criterion, example_inputs, cfg, ratio, seed)
    return trial
