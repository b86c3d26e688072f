"""Export a checkpoint to files a deployment runs: ONNX (FP32 / FP16 / INT8 Q/DQ) and TensorRT engines.

    python export/to_onnx.py runs/cityscapes/best.pth --precision int8 --calib-images data/frames
    python export/to_trt.py runs/cityscapes/best.pth --precision fp16 --shapes 1x3x512x1024

Every ONNX file is verified against PyTorch with ONNX Runtime before it is written (see `segkd.export.verify`). The
exporter depends on the deploy runtime (`infer`), never the other way round: the engine sidecar and its
compatibility policy are the runtime's (`segkd.infer.runtime.engine_record`), imported here.
"""

__all__: list[str] = []
