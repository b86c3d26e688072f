"""Set-up checks: everything a user can get wrong is found before any model is built, and reported together."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from segkd.distill.checkpoint import CheckpointError, load_checkpoint
from segkd.distill.config import Config, ConfigError
from segkd.distill.models import MODELS, model_traits
from segkd.distill.runlog import warn
from segkd.infer.meta import ModelMeta
from segkd.script import train_command

__all__ = [
    "Inputs",
    "check_classes",
    "check_data",
    "check_inputs",
    "check_strides",
    "load_datasets",
    "micro_batch",
    "reader_options",
]

_REPO = Path(__file__).resolve().parents[1]  # where configs/ lives in a checkout


@dataclass
class Inputs:
    """The checked inputs of a run."""

    train_set: Any
    val_set: Any
    teacher_meta: ModelMeta | None
    micro_batch: int
    start_meta: ModelMeta | None = None  # the float checkpoint a quantization-aware run starts from


def check_inputs(cfg: Config, num_processes: int) -> Inputs:
    """Check everything a user can get wrong, reporting every problem together, before any model is built."""
    problems: list[str] = _inputs_inside_outputs(cfg)
    datasets, teacher_meta, micro = None, None, 0
    try:
        datasets = load_datasets(cfg)
    except ConfigError as e:
        problems.append(str(e))
    if cfg.distill:
        tpath = Path(cfg.teacher.checkpoint)
        if not tpath.is_file():
            problems.append(f"teacher checkpoint {tpath} does not exist{_teacher_hint(tpath)}")
        else:
            try:
                teacher_meta = load_checkpoint(tpath).meta
            except CheckpointError as e:
                problems.append(f"teacher.checkpoint: {e}")
    start_meta = None
    if cfg.quantize.target:
        start_meta = _quantize_start(cfg, problems)
    if cfg.student.pretrained:
        problem = _pretrained_problem(cfg.student.name, cfg.student.pretrained)
        if problem:
            problems.append(problem)
    try:
        micro = micro_batch(cfg, num_processes)
    except ConfigError as e:
        problems.append(str(e))
    if problems:
        raise ConfigError("\n".join(problems))
    train_set, val_set = datasets
    return Inputs(train_set, val_set, teacher_meta, micro, start_meta)


def _quantize_start(cfg: Config, problems: list[str]) -> ModelMeta | None:
    """The metadata of ``quantize.checkpoint`` after checking it is a float checkpoint (problems appended)."""
    from segkd.distill.qat import QUANT_KEY

    path = Path(cfg.quantize.checkpoint)
    if not path.is_file():
        problems.append(
            f"quantize.checkpoint {path} does not exist{' (it is a folder)' if path.is_dir() else ''}; give the "
            "trained float checkpoint to fine-tune, e.g. runs/demo/cwd/best.pth"
        )
        return None
    try:
        ckpt = load_checkpoint(path)
    except CheckpointError as e:
        problems.append(f"quantize.checkpoint: {e}")
        return None
    if QUANT_KEY in ckpt.meta.extra:
        source = ckpt.provenance.get("config", {}).get("quantize", {}).get("checkpoint")
        hint = f" ({source})" if source else ""
        problems.append(
            f"quantize.checkpoint {path} is already quantization-aware trained; start from the float checkpoint "
            f"it came from{hint}, or export it as it is (export/to_onnx.py --precision int8)"
        )
        return None
    return ckpt.meta


_DEMO_TEACHER = Path("assets", "demo_teacher.pth")  # configs/demo/_base.yaml's teacher


def _inputs_inside_outputs(cfg: Config) -> list[str]:
    """Files the run reads (teacher, student weights) inside the folder it writes: its checkpoints would replace
    them (``best.pth``), and ``train.overwrite=true`` would delete them, so later resumes distil from the student."""
    out = Path(cfg.train.output_dir).resolve()
    reads = {"teacher.checkpoint": cfg.teacher.checkpoint if cfg.distill else None}
    reads["student.pretrained"] = cfg.student.pretrained
    problems = []
    for key, value in reads.items():
        if value and Path(value).exists() and Path(value).resolve().is_relative_to(out):
            problems.append(
                f"{key} {value} lies inside train.output_dir {cfg.train.output_dir}, which this run writes "
                "(best.pth, last.pth, its state) and train.overwrite=true empties: train into another folder "
                f"(train.output_dir={cfg.train.output_dir}-student) or move {Path(value).name} out of it"
            )
    return problems


def _teacher_hint(path: Path) -> str:
    """The command that makes ``runs/<x>/best.pth`` when ``configs/<x>.yaml`` exists."""
    parts = path.parts
    if len(parts) >= 3 and parts[0] == "runs" and path.name in ("best.pth", "last.pth"):
        recipe = Path("configs", *parts[1:-1]).with_suffix(".yaml")
        if recipe.is_file() or (_REPO / recipe).is_file():
            return f"; train it first with: {train_command()} --config {recipe}"
    if path == _DEMO_TEACHER:  # shipped with the project; the relative path needs the repository as cwd
        return (
            f"; it ships with the project as {_REPO / path}: run from {_REPO}, pass "
            f"teacher.checkpoint={_REPO / path}, or train one with: "
            f"{train_command()} --config "
            "configs/demo/teacher.yaml"
        )
    return "; set teacher.checkpoint to a teacher .pth written by distill/train.py"


def load_datasets(cfg: Config) -> tuple[Any, Any]:
    """The training and validation readers of ``cfg.data`` (a ConfigError naming the fix otherwise)."""
    from segkd.infer.datasets import DatasetError, build_dataset

    options = reader_options(cfg)
    try:
        train_set = build_dataset(cfg.data.dataset, cfg.data.root, cfg.data.train_split, **options)
        val_set = build_dataset(cfg.data.dataset, cfg.data.root, cfg.data.val_split, **options)
    except TypeError as e:  # an option the reader does not take
        raise ConfigError(f"data.reader / data.label_type: the {cfg.data.dataset} reader says: {e}") from e
    except (DatasetError, KeyError) as e:
        hint = ""
        if not Path(cfg.data.root).expanduser().is_dir() and cfg.data.dataset != "demo":
            hint = f"; see the README for the {cfg.data.dataset} layout, check it with `segkd check`"
        raise ConfigError(
            f"cannot read the {cfg.data.dataset} data at {cfg.data.root}: {e.args[0]}{hint}"
        ) from e
    return train_set, val_set


def reader_options(cfg: Config) -> dict[str, Any]:
    """Keyword options of the dataset reader from ``cfg.data`` (``label_type`` and ``reader``)."""
    options = dict(cfg.data.reader)
    if cfg.data.label_type is not None:
        options["label_type"] = cfg.data.label_type
    return options


def check_data(cfg: Config, *, limit: int = 20, splits: tuple[str, ...] | None = None) -> None:
    """Read every sample of the splits the run reads (``segkd.infer.datasets check``) before any work is done.

    Args:
        splits: the splits to read (default: the training and validation splits; ``--eval`` reads only the latter).

    Raises:
        ConfigError: listing the first ``limit`` problems of each split and how to skip the check.
    """
    from segkd.infer.datasets.check import check_dataset

    problems = []
    for split in dict.fromkeys(splits or (cfg.data.train_split, cfg.data.val_split)):
        report = check_dataset(cfg.data.dataset, cfg.data.root, split, **reader_options(cfg))
        problems += [f"{split}: {p}" for p in report.problems[:limit]]
        if len(report.problems) > limit:
            problems.append(f"{split}: ... and {len(report.problems) - limit} more")
    if problems:
        raise ConfigError(
            f"the {cfg.data.dataset} data at {cfg.data.root} has problems:\n  "
            + "\n  ".join(problems)
            + f"\nfix them (segkd check --dataset {cfg.data.dataset} --root {cfg.data.root} "
            "--split SPLIT lists them all), or start without this check with data.check=false"
        )


def check_classes(
    dataset: Any, teacher_meta: ModelMeta | None, student_classes: int | None, *, role: str = "teacher"
) -> int:
    """Return the class count after checking that data, teacher and student agree (a ConfigError otherwise).

    ``role`` names the checkpoint in the message: the teacher of a distillation, or the model ``--eval`` scores.
    """
    k = dataset.num_classes
    problems = []
    if student_classes is not None and student_classes != k:
        problems.append(
            f"student.num_classes={student_classes} but the {dataset.name} data at {dataset.root} has {k} classes; "
            "remove student.num_classes (it defaults to the dataset's) or point data.root at the right data"
        )
    if teacher_meta is not None and teacher_meta.num_classes != k:
        fix = (
            "distil with a teacher trained on this dataset"
            if role == "teacher"
            else "evaluate it on the dataset it was trained on (data.dataset, data.root)"
        )
        problems.append(
            f"the {role} predicts {teacher_meta.num_classes} classes ({', '.join(teacher_meta.class_names[:4])}, ...) "
            f"but the {dataset.name} data has {k} ({', '.join(dataset.class_names[:4])}, ...); {fix}"
        )
    if problems:
        raise ConfigError("class counts disagree:\n  " + "\n  ".join(problems))
    if teacher_meta is not None and list(teacher_meta.class_names) != list(dataset.class_names):
        warn(
            "the teacher's class names differ from the dataset's (same count); check that they mean the same"
        )
    return k


def check_strides(meta: ModelMeta, teacher_meta: ModelMeta | None, default: int = 8) -> None:
    """Distilled logits and features are compared position by position: both models need the same stride."""
    if teacher_meta is None:
        return
    s, t = meta.arch.get("output_stride", default), teacher_meta.arch.get("output_stride", default)
    if s != t and takes_option(str(meta.arch.get("name")), "output_stride", t):
        raise ConfigError(
            f"the student's output stride {s} differs from the teacher's {t}, so their 1/{s} and 1/{t} maps "
            f"cannot be compared; set student.output_stride={t}"
        )


def takes_option(arch: str, option: str, value: Any) -> bool:
    """Whether the model ``arch`` has ``option``. A real-time student's stride is part of its architecture: the
    teacher's maps are resized to its own (as for SegFormer), so only a student that can match is asked to."""
    import torch

    from segkd.distill.models import OptionError, build_model

    try:
        with torch.device("meta"):  # no memory, no initialisation
            build_model(arch, num_classes=2, **{option: value})
    except TypeError as e:  # build_model names the model in the OptionError it re-raises
        return not isinstance(e, OptionError) and not isinstance(e.__context__, OptionError)
    except Exception:  # the option exists (its value may not suit this model: the message says what to set)
        return True
    return True


