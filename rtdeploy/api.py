"""rtdeploy as library calls on your own model and data (issue 12).

The CLI works on rtdeploy checkpoints; these functions work on any `nn.Module` image classifier
(a torchvision or timm network, your own class) and your own datasets or loaders, so pruning,
export and benchmarking fit into an existing training script. Every function is keyword-only
after the model, returns the report dataclass the CLI renders, and raises the typed errors of
`rtdeploy.errors` (UserInputError for bad input, PipelineError when a numeric check fails).

    fold = rtdeploy.fold_attention(model, images=calib_loader)        # SE models, for CAP
    pruned = rtdeploy.prune_channels(model, criterion="cap", ratio=0.5, img_size=64)
    tuned = rtdeploy.finetune(model, train=train_set, val=val_set, epochs=10)   # or your own loop
    onnx = rtdeploy.export_onnx(model, out="model.onnx", img_size=64, classes=names, mean=m, std=s)
    speed = rtdeploy.benchmark(["model.onnx"], batch_sizes=(1,), threads=(1,))
"""
from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from . import fields
from .attention import capture_attention as _capture
from .bench import BenchConfig, BenchReport, bench_models
from .errors import ConfigError, PipelineError
from .export import (ExportReport, OnnxMeta, Tolerance, check_graph, check_parity, node_count,
                     simplify, to_onnx, write_metadata)
from .export.onnx_export import DEFAULT_EXPORTER, DEFAULT_OPSETS, exporter_record, record_exporter
from .fsutil import atomic_path, check_output
from .prune import FoldReport, PruneConfig, PruneReport, check_prunable, clear_attention_marks, prune_model
from .prune import fold_attention as _fold
from .train import TrainConfig, TrainReport, create_loss, fit

Images = torch.Tensor | Iterable  # a tensor [N,3,H,W], or batches (tensors or (images, labels) pairs)

__all__ = ["capture_attention", "fold_attention", "prune_channels", "finetune", "export_onnx", "benchmark"]


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


# Arguments are checked before any work: inside torch a bad one fails as a bare TypeError or
# RuntimeError, or (inside the pruner) as "this architecture cannot be pruned", which blames
# the wrong thing.

def _check_img_size(img_size) -> int:
    try:
        return fields.img_size(img_size, "img_size")
    except fields.FieldError as e:
        raise ConfigError(f"{e}; pass the square input size (pixels) the model takes") from e


def _check_model(model) -> None:
    """A module with float32 weights that hold values (not on the meta device), all finite."""
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    named = [*model.named_parameters(), *model.named_buffers()]
    if not any(True for _ in model.parameters()):
        raise ConfigError(f"the model ({type(model).__name__}) has no parameters; pass an image classifier")
    for name, t in named:
        if t.is_meta:
            raise ConfigError(f"the model's '{name}' is on the meta device (it has no values); "
                              "load the weights first (model.to_empty(device='cpu'), then load_state_dict)")
        if t.is_floating_point() and t.dtype != torch.float32:
            raise ConfigError(f"the model's '{name}' is {str(t.dtype).removeprefix('torch.')}; rtdeploy works in "
                              "float32: call model.float() first")
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise ConfigError(f"the model's '{name}' holds {int((~torch.isfinite(t)).sum())} NaN or infinite values; "
                              "use weights from a run that did not diverge")


def capture_attention(model: nn.Module, *, images: Images, max_images: int | None = 1024) -> dict[str, torch.Tensor]:
    """Mean attention s_bar per channel of every SE block (rtdeploy, torchvision or timm SE),
    over up to `max_images` of `images`: {block name: tensor [C]}. The model is not changed."""
    _check_model(model)
    return _capture(model, images, max_images)


