"""Cross-image relational KD, CIRKD (Yang et al., CVPR 2022): the memory-bank pixel and region terms.

The mini-batch pixel-to-pixel term is ``cirkd`` (``cirkd.py``); CIRKD's recipe sums ``kd``, ``cirkd`` and this.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import LOSSES, KDLoss, Param, optional_int, resize_labels

__all__ = ["CrossImageMemoryKD", "relation_kl"]

_POSITIVE = {"check": lambda v: v > 0, "rule": "be positive"}


def relation_kl(s: Tensor, t: Tensor, bank: Tensor, tau: float, kd_tau: float) -> Tensor:
    """Mean over anchors of KL between the teacher's and the student's similarity distributions over ``bank``.

    ``s``, ``t``: L2-normalised anchor embeddings (A, C); ``bank``: L2-normalised entries (M, C). Each anchor's
    similarities to the M entries, divided by ``tau``, become a softmax at temperature ``kd_tau``; the KL is
    summed over entries, averaged over anchors and multiplied by ``kd_tau^2``.
    """
    log_ps = F.log_softmax(s @ bank.T / (tau * kd_tau), dim=1)  # (A, M)
    log_pt = F.log_softmax(t @ bank.T / (tau * kd_tau), dim=1)  # (A, M)
    return F.kl_div(log_ps, log_pt, reduction="sum", log_target=True) / s.shape[0] * kd_tau**2


def _gather(x: Tensor) -> Tensor:
    """Concatenate ``x`` from every process along dim 0 (no gradient); ``x`` itself in a single process."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, dim=0)


