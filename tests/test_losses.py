"""Tests of the distillation losses: hand-computed values, properties, gradients, stored reference values.

Expected values are computed here with explicit loops in numpy (float64), never by calling the library.
Regenerate the stored reference values (after an intended change of a loss) with::

    PYTHONPATH=. python tests/test_losses.py --regen
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from segkd.distill.losses import LOSSES, KDCriterion, build_loss, build_losses, loss_params, resize_labels

FIXTURE = Path(__file__).parent / "fixtures" / "loss_values.json"
CS, CT = 4, 6  # student / teacher feature widths used where a projector is involved
RTOL = 1e-5


# ----------------------------------------------------------------------------------------------------------------
# numpy references (explicit loops)


def _np(x: torch.Tensor) -> np.ndarray:
    return x.detach().double().numpy()


def _log_softmax(v: np.ndarray) -> np.ndarray:
    v = v - v.max()
    return v - math.log(np.exp(v).sum())


def _kl(log_p: np.ndarray, log_q: np.ndarray) -> float:
    """KL(p || q) from log-probabilities."""
    return float((np.exp(log_p) * (log_p - log_q)).sum())


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(a.ravel(), b.ravel()) / (np.linalg.norm(a) * np.linalg.norm(b)))


def ref_kd(s, t, tau):
    n_, _, h_, w_ = s.shape
    total = 0.0
    for n in range(n_):
        for i in range(h_):
            for j in range(w_):
                total += _kl(_log_softmax(t[n, :, i, j] / tau), _log_softmax(s[n, :, i, j] / tau))
    return tau**2 * total / (n_ * h_ * w_)


def ref_channel_kl(s, t, tau):
    n_, c_ = t.shape[:2]
    out = np.zeros((n_, c_))
    for n in range(n_):
        for c in range(c_):
            out[n, c] = _kl(_log_softmax(t[n, c].ravel() / tau), _log_softmax(s[n, c].ravel() / tau))
    return out


def ref_cwd(s, t, tau, channels):
    return tau**2 * ref_channel_kl(s, t, tau).sum() / (t.shape[0] * channels)


def ref_hwd(s, t, tau=4.0, beta=0.1, mu=1.0, divisor=None):
    """``divisor`` (N, C): what each channel's distance is divided by (HWD's DivPixel), None for 1."""
    n_, c_ = s.shape[:2]
    kl = ref_channel_kl(s, t, tau)
    total = 0.0
    for n in range(n_):
        d = np.array(
            [
                (
                    (
                        np.exp(_log_softmax(s[n, c].ravel() / tau))
                        - np.exp(_log_softmax(t[n, c].ravel() / tau))
                    )
                    ** 2
                ).sum()
                for c in range(c_)
            ]
        )
        if divisor is not None:
            d = d / divisor[n]
        u = (d - d.mean()) / d.std(ddof=1) + mu
        g = (1 - beta**u) / (1 - beta)
        w = c_ * np.exp(g) / np.exp(g).sum()
        total += (w * kl[n]).sum()
    return tau**2 * total / (n_ * c_)


def ref_angular(s, t, granularity):
    n_, c_, h_, w_ = s.shape
    vals = []
    for n in range(n_):
        if granularity == "layer":
            vals.append(1 - _cos(s[n], t[n]))
        elif granularity == "channel":
            vals += [1 - _cos(s[n, c], t[n, c]) for c in range(c_)]
        else:
            vals += [1 - _cos(s[n, :, i, j], t[n, :, i, j]) for i in range(h_) for j in range(w_)]
    return float(np.mean(vals))


def ref_md(s, t):
    n_ = s.shape[0]
    return float(np.mean([(np.linalg.norm(t[n]) - np.linalg.norm(s[n])) ** 2 / t[n].size for n in range(n_)]))


def ref_project(s, w):
    """1x1 conv without bias: out[n, o, i, j] = sum_c w[o, c] * s[n, c, i, j]."""
    n_, _, h_, w_ = s.shape
    out = np.zeros((n_, w.shape[0], h_, w_))
    for n in range(n_):
        for i in range(h_):
            for j in range(w_):
                out[n, :, i, j] = w @ s[n, :, i, j]
    return out


def ref_at(s, t):
    def att(f):
        a = (f**2).mean(axis=1).reshape(f.shape[0], -1)
        return a / np.linalg.norm(a, axis=1, keepdims=True)

    return float(((att(s) - att(t)) ** 2).mean())


def ref_skd(s, t, patch=2):
    def sim(f):
        n_, c_, h_, w_ = f.shape
        hp, wp = -(-h_ // patch), -(-w_ // patch)  # ceil mode
        pooled = np.zeros((n_, c_, hp, wp))
        for i in range(hp):
            for j in range(wp):
                win = f[:, :, i * patch : min((i + 1) * patch, h_), j * patch : min((j + 1) * patch, w_)]
                pooled[:, :, i, j] = win.max(axis=(2, 3))
        g = pooled.reshape(n_, c_, -1)
        g = g / np.linalg.norm(g, axis=1, keepdims=True)
        a = np.zeros((n_, g.shape[2], g.shape[2]))
        for n in range(n_):
            for p in range(g.shape[2]):
                for q in range(g.shape[2]):
                    a[n, p, q] = np.dot(g[n, :, p], g[n, :, q])
        return a

    return float(((sim(s) - sim(t)) ** 2).mean())


def ref_ifvd(s, t, labels, ignore=255):
    def cosines(f):
        n_, _, h_, w_ = f.shape
        out = np.ones((n_, h_, w_))
        for n in range(n_):
            for k in set(labels[n].ravel().tolist()) - {ignore}:
                pix = [(i, j) for i in range(h_) for j in range(w_) if labels[n, i, j] == k]
                centre = np.mean([f[n, :, i, j] for i, j in pix], axis=0)
                for i, j in pix:
                    out[n, i, j] = _cos(f[n, :, i, j], centre)
        return out

    return float(((cosines(s) - cosines(t)) ** 2).mean())


def ref_dist(s, t, tau=1.0):
    def probs(z):
        n_, k_, h_, w_ = z.shape
        rows = [
            np.exp(_log_softmax(z[n, :, i, j] / tau)) for n in range(n_) for i in range(h_) for j in range(w_)
        ]
        return np.array(rows)  # (P, K)

    ys, yt = probs(s), probs(t)
    inter = 1 - np.mean([np.corrcoef(ys[p], yt[p])[0, 1] for p in range(ys.shape[0])])
    intra = 1 - np.mean([np.corrcoef(ys[:, k], yt[:, k])[0, 1] for k in range(ys.shape[1])])
    return tau**2 * (inter + intra)


def ref_cirkd(s, t, tau=0.1):
    def unit(f):
        g = f.reshape(f.shape[0], f.shape[1], -1)
        return g / np.linalg.norm(g, axis=1, keepdims=True)

    gs, gt = unit(s), unit(t)
    n_, _, p_ = gs.shape
    total = 0.0
    for i in range(n_):
        for j in range(n_):
            for p in range(p_):
                row_s = np.array([np.dot(gs[i, :, p], gs[j, :, q]) for q in range(p_)])
                row_t = np.array([np.dot(gt[i, :, p], gt[j, :, q]) for q in range(p_)])
                total += _kl(_log_softmax(row_t / tau), _log_softmax(row_s / tau))
    return total / (n_ * n_ * p_)


def ref_conv3x3(x, w, b):
    """3x3 convolution, padding 1: x (C, H, W), w (O, C, 3, 3), b (O,)."""
    c_, h_, w_ = x.shape
    xp = np.zeros((c_, h_ + 2, w_ + 2))
    xp[:, 1:-1, 1:-1] = x
    out = np.zeros((w.shape[0], h_, w_))
    for o in range(w.shape[0]):
        for i in range(h_):
            for j in range(w_):
                out[o, i, j] = b[o] + (w[o] * xp[:, i : i + 3, j : j + 3]).sum()
    return out


# ----------------------------------------------------------------------------------------------------------------
# inputs


def _pair(n=2, k=3, cs=3, ct=3, h=3, w=4, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    student = {
        "logits": scale * torch.randn(n, k, h, w, generator=g),
        "feat": torch.randn(n, cs, h, w, generator=g),
    }
    teacher = {
        "logits": scale * torch.randn(n, k, h, w, generator=g),
        "feat": torch.randn(n, ct, h, w, generator=g),
    }
    target = torch.randint(0, k, (n, h, w), generator=g)
    target[0, 0, :2] = 255
    return student, teacher, target


def _build(name: str, cs: int = CS, ct: int = CT, k: int = 4, **params):
    """Build ``name`` passing the channel widths only to losses that take them, and the class count ``k`` only
    to losses that cannot be built without it (``ifvd`` infers it, and its stored values were made so)."""
    spec = LOSSES.get(name).param_spec()
    shared = {key: v for key, v in {"student_channels": cs, "teacher_channels": ct}.items() if key in spec}
    if "num_classes" in spec and spec["num_classes"].required:
        shared["num_classes"] = k
    return build_loss(name, **{**shared, **params})


def _value(loss, student, teacher, target=None) -> float:
    with torch.no_grad():
        return float(loss(student, teacher, target))


# ----------------------------------------------------------------------------------------------------------------
# hand-computed values, one test per loss


def test_kd_value():
    s, t, _ = _pair()
    for tau, weight in ((1.0, 1.0), (2.0, 0.5)):
        got = _value(build_loss("kd", tau=tau, weight=weight), s, t)
        assert got == pytest.approx(weight * ref_kd(_np(s["logits"]), _np(t["logits"]), tau), rel=RTOL)


def test_cwd_logits_value_defaults_tau4_weight3():
    s, t, _ = _pair()
    got = _value(build_loss("cwd"), s, t)
    assert got == pytest.approx(3.0 * ref_cwd(_np(s["logits"]), _np(t["logits"]), 4.0, 3), rel=RTOL)
    got = _value(build_loss("cwd", tau=1.0, weight=5.0), s, t)  # mmrazor's recipe
    assert got == pytest.approx(5.0 * ref_cwd(_np(s["logits"]), _np(t["logits"]), 1.0, 3), rel=RTOL)


@pytest.mark.parametrize("normalize, channels", [("teacher", CT), ("student", CS)])
def test_cwd_feat_value_with_projector(normalize, channels):
    s, t, _ = _pair(cs=CS, ct=CT)
    loss = build_loss("cwd", source="feat", normalize=normalize, student_channels=CS, teacher_channels=CT)
    w = torch.linspace(-1, 1, CT * CS).reshape(CT, CS)
    loss.projector[0].weight.data.copy_(w[:, :, None, None])
    ps = ref_project(_np(s["feat"]), w.double().numpy())
    expected = 50.0 * ref_cwd(ps, _np(t["feat"]), 4.0, channels)
    assert _value(loss, s, t) == pytest.approx(expected, rel=RTOL)


def test_cwd_student_normaliser_scales_by_width_ratio():
    s, t, _ = _pair(cs=CS, ct=CT)
    torch.manual_seed(3)
    by_teacher = build_loss("cwd", source="feat", student_channels=CS, teacher_channels=CT)
    torch.manual_seed(3)
    by_student = build_loss(
        "cwd", source="feat", normalize="student", student_channels=CS, teacher_channels=CT
    )
    assert _value(by_student, s, t) == pytest.approx(_value(by_teacher, s, t) * CT / CS, rel=RTOL)


@pytest.mark.parametrize("mu", [1.0, 0.0, 0.1])
def test_hwd_value(mu):
    s, t, _ = _pair(k=4)
    got = _value(build_loss("hwd", mu=mu), s, t)
    assert got == pytest.approx(3.0 * ref_hwd(_np(s["logits"]), _np(t["logits"]), mu=mu), rel=1e-4)


@pytest.mark.parametrize("div_pixel, power", [("N", 1.0), ("SqrtN", 0.5), ("N2", 2.0)])
def test_hwd_div_pixel_value(div_pixel, power):
    s, t, target = _pair(k=4, h=3, w=4)
    big = target.repeat_interleave(2, dim=1).repeat_interleave(2, dim=2)  # (N, 6, 8): nearest-resizes back
    labels = target.numpy()
    count = np.ones((2, 4))  # 1 + pixels of class c in image n, ignored pixels counted for no class
    for n in range(2):
        for i in range(3):
            for j in range(4):
                if labels[n, i, j] < 4:
                    count[n, labels[n, i, j]] += 1
    expected = 3.0 * ref_hwd(_np(s["logits"]), _np(t["logits"]), divisor=count**power)
    got = _value(build_loss("hwd", div_pixel=div_pixel), s, t, big)
    assert got == pytest.approx(expected, rel=1e-4)
    assert got != pytest.approx(_value(build_loss("hwd"), s, t), rel=1e-3)  # the division matters here
    with pytest.raises(ValueError, match="label map"):
        build_loss("hwd", div_pixel="N")(s, t)
    with pytest.raises(ValueError, match="div_pixel must be one of"):
        build_loss("hwd", div_pixel="n")


@pytest.mark.parametrize("div_pixel, power", [("N", 1.0), ("N2", 2.0)])
def test_hwd_div_pixel_weights_with_tiny_distances_by_hand(div_pixel, power):
    # a student close to its teacher on 48x48 logits: the divided distances' std is ~5e-12 (N) and ~2e-14 (N2),
    # where the former fixed eps of 1e-12 changed the weights by 40 % and 100 %; as the official code, no eps
    from segkd.distill.losses.hwd import class_pixel_count, hwd_channel_weights

    g = torch.Generator().manual_seed(7)
    t = torch.randn(2, 4, 48, 48, generator=g)
    s = t + 0.05 * torch.randn(2, 4, 48, 48, generator=g)
    target = torch.randint(0, 4, (2, 48, 48), generator=g)
    target[:, :4] = 255
    log_ps = torch.log_softmax(s.flatten(2) / 4.0, dim=-1)  # (2, 4, 2304)
    log_pt = torch.log_softmax(t.flatten(2) / 4.0, dim=-1)
    count = 1 + np.stack([[(target[n] == c).sum().item() for c in range(4)] for n in range(2)])  # (2, 4)
    d = ((np.exp(_np(log_ps)) - np.exp(_np(log_pt))) ** 2).sum(-1) / count**power  # (2, 4)
    u = (d - d.mean(1, keepdims=True)) / d.std(1, ddof=1, keepdims=True) + 1.0
    gu = (1 - 0.1**u) / 0.9
    expected = 4 * np.exp(gu) / np.exp(gu).sum(1, keepdims=True)
    kw = {"beta": 0.1, "mu": 1.0, "correction": 1, "div_pixel": div_pixel,
          "pixel_count": class_pixel_count(target, 4)}  # fmt: skip
    got = hwd_channel_weights(log_ps, log_pt, eps=0.0, **kw)
    assert got.double().numpy() == pytest.approx(expected, rel=1e-5)
    assert build_loss("hwd").eps == 0.0
    old = hwd_channel_weights(log_ps, log_pt, eps=1e-12, **kw)
    assert not np.allclose(old.double().numpy(), expected, rtol=0.1)  # the fixed eps was not negligible here


@pytest.mark.parametrize(
    "name, params, granularity",
    [("lad", {}, "layer"), ("cad", {}, "channel"), ("lad", {"granularity": "pixel"}, "pixel")],
)
def test_angular_value(name, params, granularity):
    s, t, _ = _pair()
    loss = build_loss(name, **params)
    assert loss.granularity == granularity
    expected = 3.0 * ref_angular(_np(s["feat"]), _np(t["feat"]), granularity)
    assert _value(loss, s, t) == pytest.approx(expected, rel=RTOL)


def test_md_value():
    s, t, _ = _pair()
    assert _value(build_loss("md"), s, t) == pytest.approx(
        10.0 * ref_md(_np(s["feat"]), _np(t["feat"])), rel=RTOL
    )


def test_fitnet_value_with_projector():
    s, t, _ = _pair(cs=CS, ct=CT)
    loss = build_loss("fitnet", student_channels=CS, teacher_channels=CT)
    w = torch.linspace(-0.5, 1.5, CT * CS).reshape(CT, CS)
    loss.projector[0].weight.data.copy_(w[:, :, None, None])
    ps = ref_project(_np(s["feat"]), w.double().numpy())
    assert _value(loss, s, t) == pytest.approx(10.0 * float(((ps - _np(t["feat"])) ** 2).mean()), rel=RTOL)


def test_at_value_across_widths():
    s, t, _ = _pair(cs=CS, ct=CT)
    assert _value(build_loss("at"), s, t) == pytest.approx(
        1e4 * ref_at(_np(s["feat"]), _np(t["feat"])), rel=1e-4
    )


def test_skd_value_ceil_mode_pooling():
    s, t, _ = _pair(cs=CS, ct=CT, h=3, w=5)  # odd sizes: the last pooling windows are partial
    assert _value(build_loss("skd"), s, t) == pytest.approx(
        10.0 * ref_skd(_np(s["feat"]), _np(t["feat"])), rel=RTOL
    )


def test_ifvd_value_with_ignore_and_resize():
    s, t, target = _pair(cs=CS, ct=CT, h=3, w=4)
    big = target.repeat_interleave(2, dim=1).repeat_interleave(2, dim=2)  # (N, 6, 8): nearest-resizes back
    expected = 20.0 * ref_ifvd(_np(s["feat"]), _np(t["feat"]), target.numpy())
    assert _value(build_loss("ifvd"), s, t, big) == pytest.approx(expected, rel=RTOL)
    assert _value(build_loss("ifvd", num_classes=3), s, t, target) == pytest.approx(expected, rel=RTOL)


def test_dist_value():
    s, t, _ = _pair(k=4)
    assert _value(build_loss("dist"), s, t) == pytest.approx(
        ref_dist(_np(s["logits"]), _np(t["logits"])), rel=1e-4
    )


def test_dist_on_auxiliary_logits_defaults_to_weight_04():
    s, t, _ = _pair(k=4)
    g = torch.Generator().manual_seed(9)
    s["aux"], t["aux"] = torch.randn(2, 4, 3, 4, generator=g), torch.randn(2, 4, 3, 4, generator=g)
    expected = 0.4 * ref_dist(_np(s["aux"]), _np(t["aux"]))
    assert _value(build_loss("dist", source="aux"), s, t) == pytest.approx(expected, rel=1e-4)
    with pytest.raises(KeyError, match="auxiliary head"):
        build_loss("dist", source="aux")({**s, "aux": None}, t)


def test_cirkd_value_across_widths_and_pooling():
    s, t, _ = _pair(n=3, cs=CS, ct=CT, h=2, w=3)
    expected = ref_cirkd(_np(s["feat"]), _np(t["feat"]))
    assert _value(build_loss("cirkd"), s, t) == pytest.approx(expected, rel=1e-4)
    pooled_s, pooled_t = (torch.nn.functional.avg_pool2d(x["feat"], 2, ceil_mode=True) for x in (s, t))
    expected = 0.5 * ref_cirkd(_np(pooled_s), _np(pooled_t), tau=0.5)
    assert _value(build_loss("cirkd", pool=2, tau=0.5, weight=0.5), s, t) == pytest.approx(expected, rel=1e-4)


def test_mgd_value_and_mask():
    s, t, _ = _pair(cs=CS, ct=CT, h=3, w=4)
    loss = build_loss("mgd", student_channels=CS, teacher_channels=CT, seed=7)
    mask = (torch.rand((2, 1, 3, 4), generator=torch.Generator().manual_seed(7)) >= 0.75).double().numpy()
    ps = ref_project(_np(s["feat"]), _np(loss.projector[0].weight[:, :, 0, 0])) * mask
    g1, g2 = loss.generator[0], loss.generator[2]
    total = 0.0
    for n in range(2):
        hid = np.maximum(ref_conv3x3(ps[n], _np(g1.weight), _np(g1.bias)), 0)
        out = ref_conv3x3(hid, _np(g2.weight), _np(g2.bias))
        total += ((out - _np(t["feat"][n])) ** 2).sum()
    assert _value(loss, s, t) == pytest.approx(2e-5 * total / 2, rel=1e-4)


def test_mgd_value_with_biased_alignment_conv():
    s, t, _ = _pair(cs=CS, ct=CT, h=3, w=4)
    loss = build_loss("mgd", student_channels=CS, teacher_channels=CT, seed=7, projector_bias=True)
    conv = loss.projector[0]
    assert conv.bias is not None
    conv.bias.data.copy_(torch.linspace(-2, 2, CT))  # large enough that dropping it would change the value
    mask = (torch.rand((2, 1, 3, 4), generator=torch.Generator().manual_seed(7)) >= 0.75).double().numpy()
    ps = ref_project(_np(s["feat"]), _np(conv.weight[:, :, 0, 0])) + _np(conv.bias)[None, :, None, None]
    ps = ps * mask
    g1, g2 = loss.generator[0], loss.generator[2]
    total = 0.0
    for n in range(2):
        hid = np.maximum(ref_conv3x3(ps[n], _np(g1.weight), _np(g1.bias)), 0)
        out = ref_conv3x3(hid, _np(g2.weight), _np(g2.bias))
        total += ((out - _np(t["feat"][n])) ** 2).sum()
    assert _value(loss, s, t) == pytest.approx(2e-5 * total / 2, rel=1e-4)


def test_mgd_private_generator_resumes_bit_exactly(tmp_path):
    s, t, _ = _pair(cs=CS, ct=CT, h=8, w=8)
    running = build_loss("mgd", teacher_channels=CT, student_channels=CS, seed=3)
    running.random_mask(t["feat"])  # advance the generator: the saved state is mid-run, not the seed's
    torch.save(running.state_dict(), tmp_path / "criterion.pt")
    expected = [running.random_mask(t["feat"]) for _ in range(3)]
    resumed = build_loss("mgd", teacher_channels=CT, student_channels=CS, seed=3)
    resumed.load_state_dict(torch.load(tmp_path / "criterion.pt", weights_only=True))
    assert all(torch.equal(resumed.random_mask(t["feat"]), e) for e in expected)
    fresh = build_loss("mgd", teacher_channels=CT, student_channels=CS, seed=3)
    assert not torch.equal(fresh.random_mask(t["feat"]), expected[0])  # the state, not the seed, was restored
    with pytest.raises(ValueError, match="seed"):
        build_loss("mgd", teacher_channels=CT).load_state_dict(running.state_dict())


def _ref_head(s, w1, w2, eps=1e-5):
    """conv1x1 (no bias) - BatchNorm in training mode (batch statistics, weight 1, bias 0) - ReLU - conv1x1."""
    y = np.einsum("oc,nchw->nohw", w1, s)
    mean = y.mean(axis=(0, 2, 3), keepdims=True)
    var = y.var(axis=(0, 2, 3), keepdims=True)  # biased, as BatchNorm normalises with
    y = np.maximum((y - mean) / np.sqrt(var + eps), 0)
    return np.einsum("oc,nchw->nohw", w2, y)


def _unit(x, axis):
    """L2-normalise along ``axis``; a zero vector stays zero (norm floored at 1e-12, as F.normalize does)."""
    return x / np.maximum(np.linalg.norm(x, axis=axis, keepdims=True), 1e-12)


def test_cirkd_memory_value_and_bank_update():
    """One step by hand: enqueue the batch's teacher pixels and class means, then contrast against the banks.

    The contrast sizes cover whole queues and no class overflows its queue, so the value does not depend on
    which random pixels/slots were drawn (every entry takes part, and a softmax ignores their order).
    """
    k_, mp, mr = 3, 32, 3
    s, t, target = _pair(n=2, k=k_, cs=CS, ct=CT, h=3, w=4, seed=4)
    torch.manual_seed(0)
    loss = build_loss(
        "cirkd_memory",
        num_classes=k_,
        student_channels=CS,
        teacher_channels=CT,
        pixel_memory_size=mp,
        region_memory_size=mr,
        pixel_contrast_size=k_ * mp,
        region_contrast_size=k_ * mr,
    )
    pixel0, region0 = _np(loss.pixel_queue).copy(), _np(loss.region_queue).copy()
    got = _value(loss, s, t, target)

    labels = target.numpy()
    e_t = _unit(_np(t["feat"]), axis=1)  # (N, C, h, w)
    e_s = _unit(
        _ref_head(_np(s["feat"]), _np(loss.head[0].weight[:, :, 0, 0]), _np(loss.head[3].weight[:, :, 0, 0])),
        1,
    )
    pixel, region = pixel0.copy(), region0.copy()
    p_ptr, r_ptr = [0] * k_, [0] * k_
    for n in range(2):
        for c in range(k_):
            members = [e_t[n, :, i, j] for i in range(3) for j in range(4) if labels[n, i, j] == c]
            if not members:
                continue
            region[c, r_ptr[c]] = _unit(np.mean(members, axis=0), 0)
            r_ptr[c] += 1
            pixel[c, p_ptr[c] : p_ptr[c] + len(members)] = members  # <= 16 per class and image: all enqueued
            p_ptr[c] += len(members)
    # the enqueued set is fixed, the slots within the written range are not: compare as sorted rows
    for c in range(k_):
        got_rows = np.sort(_np(loss.pixel_queue[c, : p_ptr[c]]), axis=0)
        assert np.allclose(got_rows, np.sort(pixel[c, : p_ptr[c]], axis=0), atol=1e-6)
        assert np.allclose(_np(loss.pixel_queue[c, p_ptr[c] :]), pixel0[c, p_ptr[c] :])
    assert np.allclose(_np(loss.region_queue), region, atol=1e-6)

    def term(bank):
        bank = bank.reshape(-1, CT)
        total, anchors = 0.0, 0
        for n in range(2):
            for i in range(3):
                for j in range(4):
                    if labels[n, i, j] == 255:
                        continue
                    total += _kl(
                        _log_softmax(bank @ e_t[n, :, i, j] / 0.1), _log_softmax(bank @ e_s[n, :, i, j] / 0.1)
                    )
                    anchors += 1
        return total / anchors

    assert got == pytest.approx(0.1 * (term(pixel) + term(region)), rel=1e-4)


def test_cirkd_memory_banks_and_generator_resume_bit_exactly(tmp_path):
    s, t, target = _pair(n=2, k=4, cs=CS, ct=CT, h=4, w=4, seed=6)
    params = {
        "num_classes": 4,
        "student_channels": CS,
        "teacher_channels": CT,
        "pixel_memory_size": 8,
        "region_memory_size": 2,
        "pixel_contrast_size": 8,
        "region_contrast_size": 4,
    }
    torch.manual_seed(0)
    running = build_loss("cirkd_memory", **params)
    _value(running, s, t, target)  # the banks and the generator are now mid-run
    assert int(running.pixel_ptr.sum()) + int(running.region_ptr.sum()) > 0
    torch.save(running.state_dict(), tmp_path / "criterion.pt")
    expected = [_value(running, s, t, target) for _ in range(3)]
    torch.manual_seed(1)  # another initial bank: only the restored state can reproduce the run
    resumed = build_loss("cirkd_memory", **params)
    resumed.load_state_dict(torch.load(tmp_path / "criterion.pt", weights_only=True))
    assert [_value(resumed, s, t, target) for _ in range(3)] == expected
    assert torch.equal(resumed.pixel_queue, running.pixel_queue)


def test_cirkd_memory_needs_labels_and_sizes():
    s, t, target = _pair(k=4, cs=CS, ct=CT)
    with pytest.raises(ValueError, match="num_classes"):
        build_loss("cirkd_memory", student_channels=CS, teacher_channels=CT)
    loss = _build("cirkd_memory", pixel_memory_size=8, region_memory_size=2)
    with pytest.raises(ValueError, match="label map"):
        loss(s, t)
    ignored = torch.full_like(target, 255)
    assert _value(loss, s, t, ignored) == 0.0  # no anchor: nothing to distil


# What CIRKD's StudentSegContrast._dequeue_and_enqueue (winycg/CIRKD losses/cirkd_memory.py) enqueued, run outside
# the project after torch.manual_seed(0) on the 6x6 input below: each class's queue, slot by slot, as positions.
OFFICIAL_ENQUEUED = {0: [8, 4, 7, 3, 5, 9, 13, 2, 15, 1, 0, 11, 12, 17, 16, 6],
                     1: [2, 13, 11, 5, 1, 4, 12, 0, 3, 8, 7, 10, 6, 9]}  # fmt: skip


@pytest.mark.parametrize("sampling", ["cirkd", "class"])
def test_cirkd_memory_enqueues_the_official_pixels(sampling):
    # position p's teacher feature is the one-hot e_p, so each queue slot names the pixel it came from; positions
    # 0-3 ignored, 4-21 class 0 (18 pixels), 22-35 class 1 (14): the official code takes 16 (all 14) random
    # positions among the first 18 (14), not among the class's pixels
    loss = build_loss("cirkd_memory", num_classes=2, student_channels=3, teacher_channels=36, pixel_memory_size=40,
                      region_memory_size=4, pixel_contrast_size=8, region_contrast_size=4, pixel_sampling=sampling,
                      seed=0)  # fmt: skip
    labels = torch.tensor([255] * 4 + [0] * 18 + [1] * 14).view(1, 6, 6)
    loss({"feat": torch.randn(1, 3, 6, 6)}, {"feat": torch.eye(36).view(1, 36, 6, 6)}, labels)
    got = {k: loss.pixel_queue[k, : int(loss.pixel_ptr[k])].argmax(1).tolist() for k in (0, 1)}
    if sampling == "cirkd":
        assert got == OFFICIAL_ENQUEUED
    else:
        assert sorted(got[0]) != sorted(OFFICIAL_ENQUEUED[0]) and set(got[1]) == set(range(22, 36))
        assert set(got[0]) <= set(range(4, 22)) and len(got[0]) == 16


def test_cirkd_recipe_uses_the_official_pixel_sampling():
    import yaml

    recipe = yaml.safe_load((Path(__file__).parents[1] / "configs" / "_methods" / "cirkd.yaml").read_text())
    (memory,) = [spec for spec in recipe["losses"] if spec["name"] == "cirkd_memory"]
    assert memory["pixel_sampling"] == "cirkd"


# ----------------------------------------------------------------------------------------------------------------
# properties


@pytest.mark.parametrize(
    "name, params",
    [
        ("kd", {}),
        ("cwd", {}),
        ("cwd", {"source": "feat"}),
        ("hwd", {}),
        ("lad", {}),
        ("cad", {}),
        ("lad", {"granularity": "pixel"}),
        ("md", {}),
        ("fitnet", {}),
        ("at", {}),
        ("skd", {}),
        ("ifvd", {}),
        ("dist", {}),
        ("cirkd", {}),
    ],
)
def test_zero_when_student_equals_teacher(name, params):
    s, _, target = _pair()
    t = {k: v.clone() for k, v in s.items()}
    assert _value(build_loss(name, **params), s, t, target) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("name, granularity", [("lad", None), ("cad", None), ("lad", "pixel")])
def test_angular_invariant_to_positive_scaling(name, granularity):
    s, t, _ = _pair()
    loss = build_loss(name, **({"granularity": granularity} if granularity else {}))
    base = _value(loss, s, t)
    assert base > 0.1
    for a_s, a_t in ((3.7, 1.0), (1.0, 0.02), (250.0, 1e-3)):
        scaled_s = {**s, "feat": a_s * s["feat"]}
        scaled_t = {**t, "feat": a_t * t["feat"]}
        assert _value(loss, scaled_s, scaled_t) == pytest.approx(base, rel=1e-5)


def test_angular_zero_when_directions_agree():
    s, _, _ = _pair()
    t = {**s, "feat": 5.0 * s["feat"]}
    for name in ("lad", "cad"):
        assert _value(build_loss(name), s, t) == pytest.approx(0.0, abs=1e-6)


def test_angular_zero_student_gives_one_minus_zero_and_finite_grads():
    _, t, _ = _pair()
    zero = torch.zeros_like(t["feat"], requires_grad=True)
    value = build_loss("cad", weight=1.0)({"feat": zero}, t)
    value.backward()
    assert value.item() == pytest.approx(1.0)
    assert torch.isfinite(zero.grad).all()


def test_seed003_eq10_naive_mse_is_magnitude_plus_angle():
    """Eq. 10: (1/N)||F_T - F_S||^2 = (m - n)^2 / N + 2mn(1 - cos) / N, per image, N = C*h*w."""
    s, t, _ = _pair(n=3, cs=5, ct=5, h=4, w=6, seed=11)
    fs, ft = _np(s["feat"]), _np(t["feat"])
    naive = _value(build_loss("fitnet", weight=1.0), s, t)
    magnitude = _value(build_loss("md", weight=1.0), s, t)
    angle_terms = []
    for n in range(3):
        one_s, one_t = {"feat": s["feat"][n : n + 1]}, {"feat": t["feat"][n : n + 1]}
        one_minus_cos = _value(build_loss("lad", weight=1.0), one_s, one_t)  # the angular loss of that image
        m, nn_ = np.linalg.norm(ft[n]), np.linalg.norm(fs[n])
        angle_terms.append(2 * m * nn_ * one_minus_cos / ft[n].size)
    assert naive == pytest.approx(float(((fs - ft) ** 2).mean()), rel=RTOL)
    assert naive == pytest.approx(magnitude + float(np.mean(angle_terms)), rel=1e-5)
    assert magnitude == pytest.approx(ref_md(fs, ft), rel=RTOL)


@pytest.mark.parametrize("granularity", ["channel", "pixel"])
def test_md_and_angle_decompose_mse_at_every_granularity(granularity):
    s, t, _ = _pair(n=2, cs=3, ct=3, h=3, w=4, seed=5)
    fs, ft = _np(s["feat"]), _np(t["feat"])
    naive = _value(build_loss("fitnet", weight=1.0), s, t)
    magnitude = _value(build_loss("md", weight=1.0, granularity=granularity), s, t)
    axes = (2, 3) if granularity == "channel" else (1,)
    m, n_ = np.sqrt((ft**2).sum(axis=axes)), np.sqrt((fs**2).sum(axis=axes))
    cos = (fs * ft).sum(axis=axes) / (m * n_)
    angle = float((2 * m * n_ * (1 - cos)).sum() / ft.size)
    assert naive == pytest.approx(magnitude + angle, rel=1e-5)


def test_hwd_identical_inputs_exactly_zero_with_finite_grads():
    s, _, _ = _pair(k=5)
    logits = s["logits"].clone().requires_grad_(True)
    teacher = {"logits": s["logits"].clone()}
    value = build_loss("hwd")({"logits": logits}, teacher)
    assert value.item() == 0.0
    value.backward()
    assert torch.isfinite(logits.grad).all()


def test_hwd_weights_sum_to_channels_and_favour_worse_channels():
    from segkd.distill.losses.hwd import hwd_channel_weights

    g = torch.Generator().manual_seed(0)
    t = torch.randn(2, 5, 12, generator=g)
    s = t.clone()
    s[:, 3] += 3 * torch.randn(2, 12, generator=g)  # channel 3 differs most
    log_ps, log_pt = s.log_softmax(-1), t.log_softmax(-1)
    w = hwd_channel_weights(log_ps, log_pt, beta=0.1, mu=1.0, eps=1e-12, correction=1)
    assert torch.allclose(w.sum(1), torch.full((2,), 5.0))
    assert (w.argmax(1) == 3).all()


@pytest.mark.parametrize("name", ["kd", "cwd", "hwd", "dist"])
def test_logits_of_magnitude_1e4_stay_finite(name):
    s, t, target = _pair(k=4, scale=1e4)
    s = {k: v.requires_grad_(True) for k, v in s.items()}
    value = build_loss(name)(s, t, target)
    value.backward()
    assert torch.isfinite(value)
    assert torch.isfinite(s["logits"].grad).all()


@pytest.mark.parametrize("name", LOSSES.names())
def test_inputs_of_magnitude_1e4_stay_finite_for_every_loss(name):
    s, t, target = _pair(k=4, cs=CS, ct=CT)
    s = {k: (1e4 * v).requires_grad_(True) for k, v in s.items()}
    t = {k: 1e4 * v for k, v in t.items()}
    value = _build(name)(s, t, target)
    value.backward()
    assert torch.isfinite(value)
    assert all(torch.isfinite(v.grad).all() for v in s.values() if v.grad is not None)


def test_resize_labels_is_nearest_and_keeps_ignore():
    labels = torch.arange(36).reshape(1, 6, 6) % 7
    labels[0, 0, 0] = 255
    small = resize_labels(labels, (3, 3))
    assert small.dtype == torch.long
    assert torch.equal(small, labels[:, ::2, ::2])
    assert small[0, 0, 0] == 255


def test_mgd_mask_is_reproducible_and_masks_three_quarters():
    s, t, _ = _pair(cs=CS, ct=CT, h=32, w=32)
    loss = build_loss("mgd", teacher_channels=CT, student_channels=CS)
    torch.manual_seed(123)
    first = loss.random_mask(t["feat"])
    torch.manual_seed(123)
    assert torch.equal(first, loss.random_mask(t["feat"]))
    assert 1 - first.mean().item() == pytest.approx(0.75, abs=0.05)
    a = build_loss("mgd", teacher_channels=CT, seed=5).random_mask(t["feat"])
    b = build_loss("mgd", teacher_channels=CT, seed=5).random_mask(t["feat"])
    assert torch.equal(a, b)


# ----------------------------------------------------------------------------------------------------------------
# gradients: student and learnable loss modules only


@pytest.mark.parametrize("name", LOSSES.names())
def test_gradients_reach_student_and_loss_modules_only(name):
    s, t, target = _pair(k=4, cs=CS, ct=CT)
    s = {k: v.requires_grad_(True) for k, v in s.items()}
    t = {k: v.requires_grad_(True) for k, v in t.items()}  # a teacher leaf that asks for grad still gets none
    loss = _build(name)
    loss(s, t, target).backward()
    assert all(v.grad is None for v in t.values())
    assert s[loss.source].grad is not None and s[loss.source].grad.abs().sum() > 0
    for pname, p in loss.named_parameters():
        assert p.grad is not None, f"{name}: parameter {pname} got no gradient"


def test_projector_and_generator_parameters_are_exposed():
    assert len(list(_build("cad").parameters())) == 1
    assert len(list(_build("cad", cs=CT).parameters())) == 0  # equal widths: no projector
    assert len(list(_build("cad", cs=CT, project=True).parameters())) == 1
    assert len(list(_build("cad", projector_bn=True).parameters())) == 3  # conv + BN weight, bias
    assert len(list(_build("mgd").parameters())) == 1 + 4  # projector + two convs with bias
    assert len(list(_build("cwd").parameters())) == 0  # logits: never projected


def test_feature_width_mismatch_without_projector_explains_the_fix():
    s, t, _ = _pair(cs=CS, ct=CT)
    with pytest.raises(ValueError, match="student_channels=4, teacher_channels=6"):
        build_loss("fitnet")(s, t)


# ----------------------------------------------------------------------------------------------------------------
# the registry and the combined criterion


@pytest.mark.parametrize("name", LOSSES.names())
def test_every_registered_loss_builds_and_runs(name):
    s, t, target = _pair(k=4, cs=CS, ct=CT)
    loss = _build(name)
    value = loss(s, t, target)
    assert value.dim() == 0 and torch.isfinite(value)
    assert loss.__doc__ and "weight" in loss.__doc__.lower()


def test_registry_holds_the_issue_losses():
    expected = {"kd", "cwd", "hwd", "lad", "cad", "md", "fitnet", "at", "skd", "ifvd", "dist", "mgd", "cirkd"}
    assert expected <= set(LOSSES.names())


def test_every_loss_class_of_every_module_is_registered():
    """A loss defined in any module of distill/losses is registered, or is the base of a registered one."""
    import importlib
    import inspect
    import pkgutil

    import segkd.distill.losses as package
    from segkd.distill.losses import KDLoss

    registered = [LOSSES.get(name) for name in LOSSES.names()]
    modules = [
        importlib.import_module(f"segkd.distill.losses.{m.name}")
        for m in pkgutil.iter_modules(package.__path__)
    ]
    assert len(modules) >= 10
    for module in modules:
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if cls.__module__ != module.__name__ or not issubclass(cls, KDLoss):
                continue
            is_base = any(r is not cls and issubclass(r, cls) for r in registered)
            assert cls in registered or is_base, f"{module.__name__}.{cls.__name__} is not registered"


def test_parameter_spec_is_inherited_and_validated():
    spec = LOSSES.get("cad").param_spec()
    assert {"granularity", "eps", "student_channels", "projector_bias", "weight", "source"} <= set(spec)
    assert set(loss_params("kd")) == {"tau", "weight", "source"}
    with pytest.raises(TypeError, match="did you mean 'projector_bn'"):
        build_loss("fitnet", projector_nb=True)
    with pytest.raises(ValueError, match="project"):
        build_loss("fitnet", project="yes")
    with pytest.raises(ValueError, match=r"beta must lie in \(0, 1\)"):
        build_loss("hwd", beta=1.5)


def test_weight_scales_linearly():
    s, t, target = _pair()
    assert _value(build_loss("cwd", weight=6.0), s, t) == pytest.approx(2 * _value(build_loss("cwd"), s, t))


def test_build_errors_name_the_fix():
    with pytest.raises(KeyError, match="Did you mean 'cwd'"):
        build_loss("cwdd")
    with pytest.raises(TypeError, match="valid: .*tau"):
        build_loss("cwd", temperature=4)
    with pytest.raises(ValueError, match="'logits'"):
        build_loss("kd", source="feat")
    with pytest.raises(ValueError, match="normalize"):
        build_loss("cwd", normalize="both")
    with pytest.raises(ValueError, match="granularity"):
        build_loss("lad", granularity="image")
    with pytest.raises(ValueError, match="teacher_channels"):
        build_loss("mgd")


def test_criterion_returns_named_terms_and_collects_parameters():
    s, t, target = _pair(k=4, cs=CS, ct=CT)
    crit = build_losses(
        [{"name": "kd", "weight": 2.0}, {"name": "cwd"}, {"name": "cwd", "source": "feat"}, {"name": "ifvd"}],
        student_channels=CS,
        teacher_channels=CT,
        num_classes=4,
    )
    assert isinstance(crit, KDCriterion)
    terms = crit(s, t, target)
    assert list(terms) == ["kd/kd", "kd/cwd_logits", "kd/cwd_feat", "kd/ifvd"]
    assert terms["kd/kd"].item() == pytest.approx(
        2.0 * ref_kd(_np(s["logits"]), _np(t["logits"]), 1.0), rel=RTOL
    )
    assert crit.terms["ifvd"].num_classes == 4
    assert len(list(crit.parameters())) == 1  # the cwd_feat projector


def test_criterion_reports_every_problem_at_once():
    specs = [
        {"name": "kdd"},
        {"name": "cwd", "tau": "x", "temp": 1},
        {"name": "kd"},
        {"name": "kd"},
        {"weight": 1},
    ]
    with pytest.raises(ValueError) as info:
        build_losses(specs)
    text = str(info.value)
    assert "#0" in text and "Did you mean 'kd'" in text
    assert "#1" in text and "temp" in text
    assert "#3" in text and "unique 'key'" in text
    assert "#4" in text and "needs a 'name'" in text
    crit = build_losses([{"name": "kd"}, {"name": "kd", "key": "kd_t4", "tau": 4.0}])
    assert list(crit.terms) == ["kd", "kd_t4"]


def test_every_loss_on_real_model_outputs():
    from segkd.distill.models import build_model

    torch.manual_seed(0)
    teacher = build_model("deeplabv3_r50", num_classes=5, width=0.25).eval().requires_grad_(False)
    student = build_model("deeplabv3_r18", num_classes=5, width=0.25).train()
    assert teacher.feat_channels != student.feat_channels
    crit = build_losses(
        [{"name": name} for name in LOSSES.names()],
        student_channels=student.feat_channels,
        teacher_channels=teacher.feat_channels,
        num_classes=5,
    )
    x = torch.randn(2, 3, 64, 64)
    labels = torch.randint(0, 5, (2, 64, 64))
    with torch.no_grad():
        t_out = teacher(x, return_features=True)
    terms = crit(student(x, return_features=True), t_out, labels)
    assert len(terms) == len(LOSSES.names()) and all(torch.isfinite(v) for v in terms.values())
    sum(terms.values()).backward()
    assert student.head.classifier.weight.grad is not None
    assert all(p.grad is not None for p in crit.parameters())
    assert all(p.grad is None for p in teacher.parameters())


def _method_terms(name: str, **shared) -> KDCriterion:
    import yaml

    path = Path(__file__).parents[1] / "configs" / "_methods" / f"{name}.yaml"
    return build_losses(yaml.safe_load(path.read_text())["losses"], **shared)


def test_cirkd_cwd_recipe_carries_cirkds_effective_weight():
    """CIRKD divides by the student's 128 channels: its weight 50 is 100 x the mean over the teacher's 256."""
    s, t, _ = _pair(cs=128, ct=256, h=3, w=4)
    torch.manual_seed(0)
    recipe = _method_terms("cwd_cirkd", student_channels=128, teacher_channels=256)
    torch.manual_seed(0)
    by_teacher = build_loss("cwd", source="feat", weight=100.0, student_channels=128, teacher_channels=256)
    feat_term = recipe(s, t)["kd/cwd_feat"]
    assert feat_term.item() == pytest.approx(_value(by_teacher, s, t), rel=1e-5)
    assert set(recipe.terms) == {"kd", "cwd_feat", "cwd_logits"}


def test_dist_and_mgd_recipes_follow_the_official_code():
    dist = _method_terms("dist_aux")
    assert [(x.source, x.weight) for x in dist.terms.values()] == [("logits", 1.0), ("aux", 0.4)]
    assert list(dist.terms) == ["dist", "dist_aux"]
    mgd = _method_terms("mgd", student_channels=CS, teacher_channels=CT)
    assert mgd.terms["mgd"].projector[0].bias is not None


def test_mgd_on_the_last_backbone_stage_as_the_official_code():
    s, t, _ = _pair(cs=CS, ct=CT, h=3, w=4)
    torch.manual_seed(0)
    on_feat = build_loss("mgd", student_channels=CS, teacher_channels=CT, seed=1)
    torch.manual_seed(0)
    on_stage = build_loss("mgd", source="stage4", student_channels=CS, teacher_channels=CT, seed=1)
    assert on_stage.projector is not None
    staged_s = {"stages": [None, None, None, s["feat"]]}  # only the last stage is read
    staged_t = {"stages": [None, None, None, t["feat"]]}
    assert _value(on_stage, staged_s, staged_t) == pytest.approx(_value(on_feat, s, t), rel=1e-6)
    crit = build_losses([{"name": "mgd", "source": "stage4"}], student_channels=CS, teacher_channels=CT)
    assert list(crit.terms) == ["mgd_stage4"]


# ----------------------------------------------------------------------------------------------------------------
# stored reference values

REFERENCE_CASES: dict[str, tuple[str, dict]] = {
    "kd": ("kd", {}),
    "cwd_logits": ("cwd", {}),
    "cwd_feat": ("cwd", {"source": "feat"}),
    "cwd_feat_student_norm": ("cwd", {"source": "feat", "normalize": "student"}),
    "hwd": ("hwd", {}),
    "hwd_mu0": ("hwd", {"mu": 0.0}),
    "lad": ("lad", {}),
    "cad": ("cad", {}),
    "lad_pixel": ("lad", {"granularity": "pixel"}),
    "md": ("md", {}),
    "fitnet": ("fitnet", {}),
    "at": ("at", {}),
    "skd": ("skd", {}),
    "ifvd": ("ifvd", {}),
    "dist": ("dist", {}),
    "mgd": ("mgd", {"seed": 0}),
    "cirkd": ("cirkd", {}),
    "cirkd_memory": ("cirkd_memory", {"pixel_memory_size": 50, "region_memory_size": 6}),
    "hwd_div_pixel_n": ("hwd", {"div_pixel": "N"}),
    "mgd_projector_bias": ("mgd", {"seed": 0, "projector_bias": True}),
}


def _reference_inputs():
    torch.manual_seed(2024)
    s, t, target = _pair(n=2, k=5, cs=CS, ct=CT, h=6, w=8, seed=2024)
    big = target.repeat_interleave(2, dim=1).repeat_interleave(2, dim=2)
    checksum = float(sum(v.double().abs().sum() for v in (*s.values(), *t.values())) + big.sum())
    return s, t, big, checksum


def _reference_value(case: str, s, t, target) -> float:
    name, params = REFERENCE_CASES[case]
    torch.manual_seed(0)  # projector / generator initialisation
    return _value(_build(name, k=5, **params), s, t, target)


def compute_reference_values() -> dict:
    s, t, target, checksum = _reference_inputs()
    return {
        "inputs": {"seed": 2024, "student_channels": CS, "teacher_channels": CT, "checksum": checksum},
        "torch": torch.__version__,
        "cases": {
            case: {"loss": name, "params": params, "value": _reference_value(case, s, t, target)}
            for case, (name, params) in REFERENCE_CASES.items()
        },
    }


def test_reference_cases_cover_every_registered_loss():
    assert {name for name, _ in REFERENCE_CASES.values()} == set(LOSSES.names())


def test_stored_reference_values():
    stored = json.loads(FIXTURE.read_text())
    s, t, target, checksum = _reference_inputs()
    assert checksum == pytest.approx(stored["inputs"]["checksum"], rel=1e-9), "reference inputs changed"
    assert set(stored["cases"]) == set(REFERENCE_CASES), f"regenerate {FIXTURE.name} (see module docstring)"
    for case, entry in stored["cases"].items():
        name, params = REFERENCE_CASES[case]
        assert (entry["loss"], entry["params"]) == (name, params)
        assert _reference_value(case, s, t, target) == pytest.approx(entry["value"], rel=1e-5), case


if __name__ == "__main__":
    if sys.argv[1:] != ["--regen"]:
        sys.exit("usage: PYTHONPATH=. python tests/test_losses.py --regen")
    from segkd.infer.fileio import atomic_write_text

    FIXTURE.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(FIXTURE, json.dumps(compute_reference_values(), indent=2) + "\n")
    print(f"wrote {FIXTURE}")
