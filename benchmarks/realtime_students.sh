#!/usr/bin/env bash
# The real-time students against the CIRKD students on this CPU: random weights (speed does not depend on them),
# ONNX Runtime FP32 at one size, every file timed side by side in interleaved rounds, ratios to DeepLabV3-R18.
#   bash benchmarks/realtime_students.sh                    512x1024, 1 thread, 6 rounds
#   SIZE=1024x2048 THREADS=2 ROUNDS=3 bash benchmarks/realtime_students.sh
# Files and results in OUT (runs/realtime_students); finished exports are reused.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python}"
OUT="${OUT:-runs/realtime_students}"
SIZE="${SIZE:-512x1024}"
THREADS="${THREADS:-1}"
ROUNDS="${ROUNDS:-6}"
RUNS="${RUNS:-2}"
STUDENTS="${STUDENTS:-deeplabv3_r18 deeplabv3_mbv2 bisenetv2 stdc1 stdc2 pidnet_s pidnet_m ddrnet_23_slim ddrnet_23}"
h=${SIZE%x*}; w=${SIZE#*x}; d="$OUT/$SIZE"
files=()
for s in $STUDENTS; do
  [ -f "$d/$s.pth" ] || "$PYTHON" benchmarks/gpu_check_student.py "$s" "$d/$s.pth" "$h" "$w"
  [ -f "$d/$s.onnx" ] || "$PYTHON" export/to_onnx.py "$d/$s.pth" --exporter torchscript --verify-count 1
  files+=("$d/$s.onnx")
done
OMP_NUM_THREADS=$THREADS "$PYTHON" infer/benchmark.py "${files[@]}" --size "$SIZE" --threads "$THREADS" \
  --runs "$RUNS" --warmup 1 --rounds "$ROUNDS" --compare-to "$d/deeplabv3_r18.onnx" --in-process --no-progress \
  --out "$OUT/${SIZE}_${THREADS}t"
