"""Presets: one definition, small named variations (smoke, dev, kaggle, production).

A preset fixes the view geometry that the data pipeline, the MiM masking and the model must agree on, and the
model's widths. Shapes stay consistent for any width: `embed_dim` only sets the channels of the last stage.

View geometry (all sizes in voxels at `target_spacing_mm`):
- each view (global or local) is an `input_size`^3 cube;
- the global view is a region of `local_scale * input_size` voxels per axis, downsampled by `local_scale`;
- masks live on the patch grid: `grid = input_size // patch_size` patches per axis, where `patch_size` equals the
  encoder's total downsample ratio (SparK masks the coarsest grid);
- each local view is a native-resolution `input_size`^3 sub-crop of the region covering a box of
  `grid // local_scale` global patches per axis, chosen among globally masked patches.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

SPARSE_CONV_MODES = ("default", "copy_gemm", "direct_gemm")


@dataclass(frozen=True)
class Preset:
    name: str
    # view geometry (data pipeline + masking + model)
    input_size: int
    patch_size: int
    local_scale: int = 2
    n_local: int = 4
    target_spacing_mm: float = 1.0
    # MiM levels: mask ratio and reconstruction-loss weight per level; cross-level alignment weight
    global_mask_ratio: float = 0.6
    local_mask_ratio: float = 0.8
    global_loss_weight: float = 1.0
    local_loss_weight: float = 1.0
    align_loss_weight: float = 0.1
    # model widths: channels per encoder stage; the last entry is the embed size
    stage_dims: tuple[int, ...] = (32, 64, 128, 256)
    stage_depths: tuple[int, ...] = (1, 1, 2, 2)
    sparse_stages: int = 2  # the first stages run MinkowskiEngine sparse convolutions; the rest are WaveFormer
    # WaveFormer stages: heads = stage width // head_dim, so any width that is a multiple of head_dim works;
    # the DWT runs as many levels as bring the low-frequency band down to attention_grid^3 tokens (WaveFormer: 8^3)
    head_dim: int = 32
    attention_grid: int = 8
    mlp_ratio: float = 4.0
    decoder_dim: int = 128  # decoder width at the coarsest scale, halving per upsampling (floor 8)
    # sparse-stage speed (benchmarks/throughput.py measures each; none changes what a visible voxel contributes):
    # voxels whose every channel is <= background_threshold (normalised intensity: MRI background and CT air are
    # exactly 0) are inactive in the sparse stages like hidden ones; None computes them
    background_threshold: float | None = 0.0
    # the k2 s2 steps (modality stem, stage downsampling) as one dense conv read at the active output cells: exact,
    # and no MinkowskiEngine coordinate map at the finer scale (the stem's would hold every active input voxel)
    dense_strided_steps: bool = True
    sparse_conv_mode: str = (
        "default"  # MinkowskiEngine ConvolutionMode of the k3 convs: default, copy_gemm, direct_gemm
    )
    # training defaults (overridable from the command line or a config file)
    batch_size: int = 2
    lr: float = 1.5e-4
    weight_decay: float = 0.05
    warmup_steps: int = 50
    steps_per_epoch: int = 100
    extra: dict = field(default_factory=dict)

    @property
    def grid(self) -> int:
        return self.input_size // self.patch_size

    @property
    def local_box_patches(self) -> int:
        return self.grid // self.local_scale

    @property
    def region_size(self) -> int:
        return self.input_size * self.local_scale

    @property
    def embed_dim(self) -> int:
        return self.stage_dims[-1]

    def with_overrides(self, **overrides) -> Preset:
        return replace(self, **overrides)

    def with_embed_dim(self, embed_dim: int) -> Preset:
        """The same preset with another embed size (the last stage's width)."""
        return replace(self, stage_dims=(*self.stage_dims[:-1], embed_dim))

    def to_dict(self) -> dict:
        return asdict(self)

    def __post_init__(self) -> None:
        if self.input_size % self.patch_size:
            raise ValueError(
                f"preset {self.name}: input_size {self.input_size} not a multiple of patch_size {self.patch_size}"
            )
        if self.grid % self.local_scale:
            raise ValueError(
                f"preset {self.name}: patch grid {self.grid} not divisible by local_scale {self.local_scale}"
            )
        if self.patch_size != 2 ** len(self.stage_dims):
            raise ValueError(
                f"preset {self.name}: patch_size {self.patch_size} must equal the encoder downsample ratio "
                f"2**{len(self.stage_dims)} (one stride-2 step per stage)"
            )
        if len(self.stage_dims) != len(self.stage_depths):
            raise ValueError(f"preset {self.name}: stage_dims and stage_depths differ in length")
        if not 1 <= self.sparse_stages <= len(self.stage_dims):
            raise ValueError(
                f"preset {self.name}: sparse_stages {self.sparse_stages} must be in [1, {len(self.stage_dims)}] "
                "(the stem must be sparse so masked voxels never enter the encoder)"
            )
        for dim in self.stage_dims[self.sparse_stages :]:
            if dim % self.head_dim:
                raise ValueError(
                    f"preset {self.name}: WaveFormer width {dim} is not a multiple of head_dim {self.head_dim}"
                )
        if self.sparse_conv_mode not in SPARSE_CONV_MODES:
            raise ValueError(
                f"preset {self.name}: sparse_conv_mode {self.sparse_conv_mode!r} is not one of {SPARSE_CONV_MODES}"
            )
        for ratio in (self.global_mask_ratio, self.local_mask_ratio):
            if not 0.0 < ratio < 1.0:
                raise ValueError(f"preset {self.name}: mask ratio {ratio} must be in (0, 1)")


_BASE = Preset(name="base", input_size=64, patch_size=16)

PRESETS: dict[str, Preset] = {
    # tiny: trains on a CPU in minutes; its WaveFormer stage (4^3) attends on the 2^3 Haar low band
    "smoke": replace(
        _BASE,
        name="smoke",
        input_size=32,
        patch_size=8,
        n_local=2,
        stage_dims=(16, 32, 64),
        stage_depths=(1, 1, 1),
        sparse_stages=2,
        head_dim=16,
        attention_grid=2,
        decoder_dim=32,
        batch_size=2,
        warmup_steps=10,
        steps_per_epoch=20,
        lr=1e-3,
    ),
    "dev": replace(
        _BASE,
        name="dev",
        input_size=64,
        patch_size=16,
        stage_dims=(24, 48, 96, 192),
        attention_grid=4,
        decoder_dim=64,
        batch_size=2,
    ),
    # 64^3 views; fits a 16 GB T4 with AMP. Sparse stages stay narrow (MinkowskiEngine cost ~ active voxels x
    # channels, no tensor cores); width goes into the dense WaveFormer stages: 8^3 (attention on its 4^3 Haar
    # low band) and 4^3.
    "kaggle": replace(
        _BASE,
        name="kaggle",
        input_size=64,
        patch_size=16,
        stage_dims=(32, 64, 192, 384),
        stage_depths=(1, 1, 2, 2),
        attention_grid=4,
        decoder_dim=128,
        batch_size=4,
    ),
    # 128^3 views: stage 3 (16^3) attends on its 8^3 Haar low band, stage 4 (8^3) on all tokens
    "production": replace(
        _BASE,
        name="production",
        input_size=128,
        patch_size=16,
        stage_dims=(32, 64, 256, 768),
        stage_depths=(1, 1, 2, 2),
        decoder_dim=192,
        batch_size=2,
    ),
}


def get_preset(name: str, **overrides) -> Preset:
    try:
        preset = PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}") from None
    return preset.with_overrides(**overrides) if overrides else preset
