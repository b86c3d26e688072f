"""Export a checkpoint to ONNX, verified against PyTorch with ONNX Runtime before it is written.

    python export/to_onnx.py runs/cityscapes/best.pth                         # -> runs/cityscapes/best.onnx
    python export/to_onnx.py best.pth --precision fp16 int8 --calib-dataset cityscapes --calib-root data/cityscapes
    python export/to_onnx.py best.pth --dynamic --fuse-preprocess --argmax   # raw BGR frames in, labels out

See `python export/to_onnx.py --help` and `export/formats.py` for the precisions and the metadata written.
"""

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file from a checkout: import from the repository root, not export/
    _here = str(Path(__file__).resolve().parent)
    sys.path[:] = [p for p in sys.path if p != _here]
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from export.cli import onnx_main  # noqa: E402

if __name__ == "__main__":
    sys.exit(onnx_main())
