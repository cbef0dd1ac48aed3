"""scst.pp.graph_matrix / cell_graph: GCNG's four graph matrices, hand-checked, and squidpy graphs per library."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from anndata import AnnData

from scst.pp._graph_matrix import cell_graph, graph_matrix, graph_matrix_from_adjacency

PATH3 = np.array([[0, 1, 0], [1, 0, 1], [0, 1, 0]], dtype=float)
S2, S6 = np.sqrt(2), np.sqrt(6)


def _dense_reference(a: np.ndarray, kind: str) -> np.ndarray:
    """The paper's formulas with dense numpy (no isolated nodes)."""
    n = len(a)
    eye = np.eye(n)

    def norm(m):
        d = m.sum(1) ** -0.5
        return d[:, None] * m * d[None, :]

    return {"laplacian": eye - norm(a), "exocrine": eye - norm(norm(a)), "autocrine+": norm(a + eye),
            "diagonal": eye}[kind]  # fmt: skip


def test_path_graph_by_hand():
    # Degrees 1, 2, 1; with self-loops 2, 3, 2.
    lap = graph_matrix_from_adjacency(PATH3, "laplacian").toarray()
    np.testing.assert_allclose(lap, [[1, -1 / S2, 0], [-1 / S2, 1, -1 / S2], [0, -1 / S2, 1]], rtol=1e-6)
    auto = graph_matrix_from_adjacency(PATH3, "autocrine+").toarray()
    np.testing.assert_allclose(auto, [[1 / 2, 1 / S6, 0], [1 / S6, 1 / 3, 1 / S6], [0, 1 / S6, 1 / 2]], rtol=1e-6)
    np.testing.assert_array_equal(graph_matrix_from_adjacency(PATH3, "diagonal").toarray(), np.eye(3))
    # Path of 4 (degrees 1, 2, 2, 1): A_N row sums S_i = sum_j (d_i d_j)^-1/2 are 1/sqrt(2) and
    # (1 + 1/sqrt(2))/sqrt(2), so L_NN[0, 1] = -(d_0 d_1)^-1/2 / sqrt(S_0 S_1) differs from L_N[0, 1] = -1/sqrt(2).
    path4 = np.diag(np.ones(3), 1) + np.diag(np.ones(3), -1)
    s0, s1 = 1 / S2, (1 + 1 / S2) / S2
    lnn = graph_matrix_from_adjacency(path4, "exocrine").toarray()
    np.testing.assert_allclose(lnn[0, 1], -(1 / S2) / np.sqrt(s0 * s1), rtol=1e-6)
    assert lnn[0, 1] == pytest.approx(-0.7654, abs=1e-4)
    assert graph_matrix_from_adjacency(path4, "laplacian").toarray()[0, 1] == pytest.approx(-1 / S2, rel=1e-6)
    np.testing.assert_allclose(np.diag(lnn), 1, rtol=1e-6)


@pytest.mark.parametrize("kind", ["laplacian", "exocrine", "autocrine+", "diagonal"])
def test_matches_dense_formulas_on_a_random_graph(kind):
    rng = np.random.default_rng(0)
    a = (rng.random((30, 30)) < 0.2).astype(float)
    a = np.triu(a, 1)
    a = a + a.T
    a[np.arange(30), (np.arange(30) + 1) % 30] = a[(np.arange(30) + 1) % 30, np.arange(30)] = 1  # no isolated node
    weighted = sp.csr_matrix(a * rng.uniform(1, 5, a.shape))  # weights are ignored: only the pattern counts
    weighted.setdiag(7.0)  # and so is the diagonal
    out = graph_matrix_from_adjacency(weighted, kind)
    assert sp.isspmatrix_csr(out) and out.dtype == np.float32
    np.testing.assert_allclose(out.toarray(), _dense_reference(a, kind), atol=1e-6)


