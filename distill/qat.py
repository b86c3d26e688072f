"""Quantization-aware distillation (QAD): fine-tune a trained float model through the INT8 form it will run in.

A ``quantize:`` section in a training config (see ``configs/demo/qad.yaml``) turns a run into QAD:

1. The student starts from a trained float checkpoint (``quantize.checkpoint``).
2. Calibrated once: the model is exported to ONNX exactly as ``export/to_onnx.py`` exports it, and ONNX Runtime
   calibrates the ranges of every tensor the chosen INT8 form quantizes (the same calibrator, method and settings
   as post-training INT8: `segkd.export.quantize`). Step 0 of QAD is therefore the post-training file.
3. Fake quantization in exactly that form's placement: every Conv of the deployed graph quantizes its input
   per tensor (``tensorrt``: s8 symmetric, zero point 0; ``cpu``: u8 asymmetric) and its weight per output
   channel (s8 symmetric), with ONNX Runtime's own scale and zero-point arithmetic; the (BatchNorm-folded) bias
   rounded to INT32 with scale input scale x weight scale, as ONNX Runtime computes it (`bias_rounding`). The
   gradient passes straight through inside the range and is zero outside (``torch.fake_quantize_*``).
   As in the file, a tensor is quantized once for all its readers: where a leaf module (a ReLU, a pooling)
   produced a Conv's input, its output is quantized, so that a residual branch reading the same tensor gets the
   quantized value as the file's Add does. BatchNorm statistics are frozen (they are folded into the Conv weights
   of the file, and per-channel quantization of the folded weight equals per-channel quantization of the unfolded
   one). The fake-quantized model computes what the ``tensorrt`` file computes, up to float rounding (a value on
   a rounding boundary may move one step: 0.02-0.3 % of the activations of a random network); the ``cpu`` form
   also quantizes Conv outputs, Add, Concat and Resize (ONNX Runtime's QOperator graph), which training does not
   model: those keep the ranges calibrated at the start.
4. Fine-tuning distils from the float model itself (the default teacher) or any teacher, with the project's
   losses (logit KL by default).

The ranges travel in the checkpoint's metadata (``extra["quantization"]``, JSON): the export of a QAD checkpoint
quantizes with them and calibrates nothing. Training-only heads (auxiliary, boundary) are absent from the
deployed graph and stay float.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from segkd.distill.load import batchnorm_affine
from segkd.infer.meta import ModelMeta

__all__ = [
    "QUANT_KEY",
    "TARGETS",
    "QuantSpec",
    "QuantizationError",
    "attach_fake_quant",
    "bias_rounding",
    "calibrate_spec",
    "conv_input_tensors",
    "conv_tensors",
    "read_spec",
]

QUANT_KEY = "quantization"  # the metadata key (ModelMeta.extra) of a quantization-aware trained model
TARGETS = ("tensorrt", "cpu")


class QuantizationError(ValueError):
    """A model, checkpoint or graph that quantization-aware training or its export cannot use (one line)."""


@dataclass
class QuantSpec:
    """How a QAD model is quantized: the INT8 form and the range of every tensor that form quantizes.

    Attributes:
        target: ``tensorrt`` or ``cpu`` (the forms of ``export/to_onnx.py --target``).
        method: the calibration method of the ranges (``percentile``, ``minmax``, ``entropy``).
        ranges: ONNX tensor name -> [lowest, highest] (float32 values) in the graph exported with the
            default export options.
        conv_inputs: module name of each deployed Conv -> the ONNX tensor name of its input.
        conv_outputs: ``cpu`` form only (its QLinearConv quantizes its output too): module name of each Conv ->
            the ONNX tensor name of its output (BatchNorm folded in).
        producer_inputs: ``cpu`` form only: Conv module name -> the quantized tensor (a QLinearAdd's or
            QLinearConcat's output) that the operation producing the Conv's input (a ReLU, a pooling) reads.
        source, source_sha256: the float checkpoint QAD started from.
        images: how many images the ranges were calibrated on.
    """

    target: str
    method: str
    ranges: dict[str, list[float]]
    conv_inputs: dict[str, str]
    source: str = ""
    source_sha256: str = ""
    images: int = 0
    size: list[int] = dataclasses.field(default_factory=lambda: [64, 128])
    conv_outputs: dict[str, str] = dataclasses.field(default_factory=dict)
    producer_inputs: dict[str, str] = dataclasses.field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str, where: str = "the checkpoint") -> QuantSpec:
        try:
            data = json.loads(text)
            spec = cls(**data)
            ok = spec.target in TARGETS and all(
                isinstance(v, list) and len(v) == 2 and all(isinstance(f, float | int) for f in v)
                for v in spec.ranges.values()
            )
        except (TypeError, ValueError) as e:
            raise QuantizationError(f"{where}: its quantization metadata is unreadable ({e})") from None
        tensors = (
            set(spec.conv_inputs.values())
            | set(spec.conv_outputs.values())
            | set(spec.producer_inputs.values())
        )
        if not ok or not tensors <= set(spec.ranges):
            raise QuantizationError(
                f"{where}: its quantization metadata is inconsistent; use the file QAD wrote"
            )
        return spec

    def conv_range(self, module: str) -> tuple[float, float]:
        lo, hi = self.ranges[self.conv_inputs[module]]
        return float(lo), float(hi)


def read_spec(meta: ModelMeta, where: str = "the checkpoint") -> QuantSpec | None:
    """The quantization of a QAD model's metadata, or None for a float model."""
    text = meta.extra.get(QUANT_KEY)
    return None if text is None else QuantSpec.from_json(text, where)


# ----------------------------------------------------------------------------------- Conv <-> graph mapping


def _deployed_convs(model: nn.Module, size: tuple[int, int]) -> list[tuple[str, tuple[int, ...]]]:
    """(module name, weight shape) of each Conv2d call of one eval-mode forward, in call order."""
    names = {m: n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    calls: list[tuple[str, tuple[int, ...]]] = []

    def record(module: nn.Module, _args: Any) -> None:
        calls.append((names[module], tuple(module.weight.shape)))

    handles = [m.register_forward_pre_hook(record) for m in names]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, 3, *size))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    seen: set[str] = set()
    for name, _ in calls:
        if name in seen:
            raise QuantizationError(
                f"the Conv {name} runs more than once per forward; quantization-aware training places one "
                "quantizer per Conv and cannot train a shared one"
            )
        seen.add(name)
    return calls


