#!/bin/bash
# One device session (≈ 6 min on one GPU): BYOL pretraining cost and the five per-fold encoders, trained ~17 × longer
# than the CPU run of docs/benchmarks/pretrain.md (at most 100 epochs against 6; same settings otherwise). Needs
# `python benchmarks/gpu_pretrain.py export` here and lightly's source in benchmarks/_out/pylib (lightly is pure
# Python; the GPU image may lack it); carry benchmarks/_out/gpu_cache/ssl and benchmarks/_out/pylib. Run from the
# repository root on the device machine:
#   TAR=$OUT/gpu_pretrain.tgz OUT=/tmp/gpu_pretrain bash benchmarks/gpu_pretrain.sh   (TAR first: the device's $OUT)
# One tarball comes back: the device returns a limited number of files per command (a 2026-12-04 run that wrote its
# trunks straight into $OUT got only the JSONs back). Then here: tar xzf it into benchmarks/_out/gpu_pretrain, and
#   python benchmarks/gpu_pretrain.py record --device-out benchmarks/_out/gpu_pretrain --tag gpu --command '<the line>'
#   python benchmarks/gpu_pretrain.py convert --results benchmarks/_out/gpu_pretrain/loso --out benchmarks/_out/ssl_gpu
set -u
OUT=${OUT:-benchmarks/_out/gpu_pretrain}
BUDGET=${BUDGET:-300}
export PYTHONPATH=benchmarks/_out/pylib:src PYTHONUNBUFFERED=1
mkdir -p "$OUT/loso"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.csv" 2>&1
python -c "import sys, torch, torchvision, lightly; print(sys.version.split()[0], torch.__version__, \
torchvision.__version__, 'lightly', lightly.__version__, lightly.__file__)" > "$OUT/versions.txt" 2>&1
python benchmarks/gpu_pretrain.py tiles --out /tmp/ssl_tiles.npz --record "$OUT/tiles.json" > "$OUT/tiles.log" 2>&1
python benchmarks/gpu_pretrain.py speed --tiles /tmp/ssl_tiles.npz --out "$OUT/speed.json" > "$OUT/speed.log" 2>&1
for t in C2 C3 C4 C5 C6; do
    OMP_NUM_THREADS=2 python benchmarks/gpu_pretrain.py run --tiles /tmp/ssl_tiles.npz --heldout $t --epochs 100 \
        --budget "$BUDGET" --results "$OUT/loso" > "$OUT/loso/run_$t.log" 2>&1 &
done
wait
if [ -n "${TAR:-}" ]; then tar czf "$TAR" --exclude="./$(basename "$TAR")" -C "$OUT" .; fi
tail -n 3 "$OUT"/tiles.log "$OUT"/speed.log "$OUT"/loso/run_*.log
echo done
