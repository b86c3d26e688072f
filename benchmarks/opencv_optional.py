"""Run a benchmark script where OpenCV may be missing: ``python benchmarks/opencv_optional.py SCRIPT [ARGS...]``.

    python benchmarks/opencv_optional.py benchmarks/bench_train.py --device cuda --methods kd

The trainer's step (`segkd.distill.step`) imports the data pipeline, and with it OpenCV, although a timing on
synthetic tensors never decodes or augments an image. A bare CUDA image often has no OpenCV (and its wheel is
large to bring to an offline machine), so where ``cv2`` does not import, a placeholder module stands in that
fails on first use with this explanation. Where OpenCV is installed the script runs unchanged.
"""

from __future__ import annotations

import runpy
import sys
import types


class _MissingOpenCV(types.ModuleType):
    def __getattr__(self, name: str) -> object:
        if name.startswith("__"):  # import machinery probes (__path__, __spec__, ...)
            raise AttributeError(name)
        raise ImportError(
            f"cv2.{name} was used, but OpenCV is not installed: this run only works on synthetic tensors "
            "(pip install opencv-python-headless for anything that reads images)"
        )


def main(argv: list[str]) -> None:
    if not argv:
        sys.exit(__doc__.splitlines()[0])
    try:
        import cv2  # noqa: F401
    except ImportError:
        sys.modules["cv2"] = _MissingOpenCV("cv2")
        print("note: OpenCV is not installed; a placeholder cv2 stands in (never called by this timing)")
    sys.argv = argv
    runpy.run_path(argv[0], run_name="__main__")


if __name__ == "__main__":
    main(sys.argv[1:])
