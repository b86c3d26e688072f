"""PIDNet-S/M/L: the official layout (XuJiacong/PIDNet 4c158cf) key for key, the output contract, the conversion of
official files, and the ONNX export.

    OMP_NUM_THREADS=1 .venv/bin/python -m pytest -q -p no:cacheprovider tests/test_realtime_pidnet.py
"""

from __future__ import annotations

import copy
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest
import torch
from realtime_layouts import conv_geometry, official, random_official_state_dict

from segkd.distill.convert import convert_official_checkpoint
from segkd.distill.load import load_model
from segkd.distill.models import build_model
from segkd.distill.models.pidnet import PIDNet
from segkd.distill.models.pretrained import WeightsError
from segkd.infer.meta import IMAGENET_RGB, ModelMeta

torch.set_num_threads(1)

NAMES = ["pidnet_s", "pidnet_m", "pidnet_l"]
OTHER = {
    "pidnet_s": "pidnet_m",
    "pidnet_m": "pidnet_l",
    "pidnet_l": "pidnet_s",
}  # a variant that does not fit
SIZES = [(128, 256), (96, 160)]


@lru_cache(maxsize=3)
def _model(name: str) -> PIDNet:
    """One seeded model per variant in eval mode, shared by the tests that only read it (19 classes)."""
    torch.manual_seed(0)
    return build_model(name, num_classes=19).eval()


def _official_file(name: str, path: Path, seed: int = 0) -> dict[str, torch.Tensor]:
    """A checkpoint as the official trainer saves it: the FullModel's ``model.`` keys and the criterion's class
    weights, inside ``state_dict``; returns the network's tensors by their unwrapped keys."""
    sd = random_official_state_dict(name, seed)
    wrapped = {f"model.{k}": v for k, v in sd.items()} | {"sem_loss.criterion.weight": torch.ones(19)}
    torch.save({"epoch": 3, "state_dict": wrapped}, path)
    return sd


# ----------------------------------------------------------------------------------------- (a) conversion
@pytest.mark.parametrize("name", NAMES)
def test_an_official_checkpoint_converts_and_loads_with_exactly_its_tensors(
    name: str, tmp_path: Path
) -> None:
    sd = _official_file(name, tmp_path / "official.pth")
    convert_official_checkpoint(tmp_path / "official.pth", name, "cityscapes", tmp_path / "ours.pth")
    model, meta = load_model(tmp_path / "ours.pth")
    own = model.state_dict()
    assert own.keys() == sd.keys()
    assert all(torch.equal(own[k], sd[k]) for k in sd)
    assert meta.arch == {
        "name": name,
        "num_classes": 19,
        "align_corners": True,
    }  # the official eval upsampling
    assert (meta.mean, meta.std, meta.channel_order) == (*IMAGENET_RGB[:2], "RGB")


# ------------------------------------------------------------------------------ (b, c) geometry, parameters
@pytest.mark.parametrize("name", NAMES)
def test_conv_geometry_and_state_dict_are_the_officials(name: str) -> None:
    fixture = official(name)
    model = _model(name)
    assert conv_geometry(model) == fixture["convs"]
    assert {k: list(v.shape) for k, v in model.state_dict().items()} == fixture["state_dict"]


@pytest.mark.parametrize("name", NAMES)
def test_parameter_count_is_the_officials(name: str) -> None:
    assert sum(p.numel() for p in _model(name).parameters()) == official(name)["params"]


