"""Patch-grid masks at feature-map scales (True = hidden, as in rsna_phase0/mim_masking.py)."""

from __future__ import annotations

import torch


def upsample_patch_mask(mask: torch.Tensor, factor: int) -> torch.Tensor:
    """(B, g, g, g) -> (B, g*factor, ...): each patch repeated to `factor`^3 cells."""
    for dim in (1, 2, 3):
        mask = mask.repeat_interleave(factor, dim=dim)
    return mask


def mask_at_stride(mask: torch.Tensor, patch_size: int, stride: int) -> torch.Tensor:
    """The patch mask at a feature map of the given stride (stride divides patch_size)."""
    if patch_size % stride:
        raise ValueError(f"stride {stride} does not divide the patch size {patch_size}")
    return upsample_patch_mask(mask, patch_size // stride)


def visible_weight(mask: torch.Tensor) -> torch.Tensor:
    """Hidden mask (B, r, r, r) -> float (B, 1, r, r, r), 1 where visible: multiply to zero hidden positions."""
    return (~mask).unsqueeze(1).float()
