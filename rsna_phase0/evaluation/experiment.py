"""The comparison grid: for each seed, label fraction and mode, fine-tune the exported encoder and the same
architecture from random initialisation under the same budget (steps, batch size, data order, head
initialisation), and score both on the same held-out cases.

Cases are read and preprocessed once. The results file is rewritten (atomically) after every fine-tune, so a run
cut short keeps what it finished ("complete": false until the end).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from rsna_phase0.atomic import write_json_atomic
from rsna_phase0.evaluation import DEFAULT_LR, DEFAULT_STEPS
from rsna_phase0.evaluation.cases import find_cases
from rsna_phase0.evaluation.finetune import Budget, Runtime, build_model, finetune, random_encoder, score
from rsna_phase0.evaluation.geometry import inference_side, size_multiple
from rsna_phase0.evaluation.heads import MODES
from rsna_phase0.evaluation.metrics import mean_sd
from rsna_phase0.evaluation.preprocess import Case, detect_modality, load_case
from rsna_phase0.evaluation.sampling import ClassificationVolumes, SegmentationCrops
from rsna_phase0.evaluation.split import holdout_split, label_subset
from rsna_phase0.models.dense_encoder import DenseEncoder
from rsna_phase0.models.encoder_file import load_dense_encoder
from rsna_phase0.presets import Preset
from rsna_phase0.training.amp import resolve_amp

RESULTS_FORMAT = "rsna_phase0.evaluate"
RESULTS_VERSION = 1
INITS = ("pretrained", "random")
HEADLINE = {"segmentation": "dice_aneurysm", "classification": "auc"}
METRICS = {"segmentation": ("dice_aneurysm", "dice_vessel"), "classification": ("auc",)}


@dataclass(frozen=True)
class EvaluateSettings:
    task: str
    seeds: int = 3
    holdout: int | str = 20
    label_fractions: tuple[float, ...] = (1.0, 0.25)
    modes: tuple[str, ...] = MODES
    steps: int = DEFAULT_STEPS
    batch_size: int | None = None  # None: the encoder preset's
    lr: float = DEFAULT_LR
    encoder_lr: float | None = None  # None: lr
    device: str = "auto"
    amp: str = "auto"
    modality: str = "auto"
    mri_sequence: str | None = None  # None: each image's folder name, as pre-training reads it
    max_inference_size: int = 128


def resolve_device(setting: str) -> torch.device:
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if setting.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {setting}: this torch ({torch.__version__}) sees no CUDA GPU; use cpu or auto")
    return torch.device(setting)


def load_cases(
    data_dir, task: str, modality: str, preset: Preset, mri_sequence: str | None = None
) -> tuple[list[Case], str]:
    files = find_cases(data_dir, task)
    if modality == "auto":
        modality = detect_modality(files[0].image)
    return [load_case(f, modality, preset, mri_sequence) for f in files], modality


def summarise(runs: list[dict], task: str) -> list[dict]:
    """One row per (init, mode, label fraction): mean, sd and the per-seed values of every metric."""
    rows = []
    keys = sorted({(r["mode"], r["label_fraction"], r["init"]) for r in runs}, key=lambda k: (k[0], -k[1], k[2]))
    for mode, fraction, init in keys:
        group = [r for r in runs if (r["mode"], r["label_fraction"], r["init"]) == (mode, fraction, init)]
        row = {"init": init, "mode": mode, "label_fraction": fraction, "seeds": [r["seed"] for r in group]}
        for metric in METRICS[task]:
            values = [r["metrics"][metric] for r in group]
            mean, sd = mean_sd(values)
            row[metric] = {"mean": mean, "sd": sd, "values": values}
        rows.append(row)
    return rows


@dataclass
class Plan:
    """What every fine-tune of one evaluate call shares."""

    task: str
    pretrained: DenseEncoder
    modality: str
    cases: dict[str, Case]
    train: list[str]
    test: list[str]
    budget: Budget
    runtime: Runtime


def make_plan(encoder_path, data_dir, settings: EvaluateSettings) -> Plan:
    """Load the encoder and the cases, split them, and fix the budget, device and inference cube."""
    pretrained = load_dense_encoder(encoder_path, map_location="cpu")
    preset = pretrained.preset
    device = resolve_device(settings.device)
    amp = resolve_amp(settings.amp, device)
    cases, modality = load_cases(data_dir, settings.task, settings.modality, preset, settings.mri_sequence)
    train, test = holdout_split({c.name: c.aneurysm for c in cases}, settings.holdout)
    by_name = {c.name: c for c in cases}
    if settings.task == "classification" and len({by_name[n].aneurysm for n in test}) < 2:
        raise ValueError(f"the {len(test)} held-out cases hold one class only: AUC needs heads with and without")
    multiple = size_multiple(pretrained)
    side = inference_side([c.shape for c in cases], multiple, settings.max_inference_size, preset.input_size)
    budget = Budget(
        steps=settings.steps,
        batch_size=settings.batch_size or preset.batch_size,
        lr=settings.lr,
        encoder_lr=settings.encoder_lr if settings.encoder_lr is not None else settings.lr,
    )
    return Plan(settings.task, pretrained, modality, by_name, train, test, budget, Runtime(device, amp, side))


def settings_record(plan: Plan, settings: EvaluateSettings, encoder_path, data_dir) -> dict:
    """Every setting that shaped the figures, as JSON."""
    preset, device = plan.pretrained.preset, plan.runtime.device
    return {
        **asdict(settings),
        "holdout": settings.holdout if isinstance(settings.holdout, int) else str(settings.holdout),
        "encoder": str(encoder_path),
        "data": str(data_dir),
        "preset": preset.name,
        "modality": plan.modality,
        "target_spacing_mm": preset.target_spacing_mm,
        "crop_size": preset.input_size,
        "inference_side": plan.runtime.side,
        "budget": {**asdict(plan.budget), "warmup_steps": plan.budget.warmup_steps},
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "amp": plan.runtime.amp.name,
        "torch": torch.__version__,
    }


def fine_tune_and_score(plan: Plan, seed: int, fraction: float, subset: list[str], mode: str, init: str) -> dict:
    """One arm: a fresh head on the pretrained encoder (a copy) or a random one; its held-out figures."""
    started = time.perf_counter()
    pretrained = plan.pretrained
    encoder = copy.deepcopy(pretrained) if init == "pretrained" else random_encoder(pretrained, seed)
    model = build_model(plan.task, mode, plan.modality, encoder, seed)
    data_rng = np.random.default_rng([seed, round(fraction * 1_000_000)])  # the same for both inits and modes
    train_cases = [plan.cases[n] for n in subset]
    if plan.task == "segmentation":
        sampler = SegmentationCrops(train_cases, pretrained.preset.input_size, data_rng)
    else:
        sampler = ClassificationVolumes(train_cases, plan.runtime.side, data_rng)
    losses = finetune(model, sampler, plan.task, plan.budget, plan.runtime)
    metrics = score(model, [plan.cases[n] for n in plan.test], plan.task, plan.runtime)
    tail = max(1, len(losses) // 10)
    return {
        "seed": seed,
        "label_fraction": fraction,
        "n_train": len(subset),
        "mode": mode,
        "init": init,
        "metrics": metrics,
        "loss_first": float(np.mean(losses[:tail])),
        "loss_last": float(np.mean(losses[-tail:])),
        "seconds": round(time.perf_counter() - started, 2),
    }


def run_evaluation(
    encoder_path, data_dir, settings: EvaluateSettings, out_dir, echo: Callable[[str], None] = print
) -> dict:
    """Run the grid and write OUT/evaluate.json as it goes; returns the final payload (see report.py for the rest)."""
    started = time.perf_counter()
    plan = make_plan(encoder_path, data_dir, settings)
    record = settings_record(plan, settings, encoder_path, data_dir)
    payload = {
        "format": RESULTS_FORMAT,
        "version": RESULTS_VERSION,
        "complete": False,
        "task": plan.task,
        "headline": HEADLINE[plan.task],
        "settings": record,
        "split": {"train": plan.train, "test": plan.test},
        "subsets": [],
        "runs": [],
    }
    results_path = Path(out_dir) / "evaluate.json"
    echo(
        f"{plan.task} on {len(plan.cases)} {plan.modality} cases ({len(plan.train)} train, {len(plan.test)} held "
        f"out), preset {record['preset']}, {settings.seeds} seeds x fractions {list(settings.label_fractions)} x "
        f"modes {list(settings.modes)} x {list(INITS)}: {plan.budget.steps} steps of batch {plan.budget.batch_size} "
        f"each, on {record['device']} (amp {record['amp']}), inference cube {plan.runtime.side}"
    )
    positive = {name: case.aneurysm for name, case in plan.cases.items()}
    for seed in range(settings.seeds):
        for fraction in settings.label_fractions:
            subset = label_subset(plan.train, positive, fraction, seed)
            payload["subsets"].append({"seed": seed, "label_fraction": fraction, "cases": subset})
            for mode in settings.modes:
                for init in INITS:
                    run = fine_tune_and_score(plan, seed, fraction, subset, mode, init)
                    payload["runs"].append(run)
                    write_json_atomic(results_path, payload)
                    shown = ", ".join(f"{k} {v:.3f}" for k, v in run["metrics"].items())
                    echo(
                        f"seed {seed} labels {fraction:g} ({len(subset)}) {mode:5s} {init:10s} {shown} "
                        f"(loss {run['loss_first']:.3f} -> {run['loss_last']:.3f}, {run['seconds']:.1f} s)"
                    )
    payload["summary"] = summarise(payload["runs"], plan.task)
    payload["complete"] = True
    payload["seconds"] = round(time.perf_counter() - started, 1)
    write_json_atomic(results_path, payload)
    return payload
