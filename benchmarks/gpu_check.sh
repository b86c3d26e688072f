#!/usr/bin/env bash
# GPU check in one command, for an offline machine with an NVIDIA GPU and a ready PyTorch (CUDA) environment:
# install this checkout without the network, run the `gpu` tests, time the distillation step (student alone, with
# KD; fp32, bf16, channels_last, torch.compile) and PyTorch inference (fp32, fp16, bf16) on CUDA, and, where
# OpenCV, TensorRT and onnxruntime-gpu are installed, export, build and benchmark the deployed formats. A step whose
# library is missing is skipped with the reason; every step runs under its own time limit, and all of them within
# BUDGET_S (480 s), so the check ends in under 8 minutes whatever hangs.
#
#   bash benchmarks/gpu_check.sh                  # run; logs and JSON results in $OUT (default runs/gpu_check)
#   bash benchmarks/gpu_check.sh --plan           # list the steps, their time limits and needs; run nothing
#   bash benchmarks/gpu_check.sh --cpu            # the same steps on this CPU at toy sizes: checks the script
#   WHEELS=wheels/ bash benchmarks/gpu_check.sh   # first install the small wheels brought along (no index used):
#       pytest + pluggy + iniconfig (the gpu tests), cuda-python (TensorRT buffers), onnxslim, and
#       opencv-python-headless (~50 MB: export, demo data, infer/benchmark.py and the tests need it)
#   PYTHON=python3.12 SIZES="512x1024 1024x2048" BATCH=4 DEPLOY_STUDENTS="deeplabv3_mbv2 pspnet_r18" BUDGET_S=1800 \
#       bash benchmarks/gpu_check.sh              # more sizes and students take longer than the default budget
#   SKIP="gpu-tests train-bf16-channels-last-compile-512x1024" bash benchmarks/gpu_check.sh   # steps left out
#
# Install: `pip install --no-deps --no-build-isolation --no-index -e .` when the machine's setuptools is >= 77
# (pyproject's build requirement: older ones reject its PEP 639 license string). Otherwise (or with INSTALL=map,
# or when pip fails) `benchmarks/map_checkout.py` writes what the editable install would into site-packages (an
# import finder for pyproject's package-dir mapping, loaded by a .pth, and a dist-info with the entry points):
# PYTHONPATH alone does not do, since the checkout's bare segkd/ shadows the mapping from the working directory.
# Undo either with `pip uninstall segkd`. INSTALL=none uses what is installed.
#
# Exit status: 0 every step ran or was skipped with its reason; 1 a step failed or ran out of time (the summary
# names it, $OUT/<step>.log holds its output); 3 no NVIDIA GPU (without --cpu).
set -uo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python}
OUT=${OUT:-runs/gpu_check}
BUDGET_S=${BUDGET_S:-480}
INSTALL=${INSTALL:-auto}
MODE=gpu PLAN=0
for arg in "$@"; do
  case $arg in
    --plan) PLAN=1 ;;
    --cpu) MODE=cpu ;;
    *) echo "usage: bash benchmarks/gpu_check.sh [--plan] [--cpu]" >&2; exit 2 ;;
  esac
done
if [[ $MODE == gpu ]]; then  # real sizes: the Cityscapes crop, full-width students and the R101 teacher
  DEV=cuda SIZES=${SIZES:-512x1024} BATCH=${BATCH:-8}
  TRAIN_MODELS="--student deeplabv3_r18 --student-width 1 --teacher deeplabv3_r101 --teacher-width 1"
  INFER_ARGS="--warmup 10 --runs 50"
else  # toy sizes, so that every step that does not need a GPU finishes on two CPU cores
  DEV=cpu SIZES=${SIZES:-64x128} BATCH=${BATCH:-2}
  TRAIN_MODELS="--student deeplabv3_r18 --student-width 0.25 --teacher deeplabv3_r18 --teacher-width 0.5"
  INFER_ARGS="--students deeplabv3_mbv2 --warmup 1 --runs 3"
fi
DEPLOY_STUDENTS=${DEPLOY_STUDENTS:-deeplabv3_r18}
OUT_ABS=$(realpath -m "$OUT")

