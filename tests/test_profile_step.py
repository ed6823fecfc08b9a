"""benchmarks/profile_step.py and its parts: the trace reader (on a CUDA-shaped trace), the targets' arithmetic,
the MAE peer, a CPU run of the script, and gpu_issue18.sh refusing a machine without a GPU."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from mae_peer import MAE3D, parameter_count
from profile_step import Row, parse_variant, preset_of
from profile_summary import target_lines
from profile_trace import REPO, leaf_ops, sync_warnings, trace_stats, union_us

ROOT = Path(__file__).resolve().parents[1]


def _event(cat, name, ts, dur, tid=1, **args):
    return {"ph": "X", "cat": cat, "name": name, "ts": ts, "dur": dur, "tid": tid, "args": args}


def test_trace_stats_reads_kernels_syncs_and_copies_of_a_cuda_trace():
    """Two steps in 1 ms of wall time; kernels overlap on two streams; one D2H copy read back, one H2D copy."""
    events = [
        _event("kernel", "gemm", 0, 100, tid=7),
        _event("kernel", "gemm", 50, 100, tid=8),  # overlaps: the union is 150 us, not 200
        _event("kernel", "layer_norm", 400, 50, tid=7),
        _event("kernel", "gemm", 600, 100, tid=7),
        _event("gpu_memcpy", "Memcpy DtoH (Device -> Pageable)", 720, 5, correlation=11),
        _event("gpu_memcpy", "Memcpy HtoD (Pinned -> Device)", 730, 5, correlation=12),
        _event("cuda_runtime", "cudaLaunchKernel", 0, 10),
        _event("cuda_runtime", "cudaLaunchKernelExC_v11060", 20, 10),
        _event("cuda_runtime", "cudaStreamSynchronize", 200, 100),
        _event("cuda_runtime", "cudaMemcpyAsync", 710, 20, correlation=11),
        _event("cuda_runtime", "cudaMemcpyAsync", 730, 2, correlation=12),  # to the device: no wait
        _event("cuda_runtime", "cudaMemcpy", 800, 5),  # synchronous, whatever the direction
        _event("cuda_driver", "cuLaunchKernel", 40, 10),
        _event("cpu_op", "aten::linear", 0, 30),
        _event("cpu_op", "aten::addmm", 5, 20),  # inside linear: the leaf
        _event("cpu_op", "aten::add", 40, 5),
    ]
    stats = trace_stats({"traceEvents": events}, steps=2, wall_s=1e-3, gpu=True)
    assert stats["gpu_busy_pct"] == pytest.approx(100 * 300 / 1000)
    assert stats["kernels_per_step"] == 2.0
    assert stats["host_syncs_by_call"] == {
        "cudaMemcpy": 0.5,
        "cudaMemcpyAsync (to host)": 0.5,
        "cudaStreamSynchronize": 0.5,
    }
    assert stats["host_syncs_per_step"] == 1.5
    assert stats["launch_pct_of_wall"] == pytest.approx(100 * 30 / 1000)
    assert stats["host_ops_per_step"] == 1.0  # addmm and add
    assert stats["top_kernels"][0]["name"] == "gemm" and stats["top_kernels"][0]["calls_per_step"] == 1.5


def test_trace_stats_on_the_cpu_leaves_gpu_fields_empty():
    events = [_event("cpu_op", "aten::mul", 0, 10), _event("cpu_op", "aten::mul", 20, 10)]
    stats = trace_stats({"traceEvents": events}, steps=1, wall_s=1e-3, gpu=False)
    assert stats["gpu_busy_pct"] is None and stats["kernels_per_step"] is None and stats["host_syncs_per_step"] is None
    assert stats["host_ops_per_step"] == 2 and stats["top_host_ops"][0]["name"] == "aten::mul"


def test_interval_union_and_leaf_operators():
    assert union_us([(0, 10), (5, 15), (20, 30), (21, 22)]) == 25
    nested = [_event("cpu_op", "outer", 0, 100), _event("cpu_op", "inner", 10, 10), _event("cpu_op", "other", 200, 5)]
    assert sorted(e["name"] for e in leaf_ops(nested)) == ["inner", "other"]


def test_sync_warnings_are_counted_by_where_they_came_from():
    import warnings

    def caught(message, path, line):
        return warnings.WarningMessage(message, UserWarning, path, line)

    model_file = str(REPO / "rsna_phase0" / "models" / "sparse_stages.py")
    found = sync_warnings(
        [
            caught("called a synchronizing CUDA operation", model_file, 143),
            caught("called a synchronizing CUDA operation", model_file, 143),
            caught("called a synchronizing CUDA operation", "/x/site-packages/ptwt/conv_transform.py", 33),
            caught("called a synchronizing CUDA operation", str(REPO / "benchmarks" / "profile_step.py"), 200),
            caught("something else", model_file, 1),
        ]
    )
    assert found["total"] == 4 and found["in_model"] == 3
    assert found["by_caller"] == {
        "rsna_phase0/models/sparse_stages.py:143": 2,
        "ptwt/conv_transform.py:33": 1,
        "benchmarks/profile_step.py:200": 1,
    }


def _row(**kw):
    base = {"model": "ours", "preset": "kaggle", "batch": 4, "amp": "bf16", "encoder": "sparse", "mask": None}
    return {**base, "background": "preset", **kw}


def test_targets_read_the_matching_rows():
    rows = [
        _row(variant="main", samples_per_s=100.0, views_per_s=500.0, gpu_busy_pct=47.0, step_ms=40.0),
        _row(variant="opt", samples_per_s=230.0, views_per_s=1150.0, gpu_busy_pct=85.0, step_ms=17.4),
        _row(model="mae_peer", variant="opt", views=20, views_per_s=1000.0),
        _row(variant="opt", mask=0.6, background="inactive", step_ms=20.0),
        _row(variant="opt", mask=0.6, background="inactive", encoder="masked_dense", step_ms=25.0),
        _row(variant="opt", mask=0.6, background="computed", step_ms=30.0),
        _row(variant="opt", mask=0.6, background="computed", encoder="masked_dense", error="CUDA out of memory"),
    ]
    text = "\n".join(target_lines(rows))
    assert "kaggle B4 bf16 main: 47%  NOT met" in text
    assert "kaggle B4 bf16 opt: 85%  met" in text
    assert "kaggle B4 bf16 opt / main: 2.30x  met" in text
    assert "ours / peer (1000 views/s): 1.15x  met" in text
    assert "background inactive: 0.80x  met" in text
    assert "background computed: missing" in text  # its oracle row failed


def test_variants_add_and_take_out_speedups_and_the_peer_ignores_them():
    """`-graph-decgraph-fused` takes the CUDA graphs and the fused kernels out of the defaults, so
    `opt-graph-decgraph-fused+compile` is a valid preset; the peer's compiled row once failed because its preset had
    been given ours' speed-ups (compile_dense with the graphs)."""
    from rsna_phase0.presets import STEP_SPEEDUPS

    assert parse_variant("opt-graph+onepass") == ("opt", {"onepass"}, {"graph"})
    assert preset_of(Row("ours", "smoke", 1, "none", "opt")).speedups == STEP_SPEEDUPS
    compiled = preset_of(Row("ours", "smoke", 1, "none", "opt-graph-decgraph-fused+compile")).speedups
    assert "compile_dense" in compiled
    assert not {"graph_wave_stages", "graph_decoder_loss", "fused_norm_gelu"} & set(compiled)
    assert preset_of(Row("ours", "smoke", 1, "none", "main+graph")).speedups == ("graph_wave_stages",)
    per_level = preset_of(Row("ours", "smoke", 1, "none", "opt-onepass")).speedups
    assert per_level == tuple(s for s in STEP_SPEEDUPS if s != "one_sparse_pass")
    assert preset_of(Row("mae_peer", "smoke", 1, "none", "opt+compile")).speedups == ()
    with pytest.raises(ValueError, match="compile_dense and graph_wave_stages and graph_decoder_loss"):
        preset_of(Row("ours", "smoke", 1, "none", "opt+compile"))
    with pytest.raises(ValueError, match="compile_dense and graph_decoder_loss and fused_norm_gelu claim"):
        preset_of(Row("ours", "smoke", 1, "none", "opt-graph+compile"))
    for bad in ("fast", "opt+warp", "opt+graph-graph"):
        with pytest.raises(ValueError, match="write main or opt"):
            parse_variant(bad)


