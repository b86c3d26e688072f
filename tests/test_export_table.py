"""The export format table: parsers generated from it, options refused where they have no effect, verification over
any runner, a format added as one exporter plus one row, and ``segkd benchmark CKPT --formats``."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from segkd.distill.checkpoint import save_checkpoint
from segkd.distill.models import build_model
from segkd.export.cli import format_main, format_parser
from segkd.export.formats import EXPORT_FORMATS, ExportFormat, register_export_format
from segkd.export.options import ExportOptions, option_flag, option_flags
from segkd.infer.meta import ModelMeta
from segkd.infer.runtime.ort_runner import OrtRunner

K, SIZE = 5, (64, 128)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    model = build_model("deeplabv3_mbv2", num_classes=K, width=0.25)
    meta = ModelMeta(
        arch={"name": "deeplabv3_mbv2", "num_classes": K, "width": 0.25},
        class_names=[f"c{i}" for i in range(K)],
        palette=[[40 * i, 255 - 40 * i, i] for i in range(K)],
        input_size=list(SIZE),
    )
    return save_checkpoint(tmp_path_factory.mktemp("table") / "tiny.pth", model, meta)


def _help(fmt: ExportFormat) -> str:
    return format_parser(fmt).format_help()


# ------------------------------------------------------------------------------------------- generated parsers
@pytest.mark.parametrize("name", ["onnx", "openvino"])
def test_each_command_offers_exactly_the_options_its_format_honours(name: str) -> None:
    fmt = EXPORT_FORMATS[name]
    text = _help(fmt)
    for option, flag in ((n, option_flag(n)) for n in option_flags().values()):
        assert (f"{flag} " in text or f"{flag}\n" in text) == (option in fmt.options), (name, flag)


def test_options_are_declared_once_with_the_exporters_defaults() -> None:
    args = format_parser(EXPORT_FORMATS["onnx"]).parse_args(["x.pth"])
    defaults = ExportOptions()
    for name in option_flags().values():
        assert getattr(args, name) == getattr(defaults, name), name


def test_an_option_without_effect_is_refused_naming_the_commands_that_take_it(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as e:
        format_main("openvino", ["x.pth", "--calib-method", "minmax"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "--calib-method has no effect on openvino files" in err
    assert "segkd export" in err and "segkd trt" in err and "segkd openvino" not in err.split(";")[1]
    with pytest.raises(SystemExit):
        format_main("onnx", ["x.pth", "--no-such-flag"])
    assert "unrecognized arguments: --no-such-flag" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------- one more format
class DummyRunner(OrtRunner):
    """A ``.dummy`` file: ONNX bytes under another name, run by ONNX Runtime (a stand-in for a new runtime)."""

    format = "dummy"


def export_dummy(checkpoint: str, opts: ExportOptions, log=print):  # noqa: ANN001, ANN201
    """The new format's exporter: an unverified ONNX graph renamed, then verified through the runner interface."""
    from segkd.distill.load import load_model
    from segkd.export.pipeline import ExportResult, export_checkpoint, verification_samples
    from segkd.export.verify import VerificationError, torch_reference, verify

    out = Path(opts.out) if opts.out else EXPORT_FORMATS["dummy"].default_path(checkpoint, opts.precision)
    graph = export_checkpoint(
        checkpoint, dataclasses.replace(opts, out=str(out.with_suffix(".onnx")), verify=False), log=log
    )
    shutil.move(graph.path, out)
    model, meta = load_model(checkpoint)
    samples, where = verification_samples(opts, meta, opts.size(meta), log)
    with DummyRunner(out) as runner:
        report = verify(
            runner, torch_reference(model, meta), meta, samples, precision=opts.precision, source=where
        )
    if not report.passed:
        out.unlink()
        raise VerificationError(report)
    return ExportResult(out, graph.meta, report, graph.exporter, graph.seconds)


@pytest.fixture
def dummy_format() -> Iterator[ExportFormat]:
    from segkd.infer import formats as runtime_formats

    onnx_row = runtime_formats.get_format("onnx")
    runtime_formats.register_format(
        dataclasses.replace(onnx_row, name="dummy", suffixes=(".dummy",), runner=DummyRunner)
    )
    fmt = register_export_format(
        ExportFormat(
            "dummy", "dummy", "export/to_dummy.py", ".dummy", f"{__name__}:export_dummy", "none", ("onnxruntime",),
            "nothing to install", frozenset({"height", "width", "exporter", "verify", "verify_count"}), "dummy file",
        )
    )  # fmt: skip
    yield fmt
    del EXPORT_FORMATS["dummy"]
    runtime_formats.unregister_format("dummy")


