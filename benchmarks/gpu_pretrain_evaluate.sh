#!/usr/bin/env bash
# Issue 12's acceptance run in one GPU call (about 9 minutes on an H200, 3.5 of them the MinkowskiEngine build):
# build MinkowskiEngine with CUDA, pre-train kaggle on synthetic heads (the GPU tests alongside), export, evaluate
# pretrained against random init on 20 + 20 labelled heads, then issue 18's quick profile. Results under $OUT.
#   OUT=DIR PRETRAIN_S=160 EPOCHS=25 EVAL_STEPS=150 bash benchmarks/gpu_pretrain_evaluate.sh
# Env: OUT, PRETRAIN_S (150), EVAL_STEPS (120), ME_SOURCE (auto, or the sdist path), WHEELS, JOBS (16),
#      ARCHS (9.0), DEVICE (cuda; cpu = a dry run: PRESET=smoke PRETRAIN_S=40 EVAL_STEPS=3 PRE_HEADS=2 ...)
set -u
export PYTHONUNBUFFERED=1
T0=$(date +%s)
el() { echo "[$(( $(date +%s) - T0 ))s] $*"; }
DEVICE="${DEVICE:-cuda}"
PRESET="${PRESET:-kaggle}"
W=/tmp/gpuwork; rm -rf "$W"; mkdir -p "$W" "$OUT"
if [[ "$DEVICE" == "cuda" ]]; then
    # WHEELS: a folder of the pinned pure-Python/CPU wheels for a machine without internet (optional)
    if [[ -n "${WHEELS:-}" ]]; then
        python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$WHEELS"/*.whl || exit 3
    fi
    export PYTHONPATH=/tmp/site:$PWD
    PY=python3
else
    export PYTHONPATH=$PWD; PY=${PY:-.venv/bin/python}
fi
rsna() { "$PY" -c 'import sys; from rsna_phase0.cli import main; sys.argv[0]="rsna-phase0"; main()' "$@"; }
el "start"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | tee "$OUT/gpu.txt"

# data on the CPU while MinkowskiEngine compiles
( for s in 1 2 3 4; do rsna data synth "$W/lab$s" --labels --n "${PRE_HEADS:-25}" --seed "10$s" >/dev/null & done; wait
  mkdir -p "$W/pre/MRA"; for s in 1 2 3 4; do for f in "$W/lab$s"/images/*.nii.gz; do mv "$f" "$W/pre/MRA/s${s}_$(basename "$f")"; done; done
  rsna data synth "$W/base" --mri "${PRE_MRI:-30}" --ct "${PRE_CT:-20}" --seed 7 >/dev/null
  rsna data synth "$W/eval" --labels --n 40 --seed 0 >/dev/null
  el "data ready: $(ls "$W/pre/MRA" | wc -l) MRA heads" ) > "$OUT/synth.log" 2>&1 &
SYNTH=$!

if [[ "$DEVICE" == "cuda" ]]; then
    el "MinkowskiEngine build"
    "$PY" installers/build_minkowski.py --source "${ME_SOURCE:-auto}" --archs "${ARCHS:-9.0}" \
        --jobs "${JOBS:-16}" --cache /tmp/mecache --log "$OUT/me_build.log" > "$OUT/me_build.txt" 2>&1
    rc=$?; tail -n 5 "$OUT/me_build.txt"; el "ME build rc=$rc"; [[ $rc == 0 ]] || exit 4
fi
wait $SYNTH; cat "$OUT/synth.log"

# GPU tests beside pre-training (pre-training is for quality here, not timing)
if [[ "$DEVICE" == "cuda" ]]; then
    ( timeout "${GPU_TESTS_S:-170}" "$PY" -m pytest -q -m gpu -p no:cacheprovider tests/ > "$OUT/gpu_tests.txt" 2>&1; echo "rc=$?" >> "$OUT/gpu_tests.txt" ) &
    TESTS=$!
fi
el "pre-train $PRESET for ${PRETRAIN_S:-150}s"
rsna train --preset "$PRESET" --mri-dir "$W/pre" --mri-dir "$W/base/OpenMind_processed" \
    --ct-dir "$W/base/NIH_deeplesion/CT" --out "$W/run" --epochs "${EPOCHS:-30}" --time-budget "${PRETRAIN_S:-150}s" \
    --allow-env-mismatch --device "$DEVICE" --num-workers "${WORKERS:-6}" --no-progress > "$OUT/train.log" 2>&1
el "train rc=$?"; tail -n 25 "$OUT/train.log"
cp "$W/run/metrics.jsonl" "$W/run"/*.png "$W/run/config.json" "$OUT/" 2>/dev/null
CKPT="$W/run/best_model.pt"; [[ -f "$CKPT" ]] || CKPT="$W/run/last.pt"
rsna export-encoder "$CKPT" "$W/encoder.pt" > "$OUT/export.txt" 2>&1; el "export rc=$? from $CKPT"
if [[ "$DEVICE" == "cuda" ]]; then wait $TESTS; tail -n 4 "$OUT/gpu_tests.txt"; el "gpu tests done"; fi

el "evaluate"
rsna evaluate "$W/encoder.pt" --data "$W/eval" --task segmentation --mri-sequence MRA --holdout 20 --seeds 3 \
    --label-fractions 1.0,0.25 --modes "${EVAL_MODES:-full}" --steps "${EVAL_STEPS:-120}" --device "$DEVICE" \
    --out "$OUT/eval" > "$OUT/eval.log" 2>&1
el "evaluate rc=$?"; tail -n 30 "$OUT/eval.log"

if [[ "$DEVICE" == "cuda" && "${PROFILE:-1}" == "1" ]]; then
    el "issue 18 profile (quick)"
    OUT="$OUT/profile" PYTHON="$PY" GPU_TESTS=0 BUDGET_S="${PROFILE_S:-70}" timeout 150 bash benchmarks/gpu_issue18.sh --quick > "$OUT/profile.txt" 2>&1
    el "profile rc=$?"; tail -n 40 "$OUT/profile.txt"
fi
el "end"
