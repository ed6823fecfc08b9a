"""The MinkowskiEngine stages equal the masked-dense oracle (SparK's formulation), forward and backward."""

from __future__ import annotations

import torch
from masked_dense_oracle import MaskedDenseEncoder
from model_helpers import patch_masks, tiny_preset

from rsna_phase0.models.encoder import SparseWaveEncoder
from rsna_phase0.models.export import dense_state_from_sparse


def _weighted_sum(maps, weights):
    return sum((m * w).sum() for m, w in zip(maps, weights, strict=True))


def test_sparse_encoder_equals_masked_dense_oracle_forward_and_gradients():
    torch.manual_seed(0)
    preset = tiny_preset(stage_depths=(2, 1, 1))
    sparse = SparseWaveEncoder(preset).double().train()
    oracle = MaskedDenseEncoder.from_sparse(sparse)
    mask = patch_masks(3, preset.grid, 0.6, seed=1)
    x_sparse = torch.randn(3, 3, 32, 32, 32, dtype=torch.float64, requires_grad=True)
    x_dense = x_sparse.detach().clone().requires_grad_(True)

    out_sparse = sparse(x_sparse, mask, "ct")
    out_dense = oracle(x_dense, mask, "ct")
    for i, (a, b) in enumerate(zip(out_sparse.maps, out_dense.maps, strict=True)):
        assert a.shape == b.shape, f"stage {i}"
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10, msg=f"stage {i} features differ")
        assert a.abs().max() > 0.1, f"stage {i} is trivially zero"
        hidden = out_sparse.masks[i].unsqueeze(1).expand_as(a)
        assert torch.all(a[hidden] == 0), f"stage {i} has non-zero features at hidden positions"

    weights = [torch.randn_like(m) for m in out_sparse.maps]
    _weighted_sum(out_sparse.maps, weights).backward()
    _weighted_sum(out_dense.maps, weights).backward()
    torch.testing.assert_close(x_sparse.grad, x_dense.grad, rtol=1e-9, atol=1e-10)
    assert x_sparse.grad.abs().max() > 0

    sparse_grads = {name: p.grad for name, p in sparse.named_parameters() if p.grad is not None}
    as_dense = dense_state_from_sparse(sparse_grads)
    dense_params = dict(oracle.dense.named_parameters())
    compared = 0
    for name, grad in as_dense.items():
        torch.testing.assert_close(grad, dense_params[name].grad, rtol=1e-8, atol=1e-10, msg=f"gradient of {name}")
        compared += 1
    # both modality stems exist but only the CT stem ran; every other parameter has a gradient
    assert compared == sum(1 for n, p in oracle.dense.named_parameters() if not n.startswith("stems.mri"))
