"""Build a strongly typed TensorRT engine (TensorRT 10 or 11) and its JSON sidecar.

    python export/to_trt.py runs/cityscapes/best.pth --precision fp16 --shapes 1x3x512x1024
    python export/to_trt.py best.int8.onnx --shapes 1x3x512x1024:2x3x512x1024:4x3x1024x2048 --timing-cache trt.cache

From a checkpoint the verified ONNX of the precision is written first (`export/to_onnx.py` options apply);
without TensorRT the command stops there, exit 2 (no engine), and prints how to install it (``pip install -e .[trt]``).
"""

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file from a checkout: import from the repository root, not export/
    _here = str(Path(__file__).resolve().parent)
    sys.path[:] = [p for p in sys.path if p != _here]
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from export.cli import trt_main  # noqa: E402

if __name__ == "__main__":
    sys.exit(trt_main())
