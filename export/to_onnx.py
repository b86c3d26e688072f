"""Export a checkpoint to ONNX, verified against PyTorch with ONNX Runtime before it is written.

    python export/to_onnx.py runs/cityscapes/best.pth                         # -> runs/cityscapes/best.onnx
    python export/to_onnx.py best.pth --precision fp16 int8 --calib-dataset cityscapes --calib-root data/cityscapes
    python export/to_onnx.py best.pth --dynamic --fuse-preprocess --argmax   # raw BGR frames in, labels out

See `python export/to_onnx.py --help` and `export/formats.py` for the precisions and the metadata written.
"""

import sys

if not __package__:  # run as a file: import through the installed `segkd`, not from this folder
    try:
        from segkd.script import detach_script_folder
    except ModuleNotFoundError:
        sys.exit("error: segkd is not installed in this Python; in the checkout run `pip install -e .`")
    detach_script_folder(__file__)

from segkd.export.cli import onnx_main  # noqa: E402

if __name__ == "__main__":
    sys.exit(onnx_main())
