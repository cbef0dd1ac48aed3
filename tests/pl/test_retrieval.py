"""pl.retrieval on a hand-made ``uns["scst_retrieval"]`` dict of the documented shape (scst.tl.retrieve)."""

from __future__ import annotations

import matplotlib
import numpy as np
import pytest
from anndata import AnnData

import scst


def _bars_adata() -> AnnData:
    """Retrieval results of one group key: accuracy 0.4 vs chance 0.2, exact top-1/top-5 against their chances."""
    a = AnnData(np.zeros((2, 1), np.float32))
    a.uns["scst_retrieval"] = {
        "query": "image", "k": 5, "n_query": 100, "accuracy": {"label": 0.4}, "chance": {"label": 0.2},
        "exact_top1": 0.03, "exact_topk": 0.1, "chance_exact_top1": 0.01, "chance_exact_topk": 0.05,
    }  # fmt: skip
    return a


def test_bars_observed_vs_chance():
    a = _bars_adata()
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


def test_embedding_panels_by_modality_and_group():
    """basis= adds a panel per modality (both point clouds at their coordinates) and color= one per group."""
    import mudata as md
    import pandas as pd

    def mod(n, offset, labels):
        a = AnnData(
            np.zeros((n, 1), np.float32), obs=pd.DataFrame({"label": labels}, index=[f"s{i}" for i in range(n)])
        )
        a.obsm["X_multimodal_umap"] = np.column_stack([np.arange(n, dtype=float) + offset, np.zeros(n)])
        return a

    m = md.MuData({"rna": mod(4, 0.0, ["a", "b", "a", "b"]), "image": mod(3, 10.0, ["a", "a", "b"])})
    m.uns["scst_retrieval"] = {
        "query": "image", "k": 5, "n_query": 3, "accuracy": {"label": 0.4}, "chance": {"label": 0.2},
        "exact_top1": 0.03, "exact_topk": 0.1, "chance_exact_top1": 0.01, "chance_exact_topk": 0.05,
    }  # fmt: skip
    bars, by_mod, by_label = scst.pl.retrieval(m, basis="X_multimodal_umap", color="label", show=False)
    rna, image = by_mod.collections
    np.testing.assert_array_equal(rna.get_offsets()[:, 0], [0, 1, 2, 3])
    np.testing.assert_array_equal(image.get_offsets()[:, 0], [10, 11, 12])
    assert [t.get_text() for t in by_mod.get_legend().get_texts()] == ["rna", "image"]
    assert sum(len(c.get_offsets()) for c in by_label.collections) == 7
    assert [t.get_text() for t in by_label.get_legend().get_texts()] == ["a", "b"]
    with pytest.raises(KeyError, match="basis: 'X_umap'"):
        scst.pl.retrieval(m, basis="X_umap", show=False)
    with pytest.raises(ValueError, match="color: only used with `basis`"):
        scst.pl.retrieval(m, color="label", show=False)


def test_embedding_panel_uses_the_models_modality_names():
    """Modalities named otherwise than "rna"/"image": taken from uns[key]["modalities"] (scst.tl.retrieve writes
    it), else from the MultimodalST setup in mdata.uns; each cloud at its own coordinates."""
    import json

    import mudata as md

    def mod(n, offset):
        a = AnnData(np.zeros((n, 1), np.float32))
        a.obs_names = [f"{offset}_{i}" for i in range(n)]
        a.obsm["U"] = np.column_stack([np.arange(n, dtype=float) + offset, np.zeros(n)])
        return a

    res = {
        "query": "image", "k": 1, "n_query": 3, "accuracy": {}, "chance": {}, "exact_top1": 0.5, "exact_topk": 0.5,
        "chance_exact_top1": 0.25, "chance_exact_topk": 0.25,
    }  # fmt: skip
    m = md.MuData({"he": mod(3, 10.0), "expr": mod(4, 0.0)})
    m.uns["scst_retrieval"] = {**res, "modalities": ["expr", "he"]}
    _, by_mod = scst.pl.retrieval(m, basis="U", show=False)
    assert [t.get_text() for t in by_mod.get_legend().get_texts()] == ["expr", "he"]
    rna, image = by_mod.collections
    np.testing.assert_array_equal(rna.get_offsets()[:, 0], [0, 1, 2, 3])
    np.testing.assert_array_equal(image.get_offsets()[:, 0], [10, 11, 12])
    # an older result without "modalities": the names of the MultimodalST setup
    m.uns["scst_retrieval"] = res
    m.uns["_scst_setup"] = {"MultimodalST": json.dumps({"rna": "expr", "image": "he"})}
    _, by_mod = scst.pl.retrieval(m, basis="U", show=False)
    assert [t.get_text() for t in by_mod.get_legend().get_texts()] == ["expr", "he"]
    del m.uns["_scst_setup"]
    with pytest.raises(ValueError, match=r"basis: needs a MuData with the RNA and image modalities \['rna', 'image'\]"):
        scst.pl.retrieval(m, basis="U", show=False)


