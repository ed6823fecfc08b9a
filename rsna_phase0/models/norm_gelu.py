"""The decoder's InstanceNorm + GELU on a channels-last map as four Triton kernels (the `fused_norm_gelu` speed-up).

In the kaggle step the decoder is half the GPU time, most of it at full resolution (20 views x 32 channels x 64^3
at batch 4), and much of that is memory traffic around its normalisations: torch's GroupNorm reads only
(B, C, D, H, W) maps, cuDNN convolves channels-last, so every convolution there transposes its input and output
(cuDNN's nchwToNhwc / nhwcToNchw, the step's largest kernel), and the norm and the GELU after it each read and write
the whole map forward and backward. Here the map stays channels-last ((B, D, H, W, C) in memory, C innermost) and
one pair costs two passes forward (statistics; normalise + GELU) and two backward (gradient statistics; input
gradient), the GELU's input recomputed instead of stored.

The function is the eager one's, `F.gelu(group_norm(x, C))` normalised in the map's own dtype (`amp_dtype_group_norm`):
statistics per sample and channel in float32 (each block's mean and centred sum of squares, combined exactly as
Chan et al.'s parallel variance), the affine and GELU in float32, the result in the map's dtype.
Needs CUDA, Triton (torch's CUDA wheels ship it; CPU wheels do not) and a GPU Triton compiles for (compute
capability 7.0 or newer: a T4 is 7.5, a P100 6.0 is not); elsewhere the pair runs eagerly, the same function,
and the train report says which way ran (`fused_path`).
"""

# no `from __future__ import annotations`: Triton must see `tl.constexpr` itself, not its name as a string (Triton
# 3.0's interpreter takes only the object)
import functools

import torch
import torch.nn.functional as F

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU builds of torch come without Triton: the eager pair serves them (fused_path says so)
    triton = None

MIN_CAPABILITY = (7, 0)
# positions x channels one program holds (128 positions of 32 channels), and its warps: benchmarks/norm_gelu_blocks.py
ELEMENTS_PER_BLOCK = 4096
NUM_WARPS = 4


def fused_path(device: torch.device) -> str | None:
    """None where the fused kernels run on `device`, else why they do not (for the train report)."""
    if device.type != "cuda":
        return f"the fused kernels need CUDA, this is {device.type}"
    if triton is None:
        return "the fused kernels need Triton (pip install the triton your torch wheel names), none is installed"
    index = device.index if device.index is not None else torch.cuda.current_device()
    capability = torch.cuda.get_device_capability(index)
    if capability < MIN_CAPABILITY:
        return f"Triton needs compute capability 7.0 or newer, this GPU is {capability[0]}.{capability[1]}"
    return _build_problem(index)


@functools.cache
def _build_problem(index: int) -> str | None:
    """Compile and run a one-element kernel once per GPU (before any CUDA graph capture: the first forward on a GPU
    is eager): Triton builds each kernel's launcher with the host's C compiler, against Python's headers and
    libcuda, and a machine can lack any of them (a runtime image without a compiler does)."""
    try:
        probe = torch.zeros(1, device=f"cuda:{index}")
        _probe_kernel[(1,)](probe)
        ran = probe.item() == 1.0
    except Exception as exc:  # whatever Triton raises, the report shows it and the eager pair runs
        detail = (str(exc).strip().splitlines() or [type(exc).__name__])[-1][:300]
        return (
            f"Triton could not build a kernel here ({detail}); it needs a C compiler (apt-get install gcc, or set "
            "CC), Python's headers and libcuda"
        )
    return None if ran else "Triton's probe kernel ran but wrote nothing; the eager pair runs"


def norm_gelu_eager(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float) -> torch.Tensor:
    """The same function in torch operations (the reference, and the path off CUDA)."""
    with torch.autocast(x.device.type, enabled=False):
        normalised = F.group_norm(x, x.shape[1], weight.to(x.dtype), bias.to(x.dtype), eps)
    return F.gelu(normalised)