def _directions(w: np.ndarray) -> np.ndarray:
    """Each output channel of a Conv weight as a unit vector, its sign made positive by its largest entry.

    BatchNorm folding scales every output channel by its own factor: the directions are what a folded weight and
    the module's weight share.
    """
    flat = w.reshape(w.shape[0], -1).astype(np.float64)
    norm = np.linalg.norm(flat, axis=1, keepdims=True)
    flat = np.divide(flat, norm, out=np.zeros_like(flat), where=norm > 0)
    lead = flat[np.arange(len(flat)), np.abs(flat).argmax(axis=1)]
    return flat * np.where(lead < 0, -1.0, 1.0)[:, None]


def conv_input_tensors(model: nn.Module, onnx_path: str | Path, size: tuple[int, int]) -> dict[str, str]:
    """Module name of each Conv of ``model`` -> the input tensor name of its Conv node in the exported graph."""
    return {name: tensors[0] for name, tensors in conv_tensors(model, onnx_path, size).items()}


def conv_tensors(
    model: nn.Module, onnx_path: str | Path, size: tuple[int, int]
) -> dict[str, tuple[str, str]]:
    """Module name of each Conv of ``model`` -> (input, output) tensor names of its Conv node in the graph.

    The graph's Convs are matched to the modules by their weights (BatchNorm folding scales each output channel,
    so the per-channel directions are compared), not by position: exporters and graph optimisers may order
    independent branches differently from the Python forward. Among equal weights the call order decides.

    Raises:
        QuantizationError: a graph Conv matches no module (or the counts differ).
    """
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    weights = {t.name: t for t in graph.initializer}
    nodes = [n for n in graph.node if n.op_type == "Conv"]
    calls = _deployed_convs(model, size)
    if len(calls) != len(nodes):
        raise QuantizationError(
            f"the exported graph has {len(nodes)} Conv nodes for {len(calls)} Conv modules run by the model; "
            "quantization-aware training needs each deployed Conv to be an nn.Conv2d called once"
        )
    modules = dict(model.named_modules())
    free = {name: _directions(modules[name].weight.detach().float().cpu().numpy()) for name, _ in calls}
    out: dict[str, tuple[str, str]] = {}
    for node in nodes:
        init = weights.get(node.input[1])
        if init is None:
            raise QuantizationError(f"the Conv node {node.name} has no constant weight to match to a module")
        d = _directions(numpy_helper.to_array(init))
        live = np.abs(d).sum(axis=1) > 0  # a channel whose BatchNorm scale is 0 folds to zeros: no direction
        best, score = None, 0.999
        for name, candidate in free.items():  # in call order: the first of equal weights wins
            if candidate.shape == d.shape:
                cos = np.abs((candidate * d).sum(axis=1))[live]
                agreement = float(cos.min()) if cos.size else 1.0  # all zero: the first Conv of its shape
                if agreement > score:
                    best, score = name, agreement
        if best is None:
            raise QuantizationError(
                f"the Conv node {node.name} (weight {list(d.shape)}) matches none of the model's Conv modules"
            )
        out[best] = (node.input[0], node.output[0])
        del free[best]
    return out


