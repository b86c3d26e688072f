"""Quantization-aware distillation: the fake quantization's arithmetic and placement, the run, its export."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import yaml
from onnx import numpy_helper
from torch import nn

from segkd.distill.checkpoint import load_checkpoint, save_checkpoint
from segkd.distill.models import build_model
from segkd.distill.qat import (
    QUANT_KEY,
    QuantSpec,
    _activation_qparams,
    attach_fake_quant,
    calibrate_spec,
    fake_quant_weight,
    read_spec,
)
from segkd.export.calib import CalibrationReader, synthetic_samples
from segkd.export.onnx_export import read_metadata, torch_to_onnx
from segkd.export.qad import QAD_REFERENCE, biases_on_int32_grid, quantize_qad
from segkd.export.quantize import quantize_int8
from segkd.infer.meta import ModelMeta

REPO = Path(__file__).resolve().parents[1]
K = 19
SIZE = (64, 128)
ARCH = {"name": "deeplabv3_r18", "num_classes": K, "width": 0.125, "output_stride": 16}


def _meta(**extra: str) -> ModelMeta:
    return ModelMeta(arch=dict(ARCH), class_names=[f"c{i}" for i in range(K)],
                     palette=[[i, i, i] for i in range(K)], input_size=list(SIZE), extra=dict(extra))  # fmt: skip


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = build_model(**ARCH).eval()
    for m in model.modules():  # BatchNorm statistics that make folding matter
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
    return model


# ------------------------------------------------------------------------------------------------ arithmetic


def test_weight_fake_quant_is_per_channel_symmetric_over_127_steps() -> None:
    w = torch.tensor([[1.0, -0.5, 0.26], [0.0, 0.0, 0.0], [-2.0, 1.0, 0.01]]).reshape(3, 3, 1, 1)
    q = fake_quant_weight(w).reshape(3, 3)
    # channel 0: scale 1/127; channel 2: scale 2/127; an all-zero channel stays zero (scale 1, as ONNX Runtime)
    assert torch.allclose(q[0], torch.tensor([127, -64, 33]) / 127.0)  # -63.5 rounds half to even: -64
    assert torch.equal(q[1], torch.zeros(3))
    assert torch.allclose(q[2], torch.tensor([-127, 64, 1]) * 2.0 / 127.0)  # 63.5 -> 64, 0.635 -> 1


def test_activation_qparams_follow_onnx_runtime() -> None:
    scale, zp, qmin, qmax = _activation_qparams(-1.0, 2.0, "tensorrt")  # symmetric s8: |max| / 127
    assert (zp, qmin, qmax) == (0, -127, 127) and scale == pytest.approx(2.0 / 127)
    scale, zp, qmin, qmax = _activation_qparams(-1.0, 2.0, "cpu")  # asymmetric u8 over [-1, 2]
    assert (zp, qmin, qmax) == (85, 0, 255) and scale == pytest.approx(3.0 / 255)
    scale, zp, _, _ = _activation_qparams(0.5, 2.0, "cpu")  # the range always includes 0
    assert zp == 0 and scale == pytest.approx(2.0 / 255)


def test_fake_quantized_conv_computes_with_quantized_input_and_weight() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 3, 3, padding=1, bias=True)
    x = torch.randn(1, 3, 5, 5) * 2
    spec = QuantSpec("tensorrt", "minmax", {"x": [-1.0, 1.0]}, {"": "x"})
    q = copy.deepcopy(conv)
    assert attach_fake_quant(q, spec) == 1
    xq = torch.clamp(torch.round(x * 127), -127, 127) / 127  # range [-1, 1] -> scale 1/127, clipped outside
    grid = (1 / 127) * conv.weight.detach().abs().flatten(1).amax(1) / 127  # INT32 bias: input x weight scale
    bias = torch.round(conv.bias.detach() / grid) * grid
    expected = nn.functional.conv2d(xq, fake_quant_weight(conv.weight), bias, padding=1)
    assert torch.allclose(q(x), expected, atol=1e-6)
    assert not torch.allclose(bias, conv.bias, atol=1e-6)  # the rounding is visible at this scale
    assert set(q.state_dict()) == set(conv.state_dict())  # checkpoints keep their keys


def test_batchnorm_statistics_stay_frozen_in_train_mode() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4))
    spec = QuantSpec("tensorrt", "minmax", {"x": [-3.0, 3.0]}, {"0": "x"})
    attach_fake_quant(model, spec)
    before = model[1].running_mean.clone()
    model.train()
    model(torch.randn(4, 3, 8, 8) + 5)
    assert torch.equal(model[1].running_mean, before)


def test_spec_round_trips_and_refuses_damaged_metadata() -> None:
    spec = QuantSpec("cpu", "percentile", {"a": [0.0, 1.5]}, {"conv": "a"}, "x.pth", "ab", 8)
    assert QuantSpec.from_json(spec.to_json()) == spec
    assert read_spec(_meta(**{QUANT_KEY: spec.to_json()})) == spec and read_spec(_meta()) is None
    with pytest.raises(ValueError, match="inconsistent"):
        QuantSpec.from_json(json.dumps({**json.loads(spec.to_json()), "conv_inputs": {"conv": "b"}}))
    with pytest.raises(ValueError, match="unreadable"):
        QuantSpec.from_json("{")


# ----------------------------------------------------------------------------------- placement = the INT8 file


@pytest.fixture(scope="module")
def calibrated() -> tuple[nn.Module, dict[str, QuantSpec], list]:
    model, samples = _model(), synthetic_samples(3, SIZE, seed=1)
    specs = {t: calibrate_spec(model, _meta(), samples, target=t, method="minmax", progress=False,
                               log=lambda _: None) for t in ("tensorrt", "cpu")}  # fmt: skip
    return model, specs, samples


@pytest.mark.parametrize("target", ["tensorrt", "cpu"])
def test_qad_export_of_the_calibration_equals_the_post_training_file(
    calibrated, tmp_path: Path, target: str
) -> None:
    """Step 0 of QAD is post-training INT8: same ranges, same graph, same integers."""
    model, specs, samples = calibrated
    graph = tmp_path / "graph.onnx"
    torch_to_onnx(model, _meta(), graph, size=SIZE, log=lambda _: None)
    ptq, qad = tmp_path / "ptq.onnx", tmp_path / "qad.onnx"
    reader = CalibrationReader(samples, _meta(), "input", batch=1, fused=False)
    quantize_int8(graph, ptq, reader, method="minmax", target=target, progress=False, log=lambda _: None)
    quantize_qad(graph, qad, specs[target], model, SIZE, log=lambda _: None)
    if target == "tensorrt":  # the QAD file carries its float biases on the INT32 grid it trained with
        biases_on_int32_grid(ptq, ptq)
    a, b = onnx.load(str(ptq)), onnx.load(str(qad))
    assert [n.op_type for n in a.graph.node] == [n.op_type for n in b.graph.node]
    ia = {i.name: numpy_helper.to_array(i) for i in a.graph.initializer}
    ib = {i.name: numpy_helper.to_array(i) for i in b.graph.initializer}
    assert ia.keys() == ib.keys() and all(np.array_equal(ia[k], ib[k]) for k in ia)


def test_convs_are_matched_by_their_weights_not_their_position(tmp_path: Path) -> None:
    """Exporters may order independent branches differently from the forward (PIDNet, DDRNet do): the mapping
    reads the (BatchNorm-folded) weights, so a graph with its nodes in reverse order maps the same way."""
    from segkd.distill.qat import conv_input_tensors

    model = _model()
    model.backbone.bn1.weight.data[:3] = 0  # zero BatchNorm scales fold to zero channels: matched on the rest
    graph = tmp_path / "graph.onnx"
    torch_to_onnx(model, _meta(), graph, size=SIZE, log=lambda _: None)
    forward = conv_input_tensors(model, graph, SIZE)
    m = onnx.load(str(graph))
    nodes = list(m.graph.node)
    del m.graph.node[:]
    m.graph.node.extend(reversed(nodes))
    onnx.save(m, str(tmp_path / "reversed.onnx"))
    assert conv_input_tensors(model, tmp_path / "reversed.onnx", SIZE) == forward
    assert forward["backbone.conv1"] == "input" and len(set(forward.values())) > 20


def test_every_conv_of_the_file_has_a_fake_quantizer_with_its_scale(calibrated, tmp_path: Path) -> None:
    model, specs, _ = calibrated
    spec = specs["tensorrt"]
    graph, qad = tmp_path / "graph.onnx", tmp_path / "qad.onnx"
    torch_to_onnx(model, _meta(), graph, size=SIZE, log=lambda _: None)
    quantize_qad(graph, qad, spec, model, SIZE, log=lambda _: None)
    m = onnx.load(str(qad))
    inits = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    producer = {o: n for n in m.graph.node for o in n.output}
    file_scales = []
    for conv in (n for n in m.graph.node if n.op_type == "Conv"):
        dq = producer[conv.input[0]]
        assert dq.op_type == "DequantizeLinear"  # every Conv reads a quantized input
        file_scales.append(float(inits[dq.input[1]]))
    convs = [mod for mod in model.modules() if isinstance(mod, nn.Conv2d)]
    deployed = [name for name in spec.conv_inputs]
    assert len(file_scales) == len(deployed) <= len(convs)
    mine = [_activation_qparams(*spec.conv_range(name), "tensorrt")[0] for name in deployed]
    assert mine == pytest.approx(file_scales, rel=1e-6)


def _qad_file(model: nn.Module, target: str, folder: Path) -> tuple[QuantSpec, Path, np.ndarray]:
    """``model`` calibrated on 3 synthetic frames, its QAD file of the calibration alone, and an input to run."""
    from segkd.export.calib import network_input

    spec = calibrate_spec(model, _meta(), synthetic_samples(3, SIZE, seed=1), target=target, method="minmax",
                          progress=False, log=lambda _: None)  # fmt: skip
    graph, qad = folder / "graph.onnx", folder / "qad.onnx"
    torch_to_onnx(model, _meta(), graph, size=SIZE, log=lambda _: None)
    quantize_qad(graph, qad, spec, model, SIZE, log=lambda _: None)
    x = network_input([s.image for s in synthetic_samples(1, SIZE, seed=5)], _meta(), fused=False,
                      dtype="float32")  # fmt: skip
    return spec, qad, x


def test_fake_quantized_model_computes_what_the_tensorrt_file_computes(tmp_path: Path) -> None:
    """Same placement, same arithmetic, and a residual branch reads the quantized tensor as the file's Add does.

    BatchNorm is the identity here, so that folding it into the Convs adds no float rounding (with real
    statistics a value lying on a rounding boundary may move by one step).
    """
    import onnxruntime as ort

    torch.manual_seed(0)
    model = build_model(**ARCH).eval()
    spec, qad, x = _qad_file(model, "tensorrt", tmp_path)
    file = ort.InferenceSession(str(qad), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    fake = copy.deepcopy(model)
    attach_fake_quant(fake, spec)
    with torch.no_grad():
        fq, fp = fake(torch.from_numpy(x)).numpy(), model(torch.from_numpy(x)).numpy()
    assert np.abs(file - fq).max() < 1e-5
    assert np.abs(file - fp).max() > 100 * np.abs(file - fq).max()  # the match is the quantization's


def test_cpu_form_fake_quantization_follows_the_qoperator_graph(tmp_path: Path) -> None:
    """The cpu form also quantizes each QLinearConv's output and each residual QLinearAdd's output: modelled, the
    fake-quantized model is much closer to the file than the float model is (the ASPP pooling branch and its
    Concat stay unmodelled, hence not equal)."""
    import onnxruntime as ort

    torch.manual_seed(0)
    model = build_model(**ARCH).eval()
    spec, qad, x = _qad_file(model, "cpu", tmp_path)
    assert len(spec.conv_outputs) == len(spec.conv_inputs) and len(spec.producer_inputs) >= 4  # residual adds
    file = ort.InferenceSession(str(qad), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    fake = copy.deepcopy(model)
    attach_fake_quant(fake, spec)
    with torch.no_grad():
        fq, fp = fake(torch.from_numpy(x)).numpy(), model(torch.from_numpy(x)).numpy()
    assert np.abs(file - fq).mean() < 0.9 * np.abs(file - fp).mean()  # without the modelling: 0.96


# ------------------------------------------------------------------------------------- the run and its export


def _train(*args: str, expect: int = 0) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, str(REPO / "distill" / "train.py"), *args], cwd=REPO,
                          capture_output=True, text=True, timeout=900)  # fmt: skip
    assert proc.returncode == expect, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def qad_setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A float checkpoint trained on nothing (random weights are enough) and a QAD config for it."""
    from segkd.scenes.street import generate_demo

    root = tmp_path_factory.mktemp("qad")
    data = generate_demo(root / "demo", {"train": 4, "val": 2}, size=SIZE, seed=0, classes="cityscapes")
    ckpt = save_checkpoint(root / "float.pth", _model(), _meta(dataset="demo", method="plain"))
    cfg = {
        "data": {"dataset": "demo", "root": str(data), "crop_size": list(SIZE), "batch_size": 2, "num_workers": 0},
        "quantize": {"target": "tensorrt", "checkpoint": str(ckpt), "calib_count": 2, "calib_method": "minmax"},
        "optim": {"lr": 0.001},
        "train": {"max_iters": 4, "eval_every": 2, "log_every": 1},
    }  # fmt: skip
    (root / "qad.yaml").write_text(yaml.safe_dump(cfg))
    return root / "qad.yaml", ckpt


