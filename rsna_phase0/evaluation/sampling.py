"""Training batches, drawn from a numpy Generator so that both arms of a comparison see the same data order.

Segmentation: crops of the preset's input_size^3. A third are centred (within a quarter crop of jitter) on an
aneurysm voxel of a case that has one, a third on a vessel voxel, the rest anywhere in the head: aneurysms are a
few hundred voxels of a million, so uniform crops would almost never show one. Classification: whole cases padded
to the inference cube (a random cube crop of a larger case), positives and negatives drawn equally often. Both
flip left-right with probability 1/2 (RAS: axis 0 is left-right, where the anatomy is near-symmetric).
"""

from __future__ import annotations

import numpy as np
import torch

from rsna_phase0.data.intensity import FOREGROUND_THRESHOLD
from rsna_phase0.evaluation.cases import ANEURYSM, VESSEL
from rsna_phase0.evaluation.geometry import pad_to
from rsna_phase0.evaluation.preprocess import Case

TARGET_SHARES = ((ANEURYSM, 1 / 3), (VESSEL, 1 / 3))  # crop-centre classes and their shares; the rest: the head


def _crop(array: np.ndarray, origin: np.ndarray, size: int) -> np.ndarray:
    """array[..., origin:origin+size] per spatial axis, zero outside the volume."""
    spatial = np.asarray(array.shape[-3:])
    lo, hi = np.maximum(origin, 0), np.minimum(origin + size, spatial)
    out = np.zeros((*array.shape[:-3], size, size, size), array.dtype)
    src = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
    dst = tuple(slice(a - o, b - o) for a, b, o in zip(lo, hi, origin, strict=True))
    out[(..., *dst)] = array[(..., *src)]
    return out


class SegmentationCrops:
    def __init__(self, cases: list[Case], crop_size: int, rng: np.random.Generator) -> None:
        if any(c.label is None for c in cases):
            raise ValueError("segmentation needs a label map for every training case")
        self.cases, self.size, self.rng = cases, crop_size, rng
        # candidate centres per case and class; "head" = any foreground voxel (strided: a sample is enough)
        self.centres = [
            {
                **{cls: np.argwhere(c.label == cls) for cls, _ in TARGET_SHARES},
                "head": np.argwhere(c.image.max(axis=0)[::2, ::2, ::2] > FOREGROUND_THRESHOLD) * 2,
            }
            for c in cases
        ]

    def _centre(self, index: int) -> np.ndarray:
        u, start = self.rng.uniform(), 0.0
        for cls, share in TARGET_SHARES:
            if start <= u < start + share and len(self.centres[index][cls]):
                pool = self.centres[index][cls]
                return pool[self.rng.integers(len(pool))]
            start += share
        pool = self.centres[index]["head"]
        if len(pool):
            return pool[self.rng.integers(len(pool))]
        return self.rng.integers(0, self.cases[index].shape)

    def batch(self, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(images (B, C, S, S, S) float32, labels (B, S, S, S) int64)."""
        images, labels = [], []
        for _ in range(size):
            index = int(self.rng.integers(len(self.cases)))
            jitter = self.rng.integers(-(self.size // 4), self.size // 4 + 1, 3)
            origin = self._centre(index) + jitter - self.size // 2
            image, label = (
                _crop(self.cases[index].image, origin, self.size),
                _crop(self.cases[index].label, origin, self.size),
            )
            if self.rng.uniform() < 0.5:
                image, label = image[:, ::-1], label[::-1]
            images.append(np.ascontiguousarray(image))
            labels.append(np.ascontiguousarray(label))
        return torch.from_numpy(np.stack(images)), torch.from_numpy(np.stack(labels).astype(np.int64))


class ClassificationVolumes:
    def __init__(self, cases: list[Case], side: int, rng: np.random.Generator) -> None:
        self.side, self.rng = side, rng
        self.by_class = [[c for c in cases if c.aneurysm == k] for k in (0, 1)]

    def batch(self, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(images (B, C, side, side, side) float32, targets (B,) float32 0/1)."""
        images, targets = [], []
        for _ in range(size):
            pools = [p for p in self.by_class if p]
            pool = pools[int(self.rng.integers(len(pools)))]
            case = pool[int(self.rng.integers(len(pool)))]
            room = np.maximum(np.asarray(case.shape) - self.side, 0)
            origin = np.array([self.rng.integers(0, r + 1) for r in room])
            image = pad_to(case.image[(..., *(slice(o, o + self.side) for o in origin))], (self.side,) * 3)
            if self.rng.uniform() < 0.5:
                image = image[:, ::-1]
            images.append(np.ascontiguousarray(image))
            targets.append(float(case.aneurysm))
        return torch.from_numpy(np.stack(images)), torch.tensor(targets, dtype=torch.float32)
