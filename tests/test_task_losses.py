"""The students' task losses (``segkd.distill.task_loss``, the ``task`` config section): hand-computed values on small
tensors, the official code's numbers, the config's refusals, and one run end to end.

    OMP_NUM_THREADS=1 .venv/bin/python -m pytest -q -p no:cacheprovider tests/test_task_losses.py

Expected values come from explicit numpy (float64) computations written here, never from the library; the
``OFFICIAL`` numbers were printed by the official code (PIDNet 4c158cf ``utils/criterion.py`` + ``utils/utils.py``
+ ``datasets/base_dataset.py``, BiSeNet 6b4b67a ``lib/ohem_ce_loss.py``, STDC-Seg 59ff37f ``loss/loss.py`` +
``loss/detail_loss.py``), run on the CPU outside this project on the inputs :func:`_draw` makes.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from PIL import Image

from segkd.distill.config import OHEM_RULES, BoundaryConfig, ConfigError, TaskConfig, load_config
from segkd.distill.task_loss import (
    OHEM,
    TaskLoss,
    balanced_bce,
    bce_dice,
    boundary_aware_labels,
    ohem_cross_entropy,
    pidnet_edges,
    stdc_detail_targets,
)

REPO = Path(__file__).resolve().parents[1]
CITYSCAPES_WEIGHTS = [0.8373, 0.918, 0.866, 1.0345, 1.0166, 0.9969, 0.9754, 1.0489, 0.8786, 1.0023, 0.9539,
                      0.9843, 1.1116, 0.9037, 1.0865, 1.0955, 1.0865, 1.1529, 1.0507]  # fmt: skip
RTOL = 1e-5


# ----------------------------------------------------------------------------------------------------------------
# helpers


def _pixels(probs: list[float], targets: list[int], k: int = 2) -> torch.Tensor:
    """Logits (1, k, 1, P) under which pixel i's true class ``targets[i]`` has softmax probability ``probs[i]``
    (the other classes share the rest equally); an ignored pixel (255) gets uniform logits."""
    logits = np.zeros((1, k, 1, len(probs)), np.float64)
    for i, (p, t) in enumerate(zip(probs, targets)):
        if t == 255:
            continue
        logits[0, :, 0, i] = math.log((1 - p) / (k - 1))
        logits[0, t, 0, i] = math.log(p)
    return torch.tensor(logits, dtype=torch.float32, requires_grad=True)


def _nll(logits: torch.Tensor, targets: list[int]) -> np.ndarray:
    """Per-pixel -log softmax of the true class, in float64 (0 for ignored pixels)."""
    z = logits.detach().double().numpy()[0, :, 0]  # (k, P)
    out = np.zeros(z.shape[1])
    for i, t in enumerate(targets):
        if t != 255:
            col = z[:, i] - z[:, i].max()
            out[i] = -(col[t] - math.log(np.exp(col).sum()))
    return out


def _kept(loss: torch.Tensor, logits: torch.Tensor) -> list[int]:
    """The pixels a loss averages: those whose logits receive a gradient."""
    (grad,) = torch.autograd.grad(loss, logits)
    return sorted(int(i) for i in torch.nonzero(grad.abs().sum(1)[0, 0] > 0).flatten())


def _target(targets: list[int]) -> torch.Tensor:
    return torch.tensor([[targets]])  # (1, 1, P)


# ----------------------------------------------------------------------------------------------------------------
# OHEM


HRNET_PROBS = [0.2, 0.5, 0.85, 0.95, 0.99, 0.6]
HRNET_TARGETS = [1, 0, 1, 0, 1, 255]


@pytest.mark.parametrize(
    ("thresh", "min_kept", "kept"),
    [
        (0.9, 2, [0, 1, 2]),  # p sorted 0.2 0.5 0.85 0.95 0.99: cut max(p[2]=0.85, 0.9) = 0.9
        (0.9, 4, [0, 1, 2, 3]),  # cut max(p[4]=0.99, 0.9): the 4 hardest
        (0.9, 131072, [0, 1, 2, 3]),  # more than there are: p[P-1], every pixel but the easiest
        (0.3, 1, [0]),  # cut max(p[1]=0.5, 0.3) = 0.5: only 0.2 is below it
    ],
)
def test_ohem_hrnet_keeps_the_pixels_under_max_of_thresh_and_the_min_kept_th(
    thresh: float, min_kept: int, kept: list[int]
) -> None:
    logits, target = _pixels(HRNET_PROBS, HRNET_TARGETS), _target(HRNET_TARGETS)
    loss = ohem_cross_entropy(logits, target, rule="hrnet", thresh=thresh, min_kept=min_kept)
    assert _kept(loss, logits) == kept
    assert loss.item() == pytest.approx(_nll(logits, HRNET_TARGETS)[kept].mean(), rel=RTOL)


def test_ohem_class_weights_scale_the_losses_not_the_selection_nor_the_count() -> None:
    logits, target = _pixels(HRNET_PROBS, HRNET_TARGETS), _target(HRNET_TARGETS)
    w = torch.tensor([1.0, 3.0])
    loss = ohem_cross_entropy(logits, target, rule="hrnet", thresh=0.9, min_kept=2, class_weights=w)
    nll, kept = _nll(logits, HRNET_TARGETS), [0, 1, 2]
    expected = np.mean([nll[i] * w[HRNET_TARGETS[i]].item() for i in kept])  # a plain mean over kept pixels
    assert _kept(loss, logits) == kept and loss.item() == pytest.approx(expected, rel=RTOL)


def _bisenet_case(hard: list[float], easy_count: int, ignored: int) -> tuple[list[float], list[int]]:
    """``hard`` probabilities, then ``easy_count`` easy ones (0.80, 0.802, ...: no ties), then ignored pixels."""
    probs = hard + [0.8 + 0.002 * i for i in range(easy_count)] + [0.5] * ignored
    targets = [1] * (len(hard) + easy_count) + [255] * ignored
    return probs, targets


def test_ohem_bisenet_and_stdc_differ_in_their_minimum() -> None:
    # 64 pixels, 16 ignored: BiSeNet keeps at least 48 // 16 = 3, STDC at least 64 // 16 = 4.
    probs, targets = _bisenet_case([0.1, 0.3, 0.5], easy_count=45, ignored=16)
    logits, target = _pixels(probs, targets), _target(targets)
    nll = _nll(logits, targets)
    bisenet = ohem_cross_entropy(logits, target, rule="bisenet")
    assert _kept(bisenet, logits) == [0, 1, 2]  # 3 hard (loss > -log 0.7) >= 3: the hard ones
    assert bisenet.item() == pytest.approx(nll[[0, 1, 2]].mean(), rel=RTOL)
    stdc = ohem_cross_entropy(logits, target, rule="stdc")
    assert _kept(stdc, logits) == [0, 1, 2, 3]  # 3 hard, not more than 4: the 4 hardest (0.80 joins)
    assert stdc.item() == pytest.approx(nll[[0, 1, 2, 3]].mean(), rel=RTOL)


def test_ohem_bisenet_and_stdc_keep_every_hard_pixel_when_there_are_enough() -> None:
    probs, targets = _bisenet_case([0.1, 0.2, 0.3, 0.4, 0.5, 0.6], easy_count=42, ignored=16)
    logits, target = _pixels(probs, targets), _target(targets)
    for rule in ("bisenet", "stdc"):
        loss = ohem_cross_entropy(logits, target, rule=rule)
        assert _kept(loss, logits) == [0, 1, 2, 3, 4, 5]
        assert loss.item() == pytest.approx(_nll(logits, targets)[:6].mean(), rel=RTOL)


def test_ohem_stdc_counts_ignored_pixels_which_compete_with_a_zero_loss() -> None:
    # 64 pixels, 2 labelled and easy: STDC averages its 4 hardest, the 2 labelled and 2 ignored zeros; BiSeNet's
    # minimum is 2 // 16 = 0 and nothing is hard: the official code averages nothing into NaN, here 0.
    probs, targets = _bisenet_case([], easy_count=2, ignored=62)
    logits, target = _pixels(probs, targets), _target(targets)
    stdc = ohem_cross_entropy(logits, target, rule="stdc")
    assert stdc.item() == pytest.approx(_nll(logits, targets)[:2].sum() / 4, rel=RTOL)
    bisenet = ohem_cross_entropy(logits, target, rule="bisenet")
    assert bisenet.item() == 0.0 and bisenet.requires_grad


def test_ohem_without_a_labelled_pixel_is_a_zero_with_a_graph() -> None:
    logits = torch.randn(1, 3, 4, 4, requires_grad=True)
    target = torch.full((1, 4, 4), 255)
    for rule in OHEM:
        loss = ohem_cross_entropy(logits, target, rule=rule)  # official hrnet: IndexError; bisenet: NaN
        assert loss.item() == 0.0
        loss.backward()
    assert OHEM.keys() == OHEM_RULES.keys()


def test_ohem_rules_take_their_published_settings_by_default() -> None:
    assert OHEM_RULES == {"hrnet": (0.9, 131072), "bisenet": (0.7, None), "stdc": (0.7, None)}
    logits, target = _pixels(HRNET_PROBS, HRNET_TARGETS), _target(HRNET_TARGETS)
    explicit = ohem_cross_entropy(logits, target, rule="hrnet", thresh=0.9, min_kept=131072)
    assert ohem_cross_entropy(logits, target, rule="hrnet").item() == explicit.item()


# ----------------------------------------------------------------------------------------------------------------
# PIDNet: edges, balanced BCE, boundary-aware labels


def test_pidnet_edges_of_a_vertical_step_by_hand() -> None:
    # 0 | 1 between columns 9 and 10: Sobel gives |gx| = 4 on both columns; OpenCV's suppression keeps the left
    # one (> left neighbour, >= right one). Rows 0-5 and 14-19 are cleared; the 4x4 dilation anchored at (2, 2)
    # grows rows 6..13 to 5..15 and column 9 to 8..11.
    labels = torch.zeros(1, 20, 20, dtype=torch.long)
    labels[:, :, 10:] = 1
    expected = torch.zeros(1, 20, 20)
    expected[:, 5:16, 8:12] = 1
    assert torch.equal(pidnet_edges(labels), expected)


def _official_edges(label: np.ndarray) -> np.ndarray:
    """The official loader's edge definition, with OpenCV (``datasets/base_dataset.py`` ``gen_sample``)."""
    edge = cv2.Canny(label, 0.1, 0.2)
    edge = np.pad(edge[6:-6, 6:-6], ((6, 6), (6, 6)), mode="constant")
    return (cv2.dilate(edge, np.ones((4, 4), np.uint8), iterations=1) > 50).astype(np.float32)


