"""Tests for scst.pp.hypergraph (HGGEP hypergraph stored on AnnData)."""

from __future__ import annotations

import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch
from spatialdata import SpatialData
from torch_geometric.nn import HypergraphConv

from scst.nn._hypergraph import incidence_to_hyperedge_index, knn_hyperedges
from scst.pp._hypergraph import hypergraph

# The 2 x 3 grid of tests/nn/test_hypergraph.py (hand-checked there):   3 4 5
#                                                                       0 1 2
HAND_POS = np.array([[0, 0], [1, 0], [2, 0], [0, 1], [1, 1], [2, 1]], dtype=float)
HAND_FEAT = np.array([[0.0], [0.0], [0.0], [2.0], [0.0], [2.0]])
HAND_MEMBERS = [[0, 1, 4], [1, 0, 2], [2, 1, 4], [3, 0, 4], [4, 1, 0], [5, 2, 3]]


def _hand_adata() -> ad.AnnData:
    adata = ad.AnnData(np.zeros((6, 2), dtype=np.float32))
    adata.obsm["spatial"] = HAND_POS
    adata.obsm["X_pca"] = HAND_FEAT
    return adata


def _two_sections(n: int = 80, seed: int = 0) -> ad.AnnData:
    """Two sections on the *same* coordinates, with identical features: without the section split every
    spot's best partner (score 0) would be its twin in the other section."""
    rng = np.random.default_rng(seed)
    pos = rng.uniform(0, 50, size=(n, 2))
    feat = rng.normal(size=(n, 8))
    adata = ad.AnnData(np.zeros((2 * n, 3), dtype=np.float32))
    adata.obsm["spatial"] = np.vstack([pos, pos])
    adata.obsm["X_pca"] = np.vstack([feat, feat])
    adata.obs["section"] = pd.Categorical(["B"] * n + ["A"] * n)
    return adata


def test_hand_checked_incidence():
    adata = _hand_adata()
    assert hypergraph(adata, library_key=None) is None
    inc = adata.obsp["hypergraph_incidence"]
    assert sp.issparse(inc) and inc.format == "csr" and inc.dtype == np.float32
    expected = np.zeros((6, 6))
    for e, members in enumerate(HAND_MEMBERS):
        expected[members, e] = 1
    np.testing.assert_array_equal(inc.toarray(), expected)
    assert adata.uns["hypergraph"] == {
        "params": {
            "use_rep": "X_pca",
            "spatial_key": "spatial",
            "k": 3,
            "n_candidates": 16,
            "exact": None,
            "library_key": None,
        },
        "incidence_key": "hypergraph_incidence",
    }


def test_sections_are_separated():
    n = 80
    adata = _two_sections(n)
    hypergraph(adata, k=4, key_added="hg")
    inc = adata.obsp["hg_incidence"].toarray()
    assert inc.sum() == 2 * n * 4 and (inc.sum(0) == 4).all()
    assert inc[:n, n:].sum() == 0 and inc[n:, :n].sum() == 0
    # Each block is the single-section hypergraph, and the twin sections give the same block.
    hei = knn_hyperedges(torch.tensor(adata.obsm["X_pca"][:n]), torch.tensor(adata.obsm["spatial"][:n]), 4)
    block = np.zeros((n, n))
    block[hei[0].numpy(), hei[1].numpy()] = 1
    np.testing.assert_array_equal(inc[:n, :n], block)
    np.testing.assert_array_equal(inc[n:, n:], block)
    assert adata.uns["hg"]["params"]["library_key"] == "section"

    # Without sections the twins (score 0, lower index first) join every hyperedge.
    hypergraph(adata, k=4, library_key=None, key_added="global")
    glob = adata.obsp["global_incidence"].toarray()
    assert all(glob[(e + n) % (2 * n), e] == 1 for e in range(2 * n))


def test_missing_library_key_builds_one_hypergraph():
    adata = _two_sections(30)
    del adata.obs["section"]
    with pytest.warns(UserWarning, match="library_key='section' is not a column of adata.obs; building one"):
        hypergraph(adata, k=2)
    inc = adata.obsp["hypergraph_incidence"].toarray()
    assert inc[30:, :30].sum() == 30  # each hyperedge of section 1 takes its twin in section 2
    assert adata.uns["hypergraph"]["params"]["library_key"] is None
    with warnings.catch_warnings():  # pooling asked for: no warning
        warnings.simplefilter("error")
        hypergraph(adata, k=2, library_key=None, key_added="pooled")
    assert (adata.obsp["pooled_incidence"] != adata.obsp["hypergraph_incidence"]).nnz == 0


