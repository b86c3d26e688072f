#!/usr/bin/env bash
# The whole pipeline on the built-in demo data, from a fresh checkout:
#   make demo            (or: bash scripts/demo.sh)
# generate data -> train the teacher -> distil a student with CWD beside a plain baseline -> export FP32 and INT8
# ONNX -> benchmark them -> segment a street video. Everything lands in runs/demo/ (data in data/demo/).
# Re-running resumes: finished steps are skipped, an interrupted training run continues where it stopped.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
RUNS="${RUNS:-runs/demo}"
DATA="${DATA:-data/demo}"
start=$(date +%s)
step() { printf '\n==> [%s/7] %s   (%ds elapsed)\n' "$1" "$2" "$(( $(date +%s) - start ))"; }

step 0 "environment ($VENV)"
if [ -z "${VIRTUAL_ENV:-}" ]; then
  [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
  # shellcheck disable=SC1091
  . "$VENV/bin/activate"
fi
python -c "import torch" 2>/dev/null || python -m pip install -q "torch==2.13.0"
python -c "import distill, export, infer, accelerate" 2>/dev/null || python -m pip install -q -e .
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-$(python -c 'import os; print(os.cpu_count())')}"
launch=(accelerate launch --num_processes 1 --num_machines 1 --mixed_precision no --dynamo_backend no)

step 1 "demo data: generated street scenes in the Cityscapes layout + a short street video"
python -m infer.datasets.demo --root "$DATA" --train 200 --val 50 --size 256x512 --video "$RUNS/street.mp4"

step 2 "teacher: DeepLabV3-ResNet18 at half width (the quarter-width R101 learns too slowly for a 20-minute CPU demo)"
"${launch[@]}" distill/train.py --config configs/demo/teacher.yaml data.root="$DATA" train.output_dir="$RUNS/teacher"

step 3 "students: DeepLabV3-ResNet18 (quarter width), plain baseline and CWD distillation"
for method in baseline cwd; do
  "${launch[@]}" distill/train.py --config "configs/demo/$method.yaml" data.root="$DATA" \
    train.output_dir="$RUNS/$method" teacher.checkpoint="$RUNS/teacher/best.pth"
done

step 4 "export: FP32 and INT8 (Q/DQ, calibrated on the train split) ONNX, each verified against PyTorch"
python export/to_onnx.py "$RUNS/cwd/best.pth" --precision fp32 int8 --height 256 --width 512 \
  --calib-dataset demo --calib-root "$DATA" --calib-split train --verify-split val

step 5 "benchmark: parameters, GMACs, latency and mIoU of every model and file"
python infer/benchmark.py "$RUNS/teacher/best.pth" "$RUNS/baseline/best.pth" "$RUNS/cwd/best.pth" \
  "$RUNS/cwd/best.onnx" "$RUNS/cwd/best.int8.onnx" --dataset demo --data-root "$DATA" --split val \
  --size 256x512 --eval-size 256x512 --warmup 5 --runs 30 --out "$RUNS/benchmark"

step 6 "camera demo on the street video (headless), saved as a segmented video"
python infer/run_camera.py "$RUNS/cwd/best.onnx" --source "$RUNS/street.mp4" --headless \
  --save "$RUNS/street_segmented.mp4" --json-summary "$RUNS/camera_summary.json"

step 7 "done in $(( $(date +%s) - start ))s"
cat <<MSG
Results:
  data                $DATA/ (leftImg8bit/, gtFine/; check: python -m infer.datasets check --dataset demo --root $DATA --split val)
  teacher             $RUNS/teacher/best.pth      (metrics: $RUNS/teacher/metrics.jsonl)
  baseline student    $RUNS/baseline/best.pth
  CWD student         $RUNS/cwd/best.pth
  ONNX FP32 / INT8    $RUNS/cwd/best.onnx, $RUNS/cwd/best.int8.onnx
  benchmark table     $RUNS/benchmark/benchmark.md (.csv, .json, latency_vs_miou.png)
  segmented video     $RUNS/street_segmented.mp4
Next: python export/to_trt.py $RUNS/cwd/best.pth --precision fp16   (on a machine with an NVIDIA GPU and TensorRT)
MSG