def micro_batch(cfg: Config, num_processes: int) -> int:
    """Images per process and micro-step: the total batch split over processes and accumulation steps."""
    parts = num_processes * cfg.train.grad_accum
    if cfg.data.batch_size % parts:
        raise ConfigError(
            f"data.batch_size={cfg.data.batch_size} (images per optimizer step, in total) does not split over "
            f"{num_processes} process(es) x train.grad_accum={cfg.train.grad_accum}; make it a multiple of {parts}"
        )
    micro = cfg.data.batch_size // parts
    sync_bn = num_processes > 1 and torch.cuda.is_available()
    if micro < 2 and not sync_bn:
        raise ConfigError(
            f"data.batch_size={cfg.data.batch_size} over {num_processes} process(es) x train.grad_accum="
            f"{cfg.train.grad_accum} leaves {micro} image per BatchNorm batch; the heads' image-pooling BatchNorm "
            "needs at least 2 (SyncBatchNorm pools them across GPUs, not across CPU processes or accumulation "
            "steps): raise data.batch_size or lower the processes / grad_accum"
        )
    return micro


def _pretrained_problem(arch: str, pretrained: str) -> str | None:
    """Why ``student.pretrained`` cannot be used, or None.

    The CNNs take an ImageNet backbone file; SegFormer and UPerNet-Swin take a Hugging Face model id (downloaded
    on first use) or a local folder of one.
    """
    path = Path(pretrained).expanduser()
    if arch in MODELS and model_traits(arch).hf:
        if path.is_dir() or (not path.exists() and re.fullmatch(r"[\w.-]+/[\w.-]+", pretrained)):
            return None
        return (
            f"student.pretrained {pretrained!r} is neither a folder nor a Hugging Face model id; {arch} takes "
            "e.g. nvidia/mit-b0 (SegFormer) or microsoft/swin-tiny-patch4-window7-224 (Swin), or a folder of one"
        )
    if not path.is_file():
        return (
            f"student.pretrained file {pretrained} does not exist; download the ImageNet backbone "
            "(see the README) or set student.pretrained=null to start from random weights"
        )
    from segkd.distill.models.pretrained import WeightsError, read_state_dict

    try:  # read now (weights only), not minutes later when the model is built
        read_state_dict(path)
    except WeightsError as e:
        return f"student.pretrained: {e}"
    return None
