"""Tests for scst.nn._hypergraph (HGGEP feature/position k-NN hyperedges)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from torch_geometric.nn import HypergraphConv

from scst.nn._hypergraph import (
    DENSE_MAX_N,
    _brute_pass,
    _rank_keys,
    _spatial_candidates,
    _use_dense,
    hyperedge_index_to_incidence,
    incidence_to_hyperedge_index,
    knn_hyperedges,
)

# Six spots on a 2 x 3 unit grid:   3 4 5   (y = 1)
#                                  0 1 2   (y = 0)
HAND_POS = torch.tensor([[0, 0], [1, 0], [2, 0], [0, 1], [1, 1], [2, 1]], dtype=torch.float32)
HAND_FEAT = torch.tensor([[0.0], [0.0], [0.0], [2.0], [0.0], [2.0]])
# Reference pairs (k - 1 = 2 nearest others, ties by position (y, x) = index here):
# 0:{1,3} 1:{0,2} 2:{1,5} 3:{0,4} 4:{1,3} 5:{2,4},
# all at distance 1 -> s_p = 1. Their feature gaps 0,2 | 0,0 | 0,2 | 2,2 | 0,2 | 2,2 (five 0s, seven 2s)
# -> lower median s_f = 2. Score S(e, j) = |f_e - f_j| / 2 + dist(e, j):
#   spot 0: j1 = 1, j4 = sqrt 2, j2 = j3 = 2         -> [0, 1, 4]  (feature-similar diagonal beats adjacent 3)
#   spot 1: j0 = j2 = j4 = 1                         -> [1, 0, 2]  (three-way tie, by position order)
#   spot 2: j1 = 1, j4 = sqrt 2, j0 = j5 = 2         -> [2, 1, 4]
#   spot 3: j0 = j4 = j5 = 2, j1 = 1 + sqrt 2        -> [3, 0, 4]  (with s_f = 1, j5 = 2 < j0 = j4 = 3)
#   spot 4: j1 = 1, j0 = j2 = sqrt 2                 -> [4, 1, 0]
#   spot 5: j2 = j3 = j4 = 2, j1 = 1 + sqrt 2        -> [5, 2, 3]  (spot 3, two away, ties the adjacent ones)
HAND_MEMBERS = [[0, 1, 4], [1, 0, 2], [2, 1, 4], [3, 0, 4], [4, 1, 0], [5, 2, 3]]


def _expected_index(members: list[list[int]]) -> torch.Tensor:
    k = len(members[0])
    nodes = torch.tensor(members).reshape(-1)
    return torch.stack([nodes, torch.arange(len(members)).repeat_interleave(k)])


def _naive(features: np.ndarray, positions: np.ndarray, k: int) -> np.ndarray:
    """Loop-by-loop float64 re-implementation of the documented definition (dense)."""
    n = len(features)
    pos_d = np.sqrt(((positions[:, None] - positions[None]) ** 2).sum(-1))
    feat_d = np.sqrt(((features[:, None] - features[None]) ** 2).sum(-1))
    ref_f, ref_p = [], []
    for i in range(n):
        others = sorted((pos_d[i, j], j) for j in range(n) if j != i)[: k - 1]
        ref_p += [d for d, _ in others]
        ref_f += [feat_d[i, j] for _, j in others]

    def lower_median(v):
        s = sorted(v)[(len(v) - 1) // 2]
        return s if s > 0 else 1.0

    s_f, s_p = lower_median(ref_f), lower_median(ref_p)
    members = []
    for e in range(n):
        ranked = sorted((feat_d[e, j] / s_f + pos_d[e, j] / s_p, j) for j in range(n) if j != e)
        members.append([e] + [j for _, j in ranked[: k - 1]])
    return np.array(members)


def _hex_grid(rows: int, cols: int) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij")
    x = (xx * 2 + (yy % 2)).reshape(-1).float()
    y = (yy * math.sqrt(3)).reshape(-1).float()
    return torch.stack([x, y], 1) * 50.0


def _clusters() -> torch.Tensor:
    """A wide cluster, a very tight one (crowded grid cells) and sparse background (brute-force fallback)."""
    g = torch.Generator().manual_seed(7)
    wide = torch.randn(250, 2, generator=g)
    tight = torch.randn(250, 2, generator=g) * 0.01 + 40
    return torch.cat([wide, tight, torch.rand(30, 2, generator=g) * 500])


@pytest.mark.parametrize("exact", [True, None])
def test_hand_checked_dense(exact):
    out = knn_hyperedges(HAND_FEAT, HAND_POS, k=3, exact=exact)
    assert out.dtype == torch.int64
    torch.testing.assert_close(out, _expected_index(HAND_MEMBERS))


def test_hand_checked_fast_path():
    # 5 candidates per spot hold every member found densely (spot 5: 5, 2, 4, 1, 3) -> identical result.
    out = knn_hyperedges(HAND_FEAT, HAND_POS, k=3, n_candidates=5, exact=False)
    torch.testing.assert_close(out, _expected_index(HAND_MEMBERS))
    # With only 3 candidates (centre + 2 nearest, ties by index) spot 0 sees {0, 1, 3}, spot 2 {2, 1, 5},
    # spot 4 {4, 1, 3} and spot 5 {5, 2, 4}: the feature-similar spots are cut.
    out = knn_hyperedges(HAND_FEAT, HAND_POS, k=3, n_candidates=3, exact=False)
    members = out[0].reshape(6, 3).tolist()
    assert members == [[0, 1, 3], [1, 0, 2], [2, 1, 5], [3, 0, 4], [4, 1, 3], [5, 2, 4]]


def test_matches_naive_reference():
    g = torch.Generator().manual_seed(0)
    pos = torch.rand(60, 2, generator=g) * 20
    feat = torch.randn(60, 5, generator=g) + pos[:, :1] / 5  # features correlate with x
    out = knn_hyperedges(feat, pos, k=4, exact=True)
    expected = _naive(feat.double().numpy(), pos.double().numpy(), 4)
    np.testing.assert_array_equal(out[0].reshape(60, 4).numpy(), expected)
    np.testing.assert_array_equal(out[1].numpy(), np.repeat(np.arange(60), 4))


@pytest.mark.parametrize(
    "positions",
    [
        pytest.param(torch.rand(1500, 2, generator=torch.Generator().manual_seed(1)) * 1000, id="uniform"),
        pytest.param(_hex_grid(30, 40), id="hex-grid"),
    ],
)
def test_fast_equals_exact(positions):
    g = torch.Generator().manual_seed(2)
    n = positions.shape[0]
    feat = torch.randn(n, 16, generator=g) + torch.sin(positions[:, :1] / 100)
    exact = knn_hyperedges(feat, positions, k=5, exact=True)
    fast = knn_hyperedges(feat, positions, k=5, n_candidates=64, exact=False)
    torch.testing.assert_close(fast, exact)
    # With few candidates the fast path must differ somewhere on this data (otherwise the test is vacuous).
    few = knn_hyperedges(feat, positions, k=5, n_candidates=5, exact=False)
    assert not torch.equal(few, exact)


@pytest.mark.parametrize(
    "positions",
    [
        pytest.param(_hex_grid(20, 25), id="hex-grid-ties"),
        pytest.param(_clusters(), id="clusters"),
        pytest.param(torch.stack([torch.arange(400.0) % 97, torch.zeros(400)], 1), id="line-with-duplicates"),
        pytest.param(torch.zeros(40, 2), id="all-identical"),
    ],
)
@pytest.mark.parametrize("c", [1, 7, 25])
def test_spatial_candidates_match_brute_force(positions, c):
    pos = positions - positions.min(0).values
    n = pos.shape[0]
    cand, cand_d2 = _spatial_candidates(pos, c)
    # Independent reference: numpy lexsort on (distance, index), self forced first. Same float32
    # arithmetic as the routine, so float ties (hex grid) are the same ties.
    p = pos.numpy()
    dx = p[None, :, 0] - p[:, None, 0]
    dy = p[None, :, 1] - p[:, None, 1]
    d2 = (dx * dx + dy * dy).astype(np.float64)
    np.fill_diagonal(d2, -1.0)
    ref = np.stack([np.lexsort((np.arange(n), row))[:c] for row in d2])
    np.testing.assert_array_equal(cand.numpy(), ref)
    assert (cand[:, 0] == torch.arange(n)).all()
    brute = torch.empty_like(cand), torch.empty_like(cand_d2)
    _brute_pass(pos[:, 0].contiguous(), pos[:, 1].contiguous(), torch.arange(n), c, *brute)
    torch.testing.assert_close(cand_d2, brute[1])


@pytest.mark.parametrize("exact", [True, False])
def test_permuted_rows_give_permuted_hyperedges_on_a_lattice(exact):
    """Metamorphic: rows in another order → the same hyperedges, relabelled (HGGEP's windows are in table order).

    On a lattice, a spot's k - 1 nearest others tie with further equidistant neighbours; picking the reference
    pairs by row index made the feature scale s_f, and so some hyperedges, depend on the order of the rows.
    """
    g = torch.Generator().manual_seed(0)
    pos = torch.stack(torch.meshgrid(torch.arange(8.0), torch.arange(8.0), indexing="ij"), -1).reshape(-1, 2) * 80
    n, k = len(pos), 3
    for _ in range(20):
        feat = torch.randn(n, 16, generator=g)
        perm = torch.randperm(n, generator=g)
        ref = knn_hyperedges(feat, pos, k=k, n_candidates=8, exact=exact)[0].reshape(n, k)
        got = knn_hyperedges(feat[perm], pos[perm], k=k, n_candidates=8, exact=exact)[0].reshape(n, k)
        torch.testing.assert_close(perm[got], ref[perm], rtol=0, atol=0)


@pytest.mark.parametrize("seed", [7, 25, 32])
def test_spatial_candidates_grid_radius_is_tight_on_every_side(seed):
    # Small random strips of varying aspect ratio: the grid search accepts a query only when its c-th
    # distance is inside the (2 ring + 1)^2 block on all four sides; overestimating any one side's
    # border distance (or dropping the rounding margin) accepts a list missing a closer spot.
    g = torch.Generator().manual_seed(seed)
    pos = torch.rand(20 + 5 * seed, 2, generator=g) * torch.tensor([1.0, 1.0 + seed % 5])
    pos = pos - pos.min(0).values
    p = pos.numpy()
    n = len(p)
    d2 = ((p[None, :, 0] - p[:, None, 0]) ** 2 + (p[None, :, 1] - p[:, None, 1]) ** 2).astype(np.float64)
    np.fill_diagonal(d2, -1.0)
    for c in (2, 3, 5):
        ref = np.stack([np.lexsort((np.arange(n), row))[:c] for row in d2])
        np.testing.assert_array_equal(_spatial_candidates(pos, c)[0].numpy(), ref)


def test_dense_or_fast_switch_boundaries():
    # exact=None: dense up to and including DENSE_MAX_N spots; candidates covering every spot are dense
    # even with exact=False (the fast path would only add rounding differences).
    assert _use_dense(DENSE_MAX_N, 16, None) and not _use_dense(DENSE_MAX_N + 1, 16, None)
    assert _use_dense(6, 6, False) and not _use_dense(6, 5, False)
    assert _use_dense(6, None, None) and not _use_dense(6, 3, False) and _use_dense(10**6, 3, True)


def test_rank_keys_treat_negative_zero_as_zero():
    # -0.0's float32 bits are negative as an integer; it must tie with +0.0 (then order by column).
    keys = _rank_keys(torch.tensor([[0.5, 0.0, -0.0, 0.25]]), torch.arange(4))
    assert keys.argsort(1).tolist() == [[1, 2, 3, 0]]
    # The centre comes first, padding last, whatever their values.
    keys = _rank_keys(
        torch.tensor([[0.5, 0.1, 0.0]]), torch.arange(3), torch.tensor([0]), torch.tensor([[1, 1, 0]]).bool()
    )
    assert keys.argsort(1).tolist() == [[0, 1, 2]]


def test_large_coordinates_keep_pixel_precision():
    # float64 positions around 1e8 (float32 spacing 8 there): shifted before the float32 cast, the unit
    # grid survives and the hand-checked hyperedges are unchanged.
    out = knn_hyperedges(HAND_FEAT, HAND_POS.double() + 1e8, k=3)
    torch.testing.assert_close(out, _expected_index(HAND_MEMBERS))


def test_structure_self_first_and_distinct():
    g = torch.Generator().manual_seed(3)
    pos = torch.rand(3000, 2, generator=g) * 100
    feat = torch.randn(3000, 8, generator=g)
    out = knn_hyperedges(feat, pos, k=6)  # n > 2048 -> fast path
    members = out[0].reshape(3000, 6)
    assert out.shape == (2, 3000 * 6)
    assert (members[:, 0] == torch.arange(3000)).all()
    assert (members.sort(1).values.diff(dim=1) > 0).all()  # no repeated member
    # Members are spatial neighbours: within the 16 nearest, far below the field's 100 px size.
    dist = (pos[members] - pos[:, None]).norm(dim=-1)
    assert dist.max() < 10


def test_duplicates_keep_centre_first():
    pos = torch.zeros(4, 2)
    feat = torch.ones(4, 3)
    members = knn_hyperedges(feat, pos, k=3)[0].reshape(4, 3)
    # All scores tie at 0: the centre first, then the lowest other indices.
    assert members.tolist() == [[0, 1, 2], [1, 0, 2], [2, 0, 1], [3, 0, 1]]


def test_k1_is_self_loops_and_no_gradient():
    feat = torch.randn(10, 4, requires_grad=True)
    pos = torch.rand(10, 2)
    out = knn_hyperedges(feat, pos, k=1)
    torch.testing.assert_close(out, torch.stack([torch.arange(10), torch.arange(10)]))
    out = knn_hyperedges(feat * 2, pos, k=3)
    assert not out.requires_grad and out.dtype == torch.int64


def test_hypergraph_conv_forward_uses_hyperedges():
    g = torch.Generator().manual_seed(4)
    n, d, k = 40, 6, 3
    pos = torch.rand(n, 2, generator=g) * 10
    x = torch.randn(n, d, generator=g)
    hei = knn_hyperedges(x, pos, k=k)
    conv = HypergraphConv(d, d, bias=False)
    with torch.no_grad():
        conv.lin.weight.copy_(torch.eye(d))
    out = conv(x, hei, num_edges=n)
    # HypergraphConv: D^-1 H B^-1 H^T X with B_e = k (every hyperedge has k spots), D_i = degree of spot i.
    H = hyperedge_index_to_incidence(hei, n, n).to_dense()
    expected = (H @ (H.T @ x) / k) / H.sum(1, keepdim=True)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    assert out.shape == (n, d)


def test_incidence_round_trip():
    g = torch.Generator().manual_seed(5)
    pos = torch.rand(30, 2, generator=g)
    feat = torch.randn(30, 4, generator=g)
    hei = knn_hyperedges(feat, pos, k=4)
    canonical = hei[:, torch.argsort(hei[1] * 30 + hei[0])]

    inc = hyperedge_index_to_incidence(hei, 30, 30)
    assert inc.shape == (30, 30) and inc.is_sparse
    dense = inc.to_dense()
    assert dense.sum() == 120 and (dense.sum(0) == 4).all()
    assert dense[hei[0], hei[1]].eq(1).all()

    csr = sp.csr_matrix(dense.numpy())
    for form in (inc, inc.to_sparse_csr(), dense, csr, csr.tocsc(), dense.numpy()):
        back, num_edges = incidence_to_hyperedge_index(form)
        assert num_edges == 30
        torch.testing.assert_close(back, canonical)


def test_incidence_keeps_empty_hyperedges_and_merges_duplicates():
    hei = torch.tensor([[0, 1, 1, 2], [0, 0, 0, 2]])  # (1, 0) repeated; hyperedges 1 and 3 empty
    inc = hyperedge_index_to_incidence(hei, num_nodes=3, num_edges=4)
    assert inc.to_dense().tolist() == [[1, 0, 0, 0], [1, 0, 0, 0], [0, 0, 1, 0]]
    back, num_edges = incidence_to_hyperedge_index(inc)
    assert num_edges == 4
    assert back.tolist() == [[0, 1, 2], [0, 0, 2]]
    # scipy COO with a duplicated entry counts once.
    coo = sp.coo_matrix(([1.0, 1.0, 1.0], ([1, 1, 0], [2, 2, 0])), shape=(2, 3))
    back, num_edges = incidence_to_hyperedge_index(coo)
    assert back.tolist() == [[0, 1], [0, 2]] and num_edges == 3


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"k": 0}, "`k`"),
        ({"k": 7}, "`k`"),
        ({"k": True}, "`k`"),
        ({"k": 3, "n_candidates": 2}, "`n_candidates`"),
        ({"k": 3, "n_candidates": None, "exact": False}, "exact=False"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        knn_hyperedges(HAND_FEAT, HAND_POS, **kwargs)


def test_bad_inputs():
    with pytest.raises(ValueError, match="`features`"):
        knn_hyperedges(torch.ones(6), HAND_POS)
    with pytest.raises(ValueError, match="`positions`"):
        knn_hyperedges(HAND_FEAT, torch.ones(6, 3))
    with pytest.raises(ValueError, match="rows"):
        knn_hyperedges(HAND_FEAT, HAND_POS[:5])
    with pytest.raises(ValueError, match="NaN"):
        knn_hyperedges(torch.full((6, 1), float("nan")), HAND_POS)
    with pytest.raises(ValueError, match="`hyperedge_index`"):
        hyperedge_index_to_incidence(torch.tensor([[0, 5]]))
    with pytest.raises(ValueError, match="outside"):
        hyperedge_index_to_incidence(torch.tensor([[0, 5], [0, 0]]), num_nodes=3)
    with pytest.raises(ValueError, match="outside"):
        hyperedge_index_to_incidence(torch.tensor([[-1, 0], [0, 0]]), num_nodes=3, num_edges=3)
    with pytest.raises(ValueError, match="`incidence`"):
        incidence_to_hyperedge_index([[1, 0]])


def test_incidence_explicit_zeros_are_not_memberships():
    # Stored zeros (torch sparse or scipy) are dropped, exactly as dense zeros are.
    t = torch.sparse_coo_tensor(torch.tensor([[0, 1, 1], [0, 1, 2]]), torch.tensor([1.0, 0.0, 1.0]), (2, 3))
    s = sp.coo_matrix(([1.0, 0.0, 1.0], ([0, 1, 1], [0, 1, 2])), shape=(2, 3))
    for form in (t, t.to_sparse_csr(), s, s.tocsr()):
        back, num_edges = incidence_to_hyperedge_index(form)
        assert back.tolist() == [[0, 1], [0, 2]] and num_edges == 3


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    g = torch.Generator().manual_seed(6)
    pos = _hex_grid(60, 60)
    feat = torch.randn(pos.shape[0], 32, generator=g)
    cpu = knn_hyperedges(feat, pos, k=3, exact=False)
    gpu = knn_hyperedges(feat.cuda(), pos.cuda(), k=3, exact=False)
    assert gpu.device.type == "cuda"
    torch.testing.assert_close(gpu.cpu(), cpu)


@pytest.mark.parametrize("exact", [True, False])
def test_hyperedges_are_invariant_to_similarity_transforms_and_dtypes(exact):
    """Both distances are divided by their median scale (Norm of eq. 16), so translating, rotating by 90° or
    uniformly scaling the positions, scaling the features, and float64 / integer inputs give the same hyperedges."""
    g = torch.Generator().manual_seed(0)
    f, p = torch.randn(40, 6, generator=g), torch.randint(0, 500, (40, 2), generator=g)
    kw = {"k": 3, "exact": exact, "n_candidates": 8}
    ref = knn_hyperedges(f, p.float(), **kw)
    for feats, pos in [
        (f, p),  # int64 positions
        (f.double(), p.double()),
        (f, p.float() + 1e4),
        (f, p.float() * 7.5),
        (f * 3.0, p.float()),
        (f, torch.stack([-p[:, 1], p[:, 0]], 1).float()),
    ]:
        assert torch.equal(knn_hyperedges(feats, pos, **kw), ref)


def test_empty_features_non_finite_positions_and_non_2d_incidence_are_named():
    with pytest.raises(ValueError, match="`features` has no rows; need at least one spot"):
        knn_hyperedges(torch.zeros(0, 3), torch.zeros(0, 2), k=1)
    pos = torch.tensor([[0.0, 0.0], [1.0, float("nan")], [2.0, 0.0]])
    with pytest.raises(ValueError, match="`positions` contains NaN or infinite values"):
        knn_hyperedges(torch.rand(3, 2), pos, k=2)
    with pytest.raises(ValueError, match=r"`incidence` must be 2-D, got shape \(2, 2, 2\)"):
        incidence_to_hyperedge_index(torch.ones(2, 2, 2))
    with pytest.raises(ValueError, match=r"`incidence` must be 2-D, got shape \(4,\)"):
        incidence_to_hyperedge_index(np.ones(4))
