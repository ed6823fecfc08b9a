"""Learning is shown, not claimed: the smoke preset fits a fixed batch, and after a short training on synthetic
volumes its masked-patch reconstruction on held-out volumes beats both trivial baselines.

Errors are measured as the training loss measures them: per-patch-normalised MSE on hidden patches. There,
predicting the patch mean scores 1 per patch, and "copy the nearest visible voxel" is normalised with the true
patch statistics, so both baselines get information the model never sees.
"""

from __future__ import annotations

import pytest
import torch

from rsna_phase0.models.losses import masked_patch_errors, patch_statistics, patchify, unpatchify
from rsna_phase0.models.masks import mask_at_stride
from rsna_phase0.models.pretrainer import Pretrainer
from rsna_phase0.models.synthetic import synthetic_batch
from rsna_phase0.presets import get_preset


def _train(model, batches, lr: float = 2e-3):
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    losses = []
    for batch in batches:
        out = model(batch)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(float(out["loss"].detach()))
    return losses


def test_smoke_preset_fits_a_fixed_batch():
    torch.manual_seed(0)
    preset = get_preset("smoke")
    model = Pretrainer(preset)
    batch = synthetic_batch(preset, 2, modality="mri", seed=3)
    losses = _train(model, [batch] * 150)
    assert min(losses[-10:]) < losses[0] / 5, f"loss {losses[0]:.3f} -> {min(losses[-10:]):.3f}"


def nearest_visible_copy(image: torch.Tensor, hidden_voxels: torch.Tensor) -> torch.Tensor:
    """Each hidden voxel takes the value of the nearest visible voxel of its view (Euclidean)."""
    out = image.clone()
    for v in range(image.shape[0]):
        hidden = torch.nonzero(hidden_voxels[v]).float()
        visible = torch.nonzero(~hidden_voxels[v])
        for start in range(0, len(hidden), 2048):
            chunk = hidden[start : start + 2048]
            nearest = visible[torch.cdist(chunk, visible.float()).argmin(dim=1)]
            z, y, x = chunk.long().unbind(1)
            out[v, :, z, y, x] = image[v, :, nearest[:, 0], nearest[:, 1], nearest[:, 2]].T
    return out


def _normalised(values: torch.Tensor, image: torch.Tensor, patch: int) -> torch.Tensor:
    mean, std = patch_statistics(image, patch)
    return unpatchify((patchify(values, patch) - mean) / std, patch)


@pytest.mark.slow
def test_reconstruction_of_held_out_volumes_beats_trivial_baselines():
    torch.manual_seed(0)
    preset = get_preset("smoke")
    model = Pretrainer(preset)
    _train(model, (synthetic_batch(preset, 2, modality="mri", seed=1000 + step) for step in range(300)))
    model.eval()
    model_err, mean_err, copy_err, n = 0.0, 0.0, 0.0, 0.0
    for seed in range(3):  # held out: seeds never used in training
        batch = synthetic_batch(preset, 2, modality="mri", seed=seed)
        views = model.reconstruct(batch)
        for level, mask in (("global", batch.global_mask), ("local", batch.local_mask)):
            image = views[f"{level}_input"]
            hidden = mask.float()
            copied = nearest_visible_copy(image, mask_at_stride(mask, preset.patch_size, 1))
            errors = {
                "model": masked_patch_errors(views[f"{level}_prediction"], image, preset.patch_size),
                "mean": masked_patch_errors(torch.zeros_like(image), image, preset.patch_size),
                "copy": masked_patch_errors(_normalised(copied, image, preset.patch_size), image, preset.patch_size),
            }
            model_err += float((errors["model"] * hidden).sum())
            mean_err += float((errors["mean"] * hidden).sum())
            copy_err += float((errors["copy"] * hidden).sum())
            n += float(hidden.sum())
    model_err, mean_err, copy_err = model_err / n, mean_err / n, copy_err / n
    print(
        f"held-out masked-patch MSE: model {model_err:.3f}, patch mean {mean_err:.3f}, nearest visible {copy_err:.3f}"
    )
    assert model_err < 0.8 * mean_err, (model_err, mean_err)
    assert model_err < 0.8 * copy_err, (model_err, copy_err)
