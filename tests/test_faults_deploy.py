"""Faults a clumsy or hostile user meets in export and inference: each one a clear error, never a traceback or a
silently wrong file. Runs alone: ``pytest tests/test_faults_deploy.py``.

Commands are called in-process (``main(argv)``): an exception escaping one would fail the test just as a
traceback would; one subprocess run checks the exit code and stderr of a real command line.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import types
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

torch = pytest.importorskip("torch")

from segkd.distill.checkpoint import save_checkpoint  # noqa: E402
from segkd.distill.models import build_model  # noqa: E402
from segkd.export.cli import onnx_main, trt_main  # noqa: E402
from segkd.export.pipeline import ExportOptions, export_checkpoint, export_model  # noqa: E402
from segkd.export.verify import VerificationError  # noqa: E402
from segkd.infer.benchmark import main as bench_main  # noqa: E402
from segkd.infer.meta import ModelMeta  # noqa: E402
from segkd.infer.run_camera import main as camera_main  # noqa: E402
from segkd.infer.runtime import RunnerError, load_runner  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
K, SIZE = 3, (64, 64)
QUICK = ["--exporter", "torchscript", "--verify-count", "1", "--no-slim"]


def _meta(name: str = "deeplabv3_mbv2") -> ModelMeta:
    return ModelMeta(
        arch={"name": name, "num_classes": K, "width": 0.25},
        class_names=["a", "b", "c"],
        palette=[[255, 0, 0], [0, 255, 0], [0, 0, 255]],
        input_size=list(SIZE),
    )


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """A good checkpoint, every kind of malformed one, a non-ONNX .onnx, a garbage engine and a short video."""
    d = tmp_path_factory.mktemp("faults")
    torch.manual_seed(0)
    good = save_checkpoint(d / "good.pth", build_model("deeplabv3_mbv2", num_classes=K, width=0.25), _meta())
    raw = good.read_bytes()
    blob = torch.load(good, weights_only=True)
    out = {"good": good}

    def variant(name: str, **changes: object) -> None:
        b = {**blob, **changes}
        torch.save({k: v for k, v in b.items() if v is not None}, d / f"{name}.pth")
        out[name] = d / f"{name}.pth"

    for name, data in {
        "empty": b"",
        "truncated": raw[: len(raw) // 2],
        "not_zip": b"GIF89a" + bytes(500),
    }.items():
        (d / f"{name}.pth").write_bytes(data)
        out[name] = d / f"{name}.pth"
    variant("no_meta", meta=None)
    variant("wrong_shapes", state_dict={k: v[:1] if v.ndim else v for k, v in blob["state_dict"].items()})
    variant("unknown_arch", meta={**blob["meta"], "arch": {"name": "deeplabv3_mbv9", "num_classes": K}})
    variant("newer_version", format_version=99)

    class Evil:  # what a malicious checkpoint carries: code run at unpickling
        def __reduce__(self):
            return (os.system, (f"touch {d / 'PWNED'}",))

    torch.save({"format": "segkd-checkpoint", "format_version": 1, "meta": Evil()}, d / "pickle.pth")
    out["pickle"] = d / "pickle.pth"
    (d / "garbage.onnx").write_bytes(b"this is not a protobuf" * 20)
    (d / "garbage.engine").write_bytes(os.urandom(2000))
    out.update(garbage_onnx=d / "garbage.onnx", garbage_engine=d / "garbage.engine", dir=d)
    video = d / "clip.mp4"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 10, (64, 48))
    for i in range(3):
        writer.write(np.full((48, 64, 3), 40 * i, np.uint8))
    writer.release()
    out["video"] = video
    return out


MALFORMED = [
    "empty",
    "truncated",
    "not_zip",
    "no_meta",
    "wrong_shapes",
    "unknown_arch",
    "newer_version",
    "pickle",
]
_WHAT = {
    "empty": "empty",
    "truncated": "truncated",
    "not_zip": "not a torch zip archive",
    "no_meta": "no valid model metadata",
    "wrong_shapes": "do not fit",
    "unknown_arch": "Did you mean 'deeplabv3_mbv2'",
    "newer_version": "newer segkd",
    "pickle": "could run code",
}


def _one_error(capsys: pytest.CaptureFixture[str]) -> str:
    """The command's stderr: one error (``error:`` line, maybe with listed problems), no traceback, no weights_only advice."""
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    assert "Traceback" not in err and "weights_only" not in err, err
    return err.strip()