# ------------------------------------------------------------------------------------------------ the steps
# step NAME LIMIT_S "NEEDS" COMMAND: NEEDS are probed once after the install (see `probe` below); `device` is a
# CUDA GPU, or this CPU with --cpu. A step's output goes to $OUT/NAME.log.
NAMES=() LIMITS=() NEEDS=() CMDS=()
step() { NAMES+=("$1"); LIMITS+=("$2"); NEEDS+=("$3"); CMDS+=("$4"); }

step gpu-tests 150 "segkd pytest cv2" \
  "$PY -m pytest -q -p no:cacheprovider -rs -m gpu tests/test_trt_logic.py"
for size in $SIZES; do
  H=${size%x*} W=${size#*x} o=$OUT_ABS/$size
  # The distillation step (the trainer's own DistillStep on synthetic batches): the student alone and with KD.
  train="$PY benchmarks/opencv_optional.py benchmarks/bench_train.py --device $DEV --crop $size --batch $BATCH \
$TRAIN_MODELS --methods kd --warmup 3 --iters 10"
  step "train-fp32-$size" 90 "segkd device" "$train --json $o/train_fp32.json"
  step "train-bf16-$size" 90 "segkd device" "$train --precision bf16 --json $o/train_bf16.json"
  step "train-bf16-channels-last-$size" 90 "segkd device" \
    "$train --precision bf16 --channels-last --json $o/train_bf16_cl.json"
  step "train-bf16-channels-last-compile-$size" 240 "segkd device" \
    "$train --precision bf16 --channels-last --compile --json $o/train_bf16_cl_compile.json"
  # PyTorch eager inference of the four students: fp32, fp16, bf16 autocast.
  infer="$PY benchmarks/bench_torch_infer.py --device $DEV --size $size $INFER_ARGS"
  step "infer-torch-$size" 90 "segkd device" "$infer --json $o/infer_torch.json"
  step "infer-torch-channels-last-$size" 90 "segkd device" "$infer --channels-last --json $o/infer_torch_cl.json"

  # The deployed formats: demo frames (19 classes) to calibrate and verify on, then per student its checkpoint,
  # verified ONNX, FP16 and INT8 engines, and the benchmark tables (latency, memory, mIoU).
  demo=$o/demo
  step "demo-data-$size" 60 "segkd cv2" "$PY -c 'from segkd.scenes.street import generate_demo; \
generate_demo(\"$demo\", {\"train\": 8, \"val\": 8}, size=($H, $W), seed=0, classes=\"cityscapes\")'"
  data="--calib-dataset demo --calib-root $demo --calib-count 8 --verify-count 4 --exporter torchscript"
  pths="" onnxs="" engines=""
  for s in $DEPLOY_STUDENTS; do
    d=$o/$s
    step "checkpoint-$s-$size" 60 "segkd" "$PY benchmarks/gpu_check_student.py $s $d/$s.pth $H $W"
    step "onnx-$s-$size" 120 "segkd cv2 onnxruntime" \
      "$PY export/to_onnx.py $d/$s.pth $data --out $d/$s.onnx --force"
    for p in fp16 int8; do
      step "trt-$p-$s-$size" 180 "segkd cv2 onnxruntime cuda tensorrt cudart" \
        "$PY export/to_trt.py $d/$s.pth --precision $p --shapes 1x3x${H}x$W $data --out $d/$s.$p.engine --force"
    done
    pths+=" $d/$s.pth" onnxs+=" $d/$s.onnx" engines+=" $d/$s.fp16.engine $d/$s.int8.engine"
  done
  bench="--dataset demo --data-root $demo --limit 8 --rounds 3 --runs 20 --no-progress"
  step "benchmark-pytorch-$size" 120 "segkd cv2 onnxruntime device" \
    "$PY infer/benchmark.py$pths --device $DEV $bench --out $o/report_pytorch"
  step "benchmark-pytorch-bf16-$size" 120 "segkd cv2 onnxruntime device" \
    "$PY infer/benchmark.py$pths --device $DEV --cpu-precision bf16 $bench --out $o/report_pytorch_bf16"
  step "benchmark-tensorrt-$size" 150 "segkd cv2 onnxruntime cuda tensorrt cudart" \
    "$PY infer/benchmark.py$engines --device cuda $bench --out $o/report_tensorrt"
  step "benchmark-onnxruntime-cuda-$size" 120 "segkd cv2 ort_cuda cuda" \
    "$PY infer/benchmark.py$onnxs --device cuda $bench --out $o/report_onnxruntime_cuda"
done

if (( PLAN )); then
  echo "0. install: INSTALL=$INSTALL (pip install --no-deps --no-build-isolation --no-index -e ., or benchmarks/map_checkout.py)"
  for i in "${!NAMES[@]}"; do
    echo "$((i + 1)). ${NAMES[$i]} [<= ${LIMITS[$i]} s; needs ${NEEDS[$i]}]: ${CMDS[$i]}"
  done
  exit 0
fi
if [[ $MODE == gpu ]] && ! { command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; }; then
  echo "no NVIDIA GPU: nvidia-smi finds none on this machine (--cpu runs the steps on this CPU; --plan lists them)" >&2
  exit 3
fi

# ------------------------------------------------------------------------------------------------ budget, summary
for size in $SIZES; do mkdir -p "$OUT_ABS/$size"; done
START=$(date +%s)
SUMMARY=() FAILED=0
left() { echo $((BUDGET_S - ($(date +%s) - START))); }
record() { LAST=$2; SUMMARY+=("$(printf '%-40s %-10s %5s s  %s' "$1" "$2" "$3" "$4")"); }

# run NAME LIMIT COMMAND: under min(LIMIT, what is left of the budget); output in $OUT/NAME.log
run() {
  local name=$1 limit=$2 cmd=$3 t0 rc t
  t=$(left); (( t > limit )) && t=$limit
  if (( t < 5 )); then record "$name" skipped 0 "the ${BUDGET_S} s budget is spent"; return; fi
  echo "+ [$name, <= ${t} s] $cmd"
  t0=$(date +%s)
  timeout -k 5 "$t" bash -c "$cmd" >"$OUT_ABS/$name.log" 2>&1
  rc=$?
  if (( rc == 0 )); then record "$name" ok $(($(date +%s) - t0)) ""
  elif (( rc == 124 || rc == 137 )); then record "$name" TIMEOUT $(($(date +%s) - t0)) "stopped after ${t} s"; FAILED=1
  else record "$name" FAILED $(($(date +%s) - t0)) "exit $rc: $(tail -n 1 "$OUT_ABS/$name.log" | cut -c1-120)"; FAILED=1
  fi
}

# ------------------------------------------------------------------------------------------------ offline install
if [[ -n ${WHEELS:-} ]]; then
  run wheels 120 "$PY -m pip install -q --no-index --no-deps --find-links '$WHEELS' '$WHEELS'/*.whl"
fi
if [[ $INSTALL == auto ]]; then
  if "$PY" -c 'import setuptools, sys; sys.exit(int(setuptools.__version__.split(".")[0]) < 77)' 2>/dev/null; then
    INSTALL=pip
  else
    INSTALL=map
    echo "setuptools >= 77 (pyproject's build requirement) is not installed: mapping the checkout instead"
  fi
fi
case $INSTALL in
  pip) before=$FAILED
       run install 180 "$PY -m pip install -q --no-deps --no-build-isolation --no-index -e ."
       if [[ $LAST != ok ]]; then  # a failed pip is not the end: the mapping needs no build at all
         run install-mapped 30 "$PY benchmarks/map_checkout.py"
         [[ $LAST == ok ]] && FAILED=$before
       fi ;;
  map) run install-mapped 30 "$PY benchmarks/map_checkout.py" ;;
  none) ;;
  *) echo "INSTALL must be auto, pip, map or none, not $INSTALL" >&2; exit 2 ;;
