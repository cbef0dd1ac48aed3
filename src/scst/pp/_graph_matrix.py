"""GCNG's cell graph and graph matrices (Yuan & Bar-Joseph 2020, Methods "Graph representation")."""

from __future__ import annotations

import warnings
from typing import Any, Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from .._constants import ARRAY_COL, ARRAY_ROW, SPATIAL_KEY
from .._logging import logg
from .._utils import _check_key, _get_table

__all__ = ["graph_matrix", "graph_matrix_from_adjacency", "cell_graph", "GRAPH_KINDS"]

#: Graph matrix kinds of :func:`graph_matrix` → ``obsp`` key suffix.
GRAPH_KINDS = {"laplacian": "laplacian", "exocrine": "exocrine", "autocrine+": "autocrine_plus", "diagonal": "diagonal"}
#: ``obs`` columns looked up, in this order, when a library / section key is ``"auto"`` (:func:`cell_graph`,
#: :func:`scst.tl.ligand_receptor`, :func:`scst.tl.lr_kernel`, :func:`scst.tl.ligrec_cv`): one shared tuple, so a
#: graph is built per the same sections that the tools permute within and check.
_LIBRARY_KEYS = ("section", "fov", "library_id", "sample")


def _inv_sqrt(deg: np.ndarray) -> np.ndarray:
    # Isolated nodes have degree 0: their D^-1/2 entry is 0 (as spektral/GCNG do), not inf.
    out = np.zeros_like(deg, dtype=np.float64)
    np.divide(1.0, np.sqrt(deg), out=out, where=deg > 0)
    return out


def _sym_norm(a: sp.csr_matrix) -> sp.csr_matrix:
    d = _inv_sqrt(np.asarray(a.sum(axis=1)).ravel())
    return sp.csr_matrix(sp.diags(d) @ a @ sp.diags(d))


def graph_matrix_from_adjacency(adjacency: Any, kind: str = "autocrine+") -> sp.csr_matrix:
    r"""GCNG graph matrix from a (binary) adjacency matrix; sparse in, sparse out.

    ``A`` is binarised (``A_ij = 1`` where the input is non-zero) and its diagonal removed, as in GCNG's
    distance-threshold graph. With :math:`D_{ii} = \sum_j A_{ij}` (isolated cells: :math:`D^{-1/2}_{ii} = 0`):

    - ``"laplacian"``: :math:`L_N = I - D^{-1/2} A D^{-1/2}`, the normalised Laplacian.
    - ``"exocrine"``: :math:`L_{NN} = I - D_N^{-1/2} A_N D_N^{-1/2}` with :math:`A_N = D^{-1/2} A D^{-1/2}` and
      :math:`D_N` its row sums — the Laplacian of the normalised adjacency, the paper's exocrine GCNG matrix.
    - ``"autocrine+"``: :math:`L' = D'^{-1/2} (A + I) D'^{-1/2}`, :math:`D'_{ii} = \sum_j (A + I)_{ij}` — the
      normalised adjacency with self-loops. The Methods define this :math:`L'` last (typeset "A = A + I" for
      :math:`A' = A + I`) and then say autocrine+ GCNG uses "L"; we read that "L" as :math:`L'`, because the
      self-loop is what lets a cell's own ligand meet its own receptor (autocrine) next to its neighbours'
      (exocrine), and because GCNG's released autocrine+ script builds exactly this matrix
      (``self_connection_normalized_adjacency``). (GCNG's released exocrine script applies spektral's
      ``normalized_laplacian`` to the raw adjacency, i.e. :math:`L_N`; ``"exocrine"`` follows the paper's
      text, :math:`L_{NN}`, and ``"laplacian"`` gives :math:`L_N`.)
    - ``"diagonal"``: the identity :math:`I` (diagonal GCNG, autocrine only; what the autocrine+ matrix
      becomes on a graph without edges, which is how GCNG's code builds it).

    Parameters
    ----------
    adjacency
        ``(n, n)`` square matrix (sparse or dense); only its non-zero pattern is used.
    kind
        One of ``"laplacian"``, ``"exocrine"``, ``"autocrine+"``, ``"diagonal"``.

    Returns
    -------
    ``(n, n)`` :class:`scipy.sparse.csr_matrix`, float32, symmetric when ``adjacency`` is.
    """
    if kind not in GRAPH_KINDS:
        raise ValueError(f"kind: expected one of {list(GRAPH_KINDS)}, got {kind!r}.")
    a = sp.csr_matrix(adjacency)
    if a.ndim != 2 or a.shape[0] != a.shape[1]:
        raise ValueError(f"adjacency: expected a square (n, n) matrix, got shape {a.shape}.")
    n = a.shape[0]
    a = sp.csr_matrix((a != 0).astype(np.float64))
    a.setdiag(0)
    a.eliminate_zeros()
    eye = sp.identity(n, dtype=np.float64, format="csr")
    if kind == "diagonal":
        out = eye
    elif kind == "laplacian":
        out = eye - _sym_norm(a)
    elif kind == "exocrine":
        out = eye - _sym_norm(_sym_norm(a))
    else:
        out = _sym_norm(a + eye)
    out = sp.csr_matrix(out, dtype=np.float32)
    out.eliminate_zeros()
    out.sort_indices()
    return out