# ---------------------------------------------------------------------------------------- (d) output shapes
def _forward(name: str, mode: str, size: tuple[int, int]) -> dict:
    """The contract's dict in ``mode``; a train-mode forward runs on a copy (it updates the BN statistics)."""
    model = copy.deepcopy(_model(name)).train() if mode == "train" else _model(name)
    x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return model(x, return_features=True)


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("name", NAMES)
def test_train_mode_returns_the_official_outputs_in_the_contracts_keys(
    name: str, size: tuple[int, int]
) -> None:
    # The official training forward returns [P head logits, final logits, D head boundary map].
    p, logits, boundary = official(name)["outputs"][f"train {size[0]}x{size[1]}"]
    d = _forward(name, "train", size)
    assert [list(d["aux"].shape), list(d["logits"].shape), list(d["boundary"].shape)] == [p, logits, boundary]
    assert len(d["aux_all"]) == 1 and d["aux_all"][0] is d["aux"]
    assert d["out"].shape == (2, 19, *size)
    assert d["feat"].shape == (2, _model(name).feat_channels, *logits[-2:])
    assert [s.shape[-1] for s in d["stages"]] == [-(-size[1] // f) for f in (8, 16, 32, 64)]


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("name", NAMES)
def test_eval_mode_runs_the_deployed_path_only(name: str, size: tuple[int, int]) -> None:
    _, logits, _ = official(name)["outputs"][f"eval {size[0]}x{size[1]}"]
    d = _forward(name, "eval", size)
    assert list(d["logits"].shape) == logits and d["out"].shape == (2, 19, *size)
    assert d["aux"] is None and d["aux_all"] == [] and d["boundary"] is None
    with torch.no_grad():
        out = _model(name)(torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(0)))
    assert torch.equal(out, d["out"])


def test_without_aux_heads_it_is_the_official_deploy_form() -> None:
    model = build_model("pidnet_s", num_classes=19, aux=False).train()
    assert not any(k.startswith(("seghead_p.", "seghead_d.")) for k in model.state_dict())
    d = model(torch.randn(2, 3, 64, 64), return_features=True)
    assert d["aux"] is None and d["aux_all"] == [] and d["boundary"] is None


# ---------------------------------------------------------------------------------- (e) refused checkpoints
@pytest.mark.parametrize("name", NAMES)
def test_a_checkpoint_of_another_variant_is_refused_naming_it(name: str, tmp_path: Path) -> None:
    _official_file(name, tmp_path / "official.pth")
    claimed = OTHER[name]
    with pytest.raises(
        WeightsError, match=rf"does not fit --arch {claimed} .*it is {name}: pass --arch {name}\."
    ):
        convert_official_checkpoint(tmp_path / "official.pth", claimed, "cityscapes", tmp_path / "out.pth")
    assert not (tmp_path / "out.pth").exists()


def test_a_checkpoint_of_another_class_count_is_refused_naming_it(tmp_path: Path) -> None:
    _official_file("pidnet_s", tmp_path / "official.pth")
    with pytest.raises(
        WeightsError,
        match=r"\(21 classes\); it is pidnet_s with 19 classes: pass --arch pidnet_s and a --dataset with 19 classes",
    ):
        convert_official_checkpoint(tmp_path / "official.pth", "pidnet_s", "voc", tmp_path / "out.pth")
    assert not (tmp_path / "out.pth").exists()


# ------------------------------------------------------------------------------------ ImageNet initialisation
def test_an_official_imagenet_file_loads_by_name_and_another_variants_is_refused(tmp_path: Path) -> None:
    sd = random_official_state_dict("pidnet_s")
    backbone = {k: v for k, v in sd.items() if not k.startswith(("seghead", "final_layer"))}
    torch.save({"state_dict": backbone | {"linear.weight": torch.zeros(1000, 1024)}}, tmp_path / "in1k.pth")
    model = build_model("pidnet_s", num_classes=21, pretrained=str(tmp_path / "in1k.pth"))
    assert torch.equal(model.layer5[1].conv3.weight, sd["layer5.1.conv3.weight"])
    with pytest.raises(WeightsError, match=r"in1k\.pth does not fit this PIDNet.*PIDNet_S/M/L_ImageNet"):
        build_model("pidnet_m", num_classes=19, pretrained=str(tmp_path / "in1k.pth"))


# ------------------------------------------------------------------------------------------------ (f) ONNX
def _meta(name: str, size: tuple[int, int]) -> ModelMeta:
    return ModelMeta(
        arch={"name": name, "num_classes": 19},
        class_names=[f"c{i}" for i in range(19)],
        palette=[[i, i, i] for i in range(19)],
        input_size=list(size),
    )


def _export(name: str, out: Path, dynamic: str) -> Path:
    from segkd.export.pipeline import ExportOptions, export_model

    opts = ExportOptions(exporter="torchscript", verify_count=2, dynamic=dynamic)
    return export_model(_model(name), _meta(name, (64, 128)), out, opts, log=lambda _: None).path


# PIDNet-S only: M and L have the same graph structure (10-20 s each to export on two cores; docs/quantization.md
# has every variant through every format).
EXPORTED = ["pidnet_s"]


@pytest.mark.parametrize("name", EXPORTED)
def test_the_eval_model_exports_with_one_output_at_a_fixed_size(name: str, tmp_path: Path) -> None:
    import onnx

    path = _export(name, tmp_path / f"{name}.onnx", "none")  # verified against PyTorch by the exporter
    graph = onnx.load(str(path)).graph
    assert len(graph.output) == 1
    assert [d.dim_value for d in graph.output[0].type.tensor_type.shape.dim] == [1, 19, 64, 128]


# Any input size works: every resize inside PIDNet targets the size of the P branch's 1/8 feature, and the pyramid
# pooling's average pools (kernel 5/9/17, padding half of it) give at least one pixel at any size. So one dynamic
# graph serves sizes that are no multiple of 8 (where the official forward, which resizes to H // 8, fails) too.
@pytest.mark.parametrize("name", EXPORTED)
def test_one_dynamic_graph_matches_pytorch_at_odd_sizes(name: str, tmp_path: Path) -> None:
    from segkd.export.calib import synthetic_samples
    from segkd.infer.meta import preprocess
    from segkd.infer.runtime.ort_session import cpu_session

    path = _export(name, tmp_path / f"{name}.dyn.onnx", "all")  # the exporter checks one other size itself
    sess, meta = cpu_session(path), _meta(name, (64, 128))
    for n, size in ((2, (97, 161)), (1, (72, 40))):
        x = preprocess([s.image for s in synthetic_samples(n, size, seed=3)], meta)
        got = sess.run(None, {"input": x})[0]
        with torch.no_grad():
            ref = _model(name)(torch.from_numpy(x)).numpy()
        assert got.shape == ref.shape == (n, 19, *size)
        np.testing.assert_allclose(got, ref, atol=1e-4 * max(1.0, float(np.abs(ref).max())))
