"""Build a strongly typed TensorRT engine (TensorRT 10 or 11) and its JSON sidecar.

    python export/to_trt.py runs/cityscapes/best.pth --precision fp16 --shapes 1x3x512x1024
    python export/to_trt.py best.int8.onnx --shapes 1x3x512x1024:2x3x512x1024:4x3x1024x2048 --timing-cache trt.cache

From a checkpoint the verified ONNX of the precision is written first (`export/to_onnx.py` options apply);
without TensorRT the command stops there, exit 2 (no engine), and prints how to install it (``pip install -e .[trt]``).
"""

import sys

if not __package__:  # run as a file: import through the installed `segkd`, not from this folder
    try:
        from segkd.script import detach_script_folder
    except ModuleNotFoundError:
        sys.exit("error: segkd is not installed in this Python; in the checkout run `pip install -e .`")
    detach_script_folder(__file__)

from segkd.export.cli import trt_main  # noqa: E402

if __name__ == "__main__":
    sys.exit(trt_main())
