"""pl.retrieval on a hand-made ``uns["scst_retrieval"]`` dict of the documented shape (scst.tl.retrieve)."""

from __future__ import annotations

import numpy as np
import pytest
from anndata import AnnData

import scst


def test_bars_observed_vs_chance():
    a = AnnData(np.zeros((2, 1), np.float32))
    a.uns["scst_retrieval"] = {
        "query": "image", "k": 5, "n_query": 100, "accuracy": {"label": 0.4}, "chance": {"label": 0.2},
        "exact_top1": 0.03, "exact_topk": 0.1, "chance_exact_top1": 0.01, "chance_exact_topk": 0.05,
    }  # fmt: skip
    ax = scst.pl.retrieval(a, show=False)
    heights = [p.get_height() for p in ax.patches]
    np.testing.assert_allclose(heights, [0.4, 0.03, 0.1, 0.2, 0.01, 0.05])
    assert [t.get_text() for t in ax.get_xticklabels()] == ["label (top-1)", "exact top-1", "exact top-5"]
    assert [t.get_text() for t in ax.texts] == ["2×", "3×", "2×"]
    del a.uns["scst_retrieval"]["exact_topk"]
    with pytest.raises(KeyError, match="exact_topk"):
        scst.pl.retrieval(a, show=False)
    with pytest.raises(KeyError, match="key: 'scst_retrival'.*close matches"):
        scst.pl.retrieval(a, key="scst_retrival", show=False)
