#!/usr/bin/env bash
# GPU readiness in one command, for a machine with an NVIDIA GPU:
#   install the trt extra; build FP16 and INT8 TensorRT engines of the four students; check them against ONNX
#   Runtime (agreement and mIoU on generated demo data); time TensorRT, ONNX Runtime CUDA and PyTorch eager fp32/bf16
#   with CUDA events; write one Markdown/JSON report (the benchmark's files) per size under $OUT.
#
#   bash benchmarks/gpu_check.sh            # run (budget: under 8 minutes at 512x1024)
#   bash benchmarks/gpu_check.sh --plan     # list the steps, run nothing
#   SIZES="512x1024 1024x2048" OUT=runs/gpu_check PYTHON=python bash benchmarks/gpu_check.sh
#
# Exit status: 0 done, 1 a step failed (the log says which), 3 no NVIDIA GPU on this machine.
# The students have random weights: agreement and mIoU compare formats with one another, not with a trained model.
set -euo pipefail

PYTHON=${PYTHON:-python}
OUT=${OUT:-runs/gpu_check}
SIZES=${SIZES:-512x1024}
STUDENTS=${STUDENTS:-"deeplabv3_mbv2 pspnet_mbv2 deeplabv3_r18 pspnet_r18"}
ROUNDS=${ROUNDS:-20}
PLAN=0
[[ "${1:-}" == "--plan" ]] && PLAN=1

steps=()
step() { steps+=("$*"); }

step "$PYTHON -m pip install -q -e '.[trt]'"
for size in $SIZES; do
  h=${size%x*}; w=${size#*x}
  step "$PYTHON -c 'from segkd.scenes.street import generate_demo; generate_demo(\"$OUT/demo_$size\", splits={\"train\": 8, \"val\": 8}, size=($h, $w), seed=0)'"
  for s in $STUDENTS; do
    d=$OUT/$size/$s
    step "$PYTHON benchmarks/gpu_check_student.py $s $d/$s.pth $h $w"
    step "$PYTHON export/to_onnx.py $d/$s.pth --out $d/$s.onnx"
    step "$PYTHON export/to_trt.py $d/$s.onnx --precision fp16 --out $d/$s.fp16.engine"
    step "$PYTHON export/to_trt.py $d/$s.pth --precision int8 --calib-dataset demo --calib-root $OUT/demo_$size --calib-count 8 --out $d/$s.int8.engine"
  done
  models=""
  for s in $STUDENTS; do d=$OUT/$size/$s; models+=" $d/$s.pth $d/$s.onnx $d/$s.fp16.engine $d/$s.int8.engine"; done
  step "$PYTHON infer/benchmark.py$models --device cuda --rounds $ROUNDS --runs 5 --dataset demo --data-root $OUT/demo_$size --limit 8 --out $OUT/report_$size"
  step "$PYTHON infer/benchmark.py$(for s in $STUDENTS; do printf ' %s' "$OUT/$size/$s/$s.pth"; done) --device cuda --cpu-precision bf16 --rounds $ROUNDS --runs 5 --out $OUT/report_${size}_bf16"
done

if (( PLAN )); then
  i=1; for s in "${steps[@]}"; do echo "$i. $s"; i=$((i + 1)); done
  exit 0
fi
if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
  echo "no NVIDIA GPU: nvidia-smi finds none on this machine; run this where one is (see --plan for the steps)" >&2
  exit 3
fi
mkdir -p "$OUT"
start=$(date +%s)
for s in "${steps[@]}"; do
  echo "+ $s" | tee -a "$OUT/gpu_check.log"
  if ! eval "$s" >>"$OUT/gpu_check.log" 2>&1; then
    echo "step failed: $s (see $OUT/gpu_check.log)" >&2
    exit 1
  fi
done
echo "done in $(( $(date +%s) - start )) s; reports: $OUT/report_*/benchmark.md (and .json)"
