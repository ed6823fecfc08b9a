"""The reconstruction preview: one PNG in the run folder, redrawn each epoch on the same validation regions, so a
user sees at a glance whether the model learns.

One row per modality and MiM level (the first region of the first validation batch of each modality; its first
local view), four panels each, the middle axial slice: the input, the hidden patches (shaded), the model's
prediction of the hidden patches in intensity units, and the error there. The prediction is made in per-patch-
normalised units and shown, as SparK's visualisation does, with each hidden patch's true mean and std (so the panel
shows the structure the model predicted, not its brightness). Patches the loss does not count (padding, air,
near-constant) are outlined as "not trained on".
"""

from __future__ import annotations

from pathlib import Path

import torch

from rsna_phase0.batch import MiMBatch
from rsna_phase0.models.feature_masks import mask_at_stride
from rsna_phase0.training.checkpoint import atomic_write

PREVIEW_NAME = "reconstruction.png"


def preview_batches(batches) -> list[MiMBatch]:
    """The first batch of each modality from an iterable of validation batches (at most one per modality)."""
    found: dict[str, MiMBatch] = {}
    for batch in batches:
        found.setdefault(batch.modality, batch)
        if len(found) == 2:
            break
    return [found[m] for m in ("mri", "ct") if m in found]


def _slices(model, batch: MiMBatch) -> list[tuple[str, dict]]:
    """Per level: the four 2-D panels (numpy) of the first region's middle axial slice."""
    views = model.reconstruct(batch)
    p = model.preset
    rows = []
    for level, mask, image in (
        ("global", batch.global_mask[:1], batch.global_image[:1]),
        ("local", batch.local_mask[:1], batch.local_image[:1]),
    ):
        z = image.shape[-1] // 2
        hidden = mask_at_stride(mask, p.patch_size, 1)[0, :, :, z]
        counted = mask_at_stride(model.counted_patches(image.float()), p.patch_size, 1)[0, :, :, z]
        source = views[f"{level}_input"][0, 0, :, :, z]
        recon = views[f"{level}_reconstruction"][0, 0, :, :, z]
        rows.append(
            (
                level,
                {
                    "input": source.cpu().numpy(),
                    "hidden": hidden.cpu().numpy(),
                    "counted": counted.cpu().numpy(),
                    "prediction": recon.cpu().numpy(),
                    "error": ((recon - source).abs() * hidden).cpu().numpy(),
                },
            )
        )
    return rows


def write_preview(model, batches: list[MiMBatch], path: Path, title: str = "") -> bool:
    """Draw the preview of `batches` (see preview_batches) to `path` atomically; False when there is no batch."""
    if not batches:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            rows = [(batch.modality, level, panels) for batch in batches for level, panels in _slices(model, batch)]
    finally:
        model.train(was_training)
    fig, axes = plt.subplots(len(rows), 4, figsize=(12, 3 * len(rows)), squeeze=False)
    for (modality, level, panels), row in zip(rows, axes, strict=True):
        lo, hi = float(panels["input"].min()), float(panels["input"].max()) or 1.0
        shade = np.ma.masked_where(~panels["hidden"], panels["hidden"].astype(float))
        not_counted = np.ma.masked_where(~(panels["hidden"] & ~panels["counted"]), np.ones_like(panels["input"]))
        row[0].imshow(panels["input"].T, cmap="gray", vmin=lo, vmax=hi, origin="lower")
        row[1].imshow(panels["input"].T, cmap="gray", vmin=lo, vmax=hi, origin="lower")
        row[1].imshow(shade.T, cmap="autumn", alpha=0.45, origin="lower")
        row[1].imshow(not_counted.T, cmap="cool", alpha=0.5, origin="lower")
        row[2].imshow(panels["prediction"].T, cmap="gray", vmin=lo, vmax=hi, origin="lower")
        row[3].imshow(panels["error"].T, cmap="magma", vmin=0, vmax=max(hi - lo, 1e-6), origin="lower")
        titles = ("input", "hidden (orange; blue: not trained on)", "prediction in hidden patches", "|error|")
        for ax, name in zip(row, titles, strict=True):
            ax.set_title(f"{modality} {level}: {name}", fontsize=9)
            ax.axis("off")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    atomic_write(path, lambda handle: fig.savefig(handle, format="png", dpi=80))
    plt.close(fig)
    return True
