"""Bring your own architecture: CAP vs BN vs L1 on torchvision families with native SE blocks.

Does channel attention pruning help where squeeze-and-excitation is part of the architecture,
not added for pruning? For tv/mobilenet_v3_small (SE after ReLU or hardswish: folded into the BN
or into the consuming convs) and tv/regnet_y_400mf (SE after ReLU: folded into the BN), each seed
trains one base model, then every criterion prunes that same model at the same local ratio (so
the widths, MACs and latency are equal and only the ranking differs) and fine-tunes it the same way.
Reported per family: test accuracy of the kept model (mean ± sd over seeds, and the paired
difference to CAP with its 95 % interval), params, MACs, ONNX Runtime CPU latency. The kept
epoch is chosen on a stratified validation split (10 % of each class, held out of the training
images, as `rtdeploy train` does by default), never on test.

Settings of the full run (`python -m benchmarks.byo --device cuda`):
* 64 x 64 px like every other rtdeploy benchmark (README "Results"), so numbers compare with the
  SE-ResNet18 ones; both families downsample 32x, leaving a 2 x 2 map, which still trains (the
  crops and rotations of recipe v2 are the same).
* recipe v2 (benchmarks/common.py): from scratch, 60 epochs, one-cycle lr 0.1, flips + rotations +
  crops of 50-100 %, label smoothing 0.1; fine-tuning 30 epochs, cosine lr 0.01, CE loss (the
  ranking is what differs; AML ~ CE on 21 classes, see README).
* ratio 0.5 (not the paper's 0.7: both networks are already narrow; 0.7 leaves layers of 8-16
  channels), round-to 8, seeds 0,1,2.
`--quick` (2 training + 1 fine-tuning epoch on 8 images per class, seeds 0,1; add --img-size 32
on a busy CPU) only checks that everything runs; its accuracies mean nothing.
"""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from benchmarks.common import (Recipe, log, mean_std, paired, parser, pm, provenance, runs_dir, seeds,
                               write_results)

FAMILIES = ("tv/mobilenet_v3_small", "tv/regnet_y_400mf")
CRITERIA = ("cap", "bn", "l1")
VAL_FRAC = 0.1  # rtdeploy train's default: the kept epoch is chosen on validation, not test


def _recipe(args, arch: str) -> Recipe:
    r = Recipe(arch=arch, img_size=args.img_size)
    if args.quick:
        r.epochs, r.ft_epochs, r.max_per_class = 2, 1, 8
    r.epochs = args.epochs or r.epochs
    r.ft_epochs = args.ft_epochs or r.ft_epochs
    return r


def _load(args, r: Recipe, seed: int, mean=None, std=None):
    from rtdeploy.data import load_splits

    return load_splits(args.data, img_size=r.img_size, seed=seed, augment=r.augment, crop_scale=r.crop_scale,
                       max_per_class=r.max_per_class, mean=mean, std=std, val_frac=VAL_FRAC)


def _tag(r: Recipe, seed: int) -> str:
    return f"byo_{r.arch.replace('/', '-')}_{r.img_size}px_e{r.epochs}_val_s{seed}"


def base_model(args, r: Recipe, seed: int) -> Path:
    """The trained base model of `seed` (cached in --runs-dir by its settings)."""
    from rtdeploy.train import TrainConfig
    from rtdeploy.train.job import run_training

    out = runs_dir(args) / f"{_tag(r, seed)}.pt"
    if out.exists() and out.with_suffix(".json").exists():
        return out
    log(f"training {r.arch} seed {seed} ({r.epochs} epochs, {args.device})")
    cfg = TrainConfig(epochs=r.epochs, batch_size=r.batch_size, lr=r.lr, schedule=r.schedule, seed=seed,
                      label_smoothing=r.label_smoothing, device=args.device, select="val")
    last = out.with_name(out.name + ".last")  # a run cut short continues where it stopped
    run_training(_load(args, r, seed), r.arch, cfg, out, resume=last if last.exists() else None)
    return out


