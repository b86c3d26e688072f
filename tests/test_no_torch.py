"""The deploy side without torch, and the layering that makes it possible.

`infer/` is the torch-free deploy runtime: it imports neither the training side (`distill`) nor the exporter
(`export`), not even lazily (checked on the source with `ast`); the `.pth` runner reaches the runtime only as a
row of its format table (the `segkd.formats` entry point). One subprocess with torch (and matplotlib) blocked then
runs everything a deployment does: datasets, checks, metrics, ONNX inference, MACs, the benchmark (where a `.pth`
fails with the install hint, and the plot is skipped with the plot extra's) and the video modules.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SIZE = (64, 128)
K = 19
_FORBIDDEN = ("segkd.distill", "segkd.export")


def _imported_modules(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, module) of every import statement, and of every ``import_module("x")`` / ``__import__("x")``."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            name = getattr(node.func, "attr", getattr(node.func, "id", ""))
            if name in ("import_module", "__import__") and isinstance(node.args[0].value, str):
                found.append((node.lineno, node.args[0].value))
    return found


def _strings_naming(tree: ast.AST, packages: tuple[str, ...]) -> list[tuple[int, str]]:
    """String constants that name a module of ``packages`` as ``"pkg.mod:attr"`` (a lazy runner reference)."""
    return [
        (n.lineno, n.value)
        for n in ast.walk(tree)
        if isinstance(n, ast.Constant)
        and isinstance(n.value, str)
        and any(n.value.startswith(f"{p}.") and ":" in n.value and " " not in n.value for p in packages)
    ]


def test_infer_never_imports_distill_or_export() -> None:
    offences = []
    files = sorted((REPO / "infer").rglob("*.py"))
    assert len(files) > 20
    for path in files:
        tree = ast.parse(path.read_text(), str(path))
        for line, module in _imported_modules(tree) + _strings_naming(tree, _FORBIDDEN):
            if any(module.split(":")[0] == p or module.startswith(f"{p}.") for p in _FORBIDDEN):
                offences.append(f"{path.relative_to(REPO)}:{line}: {module}")
    assert not offences, (
        "the deploy runtime must not import the training side or the exporter:\n" + "\n".join(offences)
    )


def test_the_scan_catches_lazy_and_dynamic_imports() -> None:
    code = textwrap.dedent(
        """
        def f():
            from segkd.distill.checkpoint import load_model
            import segkd.export.trt_build
            importlib.import_module("segkd.distill.runner")
            return "segkd.distill.runner:TorchRunner"
        """
    )
    tree = ast.parse(code)
    names = [m for _, m in _imported_modules(tree) + _strings_naming(tree, _FORBIDDEN)]
    assert names == [
        "segkd.distill.checkpoint",
        "segkd.export.trt_build",
        "segkd.distill.runner",
        "segkd.distill.runner:TorchRunner",
    ]


# ----------------------------------------------------------------------------------------------- no torch
SCRIPT = textwrap.dedent(
    """
    import json, runpy, sys
    for name in ("torch", "torchvision", "accelerate", "matplotlib"):
        sys.modules[name] = None  # every `import torch` now raises ImportError, as if it were not installed

    import numpy as np
    import segkd.infer.datasets, segkd.infer.datasets.check, segkd.infer.metrics, segkd.infer.meta, segkd.infer.registry
    import segkd.infer.runtime, segkd.infer.bench, segkd.infer.evaluate, segkd.infer.macs, segkd.infer.benchmark
    import segkd.infer.video, segkd.infer.run_camera
    import segkd.scenes.street
    from segkd.infer.runtime import load_runner

    root, onnx_file, pth_file, image_file, out = sys.argv[1:6]
    # datasets, their check command and the metrics
    segkd.scenes.street.generate_demo(root + "/gen", {"val": 1}, (32, 64), seed=0, classes="cityscapes")
    ds = segkd.infer.datasets.build_dataset("demo", root + "/gen", "val")
    image, label = ds[0]
    cm = segkd.infer.metrics.ConfusionMatrix(ds.num_classes)
    cm.update(label, label)
    assert cm.compute()["aAcc"] == 100.0
    sys.argv = ["segkd.infer.datasets", "check", "--dataset", "demo", "--root", root + "/gen", "--split", "val"]
    try:
        runpy.run_module("segkd.infer.datasets", run_name="__main__")
    except SystemExit as e:
        assert e.code == 0, e.code
    # ONNX inference, MACs and parameters
    r = load_runner(onnx_file)
    lab = r.predict([np.load(image_file)])[0]
    assert lab.shape == (64, 128), lab.shape
    assert r.count_macs((64, 128)) > 0 and r.count_params() > 0
    # the benchmark: the ONNX row measures, the .pth row fails with the install hint
    from segkd.infer.benchmark import main
    rc = main([onnx_file, pth_file, "--dataset", "demo", "--data-root", root + "/bench", "--runs", "1",
               "--warmup", "0", "--out", out, "--no-progress", "--in-process"])
    assert rc == 1, rc
    onnx_row, pth_row = json.load(open(out + "/benchmark.json"))["results"]
    assert onnx_row["status"] == "ok" and onnx_row["miou"] is not None, onnx_row
    assert pth_row["status"] == "failed" and "pip install torch" in pth_row["error"], pth_row
    assert all(sys.modules[n] is None for n in ("torch", "torchvision", "accelerate"))
    loaded = sorted(m for m in sys.modules if m.startswith(("segkd.distill", "segkd.export")))
    # the .pth row is the training side's entry point and nothing more: no checkpoint code, no exporter
    assert loaded == ["segkd.distill", "segkd.distill.runner"], loaded
    print("torch-free ok")
    """
)


@pytest.fixture(scope="module")
def deploy_files(tmp_path_factory) -> dict[str, Path]:
    """A demo dataset, a tiny checkpoint and its dynamic ONNX export (made here, where torch is available)."""
    pytest.importorskip("torch")
    import torch

    from segkd.distill.checkpoint import save_checkpoint
    from segkd.distill.models import build_model
    from segkd.export.pipeline import ExportOptions, export_model
    from segkd.infer.datasets import build_dataset
    from segkd.infer.meta import ModelMeta
    from segkd.scenes.street import generate_demo

    d = tmp_path_factory.mktemp("deploy")
    demo = generate_demo(d / "bench", splits={"val": 2}, size=SIZE, seed=0, classes="cityscapes")
    torch.manual_seed(0)
    model = build_model("deeplabv3_mbv2", num_classes=K, width=0.25).eval()
    meta = ModelMeta(
        arch={"name": "deeplabv3_mbv2", "num_classes": K, "width": 0.25},
        class_names=[f"class{i}" for i in range(K)],
        palette=[[i * 10, 255 - i * 10, i] for i in range(K)],
        input_size=list(SIZE),
    )
    opts = ExportOptions(dynamic="all", exporter="torchscript")
    onnx_file = export_model(model, meta, d / "tiny.onnx", opts, log=lambda m: None).path
    np.save(d / "img.npy", build_dataset("demo", demo, "val")[1][0])
    return {
        "root": d,
        "onnx": onnx_file,
        "pth": save_checkpoint(d / "tiny.pth", model, meta),
        "image": d / "img.npy",
    }


@pytest.mark.slow
def test_deploy_side_runs_without_torch(deploy_files, tmp_path) -> None:
    f = deploy_files
    env = dict(os.environ)
    args = [str(f["root"]), str(f["onnx"]), str(f["pth"]), str(f["image"]), str(tmp_path)]
    res = subprocess.run(
        [sys.executable, "-c", SCRIPT, *args], capture_output=True, text=True, env=env, cwd=REPO, timeout=300
    )
    assert res.returncode == 0, (res.stdout + res.stderr)[-4000:]
    assert "torch-free ok" in res.stdout
    assert "no latency-vs-mIoU plot: matplotlib is not installed (pip install -e .[plot])" in res.stdout
    assert json.loads((tmp_path / "benchmark.json").read_text())["results"][0]["format"] == "onnx"
