"""Block sizes of models/norm_gelu.py's Triton kernels at the kaggle decoder's shapes, forward + backward.

Each program of the four kernels holds ELEMENTS_PER_BLOCK positions x channels with NUM_WARPS warps; this times
the fused pair at the decoder's three resolutions (kaggle, batch 4: 20 views) for a grid of both, next to torch's
GroupNorm + GELU on (B, C, D, H, W) maps, and prints the memory-traffic floor of the fused pair (its four passes
read or write 7 maps' worth of bytes) at the GPU's measured copy bandwidth.

    python benchmarks/norm_gelu_blocks.py          # a CUDA GPU with Triton, ~1 min
"""

from __future__ import annotations

import sys

import torch
from throughput_measure import back_to_back_ms

from rsna_phase0.models import norm_gelu

SHAPES = ((20, 32, 64, 64, 64), (20, 64, 32, 32, 32), (20, 128, 16, 16, 16))  # the decoder's three resolutions
ELEMENTS = (1024, 2048, 4096, 8192)
WARPS = (2, 4, 8)


def pair_ms(fn, x, weight, bias, grad, steps: int = 10) -> float:
    return back_to_back_ms(
        lambda: torch.autograd.grad(fn(x, weight, bias, 1e-5), (x, weight, bias), grad), x.device, 3, steps
    )


def copy_bandwidth() -> float:
    """Bytes per second of a large device-to-device copy (read + write)."""
    a = torch.empty(2**28, dtype=torch.uint8, device="cuda")
    b = torch.empty_like(a)
    return 2 * a.numel() / (back_to_back_ms(lambda: b.copy_(a), a.device, 3, 10) / 1000)


def main() -> int:
    if norm_gelu.fused_path(torch.device("cuda")) if torch.cuda.is_available() else "no CUDA GPU":
        sys.exit("norm_gelu_blocks.py measures the fused kernels: it needs a CUDA GPU (7.0+) and Triton")
    bandwidth = copy_bandwidth()
    print(f"copy bandwidth {bandwidth / 1e12:.2f} TB/s")
    for shape in SHAPES:
        x = torch.randn(shape, device="cuda", dtype=torch.bfloat16).contiguous(memory_format=torch.channels_last_3d)
        x.requires_grad_()
        grad = torch.randn_like(x)
        weight = torch.ones(shape[1], device="cuda", requires_grad=True)
        bias = torch.zeros(shape[1], device="cuda", requires_grad=True)
        floor = 7 * x.numel() * x.element_size() / bandwidth * 1000
        eager = pair_ms(norm_gelu.norm_gelu_eager, x.detach().contiguous().requires_grad_(), weight, bias,
                        grad.contiguous())  # fmt: skip
        print(f"{shape}: torch GroupNorm + GELU {eager:.3f} ms; fused floor {floor:.3f} ms")
        for elements in ELEMENTS:
            for warps in WARPS:
                norm_gelu.ELEMENTS_PER_BLOCK, norm_gelu.NUM_WARPS = elements, warps
                ms = pair_ms(norm_gelu.norm_gelu_fused, x, weight, bias, grad)
                print(f"    {elements:5d} elements, {warps} warps: {ms:.3f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
