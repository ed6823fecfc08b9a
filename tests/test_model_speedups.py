"""The step's speed-ups (models/speedups.py) keep the model's function, and remove what they say they remove."""

from __future__ import annotations

import numpy as np
import ptwt
import pytest
import torch
from model_helpers import for_compile, patch_masks, tiny_preset
from profile_trace import sync_prone_ops

from rsna_phase0.models.blob_batch import synthetic_batch
from rsna_phase0.models.feature_masks import mask_at_stride, visible_weight
from rsna_phase0.models.losses import informative_patches, reconstruction, reconstruction_in_patches
from rsna_phase0.models.pretrainer import Pretrainer
from rsna_phase0.models.waveformer import (
    WaveFormerStage,
    add_low_band_change,
    cached_position_3d,
    haar_low_band,
    sincos_position_3d,
)
from rsna_phase0.models.wavelet import dwt3, idwt3
from rsna_phase0.presets import STEP_SPEEDUPS, get_preset


def _stages(levels: int, speedups_a, speedups_b, dim: int = 32):
    """Two WaveFormer stages with the same weights, built with different speed-ups (float64)."""
    torch.manual_seed(0)
    a = WaveFormerStage(16, dim, 2, 16, levels, 4.0, speedups_a).double()
    b = WaveFormerStage(16, dim, 2, 16, levels, 4.0, speedups_b).double()
    b.load_state_dict(a.state_dict())
    return a, b


def _same_forward_and_backward(reference, other, x, *args, tol):
    """Both modules on copies of x: equal outputs, input gradients and parameter gradients to `tol`; returns the
    reference's output."""
    x_ref, x_other = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    out_ref, out_other = reference(x_ref, *args), other(x_other, *args)
    assert out_other.shape == out_ref.shape
    torch.testing.assert_close(out_other, out_ref, rtol=tol, atol=tol)
    weights = torch.randn_like(out_ref)
    (out_ref * weights).sum().backward()
    (out_other * weights).sum().backward()
    torch.testing.assert_close(x_other.grad, x_ref.grad, rtol=tol * 10, atol=tol)
    for (name, p_ref), p_other in zip(reference.named_parameters(), other.parameters(), strict=True):
        torch.testing.assert_close(p_other.grad, p_ref.grad, rtol=tol * 10, atol=tol, msg=name)
    return out_ref


@pytest.mark.parametrize("levels", [0, 1, 2])
@pytest.mark.parametrize("masked", [True, False], ids=["masked", "all-visible"])
def test_token_layout_stage_equals_the_ptwt_stage_forward_and_backward(levels, masked):
    reference, tokens = _stages(levels, (), ("token_layout",))
    x = torch.randn(3, 16, 16, 16, 16, dtype=torch.float64)
    visible = None
    if masked:
        visible = visible_weight(mask_at_stride(patch_masks(3, 2, 0.6, seed=levels), 8, 2)).double()
    out_ref = _same_forward_and_backward(reference, tokens, x, visible, tol=1e-10)
    assert out_ref.shape == (3, 32, 8, 8, 8)
    assert out_ref.abs().max() > 0.1


@pytest.mark.parametrize("levels", [1, 2])
def test_the_haar_identity_the_token_layout_uses(levels):
    """low = ptwt's low band; IDWT(low + change, the same high bands) = tokens + gain^L * change on each block."""
    torch.manual_seed(1)
    x = torch.randn(2, 3, 8, 8, 8, dtype=torch.float64)  # (B, C, D, H, W)
    low, highs = dwt3(x, levels)
    tokens = x.movedim(1, -1).contiguous()
    torch.testing.assert_close(haar_low_band(tokens, levels).movedim(-1, 1), low, rtol=0, atol=1e-12)
    change = torch.randn_like(low)
    expected = idwt3(low + change, highs)
    got = add_low_band_change(tokens, change.movedim(1, -1), levels).movedim(-1, 1)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)
    # and the low band really is the per-channel transform (PyWavelets' own, not ptwt's)
    import pywt

    ref = pywt.wavedecn(x[1, 2].numpy(), "haar", mode="zero", level=levels)[0]
    np.testing.assert_allclose(haar_low_band(tokens, levels)[1, ..., 2].numpy(), ref, atol=1e-12)


