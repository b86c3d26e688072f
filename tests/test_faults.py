"""Fault injection against the trainer: planted pickles, NaN, kills, Ctrl-C, a full disk, two writers, cut files.

Runs alone: ``PYTHONPATH=$PWD python -m pytest -q tests/test_faults.py``. Every test drives the commands a user
types (``distill/train.py``, ``accelerate launch``) on a tiny demo dataset, or the one function that a fault
reaches, and asserts what the user is left with: the files in the run folder and the last lines printed.
"""

from __future__ import annotations

import contextlib
import errno
import importlib.util
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from filelock import FileLock
from planted import Payload

from segkd.distill.checkpoint import load_checkpoint
from segkd.distill.config import ConfigError, load_config
from segkd.distill.run_state import RunStateError, load_run_state, save_run_state

REPO = Path(__file__).resolve().parents[1]
TRAIN = REPO / "distill" / "train.py"


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def _train(config: Path, *overrides: str, expect: int = 0) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, str(TRAIN), "--config", str(config), *overrides], cwd=REPO,
                          env=_env(), capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == expect, f"exit {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return proc


def _records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _all_finite(path: Path) -> bool:
    return all(
        torch.isfinite(v).all() for v in load_checkpoint(path).state_dict.values() if v.is_floating_point()
    )


@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from segkd.scenes.street import generate_demo

    root = generate_demo(
        tmp_path_factory.mktemp("demo"), {"train": 4, "val": 2}, size=(64, 128), seed=0, classes="cityscapes"
    )
    cfg = {
        "data": {
            "dataset": "demo",
            "root": str(root),
            "crop_size": [64, 128],
            "batch_size": 2,
            "num_workers": 0,
        },
        "student": {"name": "deeplabv3_r18", "width": 0.125},
        "optim": {"lr": 0.02},
        "train": {"max_iters": 4, "eval_every": 2, "log_every": 1},
    }
    path = tmp_path_factory.mktemp("cfg") / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def finished_run(tiny_config: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("runs") / "done"
    _train(tiny_config, f"train.output_dir={run}")
    return run


# ------------------------------------------------------------------------------------------- planted pickles


def _plant(path: Path, marker: Path) -> None:
    path.write_bytes(pickle.dumps({"state": Payload(marker)}))


@pytest.mark.slow
def test_a_pickle_planted_in_every_state_file_never_runs(
    finished_run: Path, tiny_config: Path, tmp_path: Path
) -> None:
    import shutil

    run = tmp_path / "copied"
    shutil.copytree(finished_run, run)
    marker = tmp_path / "pwned"
    files = sorted(p for p in (run / "state").iterdir() if p.is_file())
    assert {"model.pt", "optimizer.pt", "progress.json", "rng_0.pt"} <= {p.name for p in files}
    for f in files:
        _plant(f, marker)
    (run / "state" / "custom_checkpoint_0.pkl").write_bytes(
        pickle.dumps(Payload(marker))
    )  # Accelerate's name
    proc = _train(tiny_config, f"train.output_dir={run}", "train.max_iters=6", expect=2)
    assert not marker.exists()
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: ") and "progress.json" in proc.stderr


def _fake_accelerator() -> SimpleNamespace:
    return SimpleNamespace(
        num_processes=1, process_index=0, is_main_process=True, wait_for_everyone=lambda: None
    )


@pytest.mark.parametrize("name", ["model.pt", "optimizer.pt", "rng_0.pt", "progress.json"])
def test_each_planted_state_file_is_refused_with_its_name(name: str, tmp_path: Path) -> None:
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.BatchNorm2d(4))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    acc = _fake_accelerator()
    state = tmp_path / "state"
    save_run_state(acc, state, {"model": model, "optimizer": optimizer}, {"iteration": 3}, model)
    marker = tmp_path / "pwned"
    _plant(state / name, marker)
    with pytest.raises(RunStateError, match=name.replace(".", r"\.")) as err:
        load_run_state(acc, state, {"model": model, "optimizer": optimizer}, model)
    assert not marker.exists()
    assert "train.resume" in str(err.value)  # the message says what to do instead