def _random_labels(rng: np.random.Generator, count: int) -> list[np.ndarray]:
    out = []
    for _ in range(count):
        h, w = (int(v) for v in rng.integers(16, 60, 2))
        blocks = rng.integers(0, 20, (int(rng.integers(2, 8)), int(rng.integers(2, 8)))).astype(np.uint8)
        blocks[blocks == 19] = 255
        out.append(cv2.resize(blocks, (w, h), interpolation=cv2.INTER_NEAREST))
        out.append(rng.integers(0, 4, (h, w)).astype(np.uint8) * 60)  # noise: every direction and tie
    return out


def test_pidnet_edges_equal_opencv_on_random_label_maps() -> None:
    for label in _random_labels(np.random.default_rng(0), 20):
        mine = pidnet_edges(torch.from_numpy(label.astype(np.int64))[None])[0].numpy()
        assert np.array_equal(mine, _official_edges(label)), label.shape


def test_pidnet_edges_equal_opencv_on_the_real_label_fixtures(shared_fixtures: Path) -> None:
    files = sorted(shared_fixtures.glob("cityscapes/gtFine/val/*/*_labelTrainIds.png"))
    files += sorted(shared_fixtures.glob("voc/VOCdevkit/VOC2012/SegmentationClass*/*.png"))
    assert len(files) >= 4
    for path in files:
        label = np.array(Image.open(path))  # palette PNGs: the indices
        mine = pidnet_edges(torch.from_numpy(label.astype(np.int64))[None])[0].numpy()
        official = _official_edges(label.astype(np.uint8))
        assert official.sum() > 1000 and np.array_equal(mine, official), path.name


