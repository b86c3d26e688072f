"""Write a randomly initialised student checkpoint at a fixed input size (for benchmarks/gpu_check.sh).

python benchmarks/gpu_check_student.py deeplabv3_mbv2 out/deeplabv3_mbv2.pth 512 1024
"""

from __future__ import annotations

import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    import torch

    from segkd.distill.checkpoint import save_checkpoint
    from segkd.distill.models import build_model
    from segkd.infer.meta import ModelMeta

    name, out, h, w = argv[0], Path(argv[1]), int(argv[2]), int(argv[3])
    torch.manual_seed(0)
    model = build_model(name, num_classes=19).eval()
    meta = ModelMeta(
        arch={"name": name, "num_classes": 19},
        class_names=[f"class{i}" for i in range(19)],
        palette=[[i * 13 % 256, i * 29 % 256, i * 47 % 256] for i in range(19)],
        input_size=[h, w],
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(out, model, meta)
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
