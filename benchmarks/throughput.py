"""Training throughput of the pretrainer, in one table: where the step's time goes and what the sparse path buys.

GPU (the numbers that matter; about 5 minutes on an H100 for the defaults):
    python benchmarks/throughput.py --device cuda --json benchmarks/results/throughput_gpu.json
CPU check of the script itself (under a minute):
    python benchmarks/throughput.py --device cpu --preset smoke

Batches come from the real loaders: PretrainData over synthetic NIfTI files (rsna_phase0.data.synth, at the users'
sizes on a GPU run) written into a temporary folder, with and without the blosc2 cache. Rows, per preset and batch
size:
- `train`: the full training step (forward, backward, AdamW step) under the chosen autocast, with the shares of
  that step spent in the sparse stages, the WaveFormer stages and decoder + losses (each timed alone, forward +
  backward; what is left is the optimizer and glue), the share of a loader-fed loop spent waiting for data
  (.nii.gz and cache), and executed FLOP/s against this device's measured matmul peak;
- `ME` / `oracle` at each mask ratio (every view masked at that ratio), background off and on: the same model with
  its encoder's sparse stages on MinkowskiEngine, or replaced by the masked-dense oracle (rsna_phase0/models/masked_dense_oracle.py:
  dense Conv3d x mask, SparK's formulation, same weights); `vs oracle` is the ME step over the oracle's;
- `ME ...` variants of the sparse path: MinkowskiEngine's own k2 s2 steps, its cuBLAS convolution mode, TF32.
Figures go in issue notes and the README, never in tests.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from throughput_data import LoaderData
from throughput_measure import (
    active_sets,
    autocast,
    dense_flops,
    device_from,
    loader_wait,
    matmul_peak,
    median_ms,
    minkowski_flops,
    sync,
)

from rsna_phase0.atomic import write_json_atomic

COLUMNS = [
    ("preset", "preset", "{}"),
    ("batch", "B", "{}"),
    ("config", "config", "{}"),
    ("active_pct", "active%", "{:.0f}"),
    ("step_ms", "step ms", "{:.1f}"),
    ("samples_per_s", "samples/s", "{:.1f}"),
    ("views_per_s", "views/s", "{:.1f}"),
    ("peak_gib", "peak GiB", "{:.2f}"),
    ("sparse_pct", "sparse%", "{:.0f}"),
    ("wave_pct", "wave%", "{:.0f}"),
    ("decoder_pct", "dec%", "{:.0f}"),
    ("wait_nii_pct", "wait nii%", "{:.0f}"),
    ("wait_cache_pct", "wait cache%", "{:.0f}"),
    ("tflops", "TFLOP/s", "{:.2f}"),
    ("peak_pct", "%peak", "{:.1f}"),
    ("vs_oracle", "vs oracle", "{:.2f}x"),
]


def train_step(model, opt, device: torch.device, amp: str):
    def step(batch):
        with autocast(device, amp):
            loss = model(batch)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def forward_backward(model, batch, device: torch.device, amp: str):
    def run():
        with autocast(device, amp):
            loss = model(batch)["loss"]
        loss.backward()
        model.zero_grad(set_to_none=True)

    return run


def build(preset, device: torch.device):
    from rsna_phase0.models.pretrainer import Pretrainer

    torch.manual_seed(0)
    model = Pretrainer(preset).to(device).train()
    return model, torch.optim.AdamW(model.parameters(), lr=1e-4)


def oracle_of(model, device: torch.device):
    """The same pretrainer (same weights) with the masked-dense oracle as its encoder."""
    from rsna_phase0.models.masked_dense_oracle import MaskedDenseEncoder
    from rsna_phase0.models.pretrainer import Pretrainer

    oracle = Pretrainer(model.preset).to(device).train()
    oracle.load_state_dict(model.state_dict())
    oracle.encoder = MaskedDenseEncoder.from_sparse(model.encoder)
    return oracle, torch.optim.AdamW(oracle.parameters(), lr=1e-4)


def remasked(batch, grid: int, ratio: float, seed: int = 0):
    """The batch with every view (global and local) masked at `ratio` on the patch grid."""
    from rsna_phase0.mim_masking import random_patch_mask

    rng = np.random.default_rng(seed)

    def masks(n: int) -> torch.Tensor:
        stacked = np.stack([random_patch_mask(grid, ratio, rng) for _ in range(n)])
        return torch.from_numpy(stacked).to(batch.global_mask.device)

    return replace(batch, global_mask=masks(batch.global_mask.shape[0]), local_mask=masks(batch.local_mask.shape[0]))


def views_of(batch):
    return torch.cat([batch.global_image, batch.local_image]), torch.cat([batch.global_mask, batch.local_mask])


def part_shares(model, batch, device: torch.device, amp: str, warmup: int, steps: int) -> dict[str, float]:
    """Forward + backward ms of the sparse stages, the WaveFormer stages and decoder + losses, each alone."""
    encoder, n = model.encoder, model.preset.sparse_stages
    images, masks = views_of(batch)
    with torch.no_grad(), autocast(device, amp):
        features = encoder(images, masks, batch.modality)
    sparse_out = features.maps[n - 1].detach().requires_grad_(True)
    maps = [m.detach().requires_grad_(True) for m in features.maps]

    def backward(outputs):
        sum(o.float().mean() for o in outputs).backward()
        model.zero_grad(set_to_none=True)

    def sparse():
        with autocast(device, amp):
            out = encoder.sparse_maps(images, masks, batch.modality)
        backward(out)

    def wave():
        with autocast(device, amp):
            out = encoder.wave_maps(sparse_out, features.masks[n:])
        backward(out)

    def decoder():
        with autocast(device, amp):
            loss = model.losses(batch, model.decoder(maps, features.masks, batch.modality))["loss"]
        backward([loss])

    return {
        name: median_ms(fn, device, warmup, steps)
        for name, fn in (("sparse", sparse), ("wave", wave), ("decoder", decoder))
    }


def timed_row(model, opt, batch, device, args, peak_flops: float) -> dict:
    """Step time, throughput, peak memory and executed FLOP/s of one model on one batch."""
    preset = model.preset
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    step_ms = median_ms(lambda: train_step(model, opt, device, args.amp)(batch), device, args.warmup, args.steps)
    images, masks = views_of(batch)
    levels = active_sets(preset, images, masks)
    flops = dense_flops(forward_backward(model, batch, device, args.amp))
    if hasattr(model.encoder, "sparse_maps"):  # the MinkowskiEngine encoder (the oracle's convs are dense)
        flops += minkowski_flops(preset, levels, images.shape[1])
    views = images.shape[0]
    return {
        "active_pct": 100 * float(levels[0].float().mean()),
        "step_ms": step_ms,
        "samples_per_s": batch.batch_size / (step_ms / 1000),
        "views_per_s": views / (step_ms / 1000),
        "peak_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
        "tflops": flops / (step_ms / 1000) / 1e12,
        "peak_pct": 100 * flops / (step_ms / 1000) / peak_flops,
        "flops_per_step": flops,
    }


def train_row(preset, batch_size, data: LoaderData, device, args, peak_flops) -> dict:
    preset = preset.with_overrides(batch_size=batch_size)
    batch = data.first_batch(preset, args.modality).to(device)
    model, opt = build(preset, device)
    row = {"preset": preset.name, "batch": batch_size, "config": "train"}
    row.update(timed_row(model, opt, batch, device, args, peak_flops))
    parts = part_shares(model, batch, device, args.amp, args.warmup, args.steps)
    row.update({f"{k}_pct": 100 * v / row["step_ms"] for k, v in parts.items()})
    row["parts_ms"] = parts
    if not args.no_loader:
        step = train_step(model, opt, device, args.amp)
        for cached in (False, True):
            stream = data.pretrain_data(
                preset, cached=cached, num_workers=args.workers, steps=args.loader_warmup + args.loader_steps
            )
            wait = loader_wait(step, stream, device, args.loader_warmup, args.loader_steps)
            row[f"wait_{'cache' if cached else 'nii'}_pct"] = 100 * wait["wait_share"]
    return row


def oracle_rows(preset, batch_size, data: LoaderData, device, args, peak_flops) -> list[dict]:
    rows = []
    base = preset.with_overrides(batch_size=batch_size)
    loaded = data.first_batch(base, args.modality).to(device)
    for ratio in args.ratios:
        batch = remasked(loaded, base.grid, ratio)
        for background in (None, 0.0):
            variant = base.with_overrides(background_threshold=background)
            model, opt = build(variant, device)
            oracle, oracle_opt = oracle_of(model, device)
            label = f"mask {ratio:.2f} bg {'on' if background is not None else 'off'}"
            me = {"preset": base.name, "batch": batch_size, "config": f"ME {label}"}
            me.update(timed_row(model, opt, batch, device, args, peak_flops))
            ref = {"preset": base.name, "batch": batch_size, "config": f"oracle {label}"}
            ref.update(timed_row(oracle, oracle_opt, batch, device, args, peak_flops))
            me["vs_oracle"] = me["step_ms"] / ref["step_ms"]
            rows += [me, ref]
            del model, opt, oracle, oracle_opt
    return rows


def variant_rows(preset, batch_size, data: LoaderData, device, args, peak_flops) -> list[dict]:
    """The sparse path's options on the preset's own masks (background on), against the preset's defaults."""
    base = preset.with_overrides(batch_size=batch_size)
    batch = data.first_batch(base, args.modality).to(device)
    variants = [
        ("ME k2s2 steps", {"dense_strided_steps": False}, False),
        ("ME copy_gemm", {"sparse_conv_mode": "copy_gemm"}, False),
    ]
    if device.type == "cuda":
        variants += [("ME tf32", {}, True), ("ME copy_gemm tf32", {"sparse_conv_mode": "copy_gemm"}, True)]
    rows = []
    for label, overrides, tf32 in variants:
        previous = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = tf32  # MinkowskiEngine's cuBLAS calls use torch's handle settings
        try:
            model, opt = build(base.with_overrides(**overrides), device)
            row = {"preset": base.name, "batch": batch_size, "config": label}
            row.update(timed_row(model, opt, batch, device, args, peak_flops))
        finally:
            torch.backends.cuda.matmul.allow_tf32 = previous
        rows.append(row)
        del model, opt
    return rows