@pytest.fixture(scope="module")
def qad_run(qad_setup: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    cfg, _ = qad_setup
    run = tmp_path_factory.mktemp("qad-run") / "straight"
    _train("--config", str(cfg), f"train.output_dir={run}")
    return run


@pytest.mark.slow
def test_qad_run_distils_from_its_float_checkpoint_and_records_the_ranges(qad_run: Path, qad_setup) -> None:
    _, ckpt = qad_setup
    saved = load_checkpoint(qad_run / "best.pth")
    spec = read_spec(saved.meta)
    assert spec is not None and spec.target == "tensorrt" and spec.images == 2
    assert spec.conv_inputs and spec.source == str(ckpt)
    assert saved.provenance["teacher"] == str(ckpt)  # its own float model is the teacher
    losses = [json.loads(line) for line in (qad_run / "metrics.jsonl").read_text().splitlines()]
    assert any("loss/kd/kd" in r for r in losses)  # logit KD by default
    assert set(saved.state_dict) == set(load_checkpoint(ckpt).state_dict)
    assert not torch.equal(saved.state_dict["head.classifier.weight"], load_checkpoint(ckpt).state_dict[
        "head.classifier.weight"])  # fmt: skip


@pytest.mark.slow
def test_qad_resume_matches_the_uninterrupted_run(qad_setup, qad_run: Path, tmp_path: Path) -> None:
    cfg, _ = qad_setup
    run = tmp_path / "resumed"
    first = _train("--config", str(cfg), f"train.output_dir={run}", "train.stop_after=2")
    assert "stopped at iteration 2/4" in first.stdout
    ranges = (run / "quantization.json").read_text()
    _train("--config", str(cfg), f"train.output_dir={run}")
    assert (run / "quantization.json").read_text() == ranges  # read back, not calibrated again
    a, b = load_checkpoint(qad_run / "last.pth").state_dict, load_checkpoint(run / "last.pth").state_dict
    for key in a:
        assert torch.allclose(a[key].float(), b[key].float(), rtol=0, atol=1e-6), key


@pytest.mark.slow
def test_qad_checkpoint_exports_int8_without_calibration_images(qad_run: Path, tmp_path: Path) -> None:
    from segkd.export.pipeline import ExportOptions, export_checkpoint

    out = tmp_path / "qad.int8.onnx"
    result = export_checkpoint(qad_run / "best.pth", ExportOptions(precision="int8", out=str(out), verify_count=2),
                               log=lambda _: None)  # fmt: skip
    assert result.report is not None and result.report.passed
    assert (
        result.report.reference == QAD_REFERENCE
    )  # checked against the fake-quantized model its run trained
    extra = read_metadata(out).extra
    assert extra["quantized_by"] == "qad" and extra["target"] == "tensorrt" and QUANT_KEY not in extra
    # The TensorRT form as post-training files have it: s8 zero-point-0 Q/DQ on every Conv input only, int8
    # per-channel weights, float biases.
    m = onnx.load(str(out))
    inits = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    consumers = {}
    for n in m.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n.op_type)
    dqs = [n for n in m.graph.node if n.op_type == "DequantizeLinear" and n.input[0] not in inits]
    assert dqs and all("Conv" in consumers[n.output[0]] for n in dqs)  # Conv inputs
    assert all(inits[n.input[2]].dtype == np.int8 and not inits[n.input[2]].any() for n in dqs)
    convs = [n for n in m.graph.node if n.op_type == "Conv"]
    assert all(len(c.input) < 3 or inits[c.input[2]].dtype == np.float32 for c in convs)
    # export/to_trt.py takes the file as it is: it gets past every check to the (absent) TensorRT.
    proc = subprocess.run([sys.executable, str(REPO / "export" / "to_trt.py"), str(out)], capture_output=True,
                          text=True, cwd=REPO, timeout=300)  # fmt: skip
    assert "TensorRT" in proc.stderr and "form" not in proc.stderr, proc.stderr


