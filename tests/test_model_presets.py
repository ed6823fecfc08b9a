"""Every preset runs forward and backward on the CPU; any embed size works; bad input fails clearly."""

from __future__ import annotations

import pytest
import torch

from rsna_phase0.models.blob_batch import synthetic_batch
from rsna_phase0.models.pretrainer import Pretrainer
from rsna_phase0.presets import PRESETS, get_preset

LOSS_TERMS = ("loss", "recon_global", "recon_local", "align")


def _reduced(name: str):
    """The preset's widths and depths as they are; geometry cut to the smallest valid size for a CPU test."""
    preset = get_preset(name)
    if name == "smoke":
        return preset.with_overrides(n_local=1)
    # one local view and the smallest views whose grid still splits into local boxes
    return preset.with_overrides(input_size=preset.patch_size * preset.local_scale, n_local=1)


def _step(preset, modality: str) -> dict:
    torch.manual_seed(0)
    model = Pretrainer(preset)
    batch = synthetic_batch(preset, 2, modality=modality, seed=1)
    out = model(batch)
    out["loss"].backward()
    return {"out": out, "model": model}


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_runs_forward_and_backward(name):
    preset = _reduced(name)
    result = _step(preset, "ct" if name in ("kaggle", "smoke") else "mri")
    out, model = result["out"], result["model"]
    for term in LOSS_TERMS:
        assert torch.isfinite(out[term]) and out[term].ndim == 0, term
    expected = preset.global_loss_weight * out["recon_global"] + preset.local_loss_weight * out["recon_local"]
    torch.testing.assert_close(out["loss"], expected + preset.align_loss_weight * out["align"])
    grads = [p.grad for n, p in model.named_parameters() if n.startswith("encoder.wave_stages")]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)
    assert model.encoder.stems["ct" if name in ("kaggle", "smoke") else "mri"].conv.kernel.grad.abs().sum() > 0


@pytest.mark.parametrize("embed_dim", [256, 512, 768])
def test_any_embed_size_works(embed_dim):
    preset = get_preset("smoke").with_embed_dim(embed_dim).with_overrides(n_local=1)
    result = _step(preset, "mri")
    assert torch.isfinite(result["out"]["loss"])
    assert result["model"].decoder.densify[0].proj.in_channels == embed_dim


def test_autocast_bf16_forward_backward_on_cpu():
    preset = get_preset("smoke").with_overrides(n_local=1)
    model = Pretrainer(preset)
    batch = synthetic_batch(preset, 2, modality="ct")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(batch)
    assert out["loss"].dtype == torch.float32 and torch.isfinite(out["loss"])
    out["loss"].backward()
    assert model.encoder.conv_stages[0].blocks[0].conv_norm.conv.kernel.grad.dtype == torch.float32


def test_bad_batches_fail_with_clear_errors():
    preset = get_preset("smoke")
    model = Pretrainer(preset)
    batch = synthetic_batch(preset, 1, modality="mri")
    batch.modality = "ct"
    with pytest.raises(ValueError, match="channels"):
        model(batch)
    wrong_size = synthetic_batch(get_preset("smoke", input_size=16, patch_size=8, stage_dims=(8, 16, 32)), 1)
    with pytest.raises(ValueError, match="input_size"):
        model(wrong_size)


def test_presets_reject_widths_that_cannot_split_into_heads():
    with pytest.raises(ValueError, match="head_dim"):
        get_preset("kaggle").with_embed_dim(100)


def test_touching_idle_parameters_gives_every_parameter_a_zero_gradient_and_changes_nothing_else():
    """DDP without unused-parameter detection needs a gradient for every parameter in every backward."""
    preset = get_preset("smoke").with_overrides(n_local=1)
    torch.manual_seed(0)
    model = Pretrainer(preset)
    batch = synthetic_batch(preset, 2, modality="mri", seed=2)
    plain = model(batch)
    plain["loss"].backward()
    plain_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    idle = {id(p) for p in model.idle_parameters("mri")}
    assert {n for n, p in model.named_parameters() if p.grad is None} == {
        n for n, p in model.named_parameters() if id(p) in idle
    }
    model.zero_grad(set_to_none=True)
    touched = model(batch, touch_idle=True)
    # (MinkowskiEngine's CPU kernel maps are built by several threads: the last bits vary between runs)
    torch.testing.assert_close(touched["loss"], plain["loss"], rtol=1e-5, atol=0)
    touched["loss"].backward()
    for name, param in model.named_parameters():
        assert param.grad is not None, name
        if id(param) in idle:
            assert torch.count_nonzero(param.grad) == 0, name
        else:
            torch.testing.assert_close(param.grad, plain_grads[name], rtol=1e-4, atol=1e-6, msg=name)
