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

import json
from dataclasses import asdict, dataclass, field, fields, replace

SPARSE_CONV_MODES = ("default", "copy_gemm", "direct_gemm")
# implementation choices of the training step that keep the model's function (rsna_phase0/models/speedups.py says
# what each does); `speedups=()` runs the step as it was before them, so one benchmark run measures both.
# graph_wave_stages and graph_decoder_loss act on CUDA only (there are no CUDA graphs elsewhere), fused_norm_gelu
# on CUDA with Triton; the train report says which way ran
STEP_SPEEDUPS = (
    "hoisted_invariants",
    "token_layout",
    "patch_space_loss",
    "index_select_norm",
    "amp_dtype_group_norm",
    "graph_wave_stages",
    "one_sparse_pass",
    "graph_decoder_loss",
    "fused_norm_gelu",
)
GRAPH_SPEEDUPS = ("graph_wave_stages", "graph_decoder_loss")
# what compile_dense replaces: the CUDA graphs, and the decoder's fused norm + GELU kernels (the compiler fuses them)
NOT_WITH_COMPILE = (*GRAPH_SPEEDUPS, "fused_norm_gelu")
# off unless asked for: torch.compile of the dense parts (instead of the CUDA graphs: both claim the WaveFormer
# stages, the decoder and the loss)
OPTIONAL_SPEEDUPS = ("compile_dense",)
# the users' three CT windows in HU (brain L40/W80, blood L80/W200, bone L600/W3000): what their pre-windowed
# DeepLesion and RSNA CTA files hold, and the default for CT given in HU (one channel)
USERS_CT_WINDOWS: tuple[tuple[float, float], ...] = ((0.0, 80.0), (-20.0, 180.0), (-900.0, 2100.0))
MODALITIES = ("mri", "ct")


@dataclass(frozen=True)
class Preset:
    name: str
    # view geometry (data pipeline + masking + model)
    input_size: int
    patch_size: int
    local_scale: int = 2
    n_local: int = 4
    target_spacing_mm: float = 1.0
    # intensities (data pipeline; part of every cache entry's name). MRI: each volume clipped to its foreground's
    # [p0.5, upper] and scaled to [0, 1]; the upper percentile per sequence (the volume's folder name, e.g. MRA),
    # `mri_upper_percentile` for the rest: TOF-MRA vessels are the brightest ~1% of the head, p99.5 saturates them.
    # CT given in HU (one channel) is cut into `ct_windows` (HU ranges, each scaled to [0, 1]); pre-windowed files
    # (the users' three windows) are read as they are and need the users' windows here.
    mri_upper_percentile: float = 99.5
    mri_sequence_percentiles: tuple[tuple[str, float], ...] = (("MRA", 99.99),)
    ct_windows: tuple[tuple[float, float], ...] = USERS_CT_WINDOWS
    # MiM levels: mask ratio and reconstruction-loss weight per level; cross-level alignment weight
    global_mask_ratio: float = 0.6
    local_mask_ratio: float = 0.8
    global_loss_weight: float = 1.0
    local_loss_weight: float = 1.0
    align_loss_weight: float = 0.1
    # which hidden patches the reconstruction loss counts: at least this share of the patch's voxels above
    # background (zero padding and air teach nothing) and some channel's std at least `min_patch_std` (a
    # near-constant patch, normalised by its own std, is unit-variance noise); the rest is reported, not trained on
    min_patch_foreground: float = 0.25
    min_patch_std: float = 0.01
    # model widths: channels per encoder stage; the last entry is the embed size
    stage_dims: tuple[int, ...] = (32, 128, 512)
    stage_depths: tuple[int, ...] = (1, 2, 8)
    sparse_stages: int = 1  # the first stages run MinkowskiEngine sparse convolutions; the rest are WaveFormer
    # WaveFormer stages: heads = stage width // head_dim, so any width that is a multiple of head_dim works; the
    # DWT levels of each stage are fixed by the pre-training size (as many as bring its map down to
    # attention_grid^3 low-band tokens, WaveFormer: 8^3) and stay fixed for any input size (fine-tuning at 96^3
    # keeps the tokens' size and attends on more of them)
    head_dim: int = 64
    attention_grid: int = 8
    mlp_ratio: float = 4.0
    decoder_dim: int = 256  # decoder width at the coarsest scale, halving per upsampling (floor 8)
    # sparse-stage speed (benchmarks/throughput.py measures each; none changes what a visible voxel contributes):
    # voxels whose every channel is <= background_threshold (normalised intensity: MRI background and CT air are
    # exactly 0) are inactive in the sparse stages like hidden ones, in pre-training and in the export; None
    # computes them
    background_threshold: float | None = 0.0
    # the k2 s2 steps (modality stem, stage downsampling) as one dense conv read at the active output cells: exact,
    # and no MinkowskiEngine coordinate map at the finer scale (the stem's would hold every active input voxel)
    dense_strided_steps: bool = True
    sparse_conv_mode: str = (
        "default"  # MinkowskiEngine ConvolutionMode of the k3 convs: default, copy_gemm, direct_gemm
    )
    speedups: tuple[str, ...] = STEP_SPEEDUPS  # any of STEP_SPEEDUPS + OPTIONAL_SPEEDUPS
    # training defaults (overridable from the command line or a config file)
    batch_size: int = 4
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

    def channels(self, modality: str) -> int:
        """Input channels of a modality: MRI 1; CT one per window."""
        if modality not in MODALITIES:
            raise ValueError(f"unknown modality {modality!r}; expected one of {MODALITIES}")
        return 1 if modality == "mri" else len(self.ct_windows)

    @property
    def modality_channels(self) -> dict[str, int]:
        return {m: self.channels(m) for m in MODALITIES}

    def mri_percentile(self, sequence: str) -> float:
        """The upper clipping percentile of an MRI sequence (its folder name, e.g. MRI_T1, MRA)."""
        return dict(self.mri_sequence_percentiles).get(sequence, self.mri_upper_percentile)

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
        unknown = set(self.speedups) - set(STEP_SPEEDUPS + OPTIONAL_SPEEDUPS)
        if unknown:
            raise ValueError(
                f"preset {self.name}: unknown speedups {sorted(unknown)}; choose from {STEP_SPEEDUPS + OPTIONAL_SPEEDUPS}"
            )
        claims = [name for name in NOT_WITH_COMPILE if name in self.speedups]
        if "compile_dense" in self.speedups and claims:
            raise ValueError(
                f"preset {self.name}: speedups compile_dense and {' and '.join(claims)} claim the same dense parts "
                f"(WaveFormer stages, decoder, loss); list compile_dense without {', '.join(NOT_WITH_COMPILE)} (they "
                "are in the default speedups: leave them out to compile)"
            )
        for ratio in (self.global_mask_ratio, self.local_mask_ratio):
            if not 0.0 < ratio < 1.0:
                raise ValueError(f"preset {self.name}: mask ratio {ratio} must be in (0, 1)")
        if not 0.0 <= self.min_patch_foreground <= 1.0 or not self.min_patch_std >= 0.0:
            raise ValueError(
                f"preset {self.name}: min_patch_foreground {self.min_patch_foreground} must be in [0, 1] and "
                f"min_patch_std {self.min_patch_std} at least 0"
            )
        percentiles = [self.mri_upper_percentile, *(p for _, p in self.mri_sequence_percentiles)]
        if not all(50.0 < p <= 100.0 for p in percentiles):
            raise ValueError(f"preset {self.name}: MRI upper percentiles {percentiles} must be in (50, 100]")
        if not self.ct_windows or not all(len(w) == 2 and w[0] < w[1] for w in self.ct_windows):
            raise ValueError(
                f"preset {self.name}: ct_windows {self.ct_windows} must be (low, high) HU pairs with low < high"
            )


