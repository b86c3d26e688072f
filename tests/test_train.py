"""The trainer: tiny runs end to end through distill/train.py, resume, two processes, faults, and its parts."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml

from segkd.distill.checkpoint import load_checkpoint, save_checkpoint
from segkd.distill.checks import check_classes
from segkd.distill.config import load_config
from segkd.distill.data import RunSampler, ShardSampler, TrainSet, augment, normalize
from segkd.distill.evaluation import sliding_window_logits
from segkd.distill.guard import MAX_NONFINITE, NonFiniteGuard, NonFiniteLossError
from segkd.distill.load import load_model
from segkd.distill.schedule import poly_lr_factor
from segkd.infer.meta import ModelMeta, preprocess

REPO = Path(__file__).resolve().parents[1]
TRAIN = REPO / "distill" / "train.py"
STUDENT = {"name": "deeplabv3_r18", "width": 0.125}


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def _run(cmd: list[str], cwd: Path = REPO, expect: int = 0) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == expect, f"exit {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return proc


def _train(config: Path, *overrides: str, expect: int = 0, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return _run([sys.executable, str(TRAIN), "--config", str(config), *overrides], cwd=cwd, expect=expect)


def _records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _state(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path).state_dict


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from segkd.scenes.street import generate_demo

    # 5 validation images: an odd count, so two processes get 3 and 2.
    return generate_demo(
        tmp_path_factory.mktemp("demo"), {"train": 6, "val": 5}, size=(64, 128), seed=0, classes="cityscapes"
    )


@pytest.fixture(scope="module")
def teacher_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny untrained 19-class teacher saved in the checkpoint format (the trainer only needs the file)."""
    from segkd.distill.models import build_model

    torch.manual_seed(1)
    model = build_model("deeplabv3_r18", num_classes=19, width=0.25)
    meta = ModelMeta(
        arch={"name": "deeplabv3_r18", "num_classes": 19, "width": 0.25},
        class_names=[f"c{i}" for i in range(19)],
        palette=[[i, i, i] for i in range(19)],
    )
    return save_checkpoint(tmp_path_factory.mktemp("teacher") / "teacher.pth", model, meta)


