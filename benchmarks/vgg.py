"""Experiment 3: VGG16 (SE after each of its 13 conv stages) at ratio 0.7: CAP + AML vs BN + CE.

VGG16 at 64x64 costs 1.26 GMACs, 8.4x ResNet18: the full 40-epoch recipe takes hours on
2 CPU cores, so this runs a documented smaller budget by default (--epochs 15, fine-tune 15).

    python -m benchmarks.vgg --data ../shared/data/ucmerced
"""
from __future__ import annotations

from dataclasses import asdict, replace

from . import common

METHODS = (("cap", "aml"), ("bn", "ce"), ("bn", "aml"), ("l1", "aml"))


def main(argv=None) -> None:
    p = common.parser(__doc__)
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--ft-epochs", type=int, default=15)
    args = p.parse_args(argv)
    r = common.recipe(args, arch="vgg16_se")
    if not args.quick:
        r = replace(r, epochs=args.epochs, ft_epochs=args.ft_epochs)
    rows = []
    for seed in common.seeds(args):
        base = common.base_checkpoint(args, r, seed)
        for criterion, loss in METHODS:
            rep = common.compress_run(args, r, base, seed, criterion=criterion, loss=loss)
            rows.append({"seed": seed, "method": f"{criterion} + {loss}", **rep["accuracy"],
                         "params_before": rep["params"]["before"], "params": rep["params"]["after"],
                         "macs_before": rep["macs"]["before"], "macs": rep["macs"]["after"]})
    payload = {"provenance": common.provenance(args, {"recipe": asdict(r), "ratio": 0.7, "round_to": 8}), "rows": rows}
    common.write_results(args, "vgg", payload, _markdown(rows, r))


def _markdown(rows, r) -> str:
    lines = [f"# VGG16-SE at ratio 0.7 (local, round-to 8), UC Merced 64x64",
             "", f"Budget: {r.epochs} training epochs, {r.ft_epochs} fine-tuning epochs (smaller than ResNet18's recipe).", "",
             "| seed | method | original | folded | pruned | fine-tuned best | fine-tuned last | params | MACs |",
             "|---|---|---|---|---|---|---|---|---|"]
    for x in rows:
        lines.append(f"| {x['seed']} | {x['method']} | {100 * x['original']:.2f} | {100 * x['folded']:.2f} | "
                     f"{100 * x['pruned']:.2f} | {100 * x['finetuned']:.2f} | {100 * x['finetuned_last']:.2f} | "
                     f"{x['params'] / 1e6:.2f} M | {x['macs'] / 1e6:.0f} M |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
