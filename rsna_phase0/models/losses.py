"""Phase-0 losses: per-patch-normalised voxel MSE on hidden patches only, and MiM cross-level alignment.

Reconstruction (SparK / MAE "norm_pix"): the target is the input itself, each patch normalised by its own mean
and variance (per channel: CT's three windows have different statistics); the squared error is averaged over the
voxels of a patch and then over the hidden patches that carry something to learn: a patch that is mostly zero
padding or air (thin CT slabs in a fixed-size region, heads in a corner) or near-constant (normalised by its own
std, it is unit-variance noise) is left out, and the share of hidden patches and of their error left out is
reported. Nothing the encoder computes is a target, so there is nothing to collapse to.

Alignment (MiM): a local view k of region i covers the box local_boxes[i, k] of the global view. The global view
hides most of that box, so its encoder features there are zeros; its decoder features are not (they are what the
model infers for the box), so the parent is the global view's decoder map at stride patch_size / 2, averaged over
the box and detached; the child is the same decoder map of the local view averaged over the view, through a small
predictor. Loss: BYOL's 2 - 2 cos.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

NORM_EPS = 1e-6
LOSS_TERMS = ("loss", "recon_global", "recon_local", "align")
# logged with the loss terms, never optimised: the share of hidden patches (and of their error) left out of the loss,
# and the alignment's matched against shuffled similarity
DIAGNOSTICS = ("excluded_patches", "excluded_error", "align_matched", "align_shuffled")


def patchify(volume: torch.Tensor, patch: int) -> torch.Tensor:
    """(B, C, S, S, S) -> (B, C, g, g, g, patch^3): the voxels of each patch along the last axis."""
    b, c, s = volume.shape[:3]
    g = s // patch
    x = volume.reshape(b, c, g, patch, g, patch, g, patch)
    return x.permute(0, 1, 2, 4, 6, 3, 5, 7).reshape(b, c, g, g, g, patch**3)


def unpatchify(patches: torch.Tensor, patch: int) -> torch.Tensor:
    b, c, g = patches.shape[:3]
    x = patches.reshape(b, c, g, g, g, patch, patch, patch).permute(0, 1, 2, 5, 3, 6, 4, 7)
    return x.reshape(b, c, g * patch, g * patch, g * patch)


def patch_statistics(image: torch.Tensor, patch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per patch and channel mean and std (B, C, g, g, g, 1) of the float32 image."""
    patches = patchify(image.float(), patch)
    mean = patches.mean(dim=-1, keepdim=True)
    std = (patches.var(dim=-1, keepdim=True, unbiased=False) + NORM_EPS).sqrt()
    return mean, std


def normalised_target(image: torch.Tensor, patch: int) -> torch.Tensor:
    """The reconstruction target: each patch of each channel normalised by its own mean and std."""
    mean, std = patch_statistics(image, patch)
    return unpatchify((patchify(image.float(), patch) - mean) / std, patch)


def masked_patch_errors(prediction: torch.Tensor, image: torch.Tensor, patch: int) -> torch.Tensor:
    """Squared error against the normalised target, averaged within each patch: (B, g, g, g)."""
    err = (prediction.float() - normalised_target(image, patch)) ** 2
    return patchify(err, patch).mean(dim=(1, -1))


def masked_patch_mse(prediction: torch.Tensor, image: torch.Tensor, mask: torch.Tensor, patch: int) -> torch.Tensor:
    """Mean of the per-patch errors over hidden patches (mask True) only."""
    errors = masked_patch_errors(prediction, image, patch)
    weight = mask.float()
    return (errors * weight).sum() / weight.sum().clamp_min(1.0)


def patch_foreground(image: torch.Tensor, patch: int, threshold: float = 0.0) -> torch.Tensor:
    """(B, g, g, g) share of each patch's voxels with some channel above `threshold` (not padding or air)."""
    above = (image > threshold).any(dim=1, keepdim=True).float()
    return patchify(above, patch).mean(dim=(1, -1))


def informative_patches(
    image: torch.Tensor, patch: int, min_foreground: float, min_std: float, threshold: float = 0.0
) -> torch.Tensor:
    """(B, g, g, g) bool: patches with at least `min_foreground` of their voxels above background and some
    channel's std at least `min_std` (the patches the reconstruction loss counts)."""
    std = patchify(image.float(), patch).std(dim=-1, unbiased=False).amax(dim=1)
    return (patch_foreground(image, patch, threshold) >= min_foreground) & (std >= min_std)


