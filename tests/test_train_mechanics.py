"""The training infrastructure's pure mechanics: config, atomic checkpoints, RNG, schedule, budget, metrics."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from rsna_phase0.training import checkpoint as ckpt
from rsna_phase0.training.config import (
    SMOKE_EPOCHS,
    load_config_file,
    parse_duration,
    preset_from_config,
    resolve_config,
    resume_conflicts,
)
from rsna_phase0.training.metrics import MetricsLog, plot_loss_curve, read_metrics, term_curves
from rsna_phase0.training.rng import capture_rng, restore_rng
from rsna_phase0.training.schedule import WarmupCosine
from rsna_phase0.training.survival import TimeBudget


@pytest.mark.parametrize(("text", "seconds"), [("8h30m", 30600), ("4m", 240), ("90s", 90), ("1.5h", 5400), ("75", 75)])
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "8x", "h", "1m2h"])
def test_parse_duration_rejects_nonsense(text):
    with pytest.raises(ValueError, match="cannot read duration"):
        parse_duration(text)


def test_config_layers_and_types():
    config = resolve_config(
        "smoke",
        file_values={"lr": 0.01, "epochs": 3},
        set_values={"lr": "0.002", "skip_nonfinite": "true", "stage_dims": "16,32,48"},
        flags={"epochs": 7, "seed": None},
    )
    assert config["preset"]["lr"] == 0.002 and config["preset"]["stage_dims"] == (16, 32, 48)
    assert config["train"]["epochs"] == 7 and config["train"]["skip_nonfinite"] is True
    assert config["train"]["seed"] == 0  # a flag left unset does not override


def test_config_rejects_unknown_keys_and_bad_values():
    with pytest.raises(ValueError, match="unknown setting\\(s\\) lrr"):
        resolve_config("smoke", set_values={"lrr": "1"})
    with pytest.raises(ValueError, match="skip_nonfinite='maybe': expected true or false"):
        resolve_config("smoke", set_values={"skip_nonfinite": "maybe"})
    with pytest.raises(ValueError, match="amp='fp8'"):
        resolve_config("smoke", set_values={"amp": "fp8"})


def test_resume_conflicts_ignore_harmless_changes():
    a = resolve_config("smoke")
    b = resolve_config("smoke", set_values={"epochs": "9", "max_steps": "3", "lr": "0.5", "decoder_dim": "16"})
    assert resume_conflicts(a, b) == ["preset.decoder_dim: checkpoint 32, now 16"]


def test_a_runs_config_json_is_a_config_file(tmp_path):
    config = resolve_config(
        "dev",
        set_values={"lr": "0.01", "stage_dims": "24,64,160", "ct_windows": "[[0,80],[-20,180],[-100,600]]"},
    )
    path = tmp_path / "config.json"
    ckpt.atomic_write_json(path, config)
    again = resolve_config(None, load_config_file(path))
    assert again["preset"]["name"] == "dev" and resume_conflicts(config, again) == []
    assert preset_from_config(again).ct_windows == ((0.0, 80.0), (-20.0, 180.0), (-100.0, 600.0))
    assert resolve_config(None)["train"]["epochs"] == SMOKE_EPOCHS
    assert resolve_config("kaggle", load_config_file(path))["preset"]["name"] == "kaggle"  # --preset wins


def test_atomic_write_keeps_the_old_file_when_the_write_fails(tmp_path):
    target = tmp_path / "last.pt"
    ckpt.atomic_write_text(target, "old")

    def broken(handle):
        handle.write(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        ckpt.atomic_write(target, broken)
    assert target.read_text() == "old"
    assert list(tmp_path.iterdir()) == [target]  # no temp file left behind


def _state(step: int) -> dict:
    model = torch.nn.Linear(3, 2)
    return {
        "model": model.state_dict(),
        "optimizer": {},
        "scheduler": {},
        "rng": capture_rng(),
        "position": {"epoch": 0, "batch": step},
        "step": step,
        "config": {"preset": {}, "train": {}},
    }


def test_checkpoint_round_trip_and_clear_errors(tmp_path):
    path = tmp_path / "last.pt"
    ckpt.save_checkpoint(_state(4), path)
    assert ckpt.load_checkpoint(path)["step"] == 4
    torn = tmp_path / "torn.pt"
    torn.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ckpt.CheckpointError, match=f"checkpoint {torn}: cannot be read"):
        ckpt.load_checkpoint(torn)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(2)}, foreign)
    with pytest.raises(ckpt.CheckpointError, match=f"checkpoint {foreign}: not an rsna_phase0 training checkpoint"):
        ckpt.load_checkpoint(foreign)
    with pytest.raises(ckpt.CheckpointError, match="no such file"):
        ckpt.load_checkpoint(tmp_path / "absent.pt")


def test_copies_rotation_and_stale_temps(tmp_path):
    for epoch in range(5):
        epoch_file = tmp_path / ckpt.EPOCH_PATTERN.format(epoch)
        ckpt.save_checkpoint(_state(epoch), epoch_file)
        ckpt.copy_checkpoint(epoch_file, tmp_path / ckpt.LAST)
        ckpt.rotate_epoch_checkpoints(tmp_path, keep=2)
    assert sorted(p.name for p in tmp_path.glob("checkpoint_epoch_*")) == [
        "checkpoint_epoch_0003.pt",
        "checkpoint_epoch_0003.pt.sha256",
        "checkpoint_epoch_0004.pt",
        "checkpoint_epoch_0004.pt.sha256",
    ]
    assert ckpt.load_checkpoint(tmp_path / ckpt.LAST)["step"] == 4
    (tmp_path / ".last.pt.tmp-123").write_bytes(b"partial")
    assert [p.name for p in ckpt.remove_stale_temps(tmp_path)] == [".last.pt.tmp-123"]


def test_find_resume(tmp_path):
    assert ckpt.find_resume(tmp_path, None) is None
    assert ckpt.find_resume(tmp_path, "auto") is None
    ckpt.save_checkpoint(_state(1), tmp_path / ckpt.LAST)
    with pytest.raises(ckpt.CheckpointError, match="already holds a run"):
        ckpt.find_resume(tmp_path, None)
    assert ckpt.find_resume(tmp_path, "auto").path == tmp_path / ckpt.LAST
    with pytest.raises(ckpt.CheckpointError, match="no such file"):
        ckpt.find_resume(tmp_path, str(tmp_path / "x.pt"))


def test_rng_state_survives_a_checkpoint(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    path = tmp_path / "rng.pt"
    ckpt.save_checkpoint(_state(0), path)  # captures the RNG
    expected = (random.random(), np.random.rand(), torch.rand(1).item(), np.random.randn())
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    restore_rng(ckpt.load_checkpoint(path)["rng"])  # weights_only load: plain values and tensors
    assert (random.random(), np.random.rand(), torch.rand(1).item(), np.random.randn()) == expected


def test_warmup_cosine_schedule_and_state():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = WarmupCosine(opt, base_lr=1.0, warmup_steps=4, total_steps=20, min_ratio=0.1)
    lrs = []
    for _ in range(20):
        lrs.append(opt.param_groups[0]["lr"])
        sched.step()
    assert lrs[:4] == [0.25, 0.5, 0.75, 1.0]
    assert lrs[4] == pytest.approx(1.0) and all(a >= b for a, b in zip(lrs[4:], lrs[5:], strict=False))
    assert sched.lr == pytest.approx(0.1)
    other = WarmupCosine(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0), 1.0, 4, 20, 0.1)
    other.load_state_dict(sched.state_dict())
    assert other.optimizer.param_groups[0]["lr"] == pytest.approx(0.1)


def test_time_budget_reserves_a_step_and_a_checkpoint():
    budget = TimeBudget(100.0, margin_s=5.0, started=0.0)
    budget.observe_step(2.0)
    budget.observe_checkpoint(4.0)
    assert budget.reserve() == pytest.approx(2.0 + 6.0 + 5.0)
    assert TimeBudget(None, 5.0).exhausted() is False
    assert TimeBudget(10.0, margin_s=20.0).exhausted() is True


def test_metrics_truncate_and_plot(tmp_path):
    log = MetricsLog(tmp_path / "metrics.jsonl")
    for step in range(1, 7):
        log.write({"kind": "train", "step": step, "loss": 2.0 / step, "recon_global": 1.0, "align": float("nan")})
    log.write({"kind": "val", "step": 5, "loss": 0.5})
    with open(tmp_path / "metrics.jsonl", "a") as handle:
        handle.write('{"kind": "train", "st')  # torn by a kill
    assert log.truncate_after(4) == 4  # steps 5, 6, the val record at 5, the torn line
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [1, 2, 3, 4]
    assert plot_loss_curve(tmp_path / "metrics.jsonl", tmp_path / "curve.png")
    assert (tmp_path / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plotted_terms_are_weighted_as_in_the_loss():
    weights = {"recon_global": 1.0, "recon_local": 1.0, "align": 0.1}
    terms = {"recon_global": 0.8, "recon_local": 0.6, "align": 0.5}
    loss = sum(weights[k] * v for k, v in terms.items())
    curves = term_curves([{"kind": "train", "step": 1, "loss": loss, **terms}], weights)
    assert list(curves) == ["1 x recon_global", "1 x recon_local", "0.1 x align"]
    assert sum(ys[0] for _, ys in curves.values()) == pytest.approx(loss)  # the panels add up
    assert term_curves([{"step": 1, **terms}], None)["align"] == ([1], [0.5])  # unweighted: labelled bare


def test_estimate_honours_max_steps():
    from rsna_phase0.training.preflight import PreflightReport, estimate_time

    def estimate(**kw):
        report = PreflightReport()
        estimate_time(report, step_s=1.0, steps_per_epoch=20, epochs=8, budget_s=None, elapsed_s=0.0, **kw)
        return report.lines[0]

    assert "3 steps left (to --max-steps 3) = 3s" in estimate(done_steps=0, max_steps=3)
    assert "1 steps left (to --max-steps 3)" in estimate(done_steps=2, max_steps=3)
    assert "160 steps left (to 8 epochs) = 2m40s" in estimate(done_steps=0, max_steps=500)
    assert "160 steps left (to 8 epochs)" in estimate(done_steps=0)


def test_summary_says_what_the_losses_average():
    from rsna_phase0.training.trainer import ExitCode, RunResult

    result = RunResult(ExitCode.OK, "finished 8 epochs", 160, 8, first_loss=1.4778, last_loss=1.057, loss_window=5)
    assert "train loss 1.4778 -> 1.0570 (mean of the first 5 / last 5 steps of this session)" in result.summary()
