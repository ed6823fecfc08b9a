"""The Phase-0 pre-trainer, top to bottom: MiM levels through one sparse encoder and one SparK decoder.

One forward takes a MiMBatch (rsna_phase0/batch.py), already masked in input space by rsna_phase0/masking.py:
the global views and the local views of each region go through the encoder together (one coordinate manager,
BatchNorm statistics over both levels), are densified and decoded, and give
  recon_global, recon_local: per-patch-normalised voxel MSE on hidden patches of each level (models/losses.py);
  align: cross-level alignment, local view (child) vs the global view's box (parent, detached);
  loss = global_loss_weight * recon_global + local_loss_weight * recon_local + align_loss_weight * align.
"""

from __future__ import annotations

import torch
from torch import nn

from rsna_phase0.batch import MiMBatch
from rsna_phase0.models.decoder import SparkDecoder, decoder_widths
from rsna_phase0.models.encoder import SparseWaveEncoder
from rsna_phase0.models.losses import (
    alignment_loss,
    masked_patch_mse,
    patch_statistics,
    patchify,
    pool_boxes,
    unpatchify,
)
from rsna_phase0.models.masks import mask_at_stride
from rsna_phase0.presets import Preset

ALIGN_LEVEL = 1  # decoder map used for alignment: stride patch_size / 2


class AlignmentPredictor(nn.Module):
    """BYOL's small predictor on the child side (the asymmetry that keeps the detached target meaningful)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        hidden = max(2 * dim, 32)
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.LayerNorm(hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Pretrainer(nn.Module):
    def __init__(self, preset: Preset) -> None:
        super().__init__()
        self.preset = preset
        self.encoder = SparseWaveEncoder(preset)
        self.decoder = SparkDecoder(preset)
        self.align_predictor = AlignmentPredictor(decoder_widths(preset)[ALIGN_LEVEL])

    def _run(self, batch: MiMBatch):
        batch.validate()
        p = self.preset
        size = batch.global_image.shape[-1]
        if size != p.input_size or batch.local_image.shape[-1] != p.input_size:
            raise ValueError(f"views of {size}^3 voxels do not match preset {p.name} (input_size {p.input_size})")
        images = torch.cat([batch.global_image, batch.local_image])
        masks = torch.cat([batch.global_mask, batch.local_mask])
        features = self.encoder(images, masks, batch.modality)
        return self.decoder(features.maps, features.masks, batch.modality)

    def forward(self, batch: MiMBatch) -> dict[str, torch.Tensor]:
        return self.losses(batch, self._run(batch))

    def losses(self, batch: MiMBatch, decoded) -> dict[str, torch.Tensor]:
        """The loss terms from the decoder's output on this batch (split out so benchmarks can time the parts)."""
        p = self.preset
        b = batch.batch_size
        prediction = decoded.prediction
        recon_global = masked_patch_mse(prediction[:b], batch.global_image, batch.global_mask, p.patch_size)
        recon_local = masked_patch_mse(prediction[b:], batch.local_image, batch.local_mask, p.patch_size)
        align_map = decoded.features[ALIGN_LEVEL]
        parent = pool_boxes(align_map[:b].detach(), batch.local_boxes, p.local_box_patches, 2**ALIGN_LEVEL)
        child = self.align_predictor(align_map[b:].float().mean(dim=(2, 3, 4)))
        align = alignment_loss(child, parent)
        loss = p.global_loss_weight * recon_global + p.local_loss_weight * recon_local + p.align_loss_weight * align
        return {"loss": loss, "recon_global": recon_global, "recon_local": recon_local, "align": align}

    @torch.no_grad()
    def reconstruct(self, batch: MiMBatch) -> dict[str, torch.Tensor]:
        """Volumes for a visual check, per level ("global", "local"): the input, the hidden voxels, the raw
        prediction (normalised units) and the reconstruction: visible voxels copied from the input, hidden patches
        predicted and mapped back to intensities with the true patch mean/std (as SparK's visualisation does)."""
        p = self.preset
        prediction = self._run(batch).prediction.float()
        b = batch.batch_size
        out = {}
        for level, image, mask, pred in (
            ("global", batch.global_image, batch.global_mask, prediction[:b]),
            ("local", batch.local_image, batch.local_mask, prediction[b:]),
        ):
            mean, std = patch_statistics(image, p.patch_size)
            intensities = unpatchify(patchify(pred, p.patch_size) * std + mean, p.patch_size)
            hidden = mask_at_stride(mask, p.patch_size, 1).unsqueeze(1)
            out[f"{level}_input"] = image.float()
            out[f"{level}_hidden"] = hidden.expand_as(image)
            out[f"{level}_prediction"] = pred
            out[f"{level}_reconstruction"] = torch.where(hidden, intensities, image.float())
        return out