def fold_attention(model: nn.Module, *, images: Images, max_images: int | None = 1024,
                   check_images: torch.Tensor | None = None) -> FoldReport:
    """Capture the mean SE attention on `images`, fold it into the model and remove the SE
    blocks, in place (CAP's first step; the model then ranks channels for criterion "cap").

    The folded model is checked against the model with every SE fixed to its mean scale on
    `check_images` (default: 4 random images at the size of the first batch); the verdict is in
    the report, and a failed check raises PipelineError. FoldError (exit 2) names an SE block
    with no BatchNorm before it."""
    _check_model(model)
    means = _capture(model, images, max_images)
    if check_images is None:
        first = next(iter(_first_batch(images)))
        check_images = torch.randn(4, *first.shape[1:], generator=torch.Generator().manual_seed(0))
    return _fold(model, means, check_images)


def _first_batch(images: Images) -> Iterable[torch.Tensor]:
    if isinstance(images, torch.Tensor):
        return [images[:1]]
    return ((b[0] if isinstance(b, (tuple, list)) else b) for b in images)


def prune_channels(model: nn.Module, *, criterion: str, img_size: int, ratio: float | None = None,
          target_macs: float | None = None, round_to: int = 8, scope: str = "local",
          calib: Iterable | None = None, seed: int = 0) -> PruneReport:
    """Remove channels in place with torch-pruning, ranked by `criterion` (cap, bn, l1, l2,
    taylor, fpgm, lamp, random), keeping the final classifier whole.

    Give `ratio` (share of channels removed per layer, or over the net with scope="global") or
    `target_macs` (fraction of the MACs to keep; the ratio is searched). `round_to`: kept widths
    are multiples of it (8 suits CPU kernels). `calib`: (images, labels) batches, needed by
    "taylor". "cap" needs fold_attention first. An architecture torch-pruning cannot prune is
    refused (UnprunableError, saying why) before the model is touched."""
    _check_model(model)
    img_size = _check_img_size(img_size)
    if ratio is not None and target_macs is not None:
        raise ConfigError("pass either ratio or target_macs, not both")
    cfg = PruneConfig(ratio=0.5 if ratio is None else ratio, scope=scope, round_to=round_to, target_macs=target_macs)
    if ratio is None and target_macs is None:
        raise ConfigError("pass ratio (share of channels to remove) or target_macs (fraction of MACs to keep)")
    check_prunable(model, cfg, img_size, type(model).__name__)
    example = torch.zeros(1, 3, img_size, img_size, device=_device(model))
    report = prune_model(model, criterion, example, cfg, calib=calib, seed=seed)
    clear_attention_marks(model)
    return report


def _dataset(data: Dataset | DataLoader) -> tuple[Dataset, int | None]:
    if isinstance(data, DataLoader):
        return data.dataset, data.batch_size
    return data, None


def finetune(model: nn.Module, *, train: Dataset | DataLoader, val: Dataset | DataLoader, epochs: int = 30,
             lr: float = 0.01, batch_size: int | None = None, momentum: float = 0.9, weight_decay: float = 5e-4,
             loss: str = "ce", schedule: str = "cosine", seed: int = 0, device: str = "auto",
             on_epoch: Callable | None = None) -> TrainReport:
    """Fine-tune `model` (e.g. after prune) with SGD; afterwards it holds the weights of the best
    epoch on `val`. `train`/`val`: map-style datasets of (image tensor, label) or DataLoaders over
    them (their batch size is used). `loss`: "ce" or "aml" (RemoteTrimmer's adaptive mining
    loss). Skip this and use your own loop if you have one: the pruned model is a plain nn.Module."""
    _check_model(model)
    train_ds, train_bs = _dataset(train)
    val_ds, _ = _dataset(val)
    n_out = _classes_of(model, _check_dataset(train_ds, "train"))
    for name, ds in (("train", train_ds), ("val", val_ds)):
        _check_labels(ds, name, n_out)
    cfg = TrainConfig(epochs=epochs, batch_size=batch_size or train_bs or 64, lr=lr, momentum=momentum,
                      weight_decay=weight_decay, schedule=schedule, seed=seed, device=device)
    best, report = fit(model, train_ds, val_ds, create_loss(loss), cfg, on_epoch=on_epoch)
    model.load_state_dict(best.state_dict())
    return report


