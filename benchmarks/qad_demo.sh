#!/usr/bin/env bash
# FP32 / post-training INT8 / QAD INT8 of the demo models through their exported files (docs/quantization.md):
# each model is QAD-fine-tuned for both INT8 forms (60 iterations: 10 % of a demo student's 600), then every file
# is exported and benchmarked in one table per model (mIoU on the 50 demo val frames, CPU latency). The control
# (benchmarks/qad_float_control.py) runs the same fine-tune without fake quantization.
# Needs the demo data and trained students: `make demo` (runs/demo/cwd) and, for the MobileNetV2 students,
#   accelerate launch distill/train.py --config configs/demo/cwd.yaml student.name=deeplabv3_mbv2 \
#     student.width=0.5 student.output_stride=16 train.output_dir=runs/demo4/deeplabv3_mbv2   (and pspnet_mbv2)
#   bash benchmarks/qad_demo.sh            (OUT=runs/qad_demo by default; MODELS="name=ckpt ..."; ROUNDS=5;
#                                           QAD_ARGS="optim.lr=0.005": overrides for the QAD and control runs)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-runs/qad_demo}"
DATA="${DATA:-data/demo}"
read -r -a qad_args <<< "${QAD_ARGS:-}"
MODELS="${MODELS:-teacher=assets/demo_teacher.pth cwd_r18=runs/demo/cwd/best.pth dlv3_mbv2=runs/demo4/deeplabv3_mbv2/best.pth psp_mbv2=runs/demo4/pspnet_mbv2/best.pth}"
calib=(--calib-dataset demo --calib-root "$DATA")
mkdir -p "$OUT"
for pair in $MODELS; do
  name="${pair%%=*}"; src="${pair#*=}"
  dir="$OUT/$name"; mkdir -p "$dir"
  [ -f "$dir/float.pth" ] || cp "$src" "$dir/float.pth"
  for target in tensorrt cpu; do
    if [ ! -f "$dir/qad_$target.pth" ]; then  # finished QAD runs are reused (delete the .pth to train again)
      rm -rf "$dir/qad_$target"
      segkd train --config configs/demo/qad.yaml data.root="$DATA" quantize.checkpoint="$dir/float.pth" \
        quantize.target="$target" train.output_dir="$dir/qad_$target" "${qad_args[@]}"
      cp "$dir/qad_$target/best.pth" "$dir/qad_$target.pth"
    fi
    segkd export "$dir/qad_$target.pth" --precision int8 --target "$target" "${calib[@]}" --force \
      || echo "INT8 of $dir/qad_$target.pth was refused by its verification" >&2
    # post-training INT8 that its verification refuses is written anyway, for the table to show what it loses
    segkd export "$dir/float.pth" --precision int8 --target "$target" "${calib[@]}" --force \
      || { echo "INT8 of $dir/float.pth was refused by its verification: written with --no-verify" >&2
           segkd export "$dir/float.pth" --precision int8 --target "$target" "${calib[@]}" --force --no-verify; }
  done
  if [ ! -f "$dir/fp32_ctl/best.pth" ]; then  # the control: the same fine-tune without fake quantization
    rm -rf "$dir/fp32_ctl"
    python benchmarks/qad_float_control.py --config configs/demo/qad.yaml data.root="$DATA" \
      quantize.checkpoint="$dir/float.pth" train.output_dir="$dir/fp32_ctl" "${qad_args[@]}"
  fi
  segkd export "$dir/float.pth" --precision fp32 "${calib[@]}" --force
  rm -f "$dir"/*.xml "$dir"/*.bin
  python export/to_openvino.py "$dir/float.pth" --precision int8 "${calib[@]}" \
    || { echo "OpenVINO INT8 of $dir/float.pth was refused by its verification: written with --no-verify" >&2
         python export/to_openvino.py "$dir/float.pth" --precision int8 "${calib[@]}" --no-verify; }
  # a file its verification refuses is reported in the table as refused (docs/quantization.md)
  python export/to_openvino.py "$dir/qad_tensorrt.pth" --precision int8 "${calib[@]}" \
    || echo "OpenVINO INT8 of $dir/qad_tensorrt.pth was refused by its verification" >&2
  files=()
  for f in float.pth float.onnx float.int8.onnx float.int8-cpu.onnx qad_tensorrt.int8.onnx qad_cpu.int8-cpu.onnx \
           float.int8.xml qad_tensorrt.int8.xml; do
    [ -f "$dir/$f" ] && files+=("$dir/$f")
  done
  segkd benchmark "${files[@]}" \
    --dataset demo --data-root "$DATA" --threads 1 --rounds "${ROUNDS:-5}" --compare-to "$dir/float.onnx" --out "$dir/benchmark"
done
