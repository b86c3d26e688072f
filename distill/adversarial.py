"""The adversarial holistic term of SKD and IFVD, as CIRKD trains it: a discriminator with its own optimizer.

Liu et al., "Structured Knowledge Distillation for Semantic Segmentation" (CVPR 2019): besides the pixel and pair
terms, a discriminator D learns to tell the teacher's segmentation logits from the student's, and the student is
trained to fool it. CIRKD's ``train_kd.py`` (winycg/CIRKD) runs it with the hinge loss on the 1/8 logits:

    student:        L_adv = lambda_adv * -mean(D(z_S))                                 lambda_adv = 0.001
    discriminator:  L_D   = lambda_d * (mean(relu(1 - D(z_T))) + mean(relu(1 + D(z_S.detach()))))   lambda_d = 0.1

D (SAGAN-style): BatchNorm over the K logit channels, four spectrally normalised 4x4 stride-2 convolutions
(width, 2x, 4x, 8x channels) with LeakyReLU(0.1), self-attention after the third and the fourth, a final 4x4
convolution to one score per position. Its optimizer is Adam(lr 4e-4, betas (0.9, 0.99)) at a constant rate.

Spectral norm (``adversarial.spectral_norm``), W the weight flattened to (out, in*k*k), sigma ~ its top singular
value, one power iteration per forward, the weight used is W / sigma:

    torch (default): torch's ``parametrizations.spectral_norm``: 15 iterations at construction, then
                     u = normalize(W v), v = normalize(W^T u), sigma = u . W v; the backward uses this forward's u, v.
    sagan:           CIRKD's ``utils/sagan.py`` (SAGAN's ``SpectralNorm``): no iteration at construction, then
                     v = normalize(W^T u), u = normalize(W v) (normalize: x / (|x| + 1e-12)), sigma = u . W v; the
                     backward of sigma reads the u, v of the *latest* forward (CIRKD replaces them in place, so
                     D's gradient from D(z_S) uses the u, v of the later D(z_T)).

In the first iterations sigma is still far from converged under ``sagan``, so the student's term differs from
``torch`` (by 7-21 % when compared on the same tensors); the papers' recipes (``*_skd_full.yaml``,
``*_ifvd_full.yaml``) use ``sagan`` to reproduce CIRKD. ``torch`` stays the default: its gradient is the true
gradient of the loss it computed and its 15 iterations at construction give a far better sigma from the first step.

In the trainer (``adversarial.enabled: true``) the student's term is one more named loss (``adv``, part of
``total``); D's own objective is logged as ``adv_d`` and stepped after the student's step. D sees the student's
logits with its weights frozen for the student's term (so that term's gradient reaches only the student), D's
gradients are averaged across processes and its buffers taken from process 0 after each step, so every process
holds the same D. D and its optimizer are saved in the run state (``discriminator.pt``, ``optimizer_d.pt``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import spectral_norm

__all__ = ["MIN_LOGITS", "SPECTRAL_NORMS", "Adversarial", "Discriminator", "SaganSpectralNorm", "SelfAttention",
           "sagan_spectral_norm"]  # fmt: skip

MIN_LOGITS = 64  # four stride-2 convs then a 4x4 conv: the 1/8 logits need at least 64 x 64 positions


def _l2normalize(x: Tensor, eps: float = 1e-12) -> Tensor:
    """SAGAN's normalisation ``x / (|x| + eps)`` (torch's ``F.normalize`` divides by ``max(|x|, eps)``)."""
    return x / (x.norm() + eps)


class _SaganSigma(torch.autograd.Function):
    """sigma = u . (W v) whose backward reads ``u``, ``v`` when it runs, as CIRKD's SAGAN code does.

    There, u and v are replaced in place by every forward and the backward of sigma reads them then; so the
    gradient of an earlier forward uses the latest forward's u, v. ``u``, ``v`` are the buffers themselves,
    updated in place; deliberately not saved for backward (which would forbid the later in-place update).
    """

    @staticmethod
    def forward(ctx: Any, w_mat: Tensor, u: Tensor, v: Tensor) -> Tensor:
        ctx.uv = (u, v)
        return torch.dot(u, torch.mv(w_mat, v))

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:
        u, v = ctx.uv
        return grad * torch.outer(u, v), None, None


class SaganSpectralNorm(nn.Module):
    """A parametrization ``W -> W / sigma`` with CIRKD's SAGAN power iteration (one per forward, v first).

    Args:
        weight: the weight to normalise (out, ...); u (out,) and v (in*k*k,) start as normalised Gaussians.
    """

    def __init__(self, weight: Tensor) -> None:
        super().__init__()
        height = weight.shape[0]
        self.register_buffer("u", _l2normalize(weight.new_empty(height).normal_(0, 1)))
        self.register_buffer("v", _l2normalize(weight.new_empty(weight[0].numel()).normal_(0, 1)))

    def forward(self, weight: Tensor) -> Tensor:
        w_mat = weight.flatten(1)  # (out, in*k*k)
        with torch.no_grad():  # every forward, in training and in evaluation, as SAGAN's
            self.v.copy_(_l2normalize(torch.mv(w_mat.t(), self.u)))
            self.u.copy_(_l2normalize(torch.mv(w_mat, self.v)))
        return weight / _SaganSigma.apply(w_mat, self.u, self.v)


def sagan_spectral_norm(module: nn.Module) -> nn.Module:
    """``module`` with its ``weight`` spectrally normalised by :class:`SaganSpectralNorm`.

    ``unsafe=True``: the usual check would run the parametrization once, one power iteration SAGAN does not do.
    """
    parametrize.register_parametrization(module, "weight", SaganSpectralNorm(module.weight), unsafe=True)
    return module


# ``adversarial.spectral_norm`` -> the wrapper applied to D's four strided convolutions.
SPECTRAL_NORMS: dict[str, Callable[[nn.Module], nn.Module]] = {
    "torch": spectral_norm,
    "sagan": sagan_spectral_norm,
}


class SelfAttention(nn.Module):
    """SAGAN's self-attention: ``x + gamma * V softmax(Q^T K)^T``, with ``gamma`` learnt from 0."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.query = nn.Conv2d(channels, max(channels // 8, 1), 1)
        self.key = nn.Conv2d(channels, max(channels // 8, 1), 1)
        self.value = nn.Conv2d(channels, channels, 1)
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x: Tensor) -> Tensor:
        n, c, h, w = x.shape
        q = self.query(x).flatten(2).transpose(1, 2)  # (N, P, C/8)
        k = self.key(x).flatten(2)  # (N, C/8, P)
        attention = torch.softmax(torch.bmm(q, k), dim=-1)  # (N, P, P): row i attends over positions j
        v = self.value(x).flatten(2)  # (N, C, P)
        out = torch.bmm(v, attention.transpose(1, 2)).view(n, c, h, w)  # (N, C, h, w)
        return self.gamma * out + x


class Discriminator(nn.Module):
    """Scores segmentation logits (N, K, h, w) -> (N, 1, h', w'): high for the teacher's, low for the student's.

    Args:
        num_classes: K, the logit channels.
        width: channels of the first convolution (CIRKD: 64); later ones double.
        spectral_norm: ``torch`` or ``sagan`` (CIRKD's), see the module docstring.
    """

    def __init__(self, num_classes: int, width: int = 64, spectral_norm: str = "torch") -> None:
        super().__init__()
        norm = SPECTRAL_NORMS[spectral_norm]
        self.norm = nn.BatchNorm2d(num_classes)
        chans = [num_classes, width, 2 * width, 4 * width, 8 * width]
        self.down = nn.ModuleList(
            norm(nn.Conv2d(cin, cout, 4, stride=2, padding=1)) for cin, cout in zip(chans, chans[1:])
        )
        self.attend = nn.ModuleDict({"2": SelfAttention(4 * width), "3": SelfAttention(8 * width)})
        self.score = nn.Conv2d(8 * width, 1, 4)

    def forward(self, logits: Tensor) -> Tensor:
        x = self.norm(logits)
        for i, conv in enumerate(self.down):
            x = F.leaky_relu(conv(x), 0.1)  # (N, C_i, h / 2^(i+1), w / 2^(i+1))
            if str(i) in self.attend:
                x = self.attend[str(i)](x)
        return self.score(x)


class Adversarial:
    """The discriminator, its optimizer and both hinge objectives, driven by :func:`segkd.distill.step.optimizer_step`.

    Not an ``nn.Module`` on purpose: its parameters must stay out of the student's optimizer and DDP wrapper.

    Args:
        num_classes: logit channels.
        device: where D runs.
        lambda_adv: weight of the student's term (CIRKD: 0.001).
        lambda_d: weight of D's objective (CIRKD: 0.1).
        lr, betas: Adam settings of D (CIRKD: 4e-4, (0.9, 0.99)).
        width: D's first width (CIRKD: 64).
        spectral_norm: ``torch`` (default) or ``sagan`` (CIRKD's).
    """

    def __init__(
        self,
        num_classes: int,
        device: torch.device,
        *,
        lambda_adv: float = 0.001,
        lambda_d: float = 0.1,
        lr: float = 4e-4,
        betas: tuple[float, float] = (0.9, 0.99),
        width: int = 64,
        spectral_norm: str = "torch",
    ) -> None:
        self.discriminator = Discriminator(num_classes, width, spectral_norm).to(device).train()
        self.optimizer = torch.optim.Adam(self.discriminator.parameters(), lr=lr, betas=tuple(betas))
        self.lambda_adv, self.lambda_d = lambda_adv, lambda_d
        self._pair: tuple[Tensor, Tensor] | None = None

    def generator_loss(self, student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
        """``lambda_adv * -mean(D(z_S))``; remembers both logits (detached) for :meth:`discriminator_loss`."""
        self._pair = (student_logits.detach().float(), teacher_logits.detach().float())
        d = self.discriminator
        d.requires_grad_(False)  # the gradient of this term is the student's only
        try:
            return self.lambda_adv * -d(student_logits.float()).mean()
        finally:
            d.requires_grad_(True)

    def discriminator_loss(self) -> Tensor:
        """``lambda_d * (mean(relu(1 - D(z_T))) + mean(relu(1 + D(z_S))))`` on the last step's logits."""
        assert self._pair is not None, "generator_loss runs first"
        s, t = self._pair
        fake, real = self.discriminator(s), self.discriminator(t)
        return self.lambda_d * (F.relu(1.0 - real).mean() + F.relu(1.0 + fake).mean())

    def step(self, accelerator: Any) -> None:
        """Average D's gradients across processes, step, then give every process process 0's buffers."""
        params = [p for p in self.discriminator.parameters() if p.grad is not None]
        if accelerator.num_processes > 1:
            for p in params:
                torch.distributed.all_reduce(p.grad)
                p.grad /= accelerator.num_processes
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if accelerator.num_processes > 1:
            for buf in self.discriminator.buffers():
                torch.distributed.broadcast(buf, src=0)

    def components(self) -> dict[str, Any]:
        """What the run state saves, by file name."""
        return {"discriminator": self.discriminator, "optimizer_d": self.optimizer}