def format_table(rows: list[dict], columns=COLUMNS, left: int = 3) -> str:
    """A Markdown table of `rows` in `columns` (key, title, format); the first `left` columns left-aligned."""
    cells = [[title for _, title, _ in columns]]
    for row in rows:
        cells.append([fmt.format(row[key]) if row.get(key) is not None else "-" for key, _, fmt in columns])
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    lines = []
    for n, r in enumerate(cells):
        lines.append(
            "| "
            + " | ".join(c.ljust(w) if i < left else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
            + " |"
        )
        if n == 0:
            lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--preset", nargs="+", default=None, help="default: kaggle production (GPU), smoke (CPU)")
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=None, help="default: each preset's own")
    parser.add_argument("--amp", choices=["bf16", "fp16", "none"], default=None, help="default: bf16 (GPU), none (CPU)")
    parser.add_argument("--modality", choices=["mri", "ct"], default="mri", help="modality of the timed batches")
    parser.add_argument("--warmup", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--workers", type=int, default=min(4, max((os.cpu_count() or 2) - 1, 1)), help="loader workers")
    parser.add_argument("--loader-warmup", type=int, default=2, help="loader-fed steps not timed (worker start-up)")
    parser.add_argument("--loader-steps", type=int, default=None)
    parser.add_argument(
        "--data-sizes", choices=["small", "users"], default=None, help="default: users (GPU), small (CPU)"
    )
    parser.add_argument("--ratios", nargs="+", type=float, default=[0.6, 0.75])
    parser.add_argument("--no-loader", action="store_true", help="skip the data-wait measurement")
    parser.add_argument("--no-oracle", action="store_true", help="skip the masked-dense oracle comparison")
    parser.add_argument("--no-variants", action="store_true", help="skip the sparse-path variants")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here (atomically)")
    args = parser.parse_args(argv)
    gpu = args.device.startswith("cuda")
    args.preset = args.preset or (["kaggle", "production"] if gpu else ["smoke"])
    args.amp = args.amp or ("bf16" if gpu else "none")
    args.warmup = args.warmup if args.warmup is not None else (3 if gpu else 1)
    args.steps = args.steps if args.steps is not None else (10 if gpu else 2)
    args.loader_steps = args.loader_steps if args.loader_steps is not None else (8 if gpu else 3)
    args.data_sizes = args.data_sizes or ("users" if gpu else "small")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from rsna_phase0.presets import get_preset

    device = device_from(args.device)
    peak_flops, peak_what = matmul_peak(device)
    info = {
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "amp": args.amp,
        "peak_tflops": peak_flops / 1e12,
        "peak_measured_by": peak_what,
        "loader_workers": args.workers,
        "data_sizes": args.data_sizes,
    }
    print(f"# {json.dumps(info)}", flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="rsna_phase0_throughput_") as tmp:
        data = LoaderData.create(Path(tmp), args.data_sizes, workers=max(args.workers, 1))
        info.update(data_write_s=data.seconds_to_write, cache_build_s=data.seconds_to_cache)
        print(f"# data: written in {data.seconds_to_write:.1f} s, cached in {data.seconds_to_cache:.1f} s", flush=True)
        for name in args.preset:
            preset = get_preset(name)
            for batch_size in args.batch_sizes or [preset.batch_size]:
                sections = [train_row]
                sections += [] if args.no_oracle else [oracle_rows]
                sections += [] if args.no_variants else [variant_rows]
                for section in sections:
                    try:
                        produced = section(preset, batch_size, data, device, args, peak_flops)
                    except torch.cuda.OutOfMemoryError:
                        produced = {"preset": name, "batch": batch_size, "config": f"{section.__name__}: out of memory"}
                        torch.cuda.empty_cache()
                    for row in produced if isinstance(produced, list) else [produced]:
                        rows.append(row)
                        print(f"# {json.dumps(row)}", flush=True)
                    sync(device)
    print()
    print(
        f"device {info['device']}, torch {info['torch']}, autocast {args.amp}, peak {info['peak_tflops']:.1f} TFLOP/s ({peak_what})"
    )
    print(format_table(rows))
    if args.json:
        write_json_atomic(args.json, {"info": info, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
