"""Which cases train and which are held out, and which training cases each label fraction keeps.

The held-out split is drawn once (seed 0, stratified by aneurysm present so both classes are scored) and is the
same for every seed, fraction, mode and init: the figures differ only in what the comparison varies. A split file
fixes it instead: JSON {"train": [...], "test": [...]} ("train" optional: the rest), or text with one held-out
name per line (# comments). A label fraction keeps round(fraction * n) training cases (at least one, and one of
each class when there are two), stratified, drawn from (seed, fraction): both inits and both modes of a seed see
the same cases.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from rsna_phase0.data.errors import VolumeError

SPLIT_SEED = 0


def _stratified_take(names: list[str], positive: dict[str, int], count: int, rng: np.random.Generator) -> list[str]:
    """`count` names drawn from `names`, each class in proportion, at least one of each when both exist and room."""
    classes = [[n for n in names if positive[n] == c] for c in (0, 1)]
    classes = [[c[i] for i in rng.permutation(len(c))] for c in classes]
    take_pos = round(count * len(classes[1]) / len(names)) if names else 0
    if count >= 2 and classes[0] and classes[1]:
        take_pos = min(max(take_pos, 1), count - 1)
    take_pos = min(take_pos, len(classes[1]))
    take_neg = min(count - take_pos, len(classes[0]))
    return sorted(classes[1][:take_pos] + classes[0][:take_neg])


def holdout_split(positive: dict[str, int], holdout: int | str | Path) -> tuple[list[str], list[str]]:
    """(train names, held-out names) from {name: aneurysm 0/1}: `holdout` cases, or the split file it names."""
    names = sorted(positive)
    if isinstance(holdout, int):
        if not 1 <= holdout < len(names):
            raise ValueError(f"--holdout {holdout}: need at least 1 held-out and 1 training case of {len(names)}")
        test = _stratified_take(names, positive, holdout, np.random.default_rng(SPLIT_SEED))
        return [n for n in names if n not in set(test)], test
    path = Path(holdout)
    if not path.is_file():
        raise VolumeError(path, "split file does not exist (--holdout takes a number of cases or a split file)")
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        try:
            spec = json.loads(text)
            test = list(spec["test"])
            train = list(spec.get("train", [n for n in names if n not in set(test)]))
        except (ValueError, KeyError, TypeError) as exc:
            raise VolumeError(path, f'expected JSON {{"train": [...], "test": [...]}} ({exc})') from exc
    else:
        test = [line.split("#")[0].strip() for line in text.splitlines()]
        test = [n for n in test if n]
        train = [n for n in names if n not in set(test)]
    unknown = sorted(set(test + train) - set(names))
    if unknown:
        raise VolumeError(path, f"names not among the data's cases: {unknown[:10]}")
    if set(train) & set(test):
        raise VolumeError(path, f"names both in train and test: {sorted(set(train) & set(test))[:10]}")
    if not train or not test:
        raise VolumeError(path, f"{len(train)} training and {len(test)} held-out cases: need at least one of each")
    return sorted(train), sorted(test)


def label_subset(train: list[str], positive: dict[str, int], fraction: float, seed: int) -> list[str]:
    """The training cases a label fraction keeps for one seed (see the module docstring)."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"label fraction {fraction} must be in (0, 1]")
    if fraction == 1.0:
        return sorted(train)
    count = max(1, round(fraction * len(train)))
    rng = np.random.default_rng([seed, round(fraction * 1_000_000)])
    return _stratified_take(sorted(train), positive, count, rng)
