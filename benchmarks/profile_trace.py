"""What benchmarks/profile_step.py reads from a step: torch.profiler traces, and where the host would wait.

`profile_steps` runs a step function N times under torch.profiler and reads the exported Chrome trace (the format
kineto writes in every torch from 2.4 on):
- GPU busy: the union of the intervals of all CUDA kernels (streams may overlap) over the wall time of those N
  steps, measured around them with the device synchronised at both ends;
- kernels per step, the top kernels by GPU time, and the host's time in kernel launches;
- host synchronisations per step: cudaStreamSynchronize, cudaDeviceSynchronize and cudaEventSynchronize calls, the
  synchronous cudaMemcpy (any direction: it returns when the copy is done) and the asynchronous copies to the
  host (the host reads what it copied, so it waits for them); all of them drain the GPU's queue;
- on the CPU (no CUDA activity) the GPU fields are None and the host's leaf operators are counted instead.

`sync_prone_ops` counts, in one step, the operators that synchronise the host on CUDA (nonzero, item/float/bool,
boolean indexing, unique, tensors made from Python data, copies between host and device), with the innermost
source line outside torch that called each: on any device, so a CPU run shows which of them are our own code's.
On CUDA, `torch_syncs` also counts what torch's sync debug mode reports (MinkowskiEngine's own synchronisations
happen in its C++ code and show only in the profiler's count).
"""

from __future__ import annotations

import collections
import json
import os
import tempfile
import time
import traceback
import warnings
from pathlib import Path

import torch

SYNC_CALLS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize")
LAUNCH_CALLS = ("cudaLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernel", "cuLaunchKernelEx")
TOP_KERNELS = 12
REPO = Path(__file__).resolve().parents[1]


def _base_name(name: str) -> str:
    """cudaStreamSynchronize_v3020 / cudaMemcpyAsync_ptsz -> the API's name."""
    for suffix in ("_v", "_ptsz", "_ptds"):
        if suffix in name:
            name = name[: name.index(suffix)]
    return name


def union_us(intervals: list[tuple[float, float]]) -> float:
    """Total length covered by (start, end) intervals."""
    total, end = 0.0, None
    for start, stop in sorted(intervals):
        if end is None or start > end:
            total += stop - start
            end = stop
        elif stop > end:
            total += stop - end
            end = stop
    return total


def leaf_ops(events: list[dict]) -> list[dict]:
    """CPU operators that contain no other operator on their thread (the ones that do the work)."""
    by_thread = collections.defaultdict(list)
    for e in events:
        by_thread[e.get("tid")].append(e)
    leaves = []
    for ops in by_thread.values():
        ops.sort(key=lambda e: (e["ts"], -e.get("dur", 0)))
        stack: list[list] = []  # [event, has_child]
        for e in ops:
            while stack and stack[-1][0]["ts"] + stack[-1][0].get("dur", 0) <= e["ts"]:
                done = stack.pop()
                if not done[1]:
                    leaves.append(done[0])
            if stack:
                stack[-1][1] = True
            stack.append([e, False])
        leaves += [entry[0] for entry in stack if not entry[1]]
    return leaves


def trace_stats(trace: dict, steps: int, wall_s: float, gpu: bool) -> dict:
    """Per-step figures from a Chrome trace of `steps` steps that took `wall_s` seconds."""
    events = [e for e in trace.get("traceEvents", []) if e.get("ph") == "X" and "dur" in e]
    by_cat = collections.defaultdict(list)
    for e in events:
        by_cat[str(e.get("cat", "")).lower()].append(e)
    host_ops = leaf_ops(by_cat["cpu_op"])
    stats: dict = {"host_ops_per_step": len(host_ops) / steps, "profiled_wall_ms_per_step": 1000 * wall_s / steps}
    if not gpu:
        totals = collections.Counter()
        for e in host_ops:
            totals[e["name"]] += e["dur"]
        stats["top_host_ops"] = [
            {"name": name, "ms_per_step": us / 1000 / steps} for name, us in totals.most_common(TOP_KERNELS)
        ]
        stats.update(gpu_busy_pct=None, kernels_per_step=None, host_syncs_per_step=None, top_kernels=None)
        return stats
    kernels = by_cat["kernel"]
    busy = union_us([(e["ts"], e["ts"] + e["dur"]) for e in kernels])
    copies = {e.get("args", {}).get("correlation"): e["name"] for e in by_cat["gpu_memcpy"]}
    syncs = collections.Counter()
    launch_us = 0.0
    for e in by_cat["cuda_runtime"] + by_cat["cuda_driver"]:
        name = _base_name(e["name"])
        if name in SYNC_CALLS or name == "cudaMemcpy":
            syncs[name] += 1
        elif name.startswith("cudaMemcpy") and "DtoH" in copies.get(e.get("args", {}).get("correlation"), ""):
            syncs[f"{name} (to host)"] += 1
        if name in LAUNCH_CALLS:
            launch_us += e["dur"]
    per_kernel = collections.defaultdict(lambda: [0.0, 0])
    for e in kernels:
        entry = per_kernel[e["name"]]
        entry[0] += e["dur"]
        entry[1] += 1
    kernel_us = sum(v[0] for v in per_kernel.values()) or 1.0
    top = sorted(per_kernel.items(), key=lambda kv: -kv[1][0])[:TOP_KERNELS]
    stats.update(
        gpu_busy_pct=100 * busy / (1e6 * wall_s),
        gpu_busy_ms_per_step=busy / 1000 / steps,
        kernels_per_step=len(kernels) / steps,
        memcpy_per_step=len(by_cat["gpu_memcpy"]) / steps,
        host_syncs_per_step=sum(syncs.values()) / steps,
        host_syncs_by_call={k: v / steps for k, v in sorted(syncs.items())},
        launch_pct_of_wall=100 * launch_us / (1e6 * wall_s),
        top_kernels=[
            {
                "name": name[:160],
                "ms_per_step": us / 1000 / steps,
                "calls_per_step": n / steps,
                "pct": 100 * us / kernel_us,
            }
            for name, (us, n) in top
        ],
    )
    return stats


