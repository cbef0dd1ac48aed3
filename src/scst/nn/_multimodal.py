"""Histology ↔ RNA multimodal network (Berjaoui, Sanchez et al. 2024), torch only.

* RNA encoder (§2.2): the expression vector is cut into gene groups; each group's sub-vector is projected to
  ``dim`` (one token per group) and a transformer runs over ``[CLS] + group tokens``. Pre-training: one token per
  sample is replaced by a mask token and a decoder reconstructs that group's genes from the CLS and the other
  tokens (eq. 2), plus a pairwise contrastive loss where samples of the same group (lineage) are positives (eqs.
  3–4, temperature ``tau``).
* Image encoder (§2.3): a ViT over ``sub_patch`` × ``sub_patch`` sub-patches of each patch (CLS output), or a
  torchvision/timm backbone, or an MLP on precomputed patch embeddings; pre-trained with a triplet loss (eq. 6).
* Multimodal (§2.4, ALBEF-style): linear projections to a shared space and a symmetric image–RNA contrastive loss
  (eqs. 7–8, temperature ``tau_c``), optionally against a queue of earlier batches' embeddings from momentum
  encoders (ALBEF/MoCo: ``momentum``, ``queue_size``); a cross-attention fusion encoder (RNA tokens attend to image
  tokens) with a matching head trained on hard negatives (sampled from the contrastive similarities, as in ALBEF)
  and an RNA decoder head that reconstructs the masked group from the fused tokens.

``MultimodalModule.loss(batch)`` dispatches on :attr:`MultimodalModule.stage` (``"pretrain"`` or ``"joint"``);
loss weights of 0 switch terms off.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._backbones import build_backbone
from ._layers import ViTBlock
from ._train_step import imagenet_normalize

__all__ = ["MultimodalModule", "LOSS_TERMS", "supervised_contrastive", "triplet_loss"]

#: Loss terms and their stage.
LOSS_TERMS = {
    "rna_mae": "pretrain",
    "rna_con": "pretrain",
    "img_triplet": "pretrain",
    "itc": "joint",
    "itm": "joint",
    "rna_rec": "joint",
}


def supervised_contrastive(z: Tensor, labels: Tensor, tau: float) -> Tensor:
    """Pairwise contrastive loss of eqs. 3–4: ``-log softmax_j(z_i·z_j/τ)`` averaged over the positives of ``i``.

    ``z`` is L2-normalised here; positives are the other samples with the same label; samples without a positive
    in the batch do not contribute. Returns 0 (with a graph) when no sample has a positive.
    """
    z = F.normalize(z, dim=-1)
    n = len(z)
    sim = z @ z.T / tau
    eye = torch.eye(n, dtype=torch.bool, device=z.device)
    sim = sim.masked_fill(eye, float("-inf"))
    logp = sim - torch.logsumexp(sim, dim=1, keepdim=True)
    pos = (labels[:, None] == labels[None, :]) & ~eye
    has = pos.any(1)
    if not has.any():
        return z.sum() * 0.0
    logp = logp.masked_fill(~pos, 0.0)
    return -(logp.sum(1)[has] / pos.sum(1)[has]).mean()


def triplet_loss(z: Tensor, labels: Tensor, margin: float) -> Tensor:
    """Triplet loss of eq. 6 on L2-normalised embeddings, one random positive and negative per anchor.

    Anchors need a positive (same label, another sample) and a negative (other label) in the batch.
    """
    z = F.normalize(z, dim=-1)
    n = len(z)
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(n, dtype=torch.bool, device=z.device)
    pos, neg = same & ~eye, ~same
    ok = pos.any(1) & neg.any(1)
    if not ok.any():
        return z.sum() * 0.0
    r = torch.rand(n, n, device=z.device)
    p = torch.where(pos, r, -1.0).argmax(1)
    q = torch.where(neg, r, -1.0).argmax(1)
    d_pos = (z - z[p]).pow(2).sum(1)
    d_neg = (z - z[q]).pow(2).sum(1)
    return F.relu(d_pos - d_neg + margin)[ok].mean()


class GroupTokenizer(nn.Module):
    """One token per gene group: group ``g``'s genes → ``Linear(n_g, dim)`` (+ a learned group embedding)."""

    def __init__(self, group_of_gene: Sequence[int], dim: int):
        super().__init__()
        groups = torch.as_tensor(list(group_of_gene), dtype=torch.long)
        if groups.ndim != 1 or len(groups) == 0 or int(groups.min()) < 0:
            raise ValueError("group_of_gene: expected a non-empty list of group ids >= 0, one per gene.")
        self.n_groups = int(groups.max()) + 1
        sizes = torch.bincount(groups, minlength=self.n_groups)
        if (sizes == 0).any():
            raise ValueError(f"group_of_gene: groups {torch.nonzero(sizes == 0).ravel().tolist()} have no gene.")
        self.register_buffer("order", torch.argsort(groups, stable=True), persistent=False)
        self.sizes = sizes.tolist()
        self.proj = nn.ModuleList([nn.Linear(s, dim) for s in self.sizes])
        self.group_embed = nn.Parameter(torch.zeros(self.n_groups, dim))
        nn.init.trunc_normal_(self.group_embed, std=0.02)

    def split(self, x: Tensor) -> list[Tensor]:
        """Per-group sub-vectors of ``x`` ``(B, n_genes)``."""
        return list(torch.split(x[:, self.order], self.sizes, dim=1))

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        return torch.stack([p(s) for p, s in zip(self.proj, self.split(x))], 1) + self.group_embed