def _check_dataset(ds, name: str) -> torch.Tensor:
    """A non-empty map-style dataset of (float image [3,H,W], integer label): its first image."""
    if not isinstance(ds, Dataset) or not hasattr(ds, "__len__") or len(ds) == 0:
        what = "empty" if isinstance(ds, Dataset) and hasattr(ds, "__len__") else type(ds).__name__
        raise ConfigError(f"{name} must be a non-empty map-style Dataset of (image, label) or a DataLoader over one, "
                          f"got {what}")
    item = ds[0]
    image, label = item if isinstance(item, (tuple, list)) and len(item) == 2 else (None, None)
    label_ok = isinstance(label, int) or (isinstance(label, torch.Tensor) and label.dim() == 0
                                          and not label.is_floating_point() and label.dtype != torch.bool)
    if not (isinstance(image, torch.Tensor) and image.dim() == 3 and image.shape[0] == 3
            and image.dtype == torch.float32) or isinstance(label, bool) or not label_ok:
        raise ConfigError(f"{name} items must be (float32 image [3, H, W], integer label) pairs; the first is not")
    return image


def _classes_of(model: nn.Module, image: torch.Tensor) -> int:
    modes = {m: m.training for m in model.modules()}
    try:
        with torch.no_grad():
            return int(model.eval()(image[None].to(_device(model))).shape[-1])
    finally:
        for m, training in modes.items():
            m.training = training


def _check_labels(ds, name: str, n_out: int) -> None:
    """Every label an output of the model, where the dataset lists them (ImageFolder's targets,
    a TensorDataset's tensors) without loading images; cross-entropy would fail mid-epoch."""
    labels = getattr(ds, "targets", None)
    if labels is None and isinstance(ds, torch.utils.data.TensorDataset) and len(ds.tensors) == 2:
        labels = ds.tensors[1]
    if labels is None:
        return
    labels = torch.as_tensor(labels)
    if labels.is_floating_point() or labels.dtype == torch.bool:
        raise ConfigError(f"{name} labels must be integers (class indices), got {str(labels.dtype).removeprefix('torch.')}")
    if len(labels) and not (0 <= int(labels.min()) and int(labels.max()) < n_out):
        raise ConfigError(f"{name} labels must be class indices 0..{n_out - 1} (the model has {n_out} outputs), "
                          f"got {int(labels.min())}..{int(labels.max())}")