@pytest.mark.slow
def test_qad_export_refuses_the_other_target(qad_run: Path, tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, str(REPO / "export" / "to_onnx.py"), str(qad_run / "best.pth"),
                           "--precision", "int8", "--target", "cpu", "--out", str(tmp_path / "x.onnx")],
                          capture_output=True, text=True, cwd=REPO, timeout=600)  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert "quantization-aware trained for --target tensorrt, not cpu" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "x.onnx").exists()


@pytest.mark.slow
def test_qad_refuses_bad_starts_before_any_work(qad_setup, qad_run: Path, tmp_path: Path) -> None:
    cfg, _ = qad_setup
    again = _train("--config", str(cfg), f"quantize.checkpoint={qad_run / 'best.pth'}",
                   f"train.output_dir={tmp_path / 'again'}", expect=2)  # fmt: skip
    assert "already quantization-aware trained" in again.stderr
    other = tmp_path / "voc_teacher.pth"
    torch.manual_seed(0)
    arch = {**ARCH, "num_classes": 21}
    save_checkpoint(other, build_model(**arch), ModelMeta(arch=arch, class_names=[f"v{i}" for i in range(21)],
                                                          palette=[[0, 0, 0]] * 21))  # fmt: skip
    wrong = _train("--config", str(cfg), f"teacher.checkpoint={other}", f"train.output_dir={tmp_path / 'w'}",
                   expect=2)  # fmt: skip
    assert "21" in wrong.stderr and "Traceback" not in wrong.stderr
    assert not (tmp_path / "w" / "quantization.json").exists()


