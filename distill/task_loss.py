"""The task losses of a student: what it learns from the labels, beside any teacher.

    task = TaskLoss(cfg.task, ignore_index=255, aux_weight=0.4, align_corners=True, class_weights=None)
    terms = task(student_out, labels)   # {"ce", "aux" or "aux_1".., "boundary", "boundary_ce", "detail_bce", ...}

The defaults (:class:`segkd.distill.config.TaskConfig`) are what every recipe of the CIRKD students trains with:
cross-entropy on the logits at the label size plus ``train.aux_weight`` times the cross-entropy of the auxiliary
head. The real-time students' recipes (``configs/_students/<name>.yaml``) add their repositories' own terms, each
written from the official code (its file is named in each docstring; nothing is copied):

- OHEM cross-entropy (:func:`ohem_cross_entropy`) with the three published rules (:data:`OHEM`);
- PIDNet's class-balanced BCE on its D branch against Canny edges of the labels (:func:`pidnet_edges`,
  :func:`balanced_bce`) and its boundary-aware cross-entropy (:func:`boundary_aware_labels`);
- STDC's detail aggregation loss: Laplacian boundaries at three strides (:func:`stdc_detail_targets`), BCE + dice
  (:func:`bce_dice`).

The boundary targets are made here, from the label tensors of the step, where the official loaders make them from
the full label map before scaling and cropping: the data pipeline stays the same for every student. On a label map
as the loader reads it, :func:`pidnet_edges` equals the official ``cv2.Canny`` edges pixel for pixel; on a
rescaled crop the edges keep their 4-pixel width at every scale and the 6-pixel border is the crop's (the official
ones scale with the image and lie at the image's border), see ``docs/task_losses.md``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from segkd.distill.config import OHEM_RULES, ConfigError, OhemConfig, TaskConfig

__all__ = [
    "OHEM",
    "TaskLoss",
    "balanced_bce",
    "bce_dice",
    "boundary_aware_labels",
    "ohem_cross_entropy",
    "pidnet_edges",
    "pixel_cross_entropy",
    "stdc_detail_targets",
]


# --- cross-entropy and OHEM ----------------------------------------------------------------------------------------
def pixel_cross_entropy(
    logits: Tensor, target: Tensor, ignore_index: int, class_weights: Tensor | None = None
) -> Tensor:
    """Per-pixel cross-entropy (N, H, W), times the weight of the pixel's class; 0 at ignored pixels."""
    return F.cross_entropy(logits, target, weight=class_weights, ignore_index=ignore_index, reduction="none")


def _zero(logits: Tensor) -> Tensor:
    """A zero that keeps the graph (every parameter still gets a gradient, so DDP finds none unused)."""
    return logits.sum() * 0.0


def _mean_or_zero(values: Tensor, logits: Tensor) -> Tensor:
    """Mean of the kept pixel losses; where the official code averages an empty selection into NaN (or fails on
    it), zero: no pixel is hard, nothing to learn from this batch."""
    return values.mean() if values.numel() else _zero(logits)


def _hard_by_loss(thresh: float) -> Tensor:
    """BiSeNet's and STDC's threshold on the loss, -log(thresh), computed in float32 as their code does."""
    return -torch.log(torch.tensor(thresh, dtype=torch.float32))


def _ohem_hrnet(
    logits: Tensor, target: Tensor, thresh: float, min_kept: int | None, ignore_index: int, w: Tensor | None
) -> Tensor:
    """HRNet's rule (PIDNet and DDRNet, ``utils/criterion.py`` ``OhemCrossEntropy._ohem_forward``).

    Among the labelled pixels, sorted by the softmax probability p of their true class, the cut is
    ``max(p[min(min_kept, P - 1)], thresh)`` (P labelled pixels, p ascending) and the pixels with p below it are
    averaged. So at least ``min_kept`` pixels are kept (fewer only on ties), and where P <= min_kept every pixel but
    the easiest one(s).
    """
    losses = pixel_cross_entropy(logits, target, ignore_index, w)  # (N, H, W)
    labelled = target != ignore_index  # (N, H, W)
    with torch.no_grad():
        safe = target.masked_fill(~labelled, 0)
        prob = logits.softmax(1).gather(1, safe[:, None])[:, 0][labelled]  # (P,) true-class probability
    if prob.numel() == 0:
        return _zero(logits)
    k = min(min_kept, prob.numel() - 1)
    cut = prob.sort().values[k].clamp(min=thresh)
    return _mean_or_zero(losses[labelled][prob < cut], logits)


