"""The kaggle decoder's forward + backward with its norm + GELU pairs three ways, and the kernels that take its time.

The decoder is about half of the kaggle step's GPU time on an H200 (issue 18), and cuDNN's nchwToNhwc / nhwcToNchw
transposes around its full-resolution convolution are the step's largest kernels: cuDNN convolves channels-last
and converts a (B, C, D, H, W) map on the way in and out, and torch's GroupNorm reads and writes (B, C, D, H, W)
maps only. At the kaggle step's shapes (batch 4: 20 views) this measures the decoder as it is (`ncdhw`), with its
maps channels-last and the norm as its formula in torch operations (`cl-formula`: float32 statistics from
mean and mean-square reductions, autograd's backward), and with models/norm_gelu.py's Triton kernels (`fused`,
the `fused_norm_gelu` speed-up). The same weights and inputs in each; the prediction's mean and std are printed so
that a layout that changed the function shows.

    python benchmarks/decoder_layouts.py                  # a CUDA GPU, ~30 s
    python benchmarks/decoder_layouts.py --device cpu --preset smoke --views 2 --amp none   # a check of the script
"""

from __future__ import annotations

import argparse
import json
import sys

import torch
from throughput_measure import back_to_back_ms

from rsna_phase0.models.decoder import InstanceGroupNorm, SparkDecoder
from rsna_phase0.presets import get_preset

LAYOUTS = ("ncdhw", "cl-formula", "fused")


def decoder_inputs(preset, views: int, device, layout: str):
    """Encoder maps (finest first) and masks at the decoder's scales, as the pretrainer hands them over."""
    maps, masks = [], []
    size = preset.input_size
    for dim in preset.stage_dims:
        size //= 2
        x = torch.randn(views, dim, size, size, size, device=device)
        if layout == "cl-formula":  # (the fused decoder converts its inputs itself)
            x = x.contiguous(memory_format=torch.channels_last_3d)
        maps.append(x)
        masks.append(torch.rand(views, size, size, size, device=device) < 0.6)
    return maps, masks


class ChannelsLastFormulaNorm(InstanceGroupNorm):
    """The decoder's InstanceNorm on a channels-last map as its formula: mean and mean square reduced in float32
    from the map's dtype (no float32 copy of the map), the affine in float32, autograd's backward."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = x.permute(0, 2, 3, 4, 1)  # (B, D, H, W, C): a view of a channels-last map
        dims = (1, 2, 3)
        positions = tokens.shape[1] * tokens.shape[2] * tokens.shape[3]
        mean = tokens.mean(dim=dims, keepdim=True, dtype=torch.float32)
        square = torch.linalg.vector_norm(tokens, dim=dims, keepdim=True, dtype=torch.float32).square() / positions
        scale = torch.rsqrt((square - mean.square()).clamp_min(0) + self.eps) * self.weight.float()
        shift = self.bias.float() - mean * scale
        return torch.addcmul(shift, tokens, scale).to(x.dtype).permute(0, 4, 1, 2, 3)


def decoder_for(preset, layout: str, device):
    speedups = tuple(s for s in preset.speedups if s != "fused_norm_gelu")
    if layout == "fused":
        speedups += ("fused_norm_gelu",)
    decoder = SparkDecoder(preset.with_overrides(speedups=speedups))
    if layout == "cl-formula":
        for block in decoder.up_blocks:
            for index in (0, 3):
                block.body[index] = ChannelsLastFormulaNorm(block.body[index].num_channels)
    return decoder.to(device)


def step(decoder, maps, masks, amp, modality="mri"):
    with torch.autocast(maps[0].device.type, dtype=amp, enabled=amp is not None):
        out = decoder(maps, masks, modality)
        loss = out.prediction.float().square().mean()
    loss.backward()


def top_kernels(fn, device, n: int = 12) -> list[tuple[str, float]]:
    if device.type != "cuda":
        return []
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    rows = [(e.key, e.device_time_total / 1000) for e in prof.key_averages() if e.device_time_total > 0]
    return sorted(rows, key=lambda r: -r[1])[:n]


def measure(preset, layout: str, amp: str, weights: dict, views: int, steps: int, device) -> dict:
    decoder = decoder_for(preset, layout, device)
    decoder.load_state_dict(weights)
    torch.manual_seed(1)
    maps, masks = decoder_inputs(preset, views, device, layout)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "none": None}[amp]
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    ms = back_to_back_ms(lambda: step(decoder, maps, masks, dtype), device, 3, steps)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
    with torch.no_grad(), torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
        prediction = decoder(maps, masks, "mri").prediction.float()
    return {
        "amp": amp,
        "layout": layout,
        "ms": round(ms, 2),
        "peak_gib": None if peak is None else round(peak, 2),
        "kernels": top_kernels(lambda: step(decoder, maps, masks, dtype), device),
        "prediction_std": prediction.std().item(),
        "prediction_mean": prediction.mean().item(),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--preset", default="kaggle")
    parser.add_argument("--views", type=int, default=20, help="views per step (kaggle batch 4 x 5 views: 20)")
    parser.add_argument("--amp", nargs="+", default=["bf16", "fp16"], choices=["bf16", "fp16", "none"])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: torch sees no CUDA GPU (--device cpu checks the script)")
    preset = get_preset(args.preset)
    results = []
    for amp in args.amp:
        torch.manual_seed(0)
        weights = decoder_for(preset, "ncdhw", device).state_dict()  # the same weights in every layout
        for layout in LAYOUTS:
            row = measure(preset, layout, amp, weights, args.views, args.steps, device)
            results.append(row)
            print(
                f"{amp} {layout:12s} {row['ms']:8.2f} ms  peak {row['peak_gib']} GiB  "
                f"prediction mean {row['prediction_mean']:+.4f} std {row['prediction_std']:.4f}"
            )
            for name, kernel_ms in row["kernels"]:
                print(f"      {kernel_ms:8.2f} ms  {name[:110]}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
