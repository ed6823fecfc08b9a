"""The decoder's fused InstanceNorm + GELU (speed-up `fused_norm_gelu`, models/norm_gelu.py): the Triton kernels
compute the eager pair's function forward and backward, the decoder keeps its parameter names, and off CUDA the
pair runs eagerly with the reason in the train report."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from model_helpers import tiny_preset

from rsna_phase0.models.decoder import InstanceGroupNorm, InstanceNormGelu, SparkDecoder
from rsna_phase0.models.norm_gelu import fused_path, norm_gelu_eager, norm_gelu_fused
from rsna_phase0.presets import get_preset

needs_triton_gpu = pytest.mark.skipif(
    not torch.cuda.is_available() or fused_path(torch.device("cuda")) is not None,
    reason="the fused kernels need a CUDA GPU of compute capability 7.0+ and Triton",
)

# (B, C, D, H, W): one block, several blocks with a partial last one, channels not a power of two, the kaggle
# step's full-resolution shape cut to 2 views
SHAPES = ((2, 8, 4, 4, 4), (3, 16, 17, 9, 10), (2, 6, 12, 11, 13), (2, 32, 64, 64, 64))


def _pair_inputs(shape, dtype, channels_last: bool, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    # an offset mean, as a convolution's output has: the statistics must not cancel
    x = torch.randn(shape, generator=generator) * 2.5 + 4.0
    x = x.to("cuda", dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last_3d)
    weight = (torch.rand(shape[1], generator=generator) + 0.5).cuda()
    bias = torch.randn(shape[1], generator=generator).cuda()
    grad = torch.randn(shape, generator=generator).to("cuda", dtype)
    return x.requires_grad_(), weight.requires_grad_(), bias.requires_grad_(), grad


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).abs().max() / b.float().abs().max()).item()


@pytest.mark.gpu
@needs_triton_gpu
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("channels_last", [True, False])
def test_fused_pair_matches_the_eager_pair_in_float32(shape, channels_last):
    torch.backends.cudnn.allow_tf32 = False
    x, weight, bias, grad = _pair_inputs(shape, torch.float32, channels_last)
    expected = norm_gelu_eager(x, weight, bias, 1e-5)
    fused = norm_gelu_fused(x, weight, bias, 1e-5)
    assert fused.is_contiguous(memory_format=torch.channels_last_3d)
    assert _relative(fused, expected) < 1e-5
    for got, want in zip(
        torch.autograd.grad(fused, (x, weight, bias), grad),
        torch.autograd.grad(expected, (x, weight, bias), grad),
        strict=True,
    ):
        assert _relative(got, want) < 1e-4


@pytest.mark.gpu
@needs_triton_gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_fused_pair_in_half_precision_is_as_close_as_the_eager_pair_is_to_float32(dtype):
    """In a half dtype both round: the fused pair (statistics, affine and GELU in float32, rounded once) must be at
    least as close to the float32 function as the eager pair (rounded after the norm and again after the GELU)."""
    x, weight, bias, grad = _pair_inputs((2, 32, 32, 32, 32), dtype, channels_last=True)
    x32 = x.detach().float().requires_grad_()
    exact = norm_gelu_eager(x32, weight, bias, 1e-5)
    exact_grads = torch.autograd.grad(exact, (x32, weight, bias), grad.float())
    eager = norm_gelu_eager(x, weight, bias, 1e-5)
    eager_grads = torch.autograd.grad(eager, (x, weight, bias), grad)
    fused = norm_gelu_fused(x, weight, bias, 1e-5)
    fused_grads = torch.autograd.grad(fused, (x, weight, bias), grad)
    assert fused.dtype == dtype and fused_grads[0].dtype == dtype
    assert _relative(fused, exact) <= 1.01 * _relative(eager, exact) + 1e-3
    for got, theirs, want in zip(fused_grads, eager_grads, exact_grads, strict=True):
        assert _relative(got, want) <= 1.01 * _relative(theirs, want) + 1e-3


def _eager_and_fused_decoders(preset, device: str) -> tuple[SparkDecoder, SparkDecoder]:
    """The preset's decoder without and with the speed-up, the same weights."""
    without = tuple(s for s in preset.speedups if s != "fused_norm_gelu")
    torch.manual_seed(0)
    eager = SparkDecoder(preset.with_overrides(speedups=without)).to(device)
    fused = SparkDecoder(preset.with_overrides(speedups=(*without, "fused_norm_gelu"))).to(device)
    fused.load_state_dict(eager.state_dict())
    return eager, fused


def _decoder_inputs(preset, device: str, views: int = 2):
    """Encoder maps (finest first) and masks at the decoder's scales."""
    maps, masks, size = [], [], preset.input_size
    for dim in preset.stage_dims:
        size //= 2
        maps.append(torch.randn(views, dim, size, size, size, device=device))
        masks.append(torch.rand(views, size, size, size, device=device) < 0.6)
    return maps, masks


@pytest.mark.gpu
@needs_triton_gpu
def test_fused_decoder_is_the_eager_decoder_with_channels_last_maps():
    """The kaggle decoder with and without the speed-up, the same weights and inputs: the same prediction and
    gradients (float32, TF32 off), its maps channels-last."""
    torch.backends.cudnn.allow_tf32 = False
    preset = get_preset("kaggle")
    eager, fused = _eager_and_fused_decoders(preset, "cuda")
    maps, masks = _decoder_inputs(preset, "cuda")
    outputs = [decoder(maps, masks, "ct") for decoder in (eager, fused)]
    assert all(f.is_contiguous(memory_format=torch.channels_last_3d) for f in outputs[1].features[1:])
    assert _relative(outputs[1].prediction, outputs[0].prediction) < 1e-4
    grads = [
        torch.autograd.grad(out.prediction.square().mean(), list(decoder.parameters()), allow_unused=True)
        for out, decoder in zip(outputs, (eager, fused), strict=True)
    ]
    assert [g is None for g in grads[1]] == [g is None for g in grads[0]]  # the MRI head only
    # against the largest gradient: a transposed convolution's bias before an InstanceNorm has a zero gradient in
    # exact arithmetic (the norm removes any per-channel constant), so both are rounding noise there
    scale = max(g.abs().max().item() for g in grads[0] if g is not None)
    for got, want in zip(grads[1], grads[0], strict=True):
        if want is not None:
            assert (got - want).abs().max().item() < 1e-4 * scale


