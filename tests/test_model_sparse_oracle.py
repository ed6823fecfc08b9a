"""The MinkowskiEngine stages equal the masked-dense oracle (SparK's formulation), forward and backward."""

from __future__ import annotations

import pytest
import torch
from model_helpers import patch_masks, tiny_preset

from rsna_phase0.models.encoder import SparseWaveEncoder
from rsna_phase0.models.encoder_file import dense_state_from_sparse
from rsna_phase0.models.masked_dense_oracle import MaskedDenseEncoder


def _weighted_sum(maps, weights):
    return sum((m * w).sum() for m, w in zip(maps, weights, strict=True))


def _head_with_air(batch: int) -> torch.Tensor:
    """CT-like input: noise (about half its voxels <= 0) with an all-air slab, so whole cells are background."""
    x = torch.randn(batch, 3, 32, 32, 32, dtype=torch.float64)
    x[:, :, :10] = 0.0
    return x


@pytest.mark.parametrize(
    "background_threshold, dense_strided_steps",
    [(0.0, True), (0.0, False), (None, True), (None, False)],
    ids=["background-dense-strided", "background-minkowski-strided", "all-visible-dense-strided", "all-visible-me"],
)
def test_sparse_encoder_equals_masked_dense_oracle_forward_and_gradients(background_threshold, dense_strided_steps):
    torch.manual_seed(0)
    preset = tiny_preset(
        stage_depths=(2, 1, 1), background_threshold=background_threshold, dense_strided_steps=dense_strided_steps
    )
    sparse = SparseWaveEncoder(preset).double().train()
    oracle = MaskedDenseEncoder.from_sparse(sparse)
    mask = patch_masks(3, preset.grid, 0.6, seed=1)
    x_sparse = _head_with_air(3).requires_grad_(True)
    x_dense = x_sparse.detach().clone().requires_grad_(True)

    out_sparse = sparse(x_sparse, mask, "ct")
    out_dense = oracle(x_dense, mask, "ct")
    for i, (a, b) in enumerate(zip(out_sparse.maps, out_dense.maps, strict=True)):
        assert a.shape == b.shape, f"stage {i}"
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10, msg=f"stage {i} features differ")
        assert a.abs().max() > 0.1, f"stage {i} is trivially zero"
        hidden = out_sparse.masks[i].unsqueeze(1).expand_as(a)
        assert torch.all(a[hidden] == 0), f"stage {i} has non-zero features at hidden positions"

    # visible all-air cells: inactive (zero) with a background threshold, computed (BatchNorm shifts them) without
    air_visible = ~out_sparse.masks[0][:, :5]
    air_features = out_sparse.maps[0][:, :, :5].abs().amax(dim=1)[air_visible]
    if background_threshold is None:
        assert (air_features > 0).all()
    else:
        assert (air_features == 0).all()

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
