"""Prove an installed MinkowskiEngine works: import, version, CUDA support as expected, and numbers.

Run in the target Python (`python installers/minkowski/selftest.py [--expect-cuda] [--version 0.5.4]`); prints
one line per check ("ok ..." / "FAIL ...") and exits non-zero on any failure. tests/test_minkowski_engine.py
imports the same functions. The module itself imports only the standard library; torch and MinkowskiEngine are
imported inside the checks, which run after they are installed.
"""

from __future__ import annotations

import argparse
import sys

# Kernel offsets of a k3 hypercube in MinkowskiEngine's weight order: the first spatial axis varies fastest.
OFFSETS_K3_3D = tuple((x, y, z) for z in (-1, 0, 1) for y in (-1, 0, 1) for x in (-1, 0, 1))
GPU_RTOL = 1e-5


def sparse_points(n: int, channels: int, *, grid: int = 7, batches: int = 2, seed: int = 0, dtype=None):
    """(coordinates int32 [N, 1+3], features [N, C]): unique random voxels of a grid^3 volume per batch item."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    coords = []
    for b in range(batches):
        cells = torch.randperm(grid**3, generator=gen)[:n]
        xyz = torch.stack([cells // grid**2, (cells // grid) % grid, cells % grid], 1)
        coords.append(torch.cat([torch.full((n, 1), b, dtype=torch.long), xyz], 1))
    feats = torch.randn(n * batches, channels, generator=gen, dtype=dtype or torch.float64)
    return torch.cat(coords).int(), feats


def brute_force_conv(coords, feats, kernel, offsets=OFFSETS_K3_3D):
    """Stride-1 sparse convolution by definition: out[p] = sum_k in[p + offset_k] @ W[k] over active p + offset_k."""
    import torch

    index = {tuple(c): i for i, c in enumerate(coords.tolist())}
    out = torch.zeros(feats.shape[0], kernel.shape[2], dtype=feats.dtype)
    for i, (b, x, y, z) in enumerate(coords.tolist()):
        for k, (dx, dy, dz) in enumerate(offsets):
            j = index.get((b, x + dx, y + dy, z + dz))
            if j is not None:
                out[i] += feats[j] @ kernel[k]
    return out


def rel_error(a, b) -> float:
    """Norm-wise relative error of a against the reference b."""
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def conv_brute_force_error(seed: int = 0, device: str = "cpu") -> float:
    """Relative error of ME's stride-1 k3 convolution (double precision) against brute force."""
    import MinkowskiEngine as ME
    import torch

    torch.manual_seed(seed)
    coords, feats = sparse_points(60, 3, seed=seed, dtype=torch.float64)
    conv = ME.MinkowskiConvolution(3, 5, kernel_size=3, stride=1, dimension=3, bias=False).double().to(device)
    x = ME.SparseTensor(feats.to(device), coordinates=coords.to(device), device=device)
    out = conv(x)
    if not bool((out.C == x.C).all()):
        raise AssertionError("stride-1 convolution changed the coordinates")
    reference = brute_force_conv(x.C.cpu(), x.F.cpu(), conv.kernel.detach().cpu())
    return rel_error(out.F.detach().cpu(), reference)


def gpu_vs_cpu_errors(seed: int = 0) -> dict[str, float]:
    """Relative GPU-vs-CPU errors of a k3 conv's output, input gradient and kernel gradient (float32)."""
    import MinkowskiEngine as ME
    import torch

    torch.manual_seed(seed)
    coords, feats = sparse_points(400, 8, grid=12, seed=seed, dtype=torch.float32)
    conv = ME.MinkowskiConvolution(8, 16, kernel_size=3, stride=1, dimension=3, bias=False)
    grad_out = torch.randn(coords.shape[0], 16, generator=torch.Generator().manual_seed(seed + 1))
    results = {}
    for device in ("cpu", "cuda"):
        layer = conv.to(device)
        layer.zero_grad()
        f = feats.detach().to(device).requires_grad_(True)  # a leaf on every device, so .grad is populated
        x = ME.SparseTensor(f, coordinates=coords.to(device), device=device)
        out = layer(x)
        # Rows follow each device's coordinate order: align through the coordinates before comparing.
        order = {tuple(c): i for i, c in enumerate(out.C.cpu().tolist())}
        rows = torch.tensor([order[tuple(c)] for c in coords.tolist()], device=device)
        out_f = out.F[rows]
        out_f.backward(grad_out.to(device))
        results[device] = (out_f.detach().cpu(), f.grad.detach().cpu(), layer.kernel.grad.detach().cpu().clone())
    (o_c, gi_c, gk_c), (o_g, gi_g, gk_g) = results["cpu"], results["cuda"]
    return {"output": rel_error(o_g, o_c), "input_grad": rel_error(gi_g, gi_c), "kernel_grad": rel_error(gk_g, gk_c)}