def test_balanced_bce_weights_edges_by_the_non_edge_fraction_by_hand() -> None:
    x = np.array([[0.5, -1.0, 2.0], [0.0, 1.5, -0.5]])
    t = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    w = np.where(t == 1, 4 / 6, 2 / 6)  # 2 edge pixels weigh 4/6 (the non-edge share), 4 others 2/6
    bce = np.maximum(x, 0) - x * t + np.log1p(np.exp(-np.abs(x)))
    got = balanced_bce(
        torch.tensor(x, dtype=torch.float32)[None, None], torch.tensor(t, dtype=torch.float32)[None]
    )
    assert got.item() == pytest.approx((w * bce).mean(), rel=RTOL)
    flat = balanced_bce(torch.randn(1, 1, 2, 3), torch.zeros(1, 2, 3))
    assert flat.item() == 0.0  # no edge in the batch: every weight is 0


def test_boundary_aware_labels_keep_the_pixels_above_08_by_hand() -> None:
    labels = torch.tensor([[[0, 1, 2], [1, 255, 0]]])
    logits = torch.tensor([[[[2.0, 1.0, 1.5], [3.0, 5.0, -1.0]]]])  # sigmoid .88 .73 .82 / .95 .99 .27
    got = boundary_aware_labels(labels, logits, 0.8, 255)
    assert got.tolist() == [[[0, 255, 2], [1, 255, 255]]]


