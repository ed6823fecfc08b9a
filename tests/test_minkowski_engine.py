"""The installed MinkowskiEngine computes what sparse convolution means, on the CPU and (marked gpu) on a GPU.

These guard the failure the users hit before: an ME that imports fine but was compiled against another torch or
with broken CUDA code, so that results are silently wrong.
"""

from __future__ import annotations

import importlib.metadata
import json
import sys
import warnings
from pathlib import Path

import pytest
import torch

from installers.minkowski import selftest as st

REPO = Path(__file__).resolve().parents[1]

try:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "compiled with CPU_ONLY" is expected on a CPU machine
        import MinkowskiEngine as ME
except ImportError as exc:  # fail loudly: ME is required, never optional
    raise ImportError(
        f"MinkowskiEngine is not importable ({exc}): run `make setup` or `python installers/build_minkowski.py "
        "--cpu-only`"
    ) from exc


def test_version_and_build_record_match_this_torch():
    assert ME.__version__ == "0.5.4"
    text = importlib.metadata.distribution("MinkowskiEngine").read_text("rsna_build.json")
    assert (
        text is not None
    ), "installed MinkowskiEngine has no rsna_build.json: rebuild with installers/build_minkowski.py"
    record = json.loads(text)
    # An ME compiled against another torch is the breakage of the previous attempt.
    assert record["torch"] == torch.__version__
    assert record["python"] == f"{sys.version_info[0]}.{sys.version_info[1]}"
    assert record["cpu_only"] is (not ME.is_cuda_available())


def test_stride1_k3_conv_equals_brute_force_cpu():
    assert st.conv_brute_force_error(seed=0) < 1e-12
    assert st.conv_brute_force_error(seed=1) < 1e-12


def test_equal_kernel_weights_give_the_neighbourhood_sum():
    """Independent of ME's kernel-offset order: with one weight for every offset, out = (sum of neighbours) @ W."""
    coords, feats = st.sparse_points(50, 2, seed=3, dtype=torch.float64)
    conv = ME.MinkowskiConvolution(2, 3, kernel_size=3, stride=1, dimension=3, bias=False).double()
    w = torch.randn(2, 3, dtype=torch.float64)
    with torch.no_grad():
        conv.kernel.copy_(w.expand(27, 2, 3))
    x = ME.SparseTensor(feats, coordinates=coords)
    out = conv(x)
    index = {tuple(c): i for i, c in enumerate(x.C.tolist())}
    sums = torch.zeros_like(x.F)
    for i, (b, *p) in enumerate(x.C.tolist()):
        for dx in (-1, 0, 1):
            for dy in (-1, 0, 1):
                for dz in (-1, 0, 1):
                    j = index.get((b, p[0] + dx, p[1] + dy, p[2] + dz))
                    if j is not None:
                        sums[i] += x.F[j]
    assert st.rel_error(out.F.detach(), sums @ w) < 1e-12


def test_stride2_conv_output_coordinates_and_gradcheck():
    coords, feats = st.sparse_points(20, 2, grid=5, batches=1, seed=4, dtype=torch.float64)
    conv = ME.MinkowskiConvolution(2, 2, kernel_size=2, stride=2, dimension=3).double()
    x = ME.SparseTensor(feats, coordinates=coords)
    out = conv(x)
    expected = {(b, x_ // 2 * 2, y // 2 * 2, z // 2 * 2) for b, x_, y, z in coords.tolist()}
    assert {tuple(c) for c in out.C.tolist()} == expected
    assert out.tensor_stride == [2, 2, 2]

    feats = feats.clone().requires_grad_(True)
    fn = ME.MinkowskiConvolutionFunction
    kernel_generator = conv.kernel_generator
    manager = x.coordinate_manager

    def forward(f, k):
        return fn.apply(
            f, k, kernel_generator, conv.convolution_mode, x.coordinate_map_key, out.coordinate_map_key, manager
        )

    assert torch.autograd.gradcheck(forward, (feats, conv.kernel.detach().clone().requires_grad_(True)), eps=1e-6)


def test_sparse_layers_forward_backward_cpu():
    coords, feats = st.sparse_points(80, 4, grid=8, seed=5, dtype=torch.float32)
    net = torch.nn.Sequential(
        ME.MinkowskiConvolution(4, 8, kernel_size=3, stride=1, dimension=3),
        ME.MinkowskiBatchNorm(8),
        ME.MinkowskiReLU(),
        ME.MinkowskiConvolution(8, 8, kernel_size=2, stride=2, dimension=3),
        ME.MinkowskiConvolutionTranspose(8, 4, kernel_size=2, stride=2, dimension=3),
        ME.MinkowskiGlobalAvgPooling(),
    )
    feats.requires_grad_(True)
    out = net(ME.SparseTensor(feats, coordinates=coords))
    assert out.F.shape == (2, 4)  # one row per batch item
    out.F.sum().backward()
    assert feats.grad is not None and torch.isfinite(feats.grad).all() and feats.grad.abs().sum() > 0
    assert all(p.grad is not None for p in net.parameters())


@pytest.mark.gpu
def test_cuda_support_compiled_in():
    assert ME.is_cuda_available(), "MinkowskiEngine was built CPU-only: rebuild without --cpu-only"


@pytest.mark.gpu
def test_gpu_forward_backward_equal_cpu():
    errors = st.gpu_vs_cpu_errors(seed=0)
    assert max(errors.values()) < st.GPU_RTOL, errors


@pytest.mark.gpu
def test_gpu_conv_equals_brute_force():
    assert st.conv_brute_force_error(seed=0, device="cuda") < 1e-10
