"""Subprocess worker: does MinkowskiEngine import, and does a tiny sparse convolution give the right numbers?

Run as a script by facts.py (never imported): a MinkowskiEngine compiled against another torch can fail to
import, segfault or hang. Each step prints its own `RSNA_PROBE ` JSON line as soon as it finishes, so a crash in
a later step (say on the GPU) keeps the earlier results (say the CPU one).
"""

import json
import sys

PREFIX = "RSNA_PROBE "

# Points of one 3D batch item (plus one in a second item); with every kernel weight 1 and every input feature 1,
# a stride-1 kernel-3 convolution gives each point the number of points in its 3x3x3 neighbourhood (itself included).
POINTS = [(0, 0, 0, 0), (0, 0, 0, 1), (0, 1, 1, 1), (0, 3, 3, 3), (1, 0, 0, 0), (1, 1, 0, 0)]


def emit(payload: dict) -> None:
    print(PREFIX + json.dumps(payload), flush=True)


def expected_counts() -> dict:
    def near(a, b):
        return a[0] == b[0] and all(abs(p - q) <= 1 for p, q in zip(a[1:], b[1:], strict=True))

    return {p: float(sum(near(p, q) for q in POINTS)) for p in POINTS}


def sparse_conv_check(torch, ME, device: str) -> None:
    """Forward and backward of a k3 sparse convolution on `device`; raises when the numbers are wrong."""
    coords = torch.tensor(POINTS, dtype=torch.int32)
    feats = torch.ones(len(POINTS), 1, device=device, requires_grad=True)
    x = ME.SparseTensor(feats, coordinates=coords, device=device)
    conv = ME.MinkowskiConvolution(1, 1, kernel_size=3, stride=1, dimension=3).to(device)
    with torch.no_grad():
        conv.kernel.fill_(1.0)
    y = conv(x)
    got = {
        tuple(int(v) for v in c): float(f)
        for c, f in zip(y.C.cpu().tolist(), y.F.detach().cpu()[:, 0].tolist(), strict=True)
    }
    want = expected_counts()
    if got != want:
        raise AssertionError(f"wrong convolution result: got {got}, expected {want}")
    y.F.sum().backward()
    # Neighbourhoods are symmetric, so d(sum)/d(input) equals the forward counts.
    grads = feats.grad.detach().cpu()[:, 0].tolist()
    if grads != [want[p] for p in POINTS]:
        raise AssertionError(f"wrong input gradient: got {grads}")


def step(name: str, fn) -> bool:
    try:
        fn()
    except Exception as exc:
        emit({"step": name, "ok": False, "error": f"{type(exc).__name__}: {exc}"[:500]})
        return False
    emit({"step": name, "ok": True})
    return True


def main() -> None:
    try:
        import torch
    except Exception as exc:
        emit({"step": "import", "ok": False, "error": f"import torch failed: {type(exc).__name__}: {exc}"})
        return
    try:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # ME warns about a CPU-only build on import; we report that ourselves
            import MinkowskiEngine as ME
    except Exception as exc:
        emit({"step": "import", "ok": False, "error": f"{type(exc).__name__}: {exc}"[:500]})
        return
    me_cuda = bool(ME.is_cuda_available())
    emit({"step": "import", "ok": True, "version": getattr(ME, "__version__", None), "cuda": me_cuda})
    step("cpu", lambda: sparse_conv_check(torch, ME, "cpu"))
    if me_cuda and torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            step(f"cuda:{index}", lambda d=f"cuda:{index}": sparse_conv_check(torch, ME, d))
    emit({"step": "done", "ok": True})


if __name__ == "__main__":
    main()
    sys.exit(0)