def test_run_state_round_trips_every_random_stream(tmp_path: Path) -> None:
    import random

    import numpy as np

    model = torch.nn.Linear(2, 2)
    model.rng = torch.Generator().manual_seed(5)  # a loss's private generator
    acc = _fake_accelerator()
    save_run_state(acc, tmp_path / "s", {"model": model}, {"iteration": 1}, model)
    expected = (torch.rand(3), np.random.rand(3), random.random(), torch.rand(3, generator=model.rng))
    torch.manual_seed(99), np.random.seed(99), random.seed(99), model.rng.manual_seed(99)
    assert load_run_state(acc, tmp_path / "s", {"model": model}, model)["iteration"] == 1
    got = (torch.rand(3), np.random.rand(3), random.random(), torch.rand(3, generator=model.rng))
    assert torch.equal(expected[0], got[0]) and np.array_equal(expected[1], got[1])
    assert expected[2] == got[2] and torch.equal(expected[3], got[3])


def test_no_unpickling_loader_anywhere() -> None:
    for folder in ("distill", "export", "infer"):
        for path in (REPO / folder).rglob("*.py"):
            text = path.read_text()
            for bad in ("load_state(", "pickle.load", "weights_only=False"):
                assert bad not in text, f"{path}: {bad}"


# ------------------------------------------------------------------------------------------- never save NaN


class _FakeAccelerator:
    """The few Accelerator members a step uses, for one process."""

    num_processes, sync_gradients = 1, True

    def accumulate(self, _model: torch.nn.Module) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def autocast(self) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    def reduce(self, t: torch.Tensor, reduction: str) -> torch.Tensor:
        return t


def _step_run(weight: float) -> SimpleNamespace:
    from segkd.distill.models import build_model
    from segkd.distill.step import DistillStep
    from segkd.infer.meta import ModelMeta

    torch.manual_seed(0)
    student = build_model("deeplabv3_r18", num_classes=3, width=0.125)
    step = DistillStep(student, None, weight, 255)
    meta = ModelMeta(arch={"name": "x"}, class_names=list("abc"), palette=[[0, 0, 0]] * 3)
    cfg = SimpleNamespace(train=SimpleNamespace(grad_accum=1))
    optimizer = torch.optim.SGD(step.parameters(), lr=0.1, momentum=0.9)
    return SimpleNamespace(accelerator=_FakeAccelerator(), cfg=cfg, step=step.train(), optimizer=optimizer,
                           meta=meta, teacher=None, teacher_meta=None, adversarial=None)  # fmt: skip


@pytest.mark.parametrize("weight, stepped", [(float("nan"), False), (0.4, True)])
def test_a_skipped_step_leaves_the_model_exactly_as_it_was(weight: float, stepped: bool) -> None:
    from segkd.distill.step import optimizer_step

    run = _step_run(weight)  # aux weight nan: the total loss is nan, the forward still ran
    before = {k: v.clone() for k, v in run.step.state_dict().items()}
    images = torch.randint(0, 255, (2, 3, 32, 32), dtype=torch.uint8)
    labels = torch.randint(0, 3, (2, 32, 32))
    _, did_step = optimizer_step(run, iter([(images, labels)]))
    assert did_step is stepped
    after = run.step.state_dict()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    if stepped:  # the same forward on a finite loss moves weights and BatchNorm statistics
        assert any("running_mean" in k for k in changed) and any("weight" in k for k in changed)
    else:
        assert changed == []


@pytest.mark.slow
def test_divergence_never_writes_a_non_finite_checkpoint(tiny_config: Path, tmp_path: Path) -> None:
    run = tmp_path / "diverged"
    proc = _train(tiny_config, f"train.output_dir={run}", "optim.lr=1e6", "train.max_iters=12",
                  "train.eval_every=1", expect=2)  # fmt: skip
    for name in ("last.pth", "best.pth"):
        if (run / name).exists():
            assert _all_finite(run / name), name
    if (run / "state" / "model.pt").exists():
        state = torch.load(run / "state" / "model.pt", weights_only=True)
        assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "Traceback" not in proc.stderr
    assert "optim.lr=100000" in last and f"--config {run / 'config.yaml'}" in last  # the recovering command


# ------------------------------------------------------------------------------------------- resume rules


