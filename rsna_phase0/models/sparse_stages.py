"""The high-resolution encoder stages on MinkowskiEngine: convolutions over active voxels only.

Active voxels are those of visible patches, minus background (every channel <= the preset's
`background_threshold`, when set). Inactive voxels are never gathered, so hidden content cannot reach any output.
Submanifold k3 convolutions keep the active set; k2 s2 convolutions go down a scale, where a cell is active when
any of its 2^3 children is (a patch-aligned mask stays exact: each output cell reads cells of one patch only).

Normalisation is per sample, over that sample's active voxels (nnssl's InstanceNorm over visible voxels), never
over the batch: the MiM levels share a batch, and the local views' visible voxels are what the global view hides,
so batch statistics would let a view's features depend on its own hidden content. It is the same in training and
evaluation (no running statistics), so the dense export computes the same function on any input. Every layer at a
stride shares one coordinate manager, so the kernel map of each stride is built once per batch and reused forward
and backward.

A k2 s2 step can run as one dense Conv3d on a map that is zero wherever no voxel is active, read at the active
output cells (`SparseConvBN.strided_from_dense`): the same sums as MinkowskiEngine's, on the layer's own kernel,
without the finer scale's coordinate map (for the stem that map would hold every active input voxel).

Module and parameter names mirror models/dense_encoder.py, whose Conv3d layers the export fills from these.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rsna_phase0.models.kernel_layout import minkowski_kernel_to_conv3d
from rsna_phase0.models.minkowski import import_minkowski
from rsna_phase0.models.speedups import INDEX_SELECT_NORM

ME = import_minkowski()
from MinkowskiEngineBackend._C import ConvolutionMode  # noqa: E402  (the compiled part; ME does not re-export it)


def convolution_mode(name: str):
    """'default', 'copy_gemm' or 'direct_gemm' -> MinkowskiEngine's ConvolutionMode (how a conv runs its GEMMs:
    its own gather-GEMM kernel, or gather + cuBLAS + scatter per kernel offset; 'default' picks by size)."""
    try:
        return ConvolutionMode.__members__[name.upper()]
    except KeyError:
        raise ValueError(f"unknown sparse_conv_mode {name!r}; use default, copy_gemm or direct_gemm") from None


NORM_EPS = 1e-5


class ActiveInstanceNorm(nn.Module):
    """Per sample and channel: (x - mean) / sqrt(var + eps) * weight + bias, moments over the sample's active voxels.

    Works on a SparseTensor's features (N, C) with each row's sample index; models/dense_encoder.py computes the
    same on a dense map and its active mask. Parameter names match there, so the export copies them.
    """

    def __init__(self, dim: int, speedups: tuple[str, ...] = ()) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))
        self.index_select = INDEX_SELECT_NORM in speedups

    def forward(self, x, batch_size: int):
        feats, sample = x.F, x.C[:, 0].long()
        count = feats.new_zeros(batch_size).index_add_(0, sample, feats.new_ones(len(sample))).clamp_min(1.0)
        mean = feats.new_zeros(batch_size, feats.shape[1]).index_add_(0, sample, feats) / count[:, None]
        centred = feats - self.per_voxel(mean, sample)
        var = feats.new_zeros(batch_size, feats.shape[1]).index_add_(0, sample, centred.square()) / count[:, None]
        out = centred * torch.rsqrt(self.per_voxel(var, sample) + NORM_EPS) * self.weight + self.bias
        return ME.SparseTensor(out, coordinate_map_key=x.coordinate_map_key, coordinate_manager=x.coordinate_manager)

    def per_voxel(self, per_sample: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
        # the same rows either way; the backward differs: index_select's is an index_add, advanced indexing's a
        # sort-based index_put that serialises over the thousands of voxels sharing a sample (models/speedups.py)
        return per_sample.index_select(0, sample) if self.index_select else per_sample[sample]


class SparseConvNorm(nn.Module):
    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        kernel_size: int,
        stride: int,
        conv_mode: str = "default",
        speedups: tuple[str, ...] = (),
    ) -> None:
        super().__init__()
        self.conv = ME.MinkowskiConvolution(
            in_dim,
            out_dim,
            kernel_size=kernel_size,
            stride=stride,
            dimension=3,
            convolution_mode=convolution_mode(conv_mode),
        )
        self.norm = ActiveInstanceNorm(out_dim, speedups)

    def forward(self, x, batch_size: int):
        return self.norm(self.conv(x), batch_size)

    def strided_from_dense(self, dense: torch.Tensor, active_out: torch.Tensor, out_stride: int, manager=None):
        """This k2 s2 layer on `dense` (B, C, r, r, r), zero wherever no input voxel is active, as one dense conv
        read at the cells of `active_out` (B, r/2, r/2, r/2) -> SparseTensor at tensor stride `out_stride`."""
        generator = self.conv.kernel_generator
        if tuple(generator.kernel_size) != (2, 2, 2) or tuple(generator.kernel_stride) != (2, 2, 2):
            raise ValueError("strided_from_dense is for the k2 s2 layers only")
        weight = minkowski_kernel_to_conv3d(self.conv.kernel)
        out = F.conv3d(dense.to(weight.dtype), weight, stride=2)
        return self.norm(dense_to_sparse(out, active_out, out_stride, manager), dense.shape[0])


class SparseResidualBlock(nn.Module):
    """x + GELU(norm(submanifold k3 conv(x))): one conv per block keeps the costly sparse stages shallow."""

    def __init__(self, dim: int, conv_mode: str = "default", speedups: tuple[str, ...] = ()) -> None:
        super().__init__()
        self.conv_norm = SparseConvNorm(dim, dim, kernel_size=3, stride=1, conv_mode=conv_mode, speedups=speedups)
        self.act = ME.MinkowskiGELU()

    def forward(self, x, batch_size: int):
        return x + self.act(self.conv_norm(x, batch_size))


class SparseStage(nn.Module):
    """k2 s2 down (the modality stem for stage 0, which lives in the encoder) then residual blocks."""

    def __init__(
        self, in_dim: int | None, dim: int, depth: int, conv_mode: str = "default", speedups: tuple[str, ...] = ()
    ) -> None:
        super().__init__()
        self.down = None if in_dim is None else SparseConvNorm(in_dim, dim, kernel_size=2, stride=2, speedups=speedups)
        self.blocks = nn.ModuleList(SparseResidualBlock(dim, conv_mode, speedups) for _ in range(depth))

    def forward(self, x, batch_size: int):
        if self.down is not None:
            x = self.down(x, batch_size)
        return self.run_blocks(x, batch_size)

    def run_blocks(self, x, batch_size: int):
        for block in self.blocks:
            x = block(x, batch_size)
        return x


def active_voxels(image: torch.Tensor, visible_voxels: torch.Tensor, background_threshold: float | None):
    """(B, S, S, S) bool: visible and, with a threshold, not background (some channel above it). Hidden voxels are
    inactive whatever they hold: the intensity test is only ever combined with visibility."""
    if background_threshold is None:
        return visible_voxels
    return visible_voxels & (image > background_threshold).any(dim=1)


def coarser_active(active: torch.Tensor) -> torch.Tensor:
    """(B, r, r, r) -> (B, r/2, r/2, r/2): a cell is active when any of its 2^3 children is (as a k2 s2 conv)."""
    b, r = active.shape[0], active.shape[-1] // 2
    return active.reshape(b, r, 2, r, 2, r, 2).any(dim=6).any(dim=4).any(dim=2)


def dense_to_sparse(dense: torch.Tensor, active: torch.Tensor, tensor_stride: int, manager=None):
    """(B, C, r, r, r) map at `tensor_stride` and (B, r, r, r) bool -> SparseTensor of the active cells."""
    index = torch.nonzero(active)
    feats = dense.movedim(1, -1)[index[:, 0], index[:, 1], index[:, 2], index[:, 3]]
    coords = index.to(torch.int32)
    coords[:, 1:] *= tensor_stride
    return ME.SparseTensor(
        feats.contiguous(),
        coordinates=coords.contiguous(),
        tensor_stride=tensor_stride,
        coordinate_manager=manager,
        device=dense.device,
    )


def visible_voxels_to_sparse(image: torch.Tensor, active: torch.Tensor, dtype: torch.dtype = torch.float32):
    """(B, C, S, S, S) image and (B, S, S, S) bool -> SparseTensor of the active voxels only, in `dtype`
    (float32 in training: MinkowskiEngine kernels gain nothing from half precision)."""
    return dense_to_sparse(image.to(dtype), active, tensor_stride=1)


def sparse_to_dense(x, batch_size: int, size: int) -> torch.Tensor:
    """SparseTensor at stride s -> (B, C, size, size, size) with zeros where no voxel is active."""
    stride = x.tensor_stride[0]
    coords = x.C.long()
    dense = x.F.new_zeros(batch_size, size, size, size, x.F.shape[1])
    dense[coords[:, 0], coords[:, 1] // stride, coords[:, 2] // stride, coords[:, 3] // stride] = x.F
    return dense.movedim(-1, 1)
