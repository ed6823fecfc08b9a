"""The resolved run configuration: a preset, then a config file, then `--set key=value`, then dedicated flags.

The result is a plain dict `{"preset": {...}, "train": {...}}`, saved as RUN_DIR/config.json and inside every
checkpoint, so a run can always be rebuilt from its own files. Keys of `--set` may name a preset field (model,
geometry, optimiser defaults) or a training setting below; an unknown key is an error, never ignored.
"""

from __future__ import annotations

import json
import math
import re
import tomllib
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from rsna_phase0.presets import PRESETS, Preset, get_preset, parse_tuple_field, tupled


@dataclass
class TrainSettings:
    epochs: int = 100  # the smoke preset defaults to SMOKE_EPOCHS (its plan fits the demo's minutes)
    max_steps: int | None = None  # stop after this many optimiser steps in total; the lr schedule follows `epochs`
    accum_steps: int = 1  # plan batches per rank in one optimiser step
    micro_splits: int = 1  # each batch runs as this many micro-batches (CUDA OOM doubles it)
    grad_clip: float = 1.0  # max global gradient norm; 0 disables
    # auto: bf16 on capability >= 8.0, fp16 + GradScaler below, off on the CPU
    amp: str = "auto"  # auto | bf16 | fp16 | off
    min_lr_ratio: float = 0.01  # cosine floor as a fraction of lr
    beta1: float = 0.9
    beta2: float = 0.95
    checkpoint_every_min: float = 15.0  # last.pt between epochs; 0 = after every step
    keep_last_k: int = 3  # checkpoint_epoch_NNNN.pt files kept
    watchdog_s: float = 900.0  # no finished step for this long = hung: dump stacks, save if safe, exit 4; 0 disables
    skip_nonfinite: bool = False  # NaN/Inf loss: skip the step instead of stopping
    seed: int = 0
    deterministic: bool = False
    num_workers: int = 0
    ct_fraction: float = 0.25
    val_fraction: float = 0.1
    val_batches_max: int = 8  # validation batches per evaluation (fixed crops and masks)
    budget_margin_s: float = 5.0  # extra safety before the time budget, on top of measured step + checkpoint time
    allow_data_change: bool = False  # resume on other data than the checkpoint's (recorded in metrics and checkpoint)


SMOKE_EPOCHS = 8
SETTING_NAMES = {f.name for f in fields(TrainSettings)}
PRESET_NAMES = {f.name for f in fields(Preset)} - {"name"}
# may differ between a checkpoint and the resuming command; anything else must match (or the resume is refused)
RESUMABLE_CHANGES = {
    "epochs",
    "max_steps",
    "checkpoint_every_min",
    "keep_last_k",
    "watchdog_s",
    "skip_nonfinite",
    "num_workers",
    "micro_splits",
    "val_batches_max",
    "budget_margin_s",
    "allow_data_change",
    "deterministic",
    "lr",
    "grad_clip",  # lr/clip: recover from divergence
    "speedups",  # implementation choices that keep the model's function (rsna_phase0/models/speedups.py)
}

_DURATION = re.compile(r"^(?:(?P<h>\d+(?:\.\d+)?)h)?(?:(?P<m>\d+(?:\.\d+)?)m)?(?:(?P<s>\d+(?:\.\d+)?)s)?$")


def parse_duration(text: str) -> float:
    """Seconds from '8h30m', '4m', '90s', '1.5h' or a bare number of seconds."""
    text = text.strip().lower()
    try:
        return float(text)
    except ValueError:
        pass
    match = _DURATION.match(text)
    if not text or not match or not any(match.groupdict().values()):
        raise ValueError(f"cannot read duration {text!r}: write it like 8h30m, 45m, 90s or 3600")
    parts = {k: float(v) if v else 0.0 for k, v in match.groupdict().items()}
    return parts["h"] * 3600 + parts["m"] * 60 + parts["s"]


def _coerce(key: str, raw, current):
    """A --set or config-file value converted to the type of the field it replaces."""
    if not isinstance(raw, str):
        return tupled(raw) if isinstance(current, tuple) and isinstance(raw, list) else raw
    text = raw.strip()
    if isinstance(current, bool):
        if text.lower() in {"1", "true", "yes", "on"}:
            return True
        if text.lower() in {"0", "false", "no", "off"}:
            return False
        raise ValueError(f"{key}={raw!r}: expected true or false")
    if text.lower() in {"none", "null"}:
        return None
    try:
        if isinstance(current, int) or (current is None and re.fullmatch(r"-?\d+", text)):
            return int(text)
        if isinstance(current, float):
            return float(text)
        if isinstance(current, tuple):
            return parse_tuple_field(key, text, current)
    except ValueError:
        raise ValueError(f"{key}={raw!r}: expected a value like {current!r}") from None
    return text


def parse_set_items(items: list[str] | tuple[str, ...]) -> dict[str, str]:
    pairs = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set {item!r}: write it as key=value")
        pairs[key.strip()] = value
    return pairs


