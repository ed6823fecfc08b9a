"""Hidden content never reaches the encoder, and the loss only looks at hidden patches."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch
from model_helpers import patch_masks, tiny_preset

from rsna_phase0.models.encoder import SparseWaveEncoder
from rsna_phase0.models.feature_masks import mask_at_stride
from rsna_phase0.models.losses import masked_patch_mse


def check_hidden_voxels_cannot_change_encoder_outputs(dense_strided_steps: bool) -> None:
    """Bit-identical outputs when only hidden voxels change, in training mode (BatchNorm batch statistics), with
    background voxels inactive (the preset default: noise input puts about half the voxels at or below 0)."""
    torch.manual_seed(0)
    # the smoke preset's WaveFormer stage runs a level-1 DWT, so the wavelet path is covered too
    preset = tiny_preset(dense_strided_steps=dense_strided_steps)
    assert preset.background_threshold is not None
    encoder = SparseWaveEncoder(preset).train()
    mask = patch_masks(2, preset.grid, 0.6, seed=3)
    x = torch.randn(2, 1, 32, 32, 32)
    hidden_voxels = mask_at_stride(mask, preset.patch_size, 1).unsqueeze(1)
    changed = torch.where(hidden_voxels, torch.randn_like(x) * 100.0, x)
    changed[hidden_voxels & (torch.rand_like(x) < 0.01)] = float("inf")  # not even inf * 0 = NaN may leak
    assert not torch.equal(changed, x)

    first = encoder(x, mask, "mri")
    second = encoder(changed, mask, "mri")
    for i, (a, b) in enumerate(zip(first.maps, second.maps, strict=True)):
        assert torch.equal(a, b), f"stage {i} changed when only hidden voxels changed"
    # and visible content does matter (the check can fail)
    third = encoder(torch.where(hidden_voxels, x, x + 1.0), mask, "mri")
    assert not torch.equal(third.maps[-1], first.maps[-1])


def test_changing_hidden_voxels_leaves_every_encoder_output_bit_identical():
    # MinkowskiEngine's CPU kernel maps are built by several OpenMP threads, so the row order of its features (and
    # with it the last bits of BatchNorm sums and GEMMs) varies from run to run whatever the input; one thread
    # makes repeated runs bit-identical, so any difference left can only come from the input.
    code = (
        "import test_model_leakage as t\n"
        "for dense_strided in (True, False): t.check_hidden_voxels_cannot_change_encoder_outputs(dense_strided)\n"
        "print('ok')"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=Path(__file__).parent, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0 and "ok" in result.stdout, result.stdout + result.stderr


def test_loss_ignores_predictions_at_visible_patches():
    torch.manual_seed(0)
    patch = 8
    mask = patch_masks(2, 4, 0.6, seed=5)
    image = torch.rand(2, 3, 32, 32, 32)
    prediction = torch.randn(2, 3, 32, 32, 32)
    visible_voxels = ~mask_at_stride(mask, patch, 1).unsqueeze(1)
    moved = torch.where(visible_voxels, prediction + 50.0 * torch.randn_like(prediction), prediction)
    assert torch.equal(masked_patch_mse(prediction, image, mask, patch), masked_patch_mse(moved, image, mask, patch))
    moved_hidden = torch.where(visible_voxels, prediction, prediction + 1.0)
    assert masked_patch_mse(moved_hidden, image, mask, patch) > masked_patch_mse(prediction, image, mask, patch)


def test_loss_target_is_per_patch_normalised_input():
    from rsna_phase0.models.losses import normalised_target, patchify

    image = torch.rand(1, 1, 16, 16, 16) * 5 + 3
    target = patchify(normalised_target(image, 8), 8)
    torch.testing.assert_close(target.mean(-1), torch.zeros_like(target.mean(-1)), atol=1e-5, rtol=0)
    torch.testing.assert_close(target.std(-1, unbiased=False), torch.ones_like(target.mean(-1)), atol=1e-4, rtol=0)
    mask = torch.ones(1, 2, 2, 2, dtype=torch.bool)
    assert masked_patch_mse(normalised_target(image, 8), image, mask, 8) < 1e-10


def check_local_views_cannot_change_the_global_view() -> None:
    """MiM levels share one batch: the global view's encoder features, decoder output and loss must not depend on
    the local views' content (which is, by design, mostly what the global view hides), in training mode."""
    from rsna_phase0.models.blob_batch import synthetic_batch
    from rsna_phase0.models.pretrainer import Pretrainer

    torch.manual_seed(0)
    preset = tiny_preset()
    model = Pretrainer(preset).train()
    batch = synthetic_batch(preset, 2, modality="mri", seed=4)
    changed = synthetic_batch(preset, 2, modality="mri", seed=4)
    changed.local_image = synthetic_batch(preset, 2, modality="mri", seed=99).local_image  # other content, same masks
    assert not torch.equal(changed.local_image, batch.local_image)
    b = batch.batch_size
    first, second = model.encode(batch), model.encode(changed)
    for i, (a, c) in enumerate(zip(first.maps, second.maps, strict=True)):
        assert torch.equal(a[:b], c[:b]), f"stage {i} of the global view changed with the local views' content"
        assert not torch.equal(a[b:], c[b:])  # the local views' own features did change (the check can fail)
    assert torch.equal(model(batch)["recon_global"], model(changed)["recon_global"])


def test_local_view_content_leaves_the_global_view_bit_identical():
    code = "import test_model_leakage as t\nt.check_local_views_cannot_change_the_global_view()\nprint('ok')"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=Path(__file__).parent, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0 and "ok" in result.stdout, result.stdout + result.stderr