def _top_or_hard(
    losses: Tensor, nll: Tensor, thresh: float, n_min: int, logits: Tensor, strict: bool
) -> Tensor:
    """Mean of the pixels whose loss exceeds -log(thresh), or of the ``n_min`` hardest when there are too few.

    ``strict`` is STDC's test (the (n_min+1)-th hardest must be hard to keep the hard ones; otherwise the top
    n_min) against BiSeNet's (fewer than n_min hard ones: the top n_min). Both select the same pixels but for ties.
    """
    t = _hard_by_loss(thresh).to(nll.device)
    hard = nll > t
    count = int(hard.sum())
    enough = count > n_min if strict else count >= n_min
    if enough:
        return _mean_or_zero(losses[hard], logits)
    if n_min == 0:
        return _zero(logits)
    return losses[nll.topk(n_min).indices].mean()


def _ohem_bisenet(
    logits: Tensor, target: Tensor, thresh: float, min_kept: int | None, ignore_index: int, w: Tensor | None
) -> Tensor:
    """CoinCheung/BiSeNet's rule (``lib/ohem_ce_loss.py`` ``OhemCELoss``): at least (labelled pixels // 16) are
    kept; ignored pixels compete for them with a loss of 0."""
    nll = pixel_cross_entropy(logits, target, ignore_index).flatten()  # (N*H*W,)
    losses = nll if w is None else pixel_cross_entropy(logits, target, ignore_index, w).flatten()
    n_min = int((target != ignore_index).sum()) // 16
    return _top_or_hard(losses, nll, thresh, n_min, logits, strict=False)


