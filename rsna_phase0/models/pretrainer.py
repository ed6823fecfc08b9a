"""The Phase-0 pre-trainer, top to bottom: MiM levels through one sparse encoder and one SparK decoder.

One forward takes a MiMBatch (rsna_phase0/batch.py), already masked in input space by rsna_phase0/mim_masking.py:
the global views and the local views of each region go through the encoder together (every normalisation is per
sample and a kernel map never joins two samples, so no view's output depends on another view's content; on a CPU
to the last bit, tests/test_model_leakage.py), are densified and decoded, and give
  recon_global, recon_local: per-patch-normalised voxel MSE on the hidden, informative patches of each level
    (models/losses.py);
  align: cross-level alignment, local view (child) vs the global view's box (parent, detached);
  loss = global_loss_weight * recon_global + local_loss_weight * recon_local + align_loss_weight * align;
and diagnostics (detached, never in the loss): `excluded_patches` / `excluded_error`, the share of hidden patches
and of their error left out as padding, air or near-constant; `align_matched` / `align_shuffled`, the mean cosine
similarity of each child with its own parent and with the parents of other regions' boxes.
"""

from __future__ import annotations

from functools import partial

import torch
from torch import nn

from rsna_phase0.batch import MiMBatch
from rsna_phase0.models.cuda_graphs import GraphedFunction
from rsna_phase0.models.decoder import SparkDecoder, decoder_widths
from rsna_phase0.models.encoder import EncoderFeatures, SparseWaveEncoder
from rsna_phase0.models.feature_masks import mask_at_stride
from rsna_phase0.models.losses import (  # noqa: F401  (LOSS_TERMS, DIAGNOSTICS: the keys forward() returns)
    DIAGNOSTICS,
    LOSS_TERMS,
    alignment_loss,
    alignment_separation,
    informative_patches,
    patch_statistics,
    patchify,
    pool_boxes,
    reconstruction,
    reconstruction_in_patches,
    unpatchify,
)
from rsna_phase0.models.speedups import COMPILE_DENSE, GRAPH_DECODER_LOSS, ONE_SPARSE_PASS, PATCH_SPACE_LOSS
from rsna_phase0.presets import Preset

