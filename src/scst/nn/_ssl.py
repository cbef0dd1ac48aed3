"""BYOL (Grill et al. 2020) on uint8 H&E tile batches: the network of :class:`scst.models.SSLEncoder`, torch only.

The projection/prediction heads, the loss and the momentum utilities are ``lightly``'s (imported when the module is
built, so ``import scst.nn`` needs only torch). Kept in ``scst.nn`` so the product's own step
(:func:`scst.nn.train_step` on ``BYOLModule.loss``) runs where the scverse stack is absent (GPU machines).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from ._augment import HEAugment
from ._backbones import build_backbone
from ._train_step import imagenet_normalize

__all__ = ["BYOLModule"]


def _features(trunk: nn.Module, x: torch.Tensor) -> torch.Tensor:
    out = trunk(x)
    return out.mean(dim=(2, 3)) if out.ndim == 4 else out.flatten(1)


class BYOLModule(nn.Module):
    """BYOL on uint8 tile batches: online trunk + projection + prediction heads, momentum target (lightly).

    Parameters
    ----------
    backbone
        torchvision or timm model name; its classifier is removed (``build_backbone``).
    backbone_weights
        Initial trunk weights (a local state_dict file or a weights name, see :func:`scst.nn.build_backbone`) to
        continue from, e.g. ImageNet weights; None: random initialisation (pretraining from scratch).
    proj_hidden_dim, proj_dim, pred_hidden_dim
        Widths of lightly's ``BYOLProjectionHead`` (trunk features → hidden → proj_dim) and
        ``BYOLPredictionHead`` (proj_dim → hidden → proj_dim). The paper's 4096/256/4096 is for ResNet-50 on
        GPUs; 1024/256/1024 keeps the heads cheaper than the trunk on CPU.
    crop_scale, hed_sigma, hed_bias, blur_sigma, p_blur
        :class:`scst.nn.HEAugment` settings of both views.
    backbone_kwargs
        Keyword arguments of the backbone's constructor (``build_backbone``'s ``model_kwargs``), e.g.
        ``{"img_size": 112}`` for a timm ViT of fixed input size, or what a hub model's weights need; pass the same
        as ``encoder_kwargs`` to :func:`scst.tl.embed_patches` when loading the weights.
    momentum_start, momentum_end
        Target momentum, raised along a cosine from start to end over training (lightly's ``cosine_schedule``)
        of ``max_steps`` optimiser steps: set ``module.max_steps`` before training (``SSLEncoder.train`` does;
        :meth:`loss` in training mode refuses to run without it).
    """

    def __init__(
        self,
        backbone: str = "shufflenet_v2_x0_5",
        backbone_weights: str | None = None,
        proj_hidden_dim: int = 1024,
        proj_dim: int = 256,
        pred_hidden_dim: int = 1024,
        crop_scale: Sequence[float] = (0.5, 1.0),
        hed_sigma: float = 0.05,
        hed_bias: float = 0.01,
        blur_sigma: Sequence[float] = (0.1, 1.5),
        p_blur: float = 0.5,
        momentum_start: float = 0.99,
        momentum_end: float = 1.0,
        backbone_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        from lightly.loss import NegativeCosineSimilarity
        from lightly.models.modules import BYOLPredictionHead, BYOLProjectionHead
        from lightly.models.utils import deactivate_requires_grad

        if not 0.0 <= momentum_start <= momentum_end <= 1.0:
            raise ValueError(f"momentum: expected 0 <= start <= end <= 1, got {momentum_start}, {momentum_end}.")
        # Random initialisation is the point of pretraining from scratch, not a weak-prediction hazard: no warning.
        self.backbone, n_features = build_backbone(
            backbone, backbone_weights, where="backbone_weights", model_kwargs=backbone_kwargs, warn_random=False
        )
        self.projection_head = BYOLProjectionHead(n_features, proj_hidden_dim, proj_dim)
        self.prediction_head = BYOLPredictionHead(proj_dim, pred_hidden_dim, proj_dim)
        self.backbone_momentum = copy.deepcopy(self.backbone)
        self.projection_head_momentum = copy.deepcopy(self.projection_head)
        deactivate_requires_grad(self.backbone_momentum)
        deactivate_requires_grad(self.projection_head_momentum)
        self.augment = HEAugment(tuple(crop_scale), hed_sigma, hed_bias, tuple(blur_sigma), p_blur)
        self.criterion = NegativeCosineSimilarity()
        self.momentum_start, self.momentum_end = float(momentum_start), float(momentum_end)
        self.n_features = int(n_features)
        self.register_buffer("step", torch.zeros((), dtype=torch.long))
        # the number of optimiser steps the momentum cosine runs over: set by whoever trains (SSLEncoder.train); unset,
        # training refuses to start (with 1 the momentum was 1.0 from the first step: the target never moved)
        self.max_steps: int | None = None

    def _views(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = batch.float().div_(255.0) if batch.dtype == torch.uint8 else batch.float()
        return imagenet_normalize(self.augment(x)), imagenet_normalize(self.augment(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Trunk features ``(B, n_features)`` of ImageNet-normalised images."""
        return _features(self.backbone, x)

    def _online(self, x: torch.Tensor) -> torch.Tensor:
        return self.prediction_head(self.projection_head(_features(self.backbone, x)))

    @torch.no_grad()
    def _target(self, x: torch.Tensor) -> torch.Tensor:
        return self.projection_head_momentum(_features(self.backbone_momentum, x)).detach()

    def loss(self, batch: torch.Tensor) -> dict[str, torch.Tensor]:
        """Symmetric BYOL loss (negative cosine similarity, in [-1, 1]) of two augmented views of the batch.

        In training mode the target network is first moved towards the online one (momentum update). Also
        returns ``momentum`` and ``pred_std``: the mean per-dimension std of the L2-normalised predictions
        (≈ 1/sqrt(proj_dim) for a healthy representation, → 0 when it collapses to a constant).
        """
        from lightly.models.utils import update_momentum
        from lightly.utils.scheduler import cosine_schedule

        if self.training and not (isinstance(self.max_steps, int) and self.max_steps >= 1):
            raise RuntimeError(
                f"BYOLModule.max_steps: expected the number of optimiser steps of the training (the target momentum "
                f"rises along a cosine over them), got {self.max_steps!r}; set it before training (SSLEncoder.train "
                "does)."
            )
        v0, v1 = self._views(batch)
        m = cosine_schedule(int(self.step), max(self.max_steps or 1, 1), self.momentum_start, self.momentum_end)
        if self.training:
            update_momentum(self.backbone, self.backbone_momentum, m=m)
            update_momentum(self.projection_head, self.projection_head_momentum, m=m)
            self.step += 1
        p0, p1 = self._online(v0), self._online(v1)
        z0, z1 = self._target(v0), self._target(v1)
        loss = 0.5 * (self.criterion(p0, z1) + self.criterion(p1, z0))
        pred_std = nn.functional.normalize(p0.detach(), dim=1).std(0).mean()
        return {"loss": loss, "momentum": torch.tensor(m), "pred_std": pred_std}
