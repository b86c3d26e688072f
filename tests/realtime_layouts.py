"""The official real-time models' layouts (``../shared/fixtures/realtime_official_layouts.json``) for the tests:
random official state dicts, and the conv geometry of a model in the fixture's form."""

from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

FIXTURE = (
    Path(os.environ.get("SEGKD_FIXTURES", Path(__file__).resolve().parents[2] / "shared" / "fixtures"))
    / "realtime_official_layouts.json"
)


@lru_cache(maxsize=1)
def _layouts() -> dict[str, Any]:
    return json.loads(FIXTURE.read_text())


def official(name: str) -> dict[str, Any]:
    """The fixture's record of model ``name`` (``pidnet_s`` ...); skips the test when the fixture is absent."""
    if not FIXTURE.is_file():
        pytest.skip(f"real-time layouts fixture not found at {FIXTURE} (set SEGKD_FIXTURES to its folder)")
    return _layouts()["models"][name]


def random_official_state_dict(name: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """A state dict with every official key and shape (19 classes), random values a checkpoint could hold."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for key, shape in official(name)["state_dict"].items():
        if key.endswith("num_batches_tracked"):
            sd[key] = torch.tensor(7, dtype=torch.long)
        elif key.endswith("running_var"):
            sd[key] = torch.rand(shape, generator=g) + 0.5
        else:
            sd[key] = torch.randn(shape, generator=g) * 0.1
    return sd


def conv_geometry(model: nn.Module) -> dict[str, list[Any]]:
    """Every Conv2d by module name as the fixture writes it: [in, out, kernel, stride, padding, dilation, groups,
    bias]."""
    return {
        name: [m.in_channels, m.out_channels, list(m.kernel_size), list(m.stride), list(m.padding),
               list(m.dilation), m.groups, m.bias is not None]
        for name, m in model.named_modules()
        if isinstance(m, nn.Conv2d)
    }  # fmt: skip