def test_hoisted_invariants_are_bit_identical():
    reference, hoisted = _stages(1, (), ("hoisted_invariants",))
    x = torch.randn(2, 16, 16, 16, 16, dtype=torch.float64)
    visible = visible_weight(mask_at_stride(patch_masks(2, 2, 0.6, seed=0), 8, 2)).double()
    assert torch.equal(reference(x, visible), hoisted(x, visible))


def test_cached_position_code_is_the_same_constant_and_made_once():
    grid, device = (4, 4, 4), torch.device("cpu")
    with torch.inference_mode():  # a first call in inference mode must not poison training
        first = cached_position_3d(grid, 48, device, torch.float32)
    assert not first.is_inference()
    assert cached_position_3d(grid, 48, device, torch.float32) is first
    assert torch.equal(first, sincos_position_3d(grid, 48, device, torch.float32))


def test_patch_space_loss_is_bit_identical_to_the_voxel_space_loss():
    torch.manual_seed(0)
    image = torch.rand(3, 3, 32, 32, 32)
    image[:, :, :12] = 0.0  # air: patches left out by the foreground test
    image[:, :, 20:] = 0.5  # constant: patches left out by the std test
    prediction = torch.randn(3, 3, 32, 32, 32)
    mask = patch_masks(3, 4, 0.6, seed=2)
    counted = informative_patches(image, 8, 0.25, 0.01, 0.0)
    assert 0 < counted.float().mean() < 1
    old = reconstruction(prediction, image, mask, 8, counted)
    new = reconstruction_in_patches(prediction, image, mask, 8, 0.25, 0.01, 0.0)
    for a, b in zip(old, new, strict=True):
        assert torch.equal(a, b)


def test_every_speedup_together_keeps_the_pretrainers_losses_and_gradients():
    """The whole pretrainer, float32 (its loss runs in float32 by design): the same losses and gradients to float
    rounding (MinkowskiEngine's CPU kernel maps are built by several threads, so two runs differ in the last bits
    anyway; the float64 stage test above is the tight check)."""
    preset = tiny_preset(n_local=2)
    batch = synthetic_batch(preset, 2, modality="ct", seed=3)
    results = []
    for speedups in ((), STEP_SPEEDUPS):
        torch.manual_seed(0)
        model = Pretrainer(preset.with_overrides(speedups=speedups))
        out = model(batch)
        out["loss"].backward()
        grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
        results.append((out, grads))
    (out_a, grads_a), (out_b, grads_b) = results
    for term in ("loss", "recon_global", "recon_local", "align", "excluded_patches"):
        torch.testing.assert_close(out_b[term], out_a[term], rtol=1e-5, atol=1e-6, msg=term)
    assert grads_a.keys() == grads_b.keys() and len(grads_a) > 20
    scale = max(float(g.abs().max()) for g in grads_a.values())
    for name, grad in grads_a.items():
        torch.testing.assert_close(grads_b[name], grad, rtol=1e-3, atol=1e-5 * scale, msg=name)


def _autograd_nodes(tensor: torch.Tensor) -> set[str]:
    seen, names, todo = set(), set(), [tensor.grad_fn]
    while todo:
        node = todo.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        names.add(type(node).__name__)
        todo.extend(next_node for next_node, _ in node.next_functions)
    return names


def test_index_select_norm_is_bit_identical_forward_and_leaves_out_the_index_put_backward():
    """The sparse norm's per-voxel mean and variance: advanced indexing's backward (IndexBackward0, a sort-based
    index_put on CUDA, the largest kernel of the kaggle step) is replaced by index_select's (an index_add)."""
    from rsna_phase0.models.minkowski import import_minkowski
    from rsna_phase0.models.sparse_stages import ActiveInstanceNorm, dense_to_sparse

    import_minkowski()
    torch.manual_seed(0)
    dense = torch.randn(3, 8, 6, 6, 6)
    active = torch.rand(3, 6, 6, 6) > 0.4
    outputs = []
    for speedups in ((), ("index_select_norm",)):
        norm = ActiveInstanceNorm(8, speedups)
        x = dense_to_sparse(dense, active, tensor_stride=1)
        features = x.F.detach().requires_grad_(True)
        x = type(x)(features, coordinate_map_key=x.coordinate_map_key, coordinate_manager=x.coordinate_manager)
        out = norm(x, 3).F
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        outputs.append((out, features.grad, _autograd_nodes(out)))
    (out_a, grad_a, nodes_a), (out_b, grad_b, nodes_b) = outputs
    assert torch.equal(out_b, out_a) and out_a.std() > 0.5
    torch.testing.assert_close(grad_b, grad_a, rtol=1e-5, atol=1e-6)
    assert "IndexBackward0" in nodes_a and "IndexBackward0" not in nodes_b
    assert "IndexSelectBackward0" in nodes_b


