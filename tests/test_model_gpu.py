"""On a CUDA GPU: the CUDA MinkowskiEngine stages equal the masked-dense oracle, and a bf16-autocast step works."""

from __future__ import annotations

import pytest
import torch
from model_helpers import patch_masks, tiny_preset

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize(
    "overrides",
    [
        {},  # the defaults: background inactive, dense k2 s2 steps, MinkowskiEngine's default conv mode
        {"dense_strided_steps": False, "background_threshold": None},
        {"sparse_conv_mode": "copy_gemm"},
        {"sparse_conv_mode": "direct_gemm"},
    ],
    ids=["defaults", "minkowski-strided-no-background", "copy-gemm", "direct-gemm"],
)
def test_cuda_sparse_encoder_equals_masked_dense_oracle(overrides):
    from rsna_phase0.models.encoder import SparseWaveEncoder
    from rsna_phase0.models.masked_dense_oracle import MaskedDenseEncoder

    torch.manual_seed(0)
    preset = tiny_preset(**overrides)
    encoder = SparseWaveEncoder(preset).cuda().train()
    oracle = MaskedDenseEncoder.from_sparse(encoder)
    mask = patch_masks(3, preset.grid, 0.6, seed=2).cuda()
    x = torch.randn(3, 3, 32, 32, 32, device="cuda")
    x[:, :, :10] = 0.0  # an all-air slab: whole cells are background when the preset says so
    x.requires_grad_(True)
    x_ref = x.detach().clone().requires_grad_(True)
    with torch.backends.cudnn.flags(enabled=True, deterministic=True, allow_tf32=False):
        torch.backends.cuda.matmul.allow_tf32 = False
        ours = encoder(x, mask, "ct").maps
        ref = oracle(x_ref, mask, "ct").maps
        for a, b in zip(ours, ref, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
        sum(m.square().mean() for m in ours).backward()
        sum(m.square().mean() for m in ref).backward()
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-3, atol=1e-6)


def test_cuda_bf16_autocast_training_step_is_finite_and_learns():
    from rsna_phase0.models.blob_batch import synthetic_batch
    from rsna_phase0.models.pretrainer import Pretrainer
    from rsna_phase0.presets import get_preset

    torch.manual_seed(0)
    preset = get_preset("kaggle").with_overrides(n_local=2)
    model = Pretrainer(preset).cuda()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    batch = synthetic_batch(preset, 2, modality="ct", seed=0).to("cuda")
    losses = []
    for _ in range(60):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = model(batch)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(float(out["loss"]))
    assert all(torch.isfinite(torch.tensor(losses)))
    assert min(losses[-10:]) < 0.5 * losses[0], losses