@LOSSES.register("cirkd_memory")
class CrossImageMemoryKD(KDLoss):
    """Match each pixel's similarities to a memory of teacher pixel and region embeddings from past batches.

    Formula (labels nearest-resized to the feature size; anchors: the pixels whose label is a class)::

        e_T = normalize_c(F_T),  e_S = normalize_c(head(F_S))   # head: 1x1 conv - BN - ReLU - 1x1 conv
        enqueue e_T: per image and class, up to 16 random pixels into that class's pixel queue and the class
            mean (normalised) into its region queue (FIFO queues of 20000 and 2000 per class)
        X_p = a random subset of pixel_contrast_size // K + 1 entries of every class's pixel queue (likewise X_r)
        L_X = 1/A * sum_anchors KL(softmax(e_T X^T / tau) || softmax(e_S X^T / tau))    (kd_tau = 1)
        L_cirkd_memory = L_{X_p} + region_weight * L_{X_r}

    Citation: Yang, Zhou, An, Jiang, Xu, Zhang, "Cross-Image Relational Knowledge Distillation for Semantic
    Segmentation", CVPR 2022; official code ``losses/cirkd_memory.py`` and ``train_cirkd.py`` (winycg/CIRKD).
    Defaults as there: queue sizes 20000 (pixel) and 2000 (region) per class, 4096 pixel and 1024 region
    contrast entries split over the classes, 16 pixels per class and image enqueued, contrast temperature 0.1,
    KL temperature 1, default weight 0.1 (``lambda_memory_pixel`` = ``lambda_memory_region`` = 0.1, hence
    ``region_weight`` 1). The current batch is enqueued before it is contrasted, as there.

    The banks are buffers (``state_dict()`` saves and restores them with their pointers, and the generator
    that draws the enqueued pixels and the contrast subsets is in it too, so a resumed run continues exactly).
    They start as random unit vectors and weigh ``K * (20000 + 2000) * C_T`` floats: 0.43 GB for Cityscapes at
    C_T = 256, 3.9 GB for COCO-Stuff's 171 classes (the official sizes; shrink the queues for small GPUs).
    Across processes the teacher embeddings and labels of every process are gathered before they are enqueued
    (as the official code does), and every process draws from an identically seeded generator, so all
    processes hold identical banks; the anchors and the loss are those of the local batch.

    One deliberate difference: the official enqueue picks its random pixels by indexing the image's first
    ``count`` positions rather than the class's pixels (``this_feat[:, perm[:K]]``); here the pixels are drawn
    from the class (``pixel_sampling="class"``). ``pixel_sampling="cirkd"`` reproduces the official indexing, and
    CIRKD's recipe (``configs/_methods/cirkd.yaml``) uses it: with ``seed`` s as ``torch.manual_seed(s)`` there, the
    same pixels are enqueued in the same slots.
    Reduction: mean over anchors. Ignore handling: pixels labelled ``ignore_index`` (or outside
    [0, num_classes)) are neither anchors nor enqueued; a batch without any labelled pixel gives 0.
    Features; needs the label map, ``num_classes`` and both widths.
    """

    sources = ("feat",)
    default_weight = 0.1
    params = {
        "num_classes": Param(
            None, "number of classes (one queue each)", optional_int, required=True, **_POSITIVE
        ),
        "student_channels": Param(
            None, "student feature width (input of the head)", optional_int, required=True
        ),
        "teacher_channels": Param(
            None, "teacher feature width (the embedding size)", optional_int, required=True
        ),
        "pixel_memory_size": Param(20000, "pixel queue length per class", optional_int, **_POSITIVE),
        "region_memory_size": Param(2000, "region queue length per class", optional_int, **_POSITIVE),
        "pixel_contrast_size": Param(4096, "pixel entries contrasted, split over the classes", optional_int),
        "region_contrast_size": Param(
            1024, "region entries contrasted, split over the classes", optional_int
        ),
        "pixels_per_class": Param(
            16, "pixels of each class and image enqueued per step", optional_int, **_POSITIVE
        ),
        "tau": Param(0.1, "contrast temperature of the similarities", float, **_POSITIVE),
        "kd_tau": Param(
            1.0, "temperature of the KL between the similarity distributions", float, **_POSITIVE
        ),
        "region_weight": Param(1.0, "weight of the region term relative to the pixel term", float),
        "pixel_sampling": Param(
            "class", "enqueued pixels: class (from the class) or cirkd", str, ("class", "cirkd")
        ),
        "ignore_index": Param(255, "label value of ignored pixels", int),
        "seed": Param(0, "seed of the generator drawing enqueued pixels and contrast subsets", optional_int),
    }

    def setup(self) -> None:
        k, c = self.num_classes, self.teacher_channels
        self.head = nn.Sequential(
            nn.Conv2d(self.student_channels, c, kernel_size=1, bias=False),
            nn.BatchNorm2d(c),
            nn.ReLU(inplace=True),
            nn.Conv2d(c, c, kernel_size=1, bias=False),
        )
        self.register_buffer("pixel_queue", _random_units(k, self.pixel_memory_size, c))  # (K, Mp, C)
        self.register_buffer("pixel_ptr", torch.zeros(k, dtype=torch.long))
        self.register_buffer("region_queue", _random_units(k, self.region_memory_size, c))  # (K, Mr, C)
        self.register_buffer("region_ptr", torch.zeros(k, dtype=torch.long))
        self._rng = torch.Generator().manual_seed(self.seed)

    def compute(self, s: Tensor, t: Tensor, target: Tensor | None) -> Tensor:
        if target is None:
            raise ValueError("cirkd_memory needs the label map: call loss(student, teacher, target)")
        e_t = F.normalize(t, p=2, dim=1)  # (N, C, h, w)
        e_s = F.normalize(self.head(s), p=2, dim=1)  # (N, C, h, w)
        labels = resize_labels(target.to(s.device), s.shape[-2:])  # (N, h, w)
        valid = (labels != self.ignore_index) & (labels >= 0) & (labels < self.num_classes)
        self._enqueue(_gather(e_t.detach()), _gather(torch.where(valid, labels, -1)))
        anchors = valid.flatten()  # (N*h*w,)
        if not bool(anchors.any()):
            return 0.0 * e_s.pow(2).mean()
        a_s = e_s.permute(0, 2, 3, 1).reshape(-1, e_s.shape[1])[anchors]  # (A, C)
        a_t = e_t.permute(0, 2, 3, 1).reshape(-1, e_t.shape[1])[anchors]  # (A, C)
        pixel = relation_kl(
            a_s, a_t, self._sample(self.pixel_queue, self.pixel_contrast_size), self.tau, self.kd_tau
        )
        region = relation_kl(
            a_s, a_t, self._sample(self.region_queue, self.region_contrast_size), self.tau, self.kd_tau
        )
        return pixel + self.region_weight * region

    def _sample(self, queue: Tensor, total: int) -> Tensor:
        """The same random subset of ``total // K + 1`` slots from every class's queue, as (K * size, C)."""
        k, length, c = queue.shape
        index = torch.randperm(length, generator=self._rng)[: total // k + 1].to(queue.device)
        return queue[:, index].reshape(-1, c)  # (K * size, C)

    @torch.no_grad()
    def _enqueue(self, keys: Tensor, labels: Tensor) -> None:
        """Push the teacher embeddings ``keys`` (N, C, h, w) of the labelled pixels (``labels`` (N, h, w), -1
        where not a class) into the queues, image by image and class by class (the order the official code uses)."""
        for feat, lab in zip(keys.flatten(2), labels.flatten(1)):  # (C, P), (P,)
            for k in torch.unique(lab[lab >= 0]).tolist():
                where = (lab == k).nonzero()[:, 0]  # (count,)
                self._push_region(k, F.normalize(feat[:, where].mean(1), dim=0))
                pick = torch.randperm(len(where), generator=self._rng)[: self.pixels_per_class].to(
                    where.device
                )
                chosen = where[pick] if self.pixel_sampling == "class" else pick
                self._push_pixels(k, F.normalize(feat[:, chosen].T, dim=1))  # (m, C)

    def _push_region(self, k: int, entry: Tensor) -> None:
        ptr = int(self.region_ptr[k])
        self.region_queue[k, ptr] = entry
        self.region_ptr[k] = (ptr + 1) % self.region_memory_size

    def _push_pixels(self, k: int, entries: Tensor) -> None:
        m, ptr = entries.shape[0], int(self.pixel_ptr[k])
        if ptr + m >= self.pixel_memory_size:  # the official rule: a batch that would wrap goes to the end
            self.pixel_queue[k, -m:] = entries
            self.pixel_ptr[k] = 0
        else:
            self.pixel_queue[k, ptr : ptr + m] = entries
            self.pixel_ptr[k] = ptr + m

    def get_extra_state(self) -> dict[str, Tensor]:
        return {"rng_state": self._rng.get_state()}

    def set_extra_state(self, state: dict[str, Tensor]) -> None:
        self._rng.set_state(state["rng_state"])


def _random_units(k: int, length: int, c: int) -> Tensor:
    """Random unit vectors (K, length, C), the banks' starting content (normalised in place to spare memory)."""
    q = torch.randn(k, length, c)
    return q.div_(q.norm(dim=2, keepdim=True))
