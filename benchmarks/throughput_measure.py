"""Measuring pieces of benchmarks/throughput.py: step timing, part timing, FLOPs, matmul peak, loader wait.

Times are wall-clock medians with the device synchronised around each timed call (MinkowskiEngine synchronises its
stream inside every convolution anyway, so nothing overlaps that a finer method would see). FLOPs are what runs:
dense ops counted by torch.utils.flop_counter (forward and backward), MinkowskiEngine convolutions counted from
their kernel maps (2 * pairs * C_in * C_out forward, twice that backward for the input and kernel gradients).
"""

from __future__ import annotations

import statistics
import time
from contextlib import nullcontext

import torch
import torch.nn.functional as F


def device_from(name: str) -> torch.device:
    """The device a benchmark was asked for; SystemExit when it is CUDA and torch sees no GPU."""
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda asked for, but torch sees no CUDA GPU (use --device cpu for the CPU check)")
    return device


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autocast(device: torch.device, amp: str):
    if amp == "none":
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


def back_to_back_ms(fn, device: torch.device, warmup: int, steps: int) -> float:
    """Mean ms of `steps` calls queued back to back (CUDA events around them all on CUDA): for work that never
    synchronises the host, where median_ms's synchronisation around each call would add idle time."""
    for _ in range(warmup):
        fn()
    if device.type != "cuda":
        start = time.perf_counter()
        for _ in range(steps):
            fn()
        return 1000 * (time.perf_counter() - start) / steps
    torch.cuda.synchronize(device)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(steps):
        fn()
    end.record()
    torch.cuda.synchronize(device)
    return start.elapsed_time(end) / steps


def median_ms(fn, device: torch.device, warmup: int, steps: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(steps):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def matmul_peak(device: torch.device) -> tuple[float, str]:
    """Measured dense matmul FLOP/s of this device: bf16 on a GPU (tensor cores), float32 on a CPU."""
    n, dtype, iters = (8192, torch.bfloat16, 20) if device.type == "cuda" else (2048, torch.float32, 3)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    ms = median_ms(lambda: torch.mm(a, b), device, warmup=2, steps=iters)
    return 2 * n**3 / (ms / 1000), f"{'bf16' if dtype == torch.bfloat16 else 'fp32'} matmul {n}^3"


def dense_flops(fn) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def active_sets(preset, images: torch.Tensor, masks: torch.Tensor) -> list[torch.Tensor]:
    """Active cells (B, r, r, r) at stride 1 and after each sparse stage's k2 s2 step, as the encoder forms them."""
    from rsna_phase0.models.feature_masks import mask_at_stride
    from rsna_phase0.models.sparse_stages import active_voxels, coarser_active

    levels = [active_voxels(images, ~mask_at_stride(masks, preset.patch_size, 1), preset.background_threshold)]
    for _ in range(preset.sparse_stages):
        levels.append(coarser_active(levels[-1]))
    return levels


def submanifold_pairs(active: torch.Tensor) -> int:
    """(input, output) pairs of a k3 submanifold conv on this active set: each active cell times its active
    neighbours (itself included)."""
    a = active.unsqueeze(1).float()
    neighbours = F.conv3d(a, torch.ones(1, 1, 3, 3, 3, device=a.device), padding=1)
    return int((neighbours * a).sum())


def minkowski_flops(preset, levels: list[torch.Tensor], in_channels: int) -> int:
    """Forward + backward FLOPs of the MinkowskiEngine convolutions of one encoder pass (k2 s2 steps only when
    they run in MinkowskiEngine; with `dense_strided_steps` they are dense convs that dense_flops counts)."""
    dims, depths = preset.stage_dims, preset.stage_depths
    total = 0
    for i in range(preset.sparse_stages):
        total += depths[i] * 2 * submanifold_pairs(levels[i + 1]) * dims[i] * dims[i]
        if not preset.dense_strided_steps:
            c_in = in_channels if i == 0 else dims[i - 1]
            total += 2 * int(levels[i].sum()) * c_in * dims[i]  # a k2 s2 step: one pair per active input cell
    return 3 * total


def loader_wait(step, data, device: torch.device, warmup: int, steps: int) -> dict:
    """Run `step(batch)` on PretrainData's stream; the share of wall time spent waiting for the next batch (and
    enqueueing its copy to the device) after `warmup` batches (worker start-up excluded)."""
    batches = iter(data.train_batches(0))
    waited, start = 0.0, None
    for i in range(warmup + steps):
        if i == warmup:
            sync(device)
            waited, start = 0.0, time.perf_counter()
        t = time.perf_counter()
        batch = next(batches).to(device, non_blocking=True)
        waited += time.perf_counter() - t
        step(batch)
    sync(device)
    total = time.perf_counter() - start
    return {"wait_share": waited / total, "loop_ms_per_step": 1000 * total / steps}
