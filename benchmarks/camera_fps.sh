#!/usr/bin/env bash
# End-to-end camera-demo rate of demo students' OpenVINO INT8 files at 256x512 on the demo video (the real-time
# issue's 25 FPS check): each checkpoint is exported to OpenVINO INT8 at 256x512, then `infer/run_camera.py` runs
# the whole video headless (decode, preprocess, inference, postprocess, render) and writes its summary as JSON.
#   bash benchmarks/camera_fps.sh runs/demo_rt/ddrnet_23_slim_cwd/best.pth runs/demo/cwd/best.pth
# THREADS (default 2), FRAMES (default 300), OUT (default runs/camera_fps). Needs `make demo` (the video).
set -euo pipefail
cd "$(dirname "$0")/.."
THREADS="${THREADS:-2}"
FRAMES="${FRAMES:-300}"
OUT="${OUT:-runs/camera_fps}"
VIDEO="${VIDEO:-runs/demo/street.mp4}"
mkdir -p "$OUT"
for ckpt in "$@"; do
  name="$(basename "$(dirname "$ckpt")")"
  xml="$OUT/$name.int8.xml"
  [ -f "$xml" ] || python export/to_openvino.py "$ckpt" --precision int8 --size 256x512 --out "$xml" \
    --calib-dataset demo --calib-root data/demo
done
echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
for ckpt in "$@"; do
  name="$(basename "$(dirname "$ckpt")")"
  python infer/run_camera.py "$OUT/$name.int8.xml" --source "$VIDEO" --headless --max-frames "$FRAMES" \
    --threads "$THREADS" --json-summary "$OUT/$name.json"
done
echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"