def _build_record_summary() -> str:
    import importlib.metadata
    import json

    text = importlib.metadata.distribution("MinkowskiEngine").read_text("rsna_build.json")
    if text is None:
        return "none (not built by installers/build_minkowski.py: provenance unknown)"
    record = json.loads(text)
    source = record.get("source", {})
    return f"{source.get('kind')} {source.get('id')} fixes={record.get('fixes')} torch={record.get('torch')}"


def run_checks(expect_cuda: bool, version: str | None, require_gpu: bool = True) -> list[tuple[bool, str]]:
    """(ok, line) per check. Without a visible GPU (a docker build) the GPU comparison fails only when
    `require_gpu`; otherwise it is reported as skipped, to be run later with --verify-only on a GPU machine."""
    results: list[tuple[bool, str]] = []

    def check(name, fn):
        try:
            ok, detail = fn()
        except Exception as exc:  # a check that crashes is a failed check, reported with its cause
            ok, detail = False, f"{type(exc).__name__}: {exc}"
        results.append((ok, f"{name}: {detail}"))
        return ok

    import warnings

    warnings.filterwarnings("ignore", message=".*CPU_ONLY.*")
    if not check("import", lambda: (True, __import__("MinkowskiEngine").__file__)):
        return results
    import MinkowskiEngine as ME
    import torch

    check("version", lambda: (version is None or ME.__version__ == version, f"{ME.__version__} (want {version})"))
    check(
        "cuda support",
        lambda: (
            bool(ME.is_cuda_available()) == expect_cuda,
            f"is_cuda_available()={ME.is_cuda_available()} (want {expect_cuda})",
        ),
    )
    check("torch", lambda: (True, f"{torch.__version__} cuda={torch.version.cuda}"))
    check("build record", lambda: (True, _build_record_summary()))
    check(
        "cpu conv k3 s1 == brute force",
        lambda: ((err := conv_brute_force_error()) < 1e-12, f"relative error {err:.2e}"),
    )
    if expect_cuda:

        def gpu():
            if not torch.cuda.is_available():
                if require_gpu:
                    return False, "no visible GPU to compare on (torch.cuda.is_available() is False)"
                return (
                    True,
                    "SKIPPED: no visible GPU; run `installers/build_minkowski.py --verify-only` on a GPU machine",
                )
            errs = gpu_vs_cpu_errors()
            return max(errs.values()) < GPU_RTOL, ", ".join(f"{k} {v:.1e}" for k, v in errs.items())

        check(f"gpu fwd/bwd == cpu (rtol {GPU_RTOL})", gpu)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--expect-cuda", action="store_true", help="require CUDA support and compare GPU to CPU")
    parser.add_argument("--version", default=None, help="the MinkowskiEngine version that must be installed")
    parser.add_argument(
        "--no-gpu-ok", action="store_true", help="with --expect-cuda and no visible GPU: skip the GPU comparison"
    )
    args = parser.parse_args(argv)
    results = run_checks(args.expect_cuda, args.version, require_gpu=not args.no_gpu_ok)
    for ok, line in results:
        print(("ok   " if ok else "FAIL ") + line, flush=True)
    return 0 if results and all(ok for ok, _ in results) else 1


if __name__ == "__main__":
    sys.exit(main())
