#!/usr/bin/env bash
# Issue 18's figures in one GPU run, about 4.5 minutes on an H200: first the GPU tests of the speed-ups and of
# the model (tests/test_model_speedups.py, tests/test_cuda_graphs.py, tests/test_norm_gelu.py,
# tests/test_model_gpu.py, tests/test_model_leakage.py; a few minutes, cut at GPU_TESTS_TIMEOUT_S),
# then the issue18 plan of benchmarks/profile_step.py. Its rows, most important first (a budget cut drops the
# tail, never a finished row):
# kaggle before (`main`, the step as it was) and after (`opt`, the default speed-ups) at batch 4 and 8, bf16 and
# fp16 with GradScaler; the MAE peer on the same views; MinkowskiEngine against the masked-dense oracle at mask
# 0.6, background computed and inactive (both with eager WaveFormer stages); `opt` without each of its CUDA graphs
# (`opt-decgraph`: the decoder and loss eager, `opt-graph`: the WaveFormer stages eager); a sparse pass per MiM
# level (`opt-onepass`, the default before); torch.compile of the dense parts (ours in place of the graphs, and the
# peer's); batch 32 and the peer at 160 views.
#
#   OUT=DIR bash benchmarks/gpu_issue18.sh            # the full plan
#   OUT=DIR bash benchmarks/gpu_issue18.sh --quick    # about a minute: batch 4 only, no compile
#   BUDGET_S=210       seconds of rows before the rest is skipped (a compiled row of ours starts only with
#                      COMPILE_RESERVE_S=90 left, the peer's with 40% of that)
#   GPU_TESTS=0        skip the GPU tests; GPU_TEST_PATHS="tests/" runs every GPU test (raise GPU_TESTS_TIMEOUT_S,
#                      default 300 s, for these)
#   DATA_WAIT=1        also benchmarks/throughput.py's loader data wait for kaggle (about a minute more)
#   PYTHON=python      the interpreter with torch and MinkowskiEngine built with CUDA (installers/build_minkowski.py)
#   DEVICE=cpu         a check of this script itself on a CPU machine (smoke preset, the plan's batch-4 bf16 rows
#                      without autocast; minutes on 2 cores)
#
# Writes into $OUT: env.txt (versions), gpu_tests.txt, profile.json (every row: figures, top kernels, sync
# callers, errors), summary.txt (the table and each target of issue 18 with its figures; printed at the end),
# profile.log (progress), and with DATA_WAIT=1 throughput.json / throughput.txt.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${OUT:?set OUT to the folder for the results}"
PYTHON="${PYTHON:-python}"
mkdir -p "$OUT"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
cd "$ROOT"

ARGS=(--device cuda)
if [[ "${DEVICE:-cuda}" == "cpu" ]]; then
    ARGS=(--device cpu --preset smoke)
fi
if [[ "${1:-}" == "--quick" ]]; then
    ARGS+=(--quick)
fi

DEVICE="${DEVICE:-cuda}" "$PYTHON" - >"$OUT/env.txt" 2>&1 <<'EOF' || { cat "$OUT/env.txt"; exit 2; }
import os, sys, torch
print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda)
if os.environ["DEVICE"] == "cpu":
    sys.exit(0)
if not torch.cuda.is_available():
    sys.exit("no CUDA GPU visible to torch: this script measures a GPU")
print("gpu", torch.cuda.get_device_name(0), "capability", torch.cuda.get_device_capability(0))
import MinkowskiEngine as ME
if not ME.is_cuda_available():
    sys.exit("MinkowskiEngine was built without CUDA: build it with python installers/build_minkowski.py")
print("MinkowskiEngine", ME.__version__, "cuda", ME.cuda_version())
EOF
cat "$OUT/env.txt"

if [[ "${GPU_TESTS:-1}" == "1" && "${DEVICE:-cuda}" != "cpu" ]]; then
    # shellcheck disable=SC2086  (GPU_TEST_PATHS is a list of paths)
    if timeout "${GPU_TESTS_TIMEOUT_S:-300}" "$PYTHON" -m pytest -q -m gpu -p no:cacheprovider \
        ${GPU_TEST_PATHS:-tests/test_model_speedups.py tests/test_cuda_graphs.py tests/test_norm_gelu.py tests/test_model_gpu.py tests/test_model_leakage.py} \
        >"$OUT/gpu_tests.txt" 2>&1; then
        echo "GPU tests passed"
    else
        echo "GPU tests FAILED (or timed out): see gpu_tests.txt"
    fi
    tail -n 3 "$OUT/gpu_tests.txt" || true
fi

set +e
"$PYTHON" benchmarks/profile_step.py --plan issue18 "${ARGS[@]}" \
    --budget-s "${BUDGET_S:-210}" --compile-reserve-s "${COMPILE_RESERVE_S:-90}" \
    --json "$OUT/profile.json" --summary "$OUT/summary.txt" >"$OUT/profile.log" 2>&1
status=$?
set -e

if [[ "${DATA_WAIT:-0}" == "1" ]]; then
    timeout 150 "$PYTHON" benchmarks/throughput.py --device cuda --preset kaggle --no-oracle --no-variants \
        --json "$OUT/throughput.json" >"$OUT/throughput.txt" 2>&1 ||
        echo "throughput.py failed or ran out of time: see throughput.txt"
fi
if [[ -f "$OUT/summary.txt" ]]; then
    cat "$OUT/summary.txt"
else
    tail -n 40 "$OUT/profile.log"
fi
exit "$status"
