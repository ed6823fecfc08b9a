"""Encoder geometry fixed by a preset: the Haar DWT levels of each WaveFormer stage and the input sizes it accepts.

The levels come from the pre-training size (`preset.input_size`) and never from the input at hand, so an encoder
pre-trained on 64^3 views keeps the same low-band token size when it is fine-tuned on 96^3 or 128^3 inputs (it
attends on more tokens instead of on coarser ones). An input side must then be a multiple of every stage's stride
times 2^levels: `size_multiple`.
"""

from __future__ import annotations

import math

from rsna_phase0.presets import Preset


def dwt_levels_for(size: int, attention_grid: int) -> int:
    """DWT levels that bring a `size`^3 map down to at most `attention_grid`^3 low-band tokens."""
    return max(0, math.ceil(math.log2(size / attention_grid))) if size > attention_grid else 0


def stage_dwt_levels(preset: Preset) -> list[int]:
    """Haar levels per encoder stage (0 for the sparse stages, which have no DWT)."""
    levels = []
    for i in range(len(preset.stage_dims)):
        size = preset.input_size // 2 ** (i + 1)
        levels.append(0 if i < preset.sparse_stages else dwt_levels_for(size, preset.attention_grid))
    return levels


def size_multiple(preset: Preset) -> int:
    """Every side of an encoder input must be a multiple of this (the stride and DWT levels of every stage)."""
    return max(2 ** (i + 1 + level) for i, level in enumerate(stage_dwt_levels(preset)))


def check_input_size(preset: Preset, spatial: tuple[int, ...]) -> None:
    """ValueError naming the valid sizes when an input's spatial shape does not fit the encoder."""
    multiple = size_multiple(preset)
    if any(side % multiple or side == 0 for side in spatial):
        valid = ", ".join(str(multiple * k) for k in range(1, 6))
        raise ValueError(
            f"input of spatial size {tuple(spatial)} does not fit preset {preset.name}: every side must be a "
            f"multiple of {multiple} (its {len(preset.stage_dims)} stride-2 stages and Haar levels "
            f"{stage_dwt_levels(preset)}), e.g. {valid}; pad or crop the volume to such a size"
        )