@pytest.mark.slow
def test_extending_a_finished_run_continues_the_longer_schedule(finished_run: Path, tiny_config: Path,
                                                                 tmp_path: Path) -> None:  # fmt: skip
    import shutil

    run = tmp_path / "extended"
    shutil.copytree(finished_run, run)
    (run / ".last.pth.killed.tmp").write_bytes(b"half")  # a write a kill interrupted
    proc = _train(tiny_config, f"train.output_dir={run}", "train.max_iters=8", "optim.lr=0.01")
    assert "train.max_iters: 4 -> 8" in proc.stderr and "optim.lr: 0.02 -> 0.01" in proc.stderr
    lrs = {r["iter"]: r["lr"] for r in _records(run) if "lr" in r}
    assert lrs[5] == pytest.approx(0.01 * (1 - 4 / 8) ** 0.9)  # not 0: the schedule is the 8-iteration one
    assert load_config(run / "config.yaml").train.max_iters == 8  # the recorded config is the one that ran
    assert load_checkpoint(run / "last.pth").provenance["config"]["optim"]["lr"] == 0.01
    assert not list(run.glob(".*.tmp"))


@pytest.mark.slow
def test_a_changed_model_is_refused_in_the_same_folder_with_a_new_run_command(
    finished_run: Path, tiny_config: Path
) -> None:
    # The state holds the old student's weights: forking it into another student cannot load, so no fork is offered.
    before = (finished_run / "metrics.jsonl").read_text()
    proc = _train(tiny_config, f"train.output_dir={finished_run}", "student.width=0.25", expect=2)
    assert (
        "student.width: 0.125 -> 0.25" in proc.stderr
        and f"train.output_dir={finished_run}-new" in proc.stderr
    )
    assert (finished_run / "metrics.jsonl").read_text() == before


@pytest.mark.slow
def test_a_fresh_start_never_replaces_an_earlier_run(finished_run: Path, tiny_config: Path) -> None:
    best = (finished_run / "best.pth").read_bytes()
    metrics = (finished_run / "metrics.jsonl").read_text()
    proc = _train(tiny_config, f"train.output_dir={finished_run}", "train.resume=none", expect=2)
    assert "train.overwrite=true" in proc.stderr.strip().splitlines()[-1]
    assert (finished_run / "best.pth").read_bytes() == best
    assert (finished_run / "metrics.jsonl").read_text() == metrics


# ------------------------------------------------------------------------------------------- one writer


@pytest.mark.slow
def test_a_second_writer_is_refused_and_a_stale_lock_taken_over(tiny_config: Path, tmp_path: Path) -> None:
    run = tmp_path / "locked"
    run.mkdir()
    with FileLock(run / ".lock", timeout=0):  # a live trainer holds the lock and names itself beside it
        (run / ".lock.owner").write_text("process 1234 on elsewhere")
        proc = _train(tiny_config, f"train.output_dir={run}", "train.max_iters=1", expect=2)
        assert "is being written by process 1234 on elsewhere" in proc.stderr
        assert not (run / "metrics.jsonl").exists()
    # The holder is gone (its OS lock with it), its owner file stays: the next trainer takes it over.
    proc = _train(tiny_config, f"train.output_dir={run}", "train.max_iters=1", "train.eval_every=1")
    assert "took over the lock" in proc.stderr and "from process 1234 on elsewhere" in proc.stderr
    assert (run / "last.pth").is_file()
    assert (run / ".lock.owner").read_text() == ""  # released: nobody holds it


def _wait_for(predicate, timeout: float = 120.0) -> None:  # noqa: ANN001
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.2)


def _trained_iterations(run: Path) -> int:
    path = run / "metrics.jsonl"
    if not path.is_file():
        return 0
    return sum(1 for line in path.read_text().splitlines() if '"loss/total"' in line)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("sig", "code", "what"),
    [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated (SIGTERM)")],
    ids=["ctrl-c", "sigterm"],
)
def test_ctrl_c_or_sigterm_saves_the_state_prints_the_resume_command_and_exits(
    tiny_config: Path, tmp_path: Path, sig: int, code: int, what: str
) -> None:
    # SIGTERM is what Slurm, Kubernetes, docker stop and systemd send: it must not lose the run.
    run = tmp_path / "interrupted"
    cmd = [sys.executable, str(TRAIN), "--config", str(tiny_config), f"train.output_dir={run}",
           "train.max_iters=400", "train.eval_every=400"]  # fmt: skip
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    _wait_for(lambda: _trained_iterations(run) >= 2)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err[-3000:]
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"stopped: {what} at iteration") and f"--config {run / 'config.yaml'}" in last
    saved = json.loads((run / "state" / "progress.json").read_text())["iteration"]
    assert saved >= 2 and load_checkpoint(run / "last.pth").provenance["iteration"] == saved