def test_fast_and_exact_agree_through_anndata():
    adata = _two_sections(300, seed=1)
    hypergraph(adata, k=3, exact=True, key_added="dense")
    hypergraph(adata, k=3, exact=False, n_candidates=64, key_added="fast")
    assert (adata.obsp["dense_incidence"] != adata.obsp["fast_incidence"]).nnz == 0


def test_copy_and_use_rep_x():
    adata = _hand_adata()
    adata.X = sp.csr_matrix(np.hstack([HAND_FEAT, np.zeros((6, 1))]).astype(np.float32))  # same distances
    out = hypergraph(adata, use_rep="X", library_key=None, copy=True)
    assert isinstance(out, ad.AnnData) and out is not adata
    assert "hypergraph_incidence" not in adata.obsp and "hypergraph" not in adata.uns
    assert out.obsp["hypergraph_incidence"][[0, 1, 4], 0].toarray().ravel().tolist() == [1, 1, 1]
    assert out.uns["hypergraph"]["params"]["use_rep"] == "X"


def test_spatialdata_table_edited_in_place():
    sdata = SpatialData(tables={"table": _hand_adata()})
    hypergraph(sdata, library_key=None)
    inc = sdata.tables["table"].obsp["hypergraph_incidence"]
    assert inc[:, 0].nonzero()[0].tolist() == [0, 1, 4]


def test_incidence_to_pyg_hypergraph_conv():
    adata = _two_sections(50)
    hypergraph(adata, k=3)
    hei, num_edges = incidence_to_hyperedge_index(adata.obsp["hypergraph_incidence"])
    assert num_edges == adata.n_obs and hei.shape == (2, adata.n_obs * 3)
    x = torch.tensor(adata.obsm["X_pca"], dtype=torch.float32)
    conv = HypergraphConv(8, 8, bias=False)
    with torch.no_grad():
        conv.lin.weight.copy_(torch.eye(8))
    out = conv(x, hei, num_edges=num_edges)
    # Spots only mix within their section: the twin sections give identical outputs.
    torch.testing.assert_close(out[:50], out[50:])
    H = torch.tensor(adata.obsp["hypergraph_incidence"].toarray())
    torch.testing.assert_close(out, (H @ (H.T @ x) / 3) / H.sum(1, keepdim=True), rtol=1e-5, atol=1e-5)


def test_bad_keys_and_k():
    adata = _two_sections(5)
    with pytest.raises(KeyError, match="use_rep"):
        hypergraph(adata, use_rep="X_missing")
    with pytest.raises(KeyError, match="spatial_key"):
        hypergraph(adata, spatial_key="coords")
    with pytest.raises(ValueError, match="`k`"):
        hypergraph(adata, k=0)
    with pytest.raises(ValueError, match="section 'A'"):
        hypergraph(adata, k=6)  # 10 spots in all, 5 per section
    adata.obsm["bad"] = np.zeros((10, 3))
    with pytest.raises(ValueError, match="shape"):
        hypergraph(adata, spatial_key="bad")
    adata.obs["lib"] = pd.Series([None] + ["x"] * 9, index=adata.obs_names, dtype=object)
    with pytest.raises(ValueError, match="missing values"):
        hypergraph(adata, library_key="lib")
    assert "hypergraph_incidence" not in adata.obsp


def test_interleaved_sections_use_their_own_coordinates():
    # Two sections with different layouts, rows interleaved (B, A, B, A, ...): each section's block is the
    # hypergraph of that section's own features and coordinates.
    rng = np.random.default_rng(3)
    n = 20
    pos = [rng.uniform(0, 50, size=(n, 2)), rng.uniform(0, 5, size=(n, 2)) * [10, 1]]
    feat = [rng.normal(size=(n, 4)), rng.normal(size=(n, 4))]
    adata = ad.AnnData(np.zeros((2 * n, 1), dtype=np.float32))
    order = np.arange(2 * n).reshape(n, 2).T  # section s holds rows order[s] = s, s + 2, ...
    adata.obsm["spatial"] = np.zeros((2 * n, 2))
    adata.obsm["X_pca"] = np.zeros((2 * n, 4))
    for s in (0, 1):
        adata.obsm["spatial"][order[s]] = pos[s]
        adata.obsm["X_pca"][order[s]] = feat[s]
    adata.obs["section"] = pd.Categorical(np.where(np.arange(2 * n) % 2 == 0, "B", "A"))
    hypergraph(adata, k=3)
    inc = adata.obsp["hypergraph_incidence"].toarray()
    for s in (0, 1):
        hei = knn_hyperedges(torch.tensor(feat[s], dtype=torch.float32), torch.tensor(pos[s]), 3)
        block = np.zeros((n, n))
        block[hei[0].numpy(), hei[1].numpy()] = 1
        np.testing.assert_array_equal(inc[np.ix_(order[s], order[s])], block)
    assert inc.sum() == 2 * n * 3


