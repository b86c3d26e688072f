"""Typed training configuration: dataclasses filled from YAML, with ``key=value`` overrides.

A config file is plain YAML (read with ``yaml.safe_load``) whose sections mirror :class:`Config`. A file may
start from others with a ``base:`` key (one path or a list, relative to the file); sections are merged
recursively, later files win, and lists are replaced, not concatenated::

    # configs/cityscapes/deeplabv3_r18_skd_full.yaml
    base: [_base.yaml, ../_students/deeplabv3_r18.yaml]

A run can also be composed on the command line from the parts of ``configs/`` (see :func:`group_files`)::

    segkd train dataset=cityscapes student=deeplabv3_r18 method=cwd train.max_iters=200

``dataset=D`` reads ``configs/D/_base.yaml``, ``student=S`` ``configs/_students/S.yaml`` and ``method=M``
``configs/D/_M.yaml`` when the dataset has its own variant of the method, else ``configs/_methods/M.yaml``; they
are merged after the ``--config`` files (several may be given, merged in order) and before the dotted overrides.

Command-line overrides use dotted keys and YAML values: ``train.max_iters=200``, ``data.crop_size=[64,128]``,
``losses.0.weight=5``, ``teacher.checkpoint=null``. An unknown key anywhere is an error that lists the valid
keys and the closest match. :func:`save_config` writes the resolved config (what actually ran) as YAML.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from segkd.infer.fileio import atomic_write_text
from segkd.infer.meta import IMAGENET_RGB

__all__ = [
    "AdversarialConfig",
    "Config",
    "ConfigError",
    "DataConfig",
    "EvalConfig",
    "BoundaryConfig",
    "DetailConfig",
    "ModelConfig",
    "OHEM_RULES",
    "OhemConfig",
    "OptimConfig",
    "TaskConfig",
    "QuantizeConfig",
    "TeacherConfig",
    "TrainConfig",
    "GROUPS",
    "config_to_dict",
    "load_config",
    "group_files",
    "load_yaml",
    "parse_overrides",
    "save_config",
]


class ConfigError(ValueError):
    """A config file or override that does not describe a valid run."""


@dataclass
class DataConfig:
    """Dataset and augmentation.

    Attributes:
        dataset: reader name in ``segkd.infer.datasets.DATASETS`` (cityscapes, voc, ade20k, cocostuff, folder, demo).
        root: dataset root folder.
        train_split, val_split: split names passed to the reader.
        crop_size: training crop (H, W); images smaller than the crop are padded (labels with ignore).
        scale_range: random rescale factor range applied before the crop.
        flip: random horizontal flip.
        batch_size: images per optimizer step in total, the papers' "batch size": each process loads
            ``batch_size / (processes * train.grad_accum)`` per micro-step, so a recipe trains the same on 1 GPU
            (with accumulation if memory is short) as on 8; it must divide exactly.
        num_workers: data-loading worker processes per training process.
        label_type: which label files the reader takes (cityscapes: ``labelIds`` or ``trainIds``; cocostuff:
            ``stuffthingmaps`` or ``trainIds``); null keeps the reader's default.
        reader: further reader options, e.g. ``{classes: my/classes.txt, masks: annotations}`` for ``folder``.
        check: read every sample of both splits before training (``segkd.infer.datasets check``) and refuse to start
            on a problem; false skips it (a file that fails to decode during the run is still skipped).
        max_bad_files: training samples that may fail to decode during the run (each is skipped with a
            warning) before the run stops with their list.
    """

    dataset: str = "demo"
    root: str = "data/demo"
    train_split: str = "train"
    val_split: str = "val"
    crop_size: list[int] = field(default_factory=lambda: [256, 512])
    scale_range: list[float] = field(default_factory=lambda: [0.5, 2.0])
    flip: bool = True
    batch_size: int = 8
    num_workers: int = 2
    label_type: str | None = None
    reader: dict[str, Any] = field(default_factory=dict)
    check: bool = True
    max_bad_files: int = 10


@dataclass
class ModelConfig:
    """The trained network (the student, or the teacher while it is trained in plain mode).

    Attributes:
        name: registry name in ``segkd.distill.models.MODELS`` (e.g. ``deeplabv3_r18``).
        num_classes: output classes; ``null`` takes the dataset's count (a different value is an error).
        pretrained: ImageNet backbone weights file (torchvision or CIRKD layout), or null for random init; for
            SegFormer and UPerNet-Swin a Hugging Face model id (``nvidia/mit-b0``) or a local folder of one.
        width, output_stride, deep_stem, aux: model options; ``null`` keeps the builder's default.
        align_corners: the model's bilinear upsampling of its logits, stored in the checkpoint and followed by
            the losses, the runners and the export; CIRKD's recipes use ``true``; ``null`` keeps the builder's
            default (``false``).
        mean, std, channel_order: input normalisation on the 0..255 scale, stored in the checkpoint.
        options: the builder's own further options (SegFormer's ``depths``, UPerNet's ``head_channels``, ...),
            stored in the checkpoint's ``arch``; ``build_model`` names the valid ones when one is unknown.
    """

    name: str = "deeplabv3_r18"
    num_classes: int | None = None
    pretrained: str | None = None
    width: float | None = None
    output_stride: int | None = None
    deep_stem: bool | None = None
    aux: bool | None = None
    align_corners: bool | None = None
    mean: list[float] = field(default_factory=lambda: list(IMAGENET_RGB[0]))
    std: list[float] = field(default_factory=lambda: list(IMAGENET_RGB[1]))
    channel_order: str = "RGB"
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class TeacherConfig:
    """The frozen teacher of a distillation run (null checkpoint: plain training).

    Attributes:
        checkpoint: teacher ``.pth`` written by this trainer (or converted with ``segkd convert``).
        half: run the teacher in float16 on a GPU (ignored on CPU).
    """

    checkpoint: str | None = None
    half: bool = False


@dataclass
class OptimConfig:
    """SGD with poly decay per iteration and an optional linear warm-up.

    ``lr(it) = lr * (1 - it / max_iters) ** power``, multiplied during the first ``warmup_iters`` iterations by a
    factor rising linearly from ``warmup_factor`` to 1.
    """

    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    power: float = 0.9
    warmup_iters: int = 0
    warmup_factor: float = 0.1


@dataclass
class TrainConfig:
    """Run control.

    Attributes:
        max_iters: optimizer steps of the whole run.
        eval_every: evaluate (and update ``best.pth``) every this many iterations, and at the end.
        save_every: write ``last.pth`` and the resumable state every this many iterations (null: ``eval_every``).
        log_every: iterations between ``metrics.jsonl`` loss records.
        seed: one seed makes the run reproducible (model init, data order, augmentation, dropout).
        mixed_precision: ``no``, ``fp16`` or ``bf16``; null keeps the launcher's setting (``accelerate config``).
        grad_accum: micro-batches accumulated per optimizer step.
        aux_weight: weight of the auxiliary head's cross-entropy (0 builds the model without that head).
        resume: ``auto`` continues the run found in ``output_dir``, ``none`` starts over, or a state folder.
        stop_after: end this invocation after that iteration with the state saved (e.g. to fit a job's time
            limit); a later ``resume=auto`` continues exactly where it stopped.
        output_dir: run folder; null derives ``runs/<config path below configs/>``.
        overwrite: let a fresh start (``resume=none``, or a folder without a state) replace the outputs of an
            earlier run in ``output_dir``; without it such a start is refused.
    """

    max_iters: int = 40000
    eval_every: int = 4000
    save_every: int | None = None
    log_every: int = 20
    seed: int = 0
    mixed_precision: str | None = None
    grad_accum: int = 1
    aux_weight: float = 0.4
    resume: str = "auto"
    stop_after: int | None = None
    output_dir: str | None = None
    overwrite: bool = False


@dataclass
class EvalConfig:
    """Validation.

    Attributes:
        mode: ``whole`` (the full image in one forward) or ``slide`` (overlapping crop windows).
        crop_size: window (H, W) for ``slide``; null uses ``data.crop_size``.
        stride: window step (H, W) for ``slide``; null uses two thirds of the window.
        batch_size: images per process per forward (images of different sizes need 1).
        limit: evaluate on the first ``limit`` validation images only (quick checks); null for all.
    """

    mode: str = "whole"
    crop_size: list[int] | None = None
    stride: list[int] | None = None
    batch_size: int = 1
    limit: int | None = None


@dataclass
class AdversarialConfig:
    """The adversarial holistic term of SKD/IFVD as CIRKD runs it (see :mod:`segkd.distill.adversarial`).

    Attributes:
        enabled: train a discriminator on the teacher's and the student's 1/8 logits (distillation runs only).
        lambda_adv: weight of the student's term (CIRKD: 0.001).
        lambda_d: weight of the discriminator's hinge objective (CIRKD: 0.1).
        lr, betas: Adam settings of the discriminator (CIRKD: 4e-4, [0.9, 0.99]), constant.
        width: channels of the discriminator's first convolution (CIRKD: 64).
        spectral_norm: ``torch`` (torch's ``spectral_norm``, the default) or ``sagan`` (CIRKD's SAGAN power
            iteration, which the papers' recipes use); see :mod:`segkd.distill.adversarial`.
    """

    enabled: bool = False
    lambda_adv: float = 0.001
    lambda_d: float = 0.1
    lr: float = 4e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.99])
    width: int = 64
    spectral_norm: str = "torch"


# The OHEM rules of the real-time students' repositories (``segkd.distill.task_loss`` implements each):
# rule -> (its published threshold on the true-class probability, its published minimum of kept pixels, or None
# where the rule derives the minimum from the batch).
OHEM_RULES: dict[str, tuple[float, int | None]] = {
    "hrnet": (0.9, 131072),  # PIDNet, DDRNet (HRNet's code): LOSS.OHEMTHRES, LOSS.OHEMKEEP
    "bisenet": (0.7, None),  # CoinCheung/BiSeNet: at least (labelled pixels // 16)
    "stdc": (0.7, None),  # STDC-Seg: at least (all pixels of the batch // 16)
}


@dataclass
class OhemConfig:
    """Online hard example mining of the cross-entropy (``task.loss: ohem`` or ``task.aux_loss: ohem``).

    Only the hard pixels, those whose softmax probability of the true class is below ``thresh``, are averaged, but
    never fewer than a minimum, filled with the hardest of the rest. The three published rules differ in that
    minimum and in which pixels compete for it (see ``segkd.distill.task_loss``):

    - ``hrnet`` (PIDNet, DDRNet, from HRNet's code): labelled pixels only; at least ``min_kept``.
    - ``bisenet`` (CoinCheung/BiSeNet): at least (labelled pixels of the batch) // 16.
    - ``stdc`` (MichaelFan01/STDC-Seg): at least (all pixels of the batch, ignored ones included) // 16.

    Counts are per process and micro-batch, as the official code counts them per GPU.

    Attributes:
        rule: ``hrnet``, ``bisenet`` or ``stdc``.
        thresh: probability of the true class below which a pixel is hard; null takes the rule's published value
            (hrnet 0.9, bisenet and stdc 0.7).
        min_kept: ``hrnet`` only, pixels kept at least; null takes its published 131072 (the other rules derive
            their minimum from the batch and refuse a value).
    """

    rule: str = "hrnet"
    thresh: float | None = None
    min_kept: int | None = None


@dataclass
class BoundaryConfig:
    """PIDNet's boundary terms on the student's ``boundary`` map (its D branch), both off by default.

    Attributes:
        weight: weight of the class-balanced BCE between the boundary logits and the edges of the labels
            (official: 20); logged as ``boundary``.
        aware_weight: weight of the boundary-aware cross-entropy, the main loss (``task.loss``) restricted to the
            pixels whose predicted boundary probability exceeds ``aware_thresh`` (official: 1); logged as
            ``boundary_ce``.
        aware_thresh: boundary probability above which a pixel joins the boundary-aware cross-entropy (0.8).
    """

    weight: float = 0.0
    aware_weight: float = 0.0
    aware_thresh: float = 0.8


@dataclass
class DetailConfig:
    """STDC-Seg's detail aggregation loss on the student's ``boundary`` map (its detail head), off by default.

    Attributes:
        bce_weight: weight of the BCE between the detail logits and the Laplacian boundaries of the labels
            (official: 1); logged as ``detail_bce``.
        dice_weight: weight of the dice loss on the same pair (official: 1); logged as ``detail_dice``.
    """

    bce_weight: float = 0.0
    dice_weight: float = 0.0


@dataclass
class TaskConfig:
    """What the student learns from the labels: the loss of its main output, of its auxiliary outputs and of its
    boundary map. The defaults are plain cross-entropy plus ``train.aux_weight`` on the first auxiliary head,
    what every recipe trained before this section existed; ``configs/_students/<name>.yaml`` of a real-time
    student holds its repository's recipe.

    Attributes:
        loss: ``ce`` or ``ohem`` (see ``ohem``) on the main logits, at the label size; logged as ``ce``.
        ohem: the OHEM rule and its settings, used wherever ``ohem`` is chosen.
        aux_loss: ``ce`` or ``ohem`` on each auxiliary output.
        aux_weights: one weight per entry of the model's ``aux_all``, in its order (PIDNet [0.4], DDRNet [0.4],
            BiSeNetV2 [1, 1, 1, 1], STDC [1, 1]); logged as ``aux`` (one) or ``aux_1``... (several). Null keeps
            ``train.aux_weight`` on the first auxiliary head.
        aux_ignored_in_mean: average the auxiliary cross-entropy over every pixel, the ignored ones counting
            zero, as the HRNet-based code of PIDNet and DDRNet does (it returns the per-pixel map, averaged
            later); false averages over the labelled pixels.
        class_weights: per-class weights of every cross-entropy, by dataset name (``data.dataset``); a dataset not
            listed trains unweighted. PIDNet and DDRNet weight Cityscapes' 19 classes.
        boundary: PIDNet's boundary BCE and boundary-aware cross-entropy.
        detail: STDC's detail aggregation loss.
    """

    loss: str = "ce"
    ohem: OhemConfig = field(default_factory=OhemConfig)
    aux_loss: str = "ce"
    aux_weights: list[float] | None = None
    aux_ignored_in_mean: bool = False
    class_weights: dict[str, list[float]] = field(default_factory=dict)
    boundary: BoundaryConfig = field(default_factory=BoundaryConfig)
    detail: DetailConfig = field(default_factory=DetailConfig)


@dataclass
class QuantizeConfig:
    """Quantization-aware distillation into INT8 (QAD; see :mod:`segkd.distill.qat` and docs/quantization.md).

    With a ``target`` the run fine-tunes the trained float model ``checkpoint`` through fake INT8 quantization in
    exactly the placement of that INT8 file form, calibrated once at the start on ``calib_count`` training images
    (the student's architecture, weights and class names are the checkpoint's; ``student.*`` is not used). The
    teacher defaults to the float checkpoint itself and ``losses`` to pixel-wise KD on the logits. Export the
    result with ``python export/to_onnx.py RUN/best.pth --precision int8 --target TARGET``: it quantizes with the
    ranges of the run, no calibration images needed.

    Attributes:
        target: ``tensorrt`` (s8 symmetric Q/DQ, what ``export/to_trt.py`` builds) or ``cpu`` (ONNX Runtime's u8
            form); null trains in float.
        checkpoint: the trained float checkpoint to start from (``best.pth`` of a run).
        calib_count: training images the activation ranges are calibrated on (spread over the split).
        calib_method: ``percentile``, ``minmax`` or ``entropy``, as ``--calib-method`` of the export.
        percentile: with ``percentile``, the share of each activation's histogram its range keeps.
        freeze_bn: keep BatchNorm statistics fixed (they are folded into the Convs of the INT8 file).
    """

    target: str | None = None
    checkpoint: str | None = None
    calib_count: int = 32
    calib_method: str = "percentile"
    percentile: float = 99.99
    freeze_bn: bool = True


@dataclass
class Config:
    """A whole run: see each section's class. Without ``losses`` the run is plain training (no teacher is loaded).

    Each entry of ``losses`` is a mapping with the loss ``name`` (in ``segkd.distill.losses.LOSSES``) and that
    loss's parameters, e.g. ``{name: cwd, weight: 3.0, tau: 4.0}``. Names, parameter names and values are checked
    when the config is loaded, with every other problem of the config (``temperature`` for ``tau`` is refused
    there, naming ``tau``).
    """

    data: DataConfig = field(default_factory=DataConfig)
    student: ModelConfig = field(default_factory=ModelConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    losses: list[dict[str, Any]] = field(default_factory=list)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    adversarial: AdversarialConfig = field(default_factory=AdversarialConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    quantize: QuantizeConfig = field(default_factory=QuantizeConfig)

    @property
    def distill(self) -> bool:
        """True when a teacher is distilled into the student (a teacher without losses is not loaded)."""
        return self.teacher.checkpoint is not None and bool(self.losses)


# The student options that describe one architecture (a config's width for an R18 means nothing to a SegFormer).
_ARCH_OPTIONS = ("width", "output_stride", "deep_stem")
# The parts a run is composed of on the command line (``dataset=cityscapes``), in the order they are merged.
GROUPS = ("dataset", "student", "method", "schedule")
CONFIG_ROOT = Path(__file__).resolve().parents[1] / "configs"  # the checkout's configs/

# Choices checked after loading: key -> allowed values.
_CHOICES: dict[str, tuple[Any, ...]] = {
    "train.mixed_precision": (None, "no", "fp16", "bf16"),
    "eval.mode": ("whole", "slide"),
    "student.channel_order": ("RGB", "BGR"),
    "task.loss": ("ce", "ohem"),
    "task.aux_loss": ("ce", "ohem"),
    "adversarial.spectral_norm": ("torch", "sagan"),
    "quantize.target": (None, "tensorrt", "cpu"),  # segkd.distill.qat.TARGETS
    "quantize.calib_method": (
        "percentile",
        "minmax",
        "entropy",
    ),  # segkd.export.formats.CALIB_METHODS  # the keys of segkd.distill.adversarial.SPECTRAL_NORMS
}


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read one YAML file and the files its ``base:`` key names, merged (later wins, lists replaced)."""
    return _load_composed(Path(path), chain=())


def _load_composed(path: Path, chain: tuple[Path, ...]) -> dict[str, Any]:
    path = path.resolve()
    if path in chain:
        cycle = " -> ".join(str(p) for p in (*chain, path))
        raise ConfigError(f"config files include each other in a cycle: {cycle}")
    if not path.is_file():
        where = f" (named in {chain[-1]})" if chain else ""
        raise ConfigError(f"config file {path} not found{where}")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML: {e}") from e
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must hold a mapping of sections, not {type(raw).__name__}")
    bases = raw.pop("base", None) or []
    merged: dict[str, Any] = {}
    for base in [bases] if isinstance(bases, str) else bases:
        merged = _merge(merged, _load_composed(path.parent / base, (*chain, path)))
    return _merge(merged, raw)


def _merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Recursive dict merge, ``b`` wins; lists and scalars are replaced."""
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(out.get(k), dict) and isinstance(v, dict) else v
    return out


def parse_overrides(items: list[str]) -> list[tuple[str, Any]]:
    """``["train.max_iters=10", "data.crop_size=[64,128]"]`` -> ``[("train.max_iters", 10), ...]``.

    Values are parsed as YAML, so numbers, booleans, ``null`` and ``[lists]`` keep their types.
    """
    out = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r} is not key=value (e.g. train.max_iters=100)")
        try:
            parsed = yaml.safe_load(value) if value.strip() else None
        except yaml.YAMLError as e:
            raise ConfigError(f"override {item!r}: the value is not valid YAML ({e})") from e
        out.append((key.strip(), parsed))
    return out


def _apply_override(d: dict[str, Any], key: str, value: Any) -> None:
    """Set ``key`` (dotted; list entries by index) in the nested dict ``d``; the key must exist in the schema."""
    parts = key.split(".")
    node: Any = d
    schema: Any = Config
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        here = ".".join(parts[: i + 1])
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(
                    f"override {key}: {'.'.join(parts[:i])} has {len(node)} entries, no {part!r}"
                )
            idx: Any = int(part)
        else:
            if dataclasses.is_dataclass(schema):
                names = [f.name for f in dataclasses.fields(schema)]
                if part not in names:
                    raise ConfigError(_unknown_key_message(here, part, names, f"override {key}"))
                schema = _field_type(schema, part)
            else:
                schema = None  # free-form mapping (a loss entry): its builder checks the names
            idx = part
        if last:
            node[idx] = value
            return
        if isinstance(node, dict) and not isinstance(node.get(idx), dict | list):
            node[idx] = {}
        node = node[idx]
        if isinstance(node, list):
            schema = None


def _field_type(cls: Any, name: str) -> Any:
    hints = typing.get_type_hints(cls)
    return hints[name]


def _unknown_key_message(where: str, key: str, valid: list[str], origin: str) -> str:
    close = difflib.get_close_matches(key, valid, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return f"{origin}: unknown key {where!r}.{hint} Valid keys here: {', '.join(valid)}"


def _build(cls: Any, data: Any, where: str, origin: str, problems: list[str]) -> Any:
    """Fill dataclass ``cls`` from ``data``, appending every problem (all of them, not just the first)."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        problems.append(f"{origin}: {where or 'the config'} must be a mapping, got {data!r}")
        return cls()
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in names:
            problems.append(_unknown_key_message(path, str(key), names, origin))
            continue
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = _build(tp, value, path, origin, problems)
        else:
            ok, converted = _coerce(value, tp)
            if ok:
                kwargs[key] = converted
            else:
                problems.append(f"{origin}: {path} must be {_type_name(tp)}, got {value!r}")
    return cls(**kwargs)


def _coerce(value: Any, tp: Any) -> tuple[bool, Any]:
    """Check ``value`` against annotation ``tp``; ints are accepted (and converted) where floats are expected."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        for arm in typing.get_args(tp):
            ok, v = _coerce(value, arm)
            if ok:
                return True, v
        return False, value
    if tp is type(None):
        return value is None, value
    if tp is Any:
        return True, value
    if origin is list:
        if not isinstance(value, list | tuple):
            return False, value
        (item_tp,) = typing.get_args(tp) or (Any,)
        out = []
        for v in value:
            ok, cv = _coerce(v, item_tp)
            if not ok:
                return False, value
            out.append(cv)
        return True, out
    if origin is dict:
        return isinstance(value, dict), value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-4 (no dot) as a string
            try:
                return True, float(value)
            except ValueError:
                return False, value
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        return ok, float(value) if ok else value
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    return isinstance(value, tp), value


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if tp is type(None):
        return "null"
    if typing.get_origin(tp) is list:
        return f"a list of {_type_name(typing.get_args(tp)[0])}"
    return getattr(tp, "__name__", str(tp))


def _validate(cfg: Config, origin: str) -> list[str]:
    """Cross-field and range checks; returns the problems found."""
    problems = []
    for key, choices in _CHOICES.items():
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        if value not in choices:
            close = difflib.get_close_matches(str(value), [str(c) for c in choices if c is not None], n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            problems.append(f"{origin}: {key} must be one of {list(choices)}, got {value!r}{hint}")
    d, t, e, o = cfg.data, cfg.train, cfg.eval, cfg.optim
    pairs = {"data.crop_size": d.crop_size, "eval.crop_size": e.crop_size, "eval.stride": e.stride}
    for key, value in pairs.items():
        if value is not None and (len(value) != 2 or min(value) < 1):
            problems.append(f"{origin}: {key} must be two positive integers [H, W], got {value}")
    if len(d.scale_range) != 2 or not 0 < d.scale_range[0] <= d.scale_range[1]:
        problems.append(
            f"{origin}: data.scale_range must be [low, high] with 0 < low <= high, got {d.scale_range}"
        )
    positive = {
        "data.batch_size": d.batch_size,
        "train.max_iters": t.max_iters,
        "train.eval_every": t.eval_every,
        "train.log_every": t.log_every,
        "train.grad_accum": t.grad_accum,
        "eval.batch_size": e.batch_size,
        "optim.lr": o.lr,
    }
    for key, value in positive.items():
        if not value > 0:  # also catches nan
            problems.append(f"{origin}: {key} must be positive, got {value}")
    finite = {f"optim.{f.name}": getattr(o, f.name) for f in dataclasses.fields(o)}
    for key, value in finite.items():
        if key in positive and not value > 0:  # already said: one message per mistake
            continue
        if isinstance(value, float) and not math.isfinite(value):
            problems.append(f"{origin}: {key} must be a finite number, got {value}")
    stride = cfg.student.output_stride or 8  # the builders' default
    for key in ("data.crop_size", "eval.crop_size"):
        value = pairs[key]
        if value is not None and len(value) == 2 and min(value) < stride:
            problems.append(
                f"{origin}: {key}={value} is smaller than the model's output stride {stride}: its 1/{stride} "
                f"feature map would be empty; use a crop of at least {stride}x{stride} (the papers use 512x1024)"
            )
    if t.save_every is not None and t.save_every <= 0:
        problems.append(f"{origin}: train.save_every must be positive or null, got {t.save_every}")
    if t.stop_after is not None and not 0 < t.stop_after <= t.max_iters:
        problems.append(f"{origin}: train.stop_after must be in 1..train.max_iters, got {t.stop_after}")
    if d.num_workers < 0:
        problems.append(f"{origin}: data.num_workers must be >= 0, got {d.num_workers}")
    for i, spec in enumerate(cfg.losses):
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
            problems.append(
                f"{origin}: losses.{i} must be a mapping with a 'name' (e.g. {{name: cwd}}), got {spec!r}"
            )
    problems += [f"{origin}: {p}" for p in _loss_problems(cfg.losses)]
    problems += [f"{origin}: {p}" for p in _task_problems(cfg)]
    a = cfg.adversarial
    if a.enabled:
        problems += _adversarial_problems(cfg, origin, stride)
    problems += [f"{origin}: {p}" for p in _quantize_problems(cfg)]
    if cfg.losses and cfg.teacher.checkpoint is None:
        problems.append(
            f"{origin}: losses are given but teacher.checkpoint is null; set teacher.checkpoint=PATH to distil, "
            "or losses=[] for plain training"
        )
    return problems


# Quantization-aware distillation's default terms: pixel-wise KD on the logits (configs/_methods/kd.yaml).
QAD_LOSSES = [{"name": "kd", "tau": 1.0, "weight": 1.0}]


def _quantize_defaults(cfg: Config) -> None:
    """A QAD run distils from its own float checkpoint with logit KD unless the config names a teacher/losses."""
    q = cfg.quantize
    if q.target is None or q.checkpoint is None:
        return
    if cfg.teacher.checkpoint is None:
        cfg.teacher.checkpoint = q.checkpoint
    if not cfg.losses:
        cfg.losses = [dict(spec) for spec in QAD_LOSSES]


def _quantize_problems(cfg: Config) -> list[str]:
    q = cfg.quantize
    if q.target is None:
        return []
    problems = []
    if not q.checkpoint:
        problems.append(
            f"quantize.target={q.target} needs quantize.checkpoint: the trained float checkpoint to fine-tune "
            "(e.g. quantize.checkpoint=runs/demo/cwd/best.pth)"
        )
    if q.calib_count < 1:
        problems.append(f"quantize.calib_count must be >= 1, got {q.calib_count}")
    if not 50.0 < q.percentile <= 100.0:
        problems.append(f"quantize.percentile must lie in (50, 100], got {q.percentile}")
    if cfg.student.pretrained:
        problems.append(
            "quantize.checkpoint gives the student its weights; drop student.pretrained (student.pretrained=null)"
        )
    return problems


def _task_problems(cfg: Config) -> list[str]:
    """The ``task`` section's values: the OHEM rule and its settings, the weights, the class weights."""
    t = cfg.task
    problems = _ohem_problems(t.ohem) + _weight_problems(t)
    if not 0 < t.boundary.aware_thresh < 1:
        problems.append(f"task.boundary.aware_thresh must lie in (0, 1), got {t.boundary.aware_thresh}")
    if (t.boundary.weight or t.boundary.aware_weight) and (t.detail.bce_weight or t.detail.dice_weight):
        problems.append(
            "task.boundary (PIDNet's D branch) and task.detail (STDC's detail head) both read the student's "
            "boundary map; set the weights of the one that is not this student's to 0"
        )
    if t.aux_weights is not None and cfg.train.aux_weight == 0:
        problems.append(
            "task.aux_weights is given but train.aux_weight=0 builds the student without auxiliary heads; "
            "drop task.aux_weights (task.aux_weights=null) or set train.aux_weight to a positive value"
        )
    return problems + _class_weight_problems(t.class_weights)


def _weight_problems(t: TaskConfig) -> list[str]:
    weights = {
        "task.boundary.weight": t.boundary.weight,
        "task.boundary.aware_weight": t.boundary.aware_weight,
        "task.detail.bce_weight": t.detail.bce_weight,
        "task.detail.dice_weight": t.detail.dice_weight,
    }
    weights.update({f"task.aux_weights.{i}": w for i, w in enumerate(t.aux_weights or [])})
    return [f"{k} must be a finite number >= 0, got {w}" for k, w in weights.items() if not 0 <= w < math.inf]


def _class_weight_problems(table: dict[str, Any]) -> list[str]:
    """Each entry names a dataset reader (a misspelt one would silently train unweighted) and holds weights."""
    from segkd.infer.datasets import DATASETS  # torch-free

    problems = []
    for name, values in table.items():
        if name not in DATASETS.names():
            close = difflib.get_close_matches(str(name), DATASETS.names(), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            problems.append(
                f"task.class_weights.{name}: no dataset {name!r}{hint} (the keys are data.dataset names: "
                f"{', '.join(DATASETS.names())})"
            )
        ok = isinstance(values, list) and values and all(_positive_number(v) for v in values)
        if not ok:
            problems.append(
                f"task.class_weights.{name} must be a list of positive numbers (one per class), got {values!r}"
            )
    return problems


def _ohem_problems(o: OhemConfig) -> list[str]:
    if o.rule not in OHEM_RULES:
        close = difflib.get_close_matches(str(o.rule), list(OHEM_RULES), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        return [f"task.ohem.rule must be one of {list(OHEM_RULES)}, got {o.rule!r}{hint}"]
    problems = []
    if o.thresh is not None and not 0 < o.thresh <= 1:
        problems.append(f"task.ohem.thresh must lie in (0, 1] (a probability), got {o.thresh}")
    if o.rule == "hrnet" and o.min_kept is not None and o.min_kept < 1:
        problems.append(f"task.ohem.min_kept must be >= 1, got {o.min_kept}")
    if o.rule != "hrnet" and o.min_kept is not None:
        problems.append(
            f"task.ohem.min_kept is the hrnet rule's; the {o.rule} rule derives its minimum from the batch "
            f"(see OhemConfig): set task.ohem.min_kept=null, or task.ohem.rule=hrnet"
        )
    return problems


def _positive_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and 0 < value < math.inf


def _loss_problems(specs: list[Any]) -> list[str]:
    if not specs:
        return []
    from segkd.distill.losses.criterion import spec_problems  # torch: only for configs that name losses

    return spec_problems(specs)


def _adversarial_problems(cfg: Config, origin: str, stride: int) -> list[str]:
    from segkd.distill.adversarial import MIN_LOGITS

    a, problems = cfg.adversarial, []
    if not cfg.losses or cfg.teacher.checkpoint is None:
        problems.append(
            f"{origin}: adversarial.enabled=true needs a teacher and losses (it compares the teacher's logits "
            "with the student's); set teacher.checkpoint and losses, or adversarial.enabled=false"
        )
    need = MIN_LOGITS * stride
    if min(cfg.data.crop_size) < need:
        problems.append(
            f"{origin}: adversarial.enabled=true needs crops of at least {need}x{need} at output stride {stride} "
            f"(the discriminator reduces the 1/{stride} logits 16 times, then applies a 4x4 convolution); "
            f"data.crop_size is {cfg.data.crop_size}"
        )
    for key in ("lambda_adv", "lambda_d"):
        if not getattr(a, key) >= 0:
            problems.append(f"{origin}: adversarial.{key} must be >= 0, got {getattr(a, key)}")
    if not a.lr > 0 or a.width < 1 or len(a.betas) != 2 or not all(0 <= b < 1 for b in a.betas):
        problems.append(
            f"{origin}: adversarial needs lr > 0, width >= 1 and two betas in [0, 1), got lr={a.lr}, "
            f"width={a.width}, betas={a.betas}"
        )
    return problems


def group_files(selection: dict[str, str], root: Path = CONFIG_ROOT) -> list[Path | dict[str, Any]]:
    """The files ``dataset=D student=S method=M schedule=X`` name (any may be left out), in merge order.

    ``schedule=official`` is the student's own repository's schedule on the dataset (``D/_official/S.yaml``); it
    merges last, over the dataset's schedule.

    A student with no ``_students/S.yaml`` that is a registered model (a new architecture is one model file) is
    taken as ``{student: {name: S}}``: its builder's defaults, no recipe file needed.

    Raises:
        ConfigError: a name with no file, listing the names there are and the closest one.
    """
    unknown = sorted(set(selection) - set(GROUPS))
    if unknown:
        raise ConfigError(f"unknown part(s) {unknown}; a run is composed of {list(GROUPS)}")
    dataset = selection.get("dataset")
    places = {
        "dataset": (
            lambda n: root / n / "_base.yaml",
            sorted(p.parent.name for p in root.glob("*/_base.yaml")),
        ),
        "student": (lambda n: root / "_students" / f"{n}.yaml", _stems(root / "_students")),
        "method": (lambda n: _method_file(root, dataset, n), _stems(root / "_methods")),
        # schedule=official: the student's own repository's schedule on that dataset, D/_official/S.yaml
        "schedule": (
            lambda n: root / str(dataset) / f"_{n}" / f"{selection.get('student')}.yaml",
            sorted({p.parent.name[1:] for p in root.glob(f"{dataset}/_*/{selection.get('student')}.yaml")}),
        ),
    }
    if "schedule" in selection and not ("dataset" in selection and "student" in selection):
        raise ConfigError(
            f"schedule={selection['schedule']} is a student's schedule on a dataset: give dataset= and student= too "
            "(e.g. dataset=cityscapes student=pidnet_s method=cwd schedule=official)"
        )
    files: list[Path | dict[str, Any]] = []
    for group in GROUPS:
        if group not in selection:
            continue
        name, (where, names) = str(selection[group]), places[group]
        path = where(name)
        if not path.is_file() and group == "student" and _registered_model(name):
            files.append({"student": _student_part(name)})
            continue
        if not path.is_file() and group == "schedule" and not names:
            have = sorted(q.stem for q in root.glob(f"{dataset}/_{name}/*.yaml"))
            raise ConfigError(
                f"schedule={name}: {selection['student']} has no {name} schedule on {dataset} "
                f"(students with one: {', '.join(have) or 'none'}); leave schedule= out for the dataset's own"
            )
        if not path.is_file():
            close = difflib.get_close_matches(name, names, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(
                f"{group}={name}: no {path.relative_to(root.parent)}{hint} ({group}s: {', '.join(names)})"
            )
        files.append(path)
    return files


def _student_part(name: str) -> dict[str, Any]:
    """``student=NAME`` for a registered model with no recipe file: its builder's defaults (the options another
    student left in the config are cleared) and, for an official real-time layout, the official normalisation."""
    from segkd.distill.models.pretrained import OFFICIAL_LAYOUTS

    part: dict[str, Any] = {"name": name, "pretrained": None, "width": None, "output_stride": None,
                            "deep_stem": None, "align_corners": None, "options": {}}  # fmt: skip
    layout = OFFICIAL_LAYOUTS.get(name)
    if layout is not None:
        part.update(mean=list(layout.mean), std=list(layout.std), channel_order=layout.channel_order,
                    align_corners=layout.align_corners)  # fmt: skip
    return part


def _registered_model(name: str) -> bool:
    from segkd.distill.models import MODELS  # torch: only when a student has no recipe file

    return name in MODELS.names()


def _method_file(root: Path, dataset: str | None, name: str) -> Path:
    """The dataset's own variant of a method (``configs/ade20k/_hwd.yaml``: HWD's mu for ADE20K) or the method."""
    own = root / dataset / f"_{name}.yaml" if dataset else None
    return own if own is not None and own.is_file() else root / "_methods" / f"{name}.yaml"


def _stems(folder: Path) -> list[str]:
    return sorted(p.stem for p in folder.glob("*.yaml"))


def load_config(
    path: str | Path | list[str | Path] | None, overrides: list[str] | None = None, root: Path = CONFIG_ROOT
) -> Config:
    """Build a :class:`Config` from YAML files (or the defaults when ``path`` is None) and overrides.

    ``path`` is one file or several, merged in order; ``overrides`` are ``dataset=``/``student=``/``method=``
    selections (see :func:`group_files`) and dotted ``key=value`` pairs, applied in that order.

    Raises:
        ConfigError: listing every unknown key, wrong type and invalid value found.
    """
    paths = [] if path is None else [path] if isinstance(path, str | Path) else list(path)
    pairs = parse_overrides(overrides or [])
    selection = {k: v for k, v in pairs if "." not in k and k in GROUPS}
    files = [*map(Path, paths), *group_files(selection, root)]
    origin = " + ".join(str(f) if isinstance(f, Path) else f"student={selection['student']}" for f in files)
    origin = origin or "defaults"
    data: dict[str, Any] = {}
    student_parts = files[len(paths) :][1:2] if "dataset" in selection else files[len(paths) :][:1]
    for part in files:
        if "student" in selection and part in student_parts:
            # another student: the architecture options the config gave the previous one do not carry over
            data = _merge(data, {"student": dict.fromkeys(_ARCH_OPTIONS) | {"options": {}}})
        data = _merge(data, load_yaml(part) if isinstance(part, Path) else part)
    for key, value in pairs:
        if key not in selection:
            _apply_override(data, key, value)
    problems: list[str] = []
    cfg = _build(Config, data, "", origin, problems)
    if not problems:
        _quantize_defaults(cfg)
        problems = _validate(cfg, origin)
    if problems:
        raise ConfigError("invalid config:\n  " + "\n  ".join(problems))
    if cfg.train.output_dir is None:
        cfg.train.output_dir = composed_output_dir(paths[-1] if paths else None, selection)
    return cfg


def composed_output_dir(path: str | Path | None, selection: dict[str, Any]) -> str:
    """``runs/cityscapes/deeplabv3_r18_cwd`` for ``dataset=cityscapes student=deeplabv3_r18 method=cwd``;
    with a ``--config`` file, its folder (:func:`default_output_dir`) and the selections joined to its name."""
    parts = [str(selection[g]) for g in ("student", "method", "schedule") if g in selection]
    if path is None:
        if not selection:
            return default_output_dir(None)
        return str(Path("runs", str(selection.get("dataset", "")), "_".join(parts) or "base"))
    base = default_output_dir(path)
    extra = [str(selection["dataset"])] if "dataset" in selection else []
    return "_".join([base, *extra, *parts])


def default_output_dir(path: str | Path | None) -> str:
    """``configs/cityscapes/deeplabv3_r18_cwd.yaml`` -> ``runs/cityscapes/deeplabv3_r18_cwd``."""
    if path is None:
        return "runs/default"
    p = Path(path).with_suffix("")
    parts = p.parts
    if "configs" in parts:
        rel = parts[len(parts) - 1 - parts[::-1].index("configs") + 1 :]
        return str(Path("runs", *rel))
    return str(Path("runs") / p.name)


def config_to_dict(cfg: Config) -> dict[str, Any]:
    """Plain nested dict of ``cfg`` (YAML/JSON/checkpoint safe)."""
    return dataclasses.asdict(cfg)


def save_config(cfg: Config, path: str | Path) -> None:
    """Write the resolved config as YAML (atomically); :func:`load_config` reads it back to the same config."""
    text = yaml.safe_dump(config_to_dict(cfg), sort_keys=False, default_flow_style=None)
    atomic_write_text(path, text)