def test_quantize_section_is_checked_when_the_config_loads(tmp_path: Path) -> None:
    from segkd.distill.config import ConfigError, load_config

    with pytest.raises(ConfigError) as e:
        load_config(None, ["quantize.target=tensorrtt", "quantize.calib_count=0"])
    text = str(e.value)
    assert "did you mean 'tensorrt'" in text and "quantize.calib_count must be >= 1" in text
    with pytest.raises(ConfigError, match="needs quantize.checkpoint"):
        load_config(None, ["quantize.target=cpu"])
    with pytest.raises(ConfigError, match="drop student.pretrained"):
        load_config(None, ["quantize.target=cpu", "quantize.checkpoint=x.pth", "student.pretrained=y.pth"])
    cfg = load_config(None, ["quantize.target=cpu", "quantize.checkpoint=x.pth"])
    assert cfg.teacher.checkpoint == "x.pth" and [d["name"] for d in cfg.losses] == ["kd"]  # the QAD defaults
    cfg = load_config(
        None, ["quantize.target=cpu", "quantize.checkpoint=x.pth", "teacher.checkpoint=big.pth"]
    )
    assert cfg.teacher.checkpoint == "big.pth"  # a larger teacher when given


_DRIVER = """
import sys, torch
from segkd.distill.config import load_config
from segkd.distill.loop import train
cfg = load_config(sys.argv[1], sys.argv[2:])
result = train(cfg)
state = {k: v.detach().cpu() for k, v in result.student.state_dict().items()}
torch.save(state, f"{cfg.train.output_dir}/rank{result.process_index}.pt")
"""


