"""The exported dense encoder equals the sparse one on fully visible input, saves/loads, and needs no ME."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from model_helpers import tiny_preset

from rsna_phase0.atomic import TEMP_GLOB
from rsna_phase0.models.blob_batch import synthetic_batch
from rsna_phase0.models.encoder import SparseWaveEncoder
from rsna_phase0.models.encoder_file import export_dense_encoder, load_dense_encoder, save_dense_encoder
from rsna_phase0.models.pretrainer import Pretrainer


def _trained_a_little(preset) -> Pretrainer:
    """A pretrainer whose BatchNorm running statistics and weights moved away from their initial values."""
    torch.manual_seed(0)
    model = Pretrainer(preset)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    for seed, modality in enumerate(("mri", "ct")):
        out = model(synthetic_batch(preset, 2, modality=modality, seed=seed))
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
    return model.eval()


def _heads_with_air(channels: int, size: int, seed: int) -> torch.Tensor:
    """Two normalised volumes with real background: soft blobs in air that is exactly 0 (as the loaders give)."""
    import numpy as np

    from rsna_phase0.models.blob_batch import blob_volume

    rng = np.random.default_rng(seed)
    x = torch.from_numpy(np.stack([blob_volume(size, channels, rng, n_blobs=3) for _ in range(2)]))
    air = float((x == 0).all(dim=1).float().mean())
    assert 0.2 < air < 0.95, f"air fraction {air:.2f}: the test needs real background"
    return x


@pytest.mark.parametrize("size", [32, 64])  # the pre-training size, and a larger fine-tuning size
def test_exported_encoder_equals_the_pretraining_encoder_on_inputs_with_background(size):
    preset = tiny_preset()
    model = _trained_a_little(preset).double()  # float64: large per-sample sums round differently in float32
    dense = export_dense_encoder(model).double()
    assert not dense.training
    for modality, channels in (("mri", 1), ("ct", 3)):
        x = _heads_with_air(channels, size, seed=size + channels).double()
        g = size // preset.patch_size
        all_visible = torch.zeros(2, g, g, g, dtype=torch.bool)
        with torch.no_grad():
            sparse_maps = model.encoder(x, all_visible, modality).maps
            dense_maps = dense(x, modality)
        for i, (a, b) in enumerate(zip(sparse_maps, dense_maps, strict=True)):
            assert a.shape == b.shape
            torch.testing.assert_close(b, a, rtol=1e-9, atol=1e-9, msg=f"{modality} {size}^3 stage {i}")
            assert a.abs().max() > 0.1


def test_exported_encoder_saves_loads_and_exports_from_a_checkpoint(tmp_path):
    preset = tiny_preset()
    model = _trained_a_little(preset)
    dense = export_dense_encoder(model)
    path = save_dense_encoder(dense, tmp_path / "out" / "encoder.pt")
    assert path.exists() and not list(path.parent.glob(TEMP_GLOB))  # no temp file left behind
    loaded = load_dense_encoder(path)
    x = torch.randn(1, 3, 32, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, "ct")[-1], dense(x, "ct")[-1], rtol=0, atol=0)

    # a training checkpoint dict exports the same encoder
    from_state = export_dense_encoder({"preset": preset.to_dict(), "model": model.state_dict()})
    with torch.no_grad():
        torch.testing.assert_close(from_state(x, "ct")[-1], dense(x, "ct")[-1], rtol=0, atol=0)


def test_export_module_works_without_minkowski_engine(tmp_path):
    preset = tiny_preset()
    encoder = SparseWaveEncoder(preset).eval()
    path = save_dense_encoder(export_dense_encoder(encoder), tmp_path / "encoder.pt")
    script = (
        "import sys; sys.modules['MinkowskiEngine'] = None\n"
        "import torch\n"
        "from rsna_phase0.models.encoder_file import load_dense_encoder\n"
        f"enc = load_dense_encoder({str(path)!r})\n"
        "maps = enc(torch.randn(1, 1, 32, 32, 32), 'mri')\n"
        "assert 'MinkowskiEngine' not in {m for m, v in sys.modules.items() if v is not None}\n"
        "print([tuple(m.shape) for m in maps])\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "(1, 64, 4, 4, 4)" in result.stdout


def test_load_rejects_foreign_files(tmp_path):
    bad = tmp_path / "weights.pt"
    torch.save({"something": 1}, bad)
    with pytest.raises(ValueError, match="not an rsna_phase0 dense encoder"):
        load_dense_encoder(bad)
    with pytest.raises(FileNotFoundError, match="no such exported encoder"):
        load_dense_encoder(tmp_path / "missing.pt")


def test_readme_use_the_encoder_snippet_runs(tmp_path):
    """The README's "Use the encoder" block, as written, against an exported smoke encoder (what `make demo` trains)."""
    import re

    from rsna_phase0.presets import get_preset

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme[readme.index("### Use the encoder") :]
    snippet = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    save_dense_encoder(export_dense_encoder(SparseWaveEncoder(get_preset("smoke")).eval()), tmp_path / "encoder.pt")
    result = subprocess.run([sys.executable, "-c", snippet], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[(1, 16, 32, 32, 32), (1, 32, 16, 16, 16), (1, 64, 8, 8, 8)]"
