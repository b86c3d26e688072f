"""The self-describing checkpoint: round trip, clear errors, atomic writes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from segkd.distill.checkpoint import CheckpointError, half_copy, load_checkpoint, save_checkpoint
from segkd.distill.load import load_model
from segkd.distill.models import build_model
from segkd.infer.meta import ModelMeta


def _meta(k: int = 3) -> ModelMeta:
    return ModelMeta(
        arch={"name": "pspnet_mbv2", "num_classes": k, "width": 0.25},
        class_names=[f"c{i}" for i in range(k)],
        palette=[[i * 40, 0, 255 - i * 40] for i in range(k)],
        input_size=[64, 96],
    )


def test_round_trip_rebuilds_the_same_model(tmp_path) -> None:
    model = build_model("pspnet_mbv2", num_classes=3, width=0.25).eval()
    path = save_checkpoint(tmp_path / "m.pth", model, _meta(), {"iteration": 12, "metrics": {"mIoU": 41.5}})
    raw = torch.load(path, weights_only=True)  # nothing but plain containers and tensors
    assert raw["format"] == "segkd-checkpoint"
    loaded, meta = load_model(path)
    assert meta == _meta()
    assert load_checkpoint(path).provenance["iteration"] == 12
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))


def test_foreign_and_corrupt_files_give_clear_errors(tmp_path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pth")
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "bare.pth")
    with pytest.raises(CheckpointError, match="not a segkd-checkpoint"):
        load_checkpoint(tmp_path / "bare.pth")
    good = save_checkpoint(
        tmp_path / "good.pth", build_model("pspnet_mbv2", num_classes=3, width=0.25), _meta()
    )
    data = good.read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_checkpoint(tmp_path / "cut.pth")


def test_failed_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch) -> None:
    model = build_model("pspnet_mbv2", num_classes=3, width=0.25)
    path = save_checkpoint(tmp_path / "last.pth", model, _meta(), {"iteration": 1})

    def dying_save(obj, f, *a, **k):
        Path(f).write_bytes(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, model, _meta(), {"iteration": 2})
    monkeypatch.undo()
    assert load_checkpoint(path).provenance["iteration"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pth"]  # no temp file left behind


def test_metadata_validation_and_props_round_trip() -> None:
    meta = _meta()
    meta.extra["precision"] = "fp16"
    assert ModelMeta.from_props(meta.to_props()) == meta
    with pytest.raises(ValueError, match="palette"):
        ModelMeta(arch={"name": "x"}, class_names=["a", "b"], palette=[[0, 0, 0]])
    with pytest.raises(ValueError, match="exporter"):
        ModelMeta.from_props({"mean": "[0, 0, 0]"})


def test_atomic_writes_get_normal_permissions(tmp_path) -> None:
    import os

    from segkd.infer.fileio import atomic_write_text

    atomic_write_text(tmp_path / "a.txt", "x")
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o666 & ~umask


def test_half_copy_stores_float16_weights_that_load_back_as_float32(tmp_path) -> None:
    model = build_model("pspnet_mbv2", num_classes=3, width=0.25).eval()
    src = save_checkpoint(tmp_path / "m.pth", model, _meta(), {"iteration": 7})
    dst = half_copy(src, tmp_path / "m.half.pth")
    state = load_checkpoint(dst).state_dict
    assert {v.dtype for v in state.values() if v.is_floating_point()} == {torch.float16}
    assert any(v.dtype == torch.int64 for v in state.values())  # BatchNorm's counters stay integers
    assert dst.stat().st_size < 0.6 * src.stat().st_size
    prov = load_checkpoint(dst).provenance
    assert prov["iteration"] == 7 and prov["weights_dtype"] == "float16" and prov["half_copy_of"] == "m.pth"
    loaded, meta = load_model(dst)
    assert meta == _meta() and next(loaded.parameters()).dtype == torch.float32
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=2e-2, atol=2e-2)


def test_metadata_naming_more_classes_than_the_weights_predict_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "m.pth"
    model = build_model("deeplabv3_mbv2", num_classes=3, width=0.25)
    good = ModelMeta(arch={"name": "deeplabv3_mbv2", "num_classes": 3, "width": 0.25},
                     class_names=["a", "b", "c"], palette=[[0, 0, 0]] * 3)  # fmt: skip
    save_checkpoint(path, model, good)
    blob = torch.load(path, weights_only=True)
    blob["meta"]["class_names"].append("d")  # edited by hand: four names for three output channels
    blob["meta"]["palette"].append([1, 1, 1])
    torch.save(blob, path)
    with pytest.raises(CheckpointError, match=r"4 class names for a model of 3 classes"):
        load_checkpoint(path)