def compressed(args, r: Recipe, base: Path, seed: int, criterion: str) -> tuple[dict, Path]:
    """(compress report, pruned checkpoint) for one criterion, cached."""
    from rtdeploy.checkpoint import load_checkpoint
    from rtdeploy.compress import CompressConfig, compress
    from rtdeploy.prune import PruneConfig
    from rtdeploy.train import TrainConfig

    out = runs_dir(args) / f"{base.stem}_{criterion}_{args.loss}_r{args.ratio:g}_ft{r.ft_epochs}.pt"
    report = out.with_suffix(".json")
    if out.exists() and report.exists():
        return json.loads(report.read_text()), out
    log(f"compress {out.stem}")
    cfg = CompressConfig(criterion=criterion, loss=args.loss, prune=PruneConfig(ratio=args.ratio, round_to=8),
                         train=TrainConfig(epochs=r.ft_epochs, batch_size=r.batch_size, lr=r.ft_lr,
                                           schedule="cosine", seed=seed, device=args.device, select="val"))
    _, meta = load_checkpoint(base)
    last = out.with_name(out.name + ".last")  # a run cut short continues where it stopped
    return asdict(compress(base, _load(args, r, seed, meta.mean, meta.std), cfg, out=out, report_path=report,
                           resume=last if last.exists() else None)), out


def latency(args, checkpoints: list[Path]) -> list[dict]:
    """ONNX Runtime CPU latency (batch 1, 1 thread) of each checkpoint, exported with parity."""
    from rtdeploy.bench import BenchConfig, bench_models

    cfg = BenchConfig(batch_sizes=(1,), threads=(1,), runs=50 if args.quick else 300, warmup=10)
    rep = bench_models([str(c) for c in checkpoints], cfg)
    return [{"latency_ms_p50": m.results[0].latency_ms.p50, "onnx_params": m.params, "onnx_macs": m.macs}
            for m in rep.models]


def _cached(args, r: Recipe, seed: int) -> bool:
    """Whether every model of this family and seed is finished in --runs-dir."""
    base = runs_dir(args) / f"{_tag(r, seed)}.pt"
    outs = [base] + [runs_dir(args) / f"{base.stem}_{c}_{args.loss}_r{args.ratio:g}_ft{r.ft_epochs}.pt" for c in CRITERIA]
    return all(o.exists() and o.with_suffix(".json").exists() for o in outs)


def run_seed(args, arch: str, seed: int, runs: dict) -> None:
    """Train, compress with each criterion, time; append one entry per model to `runs`."""
    r = _recipe(args, arch)
    if args.cached_only and not _cached(args, r, seed):
        log(f"{arch} seed {seed}: not finished in {runs_dir(args)}; left out (--cached-only)")
        return
    base = base_model(args, r, seed)
    reports = {c: compressed(args, r, base, seed, c) for c in CRITERIA}
    timing = latency(args, [base] + [reports[c][1] for c in CRITERIA])
    first = reports[CRITERIA[0]][0]
    runs["unpruned"].append({"seed": seed, "accuracy": first["accuracy"]["original"],
                             "params": first["params"]["before"], "macs": first["macs"]["before"], **timing[0]})
    for c, t in zip(CRITERIA, timing[1:]):
        rep = reports[c][0]
        runs[c].append({"seed": seed, "accuracy": rep["accuracy"]["finetuned"], "selected_on": rep["selected_on"],
                        "accuracy_pruned": rep["accuracy"]["pruned"], "params": rep["params"]["after"],
                        "macs": rep["macs"]["after"], "fold": rep["fold"], **t})


