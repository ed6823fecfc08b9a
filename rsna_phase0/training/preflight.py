"""Preflight: everything that can fail in the first minute is checked before the long run, in one compact report.

Order: device (cheap, fails fast), environment parity, the data scan, then one forward and backward per modality
(the smoke step: catches shape, dtype and device bugs and measures time and peak memory), the GPU guard, and a
time estimate against the budget. Each failure raises PreflightError with the fix in its message.
"""

from __future__ import annotations

import copy
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from rsna_phase0.training.amp import AmpMode, autocast
from rsna_phase0.training.rng import capture_rng, restore_rng

METRICS_ROOM = 16 << 20  # metrics.jsonl, config.json, the plots


class PreflightError(RuntimeError):
    """The run must not start; the message says why and how to fix it."""


@dataclass
class PreflightReport:
    lines: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    env_report: dict = field(default_factory=dict)
    step_seconds: dict[str, float] = field(default_factory=dict)
    peak_memory_mb: dict[str, float] = field(default_factory=dict)

    def add(self, label: str, text: str) -> None:
        self.lines.append(f"  {label:<12} {text}")

    def warn(self, text: str) -> None:
        self.warnings.append(text)

    def render(self) -> str:
        body = "\n".join(self.lines + [f"  WARNING      {w}" for w in self.warnings])
        return f"[train] preflight\n{body}"


def resolve_device(requested: str, preset_name: str, local_rank: int = 0) -> torch.device:
    has_cuda = torch.cuda.is_available()
    if requested == "cuda":
        if not has_cuda:
            raise PreflightError(
                "--device cuda, but torch sees no CUDA GPU (torch.cuda.is_available() is False): check nvidia-smi, "
                "that the notebook's accelerator is on, and that torch is a CUDA build (rsna-phase0 check-env)"
            )
        return torch.device("cuda", local_rank)
    if requested == "cpu":
        return torch.device("cpu")
    if requested != "auto":
        raise PreflightError(f"--device {requested!r}: choose auto, cpu or cuda")
    if has_cuda:
        return torch.device("cuda", local_rank)
    if preset_name != "smoke":
        raise PreflightError(
            f"preset {preset_name!r} expects a CUDA GPU and torch sees none; training it on the CPU would take days. "
            "Turn the GPU on (check nvidia-smi / the notebook accelerator), or pass --device cpu if you mean it"
        )
    return torch.device("cpu")


def check_environment(report: PreflightReport, *, must_match: bool, allow_mismatch: bool) -> None:
    """check-env's verdict; a mismatch stops GPU runs unless --allow-env-mismatch (the CPU smoke run only reports)."""
    from rsna_phase0.check_env.check import run_check
    from rsna_phase0.check_env.parity import MISMATCH, STAND_IN

    result = run_check()
    report.env_report = result.report
    verdict = {
        0: "parity with env/reference.toml",
        1: "MISMATCH",
        2: "could not probe",
        3: "development stand-in (expected on a CPU dev machine; not the reference)",
    }.get(result.exit_code, "?")
    differing = [row for row in result.rows if row.status in (MISMATCH, STAND_IN)]
    detail = "; ".join(f"{row.field} {row.found} (want {row.expected})" for row in differing[:3])
    detail += f" (+{len(differing) - 3} more)" if len(differing) > 3 else ""
    detail = result.problem or detail
    report.add("environment", verdict + (f": {detail}" if detail else ""))
    if result.exit_code == 0:
        return
    if must_match and not allow_mismatch:
        fixes = "; ".join(result.fixes[:3])
        raise PreflightError(
            f"environment check: {verdict}: {detail}. Fix: {fixes or 'see rsna-phase0 check-env'}. Training on another "
            "environment is how sparse ops broke before; pass --allow-env-mismatch to train anyway"
        )
    if result.exit_code == 3 and not must_match:
        return  # the CPU smoke run on a dev machine: the line above says all there is to say
    why = "allowed by --allow-env-mismatch" if must_match else "reported only: CPU smoke run"
    report.warn(f"the environment differs from the reference ({why}); `rsna-phase0 check-env` shows how to fix it")


