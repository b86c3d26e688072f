"""The five CIRKD-layout models have CIRKD's geometry, conv for conv, and its bilinear upsampling.

The reference is ``../shared/fixtures/cirkd_v1_geometry.json``: every Conv2d of CIRKD's v1 models (winycg/CIRKD at
2d8ad0f, 19 classes) as its public code builds them. Dilation and padding change no parameter, so a model can load
CIRKD's weights strictly and still compute something else: only a comparison of the conv settings shows it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from segkd.distill.models import build_model
from segkd.distill.models.pretrained import map_cirkd_segmentation

torch.set_num_threads(1)

# CIRKD's model name -> the project's.
CIRKD_MODELS = {
    "deeplabv3_resnet101": "deeplabv3_r101",
    "deeplabv3_resnet18": "deeplabv3_r18",
    "psp_resnet18": "pspnet_r18",
    "deeplab_mobile_mbv2": "deeplabv3_mbv2",
    "psp_mobile_mbv2": "pspnet_mbv2",
}


@pytest.fixture(scope="module")
def geometry(shared_fixtures: Path) -> dict:
    return json.loads((shared_fixtures / "cirkd_v1_geometry.json").read_text())["models"]


def _our_name(cirkd_conv: str) -> str:
    """CIRKD module name -> the project's, through the checkpoint converter's own key mapping."""
    (key,) = map_cirkd_segmentation({f"{cirkd_conv}.weight": torch.empty(0)})
    return key.removesuffix(".weight")


def _fields(conv: nn.Conv2d) -> list:
    """The fixture's fields (in, out, kernel, stride, padding, dilation, groups, bias) of a square conv."""
    for attr in ("kernel_size", "stride", "padding", "dilation"):
        value = getattr(conv, attr)
        assert value[0] == value[1], f"{attr} {value} is not square"
    return [
        conv.in_channels,
        conv.out_channels,
        conv.kernel_size[0],
        conv.stride[0],
        conv.padding[0],
        conv.dilation[0],
        conv.groups,
        conv.bias is not None,
    ]


