"""Export the encoder for fine-tuning: sparse (MinkowskiEngine) weights -> a plain PyTorch DenseEncoder.

Kernels map to Conv3d weights by models/kernel_layout.py (MinkowskiEngine's offset order, measured and tested);
every other tensor keeps its name (the per-sample norms and the WaveFormer stages are the same modules). Nothing here
imports MinkowskiEngine: it works on state dicts. Version 2 is the pretrainer v2 encoder (per-sample normalisation,
background inactive, DWT levels fixed per stage); version 1 files (BatchNorm) are refused with the reason.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from rsna_phase0.atomic import write_atomic
from rsna_phase0.models.dense_encoder import DenseEncoder
from rsna_phase0.models.kernel_layout import minkowski_kernel_to_conv3d
from rsna_phase0.presets import Preset, preset_from_dict

EXPORT_FORMAT = "rsna_phase0.dense_encoder"
EXPORT_VERSION = 2


def dense_state_from_sparse(encoder_state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Sparse encoder state dict (keys relative to the encoder) -> DenseEncoder state dict."""
    out = {}
    for key, value in encoder_state.items():
        if key.endswith("conv.kernel"):
            out[key[: -len("kernel")] + "weight"] = minkowski_kernel_to_conv3d(value)
        else:
            out[key] = value
    return out


def _encoder_state(source) -> tuple[Preset, dict[str, torch.Tensor]]:
    if isinstance(source, nn.Module):
        preset = source.preset
        state = source.state_dict()
    elif isinstance(source, Mapping):
        missing = [k for k in ("preset",) if k not in source]
        state = source.get("model", source.get("state_dict"))
        if missing or state is None:
            raise ValueError(
                "export needs a Pretrainer, a SparseWaveEncoder, or a checkpoint dict with 'preset' (Preset.to_dict()) "
                f"and 'model' (the Pretrainer state_dict); got keys {sorted(source)}"
            )
        preset = source["preset"] if isinstance(source["preset"], Preset) else preset_from_dict(source["preset"])
    else:
        raise TypeError(f"cannot export from {type(source).__name__}")
    if any(k.startswith("encoder.") for k in state):
        state = {k[len("encoder.") :]: v for k, v in state.items() if k.startswith("encoder.")}
    return preset, state


def export_dense_encoder(source) -> DenseEncoder:
    """A DenseEncoder (eval mode) with the weights of a Pretrainer, a SparseWaveEncoder or a checkpoint dict."""
    preset, state = _encoder_state(source)
    encoder = DenseEncoder(preset)
    dense_state = {k: v.detach().clone() for k, v in dense_state_from_sparse(state).items()}
    encoder.load_state_dict(dense_state, strict=True)
    return encoder.eval()


def save_dense_encoder(encoder: DenseEncoder, path: str | os.PathLike) -> Path:
    """Write the exported encoder atomically (temp file in the same folder, fsync, rename)."""
    payload = {
        "format": EXPORT_FORMAT,
        "version": EXPORT_VERSION,
        "preset": encoder.preset.to_dict(),
        "state_dict": {k: v.detach().cpu() for k, v in encoder.state_dict().items()},
    }
    return write_atomic(path, lambda handle: torch.save(payload, handle))


def load_dense_encoder(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> DenseEncoder:
    """Read a file written by save_dense_encoder (or `rsna-phase0 export-encoder`) into a DenseEncoder (eval mode)."""
    path = Path(path)
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such exported encoder") from None
    except Exception as error:
        raise ValueError(f"{path}: not a readable exported encoder ({error})") from error
    if not isinstance(payload, Mapping) or payload.get("format") != EXPORT_FORMAT:
        raise ValueError(f"{path}: not an rsna_phase0 dense encoder export (format {EXPORT_FORMAT!r} expected)")
    if payload.get("version") != EXPORT_VERSION:
        raise ValueError(
            f"{path}: export version {payload.get('version')} but this code reads {EXPORT_VERSION} (version 1 is the "
            "BatchNorm encoder of before pretrainer v2: pre-train again, its checkpoints do not fit this model)"
        )
    encoder = DenseEncoder(preset_from_dict(payload["preset"]))
    encoder.load_state_dict(payload["state_dict"], strict=True)
    return encoder.eval()
