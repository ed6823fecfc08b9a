"""The training step on MRI and CT batches in turn, as the trainer's sampler mixes them: step time and peak memory.

benchmarks/profile_step.py measures MRI batches only. A CUDA graph of the decoder and loss (`graph_decoder_loss`)
is captured per modality (each has its own head) and both are held, each with its own memory pool, so what it costs
in memory shows only once both modalities have run. Per variant (profile_step.py's names: opt, opt-decgraph, ...):
median step ms per modality, and the peak GiB over all steps both allocated and reserved: a graph's pool keeps
what its capture freed reserved (the replays write there) but not allocated, so for graphs the reserved peak is
the footprint to compare.

    python benchmarks/mixed_modality_step.py --device cuda --batch-sizes 4 8 --amp fp16 bf16 \
        --variants opt opt-decgraph --json OUT/mixed.json
CPU check of the script: python benchmarks/mixed_modality_step.py --device cpu --preset smoke --batch-sizes 1 \
    --amp none --steps 2
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from profile_step import Row, parse_variant, preset_of, training_step
from throughput_measure import device_from, sync

from rsna_phase0.atomic import write_json_atomic


def measure(preset_name: str, batch: int, amp: str, variant: str, device: torch.device, steps: int) -> dict:
    from rsna_phase0.models.blob_batch import synthetic_batch
    from rsna_phase0.models.pretrainer import Pretrainer

    preset = preset_of(Row("ours", preset_name, batch, amp, variant))
    batches = {m: synthetic_batch(preset, batch, modality=m, seed=i).to(device) for i, m in enumerate(("mri", "ct"))}
    torch.manual_seed(0)
    model = Pretrainer(preset).to(device).train()
    current = {"batch": None}
    fused = device.type == "cuda" and parse_variant(variant)[0] == "opt"
    step = training_step(model, lambda: model(current["batch"])["loss"], amp, device, fused)
    if device.type == "cuda":
        torch.cuda.empty_cache()  # the reserved peak starts from what this row holds
        torch.cuda.reset_peak_memory_stats(device)
    times: dict[str, list[float]] = {"mri": [], "ct": []}
    for i in range(2 + steps):  # the first round captures each modality's graphs
        for modality, b in batches.items():
            current["batch"] = b
            sync(device)
            start = time.perf_counter()
            step()
            sync(device)
            if i >= 2:
                times[modality].append(1000 * (time.perf_counter() - start))
    cuda = device.type == "cuda"
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if cuda else None
    reserved = torch.cuda.max_memory_reserved(device) / 2**30 if cuda else None
    return {
        "preset": preset_name,
        "batch": batch,
        "amp": amp,
        "variant": variant,
        **{f"{m}_ms": statistics.median(t) for m, t in times.items()},
        "peak_gib": peak,
        "peak_reserved_gib": reserved,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--preset", default="kaggle")
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[4])
    parser.add_argument("--amp", nargs="+", choices=["bf16", "fp16", "none"], default=["fp16"])
    parser.add_argument("--variants", nargs="+", default=["opt", "opt-decgraph"])
    parser.add_argument("--steps", type=int, default=5, help="timed steps per modality, after two rounds of warm-up")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    device = device_from(args.device)
    rows = []
    for batch in args.batch_sizes:
        for amp in args.amp:
            for variant in args.variants:
                try:
                    row = measure(args.preset, batch, amp, variant, device, args.steps)
                except torch.cuda.OutOfMemoryError:
                    row = {"preset": args.preset, "batch": batch, "amp": amp, "variant": variant, "error": "OOM"}
                finally:
                    gc.collect()
                    if device.type == "cuda":
                        torch.cuda.empty_cache()
                rows.append(row)
                print(json.dumps(row), flush=True)
                if args.json:
                    write_json_atomic(args.json, {"torch": torch.__version__, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
