"""Which epoch a run keeps: the model-selection rule of `train` and `compress`.

Three rules (`--select`):
- ``val`` (default): selection on a validation split held out from the training images. The
  last epoch is kept unless an earlier epoch scored *significantly* higher on validation: more
  than two binomial standard errors of the validation set. Why not the plain maximum: on small
  validation sets (UC Merced: 10 images per class, 210 in all, one standard error ~2.4 points)
  the maximum over 100+ epochs is biased upwards by noise (it picks a lucky epoch, and its
  validation score overstates it), while the last epoch of a decaying schedule (one-cycle,
  cosine) is the converged model. The rule still catches a run that degraded late (diverged,
  over-fitted). This is a statistical argument, not a measured gain: in the exploration runs
  (benchmarks/results/defaults_explore.md) the plain maximum's epochs scored 0.6-4.9 points
  *below* the parent's test accuracy after fine-tuning, and our measurement does not include
  the test accuracy of every epoch, so the two rules were not compared head to head on test.
- ``test``: the paper's protocol, the epoch with the best *test* accuracy (first one on ties).
  The test set is then no longer a test set: reports label such numbers "selected on test".
- ``last``: no selection.
"""
from __future__ import annotations

import math

SELECT_RULES = ("val", "test", "last")
SIGNIFICANCE_SE = 2.0  # standard errors an earlier epoch must lead the last one by


def significant_lead(best: float, last: float, n_images: int) -> bool:
    """True when accuracy `best` beats `last` by more than SIGNIFICANCE_SE binomial standard
    errors of a split of `n_images` (the standard error at the pooled accuracy)."""
    if n_images <= 0:
        return best > last
    p = min(max((best + last) / 2, 1.0 / n_images), 1.0 - 1.0 / n_images)
    return best - last > SIGNIFICANCE_SE * math.sqrt(p * (1 - p) / n_images)


def keep_peak(rule: str, peak_accuracy: float, last_accuracy: float, n_images: int) -> bool:
    """Whether the run keeps its best-scoring epoch (True) or its last epoch (False)."""
    if rule == "last":
        return False
    if rule == "test":
        return True
    return significant_lead(peak_accuracy, last_accuracy, n_images)


def selection_split(splits, rule: str):
    """(dataset, rule actually used, label) for `rule` on `splits` (a data.Splits).

    `val` without a validation split (a parent trained with --val-frac 0, the paper's recipe)
    falls back to keeping the last epoch: it never silently selects on test.
    """
    if rule == "test":
        return splits.test, "test", "test (the paper's protocol: selected on the test split)"
    if splits.val is None:
        why = "" if rule == "last" else " (no validation split: the parent was trained with --val-frac 0)"
        return splits.test, "last", "last epoch" + why
    if rule == "last":
        return splits.val, "last", "last epoch"
    return splits.val, "val", "validation split"