class RNAEncoder(nn.Module):
    """Transformer over ``[CLS] + group tokens``; ``mask_idx`` (B,) replaces one token per sample by a mask token."""

    def __init__(self, group_of_gene: Sequence[int], dim: int, depth: int, heads: int, dropout: float):
        super().__init__()
        self.tokenizer = GroupTokenizer(group_of_gene, dim)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        nn.init.trunc_normal_(self.cls, std=0.02)
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        self.blocks = nn.Sequential(*[ViTBlock(dim, heads, 2 * dim, dropout) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor, mask_idx: Tensor | None = None) -> Tensor:
        """Tokens ``(B, 1 + n_groups, dim)``; position 0 is the CLS token."""
        tok = self.tokenizer(x)
        if mask_idx is not None:
            sel = F.one_hot(mask_idx, tok.shape[1]).to(tok.dtype)[..., None]
            tok = tok * (1 - sel) + (self.mask_token + self.tokenizer.group_embed[None]) * sel
        tok = torch.cat([self.cls.expand(len(tok), -1, -1), tok], 1)
        return self.norm(self.blocks(tok))


class GroupDecoder(nn.Module):
    """Reconstruct each group's genes from its token (one transformer block, then ``Linear(dim, n_g)``)."""

    def __init__(self, sizes: Sequence[int], dim: int, heads: int, depth: int = 1):
        super().__init__()
        self.blocks = nn.Sequential(*[ViTBlock(dim, heads, 2 * dim, 0.0) for _ in range(depth)])
        self.heads = nn.ModuleList([nn.Linear(dim, s) for s in sizes])

    def forward(self, tokens: Tensor) -> list[Tensor]:
        """``tokens`` ``(B, 1 + n_groups, dim)`` → per-group reconstructions."""
        h = self.blocks(tokens)[:, 1:]
        return [head(h[:, g]) for g, head in enumerate(self.heads)]


class PatchViT(nn.Module):
    """ViT on ``sub_patch`` × ``sub_patch`` sub-patches of ``(B, 3, px, px)`` images; tokens with CLS first."""

    def __init__(self, px: int, sub_patch: int, dim: int, depth: int, heads: int, dropout: float):
        super().__init__()
        if px % sub_patch:
            raise ValueError(f"sub_patch ({sub_patch}) must divide the patch size ({px}).")
        self.embed = nn.Conv2d(3, dim, sub_patch, stride=sub_patch)
        n = (px // sub_patch) ** 2
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = nn.Parameter(torch.zeros(1, n + 1, dim))
        nn.init.trunc_normal_(self.pos, std=0.02)
        nn.init.trunc_normal_(self.cls, std=0.02)
        self.blocks = nn.Sequential(*[ViTBlock(dim, heads, 2 * dim, dropout) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        t = self.embed(x).flatten(2).transpose(1, 2)
        t = torch.cat([self.cls.expand(len(t), -1, -1), t], 1) + self.pos
        return self.norm(self.blocks(t))


class _VectorEncoder(nn.Module):
    """A network giving one vector per image (backbone or MLP), returned as a single token ``(B, 1, dim)``."""

    def __init__(self, net: nn.Module, n_features: int, dim: int):
        super().__init__()
        self.net = net
        self.out = nn.Sequential(nn.LayerNorm(n_features), nn.Linear(n_features, dim))

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        return self.out(self.net(x))[:, None]


class FusionEncoder(nn.Module):
    """ALBEF's fusion encoder: RNA tokens self-attend, then cross-attend to image tokens (pre-norm blocks)."""

    def __init__(self, dim: int, depth: int, heads: int, dropout: float):
        super().__init__()
        self.layers = nn.ModuleList(
            [
                nn.TransformerDecoderLayer(
                    dim, heads, 2 * dim, dropout, activation="gelu", batch_first=True, norm_first=True
                )
                for _ in range(depth)
            ]
        )
        self.norm = nn.LayerNorm(dim)

    def forward(self, rna_tokens: Tensor, img_tokens: Tensor) -> Tensor:  # noqa: D102
        h = rna_tokens
        for layer in self.layers:
            h = layer(h, img_tokens)
        return self.norm(h)


@contextlib.contextmanager
def _eval_mode(modules: list[nn.Module]) -> Iterator[None]:
    """``modules`` in eval mode inside the block, each back in its own mode after."""
    modes = [m.training for m in modules]
    for m in modules:
        m.eval()
    try:
        yield
    finally:
        for m, mode in zip(modules, modes):
            m.train(mode)


class MultimodalModule(nn.Module):
    """RNA encoder, image encoder, shared projections, fusion encoder and heads, with all losses.

    Parameters
    ----------
    group_of_gene
        Group id (0..T-1) of each panel gene, in panel order.
    dim
        Token size of both encoders and the fusion encoder.
    rna_depth, image_depth, fusion_depth, heads, dropout
        Transformer sizes.
    image_encoder
        ``"vit"`` (the paper's), ``"mlp"`` (on precomputed patch embeddings of width ``image_features``) or a
        torchvision/timm backbone name (randomly initialised; the model class loads weights).
    image_px, sub_patch
        Patch edge (px) given to the ViT and the sub-patch edge (paper: 256 and 16).
    image_features
        Input width for ``image_encoder="mlp"``.
    embed_dim
        Shared space of the image–RNA contrastive loss.
    tau, tau_c
        Temperatures of the RNA contrastive loss (eq. 3) and the image–RNA contrastive loss (eq. 7).
    margin
        Triplet margin ``d`` (eq. 6), on unit vectors.
    weights
        Loss weights by term (:data:`LOSS_TERMS`); 0 switches a term off.
    unimodal_in_joint
        Keep the pre-training losses (same weights) during the joint stage.
    freeze_encoders
        During the joint stage, keep the RNA and image encoders fixed (the paper's "frozen encoders" row).
    match_on
        ``"sample"``: an image–RNA pair matches iff the RNA is the patch's own sample (contrastive positives and
        matching labels); ``"group"``: iff both come from the same group (lineage-level weak pairs).
    rna_pcs
        Denoise the RNA input: each sample's expression is replaced by its projection on this many principal axes of
        the training samples (``rna_center``/``rna_basis`` buffers, set by :class:`scst.models.MultimodalST` from the
        training data) before standardisation. Spot expression carries counting noise that no image can predict;
        ``None`` (the paper's, on bulk RNA): the measured expression. The masked-autoencoder target is the same
        projected input, so with at least ``rna_pcs`` visible genes the masked group is a linear function of the
        visible ones (see :class:`scst.models.MultimodalST`).
    momentum
        ALBEF's momentum encoders: copies of both encoders and projections, updated as an exponential moving average
        of the trained ones (``θ_m ← momentum·θ_m + (1 − momentum)·θ``; ALBEF: 0.995), copied from them at the first
        joint training step. ``None``: off (the paper's in-batch contrastive loss).
    queue_size
        With ``momentum``: the image–RNA contrastive loss also contrasts each sample with the momentum embeddings of
        the last ``queue_size`` paired samples of earlier batches (MoCo/ALBEF queue; more negatives than one batch).
        Queue entries of the same sample (``match_on="sample"``) or group (``"group"``) count as positives.
        Training only: validation losses stay in-batch, so epochs remain comparable.
    """

    def __init__(
        self,
        group_of_gene: Sequence[int],
        dim: int = 64,
        rna_depth: int = 2,
        image_depth: int = 2,
        fusion_depth: int = 1,
        heads: int = 4,
        dropout: float = 0.1,
        image_encoder: str = "vit",
        image_px: int = 256,
        sub_patch: int = 16,
        image_features: int | None = None,
        embed_dim: int = 64,
        tau: float = 0.1,
        tau_c: float = 0.07,
        margin: float = 0.5,
        weights: Mapping[str, float] | None = None,
        unimodal_in_joint: bool = False,
        freeze_encoders: bool = False,
        match_on: str = "sample",
        momentum: float | None = None,
        queue_size: int = 0,
        rna_pcs: int | None = None,
    ):
        super().__init__()
        if rna_pcs is not None and (
            isinstance(rna_pcs, bool) or not (isinstance(rna_pcs, int) and 0 < rna_pcs < len(group_of_gene))
        ):
            raise ValueError(f"rna_pcs: expected None or an integer in [1, {len(group_of_gene)}), got {rna_pcs!r}.")
        if momentum is not None and not 0.0 <= float(momentum) < 1.0:
            raise ValueError(f"momentum: expected None or a number in [0, 1), got {momentum!r}.")
        if int(queue_size) < 0 or (queue_size and momentum is None):
            raise ValueError(f"queue_size: expected 0, or a positive size with `momentum` set, got {queue_size!r}.")
        unknown = set(weights or {}) - set(LOSS_TERMS)
        if unknown:
            raise ValueError(f"weights: unknown loss terms {sorted(unknown)}; expected some of {list(LOSS_TERMS)}.")
        if match_on not in ("sample", "group"):
            raise ValueError(f"match_on: expected 'sample' or 'group', got {match_on!r}.")
        self.weights = {k: 1.0 for k in LOSS_TERMS} | {k: float(v) for k, v in (weights or {}).items()}
        self.tau, self.tau_c, self.margin = float(tau), float(tau_c), float(margin)
        self.unimodal_in_joint, self.freeze_encoders, self.match_on = unimodal_in_joint, freeze_encoders, match_on
        self.stage = "pretrain"
        n_genes = len(group_of_gene)
        self.register_buffer("gene_mean", torch.zeros(n_genes))
        self.register_buffer("gene_std", torch.ones(n_genes))
        self.rna_pcs = rna_pcs
        if rna_pcs is not None:
            self.register_buffer("rna_center", torch.zeros(n_genes))
            self.register_buffer("rna_basis", torch.zeros(n_genes, rna_pcs))
        self.rna_encoder = RNAEncoder(group_of_gene, dim, rna_depth, heads, dropout)
        sizes = self.rna_encoder.tokenizer.sizes
        self.n_groups = len(sizes)
        self.mae_decoder = GroupDecoder(sizes, dim, heads)
        self.image_kind = image_encoder
        if image_encoder == "vit":
            self.image_encoder: nn.Module = PatchViT(image_px, sub_patch, dim, image_depth, heads, dropout)
        elif image_encoder == "mlp":
            if not image_features:
                raise ValueError("image_features: needed (input width) for image_encoder='mlp'.")
            mlp = nn.Sequential(nn.Linear(image_features, 2 * dim), nn.GELU(), nn.Dropout(dropout))
            self.image_encoder = _VectorEncoder(mlp, 2 * dim, dim)
        else:
            # Random here: the model class loads its weights (and warns without any), or a checkpoint does.
            net, n_feat = build_backbone(image_encoder, None, warn_random=False)
            self.image_encoder = _VectorEncoder(net, n_feat, dim)
        self.rna_proj = nn.Linear(dim, embed_dim)
        self.img_proj = nn.Linear(dim, embed_dim)
        self.fusion = FusionEncoder(dim, fusion_depth, heads, dropout)
        self.itm_head = nn.Linear(dim, 2)
        self.rna_decoder = nn.ModuleList([nn.Linear(dim, s) for s in sizes])
        self.momentum, self.queue_size = (None if momentum is None else float(momentum)), int(queue_size)
        if self.momentum is not None:
            self.momentum_encoders = nn.ModuleDict(
                {k: copy.deepcopy(getattr(self, k)) for k in ("rna_encoder", "image_encoder", "rna_proj", "img_proj")}
            )
            self.momentum_encoders.requires_grad_(False)
            self.register_buffer("momentum_ready", torch.zeros((), dtype=torch.bool))
            q = self.queue_size
            self.register_buffer("img_queue", torch.zeros(q, embed_dim))
            self.register_buffer("rna_queue", torch.zeros(q, embed_dim))
            self.register_buffer("key_queue", torch.zeros(q, dtype=torch.long))
            self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))
            self.register_buffer("queue_len", torch.zeros((), dtype=torch.long))

    # ------------------------------------------------------------------ encoders
    def denoise_rna(self, x: Tensor) -> Tensor:
        """Expression projected on the ``rna_pcs`` training axes (``x`` itself when ``rna_pcs`` is None)."""
        if self.rna_pcs is None:
            return x
        return self.rna_center + ((x - self.rna_center) @ self.rna_basis) @ self.rna_basis.T

    def _rna_in(self, x: Tensor) -> Tensor:
        return (self.denoise_rna(x) - self.gene_mean) / self.gene_std

    def _img_in(self, img: Tensor) -> Tensor:
        # The encoder's dtype (float32 unless the module was cast, e.g. .double()), not a fixed .float().
        dtype = next(self.image_encoder.parameters()).dtype
        if self.image_kind == "mlp":
            return img.to(dtype)
        if img.dtype == torch.uint8:
            img = img.to(dtype).div(255.0)
        return imagenet_normalize(img.to(dtype))  # float patches too (a cast module met float32 input)

    def encode_rna(self, x: Tensor, mask_idx: Tensor | None = None) -> Tensor:
        """RNA tokens ``(B, 1 + T, dim)`` from expression ``(B, n_genes)`` (log1p-normalised)."""
        return self.rna_encoder(self._rna_in(x), mask_idx)

    def encode_image(self, img: Tensor) -> Tensor:
        """Image tokens ``(B, n_tokens, dim)`` (CLS first) from uint8/float patches or embeddings."""
        return self.image_encoder(self._img_in(img))

    def embed_rna(self, x: Tensor) -> Tensor:
        """Unit vectors in the shared space ``(B, embed_dim)``."""
        return F.normalize(self.rna_proj(self.encode_rna(x)[:, 0]), dim=-1)

    def embed_image(self, img: Tensor) -> Tensor:
        """Unit vectors in the shared space ``(B, embed_dim)``."""
        return F.normalize(self.img_proj(self.encode_image(img)[:, 0]), dim=-1)

    def match_logit(self, rna_tokens: Tensor, img_tokens: Tensor) -> Tensor:
        """Matching score (logit of "match") of paired rows."""
        out = self.itm_head(self.fusion(rna_tokens, img_tokens)[:, 0])
        return out[:, 1] - out[:, 0]

    # ------------------------------------------------------------------ losses
    def _mae(self, x: Tensor, tokens: Tensor, mask_idx: Tensor, decoder: Any) -> Tensor:
        """MSE on the masked group's (standardised) genes."""
        if isinstance(decoder, nn.ModuleList):
            rec = [h(tokens[:, g + 1]) for g, h in enumerate(decoder)]
        else:
            rec = decoder(tokens)
        target = self.rna_encoder.tokenizer.split(self._rna_in(x))
        err = torch.stack([(r - t).pow(2).mean(1) for r, t in zip(rec, target)], 1)  # (B, T)
        return err.gather(1, mask_idx[:, None]).mean()

    def _weight(self, term: str) -> float:
        if LOSS_TERMS[term] == self.stage or (self.stage == "joint" and self.unimodal_in_joint):
            return self.weights[term]
        return 0.0

    def loss(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Losses of the current :attr:`stage` on a batch from :class:`scst.models.MultimodalST`.

        ``batch``: ``rna`` (B, n_genes), ``img`` (B, 3, px, px) uint8/float or (B, F), ``has_rna``/``has_img``
        (B,) bool, ``rna_id`` (B,) long (index of the RNA sample, -1 = none), ``rna_group``/``img_group`` (B,) long.
        """
        out: dict[str, Tensor] = {}
        has_rna, has_img = batch["has_rna"], batch["has_img"]
        device = has_rna.device
        total = torch.zeros((), device=device)
        w = {k: self._weight(k) for k in LOSS_TERMS}
        need_rna = has_rna.any() and any(w[k] for k in ("rna_mae", "rna_con", "itc", "itm", "rna_rec"))
        need_img = has_img.any() and any(w[k] for k in ("img_triplet", "itc", "itm", "rna_rec"))
        frozen = self.stage == "joint" and self.freeze_encoders
        rna_x = batch["rna"][has_rna]
        with (
            torch.set_grad_enabled(torch.is_grad_enabled() and not frozen),
            _eval_mode([self.rna_encoder, self.image_encoder] if frozen else []),
        ):  # frozen: no gradients, and no dropout or BatchNorm statistics updates either (the encoders stay fixed)
            rna_tok = self.encode_rna(rna_x) if need_rna and (w["rna_con"] or w["itc"] or w["itm"]) else None
            mask_idx = torch.randint(0, self.n_groups, (len(rna_x),), device=device)
            rna_masked = self.encode_rna(rna_x, mask_idx) if need_rna and (w["rna_mae"] or w["rna_rec"]) else None
            img_tok = self.encode_image(batch["img"][has_img]) if need_img else None
        if rna_masked is not None and w["rna_mae"]:
            out["rna_mae"] = self._mae(rna_x, rna_masked, mask_idx, self.mae_decoder)
        if rna_tok is not None and w["rna_con"]:
            rid = batch["rna_id"][has_rna]
            first = _first_occurrence(rid)  # duplicated RNA samples (several patches of one sample) count once
            out["rna_con"] = supervised_contrastive(rna_tok[first, 0], batch["rna_group"][has_rna][first], self.tau)
        if img_tok is not None and w["img_triplet"]:
            out["img_triplet"] = triplet_loss(img_tok[:, 0], batch["img_group"][has_img], self.margin)
        both = has_rna & has_img
        if both.any() and (w["itc"] or w["itm"] or w["rna_rec"]) and img_tok is not None:
            ri = torch.cumsum(has_rna.long(), 0)[both] - 1  # row of each paired item in the RNA tensors
            ii = torch.cumsum(has_img.long(), 0)[both] - 1
            key = batch["rna_id"][both] if self.match_on == "sample" else batch["rna_group"][both]
            pos = key[:, None] == key[None, :]
            it = img_tok[ii]
            if rna_tok is not None:
                rt = rna_tok[ri]
                u_img = F.normalize(self.img_proj(it[:, 0]), dim=-1)
                u_rna = F.normalize(self.rna_proj(rt[:, 0]), dim=-1)
                sim = u_img @ u_rna.T / self.tau_c
                if w["itc"] and self.momentum is not None and self.training:
                    out["itc"] = self._itc_momentum(u_img, u_rna, batch["img"][has_img][ii], rna_x[ri], key)
                elif w["itc"]:
                    tgt = pos.float() / pos.float().sum(1, keepdim=True)
                    out["itc"] = 0.5 * (
                        -(F.log_softmax(sim, 1) * tgt).sum(1).mean() - (F.log_softmax(sim.T, 1) * tgt).sum(1).mean()
                    )
                if w["itm"] and (~pos).any():
                    out["itm"] = self._itm(rt, it, sim.detach(), pos)
            if rna_masked is not None and w["rna_rec"]:
                fused = self.fusion(rna_masked[ri], it)
                out["rna_rec"] = self._mae(rna_x[ri], fused, mask_idx[ri], self.rna_decoder)
        for k, v in out.items():
            total = total + w[k] * v
        out["loss"] = total if out else _zero_with_grad(self)
        return out

    @torch.no_grad()
    def _momentum_step(self) -> None:
        """EMA update of the momentum encoders (a plain copy at the first call); buffers (BatchNorm statistics) copied.

        Written here rather than lightly's ``update_momentum`` (used by :class:`scst.models.SSLEncoder`): ``scst.nn``
        stays torch-only, and lightly's helper leaves buffers behind.
        """
        m = 0.0 if not bool(self.momentum_ready) else self.momentum
        for k, target in self.momentum_encoders.items():
            for p_m, p in zip(target.parameters(), getattr(self, k).parameters()):
                p_m.mul_(m).add_(p.detach(), alpha=1.0 - m)
            for b_m, b in zip(target.buffers(), getattr(self, k).buffers()):
                b_m.copy_(b)
        self.momentum_ready.fill_(True)

    def _itc_momentum(self, u_img: Tensor, u_rna: Tensor, img: Tensor, rna_x: Tensor, key: Tensor) -> Tensor:
        """Image–RNA contrastive loss against the momentum embeddings of this batch and of the queue (ALBEF eq. 2)."""
        enc = self.momentum_encoders
        with torch.no_grad():
            self._momentum_step()
            m_img = F.normalize(enc["img_proj"](enc["image_encoder"](self._img_in(img))[:, 0]), dim=-1)
            m_rna = F.normalize(enc["rna_proj"](enc["rna_encoder"](self._rna_in(rna_x))[:, 0]), dim=-1)
            n_q = int(self.queue_len)
            img_all = torch.cat([m_img, self.img_queue[:n_q]])
            rna_all = torch.cat([m_rna, self.rna_queue[:n_q]])
            pos = key[:, None] == torch.cat([key, self.key_queue[:n_q]])[None, :]
            tgt = pos.float() / pos.float().sum(1, keepdim=True)
        loss = 0.5 * (
            -(F.log_softmax(u_img @ rna_all.T / self.tau_c, 1) * tgt).sum(1).mean()
            - (F.log_softmax(u_rna @ img_all.T / self.tau_c, 1) * tgt).sum(1).mean()
        )
        if self.queue_size:
            self._enqueue(m_img, m_rna, key)
        return loss

    @torch.no_grad()
    def _enqueue(self, m_img: Tensor, m_rna: Tensor, key: Tensor) -> None:
        """Ring buffer of the latest ``queue_size`` momentum embeddings and their keys."""
        q, n = self.queue_size, min(len(key), self.queue_size)
        idx = (int(self.queue_ptr) + torch.arange(n, device=key.device)) % q
        self.img_queue[idx], self.rna_queue[idx], self.key_queue[idx] = m_img[-n:], m_rna[-n:], key[-n:]
        self.queue_ptr.fill_((int(self.queue_ptr) + n) % q)
        self.queue_len.fill_(min(int(self.queue_len) + n, q))

    def _itm(self, rt: Tensor, it: Tensor, sim: Tensor, pos: Tensor) -> Tensor:
        """Matching loss on the positive pairs and one hard negative per image and per RNA (ALBEF)."""
        n = len(rt)
        ok = (~pos).any(1)
        p_i2r = F.softmax(sim, 1).masked_fill(pos, 0.0) + 1e-8 * (~pos)
        p_r2i = F.softmax(sim.T, 1).masked_fill(pos, 0.0) + 1e-8 * (~pos)
        neg_r = torch.multinomial(p_i2r[ok], 1).ravel()
        neg_i = torch.multinomial(p_r2i[ok], 1).ravel()
        idx = torch.arange(n, device=rt.device)[ok]
        rna_all = torch.cat([rt, rt[neg_r], rt[idx]])
        img_all = torch.cat([it, it[idx], it[neg_i]])
        labels = torch.cat([torch.ones(n), torch.zeros(2 * len(idx))]).to(rt.device)
        logit = self.match_logit(rna_all, img_all)
        return F.binary_cross_entropy_with_logits(logit, labels)


def _first_occurrence(ids: Tensor) -> Tensor:
    """Positions of the first occurrence of each id (ids < 0 are all kept)."""
    n = len(ids)
    order = torch.arange(n, device=ids.device)
    same = (ids[:, None] == ids[None, :]) & (order[None, :] < order[:, None]) & (ids[:, None] >= 0)
    return order[~same.any(1)]


def _zero_with_grad(module: nn.Module) -> Tensor:
    """A zero loss connected to the parameters (a batch without any usable term)."""
    return sum(p.sum() * 0.0 for p in module.parameters() if p.requires_grad)
