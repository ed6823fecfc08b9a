"""What `rsna-phase0 model-info` reports: parameters per part, feature shapes per stage, activation memory."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rsna_phase0.models.decoder import decoder_widths
from rsna_phase0.models.geometry import size_multiple, stage_dwt_levels
from rsna_phase0.presets import Preset


@dataclass(frozen=True)
class StageShape:
    stage: int
    kind: str  # "sparse (MinkowskiEngine)" or "WaveFormer"
    channels: int
    size: int
    stride: int
    detail: str


def stage_shapes(preset: Preset) -> list[StageShape]:
    shapes = []
    levels_per_stage = stage_dwt_levels(preset)
    for i, dim in enumerate(preset.stage_dims):
        stride = 2 ** (i + 1)
        size = preset.input_size // stride
        if i < preset.sparse_stages:
            kind, detail = "sparse (MinkowskiEngine)", f"{preset.stage_depths[i]} x k3 submanifold conv"
        else:
            levels = levels_per_stage[i]
            tokens = size // 2**levels
            kind = "WaveFormer"
            detail = f"{preset.stage_depths[i]} blocks, Haar DWT x{levels}, attention on {tokens}^3 tokens, {dim // preset.head_dim} heads"
        shapes.append(StageShape(i, kind, dim, size, stride, detail))
    return shapes


def parameter_counts(model: torch.nn.Module) -> dict[str, int]:
    """Parameters per part of a Pretrainer, grouped by their module path."""
    counts: dict[str, int] = {}
    for name, param in model.named_parameters():
        parts = name.split(".")
        if parts[0] == "encoder" and parts[1] in ("stems", "conv_stages", "wave_stages"):
            label = ".".join(parts[:3])
        elif parts[0] == "decoder":
            label = ".".join(parts[:2])
        else:
            label = parts[0]
        counts[label] = counts.get(label, 0) + param.numel()
    return counts


def activation_bytes(model: torch.nn.Module, batch) -> int:
    """Bytes of tensors autograd keeps for backward during one forward (unique storages), measured."""
    seen: dict[tuple, int] = {}

    def pack(tensor: torch.Tensor):
        storage = tensor.untyped_storage()
        seen[(storage.data_ptr(), tensor.device.type)] = storage.nbytes()
        return tensor

    model.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(batch)
    del out
    return sum(seen.values())


def step_peak_memory(preset: Preset, batch_size: int, device: str, amp: str, modality: str = "mri") -> dict:
    """Peak GPU memory of real training steps (forward, backward, AdamW) at `batch_size` regions, under `amp`."""
    from rsna_phase0.models.blob_batch import synthetic_batch
    from rsna_phase0.models.pretrainer import Pretrainer
    from rsna_phase0.training.amp import autocast, make_scaler, resolve_amp

    dev = torch.device(device)
    if dev.type != "cuda":
        raise ValueError("peak memory of a training step is measured on a CUDA device (--device cuda)")
    torch.manual_seed(0)
    model = Pretrainer(preset).to(dev)
    mode = resolve_amp(amp, dev)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    scaler = make_scaler(mode)
    batch = synthetic_batch(preset, batch_size, modality=modality, content="blobs").to(dev)
    torch.cuda.reset_peak_memory_stats(dev)
    for _ in range(2):  # the second step holds AdamW's state too
        with autocast(mode, dev):
            loss = model(batch)["loss"]
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
    torch.cuda.synchronize(dev)
    return {
        "batch": batch_size,
        "amp": mode.name,
        "peak_gib": torch.cuda.max_memory_allocated(dev) / 2**30,
        "gpu": torch.cuda.get_device_name(dev),
    }


def describe(
    preset: Preset,
    measure: bool = True,
    modality: str = "mri",
    device: str = "cpu",
    amp: str = "auto",
    batch_sizes: tuple[int, ...] = (),
) -> list[str]:
    """Lines of text for `model-info`."""
    from rsna_phase0.models.blob_batch import synthetic_batch
    from rsna_phase0.models.pretrainer import Pretrainer

    torch.manual_seed(0)
    model = Pretrainer(preset)
    lines = [
        f"preset {preset.name}: views {preset.input_size}^3, patch {preset.patch_size} (grid {preset.grid}^3), "
        f"embed {preset.embed_dim}, {preset.n_local} local views per region",
        "",
        "parameters per part:",
    ]
    counts = parameter_counts(model)
    for label, count in counts.items():
        lines.append(f"  {label:<28} {count:>12,}")
    lines.append(f"  {'total':<28} {sum(counts.values()):>12,}")
    lines += ["", "encoder feature maps (per view):"]
    for s in stage_shapes(preset):
        lines.append(f"  stage {s.stage}: {s.channels} x {s.size}^3 (stride {s.stride}), {s.kind}: {s.detail}")
    lines.append(f"  decoder widths, coarsest to stride 1: {decoder_widths(preset)}")
    lines.append(
        f"  input sizes: every side a multiple of {size_multiple(preset)} (pre-trained at {preset.input_size}^3; the "
        "Haar levels stay fixed for fine-tuning sizes)"
    )
    if measure:
        batch = synthetic_batch(preset, 1, modality=modality, content="noise")
        total = activation_bytes(model, batch)
        lines += [
            "",
            f"activation memory per sample (1 global + {preset.n_local} local views, {modality}, float32, measured "
            f"on this machine): {total / 2**20:,.0f} MiB; bf16 autocast roughly halves the dense parts",
        ]
    for size in batch_sizes:
        peak = step_peak_memory(preset, size, device, amp, modality)
        lines.append(
            f"peak GPU memory of a training step at batch {size} ({peak['amp']}, {modality}, {peak['gpu']}): "
            f"{peak['peak_gib']:.2f} GiB"
        )
    return lines