def test_a_format_is_one_exporter_and_one_row(
    dummy_format: ExportFormat, checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = _help(dummy_format)
    assert text.startswith("usage: python export/to_dummy.py") and "--verify-count" in text
    assert "--calib-images" not in text and "--argmax" not in text
    out = tmp_path / "tiny.dummy"
    argv = [str(checkpoint), "--out", str(out), "--exporter", "torchscript", "--verify-count", "2"]
    assert format_main("dummy", argv) == 0
    printed = capsys.readouterr().out
    assert f"wrote {out}" in printed and "verified: 2 images 64x128 (synthetic images)" in printed
    # the file runs through the runtime's table like any other format
    from segkd.infer.runtime import load_runner

    with load_runner(out) as runner:
        assert runner.format == "dummy"
        labels = runner.predict([np.zeros((*SIZE, 3), np.uint8)])[0]
    assert labels.shape == SIZE and labels.max() < K
    with pytest.raises(SystemExit):
        format_main("dummy", [*argv, "--calib-images", str(tmp_path)])
    assert "it is an option of segkd export, segkd openvino, segkd trt" in capsys.readouterr().err


def test_verification_through_a_runner_fails_a_wrong_file(
    dummy_format: ExportFormat, checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from segkd.export import verify as verify_module

    real = verify_module.torch_reference

    def shifted(model, meta):  # noqa: ANN001, ANN202 (a reference that disagrees: the file is "wrong")
        ref = real(model, meta)
        return lambda images: np.roll(ref(images), 1, axis=1)

    monkeypatch.setattr(verify_module, "torch_reference", shifted)
    out = tmp_path / "tiny.dummy"
    argv = [str(checkpoint), "--out", str(out), "--exporter", "torchscript", "--verify-count", "2"]
    assert format_main("dummy", argv) == 1  # verification failed: nothing written
    assert not out.exists()


# ------------------------------------------------------------------------------------------- benchmark --formats
def test_unknown_formats_are_named() -> None:
    from segkd.export.bench_formats import select_formats

    assert [f.name for f in select_formats("all")] == list(EXPORT_FORMATS)
    with pytest.raises(ValueError, match="unknown format.*'onx'.*onnx, openvino, tensorrt"):
        select_formats("onnx,onx")


@pytest.mark.slow
def test_benchmark_every_installed_format(
    checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from segkd.cli import main

    missing = ExportFormat(
        "absent", "absent", "x", ".absent", "x:y", "none", ("no_such_module_here",), "pip install absent",
        frozenset(), "never installed",
    )  # fmt: skip
    monkeypatch.setitem(EXPORT_FORMATS, "absent", missing)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    out = tmp_path / "bench"
    argv = ["benchmark", str(checkpoint), "--formats", "onnx,absent", "--runs", "2", "--warmup", "0",
            "--out", str(out), "--no-progress", "--in-process"]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "absent: skipped (no_such_module_here not installed: pip install absent)" in printed
    rows = json.loads((out / "benchmark.json").read_text())["results"]
    assert [(r["format"], r["status"]) for r in rows] == [("pytorch", "ok"), ("onnx", "ok")]
    assert os.path.isfile(out / "files" / "tiny.onnx")


def test_an_interrupted_export_says_nothing_was_written(capsys: pytest.CaptureFixture[str]) -> None:
    import signal

    from segkd.export.cli import _run
    from segkd.script import Terminated

    def stopped(interrupt: type[KeyboardInterrupt]) -> int:
        raise interrupt

    previous = signal.getsignal(signal.SIGTERM)
    try:
        assert _run(stopped, Terminated) == 143
        assert capsys.readouterr().err.startswith("terminated (SIGTERM): nothing was written")
        assert _run(stopped, KeyboardInterrupt) == 130
        assert capsys.readouterr().err.startswith("interrupted: nothing was written")
        with pytest.raises(Terminated):  # the command's handler turns SIGTERM into the exception above
            signal.raise_signal(signal.SIGTERM)
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_export_takes_size_like_every_other_command(checkpoint: Path, tmp_path: Path, capsys) -> None:
    args = format_parser(EXPORT_FORMATS["onnx"]).parse_args(["x.pth", "--size", "32x96"])
    from segkd.export.cli import _options

    opts = _options(args, "fp32", None)
    assert (opts.height, opts.width) == (32, 96)
    argv = [str(checkpoint), "--size", "32x96", "--height", "64", "--out", str(tmp_path / "m.onnx")]
    assert format_main("onnx", argv) == 2
    assert "--size 32x96 and --height/--width disagree" in capsys.readouterr().err