esac

# ------------------------------------------------------------------------------------------------ what is here
# One line per need: NAME, then nothing when it is met or the reason it is not. A need the probe did not report
# (it failed: no torch?) counts as missing.
declare -A REASON=()
probe() {
  "$PY" - "$MODE" <<'EOF'
import importlib, sys

def why(module, hint):
    """'' when ``module`` imports, else the hint and the error."""
    try:
        importlib.import_module(module)
        return ""
    except Exception as e:  # a library present without its shared objects fails with OSError and friends
        return f"{hint} ({type(e).__name__}: {(str(e).splitlines() or [''])[0][:100]})"

import torch

cuda = "" if torch.cuda.is_available() else f"torch {torch.__version__} sees no CUDA device"
needs = {
    "segkd": why("segkd.distill.models", "segkd does not import: see install.log"),
    "cuda": cuda,
    "device": "" if sys.argv[1] == "cpu" else cuda,
    "cv2": why("cv2", "OpenCV is not installed: bring the opencv-python-headless wheel in WHEELS"),
    "pytest": why("pytest", "pytest is not installed: bring pytest, pluggy and iniconfig wheels in WHEELS"),
    "onnxruntime": why("onnxruntime", "onnxruntime is not installed"),
    "tensorrt": why("tensorrt", "TensorRT does not import (its libraries come from NVIDIA's index, out of reach "
                    "offline)"),
    "cudart": why("cuda.bindings.runtime", "") and why("cuda.cudart", "")
              and "cuda-python is not installed (TensorRT's buffers): bring its wheels in WHEELS",
}
try:
    import onnxruntime
    providers = onnxruntime.get_available_providers()
    needs["ort_cuda"] = "" if "CUDAExecutionProvider" in providers else (
        f"onnxruntime {onnxruntime.__version__} has no CUDAExecutionProvider (the CPU build: {', '.join(providers)})")
except Exception:
    needs["ort_cuda"] = needs["onnxruntime"]
for name, reason in needs.items():
    print(f"{name}\t{reason}")
print(f"versions\tPython {sys.version.split()[0]}, torch {torch.__version__} (CUDA {torch.version.cuda}), "
      f"{torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU'}")
EOF
}
while IFS=$'\t' read -r name reason; do
  if [[ $name == versions ]]; then echo "$reason"; else REASON[$name]=$reason; fi