# ------------------------------------------------------------------------------------------------ calibration


def calibrate_spec(
    model: nn.Module,
    meta: ModelMeta,
    samples: list[Any],
    *,
    target: str,
    method: str = "percentile",
    percentile: float | None = None,
    source: str = "",
    source_sha256: str = "",
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> QuantSpec:
    """Calibrate the INT8 ranges of ``model`` (float, any mode) as ``export/to_onnx.py`` would, once.

    Args:
        samples: calibration images (:class:`segkd.export.calib.Sample`) at the size to calibrate at.
    """
    from segkd.export.calib import CalibrationReader
    from segkd.export.onnx_export import torch_to_onnx
    from segkd.export.options import ExportOptions
    from segkd.export.quantize import DEFAULT_PERCENTILE, calibrate_ranges, pre_process
    from segkd.infer.fileio import work_dir

    if target not in TARGETS:
        raise QuantizationError(f"unknown INT8 target {target!r}; choose one of {', '.join(TARGETS)}")
    if not samples:
        raise QuantizationError("no calibration images")
    size = tuple(samples[0].image.shape[:2])
    model = copy.deepcopy(model).cpu().float().eval()  # exported on the CPU, wherever the run trains
    opts = ExportOptions()  # the graph export/to_onnx.py writes by default: the same tensor names
    with work_dir("qad-calib") as tmp:
        graph, pre = tmp / "graph.onnx", tmp / "pre.onnx"
        torch_to_onnx(model, meta, graph, size=size, opset=opts.opset, exporter=opts.exporter, slim=opts.slim,
                      log=lambda _: None)  # fmt: skip
        tensors = conv_tensors(model, graph, size)
        convs = {name: t[0] for name, t in tensors.items()}
        graph_nodes = list(__import__("onnx").load(str(graph), load_external_data=False).graph.node)
        pre_process(graph, pre, log)
        reader = CalibrationReader(samples, meta, "input", batch=1, fused=False)
        ranges = calibrate_ranges(pre, reader, method=method, target=target, progress=progress, log=log,
                                  percentile=DEFAULT_PERCENTILE if percentile is None else percentile)  # fmt: skip
    missing = sorted(n for n, t in convs.items() if t not in ranges)
    if missing:
        raise QuantizationError(f"calibration gave no range for the inputs of {', '.join(missing[:5])}")
    outputs: dict[str, str] = {}
    before: dict[str, str] = {}
    if target == "cpu":  # QOperator also quantizes Conv outputs and the Add/Concat between Convs
        outputs = {n: t[1] for n, t in tensors.items() if t[1] in ranges}
        before = _producer_inputs(graph_nodes, convs, set(ranges) - set(outputs.values()))
    return QuantSpec(target, method, {k: [lo, hi] for k, (lo, hi) in ranges.items()}, convs, source,
                     source_sha256, len(samples), list(size), outputs, before)  # fmt: skip


def _producer_inputs(nodes: list[Any], convs: dict[str, str], quantized: set[str]) -> dict[str, str]:
    """Conv module -> the quantized tensor that the one-input operation producing its input reads (the residual
    ``Add`` before a ``Relu``: the file quantizes the sum, then applies the ReLU in float)."""
    producer = {o: n for n in nodes for o in n.output}
    out = {}
    for module, tensor in convs.items():
        node = producer.get(tensor)
        if node is not None and node.op_type in ("Relu", "Clip", "MaxPool") and node.input[0] in quantized:
            source = producer.get(node.input[0])
            if source is not None and source.op_type in ("Add", "Concat"):
                out[module] = node.input[0]
    return out


# ------------------------------------------------------------------------------------------ fake quantization


def _activation_qparams(lo: float, hi: float, target: str) -> tuple[float, int, int, int]:
    """(scale, zero point, qmin, qmax) of an activation range, as ONNX Runtime's quantizer computes them."""
    from onnx import TensorProto
    from onnxruntime.quantization.quant_utils import compute_scale_zp, get_qmin_qmax_for_qType

    symmetric = target == "tensorrt"
    qtype = TensorProto.INT8 if symmetric else TensorProto.UINT8
    qmin, qmax = get_qmin_qmax_for_qType(qtype, symmetric=symmetric)
    zp, scale = compute_scale_zp(np.array(lo, np.float32), np.array(hi, np.float32), qmin, qmax, symmetric)
    return float(np.float32(scale)), int(zp), int(qmin), int(qmax)


def fake_quant_weight(w: Tensor) -> Tensor:
    """Per-output-channel symmetric INT8 (-127..127) fake quantization, ONNX Runtime's weight arithmetic."""
    amax = w.detach().abs().flatten(1).amax(dim=1).double()
    scale = (2 * amax / 254).float()
    scale = torch.where(scale < torch.finfo(torch.float32).tiny, torch.ones_like(scale), scale)
    zero = torch.zeros_like(scale, dtype=torch.int32)
    return torch.fake_quantize_per_channel_affine(w.float(), scale, zero, 0, -127, 127).to(w.dtype)


def bias_rounding(conv: nn.Conv2d, bn: nn.Module | None, input_scale: float) -> Tensor | None:
    """What rounding the file's bias to INT32 adds to ``conv``'s output (per channel, shape 1xCx1x1), or None
    where the file's Conv has no bias.

    ONNX Runtime computes a quantized Conv's bias as INT32 with scale = input scale x weight scale (the ``cpu``
    form's QLinearConv carries it so; for the ``tensorrt`` form its graph optimiser quantizes the float bias the
    same way). The bias and weight are those of the file: ``bn`` (frozen) folded in. Where a channel's weight
    scale is large the grid is coarse and the rounding shifts the whole channel (BiSeNetV2: up to 1.9 on a
    bias of 4.5). Constant here: the gradient of the bias passes through unchanged.
    """
    with torch.no_grad():
        bias = None if conv.bias is None else conv.bias.detach().double()
        amax = conv.weight.detach().abs().flatten(1).amax(dim=1).double()
        if bn is not None:  # folded: w' = w * k, b' = b * k + c
            k, shift = batchnorm_affine(bn)
            bias = shift if bias is None else bias * k + shift
            amax = amax * k.abs()
        else:
            k = torch.ones_like(amax)
        if bias is None:
            return None
        weight_scale = (2 * amax / 254).float()  # float32, as the file stores it
        weight_scale = torch.where(weight_scale < torch.finfo(torch.float32).tiny, 1.0, weight_scale)
        grid = (torch.tensor(input_scale, dtype=torch.float32) * weight_scale).double()
        rounded = torch.clamp(torch.round(bias / grid), -(2**31), 2**31 - 1) * grid
        shift_out = torch.where(k != 0, (rounded - bias) / torch.where(k != 0, k, 1.0), 0.0)
        return shift_out.to(conv.weight.dtype).view(1, -1, 1, 1)


def _quantized_conv_forward(
    conv: nn.Conv2d, qparams: tuple[float, int, int, int], bn: nn.Module | None, x: Tensor
) -> Tensor:
    scale, zp, qmin, qmax = qparams
    xq = torch.fake_quantize_per_tensor_affine(x.float(), scale, zp, qmin, qmax)
    out = conv._conv_forward(xq.to(x.dtype), fake_quant_weight(conv.weight), conv.bias)
    shift = bias_rounding(conv, bn, scale)
    return out if shift is None else out + shift.to(out.dtype)


def _frozen_batchnorm(module: nn.Module, _args: Any) -> None:
    module.training = False  # running statistics are used and not updated, whatever mode the model is in


def _leaf_calls(
    model: nn.Module, size: list[int], convs: set[str], train: bool
) -> tuple[dict, dict, Counter]:
    """One forward of a copy of ``model``: the (leaf module, call index) that produced each Conv's input, the
    BatchNorm call that reads each Conv's output (what the file folds into the Conv), and how often each leaf
    module ran."""
    probe = copy.deepcopy(model).cpu().float().train(train)
    names = {m: n for n, m in probe.named_modules() if not any(True for _ in m.children())}
    made: dict[int, tuple[Any, int]] = {}
    alive: list[Tensor] = []  # outputs kept referenced, so that no id is reused during the forward
    counts: Counter = Counter()
    stack: list[str] = []

    def produced(key: Any, output: Tensor) -> None:  # a function's output; a leaf module's overwrites it
        made[id(output)] = (key, counts[key])
        alive.append(output)
        counts[key] += 1

    producers: dict[str, tuple[str, int]] = {}
    folded: dict[str, tuple[str, int]] = {}

    def before(module: nn.Module, args: Any) -> None:
        name = names[module]
        source = made.get(id(args[0])) if args else None
        if name in convs and source is not None:
            producers[name] = source
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and source is not None and source[0] in convs:
            folded[source[0]] = (name, counts[name])

    def after(module: nn.Module, _args: Any, output: Any) -> None:
        name = names[module]
        if isinstance(output, Tensor):
            made[id(output)] = (name, counts[name])
            alive.append(output)
        counts[name] += 1

    handles = [
        h for m in names for h in (m.register_forward_pre_hook(before), m.register_forward_hook(after))
    ]
    handles += _track_modules(probe, stack)
    x = torch.zeros(2, 3, *size)  # 2 images: BatchNorm in train mode needs more than one value
    try:  # dropout draws random numbers in train mode: the run's random stream must not move (exact resume)
        with torch.no_grad(), torch.random.fork_rng(devices=[]), _FunctionCalls(stack, produced):
            try:  # training runs the heads the losses read (auxiliary, boundary) as the trainer calls it
                probe(x, return_features=True) if train else probe(x)
            except TypeError:  # a model without that argument
                probe(x)
    finally:
        for h in handles:
            h.remove()
    return producers, folded, counts


def _track_modules(model: nn.Module, stack: list[str]) -> list[Any]:
    """Hooks keeping ``stack`` at the names of the modules whose forward is running (innermost last), entered
    before and left after every other hook of the module (a quantizer's own calls belong to its module)."""

    def leave(_module: nn.Module, _args: Any, _output: Any) -> None:  # returns None: the output stays
        if stack:
            stack.pop()

    handles = []
    for name, module in model.named_modules():
        handles.append(module.register_forward_pre_hook(lambda _m, _a, n=name: stack.append(n), prepend=True))
        handles.append(module.register_forward_hook(leave, always_call=True))
    return handles


class _FunctionCalls(torch.overrides.TorchFunctionMode):
    """Every tensor a torch function returns (``F.relu``, ``x + y``, ``torch.cat``, ...), keyed by the module
    whose forward called it and the function's name, handed to ``seen(key, output)``, which may replace it."""

    def __init__(self, stack: list[str], seen: Callable[[Any, Tensor], Tensor | None]) -> None:
        super().__init__()
        self.stack, self.seen = stack, seen

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        output = func(*args, **(kwargs or {}))
        if isinstance(output, Tensor) and self.stack:
            replaced = self.seen((self.stack[-1], getattr(func, "__name__", str(func))), output)
            if replaced is not None:
                return replaced
        return output


class _FunctionQuantizer:
    """Fake-quantizes the outputs of given function calls (a Conv input a functional ReLU or sum produced), so
    that every reader of the tensor sees the quantized value, as in the file; counts restart every forward."""

    def __init__(self, calls: dict[Any, dict[int, tuple[float, int, int, int]]]) -> None:
        self.calls, self.counts = calls, Counter()

    def __call__(self, key: Any, output: Tensor) -> Tensor | None:
        if key not in self.calls:
            return None
        i = self.counts[key]
        self.counts[key] += 1
        if i not in self.calls[key]:
            return None
        scale, zp, qmin, qmax = self.calls[key][i]
        return torch.fake_quantize_per_tensor_affine(output.float(), scale, zp, qmin, qmax).to(output.dtype)


def _quantize_functions(model: nn.Module, calls: dict[Any, dict[int, tuple[float, int, int, int]]]) -> None:
    """Run ``model``'s forward under a function mode that fake-quantizes ``calls``' outputs."""
    stack: list[str] = []
    _track_modules(model, stack)
    quantizer = _FunctionQuantizer(calls)
    forward = model.forward

    @functools.wraps(forward)
    def quantized_forward(*args: Any, **kwargs: Any) -> Any:
        quantizer.counts.clear()
        with _FunctionCalls(stack, quantizer):
            return forward(*args, **kwargs)

    model.forward = quantized_forward  # type: ignore[method-assign]


class _InputQuantizer:
    """Forward pre-hook: fake-quantizes a module's first input at given calls (a sum the file quantizes)."""

    def __init__(self, calls: dict[int, tuple[float, int, int, int]]) -> None:
        self.calls, self.count = calls, 0

    def __call__(self, _module: nn.Module, args: Any) -> Any:
        i, self.count = self.count, self.count + 1
        if i in self.calls and args and isinstance(args[0], Tensor):
            scale, zp, qmin, qmax = self.calls[i]
            x = args[0]
            return (
                torch.fake_quantize_per_tensor_affine(x.float(), scale, zp, qmin, qmax).to(x.dtype),
                *args[1:],
            )
        return None


class _OutputQuantizer:
    """Forward hook: fake-quantizes a module's output at the calls that produce a Conv input.

    ONNX Runtime quantizes a tensor once and every consumer reads the quantized value (the residual Add reads the
    same DequantizeLinear output as the next Conv), so the quantization belongs to the tensor's producer. The
    Conv's own input quantizer stays: on the same grid it changes nothing.
    """

    def __init__(self, calls: dict[int, tuple[float, int, int, int]]) -> None:
        self.calls, self.count = calls, 0

    def __call__(self, _module: nn.Module, _args: Any, output: Any) -> Any:
        i, self.count = self.count, self.count + 1
        if i in self.calls and isinstance(output, Tensor):
            scale, zp, qmin, qmax = self.calls[i]
            return torch.fake_quantize_per_tensor_affine(output.float(), scale, zp, qmin, qmax).to(
                output.dtype
            )
        return None


def _reset_counts(quantizers: list[Any]) -> Callable[..., None]:
    def reset(_module: nn.Module, _args: Any) -> None:
        for q in quantizers:
            q.count = 0

    return reset


def attach_fake_quant(model: nn.Module, spec: QuantSpec, *, freeze_bn: bool = True) -> int:
    """Make ``model`` compute in ``spec``'s INT8 form (in place; the state dict keeps its keys). Returns the
    number of quantized Convs.

    Each Conv quantizes its input and weight; where a leaf module produced that input and runs as often in
    training as in the deployed forward, its output is quantized at that call, so that every other reader of the
    tensor (a residual branch) sees the quantized value too, as in the INT8 file.

    Raises:
        QuantizationError: ``spec`` names a Conv the model does not have (another architecture).
    """
    modules = dict(model.named_modules())
    unknown = sorted(set(spec.conv_inputs) - set(modules))
    if unknown:
        raise QuantizationError(f"the quantization ranges name Convs this model does not have: {unknown[:3]}")
    for name in spec.conv_inputs:
        conv = modules[name]
        if not isinstance(conv, nn.Conv2d):
            raise QuantizationError(
                f"{name} is a {type(conv).__name__}, not the Conv the ranges were made for"
            )
    convs = set(spec.conv_inputs)
    producers, folded, deployed_counts = _leaf_calls(model, spec.size, convs, train=False)
    _, _, training_counts = _leaf_calls(model, spec.size, convs, train=True)
    calls: dict[str, dict[int, tuple[float, int, int, int]]] = {}
    functions: dict[Any, dict[int, tuple[float, int, int, int]]] = {}  # (module, function name) -> calls
    for name in spec.conv_inputs:
        qparams = _activation_qparams(*spec.conv_range(name), spec.target)
        conv = modules[name]
        bn = modules[folded[name][0]] if name in folded else None  # what the file folds into this Conv
        conv.forward = functools.partial(_quantized_conv_forward, conv, qparams, bn)  # type: ignore[method-assign]
        if name in producers:
            module, call = producers[name]
            if deployed_counts[module] == training_counts[module]:  # the same call is the same tensor
                (calls if isinstance(module, str) else functions).setdefault(module, {})[call] = qparams
    for name, tensor in spec.conv_outputs.items():  # cpu form: the QLinearConv's quantized output
        module, call = folded.get(name, (name, 0))  # after its BatchNorm, which the file folds into the Conv
        if name in modules and deployed_counts[module] == training_counts[module]:
            lo, hi = spec.ranges[tensor]
            calls.setdefault(module, {}).setdefault(call, _activation_qparams(lo, hi, spec.target))
    inputs: dict[str, dict[int, tuple[float, int, int, int]]] = {}
    for name, tensor in spec.producer_inputs.items():  # cpu form: the quantized sum a ReLU module reads
        if name in producers and isinstance(producers[name][0], str):
            module, call = producers[name]
            if deployed_counts[module] == training_counts[module]:
                inputs.setdefault(module, {})[call] = _activation_qparams(*spec.ranges[tensor], spec.target)
    quantizers: list[Any] = []
    for module, at in calls.items():
        quantizers.append(_OutputQuantizer(at))
        modules[module].register_forward_hook(quantizers[-1])
    for module, at in inputs.items():
        quantizers.append(_InputQuantizer(at))
        modules[module].register_forward_pre_hook(quantizers[-1])
    model.register_forward_pre_hook(_reset_counts(quantizers))
    if functions:
        _quantize_functions(model, functions)
    if freeze_bn:
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.register_forward_pre_hook(_frozen_batchnorm)
    return len(spec.conv_inputs)


# --------------------------------------------------------------------------------------------- the training run

SPEC_FILE = "quantization.json"  # in the run folder: the ranges a resumed run keeps (calibrated once)


def prepare_qad(run: Any, resumed: bool, log: Callable[[str], None] = print) -> ModelMeta:
    """Calibrate (fresh run, main process) or reread (resumed run) the ranges and fake-quantize the student.

    Returns the student's metadata with the quantization recorded, what every checkpoint of the run carries.

    Raises:
        ConfigError: a resumed run without its ranges, or whose ``quantize.target`` changed.
    """
    from segkd.distill.config import ConfigError
    from segkd.distill.run_dir import raise_on_all
    from segkd.infer.fileio import atomic_write_text, sha256_file

    cfg, acc, q = run.cfg, run.accelerator, run.cfg.quantize
    path = Path(run.run_dir) / SPEC_FILE
    error: Exception | None = None
    if acc.is_main_process and not resumed:
        try:
            from segkd.export.calib import dataset_samples

            crop = (int(cfg.data.crop_size[0]), int(cfg.data.crop_size[1]))
            samples = dataset_samples(cfg.data.dataset, cfg.data.root, cfg.data.train_split, q.calib_count, crop,
                                      run.meta.num_classes)  # fmt: skip
            log(
                f"calibrating INT8 ranges for {q.target} ({q.calib_method}) on {len(samples)} training images"
            )
            spec = calibrate_spec(run.student, run.meta, samples, target=q.target, method=q.calib_method,
                                  percentile=q.percentile, source=str(q.checkpoint),
                                  source_sha256=sha256_file(q.checkpoint), log=log)  # fmt: skip
            atomic_write_text(path, spec.to_json())
        except (QuantizationError, ValueError, OSError) as e:
            error = ConfigError(f"cannot calibrate quantization-aware training: {e}")
    raise_on_all(acc, error)
    acc.wait_for_everyone()
    if not path.is_file():
        raise ConfigError(
            f"{path} is missing: it holds this run's quantization ranges, calibrated at its start; start the run "
            "again with train.overwrite=true"
        )
    spec = QuantSpec.from_json(path.read_text(), str(path))
    if spec.target != q.target:
        raise ConfigError(
            f"this run was calibrated for quantize.target={spec.target}, not {q.target}; resume with "
            f"quantize.target={spec.target}, or train the other form into another train.output_dir"
        )
    n = attach_fake_quant(run.student, spec, freeze_bn=q.freeze_bn)
    log(f"quantization-aware training for {spec.target}: {n} Convs fake-quantized (inputs per tensor, weights "
        f"per channel){', BatchNorm frozen' if q.freeze_bn else ''}")  # fmt: skip
    return dataclasses.replace(run.meta, extra={**run.meta.extra, QUANT_KEY: spec.to_json()})