def check_data_dirs(mri_dirs: list[Path], ct_dirs: list[Path]) -> None:
    """The data folders exist: checked first, before the run folder or its lock is created."""
    if not mri_dirs and not ct_dirs:
        raise PreflightError("no data: pass --mri-dir and/or --ct-dir")
    for flag, folders in (("--mri-dir", mri_dirs), ("--ct-dir", ct_dirs)):
        for folder in folders:
            if not Path(folder).is_dir():
                raise PreflightError(
                    f"{flag} {folder}: {'is not a folder' if Path(folder).exists() else 'no such folder'}"
                    " (on Kaggle data sets are under /kaggle/input/<dataset>/; check the path and that the data set is attached)"
                )


def prepare_run_dir(run_dir: Path) -> None:
    """Create the run folder and prove a file can be written in it, before any work (a scan can take 25 min)."""
    if run_dir.exists() and not run_dir.is_dir():
        raise PreflightError(f"--out {run_dir}: is a file, not a folder; give the run its own folder")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / f".write-test-{os.getpid()}"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as exc:
        raise PreflightError(
            f"--out {run_dir}: cannot create or write the run folder ({exc.strerror or exc}); choose a writable place"
        ) from None


def check_disk_room(report: PreflightReport, run_dir: Path, checkpoint_bytes: int, files_kept: int) -> None:
    """Room for two more checkpoints and the metrics, or the run is refused before it starts."""
    needed = 2 * checkpoint_bytes + METRICS_ROOM
    free = shutil.disk_usage(run_dir).free
    detail = f"checkpoints ~{_size(checkpoint_bytes)} each, up to {files_kept} files kept (~{_size(files_kept * checkpoint_bytes)})"
    if free < needed:
        raise PreflightError(
            f"disk: {run_dir} has {_size(free)} free; the run needs at least {_size(needed)} (two checkpoints and the "
            f"metrics; {detail}); free space or choose --out on a larger disk"
        )
    report.add("disk", f"{_size(free)} free at {run_dir}; {detail}")
    if free < files_kept * checkpoint_bytes + METRICS_ROOM:
        report.warn(
            f"{_size(free)} free at {run_dir} holds fewer than the {files_kept} checkpoint files this run keeps"
        )


def _size(n: float) -> str:
    return f"{n / 2**20:.0f} MB" if n < 2**30 else f"{n / 2**30:.1f} GB"


def scan_data(
    report: PreflightReport,
    mri_dirs: list[Path],
    ct_dirs: list[Path],
    progress: bool,
    manifest_path: Path | None = None,
):
    """The manifest of the given folders: scanned now (every volume read), or `manifest_path` (a saved `data scan`)
    once it is shown to list exactly these folders' files, each with its recorded size."""
    check_data_dirs(mri_dirs, ct_dirs)
    from rsna_phase0.data.manifest import load_checked_manifest, scan_dirs

    if manifest_path is None:
        manifest = scan_dirs(mri_dirs, ct_dirs, progress=progress)
    else:
        try:
            manifest = load_checked_manifest(manifest_path, mri_dirs, ct_dirs)
        except (ValueError, FileNotFoundError) as exc:
            raise PreflightError(f"--manifest: {exc}") from exc
        report.add(
            "manifest",
            f"used {manifest_path} (scanned {manifest.created or 'at an unknown time'}): {len(manifest.records)} "
            "files, the same as in the folders and each with its recorded size; no volume was re-scanned",
        )
    accepted, rejected = manifest.accepted, manifest.rejected
    by_modality: dict[str, int] = {}
    for record in accepted:
        by_modality[record.modality] = by_modality.get(record.modality, 0) + 1
    counts = ", ".join(f"{n} {m.upper()}" for m, n in sorted(by_modality.items())) or "none"
    report.add("data", f"{len(accepted)} volumes accepted ({counts}), {len(rejected)} excluded")
    for record in rejected[:5]:
        report.add("", f"excluded {record.path}: {record.reason}")
    if len(rejected) > 5:
        report.add("", f"... {len(rejected) - 5} more exclusions (rsna-phase0 data scan lists them all)")
    if not accepted:
        raise PreflightError(
            f"data scan found no usable volume in {', '.join(map(str, mri_dirs + ct_dirs))}: "
            f"{len(rejected)} excluded (see above)"
        )
    return manifest


