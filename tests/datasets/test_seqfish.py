"""scst.datasets.seqfish_cortex: field-of-view 0 counts and the 913-cell metadata, checked against the data README."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from scst.datasets._seqfish import seqfish_cortex


@pytest.fixture(scope="module")
def adata():
    return seqfish_cortex()


def test_counts_match_readme(adata):
    assert adata.shape == (118, 1774)
    assert sp.issparse(adata.X) and adata.X.format == "csr" and adata.X.dtype == np.int32
    # README: int counts, max 34, total 82,497; 23.1 % non-zero; per-cell totals 216 ... 1,601.
    assert adata.X.sum() == 82_497
    assert adata.X.max() == 34
    assert adata.X.nnz / np.prod(adata.shape) == pytest.approx(0.231, abs=5e-4)
    tot = np.asarray(adata.X.sum(axis=1)).ravel()
    assert tot.min() == 216 and tot.max() == 1601
    assert list(adata.obs_names[:2]) == ["cell_1", "cell_2"] and adata.obs_names[-1] == "cell_118"
    assert adata.var_names[0] == "Aanat" and adata.var_names.is_unique


def test_obs_and_coordinates(adata):
    assert (adata.obs["fov"] == 0).all()
    assert adata.obs["cell_type"].value_counts().to_dict() == {
        "Excitatory neuron": 73, "Interneuron": 18, "Astrocyte": 10, "Endothelial": 7, "Microglia": 7,
        "Oligodendrocyte": 3,
    }  # fmt: skip
    assert set(adata.obs["region"]) == {"Cortex"}
    # Cai-lab frame, first cell of cortex_svz_cellcentroids.csv: X=1305.7, Y=414.98; Louvain cluster 13.
    np.testing.assert_allclose(adata.obsm["spatial"][0], [1305.7, 414.98])
    np.testing.assert_array_equal(adata.obsm["spatial"], adata.obs[["x", "y"]].to_numpy())
    assert adata.obs["louvain"].iloc[0] == 13


def test_all_cells_metadata(adata):
    cells = adata.uns["seqfish_cells"]
    assert len(cells) == 913 and cells.index[0] == "cell_1" and cells.index[-1] == "cell_913"
    assert cells["fov"].value_counts().sort_index().tolist() == [118, 108, 90, 106, 101, 281, 109]
    assert cells["cell_type"].value_counts()["Excitatory neuron"] == 337
    assert (cells.groupby("louvain")["cell_type"].nunique() == 1).all()  # one name per Louvain cluster
    assert (cells.loc[cells["fov"] == 5, "region"] == "SVZ").sum() == 280
    assert cells["x"].min() == pytest.approx(103.12) and cells["y"].max() == pytest.approx(1903.3)


def test_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found under path"):
        seqfish_cortex(path=tmp_path)


# ------------------------------------------------------------------------------------------------ mutation sweep
EDITS = {  # file → (published text, tampered text): one small edit each
    "locs": ("seqfish_field_locs.txt", "1632.02 -1305.7", "1632.02 -1306.7"),
    "negative": ("seqfish_field_expr.txt.gz", "Aanat 0 0", "Aanat -1 0"),
    "fraction": ("seqfish_field_expr.txt.gz", "Aanat 0 0", "Aanat 0.5 0"),
    "unknown_cell": ("seqfish_field_expr.txt.gz", "cell_1 ", "cell_999 "),
    "ids": ("cortex_annotation.txt", "cell_1\t0\t", "cell_2\t0\t"),
    "louvain_order": ("cortex_svz_cell_type_annotations.csv", "0,13\n1,3", "1,13\n0,3"),
    "fov_differs": ("cortex_svz_cellcentroids.csv", "\n0,1,1305.7", "\n1,1,1305.7"),
    "row_missing": ("cortex_annotation.txt", "cell_913\t6\tMicroglia\n", ""),
}


@pytest.fixture
def served(tmp_path, monkeypatch):
    """The published files copied to ``tmp_path``, served by a stand-in of fetch (the copies are edited)."""
    import os
    import shutil
    from pathlib import Path

    from scst.datasets import _seqfish

    src = Path(os.environ["SCST_DATA_DIR"]) / "seqfish_cortex" / "original"
    for f in src.iterdir():
        shutil.copy(f, tmp_path / f.name)
        (tmp_path / f.name).chmod(0o644)

    def fetch(ds, rel, path=None):
        f = tmp_path / rel.removeprefix("original/")
        if not f.is_file():
            raise FileNotFoundError(rel)
        return f

    monkeypatch.setattr(_seqfish, "fetch", fetch)
    return tmp_path


def _edit(folder, name, old, new):
    import gzip

    f = folder / name
    opener = gzip.open if name.endswith(".gz") else open
    with opener(f, "rt") as fh:
        text = fh.read()
    assert old in text
    with opener(f, "wt") as fh:
        fh.write(text.replace(old, new, 1))


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        ("locs", "seqfish_field_locs.txt does not match the centroids"),
        ("negative", "counts must be non-negative integers"),
        ("fraction", "counts must be non-negative integers"),
        ("unknown_cell", "cell ids not among the 913 cells"),
        ("ids", "ids are not cell_1 ... cell_913 in file order"),
        ("louvain_order", "`index` is not 0 ... 912 in order"),
        ("fov_differs", "Fields of view differ"),
        ("row_missing", "cortex_annotation.txt has 912 rows, centroids 913; the files do not match"),
    ],
)
def test_files_that_do_not_line_up_are_refused(served, edit, match):
    assert seqfish_cortex().shape == (118, 1774)  # the published files, served from the copies
    _edit(served, *EDITS[edit])
    with pytest.raises(ValueError, match=match):
        seqfish_cortex()


def test_cells_outside_field_0_and_no_louvain_file(served):
    (served / "cortex_svz_cell_type_annotations.csv").unlink()  # local only: optional, but said (a warning)
    with pytest.warns(UserWarning, match="cortex_svz_cell_type_annotations.csv is not available.*no 'louvain'"):
        adata = seqfish_cortex()
    assert "louvain" not in adata.obs and "louvain" not in adata.uns["seqfish_cells"]
    assert list(adata.obs["cell_type"].cat.categories) == sorted(adata.obs["cell_type"].unique())  # unused dropped
    _edit(served, *EDITS["fov_differs"])
    _edit(served, "cortex_annotation.txt", "cell_1\t0\t", "cell_1\t1\t")
    with pytest.raises(ValueError, match="holds cells outside field of view 0"):
        seqfish_cortex()


def test_all_cells_metadata_holds_plain_values(adata):
    """uns["seqfish_cells"] holds plain integers and strings (obs keeps the categoricals): arithmetic on the
    Louvain ids works, and categories of field 0 do not leak into the other fields' columns."""
    import pandas as pd

    cells = adata.uns["seqfish_cells"]
    assert pd.api.types.is_integer_dtype(cells["louvain"]) and cells["louvain"].iloc[0] + 1 == 14
    assert not any(isinstance(cells[c].dtype, pd.CategoricalDtype) for c in ("region", "cell_type", "louvain"))
    assert isinstance(adata.obs["louvain"].dtype, pd.CategoricalDtype)


