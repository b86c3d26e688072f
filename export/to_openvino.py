"""Export a checkpoint to an OpenVINO IR (FP32 / FP16 / INT8 with NNCF), verified against PyTorch.

    python export/to_openvino.py runs/demo/cwd/best.pth                      # -> runs/demo/cwd/best.xml + .bin
    python export/to_openvino.py best.pth --precision int8 --calib-dataset demo --calib-root data/demo

Needs the ``openvino`` extra: ``pip install -e .[openvino]``. Calibration and verification options are those of
``export/to_onnx.py``.
"""

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file from a checkout: import from the repository root, not export/
    _here = str(Path(__file__).resolve().parent)
    sys.path[:] = [p for p in sys.path if p != _here]
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from export.cli import openvino_main  # noqa: E402

if __name__ == "__main__":
    sys.exit(openvino_main())
