#!/usr/bin/env bash
# FP32 / post-training INT8 / QAD INT8 mIoU of the demo models through their exported files (docs/quantization.md).
# Needs `make demo` first (data/demo, runs/demo/{baseline,cwd}). Each QAD run is 60 iterations (10 % of a demo
# student's 600).
#   bash benchmarks/qad_demo.sh            (OUT=runs/qad_demo by default)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-runs/qad_demo}"
DATA="${DATA:-data/demo}"
mkdir -p "$OUT"
declare -A SOURCES=([teacher]=assets/demo_teacher.pth [cwd]=runs/demo/cwd/best.pth [baseline]=runs/demo/baseline/best.pth)
for name in teacher cwd baseline; do
  src="${SOURCES[$name]}"
  cp -n "$src" "$OUT/$name.pth"
  for target in tensorrt cpu; do
    run="$OUT/qad_${name}_${target}"
    segkd train --config configs/demo/qad.yaml data.root="$DATA" quantize.checkpoint="$src" \
      quantize.target="$target" train.output_dir="$run"
    segkd export "$run/best.pth" --precision int8 --target "$target" --calib-dataset demo --calib-root "$DATA"
    segkd export "$OUT/$name.pth" --precision int8 --target "$target" --calib-dataset demo --calib-root "$DATA" --force
  done
  segkd export "$OUT/$name.pth" --precision fp32 --calib-dataset demo --calib-root "$DATA" --force
  python export/to_openvino.py "$OUT/qad_${name}_tensorrt/best.pth" --precision int8 --calib-dataset demo --calib-root "$DATA"
  python export/to_openvino.py "$OUT/$name.pth" --precision int8 --calib-dataset demo --calib-root "$DATA"
done
