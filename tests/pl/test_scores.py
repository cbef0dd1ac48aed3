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