if triton is not None:

    @triton.jit
    def _probe_kernel(out_ptr):
        tl.store(out_ptr, 1.0)

    @triton.jit
    def _block(rows, cols, L, C):
        """Offsets and mask of a program's block: positions along axis 0 of the grid, samples along axis 1."""
        mask = (rows[:, None] < L) & (cols[None, :] < C)
        offsets = tl.program_id(1).to(tl.int64) * L * C + rows[:, None] * C + cols[None, :]
        return offsets, mask

    @triton.jit
    def _per_channel(ptr, C, cols, sample_stride):
        return tl.load(ptr + tl.program_id(1) * sample_stride + cols, mask=cols < C, other=0.0)

    @triton.jit
    def _normalised(x_ptr, mean_ptr, rstd_ptr, w_ptr, b_ptr, offsets, mask, cols, C):
        """The block's normalised map xhat and the GELU's input z = xhat * w + b (float32), with rstd and w."""
        x = tl.load(x_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
        mean, rstd = _per_channel(mean_ptr, C, cols, C), _per_channel(rstd_ptr, C, cols, C)
        w, b = _per_channel(w_ptr, C, cols, 0), _per_channel(b_ptr, C, cols, 0)
        xhat = (x - mean[None, :]) * rstd[None, :]
        return xhat, xhat * w[None, :] + b[None, :], rstd, w

    @triton.jit
    def _gelu_grad(z, g):
        # d/dz of z * Phi(z): Phi(z) + z * phi(z)
        cdf = 0.5 * (1.0 + tl.erf(z * 0.7071067811865476))
        pdf = tl.exp(-0.5 * z * z) * 0.3989422804014327
        return g * (cdf + z * pdf)

    @triton.jit
    def _stats_kernel(x_ptr, mean_ptr, m2_ptr, L, C, BLOCK_L: tl.constexpr, BLOCK_C: tl.constexpr):
        rows, cols = tl.program_id(0) * BLOCK_L + tl.arange(0, BLOCK_L), tl.arange(0, BLOCK_C)
        offsets, mask = _block(rows, cols, L, C)
        x = tl.load(x_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
        count = tl.minimum(L - tl.program_id(0) * BLOCK_L, BLOCK_L).to(tl.float32)
        mean = tl.sum(x, axis=0) / count
        centred = tl.where(mask, x - mean[None, :], 0.0)
        out = (tl.program_id(1) * tl.num_programs(0) + tl.program_id(0)) * C + cols
        tl.store(mean_ptr + out, mean, mask=cols < C)
        tl.store(m2_ptr + out, tl.sum(centred * centred, axis=0), mask=cols < C)

    @triton.jit
    def _forward_kernel(
        x_ptr, y_ptr, mean_ptr, rstd_ptr, w_ptr, b_ptr, L, C, BLOCK_L: tl.constexpr, BLOCK_C: tl.constexpr
    ):
        rows, cols = tl.program_id(0) * BLOCK_L + tl.arange(0, BLOCK_L), tl.arange(0, BLOCK_C)
        offsets, mask = _block(rows, cols, L, C)
        _, z, _, _ = _normalised(x_ptr, mean_ptr, rstd_ptr, w_ptr, b_ptr, offsets, mask, cols, C)
        y = 0.5 * z * (1.0 + tl.erf(z * 0.7071067811865476))
        tl.store(y_ptr + offsets, y.to(y_ptr.dtype.element_ty), mask=mask)

    @triton.jit
    def _grad_stats_kernel(
        x_ptr, g_ptr, mean_ptr, rstd_ptr, w_ptr, b_ptr, s1_ptr, s2_ptr, L, C,
        BLOCK_L: tl.constexpr, BLOCK_C: tl.constexpr,
    ):  # fmt: skip
        rows, cols = tl.program_id(0) * BLOCK_L + tl.arange(0, BLOCK_L), tl.arange(0, BLOCK_C)
        offsets, mask = _block(rows, cols, L, C)
        xhat, z, _, _ = _normalised(x_ptr, mean_ptr, rstd_ptr, w_ptr, b_ptr, offsets, mask, cols, C)
        g = tl.load(g_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
        dz = tl.where(mask, _gelu_grad(z, g), 0.0)
        out = (tl.program_id(1) * tl.num_programs(0) + tl.program_id(0)) * C + cols
        tl.store(s1_ptr + out, tl.sum(dz, axis=0), mask=cols < C)
        tl.store(s2_ptr + out, tl.sum(dz * xhat, axis=0), mask=cols < C)

    @triton.jit
    def _grad_input_kernel(
        x_ptr, g_ptr, dx_ptr, mean_ptr, rstd_ptr, w_ptr, b_ptr, s1_ptr, s2_ptr, L, C,
        BLOCK_L: tl.constexpr, BLOCK_C: tl.constexpr,
    ):  # fmt: skip
        rows, cols = tl.program_id(0) * BLOCK_L + tl.arange(0, BLOCK_L), tl.arange(0, BLOCK_C)
        offsets, mask = _block(rows, cols, L, C)
        xhat, z, rstd, w = _normalised(x_ptr, mean_ptr, rstd_ptr, w_ptr, b_ptr, offsets, mask, cols, C)
        g = tl.load(g_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
        # the per-sample means of dz and dz * xhat over the map's positions
        s1, s2 = _per_channel(s1_ptr, C, cols, C) / L, _per_channel(s2_ptr, C, cols, C) / L
        dz = _gelu_grad(z, g)
        dx = (rstd * w)[None, :] * (dz - s1[None, :] - xhat * s2[None, :])
        tl.store(dx_ptr + offsets, dx.to(dx_ptr.dtype.element_ty), mask=mask)


def _layout(x: torch.Tensor) -> tuple[torch.Tensor, int, tuple[int, int], dict]:
    """(B, L, C) tokens of a channels-last map (a copy only if it is not channels-last), L, and the kernels' grid
    (blocks of positions, samples) and launch options."""
    tokens = x.permute(0, 2, 3, 4, 1).contiguous()  # a view for a channels-last map
    samples, channels = x.shape[0], x.shape[1]
    positions = tokens.numel() // max(samples * channels, 1)
    block_c = triton.next_power_of_2(channels)
    block_l = max(1, min(ELEMENTS_PER_BLOCK // block_c, triton.next_power_of_2(positions)))
    grid = (triton.cdiv(positions, block_l), samples)
    return tokens, positions, grid, {"BLOCK_L": block_l, "BLOCK_C": block_c, "num_warps": NUM_WARPS}


class _NormGelu(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float) -> torch.Tensor:
        tokens, positions, grid, launch = _layout(x)
        (blocks, samples), channels, block_l = grid, x.shape[1], launch["BLOCK_L"]
        means = torch.empty(samples, blocks, channels, device=x.device, dtype=torch.float32)
        m2s = torch.empty_like(means)
        _stats_kernel[grid](tokens, means, m2s, positions, channels, **launch)
        # Chan's combination of the blocks' (count, mean, centred sum of squares)
        counts = torch.full((blocks, 1), float(block_l), device=x.device)
        counts[-1] = positions - block_l * (blocks - 1)
        mean = (means * counts).sum(1) / positions
        m2 = m2s.sum(1) + ((means - mean[:, None]).square() * counts).sum(1)
        rstd = torch.rsqrt(m2 / positions + eps)
        weight, bias = weight.float().contiguous(), bias.float().contiguous()
        out = torch.empty_like(x, memory_format=torch.channels_last_3d)
        y_tokens = out.permute(0, 2, 3, 4, 1)
        _forward_kernel[grid](tokens, y_tokens, mean, rstd, weight, bias, positions, channels, **launch)
        ctx.save_for_backward(tokens, mean, rstd, weight, bias)
        ctx.shape = x.shape
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):
        tokens, mean, rstd, weight, bias = ctx.saved_tensors
        g_tokens, positions, grid, launch = _layout(grad)
        (blocks, samples), channels = grid, grad.shape[1]
        s1 = torch.empty(samples, blocks, channels, device=grad.device, dtype=torch.float32)
        s2 = torch.empty_like(s1)
        _grad_stats_kernel[grid](tokens, g_tokens, mean, rstd, weight, bias, s1, s2, positions, channels, **launch)
        s1, s2 = s1.sum(1), s2.sum(1)  # (B, C): sums of dz and dz * xhat
        dx = torch.empty(ctx.shape, device=grad.device, dtype=tokens.dtype, memory_format=torch.channels_last_3d)
        dx_tokens = dx.permute(0, 2, 3, 4, 1)
        _grad_input_kernel[grid](
            tokens, g_tokens, dx_tokens, mean, rstd, weight, bias, s1, s2, positions, channels, **launch
        )
        return dx, s2.sum(0), s1.sum(0), None


def norm_gelu_fused(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float) -> torch.Tensor:
    """`norm_gelu_eager` by the Triton kernels (CUDA, `fused_path(x.device)` None); the result channels-last."""
    return _NormGelu.apply(x, weight, bias, eps)
