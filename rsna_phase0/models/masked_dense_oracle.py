"""The masked-dense reference of the sparse encoder (tests and benchmarks only: never a product fallback).

SparK's formulation, as the dense export computes it (models/dense_encoder.py, written from the rules, not from how
the sparse code builds its active sets): every conv of the sparse stages runs densely with inactive voxels zeroed,
its output multiplied by the active mask, the per-sample normalisation over active voxels. Weights come from a
sparse encoder through the export's conversion, so sparse == reference checks the MinkowskiEngine stages, their
kernel layout and the export together.
"""

from __future__ import annotations

from torch import nn

from rsna_phase0.models.dense_encoder import DenseEncoder
from rsna_phase0.models.encoder import EncoderFeatures
from rsna_phase0.models.encoder_file import dense_state_from_sparse
from rsna_phase0.models.feature_masks import mask_at_stride


class MaskedDenseEncoder(nn.Module):
    """Same contract as SparseWaveEncoder.forward; `from_sparse` copies a sparse encoder's weights."""

    def __init__(self, dense: DenseEncoder) -> None:
        super().__init__()
        self.dense = dense
        self.preset = dense.preset

    @classmethod
    def from_sparse(cls, sparse_encoder) -> MaskedDenseEncoder:
        dense = DenseEncoder(sparse_encoder.preset).to(next(sparse_encoder.parameters()).dtype)
        state = {k: v.detach().clone() for k, v in dense_state_from_sparse(sparse_encoder.state_dict()).items()}
        dense.load_state_dict(state)
        oracle = cls(dense).to(next(sparse_encoder.parameters()).device)
        return oracle.train(sparse_encoder.training)

    def forward(self, x, mask, modality: str, hierarchical: bool = True, sparse_groups=None):
        # `sparse_groups` (Pretrainer.encode's one sparse pass per MiM level) changes nothing here: every dense op
        # works per sample
        maps = self.dense(x, modality, mask=mask)
        patch = self.dense.get_downsample_ratio()
        masks = [mask_at_stride(mask, patch, 2 ** (i + 1)) for i in range(len(maps))]
        if not hierarchical:
            return maps[-1], masks[-1]
        return EncoderFeatures(maps, masks)