def graph_matrix(
    adata: AnnData | Any,
    kind: Literal["laplacian", "exocrine", "autocrine+", "diagonal"] = "autocrine+",
    *,
    connectivity_key: str = "spatial_connectivities",
    key_added: str | None = None,
    copy: bool = False,
) -> AnnData | None:
    """Store one of GCNG's four graph matrices in ``adata.obsp``.

    See :func:`graph_matrix_from_adjacency` for the formulas and which matrix each GCNG variant uses:
    ``"autocrine+"`` (autocrine+ GCNG), ``"exocrine"`` (exocrine GCNG), ``"diagonal"`` (diagonal GCNG) and
    ``"laplacian"`` (:math:`L_N`). Build the cell graph first with :func:`cell_graph` (squidpy radius graph per
    field of view, or the grid graph for ST/Visium spots).

    Parameters
    ----------
    adata
        AnnData, or SpatialData whose ``"table"`` is used.
    kind
        Graph matrix kind.
    connectivity_key
        ``adata.obsp`` key of the cell graph (binarised; the diagonal is ignored). Not needed for
        ``"diagonal"``.
    key_added
        ``obsp`` key to write; default ``"gcng_<kind>"`` (``gcng_autocrine_plus`` for ``"autocrine+"``).
    copy
        Return a copy instead of writing in place.

    Returns
    -------
    ``None``, or the modified copy when ``copy=True``. Writes ``adata.obsp[key_added]``: ``(n_obs, n_obs)``
    CSR float32.

    Warns
    -----
    UserWarning
        When the graph has isolated cells or no edges at all (the matrix is then the identity on those
        cells: neighbour terms vanish, the diagonal variant is unaffected).
    """
    if kind not in GRAPH_KINDS:
        raise ValueError(f"kind: expected one of {list(GRAPH_KINDS)}, got {kind!r}.")
    adata = _get_table(adata)
    if copy:
        adata = adata.copy()
    key = key_added or f"gcng_{GRAPH_KINDS[kind]}"
    if kind == "diagonal" and connectivity_key not in adata.obsp:
        adjacency = sp.csr_matrix((adata.n_obs, adata.n_obs))
    else:
        _check_key(adata.obsp, connectivity_key, "adata.obsp (build the cell graph with scst.pp.cell_graph)")
        adjacency = adata.obsp[connectivity_key]
        _check_adjacency(adjacency, connectivity_key, warn=kind != "diagonal")
    adata.obsp[key] = graph_matrix_from_adjacency(adjacency, kind)
    logg.info(f"added graph matrix {kind!r} to adata.obsp[{key!r}]")
    return adata if copy else None


