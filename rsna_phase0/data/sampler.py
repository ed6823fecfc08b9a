"""The unified sampler: an explicit, seeded plan of single-modality batches per epoch, and a stable validation split.

- Each batch holds one modality (MRI has 1 channel, CT 3). Of `steps` batches per epoch exactly
  round(ct_fraction * steps) are CT, shuffled among the MRI ones.
- Files are drawn per modality from back-to-back shuffles, so within an epoch every file is used about equally.
- Every sample carries its own seed (seed, epoch, plan position, slot): its crop, masks and augmentation do not
  depend on which worker or rank builds it, so batch i of an epoch is the same however the epoch is resumed or split.
- The validation split is decided per file from a hash of its layout-relative path: adding files never moves an
  existing file between the splits.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

_VAL_STREAM = 0x5641  # keeps validation seeds apart from any training (seed, epoch, ...) tuple


class SampleKey(NamedTuple):
    file: int  # index into the data set's file list
    seed: tuple[int, ...]
    train: bool


@dataclass(frozen=True)
class PlannedBatch:
    modality: str
    keys: tuple[SampleKey, ...]


def path_hash(relpath: str) -> int:
    return int.from_bytes(hashlib.sha256(relpath.encode()).digest()[:8], "big")


def is_validation(relpath: str, val_fraction: float) -> bool:
    return path_hash(relpath) / 2**64 < val_fraction


def modality_sequence(steps: int, ct_fraction: float, rng: np.random.Generator) -> list[str]:
    n_ct = int(round(ct_fraction * steps))
    sequence = np.array(["ct"] * n_ct + ["mri"] * (steps - n_ct))
    return [str(m) for m in sequence[rng.permutation(steps)]]


def draw_files(files: list[int], count: int, rng: np.random.Generator) -> list[int]:
    """`count` file indices from back-to-back shuffles of `files` (each file once per pass)."""
    draws: list[int] = []
    while len(draws) < count:
        draws += [files[i] for i in rng.permutation(len(files))]
    return draws[:count]


def plan_epoch(
    files_by_modality: dict[str, list[int]], steps: int, batch_size: int, ct_fraction: float, seed: int, epoch: int
) -> list[PlannedBatch]:
    """The epoch's global batches, in order. Identical for identical arguments."""
    rng = np.random.default_rng([seed, epoch])
    sequence = modality_sequence(steps, ct_fraction, rng)
    for modality in set(sequence):
        if not files_by_modality.get(modality):
            raise ValueError(f"the plan needs {modality} batches but there is no {modality} training volume")
    pools = {
        m: iter(draw_files(files_by_modality[m], sequence.count(m) * batch_size, rng)) for m in sorted(set(sequence))
    }
    return [
        PlannedBatch(
            modality=modality,
            keys=tuple(SampleKey(next(pools[modality]), (seed, epoch, step, slot), True) for slot in range(batch_size)),
        )
        for step, modality in enumerate(sequence)
    ]


def rank_positions(steps: int, start: int, rank: int, world_size: int) -> range:
    """Plan positions this rank builds: start + rank, start + rank + world_size, ..."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in a world of size {world_size}")
    if not 0 <= start <= steps:
        raise ValueError(f"start {start} is outside the epoch's {steps} steps")
    return range(start + rank, steps, world_size)


def plan_validation(val_files: list[tuple[int, str, str]], batch_size: int, seed: int) -> list[PlannedBatch]:
    """Fixed validation batches from (file index, modality, relpath): one sample per file, grouped by modality."""
    batches = []
    for modality in ("mri", "ct"):
        keys = [
            SampleKey(i, (seed, _VAL_STREAM, path_hash(rel) % 2**32), False)
            for i, m, rel in sorted(val_files, key=lambda f: f[2])
            if m == modality
        ]
        batches += [PlannedBatch(modality, tuple(keys[a : a + batch_size])) for a in range(0, len(keys), batch_size)]
    return batches
