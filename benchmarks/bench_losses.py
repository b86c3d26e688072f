"""Cost of the distillation losses against one student training step (forward + backward).

    OMP_NUM_THREADS=2 PYTHONPATH=. python benchmarks/bench_losses.py
    OMP_NUM_THREADS=2 PYTHONPATH=. python benchmarks/bench_losses.py --model-batch 2 --losses cwd,hwd,cad,kd

Times forward + backward of ``cwd`` and ``hwd`` on logits (8, 19, 64, 128) and of ``cad`` on features
(8, 128 -> 256, 64, 128), the sizes of a Cityscapes 512x1024 crop at output stride 8, and of a DeepLabV3-R18
forward + backward (cross-entropy on the upsampled logits) at 512x1024, batch 8. Prints each loss's time and its
ratio to the model step. ``--model-batch B`` runs the model step at batch B and scales its time by 8 / B (on CPU the
step is linear in the batch; memory for batch 8 at 512x1024 is about 15 GB). Not a test: no assertion on time.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from segkd.distill.losses import build_loss, loss_params

BATCH, CLASSES, H, W = 8, 19, 64, 128
STUDENT_CH, TEACHER_CH = 128, 256


def _time(step: Callable[[], None], repeats: int, warmup: int = 1) -> float:
    """Median wall time of ``step`` in seconds, after ``warmup`` untimed calls."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _loss_step(name: str, device: torch.device) -> Callable[[], None]:
    """A forward + backward of loss ``name`` on the benchmark's tensors (features 128 -> 256, logits 19)."""
    g = torch.Generator().manual_seed(0)
    student = {
        "logits": torch.randn(BATCH, CLASSES, H, W, generator=g),
        "feat": torch.randn(BATCH, STUDENT_CH, H, W, generator=g),
    }
    teacher = {
        "logits": torch.randn(BATCH, CLASSES, H, W, generator=g),
        "feat": torch.randn(BATCH, TEACHER_CH, H, W, generator=g),
    }
    student = {k: v.to(device).requires_grad_(True) for k, v in student.items()}
    teacher = {k: v.to(device) for k, v in teacher.items()}
    target = torch.randint(0, CLASSES, (BATCH, 8 * H, 8 * W), generator=g).to(device)
    accepted = loss_params(name)
    shared = {"student_channels": STUDENT_CH, "teacher_channels": TEACHER_CH, "num_classes": CLASSES}
    loss = build_loss(name, **{k: v for k, v in shared.items() if k in accepted}).to(device)

    def step() -> None:
        for v in student.values():
            v.grad = None
        loss(student, teacher, target).backward()
        _sync(device)

    return step


def _model_step(batch: int, device: torch.device) -> Callable[[], None]:
    """A forward + backward of DeepLabV3-R18 (aux head on, as in training) at 512x1024."""
    from segkd.distill.models import build_model

    model = build_model("deeplabv3_r18", num_classes=CLASSES).to(device).train()
    x = torch.randn(batch, 3, 8 * H, 8 * W, device=device)
    y = torch.randint(0, CLASSES, (batch, 8 * H, 8 * W), device=device)

    def step() -> None:
        model.zero_grad(set_to_none=True)
        out = model(x, return_features=True)
        loss = F.cross_entropy(out["out"], y, ignore_index=255)
        if out["aux"] is not None:
            aux = F.interpolate(out["aux"], size=y.shape[-2:], mode="bilinear", align_corners=False)
            loss = loss + 0.4 * F.cross_entropy(aux, y, ignore_index=255)
        loss.backward()
        _sync(device)

    return step


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--losses", default="cwd,hwd,cad", help="comma-separated registered loss names")
    parser.add_argument(
        "--model-batch", type=int, default=BATCH, help="batch of the timed model step (scaled to 8)"
    )
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats of each loss (median)")
    parser.add_argument(
        "--model-repeats", type=int, default=2, help="timed repeats of the model step (median)"
    )
    parser.add_argument("--skip-model", action="store_true", help="time the losses only")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    print(f"torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}")

    if args.model_batch < 2:
        parser.error("--model-batch must be >= 2 (BatchNorm in training mode needs two samples)")
    loss_times = {}
    for name in args.losses.split(","):
        loss_times[name] = _time(_loss_step(name, device), args.repeats)
        print(f"{name:>6} fwd+bwd: {loss_times[name] * 1e3:10.2f} ms", flush=True)
    if args.skip_model:
        return
    model_time = _time(_model_step(args.model_batch, device), args.model_repeats) * BATCH / args.model_batch
    note = "" if args.model_batch == BATCH else f" (measured at batch {args.model_batch}, scaled to {BATCH})"
    print(f"deeplabv3_r18 fwd+bwd 512x1024 batch {BATCH}: {model_time * 1e3:.1f} ms{note}")
    for name, seconds in loss_times.items():
        print(f"{name:>6} / model step: {100 * seconds / model_time:6.2f} %")


if __name__ == "__main__":
    main()
