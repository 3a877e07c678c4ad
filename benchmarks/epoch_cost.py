"""Issue 11: what the default fine-tuning costs against the default training, per epoch, cheaply.

The budget target (fine-tuning <= 0.25 of the parent's training time at ratio 0.7) needs 3 x
(100 + 150) epochs to measure end to end; at 64 px that is hours on a 2-core CPU. An epoch of
each costs the same at any point of its schedule, so this runs a few epochs of the plain
`rtdeploy train` and of the plain `rtdeploy compress` after it (real CLI, every per-epoch cost
included: data, augmentation, validation, the resume file), alternately, and projects the ratio
to the default epoch counts:

    ratio = (compress epochs x s per fine-tuning epoch) / (train epochs x s per training epoch)

    python -m benchmarks.epoch_cost --data ../shared/data/ucmerced [--img-sizes 64,32] [--rounds 2]

Seconds per epoch are each fit's total over its epochs (the first epoch's warm-up included on
both sides). The end-to-end runs of benchmarks.defaults check the projection where they exist.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from benchmarks import common
from rtdeploy.defaults import COMPRESS, TRAIN


def _args():
    p = common.parser(__doc__.split("\n\n")[0])
    p.add_argument("--img-sizes", default="64,32", help="comma-separated image sizes")
    p.add_argument("--rounds", type=int, default=2, help="train + compress pairs per size, alternated")
    p.add_argument("--train-epochs", type=int, default=2)
    p.add_argument("--ft-epochs", type=int, default=4)
    p.add_argument("--device", default="cpu")
    p.set_defaults(runs_dir=Path("runs/epoch_cost"))
    return p.parse_args()


def _run(argv: list[str], log: Path) -> dict:
    with open(log, "w") as fh:
        rc = subprocess.run([sys.executable, "-m", "rtdeploy", *argv, "--force"], stdout=fh,
                            stderr=subprocess.STDOUT).returncode
    if rc != 0:
        raise SystemExit(f"{' '.join(argv[:2])} failed (exit {rc}); see {log}")
    out = Path(argv[argv.index("--out") + 1])
    return json.loads(out.with_suffix(".json").read_text())


def measure(args, runs: Path, size: int, rnd: int) -> dict:
    stem = runs / f"{size}px_r{rnd}"
    common.log(f"{size} px, round {rnd}: train {args.train_epochs} epochs, then compress {args.ft_epochs}")
    data = ["--data", "sample" if args.quick else args.data, "--device", args.device, "--seed", str(rnd)]
    arch = ["--arch", "tiny_se"] if args.quick else []  # --quick: a smoke run of this script
    parent = _run(["train", *data, *arch, "--img-size", str(size), "--epochs", str(args.train_epochs),
                   "--out", f"{stem}_parent.pt"], stem.with_name(stem.name + "_parent.log"))
    child = _run(["compress", f"{stem}_parent.pt", *data, "--epochs", str(args.ft_epochs),
                  "--out", f"{stem}_pruned.pt"], stem.with_name(stem.name + "_pruned.log"))
    train_s = parent["seconds"] / len(parent["epochs"])
    ft_s = child["seconds"]["finetune"] / len(child["finetune"]["epochs"])
    return {"img_size": size, "round": rnd, "train_s_per_epoch": train_s, "finetune_s_per_epoch": ft_s,
            "per_epoch_ratio": ft_s / train_s,
            "projected_ratio": COMPRESS.epochs * ft_s / (TRAIN.epochs * train_s),
            "macs": child["macs"], "train_epoch_s": [e["seconds"] for e in parent["epochs"]],
            "finetune_epoch_s": [e["seconds"] for e in child["finetune"]["epochs"]]}


def markdown(rows: list[dict], prov: dict) -> str:
    lines = ["# Default fine-tuning cost against default training (issue 11)", "",
             f"Plain `rtdeploy train` ({TRAIN.epochs} epochs by default) and plain `rtdeploy compress` "
             f"({COMPRESS.epochs} fine-tuning epochs at ratio {COMPRESS.ratio:g}) on {prov['settings']['data']}, "
             f"{prov['settings']['arch']}, "
             f"{prov['settings']['train_epochs']} and {prov['settings']['ft_epochs']} epochs measured per round, "
             f"rounds alternated; {prov['machine']['cpu']}, {prov['torch_threads']} torch threads. Projected ratio = "
             f"{COMPRESS.epochs} x fine-tuning epoch / ({TRAIN.epochs} x training epoch); the issue's budget is 0.25.", "",
             "| size | round | s / training epoch | s / fine-tuning epoch | per epoch | projected ratio | MACs |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['img_size']} px | {r['round']} | {r['train_s_per_epoch']:.2f} | {r['finetune_s_per_epoch']:.2f} | "
                     f"{r['per_epoch_ratio']:.3f} | **{r['projected_ratio']:.3f}** | "
                     f"{r['macs']['before'] / 1e6:.1f} M -> {r['macs']['after'] / 1e6:.1f} M |")
    lines += ["", f"Command: `{prov['command']}`"]
    return "\n".join(lines) + "\n"


def main() -> None:
    args = _args()
    runs = common.runs_dir(args)
    sizes = [int(s) for s in args.img_sizes.split(",") if s]
    if args.quick:
        sizes, args.rounds, args.train_epochs, args.ft_epochs = sizes[-1:], 1, 1, 1
    rows = [measure(args, runs, size, rnd) for rnd in range(args.rounds) for size in sizes]
    prov = common.provenance(args, {"img_sizes": sizes, "rounds": args.rounds, "train_epochs": args.train_epochs,
                                    "ft_epochs": args.ft_epochs, "device": args.device,
                                    "data": "sample" if args.quick else args.data,
                                    "arch": "tiny_se" if args.quick else "SE-ResNet18 (the default)",
                                    "defaults": {"train_epochs": TRAIN.epochs, "compress_epochs": COMPRESS.epochs}})
    common.write_results(args, "epoch_cost", {"provenance": prov, "rows": rows}, markdown(rows, prov))


if __name__ == "__main__":
    main()
