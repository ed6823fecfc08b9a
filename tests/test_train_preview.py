"""The per-epoch reconstruction preview: one PNG with a row per modality and MiM level, written atomically."""

from __future__ import annotations

import torch

from rsna_phase0.atomic import TEMP_GLOB
from rsna_phase0.models.blob_batch import synthetic_batch
from rsna_phase0.models.pretrainer import Pretrainer
from rsna_phase0.presets import get_preset
from rsna_phase0.training.preview import preview_batches, write_preview


def test_preview_has_a_row_per_modality_and_level_and_leaves_the_model_as_it_was(tmp_path):
    import matplotlib.image

    preset = get_preset("smoke")
    torch.manual_seed(0)
    model = Pretrainer(preset).train()
    batches = [synthetic_batch(preset, 2, modality=m, seed=i) for i, m in enumerate(("mri", "mri", "ct"))]
    chosen = preview_batches(iter(batches))
    assert [b.modality for b in chosen] == ["mri", "ct"] and chosen[0] is batches[0]
    path = tmp_path / "reconstruction.png"
    assert write_preview(model, chosen, path, "smoke: epoch 0")
    assert model.training  # restored after drawing in eval mode
    image = matplotlib.image.imread(path)
    assert image.shape[0] > 3.5 * image.shape[1] / 4 * 0.9  # 4 rows of 4 panels: about as tall as wide
    assert image.std() > 0.05  # not a blank canvas
    assert not list(tmp_path.glob(TEMP_GLOB))
    assert not write_preview(model, [], tmp_path / "none.png") and not (tmp_path / "none.png").exists()
