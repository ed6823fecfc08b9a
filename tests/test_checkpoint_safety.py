"""Checkpoint files under damage (issue 13, D1/D2): independent verified copies, and resume choices that never
overwrite a run or load a damaged file."""

from __future__ import annotations

import errno
import os
import re

import pytest
import torch

from rsna_phase0.training import checkpoint as ckpt


class Foreign:
    """An object a weights_only load refuses."""


def _state(step: int) -> dict:
    return {
        "model": {"w": torch.full((64, 64), float(step))},
        "optimizer": {},
        "scheduler": {},
        "rng": {},
        "position": {"epoch": step // 5, "batch": step % 5},
        "step": step,
        "config": {"preset": {}, "train": {}},
    }


def _run(tmp_path, *, last: bool = True):
    """A run folder as training leaves it: epoch 0 at step 5 (also best), epoch 1 at step 10, last.pt at 12."""

    epoch0, epoch1 = tmp_path / ckpt.EPOCH_PATTERN.format(0), tmp_path / ckpt.EPOCH_PATTERN.format(1)
    ckpt.save_checkpoint(_state(5), epoch0)
    ckpt.copy_checkpoint(epoch0, tmp_path / ckpt.BEST)
    ckpt.save_checkpoint(_state(10), epoch1)
    _age(epoch0, 30), _age(tmp_path / ckpt.BEST, 30), _age(epoch1, 20)
    if last:
        ckpt.save_checkpoint(_state(12), tmp_path / ckpt.LAST)
    return epoch0, epoch1


def _age(path, seconds: float) -> None:
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns - int(seconds * 1e9)))


def test_copies_are_independent_files_so_damage_to_one_spares_the_others(tmp_path):
    epoch0, epoch1 = _run(tmp_path)
    ckpt.copy_checkpoint(epoch1, tmp_path / ckpt.LAST)
    assert os.stat(epoch1).st_ino != os.stat(tmp_path / ckpt.LAST).st_ino  # a copy, not a hard link
    with open(tmp_path / ckpt.LAST, "r+b") as handle:  # truncated in place, as in the issue
        handle.truncate(1000)
    assert ckpt.load_checkpoint(epoch1)["step"] == 10
    with pytest.raises(ckpt.CheckpointError) as caught:
        ckpt.load_checkpoint(tmp_path / ckpt.LAST)
    message = str(caught.value)
    assert f"checkpoint {tmp_path / ckpt.LAST}: damaged: its SHA-256" in message
    assert f"The newest checkpoint that loads is {epoch1} (step 10): resume from it with `--resume {epoch1}`" in message


def test_a_flipped_byte_that_torch_would_load_is_caught_by_the_digest(tmp_path):
    path = tmp_path / ckpt.LAST
    ckpt.save_checkpoint(_state(3), path)
    data = bytearray(path.read_bytes())
    offset = data.find(torch.full((64, 64), 3.0).numpy().tobytes()[:64])  # inside the tensor's raw data
    assert offset > 0
    data[offset + 2] ^= 0x01
    path.write_bytes(bytes(data))
    assert torch.load(path, weights_only=True)["model"]["w"].sum() != 3.0 * 64 * 64  # torch: no complaint
    with pytest.raises(ckpt.CheckpointError, match="damaged: its SHA-256 .* recorded in last.pt.sha256"):
        ckpt.load_checkpoint(path)


def test_the_digest_file_is_in_sha256sum_format_and_lists_one_digest_after_a_write(tmp_path):
    path = tmp_path / ckpt.LAST
    ckpt.save_checkpoint(_state(1), path)
    ckpt.save_checkpoint(_state(2), path)
    line = (tmp_path / "last.pt.sha256").read_text()
    assert line == f"{ckpt.sha256_file(path)}  last.pt\n"


def test_a_kill_between_digest_and_rename_leaves_the_old_file_valid(tmp_path, monkeypatch):
    path = tmp_path / ckpt.LAST
    ckpt.save_checkpoint(_state(1), path)

    def killed_before_rename(target, write):
        class Sink:
            def write(self, data):
                return len(data)

            def flush(self):
                pass

        write(Sink())  # the digest file now lists the new digest too
        raise KeyboardInterrupt  # stands for SIGKILL before os.replace

    monkeypatch.setattr(ckpt, "atomic_write", killed_before_rename)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save_checkpoint(_state(2), path)
    assert len((tmp_path / "last.pt.sha256").read_text().splitlines()) == 2
    assert ckpt.load_checkpoint(path)["step"] == 1


def test_corrupt_checkpoint_errors_do_not_pass_on_torchs_unsafe_advice(tmp_path):
    path = tmp_path / "foreign.pt"
    torch.save({"x": Foreign()}, path)
    with pytest.raises(ckpt.CheckpointError) as caught:
        ckpt.load_checkpoint(path)
    message = str(caught.value)
    assert "weights_only" not in message and "trust" not in message
    assert "holds Python objects that a safe load refuses" in message


def test_a_folder_with_checkpoints_and_no_resume_is_refused_with_both_ways_out(tmp_path):
    _run(tmp_path, last=False)  # no last.pt: the case that used to start over and overwrite best_model.pt
    with pytest.raises(ckpt.CheckpointError) as caught:
        ckpt.find_resume(tmp_path, None)
    message = str(caught.value)
    assert f"{tmp_path} already holds a run (" in message and "best_model.pt" in message
    assert "continue it with `--resume auto`, or start over in a new folder (another --out)" in message


def test_resume_auto_without_last_takes_the_newest_loadable_checkpoint_and_says_so(tmp_path):
    epoch0, epoch1 = _run(tmp_path, last=False)
    chosen = ckpt.find_resume(tmp_path, "auto")
    assert chosen.path == epoch1 and chosen.state["step"] == 10
    assert f"no last.pt in {tmp_path}; resuming from {epoch1.name} (step 10)" in chosen.note
    epoch1.write_bytes(epoch1.read_bytes()[:500])  # the newest is damaged: the next one, and why
    chosen = ckpt.find_resume(tmp_path, "auto")
    assert chosen.state["step"] == 5 and "skipped: checkpoint" in chosen.note and epoch1.name in chosen.note
    for path in (epoch0, tmp_path / ckpt.BEST):
        path.write_bytes(b"junk")
    with pytest.raises(ckpt.CheckpointError, match="no last.pt .* none of its checkpoints loads"):
        ckpt.find_resume(tmp_path, "auto")


def test_a_damaged_last_pt_is_refused_naming_the_fallback(tmp_path):
    _, epoch1 = _run(tmp_path)
    (tmp_path / ckpt.LAST).write_bytes(b"torn")
    with pytest.raises(ckpt.CheckpointError, match=f"resume from it with `--resume {epoch1}`"):
        ckpt.find_resume(tmp_path, "auto")


def test_disk_full_while_saving_is_one_line_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / ckpt.LAST
    ckpt.save_checkpoint(_state(1), path)

    def full(*_args, **_kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(ckpt.DiskFullError) as caught:
        ckpt.save_checkpoint(_state(2), path)
    message = str(caught.value)
    assert "\n" not in message
    assert re.search(
        f"no space left on the device of {re.escape(str(path))} \\(needs about [0-9.]+ MB, [0-9.]+ [MG]B free\\)",
        message,
    )
    assert "the previous last.pt (if any) is intact" in message and "--resume auto" in message
    assert ckpt.load_checkpoint(path)["step"] == 1
    assert not list(tmp_path.glob(".*.tmp-*"))
