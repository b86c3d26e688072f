"""Public Hugging Face weights into SegFormer / UPerNet-Swin: encoders for students, whole models for teachers.

No network here: the files are written with the library's own ``save_pretrained`` from small configurations, which
produces the layout of the published downloads (``config.json`` + ``model.safetensors``, the older key names
such as ``segformer.encoder.block.0.0.attention.self.query``).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip(
    "transformers", reason="SegFormer/UPerNet need the transformers extra: pip install 'segkd[transformers]'"
)

from segkd.distill.convert import convert_hf_checkpoint, main  # noqa: E402
from segkd.distill.load import load_model  # noqa: E402
from segkd.distill.models import build_model  # noqa: E402
from segkd.distill.models.pretrained import WeightsError  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEPTHS = [1, 1, 1, 1]
MIT_B0 = {"hidden_sizes": [32, 64, 160, 256], "depths": DEPTHS}  # segformer_b0's widths, one block per stage
SWIN_T = {"embed_dim": 96, "depths": DEPTHS, "num_heads": [3, 6, 12, 24], "window_size": 7}


def _save(model: torch.nn.Module, folder: Path) -> Path:
    model.save_pretrained(str(folder))
    assert (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()
    return folder


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, torch.nn.Module]]:
    """Folders laid out as the public downloads, each with the in-memory model that wrote it."""
    root = tmp_path_factory.mktemp("hf")
    torch.manual_seed(0)
    made = {
        "mit": transformers.SegformerForImageClassification(
            transformers.SegformerConfig(**MIT_B0, num_labels=10)
        ),
        "mit_b1": transformers.SegformerForImageClassification(
            transformers.SegformerConfig(hidden_sizes=[64, 128, 320, 512], depths=DEPTHS, num_labels=10)
        ),
        "segformer_ade": transformers.SegformerForSemanticSegmentation(
            transformers.SegformerConfig(**MIT_B0, decoder_hidden_size=32, num_labels=150)
        ),
        "swin": transformers.SwinForImageClassification(transformers.SwinConfig(**SWIN_T, num_labels=10)),
    }
    backbone = transformers.SwinConfig(**SWIN_T, out_features=["stage1", "stage2", "stage3", "stage4"])
    made["upernet_ade"] = transformers.UperNetForSemanticSegmentation(
        transformers.UperNetConfig(
            backbone_config=backbone, hidden_size=32, num_labels=150, use_auxiliary_head=True,
            auxiliary_in_channels=384,
        )
    )  # fmt: skip
    return {name: (_save(m.eval(), root / name), m) for name, m in made.items()}


def _same(ours: dict[str, torch.Tensor], theirs: dict[str, torch.Tensor], prefix: str, into: str) -> int:
    """Count of ``theirs`` weights under ``prefix`` that ``ours`` holds, equal, under ``into``; fails on a difference."""
    n = 0
    for k, v in theirs.items():
        if k.startswith(prefix):
            assert torch.equal(ours[into + k[len(prefix) :]], v), k
            n += 1
    return n


def test_mit_encoder_initialises_segformer_and_the_decoder_starts_fresh(files) -> None:
    folder, source = files["mit"]
    assert "segformer.encoder.block.0.0.attention.self.query.weight" in _keys(folder)  # the published layout
    model = build_model("segformer_b0", num_classes=7, depths=DEPTHS, pretrained=str(folder))
    loaded = _same(model.state_dict(), source.state_dict(), "segformer.", "net.segformer.")
    assert loaded > 50
    assert model.not_pretrained and all(k.startswith("decode_head.") for k in model.not_pretrained)
    out = model.eval()(torch.rand(1, 3, 64, 64), return_features=True)
    assert out["out"].shape == (1, 7, 64, 64) and out["logits"].shape == (1, 7, 16, 16)


def _keys(folder: Path) -> list[str]:
    from safetensors import safe_open

    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        return list(f.keys())


def test_encoder_of_another_size_is_refused(files) -> None:
    folder, _ = files["mit_b1"]
    with pytest.raises(WeightsError, match=r"does not fit segformer_b0's encoder.*nvidia/mit-b0"):
        build_model("segformer_b0", num_classes=7, depths=DEPTHS, pretrained=str(folder))
    with pytest.raises(WeightsError, match="missing, extra"):  # a deeper file: blocks left over
        build_model("segformer_b1", num_classes=7, depths=[1, 1, 1, 1], pretrained=str(files["mit"][0]))


def test_imagenet_swin_initialises_the_upernet_backbone(files) -> None:
    folder, source = files["swin"]
    model = build_model(
        "upernet_swin_t", num_classes=7, depths=DEPTHS, head_channels=32, pretrained=str(folder)
    )
    assert _same(model.state_dict(), source.state_dict(), "swin.", "net.backbone.swin.") > 50
    left = [k for k in model.not_pretrained if k.startswith("backbone.")]
    assert left and all(".hidden_states_norms." in f".{k}" for k in left)  # stage norms are UPerNet's own
    assert any(k.startswith("decode_head.") for k in model.not_pretrained)
    with pytest.raises(WeightsError, match="window_size"):  # a window-12 file does not fit window 7
        other = transformers.SwinForImageClassification(
            transformers.SwinConfig(**{**SWIN_T, "window_size": 12})
        )
        build_model(
            "upernet_swin_t", num_classes=7, depths=DEPTHS, head_channels=32,
            pretrained=str(_save(other, folder.parent / "swin12")),
        )  # fmt: skip


@pytest.mark.parametrize(
    ("name", "arch", "kwargs"),
    [
        ("upernet_ade", "upernet_swin_t", ["depths=[1,1,1,1]", "head_channels=32"]),
        ("segformer_ade", "segformer_b0", ["depths=[1,1,1,1]", "decoder_hidden_size=32"]),
    ],
)
def test_whole_model_converts_and_predicts_as_the_library_does(files, tmp_path, name, arch, kwargs) -> None:
    folder, source = files[name]
    out = tmp_path / f"{arch}.pth"
    argv = [str(folder), "--arch", arch, "--dataset", "ade20k", "--crop", "512x512", "--out", str(out)]
    assert main([*argv, *(x for kw in kwargs for x in ("--model-arg", kw))]) == 0
    model, meta = load_model(out)
    assert meta.num_classes == 150 and meta.input_size == [512, 512] and "pretrained" not in meta.arch
    x = torch.rand(1, 3, 64, 96)
    with torch.no_grad():
        expected = source(pixel_values=x).logits
        if expected.shape[-2:] != x.shape[-2:]:  # SegFormer's library output stays at 1/4
            expected = torch.nn.functional.interpolate(expected, size=x.shape[-2:], mode="bilinear")
        assert torch.allclose(model(x), expected, atol=1e-5)


def test_conversion_refuses_an_encoder_and_another_class_count(files, tmp_path) -> None:
    with pytest.raises(WeightsError, match="student's starting point"):
        convert_hf_checkpoint(files["mit"][0], "segformer_b0", "ade20k", tmp_path / "a.pth",
                              arch_kwargs={"depths": DEPTHS})  # fmt: skip
    with pytest.raises(WeightsError, match="predicts 150 classes: pass a --dataset with 150"):
        convert_hf_checkpoint(files["segformer_ade"][0], "segformer_b0", "cityscapes", tmp_path / "b.pth",
                              arch_kwargs={"depths": DEPTHS, "decoder_hidden_size": 32})  # fmt: skip
    assert not list(tmp_path.iterdir())  # nothing written


@pytest.mark.slow
def test_a_model_id_without_network_says_how_to_download_it() -> None:
    code = (
        "from segkd.distill.models import build_model\n"
        "from segkd.distill.models.pretrained import WeightsError\n"
        "try:\n"
        "    build_model('segformer_b0', num_classes=7, pretrained='nvidia/mit-b0')\n"
        "except WeightsError as e:\n"
        "    print('ERR', e)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "HF_HOME": "/nonexistent/hf-home"}
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert "ERR" in run.stdout and "hf download nvidia/mit-b0 --local-dir" in run.stdout, (
        run.stdout + run.stderr
    )


def test_training_config_accepts_a_model_id_or_folder_for_transformer_students(tmp_path) -> None:
    from segkd.distill.checks import _pretrained_problem

    assert _pretrained_problem("segformer_b0", "nvidia/mit-b0") is None
    assert _pretrained_problem("upernet_swin_t", str(tmp_path)) is None
    assert "neither a folder nor a Hugging Face model id" in _pretrained_problem("segformer_b0", "mit b0.zip")
    assert "does not exist" in _pretrained_problem("deeplabv3_r18", "nvidia/mit-b0")  # CNNs take files


def test_a_folder_with_a_pickled_bin_is_refused_without_running_it(files, tmp_path) -> None:
    from planted import Payload

    folder, source = files["mit"]
    planted = tmp_path / "planted"
    planted.mkdir()
    (planted / "config.json").write_text((folder / "config.json").read_text())
    marker = tmp_path / "pwned"
    torch.save({**source.state_dict(), "extra": Payload(marker)}, planted / "pytorch_model.bin")
    with pytest.raises(WeightsError) as e:
        build_model("segformer_b0", num_classes=7, depths=DEPTHS, pretrained=str(planted))
    assert not marker.exists() and "loading those could run code" in str(e.value)
    assert "weights_only" not in str(e.value)