def test_pidnet_task_loss_terms_by_hand() -> None:
    torch.manual_seed(0)
    labels = torch.randint(0, 3, (1, 16, 16))
    labels[:, :, 8:] = 2
    out = {"out": torch.randn(1, 3, 16, 16), "aux_all": [torch.randn(1, 3, 2, 2)], "aux": None,
           "boundary": torch.randn(1, 1, 16, 16) * 3}  # fmt: skip
    cfg = TaskConfig(aux_weights=[0.4], boundary=BoundaryConfig(weight=20.0, aware_weight=1.0))
    terms = TaskLoss(cfg, align_corners=True)(out, labels)
    assert list(terms) == ["ce", "aux", "boundary", "boundary_ce"]
    near = boundary_aware_labels(labels, out["boundary"], 0.8, 255)
    assert 0 < (near != 255).sum() < labels.numel()
    assert torch.equal(terms["boundary_ce"], F.cross_entropy(out["out"], near, ignore_index=255))
    assert torch.equal(terms["boundary"], 20.0 * balanced_bce(out["boundary"], pidnet_edges(labels)))
    aux = F.interpolate(out["aux_all"][0], size=(16, 16), mode="bilinear", align_corners=True)
    assert torch.equal(terms["aux"], 0.4 * F.cross_entropy(aux, labels))


# ----------------------------------------------------------------------------------------------------------------
# STDC: detail targets, BCE + dice


def _laplacian(label: np.ndarray, stride: int) -> np.ndarray:
    """conv2d(label, [[-1]*3, [-1, 8, -1], [-1]*3], stride, padding 1) with explicit loops, clamped at 0."""
    h, w = label.shape
    padded = np.pad(label.astype(np.float64), 1)
    oh, ow = (h - 1) // stride + 1, (w - 1) // stride + 1
    out = np.zeros((oh, ow))
    for i in range(oh):
        for j in range(ow):
            win = padded[i * stride : i * stride + 3, j * stride : j * stride + 3]
            out[i, j] = 9 * win[1, 1] - win.sum()
    return np.maximum(out, 0)