def _grid_adata(holes=()):
    xy = [(x, y) for x in range(5) for y in range(5) if (x, y) not in holes]
    obs = pd.DataFrame({"array_col": [p[0] for p in xy] * 2, "array_row": [p[1] for p in xy] * 2,
                        "section": ["A"] * len(xy) + ["B"] * len(xy)})  # fmt: skip
    obs.index = [f"s{i}" for i in range(len(obs))]
    a = AnnData(np.ones((len(obs), 3), dtype=np.float32), obs=obs)
    # Jittered pixel positions (the two sections overlap in pixel space)
    a.obsm["spatial"] = obs[["array_col", "array_row"]].to_numpy(float) * 290 + np.random.default_rng(0).normal(
        0, 15, (len(obs), 2)
    )
    return a


def test_cell_graph_grid_is_four_neighbour_and_per_section():
    a = _grid_adata(holes={(2, 2)})
    cell_graph(a, grid=True)
    conn = a.obsp["spatial_connectivities"]
    deg = np.asarray(conn.sum(1)).ravel()
    n = a.n_obs // 2
    # 5x5 grid minus the centre: 24 spots; corners 2, edges 3, interior 4, the hole's 4 neighbours lose one.
    assert sorted(deg[:n].astype(int).tolist()) == sorted([2] * 4 + [3] * 12 + [4] * 4 + [3] * 4)
    assert conn[:n, n:].nnz == 0  # no edges across sections
    assert "spatial_array" in a.obsm


def test_cell_graph_radius_per_library_and_errors():
    a = _grid_adata()
    cell_graph(a, radius=350, key_added="r")
    conn = a.obsp["r_connectivities"]
    n = a.n_obs // 2
    assert conn[:n, n:].nnz == 0 and conn.nnz > 0
    with pytest.raises(ValueError, match="radius"):
        cell_graph(a)
    with pytest.raises(KeyError, match="library_key"):
        cell_graph(a, radius=1.0, library_key="fov")


def test_graph_matrix_writes_obsp_and_copy():
    a = _grid_adata()
    cell_graph(a, grid=True)
    out = graph_matrix(a, "exocrine", copy=True)
    assert "gcng_exocrine" in out.obsp and "gcng_exocrine" not in a.obsp
    graph_matrix(a, "autocrine+")
    assert sp.issparse(a.obsp["gcng_autocrine_plus"])
    graph_matrix(a, "laplacian", key_added="L")
    np.testing.assert_allclose(a.obsp["L"].toarray(), _dense_reference(a.obsp["spatial_connectivities"].toarray(),
                                                                       "laplacian"), atol=1e-6)  # fmt: skip


def test_isolated_cells_and_empty_graphs_warn():
    a = AnnData(np.ones((3, 2), dtype=np.float32))
    a.obsp["spatial_connectivities"] = sp.csr_matrix(np.array([[0, 1, 0], [1, 0, 0], [0, 0, 0]], dtype=float))
    with pytest.warns(UserWarning, match="1 of 3 cells have no neighbour"):
        graph_matrix(a, "autocrine+")
    np.testing.assert_allclose(a.obsp["gcng_autocrine_plus"].toarray()[2], [0, 0, 1])  # only itself
    a.obsp["spatial_connectivities"] = sp.csr_matrix((3, 3))
    with pytest.warns(UserWarning, match="no edges"):
        graph_matrix(a, "exocrine")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # diagonal GCNG needs no graph and does not warn
        del a.obsp["spatial_connectivities"]
        graph_matrix(a, "diagonal")
    np.testing.assert_array_equal(a.obsp["gcng_diagonal"].toarray(), np.eye(3))


def test_bad_input():
    a = AnnData(np.ones((3, 2), dtype=np.float32))
    with pytest.raises(ValueError, match="kind"):
        graph_matrix(a, "gcn")
    with pytest.raises(KeyError, match="spatial_connectivities"):
        graph_matrix(a, "autocrine+")
    with pytest.raises(ValueError, match="square"):
        graph_matrix_from_adjacency(np.ones((2, 3)))
    a.obsp["spatial_connectivities"] = sp.csr_matrix(-np.eye(3)[[1, 0, 2]])
    with pytest.raises(ValueError, match="negative"):
        graph_matrix(a, "autocrine+")