@pytest.mark.slow
def test_qad_on_two_processes_calibrates_once_and_stays_in_step(qad_setup, tmp_path: Path) -> None:
    cfg, _ = qad_setup
    run, driver = tmp_path / "ddp", tmp_path / "driver.py"
    driver.write_text(_DRIVER)
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    proc = subprocess.run([*launcher, str(driver), str(cfg), f"train.output_dir={run}", "data.batch_size=4",
                           "train.max_iters=2", "train.eval_every=2"], cwd=REPO, capture_output=True, text=True,
                          timeout=900)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("calibrating INT8 ranges") == 1  # the main process calibrates, the other reads
    rank0 = torch.load(run / "rank0.pt", weights_only=True)
    rank1 = torch.load(run / "rank1.pt", weights_only=True)
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0)
    assert read_spec(load_checkpoint(run / "last.pth").meta) is not None


class _StridedCatBlock(nn.Module):
    """An STDC stride-2 block in small: a padded average pool of a ReLU output concatenated with a conv branch."""

    def __init__(self) -> None:
        super().__init__()
        self.conv0 = nn.Conv2d(3, 16, 3, padding=1)
        self.dw = nn.Conv2d(16, 16, 3, 2, 1, groups=16)
        self.conv1 = nn.Conv2d(16, 8, 3, padding=1)
        self.pool = nn.AvgPool2d(3, 2, 1)
        self.head = nn.Conv2d(24, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = torch.relu(self.conv0(x))
        return self.head(torch.cat([self.pool(a), torch.relu(self.conv1(self.dw(a)))], 1))


def test_openvino_reads_the_tensorrt_form_as_onnx_runtime_computes_it_once_nonnegative_tensors_are_u8(
    tmp_path: Path,
) -> None:
    """OpenVINO shifts an s8 activation to u8 before a padded average pool and pads with the wrong zero: the
    rewrite keeps every integer (ONNX Runtime's reference kernels give identical outputs) and OpenVINO then agrees."""
    ov = pytest.importorskip("openvino")
    import onnxruntime as ort

    from segkd.export.qad import unsigned_nonnegative
    from segkd.export.quantize import pre_process, quantize_with_ranges, quantized_tensors

    torch.manual_seed(0)
    x = torch.randn(1, 3, 16, 16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            _StridedCatBlock().eval(), (x,), str(tmp_path / "f.onnx"), dynamo=False, opset_version=17
        )
    pre_process(tmp_path / "f.onnx", tmp_path / "pre.onnx", log=lambda _: None)
    names = quantized_tensors(tmp_path / "pre.onnx", ["Conv", "Gemm"])
    quantize_with_ranges(tmp_path / "pre.onnx", tmp_path / "s8.onnx", {n: (-4.0, 4.0) for n in names})
    assert (
        unsigned_nonnegative(tmp_path / "s8.onnx", tmp_path / "u8.onnx") == 2
    )  # the ReLU output and the Concat
    zero_points = {
        i.name: i.data_type
        for i in onnx.load(str(tmp_path / "u8.onnx")).graph.initializer
        if "zero_point" in i.name
    }
    assert onnx.TensorProto.UINT8 in zero_points.values() and onnx.TensorProto.INT8 in zero_points.values()

    reference = ort.SessionOptions()
    reference.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    feed = x.numpy()

    def run_ort(name: str) -> np.ndarray:
        session = ort.InferenceSession(str(tmp_path / name), reference, providers=["CPUExecutionProvider"])
        return session.run(None, {session.get_inputs()[0].name: feed})[0]

    expected = run_ort("s8.onnx")
    np.testing.assert_array_equal(run_ort("u8.onnx"), expected)
    core = ov.Core()

    def run_ov(name: str) -> np.ndarray:
        return core.compile_model(str(tmp_path / name), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})(feed)[0]

    scale = float(np.abs(expected).max())
    assert np.abs(run_ov("u8.onnx") - expected).max() < 0.05 * scale  # OpenVINO 2026.4 reads s8.onnx 3.7x off


