"""Mixed precision: bf16 where the GPU supports it, fp16 with a GradScaler on T4/P100 (capability < 8.0), fp32 on CPU."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class AmpMode:
    dtype: torch.dtype | None  # None = full precision
    use_scaler: bool

    @property
    def name(self) -> str:
        return {torch.bfloat16: "bf16", torch.float16: "fp16 + GradScaler"}.get(self.dtype, "off (fp32)")


def resolve_amp(setting: str, device: torch.device) -> AmpMode:
    if device.type != "cuda":
        if setting in {"bf16", "fp16"}:
            raise ValueError(f"amp={setting} needs a CUDA device; this run is on {device} (use --set amp=off or auto)")
        return AmpMode(None, False)
    major, _ = torch.cuda.get_device_capability(device)
    if setting == "off":
        return AmpMode(None, False)
    if setting == "bf16" or (setting == "auto" and major >= 8):
        if major < 8:
            raise ValueError(
                f"amp=bf16: {torch.cuda.get_device_name(device)} (capability {major}.x) has no fast bf16; use fp16 or auto"
            )
        return AmpMode(torch.bfloat16, False)
    return AmpMode(torch.float16, True)


def autocast(mode: AmpMode, device: torch.device):
    if mode.dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=mode.dtype)


def make_scaler(mode: AmpMode):
    # torch.amp.GradScaler exists from torch 2.3; the reference torch is 2.4
    return torch.amp.GradScaler("cuda", enabled=mode.use_scaler)
