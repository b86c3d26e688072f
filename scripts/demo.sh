#!/usr/bin/env bash
# The whole pipeline on the built-in demo data, from a fresh checkout:
#   make demo            (or: bash scripts/demo.sh)
# generate data -> distil a student with CWD beside a plain baseline, from the demo teacher shipped in
# assets/ -> export FP32 and INT8 ONNX -> benchmark them -> segment a street video. Everything lands in runs/demo/
# (data in data/demo/). Re-running resumes: finished steps are skipped, an interrupted training continues.
#   TEACHER=train make demo      trains the teacher too (configs/demo/teacher.yaml, about 15 more minutes)
#   TEACHER=path/to/best.pth     distils from another 7-class demo teacher
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
RUNS="${RUNS:-runs/demo}"
DATA="${DATA:-data/demo}"
TEACHER="${TEACHER:-assets/demo_teacher.pth}"
start=$(date +%s)

# Typical seconds per stage on 2 idle CPU cores (docs/demo_results.md); the ETA scales them by how fast this
# machine has been so far.
names=("" "demo data" "students: baseline and CWD" "export" "benchmark" "video")
typical=(0 20 460 40 35 5)
if [ "$TEACHER" = train ]; then names[2]="teacher, then students: baseline and CWD"; typical[2]=1320; fi
done_typical=0
step() {
  local k=$1 now elapsed rest=0 i eta
  now=$(date +%s); elapsed=$(( now - start ))
  for (( i = k; i < ${#typical[@]}; i++ )); do rest=$(( rest + typical[i] )); done
  if (( done_typical > 0 && elapsed > 0 )); then eta=$(( rest * elapsed / done_typical )); else eta=$rest; fi
  printf '\n==> [%d/5] %s   (%ds elapsed, about %ds to go)\n' "$k" "${names[k]}" "$elapsed" "$eta"
  done_typical=$(( done_typical + typical[k] ))
}

if [ -z "${VIRTUAL_ENV:-}" ]; then
  [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
  # shellcheck disable=SC1091
  . "$VENV/bin/activate"
fi
python -c "import torch" 2>/dev/null || python -m pip install -q "torch==2.13.0"
python -c "import segkd.distill, segkd.export, segkd.infer, accelerate" 2>/dev/null || python -m pip install -q -e ".[plot]"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-$(python -c 'import os; print(os.cpu_count())')}"
launch=(accelerate launch --num_processes 1 --num_machines 1 --mixed_precision no --dynamo_backend no)

step 1
segkd demo-data --root "$DATA" --train 200 --val 50 --size 128x256 --classes categories \
  --video "$RUNS/street.mp4" --video-size 256x512

step 2
if [ "$TEACHER" = train ]; then
  "${launch[@]}" distill/train.py --config configs/demo/teacher.yaml data.root="$DATA" \
    train.output_dir="$RUNS/teacher"
  TEACHER="$RUNS/teacher/best.pth"
fi
[ -f "$TEACHER" ] || { echo "error: demo teacher $TEACHER not found; TEACHER=train make demo trains one" >&2; exit 2; }
# The two students train side by side, one thread each: on small models that is about a third faster than one
# after the other on every core. The baseline's log goes to a file; the CWD student shows its progress here.
OMP_NUM_THREADS=1 "${launch[@]}" distill/train.py --config configs/demo/baseline.yaml data.root="$DATA" \
  train.output_dir="$RUNS/baseline" > "$RUNS/baseline.log" 2>&1 &
baseline_pid=$!
OMP_NUM_THREADS=1 "${launch[@]}" distill/train.py --config configs/demo/cwd.yaml data.root="$DATA" \
  train.output_dir="$RUNS/cwd" teacher.checkpoint="$TEACHER" || { kill "$baseline_pid" 2>/dev/null; exit 1; }
echo "baseline student (log: $RUNS/baseline.log):"
wait "$baseline_pid" || { tail -n 20 "$RUNS/baseline.log" >&2; echo "error: the baseline student failed" >&2; exit 1; }
tail -n 3 "$RUNS/baseline.log"

step 3
python export/to_onnx.py "$RUNS/cwd/best.pth" --precision fp32 int8 --height 128 --width 256 \
  --calib-dataset demo --calib-root "$DATA" --calib-split train --verify-split val

step 4
python infer/benchmark.py "$TEACHER" "$RUNS/baseline/best.pth" "$RUNS/cwd/best.pth" \
  "$RUNS/cwd/best.onnx" "$RUNS/cwd/best.int8.onnx" --dataset demo --data-root "$DATA" --split val \
  --size 128x256 --eval-size 128x256 --warmup 5 --runs 30 --out "$RUNS/benchmark"

step 5
python infer/run_camera.py "$RUNS/cwd/best.onnx" --source "$RUNS/street.mp4" --headless \
  --save "$RUNS/street_segmented.mp4" --json-summary "$RUNS/camera_summary.json"

cat <<MSG

==> done in $(( $(date +%s) - start ))s
Results:
  data                $DATA/ (leftImg8bit/, gtFine/; 7 Cityscapes categories; check: segkd check --dataset demo --root $DATA --split val)
  teacher             $TEACHER
  baseline student    $RUNS/baseline/best.pth      (metrics.jsonl and curves.png beside it)
  CWD student         $RUNS/cwd/best.pth
  ONNX FP32 / INT8    $RUNS/cwd/best.onnx, $RUNS/cwd/best.int8.onnx
  benchmark table     $RUNS/benchmark/benchmark.md (.csv, .json, latency_vs_miou.png)
  segmented video     $RUNS/street_segmented.mp4
Next: segkd compare --quick       (baseline, CWD, HWD over 3 seeds, with confidence intervals)
      python export/to_trt.py $RUNS/cwd/best.pth --precision fp16   (on a machine with an NVIDIA GPU and TensorRT)
MSG
