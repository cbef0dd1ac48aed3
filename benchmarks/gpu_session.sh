#!/bin/bash
# One device session (≈ 8 min on one GPU): leave-one-section-out of HGGEP and TCGN at the paper's settings in bf16
# (per-fold gene panels, no pretrained weights), all ten (model, fold) runs side by side on the one GPU, each
# stopped after $LIMIT s of training (the best epoch so far is scored, "time_limited" in its JSON); then a short
# throughput run. Needs the patch cache (`python benchmarks/gpu_expression.py export` here, then carry
# benchmarks/_out/gpu_cache). Run from the repository root on the device machine:
#   TAR=$OUT/gpu_session.tgz OUT=/tmp/gpu_session bash benchmarks/gpu_session.sh   (TAR first: the device's $OUT)
# Results: $OUT/loso/*.json (report: python benchmarks/gpu_expression.py report), $OUT/speed/*.json; with TAR, all of
# $OUT packed into that one file (the device tool brings back only a few files per call).
set -u
OUT=${OUT:-benchmarks/_out/gpu_session}
LIMIT=${LIMIT:-300}
mkdir -p "$OUT/loso" "$OUT/speed"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.csv" 2>&1
python -c "import sys, torch, torchvision; print(sys.version.split()[0], torch.__version__, torchvision.__version__)" \
    > "$OUT/versions.txt" 2>&1
for m in hggep tcgn; do
    for t in C2 C3 C4 C5 C6; do
        OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/gpu_expression.py run --model $m --precision bf16 \
            --folds $t --time-limit "$LIMIT" --results "$OUT/loso" > "$OUT/loso/${m}_$t.log" 2>&1 &
    done
done
wait
PYTHONPATH=src python benchmarks/gpu_expression.py speed --models hggep,tcgn --modes reference,fp32,bf16 \
    --budget "${SPEED_BUDGET:-90}" --results "$OUT/speed" > "$OUT/speed.log" 2>&1
if [ -n "${TAR:-}" ]; then tar czf "$TAR" --exclude="./$(basename "$TAR")" -C "$OUT" .; fi
echo done