def profile_steps(step, device: torch.device, steps: int) -> dict:
    """Run `step()` `steps` times under torch.profiler; the trace's per-step figures (trace_stats)."""
    from torch.profiler import ProfilerActivity, profile

    gpu = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if gpu else [])
    if gpu:
        torch.cuda.synchronize(device)
    with profile(activities=activities) as prof:
        start = time.perf_counter()
        for _ in range(steps):
            step()
        if gpu:
            torch.cuda.synchronize(device)
        wall = time.perf_counter() - start
    with tempfile.TemporaryDirectory(prefix="rsna_phase0_profile_") as tmp:
        path = os.path.join(tmp, "trace.json")
        prof.export_chrome_trace(path)
        with open(path) as f:
            trace = json.load(f)
    return trace_stats(trace, steps, wall, gpu)


MODEL_CODE = ("rsna_phase0/", "ptwt/", "MinkowskiEngine/")  # callers that are the model (not the loop)


def _short(path: str) -> str:
    path = path.replace(os.sep, "/")
    if "site-packages/" in path:
        return path.split("site-packages/", 1)[1]
    return path[len(str(REPO)) + 1 :] if path.startswith(str(REPO)) else path


DISPATCH_MACHINERY = (
    "torch/utils/_python_dispatch",
    "torch/_dynamo/",
    "torch/_compile.py",
    "torch/_ops.py",
    "torch/overrides.py",
)


def _caller() -> str:
    """The innermost source line outside torch that led here, as path:line (function), with the torch module it
    called into (e.g. torch/optim/optimizer.py) when that was Python."""
    through = None
    for frame in reversed(traceback.extract_stack()[:-2]):
        path = _short(frame.filename)
        if path.startswith("torch/"):
            through = path if not path.startswith(DISPATCH_MACHINERY) else through
            continue
        if frame.filename == __file__:
            continue
        return f"{path}:{frame.lineno} ({frame.name})" + (f" via {through}" if through else "")
    return "torch"


def _sync_kind(func, args, kwargs, device_type: str) -> str | None:
    """Why this operator makes the host wait on CUDA, or None."""
    name = func.__name__ if hasattr(func, "__name__") else str(func)
    base = name.split(".")[0]
    if base in ("nonzero", "masked_select", "_unique2", "unique_dim", "unique_consecutive", "_unique"):
        return base
    if base in ("_local_scalar_dense", "item"):
        return "item (a scalar to the host)"
    if base == "repeat_interleave" and name.endswith("Tensor") and kwargs.get("output_size") is None:
        return "repeat_interleave without output_size"
    if base in ("index", "index_put", "index_put_"):
        indices = args[1] if len(args) > 1 else kwargs.get("indices", ())
        if any(isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in indices or ()):
            return "boolean indexing"
    if base == "lift_fresh" and device_type == "cpu":
        return "tensor from Python data (a blocking copy to a CUDA device)"
    if base in ("_to_copy", "copy_") and args and isinstance(args[0], torch.Tensor):
        if base == "_to_copy":
            source, target = args[0].device.type, torch.device(kwargs.get("device") or args[0].device).type
        else:
            source, target = args[1].device.type, args[0].device.type
        if source != target:
            return f"copy {source} -> {target}"
    return None


def sync_prone_ops(step, device: torch.device) -> dict:
    """One `step()` with every operator that synchronises the host on CUDA counted by kind and by caller."""
    from torch.utils._python_dispatch import TorchDispatchMode

    kinds, callers = collections.Counter(), collections.Counter()

    class Counter(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            kind = _sync_kind(func, args, kwargs, device.type)
            if kind is not None:
                kinds[kind] += 1
                callers[f"{_caller()}: {kind}"] += 1
            return func(*args, **kwargs)

    with Counter():
        step()
    in_model = sum(n for where, n in callers.items() if where.startswith(MODEL_CODE))
    return {
        "total": sum(kinds.values()),
        "in_model": in_model,  # the rest is the training loop's (loss read, optimizer, GradScaler)
        "by_kind": dict(kinds.most_common()),
        "by_caller": dict(callers.most_common()),
    }


def torch_syncs(step, device: torch.device) -> dict | None:
    """On CUDA: one `step()` under torch's sync debug mode; the synchronisations torch reports, by caller."""
    if device.type != "cuda":
        return None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
        torch.cuda.synchronize(device)
    return sync_warnings(caught)


def sync_warnings(caught) -> dict:
    """The synchronisation warnings among `caught` (warnings.WarningMessage), counted by where they were raised."""
    callers = collections.Counter()
    for w in caught:
        if "synchroniz" in str(w.message).lower():
            callers[f"{_short(w.filename)}:{w.lineno}"] += 1
    in_model = sum(n for where, n in callers.items() if where.startswith(MODEL_CODE))
    return {"total": sum(callers.values()), "in_model": in_model, "by_caller": dict(callers.most_common())}