ALIGN_LEVEL = 1  # decoder map used for alignment: stride patch_size / 2
OUTPUT_KEYS = LOSS_TERMS + DIAGNOSTICS  # what forward() returns, in the order a graphed decoder + loss returns it
BATCH_TENSORS = ("global_image", "global_mask", "local_image", "local_mask", "local_boxes")  # what the loss reads


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
        self.level_loss = reconstruction_in_patches if PATCH_SPACE_LOSS in preset.speedups else None
        if COMPILE_DENSE in preset.speedups:
            self.compile_dense_parts()
        # one per modality (each head is its own), each holding its graphs; not modules, so parameter names stay
        self.graphed_decode_losses = None
        if GRAPH_DECODER_LOSS in preset.speedups:
            self.graphed_decode_losses = {
                modality: GraphedFunction(
                    self, partial(self._decode_losses, modality), GRAPH_DECODER_LOSS, ("decoder.", "align_predictor.")
                )
                for modality in preset.modality_channels
            }

    def compile_dense_parts(self) -> None:
        """torch.compile the WaveFormer blocks, the decoder's layers and the loss in place (nn.Module.compile keeps the
        parameter names); the MinkowskiEngine stages stay eager. Block by block: the blocks of a stage share one
        compiled graph (torch >= 2.5 treats parameters as its inputs), so compiling takes a few graphs, not one
        per block."""
        for stage in self.encoder.wave_stages:
            for block in stage.blocks:
                block.compile()
        # the decoder by parts, its mask-token fill eager: compiled on CUDA, that fill's backward hands the
        # (1, C, 1, 1, 1) token a (C,) gradient and autograd refuses it (torch 2.11, with or without autocast)
        for densify in self.decoder.densify:
            densify.norm.compile()
            densify.proj.compile()
        for module in (*self.decoder.up_blocks, *self.decoder.heads.values()):
            module.compile()
        self.level_loss = torch.compile(self.level_loss or reconstruction_in_patches)

    def _check(self, batch: MiMBatch) -> None:
        batch.validate(self.preset.channels(batch.modality))
        p = self.preset
        size = batch.global_image.shape[-1]
        if size != p.input_size or batch.local_image.shape[-1] != p.input_size:
            raise ValueError(f"views of {size}^3 voxels do not match preset {p.name} (input_size {p.input_size})")

    def _run(self, batch: MiMBatch):
        self._check(batch)
        features = self.encode(batch)
        return self.decoder(features.maps, features.masks, batch.modality)

    def encode(self, batch: MiMBatch):
        """Encoder features of the global views (first B rows) and the local views: one sparse pass over both, or
        one per level without `one_sparse_pass`."""
        images = torch.cat([batch.global_image, batch.local_image])
        masks = torch.cat([batch.global_mask, batch.local_mask])
        groups = None if ONE_SPARSE_PASS in self.preset.speedups else [batch.batch_size, batch.local_image.shape[0]]
        return self.encoder(images, masks, batch.modality, sparse_groups=groups)

    def forward(self, batch: MiMBatch, touch_idle: bool = False) -> dict[str, torch.Tensor]:
        """The loss terms and diagnostics. `touch_idle` adds 0 x the other modalities' stem and head parameters to
        the loss, so every parameter takes part in every backward (DDP without unused-parameter detection); their
        gradients are then zeros, not None (the trainer drops them again for a step that used no such batch)."""
        self._check(batch)
        out = self.decode_losses(batch, self.encode(batch))
        if touch_idle:
            out["loss"] = out["loss"] + sum(0.0 * p.sum() for p in self.idle_parameters(batch.modality))
        return out

    def decode_losses(self, batch: MiMBatch, features: EncoderFeatures) -> dict[str, torch.Tensor]:
        """Decoder and loss on the encoder's features: replayed from CUDA graphs with `graph_decoder_loss` (in
        training forwards on CUDA; eagerly otherwise, the same function)."""
        tensors = (*features.maps, *features.masks, *(getattr(batch, name) for name in BATCH_TENSORS))
        if self.graphed_decode_losses is None:
            values = self._decode_losses(batch.modality, *tensors)
        else:
            values = self.graphed_decode_losses[batch.modality](*tensors)
        return dict(zip(OUTPUT_KEYS, values, strict=True))

    def _decode_losses(self, modality: str, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """`decode_losses` on plain tensors (what a CUDA graph captures): the stages' maps and masks, then the
        batch's BATCH_TENSORS."""
        n = len(self.preset.stage_dims)
        maps, masks, batch_tensors = list(tensors[:n]), list(tensors[n : 2 * n]), tensors[2 * n :]
        batch = MiMBatch(modality, **dict(zip(BATCH_TENSORS, batch_tensors, strict=True)))
        out = self.losses(batch, self.decoder(maps, masks, modality))
        return tuple(out[key] for key in OUTPUT_KEYS)

    def modality_parameters(self, modality: str) -> list[nn.Parameter]:
        """The parameters only `modality`'s batches use: its encoder stem and its decoder head."""
        return [*self.encoder.stems[modality].parameters(), *self.decoder.heads[modality].parameters()]

    def idle_parameters(self, modality: str) -> list[nn.Parameter]:
        """The parameters a `modality` batch leaves unused: the other modalities' stems and heads."""
        return [
            p for other in self.preset.modality_channels if other != modality for p in self.modality_parameters(other)
        ]

    def counted_patches(self, image: torch.Tensor) -> torch.Tensor:
        """(B, g, g, g) bool: the patches of these views that the reconstruction loss counts when hidden."""
        p = self.preset
        threshold = p.background_threshold if p.background_threshold is not None else 0.0
        return informative_patches(image, p.patch_size, p.min_patch_foreground, p.min_patch_std, threshold)

    def losses(self, batch: MiMBatch, decoded) -> dict[str, torch.Tensor]:
        """The loss terms and diagnostics from the decoder's output on this batch (split out so benchmarks can time
        the parts)."""
        p = self.preset
        b = batch.batch_size
        prediction = decoded.prediction
        views = (
            (prediction[:b], batch.global_image, batch.global_mask),
            (prediction[b:], batch.local_image, batch.local_mask),
        )
        if self.level_loss is not None:
            threshold = p.background_threshold if p.background_threshold is not None else 0.0
            limits = (p.patch_size, p.min_patch_foreground, p.min_patch_std, threshold)
            levels = tuple(self.level_loss(pred, image, mask, *limits) for pred, image, mask in views)
        else:
            levels = tuple(
                reconstruction(pred, image, mask, p.patch_size, self.counted_patches(image))
                for pred, image, mask in views
            )
        align_map = decoded.features[ALIGN_LEVEL]
        parent = pool_boxes(align_map[:b].detach(), batch.local_boxes, p.local_box_patches, 2**ALIGN_LEVEL)
        child = self.align_predictor(align_map[b:].float().mean(dim=(2, 3, 4)))
        align = alignment_loss(child, parent)
        matched, shuffled = alignment_separation(child, parent, batch.n_local)
        recon_global, recon_local = levels[0].loss, levels[1].loss
        loss = p.global_loss_weight * recon_global + p.local_loss_weight * recon_local + p.align_loss_weight * align
        # both levels weighted by their hidden patches, as a user reads "the share of the loss left out"
        n_global, n_local = batch.global_mask.sum(), batch.local_mask.sum()
        total = (n_global + n_local).clamp_min(1)
        return {
            "loss": loss,
            "recon_global": recon_global,
            "recon_local": recon_local,
            "align": align,
            "excluded_patches": (levels[0].excluded_patches * n_global + levels[1].excluded_patches * n_local) / total,
            "excluded_error": (levels[0].excluded_error + levels[1].excluded_error) / 2,
            "align_matched": matched,
            "align_shuffled": shuffled,
        }

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