def _row(name: str, runs: list[dict], ref: list[dict] | None) -> str:
    acc = [x["accuracy"] for x in runs]
    lat, _ = mean_std([x["latency_ms_p50"] for x in runs])
    diff, pruned = "", ""
    if ref is not None:
        d = paired(acc, [x["accuracy"] for x in ref])
        diff = "reference" if ref is runs else \
            f"{100 * d['diff']:+.2f} ± {100 * d['ci95']:.2f}" + (" (outside noise)" if d["outside_noise"] else "")
        pruned = pm([x["accuracy_pruned"] for x in runs])
    return (f"| {name} | {runs[0]['params'] / 1e6:.2f} M | {runs[0]['macs'] / 1e6:.1f} M | {lat:.2f} ms | {pruned} | "
            f"{pm(acc)} | {diff} |")


def markdown(args, families: list[dict]) -> str:
    lines = [f"# Bring your own architecture: CAP vs BN vs L1 on native-SE torchvision models"
             f"{' (QUICK smoke run: accuracies mean nothing)' if args.quick else ''}", "",
             f"UC Merced ({args.data}), {args.img_size} px, seeds {args.seeds} (per family: the seeds listed in its "
             f"rows; results are written after every seed), local ratio {args.ratio:g}, round-to 8, "
             f"fine-tuning loss {args.loss}; accuracy (%) on the 30 % test split of the model each run kept (epoch "
             f"chosen on a {VAL_FRAC:.0%} validation split, train/selection.py); 'before fine-tuning' is right after "
             "pruning; latency: ONNX Runtime CPU, batch 1, 1 thread, p50, measured on the machine while "
             "the benchmark ran (indicative).", ""]
    for fam in families:
        r = fam["recipe"]
        seeds_done = ", ".join(str(x["seed"]) for x in fam["runs"]["unpruned"])
        lines += [f"## {fam['arch']} (seeds {seeds_done})", "",
                  f"{r['epochs']} training epochs (lr {r['lr']:g} {r['schedule']}), {r['ft_epochs']} fine-tuning epochs "
                  f"(cosine lr {r['ft_lr']:g}){', ' + str(r['max_per_class']) + ' images per class' if r['max_per_class'] else ''}.",
                  "", "| model | params | MACs | ORT latency | accuracy before fine-tuning | accuracy | − CAP (95 % CI) |",
                  "|---|---|---|---|---|---|---|", _row("unpruned", fam["runs"]["unpruned"], None)]
        lines += [_row(c, fam["runs"][c], fam["runs"]["cap"]) for c in CRITERIA]
        lines.append("")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--device", default="auto", help="training device: auto, cpu or cuda")
    p.add_argument("--img-size", type=int, default=64)
    p.add_argument("--ratio", type=float, default=0.5)
    p.add_argument("--loss", default="ce", choices=("ce", "aml"))
    p.add_argument("--families", default=",".join(FAMILIES))
    p.add_argument("--epochs", type=int, default=None, help="training epochs (default: the recipe's 60)")
    p.add_argument("--ft-epochs", type=int, default=None, help="fine-tuning epochs (default: the recipe's 30)")
    p.add_argument("--cached-only", action="store_true",
                   help="tabulate only the families and seeds whose models are all finished in --runs-dir (a run cut "
                        "short, or runs split over several processes); latency is measured again")
    p.set_defaults(seeds=None)
    args = p.parse_args(argv)
    args.seeds = args.seeds or ("0,1" if args.quick else "0,1,2")
    archs = args.families.split(",")
    families = [{"arch": a, "recipe": asdict(_recipe(args, a)), "runs": {c: [] for c in ("unpruned", *CRITERIA)}}
                for a in archs]
    settings = {"families": archs, "criteria": list(CRITERIA), "ratio": args.ratio,
                "round_to": 8, "loss": args.loss, "img_size": args.img_size, "device": args.device}
    for seed in seeds(args):  # seed-major: a run cut short still covers every family
        for fam in families:
            run_seed(args, fam["arch"], seed, fam["runs"])
            done = [f for f in families if f["runs"]["unpruned"]]
            write_results(args, "byo", {"provenance": provenance(args, settings), "families": done},
                          markdown(args, done))


if __name__ == "__main__":
    main()
