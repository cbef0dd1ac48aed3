"""Plot plumbing found in a review (2026-12-04): inputs the other tools produce, figures left open, bad arguments."""

from __future__ import annotations

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from anndata import AnnData

import scst


def _tidy(sections, n_genes=3) -> pd.DataFrame:
    rows = [{"section": s, "gene": f"G{g}", "metric": "pearson", "value": 0.1 * (i + 1) + 0.01 * g}
            for i, s in enumerate(sections) for g in range(n_genes)]  # fmt: skip
    return pd.DataFrame(rows)


def test_gene_scores_reads_the_table_of_a_spatialdata(her2st_two):
    """evaluate_expression writes into a SpatialData's table; gene_scores reads it from the same object."""
    from spatialdata import SpatialData

    t = her2st_two.tables["table"].copy()
    sd = SpatialData(tables={"table": t})
    genes = list(t.var_names[:50])
    scst.tl.evaluate_expression(sd, genes=genes)
    hist_ax, bar_ax = scst.pl.gene_scores(sd, n_top=5, show=False)
    top = t.var["scst_eval_pearson"].dropna().sort_values(ascending=False).iloc[:5]
    assert [tx.get_text() for tx in bar_ax.get_yticklabels()][::-1] == list(top.index)


def test_unused_section_categories_are_no_groups():
    """A categorical section column filtered with pandas keeps unused categories: no empty bar, no 'mean nan'."""
    df = _tidy(["C2", "C3"])
    df["section"] = pd.Categorical(df["section"], categories=["C2", "C3", "D1"])
    ax = scst.pl.cross_validation(df, show=False)
    assert [tx.get_text() for tx in ax.get_xticklabels()] == ["C2", "C3", "mean"]
    assert ax.get_title().endswith("× 2 section(s)")
    a = AnnData(np.zeros((1, 3), np.float32))
    a.uns["scst_eval"] = df
    hist_ax, _ = scst.pl.gene_scores(a, show=False)
    assert [tx.get_text() for tx in hist_ax.get_legend().texts] == ["C2 (mean 0.110)", "C3 (mean 0.210)"]


def test_a_shown_figure_of_its_own_is_closed_and_a_callers_is_not(tmp_path):
    """save= in a loop (the default show) leaves no figures open (scanpy's savefig_or_show closes them)."""
    plt.close("all")
    df = _tidy(["C2", "C3"])
    for i in range(3):
        assert scst.pl.cross_validation(df, save=tmp_path / f"cv{i}.png") is None
        assert (tmp_path / f"cv{i}.png").is_file()
    assert plt.get_fignums() == []
    fig, ax = plt.subplots()
    scst.pl.cross_validation(df, ax=ax, show=True)
    assert plt.get_fignums() == [fig.number]  # the caller's figure stays theirs


def test_save_path_home_and_empty(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    df = _tidy(["C2"])
    scst.pl.cross_validation(df, save="~/figs/cv.png", show=False)
    assert (tmp_path / "figs" / "cv.png").is_file()
    assert not list(tmp_path.rglob("~"))
    for bad in ("", "."):
        with pytest.raises(ValueError, match="save: expected the path of a file"):
            scst.pl.cross_validation(df, save=bad, show=False)


def test_observed_panel_on_normalised_data_says_how_to_draw_predictions_only(her2st_two):
    import scanpy as sc

    t = her2st_two.tables["table"][:40].copy()
    sc.pp.normalize_total(t, target_sum=1e4)
    sc.pp.log1p(t)
    t.obs["section"] = t.obs["section"].astype(str)
    with pytest.raises(ValueError, match="pass observed=False"):
        scst.pl.predicted_expression(t, "ERBB2", "predicted", show=False)
    axes = scst.pl.predicted_expression(t, "ERBB2", "predicted", observed=False, show=False)
    assert len(np.atleast_1d(axes)) == 1


def test_group_panel_has_distinct_colours_beyond_twenty_groups():
    import mudata as md

    n = 36
    rna = AnnData(np.zeros((n, 2), np.float32), obs=pd.DataFrame({"g": [f"S{i}" for i in range(n)]}))
    img = AnnData(np.zeros((n, 2), np.float32), obs=pd.DataFrame({"g": [f"S{i}" for i in range(n)]}))
    rna.obs_names = [f"r{i}" for i in range(n)]
    img.obs_names = [f"i{i}" for i in range(n)]
    rng = np.random.default_rng(0)
    for a in (rna, img):
        a.obsm["X_umap"] = rng.normal(size=(n, 2))
    mdata = md.MuData({"rna": rna, "image": img})
    mdata.uns["scst_retrieval"] = {
        "query": "image", "k": 5, "n_query": n, "accuracy": {"g": 0.4}, "chance": {"g": 0.1},
        "exact_top1": 0.1, "exact_topk": 0.2, "chance_exact_top1": 0.03, "chance_exact_topk": 0.14,
    }  # fmt: skip
    axes = scst.pl.retrieval(mdata, basis="X_umap", color="g", show=False)
    g = axes[2]
    leg = g.get_legend()
    colours = {matplotlib.colors.to_hex(h.get_facecolor()[0]) for h in leg.legend_handles}
    assert len(leg.texts) == n and len(colours) == n


def test_ligrec_empty_methods_and_one_class_errors_leave_no_figure():
    plt.close("all")
    label = np.array([1, 0] * 5)
    pred = pd.concat([
        pd.DataFrame({"method": "a", "label": label, "score": label.astype(float)}),
        pd.DataFrame({"method": "b", "label": 1, "score": np.arange(10.0)}),
    ])  # fmt: skip
    with pytest.raises(ValueError, match="methods: expected at least one method"):
        scst.pl.ligrec_roc(pred, methods=[], show=False)
    with pytest.raises(ValueError, match="'b' has test pairs of one class only"):
        scst.pl.ligrec_roc(pred, show=False)
    assert plt.get_fignums() == []  # the check runs before the figure is made
    a = AnnData(np.zeros((1, 1), np.float32))
    a.uns["scst_ligrec"] = pd.DataFrame({"ligand_complex": ["L"], "receptor_complex": ["R"], "x_score": [1.0]})
    with pytest.raises(ValueError, match=r"methods: expected at least one method; uns\['scst_ligrec'\] has \['x'\]"):
        scst.pl.ligand_receptor(a, methods=[], show=False)
    a.uns["scst_ligrec"] = a.uns["scst_ligrec"].drop(columns="x_score")
    with pytest.raises(KeyError, match="no '<method>_score' column"):
        scst.pl.ligand_receptor(a, show=False)


def test_dotplot_size_legend_on_a_callers_axes_with_its_own_line():
    a = AnnData(np.zeros((1, 1), np.float32))
    a.uns["scst_ligrec"] = pd.DataFrame(
        {"ligand_complex": ["L0", "L1"], "receptor_complex": ["R0", "R1"], "x_score": [1.0, 2.0]}
    )
    fig, ax = plt.subplots()
    ax.plot([0, 1], [0, 1], label="mine")
    scst.pl.ligand_receptor(a, ax=ax, show=False)
    assert [t.get_text() for t in ax.get_legend().texts] == ["10% expressing", "50% expressing", "100% expressing"]


def test_deprecated_alias_accepts_save_false_and_sections_must_be_names(her2st_two, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.warns(FutureWarning):
        scst.pl.spatial_expression(her2st_two, "ERBB2", sections=["C2"], layers=[None], save=False, show=False)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(TypeError, match="sections: expected a section name or a list"):
        scst.pl.predicted_expression(her2st_two, "ERBB2", sections=3, show=False)