def test_bars_follow_the_group_keys_and_skip_ratios_without_a_finite_observation_or_chance():
    """Chances are matched to their group key by name (the dicts in different orders); no ratio is written over a
    chance of 0 (a label absent on the target side) or a NaN observation (unpaired data); the title names the query
    direction and the number of queries."""
    a = AnnData(np.zeros((2, 1), np.float32))
    a.uns["scst_retrieval"] = {
        "query": "rna", "k": 3, "n_query": 7, "accuracy": {"label": 0.5, "patient": 0.3},
        "chance": {"patient": 0.0, "label": 0.25}, "exact_top1": float("nan"), "exact_topk": 0.6,
        "chance_exact_top1": 0.1, "chance_exact_topk": 0.2,
    }  # fmt: skip
    ax = scst.pl.retrieval(a, show=False)
    heights = [p.get_height() for p in ax.patches]
    np.testing.assert_allclose(heights, [0.5, 0.3, np.nan, 0.6, 0.25, 0.0, 0.1, 0.2])
    assert [t.get_text() for t in ax.get_xticklabels()] == ["label (top-1)", "patient (top-1)", "exact top-1",
                                                            "exact top-3"]  # fmt: skip
    assert [t.get_text() for t in ax.texts] == ["2×", "3×"]  # label 0.5/0.25, exact top-3 0.6/0.2
    assert ax.get_title() == "rna → retrieval (7 queries)"


def test_group_panel_checks_the_column_and_draws_missing_labels_grey():
    """color= must be an obs column of both modalities (a close-match KeyError otherwise); a missing label is no
    category of its own but is drawn in grey, "NA" last in the legend (as scanpy; it was left out); a "modalities"
    entry that is not a pair is not used (the default names)."""
    import mudata as md
    import pandas as pd

    def mod(n, labels):
        a = AnnData(
            np.zeros((n, 1), np.float32), obs=pd.DataFrame({"label": labels}, index=[f"s{i}" for i in range(n)])
        )
        a.obsm["U"] = np.column_stack([np.arange(n, dtype=float), np.zeros(n)])
        return a

    m = md.MuData({"rna": mod(3, ["a", None, "b"]), "image": mod(2, ["b", None])})
    m.uns["scst_retrieval"] = {
        "query": "image", "k": 1, "n_query": 2, "accuracy": {}, "chance": {}, "exact_top1": 0.5, "exact_topk": 0.5,
        "chance_exact_top1": 0.5, "chance_exact_topk": 0.5, "modalities": ["rna"],
    }  # fmt: skip
    _, by_mod, by_label = scst.pl.retrieval(m, basis="U", color="label", show=False)
    assert [t.get_text() for t in by_mod.get_legend().get_texts()] == ["rna", "image"]
    assert [t.get_text() for t in by_label.get_legend().get_texts()] == ["a", "b", "NA"]
    assert sum(len(c.get_offsets()) for c in by_label.collections) == 5  # every point, the two unlabelled ones too
    grey = [
        c for c in by_label.collections if np.allclose(c.get_facecolor()[0][:3], matplotlib.colors.to_rgb("lightgray"))
    ]
    assert sorted(tuple(p) for c in grey for p in c.get_offsets()) == [(1.0, 0.0), (1.0, 0.0)]  # rna s1, image s1
    with pytest.raises(KeyError, match="color: 'lable'"):
        scst.pl.retrieval(m, basis="U", color="lable", show=False)


def test_observed_bar_left_of_chance():
    """Per measure the observed bar is on the left and the hatched chance bar on the right of the tick."""
    a = _bars_adata()
    ax = scst.pl.retrieval(a, show=False)
    centres = [p.get_x() + p.get_width() / 2 for p in ax.patches]
    np.testing.assert_allclose(centres, [-0.2, 0.8, 1.8, 0.2, 1.2, 2.2])
    assert [p.get_hatch() for p in ax.patches] == [None] * 3 + ["//"] * 3


def test_save_false_writes_nothing_and_save_true_names_the_argument(tmp_path):
    """scanpy habits: save=False is no file (was Path(False): a bare TypeError); save=True, scanpy's name made from
    the plot's, is a TypeError naming `save` and asking for a path."""
    import scanpy as sc

    old, sc.settings.figdir = sc.settings.figdir, tmp_path
    try:
        assert scst.pl.retrieval(_bars_adata(), show=False, save=False) is not None
        assert list(tmp_path.iterdir()) == []
        with pytest.raises(TypeError, match="save: expected the path of the file to write"):
            scst.pl.retrieval(_bars_adata(), show=False, save=True)
    finally:
        sc.settings.figdir = old


def test_group_panel_colours_equal_numbers_alike():
    """Int labels on one side, ints with a missing value (floats: 2.0, NaN) on the other: 2 and 2.0 are one group,
    one colour and one legend entry (the legend read 1, 2, 2.0)."""
    import mudata as md
    import pandas as pd

    def mod(n, labels):
        a = AnnData(
            np.zeros((n, 1), np.float32), obs=pd.DataFrame({"label": labels}, index=[f"s{i}" for i in range(n)])
        )
        a.obsm["U"] = np.column_stack([np.arange(n, dtype=float), np.zeros(n)])
        return a

    m = md.MuData({"rna": mod(3, [1, 2, 1]), "image": mod(2, [2, np.nan])})
    m.uns["scst_retrieval"] = {
        "query": "image", "k": 1, "n_query": 2, "accuracy": {}, "chance": {}, "exact_top1": 0.5, "exact_topk": 0.5,
        "chance_exact_top1": 0.5, "chance_exact_topk": 0.5,
    }  # fmt: skip
    _, _, by_label = scst.pl.retrieval(m, basis="U", color="label", show=False)
    assert [t.get_text() for t in by_label.get_legend().get_texts()] == ["1", "2", "NA"]
    two = [c for c in by_label.collections if len(c.get_offsets()) and c.get_label() != "NA"]
    assert sum(len(c.get_offsets()) for c in two) == 4
    colours = {tuple(c.get_offsets()[:, 0]): tuple(c.get_facecolors()[0]) for c in two}
    assert colours[(1.0,)] == colours[(0.0,)] != colours[(0.0, 2.0)]  # rna s1 (2) and image s0 (2.0) alike
