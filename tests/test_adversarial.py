"""The adversarial term's spectral norms against hand computation and CIRKD's official SAGAN code.

The official numbers were produced by CIRKD's ``utils/sagan.py`` (winycg/CIRKD at dab64db: ``SpectralNorm`` and
``Discriminator(1, 2, False)``) run outside the project on the same seeded tensors, with the weights and u, v of the
modules built here copied into it, and the trainer's order of CIRKD's ``train_kd.py`` (student term, then the hinge
objective on D(z_S), D(z_T), Adam(4e-4, (0.9, 0.99)) step).
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from segkd.distill.adversarial import SPECTRAL_NORMS, Adversarial, sagan_spectral_norm
from segkd.distill.config import _CHOICES, ConfigError, load_config

CITYSCAPES = Path(__file__).resolve().parents[1] / "configs" / "cityscapes"

# Official SpectralNorm(nn.Conv2d(2, 3, 2)) after two forwards (x1, x2), then backward of sum(y1) + 2 sum(y2).
OFFICIAL_CONV_SIGMA = 0.6003504991531372
OFFICIAL_CONV_WEIGHT = [
    -0.004409075248986483, 0.31591784954071045, -0.4847008287906647, -0.43340304493904114, -0.2268218696117401,
    0.1579209864139557, -0.011668211780488491, 0.46694180369377136, -0.05226239934563637, 0.1558334082365036,
    -0.1779767870903015, -0.11575963348150253, -0.5626158714294434, -0.39002561569213867, -0.2427629828453064,
    0.021815389394760132, 0.23281750082969666, 0.3533603847026825, -0.3992473781108856, -0.2564491331577301,
    0.2139027863740921, 0.4890250861644745, -0.12119811773300171, 0.44068947434425354,
]  # fmt: skip
OFFICIAL_CONV_GRAD = [
    6.01056432723999, 17.018516540527344, 9.262114524841309, 8.507185935974121, -5.230464935302734,
    -1.1163296699523926, -1.1733543872833252, -4.2046799659729, 5.237265110015869, 16.453975677490234,
    9.943754196166992, 8.988053321838379, -7.462081432342529, -3.681361198425293, -1.608886957168579,
    -5.476222991943359, 6.4340314865112305, 17.327667236328125, 8.88884162902832, 8.243857383728027,
    -4.008408069610596, 0.28831052780151367, -0.9348517656326294, -3.508368968963623,
]  # fmt: skip
# Official Discriminator (K = 2, width 64) on 1 x 2 x 64 x 64 logits: (student term, D objective) per iteration.
OFFICIAL_TERMS = [(-1.158646227850113e-05, 0.19812624156475067), (8.254370914073661e-05, 0.19865478575229645)]


def _l2(x: torch.Tensor) -> torch.Tensor:
    return x / (x.norm() + 1e-12)


def _tiny_conv(kind: str) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    conv = SPECTRAL_NORMS[kind](nn.Conv2d(2, 3, 2))
    return conv, torch.randn(1, 2, 3, 3), torch.randn(1, 2, 3, 3)


def test_spectral_norm_choices_are_the_configs() -> None:
    assert _CHOICES["adversarial.spectral_norm"] == tuple(SPECTRAL_NORMS)
    assert load_config(None).adversarial.spectral_norm == "torch"
    with pytest.raises(
        ConfigError, match=r"adversarial\.spectral_norm must be one of .*did you mean 'sagan'"
    ):
        load_config(None, ["adversarial.spectral_norm=sagn"])


@pytest.mark.parametrize(
    "path", sorted([*CITYSCAPES.glob("*_skd_full.yaml"), *CITYSCAPES.glob("*_ifvd_full.yaml")])
)
def test_papers_adversarial_recipes_use_cirkds_spectral_norm(path: Path) -> None:
    assert load_config(path).adversarial.spectral_norm == "sagan"


def test_sagan_spectral_norm_by_hand_and_as_the_official_code() -> None:
    conv, x1, x2 = _tiny_conv("sagan")
    norm = conv.parametrizations.weight
    w = norm.original.detach().flatten(1)  # (3, 8)
    u, v = norm[0].u.clone(), norm[0].v.clone()
    for _ in range(2):  # v first, then u; no iteration at construction
        v = _l2(w.T @ u)
        u = _l2(w @ v)
    sigma = u @ w @ v
    y1, y2 = conv(x1), conv(x2)
    assert sigma.item() == pytest.approx(OFFICIAL_CONV_SIGMA, rel=1e-6)
    assert (w / sigma).flatten().tolist() == pytest.approx(OFFICIAL_CONV_WEIGHT, rel=1e-6, abs=1e-7)
    assert torch.allclose(y2, F.conv2d(x2, (w / sigma).view(3, 2, 2, 2), conv.bias), atol=1e-6)
    (y1.sum() + 2 * y2.sum()).backward()  # y1's sigma backward reads the u, v of the second forward
    assert norm.original.grad.flatten().tolist() == pytest.approx(OFFICIAL_CONV_GRAD, rel=1e-6, abs=1e-5)


def test_torch_spectral_norm_by_hand() -> None:
    conv, x1, _ = _tiny_conv("torch")
    norm = conv.parametrizations.weight
    w = norm.original.detach().flatten(1)  # (3, 8)
    v0 = norm[0]._v.clone()
    u = F.normalize(w @ v0, dim=0)  # u first, then v
    v = F.normalize(w.T @ u, dim=0)
    sigma = u @ w @ v
    assert torch.allclose(conv(x1), F.conv2d(x1, (w / sigma).view(3, 2, 2, 2), conv.bias), atol=1e-6)


def test_sagan_adversarial_terms_equal_the_official_code_over_two_iterations() -> None:
    torch.manual_seed(0)
    adv = Adversarial(2, torch.device("cpu"), spectral_norm="sagan")
    s1, t1, s2, t2 = (torch.randn(1, 2, 64, 64) for _ in range(4))
    got = []
    for s, t in ((s1, t1), (s2, t2)):
        g = adv.generator_loss(s, t)
        d = adv.discriminator_loss()
        d.backward()
        adv.step(SimpleNamespace(num_processes=1))
        got.append((g.item(), d.item()))
    for (g, d), (g_ref, d_ref) in zip(got, OFFICIAL_TERMS):
        assert g == pytest.approx(g_ref, rel=1e-6, abs=1e-12)
        assert d == pytest.approx(d_ref, rel=1e-6)


def test_sagan_spectral_norm_does_not_iterate_at_construction() -> None:
    torch.manual_seed(0)
    conv = sagan_spectral_norm(nn.Conv2d(2, 3, 2))
    torch.manual_seed(0)
    plain = nn.Conv2d(2, 3, 2)
    u, v = torch.randn(3), torch.randn(8)  # drawn after the conv's own init, as SAGAN's _make_params does
    norm = conv.parametrizations.weight
    assert torch.equal(norm.original, plain.weight)
    assert torch.allclose(norm[0].u, _l2(u)) and torch.allclose(norm[0].v, _l2(v))


def test_sagan_u_v_are_saved_and_do_not_load_into_torchs() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 3, 64, 64)
    a = Adversarial(3, torch.device("cpu"), width=8, spectral_norm="sagan").discriminator
    a(x)  # u, v moved by one power iteration: a resumed run must continue from them
    b = Adversarial(3, torch.device("cpu"), width=8, spectral_norm="sagan").discriminator
    b.load_state_dict(a.state_dict())
    assert torch.equal(a(x), b(x))
    with pytest.raises(RuntimeError, match="Missing key"):
        Adversarial(3, torch.device("cpu"), width=8).discriminator.load_state_dict(a.state_dict())