def test_the_default_step_has_no_host_synchronisation_of_its_own_but_the_sparse_stages():
    """On CUDA, ptwt's per-call filter tensors (made from Python lists) are blocking host-to-device copies, 8 per
    WaveFormer block with a DWT; with the default speed-ups the only sync-prone operators left in the model are
    the sparse stages' nonzero (MinkowskiEngine needs the active voxels' count on the host): one per sparse stage
    (one pass over both MiM levels with one_sparse_pass; one per level without it)."""
    preset = get_preset("smoke", n_local=1)  # 2 sparse stages, one WaveFormer block with a Haar level
    batch = synthetic_batch(preset, 2, modality="mri", seed=0)
    counts = {}
    for speedups in ((), preset.speedups):
        torch.manual_seed(0)
        model = Pretrainer(preset.with_overrides(speedups=speedups))
        found = sync_prone_ops(lambda m=model: m(batch)["loss"].backward(), torch.device("cpu"))
        counts[speedups] = {where: n for where, n in found["by_caller"].items() if not where.startswith("benchmarks")}
    ptwt_calls = {w: n for w, n in counts[()].items() if w.startswith("ptwt/")}
    assert sum(ptwt_calls.values()) == 8, counts[()]  # the defect, measured on the step as it was
    nonzero = {w: n for w, n in counts[preset.speedups].items() if "nonzero" in w}
    assert counts[preset.speedups] == nonzero and sum(nonzero.values()) == preset.sparse_stages


def test_one_sparse_pass_gives_the_same_features_to_rounding():
    preset = tiny_preset(n_local=2)
    assert "one_sparse_pass" in preset.speedups
    batch = synthetic_batch(preset, 2, modality="ct", seed=5)
    torch.manual_seed(0)
    one_pass = Pretrainer(preset)
    per_level = Pretrainer(preset.with_overrides(speedups=tuple(s for s in preset.speedups if s != "one_sparse_pass")))
    per_level.load_state_dict(one_pass.state_dict())
    for a, b in zip(per_level.encode(batch).maps, one_pass.encode(batch).maps, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)


def test_presets_reject_unknown_speedups():
    with pytest.raises(ValueError, match="speedups"):
        tiny_preset(speedups=("warp_drive",))


def test_ptwt_is_still_what_the_reference_path_calls(monkeypatch):
    """`speedups=()` really runs the step as before (the ptwt DWT/IDWT), so benchmarks compare against it."""
    calls = []
    wavedec3 = ptwt.wavedec3
    monkeypatch.setattr(ptwt, "wavedec3", lambda *a, **k: calls.append(1) or wavedec3(*a, **k))
    for speedups, expected in (((), 2), (("token_layout",), 0)):
        calls.clear()
        stage = WaveFormerStage(16, 32, 2, 16, 1, 4.0, speedups)
        stage(torch.randn(1, 16, 16, 16, 16), None)
        assert len(calls) == expected, speedups