# --------------------------------------------------------------------------------------------- checkpoints
@pytest.mark.parametrize("case", MALFORMED)
def test_malformed_checkpoint_is_one_clear_error_in_every_command(case, files, capsys, tmp_path):
    bad = str(files[case])
    commands = {
        "to_onnx": lambda: onnx_main([bad, *QUICK]),
        "to_trt": lambda: trt_main([bad, *QUICK]),
        "benchmark": lambda: bench_main(
            [bad, "--runs", "1", "--out", str(tmp_path), "--no-progress", "--in-process"]
        ),
        "camera": lambda: camera_main([bad, "--source", str(files["video"]), "--headless"]),
    }
    for name, run in commands.items():
        assert run() == 2, name
        line = _one_error(capsys)
        assert bad in line and _WHAT[case] in line, (name, line)
    assert not (files["dir"] / "PWNED").exists()  # the planted pickle never ran


def test_empty_checkpoint_through_the_real_command_line(files):
    proc = subprocess.run(
        [sys.executable, "export/to_onnx.py", str(files["empty"])], capture_output=True, text=True, cwd=REPO,
        timeout=300,
    )  # fmt: skip
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"error: {files['empty']} is not a readable checkpoint (the file is empty); pass a .pth written by "
        "distill/train.py, or convert foreign weights with `segkd convert`"
    ]


def test_non_onnx_file_and_garbage_engine_are_clear_errors(files, capsys, tmp_path):
    onnx_file, engine = str(files["garbage_onnx"]), str(files["garbage_engine"])
    assert trt_main([onnx_file]) == 2
    assert "not a readable ONNX file" in _one_error(capsys)
    for model in (onnx_file, engine):
        assert (
            bench_main([model, "--runs", "1", "--out", str(tmp_path), "--no-progress", "--in-process"]) == 2
        )
        assert model in _one_error(capsys)
        assert camera_main([model, "--source", str(files["video"]), "--headless"]) == 2
        assert model in _one_error(capsys)
    with pytest.raises(RunnerError, match="damaged or not an ONNX file"):
        load_runner(onnx_file)
    with pytest.raises(RunnerError, match="sidecar"):
        load_runner(engine, device="cuda")


