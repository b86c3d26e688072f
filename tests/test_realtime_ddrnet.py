"""DDRNet-23-slim and DDRNet-23 against the official code's layout (``realtime_official_layouts.json``): official
checkpoints convert and load, conv geometry, parameter count, output shapes, refusals, ONNX export.

    OMP_NUM_THREADS=1 .venv/bin/python -m pytest -q -p no:cacheprovider tests/test_realtime_ddrnet.py
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from realtime_layouts import conv_geometry, official, random_official_state_dict

from segkd.distill.convert import convert_official_checkpoint
from segkd.distill.load import load_model
from segkd.distill.models import build_model
from segkd.distill.models.pretrained import OFFICIAL_LAYOUTS, WeightsError
from segkd.export.calib import synthetic_samples
from segkd.export.pipeline import ExportOptions, export_model
from segkd.infer.meta import IMAGENET_RGB, ModelMeta, preprocess
from segkd.infer.runtime.ort_session import cpu_session

torch.set_num_threads(1)

DDRNETS = ["ddrnet_23_slim", "ddrnet_23"]
SIZES = [(128, 256), (96, 160)]
# onnxslim takes seconds on DDRNet-23's 20M weights and is not what these tests are about (test_export covers it)
FAST = {"exporter": "torchscript", "verify_count": 2, "slim": False}
# DDRNet-23's exports take 3-8 s (80 MB of weights written, loaded and verified twice): the slim one is the fast check
EXPORTED = ["ddrnet_23_slim"]  # DDRNet-23 has the same graph structure (docs/quantization.md exports both)


def _official_file(path: Path, name: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """A random official checkpoint as the official (HRNet-based) trainer saves it: ``FullModel`` keys under
    ``model.``, its OHEM criterion's class weights under ``loss.``, inside ``state_dict``."""
    sd = random_official_state_dict(name, seed)
    wrapped = {f"model.{k}": v for k, v in sd.items()} | {"loss.criterion.weight": torch.ones(19)}
    torch.save({"epoch": 484, "state_dict": wrapped}, path)
    return sd


@pytest.mark.parametrize("name", DDRNETS)
def test_an_official_checkpoint_converts_and_loads_with_its_tensors(name: str, tmp_path: Path) -> None:
    sd = _official_file(tmp_path / "official.pth", name)
    report = convert_official_checkpoint(tmp_path / "official.pth", name, "cityscapes", tmp_path / "ours.pth")
    assert report.ok and report.loaded == len(sd)
    model, meta = load_model(tmp_path / "ours.pth")
    own = model.state_dict()
    assert own.keys() == sd.keys()
    assert all(torch.equal(own[k], v) for k, v in sd.items())
    assert meta.arch == {"name": name, "num_classes": 19, "align_corners": False}
    assert (meta.mean, meta.std, meta.channel_order) == (*IMAGENET_RGB[:2], "RGB")


@pytest.mark.parametrize("name", DDRNETS)
def test_conv_geometry_and_parameter_count_equal_the_official(name: str) -> None:
    model = build_model(name, num_classes=19)
    assert conv_geometry(model) == official(name)["convs"]
    assert sum(p.numel() for p in model.parameters()) == official(name)["params"]
    assert {k: list(v.shape) for k, v in model.state_dict().items()} == official(name)["state_dict"]


@pytest.mark.parametrize("name", DDRNETS)
@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_output_shapes_equal_the_official_in_train_and_eval(name: str, size: tuple[int, int]) -> None:
    # The official forward returns [main, auxiliary] logits in both modes; here the auxiliary head runs in train
    # mode only, so eval mode has the main logits alone.
    model = build_model(name, num_classes=19)
    shapes = official(name)["outputs"]
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        for mode in ("train", "eval"):
            d = model.train(mode == "train")(x, return_features=True)
            main, *aux = [tuple(s) for s in shapes[f"{mode} {size[0]}x{size[1]}"]]
            assert d["out"].shape == (2, 19, *size) and d["logits"].shape == main
            assert d["feat"].shape == (2, model.feat_channels, *main[-2:])
            want_aux = aux if mode == "train" else []
            assert [tuple(a.shape) for a in d["aux_all"]] == want_aux
            assert (d["aux"] is None) == (mode == "eval") and d["boundary"] is None
            assert [s.shape[-1] for s in d["stages"]] == [
                size[1] // 4,
                size[1] // 8,
                size[1] // 16,
                size[1] // 32,
            ]


REFUSALS = [  # the file's variant, --arch, --dataset, what the message must say
    ("ddrnet_23_slim", "ddrnet_23", "cityscapes", r"it is ddrnet_23_slim: pass --arch ddrnet_23_slim"),
    ("ddrnet_23", "ddrnet_23_slim", "cityscapes", r"it is ddrnet_23: pass --arch ddrnet_23"),
    ("ddrnet_23_slim", "ddrnet_23_slim", "ade20k",
     r"\(150 classes\); it is ddrnet_23_slim with 19 classes: pass --arch ddrnet_23_slim and a --dataset with 19"),
]  # fmt: skip


