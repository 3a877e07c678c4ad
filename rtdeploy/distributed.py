"""Data-parallel runs under torchrun: process group, data checks, synced BatchNorm, clean stops.

`torchrun --nproc-per-node N -m rtdeploy train|compress ...` starts N copies of the command and
tells each its place through RANK, WORLD_SIZE and LOCAL_RANK (plus MASTER_ADDR/MASTER_PORT).
`setup()` joins them into one process group (gloo on CPU, NCCL on CUDA; RTDEPLOY_DIST_BACKEND
overrides). Without those variables everything here is a no-op for a single process.

What every rank must agree on is checked, not assumed: the data (a hash of the file list), the
model after capture/fold/prune and the trained weights (a digest per rank, gathered).
"""
from __future__ import annotations

import contextlib
import datetime
import hashlib
import inspect
import logging
import math
import os
import signal
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from .errors import ConfigError, DataError, PipelineError, RtdeployError
from .names import show

log = logging.getLogger(__name__)

BACKENDS = ("gloo", "nccl")
BACKEND_ENV = "RTDEPLOY_DIST_BACKEND"
TIMEOUT_ENV = "RTDEPLOY_DIST_TIMEOUT_MIN"
# Rank 0 may decode a large dataset into the shared cache while the others wait at a barrier;
# the default 30-minute collective timeout would kill them first. A dead peer is still noticed at
# once: its sockets close (gloo) or torchrun stops the group.
DEFAULT_TIMEOUT_MIN = 240


class DistributedError(RtdeployError):
    """Another process of the torchrun job stopped or failed, or the group could not form: exit 1."""


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def record(self) -> dict:
        """What reports store: {"world_size", "backend"} (backend None for one process)."""
        return {"world_size": self.world_size, "backend": self.backend}


def info() -> DistInfo:
    """This process's place in the job (world_size 1 when not started by torchrun)."""
    if not (dist.is_available() and dist.is_initialized()):
        return DistInfo()
    return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)),
                    dist.get_backend())


def launched() -> bool:
    """Started by torchrun with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1) > 1


def env_rank() -> int:
    """RANK from the environment: usable before setup() (e.g. to silence output on ranks > 0)."""
    return int(os.environ.get("RANK", "0") or 0)


def _wants_cuda(device: str) -> bool:
    return device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())


def _pick_backend(device: str) -> str:
    wanted = os.environ.get(BACKEND_ENV, "").strip().lower()
    if not wanted:
        return "nccl" if _wants_cuda(device) and dist.is_nccl_available() else "gloo"
    if wanted not in BACKENDS:
        raise ConfigError(f"{BACKEND_ENV}={wanted} is not a backend rtdeploy runs on; use one of "
                          f"{', '.join(BACKENDS)} or unset it (gloo on CPU, nccl on CUDA)")
    if wanted == "nccl" and not (dist.is_nccl_available() and torch.cuda.is_available()):
        raise ConfigError(f"{BACKEND_ENV}=nccl: NCCL needs CUDA GPUs and none is available here; "
                          "unset it to use gloo on CPU")
    if wanted == "nccl" and not _wants_cuda(device):
        raise ConfigError(f"{BACKEND_ENV}=nccl needs --device cuda (NCCL only moves GPU tensors); "
                          "use --device cuda or unset it")
    if wanted == "gloo" and not dist.is_gloo_available():
        raise ConfigError(f"{BACKEND_ENV}=gloo: this torch build has no gloo; use nccl on GPUs")
    return wanted


def _check_device(device: str, local_rank: int) -> None:
    if device.startswith("cuda:"):
        raise ConfigError(f"--device {device} under torchrun: each process takes the GPU of its "
                          "LOCAL_RANK; pass --device cuda")
    if _wants_cuda(device) and local_rank >= torch.cuda.device_count():
        raise ConfigError(f"torchrun started more processes on this machine than its "
                          f"{torch.cuda.device_count()} GPU(s); lower --nproc-per-node")


def _timeout_minutes() -> float:
    """RTDEPLOY_DIST_TIMEOUT_MIN: how long a collective may wait (minutes), a positive number."""
    raw = os.environ.get(TIMEOUT_ENV, "").strip()
    if not raw:
        return DEFAULT_TIMEOUT_MIN
    try:
        minutes = float(raw)
    except ValueError:
        minutes = math.nan
    if not (0 < minutes <= 7 * 24 * 60):  # also refuses NaN and infinity
        raise ConfigError(f"{TIMEOUT_ENV}={show(raw)} must be a number of minutes in (0, 10080]; "
                          f"fix it or unset it (default {DEFAULT_TIMEOUT_MIN})")
    return minutes


def setup(device: str = "auto") -> DistInfo:
    """Join the torchrun job (once); a no-op for a single process. Call before loading data."""
    if not launched() or not dist.is_available():
        return DistInfo()
    if dist.is_initialized():
        return info()
    backend = _pick_backend(device)
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if backend == "nccl" or _wants_cuda(device):
        _check_device(device, local_rank)
        torch.cuda.set_device(local_rank)  # "cuda" then means this rank's GPU everywhere
    minutes = _timeout_minutes()
    try:
        dist.init_process_group(backend, timeout=datetime.timedelta(minutes=minutes))
    except (RuntimeError, ValueError, OSError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DistributedError(f"could not join the torchrun job with {backend} ({first}); check the "
                               "rendezvous flags (--rdzv-endpoint / --master-addr, --master-port)") from e
    log.info("rank %d of %d (%s)", dist.get_rank(), dist.get_world_size(), backend)
    return info()


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if info().enabled:
        dist.barrier()


def _collective_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if info().backend == "nccl" else torch.device("cpu")


def all_sum(values: list[float]) -> list[float]:
    """Element-wise sum of a few numbers over all ranks (float64; counts stay exact)."""
    if not info().enabled:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=_collective_device())
    dist.all_reduce(t)
    return t.tolist()


def gather(value) -> list:
    """Every rank's `value` (a picklable object), in rank order; [value] for one process."""
    if not info().enabled:
        return [value]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, value)
    return out


