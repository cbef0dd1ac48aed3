"""Building blocks of HGGEP: central-difference convolution, GEM, CBAM, ZINB loss and the spot transformer.

Torch only (no anndata/scanpy), so that the network runs on machines without the scverse stack.

References
----------
Li et al., *Gene Expression Prediction from Histology Images via Hypergraph Neural Networks* (HGGEP),
Briefings in Bioinformatics 2024; authors' code https://github.com/QSong-github/HGGEP (read for
architecture facts; this is an independent implementation).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "CBAM",
    "GEM",
    "CDCConv2d",
    "ChannelAttention",
    "CoordEmbedding",
    "SpatialAttention",
    "SpotTransformer",
    "ViTBlock",
    "ZINBLoss",
    "zinb_nll",
]


class CDCConv2d(nn.Conv2d):
    r"""Central-difference convolution (HGGEP eq. 2; Yu et al., CVPR 2020).

    .. math::

        DC(p_0) = \sum_{p_n \in R(p_0)} w_{p_n} x_{p_n} - \theta\, x_{p_0} \sum_{p_n \in R(p_0)} w_{p_n}

    ``theta = 0`` is a plain convolution. The difference term is folded into the kernel (``theta *
    sum(w)`` is subtracted from the centre tap), so the layer costs one convolution. This equals the
    authors' two-convolution form (a plain conv minus ``theta`` times a 1×1 conv with the summed
    kernel) because the centre tap sees ``x_{p_0}``, also at zero-padded borders.

    Parameters
    ----------
    in_channels, out_channels
        Channel counts.
    kernel_size
        Odd kernel size (square).
    stride
        Convolution stride.
    padding
        Zero padding; ``None`` means ``kernel_size // 2``, the only padding for which the kernel centre
        lies on the pixel :math:`p_0` that the difference term uses.
    bias
        Add a learnable bias (not part of eq. 2; off by default because a BatchNorm follows in GEM).
    theta
        Weight of the gradient (difference) term; HGGEP uses 0.7.
    cross
        Use only the centre and its 4 horizontal/vertical neighbours of a 3×3 kernel. The authors' code
        uses this "horizontal-vertical cross" kernel (``Conv2d_Hori_Veri_Cross``, from Dual-Cross CDC);
        the paper's eq. 2 sums over the full 3×3 neighbourhood, which is the default here.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        padding: int | None = None,
        bias: bool = False,
        theta: float = 0.7,
        cross: bool = False,
    ):
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd so that the kernel has a centre, got {kernel_size}.")
        if padding is None:
            padding = kernel_size // 2
        if padding != kernel_size // 2:
            raise ValueError(
                f"padding must be kernel_size // 2 = {kernel_size // 2} so the kernel centre is the pixel "
                f"the difference term uses, got {padding}."
            )
        if not 0.0 <= theta <= 1.0:
            raise ValueError(f"theta must lie in [0, 1], got {theta}.")
        if cross and kernel_size != 3:
            raise ValueError(f"cross=True needs kernel_size=3, got {kernel_size}.")
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=bias)
        self.theta = float(theta)
        self.cross = bool(cross)
        if cross:
            mask = torch.tensor([[0.0, 1.0, 0.0], [1.0, 1.0, 1.0], [0.0, 1.0, 0.0]])
            self.register_buffer("kernel_mask", mask, persistent=False)
        else:
            self.kernel_mask = None

    def effective_weight(self) -> torch.Tensor:
        """Kernel of the equivalent plain convolution (difference term folded into the centre tap)."""
        w = self.weight if self.kernel_mask is None else self.weight * self.kernel_mask
        if self.theta == 0.0:
            return w
        c = self.kernel_size[0] // 2
        centre = torch.zeros_like(w)
        centre[:, :, c, c] = w.sum(dim=(2, 3))
        return w - self.theta * centre

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the central-difference convolution to ``x`` of shape ``(n, c, h, w)``."""
        return self._conv_forward(x, self.effective_weight(), self.bias)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, theta={self.theta}, cross={self.cross}"


def _conv_bn_act(conv: nn.Module, channels: int) -> nn.Sequential:
    # Conv -> BN -> ReLU6, the order and activation of the authors' ConvBNReLU / CD_ConvBNReLU.
    return nn.Sequential(conv, nn.BatchNorm2d(channels), nn.ReLU6(inplace=True))


class GEM(nn.Module):
    r"""Gradient enhancement module (HGGEP eqs. 1–5).

    A plain 3×3 convolution (eq. 1, 3) and a central-difference 3×3 convolution (eq. 2, 4) both with
    stride 2 run side by side on the patch; their maps are concatenated and mixed by a 1×1 convolution
    (the "MLP" of eq. 5). A 112-px patch gives a 56×56 map; in general ``ceil(H / 2) × ceil(W / 2)``.

    Shapes and deviations (paper vs. authors' code vs. here):

    * channels: the paper's hyper-parameter list says "3 → 6 → 3", its eq. 3–4 shapes say each branch
      has 6 channels (``F_TC, F_DC ∈ R^{N×6×56×56}``). The code uses 3 channels per branch, i.e.
      3 → (3 + 3 = 6 concatenated) → 3. ``branch_channels=3`` (default) follows the code;
      ``branch_channels=6`` gives the paper's eq. 3–4 shapes.
    * order: the paper writes ``BN(σ(conv))`` with ReLU; the code uses ``ReLU6(BN(conv))``, used here.
    * size: the code's 1×1 mixing conv has ``padding=1``, which grows the map to 58×58 with a constant
      border; this is where the paper's stage sizes (29, 15, 8, 4, 4) come from. Here the 1×1 conv has
      no padding, so 112 px → 56 px → ShuffleNet stages 28, 14, 7, 4, 4.
    * CDC kernel: the code uses the cross-shaped kernel (see :class:`CDCConv2d`); ``cross=False``
      (default) uses the full 3×3 neighbourhood of eq. 2.

    Parameters
    ----------
    in_channels
        Image channels.
    branch_channels
        Output channels of each branch.
    out_channels
        Output channels (3 so that an ImageNet backbone can follow).
    theta
        CDC difference weight (0.7 in HGGEP).
    cross
        Cross-shaped CDC kernel as in the authors' code.
    """

    def __init__(
        self,
        in_channels: int = 3,
        branch_channels: int = 3,
        out_channels: int = 3,
        theta: float = 0.7,
        cross: bool = False,
    ):
        super().__init__()
        self.plain = _conv_bn_act(
            nn.Conv2d(in_channels, branch_channels, 3, stride=2, padding=1, bias=False), branch_channels
        )
        self.cdc = _conv_bn_act(
            CDCConv2d(in_channels, branch_channels, 3, stride=2, theta=theta, cross=cross), branch_channels
        )
        self.mix = _conv_bn_act(nn.Conv2d(2 * branch_channels, out_channels, 1, bias=False), out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``(n, in_channels, H, W)`` to ``(n, out_channels, ceil(H/2), ceil(W/2))``."""
        return self.mix(torch.cat([self.plain(x), self.cdc(x)], dim=1))


class ChannelAttention(nn.Module):
    """CBAM channel attention: ``sigmoid(MLP(avgpool(x)) + MLP(maxpool(x)))``, shape ``(n, c, 1, 1)``.

    The paper's eq. 6 adds the pooled vectors before the MLP and names σ a ReLU; the authors' code and
    the original CBAM apply the shared MLP to each pooled vector and a sigmoid, as done here.
    """

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        hidden = max(channels // reduction, 1)
        self.mlp = nn.Sequential(
            nn.Conv2d(channels, hidden, 1, bias=False), nn.ReLU(), nn.Conv2d(hidden, channels, 1, bias=False)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Channel weights in ``[0, 1]`` for ``x`` of shape ``(n, c, h, w)``."""
        avg = self.mlp(F.adaptive_avg_pool2d(x, 1))
        mx = self.mlp(F.adaptive_max_pool2d(x, 1))
        return torch.sigmoid(avg + mx)


class SpatialAttention(nn.Module):
    """CBAM spatial attention: ``sigmoid(conv_k×k([mean_c(x), max_c(x)]))``, shape ``(n, 1, h, w)``."""

    def __init__(self, kernel_size: int = 7):
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd, got {kernel_size}.")
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Spatial weights in ``[0, 1]`` for ``x`` of shape ``(n, c, h, w)``."""
        pooled = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return torch.sigmoid(self.conv(pooled))


class CBAM(nn.Module):
    """Convolutional block attention module (Woo et al., ECCV 2018; HGGEP eqs. 6–9).

    Channel attention (reduction 16) then spatial attention (7×7 convolution); the output has the
    input's shape.

    Parameters
    ----------
    channels
        Input channels.
    reduction
        Channel reduction of the shared MLP (HGGEP: 16; at least one hidden unit is kept).
    kernel_size
        Spatial-attention kernel (HGGEP: 7).
    """

    def __init__(self, channels: int, reduction: int = 16, kernel_size: int = 7):
        super().__init__()
        self.channel_attention = ChannelAttention(channels, reduction)
        self.spatial_attention = SpatialAttention(kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Reweight ``x`` of shape ``(n, c, h, w)`` by channel, then by position."""
        x = x * self.channel_attention(x)
        return x * self.spatial_attention(x)


def zinb_nll(
    x: torch.Tensor,
    mean: torch.Tensor,
    disp: torch.Tensor,
    pi: torch.Tensor,
    eps: float = 1e-10,
    *,
    size_factors: torch.Tensor | None = None,
    reduction: Literal["mean", "sum", "none"] = "mean",
) -> torch.Tensor:
    r"""Negative log-likelihood of raw counts under a zero-inflated negative binomial.

    With :math:`\mu` = ``mean * size_factors[:, None]``, :math:`\theta` = ``disp`` (NB size / inverse
    dispersion, variance :math:`\mu + \mu^2/\theta`) and :math:`\pi` = ``pi`` (dropout probability):

    .. math::

        -\log p(x) = \begin{cases}
          -\log\left(\pi + (1-\pi)\,(\theta/(\theta+\mu))^{\theta}\right) & x = 0\\
          -\log(1-\pi) + \log\Gamma(\theta) + \log\Gamma(x+1) - \log\Gamma(x+\theta)
            + (\theta+x)\log(1+\mu/\theta) + x(\log\theta - \log\mu) & x > 0
        \end{cases}

    This is the DCA / Hist2ST ``ZINB_loss`` that the HGGEP code uses (mean over all entries).

    Parameters
    ----------
    x
        Raw counts, ``(n, g)``.
    mean
        NB mean before size-factor scaling, ``(n, g)``, positive.
    disp
        NB size :math:`\theta`, ``(n, g)``, positive.
    pi
        Zero-inflation probability in ``[0, 1]``, ``(n, g)``.
    eps
        Added inside logarithms and Gamma functions for stability.
    size_factors
        Per-spot library-size factors ``(n,)`` (e.g. total counts / median total counts); ``None`` = 1.
    reduction
        ``"mean"`` (default), ``"sum"`` or ``"none"`` (element-wise, shape of ``x``).

    Returns
    -------
    The reduced negative log-likelihood.
    """
    if not (x.shape == mean.shape == disp.shape == pi.shape):
        raise ValueError(
            f"x, mean, disp and pi must have the same shape, got {tuple(x.shape)}, {tuple(mean.shape)}, "
            f"{tuple(disp.shape)}, {tuple(pi.shape)}."
        )
    if size_factors is not None:
        if size_factors.ndim != 1 or size_factors.shape[0] != x.shape[0]:
            raise ValueError(
                f"size_factors must have shape ({x.shape[0]},) (one per row of x), got {tuple(size_factors.shape)}."
            )
        mean = mean * size_factors[:, None]
    t1 = torch.lgamma(disp + eps) + torch.lgamma(x + 1.0) - torch.lgamma(x + disp + eps)
    t2 = (disp + x) * torch.log1p(mean / (disp + eps)) + x * (torch.log(disp + eps) - torch.log(mean + eps))
    nb_case = t1 + t2 - torch.log(1.0 - pi + eps)
    # (θ/(θ+μ))^θ = exp(-θ log(1 + μ/θ)): exp of a non-positive number, never overflows, and log1p keeps
    # the exponent exact for large θ (log(θ) - log(θ + μ) cancels to 0 in float32, e.g. θ = 1e4, μ = 0.1).
    zero_nb = torch.exp(-disp * torch.log1p(mean / (disp + eps)))
    zero_case = -torch.log(pi + (1.0 - pi) * zero_nb + eps)
    nll = torch.where(x <= 1e-8, zero_case, nb_case)
    if reduction == "mean":
        return nll.mean()
    if reduction == "sum":
        return nll.sum()
    if reduction == "none":
        return nll
    raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}.")


class ZINBLoss(nn.Module):
    """Module form of :func:`zinb_nll`.

    Parameters
    ----------
    eps
        Stability constant.
    reduction
        ``"mean"``, ``"sum"`` or ``"none"``.
    """

    def __init__(self, eps: float = 1e-10, reduction: Literal["mean", "sum", "none"] = "mean"):
        super().__init__()
        self.eps = eps
        self.reduction = reduction

    def forward(
        self,
        x: torch.Tensor,
        mean: torch.Tensor,
        disp: torch.Tensor,
        pi: torch.Tensor,
        size_factors: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """ZINB negative log-likelihood of counts ``x``; see :func:`zinb_nll`."""
        return zinb_nll(x, mean, disp, pi, self.eps, size_factors=size_factors, reduction=self.reduction)


class CoordEmbedding(nn.Module):
    """Learned embedding of integer array coordinates: ``row_embed(row) + col_embed(col)``.

    Parameters
    ----------
    max_coord
        Number of embedding rows; coordinates must lie in ``[0, max_coord)`` (HGGEP code: 64).
    dim
        Embedding size.
    """

    def __init__(self, max_coord: int, dim: int):
        super().__init__()
        if max_coord < 1:
            raise ValueError(f"max_coord must be positive, got {max_coord}.")
        self.max_coord = int(max_coord)
        self.row_embed = nn.Embedding(max_coord, dim)
        self.col_embed = nn.Embedding(max_coord, dim)

    def forward(self, coords: torch.Tensor) -> torch.Tensor:
        """Embed ``coords`` of shape ``(..., 2)`` (``row, col``, integer) to ``(..., dim)``."""
        if coords.shape[-1] != 2 or coords.is_floating_point() or coords.is_complex():
            raise ValueError(
                f"coords must be an integer tensor of shape (..., 2) (row, col), got dtype {coords.dtype} "
                f"and shape {tuple(coords.shape)}."
            )
        if coords.numel() and (int(coords.min()) < 0 or int(coords.max()) >= self.max_coord):
            raise ValueError(
                f"coords must lie in [0, max_coord={self.max_coord}), got range [{int(coords.min())}, "
                f"{int(coords.max())}]; raise max_coord."
            )
        coords = coords.long()
        return self.row_embed(coords[..., 0]) + self.col_embed(coords[..., 1])


class ViTBlock(nn.TransformerEncoderLayer):
    """Pre-norm transformer block: ``x + MHA(LN(x))`` then ``x + FFN(LN(x))``, batch first.

    ``nn.TransformerEncoderLayer`` with ``norm_first=True`` is the authors' ``attn_block`` (PreNorm
    attention and a 2-layer feed-forward network with GELU). Differences: their attention projects to
    ``heads × 64`` dims without a qkv bias; here each head has ``dim // heads`` dims and biases. The
    paper's eq. 13 writes ReLU in the feed-forward network; the code's GELU is used.

    Parameters
    ----------
    dim
        Token size.
    heads
        Attention heads (paper: 8; authors' code: 16); must divide ``dim``.
    mlp_dim
        Hidden size of the feed-forward network; ``None`` = ``dim`` (as in the code).
    dropout
        Dropout on attention weights and feed-forward outputs.
    """

    def __init__(self, dim: int, heads: int = 8, mlp_dim: int | None = None, dropout: float = 0.0):
        if dim % heads != 0:
            raise ValueError(f"heads ({heads}) must divide dim ({dim}).")
        super().__init__(
            d_model=dim,
            nhead=heads,
            dim_feedforward=dim if mlp_dim is None else mlp_dim,
            dropout=dropout,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )


class SpotTransformer(nn.Module):
    """ViT over the spot tokens of one tissue section (HGGEP eqs. 10–13).

    Every spot is a token; attention runs over all spots passed together, so pass a whole section (or
    a spatially coherent part of it) per call.

    Parameters
    ----------
    dim
        Token size.
    depth
        Number of :class:`ViTBlock` (HGGEP: 4).
    heads
        Attention heads (HGGEP paper: 8).
    mlp_dim
        Feed-forward hidden size; ``None`` = ``dim``.
    dropout
        Dropout inside the blocks.
    max_coord
        Size of the learned row/column embedding added to the tokens (:class:`CoordEmbedding`);
        ``None`` for no embedding (the caller adds positions itself, as :class:`HGGEPModule` does to
        share one embedding between its three transformers).
    """

    def __init__(
        self,
        dim: int,
        depth: int = 4,
        heads: int = 8,
        mlp_dim: int | None = None,
        dropout: float = 0.0,
        max_coord: int | None = 128,
    ):
        super().__init__()
        if depth < 1:
            raise ValueError(f"depth must be at least 1, got {depth}.")
        self.coord_embed = None if max_coord is None else CoordEmbedding(max_coord, dim)
        self.blocks = nn.ModuleList([ViTBlock(dim, heads, mlp_dim, dropout) for _ in range(depth)])

    def forward(self, x: torch.Tensor, coords: torch.Tensor | None = None) -> torch.Tensor:
        """Transform tokens ``x`` of shape ``(n, dim)`` or ``(b, n, dim)``; ``coords`` ``(…, n, 2)`` int."""
        squeeze = x.ndim == 2
        if squeeze:
            x = x.unsqueeze(0)
        if x.ndim != 3:
            raise ValueError(f"x must have shape (n, dim) or (b, n, dim), got {tuple(x.shape)}.")
        if self.coord_embed is not None:
            if coords is None:
                raise ValueError("coords is required: this SpotTransformer has a coordinate embedding.")
            if coords.shape[-2] != x.shape[1]:
                raise ValueError(f"coords must have one row per token ({x.shape[1]}), got {tuple(coords.shape)}.")
            x = x + self.coord_embed(coords)
        for block in self.blocks:
            x = block(x)
        return x.squeeze(0) if squeeze else x