@pytest.fixture(scope="module")
def tiny_config(demo_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    cfg = {
        "data": {
            "dataset": "demo",
            "root": str(demo_root),
            "crop_size": [64, 128],
            "batch_size": 2,
            "num_workers": 0,
        },
        "student": STUDENT,
        "optim": {"lr": 0.02},
        "train": {"max_iters": 6, "eval_every": 3, "log_every": 1},
    }
    path = tmp_path_factory.mktemp("cfg") / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def distill_run(tiny_config: Path, teacher_ckpt: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """6 uninterrupted distillation iterations (KD on logits + CWD on projected features)."""
    run = tmp_path_factory.mktemp("runs") / "straight"
    _train(tiny_config, *_distill_overrides(teacher_ckpt), f"train.output_dir={run}")
    return run


def _distill_overrides(teacher: Path) -> list[str]:
    return [f"teacher.checkpoint={teacher}", "losses=[{name: kd}, {name: cwd, source: feat}]"]


@pytest.mark.slow
def test_plain_run_writes_a_complete_run_folder(tiny_config: Path, tmp_path: Path) -> None:
    run = tmp_path / "plain"
    proc = _train(tiny_config, f"train.output_dir={run}")
    assert {"config.yaml", "metrics.jsonl", "last.pth", "best.pth", "state"} <= {
        p.name for p in run.iterdir()
    }
    # The resolved config reads back to what ran.
    assert load_config(run / "config.yaml") == load_config(tiny_config, [f"train.output_dir={run}"])
    records = _records(run)
    losses = [r for r in records if "loss/total" in r]
    assert [r["iter"] for r in losses] == [1, 2, 3, 4, 5, 6]
    assert {"loss/ce", "loss/aux", "lr", "images_per_s"} <= set(losses[0])
    assert all(abs(r["loss/total"] - r["loss/ce"] - r["loss/aux"]) < 1e-5 for r in losses)
    evals = [r for r in records if "eval/mIoU" in r]
    assert [r["iter"] for r in evals] == [3, 6]
    # Poly decay per iteration: lr(it) = 0.02 * (1 - it/6) ** 0.9, logged as the lr of each step.
    assert losses[2]["lr"] == pytest.approx(0.02 * (1 - 2 / 6) ** 0.9)
    # Both checkpoints load into a model that runs; best is the best eval so far.
    model, meta = load_model(run / "best.pth")
    assert meta.num_classes == 19 and meta.input_size == [64, 128] and meta.arch["name"] == "deeplabv3_r18"
    x = torch.from_numpy(preprocess([np.zeros((64, 128, 3), np.uint8)], meta))
    assert model(x).shape == (1, 19, 64, 128)
    best = max(r["eval/mIoU"] for r in evals)
    assert load_checkpoint(run / "best.pth").provenance["metrics"]["mIoU"] == pytest.approx(best)
    assert load_checkpoint(run / "last.pth").provenance["iteration"] == 6
    tool = (
        "to_trt.py" if importlib.util.find_spec("tensorrt") else "to_onnx.py"
    )  # what this machine can run next
    assert f"next: python export/{tool} {run / 'best.pth'}" in proc.stdout
    assert "best mIoU" in proc.stdout
    if (
        importlib.util.find_spec("matplotlib") is not None
    ):  # the plot extra draws the curves at each evaluation
        curves = cv2.imread(str(run / "curves.png"))
        assert curves is not None and curves.shape[1] > curves.shape[0] > 200


@pytest.mark.slow
def test_distillation_saves_the_student_only(distill_run: Path, teacher_ckpt: Path) -> None:
    from segkd.distill.models import build_model

    losses = [r for r in _records(distill_run) if "loss/total" in r]
    assert {"loss/ce", "loss/aux", "loss/kd/kd", "loss/kd/cwd_feat"} <= set(losses[-1])
    ckpt = load_checkpoint(distill_run / "last.pth")
    fresh = build_model("deeplabv3_r18", num_classes=19, width=0.125).state_dict()
    assert set(ckpt.state_dict) == set(fresh)  # no teacher, no projector
    assert ckpt.provenance["teacher"] == str(teacher_ckpt)
    assert ckpt.meta.extra["method"] == "kd+cwd"
    load_model(distill_run / "best.pth")


@pytest.mark.slow
def test_stopped_and_resumed_run_matches_the_uninterrupted_one(
    tiny_config: Path, teacher_ckpt: Path, distill_run: Path, tmp_path: Path
) -> None:
    run = tmp_path / "resumed"
    args = [*_distill_overrides(teacher_ckpt), f"train.output_dir={run}"]
    first = _train(tiny_config, *args, "train.stop_after=3")
    assert "stopped at iteration 3/6" in first.stdout
    assert load_checkpoint(run / "last.pth").provenance["iteration"] == 3
    # As if killed while swapping in a newer state: the complete one is state.old, state.tmp is half written.
    (run / "state").rename(run / "state.old")
    (run / "state.tmp").mkdir()
    (run / "state.tmp" / "model.safetensors").write_bytes(b"truncated")
    second = _train(tiny_config, *args)
    assert "resumed" in second.stdout and "at iteration 3" in second.stdout
    straight, resumed = _state(distill_run / "last.pth"), _state(run / "last.pth")
    assert straight.keys() == resumed.keys()
    for key in straight:
        assert torch.allclose(straight[key].float(), resumed[key].float(), rtol=0, atol=1e-6), key
    # The resumed run logs the same losses for iterations 4..6 as the uninterrupted one.
    a = {r["iter"]: r["loss/total"] for r in _records(distill_run) if "loss/total" in r}
    b = {r["iter"]: r["loss/total"] for r in _records(run) if "loss/total" in r}
    assert a == pytest.approx(b, rel=1e-5)


@pytest.mark.slow
def test_accumulating_run_stopped_and_resumed_matches_the_uninterrupted_one(
    tiny_config: Path, tmp_path: Path
) -> None:
    # 4 images per optimizer step in 2 micro-batches of 2 (BatchNorm needs 2): resuming must skip 2 micro-batches
    # per finished iteration, not 1, or the resumed run trains on other images.
    accum = ["train.grad_accum=2", "data.batch_size=4", "train.max_iters=4", "train.eval_every=2"]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    _train(tiny_config, *accum, f"train.output_dir={straight}")
    first = _train(tiny_config, *accum, f"train.output_dir={resumed}", "train.stop_after=2")
    assert "stopped at iteration 2/4" in first.stdout
    second = _train(tiny_config, *accum, f"train.output_dir={resumed}")
    assert "resumed" in second.stdout and "at iteration 2" in second.stdout
    a, b = _state(straight / "last.pth"), _state(resumed / "last.pth")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    la = {r["iter"]: r["loss/total"] for r in _records(straight) if "loss/total" in r}
    lb = {r["iter"]: r["loss/total"] for r in _records(resumed) if "loss/total" in r}
    assert la == lb and sorted(la) == [1, 2, 3, 4]  # the same losses, iteration by iteration


def _cpu_bf16_problem() -> str | None:
    """Why this machine cannot train under CPU bf16 autocast, or None when it can."""
    try:
        conv = torch.nn.Conv2d(3, 4, 3)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = conv(torch.randn(2, 3, 8, 8))
        y.float().sum().backward()
    except RuntimeError as e:
        return f"CPU bf16 autocast fails with torch {torch.__version__}: {e}"
    if y.dtype != torch.bfloat16:
        return f"CPU autocast with torch {torch.__version__} leaves convolutions in {y.dtype}, not bfloat16"
    return None


@pytest.mark.slow
def test_bf16_run_on_cpu_trains_evaluates_and_saves_a_loadable_checkpoint(
    tiny_config: Path, tmp_path: Path
) -> None:
    if (problem := _cpu_bf16_problem()) is not None:
        pytest.skip(problem)
    run = tmp_path / "bf16"
    _train(tiny_config, "train.mixed_precision=bf16", "train.max_iters=2", "train.eval_every=2",
           f"train.output_dir={run}")  # fmt: skip
    records = _records(run)
    assert records[0]["mixed_precision"] == "bf16"
    losses = [r for r in records if "loss/total" in r]
    assert [r["iter"] for r in losses] == [1, 2] and all(np.isfinite(r["loss/total"]) for r in losses)
    evals = [r for r in records if "eval/mIoU" in r]
    assert [r["iter"] for r in evals] == [2] and 0 <= evals[0]["eval/mIoU"] <= 100  # percent
    # autocast runs the matrix products in bf16; the weights and the checkpoint stay float32
    state = _state(run / "last.pth")
    assert all(v.dtype == torch.float32 for v in state.values() if v.is_floating_point())
    model, meta = load_model(run / "last.pth")
    x = torch.from_numpy(preprocess([np.zeros((64, 128, 3), np.uint8)], meta))
    assert torch.isfinite(model(x)).all() and model(x).shape == (1, 19, 64, 128)


_DRIVER = """
import sys, torch
from segkd.distill.config import load_config
from segkd.distill.loop import train
cfg = load_config(sys.argv[1], sys.argv[2:])
result = train(cfg)
state = {k: v.detach().cpu() for k, v in result.student.state_dict().items()}
torch.save(state, f"{cfg.train.output_dir}/rank{result.process_index}_of_{result.num_processes}.pt")
"""


@pytest.mark.slow
def test_two_processes_agree_and_evaluate_like_one(
    tiny_config: Path, teacher_ckpt: Path, tmp_path: Path
) -> None:
    run = tmp_path / "ddp"
    driver = tmp_path / "driver.py"
    driver.write_text(_DRIVER)
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    overrides = [
        *_distill_overrides(teacher_ckpt),
        f"train.output_dir={run}",
        "data.batch_size=4",  # 2 images per process: BatchNorm needs 2
        "train.max_iters=4",
        "train.eval_every=4",
    ]
    _run([*launcher, str(driver), str(tiny_config), *overrides])
    # Two processes ran, each with half of the batch, and ended with identical weights.
    assert sorted(p.name for p in run.glob("rank*.pt")) == ["rank0_of_2.pt", "rank1_of_2.pt"]
    assert _records(run)[0]["num_processes"] == 2
    rank0 = torch.load(run / "rank0_of_2.pt", weights_only=True)
    rank1 = torch.load(run / "rank1_of_2.pt", weights_only=True)
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), key
    # The final evaluation ran over 2 processes (3 + 2 images); one process on the same weights agrees exactly.
    two = [r for r in _records(run) if "eval/mIoU" in r][-1]
    proc = _train(tiny_config, "--eval", str(run / "last.pth"))
    one = json.loads(proc.stdout.strip().splitlines()[-1])
    assert one["num_processes"] == 1
    for key in ("mIoU", "mAcc", "aAcc"):
        assert two[f"eval/{key}"] == pytest.approx(one[key], abs=1e-9)
    assert len(two["eval/IoU"]) == len(one["IoU"]) == len(one["class_IoU"]) == 19
    assert (
        list(one["class_IoU"].values()) == one["IoU"] and "mIoU" in proc.stderr
    )  # named, and a table to read
    for a, b in zip(two["eval/IoU"], one["IoU"]):
        assert (a is None and b is None) or a == pytest.approx(b, abs=1e-9)


@pytest.mark.slow
def test_non_finite_loss_skips_steps_then_stops(
    tiny_config: Path, teacher_ckpt: Path, tmp_path: Path
) -> None:
    run = tmp_path / "nan"
    proc = _train(
        tiny_config,
        f"teacher.checkpoint={teacher_ckpt}",
        "losses=[{name: kd, weight: .nan}]",
        f"train.output_dir={run}",
        "train.max_iters=20",
        "train.eval_every=10",
        expect=2,
    )
    assert proc.stderr.count("step skipped") == MAX_NONFINITE
    assert f"non-finite for {MAX_NONFINITE} iterations in a row" in proc.stderr and "optim.lr" in proc.stderr
    assert not (run / "last.pth").exists()


@pytest.mark.slow
def test_class_count_mismatch_fails_before_any_compute(tiny_config: Path, tmp_path: Path) -> None:
    from segkd.distill.models import build_model

    meta = ModelMeta(arch={"name": "pspnet_r18", "num_classes": 5, "width": 0.125}, class_names=list("abcde"),
                     palette=[[0, 0, 0]] * 5)  # fmt: skip
    teacher = save_checkpoint(
        tmp_path / "t5.pth", build_model("pspnet_r18", num_classes=5, width=0.125), meta
    )
    run = tmp_path / "mismatch"
    proc = _train(
        tiny_config,
        f"teacher.checkpoint={teacher}",
        "losses=[{name: kd}]",
        "student.num_classes=21",
        f"train.output_dir={run}",
        expect=2,
    )
    assert "class counts disagree" in proc.stderr
    assert "student.num_classes=21" in proc.stderr and "teacher predicts 5 classes" in proc.stderr
    assert not run.exists()  # nothing was written, nothing computed


def test_without_config_it_points_at_the_commands_that_make_the_demo(tmp_path: Path) -> None:
    proc = _run([sys.executable, str(TRAIN)], cwd=tmp_path, expect=2)
    assert "segkd demo-data --root data/demo" in proc.stderr
    # the form that was typed (a file, one process): it ends in one line, where accelerate's ends in a traceback
    assert "python distill/train.py --config configs/demo/teacher.yaml" in proc.stderr


# ---------------------------------------------------------------------------------------------------------------
# Parts, in process


def test_poly_schedule_with_warmup() -> None:
    assert poly_lr_factor(0, max_iters=100, power=0.9) == 1.0
    assert poly_lr_factor(50, max_iters=100, power=0.9) == pytest.approx(0.5**0.9)
    assert poly_lr_factor(100, max_iters=100, power=0.9) == 0.0
    # Warm-up from 0.1 over 10 iterations, on top of the decay.
    assert poly_lr_factor(0, max_iters=100, power=1.0, warmup_iters=10) == pytest.approx(0.1)
    assert poly_lr_factor(5, max_iters=100, power=1.0, warmup_iters=10) == pytest.approx(0.55 * 0.95)
    assert poly_lr_factor(10, max_iters=100, power=1.0, warmup_iters=10) == pytest.approx(0.9)


def test_run_sampler_is_seeded_epoch_by_epoch_and_extends_as_a_prefix() -> None:
    draws = list(RunSampler(4, 10, seed=7))
    assert len(draws) == 10 and len(set(draws)) == 10
    assert sorted(d % 4 for d in draws[:4]) == [0, 1, 2, 3]  # each epoch is a permutation
    assert sorted(d // 4 for d in draws) == [0] * 4 + [1] * 4 + [2] * 2
    assert list(RunSampler(4, 10, seed=7)) == draws
    assert list(RunSampler(4, 30, seed=7))[:10] == draws  # a longer run starts with the same draws
    assert list(RunSampler(4, 10, seed=8)) != draws


def test_shard_sampler_splits_without_padding() -> None:
    shards = [list(ShardSampler(5, rank, 2)) for rank in range(2)]
    assert shards == [[0, 2, 4], [1, 3]]


def test_augment_pads_with_ignore_and_crops_to_size() -> None:
    image = np.full((20, 30, 3), 200, np.uint8)
    label = np.ones((20, 30), np.uint8)
    rng = np.random.default_rng(0)
    img, lab = augment(image, label, rng, (32, 48), scale_range=(1.0, 1.0), flip=False)
    assert img.shape == (32, 48, 3) and lab.shape == (32, 48)
    assert (lab[:20, :30] == 1).all() and (lab[20:] == 255).all() and (lab[:, 30:] == 255).all()
    assert (img[20:] == 0).all() and (img[:20, :30] == 200).all()
    # Scaled up 2x then cropped: every label pixel is a real one.
    img, lab = augment(image, label, rng, (16, 16), scale_range=(2.0, 2.0))
    assert lab.shape == (16, 16) and (lab == 1).all()


def test_augmentation_depends_on_the_draw_only(demo_root: Path) -> None:
    from segkd.infer.datasets import build_dataset

    ds = TrainSet(build_dataset("demo", demo_root, "train"), (32, 64), seed=3)
    a, b = ds[7], ds[7]
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert a[0].shape == (3, 32, 64) and a[0].dtype == torch.uint8 and a[1].shape == (32, 64)
    assert not torch.equal(ds[1][0], ds[7][0])  # same sample (7 % 6), another draw, another crop


def test_normalize_matches_the_deploy_preprocessing() -> None:
    image = np.random.default_rng(0).integers(0, 256, (8, 12, 3), dtype=np.uint8)
    for order, mean, std in (
        ("RGB", [123.7, 116.3, 103.5], [58.4, 57.1, 57.4]),
        ("BGR", [104.0, 116.7, 122.7], [1, 1, 1]),
    ):
        meta = ModelMeta(
            arch={"name": "x"},
            class_names=["a"],
            palette=[[0, 0, 0]],
            mean=mean,
            std=std,
            channel_order=order,
        )
        tensor = torch.from_numpy(image.transpose(2, 0, 1).copy())[None]
        got = normalize(tensor, meta.mean, meta.std, meta.channel_order).numpy()
        np.testing.assert_allclose(got, preprocess([image], meta), rtol=1e-6)


def test_non_finite_guard_counts_consecutive_steps_only() -> None:
    guard = NonFiniteGuard(limit=3)
    for it in range(1, 3):
        guard.update(False, it, {"total": float("nan")})
    guard.update(True, 3, {"total": 1.0})
    assert guard.streak == 0
    guard.update(False, 4, {"total": float("inf")})
    guard.update(False, 5, {"total": float("inf")})
    with pytest.raises(NonFiniteLossError, match="3 iterations in a row"):
        guard.update(False, 6, {"total": float("nan"), "kd/cwd": float("nan")})


def test_class_check_names_every_disagreement(demo_root: Path) -> None:
    from segkd.infer.datasets import build_dataset

    ds = build_dataset("demo", demo_root, "val")
    assert check_classes(ds, None, None) == 19
    meta = ModelMeta(arch={"name": "x"}, class_names=["a", "b"], palette=[[0, 0, 0]] * 2)
    with pytest.raises(ValueError, match=r"(?s)student\.num_classes=20.*teacher predicts 2 classes"):
        check_classes(ds, meta, 20)


def test_sliding_window_covers_the_image_and_averages_overlaps() -> None:
    torch.manual_seed(0)
    pointwise = torch.nn.Conv2d(3, 4, 1)  # no context: windows must reproduce the whole-image output
    x = torch.randn(2, 3, 37, 50)
    with torch.no_grad():
        slid = sliding_window_logits(pointwise, x, 4, [16, 24], [10, 15])
        np.testing.assert_allclose(slid.numpy(), pointwise(x).numpy(), rtol=1e-5, atol=1e-6)
        # A window larger than the image is one forward of the whole image.
        assert torch.allclose(
            sliding_window_logits(pointwise, x, 4, [64, 64], [32, 32]), pointwise(x), atol=1e-6
        )

    calls = []

    def ones(window: torch.Tensor) -> torch.Tensor:
        calls.append(tuple(window.shape[-2:]))
        return torch.ones(window.shape[0], 1, *window.shape[-2:])

    out = sliding_window_logits(ones, torch.zeros(1, 3, 10, 10), 1, [6, 6], [4, 4])
    assert calls == [(6, 6)] * 4 and torch.equal(
        out, torch.ones(1, 1, 10, 10)
    )  # windows at 0 and 4, overlap averaged


# ---------------------------------------------------------------------------------------------------------------
# The adversarial term (a discriminator with its own optimizer)


def _adv_overrides(teacher: Path) -> list[str]:
    # 512x512 crops: the discriminator needs 64x64 logits at stride 8 (the demo images are padded up to it).
    return [*_distill_overrides(teacher)[:1], "losses=[{name: kd}, {name: skd, source: feat}]",
            "adversarial.enabled=true", "adversarial.width=8", "data.crop_size=[512,512]", "train.max_iters=4",
            "train.eval_every=2"]  # fmt: skip


def test_adversarial_objectives_by_hand() -> None:
    from segkd.distill.adversarial import Adversarial

    class Score(torch.nn.Module):  # D(z) = mean over channels: outputs known by hand
        def forward(self, z: torch.Tensor) -> torch.Tensor:
            return z.mean(1, keepdim=True)

    adv = Adversarial(2, torch.device("cpu"), lambda_adv=0.001, lambda_d=0.1)
    adv.discriminator = Score()
    s = torch.tensor([[[[0.5]], [[1.5]]], [[[-3.0]], [[-1.0]]]], requires_grad=True)  # D: 1.0, -2.0
    t = torch.tensor([[[[4.0]], [[0.0]]], [[[0.0]], [[-1.0]]]])  # D: 2.0, -0.5
    g = adv.generator_loss(s, t)
    assert g.item() == pytest.approx(0.001 * -(1.0 - 2.0) / 2)
    g.backward()
    assert torch.allclose(s.grad, torch.full_like(s, -0.001 / 4))  # d(-mean)/dz through the channel mean
    # hinge: real relu(1 - [2, -0.5]) = [0, 1.5]; fake relu(1 + [1, -2]) = [2, 0]
    assert adv.discriminator_loss().item() == pytest.approx(0.1 * (0.75 + 1.0))


def test_discriminator_scores_cirkd_sized_logits() -> None:
    from segkd.distill.adversarial import Discriminator

    d = Discriminator(19, width=8)
    assert d(torch.randn(2, 19, 64, 128)).shape == (2, 1, 1, 5)  # 512x1024 crops at 1/8: CIRKD's D output
    convs = [m for m in d.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (4, 4)]
    assert [(c.in_channels, c.out_channels, c.stride) for c in convs] == [
        (19, 8, (2, 2)), (8, 16, (2, 2)), (16, 32, (2, 2)), (32, 64, (2, 2)), (64, 1, (1, 1))]  # fmt: skip


@pytest.mark.slow
def test_adversarial_run_trains_saves_and_resumes_bit_exactly(
    tiny_config: Path, teacher_ckpt: Path, tmp_path: Path
) -> None:
    straight, resumed = tmp_path / "adv", tmp_path / "adv_resumed"
    _train(tiny_config, *_adv_overrides(teacher_ckpt), f"train.output_dir={straight}")
    losses = [r for r in _records(straight) if "loss/total" in r]
    assert {"loss/adv", "loss/adv_d", "loss/kd/skd"} <= set(losses[0])
    # the student's adversarial term is part of total; the discriminator's objective is not
    assert all(abs(r["loss/total"] - sum(v for k, v in r.items() if k.startswith("loss/") and k not in
                                         ("loss/total", "loss/adv_d"))) < 1e-5 for r in losses)  # fmt: skip
    assert {"discriminator.pt", "optimizer_d.pt"} <= {p.name for p in (straight / "state").iterdir()}
    d0 = torch.load(straight / "state" / "discriminator.pt", weights_only=True)
    _train(tiny_config, *_adv_overrides(teacher_ckpt), f"train.output_dir={resumed}", "train.stop_after=2")
    _train(tiny_config, *_adv_overrides(teacher_ckpt), f"train.output_dir={resumed}")
    a, b = _state(straight / "last.pth"), _state(resumed / "last.pth")
    assert all(torch.equal(a[k], b[k]) for k in a)
    d1 = torch.load(resumed / "state" / "discriminator.pt", weights_only=True)
    assert d0.keys() == d1.keys() and all(torch.equal(d0[k], d1[k]) for k in d0)
    fresh = {k: v for k, v in _records(straight)[-1].items()}
    assert fresh == {k: v for k, v in _records(resumed)[-1].items()}  # the last evaluation, identical


_ADV_DRIVER = """
import sys, torch
from segkd.distill.config import load_config
from segkd.distill.loop import train
cfg = load_config(sys.argv[1], sys.argv[2:])
result = train(cfg)
state = {k: v.detach().cpu() for k, v in result.discriminator.state_dict().items()}
torch.save(state, f"{cfg.train.output_dir}/d_rank{result.process_index}_of_{result.num_processes}.pt")
"""


@pytest.mark.slow
def test_adversarial_run_on_two_processes_keeps_one_discriminator(
    tiny_config: Path, teacher_ckpt: Path, tmp_path: Path
) -> None:
    run = tmp_path / "adv_ddp"
    driver = tmp_path / "adv_driver.py"
    driver.write_text(_ADV_DRIVER)
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    _run([*launcher, str(driver), str(tiny_config), *_adv_overrides(teacher_ckpt), f"train.output_dir={run}",
          "data.batch_size=4", "train.max_iters=3"])  # fmt: skip
    assert _records(run)[0]["num_processes"] == 2
    d0 = torch.load(run / "d_rank0_of_2.pt", weights_only=True)
    d1 = torch.load(run / "d_rank1_of_2.pt", weights_only=True)
    assert d0.keys() == d1.keys() and all(torch.equal(d0[k], d1[k]) for k in d0)
    start = torch.load(run / "state" / "discriminator.pt", weights_only=True)
    assert all(torch.equal(start[k], d0[k]) for k in d0)  # what was saved is what both processes hold


@pytest.mark.slow
@pytest.mark.parametrize("student", ["pidnet_s", "bisenetv2"])
def test_a_real_time_student_distils_with_its_official_loss_and_exports_one_output(
    tiny_config: Path, teacher_ckpt: Path, tmp_path: Path, student: str
) -> None:
    # student=NAME composes configs/_students/NAME.yaml (the official task loss, the builder's defaults: the
    # config's R18 width is dropped); its fixed 1/8 stride is compared with any teacher's, resized to it.
    run = tmp_path / student
    _train(tiny_config, f"student={student}", *_distill_overrides(teacher_ckpt), f"train.output_dir={run}",
           "train.max_iters=2", "train.eval_every=2")  # fmt: skip
    ckpt = load_checkpoint(run / "best.pth")
    assert ckpt.meta.arch["name"] == student and "width" not in ckpt.meta.arch
    proc = _run([sys.executable, str(REPO / "export" / "to_onnx.py"), str(run / "best.pth"), "--exporter",
                 "torchscript", "--verify-count", "2"])  # fmt: skip
    assert "verified:" in proc.stdout
    import onnx

    assert len(onnx.load(str(run / "best.onnx")).graph.output) == 1  # the auxiliary heads are training-only