_BASE = Preset(name="base", input_size=64, patch_size=8)

PRESETS: dict[str, Preset] = {
    # tiny: trains on a CPU in minutes; two sparse stages (the sparse path at depth), then one WaveFormer stage
    # (4^3) that attends on its 2^3 Haar low band
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
    # the kaggle shape at a quarter of the width: for trying things on a small GPU
    "dev": replace(
        _BASE,
        name="dev",
        stage_dims=(24, 64, 192),
        stage_depths=(1, 1, 4),
        head_dim=32,
        decoder_dim=96,
        batch_size=4,
    ),
    # the users' Kaggle T4 configuration: 64^3 views, patch 8 (8 mm masking blocks at the local level), embed
    # 512, depth 8, 8 heads. One sparse stage at 32^3 (MinkowskiEngine's cost grows with active voxels x
    # channels and gains nothing from tensor cores: keep it narrow at high resolution); WaveFormer at 16^3 (one
    # Haar level, attention on the 8^3 low band) and at 8^3 (the embed stage, attention on all 512 tokens, as
    # WaveFormer's last stage). Fits a 16 GB T4 under fp16 at batch 4 (README, model section).
    "kaggle": replace(
        _BASE,
        name="kaggle",
        stage_dims=(32, 128, 512),
        stage_depths=(1, 2, 8),
        decoder_dim=256,
        batch_size=4,
    ),
    # 128^3 views, embed 768, depth 12 (the users' production shape). Patch 16, not 8: at patch 8 the embed stage
    # would run its 12 blocks x 768 channels on 16^3 = 4,096 positions per view, ~8x the activation memory (see
    # the README); at 16 it works on 8^3 like kaggle's, and the WaveFormer stages at 32^3 and 16^3 attend on 8^3
    # Haar low bands (2 and 1 levels).
    "production": replace(
        _BASE,
        name="production",
        input_size=128,
        patch_size=16,
        stage_dims=(32, 128, 256, 768),
        stage_depths=(1, 1, 2, 12),
        decoder_dim=384,
        batch_size=2,
    ),
}


def tupled(value):
    """Lists (from JSON or TOML) back to the nested tuples Preset fields hold."""
    return tuple(tupled(v) for v in value) if isinstance(value, list | tuple) else value


def preset_from_dict(data: dict) -> Preset:
    """A Preset from Preset.to_dict() output (a checkpoint's or an export's), ignoring keys it does not know."""
    known = {f.name for f in fields(Preset)}
    return Preset(**{k: tupled(v) for k, v in data.items() if k in known})


def parse_tuple_field(name: str, text: str, current: tuple):
    """A tuple-valued field from command-line text: JSON (`[[0,80],[-100,600]]`, `[["MRA",99.9]]`) or, for flat
    tuples of numbers, a comma list (`32,128,512`)."""
    text = text.strip()
    try:
        value = json.loads(text if text.startswith("[") else "[" + text.strip("()") + "]")
    except json.JSONDecodeError:
        raise ValueError(f"{name}={text!r}: expected JSON like {json.dumps(current)}") from None
    if not isinstance(value, list):
        raise ValueError(f"{name}={text!r}: expected a list like {json.dumps(current)}")
    return tupled(value)


def get_preset(name: str, **overrides) -> Preset:
    try:
        preset = PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}") from None
    return preset.with_overrides(**overrides) if overrides else preset
