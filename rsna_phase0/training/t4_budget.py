"""How much pre-training the users' Kaggle budget buys: epochs of their 6,244 volumes in 30 T4 GPU-hours a week.

No T4 is at hand wherever this runs, so the T4 step time is derived from what is counted here, not measured: the
floating-point operations of one training step (forward and backward) on a real batch, counted by torch's
FlopCounterMode for the dense layers (convolutions, attention, matrix products) plus the MinkowskiEngine
convolutions counted from their active voxels (2 x active outputs x kernel offsets x C_in x C_out, x3 for the
backward; an upper bound, every offset taken as present), divided by the throughput a T4 sustains on such work under
fp16 autocast: T4_SUSTAINED_FLOPS, 25 TFLOP/s, about 38% of its 65 TFLOP/s fp16 tensor-core peak (a typical share
for 3D convolutions, attention and their element-wise neighbours on that card; the sparse stages run in float32 at
T4_FP32_FLOPS). The figure is an estimate to plan a week with, and the preflight says so next to the step time it
measured on this machine.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

USERS_VOLUMES = 6244  # OpenMind MRI 5,573 + DeepLesion CT 671 (shared/data-formats.md)
WEEKLY_T4_HOURS = 30.0
T4_SUSTAINED_FLOPS = 25e12  # fp16 autocast, dense layers (see the module docstring)
T4_FP32_FLOPS = 4e12  # float32 sparse stages: half of the T4's 8.1 TFLOP/s fp32 peak


@dataclass(frozen=True)
class StepFlops:
    dense: float  # FLOPs of the dense layers, forward + backward
    sparse: float  # FLOPs of the MinkowskiEngine convolutions, forward + backward (upper bound)

    @property
    def t4_seconds(self) -> float:
        return self.dense / T4_SUSTAINED_FLOPS + self.sparse / T4_FP32_FLOPS


def count_step_flops(model: torch.nn.Module, batch) -> StepFlops:
    """Count one forward + backward of `model` on `batch` (weights and gradients are left as they were)."""
    from torch.utils.flop_counter import FlopCounterMode

    sparse_flops = [0.0]
    hooks = []
    for module in model.modules():
        if type(module).__name__ in ("MinkowskiConvolution", "MinkowskiConvolutionTranspose"):
            hooks.append(module.register_forward_hook(_sparse_counter(sparse_flops)))
    saved = {name: p.grad for name, p in model.named_parameters()}
    try:
        with FlopCounterMode(display=False) as counter:
            out = model(batch)
            out["loss"].float().backward()
        dense = float(counter.get_total_flops())
    finally:
        for hook in hooks:
            hook.remove()
        for name, p in model.named_parameters():
            p.grad = saved[name]
    return StepFlops(dense=dense, sparse=3 * sparse_flops[0])


def _sparse_counter(total: list[float]):
    def hook(module, inputs, output) -> None:
        kernel = module.kernel  # (offsets, C_in, C_out)
        total[0] += 2.0 * output.F.shape[0] * kernel.shape[0] * kernel.shape[1] * kernel.shape[2]

    return hook


def weekly_epochs(flops: StepFlops, regions_per_step: int, gpus: int = 1) -> dict:
    """Epochs of the users' volumes (one region per volume) that WEEKLY_T4_HOURS on `gpus` T4s give."""
    steps_per_epoch = USERS_VOLUMES / regions_per_step
    epoch_s = steps_per_epoch * flops.t4_seconds / gpus
    return {
        "t4_step_s": flops.t4_seconds,
        "epoch_h": epoch_s / 3600,
        "epochs": WEEKLY_T4_HOURS * 3600 / epoch_s if epoch_s > 0 else float("inf"),
        "tflop_per_step": (flops.dense + flops.sparse) / 1e12,
    }


def describe_weekly_budget(flops: StepFlops, regions_per_step: int, measured_step_s: float | None) -> str:
    """One line for the preflight report."""
    one = weekly_epochs(flops, regions_per_step)
    two = weekly_epochs(flops, regions_per_step, gpus=2)
    measured = f"; measured here {measured_step_s:.3f} s/step" if measured_step_s else ""
    return (
        f"Kaggle: {WEEKLY_T4_HOURS:g} T4 GPU-hours = ~{one['epochs']:.1f} epochs of {USERS_VOLUMES:,} volumes on one "
        f"T4 (~{two['epochs']:.1f} on T4 x2 at perfect scaling), from {one['tflop_per_step']:.3g} TFLOP per step of "
        f"{regions_per_step} regions counted here at {T4_SUSTAINED_FLOPS / 1e12:g} TFLOP/s fp16 sustained (an "
        f"estimate: ~{one['t4_step_s']:.3g} s/step on a T4{measured})"
    )
