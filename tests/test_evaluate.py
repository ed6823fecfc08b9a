"""`rsna-phase0 evaluate` on the real model (a smoke-preset Pretrainer's exported encoder) and real NIfTI files:
end to end with its table, JSON and plot; a fine-tune that learns; a probe that leaves the encoder untouched; both
arms of a comparison see the same head and data; bad input names the file."""

from __future__ import annotations

import copy
import json
import shutil

import nibabel as nib
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from rsna_phase0.atomic import TEMP_GLOB
from rsna_phase0.cli import main
from rsna_phase0.data.errors import VolumeError
from rsna_phase0.data.synth_labels import synth_labelled_dataset
from rsna_phase0.evaluation.cases import find_cases
from rsna_phase0.evaluation.experiment import load_cases
from rsna_phase0.evaluation.finetune import Budget, Runtime, build_model, finetune, random_encoder, score
from rsna_phase0.evaluation.geometry import windows
from rsna_phase0.evaluation.metrics import auc, mean_sd
from rsna_phase0.evaluation.preprocess import load_case
from rsna_phase0.evaluation.sampling import SegmentationCrops
from rsna_phase0.evaluation.split import holdout_split, label_subset
from rsna_phase0.models.encoder_file import export_dense_encoder, load_dense_encoder, save_dense_encoder
from rsna_phase0.models.pretrainer import Pretrainer
from rsna_phase0.presets import get_preset
from rsna_phase0.training.amp import AmpMode

SMOKE = get_preset("smoke")
CPU = Runtime(torch.device("cpu"), AmpMode(None, False), side=32)
# heads ~28 mm across: at the smoke preset's 1 mm one 32^3 crop holds a whole head, and inference is one 32^3 cube
HEAD_MM = 28.0


