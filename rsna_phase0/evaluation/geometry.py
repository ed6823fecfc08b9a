"""Input sizes the encoder accepts, padding to them, and the windows that cover a volume too large for one pass.

Every input side must be a multiple of `size_multiple(encoder)`. Inference pads every case to one cube side: the
smallest valid side that holds the data set's largest case, up to a cap; a case larger than the cap is covered by
overlapping cap^3 windows (stride half a window). Padding is zeros (the normalised background) at the far end of
each axis, so cropping back is a slice.
"""

from __future__ import annotations

import numpy as np

from rsna_phase0.models.dense_encoder import DenseEncoder


def size_multiple(encoder: DenseEncoder) -> int:
    """What every input side must be a multiple of (the stage strides and the DWT levels the preset fixes)."""
    return encoder.size_multiple


def round_up(n: int, multiple: int) -> int:
    return -(-int(n) // multiple) * multiple


def inference_side(shapes: list[tuple[int, int, int]], multiple: int, cap: int, minimum: int) -> int:
    """The one cube side every case is padded to: holds the largest case, valid, >= minimum, <= cap."""
    if cap % multiple or cap < minimum:
        raise ValueError(
            f"inference cap {cap} must be a multiple of {multiple} and at least the training size {minimum}"
        )
    return min(cap, max(minimum, round_up(max(max(s) for s in shapes), multiple)))


def pad_to(array: np.ndarray, sizes: tuple[int, ...]) -> np.ndarray:
    """Zero-pad the last len(sizes) axes of `array` at their far end up to `sizes` (never crops)."""
    lead = array.ndim - len(sizes)
    pads = [(0, 0)] * lead + [(0, max(0, s - n)) for n, s in zip(array.shape[lead:], sizes, strict=True)]
    return np.pad(array, pads) if any(p[1] for p in pads) else array


def window_starts(length: int, window: int) -> list[int]:
    """Start offsets of windows of `window` covering [0, length) with stride window // 2 (length >= window)."""
    if length <= window:
        return [0]
    stride = window // 2
    starts = list(range(0, length - window, stride))
    return [*starts, length - window]


def windows(shape: tuple[int, int, int], window: int) -> list[tuple[slice, slice, slice]]:
    """The window^3 boxes that cover a volume of `shape` (each side already padded to >= window)."""
    per_axis = [window_starts(n, window) for n in shape]
    return [
        (slice(x, x + window), slice(y, y + window), slice(z, z + window))
        for x in per_axis[0]
        for y in per_axis[1]
        for z in per_axis[2]
    ]
