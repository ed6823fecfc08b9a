"""LayerNorm over few channels at the kaggle step's shapes: torch's kernel against its formula, forward + backward.

The stride-2 map of the kaggle preset at batch 4 (20 views) is 655,360 positions of 32 channels, normalised per
position by Densify's LayerNorm; torch's layer-norm kernel is among the step's top kernels there. This measures
whether the formula (mean, centred variance, rsqrt, affine) in plain tensor operations is faster at these shapes
(it was not on an H200: models/speedups.py gives the figures).

    python benchmarks/small_layer_norm.py            # a CUDA GPU; ~10 s
"""

from __future__ import annotations

import sys

import torch
import torch.nn.functional as F

EPS = 1e-5
SHAPES = ((20 * 32**3, 32), (20 * 16**3, 128), (20 * 8**3, 512))  # kaggle batch 4: strides 2, 4 and 8


def formula(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    mean = x.mean(-1, keepdim=True)
    centred = x - mean
    return centred * torch.rsqrt(centred.square().mean(-1, keepdim=True) + EPS) * weight + bias


def native(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    return F.layer_norm(x, (x.shape[-1],), weight, bias, EPS)


def forward_backward_ms(fn, x, weight, bias, steps: int = 20) -> float:
    for _ in range(3):
        fn(x, weight, bias).sum().backward()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(steps):
        fn(x, weight, bias).sum().backward()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / steps


def main() -> int:
    if not torch.cuda.is_available():
        sys.exit("small_layer_norm.py measures a CUDA GPU; torch sees none")
    for rows, channels in SHAPES:
        x = torch.randn(rows, channels, device="cuda", requires_grad=True)
        weight = torch.ones(channels, device="cuda", requires_grad=True)
        bias = torch.zeros(channels, device="cuda", requires_grad=True)
        difference = (native(x, weight, bias) - formula(x, weight, bias)).abs().max().item()
        print(
            f"{rows} x {channels}: torch {forward_backward_ms(native, x, weight, bias):.3f} ms, "
            f"formula {forward_backward_ms(formula, x, weight, bias):.3f} ms (max difference {difference:.1e})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
