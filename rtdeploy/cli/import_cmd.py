"""`rtdeploy import`: a state_dict trained elsewhere -> an rtdeploy checkpoint."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .. import report as fmt
from ..errors import ConfigError
from ..fsutil import plan_outputs, write_json
from .app import app
from .common import Data, DataRoot, Force, JsonOut, console, data_input, load_every_image

Weights = Annotated[Path, typer.Argument(help="A state_dict: .pt/.pth (read with weights_only=True) or .safetensors; "
                                              "a training checkpoint dict with a 'state_dict' or 'model' entry works too.")]
Arch = Annotated[str, typer.Option("--arch", help="The architecture the weights belong to: a registered name "
                                                  "(resnet18_se, ...), tv/<torchvision model> or timm/<timm model>.")]
Classes = Annotated[Optional[str], typer.Option(
    "--classes", help="Class names in the order of the model's outputs: a comma list, or a class-folder dataset "
                      "(its sorted sub-folder names). Default: the classes of --data.")]
ImgSize = Annotated[int, typer.Option("--img-size", help="Input size the model was trained at (square, pixels).")]
Stats = Annotated[Optional[str], typer.Option(show_default=False)]


def _triple(flag: str, value: str | None) -> tuple[float, float, float] | None:
    if value is None:
        return None
    try:
        vals = tuple(float(v) for v in value.split(","))
    except ValueError:
        vals = ()
    if len(vals) != 3:
        raise ConfigError(f"{flag} must be 3 comma-separated numbers (R,G,B), got {value!r}")
    return vals


@app.command("import")
def import_cmd(
    weights: Weights, arch: Arch, out: Annotated[Path, typer.Option("--out", help="rtdeploy checkpoint to write.")],
    img_size: ImgSize, classes: Classes = None, data: Data = None, data_root: DataRoot = None,
    mean: Annotated[Optional[str], typer.Option("--mean", help="Training normalisation mean, R,G,B in [0, 1] "
                                                               "(default: measured on --data).")] = None,
    std: Annotated[Optional[str], typer.Option("--std", help="Training normalisation std, R,G,B.")] = None,
    json_out: JsonOut = None, force: Force = False,
):
    """Turn weights trained elsewhere into an rtdeploy checkpoint (then compress, export, bench it).

    Keys and shapes must match --arch exactly; the first key that does not is named. With --data,
    the accuracy on its test split is reported, so you see the import is right.

    Example: rtdeploy import my_resnet.pth --arch tv/resnet18 --data ../shared/data/ucmerced --img-size 64 --out runs/mine.pt
    """
    from ..importer import import_weights, parse_classes

    names = parse_classes(classes, data_root) if classes is not None else None
    mean_t, std_t = _triple("--mean", mean), _triple("--std", std)
    # The weights, --data and a --classes folder are inputs: no output may be (or lie inside) one.
    plan_outputs([weights, data_input(data), data_input(classes)], {"--out": out, "--json": json_out}, force=force)
    r = import_weights(weights, arch=arch, out=out, img_size=img_size, classes=names, mean=mean_t, std=std_t,
                       data=data, data_root=data_root, load=load_every_image)
    if json_out is not None:
        write_json(json_out, fmt.as_dict(r))
    rows = [{"": "weights", "value": f"{r.source} ({r.file_format}, {r.tensors} tensors"
                                      + (f", unwrapped from '{r.unwrapped}'" if r.unwrapped else "") + ")"},
            {"": "model", "value": f"{r.arch}, {len(r.classes)} classes, {r.img_size}px"},
            {"": "normalisation", "value": f"mean {_three(r.mean)} std {_three(r.std)} ({r.normalisation})"},
            {"": "params / MACs", "value": f"{fmt.human_count(r.params)} / {fmt.human_count(r.macs)}"}]
    if r.accuracy is not None:
        rows.append({"": "accuracy", "value": f"{fmt.pct(r.accuracy)} on {r.eval_images} test images of {r.data}"})
    rows.append({"": "checkpoint", "value": f"{r.checkpoint} (reloads to identical outputs)"})
    console.print(fmt.rich_table(rows, title="rtdeploy import"))


def _three(values) -> str:
    return ",".join(f"{v:.4g}" for v in values)