def test_mae_peer_has_the_users_size_and_trains_every_parameter():
    assert 26e6 < parameter_count(MAE3D()) < 29e6  # 64^3, patch 8, embed 512, depth 8, 2-block decoder
    torch.manual_seed(0)
    small = MAE3D(size=16, patch=4, dim=48, depth=2, heads=2, decoder_dim=32)
    loss = small(torch.rand(3, 1, 16, 16, 16))
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in small.parameters())


def _run(command: list[str], timeout: float, env=None) -> subprocess.CompletedProcess:
    """Run in its own process group; on timeout the whole group is killed."""
    proc = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    return subprocess.CompletedProcess(command, proc.returncode, out, None)


@pytest.mark.slow
def test_profile_step_runs_on_the_cpu_and_writes_every_field(tmp_path):
    out = tmp_path / "profile.json"
    summary = tmp_path / "summary.txt"
    command = [sys.executable, "benchmarks/profile_step.py", "--device", "cpu", "--preset", "smoke"]
    command += ["--batch-sizes", "1", "--quick", "--variants", "main", "opt", "--peer"]
    command += ["--json", str(out), "--summary", str(summary)]
    result = _run(command, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:]
    rows = {r["label"]: r for r in json.loads(out.read_text())["rows"]}
    assert set(rows) == {
        "ours smoke B1 none main sparse",
        "ours smoke B1 none opt sparse",
        "mae_peer smoke B1 none opt",
    }
    for row in rows.values():
        assert "error" not in row, row
        assert row["step_ms"] > 0 and row["views"] == 3 and row["host_ops_per_step"] > 0
        assert row["gpu_busy_pct"] is None and row["kernels_per_step"] is None and row["torch_syncs"] is None
    main, opt = rows["ours smoke B1 none main sparse"], rows["ours smoke B1 none opt sparse"]
    # the step as it was: ptwt's 8 filter tensors per Haar block + a nonzero per sparse stage (2) and MiM level (2);
    # now the nonzero alone, once per sparse stage (one sparse pass over both levels)
    assert main["sync_prone_ops"]["in_model"] == 12 and opt["sync_prone_ops"]["in_model"] == 2
    assert opt["host_ops_per_step"] < main["host_ops_per_step"]
    assert "Targets (issue 18):" in summary.read_text()


def test_gpu_script_refuses_a_machine_without_cuda(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the script would run its full plan")
    env = {**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable}
    result = _run(["bash", "benchmarks/gpu_issue18.sh", "--quick"], timeout=120, env=env)
    assert result.returncode == 2, result.stdout
    assert "no CUDA GPU visible to torch" in result.stdout
    assert not (tmp_path / "profile.json").exists()


def test_mixed_modality_step_times_both_modalities_per_variant_on_the_cpu(tmp_path):
    """benchmarks/mixed_modality_step.py: MRI and CT batches in turn, a row per variant with each modality's step
    time (on a CPU no memory figures: they are CUDA's allocator's)."""
    from mixed_modality_step import main

    out = tmp_path / "mixed.json"
    argv = ["--device", "cpu", "--preset", "smoke", "--batch-sizes", "1", "--amp", "none", "--steps", "1"]
    assert main([*argv, "--variants", "opt", "opt-decgraph", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["variant"] for r in rows] == ["opt", "opt-decgraph"]
    for row in rows:
        assert row["mri_ms"] > 0 and row["ct_ms"] > 0, row
        assert row["peak_gib"] is None and row["peak_reserved_gib"] is None