class _FunctionalResidual(nn.Module):
    """A residual block written with functions, as the real-time students are: the ReLU output is read by a Conv
    and by the sum, so the file's sum reads the quantized tensor."""

    def __init__(self) -> None:
        super().__init__()
        self.c0 = nn.Conv2d(3, 8, 3, padding=1)
        self.c1 = nn.Conv2d(8, 8, 3, padding=1)
        self.head = nn.Conv2d(8, K, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.nn.functional.relu(self.c0(x))
        return self.head(torch.nn.functional.relu(self.c1(x) + x))


def test_a_functional_producer_is_quantized_for_all_its_readers_as_in_the_file(tmp_path: Path) -> None:
    import onnxruntime as ort

    import segkd.distill.qat as qat

    torch.manual_seed(0)
    model = _FunctionalResidual().eval()
    spec, qad, x = _qad_file(model, "tensorrt", tmp_path)
    file = ort.InferenceSession(str(qad), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]

    def fake_output(functions: bool) -> np.ndarray:
        fake = copy.deepcopy(model)
        if functions:
            attach_fake_quant(fake, spec)
        else:  # the producer-module rule alone: the sum reads the float ReLU output
            with pytest.MonkeyPatch.context() as mp:
                mp.setattr(qat, "_quantize_functions", lambda *_: None)
                attach_fake_quant(fake, spec)
        with torch.no_grad():
            return fake(torch.from_numpy(x)).numpy()

    # Equal but where a value lies on a rounding boundary (the Conv sums in another order): 0.24 % of the logits
    # here; with the sum reading the float ReLU output, half of them differ.
    assert (np.abs(file - fake_output(True)) > 1e-5).mean() < 0.01
    assert (np.abs(file - fake_output(False)) > 1e-5).mean() > 0.3


class _CoarseBias(nn.Module):
    """Conv + BatchNorm whose folded weights are large in some channels and whose BatchNorm shifts them far: the
    INT32 grid of their bias (input scale x weight scale) is coarse, as in BiSeNetV2's trained layers."""

    def __init__(self) -> None:
        super().__init__()
        self.c0 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.head = nn.Conv2d(8, K, 1)
        with torch.no_grad():
            self.c0.weight[::2] *= 40.0
            self.bn.bias.uniform_(-30.0, 30.0)
            self.bn.running_mean.uniform_(-2.0, 2.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.bn(self.c0(x))))