# --------------------------------------------------------------------------------------------- verification
class _NaNModel(torch.nn.Module):
    """Outputs NaN logits everywhere: every argmax agrees with every other one."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, K, 1)

    def forward(self, x):
        return self.conv(x) * float("nan")


def test_verification_fails_a_model_whose_outputs_are_nan(tmp_path):
    out = tmp_path / "nan.onnx"
    opts = ExportOptions(exporter="torchscript", verify_count=2, slim=False)
    with pytest.raises(VerificationError, match="NaN or inf") as info:
        export_model(_NaNModel(), _meta(), out, opts, log=lambda _: None)
    assert (
        info.value.report.agreement == 100.0 and info.value.report.non_finite > 0
    )  # agreement alone passed it
    assert not out.exists()


def test_export_model_leaves_the_callers_model_as_it_was(tmp_path):
    model = build_model("deeplabv3_mbv2", num_classes=K, width=0.25).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    export_model(model, _meta(), tmp_path / "m.onnx", ExportOptions(exporter="torchscript", verify_count=1))
    assert model.training and all(m.training for m in model.modules())
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) and before[k].dtype == after[k].dtype for k in before)


# --------------------------------------------------------------------------------------------- settings, paths
def test_bad_numbers_are_refused_up_front(files, capsys, tmp_path):
    good = str(files["good"])
    out = str(tmp_path / "b")
    for argv in (["--limit", "-1"], ["--threads", "-2"], ["--size", "99999x99999"], ["--batch", "100000"]):
        with pytest.raises(SystemExit) as e:
            bench_main([good, "--out", out, *argv])
        assert e.value.code == 2
        assert "invalid benchmark settings" in capsys.readouterr().err
    for argv, why in ((["--height", "0"], "too small"), (["--height", "100000"], "too large")):
        assert onnx_main([good, *QUICK, *argv]) == 2
        assert why in _one_error(capsys)
    for argv, why in ((["--threads", "-1"], "--threads"), (["--size", "99999x64"], "within 1..16384")):
        assert camera_main([good, "--source", str(files["video"]), "--headless", *argv]) == 2
        assert why in _one_error(capsys)


def test_output_paths_are_checked_before_the_work(files, capsys, tmp_path, monkeypatch):
    import segkd.distill.load

    def never(*a, **k):
        raise AssertionError("the checkpoint was loaded before the output path was checked")

    monkeypatch.setattr(segkd.distill.load, "load_model", never)
    folder = tmp_path / "a_folder.onnx"
    folder.mkdir()
    assert onnx_main([str(files["good"]), "--out", str(folder), *QUICK]) == 2
    assert "is an existing folder" in _one_error(capsys)
    assert trt_main([str(files["good"]), "--out", str(folder), *QUICK]) == 2
    assert "is an existing folder" in _one_error(capsys)
    read_only = tmp_path / "ro"
    read_only.mkdir()
    real_access = os.access  # root may write anywhere: present the folder as read-only, as to a normal user
    monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == read_only else real_access(p, mode))
    assert onnx_main([str(files["good"]), "--out", str(read_only / "x.onnx"), *QUICK]) == 2
    assert "not writable" in _one_error(capsys)
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    assert bench_main([str(files["good"]), "--out", str(a_file), "--no-progress", "--in-process"]) == 2
    assert "is a file" in _one_error(capsys)
    video = ["--source", str(files["video"]), "--headless"]
    assert camera_main([str(files["good"]), *video, "--save", str(folder)]) == 2
    assert "is an existing folder" in _one_error(capsys)
    assert camera_main([str(files["good"]), *video, "--snapshot-dir", str(a_file)]) == 2
    assert "is a file" in _one_error(capsys)
    assert camera_main([str(files["good"]), *video, "--json-summary", str(read_only / "s.json")]) == 2
    assert "not writable" in _one_error(capsys)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_really_read_only_folder(files, capsys, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o555)
    assert onnx_main([str(files["good"]), "--out", str(ro / "x.onnx"), *QUICK]) == 2
    assert "not writable" in _one_error(capsys)


# --------------------------------------------------------------------------------------------- disk full, leftovers
def test_disk_full_during_export_keeps_the_last_good_file(files, capsys, tmp_path, monkeypatch):
    import segkd.export.onnx_export

    out = tmp_path / "m.onnx"
    assert onnx_main([str(files["good"]), "--out", str(out), *QUICK]) == 0
    good = out.read_bytes()
    capsys.readouterr()

    real_save = segkd.export.onnx_export.onnx.save

    def full_disk(model, path, *a, **k):
        if Path(path).parent != tmp_path:  # the staged copy that verification reads, in a temporary folder
            return real_save(model, path, *a, **k)
        Path(path).write_bytes(
            b"partial"
        )  # the first bytes of the output went out, then the device filled up
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(segkd.export.onnx_export.onnx, "save", full_disk)
    assert onnx_main([str(files["good"]), "--out", str(out), *QUICK]) == 2
    line = _one_error(capsys)
    assert "no space left writing m.onnx" in line and "previous file kept" in line
    assert out.read_bytes() == good
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]  # the partial temporary file is gone


def test_leftovers_of_killed_writes_are_cleaned_up(tmp_path):
    import tempfile

    from segkd.infer.fileio import atomic_write_text, work_dir

    dead = 2**22 + 12345  # above the default pid_max: no such process
    stale = tmp_path / f".out.json.{dead}.abcd.tmp"
    live = tmp_path / f".out.json.{os.getpid()}.efgh.tmp"  # a writer still at work: not ours to remove
    stale.write_text("half")
    live.write_text("busy")
    atomic_write_text(tmp_path / "out.json", "{}")
    assert not stale.exists() and live.exists() and (tmp_path / "out.json").read_text() == "{}"
    old = Path(tempfile.mkdtemp(prefix=f"segkd-export-{dead}-"))
    (old / "graph.onnx").write_bytes(b"x")
    with work_dir("export") as tmp:
        assert tmp.name.startswith(f"segkd-export-{os.getpid()}-")
    assert not old.exists() and not tmp.exists()
    # the OpenVINO export stages its files beside the output (same disk): a killed one's folder goes next time
    from segkd.infer.fileio import work_dir_beside

    killed = tmp_path / f".segkd-openvino-{dead}-xyz"
    killed.mkdir()
    (killed / "m.bin").write_bytes(b"x")
    with work_dir_beside(tmp_path / "m.xml", "openvino") as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(f".segkd-openvino-{os.getpid()}-")
    assert not killed.exists() and not tmp.exists()


# --------------------------------------------------------------------------------------------- TensorRT, ORT
def _fake_trt(version: str, seen: dict[str, object]) -> types.ModuleType:
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version

    class Logger:
        WARNING = 2

        def __init__(self, level) -> None:
            pass

    class Runtime:
        def __init__(self, logger) -> None:
            self.engine_host_code_allowed = False

        def deserialize_cuda_engine(self, blob):
            seen["host_code_allowed"] = self.engine_host_code_allowed  # what TensorRT would see
            return None

    trt.Logger, trt.Runtime = Logger, Runtime
    return trt


@pytest.mark.parametrize("compatible", [True, False])
def test_version_compatible_engine_allows_host_code_before_deserialising(compatible, tmp_path, monkeypatch):
    import segkd.infer.runtime.trt_runner as trt_runner

    seen: dict[str, object] = {}
    monkeypatch.setitem(sys.modules, "tensorrt", _fake_trt("10.14.0", seen))
    cuda = types.SimpleNamespace(device=lambda: ("Fake GPU", "9.0"), close=lambda: None)
    monkeypatch.setitem(trt_runner.CUDA_LIBS, "fake", lambda: cuda)
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"plan")
    build = {"tensorrt_version": "10.13.0" if compatible else "10.14.0", "gpu_name": "Fake GPU",
             "compute_capability": "9.0", "version_compatible": compatible, "engine_host_code_allowed": compatible}  # fmt: skip
    record = {"format": "segkd-engine", "engine": engine.name, "meta": _meta().to_dict(), "build": build}
    (tmp_path / "m.engine.json").write_text(json.dumps(record))
    with pytest.raises(RunnerError, match="could not deserialize"):
        load_runner(engine, device="cuda", cuda_lib="fake")
    assert seen["host_code_allowed"] is compatible


def test_onnx_runtime_tensorrt_provider_is_opt_in_with_caches(tmp_path):
    from segkd.infer.runtime.ort_runner import _with_options, select_providers

    avail = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert select_providers("cuda", None, avail) == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    chosen = select_providers("cuda", "TensorrtExecutionProvider", avail)
    assert chosen == avail  # TensorRT first, CUDA for what it leaves, CPU last
    (trt, options), *rest = _with_options(chosen, tmp_path / "m.onnx")
    assert trt == "TensorrtExecutionProvider" and rest == avail[1:]
    assert options["trt_engine_cache_enable"] and options["trt_engine_cache_path"] == str(
        tmp_path / "m.onnx.ort-trt-cache"
    )
    assert options["trt_timing_cache_enable"]


def test_onnx_runner_reports_the_provider_that_ran(files, tmp_path):
    out = tmp_path / "m.onnx"
    export_checkpoint(
        files["good"], ExportOptions(exporter="torchscript", verify_count=1, out=str(out)), log=print
    )
    with (
        pytest.warns(RuntimeWarning, match="runs on CPUExecutionProvider"),
        load_runner(out, device="cuda") as r,
    ):
        assert (r.provider, r.device) == ("CPUExecutionProvider", "cpu")  # no GPU here: what actually ran


def test_to_trt_without_tensorrt_exits_non_zero_after_writing_the_onnx(files, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    ckpt = tmp_path / "t.pth"
    ckpt.write_bytes(files["good"].read_bytes())
    assert trt_main([str(ckpt), *QUICK]) == 2
    assert (tmp_path / "t.onnx").is_file() and not list(tmp_path.glob("*.engine"))
    assert "no engine built" in _one_error(capsys)


# --------------------------------------------------------------------------------------------- graphs
def test_count_macs_refuses_a_size_a_static_graph_does_not_have():
    from segkd.infer.macs import count_macs

    w = numpy_helper.from_array(np.zeros((4, 3, 3, 3), np.float32), "w")
    node = helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 10])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    m = helper.make_model(
        helper.make_graph([node], "g", [x], [y], [w]), opset_imports=[helper.make_opsetid("", 17)]
    )
    assert count_macs(m) == count_macs(m, (8, 10)) == 4 * 8 * 10 * 27
    with pytest.raises(ValueError, match="conflicts with the graph's fixed input 8x10"):
        count_macs(m, (16, 20))


def test_int8_keeps_the_psp_pooling_matrices_float(tmp_path):
    torch.manual_seed(0)
    model = build_model("pspnet_mbv2", num_classes=K, width=0.25).eval()
    frames = tmp_path / "frames"
    frames.mkdir()
    for i in range(2):
        cv2.imwrite(
            str(frames / f"{i}.png"), np.random.default_rng(i).integers(0, 256, (64, 64, 3), np.uint8)
        )
    opts = ExportOptions(precision="int8", calib_images=str(frames), calib_count=2, calib_method="minmax",
                         exporter="torchscript", verify=False)  # fmt: skip
    path = export_model(model, _meta("pspnet_mbv2"), tmp_path / "m.int8.onnx", opts, log=lambda _: None).path
    graph = onnx.load(str(path)).graph
    producer = {o: n for n in graph.node for o in n.output}
    inits = {t.name: t for t in graph.initializer}
    matmuls = [n for n in graph.node if n.op_type == "MatMul"]
    matrices = [inits[i] for n in matmuls for i in n.input if i in inits]
    assert len(matmuls) == 8 and len(matrices) == 8  # P_h @ x and (.) @ P_w^T for each of the 4 pyramid bins
    assert all(m.data_type == TensorProto.FLOAT for m in matrices)  # the pooling matrices stay float
    dq_of_weight = [
        i for n in matmuls for i in n.input
        if i in producer and producer[i].op_type == "DequantizeLinear" and producer[i].input[0] in inits
    ]  # fmt: skip
    assert not dq_of_weight  # (an activation may arrive through Q/DQ from the quantized conv before it)
    convs = [n for n in graph.node if n.op_type == "Conv"]
    assert all(producer[n.input[1]].op_type == "DequantizeLinear" for n in convs)  # quantized convolutions


# --------------------------------------------------------------------------------------------- benchmark
def test_benchmark_writes_its_table_when_no_model_has_a_finite_miou(tmp_path):
    from segkd.infer.bench import BenchConfig, write_results

    rows = [
        {"model": "a.onnx", "format": "onnx", "precision": "fp32", "latency_median_ms": 3.0, "miou": float("nan"),
         "status": "ok"},
        {"model": "b.onnx", "format": "onnx", "status": "failed", "error": "boom"},
    ]  # fmt: skip
    cfg = BenchConfig(models=["a.onnx", "b.onnx"], dataset="demo", data_root="x")
    written = write_results(rows, {"versions": {}, "cpu": "c", "cpu_cores": 1, "memory_gib": 1, "gpus": [],
                                   "os": "o", "python": "3", "date": "d", "threads": None}, cfg, tmp_path, "cmd")  # fmt: skip
    assert "png" not in written
    doc = json.loads(written["json"].read_text())  # strict JSON: NaN written as null
    assert doc["results"][0]["miou"] is None
    md = written["md"].read_text()
    assert "| a.onnx | onnx | fp32 |" in md and "failed: boom" in md
