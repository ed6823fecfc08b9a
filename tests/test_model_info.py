"""`rsna-phase0 model-info` prints parameters, shapes and activation memory."""

from __future__ import annotations

from click.testing import CliRunner

from rsna_phase0.cli import main


def test_model_info_smoke_with_embed_override():
    result = CliRunner().invoke(main, ["model-info", "--preset", "smoke", "--embed-dim", "128"])
    assert result.exit_code == 0, result.output
    assert "stage 2: 128 x 4^3 (stride 8), WaveFormer" in result.output
    assert "encoder.stems.ct" in result.output and "total" in result.output
    assert "activation memory per sample" in result.output


def test_model_info_rejects_unknown_preset():
    result = CliRunner().invoke(main, ["model-info", "--preset", "huge", "--no-measure"])
    assert result.exit_code != 0 and "unknown preset" in result.output
