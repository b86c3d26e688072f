"""The control run of the QAD table: a QAD run's exact schedule (same start, teacher, losses, learning rate, frozen
BatchNorm, iterations) with the fake quantization left out, so that the extra fine-tuning can be told apart from
what training through INT8 does.

    python benchmarks/qad_float_control.py --config configs/demo/qad.yaml quantize.checkpoint=FLOAT.pth \
        train.output_dir=RUN/fp32_ctl

Takes the arguments of ``distill/train.py``. The ranges are calibrated and recorded as in any QAD run (the run is
one), but every quantizer computes the identity.
"""

from __future__ import annotations

import sys

import segkd.distill.qat as qat


def _float_conv(conv, _qparams, _bn, x):  # type: ignore[no-untyped-def]
    return conv._conv_forward(x, conv.weight, conv.bias)


def main() -> int:
    qat._quantized_conv_forward = _float_conv  # type: ignore[assignment]
    qat._InputQuantizer.__call__ = lambda self, module, args: None  # type: ignore[method-assign]
    qat._OutputQuantizer.__call__ = lambda self, module, args, output: None  # type: ignore[method-assign]
    qat._FunctionQuantizer.__call__ = lambda self, key, output: None  # type: ignore[method-assign]
    from segkd.distill.train import main as train_main

    return train_main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