def smoke_step(
    report: PreflightReport, model: torch.nn.Module, batches: dict, device: torch.device, amp: AmpMode
) -> None:
    """One forward and backward per modality (twice: the second is timed), leaving weights, buffers, gradients and
    every RNG exactly as found, so a run with preflight equals one without."""
    saved_state = copy.deepcopy(model.state_dict())
    saved_rng = capture_rng()
    model.train()
    try:
        for modality, batch in batches.items():
            batch = batch.to(device)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
                torch.cuda.reset_peak_memory_stats(device)
            before = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
            seconds = 0.0
            for attempt in range(2):
                start = time.perf_counter()
                try:
                    with autocast(amp, device):
                        out = model(batch)
                    loss = out["loss"]
                    loss.float().backward()
                except torch.cuda.OutOfMemoryError:
                    raise
                except Exception as exc:
                    raise PreflightError(
                        f"smoke step failed on a {modality.upper()} batch {tuple(batch.global_image.shape)} "
                        f"({type(exc).__name__}: {exc})"
                    ) from exc
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                seconds = time.perf_counter() - start
                if not torch.isfinite(loss.detach()).item():
                    raise PreflightError(
                        f"smoke step: the {modality.upper()} loss is {loss.item()} before any training"
                    )
                if attempt == 0:
                    gpu_guard(model, batch, loss, device, before)
                model.zero_grad(set_to_none=True)
            peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else float("nan")
            report.step_seconds[modality] = seconds
            report.peak_memory_mb[modality] = peak
            memory = f", peak GPU memory {peak:.0f} MiB" if device.type == "cuda" else ""
            report.add(
                "smoke step",
                f"{modality.upper()} batch {tuple(batch.global_image.shape)}: forward+backward {seconds:.2f} s{memory}",
            )
    finally:
        model.load_state_dict(saved_state)
        model.zero_grad(set_to_none=True)
        restore_rng(saved_rng)


def gpu_guard(model: torch.nn.Module, batch, loss: torch.Tensor, device: torch.device, allocated_before: int) -> None:
    """On CUDA, everything must really be on the GPU; the old notebook once trained on the CPU for hours unnoticed."""
    if device.type != "cuda":
        return
    off_device = [name for name, p in model.named_parameters() if p.device.type != "cuda"]
    if off_device:
        raise PreflightError(f"GPU guard: {len(off_device)} model parameters are not on the GPU (e.g. {off_device[0]})")
    tensors = {"global_image": batch.global_image, "local_image": batch.local_image}
    for name, tensor in tensors.items():
        if tensor.device.type != "cuda":
            raise PreflightError(f"GPU guard: batch.{name} is on {tensor.device}, expected the GPU")
    if loss.device.type != "cuda":
        raise PreflightError(f"GPU guard: the loss was computed on {loss.device}: part of the model runs on the CPU")
    input_bytes = sum(t.numel() * t.element_size() for t in tensors.values())
    used = torch.cuda.max_memory_allocated(device) - allocated_before
    if used < input_bytes:
        raise PreflightError(
            f"GPU guard: a forward and backward used only {used / 2**20:.1f} MiB of GPU memory for "
            f"{input_bytes / 2**20:.1f} MiB of input: the work is not happening on the GPU"
        )


def estimate_time(
    report: PreflightReport,
    *,
    step_s: float,
    steps_per_epoch: int,
    epochs: int,
    done_steps: int,
    budget_s: float | None,
    elapsed_s: float,
    max_steps: int | None = None,
) -> None:
    total_steps = steps_per_epoch * epochs
    until = f"{epochs} epochs"
    if max_steps is not None and max_steps < total_steps:
        total_steps, until = max_steps, f"--max-steps {max_steps}"
    epoch_s = step_s * steps_per_epoch
    remaining_steps = max(0, total_steps - done_steps)
    text = (
        f"~{step_s:.2f} s/step, {steps_per_epoch} steps/epoch = {_fmt(epoch_s)}/epoch; "
        f"{remaining_steps} steps left (to {until}) = {_fmt(remaining_steps * step_s)}"
    )
    if budget_s is not None:
        left = budget_s - elapsed_s
        fit = int(left // epoch_s) if epoch_s > 0 else 0
        text += f"; budget {_fmt(budget_s)} fits ~{fit} epoch(s)"
        if remaining_steps * step_s > left:
            report.warn(
                f"the plan ({_fmt(remaining_steps * step_s)}) does not fit the time budget ({_fmt(left)} left): this session "
                f"stops with last.pt near step {done_steps + int(left / max(step_s, 1e-9))}; resume with --resume auto"
            )
    report.add("estimate", text)


def _fmt(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else (f"{minutes}m{secs:02d}s" if minutes else f"{secs}s")
