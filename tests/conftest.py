"""Shared test helpers: a private image cache for the session and generated image folders.

Fixtures: `image_folder(...)` makes a small class-folder dataset whose classes differ in colour,
so a tiny model can learn it in a few steps; `noisy_image(colour, size)` makes one such image.
The plain functions behind them (`make_image_folder`, `make_image`, `class_colour`) are here too.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

# Well-separated base colours; classes past the palette get a deterministic pseudo-random colour.
_PALETTE = [(210, 40, 40), (40, 200, 60), (50, 60, 220), (220, 200, 40), (200, 50, 200),
            (40, 200, 210), (240, 240, 240), (20, 20, 20)]

# The tests read the CLI's output as it appears on a pipe or in a log: plain text, no progress
# bars, tables and help at their usual width. These variables change that wherever they are set:
# rich draws colours and progress bars on a pipe under FORCE_COLOR / TTY_COMPATIBLE (so stderr is
# no longer one error line), Typer's help does the same under GITHUB_ACTIONS / FORCE_COLOR /
# PY_COLORS ("150 (paper: 30)" split by escape codes), and COLUMNS / TERMINAL_WIDTH narrow the
# help until option names are cut ("--target-ma…"). A CI runner may set any of them. Removed at
# import, before test modules import rtdeploy.cli (rich and Typer read them then); subprocesses
# started by the tests inherit the same environment.
# Likewise rtdeploy's own switches and torchrun's variables, which tests that need them set
# themselves: RTDEPLOY_DEBUG=1 (a developer's shell, a CI job wanting tracebacks) turns every
# one-line error into a traceback, and RANK/WORLD_SIZE would make each command a torchrun rank.
for _name in ("FORCE_COLOR", "PY_COLORS", "CLICOLOR_FORCE", "TTY_COMPATIBLE", "TTY_INTERACTIVE", "GITHUB_ACTIONS",
              "COLUMNS", "LINES", "TERMINAL_WIDTH",
              "RTDEPLOY_DEBUG", "RTDEPLOY_DIST_BACKEND", "RTDEPLOY_DIST_TIMEOUT_MIN",
              "RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
    os.environ.pop(_name, None)


def class_colour(index: int) -> tuple[int, int, int]:
    if index < len(_PALETTE):
        return _PALETTE[index]
    rng = np.random.RandomState(1000 + index)
    return tuple(int(v) for v in rng.randint(0, 256, size=3))


def make_image(colour: tuple[int, int, int], size: int = 40, seed: int = 0,
               noise: int = 25) -> Image.Image:
    """An RGB image of `colour` with per-pixel noise and a bright corner (so flips are visible)."""
    rng = np.random.RandomState(seed)
    arr = np.asarray(colour, dtype=np.int16) + rng.randint(-noise, noise + 1, size=(size, size, 3))
    arr[: size // 4, : size // 4] = 255
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def make_image_folder(root: Path, n_classes: int = 3, per_class: int = 6, size: int = 40,
                      ext: str = ".png", class_names: list[str] | None = None,
                      seed: int = 0) -> Path:
    """Write `root/<class>/<class>_<i><ext>` images; returns root. Class i has class_colour(i)."""
    names = class_names or [f"class_{i}" for i in range(n_classes)]
    for c, name in enumerate(names):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            img = make_image(class_colour(c), size, seed=seed * 100_003 + c * 1009 + i)
            img.save(root / name / f"{name}_{i}{ext}")
    return root


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread():
    """Tiny models gain nothing from threads, and two spinning OpenMP pools on a shared 2-core
    machine (a CI box, a parallel job) slow each step by 100x. Subprocess tests are unaffected."""
    import torch

    if os.environ.get("PYTEST_XDIST_WORKER"):
        # Two test workers share two cores: their subprocesses (the real CLI) take one thread each.
        os.environ.setdefault("OMP_NUM_THREADS", "1")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session", autouse=True)
def _private_image_cache(tmp_path_factory: pytest.TempPathFactory):
    """Never read or write the user's ~/.cache/rtdeploy during tests."""
    old = {k: os.environ.get(k) for k in ("RTDEPLOY_CACHE_DIR", "RTDEPLOY_NO_CACHE")}
    os.environ["RTDEPLOY_CACHE_DIR"] = str(tmp_path_factory.mktemp("rtdeploy-cache"))
    os.environ.pop("RTDEPLOY_NO_CACHE", None)
    yield
    for key, value in old.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture
def image_folder(tmp_path: Path) -> Callable[..., Path]:
    """Factory: image_folder(n_classes=3, per_class=6, size=40, ext=".png") -> a new folder.

    Optional: root (default: a fresh folder under tmp_path), class_names, seed (other images,
    same class colours). Files are `<root>/<class>/<class>_<i><ext>`, classes `class_0`, ...
    """
    counter = iter(range(10_000))

    def make(n_classes: int = 3, per_class: int = 6, size: int = 40, ext: str = ".png",
             root: Path | None = None, class_names: list[str] | None = None,
             seed: int = 0) -> Path:
        root = root if root is not None else tmp_path / f"imgs{next(counter)}"
        return make_image_folder(root, n_classes, per_class, size, ext, class_names, seed)

    return make


@pytest.fixture
def noisy_image() -> Callable[..., Image.Image]:
    """noisy_image(colour, size=40, seed=0, noise=25) -> PIL RGB image (see make_image)."""
    return make_image


@pytest.fixture
def cli(capsys):
    """Run the real `rtdeploy` entry point in-process: cli(*args) -> (exit_code, stdout, stderr).

    Goes through cli.app.main, so error mapping (one line, exit code) is what users get.
    """
    from rtdeploy.cli.app import main

    def run(*args) -> tuple[int, str, str]:
        code = main([str(a) for a in args])
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run
