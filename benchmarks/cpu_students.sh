#!/usr/bin/env bash
# The CPU deployment table of docs/measurements.md: the four students (random weights: speed does not depend on
# them) in every CPU format, each student's rows timed side by side in interleaved rounds, ratios to its ONNX
# Runtime FP32 file.
#   bash benchmarks/cpu_students.sh                        512x1024, 1 and 2 threads, 8 rounds
#   SIZES="512x1024 1024x2048" THREADS="1 2" ROUNDS=3 bash benchmarks/cpu_students.sh
# Calibration: CALIB_COUNT generated street frames with the 19 Cityscapes classes (OUT/demo19, made on first use).
# Files and results in OUT (runs/cpu_students); finished exports are reused.
# The table again: python benchmarks/cpu_table.py OUT/*_*t
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python}"
OUT="${OUT:-runs/cpu_students}"
SIZES="${SIZES:-512x1024}"
THREADS="${THREADS:-1 2}"
ROUNDS="${ROUNDS:-8}"
RUNS="${RUNS:-2}"
CALIB_COUNT="${CALIB_COUNT:-8}"
STUDENTS="${STUDENTS:-deeplabv3_r18 pspnet_r18 deeplabv3_mbv2 pspnet_mbv2}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
calib_root="$OUT/demo19"
"$PYTHON" -m segkd.scenes --root "$calib_root" --train "$CALIB_COUNT" --val 1 --size 256x512 --classes cityscapes
calib=(--calib-dataset demo --calib-root "$calib_root" --calib-split train --calib-count "$CALIB_COUNT" --verify-count 1)
for size in $SIZES; do
  h=${size%x*}; w=${size#*x}; d="$OUT/$size"
  for s in $STUDENTS; do
    [ -f "$d/$s.pth" ] || "$PYTHON" benchmarks/gpu_check_student.py "$s" "$d/$s.pth" "$h" "$w"
    [ -f "$d/$s.int8-cpu.onnx" ] || "$PYTHON" export/to_onnx.py "$d/$s.pth" --precision fp32 int8 --target cpu "${calib[@]}"
    [ -f "$d/$s.int8.xml" ] || "$PYTHON" export/to_openvino.py "$d/$s.pth" --precision fp32 int8 "${calib[@]}"
  done
  for t in $THREADS; do
    for s in $STUDENTS; do
      OMP_NUM_THREADS=$t "$PYTHON" infer/benchmark.py "$d/$s".{pth,onnx,int8-cpu.onnx,xml,int8.xml} --size "$size" \
        --threads "$t" --runs "$RUNS" --warmup 1 --rounds "$ROUNDS" --compare-to "$d/$s.onnx" --in-process \
        --no-progress --out "$OUT/${size}_${t}t/$s"
    done
  done
done
"$PYTHON" benchmarks/cpu_table.py "$OUT"/*_*t
