"""One fine-tune (an encoder + a fresh head, a fixed number of steps) and scoring held-out cases with it.

The budget is steps x batch size, identical for both inits. AdamW with two learning rates (head; encoder, only in
full mode), linear warm-up over the first tenth of the steps (at most 50), then cosine decay to zero; gradients
clipped at norm 1. Mixed precision from rsna_phase0.training.amp (bf16 where the GPU has it, else fp16 with a
GradScaler; fp32 on the CPU); losses and scores are computed in fp32.
Segmentation loss: cross-entropy + soft Dice over vessel and aneurysm (the nnU-Net pairing: CE for calibration,
Dice so the few aneurysm voxels weigh as much as the background). Classification: binary cross-entropy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from rsna_phase0.evaluation.geometry import pad_to, windows
from rsna_phase0.evaluation.heads import DownstreamModel, make_head
from rsna_phase0.evaluation.metrics import auc, dice_counts, pooled_dice
from rsna_phase0.evaluation.preprocess import Case
from rsna_phase0.models.dense_encoder import DenseEncoder
from rsna_phase0.training.amp import AmpMode, autocast, make_scaler

RANDOM_INIT_SEED_OFFSET = 1_000_003  # random-init encoders draw from another stream than the heads


@dataclass(frozen=True)
class Budget:
    steps: int
    batch_size: int
    lr: float
    encoder_lr: float
    weight_decay: float = 1e-4

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError(
                f"a fine-tune needs at least 1 step of at least 1 sample (got {self.steps}, {self.batch_size})"
            )

    @property
    def warmup_steps(self) -> int:
        return min(50, self.steps // 10)

    def lr_factor(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        progress = (step - self.warmup_steps) / max(1, self.steps - self.warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * progress))


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    amp: AmpMode
    side: int  # the inference cube side (geometry.inference_side)


def random_encoder(like: DenseEncoder, seed: int) -> DenseEncoder:
    """The same architecture from random initialisation (seeded), in eval mode like an exported one."""
    torch.manual_seed(RANDOM_INIT_SEED_OFFSET + seed)
    return DenseEncoder(like.preset).eval()


def build_model(task: str, mode: str, modality: str, encoder: DenseEncoder, seed: int) -> DownstreamModel:
    """encoder + a head seeded by `seed` alone, so both inits of a seed start from the same head."""
    torch.manual_seed(seed)
    return DownstreamModel(encoder, make_head(task, encoder, mode), modality, mode)


def segmentation_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    logits = logits.float()
    ce = F.cross_entropy(logits, labels)
    probs = logits.softmax(1)[:, 1:]
    onehot = F.one_hot(labels, logits.shape[1]).movedim(-1, 1)[:, 1:].float()
    dims = (0, 2, 3, 4)
    dice = (2 * (probs * onehot).sum(dims) + 1e-5) / (probs.sum(dims) + onehot.sum(dims) + 1e-5)
    return ce + (1 - dice.mean())


def loss_for(task: str, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    if task == "segmentation":
        return segmentation_loss(output, target)
    return F.binary_cross_entropy_with_logits(output.float(), target)


def finetune(model: DownstreamModel, sampler, task: str, budget: Budget, runtime: Runtime) -> list[float]:
    """Train `model` in place for budget.steps batches from `sampler`; returns the loss of every step."""
    device = runtime.device
    model.to(device).train()
    groups = [{"params": list(model.head.parameters()), "lr": budget.lr}]
    encoder_params = [p for p in model.encoder.parameters() if p.requires_grad]
    if encoder_params:
        groups.append({"params": encoder_params, "lr": budget.encoder_lr})
    optimizer = torch.optim.AdamW(groups, weight_decay=budget.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, budget.lr_factor)
    scaler = make_scaler(runtime.amp)
    params = [p for g in groups for p in g["params"]]
    losses = []
    for _ in range(budget.steps):
        x, y = sampler.batch(budget.batch_size)
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with autocast(runtime.amp, device):
            output = model(x)
        loss = loss_for(task, output, y)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        scaler.step(optimizer)
        scaler.update()
        schedule.step()
        losses.append(loss.detach())
    values = torch.stack(losses).tolist()  # one host sync at the end, not one a step
    bad = [i for i, v in enumerate(values) if not math.isfinite(v)]
    if bad:
        raise ValueError(f"the fine-tune diverged: non-finite loss from step {bad[0]} (lower --lr, or try --amp off)")
    return values


def _padded_windows(image: np.ndarray, runtime: Runtime):
    """Yield (box, padded shape, input (1, C, side, side, side)) over the windows covering `image` (C, X, Y, Z), each side padded to >= the cube side."""
    padded = pad_to(image, tuple(max(n, runtime.side) for n in image.shape[1:]))
    for box in windows(padded.shape[1:], runtime.side):
        x = torch.from_numpy(np.ascontiguousarray(padded[(slice(None), *box)]))[None].to(runtime.device)
        yield box, padded.shape[1:], x


@torch.no_grad()
def predict_segmentation(model: DownstreamModel, image: np.ndarray, runtime: Runtime) -> np.ndarray:
    """(X, Y, Z) uint8 label map: softmax averaged over overlapping windows, argmax, cropped back."""
    model.eval()
    total = None
    for box, shape, x in _padded_windows(image, runtime):
        with autocast(runtime.amp, runtime.device):
            logits = model(x)
        if total is None:
            total = torch.zeros((logits.shape[1], *shape), device=runtime.device)
        total[(slice(None), *box)] += logits.float().softmax(1)[0]
    x_, y_, z_ = image.shape[1:]
    return total.argmax(0)[:x_, :y_, :z_].to(torch.uint8).cpu().numpy()


@torch.no_grad()
def predict_aneurysm_probability(model: DownstreamModel, image: np.ndarray, runtime: Runtime) -> float:
    """P(aneurysm present) from the pooled deepest map over every window of the case."""
    model.eval()
    means, peaks = [], []
    for _, _, x in _padded_windows(image, runtime):
        with autocast(runtime.amp, runtime.device):
            mean, peak = model.head.pool(model.features(x)[-1])
        means.append(mean)
        peaks.append(peak)
    logit = model.head.classify(torch.stack(means).mean(0), torch.stack(peaks).amax(0))
    return float(torch.sigmoid(logit)[0])


def score(model: DownstreamModel, cases: list[Case], task: str, runtime: Runtime) -> dict[str, float]:
    """Segmentation: pooled Dice per class; classification: AUC of aneurysm present."""
    if task == "segmentation":
        return pooled_dice([dice_counts(predict_segmentation(model, c.image, runtime), c.label) for c in cases])
    probabilities = [predict_aneurysm_probability(model, c.image, runtime) for c in cases]
    return {"auc": auc(probabilities, [c.aneurysm for c in cases])}
