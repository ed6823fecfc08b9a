"""Bad input is refused before any work, with one clear message (issue 13, D3 and the settings)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from train_helpers import smoke_train_args

from rsna_phase0.cli import main
from rsna_phase0.training import checkpoint as ckpt


def invoke(*argv: str):
    result = CliRunner().invoke(main, list(argv))
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit), result.output
    return result.exit_code, result.output


def _checkpoint(path):
    state = {"model": {}, "optimizer": {}, "scheduler": {}, "rng": {}, "position": {}, "step": 7, "config": {}}
    ckpt.save_checkpoint(state, path)
    return path.read_bytes()


def test_export_encoder_refuses_to_overwrite_the_checkpoint_itself(tmp_path):
    best = tmp_path / "run" / ckpt.BEST
    before = _checkpoint(best)
    code, out = invoke("export-encoder", str(best), str(best))
    assert code == 1 and f"{best}: is the checkpoint being exported; write the encoder to another file" in out
    assert best.read_bytes() == before


def test_export_encoder_refuses_another_training_checkpoint_a_folder_and_an_unwritable_place(tmp_path):
    best, last = tmp_path / ckpt.BEST, tmp_path / ckpt.LAST
    _checkpoint(best)
    before = _checkpoint(last)
    code, out = invoke("export-encoder", str(best), str(last))
    assert code == 1 and "is a training checkpoint; export-encoder never overwrites one" in out
    assert last.read_bytes() == before
    code, out = invoke("export-encoder", str(best), str(tmp_path))
    assert code == 1 and f"{tmp_path}: is a folder; give the encoder a file name" in out
    code, out = invoke("export-encoder", str(best), "/proc/x/encoder.pt")
    assert code == 1 and "/proc/x/encoder.pt: cannot write the encoder there: /proc/x is not an existing folder" in out


def test_train_out_that_is_a_file_or_unwritable_is_refused_first(train_data, tmp_path):
    afile = tmp_path / "notes.txt"
    afile.write_text("keep me")
    code, out = invoke("train", *smoke_train_args(train_data, afile))
    assert code == 1 and f"--out {afile}: is a file, not a folder" in out and "environment" not in out
    assert afile.read_text() == "keep me"
    code, out = invoke("train", *smoke_train_args(train_data, Path("/proc/x")))
    assert code == 1 and "--out /proc/x: cannot create or write the run folder" in out


def test_a_wrong_data_folder_is_reported_before_the_environment_check_and_leaves_nothing(train_data, tmp_path):
    mri, ct = train_data
    run = tmp_path / "run"
    argv = smoke_train_args((tmp_path / "no-such", ct), run)
    code, out = invoke("train", *argv)
    assert code == 1 and f"--mri-dir {tmp_path / 'no-such'}: no such folder" in out
    assert "environment" not in out  # the check-env probes did not run
    assert not run.exists()  # no run folder, no .lock


@pytest.mark.parametrize(
    "args, message",
    [
        (["--num-workers", "-1"], "num_workers=-1: must be a number in [0, 256]"),
        (["--set", "lr=-1"], "lr=-1.0: must be a number in (0, 1]"),
        (["--set", "grad_clip=nan"], "grad_clip=nan: must be a number in [0, inf)"),
        (["--set", "checkpoint_every_min=-1"], "checkpoint_every_min=-1.0: must be a number in [0, inf)"),
        (["--time-budget", "0"], "the budget must be more than 0 s"),
        (["--time-budget", "-5"], "the budget must be more than 0 s"),
    ],
)
def test_settings_out_of_range_are_refused_with_the_range(tmp_path, args, message):
    run = tmp_path / "run"
    code, out = invoke("train", "--mri-dir", str(tmp_path), "--out", str(run), *args)
    assert code in (1, 2) and message in out, out
    assert "Traceback" not in out and not run.exists()


@pytest.mark.parametrize("probe", [None, "torch 2.4"])
def test_check_env_against_a_report_with_a_null_or_string_probe_exits_2(tmp_path, probe):
    report = tmp_path / "other.json"
    report.write_text(json.dumps({"schema": 1, "probes": {"torch": probe, "python": {}}}))
    code, out = invoke("check-env", "--against", str(report))
    assert code == 2, out
    assert f"{report}: malformed probes (torch is {type(probe).__name__}; each must be a mapping)" in out


def test_check_env_write_report_to_an_unwritable_place_exits_2_before_probing(tmp_path):
    code, out = invoke("check-env", "--write-report", "/proc/x/report.json")
    assert code == 2 and "--write-report /proc/x/report.json: cannot create a file in /proc" in out
    code, out = invoke("check-env", "--write-report", str(tmp_path))
    assert code == 2 and "is a directory" in out  # click refuses it already
