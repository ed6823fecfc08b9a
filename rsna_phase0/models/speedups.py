"""Speed-ups of the training step that keep the model's function, each named in `Preset.speedups` (issue 18).

Each can be switched off on its own, and `speedups=()` runs the step as it was before them, so one GPU run
measures before and after side by side (benchmarks/profile_step.py). Parameters and their names never change, so
checkpoints and exports do not depend on the choice.

- `hoisted_invariants`: what every block of a WaveFormer stage shares is computed once: which low-band tokens are
  keys once per stage, the sine-cosine position code once per grid, width, device and dtype (together ~50 small
  ops in every block of every step). Bit-identical.
- `token_layout`: WaveFormer stages hold their map as (B, D, H, W, C) tokens, so LayerNorm, the MLP and attention
  read it without the movedim copies a (B, C, D, H, W) map costs, and the Haar DWT -> attention on the low band ->
  IDWT runs as the identity it reduces to when only the low band changes (the Haar transform is orthogonal and
  reconstructs perfectly): with L levels and s = 2^(-3/2),
      low = s^L * (sum of h over each 2^L block),   out = h + s^L * upsample(attention(low) - low),
  so no high band is stored and ptwt is not called (ptwt built its filters from Python lists on every call: 8
  blocking host-to-device copies per block on CUDA). Same function up to float rounding
  (tests/test_model_speedups.py checks it against the ptwt path).
- `patch_space_loss`: the per-patch-normalised error and the informative-patch test are computed on the image's
  patches, patchified once per level, instead of through several voxel <-> patch layout round trips.
  Bit-identical.
- `index_select_norm`: the sparse stages' ActiveInstanceNorm hands each voxel its sample's mean and variance with
  `index_select` instead of advanced indexing. Bit-identical forward; the backward becomes an index_add where it
  was a sort-based index_put serialising over the thousands of voxels of each sample (11.5 ms of an 89 ms kaggle
  step at batch 4 on an H200, the largest kernel of the step). Gradients equal up to the order of float additions.
- `compile_dense` (not on by default): torch.compile (nn.Module.compile, so parameter names stay) of the WaveFormer
  blocks, the decoder and the loss (in its patch-space form): the dense parts between the MinkowskiEngine stages,
  which stay eager. It replaces `graph_wave_stages` in the list (both claim the WaveFormer stages).

- `one_sparse_pass`: the sparse stages run once over the global and local views together instead of once per MiM
  level, which halves MinkowskiEngine's host synchronisations (it synchronises inside every coordinate map, kernel
  map and convolution): on an H200 (kaggle, batch 4) 79-81 -> 33 a step, the GPU 68-70% -> 75-83% busy. The same
  function: normalisation is per sample and a kernel map never joins two samples. On a CPU (one thread) a pass per
  level keeps a level's features bit-identical whatever the other level holds; one pass keeps them to rounding
  (OpenBLAS may block a product of more rows otherwise: on an AMD EPYC they moved by <= 4e-7 of the largest, where
  CI's earlier machines kept them bit-identical; tests/test_model_leakage.py runs both). On CUDA neither way is
  bit-reproducible: the same input twice already differs by ~1e-4 of the largest feature (H200, per level or one
  pass), and another level's content moves a level's features no further than that (a GPU test there).
- `amp_dtype_group_norm`: the decoder's GroupNorm (one group per channel) normalises a half-precision map in its
  own dtype, its statistics still accumulated in float32 inside the kernel; CUDA autocast would run it on a float32
  copy and hand a float32 map to the GELU and the next convolution (which casts it back): at stride 1 that is 20
  views x 32 channels x 64^3 voxels, several times over. Peak memory of the kaggle step on an H200: 8.16 -> 6.21 GiB
  at batch 4 (the same speed within noise), 16.3 -> 11.9 GiB at batch 8 fp16 (then under a 16 GB T4's 15 GiB)
  and 7-10% faster there. The same function up to rounding (the convolution after it rounded its input anyway).
- `graph_wave_stages`: the WaveFormer stages' forward and backward in training steps replayed from CUDA graphs
  (models/cuda_graphs.py), captured at the first step of each batch shape: the kaggle step at batch 4 is host-bound
  on an H200 (~3,950 host operators, the GPU 46-58% busy) and these stages are ~40% of its operators, none of them
  synchronising the host. The same kernels on the same data (with TF32 off, graphed and eager gradients agree to
  1e-7 of the largest, as two eager runs do). CUDA only: on a CPU the stages run eagerly, the same function (the
  train report names which). On an H200 (kaggle, batch 4, two runs): host operators 3,948 -> 2,342, fp16
  72.6-72.9 -> 66.2-66.5 ms, bf16 the same within noise, GPU busy 46-58% -> 61-75%, peak memory 6.21 -> 4.60 GiB
  (that peak was taken after the captures, so it missed the graphs' pools; benchmarks/profile_step.py now counts
  from before the warm-up, and benchmarks/mixed_modality_step.py gives the footprint with both modalities).
  Not together with `compile_dense` (both claim these stages).
- `graph_decoder_loss`: the decoder and the loss (both levels' reconstruction, the alignment, the diagnostics) in
  training steps replayed from CUDA graphs, a forward and backward pair per modality (each has its own head), both
  held, so a run mixing MRI and CT batches captures twice, not at every switch; the diagnostics come back without a
  gradient. CUDA only, like `graph_wave_stages`. On an H200 (kaggle, batch 4, one run, 2026-12-04): host operators
  2,018 -> 1,326 a step, the step the same within noise (bf16 59.9 -> 58.3 ms, fp16 58.8 -> 56.5, GPU busy fp16
  77 -> 83%); with MRI and CT batches in turn (benchmarks/mixed_modality_step.py, fp16) peak memory allocated
  5.45 -> 4.89 GiB at batch 4 and 10.50 -> 9.45 at batch 8, reserved 13.7 -> 8.7 and 29.1 -> 17.8 GiB (a graph's
  pool reuses its capture's freed blocks for every replay; eager steps leave the caching allocator fragmented).
  Not together with `compile_dense` (both claim the decoder and the loss).

Measured and left out: the decoder's transposed convolutions (kernel 2, stride 2) as one batched GEMM and a copy
that interleaves the 2^3 blocks, in place of cuDNN's kernels: the same speed within run-to-run noise (kaggle batch
4, H200, bf16 and fp16 alternated in one run: 69.8-88.3 ms against 71.9-80.9), so the simpler module stays.
Also measured and left out: a channels-last decoder (weights and maps in channels_last_3d, which removes cuDNN's
nchwToNhwc transposes) made the kaggle step slower on an H200 (81 against 74 ms at batch 4, bf16): GroupNorm and
the element-wise kernels then copy more than the transposes saved.
Also measured and left out: the LayerNorm over the 32 channels of the stride-2 map (655,360 positions at kaggle
batch 4, torch's kernel in the step's top kernels) written as its formula: 1.74 ms forward + backward against
torch's 1.67 (benchmarks/small_layer_norm.py, H200), so torch's kernel stays.
Also measured and left out: cuDNN autotuning (`torch.backends.cudnn.benchmark`): 72.3 / 81.4 ms (bf16 / fp16) against
74.0 / 76.3 without, within run-to-run noise, with the same top kernels.

A run may change its speed-ups when it resumes (training/config.py lists `speedups` among the resumable keys).
"""

from __future__ import annotations

HOISTED_INVARIANTS = "hoisted_invariants"
TOKEN_LAYOUT = "token_layout"
PATCH_SPACE_LOSS = "patch_space_loss"
INDEX_SELECT_NORM = "index_select_norm"
COMPILE_DENSE = "compile_dense"
ONE_SPARSE_PASS = "one_sparse_pass"
AMP_DTYPE_GROUP_NORM = "amp_dtype_group_norm"
GRAPH_WAVE_STAGES = "graph_wave_stages"
GRAPH_DECODER_LOSS = "graph_decoder_loss"
FUSED_NORM_GELU = "fused_norm_gelu"
