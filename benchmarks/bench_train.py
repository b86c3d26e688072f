"""Training-step speed: throughput and what distillation adds on top of training the student alone.

    python benchmarks/bench_train.py                                   # the demo recipes, on this CPU
    python benchmarks/bench_train.py --device cuda --crop 512x1024 --batch 8 --precision bf16 \
        --student deeplabv3_r18 --student-width 1 --teacher deeplabv3_r101 --teacher-width 1 --json out.json
    python benchmarks/bench_train.py --device cuda --precision bf16 --channels-last --compile --methods kd

For each configuration it times full training iterations (forward, backward, SGD step) of the trainer's own
``DistillStep`` on synthetic uint8 batches (no data loading), after warm-up, and reports the median:

- ``student``: the student alone (cross-entropy + auxiliary head), the plain baseline;
- ``teacher_fwd``: the frozen teacher's forward only;
- ``<method>``: student + teacher forward + that method's losses (the demo recipes' loss specs).

Distillation overhead = step(method) / step(student). The losses' own cost (forward + backward of the loss terms
alone, on fixed student and teacher outputs) is also given relative to the teacher's forward.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as `python benchmarks/bench_train.py` from a checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from segkd.distill.losses import KDCriterion  # noqa: E402
from segkd.distill.models import build_model  # noqa: E402
from segkd.distill.step import DistillStep, train_step  # noqa: E402
from segkd.infer.cliargs import hw_arg  # noqa: E402
from segkd.infer.meta import ModelMeta  # noqa: E402

# The demo recipes' distillation losses (configs/_methods/*.yaml).
METHODS: dict[str, list[dict]] = {
    "kd": [{"name": "kd", "tau": 1.0, "weight": 1.0}],
    "cwd": [{"name": "cwd", "source": "logits", "tau": 4.0, "weight": 3.0}],
    "hwd": [{"name": "hwd", "tau": 4.0, "beta": 0.1, "mu": 1.0, "weight": 3.0}],
    "lad": [{"name": "lad", "source": "feat", "weight": 3.0}],
    "cad": [{"name": "cad", "source": "feat", "weight": 3.0}],
}
_DTYPES = {"no": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--student", default="deeplabv3_r18")
    p.add_argument("--student-width", type=float, default=0.25)
    p.add_argument("--teacher", default="deeplabv3_r18")
    p.add_argument("--teacher-width", type=float, default=0.5)
    p.add_argument("--classes", type=int, default=19)
    p.add_argument("--crop", type=hw_arg, default=(128, 256), help="HxW (default: the demo crop 128x256)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--methods", default=",".join(METHODS), help=f"comma list of {', '.join(METHODS)}")
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", choices=list(_DTYPES), default="no", help="autocast dtype")
    p.add_argument("--channels-last", action="store_true", help="models and batches in NHWC memory format")
    p.add_argument("--compile", action="store_true", help="torch.compile both models (compiles in warm-up)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave the default)")
    p.add_argument("--json", type=Path, help="also write the results here")
    return p.parse_args(argv)


def _meta(k: int) -> ModelMeta:
    return ModelMeta(arch={"name": "bench"}, class_names=[str(i) for i in range(k)], palette=[[0, 0, 0]] * k)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(fn, device: torch.device, warmup: int, iters: int) -> float:
    """Median seconds of ``fn()`` over ``iters`` calls after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        _sync(device)
        t = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _step_fn(step, optimizer, images, labels, meta, teacher, autocast):
    def run() -> None:
        losses = train_step(
            step, images, labels, student_meta=meta, teacher=teacher, teacher_meta=meta, autocast=autocast
        )
        losses["total"].backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return run


