"""The batch contract between the data pipeline, the model and the training loop.

One batch holds one modality (MRI: 1 channel, CT: 3 channels) and two MiM levels of the same B regions:

- `global_image` (B, C, S, S, S): each region of `local_scale * S` voxels downsampled to S (`S = input_size`);
- `global_mask` (B, g, g, g) bool, True = hidden, on the patch grid (`g = S // patch_size`);
- `local_image` (B*K, C, S, S, S): K native-resolution sub-crops per region, sample-major (row i*K + k);
- `local_mask` (B*K, g, g, g) bool;
- `local_boxes` (B, K, 3) int64: the origin of each local view in the global view's patch grid; the box spans
  `g // local_scale` patches per axis (see rsna_phase0/mim_masking.py for how boxes are chosen).

Intensities are already normalised (MRI: per-volume robust; CT: the three windows in [0, 1]).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import torch

MODALITY_CHANNELS = {"mri": 1, "ct": 3}


@dataclass
class MiMBatch:
    modality: str
    global_image: torch.Tensor
    global_mask: torch.Tensor
    local_image: torch.Tensor
    local_mask: torch.Tensor
    local_boxes: torch.Tensor
    paths: list[str] = field(default_factory=list)

    @property
    def batch_size(self) -> int:
        return self.global_image.shape[0]

    @property
    def n_local(self) -> int:
        return self.local_boxes.shape[1]

    def to(self, device: torch.device | str, non_blocking: bool = False) -> MiMBatch:
        moved = {
            f.name: (v.to(device, non_blocking=non_blocking) if isinstance(v, torch.Tensor) else v)
            for f in fields(self)
            for v in [getattr(self, f.name)]
        }
        return MiMBatch(**moved)

    def pin_memory(self) -> MiMBatch:
        pinned = {f.name: getattr(self, f.name) for f in fields(self)}
        for name, value in pinned.items():
            if isinstance(value, torch.Tensor):
                pinned[name] = value.pin_memory()
        return MiMBatch(**pinned)

    def split(self, parts: int) -> list[MiMBatch]:
        """Micro-batches along the region axis (for gradient accumulation and OOM back-off)."""
        if parts < 1 or parts > self.batch_size:
            raise ValueError(f"cannot split a batch of {self.batch_size} into {parts} parts")
        k = self.n_local
        bounds = torch.linspace(0, self.batch_size, parts + 1).round().long().tolist()
        return [
            MiMBatch(
                modality=self.modality,
                global_image=self.global_image[a:b],
                global_mask=self.global_mask[a:b],
                local_image=self.local_image[a * k : b * k],
                local_mask=self.local_mask[a * k : b * k],
                local_boxes=self.local_boxes[a:b],
                paths=self.paths[a:b],
            )
            for a, b in zip(bounds[:-1], bounds[1:], strict=True)
        ]

    def validate(self, channels_expected: int | None = None) -> None:
        """Raise ValueError when the shapes break the contract above (cheap; called by the model)."""
        b, c = self.global_image.shape[:2]
        k = self.n_local
        if self.modality not in MODALITY_CHANNELS:
            raise ValueError(f"unknown modality {self.modality!r}")
        expected_c = channels_expected or MODALITY_CHANNELS[self.modality]
        if c != expected_c:
            raise ValueError(f"{self.modality} batch has {c} channels, expected {expected_c}")
        if self.global_mask.shape[0] != b or self.local_image.shape[0] != b * k or self.local_mask.shape[0] != b * k:
            raise ValueError(
                f"inconsistent batch: global {tuple(self.global_image.shape)}, masks {tuple(self.global_mask.shape)}"
                f"/{tuple(self.local_mask.shape)}, local {tuple(self.local_image.shape)}, boxes {tuple(self.local_boxes.shape)}"
            )
        if self.global_mask.dtype != torch.bool or self.local_mask.dtype != torch.bool:
            raise ValueError("masks must be bool tensors (True = hidden)")