def test_cell_graph_auto_library_keys_match_the_ligrec_sections():
    """``library_key="auto"`` looks up the same obs columns as tl.ligand_receptor's ``groups_key="auto"``."""
    from scst.tl._ligrec import _groups

    a = _grid_adata()
    for key in ("library_id", "sample"):
        b = a.copy()
        b.obs = b.obs.rename(columns={"section": key})
        cell_graph(b, radius=350)
        conn = b.obsp["spatial_connectivities"]
        n = b.n_obs // 2
        assert conn[:n, n:].nnz == 0 and conn.nnz == 2 * 2 * 2 * 5 * 4  # two 5 x 5 grids, 40 edges each, per slide
        assert _groups(b, "auto")[1] == key


def test_asymmetric_adjacency_warns_and_radius_must_be_positive():
    a = AnnData(np.ones((3, 2), dtype=np.float32))
    a.obsp["spatial_connectivities"] = sp.csr_matrix(np.array([[0, 1, 1], [1, 0, 0], [0, 0, 0]], dtype=float))
    with pytest.warns(UserWarning, match="not symmetric"):
        graph_matrix(a, "autocrine+")
    a.obsp["spatial_connectivities"] = sp.csr_matrix(np.array([[5, 1, 0], [1, 0, 0], [0, 0, 0]], dtype=float))
    with pytest.warns(UserWarning) as rec:  # a weighted self-loop is ignored, not an asymmetry
        graph_matrix(a, "autocrine+")
    assert not any("symmetric" in str(w.message) for w in rec)
    b = _grid_adata()
    with pytest.raises(ValueError, match="radius"):
        cell_graph(b, radius=0)


def test_cell_graph_grid_writes_array_col_then_row():
    a = _grid_adata()
    a.obs["array_col"] = a.obs["array_col"] * 3  # not a square of the rows
    cell_graph(a, grid=True)
    np.testing.assert_array_equal(a.obsm["spatial_array"], a.obs[["array_col", "array_row"]].to_numpy(float))


def test_cell_graph_grid_on_given_array_coordinates():
    """``grid=True`` with ``spatial_key``: the grid is built on that ``obsm`` entry (no array columns needed, no
    ``spatial_array`` written), the same graph as from the array columns; a missing key is named."""
    a = _grid_adata(holes={(2, 2)})
    ref = cell_graph(a, grid=True, copy=True).obsp["spatial_connectivities"]
    b = a.copy()
    b.obsm["array_idx"] = b.obs[["array_col", "array_row"]].to_numpy(float)
    b.obs = b.obs.drop(columns=["array_col", "array_row"])
    cell_graph(b, grid=True, spatial_key="array_idx")
    assert (b.obsp["spatial_connectivities"] != ref).nnz == 0 and "spatial_array" not in b.obsm
    with pytest.raises(KeyError, match="'array_ix'"):
        cell_graph(b, grid=True, spatial_key="array_ix")


def test_degrees_are_row_sums_on_a_directed_adjacency():
    # Edges 0→1, 0→2, 1→2: row sums (out-degrees) 2, 1, 0; column sums 0, 1, 2. D^-1/2 A D^-1/2 by hand from
    # the row sums: entry (0, 1) = 1/sqrt(2 · 1); (0, 2) and (1, 2) meet the isolated row 2 (D^-1/2 = 0).
    a = np.array([[0, 1, 1], [0, 0, 1], [0, 0, 0]], dtype=float)
    lap = graph_matrix_from_adjacency(a, "laplacian")
    np.testing.assert_allclose(lap.toarray(), [[1, -1 / S2, 0], [0, 1, 0], [0, 0, 1]], rtol=1e-6)
    assert (lap.data != 0).all()  # the edges into the isolated row are not kept as stored zeros


def test_diagonal_kind_still_checks_a_given_cell_graph():
    a = AnnData(np.ones((3, 2), dtype=np.float32))
    a.obsp["spatial_connectivities"] = sp.csr_matrix(np.array([[0, np.nan, 0], [np.nan, 0, 0], [0, 0, 0]]))
    with pytest.raises(ValueError, match="NaN"):
        graph_matrix(a, "diagonal")


