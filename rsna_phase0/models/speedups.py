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
- `fused_norm_gelu`: the decoder's InstanceNorm + GELU pairs as four Triton kernels on channels-last maps
  (models/norm_gelu.py), so the decoder's maps stay channels-last and cuDNN's nchwToNhwc / nhwcToNchw transposes
  around its convolutions (4.7 ms of the kaggle step at batch 4 on an H200, its largest kernels) are gone, and a
  pair reads and writes its map four times forward + backward instead of ~10 (the GELU's input recomputed, not
  stored). The same function up to rounding (statistics, affine and GELU in float32, rounded once; in float32 within
  1e-5 of the eager pair, tests/test_norm_gelu.py); the parameters keep their names. CUDA with Triton only (torch's
  CUDA wheels ship it; compute capability 7.0+, so a T4 but not a P100): elsewhere the pair runs eagerly and the
  train report says why. On an H200 (2026-12-04): the decoder alone forward + backward at kaggle batch 4
  (benchmarks/decoder_layouts.py) bf16 26.6 -> 20.2 ms, fp16 25.8 -> 19.2, peak 3.45 -> 2.71 GiB; the kaggle step
  at batch 4 (benchmarks/profile_step.py, one run) bf16 56.3 -> 51.6 ms, fp16 58.8 -> 51.9, GPU kernel time a step
  49.0 -> 42.6 ms, GPU busy 77 -> 81% (bf16) and 71 -> 77% (fp16), peak memory 4.54 -> 3.58 GiB (bf16); in the
  issue18 plan's run opt-fused -> opt 62.5 -> 52.3 ms (bf16), 60.8 -> 55.2 (fp16). Block size
  (benchmarks/norm_gelu_blocks.py, the 20 x 32 x 64^3 map): 4,096 elements and 4 warps a program, 1.47 ms a pair
  forward + backward against 1.99 ms at 8,192, torch's GroupNorm + GELU 2.34 ms, the traffic floor 0.57 ms.
  Not together with `compile_dense` (its compiler fuses these itself).

Measured and left out: the decoder's transposed convolutions (kernel 2, stride 2) as one batched GEMM and a copy
that interleaves the 2^3 blocks, in place of cuDNN's kernels: the same speed within run-to-run noise (kaggle batch
4, H200, bf16 and fp16 alternated in one run: 69.8-88.3 ms against 71.9-80.9), so the simpler module stays.
Also measured and left out: a channels-last decoder (weights and maps in channels_last_3d, which removes cuDNN's
nchwToNhwc transposes) made the kaggle step slower on an H200 (81 against 74 ms at batch 4, bf16): GroupNorm and
the element-wise kernels then copy more than the transposes saved. The same with the norm as its formula on the
channels-last map in torch operations (float32 mean and mean-square reductions, autograd's backward;
benchmarks/decoder_layouts.py `cl-formula`): the decoder 35.1 against 26.6 ms (bf16), peak 6.6 against 3.45 GiB, the
step 69.5 against 59.0 ms; the element-wise float32 passes cost more than the transposes. Hence `fused_norm_gelu`.
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