def _check_adjacency(adjacency: Any, key: str, warn: bool = True) -> None:
    a = sp.csr_matrix(adjacency)
    if a.nnz and not np.isfinite(a.data).all():
        raise ValueError(f"adata.obsp[{key!r}] has NaN or infinite entries; expected a non-negative adjacency.")
    if a.nnz and (a.data < 0).any():
        raise ValueError(f"adata.obsp[{key!r}] has negative entries; expected a non-negative adjacency.")
    b = (a != 0).astype(np.int8)
    b.setdiag(0)
    b.eliminate_zeros()
    if (b != b.T).nnz:
        warnings.warn(f"adata.obsp[{key!r}] is not symmetric; GCNG assumes an undirected cell graph.", stacklevel=3)
    if not warn:
        return
    deg = np.asarray(b.sum(axis=1)).ravel()
    if b.nnz == 0:
        warnings.warn(
            f"adata.obsp[{key!r}] has no edges: every graph matrix is the identity (only autocrine signal, as in "
            "diagonal GCNG). Increase the radius of the cell graph.",
            stacklevel=3,
        )
    elif (deg == 0).any():
        warnings.warn(
            f"{int((deg == 0).sum())} of {len(deg)} cells have no neighbour in adata.obsp[{key!r}]; they only "
            "see their own expression.",
            stacklevel=3,
        )