def check_same_data(fingerprint: str, source: str) -> None:
    """DataError on every rank when the ranks see different files (a hash of the file list)."""
    values = gather(fingerprint)
    odd = [r for r, v in enumerate(values) if v != values[0]]
    if odd:
        raise DataError(f"the processes see different data in {source}: rank {odd[0]}'s image files differ "
                        "from rank 0's; give every process (every node) the same dataset")


def state_digest(model: nn.Module) -> str:
    """sha256 of a model's state_dict (names, shapes, dtypes and bytes), device-independent."""
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def check_identical(model: nn.Module, what: str) -> list[str]:
    """Every rank's digest of `model` ([] alone); PipelineError on all ranks when any differs."""
    if not info().enabled:
        return []
    digests = gather(state_digest(model))
    if len(set(digests)) > 1:
        odd = next(r for r, d in enumerate(digests) if d != digests[0])
        raise PipelineError(f"{what} differs between processes (rank {odd} vs rank 0); the run is not "
                            "data-parallel-safe here: rerun with one process and report it")
    return digests


# ----------------------------------------------------------------------------- synced BatchNorm


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks; its gradient is the sum of the ranks' gradients (each rank's loss depends on
    the summed statistics), as in torch's SyncBatchNorm."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        out = tensor.clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        out = grad.clone()
        dist.all_reduce(out)
        return out


