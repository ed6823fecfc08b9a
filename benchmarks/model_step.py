"""Time one pre-training step (forward + backward + AdamW step) and its peak memory, per preset and batch size.

GPU (the numbers that matter):
    python benchmarks/model_step.py --device cuda --preset kaggle production --batch-sizes 1 2 4 8 --amp bf16 \
        --oracle --json benchmarks/results/model_step_gpu.json
CPU check of the script itself (seconds):
    python benchmarks/model_step.py --device cpu --preset smoke --batch-sizes 1 2 --steps 3

`--oracle` also times the encoder alone against the masked-dense oracle (rsna_phase0/models/masked_dense_oracle.py: dense
Conv3d x mask, SparK's formulation) on the same batch, to show what MinkowskiEngine costs or saves.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from throughput_measure import autocast as _autocast  # the benchmarks share one timing toolkit
from throughput_measure import sync as _sync

from rsna_phase0.atomic import write_json_atomic

ROOT = Path(__file__).resolve().parents[1]


def _timed(fn, device: torch.device, warmup: int, steps: int) -> list[float]:
    times = []
    for i in range(warmup + steps):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return times


def bench_step(
    preset, batch_size: int, device: torch.device, amp: str, warmup: int, steps: int, modality: str, oracle: bool
):
    from rsna_phase0.models.blob_batch import synthetic_batch
    from rsna_phase0.models.pretrainer import Pretrainer

    torch.manual_seed(0)
    model = Pretrainer(preset).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    scaler = torch.amp.GradScaler(device.type) if amp == "fp16" else None
    batch = synthetic_batch(preset, batch_size, modality=modality).to(device)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)

    def step():
        with _autocast(device, amp):
            loss = model(batch)["loss"]
        opt.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        else:
            loss.backward()
            opt.step()

    times = _timed(step, device, warmup, steps)
    row = {
        "preset": preset.name,
        "batch_size": batch_size,
        "views": batch_size * (1 + preset.n_local),
        "amp": amp,
        "step_ms": 1000 * statistics.median(times),
        "peak_mem_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
    }
    if oracle:
        row.update(bench_encoder_vs_oracle(model, batch, device, amp, warmup, steps))
    return row


def bench_encoder_vs_oracle(model, batch, device, amp, warmup, steps) -> dict:
    from rsna_phase0.models.masked_dense_oracle import MaskedDenseEncoder

    images = torch.cat([batch.global_image, batch.local_image])
    masks = torch.cat([batch.global_mask, batch.local_mask])
    oracle = MaskedDenseEncoder.from_sparse(model.encoder)

    def run(encoder):
        def step():
            with _autocast(device, amp):
                maps = encoder(images, masks, batch.modality).maps
            sum(m.float().mean() for m in maps).backward()

        return 1000 * statistics.median(_timed(step, device, warmup, steps))

    return {"encoder_sparse_ms": run(model.encoder), "encoder_masked_dense_ms": run(oracle)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--preset", nargs="+", default=["kaggle", "production"])
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 2, 4])
    parser.add_argument("--amp", choices=["bf16", "fp16", "none"], default="bf16")
    parser.add_argument("--modality", choices=["mri", "ct"], default="mri")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--oracle", action="store_true", help="also time the encoder against the masked-dense oracle")
    parser.add_argument("--json", type=Path, default=None, help="write the rows here (atomically)")
    args = parser.parse_args(argv)

    from rsna_phase0.presets import get_preset

    device = torch.device(args.device)
    info = {
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
    }
    print(f"# {info}")
    rows = []
    for name in args.preset:
        preset = get_preset(name)
        for batch_size in args.batch_sizes:
            try:
                row = bench_step(
                    preset, batch_size, device, args.amp, args.warmup, args.steps, args.modality, args.oracle
                )
            except torch.cuda.OutOfMemoryError:
                row = {"preset": name, "batch_size": batch_size, "amp": args.amp, "error": "out of memory"}
                torch.cuda.empty_cache()
            rows.append(row)
            print(json.dumps(row), flush=True)
    if args.json:
        write_json_atomic(args.json, {"info": info, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
