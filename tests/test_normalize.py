"""scst._normalize: log1p(normalize_total(counts, 1e4)) helpers, checked by hand on tiny tables."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from anndata import AnnData

from scst._normalize import log_normalized, panel_targets


def _table():
    counts = np.array([[1, 3, 0, 6], [0, 0, 0, 0], [2, 0, 2, 0]], dtype=np.float32)  # library sizes 10, 0, 4
    a = AnnData(sp.csr_matrix(counts))
    a.var_names = ["a", "b", "c", "d"]
    a.layers["raw"] = counts[:, ::-1].copy()
    return a, counts


def test_log_normalized_by_hand():
    a, counts = _table()
    got = log_normalized(a, ["b", "c"])
    want = np.array([[np.log1p(3e3), 0.0], [0.0, 0.0], [0.0, np.log1p(5e3)]])  # library over all genes; 0 stays 0
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-6)
    np.testing.assert_allclose(log_normalized(a, np.array([1, 2], dtype=np.uint8)), want, rtol=1e-6)  # positions
    # a layer is read instead of X (it holds the columns reversed: its "c", "b" are X's "b", "c")
    np.testing.assert_allclose(log_normalized(a, ["c", "b"], layer="raw"), want, rtol=1e-6)
    with pytest.raises(KeyError, match="layer: 'nope' is not in adata.layers"):
        log_normalized(a, layer="nope")
    with pytest.raises(KeyError, match="1 gene"):
        log_normalized(a, ["b", "zz"])
    a.X = sp.csr_matrix(-counts)
    with pytest.raises(ValueError, match="expected raw counts"):
        log_normalized(a)


def test_panel_targets_by_hand_and_non_finite_library():
    a, counts = _table()
    y, c, lib = panel_targets(a, None, ["d"], np.array([0, 2]))
    np.testing.assert_allclose(lib, [10, 4])
    np.testing.assert_allclose(c, [[6], [0]])
    np.testing.assert_allclose(y, [[np.log1p(6e3)], [0.0]], rtol=1e-6)
    bad = counts.copy()
    bad[2, 0] = np.nan  # outside the panel: only the library size sees it
    a.X = bad
    with pytest.raises(ValueError, match="NaN/inf"):
        panel_targets(a, None, ["d"], np.array([0, 2]))


def test_raw_counts_refuses_an_empty_x():
    from scst._normalize import raw_counts

    a = AnnData(obs={"n": [1, 2]})
    assert a.X is None
    with pytest.raises(ValueError, match="Model.setup: adata.X is empty; raw counts are needed"):
        raw_counts(a, None, "Model.setup")