class _SyncedBatchNorm(nn.Module):
    """A BatchNorm that, while training in a process group, normalises with the statistics of the
    whole global batch (all ranks), as one process would, and updates its running statistics the
    same way. torch's SyncBatchNorm does this on GPUs only; this one works on gloo/CPU too.

    It wraps (does not copy) the BatchNorm, so parameters and buffers are the very same tensors
    the optimiser and the checkpoint see."""

    def __init__(self, bn: nn.modules.batchnorm._BatchNorm):
        super().__init__()
        self.bn = bn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        all_reduce = _AllReduceSum.apply
        bn = self.bn
        if not self.training or not info().enabled:
            return bn(x)
        dims = [0, *range(2, x.ndim)]
        shape = [1, x.shape[1]] + [1] * (x.ndim - 2)
        # Two passes in float64 (sum, then squared deviations) for a variance as accurate as
        # BatchNorm's own; the all-reduce sums the ranks' parts and its backward sums gradients.
        count = torch.tensor([x.numel() / x.shape[1]], dtype=torch.float64, device=x.device)
        total = all_reduce(torch.cat([x.sum(dims, dtype=torch.float64), count]))
        n = total[-1]
        mean = total[:-1] / n
        dev = x.double() - mean.view(shape)
        var = all_reduce((dev * dev).sum(dims)) / n
        self._track(mean.detach(), var.detach(), n.item())
        y = (dev * torch.rsqrt(var + bn.eps).view(shape)).to(x.dtype)
        return y * bn.weight.view(shape) + bn.bias.view(shape) if bn.affine else y

    @torch.no_grad()
    def _track(self, mean: torch.Tensor, var: torch.Tensor, n: float) -> None:
        bn = self.bn
        if not bn.track_running_stats:
            return
        bn.num_batches_tracked += 1
        m = bn.momentum if bn.momentum is not None else 1.0 / float(bn.num_batches_tracked)
        unbiased = var * (n / max(n - 1.0, 1.0))  # running_var is unbiased, as in F.batch_norm
        bn.running_mean.mul_(1 - m).add_(mean.to(bn.running_mean.dtype), alpha=m)
        bn.running_var.mul_(1 - m).add_(unbiased.to(bn.running_var.dtype), alpha=m)


@contextlib.contextmanager
def synced_batchnorm(model: nn.Module):
    """Within the block, every BatchNorm of `model` uses global-batch statistics (no-op alone)."""
    if not info().enabled:
        yield model
        return
    swapped = []
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, nn.modules.batchnorm._BatchNorm):
                setattr(module, child_name, _SyncedBatchNorm(child))
                swapped.append((module, child_name, child))
    try:
        yield model
    finally:
        for module, child_name, child in swapped:
            setattr(module, child_name, child)


def wrap_ddp(model: nn.Module, device: torch.device) -> nn.Module:
    """DistributedDataParallel around `model` (gradients averaged over ranks); `model` alone."""
    if not info().enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else None
    # Buffers (BatchNorm running stats) stay identical through _SyncedBatchNorm: no re-broadcast
    # before every forward (torch >= 2.14 names that option forward_sync_buffers).
    params = inspect.signature(DistributedDataParallel.__init__).parameters
    no_sync = {"forward_sync_buffers": False} if "forward_sync_buffers" in params else {"broadcast_buffers": False}
    return DistributedDataParallel(model, device_ids=ids, **no_sync)


# ----------------------------------------------------------------------------- stopping together


class _Stop:
    requested = False


def _request_stop(signum, frame) -> None:
    _Stop.requested = True


@contextlib.contextmanager
def cooperative_stop():
    """Within the block (the training loop), SIGINT/SIGTERM only raise a flag; `step_sync` shares
    it, so every rank stops at the same step and nobody is left waiting in a collective.
    Outside it the CLI's handlers apply (KeyboardInterrupt at once)."""
    if not info().enabled:
        yield
        return
    _Stop.requested = False
    old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    for s in old:
        signal.signal(s, _request_stop)
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)


def step_sync(n_local: int) -> int:
    """Before each step: the global batch size; KeyboardInterrupt on every rank when any rank was
    asked to stop. One tiny all-reduce."""
    stop, n_global = all_sum([1.0 if _Stop.requested else 0.0, float(n_local)])
    if stop > 0:
        raise KeyboardInterrupt
    return int(n_global)


def peer_failure(exc: BaseException) -> bool:
    """Whether `exc` is a collective failing because another rank stopped or died."""
    if not (dist.is_available() and dist.is_initialized()) or info().world_size < 2:
        return False
    if isinstance(exc, getattr(dist, "DistError", ())):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and any(s in text for s in (
        "Connection closed by peer", "Connection reset by peer", "Broken pipe", "gloo", "Gloo", "NCCL"))


PEER_FAILED = ("another process of this torchrun job stopped or failed (see its message above, or "
               "torchrun's summary); the last complete checkpoint is intact (continue with --resume)")
