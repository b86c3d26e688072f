"""The deploy-side modules import and work in an environment without torch."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# `sys.modules[name] = None` makes every `import name` raise ImportError, as if it were not installed.
SCRIPT = textwrap.dedent(
    """
    import runpy, sys, tempfile
    for name in ("torch", "torchvision", "accelerate"):
        sys.modules[name] = None

    import infer.datasets, infer.metrics, infer.meta, infer.registry
    import infer.datasets.check, infer.datasets.demo
    import numpy as np

    root = tempfile.mkdtemp()
    infer.datasets.demo.generate_demo(root, {"val": 1}, (32, 64), seed=0)
    ds = infer.datasets.build_dataset("demo", root, "val")
    image, label = ds[0]
    cm = infer.metrics.ConfusionMatrix(ds.num_classes)
    cm.update(label, label)
    assert cm.compute()["aAcc"] == 100.0
    sys.argv = ["infer.datasets", "check", "--dataset", "demo", "--root", root, "--split", "val"]
    try:
        runpy.run_module("infer.datasets", run_name="__main__")
    except SystemExit as e:
        assert e.code == 0, e.code
    assert all(sys.modules[n] is None for n in ("torch", "torchvision", "accelerate"))
    print("torch-free ok")
    """
)


def test_infer_imports_and_runs_without_torch() -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    res = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "torch-free ok" in res.stdout