class Reconstruction(NamedTuple):
    loss: torch.Tensor  # mean error over hidden informative patches (0 when there is none)
    excluded_patches: torch.Tensor  # share of hidden patches left out (padding, air, near-constant)
    excluded_error: torch.Tensor  # share of the summed hidden-patch error those patches would have added


def reconstruction(
    prediction: torch.Tensor, image: torch.Tensor, mask: torch.Tensor, patch: int, counted: torch.Tensor
) -> Reconstruction:
    """The reconstruction term over hidden patches that are `counted`, with what was left out (detached)."""
    return hidden_patch_terms(masked_patch_errors(prediction, image, patch), mask, counted)


def hidden_patch_terms(errors: torch.Tensor, mask: torch.Tensor, counted: torch.Tensor) -> Reconstruction:
    """Per-patch errors (B, g, g, g) -> the loss over hidden counted patches and what was left out."""
    hidden, kept = mask.float(), (mask & counted).float()
    loss = (errors * kept).sum() / kept.sum().clamp_min(1.0)
    with torch.no_grad():
        left_out = hidden - kept
        share = left_out.sum() / hidden.sum().clamp_min(1.0)
        error_share = (errors * left_out).sum() / (errors * hidden).sum().clamp_min(1e-12)
    return Reconstruction(loss, share, error_share)


def reconstruction_in_patches(
    prediction: torch.Tensor,
    image: torch.Tensor,
    mask: torch.Tensor,
    patch: int,
    min_foreground: float,
    min_std: float,
    threshold: float = 0.0,
) -> Reconstruction:
    """`reconstruction` with `informative_patches(image, ...)` as `counted`, on the image patchified once (the
    `patch_space_loss` speed-up): the same operations on the same values, so the same bits, with fewer layout
    round trips."""
    patches = patchify(image.float(), patch)
    mean = patches.mean(dim=-1, keepdim=True)
    std = (patches.var(dim=-1, keepdim=True, unbiased=False) + NORM_EPS).sqrt()
    errors = ((patchify(prediction.float(), patch) - (patches - mean) / std) ** 2).mean(dim=(1, -1))
    foreground = (patches > threshold).any(dim=1).float().mean(dim=-1)
    spread = patches.std(dim=-1, unbiased=False).amax(dim=1)
    return hidden_patch_terms(errors, mask, (foreground >= min_foreground) & (spread >= min_std))


def pool_boxes(feature: torch.Tensor, boxes: torch.Tensor, box_patches: int, cells_per_patch: int) -> torch.Tensor:
    """Mean of `feature` (B, D, r, r, r) over each box (B, K, 3 origins in patch units) -> (B*K, D)."""
    b, k = boxes.shape[:2]
    span = box_patches * cells_per_patch
    # average-pool with the box size at stride one cell, then read the value at each box origin
    pooled = F.avg_pool3d(feature.float(), kernel_size=span, stride=cells_per_patch)
    origin = boxes.long()
    sample = torch.arange(b * k, device=feature.device) // k  # each sample's index k times (what the GPU runs ran)
    z, y, x = origin.reshape(-1, 3).unbind(1)
    return pooled[sample, :, z, y, x]


def alignment_loss(child: torch.Tensor, parent: torch.Tensor) -> torch.Tensor:
    """BYOL-style 2 - 2 cos, averaged; the parent is detached here whatever the caller passed."""
    return (2 - 2 * F.cosine_similarity(child.float(), parent.detach().float(), dim=-1)).mean()


def alignment_separation(
    child: torch.Tensor, parent: torch.Tensor, boxes_per_region: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(matched, shuffled) mean cosine similarity of each child (N, D) with its own parent and with the parents of
    other regions' boxes (rows are region-major, `boxes_per_region` each; boxes of the same region overlap, so they
    are no negatives): the alignment term means something only where matched clearly exceeds shuffled on held-out
    data. Detached (a diagnostic); shuffled is NaN with a single region."""
    with torch.no_grad():
        c = F.normalize(child.float(), dim=-1)
        p = F.normalize(parent.float(), dim=-1)
        sims = c @ p.T
        region = torch.arange(sims.shape[0], device=sims.device) // boxes_per_region
        other = (region[:, None] != region[None, :]).float()
        matched = sims.diagonal().mean()
        # 0/0 is NaN with a single region; no host-side test, so the step keeps no synchronisation of its own
        shuffled = (sims * other).sum() / other.sum()
    return matched, shuffled