def load_config_file(path: str | Path) -> dict:
    """A flat {key: value} mapping (JSON or TOML), or a previous run's config.json ({"preset": {...}, "train": {...}})."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ValueError(f"config file {path}: cannot read it ({exc.strerror})") from None
    try:
        data = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (ValueError, tomllib.TOMLDecodeError) as exc:
        raise ValueError(
            f"config file {path}: not valid {'TOML' if path.suffix == '.toml' else 'JSON'} ({exc})"
        ) from None
    if not isinstance(data, dict):
        raise ValueError(f"config file {path}: expected a mapping of settings at the top level")
    if isinstance(data.get("preset"), dict):  # a saved run config
        flat = {k: v for k, v in data["preset"].items() if k != "name"}
        flat.update(data.get("train", {}))
        flat["preset"] = data["preset"].get("name")
        return flat
    return data


def resolve_config(
    preset_name: str | None, file_values: dict | None = None, set_values: dict | None = None, flags: dict | None = None
) -> dict:
    """Merge the layers (later wins) into {"preset": Preset.to_dict(), "train": asdict(TrainSettings)}.

    The preset is `preset_name` (--preset) if given, else the config file's, else smoke."""
    merged: dict = {}
    for layer in (file_values or {}), (set_values or {}), {k: v for k, v in (flags or {}).items() if v is not None}:
        merged.update(layer)
    preset_name = preset_name or merged.pop("preset", None) or "smoke"
    merged.pop("preset", None)
    merged.pop("name", None)
    if preset_name not in PRESETS:
        raise ValueError(f"unknown preset {preset_name!r}; choose one of {', '.join(PRESETS)}")
    unknown = sorted(set(merged) - SETTING_NAMES - PRESET_NAMES)
    if unknown:
        raise ValueError(
            f"unknown setting(s) {', '.join(unknown)}; preset fields: {', '.join(sorted(PRESET_NAMES))}; "
            f"training settings: {', '.join(sorted(SETTING_NAMES))}"
        )
    base_preset = PRESETS[preset_name]
    defaults = TrainSettings()
    preset_over = {k: _coerce(k, v, getattr(base_preset, k)) for k, v in merged.items() if k in PRESET_NAMES}
    settings = TrainSettings(
        **{k: _coerce(k, v, getattr(defaults, k)) for k, v in merged.items() if k in SETTING_NAMES}
    )
    if preset_name == "smoke" and "epochs" not in merged:
        settings.epochs = SMOKE_EPOCHS
    preset = get_preset(preset_name, **preset_over)  # validates geometry
    for name in ("lr", "weight_decay"):
        if hasattr(preset, name):
            check_range(name, getattr(preset, name), 0.0, 1.0, name == "weight_decay", True)
    validate_settings(settings)
    return {"preset": preset.to_dict(), "train": asdict(settings)}


# (low, high, low included, high included): each setting's allowed range, said in the message when it is broken
RANGES = {
    "grad_clip": (0.0, math.inf, True, False),
    "min_lr_ratio": (0.0, 1.0, True, True),
    "beta1": (0.0, 1.0, True, False),
    "beta2": (0.0, 1.0, True, False),
    "checkpoint_every_min": (0.0, math.inf, True, False),
    "watchdog_s": (0.0, math.inf, True, False),
    "num_workers": (0, 256, True, True),
    "ct_fraction": (0.0, 1.0, True, True),
    "val_fraction": (0.0, 1.0, True, False),
    "val_batches_max": (1, math.inf, True, False),
    "budget_margin_s": (0.0, math.inf, True, False),
}


def check_range(name: str, value, low, high, low_in: bool = True, high_in: bool = True) -> None:
    """ValueError naming the setting, its value and the allowed range (NaN is never in range)."""
    number = value if isinstance(value, int | float) and not isinstance(value, bool) else None
    ok = number is not None and not math.isnan(number)
    ok = ok and (number >= low if low_in else number > low) and (number <= high if high_in else number < high)
    if not ok:
        left, right = "[" if low_in else "(", "]" if high_in else ")"
        raise ValueError(f"{name}={value!r}: must be a number in {left}{low:g}, {high:g}{right}")


def validate_settings(s: TrainSettings) -> None:
    if s.amp not in {"auto", "bf16", "fp16", "off"}:
        raise ValueError(f"amp={s.amp!r}: choose auto, bf16, fp16 or off")
    for name, bounds in RANGES.items():
        check_range(name, getattr(s, name), *bounds)
    for name in ("epochs", "accum_steps", "micro_splits"):
        if getattr(s, name) < 1:
            raise ValueError(f"{name} must be at least 1, got {getattr(s, name)}")
    if s.max_steps is not None and s.max_steps < 1:
        raise ValueError(f"max_steps must be at least 1, got {s.max_steps}")
    if s.keep_last_k < 1:
        raise ValueError(f"keep_last_k must be at least 1, got {s.keep_last_k}")


def preset_from_config(config: dict) -> Preset:
    values = dict(config["preset"])
    name = values.pop("name")
    base = PRESETS.get(name)
    if base is None:
        raise ValueError(f"config names unknown preset {name!r}")
    return get_preset(name, **{k: _coerce(k, v, getattr(base, k)) for k, v in values.items()})


def settings_from_config(config: dict) -> TrainSettings:
    return TrainSettings(**config["train"])


def resume_conflicts(saved: dict, current: dict) -> list[str]:
    """Settings that differ between a checkpoint's config and the resuming command, excluding harmless ones."""
    saved_js, current_js = json.loads(json.dumps(saved)), json.loads(json.dumps(current))
    problems = []
    for section in ("preset", "train"):
        for key in sorted(set(saved_js[section]) | set(current_js[section])):
            if key in RESUMABLE_CHANGES:
                continue
            a, b = saved_js[section].get(key), current_js[section].get(key)
            if a != b:
                problems.append(f"{section}.{key}: checkpoint {a!r}, now {b!r}")
    return problems
