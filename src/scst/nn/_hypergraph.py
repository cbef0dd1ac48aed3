"""Feature/position k-NN hypergraph of HGGEP's Hypergraph Association Module (torch only).

The routine runs inside every forward pass of :class:`~scst.models.HGGEP`, so it is written in torch
(CPU or CUDA, no numpy round trips) and never imports the scverse stack.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

__all__ = ["knn_hyperedges", "incidence_to_hyperedge_index", "hyperedge_index_to_incidence"]

#: ``exact=None`` uses the dense (paper) computation up to this many spots.
DENSE_MAX_N = 2048
# Elements per chunk of temporary (rows x columns) tensors; keeps peak memory ~100 MB.
_CHUNK_ELEMS = 1 << 22
# Expected number of spots inside the radius a grid cell guarantees, as a multiple of n_candidates.
_GRID_OVERSAMPLE = 1.5
_SELF_KEY = -1


def knn_hyperedges(
    features: Tensor,
    positions: Tensor,
    k: int = 3,
    *,
    n_candidates: int | None = 16,
    exact: bool | None = None,
) -> Tensor:
    r"""Build HGGEP's hyperedges from feature and position distances.

    Hyperedge :math:`e` is centred on spot :math:`e` and holds the ``k`` spots with the smallest

    .. math::
        S(e, j) = \frac{\lVert m_e - m_j \rVert_2}{s_f} + \frac{\lVert x_e - x_j \rVert_2}{s_p},

    spot :math:`e` itself always included (first). This is Eq. 16 of the HGGEP paper
    (``Inc_Mat = Norm(Dis) + Norm(Pos)``) with ``Norm`` made concrete: each metric is divided by its
    scale ``s``, the (lower) median of that metric over the *reference pairs* :math:`(i, j)`, where
    :math:`j` runs over the ``k - 1`` spatially nearest other spots of :math:`i`. Both metrics are
    thus 1 on a typical purely spatial hyperedge, which balances them as the paper asks. A scale of 0
    (all reference distances zero) is replaced by 1.

    Ties are broken deterministically and never by the order of the rows: spots are ranked in
    position order (``y``, then ``x``; spots at the same position by index), spatial ranks by
    (distance, position order), hyperedge members by (score, position order). Permuting the rows of
    ``features`` and ``positions`` together therefore permutes the hyperedges the same way, also on a
    lattice, where equidistant neighbours would otherwise pick the reference pairs (and so the scale
    :math:`s_f`) by row order. The result is integer, so no gradient flows through it.

    Parameters
    ----------
    features
        ``(n, d)`` spot features (e.g. the fused latent stages); cast to float32.
    positions
        ``(n, 2)`` spot coordinates (any numeric dtype); moved to ``features``' device.
    k
        Hyperedge size, the centre spot included (HGGEP uses 3).
    n_candidates
        Fast path: rank only the ``n_candidates`` spatially nearest spots (centre included) of each
        spot by :math:`S`. ``None`` ranks all spots (dense).
    exact
        ``True``: dense ``n x n`` computation (chunked, :math:`O(n^2)` time). ``False``: fast path.
        ``None``: dense when ``n <= 2048`` (or ``n_candidates`` is ``None`` or ``>= n``), else fast.

    Returns
    -------
    ``hyperedge_index`` of :class:`torch_geometric.nn.HypergraphConv`: a ``(2, n * k)`` int64 tensor
    on ``features``' device, row 0 the spot, row 1 the hyperedge; hyperedge ``e`` occupies columns
    ``e * k`` to ``e * k + k - 1``, ordered by score with the centre first. ``num_edges = n``.

    Notes
    -----
    The paper ranks every spot densely. The fast path (used for ``n > 2048`` by default) restricts
    the ranking to each spot's ``n_candidates`` spatially nearest spots, found exactly by grid
    bucketing in torch (:math:`O(n)`, no KD-tree round trip to numpy). Scales are computed the same
    way in both modes (reference pairs are always the spatial neighbours), so the two agree whenever
    every selected member lies among the candidates, which holds when
    :math:`S(e, k\text{-th member}) < \text{dist}(e, \text{nearest non-candidate}) / s_p` (every
    non-candidate scores at least that). It differs only where a feature-similar spot lies farther
    away than the candidates; on the synthetic Visium-like data of ``benchmarks/bench_hypergraph.py``
    ``n_candidates = 16`` reproduced every dense hyperedge. Feature distances are computed with
    :func:`torch.cdist` (matrix-product form) in dense mode and as explicit differences on the fast
    path, so near-ties may resolve differently through last-bit rounding.

    Examples
    --------
    >>> from torch_geometric.nn import HypergraphConv
    >>> h = torch.randn(100, 32)
    >>> xy = torch.rand(100, 2) * 10
    >>> hei = knn_hyperedges(h, xy, k=3)
    >>> HypergraphConv(32, 16)(h, hei, num_edges=h.shape[0]).shape
    torch.Size([100, 16])
    """
    feats, pos = _validate(features, positions, k, n_candidates, exact)
    n = feats.shape[0]
    device = feats.device
    centres = torch.arange(n, device=device)
    if k == 1:
        return torch.stack([centres, centres])

    with torch.no_grad():
        # Computed in position order (ties by position, not by row order), then mapped back to the rows.
        order = torch.argsort(pos[:, 0], stable=True)
        order = order[torch.argsort(pos[order, 1], stable=True)]
        if _use_dense(n, n_candidates, exact):
            ranked = _dense_members(feats[order], pos[order], k)
        else:
            ranked = _fast_members(feats[order], pos[order], k, n_candidates)
        members = torch.empty_like(ranked)
        members[order] = order[ranked]
    return torch.stack([members.reshape(-1), centres.repeat_interleave(k)])


def _use_dense(n: int, n_candidates: int | None, exact: bool | None) -> bool:
    """Whether :func:`knn_hyperedges` ranks all spots (candidates covering every spot are dense too)."""
    if n_candidates is None or n_candidates >= n:
        return True
    return exact if exact is not None else n <= DENSE_MAX_N


def _validate(
    features: Any, positions: Any, k: int, n_candidates: int | None, exact: bool | None
) -> tuple[Tensor, Tensor]:
    if not isinstance(features, Tensor) or features.ndim != 2:
        raise ValueError(f"`features` must be a 2-D torch.Tensor (n, d), got {_describe(features)}.")
    if not isinstance(positions, Tensor) or positions.ndim != 2 or positions.shape[1] != 2:
        raise ValueError(f"`positions` must be a torch.Tensor of shape (n, 2), got {_describe(positions)}.")
    n = features.shape[0]
    if positions.shape[0] != n:
        raise ValueError(f"`positions` has {positions.shape[0]} rows but `features` has {n}.")
    if n == 0:
        raise ValueError("`features` has no rows; need at least one spot.")
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= n:
        raise ValueError(f"`k` must be an int with 1 <= k <= n = {n}, got {k!r}.")
    if n_candidates is not None and (
        isinstance(n_candidates, bool) or not isinstance(n_candidates, int) or n_candidates < k
    ):
        raise ValueError(f"`n_candidates` must be None or an int >= k = {k}, got {n_candidates!r}.")
    if exact is False and n_candidates is None:
        raise ValueError("`exact=False` needs an int `n_candidates`; None means rank all spots (dense).")
    # float32 throughout: the ranking keys reinterpret float32 bits (see _rank_keys).
    feats = features.detach().to(torch.float32)
    # Positions are shifted to start at 0 before the float32 cast to keep pixel precision.
    pos = positions.detach().to(device=feats.device)
    pos = (pos - pos.min(0).values).to(torch.float32)
    if not bool(torch.isfinite(feats).all()):
        raise ValueError("`features` contains NaN or infinite values.")
    if not bool(torch.isfinite(pos).all()):
        raise ValueError("`positions` contains NaN or infinite values.")
    return feats, pos


def _describe(x: Any) -> str:
    if isinstance(x, Tensor):
        return f"tensor of shape {tuple(x.shape)}"
    return type(x).__name__


# --------------------------------------------------------------------------------------- ranking keys
def _sqdist(xq: Tensor, yq: Tensor, xc: Tensor, yc: Tensor) -> Tensor:
    """Squared 2-D distances from queries ``(xq, yq)`` (column vectors) to candidates ``(xc, yc)``.

    One formula everywhere, so the dense, grid and brute-force paths agree bit for bit.
    """
    dx = xc - xq
    dy = yc - yq
    return dx * dx + dy * dy


def _rank_keys(values: Tensor, cols: Tensor, rows: Tensor | None = None, valid: Tensor | None = None) -> Tensor:
    """int64 keys ordering by (value, column index): unique, so topk is deterministic.

    ``values`` are non-negative float32: their bit patterns are monotone. ``rows`` marks each row's
    centre (forced first); ``valid`` masks padding (forced last).
    """
    bits = (values.clamp_min(0) + 0.0).view(torch.int32).to(torch.int64)  # + 0.0 turns -0.0 into +0.0
    keys = bits.bitwise_left_shift_(32).bitwise_or_(cols)
    if rows is not None:
        keys.masked_fill_(cols == rows.unsqueeze(-1), _SELF_KEY)
    if valid is not None:
        keys.masked_fill_(~valid, torch.iinfo(torch.int64).max)
    return keys


def _smallest(keys: Tensor, cols: Tensor, m: int) -> tuple[Tensor, Tensor]:
    """Column indices (and positions in ``cols``) of the ``m`` smallest keys per row, in order."""
    sel = keys.topk(m, dim=-1, largest=False, sorted=True).indices
    return cols.gather(-1, sel) if cols.ndim == keys.ndim else cols[sel], sel


def _scale(values: Tensor) -> Tensor:
    s = values.reshape(-1).median()
    return torch.where(s > 0, s, torch.ones_like(s))


def _pair_feature_dist(feats: Tensor, nbrs: Tensor) -> Tensor:
    """``||f_i - f_nbrs[i, j]||`` as explicit differences, chunked over rows."""
    n, m = nbrs.shape
    out = torch.empty(n, m, dtype=feats.dtype, device=feats.device)
    step = max(1, _CHUNK_ELEMS // max(1, m * feats.shape[1]))
    for s in range(0, n, step):
        diff = feats[nbrs[s : s + step]].sub_(feats[s : s + step, None, :])
        out[s : s + step] = torch.linalg.vector_norm(diff, dim=-1)
    return out


def _scales(feats: Tensor, ref: Tensor, ref_d2: Tensor) -> tuple[Tensor, Tensor]:
    """Norm scales (feature, position) from the reference pairs ``(i, ref[i, j])``."""
    return _scale(_pair_feature_dist(feats, ref)), _scale(ref_d2.sqrt())


# -------------------------------------------------------------------------------------- dense path
def _dense_members(feats: Tensor, pos: Tensor, k: int) -> Tensor:
    n = feats.shape[0]
    device = feats.device
    x, y = pos[:, 0].contiguous(), pos[:, 1].contiguous()
    cols = torch.arange(n, device=device)
    step = max(1, _CHUNK_ELEMS // n)

    ref = torch.empty(n, k - 1, dtype=torch.int64, device=device)
    ref_d2 = torch.empty(n, k - 1, dtype=torch.float32, device=device)
    for s in range(0, n, step):
        rows = cols[s : s + step]
        d2 = _sqdist(x[rows, None], y[rows, None], x, y)
        idx, sel = _smallest(_rank_keys(d2, cols, rows), cols, k)
        ref[rows] = idx[:, 1:]
        ref_d2[rows] = d2.gather(1, sel[:, 1:])
    s_f, s_p = _scales(feats, ref, ref_d2)

    members = torch.empty(n, k, dtype=torch.int64, device=device)
    for s in range(0, n, step):
        rows = cols[s : s + step]
        pos_d = _sqdist(x[rows, None], y[rows, None], x, y).sqrt_()
        score = torch.cdist(feats[rows], feats).div_(s_f).add_(pos_d.div_(s_p))
        members[rows], _ = _smallest(_rank_keys(score, cols, rows), cols, k)
    return members


# --------------------------------------------------------------------------------------- fast path
def _fast_members(feats: Tensor, pos: Tensor, k: int, n_candidates: int) -> Tensor:
    n = feats.shape[0]
    cand, cand_d2 = _spatial_candidates(pos, n_candidates)
    s_f, s_p = _scales(feats, cand[:, 1:k], cand_d2[:, 1:k])
    score = _pair_feature_dist(feats, cand).div_(s_f).add_(cand_d2.sqrt().div_(s_p))
    rows = torch.arange(n, device=feats.device)
    members, _ = _smallest(_rank_keys(score, cand, rows), cand, k)
    return members


def _spatial_candidates(pos: Tensor, c: int) -> tuple[Tensor, Tensor]:
    """The ``c`` spatially nearest spots of every spot (self first, then by (distance, index)).

    Grid bucketing: spots are sorted by cell; all queries of one cell share the candidate list of
    the cells within ``ring`` rings, and a query's top ``c`` is accepted when its ``c``-th distance
    is below the radius those rings are guaranteed to cover. Rejected queries retry with 2 rings,
    then scan all spots (sparse outliers, degenerate layouts).
    """
    n = pos.shape[0]
    device = pos.device
    x, y = pos[:, 0].contiguous(), pos[:, 1].contiguous()
    cand = torch.empty(n, c, dtype=torch.int64, device=device)
    cand_d2 = torch.empty(n, c, dtype=torch.float32, device=device)
    todo = torch.arange(n, device=device)

    h = _cell_size(pos, c)
    if h is not None:
        cell = torch.floor(pos / h).to(torch.int64)
        width = int(cell[:, 1].max()) + 5  # room for +-2 rings, so neighbour keys never collide
        if width * (int(cell[:, 0].max()) + 5) < 2**62:
            grid = _Grid(x, y, cell, width, h)
            for ring in (1, 2):
                if todo.numel() == 0:
                    break
                todo = todo[~grid.search(todo, ring, c, cand, cand_d2)]
    if todo.numel():
        _brute_pass(x, y, todo, c, cand, cand_d2)
    return cand, cand_d2


def _cell_size(pos: Tensor, c: int) -> float | None:
    """Cell side so that the radius one ring guarantees holds ~1.5 c spots at the tissue's density."""
    n = pos.shape[0]
    ext = pos.max(0).values
    span = float(ext.max())
    if span == 0:
        return None  # all spots coincide: the brute-force scan is the only sensible search
    area = float(ext.clamp_min(span * 1e-3).prod())
    h0 = (area / max(1, n // c)) ** 0.5
    # Density over occupied cells only, so empty background in the bounding box does not matter.
    c0 = torch.floor(pos / h0).to(torch.int64)
    # The bounding box holds about n / c cells of side h0, so a bincount over it is small.
    occupied = int(torch.bincount(c0[:, 0] * (int(c0[:, 1].max()) + 1) + c0[:, 1]).count_nonzero())
    density = n / (occupied * h0 * h0)
    return (_GRID_OVERSAMPLE * c / (torch.pi * density)) ** 0.5


class _Grid:
    """Spots bucketed into square cells of side ``h`` (cell keys sorted for ``searchsorted``)."""

    def __init__(self, x: Tensor, y: Tensor, cell: Tensor, width: int, h: float) -> None:
        self.x, self.y, self.cell, self.width, self.h = x, y, cell, width, h
        self.key = (cell[:, 0] + 2) * width + (cell[:, 1] + 2)
        self.order = torch.argsort(self.key, stable=True)
        self.skey = self.key[self.order]

    def search(self, todo: Tensor, ring: int, c: int, cand: Tensor, cand_d2: Tensor) -> Tensor:
        """Fill ``cand`` for the queries ``todo`` that ``ring`` rings settle; return that mask."""
        x, y, n, device = self.x, self.y, self.x.shape[0], self.x.device
        off = torch.arange(-ring, ring + 1, device=device)
        offsets = (off[:, None] * self.width + off[None, :]).reshape(-1)
        # Queries grouped by cell: each query cell is processed once.
        qkey = self.key[todo]
        qorder = self.order if todo.numel() == n else torch.argsort(qkey, stable=True)  # todo is arange(n) then
        todo_s = todo[qorder]
        ucell, qcount = torch.unique_consecutive(qkey[qorder], return_counts=True)
        qstart = torch.cumsum(qcount, 0) - qcount
        nkey = ucell[:, None] + offsets
        start = torch.searchsorted(self.skey, nkey)
        count = torch.searchsorted(self.skey, nkey, right=True) - start
        m = int(count.max())
        slot = torch.arange(m, device=device)
        ok = torch.zeros(todo.numel(), dtype=torch.bool, device=device)

        cell_step = max(1, _CHUNK_ELEMS // (offsets.numel() * m))
        for a in range(0, ucell.numel(), cell_step):
            b = min(a + cell_step, ucell.numel())
            # Candidate list of each query cell: the neighbour cells' spots packed to the left, -1 after.
            cnt = count[a:b]
            w = int(cnt.sum(1).max())
            col = (torch.cumsum(cnt, 1) - cnt)[:, :, None] + slot
            # Padding goes to distinct spare columns past w (no duplicate scatter targets: deterministic).
            spare = w + torch.arange(col[0].numel(), device=device).reshape(col.shape[1:])
            col = torch.where(slot < cnt[:, :, None], col, spare).reshape(b - a, -1)
            src = self.order[(start[a:b, :, None] + slot).clamp_max(n - 1)].reshape(b - a, -1)
            members = torch.full((b - a, w + col.shape[1]), -1, dtype=torch.int64, device=device)
            members = members.scatter_(1, col, src)[:, :w]
            valid = members >= 0
            members = members.clamp_min(0)
            mx, my = x[members], y[members]
            # Queries of these cells, in chunks of bounded size.
            q0 = int(qstart[a])
            q1 = int(qstart[b - 1] + qcount[b - 1])
            cell_of_q = torch.repeat_interleave(torch.arange(b - a, device=device), qcount[a:b])
            q_step = max(1, _CHUNK_ELEMS // w)
            for s in range(q0, q1, q_step):
                e = min(s + q_step, q1)
                rows, ci = todo_s[s:e], cell_of_q[s - q0 : e - q0]
                cols, v = members[ci], valid[ci]
                d2 = _sqdist(x[rows, None], y[rows, None], mx[ci], my[ci])
                good = v.sum(1) >= c
                if w < c or not bool(good.any()):
                    continue
                top, sel = _smallest(_rank_keys(d2, cols, rows, v), cols, c)
                top_d2 = d2.gather(1, sel)
                # Everything closer than the distance to the border of the (2r+1)^2 block was gathered.
                qc = self.cell[rows].to(torch.float32)
                qx, qy = x[rows], y[rows]
                radius = (
                    torch.stack(
                        [
                            qx - (qc[:, 0] - ring) * self.h,
                            (qc[:, 0] + ring + 1) * self.h - qx,
                            qy - (qc[:, 1] - ring) * self.h,
                            (qc[:, 1] + ring + 1) * self.h - qy,
                        ],
                        1,
                    )
                    .min(1)
                    .values
                    - 1e-5 * self.h
                )
                good &= top_d2[:, -1] < radius * radius
                cand[rows[good]] = top[good]
                cand_d2[rows[good]] = top_d2[good]
                ok[qorder[s:e]] = good
        return ok


def _brute_pass(x: Tensor, y: Tensor, todo: Tensor, c: int, cand: Tensor, cand_d2: Tensor) -> None:
    n = x.shape[0]
    cols = torch.arange(n, device=x.device)
    step = max(1, _CHUNK_ELEMS // n)
    for s in range(0, todo.numel(), step):
        rows = todo[s : s + step]
        d2 = _sqdist(x[rows, None], y[rows, None], x, y)
        top, sel = _smallest(_rank_keys(d2, cols, rows), cols, c)
        cand[rows] = top
        cand_d2[rows] = d2.gather(1, sel)


# -------------------------------------------------------------------------- incidence conversions
def hyperedge_index_to_incidence(
    hyperedge_index: Tensor, num_nodes: int | None = None, num_edges: int | None = None
) -> Tensor:
    """Sparse incidence matrix ``H`` (``H[i, e] = 1`` iff node ``i`` is in hyperedge ``e``).

    Parameters
    ----------
    hyperedge_index
        ``(2, nnz)`` int tensor, row 0 nodes, row 1 hyperedges (PyG :class:`~torch_geometric.nn.HypergraphConv`).
    num_nodes, num_edges
        Shape of ``H``; default one past the largest index.

    Returns
    -------
    Coalesced float32 sparse COO tensor of shape ``(num_nodes, num_edges)``; repeated pairs count once.
    """
    if not isinstance(hyperedge_index, Tensor) or hyperedge_index.ndim != 2 or hyperedge_index.shape[0] != 2:
        raise ValueError(f"`hyperedge_index` must be a (2, nnz) tensor, got {_describe(hyperedge_index)}.")
    idx = hyperedge_index.to(torch.int64)
    empty = idx.shape[1] == 0
    num_nodes = (0 if empty else int(idx[0].max()) + 1) if num_nodes is None else num_nodes
    num_edges = (0 if empty else int(idx[1].max()) + 1) if num_edges is None else num_edges
    if not empty and (int(idx.min()) < 0 or int(idx[0].max()) >= num_nodes or int(idx[1].max()) >= num_edges):
        raise ValueError(
            f"`hyperedge_index` has entries outside [0, {num_nodes}) x [0, {num_edges}) (num_nodes x num_edges)."
        )
    ones = torch.ones(idx.shape[1], dtype=torch.float32, device=idx.device)
    # Bounds were checked above, so torch's (slow) invariant checks are not needed.
    inc = torch.sparse_coo_tensor(idx, ones, (num_nodes, num_edges), check_invariants=False).coalesce()
    # coalesce() sums duplicates; membership is binary.
    return torch.sparse_coo_tensor(
        inc.indices(), torch.ones_like(inc.values()), inc.shape, check_invariants=False
    ).coalesce()


def incidence_to_hyperedge_index(incidence: Any) -> tuple[Tensor, int]:
    """PyG ``(hyperedge_index, num_edges)`` from an incidence matrix ``H`` of shape ``(n_nodes, n_edges)``.

    Parameters
    ----------
    incidence
        scipy sparse matrix/array (e.g. ``adata.obsp["hypergraph_incidence"]``), torch sparse
        (COO/CSR/CSC) or dense tensor, or numpy array. Nonzero entries are memberships.

    Returns
    -------
    ``hyperedge_index`` (``(2, nnz)`` int64, sorted by hyperedge then node) and ``num_edges``
    (the number of columns, so empty hyperedges are kept), for
    ``HypergraphConv(...)(x, hyperedge_index, num_edges=num_edges)``.
    """
    if isinstance(incidence, Tensor):
        if incidence.ndim != 2:
            raise ValueError(f"`incidence` must be 2-D, got shape {tuple(incidence.shape)}.")
        if incidence.layout != torch.strided:
            incidence = incidence.to_sparse_coo().coalesce()
            idx, vals = incidence.indices(), incidence.values()
            idx = idx[:, vals != 0]
        else:
            idx = incidence.nonzero().T
        num_edges = incidence.shape[1]
    elif hasattr(incidence, "tocoo") or hasattr(incidence, "nonzero"):
        # scipy sparse or numpy: converted through numpy so scst.nn does not import scipy.
        if getattr(incidence, "ndim", 2) != 2:
            raise ValueError(f"`incidence` must be 2-D, got shape {incidence.shape}.")
        if hasattr(incidence, "tocoo"):
            coo = incidence.tocoo()
            keep = coo.data != 0
            rows, cols = coo.row[keep], coo.col[keep]
        else:
            rows, cols = incidence.nonzero()
        idx = torch.stack([torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64)])
        num_edges = incidence.shape[1]
    else:
        raise ValueError(
            f"`incidence` must be a scipy/torch sparse matrix or a dense array, got {_describe(incidence)}."
        )
    idx = idx.to(torch.int64)
    # Canonical order (hyperedge, node), also merging scipy's possible duplicate entries.
    n_rows = int(incidence.shape[0])
    flat = torch.unique(idx[1] * max(1, n_rows) + idx[0])
    return torch.stack([flat % max(1, n_rows), flat // max(1, n_rows)]), int(num_edges)
