"""Learning is shown, not claimed: the smoke preset fits a fixed batch, and after a short training its masked-patch
reconstruction of held-out volumes beats baselines that could win.

Every error is the training loss's own measure: per-patch-normalised MSE over the hidden patches the loss counts
(informative: not padding, air or near-constant). Each baseline's prediction is normalised by its OWN patch
statistics, as the model's is, so no baseline is handed the true patch mean and std. The baselines:
- a smooth interpolation of the visible voxels (normalised convolution with a Gaussian of the patch's size): what
  "fill the hole from its surroundings" gives without learning anything;
- the same architecture with its encoder frozen at random initialisation and only the decoder trained, for the same
  steps on the same batches: what the decoder alone learns, so the gap is what pre-training puts into the encoder.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from rsna_phase0.models.blob_batch import synthetic_batch
from rsna_phase0.models.feature_masks import mask_at_stride
from rsna_phase0.models.losses import patch_statistics, patchify, reconstruction, unpatchify
from rsna_phase0.models.pretrainer import Pretrainer
from rsna_phase0.presets import get_preset

TRAIN_STEPS = 150


def _train(model, batches, lr: float = 2e-3, params=None):
    opt = torch.optim.AdamW(params if params is not None else model.parameters(), lr=lr, weight_decay=0.0)
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
    batch = synthetic_batch(preset, 1, modality="mri", seed=3)
    losses = _train(model, [batch] * 80)
    assert min(losses[-10:]) < losses[0] / 5, f"loss {losses[0]:.3f} -> {min(losses[-10:]):.3f}"


def smooth_interpolation(image: torch.Tensor, hidden_voxels: torch.Tensor, sigma: float) -> torch.Tensor:
    """Hidden voxels filled by a Gaussian-weighted mean of the visible ones (normalised convolution)."""
    radius = int(math.ceil(3 * sigma))
    axis = torch.arange(-radius, radius + 1, dtype=torch.float32)
    g = torch.exp(-(axis**2) / (2 * sigma**2))
    g = g / g.sum()
    visible = (~hidden_voxels).unsqueeze(1).float()

    def blur(x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1]
        for dim in range(3):
            shape = [1, 1, 1, 1, 1]
            shape[2 + dim] = len(g)
            pad = [0, 0, 0, 0, 0, 0]
            pad[2 * (2 - dim)] = pad[2 * (2 - dim) + 1] = radius
            x = F.conv3d(F.pad(x, pad), g.view(shape).expand(c, 1, *shape[2:]).contiguous(), groups=c)
        return x

    filled = blur(image * visible) / blur(visible).clamp_min(1e-6)
    return torch.where(hidden_voxels.unsqueeze(1), filled, image)


def _own_normalised(values: torch.Tensor, patch: int) -> torch.Tensor:
    """A prediction in the loss's units from an intensity guess: each patch normalised by its own statistics."""
    mean, std = patch_statistics(values, patch)
    return unpatchify((patchify(values.float(), patch) - mean) / std, patch)


def _held_out_errors(model: Pretrainer, frozen: Pretrainer, batches) -> dict[str, float]:
    """Hidden informative-patch error of the model, the frozen-encoder baseline and the interpolation."""
    p = model.preset
    sums = {"model": 0.0, "frozen_encoder": 0.0, "interpolation": 0.0}
    count = 0.0
    model.eval()
    frozen.eval()
    with torch.no_grad():
        for batch in batches:
            b = batch.batch_size
            predictions = {"model": model._run(batch).prediction, "frozen_encoder": frozen._run(batch).prediction}
            for image, mask, rows in (
                (batch.global_image, batch.global_mask, slice(0, b)),
                (batch.local_image, batch.local_mask, slice(b, None)),
            ):
                counted = model.counted_patches(image)
                hidden_voxels = mask_at_stride(mask, p.patch_size, 1)
                guesses = {name: pred[rows] for name, pred in predictions.items()}
                guesses["interpolation"] = _own_normalised(
                    smooth_interpolation(image, hidden_voxels, p.patch_size / 2), p.patch_size
                )
                n = float((mask & counted).sum())
                for name, guess in guesses.items():
                    sums[name] += float(reconstruction(guess, image, mask, p.patch_size, counted).loss) * n
                count += n
    assert count > 0
    return {name: total / count for name, total in sums.items()}


@pytest.mark.slow
def test_reconstruction_of_held_out_volumes_beats_interpolation_and_a_frozen_random_encoder():
    preset = get_preset("smoke")
    train = [synthetic_batch(preset, 2, modality="mri", seed=1000 + step) for step in range(TRAIN_STEPS)]
    torch.manual_seed(0)
    model = Pretrainer(preset)
    torch.manual_seed(0)
    frozen = Pretrainer(preset)  # the same initialisation; only its decoder (and alignment predictor) learns
    for param in frozen.encoder.parameters():
        param.requires_grad_(False)
    _train(model, train, lr=3e-3)
    _train(frozen, train, lr=3e-3, params=[q for q in frozen.parameters() if q.requires_grad])
    held_out = [synthetic_batch(preset, 2, modality="mri", seed=seed) for seed in range(3)]  # seeds never trained on
    errors = _held_out_errors(model, frozen, held_out)
    print(f"held-out hidden informative-patch MSE (normalised units; predicting the patch mean scores 1): {errors}")
    assert errors["model"] < 0.9 * errors["interpolation"], errors
    assert errors["model"] < 0.9 * errors["frozen_encoder"], errors
    # the alignment term earns its place: on held-out regions a local view's features are closer to its own box in
    # the global view than to other regions' boxes (equal at initialisation; 0.60 vs 0.58 after these 150 steps,
    # 0.78 vs 0.63 after 300 steps with four local views; the README has the GPU run's figures)
    with torch.no_grad():
        outs = [model(synthetic_batch(preset, 4, modality="mri", seed=seed)) for seed in range(3)]
    matched = sum(float(o["align_matched"]) for o in outs) / len(outs)
    shuffled = sum(float(o["align_shuffled"]) for o in outs) / len(outs)
    print(f"held-out alignment: matched {matched:.3f}, shuffled {shuffled:.3f}")
    assert matched > shuffled + 0.01, (matched, shuffled)