def test_k_may_equal_the_section_size_but_not_be_a_bool():
    adata = _two_sections(5)
    hypergraph(adata, k=5)
    inc = adata.obsp["hypergraph_incidence"].toarray()
    assert inc[:5, :5].all() and inc[5:, 5:].all() and inc.sum() == 50
    with pytest.raises(ValueError, match="`k`"):
        hypergraph(adata, k=True)


def test_numpy_integer_k_is_an_int():
    # np.int64(3) was refused ("`k` must be an int >= 1, got np.int64(3)"); the record must stay a Python int (JSON)
    a, b = _two_sections(6), _two_sections(6)
    hypergraph(a, k=np.int64(3))
    hypergraph(b, k=3)
    assert (a.obsp["hypergraph_incidence"] != b.obsp["hypergraph_incidence"]).nnz == 0
    assert type(a.uns["hypergraph"]["params"]["k"]) is int


def test_exact_and_n_candidates_reach_the_ranking_and_the_record(monkeypatch):
    # Recording stub around knn_hyperedges: the ranking options are passed on per section, not replaced by defaults.
    import scst.pp._hypergraph as mod

    calls = []
    real = mod.knn_hyperedges

    def recording(feats, pos, k, **kw):
        calls.append({"n": feats.shape[0], "k": k, **kw})
        return real(feats, pos, k, **kw)

    monkeypatch.setattr(mod, "knn_hyperedges", recording)
    adata = _two_sections(30)
    hypergraph(adata, k=4, n_candidates=7, exact=False)
    assert calls == [{"n": 30, "k": 4, "n_candidates": 7, "exact": False}] * 2
    params = adata.uns["hypergraph"]["params"]
    assert params["n_candidates"] == 7 and params["exact"] is False
    calls.clear()
    hypergraph(adata, k=2, n_candidates=None, exact=True, library_key=None)
    assert calls == [{"n": 60, "k": 2, "n_candidates": None, "exact": True}]
    params = adata.uns["hypergraph"]["params"]
    assert params["n_candidates"] is None and params["exact"] is True


def test_far_offset_coordinates_keep_their_precision():
    # Slide coordinates far from the origin (1e8 + small integers): float32 would merge neighbouring spots (its
    # spacing is 8 there) and change the ranking; the hand-checked hypergraph is translation invariant.
    adata = _hand_adata()
    adata.obsm["spatial"] = HAND_POS + 1e8
    hypergraph(adata, library_key=None)
    inc = adata.obsp["hypergraph_incidence"].toarray()
    assert [sorted(np.flatnonzero(inc[:, e]).tolist()) for e in range(6)] == [sorted(m) for m in HAND_MEMBERS]


def test_dataframe_features_are_used_like_an_array():
    adata = _hand_adata()
    adata.obsm["X_df"] = pd.DataFrame(HAND_FEAT, index=adata.obs_names, columns=["f0"])
    hypergraph(adata, use_rep="X_df", library_key=None)
    expected = np.zeros((6, 6))
    for e, members in enumerate(HAND_MEMBERS):
        expected[members, e] = 1
    np.testing.assert_array_equal(adata.obsp["hypergraph_incidence"].toarray(), expected)


def test_non_finite_inputs_and_no_spots_name_the_argument():
    adata = _hand_adata()
    adata.obsm["spatial"] = HAND_POS.copy()
    adata.obsm["spatial"][2, 1] = np.nan
    with pytest.raises(ValueError, match="spatial_key"):
        hypergraph(adata, library_key=None)
    adata = _hand_adata()
    adata.obsm["X_pca"] = HAND_FEAT.copy()
    adata.obsm["X_pca"][4, 0] = np.inf
    with pytest.raises(ValueError, match="use_rep"):
        hypergraph(adata, library_key=None)
    empty = _two_sections(3)[:0].copy()
    with pytest.raises(ValueError, match="no spots"):
        hypergraph(empty, k=1)
    assert "hypergraph_incidence" not in adata.obsp


def test_features_of_more_than_two_dims_are_refused_naming_them():
    adata = _two_sections(5)
    adata.obsm["cube"] = np.zeros((adata.n_obs, 2, 2))
    with pytest.raises(ValueError, match=r"Features 'cube' must have shape \(n_obs, d\), got \(10, 2, 2\)"):
        hypergraph(adata, use_rep="cube")
