"""Fold each SE block's mean attention into the BatchNorm before it, then strip the SE blocks.

CAP (RemoteTrimmer, sec. 2.2) replaces every SE block by its mean scale s_bar (from
attention.capture_attention) and pushes that scale into the preceding BatchNorm:
gamma' = gamma * s_bar, beta' = beta * s_bar. The deployable model has no SE left, and
|gamma'| = s_bar * |gamma| is the CAP channel importance (prune/criteria.py).

Which BatchNorm an SE block follows is read from the traced graph (torch.fx, SE blocks kept
as leaves), never guessed from module names: conv -> BN [-> ReLU] -> SE, where the BN (and
ReLU) output feeds nothing but that SE block.

SE blocks after other activations (hardswish in MobileNetV3, SiLU in EfficientNet) cannot go
into the BN (those are not positively homogeneous); their mean scale goes into the input
channels of the convs that read the SE output instead, which is exact for any activation,
and the BN before them ranks channels by |gamma| x s_bar (issue 12). SE blocks of every
origin are recognised (models/se_kinds.py: rtdeploy, torchvision, timm).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from ..errors import PipelineError, UserInputError
from ..models.layers import attention_blocks
from ..models.se_kinds import is_attention_block
from ..models.structure import set_module

log = logging.getLogger(__name__)

ATTENTION_ATTR = "rt_attention"  # s_bar kept on each folded BN (non-persistent buffer) for the criteria
RANK_ATTR = "rt_attention_rank"  # s_bar of an SE folded into its consumers: BN gamma not scaled
_RELU_FUNCTIONS = (F.relu, torch.relu, torch.relu_)
_RELU_METHODS = ("relu", "relu_")
# Activations that act on each element alone: a per-channel scale after them can move into the
# next conv's input channels (exact), though not through them into the BatchNorm (not homogeneous).
_ELEMENTWISE = (nn.ReLU, nn.ReLU6, nn.Hardswish, nn.Hardsigmoid, nn.SiLU, nn.GELU, nn.Mish, nn.Sigmoid,
                nn.LeakyReLU, nn.ELU, nn.Tanh, nn.Dropout)
_TOLERANCE = 1e-4  # relative to the output scale: float32 reassociation error is ~1e-6


class FoldError(UserInputError):
    """An SE block cannot be folded (no BatchNorm right before it): exit 2, names the block."""


@dataclass
class FoldLink:
    """SE block `se` follows BatchNorm `bn` (through `act`, "" when directly).

    mode "bn" (the paper's): s_bar is folded into `bn` (relu True: exact through a ReLU).
    mode "consumer": the activation is not positively homogeneous (hardswish, SiLU, ...), so s_bar
    scales the input channels of `consumers`, the convs that read the SE output; `bn` is kept as
    is and ranks channels by |gamma| x s_bar."""

    se: str
    bn: str
    relu: bool
    mode: str = "bn"
    act: str = ""
    consumers: list[str] = field(default_factory=list)


@dataclass
class FoldReport:
    blocks: list[dict] = field(default_factory=list)  # per SE: se, bn, mode, act, s_bar mean/min/max
    removed: list[str] = field(default_factory=list)  # SE modules now nn.Identity
    params_removed: int = 0
    # Coefficient of variation of |gamma| per folded BN, averaged: the paper's motivation is that
    # gamma is nearly uniform in remote-sensing models while gamma' = s_bar * gamma spreads.
    gamma_cv_before: float = 0.0
    gamma_cv_after: float = 0.0
    max_abs_diff: float = 0.0  # folded model vs. the model with each SE fixed to s_bar
    tolerance: float = 0.0
    ok: bool = True
    verdict: str = ""  # one line: the numeric fold check's outcome


class _SELeafTracer(fx.Tracer):
    """Trace the model but keep every SE block, BatchNorm (timm's BatchNormAct2d included) and
    conv as one call, so the graph shows what feeds an SE block and what reads its output."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return (is_attention_block(m) or isinstance(m, (nn.BatchNorm2d, nn.Conv2d))
                or super().is_leaf_module(m, qualname))


def _trace(model: nn.Module) -> fx.Graph:
    try:
        return _SELeafTracer().trace(model)
    except Exception as e:  # noqa: BLE001 - fx raises many types for untraceable Python
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise FoldError(f"cannot trace the model to find the BatchNorm before each SE block "
                        f"(torch.fx: {first}); use --criterion bn") from e


def _is_relu(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    if node.op == "call_module":
        return isinstance(modules[node.target], nn.ReLU)
    if node.op == "call_function":
        return node.target in _RELU_FUNCTIONS
    return node.op == "call_method" and node.target in _RELU_METHODS


def _is_activation(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    """An elementwise, per-channel-agnostic module between BN and SE (hardswish, SiLU, ...)."""
    if _is_relu(node, modules):
        return True
    return node.op == "call_module" and isinstance(modules[node.target], _ELEMENTWISE)


def _describe(node: fx.Node, modules: dict[str, nn.Module]) -> str:
    if node.op == "call_module":
        return f"{type(modules[node.target]).__name__} '{node.target}'"
    if node.op == "placeholder":
        return "the model input"
    return f"{getattr(node.target, '__name__', node.target)}()"


def _skip_identity(node, modules):
    while isinstance(node, fx.Node) and node.op == "call_module" and isinstance(modules[node.target], nn.Identity):
        node = node.args[0]
    return node


def _bn_act(bn: nn.Module) -> nn.Module | None:
    """The activation fused inside a BatchNorm subclass (timm's BatchNormAct2d), if any."""
    act = getattr(bn, "act", None)
    return None if act is None or isinstance(act, nn.Identity) else act


def _consumers(se_node: fx.Node, modules: dict[str, nn.Module]) -> list[str] | None:
    """The convs reading the SE output (through Identity), or None when anything else reads it."""
    names, frontier = [], list(se_node.users)
    while frontier:
        user = frontier.pop()
        if user.op == "call_module" and isinstance(modules[user.target], nn.Identity):
            frontier.extend(user.users)
        elif user.op == "call_module" and isinstance(modules[user.target], nn.Conv2d) \
                and user.args[0] is not None and len(user.args) == 1:
            names.append(user.target)
        else:
            return None
    return names or None


def _link(se_node: fx.Node, modules: dict[str, nn.Module]) -> FoldLink:
    """Walk back from an SE call through activations to a BatchNorm2d; pick the exact fold."""
    se = se_node.target

    def fail(why: str) -> FoldError:
        return FoldError(f"CAP needs a BatchNorm right before SE block '{se}' ({why}); folding works "
                         f"on conv -> BatchNorm [-> activation] -> SE; use --criterion bn")

    node, acts = _skip_identity(se_node.args[0], modules), []
    if not isinstance(node, fx.Node):
        raise fail("its input is not a tensor computed by the model")
    while _is_activation(node, modules):
        if len(node.users) != 1:
            raise fail(f"the {_describe(node, modules)} before it also feeds {len(node.users) - 1} other op(s)")
        acts.append(node)
        node = _skip_identity(node.args[0], modules)
    if not (isinstance(node, fx.Node) and node.op == "call_module"
            and isinstance(modules[node.target], nn.BatchNorm2d)):
        via = f" through {', '.join(_describe(a, modules) for a in acts)}" if acts else ""
        raise fail(f"it follows {_describe(node, modules) if isinstance(node, fx.Node) else node!r}{via}")
    bn = modules[node.target]
    if len(node.users) != 1:
        raise fail(f"BatchNorm '{node.target}' also feeds {len(node.users) - 1} other op(s)")
    if not bn.affine:
        raise fail(f"BatchNorm '{node.target}' has no affine gamma/beta to scale")
    fused = _bn_act(bn)
    names = [_describe(a, modules) for a in acts] + ([type(fused).__name__] if fused is not None else [])
    relu_only = all(_is_relu(a, modules) for a in acts) and (fused is None or isinstance(fused, nn.ReLU))
    if relu_only and len(names) <= 1:
        return FoldLink(se=se, bn=node.target, relu=bool(names), act=", ".join(names))
    consumers = _consumers(se_node, modules)
    if consumers is None:
        raise fail(f"{', '.join(names)} between them is not ReLU, and the SE output feeds something "
                   "other than convolutions, so its mean scale cannot be folded into them")
    return FoldLink(se=se, bn=node.target, relu=False, mode="consumer", act=", ".join(names), consumers=consumers)


def fold_plan(model: nn.Module) -> list[FoldLink]:
    """For every SE block, the BatchNorm it follows; FoldError naming the first that has none."""
    if not attention_blocks(model):
        return []
    modules = dict(model.named_modules())
    graph = _trace(model)
    links = [_link(n, modules) for n in graph.nodes
             if n.op == "call_module" and is_attention_block(modules[n.target])]
    seen = {}
    for link in links:  # one SE module called twice would scale its BN twice
        if link.se in seen:
            raise FoldError(f"SE block '{link.se}' is used more than once in the forward pass; "
                            "folding needs one BatchNorm per SE block; use --criterion bn")
        seen[link.se] = link
    return links


def _cv(x: torch.Tensor) -> float:
    x = x.abs().double()
    return float(x.std() / x.mean().clamp_min(1e-12)) if x.numel() > 1 else 0.0


def _constant_scale_hook(s_bar: torch.Tensor):
    """Forward hook making an SE block return x * s_bar: the reference the folded model must match."""
    def hook(module, inputs, output):
        x = inputs[0]
        return x * s_bar.to(x.device, x.dtype).view(1, -1, 1, 1)
    return hook


@torch.no_grad()
def _outputs(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Eval-mode outputs for the fold check, without TF32: on Ampere+ GPUs cuDNN convolutions
    default to TF32 (10-bit mantissa), whose rounding alone exceeds the check's tolerance."""
    was_training = model.training
    model.eval()
    matmul_tf32 = torch.backends.cuda.matmul.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = False
        with torch.backends.cudnn.flags(enabled=torch.backends.cudnn.enabled, allow_tf32=False):
            return model(x.to(next(model.parameters()).device)).float().cpu()
    finally:
        torch.backends.cuda.matmul.allow_tf32 = matmul_tf32
        model.train(was_training)


def _mark(bn: nn.Module, attr: str, s: torch.Tensor) -> None:
    for name in (ATTENTION_ATTR, RANK_ATTR):
        if name in bn._buffers:
            del bn._buffers[name]
    # Not persistent: it steers the ranking only and must not enter checkpoints or ONNX files.
    bn.register_buffer(attr, s.detach().clone(), persistent=False)


def _scale_bn(bn: nn.BatchNorm2d, s_bar: torch.Tensor) -> None:
    # Exact through ReLU: relu(a * x) = a * relu(x) for every a >= 0 (ReLU is positively
    # homogeneous), and s_bar is a sigmoid mean, so in (0, 1). Hence SE-with-constant-scale
    # after BN[+ReLU] equals a BN whose affine output is scaled by s_bar: gamma' = gamma * s_bar,
    # beta' = beta * s_bar. Without a ReLU in between it is plain linearity.
    s = s_bar.to(bn.weight.device, bn.weight.dtype)
    bn.weight.mul_(s)
    bn.bias.mul_(s)
    _mark(bn, ATTENTION_ATTR, s)


def _scale_conv_inputs(conv: nn.Conv2d, s_bar: torch.Tensor) -> None:
    """conv(x * s) == conv'(x) with each input channel's weights scaled by s: exact for any
    activation before the SE block (hardswish, SiLU are not homogeneous, so the BN cannot take
    it), and for zero padding too (0 * s = 0). Grouped convs: input channel c sits in group
    c // (in / groups) at position c % (in / groups) of every filter of that group."""
    s = s_bar.to(conv.weight.device, conv.weight.dtype)
    groups, out_c, in_per_group = conv.groups, conv.out_channels, conv.weight.shape[1]
    per_filter = s.view(groups, 1, in_per_group).expand(groups, out_c // groups, in_per_group)
    conv.weight.mul_(per_filter.reshape(out_c, in_per_group, 1, 1))


def _fold_one(model: nn.Module, link: FoldLink, s: torch.Tensor) -> None:
    bn = model.get_submodule(link.bn)
    if link.mode == "bn":
        _scale_bn(bn, s)
        return
    for name in link.consumers:
        _scale_conv_inputs(model.get_submodule(name), s)
    # gamma stays as trained; CAP ranks by |gamma| x s_bar (criteria.BNScale reads the mark).
    _mark(bn, RANK_ATTR, s.to(bn.weight.device, bn.weight.dtype))


def _check_means(links: list[FoldLink], means: dict[str, torch.Tensor], model: nn.Module) -> None:
    for link in links:
        if link.se not in means:
            raise PipelineError(f"no captured attention for SE block '{link.se}'; run capture_attention first")
        bn = model.get_submodule(link.bn)
        if means[link.se].shape != (bn.num_features,):
            raise PipelineError(f"attention of '{link.se}' has shape {tuple(means[link.se].shape)}, "
                                f"BatchNorm '{link.bn}' has {bn.num_features} channels")


@torch.no_grad()
def fold_attention(model: nn.Module, means: dict[str, torch.Tensor],
                   check_inputs: torch.Tensor | None = None) -> FoldReport:
    """Fold `means` (from capture_attention) into the BatchNorms and strip the SE blocks, in place.

    Verifies that the folded model computes what the original computes with every SE block
    fixed to its mean scale (max |difference| <= 1e-4 x output scale, else PipelineError).
    `check_inputs`: images for that check (default: 4 seeded random 64x64 images).
    """
    links = fold_plan(model)
    report = FoldReport()
    if not links:
        return report
    _check_means(links, means, model)
    if check_inputs is None:
        check_inputs = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    handles = [model.get_submodule(l.se).register_forward_hook(_constant_scale_hook(means[l.se])) for l in links]
    try:
        reference = _outputs(model, check_inputs)
    finally:
        for h in handles:
            h.remove()
    cv_before, cv_after = [], []
    for link in links:
        bn, s = model.get_submodule(link.bn), means[link.se]
        cv_before.append(_cv(bn.weight))
        report.params_removed += sum(p.numel() for p in model.get_submodule(link.se).parameters())
        _fold_one(model, link, s)
        cv_after.append(_cv(bn.weight * attention_scale(bn)[0] if link.mode == "consumer" else bn.weight))
        set_module(model, link.se, nn.Identity())
        report.blocks.append({"se": link.se, "bn": link.bn, "relu": link.relu, "mode": link.mode, "act": link.act,
                              "consumers": link.consumers, "s_mean": float(s.mean()),
                              "s_min": float(s.min()), "s_max": float(s.max())})
        report.removed.append(link.se)
    report.gamma_cv_before = sum(cv_before) / len(cv_before)
    report.gamma_cv_after = sum(cv_after) / len(cv_after)
    folded = _outputs(model, check_inputs)
    report.max_abs_diff = float((folded - reference).abs().max())
    report.tolerance = _TOLERANCE * max(1.0, float(reference.abs().max()))
    report.ok = report.max_abs_diff <= report.tolerance
    report.verdict = (f"{'exact' if report.ok else 'NOT exact'}: max |diff| {report.max_abs_diff:.2e} "
                      f"{'<=' if report.ok else '>'} tolerance {report.tolerance:.2e}")
    if not report.ok:
        raise PipelineError(f"folding SE attention changed the outputs by {report.max_abs_diff:.3g} "
                            f"(tolerance {report.tolerance:.3g}); the model is not conv-BN-activation-SE as traced")
    log.info("folded %d SE blocks into their BatchNorms (max |diff| %.2e)", len(links), report.max_abs_diff)
    return report


def attention_of(bn: nn.Module) -> torch.Tensor | None:
    """The folded s_bar carried by a BatchNorm, or None (no SE was folded into it)."""
    return getattr(bn, ATTENTION_ATTR, None)


def attention_scale(bn: nn.Module) -> tuple[torch.Tensor | None, bool]:
    """(s_bar, already in gamma): s_bar of the SE block after this BN, and whether gamma was
    scaled by it (mode "bn") or not (mode "consumer"); (None, False) when no SE followed it."""
    if getattr(bn, ATTENTION_ATTR, None) is not None:
        return getattr(bn, ATTENTION_ATTR), True
    return getattr(bn, RANK_ATTR, None), False


def carry_attention_marks(bn: nn.Module, removed) -> None:
    """Drop the s_bar entries of the channels a pruning step removes from `bn` (torch-pruning
    slices BatchNorm's own tensors, not these buffers): progressive pruning ranks again."""
    for name in (ATTENTION_ATTR, RANK_ATTR):
        mark = bn._buffers.get(name)
        if mark is not None and mark.numel() == bn.weight.numel():
            keep = torch.ones(mark.numel(), dtype=torch.bool, device=mark.device)
            keep[torch.as_tensor(list(removed), dtype=torch.long, device=mark.device)] = False
            bn._buffers[name] = mark[keep]


def clear_attention_marks(model: nn.Module) -> None:
    """Drop the s_bar buffers once ranking is done (pruning does not slice them)."""
    for m in model.modules():
        for name in (ATTENTION_ATTR, RANK_ATTR):
            if name in m._buffers:
                del m._buffers[name]