# the lock's Triton, installed beside the venv by make setup (not in it: the CPU torch must not pick it up)
TRITON_INTERPRETER = Path(os.environ.get("RSNA_PHASE0_TRITON_INTERPRETER", Path(sys.prefix) / "triton-interpreter"))
INTERPRETED = """
import json, torch, triton
from rsna_phase0.models.norm_gelu import norm_gelu_eager, norm_gelu_fused
worst = {"y": 0.0, "dx": 0.0, "dw": 0.0, "db": 0.0}
for shape in [(2, 8, 4, 4, 4), (1, 8, 17, 9, 10), (2, 6, 5, 5, 7), (2, 16, 16, 16, 16)]:
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(shape, generator=g) * 2.5 + 4.0).contiguous(memory_format=torch.channels_last_3d)
    x.requires_grad_()
    w = (torch.rand(shape[1], generator=g) + 0.5).requires_grad_()
    b = torch.randn(shape[1], generator=g).requires_grad_()
    grad = torch.randn(shape, generator=g)
    want, got = norm_gelu_eager(x, w, b, 1e-5), norm_gelu_fused(x, w, b, 1e-5)
    pairs = [(got, want)] + list(zip(torch.autograd.grad(got, (x, w, b), grad), torch.autograd.grad(want, (x, w, b), grad)))
    for key, (a, e) in zip(worst, pairs):
        worst[key] = max(worst[key], ((a - e).abs().max() / e.abs().max()).item())
print("RESULT", json.dumps({"triton": triton.__version__, **worst}))
"""


def _lock_version(package: str) -> str:
    lock = Path(__file__).parents[1] / "env" / "requirements.lock"
    return re.search(rf"^{package}==(\S+)", lock.read_text(), re.M).group(1)


@pytest.mark.skipif(
    not (TRITON_INTERPRETER / "triton").is_dir(),
    reason=f"no Triton at {TRITON_INTERPRETER} (make setup installs the lock's there)",
)
def test_the_kernels_in_the_locked_tritons_interpreter_compute_the_eager_pair():
    """The four kernels run by Triton's interpreter on the CPU (numpy in place of the GPU), at the version the
    reference environment pins: the same function forward and backward, blocks partial and channels not a power
    of two included. On a GPU, the compiled kernels are tested above."""
    env = {
        **os.environ,
        "TRITON_INTERPRET": "1",
        "PYTHONPATH": os.pathsep.join([str(TRITON_INTERPRETER), str(Path(__file__).parents[1])]),
    }
    done = subprocess.run([sys.executable, "-c", INTERPRETED], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.split("RESULT ", 1)[1])
    assert result.pop("triton") == _lock_version("triton")
    # the weight's and bias's gradients sum over every position of every sample: float32 order differs there
    assert result["y"] < 1e-5 and max(result["dx"], result["dw"], result["db"]) < 1e-4, result


def test_off_cuda_the_pair_runs_eagerly_with_the_same_parameter_names():
    preset = tiny_preset()
    eager, fused = _eager_and_fused_decoders(preset, "cpu")
    assert list(fused.state_dict()) == list(eager.state_dict())
    assert isinstance(fused.up_blocks[0].body[0], InstanceNormGelu)
    assert type(eager.up_blocks[0].body[0]) is InstanceGroupNorm
    maps, masks = _decoder_inputs(preset, "cpu")
    assert torch.equal(fused(maps, masks, "mri").prediction, eager(maps, masks, "mri").prediction)
    assert fused_path(torch.device("cpu")) == "the fused kernels need CUDA, this is cpu"


def test_compile_dense_refuses_the_fused_pair():
    with pytest.raises(ValueError, match="compile_dense and fused_norm_gelu claim"):
        get_preset("smoke", speedups=("compile_dense", "fused_norm_gelu"))


@pytest.mark.gpu
@needs_triton_gpu
def test_without_a_c_compiler_the_report_says_so_and_the_pair_runs_eagerly(tmp_path):
    """Triton builds every kernel's launcher with the host's C compiler (a runtime image may have none): the probe
    finds that before training, names the fix, and the decoder runs the eager pair."""
    code = (
        "import torch\n"
        "from rsna_phase0.models.norm_gelu import fused_path\n"
        "from rsna_phase0.models.decoder import InstanceNormGelu\n"
        "print('REASON', fused_path(torch.device('cuda')))\n"
        "norm = InstanceNormGelu(8, True).cuda()\n"
        "x = torch.randn(2, 8, 4, 4, 4, device='cuda')\n"
        "print('CHANNELS_LAST', norm(x).is_contiguous(memory_format=torch.channels_last_3d))\n"
    )
    env = {**os.environ, "CC": str(tmp_path / "no-such-cc"), "TRITON_CACHE_DIR": str(tmp_path / "triton-cache")}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "REASON Triton could not build a kernel here" in done.stdout and "apt-get install gcc" in done.stdout
    assert "CHANNELS_LAST False" in done.stdout  # the eager GroupNorm's (B, C, D, H, W) output