@pytest.mark.parametrize("variant,arch,dataset,message", REFUSALS)
def test_the_converter_refuses_another_variant_or_class_count(
    variant: str, arch: str, dataset: str, message: str, tmp_path: Path
) -> None:
    _official_file(tmp_path / "official.pth", variant)
    with pytest.raises(WeightsError, match=rf"official\.pth does not fit --arch {arch} .*{message}"):
        convert_official_checkpoint(tmp_path / "official.pth", arch, dataset, tmp_path / "ours.pth")
    assert not (tmp_path / "ours.pth").exists()


def _imagenet_file(path: Path, name: str) -> dict[str, torch.Tensor]:
    """An official ImageNet classification file of ``name`` (an older one, without BatchNorm counters): the
    backbone's keys and the classifier's (``down5``, ``last_layer``, ``linear``), no segmentation heads;
    DataParallel's ``module.`` inside ``state_dict``."""
    torch.manual_seed(3)
    heads = ("spp.", "final_layer.", "seghead_extra.")
    own = build_model(name, num_classes=19).state_dict()
    sd = {k: torch.randn_like(v) for k, v in own.items() if not k.startswith(heads) and v.is_floating_point()}
    planes = own["conv1.0.weight"].shape[0]
    sd |= {
        "down5.0.weight": torch.randn(planes * 8, planes * 4, 3, 3),
        "last_layer.0.weight": torch.randn(1024, planes * 16, 1, 1),
        "linear.weight": torch.randn(1000, 1024),
    }
    torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items()}}, path)
    return sd


def test_an_official_imagenet_file_loads_into_the_backbone(tmp_path: Path) -> None:
    sd = _imagenet_file(tmp_path / "slim.pth", "ddrnet_23_slim")
    model = build_model("ddrnet_23_slim", num_classes=19, pretrained=str(tmp_path / "slim.pth"))
    assert torch.equal(model.layer5_[0].conv3.weight, sd["layer5_.0.conv3.weight"])
    assert torch.equal(model.down4[3].weight, sd["down4.3.weight"])
    _imagenet_file(tmp_path / "full.pth", "ddrnet_23")
    with pytest.raises(
        WeightsError, match=r"does not fit DDRNet-23_slim's backbone.*DDRNet23s_imagenet\.pth"
    ):
        build_model("ddrnet_23_slim", num_classes=19, pretrained=str(tmp_path / "full.pth"))


def test_the_layouts_record_the_official_normalisation_and_upsampling() -> None:
    for name in DDRNETS:
        layout = OFFICIAL_LAYOUTS[name]
        assert (list(layout.mean), list(layout.std), layout.channel_order) == IMAGENET_RGB
        assert layout.align_corners is False and "ydhongHIT/DDRNet" in layout.source


def _meta(name: str, size: tuple[int, int]) -> ModelMeta:
    return ModelMeta(
        arch={"name": name, "num_classes": 19},
        class_names=[f"c{i}" for i in range(19)],
        palette=[[i, 2 * i, 3 * i] for i in range(19)],
        input_size=list(size),
    )


@pytest.mark.parametrize("name", EXPORTED)
def test_the_eval_model_exports_to_onnx_with_one_output(name: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_model(name, num_classes=19).eval()
    opts = ExportOptions(**FAST)  # verifies the file against PyTorch
    result = export_model(model, _meta(name, (64, 128)), tmp_path / "m.onnx", opts, log=lambda _: None)
    assert result.report.passed and len(onnx.load(str(result.path)).graph.output) == 1


# Any input size works: every resize inside targets the size of the tensor it is added to (the high branch's,
# not the official (H // 8, W // 8), which fails unless H and W are multiples of 8), the strided convs round up
# alike in both branches, and DAPPM's pools (fixed kernels with padding, a global average) take any size. The
# export pipeline checks the dynamic graph against PyTorch at 53x163 (from 64x128); here also at other odd sizes.
@pytest.mark.parametrize("name", EXPORTED)
def test_a_dynamic_export_runs_at_odd_sizes_like_pytorch(name: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_model(name, num_classes=19).eval()
    meta = _meta(name, (64, 128))
    opts = ExportOptions(dynamic="all", **FAST)
    sess = cpu_session(export_model(model, meta, tmp_path / "m.onnx", opts, log=lambda _: None).path)
    for n, size in ((1, (37, 71)), (2, (90, 45))):
        images = [s.image for s in synthetic_samples(n, size, seed=2)]
        x = preprocess(images, meta)
        with torch.no_grad():
            ref = model(torch.from_numpy(x)).numpy()  # (n, 19, H, W)
        got = sess.run(None, {sess.get_inputs()[0].name: x})[0]
        assert got.shape == ref.shape == (n, 19, *size)
        np.testing.assert_allclose(got, ref, atol=1e-4 * float(np.abs(ref).max()), rtol=0)