@pytest.mark.slow
def test_compiled_dense_parts_match_eager_and_keep_parameter_names():
    preset = get_preset("smoke", n_local=1)
    batch = synthetic_batch(preset, 2, modality="ct", seed=0)
    torch.manual_seed(0)
    eager = Pretrainer(preset)
    torch.manual_seed(0)
    compiled = Pretrainer(preset.with_overrides(speedups=for_compile(preset.speedups)))
    assert list(compiled.state_dict()) == list(eager.state_dict())
    out_e, out_c = eager(batch), compiled(batch)
    for term in ("loss", "recon_global", "recon_local", "align"):
        torch.testing.assert_close(out_c[term], out_e[term], rtol=1e-4, atol=1e-5, msg=term)
    out_e["loss"].backward()
    out_c["loss"].backward()
    for (name, p_e), p_c in zip(eager.named_parameters(), compiled.parameters(), strict=True):
        if p_e.grad is not None:
            torch.testing.assert_close(p_c.grad, p_e.grad, rtol=1e-3, atol=1e-5, msg=name)


@pytest.mark.gpu
@pytest.mark.parametrize("amp", ["bf16", "fp32"])
def test_cuda_compiled_dense_parts_train_a_kaggle_step(amp):
    """On CUDA (torch 2.11) a compiled decoder's backward gave the (1, C, 1, 1, 1) mask token a (C,) gradient and
    the step failed (`CompiledFunctionBackward returned an invalid gradient`); the CPU test above never saw it."""
    preset = get_preset("kaggle", batch_size=2, speedups=for_compile(STEP_SPEEDUPS))
    batch = synthetic_batch(preset, 2, modality="mri", seed=0).to("cuda")
    torch.manual_seed(0)
    model = Pretrainer(preset).cuda()
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp == "bf16"):
        out = model(batch)
    out["loss"].backward()
    assert torch.isfinite(out["loss"])
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert any("mask_token" in n for n in grads)
    assert all(grads[n].shape == p.shape for n, p in model.named_parameters() if n in grads)


@pytest.mark.gpu
def test_cuda_token_layout_stage_equals_the_ptwt_stage():
    reference, tokens = _stages(1, (), ("token_layout",), dim=64)
    reference, tokens = reference.float().cuda(), tokens.float().cuda()
    x = torch.randn(4, 16, 32, 32, 32, device="cuda")
    visible = visible_weight(mask_at_stride(patch_masks(4, 4, 0.6, seed=0), 8, 2)).cuda()
    with torch.backends.cudnn.flags(enabled=True, deterministic=True, allow_tf32=False):
        previous = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = False
        try:
            torch.testing.assert_close(tokens(x, visible), reference(x, visible), rtol=1e-4, atol=1e-5)
        finally:
            torch.backends.cuda.matmul.allow_tf32 = previous


@pytest.mark.gpu
@pytest.mark.parametrize("speedups", [None, ()], ids=["defaults", "as-before"])
def test_cuda_dense_parts_of_the_step_never_synchronise_the_host(speedups):
    """Between the sparse stages (whose nonzero and MinkowskiEngine calls must sync) and the loss, nothing in the
    step may make the host wait: forward and backward of the WaveFormer stages, decoder and loss under torch's
    sync debug mode "error". The step as it was (ptwt's filters made from Python lists) does sync."""
    preset = get_preset("kaggle", n_local=2)
    preset = preset if speedups is None else preset.with_overrides(speedups=speedups)
    torch.manual_seed(0)
    model = Pretrainer(preset).cuda()
    batch = synthetic_batch(preset, 2, modality="mri", seed=0).to("cuda")
    images = torch.cat([batch.global_image, batch.local_image])
    masks = torch.cat([batch.global_mask, batch.local_mask])
    n = preset.sparse_stages
    with torch.autocast("cuda", dtype=torch.bfloat16):
        sparse = [m.detach().requires_grad_(True) for m in model.encoder.sparse_maps(images, masks, "mri")]
        stage_masks = [mask_at_stride(masks, preset.patch_size, 2 ** (i + 1)) for i in range(len(preset.stage_dims))]
        torch.cuda.synchronize()

        def dense_step():
            maps = sparse + model.encoder.wave_maps(sparse[-1], stage_masks[n:])
            loss = model.losses(batch, model.decoder(maps, stage_masks, "mri"))["loss"]
            loss.backward()

        torch.cuda.set_sync_debug_mode("error")
        try:
            if speedups == ():
                with pytest.raises(RuntimeError, match="synchroniz"):
                    dense_step()
            else:
                dense_step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    assert speedups == () or sparse[-1].grad.abs().sum() > 0


