"""The crop cache under damage and faults (issue 13, D4): checksums the loader verifies, rebuilt entries named,
temp files of a killed build swept, a full disk reported in one line."""

from __future__ import annotations

import errno

import numpy as np
import pytest
from click.testing import CliRunner

from rsna_phase0.cli import main
from rsna_phase0.data import cache as cache_mod
from rsna_phase0.data.cache import CachedVolume, build_cache, entry_paths, load_meta
from rsna_phase0.data.errors import VolumeError
from rsna_phase0.data.layout import files_in
from rsna_phase0.data.synth import synth_dataset


@pytest.fixture()
def one_volume(tmp_path):
    root = tmp_path / "data"
    synth_dataset(root, mri=1, ct=0, seed=7)
    files = files_in(root, "mri")
    assert build_cache(files, tmp_path / "cache", workers=1, progress=False).built == 1
    return root, files[0], tmp_path / "cache"


def _flip_a_byte_in_the_middle(path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x10
    path.write_bytes(bytes(data))


def test_a_flipped_byte_in_a_cache_entry_stops_the_loader_with_the_rebuild_command(one_volume):
    _, file, cache = one_volume
    data_path, _ = entry_paths(cache, file.modality, file.relpath, 1.0)
    meta = load_meta(cache, file.modality, file.relpath, file.path)  # the training check: size only, passes
    _flip_a_byte_in_the_middle(data_path)
    assert load_meta(cache, file.modality, file.relpath, file.path) is not None  # same size: still "complete"
    volume = CachedVolume.from_meta(cache, meta)
    with pytest.raises(VolumeError) as caught:
        volume.read(np.array([0, 0, 0]), np.array(volume.shape))
    message = str(caught.value)
    assert f"cache entry of {file.path} is damaged (CRC-32 of the file differs" in message
    assert f"rebuild it with `rsna-phase0 data cache <your data folders> --out {cache}`" in message


def test_data_cache_names_what_it_rebuilt_and_sweeps_temp_files(one_volume):
    root, file, cache = one_volume
    data_path, _ = entry_paths(cache, file.modality, file.relpath, 1.0)
    _flip_a_byte_in_the_middle(data_path)
    leftovers = [data_path.parent / f".{data_path.stem}.abc123.b2nd", data_path.parent / ".x.json.tmp-99-ab12cd34"]
    for tmp in leftovers:
        tmp.write_bytes(b"partial")
    result = CliRunner().invoke(main, ["data", "cache", str(root), "--out", str(cache), "--workers", "1"])
    assert result.exit_code == 0, result.output
    assert "cache: 1 built, 0 already complete, 0 rejected" in result.output
    assert f"rebuilt 1 damaged, incomplete or stale entries: {file.relpath}" in result.output
    assert "removed 2 temp files left by an interrupted build" in result.output
    assert not any(tmp.exists() for tmp in leftovers)


def test_disk_full_in_data_cache_is_one_line_naming_the_entry(one_volume, monkeypatch):
    root, file, cache = one_volume
    other = cache.parent / "cache2"
    import blosc2

    def full(*_args, **_kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(blosc2, "asarray", full)
    result = CliRunner().invoke(main, ["data", "cache", str(root), "--out", str(other), "--workers", "1"])
    assert result.exit_code == 1, result.output
    line = result.output.strip().splitlines()[-1]
    data_path, _ = entry_paths(other, file.modality, file.relpath, 1.0)
    assert line.startswith(f"Error: no space left on the device of {data_path} (needs about ")
    assert "nothing of" in line and "run the same command again to continue" in line
    assert "Traceback" not in result.output and not list(other.glob("*/.*b2nd"))


def test_a_second_data_cache_in_the_same_folder_is_refused(one_volume, monkeypatch):
    root, _, cache = one_volume
    import fcntl

    with open(cache / ".lock", "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        result = CliRunner().invoke(main, ["data", "cache", str(root), "--out", str(cache), "--workers", "1"])
    assert result.exit_code == 1 and "another `rsna-phase0 data cache` is building here" in result.output


def test_data_scan_out_unwritable_is_refused_before_the_scan_and_disk_full_keeps_the_table(one_volume, monkeypatch):
    root, _, _ = one_volume
    result = CliRunner().invoke(main, ["data", "scan", str(root), "--out", "/proc/x/m.json", "--workers", "1"])
    assert result.exit_code == 1 and "--out /proc/x/m.json: cannot create a file in /proc" in result.output
    assert "modality" not in result.output  # nothing was scanned

    def full(*_args, **_kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("rsna_phase0.data.manifest.write_json_atomic", full)
    out = root.parent / "m.json"
    result = CliRunner().invoke(main, ["data", "scan", str(root), "--out", str(out), "--workers", "1"])
    assert result.exit_code == 1
    assert "total" in result.output  # the scan's table survived
    assert f"no space left on the device of {out} (needs about " in result.output and "Traceback" not in result.output


def test_crc32_matches_zlib_over_the_whole_file(one_volume):
    import zlib

    _, file, cache = one_volume
    data_path, _ = entry_paths(cache, file.modality, file.relpath, 1.0)
    assert cache_mod.crc32_file(data_path) == zlib.crc32(data_path.read_bytes())