@pytest.mark.parametrize("cirkd,ours", CIRKD_MODELS.items())
def test_every_conv_has_cirkds_kernel_stride_padding_dilation_groups_and_bias(
    geometry: dict, cirkd: str, ours: str
) -> None:
    model = build_model(ours, num_classes=19, align_corners=True)
    convs = {name: m for name, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    differences, matched = [], set()
    for name, *want in geometry[cirkd]["convs"]:
        mapped = _our_name(name)
        assert mapped in convs, f"{ours} has no conv {mapped} for CIRKD's {name}"
        matched.add(mapped)
        got = _fields(convs[mapped])
        if got != want:
            differences.append(f"{name} -> {mapped}: CIRKD {want}, ours {got}")
    assert not differences, f"{ours} differs from CIRKD's {cirkd}:\n" + "\n".join(differences)
    assert sorted(convs) == sorted(matched), f"{ours} has convs CIRKD lacks: {sorted(set(convs) - matched)}"


@pytest.mark.parametrize("cirkd,ours", CIRKD_MODELS.items())
def test_every_bilinear_upsampling_is_cirkds(
    geometry: dict, cirkd: str, ours: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CIRKD's forward upsamples (PSP pyramid, ASPP pooling) with these modes; its loss and evaluation upsample
    the logits likewise. Ours must use no other, the final upsampling to the input size included."""
    want = {(c["mode"], c["align_corners"]) for c in geometry[cirkd]["interpolate_calls_in_forward"]}
    calls = []
    interpolate = torch.nn.functional.interpolate

    def recording(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202 (F.interpolate's own signature)
        calls.append((kwargs.get("mode", "nearest"), kwargs.get("align_corners")))
        return interpolate(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "interpolate", recording)
    model = build_model(ours, num_classes=19, width=0.125, align_corners=True).eval()
    with torch.no_grad():
        model(torch.randn(1, 3, 64, 64))
    assert calls and set(calls) == want, (
        f"{ours} upsamples with {sorted(set(calls))}, CIRKD with {sorted(want)}"
    )


# ------------------------------------------------------------------ the exported graph and the runners follow it
K, NET = 19, (64, 96)


def _checkpoint(folder: Path, align_corners: bool) -> Path:
    from segkd.distill.checkpoint import save_checkpoint
    from segkd.infer.meta import ModelMeta

    torch.manual_seed(0)
    arch = {"name": "pspnet_mbv2", "num_classes": K, "width": 0.25, "align_corners": align_corners}
    model = build_model(**arch)
    gen = torch.Generator().manual_seed(1)
    for m in model.modules():  # statistics of a trained model: a fresh one's logits are nearly flat
        if isinstance(m, nn.BatchNorm2d):
            m.weight.data.uniform_(0.5, 1.5, generator=gen)
            m.bias.data.normal_(0.0, 0.5, generator=gen)
            m.running_var.uniform_(0.1, 0.5, generator=gen)
    meta = ModelMeta(
        arch=arch,
        class_names=[f"c{i}" for i in range(K)],
        palette=[[10 * i, 0, 0] for i in range(K)],
        input_size=list(NET),
    )
    return save_checkpoint(folder / f"ac{int(align_corners)}.pth", model, meta)


def _resize_modes(path: Path) -> set[str]:
    import onnx

    graph = onnx.load(str(path)).graph
    resizes = [n for n in graph.node if n.op_type == "Resize"]
    assert resizes, "the graph has no Resize"
    return {a.s.decode() for n in resizes for a in n.attribute if a.name == "coordinate_transformation_mode"}


@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
def test_the_onnx_graph_upsamples_corner_to_corner_and_equals_pytorch(tmp_path: Path, exporter: str) -> None:
    import numpy as np
    import onnxruntime as ort

    from segkd.distill.load import load_model
    from segkd.export.onnx_export import read_metadata
    from segkd.export.pipeline import ExportOptions, export_checkpoint

    if exporter == "dynamo":
        pytest.importorskip(
            "onnxscript", reason="the dynamo exporter needs onnxscript (pip install onnxscript)"
        )
    ckpt = _checkpoint(tmp_path, align_corners=True)
    opts = ExportOptions(exporter=exporter, verify_count=2, out=str(tmp_path / "m.onnx"))
    path = export_checkpoint(ckpt, opts, log=lambda _: None).path
    assert read_metadata(path).align_corners is True
    assert _resize_modes(path) == {"align_corners"}
    x = torch.randn(1, 3, *NET, generator=torch.Generator().manual_seed(2))
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    onnx_out = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    model, _ = load_model(ckpt)
    with torch.no_grad():
        ref = model(x)
        logits = model(x, return_features=True)["logits"]
    np.testing.assert_allclose(onnx_out, ref.numpy(), atol=1e-4)
    half_pixel = F.interpolate(logits, size=NET, mode="bilinear", align_corners=False).numpy()
    assert np.abs(onnx_out - half_pixel).max() > 1e-2  # the comparison above tells the two modes apart


@pytest.mark.parametrize("suffix", [".pth", ".onnx"])
def test_the_runners_resize_logits_to_the_image_with_the_models_mode(tmp_path: Path, suffix: str) -> None:
    import numpy as np

    from segkd.distill.load import load_model
    from segkd.export.pipeline import ExportOptions, export_checkpoint
    from segkd.infer.runtime import load_runner

    ckpt = _checkpoint(tmp_path, align_corners=True)
    path = ckpt
    if suffix == ".onnx":  # fixed 64x96 input: every other image size is resized after the network
        opts = ExportOptions(exporter="torchscript", verify_count=2, out=str(tmp_path / "m.onnx"))
        path = export_checkpoint(ckpt, opts, log=lambda _: None).path
    image = np.random.default_rng(3).integers(0, 256, (192, 288, 3), dtype=np.uint8)
    runner = load_runner(path)
    labels = runner.predict([image], size=NET)[0]
    model, _ = load_model(ckpt)
    with torch.no_grad():
        logits = model(torch.from_numpy(runner.make_input([image], NET)).float())  # (1, K, 64, 96)
    want = {
        mode: F.interpolate(logits, size=(192, 288), mode="bilinear", align_corners=mode)[0].argmax(0).numpy()
        for mode in (True, False)
    }
    assert labels.shape == (192, 288)
    wrong, apart = (labels != want[True]).sum(), (want[True] != want[False]).sum()
    assert apart > 50 and wrong <= apart // 20, (wrong, apart)  # right up to ties, and the modes do differ


@pytest.mark.parametrize("align_corners", [True, False])
def test_the_auxiliary_loss_upsamples_as_the_model_does(align_corners: bool) -> None:
    """CIRKD's loss upsamples the auxiliary logits to the labels like the main ones (corner to corner)."""
    from segkd.distill.step import DistillStep

    torch.manual_seed(0)
    model = build_model("deeplabv3_r18", num_classes=K, width=0.125, align_corners=align_corners).eval()
    step = DistillStep(model, None, aux_weight=0.4, ignore_index=255)
    x = torch.randn(2, 3, 64, 96)
    labels = torch.randint(0, K, (2, 64, 96))
    with torch.no_grad():
        aux = model(x, return_features=True)["aux"]  # (2, K, 8, 12)
        terms = step(x, labels)
    want = {
        mode: 0.4
        * F.cross_entropy(F.interpolate(aux, size=(64, 96), mode="bilinear", align_corners=mode), labels)
        for mode in (True, False)
    }
    torch.testing.assert_close(terms["aux"], want[align_corners])
    assert not torch.allclose(want[True], want[False])
