"""Why does (or doesn't) CAP rank channels better? Diagnostics without fine-tuning.

Right after one-shot pruning at ratio 0.7 every criterion collapses to near chance, so the
"pruned" accuracy cannot tell rankings apart, and the fine-tuning budget decides the rest. This
script measures what each ranking keeps, on the same folded model, before any fine-tuning:
- accuracy right after pruning at ratios 0.3 / 0.5 / 0.7, raw and after re-estimating the
  BatchNorm statistics on 1,024 train images (a cheap, standard way to see how much function a
  ranking kept, once the stale BN statistics are out of the way);
- the paper's premise: spread (coefficient of variation) of |gamma| per layer before and after
  folding the mean attention, and how much the CAP and BN rankings disagree on kept channels.

    python -m benchmarks.why_cap --data ../shared/data/ucmerced --seeds 0,1,2
"""
from __future__ import annotations

import copy
from dataclasses import asdict

import torch
from torch import nn

from . import common

CRITERIA = ("cap", "bn", "l1", "taylor", "fpgm", "random")
RATIOS = (0.3, 0.5, 0.7)


def main(argv=None) -> None:
    args = common.parser(__doc__).parse_args(argv)
    r = common.recipe(args)
    per_seed = [_diagnose(args, r, seed) for seed in common.seeds(args)]
    table = _aggregate(per_seed)
    payload = {"provenance": common.provenance(args, {"recipe": asdict(r), "criteria": CRITERIA, "ratios": RATIOS,
                                                      "bn_recalibration_images": 1024}),
               "table": table, "seeds": per_seed}
    common.write_results(args, "why_cap", payload, _markdown(table, per_seed, r))


def _diagnose(args, r, seed: int) -> dict:
    from rtdeploy.attention import capture_attention
    from rtdeploy.checkpoint import load_checkpoint
    from rtdeploy.data import make_loader
    from rtdeploy.prune import fold_attention

    base = common.base_checkpoint(args, r, seed)
    model, meta = load_checkpoint(base)
    splits = common.load(args, r, seed, augment=False, mean=meta.mean, std=meta.std)
    calib = make_loader(splits.train, 64, shuffle=True, seed=seed)
    gammas_before = {n: m.weight.detach().abs().clone() for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)}
    fold = fold_attention(model, capture_attention(model, calib, 1024))
    gammas_after = {n: m.weight.detach().abs() for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)}
    out = {"seed": seed, "folded": _acc(model, splits), "gamma_cv_before": fold.gamma_cv_before,
           "gamma_cv_after": fold.gamma_cv_after, "layers": _spread(gammas_before, gammas_after), "pruned": {}}
    for ratio in RATIOS:
        for crit in CRITERIA:
            common.log(f"seed {seed}: {crit} at {ratio}")
            pruned = _prune(model, crit, ratio, calib, seed, splits.img_size)
            raw = _acc(pruned, splits)
            _recalibrate_bn(pruned, calib, 1024)
            out["pruned"][f"{crit}@{ratio}"] = {"raw": raw, "bn_recalibrated": _acc(pruned, splits)}
    return out


def _prune(model, crit, ratio, calib, seed, size):
    from rtdeploy.prune import PruneConfig, prune_model

    m = copy.deepcopy(model)
    prune_model(m, crit, torch.zeros(1, 3, size, size), PruneConfig(ratio=ratio, scope="local", round_to=8),
                calib=calib, seed=seed)
    return m


@torch.no_grad()
def _recalibrate_bn(model: nn.Module, loader, images: int) -> None:
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the recalibration batches
    model.train()
    seen = 0
    for x, _ in loader:
        model(x)
        seen += len(x)
        if seen >= images:
            break
    model.eval()


def _acc(model, splits) -> float:
    from rtdeploy.train import evaluate

    return evaluate(model, splits.test).accuracy


def _cv(x: torch.Tensor) -> float:
    return float(x.std() / x.mean().clamp(min=1e-12))


def _spread(before: dict, after: dict) -> list[dict]:
    """Per BN layer: CV of |gamma| before/after folding, and overlap of the top-30 % channels."""
    rows = []
    for name, g0 in before.items():
        g1 = after[name]
        k = max(1, int(0.3 * len(g0)))
        keep0, keep1 = set(g0.topk(k).indices.tolist()), set(g1.topk(k).indices.tolist())
        rows.append({"layer": name, "cv_before": _cv(g0), "cv_after": _cv(g1), "top30_overlap": len(keep0 & keep1) / k})
    return rows


def _aggregate(per_seed: list[dict]) -> list[dict]:
    keys = per_seed[0]["pruned"].keys()
    return [{"setting": k, "raw": common.pm([s["pruned"][k]["raw"] for s in per_seed]),
             "bn_recalibrated": common.pm([s["pruned"][k]["bn_recalibrated"] for s in per_seed]),
             "bn_recalibrated_mean": common.mean_std([s["pruned"][k]["bn_recalibrated"] for s in per_seed])[0]}
            for k in keys]


def _markdown(table, per_seed, r) -> str:
    layers = [row for s in per_seed for row in s["layers"]]
    mean = lambda key: sum(x[key] for x in layers) / len(layers)  # noqa: E731
    lines = ["# Why CAP ranks the way it does (no fine-tuning)", "", common.describe(r), "",
             f"Seeds: {', '.join(str(s['seed']) for s in per_seed)}. Folded model accuracy: "
             f"{common.pm([s['folded'] for s in per_seed])} %.",
             f"Spread of |gamma| per BN layer (coefficient of variation, mean over layers and seeds): before folding "
             f"{mean('cv_before'):.2f}, after folding the mean attention {mean('cv_after'):.2f}; the top-30 % channels "
             f"by |gamma| and by |gamma'| (= CAP) overlap {100 * mean('top30_overlap'):.0f} % on average.", "",
             "| criterion @ ratio | accuracy right after pruning (%) | after BN recalibration (%) |", "|---|---|---|"]
    lines += [f"| {row['setting']} | {row['raw']} | {row['bn_recalibrated']} |" for row in table]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
