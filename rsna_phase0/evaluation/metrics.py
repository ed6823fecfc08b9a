"""Scores: Dice per class pooled over the held-out cases, AUC of aneurysm present, and mean +- sd over seeds.

Dice is pooled (2 * sum of intersections / sum of sizes over all held-out cases), not averaged per case: half the
heads have no aneurysm, where a per-case Dice is undefined, and pooling still charges false positives on them.
A class absent from both prediction and truth scores 1. AUC is the Mann-Whitney statistic (ties count half).
"""

from __future__ import annotations

import math

import numpy as np

from rsna_phase0.evaluation.cases import ANEURYSM, VESSEL

DICE_CLASSES = {"vessel": VESSEL, "aneurysm": ANEURYSM}


def dice_counts(prediction: np.ndarray, truth: np.ndarray) -> dict[str, tuple[int, int, int]]:
    """Per class: (intersection, predicted voxels, true voxels) of one case."""
    return {
        name: (
            int(np.count_nonzero((prediction == value) & (truth == value))),
            int(np.count_nonzero(prediction == value)),
            int(np.count_nonzero(truth == value)),
        )
        for name, value in DICE_CLASSES.items()
    }


def pooled_dice(counts: list[dict[str, tuple[int, int, int]]]) -> dict[str, float]:
    """{"dice_vessel": ..., "dice_aneurysm": ...} from the per-case counts."""
    out = {}
    for name in DICE_CLASSES:
        inter = sum(c[name][0] for c in counts)
        total = sum(c[name][1] + c[name][2] for c in counts)
        out[f"dice_{name}"] = 2 * inter / total if total else 1.0
    return out


def auc(scores, targets) -> float:
    """Area under the ROC curve of `scores` for binary `targets`; ValueError without both classes."""
    scores, targets = np.asarray(scores, float), np.asarray(targets, int)
    pos, neg = scores[targets == 1], scores[targets == 0]
    if not len(pos) or not len(neg):
        raise ValueError(f"AUC needs positive and negative cases; got {len(pos)} positive, {len(neg)} negative")
    greater = (pos[:, None] > neg[None, :]).sum()
    ties = (pos[:, None] == neg[None, :]).sum()
    return float((greater + 0.5 * ties) / (len(pos) * len(neg)))


def mean_sd(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    values = [float(v) for v in values]
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
