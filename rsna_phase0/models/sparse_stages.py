"""The high-resolution encoder stages on MinkowskiEngine: convolutions over the voxels of visible patches only.

Coordinates are the visible voxels; hidden voxels are never gathered, so their content cannot reach any output.
Submanifold k3 convolutions keep the active set; k2 s2 convolutions go down a scale (a patch-aligned mask is
still exact there: each output cell reads the 2^3 cells of one patch). BatchNorm statistics are over active voxels.
Every layer of a batch shares the input's coordinate manager, so kernel maps at each stride are built once.

Module and parameter names mirror models/dense_encoder.py, whose Conv3d layers the export fills from these.
"""

from __future__ import annotations

import torch
from torch import nn

from rsna_phase0.models.minkowski import import_minkowski

ME = import_minkowski()


class SparseConvBN(nn.Module):
    def __init__(self, in_dim: int, out_dim: int, kernel_size: int, stride: int) -> None:
        super().__init__()
        self.conv = ME.MinkowskiConvolution(in_dim, out_dim, kernel_size=kernel_size, stride=stride, dimension=3)
        self.norm = ME.MinkowskiBatchNorm(out_dim)

    def forward(self, x):
        return self.norm(self.conv(x))


class SparseResidualBlock(nn.Module):
    """x + GELU(BN(submanifold k3 conv(x))): one conv per block keeps the costly sparse stages shallow."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conv_bn = SparseConvBN(dim, dim, kernel_size=3, stride=1)
        self.act = ME.MinkowskiGELU()

    def forward(self, x):
        return x + self.act(self.conv_bn(x))


class SparseStage(nn.Module):
    """k2 s2 down (the modality stem for stage 0, which lives in the encoder) then residual blocks."""

    def __init__(self, in_dim: int | None, dim: int, depth: int) -> None:
        super().__init__()
        self.down = SparseConvBN(in_dim, dim, kernel_size=2, stride=2) if in_dim is not None else None
        self.blocks = nn.ModuleList(SparseResidualBlock(dim) for _ in range(depth))

    def forward(self, x):
        if self.down is not None:
            x = self.down(x)
        for block in self.blocks:
            x = block(x)
        return x


def visible_voxels_to_sparse(image: torch.Tensor, visible_voxels: torch.Tensor, dtype: torch.dtype = torch.float32):
    """(B, C, S, S, S) image and (B, S, S, S) bool -> SparseTensor of the visible voxels only, in `dtype`
    (float32 in training: MinkowskiEngine kernels gain nothing from half precision)."""
    coords = torch.nonzero(visible_voxels).to(torch.int32).contiguous()
    index = coords.long()
    feats = image.to(dtype).movedim(1, -1)[index[:, 0], index[:, 1], index[:, 2], index[:, 3]]
    return ME.SparseTensor(feats.contiguous(), coordinates=coords, device=image.device)


def sparse_to_dense(x, batch_size: int, size: int) -> torch.Tensor:
    """SparseTensor at stride s -> (B, C, size, size, size) with zeros where no voxel is active."""
    stride = x.tensor_stride[0]
    coords = x.C.long()
    dense = x.F.new_zeros(batch_size, size, size, size, x.F.shape[1])
    dense[coords[:, 0], coords[:, 1] // stride, coords[:, 2] // stride, coords[:, 3] // stride] = x.F
    return dense.movedim(-1, 1)