def _ohem_stdc(
    logits: Tensor, target: Tensor, thresh: float, min_kept: int | None, ignore_index: int, w: Tensor | None
) -> Tensor:
    """STDC-Seg's rule (``loss/loss.py`` ``OhemCELoss``, ``n_min`` of ``train.py``): at least (batch images x crop
    pixels) // 16 are kept, the ignored pixels counted and competing with a loss of 0."""
    nll = pixel_cross_entropy(logits, target, ignore_index).flatten()  # (N*H*W,)
    losses = nll if w is None else pixel_cross_entropy(logits, target, ignore_index, w).flatten()
    return _top_or_hard(losses, nll, thresh, nll.numel() // 16, logits, strict=True)


# rule -> its selection; the names and published settings are config.OHEM_RULES (read without torch at load).
OHEM: dict[str, Callable[..., Tensor]] = {"hrnet": _ohem_hrnet, "bisenet": _ohem_bisenet, "stdc": _ohem_stdc}
assert OHEM.keys() == OHEM_RULES.keys()


def ohem_cross_entropy(
    logits: Tensor,
    target: Tensor,
    *,
    rule: str = "hrnet",
    thresh: float | None = None,
    min_kept: int | None = None,
    ignore_index: int = 255,
    class_weights: Tensor | None = None,
) -> Tensor:
    """Cross-entropy averaged over the hard pixels only (online hard example mining).

    Args:
        logits: (N, K, H, W) at the label size.
        target: (N, H, W) labels, ``ignore_index`` where unlabelled.
        rule: ``hrnet`` (PIDNet, DDRNet), ``bisenet`` or ``stdc`` (see :class:`segkd.distill.config.OhemConfig`).
        thresh: a pixel is hard when its true-class probability is below it; None takes the rule's (0.9 / 0.7).
        min_kept: the hrnet rule's minimum of kept pixels; None takes 131072.
        class_weights: (K,) weights of each class's pixel losses; the selection ignores them.

    Returns:
        The mean of the kept pixels' (weighted) cross-entropy; 0 (with a graph) when no pixel is kept.
    """
    default_thresh, default_kept = OHEM_RULES[rule]
    thresh = default_thresh if thresh is None else thresh
    min_kept = default_kept if min_kept is None else min_kept
    return OHEM[rule](logits, target, thresh, min_kept, ignore_index, class_weights)


# --- PIDNet's boundary terms ---------------------------------------------------------------------------------------
_TG22 = 13573  # tan(22.5 deg) in OpenCV's 15-bit fixed point: round(0.41421356 * 2**15)
_EDGE_BORDER = 6  # pixels zeroed at each side (the official loader's y_k_size / x_k_size)
_EDGE_DILATE = 4  # side of the square dilation kernel (the official bd_dilate_size)
_SOBEL_X = ((-1.0, 0.0, 1.0), (-2.0, 0.0, 2.0), (-1.0, 0.0, 1.0))


def _canny(labels: Tensor) -> Tensor:
    """``cv2.Canny(label, 0.1, 0.2) > 0`` on integer label maps (N, H, W), as a bool map (N, H, W).

    With thresholds below 1 every pixel of non-zero integer gradient that survives the non-maximum suppression is
    a strong edge, so the hysteresis has nothing to do. What remains is OpenCV's: 3x3 Sobel with replicated
    borders, the L1 magnitude |gx| + |gy|, the direction binned with its fixed-point tan(22.5 deg), a neighbour
    outside the image counting 0, and its asymmetric comparisons (> one neighbour, >= the other, except on the
    diagonals where both are >).
    """
    x = F.pad(labels[:, None].float(), (1, 1, 1, 1), mode="replicate")  # (N, 1, H+2, W+2)
    kx = torch.tensor(_SOBEL_X, device=labels.device)[None, None]  # (1, 1, 3, 3)
    gx = F.conv2d(x, kx)[:, 0].long()  # (N, H, W), exact: integers below 2**24
    gy = F.conv2d(x, kx.transpose(-1, -2))[:, 0].long()
    mag = gx.abs() + gy.abs()
    padded = F.pad(mag, (1, 1, 1, 1))  # (N, H+2, W+2)
    h, w = mag.shape[-2:]

    def at(dy: int, dx: int) -> Tensor:  # the magnitude of the neighbour at (y + dy, x + dx)
        return padded[:, 1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w]

    ay, tg22 = gy.abs() << 15, gx.abs() * _TG22
    horizontal = ay < tg22
    vertical = ~horizontal & (ay > tg22 + (gx.abs() << 16))
    diagonal = ~horizontal & ~vertical
    same_sign = (gx ^ gy) >= 0
    peak_diag = torch.where(
        same_sign, (mag > at(-1, -1)) & (mag > at(1, 1)), (mag > at(-1, 1)) & (mag > at(1, -1))
    )
    peak = (
        (horizontal & (mag > at(0, -1)) & (mag >= at(0, 1)))
        | (vertical & (mag > at(-1, 0)) & (mag >= at(1, 0)))
        | (diagonal & peak_diag)
    )
    return peak & (mag > 0)


def pidnet_edges(labels: Tensor) -> Tensor:
    """PIDNet's boundary targets (N, H, W) in {0, 1} from label maps (N, H, W) (``datasets/base_dataset.py``
    ``gen_sample``): Canny edges of the label map, a 6-pixel border cleared, dilated by a 4x4 square.

    OpenCV anchors the even kernel at its centre (2, 2): the output at (y, x) is the maximum over rows y-2..y+1
    and columns x-2..x+1, which the asymmetric padding below reproduces.
    """
    edges = _canny(labels).float()  # (N, H, W)
    b = _EDGE_BORDER
    inner = torch.zeros_like(edges)
    inner[:, b:-b, b:-b] = edges[:, b:-b, b:-b]
    lo, hi = _EDGE_DILATE // 2, _EDGE_DILATE - 1 - _EDGE_DILATE // 2
    grown = F.max_pool2d(F.pad(inner[:, None], (lo, hi, lo, hi)), _EDGE_DILATE, stride=1)  # (N, 1, H, W)
    return grown[:, 0]


def balanced_bce(logits: Tensor, target: Tensor) -> Tensor:
    """PIDNet's class-balanced BCE with logits (``utils/criterion.py`` ``weighted_bce``).

    Over the whole batch, edge pixels (target 1) are weighted by the fraction of non-edge pixels and non-edge
    pixels (target 0) by the fraction of edge pixels; the weighted BCE is averaged over every pixel. A batch
    without edges gives 0.

    Args:
        logits: (N, 1, H, W) boundary logits at the label size.
        target: (N, H, W) in {0, 1}.
    """
    pos, neg = target == 1, target == 0
    n_pos, n_neg = pos.sum(), neg.sum()
    total = n_pos + n_neg
    weight = torch.zeros_like(target)
    weight[pos] = n_neg / total
    weight[neg] = n_pos / total
    return F.binary_cross_entropy_with_logits(logits[:, 0], target, weight, reduction="mean")


def boundary_aware_labels(labels: Tensor, boundary: Tensor, thresh: float, ignore_index: int) -> Tensor:
    """The labels where sigmoid(boundary) > thresh, ``ignore_index`` elsewhere (PIDNet ``utils/utils.py``
    ``FullModel``: the pixels of its boundary-aware semantic loss). ``boundary`` is (N, 1, H, W) at label size."""
    near_edge = torch.sigmoid(boundary[:, 0].detach()) > thresh  # (N, H, W)
    return torch.where(near_edge, labels, torch.full_like(labels, ignore_index))


# --- STDC's detail aggregation loss --------------------------------------------------------------------------------
_LAPLACIAN = ((-1.0, -1.0, -1.0), (-1.0, 8.0, -1.0), (-1.0, -1.0, -1.0))
# The fusion weights of strides 1, 2 and 4: the official fuse_kernel, a parameter that never gets a gradient.
_DETAIL_FUSE = (0.6, 0.3, 0.1)


def stdc_detail_targets(labels: Tensor) -> Tensor:
    """STDC's detail targets (N, 1, H, W) in {0, 1} from label maps (N, H, W) (``loss/detail_loss.py``
    ``DetailAggregateLoss``).

    The Laplacian of the raw label map (ignore value included, zero padding) at strides 1, 2 and 4, clamped at 0,
    the strided ones nearest-upsampled to full size, each > 0.1; fused 0.6 / 0.3 / 0.1 and > 0.1 again. The
    fusion is the official 1x1 convolution written as a float32 sum (no TF32 rounding of its weights on a GPU): a
    stride-4 boundary alone gives exactly 0.1, which is not above 0.1, so the targets are the union of the stride-1
    and stride-2 boundaries, as in the official code.
    """
    x = labels[:, None].float()  # (N, 1, H, W)
    lap = torch.tensor(_LAPLACIAN, device=labels.device)[None, None]  # (1, 1, 3, 3)
    levels = []
    for stride in (1, 2, 4):
        edge = F.conv2d(x, lap, stride=stride, padding=1).clamp(min=0)  # (N, 1, ~H/s, ~W/s)
        if stride > 1:
            edge = F.interpolate(edge, size=x.shape[-2:], mode="nearest")
        levels.append((edge > 0.1).float())
    fused = sum(w * level for w, level in zip(_DETAIL_FUSE, levels))  # (N, 1, H, W), float32
    return (fused > 0.1).float()


def bce_dice(logits: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """STDC's detail loss terms: BCE with logits averaged over every pixel, and the dice loss of the sigmoid,
    ``1 - (2 |p t| + 1) / (|p| + |t| + 1)`` per image, averaged over the batch.

    Args:
        logits: (N, 1, h, w) detail logits; upsampled bilinearly (``align_corners=True``, as the official loss does)
            to the target's size.
        target: (N, 1, H, W) in {0, 1}.
    """
    if logits.shape[-2:] != target.shape[-2:]:
        logits = F.interpolate(logits, size=target.shape[-2:], mode="bilinear", align_corners=True)
    bce = F.binary_cross_entropy_with_logits(logits, target)
    p, t = torch.sigmoid(logits).flatten(1), target.flatten(1)  # (N, H*W)
    dice = 1 - (2 * (p * t).sum(1) + 1) / (p.sum(1) + t.sum(1) + 1)
    return bce, dice.mean()


# --- the whole task loss -------------------------------------------------------------------------------------------
class TaskLoss(nn.Module):
    """The named task terms of a training step, weighted, from a :class:`segkd.distill.config.TaskConfig`.

    Terms: ``ce`` (the main logits, ``task.loss``), ``aux`` / ``aux_1``.. (``task.aux_weights``, or
    ``train.aux_weight`` on the first auxiliary head), ``boundary`` and ``boundary_ce`` (PIDNet), ``detail_bce``
    and ``detail_dice`` (STDC). Every output is compared at the label size: the main one as the model upsamples
    it, the auxiliary and boundary maps bilinearly with the model's ``align_corners`` (the official code of each
    student upsamples them so), the detail map with ``align_corners=True`` (STDC's loss).

    Args:
        cfg: the ``task`` section.
        ignore_index: label value left out.
        aux_weight: ``train.aux_weight``, used when ``cfg.aux_weights`` is None.
        align_corners: the student's bilinear upsampling of its logits.
        class_weights: (K,) weights of every cross-entropy, or None.
    """

    def __init__(
        self,
        cfg: TaskConfig | None = None,
        *,
        ignore_index: int = 255,
        aux_weight: float = 0.4,
        align_corners: bool = False,
        class_weights: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        self.cfg = cfg or TaskConfig()
        self.ignore_index, self.aux_weight, self.align_corners = ignore_index, aux_weight, align_corners
        self.class_weights = None if class_weights is None else tuple(float(v) for v in class_weights)
        b, d = self.cfg.boundary, self.cfg.detail
        self.use_boundary = bool(b.weight or b.aware_weight)
        self.use_detail = bool(d.bce_weight or d.dice_weight)

    def forward(self, out: Mapping[str, Any], labels: Tensor) -> dict[str, Tensor]:
        """``out`` is the student's output dict (``return_features=True``, train mode); labels (N, H, W) long."""
        terms = {"ce": self.main_loss(out["out"].float(), labels)}
        terms.update(self._aux_terms(out, labels))
        if self.use_boundary:
            terms.update(self._boundary_terms(out, labels))
        if self.use_detail:
            terms.update(self._detail_terms(out, labels))
        return terms

    def main_loss(self, logits: Tensor, labels: Tensor) -> Tensor:
        """``task.loss`` on logits (N, K, H, W) at the label size (also PIDNet's boundary-aware term)."""
        return self._loss(self.cfg.loss, logits, labels, over_all_pixels=False)

    def _loss(self, kind: str, logits: Tensor, labels: Tensor, over_all_pixels: bool) -> Tensor:
        w = None if self.class_weights is None else torch.tensor(self.class_weights, device=logits.device)
        if kind == "ohem":
            o: OhemConfig = self.cfg.ohem
            return ohem_cross_entropy(logits, labels, rule=o.rule, thresh=o.thresh, min_kept=o.min_kept,
                                      ignore_index=self.ignore_index, class_weights=w)  # fmt: skip
        if over_all_pixels:  # HRNet's code: the per-pixel map, ignored pixels 0, averaged with the rest
            return pixel_cross_entropy(logits, labels, self.ignore_index, w).mean()
        return F.cross_entropy(logits, labels, weight=w, ignore_index=self.ignore_index)

    def _upsample(self, x: Tensor, labels: Tensor) -> Tensor:
        """Bilinear to the label size with the model's corners (always called: the identity at the same size)."""
        return F.interpolate(
            x.float(), size=labels.shape[-2:], mode="bilinear", align_corners=self.align_corners
        )

    def _aux_terms(self, out: Mapping[str, Any], labels: Tensor) -> dict[str, Tensor]:
        if self.cfg.aux_weights is None:  # train.aux_weight on the first auxiliary head (CIRKD students)
            if out.get("aux") is None:
                return {}
            pairs = [("aux", self.aux_weight, out["aux"])]
        else:
            heads = _aux_outputs(out)
            weights = self.cfg.aux_weights
            if len(heads) != len(weights):
                raise ConfigError(
                    f"task.aux_weights has {len(weights)} weight(s) but the student returns {len(heads)} auxiliary "
                    f"output(s) (aux_all); give one weight per output, in the model's order"
                )
            names = ["aux"] if len(heads) == 1 else [f"aux_{i + 1}" for i in range(len(heads))]
            pairs = list(zip(names, weights, heads))
        over_all = self.cfg.aux_ignored_in_mean
        return {
            name: weight * self._loss(self.cfg.aux_loss, self._upsample(head, labels), labels, over_all)
            for name, weight, head in pairs
        }

    def _boundary_map(self, out: Mapping[str, Any], section: str) -> Tensor:
        boundary = out.get("boundary")
        if boundary is None:
            owner = "PIDNet's D branch" if section == "boundary" else "STDC's detail head"
            raise ConfigError(
                f"task.{section} needs a student with a boundary map ({owner}) in train mode, and this one returns "
                f"none; set the task.{section} weights to 0 for this student"
            )
        return boundary

    def _boundary_terms(self, out: Mapping[str, Any], labels: Tensor) -> dict[str, Tensor]:
        """PIDNet (``utils/utils.py`` ``FullModel``): 20 x balanced BCE, 1 x the main loss near predicted edges."""
        b = self.cfg.boundary
        boundary = self._upsample(self._boundary_map(out, "boundary"), labels)  # (N, 1, H, W)
        terms = {}
        if b.weight:
            terms["boundary"] = b.weight * balanced_bce(boundary, pidnet_edges(labels))
        if b.aware_weight:
            near = boundary_aware_labels(labels, boundary, b.aware_thresh, self.ignore_index)
            terms["boundary_ce"] = b.aware_weight * self.main_loss(out["out"].float(), near)
        return terms

    def _detail_terms(self, out: Mapping[str, Any], labels: Tensor) -> dict[str, Tensor]:
        """STDC (``train.py``): BCE + dice between the detail map and the fused Laplacian boundaries."""
        d = self.cfg.detail
        bce, dice = bce_dice(self._boundary_map(out, "detail").float(), stdc_detail_targets(labels))
        return {"detail_bce": d.bce_weight * bce, "detail_dice": d.dice_weight * dice}


def _aux_outputs(out: Mapping[str, Any]) -> list[Tensor]:
    """Every auxiliary output: the model's ``aux_all``, or its single ``aux`` for a model without that key."""
    if out.get("aux_all") is not None:
        return list(out["aux_all"])
    return [] if out.get("aux") is None else [out["aux"]]
