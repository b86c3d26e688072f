"""Export a checkpoint to files a deployment runs: ONNX (FP32 / FP16 / INT8 Q/DQ) and TensorRT engines.

    python export/to_onnx.py runs/cityscapes/best.pth --precision int8 --calib-images data/frames
    python export/to_trt.py runs/cityscapes/best.pth --precision fp16 --shapes 1x3x512x1024

Every ONNX file is verified against PyTorch with ONNX Runtime before it is written (see `export.verify`). This
package imports neither torch nor onnxruntime at import time: `export.trt_build.check_engine_compat` is used by
the torch-free deploy runtime.
"""

__all__: list[str] = []