def test_speedups_are_set_from_the_command_line_and_may_change_on_resume():
    from rsna_phase0.training.config import preset_from_config, resolve_config, resume_conflicts

    before = resolve_config("smoke", set_values={"speedups": "[]"})
    after = resolve_config("smoke", set_values={"speedups": '["token_layout", "compile_dense"]'})
    assert preset_from_config(before).speedups == ()
    assert preset_from_config(after).speedups == ("token_layout", "compile_dense")
    assert resume_conflicts(before, after) == []
    old_checkpoint = {**before, "preset": {k: v for k, v in before["preset"].items() if k != "speedups"}}
    assert resume_conflicts(old_checkpoint, after) == []  # saved before the field existed


def test_amp_dtype_group_norm_keeps_the_function_and_the_half_dtype():
    from rsna_phase0.models.decoder import InstanceGroupNorm

    torch.manual_seed(0)
    reference, amp_norm = InstanceGroupNorm(8), InstanceGroupNorm(8, in_amp_dtype=True)
    with torch.no_grad():
        reference.weight.uniform_(0.5, 1.5)
        reference.bias.uniform_(-0.5, 0.5)
    amp_norm.load_state_dict(reference.state_dict())
    x = torch.randn(2, 8, 6, 6, 6) * 3 + 1
    assert torch.equal(amp_norm(x), reference(x))  # float32 outside autocast: the very same call
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out_amp = amp_norm(x.bfloat16())
    assert out_amp.dtype == torch.bfloat16
    torch.testing.assert_close(out_amp.float(), reference(x), rtol=0.02, atol=0.03)


def test_decoder_speedups_keep_the_pretrainers_losses_and_gradients():
    preset = tiny_preset(n_local=2)
    batch = synthetic_batch(preset, 2, modality="mri", seed=4)
    results = []
    for extra in ((), ("amp_dtype_group_norm",)):
        torch.manual_seed(0)
        model = Pretrainer(preset.with_overrides(speedups=preset.speedups + extra))
        out = model(batch)
        out["loss"].backward()
        results.append((out, {n: p.grad for n, p in model.named_parameters() if p.grad is not None}))
    (out_a, grads_a), (out_b, grads_b) = results
    for term in ("loss", "recon_global", "recon_local", "align"):
        torch.testing.assert_close(out_b[term], out_a[term], rtol=1e-5, atol=1e-6, msg=term)
    assert grads_a.keys() == grads_b.keys()
    scale = max(float(g.abs().max()) for g in grads_a.values())
    for name, grad in grads_a.items():
        torch.testing.assert_close(grads_b[name], grad, rtol=1e-3, atol=1e-5 * scale, msg=name)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_cuda_amp_dtype_group_norm_matches_under_autocast(dtype):
    from rsna_phase0.models.decoder import UpBlock

    torch.manual_seed(0)
    reference = UpBlock(64, 32).cuda()
    fast = UpBlock(64, 32, ("amp_dtype_group_norm",)).cuda()
    fast.load_state_dict(reference.state_dict())
    x = torch.randn(4, 64, 16, 16, 16, device="cuda")
    with torch.autocast("cuda", dtype=dtype):
        out_ref, out_fast = reference(x), fast(x)
        # what the speed-up saves: CUDA autocast runs GroupNorm in float32 and hands on a float32 map
        assert reference.body[0](reference.up(x)).dtype == torch.float32
    assert out_fast.dtype == dtype
    error = (out_fast.float() - out_ref).abs()
    assert float(error.mean()) < 0.01 and float(error.max()) < 0.1, (float(error.mean()), float(error.max()))
    weights = torch.randn_like(out_ref)
    (out_ref * weights).sum().backward()
    (out_fast.float() * weights).sum().backward()
    largest = max(float(p.grad.norm()) for p in reference.parameters())
    for (name, p_ref), p_fast in zip(reference.named_parameters(), fast.parameters(), strict=True):
        # up.bias feeds a per-channel norm, so its true gradient is zero: both are rounding noise, compared to the
        # largest gradient instead of their own size
        size = largest if name == "up.bias" else float(p_ref.grad.norm())
        relative = float((p_fast.grad - p_ref.grad).norm()) / size
        assert relative < 0.02, (name, relative)
