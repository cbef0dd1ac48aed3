import numpy as np
import pandas as pd
import pytest
from anndata import AnnData
from scipy import sparse

from scst.pp import select_genes


def _planted(seed=0):
    """Two sections; genes 0-9 are overdispersed in section a only, 10-19 in b only; gene 5 is rarely detected.

    Gene means spread over 1-30 so that every one of seurat's mean bins holds Poisson (null) genes to
    compare the overdispersed ones with.
    """
    rng = np.random.default_rng(seed)
    n, g = 300, 400
    mu = np.tile(np.logspace(0, 1.5, 20), g // 20)
    X = rng.poisson(mu, size=(2 * n, g))
    nb = lambda m, size: rng.negative_binomial(0.3, 0.3 / (0.3 + m), size=size)  # noqa: E731
    X[:n, :10] = nb(mu[:10], (n, 10))
    X[n:, 10:20] = nb(mu[10:20], (n, 10))
    X[:, 5] = 0
    X[:15, 5] = 100  # detected in 2.5 % of spots, hugely variable
    obs = pd.DataFrame({"section": ["a"] * n + ["b"] * n}, index=[f"s{i}" for i in range(2 * n)])
    return AnnData(sparse.csr_matrix(X.astype(np.int32)), obs=obs, var=pd.DataFrame(index=[f"g{i}" for i in range(g)]))


def test_union_of_section_hvgs_and_detection_filter():
    a = _planted()
    select_genes(a, n_top=10, min_fraction=0.25)
    chosen = set(a.var_names[a.var["highly_variable_scst"]])
    planted_a, planted_b = {f"g{i}" for i in range(10)} - {"g5"}, {f"g{i}" for i in range(10, 20)}
    # Union over sections: the genes of both sections are in; seurat's binning may swap one or two for nulls.
    assert len(chosen & planted_a) >= 7 and len(chosen & planted_b) >= 8 and len(chosen - planted_a - planted_b) <= 3
    assert "g5" not in chosen
    v = a.var[a.var["highly_variable_scst"]]
    assert (v["scst_hvg_sections"] >= 1).all() and (v["scst_detected_fraction"] >= 0.25).all()
    assert a.var.loc["g5", "scst_hvg_sections"] >= 1  # variable, but filtered by detection
    assert a.var.loc["g5", "scst_detected_fraction"] == pytest.approx(0.025)
    assert a.var.loc["g0", "scst_hvg_sections"] == 1 and a.var.loc["g15", "scst_hvg_sections"] == 1
    b = select_genes(_planted(), n_top=10, min_fraction=0.0, copy=True)
    assert b.var["highly_variable_scst"].sum() == (b.var["scst_hvg_sections"] > 0).sum() >= len(chosen) + 1


def test_sections_restricts_the_panel_to_those_sections():
    a = _planted()
    select_genes(a, n_top=10, min_fraction=0.25, sections=["a"])
    chosen = set(a.var_names[a.var["highly_variable_scst"]])
    # Only section a's planted genes: b's overdispersed genes (10-19) never reach the panel.
    assert len(chosen & {f"g{i}" for i in range(10)}) >= 7
    assert not chosen & {f"g{i}" for i in range(10, 20)}
    assert a.var["scst_hvg_sections"].max() == 1
    # Detection is counted over section a's 300 spots only: g5 is detected in 15 of them.
    assert a.var.loc["g5", "scst_detected_fraction"] == pytest.approx(15 / 300)
    assert a.uns["highly_variable_scst"]["params"]["sections"] == ["a"]
    with pytest.raises(ValueError, match="sections"):
        select_genes(a, sections=["c"])
    with pytest.raises(ValueError, match="library_key"):
        select_genes(a, sections=["a"], library_key=None)


def test_select_genes_errors():
    a = _planted()
    with pytest.raises(ValueError, match="min_fraction"):
        select_genes(a, min_fraction=2)
    with pytest.raises(KeyError, match="nope"):
        select_genes(a, library_key="nope")
    b = a.copy()  # spots without a section: an error (as str they were one more section, "nan", in the union)
    b.obs["section"] = b.obs["section"].astype(object)
    b.obs.iloc[:3, b.obs.columns.get_loc("section")] = None
    with pytest.raises(ValueError, match=r"library_key: adata.obs\['section'\] is missing for 3 spots"):
        select_genes(b)
    a.X = -a.X
    with pytest.raises(ValueError, match="raw counts"):
        select_genes(a)


def test_her2st_panel_sizes(her2st_counts):
    a = her2st_counts.copy()
    sizes = {}
    for f in (0.5, 0.25, 0.1):
        select_genes(a, n_top=1000, min_fraction=f)
        sizes[f] = int(a.var["highly_variable_scst"].sum())
    # The reference sizes are ~530 / ~1,400 / ~2,500; measured 546 / 1,486 / 2,676.
    assert 500 < sizes[0.5] < 600 and 1300 < sizes[0.25] < 1600 and 2400 < sizes[0.1] < 2800


def test_normalised_or_log_data_is_refused():
    # Before: log-normalised X passed (only NaN/inf/negatives were refused) and was normalised and logged again.
    import scanpy as sc

    a = _planted()
    b = a.copy()
    sc.pp.normalize_total(b, target_sum=1e4)
    sc.pp.log1p(b)
    with pytest.raises(ValueError, match=r"raw counts \(integers\) in adata\.X; got \d+ non-integer value"):
        select_genes(b, n_top=10)
    assert "highly_variable_scst" not in b.var
    b.layers["counts"] = a.X.copy()
    b.layers["lognorm"] = b.X.copy()
    with pytest.raises(ValueError, match=r"in adata\.layers\['lognorm'\]"):
        select_genes(b, n_top=10, layer="lognorm")
    # Integer-valued floats are counts: the same panel as from the int32 matrix.
    select_genes(b, n_top=10, min_fraction=0.25, layer="counts")
    c = a.copy()
    c.X = c.X.astype(np.float32)
    select_genes(a, n_top=10, min_fraction=0.25)
    select_genes(c, n_top=10, min_fraction=0.25)
    assert a.var["highly_variable_scst"].equals(c.var["highly_variable_scst"])
    assert (b.var["highly_variable_scst"].to_numpy() == a.var["highly_variable_scst"].to_numpy()).all()


def test_panel_is_the_per_section_seurat_recipe():
    # Reference computed here step by step: per section, normalise to 10,000 counts per spot, log1p, the n_top
    # seurat HVGs; union over sections; detection pooled over all spots.
    import scanpy as sc

    a = _planted()
    select_genes(a, n_top=40, min_fraction=0.3)
    count = np.zeros(a.n_vars, int)
    for s in ("a", "b"):
        sub = AnnData(a[a.obs["section"] == s].X.astype(np.float32), var=pd.DataFrame(index=a.var_names))
        sc.pp.normalize_total(sub, target_sum=1e4)
        sc.pp.log1p(sub)
        res = sc.pp.highly_variable_genes(sub, n_top_genes=40, flavor="seurat", inplace=False)
        assert res["highly_variable"].sum() == 40
        count += res["highly_variable"].to_numpy()
    np.testing.assert_array_equal(a.var["scst_hvg_sections"], count)
    assert a.var["scst_hvg_sections"].sum() == 80  # exactly n_top per section
    detected = (a.X.toarray() > 0).mean(0)
    np.testing.assert_array_equal(a.var["highly_variable_scst"], (count > 0) & (detected >= 0.3))


def test_min_fraction_is_inclusive():
    a = _planted()
    select_genes(a, n_top=10, min_fraction=15 / 600)  # g5: detected in exactly 15 of 600 spots
    assert a.var.loc["g5", "scst_detected_fraction"] == 15 / 600 and a.var.loc["g5", "highly_variable_scst"]
    select_genes(a, n_top=10, min_fraction=16 / 600)
    assert not a.var.loc["g5", "highly_variable_scst"]


def test_bounds_and_bad_counts_are_refused():
    a = _planted()
    select_genes(a, n_top=10, min_fraction=1.0)  # the upper bound is allowed: genes detected in every spot
    detected = (a.X.toarray() > 0).mean(0)
    np.testing.assert_array_equal(a.var["highly_variable_scst"], (a.var["scst_hvg_sections"] > 0) & (detected == 1))
    with pytest.raises(ValueError, match="n_top"):
        select_genes(a, n_top=0)
    with pytest.raises(ValueError, match="no spots"):
        select_genes(a[:0].copy())
    b = a.copy()
    b.X = b.X.toarray().astype(np.float32)  # dense: set single entries
    b.X[3, 7] = np.inf
    with pytest.raises(ValueError, match="NaN or infinite"):
        select_genes(b)
    b.X[3, 7] = -1  # a single count of -1 is not a raw count either
    with pytest.raises(ValueError, match="non-negative"):
        select_genes(b)


def test_sections_given_as_a_name_or_as_non_string_labels():
    a = _planted()
    select_genes(a, n_top=10, min_fraction=0.25, sections=["a"])
    ref = a.var["highly_variable_scst"].copy()
    b = _planted()
    b.obs["section"] = b.obs["section"].map({"a": "train", "b": "test"})
    select_genes(b, n_top=10, min_fraction=0.25, sections="train")  # one name, not its letters
    assert b.var["highly_variable_scst"].equals(ref)
    assert b.uns["highly_variable_scst"]["params"]["sections"] == ["train"]
    c = _planted()
    c.obs["section"] = c.obs["section"].map({"a": 0, "b": 1})  # integer labels, e.g. a fold number
    select_genes(c, n_top=10, min_fraction=0.25, sections=[0])
    assert c.var["highly_variable_scst"].equals(ref)
    with pytest.raises(ValueError, match="sections"):
        select_genes(c, sections=[])


def test_library_key_none_pools_all_spots():
    import scanpy as sc

    a = _planted()
    select_genes(a, n_top=20, min_fraction=0.0, library_key=None)
    sub = AnnData(a.X.astype(np.float32), var=pd.DataFrame(index=a.var_names))
    sc.pp.normalize_total(sub, target_sum=1e4)
    sc.pp.log1p(sub)
    res = sc.pp.highly_variable_genes(sub, n_top_genes=20, flavor="seurat", inplace=False)
    np.testing.assert_array_equal(a.var["scst_hvg_sections"], res["highly_variable"].to_numpy().astype(int))
    assert a.var["highly_variable_scst"].sum() == 20


def test_a_section_without_dispersion_warns_and_adds_nothing():
    a = _planted()
    a.obs["section"] = ["c"] + list(a.obs["section"][1:])  # spot 0 alone in section c
    with pytest.warns(UserWarning, match=r"no gene has a defined normalised dispersion in section\(s\) \['c'\]"):
        select_genes(a, n_top=10, min_fraction=0.0)
    assert a.var["scst_hvg_sections"].sum() == 20  # 10 per real section, none from c


def test_copy_leaves_the_input_untouched():
    a = _planted()
    b = select_genes(a, n_top=10, copy=True)
    assert b is not a and "highly_variable_scst" in b.var
    assert "highly_variable_scst" not in a.var and "highly_variable_scst" not in a.uns
    assert select_genes(a, n_top=10) is None and "highly_variable_scst" in a.var