def test_cell_graph_drops_unused_library_categories():
    # A categorical section column with a category no spot has: squidpy would build an empty graph for it.
    a = _grid_adata()
    a.obs["section"] = pd.Categorical(a.obs["section"], categories=["A", "B", "unused"])
    cell_graph(a, grid=True)
    assert list(a.obs["section"].cat.categories) == ["A", "B"]
    assert a.obsp["spatial_connectivities"].nnz == 2 * 2 * 2 * 5 * 4  # two 5 x 5 grids, 40 edges each


def test_cell_graph_visium_grid_has_the_six_hexagonal_neighbours():
    # Visium array indices: col + row even, same-row neighbours 2 columns apart, the others 1 row and 1 column.
    # On the raw indices squidpy kept only the 4 diagonal neighbours (√2) and cut the same-row ones (2 > 1.3 √2).
    rc = np.array([(r, 2 * j + r % 2) for r in range(6) for j in range(6)], float)
    n = len(rc)
    a = AnnData(
        np.ones((2 * n, 1), np.float32),
        obs=pd.DataFrame(
            {"section": ["A"] * n + ["B"] * n, "array_row": np.r_[rc[:, 0], rc[:, 0] + 1],
             "array_col": np.r_[rc[:, 1], rc[:, 1]]},  # B's rows shifted by one: the other parity
            index=[f"s{i}" for i in range(2 * n)],
        ),
    )  # fmt: skip
    cell_graph(a, grid=True, n_neighs=6)
    conn = a.obsp["spatial_connectivities"].toarray() != 0
    r, c = rc[:, 0], rc[:, 1]
    dr, dc = np.abs(r[:, None] - r[None]), np.abs(c[:, None] - c[None])
    hexagonal = ((dr == 1) & (dc == 1)) | ((dr == 0) & (dc == 2))
    np.testing.assert_array_equal(conn[:n, :n], hexagonal)
    np.testing.assert_array_equal(conn[n:, n:], hexagonal)
    assert not conn[:n, n:].any() and conn.sum(1).max() == 6
    assert list(a.obsm) == ["spatial_array"]  # the scaled copy for squidpy is not left behind
    np.testing.assert_array_equal(a.obsm["spatial_array"][:n], rc[:, ::-1])


def test_cell_graph_visium_grid_without_library_and_the_hexagonal_test():
    from scst.pp._graph_matrix import _hexagonal

    # one Visium grid, no library column: the six hexagonal neighbours as with sections
    rc = np.array([(r, 2 * j + r % 2) for r in range(4) for j in range(4)], float)
    obs = pd.DataFrame({"array_row": rc[:, 0], "array_col": rc[:, 1]}, index=[f"s{i}" for i in range(len(rc))])
    a = AnnData(np.ones((len(rc), 1), np.float32), obs=obs)
    cell_graph(a, grid=True, n_neighs=6, library_key=None)
    conn = a.obsp["spatial_connectivities"].toarray() != 0
    dr, dc = np.abs(rc[:, 0][:, None] - rc[:, 0][None]), np.abs(rc[:, 1][:, None] - rc[:, 1][None])
    np.testing.assert_array_equal(conn, ((dr == 1) & (dc == 1)) | ((dr == 0) & (dc == 2)))
    # not Visium indices: mixed parity, non-integers, a single spot, not (n, 2)
    assert _hexagonal(rc[:, ::-1]) and _hexagonal(rc[:, ::-1], np.zeros(len(rc)))
    assert not _hexagonal(np.array([[0.0, 0.0], [1.0, 0.0]]))
    assert not _hexagonal(np.array([[0.0, 0.0], [1.5, 0.5]]))
    assert not _hexagonal(np.array([[0.0, 0.0]]))
    assert not _hexagonal(np.zeros((3, 3)))


def test_bad_input_kind_and_library_values():
    with pytest.raises(ValueError, match=r"kind: expected one of \['laplacian'.*got 'gcn'"):
        graph_matrix_from_adjacency(np.eye(2), "gcn")
    a = _grid_adata()
    a.obs["section"] = a.obs["section"].astype(object)
    a.obs.iloc[0, a.obs.columns.get_loc("section")] = np.nan
    with pytest.raises(ValueError, match=r"adata.obs\['section'\] \(argument `library_key`\) has missing values"):
        cell_graph(a, grid=True)