@pytest.mark.parametrize("target", ["tensorrt", "cpu"])
def test_the_bias_is_rounded_to_its_int32_grid_as_onnx_runtime_computes_it(
    tmp_path: Path, target: str
) -> None:
    """ONNX Runtime computes a quantized Conv's (BatchNorm-folded) bias as INT32 with scale input scale x weight
    scale; the fake quantization rounds it alike, and the tensorrt-form QAD file stores it on that grid, so that
    a runtime adding the float bias (TensorRT; ONNX Runtime without graph optimisations) computes the same."""
    import onnxruntime as ort

    import segkd.distill.qat as qat

    torch.manual_seed(0)
    model = _CoarseBias().eval()
    spec, qad, x = _qad_file(model, target, tmp_path)

    def run_file(level: ort.GraphOptimizationLevel) -> np.ndarray:
        options = ort.SessionOptions()
        options.graph_optimization_level = level
        session = ort.InferenceSession(str(qad), options, providers=["CPUExecutionProvider"])
        return session.run(None, {"input": x})[0]

    def fake_output(rounded: bool) -> np.ndarray:
        fake = copy.deepcopy(model)
        with pytest.MonkeyPatch.context() as mp:
            if not rounded:
                mp.setattr(qat, "bias_rounding", lambda *_: None)
            attach_fake_quant(fake, spec)
            with torch.no_grad():
                return fake(torch.from_numpy(x)).numpy()

    file = run_file(ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
    plain = run_file(ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    assert np.abs(plain - file).max() < 1e-3 * np.abs(file).max()  # float bias on the grid: the same numbers
    rounded, unrounded = np.abs(file - fake_output(True)).mean(), np.abs(file - fake_output(False)).mean()
    assert rounded < 0.05 * unrounded, (rounded, unrounded)