def _parity_images(images: torch.Tensor | None, img_size: int) -> tuple[torch.Tensor, str]:
    if images is not None:
        if (not isinstance(images, torch.Tensor) or not images.is_floating_point() or images.dim() != 4
                or len(images) == 0 or tuple(images.shape[1:]) != (3, img_size, img_size)):
            got = list(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise ConfigError(f"parity_images must be a float tensor [N, 3, {img_size}, {img_size}] with N >= 1, "
                              f"got {got}")
        return images.float().cpu(), "given"
    return torch.randn(16, 3, img_size, img_size, generator=torch.Generator().manual_seed(0)), "random"


def export_onnx(model: nn.Module, *, out: str | Path, img_size: int, classes: Sequence[str],
                mean: Sequence[float], std: Sequence[float], arch: str | None = None,
                parity_images: torch.Tensor | None = None, exporter: str = DEFAULT_EXPORTER,
                opset: int | None = None,
                simplifier: str = "onnxsim", tolerance: Tolerance | None = None,
                force: bool = False) -> ExportReport:
    """Export `model` to a simplified ONNX file at `out` (dynamic batch, input "input"
    [N,3,S,S] normalised with `mean`/`std`, output "logits" over `classes`), with the metadata
    `rtdeploy bench` reads. ONNX Runtime must reproduce PyTorch's logits on `parity_images`
    (normalised images; default: 16 random ones), else PipelineError and nothing is written."""
    t0 = time.perf_counter()
    _check_model(model)
    img_size = _check_img_size(img_size)
    classes, mean, std = _check_onnx_meta(classes, mean, std)
    images, source = _parity_images(parity_images, img_size)
    check_output(out, force=force)
    opset = DEFAULT_OPSETS[exporter] if opset is None and exporter in DEFAULT_OPSETS else opset
    # The caller's model goes back to its device and to each module's mode: a training loop that
    # exports a snapshot must not go on with BatchNorm frozen, or on the CPU.
    device, modes = _device(model), {m: m.training for m in model.modules()}
    try:
        model = model.cpu().eval()
        with torch.no_grad():
            logits = model(torch.zeros(1, 3, img_size, img_size))
        if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
            what = list(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
            raise ConfigError(f"the model must return one logits tensor [N, classes], got {what}; export the "
                              "classifier alone (wrap it to return the logits)")
        n_out = logits.shape[-1]
        if n_out != len(classes):
            raise ConfigError(f"the model has {n_out} outputs but {len(classes)} classes were given")
        graph = to_onnx(model, img_size, opset=opset, dynamic_batch=True, exporter=exporter)
        before = node_count(graph)
        graph, simplified = simplify(graph, simplifier)
        meta = OnnxMeta(arch=arch or type(model).__name__, classes=classes, img_size=img_size,
                        mean=tuple(float(v) for v in mean), std=tuple(float(v) for v in std))
        write_metadata(graph, meta)
        record_exporter(graph, exporter)  # simplification may drop it; the file says which exporter made it
        check_graph(graph)
        blob = graph.SerializeToString()
        parity = check_parity(blob, model, images, tolerance or Tolerance(), source)
        if not parity.passed:
            raise PipelineError(f"ONNX Runtime and PyTorch disagree on {parity.images} {source} images "
                                f"(max |diff| {parity.max_abs_diff:.3g}{', ' + parity.error if parity.error else ''}); "
                                "nothing was written")
        with atomic_path(out) as tmp:
            tmp.write_bytes(blob)
        return ExportReport(path=str(out), checkpoint="", arch=meta.arch, opset=opset, exporter=exporter_record(exporter),
                            dynamic_batch=True,
                            batch_size=None, simplifier=simplifier, simplified=simplified,
                            nodes={"before": before, "after": node_count(graph)}, size_bytes=len(blob),
                            checker_passed=True, parity=parity, accuracy=None, accuracy_images=0,
                            metadata=asdict(meta), int8=None, seconds=time.perf_counter() - t0)
    finally:
        model.to(device)
        for m, training in modes.items():
            m.training = training


def _check_onnx_meta(classes, mean, std) -> tuple[list[str], tuple, tuple]:
    """What `rtdeploy bench` and the checkpoint reader demand of the metadata: a file that
    rtdeploy refuses to read back is never written (a str is not taken as a list of letters)."""
    try:
        if isinstance(classes, str):
            raise fields.FieldError("classes", "a list of class names", classes)
        names = fields.class_names(list(classes), "classes")
        mean = fields.rgb_triple(list(mean) if not isinstance(mean, str) else mean, "mean", positive=False)
        std = fields.rgb_triple(list(std) if not isinstance(std, str) else std, "std", positive=True)
    except TypeError as e:  # not iterable
        raise ConfigError(f"classes, mean and std must be sequences ({e})") from e
    except fields.FieldError as e:
        raise ConfigError(f"{e}; pass the values the model was trained with") from e
    if len(set(names)) != len(names):
        raise ConfigError("classes has duplicate names; each output of the model needs its own class")
    return names, mean, std


def benchmark(models: Sequence[str | Path], *, batch_sizes: Sequence[int] = (1,), threads: Sequence[int] = (1,),
              runs: int = 100, warmup: int = 10, provider: str = "cpu", data: str | None = None,
              isolate: bool = True) -> BenchReport:
    """Latency and throughput of .onnx files (or rtdeploy checkpoints) under ONNX Runtime, each
    measured in its own process (`isolate`); the first model is the baseline of the ratios.
    `data`: a class-folder dataset to also measure accuracy on (models from rtdeploy checkpoints)."""
    cfg = BenchConfig(provider=provider, batch_sizes=tuple(batch_sizes), threads=tuple(threads), runs=runs,
                      warmup=warmup, isolate=isolate)
    return bench_models([str(m) for m in models], cfg, data=data)