@pytest.mark.slow
def test_the_trainer_stops_after_saving_when_its_launcher_is_killed(
    tiny_config: Path, tmp_path: Path
) -> None:
    run = tmp_path / "orphan"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "1",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", str(TRAIN),
           "--config", str(tiny_config), f"train.output_dir={run}", "train.max_iters=400",
           "train.eval_every=400"]  # fmt: skip
    launcher = subprocess.Popen(
        cmd, cwd=REPO, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    _wait_for(lambda: _trained_iterations(run) >= 2)
    children = [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit() and _ppid(p) == launcher.pid]
    assert len(children) == 1
    launcher.kill()  # kill -9 of `accelerate launch`
    launcher.wait()
    _wait_for(lambda: not Path(f"/proc/{children[0]}").exists() or _zombie(children[0]), timeout=120)
    saved = json.loads((run / "state" / "progress.json").read_text())["iteration"]
    assert saved >= 2 and not (run / "state.tmp").exists()


def _ppid(proc: Path) -> int:
    try:
        return int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return -1


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


# ------------------------------------------------------------------------------------------- full disk


def test_a_full_disk_keeps_the_last_good_state_and_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import segkd.distill.run_state as run_state
    from segkd.distill.run import Progress
    from segkd.distill.run_dir import DiskFullError, save_state

    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    acc = SimpleNamespace(num_processes=1, process_index=0, is_main_process=True,
                          wait_for_everyone=lambda: None, unwrap_model=lambda m: m)  # fmt: skip
    run = SimpleNamespace(accelerator=acc, run_dir=tmp_path, step=model, progress=Progress(iteration=3),
                          components=lambda: {"model": model, "optimizer": optimizer})  # fmt: skip
    save_state(run)
    good = (tmp_path / "state" / "progress.json").read_text()
    real = run_state._save_tensors

    def full(obj: object, path: Path) -> None:
        if path.name == "optimizer.pt":
            path.write_bytes(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        real(obj, path)

    monkeypatch.setattr(run_state, "_save_tensors", full)
    run.progress.iteration = 4
    with pytest.raises(DiskFullError) as err:
        save_state(run)
    message = str(err.value)
    assert "\n" not in message and "disk full while writing" in message and "MiB free" in message
    assert not (tmp_path / "state.tmp").exists()
    assert (tmp_path / "state" / "progress.json").read_text() == good


@pytest.mark.parametrize("free_mib, full", [(0.5, True), (10_000, False)], ids=["no-room", "room"])
def test_a_full_disk_is_told_by_free_space_not_by_torchs_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, free_mib: float, full: bool
) -> None:
    # torch 2.13's zip writer reports a full disk as "[enforce fail at inline_container.cc:672] . unexpected pos";
    # the same text could come from another failure, so the free space decides.
    import shutil as sh

    import segkd.distill.run_state as run_state
    from segkd.distill.run import Progress
    from segkd.distill.run_dir import DiskFullError, save_state

    model = torch.nn.Linear(2, 2)
    acc = SimpleNamespace(num_processes=1, process_index=0, is_main_process=True,
                          wait_for_everyone=lambda: None, unwrap_model=lambda m: m)  # fmt: skip
    run = SimpleNamespace(accelerator=acc, run_dir=tmp_path, step=model, progress=Progress(iteration=3),
                          components=lambda: {"model": model})  # fmt: skip

    def cut(obj: object, path: Path) -> None:
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 4736 vs 4624")

    usage = sh.disk_usage(tmp_path)
    monkeypatch.setattr(run_state, "_save_tensors", cut)
    monkeypatch.setattr(run_state.shutil, "disk_usage", lambda p: usage._replace(free=int(free_mib * 2**20)))
    if full:
        with pytest.raises(DiskFullError, match="disk full while writing"):
            save_state(run)
    else:
        with pytest.raises(RuntimeError, match="unexpected pos"):
            save_state(run)
    assert not (tmp_path / "state.tmp").exists()


# ------------------------------------------------------------------------------------------- refused up front


@pytest.mark.parametrize(
    "override, message",
    [
        ("optim.lr=.nan", "optim.lr must be positive"),
        ("optim.lr=.inf", "optim.lr must be a finite number"),
        ("optim.momentum=.nan", "optim.momentum must be a finite number"),
        ("data.crop_size=[4,64]", "smaller than the model's output stride 8"),
        ("eval.crop_size=[16,4]", "smaller than the model's output stride 8"),
    ],
)
def test_impossible_settings_are_refused_before_anything_runs(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        load_config(None, [override])


def test_fp16_on_a_cpu_is_refused_with_the_alternative() -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: fp16 is valid here")
    from segkd.distill.build import make_accelerator

    cfg = load_config(None, ["train.mixed_precision=fp16"])
    with pytest.raises(ConfigError, match="train.mixed_precision=bf16"):
        make_accelerator(cfg, Path("."))


# ------------------------------------------------------------------------------------------- cut files


def test_compare_reads_a_run_whose_last_metrics_line_was_cut(tmp_path: Path) -> None:
    from segkd.distill.compare import read_run

    lines = [{"iter": 2, "eval/mIoU": 40.0}, {"iter": 4, "eval/mIoU": 30.0}]
    text = "".join(json.dumps(r) + "\n" for r in lines) + '{"iter": 6, "eval/mI'
    (tmp_path / "metrics.jsonl").write_text(text)
    assert read_run(tmp_path) == (40.0, 30.0)


# ------------------------------------------------------------------------------------------- bad data


def _cityscapes_train_ids(root: Path, values: list[int]) -> Path:
    """One Cityscapes sample whose trainIds label holds ``values`` (one per row)."""
    import cv2
    import numpy as np

    (root / "leftImg8bit" / "val" / "c").mkdir(parents=True)
    (root / "gtFine" / "val" / "c").mkdir(parents=True)
    cv2.imwrite(
        str(root / "leftImg8bit/val/c/c_000000_000000_leftImg8bit.png"),
        np.zeros((len(values), 4, 3), np.uint8),
    )
    label = np.repeat(np.array(values, np.uint8)[:, None], 4, axis=1)
    cv2.imwrite(str(root / "gtFine/val/c/c_000000_000000_gtFine_labelTrainIds.png"), label)
    return root


@pytest.mark.parametrize("name", ["cityscapes", "cocostuff"])
def test_train_ids_past_the_classes_are_ignored_like_every_other_reader(name: str, tmp_path: Path) -> None:
    from segkd.infer.datasets import DATASETS, cityscapes, cocostuff

    k = len(DATASETS.get(name).class_names)
    tables = {
        "cityscapes": cityscapes._LABEL_TYPES["trainIds"][1],
        "cocostuff": cocostuff._LABEL_TYPES["trainIds"][0],
    }
    mapped = tables[name]
    assert mapped[k - 1] == k - 1 and mapped[0] == 0
    assert (mapped[k:] == 255).all()  # e.g. a labelIds value 33 in a trainIds file is not class 33


def test_label_type_comes_from_the_training_config(tmp_path: Path) -> None:
    from segkd.distill.checks import load_datasets

    root = _cityscapes_train_ids(tmp_path / "cs", [0, 18, 19, 33, 255])
    cfg = load_config(None, ["data.dataset=cityscapes", f"data.root={root}", "data.train_split=val",
                             "data.label_type=trainIds"])  # fmt: skip
    _, val = load_datasets(cfg)
    assert val[0][1][:, 0].tolist() == [0, 18, 255, 255, 255]
    bad = load_config(None, ["data.dataset=cityscapes", f"data.root={root}", "data.reader={colour: true}"])
    with pytest.raises(ConfigError, match="data.reader"):
        load_datasets(bad)


def test_folder_classes_sharing_a_colour_are_refused(tmp_path: Path) -> None:
    from segkd.infer.datasets import DatasetError
    from segkd.infer.datasets.folder import read_classes

    (tmp_path / "classes.txt").write_text("road 128 64 128\nsky 70 130 180\nlane 128 64 128\n")
    with pytest.raises(DatasetError, match=r"road, lane share the colour \[128, 64, 128\]"):
        read_classes(tmp_path / "classes.txt")


def _demo_copy(tiny_config: Path, tmp_path: Path) -> tuple[Path, list[Path]]:
    import shutil

    root = Path(yaml.safe_load(tiny_config.read_text())["data"]["root"])
    copy = tmp_path / "data"
    shutil.copytree(root, copy)
    return copy, sorted((copy / "leftImg8bit" / "train").rglob("*.png"))


@pytest.mark.slow
def test_bad_data_is_found_before_the_first_iteration(tiny_config: Path, tmp_path: Path) -> None:
    root, images = _demo_copy(tiny_config, tmp_path)
    images[1].write_bytes(images[1].read_bytes()[:100])  # truncated
    run = tmp_path / "run"
    proc = _train(tiny_config, f"data.root={root}", f"train.output_dir={run}", expect=2)
    assert images[1].name in proc.stderr and "data.check=false" in proc.stderr
    assert not (run / "metrics.jsonl").exists()  # nothing ran


@pytest.mark.slow
def test_a_file_failing_during_the_run_is_skipped_then_counted(tiny_config: Path, tmp_path: Path) -> None:
    root, images = _demo_copy(tiny_config, tmp_path)
    images[2].write_bytes(b"not a png")
    run = tmp_path / "run"
    proc = _train(tiny_config, f"data.root={root}", f"train.output_dir={run}", "data.check=false")
    assert "skipped a training sample that fails to decode" in proc.stderr and images[2].name in proc.stderr
    assert load_checkpoint(run / "last.pth").provenance["iteration"] == 4
    proc = _train(tiny_config, f"data.root={root}", f"train.output_dir={tmp_path / 'strict'}", "data.check=false",
                  "data.max_bad_files=0", expect=2)  # fmt: skip
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: 1 training samples failed to decode") and images[2].name in last


# ------------------------------------------------------------------------------------------- under a launcher


@pytest.mark.slow
def test_a_user_error_under_the_launcher_keeps_its_code_and_ends_the_output(
    tiny_config: Path, tmp_path: Path
) -> None:
    launch = [sys.executable, "-m", "segkd.distill.launch", "--cpu", "--num_processes", "1", "--num_machines", "1",
              "--mixed_precision", "no", "--dynamo_backend", "no", "--"]  # fmt: skip
    missing = tmp_path / "nowhere"
    proc = subprocess.run([*launch, "--config", str(tiny_config), f"train.resume={missing}"], cwd=REPO,
                          env=_env(), capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: train.resume={missing} is not a state folder")
    # accelerate's own traceback (CalledProcessError: the trainer exited 2) says nothing the line above does not
    assert "Traceback" not in proc.stderr and "CalledProcessError" not in proc.stderr


def test_launch_refuses_gpu_options_on_a_machine_without_gpus(tmp_path) -> None:
    from segkd.distill.launch import check_gpus

    assert "ask for 8 GPUs; none found" in check_gpus(["--multi_gpu", "--num_processes", "8"], 0)
    cfg = tmp_path / "8gpu.yaml"
    cfg.write_text("distributed_type: MULTI_GPU\nnum_processes: 8\n")
    assert "ask for 8 GPUs; 2 found" in check_gpus(["--config_file", str(cfg)], 2)
    assert check_gpus(["--multi_gpu", "--num_processes", "8"], 8) is None
    assert check_gpus(["--cpu"], 0) is None and check_gpus([], 0) is None
    r = subprocess.run(
        [sys.executable, "-m", "segkd.distill.launch", "--multi_gpu", "--num_processes", "8", "--", "--config", "x.yaml"],
        capture_output=True, text=True, timeout=120, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""},
    )  # fmt: skip
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1].startswith(
        "error: these launcher options ask"
    )


# ------------------------------------------------------------------------------------------- the files a run reads
@pytest.mark.slow
def test_a_teacher_inside_the_output_folder_is_refused_and_kept(
    tiny_config: Path, finished_run: Path, tmp_path: Path
) -> None:
    run = tmp_path / "x"
    shutil.copytree(finished_run, run)
    teacher = run / "best.pth"
    before = teacher.read_bytes()
    proc = _train(
        tiny_config, f"teacher.checkpoint={teacher}", "losses=[{name: kd}]", f"train.output_dir={run}",
        "train.overwrite=true", expect=2,
    )  # fmt: skip
    line = proc.stderr.strip().splitlines()[-1]
    assert f"teacher.checkpoint {teacher} lies inside train.output_dir {run}" in line
    assert teacher.read_bytes() == before  # overwrite=true did not get to delete it


@pytest.mark.slow
def test_a_resume_whose_teacher_changed_is_refused(
    tiny_config: Path, finished_run: Path, tmp_path: Path
) -> None:
    teacher = tmp_path / "teacher.pth"
    shutil.copy(finished_run / "best.pth", teacher)
    config = tiny_config
    run = tmp_path / "student"
    args = [f"teacher.checkpoint={teacher}", "losses=[{name: kd}]", f"train.output_dir={run}"]
    _train(config, *args, "train.stop_after=2")
    shutil.copy(finished_run / "last.pth", teacher)  # another file under the same name
    proc = _train(config, *args, expect=2)
    assert "is not the file the run" in proc.stderr and "Restore that teacher file" in proc.stderr
    shutil.copy(finished_run / "best.pth", teacher)  # the original again: the run continues
    _train(config, *args)
    assert json.loads((run / "state" / "progress.json").read_text())["iteration"] == 4


def test_a_fork_that_never_beat_its_source_names_no_missing_best(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from segkd.distill.loop import _summary
    from segkd.distill.run import Progress

    run_dir = tmp_path / "my fork"  # a space: the printed command must still run when pasted
    run_dir.mkdir()
    progress = Progress(iteration=6, best_miou=41.5, best_iter=4)  # the source's best, loaded with its state
    cfg = SimpleNamespace(
        train=SimpleNamespace(max_iters=6),
        data=SimpleNamespace(batch_size=2),
        quantize=SimpleNamespace(target=None),
    )
    acc = SimpleNamespace(is_main_process=True)
    run = SimpleNamespace(accelerator=acc, progress=progress, run_dir=run_dir, cfg=cfg)
    _summary(run, finished=True, elapsed=1.0, iters=2)
    out = capsys.readouterr().out
    assert "best.pth" not in out and "is the forked run's; this run did not beat it" in out
    tool = (
        "to_trt.py" if importlib.util.find_spec("tensorrt") else "to_onnx.py"
    )  # the engine only where it builds
    assert f"next: python export/{tool} '{run_dir / 'last.pth'}'" in out
    (run_dir / "best.pth").write_bytes(b"")  # a run that did beat it names its own best.pth
    _summary(run, finished=True, elapsed=1.0, iters=2)
    assert f"41.50 at iteration 4: {run_dir / 'best.pth'}" in capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.parametrize("where", ["student.pretrained", "teacher.checkpoint"])
def test_a_pickled_weight_file_is_refused_without_torchs_unsafe_advice(
    tiny_config: Path, tmp_path: Path, where: str
) -> None:
    marker = tmp_path / "pwned"
    planted = tmp_path / "weights.pth"
    torch.save(
        {"conv1.weight": torch.zeros(1), "extra": Payload(marker)}, planted
    )  # a torch zip with code in it
    extra = ["losses=[{name: kd}]"] if where == "teacher.checkpoint" else []
    proc = _train(tiny_config, f"{where}={planted}", f"train.output_dir={tmp_path / 'run'}", *extra, expect=2)
    assert not marker.exists() and "Traceback" not in proc.stderr
    assert "weights_only" not in proc.stderr and "loading those could run code" in proc.stderr


@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_run_folder_is_one_line(tiny_config: Path, tmp_path: Path) -> None:
    run = tmp_path / "ro"
    run.mkdir(mode=0o555)
    proc = _train(tiny_config, f"train.output_dir={run}", expect=2)
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith(f"error: cannot write the run folder {run}")


def test_a_lock_that_cannot_be_created_is_a_config_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # root ignores file modes, so the refusal is simulated where the OS would raise it
    import segkd.distill.run_dir as run_dir_module
    from segkd.distill.config import ConfigError

    def refuse(path: Path) -> None:
        raise PermissionError(13, "Permission denied", str(path / ".lock"))

    monkeypatch.setattr(run_dir_module, "_lock", refuse)
    cfg = SimpleNamespace(train=SimpleNamespace(resume="auto", overwrite=False))
    run = SimpleNamespace(cfg=cfg, accelerator=SimpleNamespace(is_main_process=True, num_processes=1, device="cpu"),
                          run_dir=tmp_path / "r", lock=None)  # fmt: skip
    with pytest.raises(ConfigError, match=r"cannot write the run folder .*Permission denied: .*\.lock"):
        run_dir_module.prepare_run_dir(run)


@pytest.mark.slow
def test_eval_on_a_dataset_with_an_unreadable_image_is_one_line(
    tiny_config: Path, finished_run: Path, tmp_path: Path
) -> None:
    root = Path(yaml.safe_load(tiny_config.read_text())["data"]["root"])
    data = tmp_path / "data"
    shutil.copytree(root, data)
    broken = sorted((data / "leftImg8bit" / "val").rglob("*.png"))[0]
    broken.write_bytes(b"not a png")
    proc = _train(tiny_config, f"data.root={data}", "--eval", str(finished_run / "best.pth"), expect=2)
    assert "Traceback" not in proc.stderr
    assert "error: the demo data at" in proc.stderr and broken.name in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].endswith("or start without this check with data.check=false")


def test_the_launcher_relay_drops_only_its_own_tracebacks() -> None:
    import io

    from segkd.distill.launch import relay_without_launcher_tracebacks

    launcher = (
        b"step 1/10\rstep 2/10\r\nerror: train.resume=x is not a state folder\n"
        b'Traceback (most recent call last):\n  File "launch.py", line 9, in <module>\n    main()\n'
        b"subprocess.CalledProcessError: Command '[python, train.py]' returned non-zero exit status 2.\n"
    )
    crash = (
        b'Traceback (most recent call last):\n  File "step.py", line 3\n    x[1]\nIndexError: list index\n'
    )
    out = io.BytesIO()
    relay_without_launcher_tracebacks(io.BufferedReader(io.BytesIO(launcher + crash)), out)
    assert out.getvalue() == b"step 1/10\rstep 2/10\r\nerror: train.resume=x is not a state folder\n" + crash


@pytest.mark.slow
def test_eval_of_a_checkpoint_with_another_class_count_names_the_checkpoint(
    tiny_config: Path, finished_run: Path, tmp_path: Path
) -> None:
    from segkd.scenes.street import generate_demo

    seven = generate_demo(
        tmp_path / "d", {"train": 1, "val": 1}, size=(64, 128), seed=0, classes="categories"
    )
    proc = _train(tiny_config, f"data.root={seven}", "--eval", str(finished_run / "best.pth"), expect=2)
    line = proc.stderr.strip().splitlines()[-1]
    assert "the checkpoint best.pth predicts 19 classes" in line and "teacher" not in line
    assert "evaluate it on the dataset it was trained on" in line


@pytest.mark.slow
def test_a_run_cannot_be_resumed_or_forked_into_another_student(
    tiny_config: Path, finished_run: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    proc = _train(tiny_config, f"train.output_dir={run}", "train.max_iters=6", "student.width=0.25", expect=2)
    assert "cannot be resumed with another model or method" in proc.stderr and "student.width" in proc.stderr
    assert "train.resume=none" in proc.stderr and "fork it" not in proc.stderr
    fork = tmp_path / "fork"
    proc = _train(tiny_config, f"train.output_dir={fork}", f"train.resume={run / 'state'}", "train.max_iters=6",
                  "student.width=0.25", expect=2)  # fmt: skip
    assert (
        "cannot be forked with another model or method" in proc.stderr.strip().splitlines()[-1] + proc.stderr
    )
    assert not fork.exists()  # no folder holding only a config
