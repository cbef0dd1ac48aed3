"""TCGN: Transformer with Convolution and Graph-Node co-embedding (Xiao et al.).

A single-spot model: one H&E patch in, the expression of a gene panel out; no coordinates, no neighbouring spots.

What follows the paper and the authors' code (``lugia-xiao/TCGN``: ``model.py``, ``CMT_block.py``, ``gnn_block.py``,
``censnet_block.py``, ``build_graph_tensor.py``, ``transformer_block.py``), at paper defaults:

* **Backbone = CMT-Ti**: a stem of three 3x3 convs (stride 2, 1, 1; GELU + BatchNorm, 16 channels), then four stages
  ``channels=(46, 92, 184, 368)``, ``depths=(2, 2, 10, 2)``, ``heads=(1, 2, 4, 8)``, ``mlp_ratio=3.6``,
  ``sr_ratios=(8, 4, 2, 1)``. Each stage starts with a 2x2 stride-2 conv patch embedding + LayerNorm. A CMT block is
  a local perception unit (depthwise 3x3 conv, residual), lightweight multi-head self-attention (keys/values
  downsampled by a depthwise ``sr x sr`` stride-``sr`` conv + BatchNorm, plus a learned relative-position bias shared
  by the blocks of a stage) and an inverted residual FFN (1x1 conv, depthwise 3x3 conv with residual, 1x1 conv; GELU
  + BatchNorm). 224 px in: stage grids 56, 28, 14, 7.
* **Graph blocks** after stage 1 and stage 2 (both produce a graph on the stage-3 grid, ``img_size / 16``):
  a convolution branch (ConvNeXt stages; stage 1: 2 + 1 blocks with two 2x downsamples, stage 2: 2 blocks with one)
  and a transformer branch (patch embedding + one CMT block, ``graph_heads=2``, its own relative-position bias), both
  at width ``2 x channels[i]``. A cross-attention map (queries: transformer tokens, keys: conv tokens; scaled by
  ``sqrt(width)``, +1 on the diagonal, softmax) gives the graph: edges = top-k of the head-averaged map, node features
  = value projection of the conv tokens, edge features = per-head attention, mean attention, grid proximity
  ``1 / (d / 3 + 1)``, L2 affinity ``(1 + |x_i - x_j|^2 / s)^-1/2`` (``s = width // 2``) and ``(cos + 1) / 2``
  (``graph_heads + 4`` features). A 3-layer CensNet GCN (node -> edge -> node layers, hidden width ``2 x
  channels[i]``, edge width doubled by the edge layer, ReLU + dropout between layers) runs on it; edge features are
  summed back onto their end nodes through the incidence matrix and a linear layer maps ``[node, edge]`` to
  ``graph_out=48`` channels.
* **Fusion by channel attention**: stage-3 tokens and graph features are concatenated along channels; a transformer
  encoder block whose *tokens are channels* (embedding = the ``N`` spatial positions; +1 on the attention diagonal,
  no output projection, FFN x4) mixes them, and the first ``channels[2]`` channels are kept. Graph 1 is fused before
  the stage-3 blocks, graph 2 after them.
* **Head**: 1x1 conv to ``fc_dim=1280``, BatchNorm, Swish, global average pool, dropout 0.1, then
  ``Linear(1280, 5120) - GELU - Linear(5120, n_genes)``; MSE loss on log1p-normalised expression. Weight init as the
  authors (trunc-normal 0.02 linears, Kaiming fan-out convs, relative-position biases ~ N(0, 1)).

What is simplified, and why:

* **Top-k per node** instead of the authors' top ``k x N`` entries of the whole flattened map (their loop grows the
  selection on ties). Both give ``k x N`` edges; per-node selection guarantees every node exactly ``k`` out-edges, so
  edge count is fixed and the whole batch is one tensor op (no ties loop, no CPU round trip).
* **CensNet done densely in torch** over the top-k graph (incidence ``T`` is ``N x E``, edge adjacency ``E x E``
  with ``E = k N``: 784 at 224 px), batched, on the model's device; the authors build scipy/torch-sparse tensors per
  sample on the CPU. No torch-sparse. The authors' GCN layers compute an activation and then discard it (``ret =
  output + bias``); we keep the effective behaviour (linear layer, ReLU applied between layers by the GCN).
* ConvNeXt blocks in the graph branches are torchvision's ``CNBlock`` (channel LayerNorm, layer scale 1e-6); the
  authors' copy uses ``GroupNorm(1)``.
* Images must be ``img_size`` square with ``img_size`` divisible by 32 and each stage grid divisible by its
  ``sr_ratio`` (so 112 px does not fit the CMT key/value downsampling; the CPU bench config uses 128 px).
* No pretrained default: the authors start from ImageNet CMT-Ti weights, but neither torchvision nor timm (checked
  with timm 1.0.31: ``timm.list_models("*cmt*")`` is empty) provides a CMT model, so ``backbone_weights=None`` (random
  initialisation, with a warning). A local state_dict of the backbone (``stem.*`` and ``stages.*`` entries, e.g. a
  trained TCGN's; its other entries are ignored) loads with ``backbone_weights=path``; the authors' CMT-Ti checkpoint
  uses other key names and would need renaming first.

Attribution (``TCGNModule.attribution``) is HiResCAM (gradient x activation) on the ``img_size / 16`` graph grid, at
the token sets entering the channel-attention fusions. The authors' Grad-CAM on the last stage is available as
``method="gradcam"``, but the fusion blocks mix all spatial positions (positions are their embedding axis), so
last-stage maps are not aligned with the image: on a model trained to read one planted image quadrant (64 px test
config, 60 Adam steps, 8 seeds), last-stage Grad-CAM puts 25-31 % of its mass on that quadrant (chance: 25 %),
HiResCAM on the graph grid 69-90 %.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.convnext import CNBlock, LayerNorm2d
from torchvision.ops import StochasticDepth

from ._backbones import load_weights

__all__ = ["TCGN_BENCH", "TCGNModule", "topk_graph"]

#: State-dict prefixes of a TCGNModule outside the CMT backbone (ignored in ``backbone_weights`` files).
_NON_BACKBONE = ("graphs.", "fusions.", "head_conv.", "head_act.", "head_drop.", "head.")

#: Small CPU configuration (pass as ``TCGNModule(n_genes, **TCGN_BENCH)``): 128 px, narrow, one block per stage.
TCGN_BENCH: dict = {
    "img_size": 128,
    "stem_channels": 8,
    "channels": (16, 32, 64, 128),
    "depths": (1, 1, 1, 1),
    "heads": (1, 2, 4, 8),
    "mlp_ratio": 2.0,
    "sr_ratios": (8, 4, 2, 1),
    "graph_topk": 4,
    "graph_heads": 2,
    "graph_out": 16,
    "fc_dim": 128,
    "head_expansion": 2,
    "dropout": 0.1,
}


# --------------------------------------------------------------------------------------------------------------------
# CMT backbone
# --------------------------------------------------------------------------------------------------------------------
class _PatchEmbed(nn.Module):
    """Non-overlapping conv patch embedding + LayerNorm; maps (B, C, H, W) to tokens (B, HW/p^2, D)."""

    def __init__(self, in_ch: int, dim: int, patch: int):
        super().__init__()
        self.patch = patch
        self.proj = nn.Conv2d(in_ch, dim, kernel_size=patch, stride=patch)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        x = self.proj(x)
        h, w = x.shape[-2:]
        return self.norm(x.flatten(2).transpose(1, 2)), h, w


def _tokens_to_map(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], h, w)


class _IRFFN(nn.Module):
    """CMT inverted residual feed-forward network."""

    def __init__(self, dim: int, hidden: int, drop: float):
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(dim, hidden, 1), nn.GELU(), nn.BatchNorm2d(hidden))
        self.dw = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden)
        self.dw_act = nn.Sequential(nn.GELU(), nn.BatchNorm2d(hidden))
        self.conv2 = nn.Sequential(nn.Conv2d(hidden, dim, 1), nn.BatchNorm2d(dim))
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        x = self.drop(self.conv1(_tokens_to_map(x, h, w)))
        x = self.dw_act(self.dw(x) + x)
        return self.drop(self.conv2(x).flatten(2).transpose(1, 2))


class _LMHSA(nn.Module):
    """CMT lightweight MHSA: keys/values from a depthwise-conv downsampled map, additive relative-position bias."""

    def __init__(self, dim: int, heads: int, sr: int, qkv_bias: bool, drop: float):
        super().__init__()
        if dim % heads:
            raise ValueError(f"channel width {dim} must be divisible by its number of heads {heads}.")
        self.heads, self.sr = heads, sr
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.k = nn.Linear(dim, dim, bias=qkv_bias)
        self.v = nn.Linear(dim, dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.drop = nn.Dropout(drop)
        if sr > 1:
            self.sr_conv = nn.Sequential(nn.Conv2d(dim, dim, sr, stride=sr, groups=dim), nn.BatchNorm2d(dim))

    def _split(self, t: torch.Tensor) -> torch.Tensor:
        return t.reshape(t.shape[0], t.shape[1], self.heads, -1).transpose(1, 2)

    def forward(self, x: torch.Tensor, h: int, w: int, rel_pos: torch.Tensor) -> torch.Tensor:
        kv = x
        if self.sr > 1:
            kv = self.sr_conv(_tokens_to_map(x, h, w)).flatten(2).transpose(1, 2)
        q, k, v = self._split(self.q(x)), self._split(self.k(kv)), self._split(self.v(kv))
        # rel_pos (heads, N, N_kv) is the additive bias; SDPA scales by head_dim^-1/2 as CMT does
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=rel_pos.unsqueeze(0).to(q.dtype))
        return self.drop(self.proj(out.transpose(1, 2).flatten(2)))


class _CMTBlock(nn.Module):
    """CMT block: local perception unit, LMHSA, IRFFN (pre-norm residuals)."""

    def __init__(
        self,
        dim: int,
        heads: int,
        mlp_ratio: float,
        sr: int,
        *,
        qkv_bias: bool = True,
        ln_eps: float = 1e-6,
        drop: float = 0.0,
        drop_path: float = 0.0,
    ):
        super().__init__()
        self.lpu = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.norm1 = nn.LayerNorm(dim, eps=ln_eps)
        self.attn = _LMHSA(dim, heads, sr, qkv_bias, drop)
        self.norm2 = nn.LayerNorm(dim, eps=ln_eps)
        self.ffn = _IRFFN(dim, int(dim * mlp_ratio), drop)
        self.drop_path = StochasticDepth(drop_path, "row")

    def forward(self, x: torch.Tensor, h: int, w: int, rel_pos: torch.Tensor) -> torch.Tensor:
        m = _tokens_to_map(x, h, w)
        x = (self.lpu(m) + m).flatten(2).transpose(1, 2)
        x = x + self.drop_path(self.attn(self.norm1(x), h, w, rel_pos))
        return x + self.drop_path(self.ffn(self.norm2(x), h, w))


class _Stage(nn.Module):
    """Patch embedding + CMT blocks sharing one relative-position bias."""

    def __init__(
        self,
        in_ch: int,
        dim: int,
        grid: int,
        depth: int,
        heads: int,
        mlp_ratio: float,
        sr: int,
        drop: float,
        drop_paths: Sequence[float],
    ):
        super().__init__()
        self.embed = _PatchEmbed(in_ch, dim, 2)
        n = grid * grid
        self.rel_pos = nn.Parameter(torch.randn(heads, n, n // (sr * sr)))
        self.blocks = nn.ModuleList(
            [_CMTBlock(dim, heads, mlp_ratio, sr, drop=drop, drop_path=drop_paths[i]) for i in range(depth)]
        )

    def embed_tokens(self, x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        return self.embed(x)

    def run_blocks(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        for blk in self.blocks:
            x = blk(x, h, w, self.rel_pos)
        return x


# --------------------------------------------------------------------------------------------------------------------
# Graph: top-k cross-attention graph + CensNet GCN
# --------------------------------------------------------------------------------------------------------------------
def _grid_proximity(side: int) -> torch.Tensor:
    """``1 / (d / 3 + 1)``, ``d`` = Euclidean distance between cells of a ``side x side`` grid (authors' prior)."""
    yy, xx = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    pos = torch.stack([yy.flatten(), xx.flatten()], -1).float()
    return 1.0 / (torch.cdist(pos, pos) / 3.0 + 1.0)


def topk_graph(
    attn: torch.Tensor, nodes: torch.Tensor, k: int, proximity: torch.Tensor | None = None
) -> dict[str, torch.Tensor]:
    """Top-k graph of a multi-head attention map, with CensNet inputs.

    Parameters
    ----------
    attn
        ``(B, h, N, N)`` attention, rows = source nodes (queries), columns = targets (keys).
    nodes
        ``(B, N, C)`` node features (used for the L2 and cosine edge features).
    k
        Edges kept per source node: the ``k`` largest entries of the head-averaged row.
    proximity
        ``(N, N)`` prior affinity between nodes used as an edge feature; default: grid proximity on a square grid.

    Returns
    -------
    dict with ``dst`` ``(B, N, k)`` target indices, ``adj`` ``(B, N, N)`` binary adjacency, ``adj_norm`` its
    symmetric degree normalisation, ``T`` ``(B, N, E)`` node-edge incidence (2 on a self-loop), ``edge_adj_norm``
    ``(B, E, E)`` normalised line-graph adjacency (edges sharing an endpoint) and ``edge_feat`` ``(B, E, h + 4)``
    (per-head attention, mean attention, proximity, L2 affinity, (cos + 1) / 2). Edge ``e = i * k + j`` is the
    ``j``-th edge of node ``i``.
    """
    if attn.ndim != 4 or attn.shape[-1] != attn.shape[-2]:
        raise ValueError(f"`attn` must have shape (B, heads, N, N), got {tuple(attn.shape)}.")
    b, n_heads, n, _ = attn.shape
    if not 1 <= k <= n:
        raise ValueError(f"`k` must be in [1, {n}], got {k}.")
    if nodes.shape[:2] != (b, n):
        raise ValueError(f"`nodes` must have shape ({b}, {n}, C), got {tuple(nodes.shape)}.")
    if proximity is None:
        side = round(n**0.5)
        if side * side != n:
            raise ValueError(f"`proximity` is required when N={n} is not a square grid.")
        proximity = _grid_proximity(side)
    proximity = proximity.to(device=attn.device, dtype=attn.dtype)

    mean_attn = attn.mean(1)
    dst = mean_attn.topk(k, dim=-1).indices  # (B, N, k); indices carry no gradient, the gathered features do
    n_edges = n * k
    src_flat = torch.arange(n, device=attn.device).repeat_interleave(k).expand(b, n_edges)
    dst_flat = dst.reshape(b, n_edges)

    adj = torch.zeros_like(mean_attn).scatter_(-1, dst, 1.0)
    deg = adj.sum(-1).clamp_min(1.0) ** -0.5
    adj_norm = deg[:, :, None] * adj * deg[:, None, :]

    edge_ids = torch.arange(n_edges, device=attn.device)
    T = attn.new_zeros(b, n, n_edges)
    T[torch.arange(b, device=attn.device)[:, None], src_flat, edge_ids] += 1.0
    T[torch.arange(b, device=attn.device)[:, None], dst_flat, edge_ids] += 1.0
    edge_adj = (T.transpose(1, 2) @ T > 0).to(attn.dtype)  # diagonal is already 1
    d_e = (edge_adj.sum(-1) + 1.0) ** -0.5  # authors' normalize_tensor(plus_one=True): +1 in the degree only
    edge_adj_norm = d_e[:, :, None] * edge_adj * d_e[:, None, :]

    head_feat = attn.gather(-1, dst[:, None].expand(b, n_heads, n, k)).reshape(b, n_heads, n_edges).transpose(1, 2)
    mean_feat = mean_attn.gather(-1, dst).reshape(b, n_edges, 1)
    prox_feat = proximity[src_flat, dst_flat].unsqueeze(-1)
    x_src = nodes.gather(1, src_flat[..., None].expand(-1, -1, nodes.shape[-1]))
    x_dst = nodes.gather(1, dst_flat[..., None].expand(-1, -1, nodes.shape[-1]))
    scale = max(nodes.shape[-1] // 2, 1)
    l2_feat = torch.rsqrt(1.0 + (x_src - x_dst).pow(2).sum(-1, keepdim=True) / scale)
    cos_feat = (F.cosine_similarity(x_src, x_dst, dim=-1, eps=1e-8).unsqueeze(-1) + 1.0) / 2.0
    edge_feat = torch.cat([head_feat, mean_feat, prox_feat, l2_feat, cos_feat], -1)
    return {
        "dst": dst,
        "adj": adj,
        "adj_norm": adj_norm,
        "T": T,
        "edge_adj_norm": edge_adj_norm,
        "edge_feat": edge_feat,
    }


class _CensNetLayer(nn.Module):
    """CensNet graph convolution (Jiang et al. 2019): node layer or edge layer, dense and batched."""

    def __init__(self, in_v: int, out_v: int, in_e: int, out_e: int, node_layer: bool):
        super().__init__()
        self.node_layer = node_layer
        w_in, w_out, p_dim = (in_v, out_v, in_e) if node_layer else (in_e, out_e, in_v)
        bound = w_out**-0.5
        self.weight = nn.Parameter(torch.empty(w_in, w_out).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(w_out).uniform_(-bound, bound))
        self.p = nn.Parameter(torch.randn(1, p_dim))

    @staticmethod
    def _unit_diag(m: torch.Tensor) -> torch.Tensor:
        eye = torch.eye(m.shape[-1], device=m.device, dtype=m.dtype)
        return m * (1.0 - eye) + eye

    def forward(
        self, hv: torch.Tensor, he: torch.Tensor, g: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        T = g["T"]
        if self.node_layer:
            s = (he @ self.p.t()).squeeze(-1)  # (B, E): edge features gate node-node messages
            m = self._unit_diag((T * s[:, None, :]) @ T.transpose(1, 2))
            return (m * g["adj_norm"]) @ (hv @ self.weight) + self.bias, he
        s = (hv @ self.p.t()).squeeze(-1)  # (B, N): node features gate edge-edge messages
        m = self._unit_diag((T.transpose(1, 2) * s[:, None, :]) @ T) * g["edge_adj_norm"]
        m = m / m.amax(dim=-2, keepdim=True)  # column max > 0: the diagonal term is positive
        return hv, m @ (he @ self.weight) + self.bias


class _CensNetGCN(nn.Module):
    """Node -> edge -> node CensNet layers with ReLU + dropout in between (authors' ``GCN``)."""

    def __init__(self, in_v: int, in_e: int, hidden: int, out_v: int, dropout: float):
        super().__init__()
        self.gc1 = _CensNetLayer(in_v, hidden, in_e, in_e, node_layer=True)
        self.gc2 = _CensNetLayer(hidden, hidden, in_e, 2 * in_e, node_layer=False)
        self.gc3 = _CensNetLayer(hidden, out_v, 2 * in_e, 2 * in_e, node_layer=True)
        self.dropout = dropout

    def _act(self, t: torch.Tensor) -> torch.Tensor:
        return F.dropout(F.relu(t), self.dropout, self.training)

    def forward(self, hv: torch.Tensor, g: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        he = g["edge_feat"]
        hv, he = self.gc1(hv, he, g)
        hv, he = self._act(hv), self._act(he)
        hv, he = self.gc2(hv, he, g)
        hv, he = self._act(hv), self._act(he)
        return self.gc3(hv, he, g)


class _GraphBlock(nn.Module):
    """Conv branch x transformer branch -> cross-attention top-k graph -> CensNet -> (B, N, out) node features."""

    def __init__(
        self, in_ch: int, in_grid: int, down: int, heads: int, topk: int, out: int, dropout: float, expansion: int
    ):
        super().__init__()
        dim = expansion * in_ch
        if dim % heads:
            raise ValueError(f"graph width {dim} must be divisible by `graph_heads`={heads}.")
        self.topk, self.heads, self.dim = topk, heads, dim
        grid = in_grid // down
        n = grid * grid
        if not 1 <= topk <= n:
            raise ValueError(f"`graph_topk` must be in [1, {n}] (nodes of the {grid}x{grid} graph), got {topk}.")
        cn = partial(CNBlock, layer_scale=1e-6, stochastic_depth_prob=0.0)

        def _down(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(LayerNorm2d(cin, eps=1e-6), nn.Conv2d(cin, cout, 2, stride=2))

        if down == 4:
            self.conv = nn.Sequential(_down(in_ch, in_ch), cn(in_ch), cn(in_ch), _down(in_ch, dim), cn(dim))
        elif down == 2:
            self.conv = nn.Sequential(_down(in_ch, dim), cn(dim), cn(dim))
        else:
            raise ValueError(f"graph block downsampling must be 2 or 4, got {down}.")
        self.conv_norm = nn.LayerNorm(dim)
        self.embed = _PatchEmbed(in_ch, dim, down)
        self.rel_pos = nn.Parameter(torch.randn(heads, n, n))
        self.encoder = _CMTBlock(dim, heads, 4.0, 1, qkv_bias=False, ln_eps=1e-5)
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        e_dim = heads + 4
        self.gcn = _CensNetGCN(dim, e_dim, dim, out, dropout)
        self.fuse = nn.Linear(out + 2 * e_dim, out)
        self.register_buffer("proximity", _grid_proximity(grid), persistent=False)

    def cross_attention(self, conv_tok: torch.Tensor, tr_tok: torch.Tensor) -> torch.Tensor:
        """``(B, heads, N, N)`` map: queries from transformer tokens, keys from conv tokens (authors' scaling)."""
        b, n, _ = tr_tok.shape
        q = self.q(tr_tok).reshape(b, n, self.heads, -1).transpose(1, 2)
        k = self.k(conv_tok).reshape(b, n, self.heads, -1).transpose(1, 2)
        energy = q @ k.transpose(-1, -2) / self.dim**0.5
        return (energy + torch.eye(n, device=energy.device, dtype=energy.dtype)).softmax(-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv_tok = self.conv_norm(self.conv(x).flatten(2).transpose(1, 2))
        tr_tok, h, w = self.embed(x)
        tr_tok = self.encoder(tr_tok, h, w, self.rel_pos)
        attn = self.cross_attention(conv_tok, tr_tok)
        nodes = self.v(conv_tok)
        g = topk_graph(attn, nodes, self.topk, self.proximity)
        hv, he = self.gcn(nodes, g)
        return self.fuse(torch.cat([hv, g["T"] @ he], -1))


class _ChannelAttentionFusion(nn.Module):
    """Transformer block over channels (tokens = channels, embedding = N positions); keeps the first C1 channels."""

    def __init__(self, n_nodes: int, dropout: float):
        super().__init__()
        # authors: 4 heads on the 196-node grid, 1 on 49 nodes; here 4 whenever N allows it
        self.heads = 4 if n_nodes % 4 == 0 else 1
        self.norm1 = nn.LayerNorm(n_nodes)
        self.qkv = nn.Linear(n_nodes, 3 * n_nodes)
        self.attn_drop = nn.Dropout(dropout)
        self.drop1 = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(n_nodes)
        self.ffn = nn.Sequential(
            nn.Linear(n_nodes, 4 * n_nodes), nn.GELU(), nn.Dropout(dropout), nn.Linear(4 * n_nodes, n_nodes)
        )
        self.drop2 = nn.Dropout(dropout)

    def forward(
        self, x: torch.Tensor, g: torch.Tensor, return_weights: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        c1 = x.shape[-1]
        z = torch.cat([x, g], -1).transpose(1, 2)  # (B, C1 + C2, N)
        b, c, n = z.shape
        q, k, v = self.qkv(self.norm1(z)).reshape(b, c, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        energy = q @ k.transpose(-1, -2) + torch.eye(c, device=z.device, dtype=z.dtype)
        weights = (energy / n**0.5).softmax(-1)  # (B, heads, C, C)
        z = z + self.drop1((self.attn_drop(weights) @ v).transpose(1, 2).reshape(b, c, n))
        z = z + self.drop2(self.ffn(self.norm2(z)))
        out = z.transpose(1, 2)[..., :c1]
        return (out, weights) if return_weights else out


# --------------------------------------------------------------------------------------------------------------------
# TCGN
# --------------------------------------------------------------------------------------------------------------------
class TCGNModule(nn.Module):
    """TCGN network: CMT backbone + two cross-attention graph blocks fused by channel attention, gene head.

    See the module docstring for what follows the authors' code and what is simplified.

    Parameters
    ----------
    n_genes
        Size of the gene panel (output dimension).
    img_size
        Side of the square input patch in pixels; divisible by 32 and ``img_size / 2**(i+2)`` divisible by
        ``sr_ratios[i]``.
    in_channels
        Image channels.
    stem_channels
        Width of the convolutional stem.
    channels
        Widths of the four CMT stages.
    depths
        CMT blocks per stage.
    heads
        Attention heads per stage.
    mlp_ratio
        IRFFN expansion.
    sr_ratios
        Key/value spatial reduction per stage.
    graph_topk
        Edges kept per node in the graph blocks.
    graph_heads
        Heads of the graph blocks' transformer and cross-attention.
    graph_out
        Channels each graph block adds to stage 3 before channel-attention fusion.
    graph_expansion
        Width of the graph branches = ``graph_expansion x channels[i]``.
    fc_dim
        Width of the head's 1x1 conv.
    head_expansion
        Hidden width of the head MLP = ``head_expansion x fc_dim``.
    dropout
        Dropout of the head, the GCN and the fusion blocks (authors: 0.1 everywhere).
    drop_path
        Maximal stochastic depth of the CMT blocks (linearly increasing; authors: 0).
    backbone_weights
        None (random initialisation, with a warning: no CMT weights are downloadable, see the module docstring), a
        local ``.safetensors`` / torch state_dict file with the backbone's ``stem.*`` and ``stages.*`` entries (other
        TCGN entries are ignored), a state_dict mapping or a module (see :func:`scst.nn.load_backbone_weights`).
    """

    def __init__(
        self,
        n_genes: int,
        img_size: int = 224,
        in_channels: int = 3,
        stem_channels: int = 16,
        channels: Sequence[int] = (46, 92, 184, 368),
        depths: Sequence[int] = (2, 2, 10, 2),
        heads: Sequence[int] = (1, 2, 4, 8),
        mlp_ratio: float = 3.6,
        sr_ratios: Sequence[int] = (8, 4, 2, 1),
        graph_topk: int = 4,
        graph_heads: int = 2,
        graph_out: int = 48,
        graph_expansion: int = 2,
        fc_dim: int = 1280,
        head_expansion: int = 4,
        dropout: float = 0.1,
        drop_path: float = 0.0,
        backbone_weights: str | None = None,
    ):
        super().__init__()
        if n_genes < 1:
            raise ValueError(f"`n_genes` must be >= 1, got {n_genes}.")
        for name, val in (("channels", channels), ("depths", depths), ("heads", heads), ("sr_ratios", sr_ratios)):
            if len(val) != 4:
                raise ValueError(f"`{name}` must have 4 entries (one per stage), got {tuple(val)}.")
        if img_size % 32:
            raise ValueError(f"`img_size` must be divisible by 32, got {img_size}.")
        grids = [img_size // 2 ** (i + 2) for i in range(4)]
        for i, (grid, sr) in enumerate(zip(grids, sr_ratios)):
            if grid % sr:
                raise ValueError(
                    f"`sr_ratios[{i}]`={sr} must divide the stage-{i + 1} grid {grid} (img_size={img_size})."
                )
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"`dropout` must be in [0, 1), got {dropout}.")
        self.n_genes, self.img_size, self.in_channels = n_genes, img_size, in_channels

        def _stem_conv(cin: int, stride: int) -> list[nn.Module]:
            return [
                nn.Conv2d(cin, stem_channels, 3, stride=stride, padding=1),
                nn.GELU(),
                nn.BatchNorm2d(stem_channels),
            ]

        self.stem = nn.Sequential(
            *_stem_conv(in_channels, 2), *_stem_conv(stem_channels, 1), *_stem_conv(stem_channels, 1)
        )
        dpr = torch.linspace(0, drop_path, sum(depths)).tolist()
        cur, ins, stages = 0, [stem_channels, *channels[:3]], []
        for i in range(4):
            stages.append(
                _Stage(ins[i], channels[i], grids[i], depths[i], heads[i], mlp_ratio, sr_ratios[i], 0.0, dpr[cur:])
            )
            cur += depths[i]
        self.stages = nn.ModuleList(stages)
        n_nodes = grids[2] ** 2
        self.graphs = nn.ModuleList(
            [
                _GraphBlock(channels[0], grids[0], 4, graph_heads, graph_topk, graph_out, dropout, graph_expansion),
                _GraphBlock(channels[1], grids[1], 2, graph_heads, graph_topk, graph_out, dropout, graph_expansion),
            ]
        )
        self.fusions = nn.ModuleList([_ChannelAttentionFusion(n_nodes, dropout) for _ in range(2)])
        self.head_conv = nn.Conv2d(channels[3], fc_dim, 1)
        self.head_act = nn.Sequential(nn.BatchNorm2d(fc_dim), nn.SiLU())
        self.head_drop = nn.Dropout(dropout)
        self.head = nn.Sequential(
            nn.Linear(fc_dim, head_expansion * fc_dim), nn.GELU(), nn.Linear(head_expansion * fc_dim, n_genes)
        )
        self.apply(self._init_weights)
        trunk = nn.Module()  # a view of the CMT backbone (not registered: the state_dict keys stay as they are)
        trunk.stem, trunk.stages = self.stem, self.stages
        load_weights(trunk, backbone_weights, where="backbone_weights", what="TCGN CMT backbone", ignore=_NON_BACKBONE)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm | nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def _check_patches(self, patches: torch.Tensor) -> None:
        s = self.img_size
        if not isinstance(patches, torch.Tensor) or not patches.is_floating_point():
            raise ValueError("`patches` must be a float tensor of shape (n, C, H, W).")
        if patches.ndim != 4 or tuple(patches.shape[1:]) != (self.in_channels, s, s):
            raise ValueError(
                f"`patches` must have shape (n, {self.in_channels}, {s}, {s}), got {tuple(patches.shape)}; "
                "resize patches to `img_size`."
            )

    def _features(self, patches: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """Head 1x1-conv map ``(n, fc_dim, s/32, s/32)`` and the ``(n, N, C)`` tokens entering the fusions.

        The tokens (stage-3 embedding, graph-1 and graph-2 node features) live on the ``s/16`` graph grid.
        """
        self._check_patches(patches)
        x = self.stem(patches)
        s1, s2, s3, s4 = self.stages
        t, h, w = s1.embed_tokens(x)
        m1 = _tokens_to_map(s1.run_blocks(t, h, w), h, w)
        g1 = self.graphs[0](m1)
        t, h, w = s2.embed_tokens(m1)
        m2 = _tokens_to_map(s2.run_blocks(t, h, w), h, w)
        g2 = self.graphs[1](m2)
        e3, h, w = s3.embed_tokens(m2)
        t = self.fusions[0](e3, g1)
        t = self.fusions[1](s3.run_blocks(t, h, w), g2)
        t, h4, w4 = s4.embed_tokens(_tokens_to_map(t, h, w))
        m4 = _tokens_to_map(s4.run_blocks(t, h4, w4), h4, w4)
        return self.head_conv(m4), (e3, g1, g2)

    def _predict(self, fmap: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        emb = self.head_act(fmap).mean((-2, -1))
        return self.head(self.head_drop(emb)), emb

    def forward(self, patches: torch.Tensor) -> dict[str, torch.Tensor]:
        """Predict expression.

        Parameters
        ----------
        patches
            ``(n, in_channels, img_size, img_size)`` float images (ImageNet-normalised, as the authors).

        Returns
        -------
        ``pred`` ``(n, n_genes)`` predicted log1p-normalised expression; ``emb`` ``(n, fc_dim)`` pooled features.
        """
        pred, emb = self._predict(self._features(patches)[0])
        return {"pred": pred, "emb": emb}

    def loss(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """MSE between predicted and observed expression.

        Parameters
        ----------
        batch
            ``patches`` ``(n, C, H, W)`` images and ``target`` ``(n, n_genes)`` log1p(normalize_total) expression.

        Returns
        -------
        ``loss`` (differentiable) and ``mse`` (detached), both scalars.
        """
        for key in ("patches", "target"):
            if key not in batch:
                raise KeyError(f"`batch` lacks key {key!r}; expected keys 'patches' and 'target'.")
        target = batch["target"]
        pred = self(batch["patches"])["pred"]
        if target.shape != pred.shape:
            raise ValueError(f"`batch['target']` must have shape {tuple(pred.shape)}, got {tuple(target.shape)}.")
        mse = F.mse_loss(pred, target.to(pred.dtype))
        return {"loss": mse, "mse": mse.detach()}

    def attribution(
        self,
        patches: torch.Tensor,
        gene_idx: int | Sequence[int] | torch.Tensor,
        method: Literal["hirescam", "gradcam"] = "hirescam",
    ) -> torch.Tensor:
        """Class-activation map of one gene's prediction per patch.

        ``"hirescam"`` (default): gradient x activation summed over channels (HiResCAM, Draelos & Carin 2020) on the
        ``img_size/16`` grid, over the three token sets that enter the channel-attention fusions (stage-3 embedding,
        graph-1 and graph-2 node features). This is the last place where positions are still aligned with the image:
        the fusion blocks treat the ``N`` positions as an embedding (their attention and FFN mix all positions), so
        maps taken after them, including the last stage, are not spatially faithful.
        ``"gradcam"``: the authors' Grad-CAM (``grad_cam.py``) on the head's 1x1 conv after the last stage
        (``img_size/32`` grid), channel weights = spatial mean of the gradient. Kept to reproduce the paper's figures;
        on a model trained to read a planted image quadrant it does not single that quadrant out (see tests).

        Both: ReLU, bilinear upsampling to the input size, division by the per-image maximum (all-zero maps stay
        zero). Computed in eval mode; the module's mode is restored.

        Parameters
        ----------
        patches
            ``(n, C, img_size, img_size)`` images.
        gene_idx
            One gene index for all patches, or one per patch.
        method
            ``"hirescam"`` or ``"gradcam"``.

        Returns
        -------
        ``(n, img_size, img_size)`` maps in ``[0, 1]``, detached.
        """
        if method not in ("hirescam", "gradcam"):
            raise ValueError(f"`method` must be 'hirescam' or 'gradcam', got {method!r}.")
        self._check_patches(patches)
        n = patches.shape[0]
        idx = torch.as_tensor(gene_idx, dtype=torch.long, device=patches.device).reshape(-1)
        if idx.numel() == 1:
            idx = idx.expand(n)
        if idx.numel() != n:
            raise ValueError(f"`gene_idx` must be one index or {n} indices, got {idx.numel()}.")
        if n and (idx.min() < 0 or idx.max() >= self.n_genes):
            raise ValueError(f"`gene_idx` must lie in [0, {self.n_genes}), got {idx.tolist()}.")
        was_training = self.training
        self.eval()
        try:
            with torch.enable_grad():
                fmap, grid_tokens = self._features(patches)
                pred, _ = self._predict(fmap)
                # eval mode: samples do not interact, so one backward of the sum gives every per-sample gradient
                score = pred.gather(1, idx[:, None]).sum()
                acts = (fmap,) if method == "gradcam" else grid_tokens
                grads = torch.autograd.grad(score, acts)
        finally:
            self.train(was_training)
        if method == "gradcam":
            cam = (grads[0].mean((-2, -1), keepdim=True) * fmap).sum(1, keepdim=True)
        else:
            side = self.img_size // 16
            cam = sum((g * a).sum(-1) for g, a in zip(grads, acts)).reshape(n, 1, side, side)
        cam = F.interpolate(F.relu(cam.detach()), size=patches.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
        peak = cam.flatten(1).amax(1).clamp_min(torch.finfo(cam.dtype).tiny)
        return (cam / peak[:, None, None]).clamp(0.0, 1.0)