done < <(probe 2>"$OUT_ABS/probe.log")
[[ -v REASON[segkd] ]] || echo "the probe of what is installed failed (see $OUT_ABS/probe.log): every step is skipped"
NOTES=()
for need in segkd device cuda cv2 pytest onnxruntime ort_cuda tensorrt cudart; do
  [[ -n ${REASON[$need]-} ]] && NOTES+=("$(printf '  %-12s %s' "$need" "${REASON[$need]}")")
done

# ------------------------------------------------------------------------------------------------ run
for i in "${!NAMES[@]}"; do
  reason=""
  [[ " ${SKIP:-} " == *" ${NAMES[$i]} "* ]] && reason="left out (SKIP)"
  if [[ -z $reason ]]; then
    missing=""
    for need in ${NEEDS[$i]}; do [[ -n ${REASON[$need]-unprobed} ]] && missing+=" $need"; done
    [[ -n $missing ]] && reason="missing:$missing"
  fi
  if [[ -n $reason ]]; then record "${NAMES[$i]}" skipped 0 "$reason"; continue; fi
  run "${NAMES[$i]}" "${LIMITS[$i]}" "${CMDS[$i]}"
done

echo
echo "gpu_check ($MODE, $SIZES) in $(($(date +%s) - START)) s; logs in $OUT_ABS"
{ printf '%s\n' "${SUMMARY[@]}"
  (( ${#NOTES[@]} )) && { echo "missing here:"; printf '%s\n' "${NOTES[@]}"; }
} | tee "$OUT_ABS/summary.txt"
for name in "${NAMES[@]}"; do  # the timing tables
  [[ $name == train-* || $name == infer-* ]] && [[ -s $OUT_ABS/$name.log ]] || continue
  echo; echo "== $name"; grep -v '^note:' "$OUT_ABS/$name.log" | tail -n 14
done
exit $FAILED
