"""pl.gene_scores on evaluate_expression of her2st C2/C3; pl.cross_validation on hand-made tidy tables."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import scst


def test_gene_scores_ranks_the_best_genes(her2st_two):
    t = her2st_two.tables["table"].copy()
    genes = list(t.var_names[:300])
    scst.tl.evaluate_expression(t, genes=genes)
    hist_ax, bar_ax = scst.pl.gene_scores(t, n_top=10, show=False)
    top = t.var["scst_eval_pearson"].dropna().sort_values(ascending=False).iloc[:10]
    heights = [p.get_width() for p in bar_ax.patches]
    labels = [tx.get_text() for tx in bar_ax.get_yticklabels()]
    assert labels[::-1] == list(top.index) and np.allclose(heights[::-1], top.to_numpy())
    legend = [tx.get_text() for tx in hist_ax.get_legend().texts]
    per_sec = t.uns["scst_eval"].query("metric == 'pearson'").groupby("section")["value"].mean()
    assert legend == [f"{s} (mean {v:.3f})" for s, v in per_sec.items()]
    fig = scst.pl.gene_scores(t, metric="mse", return_fig=True)
    assert fig.axes[1].get_xlabel() == "mean mse over sections"
    with pytest.raises(KeyError, match=r"metric: 'mae' not found"):
        scst.pl.gene_scores(t, metric="mae", show=False)
    with pytest.raises(KeyError, match=r"key: 'scst_evl' not found in adata.uns; close matches: \['scst_eval'"):
        scst.pl.gene_scores(t, key="scst_evl", show=False)


def _table(means: dict[str, float], n_genes: int = 4) -> pd.DataFrame:
    rows = []
    for s, m in means.items():
        for g in range(n_genes):
            rows.append({"fold": 0, "section": s, "gene": f"G{g}", "metric": "pearson", "value": m + (g - 1.5) * 0.01})
    return pd.DataFrame(rows)


def test_cross_validation_bars():
    tabs = {"ridge": _table({"C2": 0.2, "C3": 0.1}), "mean": _table({"C2": 0.0, "C3": -0.1})}
    ax = scst.pl.cross_validation(tabs, show=False)
    bars = [p.get_height() for p in ax.patches]
    np.testing.assert_allclose(bars, [0.2, 0.1, 0.15, 0.0, -0.1, -0.05], atol=1e-12)
    assert [tx.get_text() for tx in ax.get_xticklabels()] == ["C2", "C3", "mean"]
    assert [tx.get_text() for tx in ax.get_legend().texts] == ["ridge", "mean"]
    one = scst.pl.cross_validation(tabs["ridge"], show=False)
    assert len(one.patches) == 3
    with pytest.raises(KeyError, match=r"table: missing column\(s\) \['metric'\]"):
        scst.pl.cross_validation(tabs["ridge"].drop(columns="metric"), show=False)


def test_gene_scores_ranks_errors_lowest_first():
    """For an error metric (mse, mae) the best genes are those with the lowest mean over sections, best on top."""
    from anndata import AnnData

    mse = {"G0": (0.4, 0.6), "G1": (0.1, 0.1), "G2": (0.9, 0.7), "G3": (0.2, 0.4)}  # means 0.5, 0.1, 0.8, 0.3
    rows = [
        {"section": s, "gene": g, "metric": "mse", "value": v[i]} for g, v in mse.items() for i, s in enumerate("AB")
    ]
    a = AnnData(np.zeros((2, 1), np.float32))
    a.uns["scst_eval"] = pd.DataFrame(rows)
    _, bar_ax = scst.pl.gene_scores(a, metric="mse", n_top=3, show=False)
    labels = [tx.get_text() for tx in bar_ax.get_yticklabels()]
    assert labels[::-1] == ["G1", "G3", "G0"]  # best (lowest) on top
    np.testing.assert_allclose([p.get_width() for p in bar_ax.patches][::-1], [0.1, 0.3, 0.5])
    # drawn into the caller's two axes, whose layout is left alone (tight_layout only on a figure made here)
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(8, 3))
    where = [a.get_position().bounds for a in axes]
    out = scst.pl.gene_scores(a, metric="mse", n_top=3, ax=axes, show=False)
    assert out[0] is axes[0] and out[1] is axes[1]
    np.testing.assert_allclose([p.get_width() for p in axes[1].patches][::-1], [0.1, 0.3, 0.5])
    assert [ax.get_position().bounds for ax in axes] == where
    plt.close(fig)


def test_cross_validation_summary_errors_and_positions():
    """Known answers: ``mean`` is the mean of the per-section means (not of all genes pooled, which weighs a section
    by its gene count); the error bar is the standard error over genes; a model without a section leaves a gap at
    that section (its other bars stay at their sections); each model's bars are centred on the group."""
    rows = [{"section": "C2", "gene": f"G{g}", "metric": "pearson", "value": v} for g, v in enumerate([0.1, 0.3])]
    rows += [{"section": "C3", "gene": f"G{g}", "metric": "pearson", "value": v} for g, v in enumerate([0.6] * 4)]
    a_tab = pd.DataFrame(rows)  # C2: mean 0.2, sem 0.1; C3: mean 0.6, sem 0; pooled mean 0.467 ≠ 0.4
    b_tab = a_tab[a_tab["section"] == "C3"].assign(value=lambda d: d["value"] - 0.5)  # no C2
    ax = scst.pl.cross_validation({"a": a_tab, "b": b_tab}, show=False)
    heights = [p.get_height() for p in ax.patches]
    np.testing.assert_allclose(heights, [0.2, 0.6, 0.4, np.nan, 0.1, 0.1], atol=1e-12)
    xs = [p.get_x() + p.get_width() / 2 for p in ax.patches]
    np.testing.assert_allclose(xs, [-0.2, 0.8, 1.8, 0.2, 1.2, 2.2], atol=1e-12)
    from matplotlib.container import ErrorbarContainer

    (err_a, _) = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]  # model a, model b
    err = err_a.lines[2][0].get_segments()
    half = [np.ptp(np.asarray(seg)[:, 1]) / 2 for seg in err if len(seg)]  # none on `mean`
    np.testing.assert_allclose(half, [0.1, 0.0], atol=1e-12)


def test_bad_tables_n_top_and_metrics_without_finite_values():
    from anndata import AnnData

    rows = pd.DataFrame({"section": ["A", "A"], "gene": ["G0", "G1"], "metric": "pearson", "value": [np.nan, np.nan]})
    a = AnnData(np.zeros((2, 1), np.float32))
    a.uns["scst_eval"] = rows
    with pytest.raises(ValueError, match=r"metric: no finite 'pearson' value in uns\['scst_eval'\]"):
        scst.pl.gene_scores(a, show=False)
    with pytest.raises(ValueError, match="metric: no finite 'pearson' value in table"):
        scst.pl.cross_validation(rows, show=False)
    a.uns["scst_eval"] = rows.assign(value=[0.1, 0.2])
    for bad in (0, "5", 2.5):  # a string was a bare TypeError from the comparison
        with pytest.raises(ValueError, match=f"n_top: expected a positive integer, got {bad!r}"):
            scst.pl.gene_scores(a, n_top=bad, show=False)
    with pytest.raises(TypeError, match="table: expected a pandas DataFrame, got list"):
        scst.pl.cross_validation([rows], show=False)
