"""Small shared pieces of the model tests (tiny presets, masks)."""

from __future__ import annotations

import numpy as np
import torch

from rsna_phase0.mim_masking import random_patch_mask
from rsna_phase0.presets import GRAPH_SPEEDUPS, NOT_WITH_COMPILE, get_preset


def tiny_preset(**overrides):
    """The smoke preset, cut further for speed where a test needs no learning."""
    return get_preset("smoke", **overrides)


def without_graphs(speedups: tuple[str, ...]) -> tuple[str, ...]:
    """The speed-ups without CUDA graphs (graph_wave_stages and graph_decoder_loss are defaults; compile_dense
    refuses them)."""
    return tuple(s for s in speedups if s not in GRAPH_SPEEDUPS)


def for_compile(speedups: tuple[str, ...]) -> tuple[str, ...]:
    """The speed-ups with compile_dense in place of what it replaces (the CUDA graphs, the fused norm + GELU)."""
    return (*(s for s in speedups if s not in NOT_WITH_COMPILE), "compile_dense")


def patch_masks(batch: int, grid: int, ratio: float, seed: int) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    return torch.from_numpy(np.stack([random_patch_mask(grid, ratio, rng) for _ in range(batch)]))