def cell_graph(
    adata: AnnData | Any,
    radius: float | None = None,
    *,
    grid: bool = False,
    n_neighs: int = 4,
    spatial_key: str | None = None,
    library_key: str | None = "auto",
    key_added: str = "spatial",
    copy: bool = False,
) -> AnnData | None:
    """GCNG's cell graph through squidpy: a distance threshold per field of view, or the spot grid.

    - ``radius``: cells closer than ``radius`` (image units of ``obsm[spatial_key]``) are neighbours
      (:func:`squidpy.gr.spatial_neighbors_radius`), as GCNG's Euclidean distance threshold. The paper chose
      the threshold by cross-validation (140 px on seqFISH+); see :func:`scst.tl.ligrec_cv`'s ``radius``.
    - ``grid=True``: array spots (ST/Visium) are neighbours on the array grid
      (:func:`squidpy.gr.spatial_neighbors_grid` on the integer array indices; ``n_neighs=4`` for ST's square
      grid, 6 for Visium). A pixel radius of one grid pitch misses about a quarter of the true neighbours
      because spot positions jitter around the grid. With ``n_neighs=6`` on Visium's hexagonal indices (one
      parity of ``array_col + array_row`` in each library; a row step is √3 column steps) the rows are scaled by
      √3 for squidpy, so all six neighbours are found (on the raw indices the two in the same row, 2 columns
      away, were dropped).

    Graphs are built per library (``library_key``), so cells of different fields of view / sections are never
    connected — with ``library_key=None``, or when ``"auto"`` finds none of its columns, all cells form one graph.

    Parameters
    ----------
    adata
        AnnData, or SpatialData whose ``"table"`` is used.
    radius
        Distance threshold (required unless ``grid=True``).
    grid
        Use the array grid instead of a distance threshold.
    n_neighs
        Grid neighbours (4: ST, 6: Visium).
    spatial_key
        ``obsm`` key of the coordinates. Default: ``"spatial"`` for radius graphs; for grid graphs
        ``"spatial_array"`` if present, else ``obs[["array_col", "array_row"]]`` (written to
        ``obsm["spatial_array"]``).
    library_key
        ``obs`` column of the field of view / section; ``"auto"``: the first of ``"section"``, ``"fov"``,
        ``"library_id"``, ``"sample"`` present (the columns :func:`scst.tl.ligand_receptor` takes as sections),
        else one graph over all cells; ``None``: one graph.
    key_added
        squidpy's key: writes ``obsp[f"{key_added}_connectivities"]`` and ``obsp[f"{key_added}_distances"]``.
    copy
        Return a copy instead of writing in place.

    Returns
    -------
    ``None``, or the modified copy when ``copy=True``.
    """
    import squidpy as sq

    adata = _get_table(adata)
    if adata.n_obs == 0:
        raise ValueError("adata: no cells / spots (n_obs = 0); a cell graph needs at least one.")
    if copy:
        adata = adata.copy()
    if library_key == "auto":
        library_key = next((k for k in _LIBRARY_KEYS if k in adata.obs), None)
    elif library_key is not None:
        _check_key(adata.obs, library_key, "adata.obs (library_key)")
    if library_key is not None and not isinstance(adata.obs[library_key].dtype, pd.CategoricalDtype):
        adata.obs[library_key] = adata.obs[library_key].astype("category")
    if library_key is not None and adata.obs[library_key].isna().any():
        raise ValueError(f"adata.obs[{library_key!r}] (argument `library_key`) has missing values.")
    if library_key is not None and len(adata.obs[library_key].cat.categories) > adata.obs[library_key].nunique():
        # squidpy builds a graph per category: an empty one fails inside scikit-learn
        adata.obs[library_key] = adata.obs[library_key].cat.remove_unused_categories()
    if grid:
        if spatial_key is None:
            spatial_key = "spatial_array"
            if spatial_key not in adata.obsm:
                _check_key(adata.obs, ARRAY_ROW, "adata.obs (grid graphs need array indices)")
                _check_key(adata.obs, ARRAY_COL, "adata.obs (grid graphs need array indices)")
                adata.obsm[spatial_key] = adata.obs[[ARRAY_COL, ARRAY_ROW]].to_numpy(dtype=np.float64)
        _check_key(adata.obsm, spatial_key, "adata.obsm")
        _check_finite(adata, spatial_key)
        xy = np.asarray(adata.obsm[spatial_key], dtype=np.float64)
        grid_key = spatial_key
        if n_neighs == 6 and _hexagonal(xy, None if library_key is None else adata.obs[library_key].to_numpy()):
            # Visium's array indices: a row step is √3 × a column step (86.6 vs 50 µm), so on the raw indices the two
            # same-row neighbours (2 columns away) lay beyond squidpy's 1.3 × median cut of the 4 diagonal ones (√2)
            grid_key = "_scst_hex_grid"
            adata.obsm[grid_key] = np.column_stack([xy[:, 0], xy[:, 1] * np.sqrt(3.0)])
        try:
            sq.gr.spatial_neighbors_grid(
                adata, spatial_key=grid_key, library_key=library_key, n_neighs=n_neighs, key_added=key_added
            )
        finally:
            if grid_key != spatial_key:
                del adata.obsm[grid_key]
    else:
        if radius is None or not radius > 0:
            raise ValueError(f"radius: expected a positive distance threshold (or grid=True), got {radius!r}.")
        spatial_key = spatial_key or SPATIAL_KEY
        _check_key(adata.obsm, spatial_key, "adata.obsm")
        _check_finite(adata, spatial_key)
        sq.gr.spatial_neighbors_radius(adata, radius=float(radius), spatial_key=spatial_key, library_key=library_key,
                                       key_added=key_added)  # fmt: skip
    conn = adata.obsp[f"{key_added}_connectivities"]
    deg = np.asarray((conn != 0).sum(axis=1)).ravel()
    logg.info(f"cell graph: {conn.nnz // 2} edges, mean degree {deg.mean():.2f}, {int((deg == 0).sum())} isolated")
    return adata if copy else None


def _hexagonal(xy: np.ndarray, libraries: Any = None) -> bool:
    """Whether ``(array_col, array_row)`` indices lie on hexagonal (Visium) grids.

    Integers with one parity of ``col + row`` in each library.
    """
    if xy.ndim != 2 or xy.shape[1] != 2 or len(xy) < 2 or not np.array_equal(xy, np.round(xy)):
        return False
    parity = pd.Series(xy.sum(axis=1).astype(np.int64) % 2)
    if libraries is None:
        return parity.nunique() == 1
    return bool((parity.groupby(np.asarray(libraries)).nunique() == 1).all())


def _check_finite(adata: AnnData, spatial_key: str) -> None:
    xy = np.asarray(adata.obsm[spatial_key], dtype=np.float64)
    if not np.isfinite(xy).all():
        bad = adata.obs_names[~np.isfinite(xy).all(axis=1)]
        raise ValueError(
            f"adata.obsm[{spatial_key!r}] (argument `spatial_key`): {len(bad)} cell(s) have NaN or infinite "
            f"coordinates, e.g. {bad[:3].tolist()}."
        )