def _detail_reference(label: np.ndarray) -> np.ndarray:
    """STDC's fused detail target, by loops: strides 1, 2, 4 nearest-upsampled, > 0.1, fused 0.6/0.3/0.1, > 0.1."""
    h, w = label.shape
    levels = []
    for s in (1, 2, 4):
        lap = _laplacian(label, s)
        rows = [i * lap.shape[0] // h for i in range(h)]  # nearest: floor(dst * in / out)
        cols = [j * lap.shape[1] // w for j in range(w)]
        levels.append((lap[np.ix_(rows, cols)] > 0.1).astype(np.float32))
    fused = np.float32(0.6) * levels[0] + np.float32(0.3) * levels[1] + np.float32(0.1) * levels[2]
    return (fused > np.float32(0.1)).astype(np.float32)


def test_stdc_detail_targets_of_one_pixel_by_hand() -> None:
    # A lone 1 at (4, 4): the stride-1 Laplacian marks it, the stride-2 one (centred at (4, 4)) the 2x2 block it
    # upsamples to, the stride-4 one its 4x4 block; that last one alone fuses to exactly 0.1, not above 0.1.
    labels = torch.zeros(1, 16, 16, dtype=torch.long)
    labels[0, 4, 4] = 1
    got = stdc_detail_targets(labels)[0, 0]
    assert torch.nonzero(got).tolist() == [[4, 4], [4, 5], [5, 4], [5, 5]]


def test_stdc_detail_targets_match_the_loop_reference() -> None:
    rng = np.random.default_rng(1)
    for label in _random_labels(rng, 8):
        got = stdc_detail_targets(torch.from_numpy(label.astype(np.int64))[None])[0, 0].numpy()
        assert np.array_equal(got, _detail_reference(label)), label.shape


def test_bce_dice_by_hand() -> None:
    x = np.array([[[0.5, -1.0], [2.0, 0.0]], [[-0.5, 1.5], [0.3, -2.0]]])  # (2, 2, 2) logits at full size
    t = np.array([[[1.0, 0.0], [1.0, 0.0]], [[0.0, 0.0], [0.0, 1.0]]])
    p = 1 / (1 + np.exp(-x))
    bce = (np.maximum(x, 0) - x * t + np.log1p(np.exp(-np.abs(x)))).mean()
    dice = np.mean([1 - (2 * (p[n] * t[n]).sum() + 1) / (p[n].sum() + t[n].sum() + 1) for n in range(2)])
    got_bce, got_dice = bce_dice(
        torch.tensor(x, dtype=torch.float32)[:, None], torch.tensor(t)[:, None].float()
    )
    assert got_bce.item() == pytest.approx(bce, rel=RTOL) and got_dice.item() == pytest.approx(dice, rel=RTOL)


def test_bce_dice_upsamples_the_detail_map_corner_to_corner() -> None:
    small, target = torch.randn(1, 1, 3, 5), (torch.rand(1, 1, 9, 17) > 0.5).float()
    big = F.interpolate(small, size=(9, 17), mode="bilinear", align_corners=True)
    assert all(torch.equal(a, b) for a, b in zip(bce_dice(small, target), bce_dice(big, target)))


# ----------------------------------------------------------------------------------------------------------------
# the official code's numbers


def _draw(
    seed: int, easy_frac: float = 0.7, boost: float = 8.0
) -> tuple[torch.Tensor, torch.Tensor, np.random.Generator]:
    """Logits (2, 19, 32, 64) and 8x8-block labels with 10% ignored, a fraction of pixels made easy."""
    rng = np.random.default_rng(seed)
    logits = torch.from_numpy(rng.standard_normal((2, 19, 32, 64)).astype(np.float32) * 3)
    labels = np.kron(rng.integers(0, 19, (2, 4, 8)), np.ones((8, 8), np.int64))  # (2, 32, 64)
    easy = rng.random((2, 32, 64)) < easy_frac
    onehot = np.eye(19, dtype=np.float32)[labels].transpose(0, 3, 1, 2)  # (2, 19, 32, 64)
    logits = logits + torch.from_numpy(onehot * easy[:, None] * boost)
    labels[rng.random((2, 32, 64)) < 0.1] = 255
    return logits, torch.from_numpy(labels), rng


OFFICIAL = {  # printed by the official code on these inputs (see the module docstring)
    "hrnet_131072": 2.3228187561035156,  # OhemCrossEntropy(255, 0.9, 131072)._ohem_forward: 4096 px < min_kept
    "hrnet_1000": 3.4794232845306396,
    "hrnet_1000_weighted": 3.4698646068573,  # weight = the Cityscapes class weights
    "bisenet": 4.207798004150391,  # OhemCELoss(0.7, 255)
    "stdc": 4.207798004150391,  # OhemCELoss(0.7, n_min=2 * 32 * 64 // 16, 255)
    "few_hard_bisenet": 4.031811237335205,  # 151 hard pixels < 230 = labelled // 16
    "few_hard_stdc": 3.6223304271698,  # < 256 = all // 16
    "pidnet_total": 17.67658805847168,  # FullModel(...) loss, averaged as utils/function.py does
    "pidnet_boundary": 8.20369815826416,
    "pidnet_boundary_aware": 4.27048921585083,
    "stdc_detail_bce": 0.7709147930145264,
    "stdc_detail_dice": 0.5895535945892334,
}


def test_ohem_rules_give_the_official_numbers() -> None:
    logits, labels, _ = _draw(0)
    w = torch.tensor(CITYSCAPES_WEIGHTS)
    got = {
        "hrnet_131072": ohem_cross_entropy(logits, labels, rule="hrnet", thresh=0.9, min_kept=131072),
        "hrnet_1000": ohem_cross_entropy(logits, labels, rule="hrnet", thresh=0.9, min_kept=1000),
        "hrnet_1000_weighted": ohem_cross_entropy(
            logits, labels, rule="hrnet", min_kept=1000, class_weights=w
        ),
        "bisenet": ohem_cross_entropy(logits, labels, rule="bisenet"),
        "stdc": ohem_cross_entropy(logits, labels, rule="stdc"),
    }
    few, few_labels, _ = _draw(1, easy_frac=0.96, boost=30.0)
    got["few_hard_bisenet"] = ohem_cross_entropy(few, few_labels, rule="bisenet")
    got["few_hard_stdc"] = ohem_cross_entropy(few, few_labels, rule="stdc")
    for key, value in got.items():
        assert value.item() == pytest.approx(OFFICIAL[key], rel=RTOL), key


def test_pidnet_and_stdc_recipes_give_the_official_numbers() -> None:
    _, labels, rng = _draw(0)
    extra = [rng.standard_normal(s).astype(np.float32) for s in [(2, 19, 4, 8)] * 2 + [(2, 1, 4, 8)] * 2]
    p_aux, main = torch.from_numpy(extra[0] * 2), torch.from_numpy(extra[1] * 2)
    boundary, detail = torch.from_numpy(extra[2] + 1.0), torch.from_numpy(extra[3])
    pidnet = load_config(None, ["student=pidnet_s"]).task
    task = TaskLoss(pidnet, align_corners=True, class_weights=CITYSCAPES_WEIGHTS)
    up = F.interpolate(main, size=(32, 64), mode="bilinear", align_corners=True)
    terms = task({"out": up, "aux_all": [p_aux], "aux": p_aux, "boundary": boundary}, labels)
    assert sum(terms.values()).item() == pytest.approx(OFFICIAL["pidnet_total"], rel=RTOL)
    assert terms["boundary"].item() == pytest.approx(OFFICIAL["pidnet_boundary"], rel=RTOL)
    assert terms["boundary_ce"].item() == pytest.approx(OFFICIAL["pidnet_boundary_aware"], rel=RTOL)
    bce, dice = bce_dice(detail, stdc_detail_targets(labels))
    assert bce.item() == pytest.approx(OFFICIAL["stdc_detail_bce"], rel=RTOL)
    assert dice.item() == pytest.approx(OFFICIAL["stdc_detail_dice"], rel=RTOL)


# ----------------------------------------------------------------------------------------------------------------
# the whole task loss and the recipes


def test_the_default_task_loss_is_the_cross_entropy_the_trainer_always_computed() -> None:
    torch.manual_seed(0)
    out = {"out": torch.randn(2, 5, 16, 16), "aux": torch.randn(2, 5, 2, 2)}
    labels = torch.randint(0, 5, (2, 16, 16))
    labels[0, :3] = 255
    terms = TaskLoss(ignore_index=255, aux_weight=0.4, align_corners=True)(out, labels)
    aux = F.interpolate(out["aux"], size=(16, 16), mode="bilinear", align_corners=True)
    assert list(terms) == ["ce", "aux"]
    assert torch.equal(terms["ce"], F.cross_entropy(out["out"], labels, ignore_index=255))
    assert torch.equal(terms["aux"], 0.4 * F.cross_entropy(aux, labels, ignore_index=255))
    assert list(TaskLoss()({"out": out["out"], "aux": None}, labels)) == ["ce"]


def test_the_auxiliary_mean_over_every_pixel_counts_ignored_ones_as_zero() -> None:
    torch.manual_seed(0)
    logits, labels = torch.randn(1, 3, 4, 4), torch.randint(0, 3, (1, 4, 4))
    labels[0, 0] = 255  # 4 of 16 ignored
    cfg = TaskConfig(aux_weights=[1.0], aux_ignored_in_mean=True)
    got = TaskLoss(cfg)({"out": logits, "aux_all": [logits]}, labels)["aux"]
    assert got.item() == pytest.approx(
        F.cross_entropy(logits, labels, ignore_index=255).item() * 12 / 16, rel=RTOL
    )


def test_several_auxiliary_outputs_are_named_in_order_and_must_match_the_weights() -> None:
    out = {"out": torch.randn(1, 3, 8, 8), "aux_all": [torch.randn(1, 3, 8, 8) for _ in range(3)]}
    labels = torch.randint(0, 3, (1, 8, 8))
    terms = TaskLoss(TaskConfig(aux_weights=[1.0, 0.5, 2.0]))(out, labels)
    assert list(terms) == ["ce", "aux_1", "aux_2", "aux_3"]
    assert torch.equal(terms["aux_2"], 0.5 * F.cross_entropy(out["aux_all"][1], labels))
    with pytest.raises(ConfigError, match=r"task.aux_weights has 2 weight\(s\) but the student returns 3"):
        TaskLoss(TaskConfig(aux_weights=[1.0, 1.0]))(out, labels)
    with pytest.raises(ConfigError, match=r"task.boundary needs a student with a boundary map"):
        TaskLoss(TaskConfig(boundary=BoundaryConfig(weight=20.0)))(out, labels)


STUDENT_TERMS = {
    "pidnet_s": ["ce", "aux", "boundary", "boundary_ce"],
    "pidnet_m": ["ce", "aux", "boundary", "boundary_ce"],
    "pidnet_l": ["ce", "aux", "boundary", "boundary_ce"],
    "ddrnet_23_slim": ["ce", "aux"],
    "ddrnet_23": ["ce", "aux"],
    "bisenetv2": ["ce", "aux_1", "aux_2", "aux_3", "aux_4"],
    "stdc1": ["ce", "aux_1", "aux_2", "detail_bce", "detail_dice"],
    "stdc2": ["ce", "aux_1", "aux_2", "detail_bce", "detail_dice"],
}


@pytest.mark.parametrize("student", list(STUDENT_TERMS))
def test_each_student_recipe_trains_its_official_terms(student: str) -> None:
    from segkd.distill.models import build_model

    cfg = load_config(None, ["dataset=cityscapes", f"student={student}", "method=cwd"])
    assert cfg.student.name == student and cfg.task.loss == "ohem"
    torch.manual_seed(0)
    model = build_model(student, num_classes=19).train()
    out = model(torch.randn(2, 3, 64, 128), return_features=True)
    task = TaskLoss(cfg.task, align_corners=model.align_corners,
                    class_weights=cfg.task.class_weights.get(cfg.data.dataset))  # fmt: skip
    terms = task(out, torch.randint(0, 19, (2, 64, 128)))
    assert list(terms) == STUDENT_TERMS[student]
    total = sum(terms.values())
    assert torch.isfinite(total)
    total.backward()


# ----------------------------------------------------------------------------------------------------------------
# the config


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_a_typo_in_the_task_section_is_refused_at_load_with_the_closest_key(tmp_path: Path) -> None:
    path = _write(tmp_path / "run.yaml", "task:\n  los: ohem\n  ohem: {rule: hrnet, min_kep: 10}\n")
    with pytest.raises(ConfigError) as e:
        load_config(path)
    msg = str(e.value)
    assert "unknown key 'task.los'. Did you mean 'loss'?" in msg
    assert "unknown key 'task.ohem.min_kep'. Did you mean 'min_kept'?" in msg


def test_every_task_problem_is_reported_at_once() -> None:
    overrides = ["task.loss=ohme", "task.ohem.rule=stdc", "task.ohem.min_kept=100", "task.aux_weights=[-1]",
                 "task.class_weights={citiscapes: [1.0]}", "task.detail.bce_weight=1",
                 "task.boundary.weight=20"]  # fmt: skip
    with pytest.raises(ConfigError) as e:
        load_config(None, overrides)
    lines = str(e.value).splitlines()[1:]
    expected = [
        "task.loss must be one of ['ce', 'ohem'], got 'ohme'; did you mean 'ohem'?",
        "task.ohem.min_kept is the hrnet rule's",
        "task.aux_weights.0 must be a finite number >= 0",
        "both read the student's boundary map",
        "task.class_weights.citiscapes: no dataset 'citiscapes'; did you mean 'cityscapes'?",
    ]
    assert len(lines) == len(expected), lines
    for text in expected:
        assert any(text in line for line in lines), (text, lines)
    with pytest.raises(ConfigError, match=r"task.ohem.rule must be one of .* did you mean 'bisenet'\?"):
        load_config(None, ["task.ohem.rule=bisnet"])


def test_class_weights_of_another_class_count_are_refused_when_the_run_is_built() -> None:
    from segkd.distill.build import _class_weights

    cfg = load_config(None, ["dataset=cityscapes", "student=pidnet_s"])
    assert _class_weights(cfg, 19) == CITYSCAPES_WEIGHTS
    with pytest.raises(
        ConfigError, match="task.class_weights.cityscapes has 19 weights but the run has 7 classes"
    ):
        _class_weights(cfg, 7)
    assert _class_weights(load_config(None, ["dataset=voc", "student=pidnet_s"]), 21) is None  # not listed


def test_a_config_saved_before_the_task_section_resumes_as_its_defaults(tmp_path: Path) -> None:
    from segkd.distill.config import Config, config_to_dict, save_config
    from segkd.distill.run_dir import config_changes, saved_settings

    save_config(Config(), tmp_path / "config.yaml")
    old = yaml.safe_load((tmp_path / "config.yaml").read_text())
    del old["task"]  # a run folder of an earlier version
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(old))
    assert config_changes(saved_settings(tmp_path / "config.yaml"), config_to_dict(Config())) == []
    changed = load_config(None, ["task.loss=ohem"])
    assert config_changes(saved_settings(tmp_path / "config.yaml"), config_to_dict(changed)) == [
        "task.loss: 'ce' -> 'ohem'"
    ]


# ----------------------------------------------------------------------------------------------------------------
# end to end


@pytest.mark.slow
def test_pidnet_distils_on_the_demo_with_its_boundary_terms_logged(tmp_path: Path) -> None:
    from segkd.scenes.street import generate_demo

    root = generate_demo(tmp_path / "demo", {"train": 4, "val": 2}, size=(64, 128), seed=0)
    run = tmp_path / "run"
    cmd = [sys.executable, str(REPO / "distill" / "train.py"), "--config", str(REPO / "configs/demo/cwd.yaml"),
           "student=pidnet_s", f"data.root={root}", f"teacher.checkpoint={REPO / 'assets/demo_teacher.pth'}",
           "train.max_iters=2", "train.eval_every=2", "train.log_every=1", "data.batch_size=2",
           "data.num_workers=0", "data.crop_size=[64,128]", f"train.output_dir={run}"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "loss/total" in r]
    assert len(steps) == 2
    for r in steps:
        terms = ["loss/ce", "loss/aux", "loss/boundary", "loss/boundary_ce", "loss/kd/cwd_logits"]
        assert all(math.isfinite(r[k]) for k in terms), r
        assert r["loss/total"] == pytest.approx(sum(r[k] for k in terms), rel=1e-5)
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["task"]["boundary"] == {"weight": 20.0, "aware_weight": 1.0, "aware_thresh": 0.8}
