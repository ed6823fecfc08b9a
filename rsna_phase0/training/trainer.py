"""The training run: preflight, then the loop with checkpoints, validation, metrics and every way to stop cleanly.

One optimiser step consumes `world_size * accum_steps` global batches of the data plan; rank r takes plan
positions start+r, start+r+world, ... Each batch runs as `micro_splits` micro-batches (a CUDA OOM doubles it).
The checkpoint's position (epoch, next plan index) therefore resumes exactly at any world size.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from rsna_phase0.data.errors import VolumeError
from rsna_phase0.models.losses import DIAGNOSTICS, LOSS_TERMS
from rsna_phase0.models.speedups import FUSED_NORM_GELU, GRAPH_DECODER_LOSS, GRAPH_WAVE_STAGES
from rsna_phase0.training import checkpoint as ckpt
from rsna_phase0.training import faults
from rsna_phase0.training.amp import autocast, make_scaler, resolve_amp
from rsna_phase0.training.config import preset_from_config, resume_conflicts, settings_from_config
from rsna_phase0.training.distributed import (
    all_reduce_max,
    all_reduce_max_each,
    all_reduce_mean,
    barrier,
    dist_info_from_env,
    init_distributed,
    shutdown_distributed,
    wrap_ddp,
)
from rsna_phase0.training.metrics import MetricsLog, plot_loss_curve
from rsna_phase0.training.preflight import (
    PreflightError,
    PreflightReport,
    check_data_dirs,
    check_disk_room,
    check_environment,
    estimate_time,
    prepare_run_dir,
    resolve_device,
    scan_data,
    smoke_step,
)
from rsna_phase0.training.preview import PREVIEW_NAME, preview_batches, write_preview
from rsna_phase0.training.rng import capture_rng, restore_rng, seed_everything
from rsna_phase0.training.schedule import WarmupCosine
from rsna_phase0.training.survival import ExitCode, Interrupted, StopRequest, TimeBudget, Watchdog

TERMS = LOSS_TERMS + DIAGNOSTICS  # what metrics.jsonl records per step and per validation
# reasons the loop stops before the plan ends, in order of precedence when several ranks disagree
STOP_NONE, STOP_MAX_STEPS, STOP_BUDGET, STOP_SIGNAL = 0, 1, 2, 3


class TrainingError(RuntimeError):
    """The run cannot continue; the message says why."""


@dataclass
class RunRequest:
    config: dict
    out: Path
    mri_dirs: list[Path] = field(default_factory=list)
    ct_dirs: list[Path] = field(default_factory=list)
    resume: str | None = None  # None (fresh; refuses an existing run), "auto" or a checkpoint path
    time_budget_s: float | None = None
    allow_env_mismatch: bool = False
    device: str = "auto"
    cache_dir: Path | None = None
    manifest: Path | None = None  # a saved `data scan`, used instead of scanning (checked against the folders)
    progress: bool = True


@dataclass
class RunResult:
    exit_code: ExitCode
    reason: str
    step: int
    epoch: int
    first_loss: float | None = None
    last_loss: float | None = None
    loss_window: int = 1  # first_loss / last_loss are means of this many steps
    median_step_s: float | None = None
    volumes_per_s: float | None = None
    val_losses: list[float] = field(default_factory=list)
    files: list[str] = field(default_factory=list)

    def summary(self) -> str:
        lines = [self.reason, f"step {self.step}, epoch {self.epoch}"]
        if self.first_loss is not None:
            lines[-1] += (
                f"; train loss {self.first_loss:.4f} -> {self.last_loss:.4f} "
                f"(mean of the first {self.loss_window} / last {self.loss_window} steps of this session)"
            )
        if self.val_losses:
            lines[-1] += f"; validation loss {self.val_losses[0]:.4f} -> {self.val_losses[-1]:.4f}"
        if self.median_step_s is not None:
            lines.append(
                f"speed: median {self.median_step_s:.3f} s/step, {self.volumes_per_s:.2f} volumes/s (all ranks)"
            )
        lines.append("files:")
        return "\n".join(f"[train] {line}" for line in lines) + "\n" + "\n".join(f"  {f}" for f in self.files)


class RunLock:
    """One process trains in a run folder at a time (the kernel drops the lock when the process dies)."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / ".lock"
        self.handle = None

    def __enter__(self) -> RunLock:
        self.handle = open(self.path, "a+")  # not "w": a refused second trainer must not erase the holder's PID
        try:
            fcntl.flock(self.handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.handle.seek(0)
            holder = self.handle.read().strip() or "unknown"
            self.handle.close()
            raise TrainingError(
                f"{self.path.parent} is in use by another training process (PID {holder}, lock {self.path})"
            ) from None
        self.handle.seek(0)
        self.handle.truncate()
        self.handle.write(str(os.getpid()))
        self.handle.flush()
        return self

    def __exit__(self, *exc) -> None:
        fcntl.flock(self.handle, fcntl.LOCK_UN)
        self.handle.close()


def log(message: str) -> None:
    print(f"[train] {message}", file=sys.stderr, flush=True)


class Trainer:
    def __init__(self, request: RunRequest) -> None:
        self.request = request
        self.config = request.config
        self.preset = preset_from_config(self.config)
        self.settings = settings_from_config(self.config)
        self.dist = dist_info_from_env()
        self.is_main = self.dist.is_main
        self.run_dir = Path(request.out)
        self.budget = TimeBudget(request.time_budget_s, self.settings.budget_margin_s)
        self.stop_request = StopRequest()
        self.save_lock = threading.Lock()
        self.in_update = False  # True while weights/optimiser/position change: a watchdog save would be torn
        self.step = 0
        self.epoch = 0
        self.position = 0  # next plan index of `epoch`
        self.micro_splits = self.settings.micro_splits
        self.best_val = math.inf
        self.session_losses: list[float] = []
        self.session_step_s: list[float] = []
        self.epoch_losses: list[float] = []
        self.session_val: list[float] = []
        self.last_save_time = time.monotonic()
        self.last_saved_step = -1
        self.env_report: dict = {}
        self.metrics = MetricsLog(self.run_dir / "metrics.jsonl", enabled=self.is_main)
        self.data_plan: dict = {}
        self.data_changes: list[dict] = []  # allowed data changes on resume (allow_data_change), kept in checkpoints
        self._preview = None  # the fixed validation batches the preview is drawn on

    # ------------------------------------------------------------------ setup

    def _prepare(self) -> None:
        s, p = self.settings, self.preset
        self.device = resolve_device(self.request.device, p.name, self.dist.local_rank)
        if s.deterministic and self.device.type == "cpu" and os.environ.get("OMP_NUM_THREADS") != "1":
            raise PreflightError(
                "--deterministic on the CPU needs OMP_NUM_THREADS=1 before Python starts (MinkowskiEngine's CPU "
                "kernels use OpenMP threads that sum in varying order); run `OMP_NUM_THREADS=1 rsna-phase0 train ...`"
            )
        check_data_dirs(self.request.mri_dirs, self.request.ct_dirs)  # before the run folder and its lock exist
        if self.is_main:
            prepare_run_dir(self.run_dir)
        init_distributed(self.dist, self.device)
        if self.is_main:
            self.lock = RunLock(self.run_dir).__enter__()
            for stale in ckpt.remove_stale_temps(self.run_dir):
                log(f"removed {stale.name}, left by a write that was interrupted")
        resume = ckpt.find_resume(self.run_dir, self.request.resume)
        self.resume_state = None
        if resume is not None:
            resume_path, self.resume_state = resume.path, resume.state
            if resume.note and self.is_main:
                log(resume.note)
            conflicts = resume_conflicts(self.resume_state["config"], self.config)
            if conflicts:
                raise TrainingError(
                    f"cannot resume {resume_path} with different settings: {'; '.join(conflicts)}. Use the same "
                    "settings (the run's config.json works with --config) or start a new --out"
                )
            log(
                f"resuming from {resume_path}: step {self.resume_state['step']}, epoch "
                f"{self.resume_state['position']['epoch']}, plan position {self.resume_state['position']['batch']}"
            )
        elif self.request.resume == "auto" and self.is_main:
            log(f"--resume auto: no {ckpt.LAST} in {self.run_dir}, starting a new run")
        barrier(self.dist)  # every rank has decided before rank 0 writes its first checkpoint
        seed_everything(s.seed + self.dist.rank, s.deterministic)

        report = PreflightReport()
        report.add(
            "run",
            f"preset {p.name}, device {self.device}, world size {self.dist.world_size}, "
            f"batch {p.batch_size} x accum {s.accum_steps} x ranks {self.dist.world_size}, out {self.run_dir}",
        )
        self.report = report
        must_match = self.device.type == "cuda" or p.name != "smoke"
        try:
            check_environment(report, must_match=must_match, allow_mismatch=self.request.allow_env_mismatch)
            self.env_report = json.loads(json.dumps(report.env_report, default=str))
            manifest = scan_data(
                report,
                self.request.mri_dirs,
                self.request.ct_dirs,
                progress=self.request.progress and self.is_main,
                manifest_path=self.request.manifest,
            )
            self._build_data(manifest)
            self._build_model()
            if self.is_main:
                params = sum(p.numel() * p.element_size() for p in self.model.parameters())
                # weights + AdamW's two moments + buffers and RNG; every checkpoint file is a full copy
                check_disk_room(report, self.run_dir, 3 * params + (1 << 20), self.settings.keep_last_k + 2)
            smoke_batches = self._smoke_batches()
            smoke_step(report, self.model, smoke_batches, self.device, self.amp)
        except PreflightError:
            if self.is_main:
                print(report.render(), file=sys.stderr, flush=True)
            raise
        self._build_optimizer()
        if self.resume_state is not None:
            self._load_state(self.resume_state)
        self.resume_state = None
        steps_per_epoch = self.steps_per_epoch()
        step_s = self._estimated_step_seconds(report)
        self.budget.observe_step(step_s)
        estimate_time(
            report,
            step_s=step_s,
            steps_per_epoch=steps_per_epoch,
            epochs=s.epochs,
            done_steps=self.epoch * steps_per_epoch + self.position // self.batches_per_step(),
            budget_s=self.request.time_budget_s,
            elapsed_s=self.budget.elapsed(),
            max_steps=s.max_steps,
        )
        if self.is_main:
            self._weekly_budget(report, smoke_batches, step_s)
            print(report.render(), file=sys.stderr, flush=True)

    def _weekly_budget(self, report: PreflightReport, batches: dict, step_s: float) -> None:
        """What 30 T4 GPU-hours buy with these settings (training/t4_budget.py), from one region's counted FLOPs."""
        from rsna_phase0.training.t4_budget import StepFlops, count_step_flops, describe_weekly_budget

        batch = batches.get("mri") or next(iter(batches.values()))
        one = batch.split(batch.batch_size)[0].to(self.device)
        with autocast(self.amp, self.device):
            counted = count_step_flops(self.model, one)
        regions = self.preset.batch_size * self.settings.accum_steps
        flops = StepFlops(counted.dense * regions, counted.sparse * regions)
        report.add("kaggle", describe_weekly_budget(flops, regions, step_s or None))

    def _build_data(self, manifest) -> None:
        from rsna_phase0.data.pipeline import PretrainData

        s = self.settings
        try:
            self.data = PretrainData(
                manifest,
                self.preset,
                seed=s.seed,
                ct_fraction=s.ct_fraction,
                steps_per_epoch=self.preset.steps_per_epoch,
                val_fraction=s.val_fraction,
                num_workers=s.num_workers,
                cache_dir=self.request.cache_dir,
            )
        except (ValueError, FileNotFoundError) as exc:
            raise PreflightError(f"data: {exc}") from exc
        self.data_plan = self.data.fingerprint()
        for index, line in enumerate(self.data.describe().splitlines()):
            self.report.add("plan" if index == 0 else "", line)

    def _build_model(self) -> None:
        from rsna_phase0.models.norm_gelu import fused_path
        from rsna_phase0.models.pretrainer import Pretrainer

        model = Pretrainer(self.preset)  # per-sample normalisation only: nothing to synchronise across GPUs
        self.model = model.to(self.device)
        self.amp = resolve_amp(self.settings.amp, self.device)
        params = sum(p.numel() for p in self.model.parameters())
        self.report.add("model", f"Pretrainer {params / 1e6:.2f} M parameters, AMP {self.amp.name}")
        cuda = self.device.type == "cuda"
        how = "replayed from CUDA graphs" if cuda else f"eager (CUDA graphs need CUDA, this is {self.device})"
        for speedup, part in ((GRAPH_WAVE_STAGES, "WaveFormer stages"), (GRAPH_DECODER_LOSS, "decoder and loss")):
            if speedup in self.preset.speedups:
                self.report.add("", f"{part} in training steps: {how} (speed-up {speedup})")
        if FUSED_NORM_GELU in self.preset.speedups:
            why_not = fused_path(self.device)
            how = "fused Triton kernels, channels-last" if why_not is None else f"eager ({why_not})"
            self.report.add("", f"decoder norm + GELU: {how} (speed-up {FUSED_NORM_GELU})")

    def _smoke_batches(self) -> dict:
        """The first plan batch of each modality present (read-only: the plan is a pure function of the seed)."""
        found: dict = {}
        for batch in self.data.train_batches(0):
            found.setdefault(batch.modality, batch)
            if len(found) == 2:
                break
        return found

    def _build_optimizer(self) -> None:
        s, p = self.settings, self.preset
        decay, no_decay = [], []
        for name, param in self.model.named_parameters():
            (no_decay if param.ndim <= 1 or name.endswith(".bias") else decay).append(param)
        self.optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": p.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=p.lr,
            betas=(s.beta1, s.beta2),
            fused=self.device.type == "cuda",  # one kernel per step instead of several per parameter
        )
        total = s.epochs * self.steps_per_epoch()
        self.scheduler = WarmupCosine(self.optimizer, p.lr, p.warmup_steps, total, s.min_lr_ratio)
        self.scaler = make_scaler(self.amp)
        self.ddp_model = self.model
        if self.dist.enabled:
            self.ddp_model = wrap_ddp(self.model, self.device)
            self.report.add(
                "ddp",
                f"{self.dist.world_size} ranks; every parameter in every backward (no unused-parameter search), "
                "per-sample normalisation (no statistics to synchronise)",
            )

    def batches_per_step(self) -> int:
        return self.dist.world_size * self.settings.accum_steps

    def steps_per_epoch(self) -> int:
        steps = self.data.steps_per_epoch // self.batches_per_step()
        if steps < 1:
            raise TrainingError(
                f"an epoch has {self.data.steps_per_epoch} batches, fewer than one optimiser step needs "
                f"({self.dist.world_size} ranks x accum_steps {self.settings.accum_steps}); raise steps_per_epoch"
            )
        return steps

    def _estimated_step_seconds(self, report: PreflightReport) -> float:
        times = report.step_seconds
        if not times:
            return 0.0
        ct = self.settings.ct_fraction if "ct" in times else 0.0
        per_batch = (1 - ct) * times.get("mri", times.get("ct", 0.0)) + ct * times.get("ct", 0.0)
        return per_batch * self.settings.accum_steps

    # ------------------------------------------------------------------ state

    def state_dict(self) -> dict:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.amp.use_scaler else None,
            "rng": capture_rng(),
            "position": {"epoch": self.epoch, "batch": self.position},
            "step": self.step,
            "micro_splits": self.micro_splits,
            "best_val": self.best_val,
            "world_size": self.dist.world_size,
            "data_plan": self.data_plan,
            "data_changes": self.data_changes,
            "config": self.config,
            "env": self.env_report,
            "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }

    def _load_state(self, state: dict) -> None:
        where = "checkpoint"
        try:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            if state.get("scaler") and self.amp.use_scaler:
                self.scaler.load_state_dict(state["scaler"])
        except (RuntimeError, KeyError, ValueError) as exc:
            raise TrainingError(f"{where}: its state does not fit this model/optimiser ({exc})") from exc
        self._check_data_plan(state)
        if self.dist.world_size == state.get("world_size", 1):
            restore_rng(state["rng"])  # the RNG of another world size's rank 0 would mean nothing here
        self.epoch = int(state["position"]["epoch"])
        self.position = int(state["position"]["batch"])
        self.step = int(state["step"])
        self.micro_splits = max(self.micro_splits, int(state.get("micro_splits", 1)))
        self.best_val = float(state.get("best_val", math.inf))
        dropped = self.metrics.truncate_after(self.step)
        if dropped and self.is_main:
            log(f"metrics.jsonl: dropped {dropped} records written after the checkpoint's step {self.step}")

    def _check_data_plan(self, state: dict) -> None:
        """The data must be what the checkpoint trained on (files and sizes), unless allow_data_change says so."""
        self.data_changes = list(state.get("data_changes", []))
        before = state.get("data_plan")
        if before is None:
            log("the checkpoint records no data plan (written by an older version): the data cannot be compared")
            return
        if before["digest"] == self.data_plan["digest"]:
            return
        change = f"{_describe_plan(before)} then, {_describe_plan(self.data_plan)} now"
        if not self.settings.allow_data_change:
            raise TrainingError(
                f"the data differ from what the checkpoint trained on: {change} (files or sizes changed). Pass the "
                "same --mri-dir/--ct-dir, or --set allow_data_change=true to continue on the new data (recorded in "
                "metrics.jsonl and the checkpoint)"
            )
        record = {"step": int(state["step"]), "before": before, "after": self.data_plan}
        self.data_changes.append(record)
        self.metrics.write({"kind": "data_change", **record})
        log(f"data changed at step {state['step']} (allow_data_change): {change}")

    def save(self, names: list[str], *, from_watchdog: bool = False) -> float:
        """Write the state as names[0] atomically, then copy it to the other names (independent files). Rank 0 only."""
        if not self.is_main:
            return 0.0
        acquired = self.save_lock.acquire(timeout=5 if from_watchdog else -1)
        if not acquired:
            raise TrainingError("a checkpoint write is stuck")
        try:
            first = self.run_dir / names[0]
            seconds = ckpt.save_checkpoint(self.state_dict(), first)
            for other in names[1:]:
                ckpt.copy_checkpoint(first, self.run_dir / other)
        finally:
            self.save_lock.release()
        self.budget.observe_checkpoint(seconds)
        self.last_save_time = time.monotonic()
        self.last_saved_step = self.step
        return seconds

    def _watchdog_save(self) -> None:
        if self.in_update:
            log("watchdog: the hang is inside a weight update; last.pt is not overwritten (the previous one stands)")
            return
        seconds = self.save([ckpt.LAST], from_watchdog=True)
        log(f"watchdog: saved last.pt at step {self.step} ({seconds:.1f} s)")

    # ------------------------------------------------------------------ one step

    def _train_step(self, batches: list) -> dict[str, float]:
        """Forward/backward every micro-batch, reduce across ranks, then update; returns the step's mean terms."""
        while True:
            try:
                sums = self._accumulate(batches)
                break
            except torch.cuda.OutOfMemoryError as exc:
                self._back_off(batches, exc)
        values = all_reduce_mean([sums[t] for t in TERMS], self.device, self.dist)
        terms = dict(zip(TERMS, values, strict=True))
        self._drop_idle_gradients(batches)
        grad_norm = float("nan")
        finite = math.isfinite(terms["loss"])
        if finite:
            self.scaler.unscale_(self.optimizer)
            params = [p for p in self.model.parameters() if p.grad is not None]
            limit = self.settings.grad_clip if self.settings.grad_clip > 0 else float("inf")
            grad_norm = float(torch.nn.utils.clip_grad_norm_(params, limit))
            # fp16 overflow is the scaler's business (it skips the step); otherwise a non-finite gradient is divergence
            finite = math.isfinite(grad_norm) or self.amp.use_scaler
        if not finite:
            what = f"loss {terms['loss']}" if not math.isfinite(terms["loss"]) else f"gradient norm {grad_norm}"
            if not self.settings.skip_nonfinite:
                raise NonFiniteLoss(
                    f"non-finite {what} at step {self.step + 1} (epoch {self.epoch}); lower lr "
                    "or use --set skip_nonfinite=true to skip such steps"
                )
            log(f"step {self.step + 1}: non-finite {what}, step skipped (skip_nonfinite)")
        else:
            self.in_update = True
            self.scaler.step(self.optimizer)
            self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        terms["grad_norm"] = grad_norm
        return terms

    def _drop_idle_gradients(self, batches: list) -> None:
        """Under DDP every parameter gets a gradient (Pretrainer touch_idle); a modality that no rank's batch of
        this step held gets None back, so AdamW leaves its stem and head alone, as on one process."""
        if not self.dist.enabled:
            return
        held = [float(any(b.modality == m for b in batches)) for m in self.preset.modality_channels]
        for modality, anywhere in zip(
            self.preset.modality_channels, all_reduce_max_each(held, self.device, self.dist), strict=True
        ):
            if not anywhere:
                for param in self.model.modality_parameters(modality):
                    param.grad = None

    def _accumulate(self, batches: list) -> dict[str, float]:
        self.optimizer.zero_grad(set_to_none=True)
        self.ddp_model.train()
        sums = {t: torch.zeros((), device=self.device) for t in TERMS}
        counted = {t: torch.zeros((), device=self.device) for t in DIAGNOSTICS}  # weight of finite diagnostics
        micro_list = []
        for batch in batches:
            parts = min(self.micro_splits, batch.batch_size)
            for micro in batch.split(parts):
                micro_list.append((micro, micro.batch_size / batch.batch_size / len(batches)))
        for index, (micro, weight) in enumerate(micro_list):
            last = index == len(micro_list) - 1
            sync = contextlib.nullcontext() if last or not self.dist.enabled else self.ddp_model.no_sync()
            with sync:
                faults.maybe_oom(micro.batch_size)
                micro = micro.to(self.device, non_blocking=True)
                with autocast(self.amp, self.device):
                    out = self.ddp_model(micro, touch_idle=self.dist.enabled)
                loss = out["loss"].float()
                if faults.nan_at_step(self.step + 1):
                    loss = loss * float("nan")
                self.scaler.scale(loss * weight).backward()
            for t in LOSS_TERMS:
                sums[t] += (loss if t == "loss" else out[t].detach().float()).detach() * weight
            for t in DIAGNOSTICS:  # NaN where undefined (alignment negatives in a micro-batch of one region)
                value = out[t].detach().float()
                finite = torch.isfinite(value)
                sums[t] += torch.where(finite, value, 0.0) * weight
                counted[t] += finite.float() * weight
        for t in DIAGNOSTICS:
            sums[t] = sums[t] / counted[t]  # NaN when no micro-batch defined it
        return dict(zip(TERMS, torch.stack([sums[t] for t in TERMS]).tolist(), strict=True))  # one host read

    def _back_off(self, batches: list, exc: BaseException) -> None:
        smallest = min(b.batch_size for b in batches)
        micro = math.ceil(smallest / min(self.micro_splits, smallest))
        self.optimizer.zero_grad(set_to_none=True)
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        if micro <= 1:
            raise TrainingError(
                f"CUDA out of memory with a micro-batch of 1 region: use a smaller preset or input_size ({exc})"
            ) from exc
        if self.dist.enabled:
            raise TrainingError(
                f"CUDA out of memory under DDP at micro-batch {micro} ({exc}); restart with --resume auto "
                f"--set micro_splits={self.micro_splits * 2} (back-off in flight would desynchronise the ranks)"
            ) from exc
        self.micro_splits *= 2
        new_micro = math.ceil(smallest / min(self.micro_splits, smallest))
        log(
            f"CUDA out of memory at micro-batch {micro}: retrying the step with micro-batch {new_micro} and "
            f"{self.micro_splits} accumulation steps per batch (kept for the rest of the run and in checkpoints)"
        )

    # ------------------------------------------------------------------ validation

    @torch.no_grad()
    def validate(self) -> dict[str, float] | None:
        self.model.eval()
        sums = [0.0] * len(TERMS)
        count = 0
        try:
            for index, batch in enumerate(self.data.val_batches(self.settings.val_batches_max)):
                if index % self.dist.world_size != self.dist.rank:
                    continue
                with autocast(self.amp, self.device):
                    out = self.model(batch.to(self.device))
                for i, t in enumerate(TERMS):
                    sums[i] += float(out[t].float())
                count += 1
        finally:
            self.model.train()
        totals = all_reduce_mean([*sums, float(count)], self.device, self.dist)
        n = totals[-1] * self.dist.world_size
        if n == 0:
            return None
        return {t: totals[i] * self.dist.world_size / n for i, t in enumerate(TERMS)}

    # ------------------------------------------------------------------ the loop

    def _stop_reason(self) -> int:
        s = self.settings
        local = STOP_NONE
        if s.max_steps is not None and self.step >= s.max_steps:
            local = STOP_MAX_STEPS
        if self.is_main and self.budget.exhausted():
            local = STOP_BUDGET
        if self.stop_request.requested:
            local = STOP_SIGNAL
        return int(all_reduce_max(float(local), self.device, self.dist))

    def _progress_bar(self, total: int, initial: int):
        if not (self.is_main and self.request.progress):
            return None
        from tqdm import tqdm

        return tqdm(
            total=total,
            initial=initial,
            desc=f"epoch {self.epoch}",
            unit="step",
            dynamic_ncols=True,
            mininterval=1.0 if sys.stderr.isatty() else 30.0,
            file=sys.stderr,
            leave=False,
        )

    def _after_step(self, terms: dict[str, float], lr: float, seconds: float, bar) -> None:
        regions = self.preset.batch_size * self.batches_per_step()
        record = {
            "kind": "train",
            "step": self.step,
            "epoch": self.epoch,
            **{t: terms[t] for t in TERMS},
            "grad_norm": terms["grad_norm"],
            "lr": lr,
            "seconds": round(seconds, 4),
            "volumes_per_s": round(regions / max(seconds, 1e-9), 3),
            "micro_splits": self.micro_splits,
        }
        self.metrics.write(record)
        if math.isfinite(terms["loss"]):
            self.session_losses.append(terms["loss"])
            self.epoch_losses.append(terms["loss"])
        self.session_step_s.append(seconds)
        if bar is not None:
            post = {"loss": f"{terms['loss']:.4f}", "lr": f"{lr:.2e}", "vol/s": f"{record['volumes_per_s']:.1f}"}
            if self.device.type == "cuda":
                post["mem"] = f"{torch.cuda.max_memory_allocated(self.device) / 2**30:.1f}G"
            bar.set_postfix(post, refresh=False)
            bar.update(1)

    def _end_epoch(self) -> None:
        val = self.validate()
        names = [ckpt.EPOCH_PATTERN.format(self.epoch), ckpt.LAST]
        train_part = ""
        if self.epoch_losses:
            train_part = f"train loss {sum(self.epoch_losses) / len(self.epoch_losses):.4f} (mean of {len(self.epoch_losses)} steps), "
        self.epoch_losses = []
        if val is None:
            val_part = "no validation volumes (val_fraction holds none out): best_model.pt is not written"
        else:
            self.metrics.write({"kind": "val", "step": self.step, "epoch": self.epoch, **val})
            self.session_val.append(val["loss"])
            val_part = f"validation loss {val['loss']:.4f} (best {min(self.best_val, val['loss']):.4f})"
            if val["loss"] < self.best_val:
                self.best_val = val["loss"]
                names.append(ckpt.BEST)
        if self.is_main:
            log(f"epoch {self.epoch}: {train_part}{val_part}")
        if self.is_main:
            self._write_preview()
        self.epoch += 1
        self.position = 0
        self.save(names)
        if self.is_main:
            ckpt.rotate_epoch_checkpoints(self.run_dir, self.settings.keep_last_k)
            plot_loss_curve(
                self.run_dir / "metrics.jsonl",
                self.run_dir / "loss_curve.png",
                f"{self.preset.name}: {self.run_dir.name}",
                self.loss_weights(),
            )

    def loss_weights(self) -> dict[str, float]:
        p = self.preset
        return {"recon_global": p.global_loss_weight, "recon_local": p.local_loss_weight, "align": p.align_loss_weight}

    def _write_preview(self) -> None:
        """The reconstruction preview (training/preview.py) on the first validation batch of each modality."""
        if self._preview is None:
            self._preview = preview_batches(b.to(self.device) for b in self.data.val_batches())
        if write_preview(
            self.model,
            self._preview,
            self.run_dir / PREVIEW_NAME,
            f"{self.preset.name}: {self.run_dir.name}, epoch {self.epoch}, step {self.step}",
        ):
            return
        if self.epoch == 0:
            log(f"no validation volumes: {PREVIEW_NAME} is not drawn")

    def _loop(self) -> tuple[ExitCode, str]:
        s = self.settings
        while self.epoch < s.epochs:
            try:
                reason = self._epoch()
            except VolumeError as exc:
                saved = "last.pt already held this step"
                if self.last_saved_step != self.step:
                    self.save([ckpt.LAST])  # the position has not moved past the batch that failed
                    saved = f"saved last.pt at step {self.step} first"
                raise TrainingError(
                    f"a volume became unreadable during the run: {exc}; {saved}. Restore the file (or rebuild the "
                    "cache with `rsna-phase0 data cache`), then continue with --resume auto"
                ) from exc
            if reason != STOP_NONE:
                return self._stopped(reason)
            self.watchdog.beat()
        return ExitCode.OK, f"finished {s.epochs} epochs"

    def _epoch(self) -> int:
        """The rest of the current epoch; returns why it stopped early (STOP_NONE: it ended)."""
        s = self.settings
        per_epoch = self.steps_per_epoch()
        done_in_epoch = self.position // self.batches_per_step()
        bar = self._progress_bar(per_epoch, done_in_epoch)
        batches = self.data.train_batches(
            self.epoch, start=self.position, rank=self.dist.rank, world_size=self.dist.world_size
        )
        try:
            for _ in range(done_in_epoch, per_epoch):
                reason = self._stop_reason()
                if reason != STOP_NONE:
                    return reason
                started = time.perf_counter()
                faults.maybe_hang(self.step + 1)
                step_batches = [next(batches) for _ in range(s.accum_steps)]
                lr = self.scheduler.lr
                terms = self._train_step(step_batches)
                self.scheduler.step()
                self.step += 1
                self.position += self.batches_per_step()
                self.in_update = False
                seconds = time.perf_counter() - started
                self.watchdog.beat()
                self.budget.observe_step(seconds)
                self._after_step(terms, lr, seconds, bar)
                if self.is_main and time.monotonic() - self.last_save_time >= s.checkpoint_every_min * 60:
                    self.save([ckpt.LAST])
        finally:
            if bar is not None:
                bar.close()
        self._end_epoch()
        return STOP_NONE

    def _stopped(self, reason: int) -> tuple[ExitCode, str]:
        if self.last_saved_step != self.step:
            self.save([ckpt.LAST])
        if reason == STOP_MAX_STEPS:
            return ExitCode.OK, f"reached max_steps={self.settings.max_steps}"
        if reason == STOP_BUDGET:
            return ExitCode.OK, (
                f"stopped by the time budget ({self.budget.elapsed():.0f} s of {self.request.time_budget_s:.0f} s, "
                f"reserve {self.budget.reserve():.1f} s); continue with --resume auto"
            )
        signum = self.stop_request.signum
        code = self.stop_request.exit_code if signum is not None else ExitCode.SIGTERM
        return code, "stopped by a signal; last.pt saved, continue with --resume auto"

    def run(self) -> RunResult:
        self.stop_request.install()
        self.watchdog = Watchdog(
            self.settings.watchdog_s, self.run_dir / "hang_stacks.txt", on_hang=self._watchdog_save
        )
        self.lock = None
        try:
            self.stop_request.immediate = True  # until the loop starts, a signal ends the run at once
            self._prepare()
            if self.is_main:
                ckpt.atomic_write_json(self.run_dir / "config.json", self.config)
                if self.last_saved_step < 0 and self.step == 0:
                    seconds = self.save([ckpt.LAST])  # resumable from the start; measures the checkpoint time
                    log(f"checkpoint time {seconds:.2f} s (the time budget keeps room for it)")
            self.stop_request.immediate = False
            self.watchdog.start()
            try:
                code, reason = self._loop()
                if self.last_saved_step != self.step:
                    self.save([ckpt.LAST])
            except NonFiniteLoss as exc:
                code, reason = ExitCode.NONFINITE, str(exc)
                self.optimizer.zero_grad(set_to_none=True)
                if self.last_saved_step != self.step:
                    self.save([ckpt.LAST])  # the weights before the bad step: resume from them with a lower lr
            finally:
                self.watchdog.stop()
            if self.is_main:
                plot_loss_curve(
                    self.run_dir / "metrics.jsonl",
                    self.run_dir / "loss_curve.png",
                    f"{self.preset.name}: {self.run_dir.name}",
                    self.loss_weights(),
                )
            return self._result(code, reason)
        except Interrupted as exc:
            saved = (
                f"{ckpt.LAST} of step {self.last_saved_step} stands" if self.last_saved_step >= 0 else "nothing saved"
            )
            return self._result(exc.exit_code, f"stopped by {signal.Signals(exc.signum).name} {exc.when} ({saved})")
        finally:
            self.stop_request.uninstall()
            if self.lock is not None:
                self.lock.__exit__(None, None, None)
            shutdown_distributed()

    def _result(self, code: ExitCode, reason: str) -> RunResult:
        losses = self.session_losses
        k = max(1, min(5, len(losses) // 4))
        shown = self.is_main and self.run_dir.is_dir()
        files = sorted(p.name for p in self.run_dir.iterdir() if not p.name.startswith(".")) if shown else []
        # the first steps include warm-up (allocator, kernel maps): the median ignores them
        median = sorted(self.session_step_s)[len(self.session_step_s) // 2] if self.session_step_s else None
        regions = self.preset.batch_size * self.batches_per_step()
        return RunResult(
            exit_code=code,
            reason=reason,
            step=self.step,
            epoch=self.epoch,
            first_loss=sum(losses[:k]) / k if losses else None,
            last_loss=sum(losses[-k:]) / k if losses else None,
            loss_window=k,
            val_losses=self.session_val,
            median_step_s=median,
            volumes_per_s=regions / median if median else None,
            files=[str(self.run_dir / f) for f in files],
        )


class NonFiniteLoss(RuntimeError):
    pass


def _describe_plan(plan: dict) -> str:
    return f"{plan['volumes']} volumes (train {plan['train']}, validation {plan['validation']})"


def run_training(request: RunRequest) -> RunResult:
    return Trainer(request).run()
