"""Holistic weighted distillation, HWD (Sun et al., ICME 2023; seed 001)."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import LOSSES, KDLoss, Param, check_same_shape, positive, resize_labels

__all__ = ["HolisticWeightedKD", "hwd_channel_weights", "class_pixel_count", "DIV_PIXEL"]


def hwd_channel_weights(
    log_ps: Tensor,
    log_pt: Tensor,
    *,
    beta: float,
    mu: float,
    eps: float,
    correction: int,
    pixel_count: Tensor | None = None,
    div_pixel: str | None = None,
) -> Tensor:
    """Per-image channel weights (N, C) from the spatial log-distributions (N, C, h*w); no gradient.

    d = per-channel squared distance of the distributions, optionally divided by a power of the channel's pixel
    count (``div_pixel``, with ``pixel_count`` (N, C)), standardised across channels (+ mu), passed through
    (1 - beta^u) / (1 - beta) and a softmax scaled so that each image's weights sum to C.
    """
    with torch.no_grad():
        d = (log_ps.exp() - log_pt.exp()).pow(2).sum(-1)  # (N, C)
        if div_pixel is not None:
            assert pixel_count is not None, "div_pixel needs the per-class pixel counts"
            d = d / DIV_PIXEL[div_pixel](pixel_count.to(d.dtype))
        mean = d.mean(dim=1, keepdim=True)  # (N, 1)
        std = d.std(dim=1, keepdim=True, correction=correction)  # (N, 1)
        # a zero std (every distance equal, e.g. S == T) divides 0 by 1 (u = mu) where the official code gives NaN
        std = torch.where(std > 0, std, torch.ones_like(std)) + eps
        u = (d - mean) / std + mu  # (N, C)
        g = (1 - torch.pow(beta, u)) / (1 - beta)
        return d.shape[1] * F.softmax(g, dim=1)


# The official code's ``--DivPixel`` choices: the divisor of each channel's distance, from its pixel count.
DIV_PIXEL: dict[str, Callable[[Tensor], Tensor]] = {
    "N": lambda count: count,
    "SqrtN": torch.sqrt,
    "N2": lambda count: count.pow(2),
}


def class_pixel_count(labels: Tensor, num_channels: int) -> Tensor:
    """1 + the number of pixels of each class in each image, (N, C), from labels (N, h, w); others not counted."""
    n = labels.shape[0]
    flat = labels.flatten(1)  # (N, h*w)
    valid = (flat >= 0) & (flat < num_channels)
    index = torch.arange(n, device=labels.device)[:, None] * num_channels + flat  # (N, h*w): image-major bins
    counts = torch.bincount(index[valid], minlength=n * num_channels)  # (N*C,)
    return 1 + counts.view(n, num_channels)


@LOSSES.register("hwd")
class HolisticWeightedKD(KDLoss):
    """CWD on logits where each channel's KL is weighted by how badly the student still matches that channel.

    Formula (zS, zT logits (N, C, h, w); softmaxes over the h*w positions, tau = 4)::

        pS = softmax(zS / tau), pT = softmax(zT / tau)
        with no gradient:
            d[n,c] = sum_i (pS[n,c,i] - pT[n,c,i])^2  /  D(count[n,c])     # D = 1 unless div_pixel is set
            u[n,c] = (d[n,c] - mean_c d[n,:]) / std_c d[n,:] + mu          # std = 0 (all d equal): u = mu
            g[n,c] = (1 - beta^u[n,c]) / (1 - beta)
            w[n,:] = C * softmax_c(g[n,:])
        L_hwd = tau^2 / (N*C) * sum_{n,c} w[n,c] * KL(pT[n,c] || pS[n,c])

    Citation: Sun, Chen, Wang, Ye, Feng, Chen, "Holistic Weighted Distillation for Semantic Segmentation",
    ICME 2023 (official code built on CIRKD, run with ``--activation --L MSE --process E --parameter 0.1
    --shift 1.0``).

    Defaults: beta = 0.1, mu = 1.0 (Cityscapes; the paper uses mu = 0 for ADE20K and 0.1 for COCO-Stuff),
    tau = 4, weight 3. The std across channels is the unbiased one (``correction=1``) as in torch's default used by
    the official code, with no eps, as there: the distances can be tiny (divided by count^2 under ``div_pixel: N2``,
    std ~ 1e-12 and below), where a fixed eps would change the weights. Only a zero std (every channel distance
    equal, e.g. S == T), where the official code divides 0 by 0 (NaN), is guarded: then u = mu and the loss is
    exactly 0. ``eps`` (default 0) can still add a constant to the std.

    Per-class pixel division (the official ``--DivPixel``): with ``div_pixel`` ``"N"``, ``"SqrtN"`` or ``"N2"``
    each channel's distance is divided by count, sqrt(count) or count^2 before the standardisation, where
    count[n,c] = 1 + the pixels of image n labelled c (labels nearest-resized to the logits' size; ignored and
    out-of-range labels count for no class). Needs the label map. Default ``None``: no division.
    Reduction: sum over positions, weighted mean over images and channels. Ignore handling: labels are used only
    by ``div_pixel``. Logits only; needs at least 2 channels.
    """

    sources = ("logits",)
    default_weight = 3.0
    params = {
        "tau": Param(4.0, "softmax temperature tau", positive),
        "beta": Param(
            0.1,
            "base of the saturating transform",
            float,
            check=lambda b: 0.0 < b < 1.0,
            rule="lie in (0, 1)",
        ),
        "mu": Param(1.0, "shift added to the standardised distance", float),
        "eps": Param(0.0, "added to the std across channels (0: none, as the official code)", float),
        "correction": Param(1, "degrees-of-freedom correction of that std (1 unbiased, 0 population)", int),
        "div_pixel": Param(
            None,
            "divide each channel's distance by its pixel count: N, SqrtN or N2",
            str,
            choices=tuple(DIV_PIXEL),
        ),
    }

    def compute(self, s: Tensor, t: Tensor, target: Tensor | None) -> Tensor:
        check_same_shape(s, t, "hwd logits")
        n, c = s.shape[:2]
        if c < 2:
            raise ValueError(f"hwd weights channels against each other and needs >= 2 of them, got {c}")
        count = None
        if self.div_pixel is not None:
            if target is None:
                raise ValueError(
                    "hwd with div_pixel needs the label map: call loss(student, teacher, target)"
                )
            count = class_pixel_count(resize_labels(target.to(s.device), s.shape[-2:]), c)  # (N, C)
        tau = self.tau
        log_ps = F.log_softmax(s.flatten(2) / tau, dim=-1)  # (N, C, h*w)
        log_pt = F.log_softmax(t.flatten(2) / tau, dim=-1)  # (N, C, h*w)
        w = hwd_channel_weights(
            log_ps,
            log_pt,
            beta=self.beta,
            mu=self.mu,
            eps=self.eps,
            correction=self.correction,
            pixel_count=count,
            div_pixel=self.div_pixel,
        )  # (N, C)
        kl = F.kl_div(log_ps, log_pt, reduction="none", log_target=True).sum(-1)  # (N, C)
        return tau**2 * (w * kl).sum() / (n * c)
