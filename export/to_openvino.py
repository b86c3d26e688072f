"""Export a checkpoint to an OpenVINO IR (FP32 / FP16 / INT8 with NNCF), verified against PyTorch.

    python export/to_openvino.py runs/demo/cwd/best.pth                      # -> runs/demo/cwd/best.xml + .bin
    python export/to_openvino.py best.pth --precision int8 --calib-dataset demo --calib-root data/demo

Needs the ``openvino`` extra: ``pip install -e .[openvino]``. Calibration and verification options are those of
``export/to_onnx.py``.
"""

import sys

if not __package__:  # run as a file: import through the installed `segkd`, not from this folder
    try:
        from segkd.script import detach_script_folder
    except ModuleNotFoundError:
        sys.exit("error: segkd is not installed in this Python; in the checkout run `pip install -e .`")
    detach_script_folder(__file__)

from segkd.export.cli import openvino_main  # noqa: E402

if __name__ == "__main__":
    sys.exit(openvino_main())
