"""Expression heads on frozen per-spot embeddings: HGGEP's spatial head and an MLP (torch only).

HEST-style training: an encoder (hand-crafted features, an SSL-pretrained CNN, a foundation model) is run once
over the spots (``scst.tl.embed_patches`` → ``obsm``), and only a head is trained on the embeddings. That is fast
enough on a CPU to train as long as the papers do, and isolates what the head adds over ridge on the same input.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ._layers import SpotTransformer, zinb_nll

__all__ = ["ExpressionPrograms", "MLPHeadModule", "SpatialHeadModule"]


def _check_x(x: Any, in_dim: int) -> int:
    if not isinstance(x, torch.Tensor) or x.ndim != 2 or x.shape[1] != in_dim:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"x must be a (n, {in_dim}) float tensor of spot embeddings, got {shape}.")
    if x.shape[0] == 0:
        raise ValueError("x is empty; pass at least one spot.")
    return x.shape[0]


def _standardised_mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    if target.shape != pred.shape:
        raise ValueError(f"batch['target'] must have shape {tuple(pred.shape)}, got {tuple(target.shape)}.")
    return F.mse_loss(pred.float(), target.float())


def _linear_path(in_dim: int, n_genes: int, enabled: bool) -> nn.Linear | None:
    """A frozen linear map from the embedding to the panel (set to a closed-form ridge fit by the model class)."""
    if not enabled:
        return None
    lin = nn.Linear(in_dim, n_genes)
    nn.init.zeros_(lin.weight)
    nn.init.zeros_(lin.bias)
    lin.requires_grad_(False)
    return lin


class ExpressionPrograms(nn.Module):
    r"""Reduced-rank output: ``k`` programme scores (and an optional linear path) → genes through frozen axes.

    With axes :math:`A` ``(n_genes, k)`` (orthonormal columns), per-gene centre :math:`m` and scale :math:`s`,
    scores :math:`u` and a linear-path prediction :math:`b`:

    .. math:: \mathrm{pred} = m + \left(u A^\top + \tfrac{b - m}{s} A A^\top\right) \odot s

    i.e. the linear path is projected onto the programmes in z-score units. The buffers (saved with the module)
    are set by :class:`scst.models.MLPExpression` / :class:`scst.models.HGGEPHead` to the leading principal axes of
    the training spots' expression z-scores and their mean and sd (``n_programs``); until then the axes are a
    random orthonormal basis, centre 0 and scale 1. Zero columns switch a score off, so a module built for ``k``
    programmes can use fewer (``n_programs="auto"``).
    """

    def __init__(self, n_genes: int, k: int):
        super().__init__()
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= n_genes:
            raise ValueError(f"n_programs must be an int in [1, n_genes={n_genes}], got {k!r}.")
        self.k = k
        self.register_buffer("axes", torch.linalg.qr(torch.randn(n_genes, k))[0])
        self.register_buffer("center", torch.zeros(n_genes))
        self.register_buffer("scale", torch.ones(n_genes))

    def set_axes(self, axes: Any, center: Any, scale: Any) -> None:
        """Copy ``(n_genes, j)`` orthonormal axes (``j <= k``; the other columns become zero), centre and scale."""
        n = self.axes.shape[0]
        axes, center, scale = (torch.as_tensor(a, dtype=self.axes.dtype) for a in (axes, center, scale))
        if axes.ndim != 2 or axes.shape[0] != n or not 1 <= axes.shape[1] <= self.k:
            raise ValueError(f"axes must have shape ({n}, j) with 1 <= j <= {self.k}, got {tuple(axes.shape)}.")
        if center.shape != (n,) or scale.shape != (n,) or not bool((scale > 0).all()):
            raise ValueError(f"center and scale must have shape ({n},), scale positive.")
        with torch.no_grad():
            self.axes.zero_()
            self.axes[:, : axes.shape[1]] = axes.to(self.axes.device)
            self.center.copy_(center)
            self.scale.copy_(scale)

    def forward(self, scores: torch.Tensor, base: torch.Tensor | None = None) -> torch.Tensor:
        """``(n, k)`` programme scores (plus the projected ``(n, n_genes)`` linear path ``base``) → ``(n, n_genes)``."""
        z = scores @ self.axes.T
        if base is not None:
            z = z + ((base - self.center) / self.scale) @ self.axes @ self.axes.T
        return self.center + z * self.scale


def _output(
    hidden: int, n_genes: int, n_programs: int | None, zero: bool
) -> tuple[nn.Linear, ExpressionPrograms | None]:
    """The output layer (``hidden → n_genes``, or ``hidden → n_programs`` plus the programme axes)."""
    programs = None if n_programs is None else ExpressionPrograms(n_genes, n_programs)
    lin = nn.Linear(hidden, n_genes if programs is None else programs.k)
    if zero:
        nn.init.zeros_(lin.weight)
        nn.init.zeros_(lin.bias)
    return lin, programs


def _combine(out: torch.Tensor, x: torch.Tensor, skip: nn.Linear | None, programs: ExpressionPrograms | None):
    """Network output plus the linear path, mapped to genes through the programmes when there are any."""
    if programs is not None:
        return programs(out, None if skip is None else skip(x))
    return out if skip is None else out + skip(x)


class MLPHeadModule(nn.Module):
    """Spot embedding → expression: ``Dropout → Linear → GELU → Dropout → Linear`` (one hidden layer).

    Trained on per-gene standardised targets (``target`` = z-scores over the training spots, see
    :class:`scst.models.MLPExpression`), so every gene weighs the same in the MSE.

    Parameters
    ----------
    in_dim
        Embedding size.
    n_genes
        Number of predicted genes.
    hidden
        Hidden units.
    dropout
        Dropout on the input and on the hidden layer.
    ridge_skip
        Add a frozen linear path ``skip(x)`` (set by :class:`scst.models.MLPExpression` to the closed-form ridge
        fit on the training sections) and start the MLP's output layer at zero: the MLP learns the residual of ridge.
    n_programs
        Reduced-rank output: the last layer predicts ``n_programs`` scores that :class:`ExpressionPrograms` maps to
        the genes (the linear path is projected onto the same programmes). None: one output per gene.
    """

    def __init__(
        self,
        in_dim: int,
        n_genes: int,
        hidden: int = 256,
        dropout: float = 0.25,
        ridge_skip: bool = False,
        n_programs: int | None = None,
    ):
        super().__init__()
        for name, value in [("in_dim", in_dim), ("n_genes", n_genes), ("hidden", hidden)]:
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}.")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {dropout}.")
        self.in_dim = in_dim
        first = nn.Linear(in_dim, hidden)  # built before the output layer: same initialisation as without programmes
        last, self.programs = _output(hidden, n_genes, n_programs, zero=ridge_skip)
        self.net = nn.Sequential(nn.Dropout(dropout), first, nn.GELU(), nn.Dropout(dropout), last)
        self.skip = _linear_path(in_dim, n_genes, ridge_skip)

    def forward(self, x: torch.Tensor, **_: Any) -> dict[str, torch.Tensor]:
        """``pred`` ``(n, n_genes)`` (standardised units) for embeddings ``x`` ``(n, in_dim)``."""
        _check_x(x, self.in_dim)
        return {"pred": _combine(self.net(x), x, self.skip, self.programs)}

    def loss(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """MSE between ``pred`` and the standardised ``batch["target"]``."""
        out = self(batch["x"])
        mse = _standardised_mse(out["pred"], batch["target"])
        return {"loss": mse, "mse": mse}


class SpatialHeadModule(nn.Module):
    r"""HGGEP's spatial head (ViT over spots, hypergraph HAM, LSTM, MSE + ZINB) on frozen spot embeddings.

    For the ``n`` spots of one section (or a spatial window of it):

    1. token :math:`z_0 = \mathrm{LN}(W x)` (a linear projection of each spot's embedding);
    2. :math:`z_1 =` :class:`~scst.nn.SpotTransformer` (``vit_depth`` blocks) over the spot tokens;
    3. HAM: two ``HypergraphConv`` layers (``dim → hg_hidden → dim``, ReLU, LayerNorm, dropout, residual) on
       :math:`z_1` over the given hyperedges (from :func:`scst.pp.hypergraph`, built once on the embeddings, not
       rebuilt in every forward pass as in :class:`~scst.nn.HGGEPModule`);
    4. LSTM over the steps :math:`[z_0, z_1, z_{HAM}]`, each layer-normalised, mean over steps → ``h``;
    5. ``LayerNorm + Linear`` → ``pred`` (with ``n_programs``: → programme scores → genes); ZINB heads on ``h``
       as in :class:`~scst.nn.HGGEPModule`;
    6. with ``ridge_skip``: ``pred += skip(x)``, a frozen linear path from the embedding that
       :class:`scst.models.HGGEPHead` sets to the closed-form ridge fit on the training sections (the output layer
       of step 5 starts at zero, so training starts from ridge and the network learns its residual).

    Differences from the image network: one token per spot (the embedding) instead of three CNN stages, and no
    learned array-coordinate embedding (the sections are not registered to each other, so absolute array
    positions carry no transferable information; the spatial context comes from the hypergraph and the
    attention over the window's spots).

    Loss: ``MSE(pred, target) + zinb_weight * ZINB-NLL`` with ``target`` standardised per gene (z-scores over the
    training spots): every gene weighs the same in the MSE, and the MSE is on the same scale as the ZINB term.

    Parameters
    ----------
    in_dim
        Embedding size.
    n_genes
        Number of predicted genes.
    dim
        Token size (a multiple of ``vit_heads``).
    vit_depth, vit_heads
        Transformer blocks and heads.
    hg_hidden
        Hidden size between the two ``HypergraphConv`` layers.
    lstm_layers, lstm_hidden
        LSTM layers and hidden size.
    dropout
        Dropout in the transformer, HAM and on the input embedding.
    zinb_weight
        Weight of the ZINB term.
    use_ham, use_zinb
        Ablation switches (``use_ham=False``: the LSTM sees ``[z_0, z_1]``).
    ridge_skip
        Add the frozen linear path of step 6 (not in the paper; ``False`` is the paper's head).
    n_programs
        Reduced-rank output (not in the paper): the gene head predicts ``n_programs`` scores that
        :class:`ExpressionPrograms` maps to the genes, and the linear path is projected onto the same programmes.
        None: one output per gene, as in the paper.
    """

    def __init__(
        self,
        in_dim: int,
        n_genes: int,
        dim: int = 128,
        vit_depth: int = 1,
        vit_heads: int = 8,
        hg_hidden: int = 64,
        lstm_layers: int = 1,
        lstm_hidden: int = 128,
        dropout: float = 0.2,
        zinb_weight: float = 0.25,
        use_ham: bool = True,
        use_zinb: bool = True,
        ridge_skip: bool = False,
        n_programs: int | None = None,
    ):
        super().__init__()
        for name, value in [("in_dim", in_dim), ("n_genes", n_genes), ("dim", dim), ("vit_depth", vit_depth),
                            ("vit_heads", vit_heads), ("hg_hidden", hg_hidden), ("lstm_layers", lstm_layers),
                            ("lstm_hidden", lstm_hidden)]:  # fmt: skip
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}.")
        if dim % vit_heads:
            raise ValueError(f"vit_heads ({vit_heads}) must divide dim ({dim}).")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {dropout}.")
        if zinb_weight < 0:
            raise ValueError(f"zinb_weight must be non-negative, got {zinb_weight}.")
        from ._hggep import _HypergraphAssociation

        self.in_dim, self.use_ham, self.use_zinb, self.zinb_weight = in_dim, use_ham, use_zinb, float(zinb_weight)
        self.input = nn.Sequential(nn.Dropout(dropout), nn.Linear(in_dim, dim), nn.LayerNorm(dim))
        self.vit = SpotTransformer(dim, vit_depth, vit_heads, mlp_dim=dim, dropout=dropout, max_coord=None)
        self.ham = _HypergraphAssociation(dim, hg_hidden, dropout) if use_ham else None
        n_steps = 3 if use_ham else 2
        self.step_norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(n_steps))
        self.lstm = nn.LSTM(dim, lstm_hidden, lstm_layers)
        last, self.programs = _output(lstm_hidden, n_genes, n_programs, zero=ridge_skip)
        self.gene_head = nn.Sequential(nn.LayerNorm(lstm_hidden), last)
        self.skip = _linear_path(in_dim, n_genes, ridge_skip)
        if use_zinb:
            self.zinb_mean = nn.Linear(lstm_hidden, n_genes)
            self.zinb_disp = nn.Linear(lstm_hidden, n_genes)
            self.zinb_pi = nn.Linear(lstm_hidden, n_genes)
        else:
            self.zinb_mean = self.zinb_disp = self.zinb_pi = None

    def forward(self, x: torch.Tensor, hyperedge_index: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Predict standardised expression for the spots of one section or window.

        Parameters
        ----------
        x
            ``(n, in_dim)`` spot embeddings.
        hyperedge_index
            ``(2, m)`` long tensor ``[spot, hyperedge]`` with hyperedges numbered ``0..n-1`` by their centre spot
            (PyG's ``HypergraphConv`` convention); required with ``use_ham``.

        Returns
        -------
        ``pred`` ``(n, n_genes)``, ``hidden`` ``(n, lstm_hidden)`` and with ``use_zinb`` ``zinb_mean``,
        ``zinb_disp``, ``zinb_pi``.
        """
        n = _check_x(x, self.in_dim)
        z0 = self.input(x)
        z1 = self.vit(z0)
        steps = [z0, z1]
        if self.ham is not None:
            if (
                not isinstance(hyperedge_index, torch.Tensor)
                or hyperedge_index.ndim != 2
                or hyperedge_index.shape[0] != 2
            ):
                raise ValueError("hyperedge_index: a (2, m) long tensor is required when use_ham=True.")
            if hyperedge_index.numel() and int(hyperedge_index.max()) >= n:
                raise ValueError(f"hyperedge_index refers to spots/hyperedges >= n = {n}.")
            steps.append(self.ham(z1, hyperedge_index))
        steps = [norm(s) for norm, s in zip(self.step_norms, steps)]
        with torch.autocast(x.device.type, enabled=False):
            seq, _ = self.lstm(torch.stack(steps, 0).to(self.lstm.weight_ih_l0.dtype))  # float32 under autocast
        h = seq.mean(0)
        out = {"pred": _combine(self.gene_head(h), x, self.skip, self.programs), "hidden": h}
        if self.use_zinb:
            out["zinb_mean"] = torch.exp(self.zinb_mean(h).clamp(-11.5129, 13.8155))
            out["zinb_disp"] = F.softplus(self.zinb_disp(h)).clamp(1e-4, 1e4)
            out["zinb_pi"] = torch.sigmoid(self.zinb_pi(h))
        return out

    def loss(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``loss = mse + zinb_weight * zinb`` on a batch.

        The batch holds ``x``, ``hyperedge_index``, ``target`` and, with ``use_zinb``, ``counts`` and ``size_factors``.
        """
        out = self(batch["x"], batch.get("hyperedge_index"))
        mse = _standardised_mse(out["pred"], batch["target"])
        if self.use_zinb:
            zinb = zinb_nll(
                batch["counts"].float(), out["zinb_mean"].float(), out["zinb_disp"].float(), out["zinb_pi"].float(),
                size_factors=batch["size_factors"].float(),
            )  # fmt: skip
        else:
            zinb = mse.new_zeros(())
        return {"loss": mse + self.zinb_weight * zinb, "mse": mse, "zinb": zinb}
