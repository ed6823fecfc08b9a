"""What `rsna-phase0 model-info` reports: parameters per part, feature shapes per stage, activation memory."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rsna_phase0.models.decoder import decoder_widths
from rsna_phase0.models.waveformer import dwt_levels
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
    for i, dim in enumerate(preset.stage_dims):
        stride = 2 ** (i + 1)
        size = preset.input_size // stride
        if i < preset.sparse_stages:
            kind, detail = "sparse (MinkowskiEngine)", f"{preset.stage_depths[i]} x k3 submanifold conv"
        else:
            levels = dwt_levels(size, preset.attention_grid)
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


def describe(preset: Preset, measure: bool = True, modality: str = "mri") -> list[str]:
    """Lines of text for `model-info`."""
    from rsna_phase0.models.pretrainer import Pretrainer
    from rsna_phase0.models.synthetic import synthetic_batch

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
    if measure:
        batch = synthetic_batch(preset, 1, modality=modality, content="noise")
        total = activation_bytes(model, batch)
        lines += [
            "",
            f"activation memory per sample (1 global + {preset.n_local} local views, {modality}, float32, measured "
            f"on this machine): {total / 2**20:,.0f} MiB; bf16 autocast roughly halves the dense parts",
        ]
    return lines