def main(argv: list[str] | None = None) -> dict:
    args = _parse(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = _DTYPES[args.precision]

    def autocast():
        return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)

    torch.manual_seed(0)
    meta, k = _meta(args.classes), args.classes
    images = torch.randint(0, 256, (args.batch, 3, *args.crop), dtype=torch.uint8, device=device)
    labels = torch.randint(0, k, (args.batch, *args.crop), device=device)
    student = build_model(args.student, num_classes=k, width=args.student_width).to(device)
    teacher = (
        build_model(args.teacher, num_classes=k, width=args.teacher_width)
        .to(device)
        .eval()
        .requires_grad_(False)
    )
    if args.channels_last:  # NHWC activations, the layout GPU convolution kernels prefer
        student, teacher = (m.to(memory_format=torch.channels_last) for m in (student, teacher))
        images = images.contiguous(memory_format=torch.channels_last)
    # The step runs the compiled modules; the losses' channel counts still come from the models themselves.
    run_student = torch.compile(student) if args.compile else student
    run_teacher = torch.compile(teacher) if args.compile else teacher

    results: dict = {"config": {k2: str(v) for k2, v in vars(args).items()}, "device": str(device)}
    if device.type == "cpu":
        results["threads"] = torch.get_num_threads()
    elif device.type == "cuda":
        results["gpu"] = torch.cuda.get_device_name(device)

    def measure(specs: list[dict] | None) -> float:
        crit = KDCriterion(specs, student_channels=student.feat_channels, teacher_channels=teacher.feat_channels,
                           num_classes=k) if specs else None  # fmt: skip
        step = DistillStep(run_student, crit, 0.4, 255).to(device)
        opt = torch.optim.SGD(step.parameters(), lr=1e-4, momentum=0.9)
        fn = _step_fn(step, opt, images, labels, meta, run_teacher if specs else None, autocast)
        with autocast():
            return _time(fn, device, args.warmup, args.iters)

    def teacher_forward() -> None:
        from segkd.distill.data import normalize

        with torch.no_grad(), autocast():
            run_teacher(normalize(images, meta.mean, meta.std, meta.channel_order), return_features=True)

    def losses_only(specs: list[dict]):
        """Forward + backward of the losses alone, on fixed student/teacher outputs."""
        from segkd.distill.data import normalize

        crit = KDCriterion(specs, student_channels=student.feat_channels, teacher_channels=teacher.feat_channels,
                           num_classes=k).to(device)  # fmt: skip
        with torch.no_grad(), autocast():
            x = normalize(images, meta.mean, meta.std, meta.channel_order)
            s_out = {key: v.detach().requires_grad_() for key, v in student(x, return_features=True).items()
                     if key in ("logits", "feat")}  # fmt: skip
            t_out = teacher(x, return_features=True)

        def run() -> None:
            with torch.autocast(device.type, enabled=False):
                sum(crit(s_out, t_out, labels).values()).backward()

        return run

    base = measure(None)
    t_fwd = _time(teacher_forward, device, args.warmup, args.iters)
    rows = {"student": {"step_s": base, "images_per_s": args.batch / base}}
    rows["teacher_fwd"] = {"step_s": t_fwd, "images_per_s": args.batch / t_fwd}
    for name in [m for m in args.methods.split(",") if m]:
        s = measure(METHODS[name])
        losses = _time(losses_only(METHODS[name]), device, args.warmup, args.iters)
        rows[name] = {
            "step_s": s,
            "images_per_s": args.batch / s,
            "overhead_vs_student": s / base,
            "losses_s": losses,
            "losses_vs_teacher_fwd": losses / t_fwd,
        }
    results["rows"] = rows
    _print(results, args)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return results


def _print(results: dict, args: argparse.Namespace) -> None:
    where = results.get("gpu") or f"{results['device']} ({results.get('threads', '?')} threads)"
    layout = ("channels_last" if args.channels_last else "NCHW") + (", compiled" if args.compile else "")
    print(
        f"{args.student} x{args.student_width:g} <- {args.teacher} x{args.teacher_width:g}, batch {args.batch} of "
        f"{args.crop[0]}x{args.crop[1]}, precision {args.precision}, {layout}, {where}; median of {args.iters}"
    )
    print(f"{'':12} {'step ms':>9} {'img/s':>7} {'vs student':>10} {'losses ms':>10} {'losses/T fwd':>12}")
    for name, r in results["rows"].items():
        cells = [f"{1000 * r['step_s']:9.1f}", f"{r.get('images_per_s', float('nan')):7.2f}"]
        cells.append(f"{r['overhead_vs_student']:9.2f}x" if "overhead_vs_student" in r else f"{'':>10}")
        cells.append(f"{1000 * r['losses_s']:10.1f}" if "losses_s" in r else f"{'':>10}")
        cells.append(f"{100 * r['losses_vs_teacher_fwd']:11.1f}%" if "losses_s" in r else f"{'':>12}")
        print(f"{name:12} " + " ".join(cells))


if __name__ == "__main__":
    main()
