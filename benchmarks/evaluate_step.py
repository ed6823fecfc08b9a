"""Time `rsna-phase0 evaluate`'s parts on labelled synthetic heads, and plan a whole evaluate call from them:
generating a head, one fine-tune step (full and probe, the real finetune() with its sampler, AMP and optimizer)
and scoring one held-out case; the plan multiplies them out for seeds x fractions x modes x 2 inits.

GPU (the acceptance run's plan, about a minute):
    python benchmarks/evaluate_step.py --device cuda --preset kaggle --json benchmarks/results/evaluate_step_gpu.json
CPU:
    python benchmarks/evaluate_step.py --device cpu --preset smoke kaggle --steps 3
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from throughput_measure import sync as _sync
from torch.utils.flop_counter import FlopCounterMode

from rsna_phase0.atomic import write_json_atomic


def time_synth(size_mm: float, heads: int) -> float:
    from rsna_phase0.data.synth_labels import synth_labelled_head

    times = []
    for i in range(heads):
        start = time.perf_counter()
        synth_labelled_head(np.random.default_rng([0, 2, i]), "mri", size_mm, aneurysm=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_preset(name: str, args, data_dir: Path) -> dict:
    from rsna_phase0.evaluation.experiment import load_cases, resolve_device
    from rsna_phase0.evaluation.finetune import Budget, Runtime, build_model, finetune, score
    from rsna_phase0.evaluation.geometry import inference_side, size_multiple
    from rsna_phase0.evaluation.sampling import SegmentationCrops
    from rsna_phase0.models.encoder_file import export_dense_encoder
    from rsna_phase0.models.pretrainer import Pretrainer
    from rsna_phase0.presets import get_preset
    from rsna_phase0.training.amp import resolve_amp

    device = resolve_device(args.device)
    torch.manual_seed(0)
    encoder = export_dense_encoder(Pretrainer(get_preset(name)))
    preset = encoder.preset
    start = time.perf_counter()
    cases, modality = load_cases(data_dir, "segmentation", "mri", preset, "MRA")
    load_s = (time.perf_counter() - start) / len(cases)
    side = inference_side([c.shape for c in cases], size_multiple(encoder), args.max_inference_size, preset.input_size)
    runtime = Runtime(device, resolve_amp(args.amp, device), side)
    batch = args.batch_size or preset.batch_size
    out = {"preset": name, "batch_size": batch, "inference_side": side, "amp": runtime.amp.name, "load_s": load_s}
    for mode in ("full", "probe"):
        model = build_model("segmentation", mode, modality, copy.deepcopy(encoder), seed=0)
        sampler = SegmentationCrops(cases, preset.input_size, np.random.default_rng(0))
        with FlopCounterMode(display=False) as flops:  # the warm-up steps, counted
            finetune(model, sampler, "segmentation", Budget(2, batch, 1e-3, 1e-3), runtime)
        out[f"{mode}_step_gflop"] = flops.get_total_flops() / 2 / 1e9
        _sync(device)
        start = time.perf_counter()
        finetune(model, sampler, "segmentation", Budget(args.steps, batch, 1e-3, 1e-3), runtime)
        _sync(device)
        out[f"{mode}_step_s"] = (time.perf_counter() - start) / args.steps
        if device.type == "cuda":
            out[f"{mode}_peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    with FlopCounterMode(display=False) as flops:  # the warm-up case, counted
        score(model, cases[:1], "segmentation", runtime)
    out["score_gflop_per_case"] = flops.get_total_flops() / 1e9
    _sync(device)
    start = time.perf_counter()
    score(model, cases, "segmentation", runtime)
    _sync(device)
    out["score_s_per_case"] = (time.perf_counter() - start) / len(cases)
    runs = args.seeds * len(args.fractions) * 2  # x 2 inits, per mode
    per_mode = [
        runs * (args.plan_steps * out[f"{m}_step_s"] + args.plan_test * out["score_s_per_case"])
        for m in ("full", "probe")
    ]
    out["plan"] = {
        "steps": args.plan_steps,
        "fine_tunes": 2 * runs,
        "held_out": args.plan_test,
        "seconds": sum(per_mode) + (args.plan_test + args.plan_train) * load_s,
    }
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--amp", default="auto", choices=["auto", "bf16", "fp16", "off"])
    parser.add_argument("--preset", nargs="+", default=["kaggle"])
    parser.add_argument("--steps", type=int, default=20, help="timed steps per mode")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--heads", type=int, default=4, help="synthetic heads to time on")
    parser.add_argument("--size-mm", type=float, default=96.0)
    parser.add_argument("--max-inference-size", type=int, default=128)
    parser.add_argument("--plan-steps", type=int, default=250, help="steps per fine-tune in the plan")
    parser.add_argument("--plan-train", type=int, default=20)
    parser.add_argument("--plan-test", type=int, default=20)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--fractions", type=float, nargs="+", default=[1.0, 0.25])
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    from rsna_phase0.data.synth_labels import synth_labelled_dataset

    results = {"synth_s_per_head": time_synth(args.size_mm, args.heads), "torch_threads": torch.get_num_threads()}
    print(f"labelled head {args.size_mm:g} mm: {results['synth_s_per_head']:.3f} s to generate (median)")
    with tempfile.TemporaryDirectory() as tmp:
        synth_labelled_dataset(tmp, n=args.heads, seed=0, size_mm=args.size_mm)
        results["presets"] = [bench_preset(name, args, Path(tmp)) for name in args.preset]
    for r in results["presets"]:
        print(
            f"{r['preset']}: batch {r['batch_size']}, amp {r['amp']}: full step {r['full_step_s'] * 1e3:.0f} ms "
            f"({r['full_step_gflop']:.0f} GFLOP), probe step {r['probe_step_s'] * 1e3:.0f} ms "
            f"({r['probe_step_gflop']:.0f} GFLOP), scoring {r['score_s_per_case'] * 1e3:.0f} ms a case "
            f"({r['score_gflop_per_case']:.0f} GFLOP) "
            f"(cube {r['inference_side']}), reading {r['load_s'] * 1e3:.0f} ms a case; plan: {r['plan']['fine_tunes']} "
            f"fine-tunes of {r['plan']['steps']} steps + scoring {r['plan']['held_out']} cases each = "
            f"{r['plan']['seconds']:.0f} s"
        )
    if args.json:
        write_json_atomic(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