def test_loader_equals_the_readme_tables_and_a_copied_folder_and_fields_stay_apart(adata, tmp_path):
    """Invariances: the loader (built from ``original/``) equals the README's derived ``cells.csv`` and
    ``counts_fov0.csv.gz`` read by hand; ``path=`` to a copy gives the same object; a radius graph over all 913
    cells (``fov`` as library) never joins two fields and equals the graphs built per field."""
    import os
    import shutil
    from pathlib import Path

    import pandas as pd
    from anndata import AnnData

    from scst.pp import cell_graph

    folder = Path(os.environ["SCST_DATA_DIR"]) / "seqfish_cortex"
    cells = pd.read_csv(folder / "cells.csv", index_col="cell_id")
    counts = pd.read_csv(folder / "counts_fov0.csv.gz", index_col="cell_id")
    np.testing.assert_array_equal(adata.X.toarray(), counts.to_numpy())
    assert list(adata.var_names) == list(counts.columns) and list(adata.obs_names) == list(counts.index)
    mine = adata.uns["seqfish_cells"].rename(columns={"louvain": "louvain_cluster"})
    pd.testing.assert_frame_equal(mine[cells.columns], cells, check_names=False)
    np.testing.assert_array_equal(adata.obsm["spatial"], cells.loc[adata.obs_names, ["x", "y"]].to_numpy())
    shutil.copytree(folder / "original", tmp_path / "original")
    other = seqfish_cortex(path=tmp_path)
    assert (other.X != adata.X).nnz == 0 and other.obs.equals(adata.obs)
    assert other.uns["seqfish_cells"].equals(adata.uns["seqfish_cells"])

    every = AnnData(obs=cells[["fov"]].astype(str), obsm={"spatial": cells[["x", "y"]].to_numpy(float)})
    every.obs_names = every.obs_names.astype(str)
    cell_graph(every, radius=140)
    conn = every.obsp["spatial_connectivities"].tocoo()
    fov = every.obs["fov"].to_numpy()
    assert conn.nnz > 0 and (fov[conn.row] == fov[conn.col]).all()
    for f in ("0", "5"):
        part = cell_graph(every[fov == f].copy(), radius=140, library_key=None, copy=True)
        idx = np.flatnonzero(fov == f)
        diff = every.obsp["spatial_connectivities"][idx][:, idx] - part.obsp["spatial_connectivities"]
        assert abs(diff).sum() == 0