@pytest.fixture(scope="module")
def encoder_path(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("encoder") / "encoder.pt"
    save_dense_encoder(export_dense_encoder(Pretrainer(get_preset("smoke"))), path)
    return path


@pytest.fixture(scope="module")
def heads(tmp_path_factory):
    root = tmp_path_factory.mktemp("heads")
    synth_labelled_dataset(root, n=6, seed=1, size_mm=HEAD_MM)
    return root


def _evaluate(*args):
    return CliRunner().invoke(main, ["evaluate", *map(str, args)])


@pytest.mark.slow
def test_evaluate_runs_end_to_end_and_writes_table_json_and_plot(encoder_path, heads, tmp_path):
    out = tmp_path / "out"
    result = _evaluate(
        encoder_path, "--data", heads, "--task", "segmentation", "--out", out, "--holdout", 2, "--seeds", 2,
        "--label-fractions", "1.0,0.5", "--modes", "full", "--steps", 1, "--batch-size", 1, "--max-inference-size", 32,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    payload = json.loads((out / "evaluate.json").read_text())
    assert payload["complete"] and payload["headline"] == "dice_aneurysm"
    split = payload["split"]
    assert len(split["test"]) == 2 and sorted(split["train"] + split["test"]) == [f"head_{i:03d}" for i in range(6)]
    # 2 seeds x 2 fractions x 2 inits (the probe: the classification test below)
    runs = payload["runs"]
    assert len(runs) == 8 and {(r["init"], r["mode"]) for r in runs} == {("pretrained", "full"), ("random", "full")}
    assert {r["n_train"] for r in runs if r["label_fraction"] == 0.5} == {2}
    assert all(0.0 <= r["metrics"][k] <= 1.0 for r in runs for k in ("dice_vessel", "dice_aneurysm"))
    assert payload["settings"]["steps"] == 1 and payload["settings"]["preset"] == "smoke"
    # the summary is the mean +- sd of the per-seed figures
    assert len(payload["summary"]) == 4
    for row in payload["summary"]:
        values = [
            r["metrics"]["dice_aneurysm"]
            for r in runs
            if (r["init"], r["mode"], r["label_fraction"]) == (row["init"], row["mode"], row["label_fraction"])
        ]
        assert row["dice_aneurysm"]["values"] == values
        assert (row["dice_aneurysm"]["mean"], row["dice_aneurysm"]["sd"]) == pytest.approx(mean_sd(values))
    table = (out / "evaluate.txt").read_text()
    assert "aneurysm Dice" in table and table in result.output
    assert sum(line.startswith("full") for line in table.splitlines()) == 4
    png = (out / "evaluate.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10_000
    assert not list(out.glob(TEMP_GLOB))


def test_classification_from_a_labels_csv_alone(encoder_path, heads, tmp_path):
    data = tmp_path / "csv_only"
    shutil.copytree(heads / "images", data / "images")
    shutil.copy(heads / "labels.csv", data / "labels.csv")
    result = _evaluate(
        encoder_path, "--data", data, "--task", "classification", "--out", tmp_path / "out", "--holdout", 4,
        "--seeds", 1, "--label-fractions", "1.0", "--modes", "probe", "--steps", 1, "--batch-size", 2,
        "--max-inference-size", 32,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    payload = json.loads((tmp_path / "out" / "evaluate.json").read_text())
    assert [r["init"] for r in payload["runs"]] == ["pretrained", "random"]
    assert all(0.0 <= r["metrics"]["auc"] <= 1.0 for r in payload["runs"])
    # segmentation cannot run without label maps, and says what it needs
    result = _evaluate(encoder_path, "--data", data, "--task", "segmentation", "--out", tmp_path / "seg")
    assert result.exit_code == 1 and "label maps" in result.output and str(data) in result.output


def test_a_finetune_learns_vessels(encoder_path, heads):
    encoder = load_dense_encoder(encoder_path)
    cases, modality = load_cases(heads, "segmentation", "auto", encoder.preset)
    model = build_model("segmentation", "full", modality, encoder, seed=0)
    before = score(model, cases[:3], "segmentation", CPU)["dice_vessel"]
    sampler = SegmentationCrops(cases[:3], encoder.preset.input_size, np.random.default_rng(0))
    losses = finetune(model, sampler, "segmentation", Budget(steps=24, batch_size=2, lr=3e-3, encoder_lr=3e-3), CPU)
    after = score(model, cases[:3], "segmentation", CPU)["dice_vessel"]
    assert np.mean(losses[-4:]) < np.mean(losses[:4])
    assert after > 0.3 and after > 3 * before, (before, after)


def test_the_probe_leaves_the_encoder_bit_identical_and_full_fine_tuning_does_not(encoder_path, heads):
    encoder = load_dense_encoder(encoder_path)
    cases, modality = load_cases(heads, "segmentation", "auto", encoder.preset)
    budget = Budget(steps=2, batch_size=1, lr=1e-2, encoder_lr=1e-2)
    changed = {}
    for mode in ("probe", "full"):
        model = build_model("segmentation", mode, modality, copy.deepcopy(encoder), seed=0)
        head_before = copy.deepcopy(model.head.state_dict())
        finetune(model, SegmentationCrops(cases, 32, np.random.default_rng(0)), "segmentation", budget, CPU)
        assert any(not torch.equal(v, model.head.state_dict()[k]) for k, v in head_before.items())  # it trained
        after = model.encoder.state_dict()  # parameters and any buffers
        changed[mode] = [k for k, v in encoder.state_dict().items() if not torch.equal(v, after[k])]
    assert changed["probe"] == []
    assert any(k.startswith("stems.mri") for k in changed["full"])
    assert any(k.startswith("wave_stages") for k in changed["full"])


def test_both_inits_of_a_seed_get_the_same_head_and_data_order(encoder_path, heads):
    pretrained = load_dense_encoder(encoder_path)
    cases, modality = load_cases(heads, "segmentation", "auto", pretrained.preset)
    a = build_model("segmentation", "full", modality, copy.deepcopy(pretrained), seed=3)
    b = build_model("segmentation", "full", modality, random_encoder(pretrained, seed=3), seed=3)
    for (k, v), w in zip(a.head.state_dict().items(), b.head.state_dict().values(), strict=True):
        assert torch.equal(v, w), k
    assert not torch.equal(a.encoder.stems["mri"].conv.weight, b.encoder.stems["mri"].conv.weight)
    first, second = (SegmentationCrops(cases, 32, np.random.default_rng([3, 1])) for _ in range(2))
    for _ in range(3):
        (x1, y1), (x2, y2) = first.batch(2), second.batch(2)
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    # crops are oversampled on the rare classes: most batches show vessel, many show aneurysm
    labels = torch.cat([first.batch(4)[1] for _ in range(10)])
    assert (labels == 1).flatten(1).any(1).float().mean() > 0.6 and (labels == 2).flatten(1).any(1).float().mean() > 0.2


def _copy_heads(heads, tmp_path, names=("head_000", "head_001", "head_002", "head_003")):
    data = tmp_path / "data"
    for sub in ("images", "labels"):
        (data / sub).mkdir(parents=True)
        for name in names:
            shutil.copy(heads / sub / f"{name}.nii.gz", data / sub / f"{name}.nii.gz")
    return data


def _rewrite_label(path, array=None, affine=None):
    nifti = nib.load(path)
    data = np.asarray(nifti.dataobj) if array is None else array
    nib.save(nib.Nifti1Image(data, nifti.affine if affine is None else affine), path)


def test_bad_labelled_data_fails_naming_the_file(heads, tmp_path):
    data = _copy_heads(heads, tmp_path)
    label = data / "labels" / "head_001.nii.gz"
    shape = nib.load(label).shape

    def error_of(task="segmentation"):
        with pytest.raises(VolumeError) as info:
            for files in find_cases(data, task):
                load_case(files, "mri", SMOKE)
        return str(info.value)

    original = label.read_bytes()
    label.unlink()
    assert str(data / "images" / "head_001.nii.gz") in error_of() and "no label map" in error_of()
    label.write_bytes(original)
    _rewrite_label(label, np.zeros((shape[0] - 1, *shape[1:]), np.uint8))
    assert str(label) in error_of() and "shape" in error_of()
    label.write_bytes(original)
    shifted = nib.load(label).affine.copy()
    shifted[0, 3] += 2.0
    _rewrite_label(label, affine=shifted)
    assert str(label) in error_of() and "affine" in error_of()
    label.write_bytes(original)
    bad = np.asarray(nib.load(label).dataobj).copy()
    bad[0, 0, 0] = 3
    _rewrite_label(label, bad)
    assert str(label) in error_of() and "[3]" in error_of()
    label.write_bytes(original)
    stray = data / "labels" / "head_009.nii.gz"
    shutil.copy(label, stray)
    assert str(stray) in error_of() and "without an image" in error_of()
    stray.unlink()
    # a labels CSV must be 0/1, name existing images, and agree with the label maps
    csv_path = data / "labels.csv"
    csv_path.write_text("image,aneurysm\nhead_000,1\nhead_001,maybe\n")
    assert f"{csv_path}: line 3" in error_of()
    csv_path.write_text("image,aneurysm\nhead_000,0\nhead_007,1\n")
    assert str(csv_path) in error_of() and "head_007" in error_of()
    positive = next(
        n
        for n in ("head_000", "head_001", "head_002", "head_003")
        if (np.asarray(nib.load(data / "labels" / f"{n}.nii.gz").dataobj) == 2).any()
    )
    csv_path.write_text(f"image,aneurysm\n{positive},0\n")
    assert str(data / "labels" / f"{positive}.nii.gz") in error_of() and "CSV says aneurysm=0" in error_of()
    csv_path.unlink()


def test_the_command_line_names_a_corrupt_label_map(encoder_path, heads, tmp_path):
    data = _copy_heads(heads, tmp_path)
    broken = data / "labels" / "head_002.nii.gz"
    broken.write_bytes(b"not a nifti")
    result = _evaluate(encoder_path, "--data", data, "--task", "segmentation", "--out", tmp_path / "out")
    assert result.exit_code == 1 and str(broken) in result.output and "cannot read the label map" in result.output
    assert not (tmp_path / "out").exists()  # nothing trained, nothing written


def test_labels_are_resampled_onto_the_image_grid(tmp_path):
    from rsna_phase0.data.resample import resample_to_spacing
    from rsna_phase0.data.synth import write_mri
    from rsna_phase0.data.synth_labels import synth_labelled_head, write_label
    from rsna_phase0.evaluation.cases import CaseFiles

    image, label, _ = synth_labelled_head(np.random.default_rng([0, 2, 0]), "mri", 48.0, aneurysm=True)
    spacing = np.array([0.7, 1.3, 0.85], np.float32)  # far from the 1 mm target, differently per axis
    write_mri(tmp_path / "image.nii.gz", image, spacing)
    write_label(tmp_path / "label.nii.gz", label, spacing)
    case = load_case(CaseFiles("x", tmp_path / "image.nii.gz", tmp_path / "label.nii.gz", None), "mri", SMOKE)
    indicator, _ = resample_to_spacing((label == 1).astype(np.float32)[None], spacing, 1.0)
    expected, vessel = indicator[0] > 0.5, case.label == 1
    assert case.label.shape == case.shape == expected.shape and case.aneurysm == 1
    # voxel-centre nearest neighbour agrees with the trilinear image grid (torch's "nearest" would give IoU ~0.55)
    assert (expected & vessel).sum() / (expected | vessel).sum() > 0.8
    assert case.image[0][vessel].mean() > 0.7
    # the folder names no sequence (p99.5); named MRA, the sequence's p99.99 clips less, so vessels scale lower
    mra = load_case(CaseFiles("x", tmp_path / "image.nii.gz", None, 1), "mri", SMOKE, mri_sequence="MRA")
    assert mra.image[0][vessel].mean() < case.image[0][vessel].mean() - 0.01


def test_ct_heads_evaluate_through_the_ct_stem(encoder_path, tmp_path):
    data = tmp_path / "ct"
    synth_labelled_dataset(data, n=4, seed=2, size_mm=HEAD_MM, modality="ct")
    result = _evaluate(
        encoder_path, "--data", data, "--task", "segmentation", "--out", tmp_path / "out", "--holdout", 2,
        "--seeds", 1, "--label-fractions", "1.0", "--modes", "probe", "--steps", 1, "--max-inference-size", 32,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    payload = json.loads((tmp_path / "out" / "evaluate.json").read_text())
    assert payload["settings"]["modality"] == "ct" and len(payload["runs"]) == 2


def test_bad_split_files_and_fractions_are_refused(tmp_path):
    positive = {f"c{i}": i % 2 for i in range(10)}
    train, test = holdout_split(positive, 4)
    assert len(test) == 4 and {positive[n] for n in test} == {0, 1} and not set(train) & set(test)
    assert holdout_split(positive, 4) == (train, test)  # drawn once, not per call
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"test": ["c1", "c2"]}))
    assert holdout_split(positive, split) == (sorted(set(positive) - {"c1", "c2"}), ["c1", "c2"])
    split.write_text(json.dumps({"test": ["c1", "nope"]}))
    with pytest.raises(VolumeError, match=f"{split}.*nope"):
        holdout_split(positive, split)
    listed = tmp_path / "held_out.txt"
    listed.write_text("# held out\nc3\nc4\n")
    assert holdout_split(positive, listed)[1] == ["c3", "c4"]
    subset = label_subset(train, positive, 0.25, seed=0)
    assert len(subset) == 2 and {positive[n] for n in subset} == {0, 1} and set(subset) <= set(train)
    assert subset == label_subset(train, positive, 0.25, seed=0) != label_subset(train, positive, 0.25, seed=5)


def test_metrics_and_windows():
    assert auc([0.9, 0.8, 0.3, 0.1], [1, 1, 0, 0]) == 1.0
    assert auc([0.5, 0.5, 0.2], [1, 0, 0]) == 0.75  # a tie counts half
    with pytest.raises(ValueError, match="positive and negative"):
        auc([0.1, 0.2], [1, 1])
    covered = np.zeros((70, 40, 32), int)
    boxes = windows(covered.shape, 32)
    for box in boxes:
        covered[box] += 1
        assert covered[box].shape == (32, 32, 32)
    assert covered.min() >= 1 and len(boxes) == 4 * 2 * 1  # starts 0, 16, 32, 38 along x; 0, 8 along y


@pytest.mark.gpu
def test_finetune_and_scoring_run_under_amp_on_cuda(encoder_path, heads):
    from rsna_phase0.training.amp import resolve_amp

    device = torch.device("cuda")
    runtime = Runtime(device, resolve_amp("auto", device), side=32)
    encoder = load_dense_encoder(encoder_path)
    cases, modality = load_cases(heads, "segmentation", "auto", encoder.preset)
    for task in ("segmentation", "classification"):
        model = build_model(task, "full", modality, copy.deepcopy(encoder), seed=0)
        sampler = SegmentationCrops(cases, 32, np.random.default_rng(0))
        if task == "classification":
            from rsna_phase0.evaluation.sampling import ClassificationVolumes

            sampler = ClassificationVolumes(cases, 32, np.random.default_rng(0))
        losses = finetune(model, sampler, task, Budget(steps=20, batch_size=2, lr=1e-3, encoder_lr=1e-3), runtime)
        assert all(np.isfinite(losses))
        metrics = score(model, cases, task, runtime)
        assert all(0.0 <= v <= 1.0 for v in metrics.values())
