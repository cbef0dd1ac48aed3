"""pl.ligand_receptor (dot plot) and pl.ligand_receptor_spatial on tl.ligand_receptor run on her2st C2."""

from __future__ import annotations

import warnings

import matplotlib.pyplot as plt
import numpy as np
import pytest

import scst


@pytest.fixture(scope="module")
def c2_ligrec(her2st_two):
    import squidpy as sq

    t = her2st_two.tables["table"]
    a = t[(t.obs["section"] == "C2").to_numpy()].copy()
    sq.gr.spatial_neighbors_grid(a, spatial_key="spatial_array", n_neighs=4, library_key="section")
    scst.tl.ligand_receptor(a, method=["spatial_pearson", "expression"], n_perms=20, local_scores=5)
    return a


def test_dotplot_top_pairs(c2_ligrec):
    df = c2_ligrec.uns["scst_ligrec"]
    ax = scst.pl.ligand_receptor(c2_ligrec, n_top=8, show=False)
    top = df.sort_values("spatial_pearson_score", ascending=False).head(8)
    want = list(top["ligand_complex"] + " → " + top["receptor_complex"])
    assert [t.get_text() for t in ax.get_yticklabels()] == want  # first pair on top
    dots = ax.collections[0]  # spatial_pearson column, pairs top to bottom
    frac = np.minimum(top["ligand_props"], top["receptor_props"]).to_numpy()
    np.testing.assert_allclose(dots.get_sizes(), 20 + 230 * frac)
    ringed = dots.get_edgecolors()[:, 3] > 0
    np.testing.assert_array_equal(ringed, top["spatial_pearson_pvals"].to_numpy() < 0.05)
    with pytest.raises(KeyError, match=r"methods: 'spatial' not found.*close matches"):
        scst.pl.ligand_receptor(c2_ligrec, methods="spatial", show=False)


def test_local_score_on_tissue(c2_ligrec, her2st_two):
    from spatialdata import SpatialData

    local = c2_ligrec.obsm["scst_ligrec_local"]
    pair = local.columns[0]
    tab = c2_ligrec.copy()
    tab.uns["spatialdata_attrs"] = {**tab.uns["spatialdata_attrs"], "region": "C2_spots"}
    tab.obs["region"] = tab.obs["region"].cat.remove_unused_categories()
    sd = SpatialData(
        images={"C2_image": her2st_two.images["C2_image"]},
        shapes={"C2_spots": her2st_two.shapes["C2_spots"]},
        tables={"table": tab},
    )
    fig = scst.pl.ligand_receptor_spatial(sd, pair, return_fig=True)
    (ax,) = [a for a in fig.axes if a.get_title()]
    assert ax.get_title() == f"C2 · {pair}" and len(ax.images) == 1
    assert len(ax.collections[0].get_facecolors()) == c2_ligrec.n_obs
    with pytest.raises(KeyError, match="pair: 'NOPE"):
        scst.pl.ligand_receptor_spatial(sd, "NOPE^X", show=False)
    plt.close(fig)


def test_ligrec_roc_curves_per_method():
    """Known answers: a score equal to the label gives AUROC = AUPRC = 1; a reversed one AUROC 0."""
    import pandas as pd

    label = np.array([1, 0] * 20)
    pred = pd.concat(
        [
            pd.DataFrame({"method": "perfect", "label": label, "score": label.astype(float)}),
            pd.DataFrame({"method": "reversed", "label": label, "score": 1.0 - label}),
        ]
    )
    roc, pr = scst.pl.ligrec_roc(pred, show=False)
    assert [t.get_text() for t in roc.get_legend().get_texts()] == ["perfect (AUROC 1.00)", "reversed (AUROC 0.00)"]
    assert pr.get_legend().get_texts()[0].get_text() == "perfect (AUPRC 1.00)"
    perfect = roc.get_lines()[0]
    assert (0.0, 1.0) in set(zip(perfect.get_xdata(), perfect.get_ydata()))  # all positives before any negative
    assert pr.get_lines()[-1].get_ydata()[0] == pytest.approx(0.5)  # chance line at the positive rate
    # the chance line is the positive rate of the pairs drawn: not of a method left out, nor of unscored rows
    other = pd.DataFrame({"method": "other", "label": np.r_[1, np.zeros(9, int)], "score": np.arange(10.0)})
    unscored = pd.DataFrame({"method": "perfect", "label": [1] * 10, "score": np.nan})
    with pytest.warns(UserWarning, match="10 pairs of the methods drawn have a NaN score"):
        _, pr = scst.pl.ligrec_roc(pd.concat([pred, other, unscored]), methods="perfect", show=False)
    assert pr.get_lines()[-1].get_ydata()[0] == pytest.approx(0.5)
    with pytest.raises(KeyError, match="methods: 'perfekt'"):
        scst.pl.ligrec_roc(pred, methods="perfekt", show=False)
    with pytest.raises(KeyError, match="ligrec_cv"):
        scst.pl.ligrec_roc(pred.drop(columns="score"), show=False)
    with pytest.raises(ValueError, match="one class"):
        scst.pl.ligrec_roc(pred[pred["label"] == 1], show=False)


def test_ligrec_roc_legend_auprc_is_average_precision_as_in_ligrec_metrics():
    """The PR legend reports average precision, the AUPRC of scst.tl.ligrec_metrics, not the trapezoidal area."""
    import pandas as pd
    from sklearn.metrics import auc, average_precision_score, precision_recall_curve

    rng = np.random.default_rng(1)
    y = np.r_[np.ones(10), np.zeros(30)].astype(int)
    s = rng.normal(size=40) + 0.5 * y
    pred = pd.DataFrame({"method": "m", "fold": 0, "ligand": [f"L{i % 7}" for i in range(40)], "receptor": "R",
                         "label": y, "score": s})  # fmt: skip
    ap = average_precision_score(y, s)
    prec, rec, _ = precision_recall_curve(y, s)
    assert f"{ap:.2f}" == "0.49" and f"{auc(rec, prec):.2f}" == "0.45"  # the two summaries differ on these data
    assert scst.tl.ligrec_metrics(pred, n_boot=0)["auprc"].iloc[0] == pytest.approx(ap)
    _, pr = scst.pl.ligrec_roc(pred, show=False)
    assert [t.get_text() for t in pr.get_legend().get_texts()] == ["m (AUPRC 0.49)"]
    curve = pr.get_lines()[0]  # recall on x, precision on y
    np.testing.assert_allclose(curve.get_xdata(), rec)
    np.testing.assert_allclose(curve.get_ydata(), prec)


def test_dotplot_columns_colours_and_rings_per_method():
    """A hand-made table: each method in its own column (x = its position, tick label = its name), colours min–max
    within the method (its best pair brightest), rings from the method's own p-values (strictly below alpha), the
    first pair on top, and a legend of the dot sizes only; without ``*_props`` every dot is full size."""
    import pandas as pd
    from anndata import AnnData

    df = pd.DataFrame(
        {
            "ligand_complex": ["L0", "L1", "L2", "L3"],
            "receptor_complex": ["R0", "R1", "R2", "R3"],
            "ligand_props": [0.2, 0.4, 1.0, 0.5],
            "receptor_props": [0.6, 0.1, 0.8, 0.5],
            "m1_score": [4.0, 3.0, 2.0, 1.0],
            "m1_pvals": [0.05, 0.01, 0.5, 0.2],
            "m2_score": [10.0, 30.0, 20.0, 0.0],
            "m2_pvals": [0.5, 0.5, 0.01, 0.01],
        }
    )
    a = AnnData(np.zeros((2, 1), np.float32))
    a.uns["scst_ligrec"] = df
    ax = scst.pl.ligand_receptor(a, n_top=3, show=False)
    m1, m2 = ax.collections[:2]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["m1", "m2"]
    np.testing.assert_array_equal(m1.get_offsets(), [[0, 2], [0, 1], [0, 0]])  # L0 (best by m1) on top
    np.testing.assert_array_equal(m2.get_offsets()[:, 0], [1, 1, 1])
    ticks = dict(zip(ax.get_yticks(), [t.get_text() for t in ax.get_yticklabels()]))
    assert ticks == {2: "L0 → R0", 1: "L1 → R1", 0: "L2 → R2"}
    np.testing.assert_allclose(m1.get_sizes(), 20 + 230 * np.array([0.2, 0.1, 0.8]))
    cm = plt.get_cmap("viridis")
    np.testing.assert_allclose(m1.get_facecolors(), cm([1.0, 0.5, 0.0]))  # scores 4, 3, 2
    np.testing.assert_allclose(m2.get_facecolors(), cm([0.0, 1.0, 0.5]))  # scores 10, 30, 20
    np.testing.assert_array_equal(m1.get_edgecolors()[:, 3] > 0, [False, True, False])  # p = 0.05 is no ring
    np.testing.assert_array_equal(m2.get_edgecolors()[:, 3] > 0, [False, False, True])
    sizes = ["10% expressing", "50% expressing", "100% expressing"]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == sizes
    a.uns["scst_ligrec"] = df.drop(columns=["ligand_props", "receptor_props"])
    ax = scst.pl.ligand_receptor(a, methods="m2", n_top=2, show=False)
    np.testing.assert_allclose(ax.collections[0].get_sizes(), [250.0, 250.0])
    assert [t.get_text() for t in ax.get_yticklabels()] == ["L1 → R1", "L2 → R2"]  # ranked by m2 now


def test_dotplot_pairs_tied_on_the_score_do_not_hang_on_the_row_order():
    """Pairs with equal scores are ranked by ``magnitude_rank`` (when the table has it), then by name: the same table
    in another row order shows the same pairs in the same order (the pairs shown among ties changed with it)."""
    import pandas as pd
    from anndata import AnnData

    n = 40
    df = pd.DataFrame(
        {
            "ligand_complex": [f"L{i:02d}" for i in range(n)],
            "receptor_complex": [f"R{i:02d}" for i in range(n)],
            "m1_score": np.repeat([2.0, 1.0], n // 2),
        }
    )
    a = AnnData(np.zeros((2, 1), np.float32))
    shown = []
    for seed in range(3):
        a.uns["scst_ligrec"] = df.sample(frac=1, random_state=seed)
        ax = scst.pl.ligand_receptor(a, n_top=25, show=False)
        shown.append([t.get_text() for t in ax.get_yticklabels()])
        plt.close("all")
    want = [f"L{i:02d} → R{i:02d}" for i in range(25)]
    assert shown == [want] * 3
    a.uns["scst_ligrec"] = df.assign(magnitude_rank=np.arange(n)[::-1] / n).sample(frac=1, random_state=0)
    ax = scst.pl.ligand_receptor(a, n_top=3, show=False)
    assert [t.get_text() for t in ax.get_yticklabels()] == ["L19 → R19", "L18 → R18", "L17 → R17"]


def test_local_score_scale_spans_the_sections_drawn():
    """The colour scale of ligand_receptor_spatial is the range over the sections drawn, not over all spots: the
    highest and lowest spot of section A take the ends of the colour map even when B holds larger scores."""
    import pandas as pd
    from anndata import AnnData

    n = 12
    obs = pd.DataFrame({"section": pd.Categorical(["A"] * n + ["B"] * n)}, index=[f"s{i}" for i in range(2 * n)])
    a = AnnData(np.zeros((2 * n, 1), np.float32), obs=obs)
    a.obsm["spatial"] = np.column_stack([np.arange(2 * n) % 4 * 10.0, np.arange(2 * n) // 4 * 10.0])
    score = np.r_[np.linspace(0.0, 1.0, n), np.linspace(5.0, 9.0, n)]
    a.obsm["scst_ligrec_local"] = pd.DataFrame({"L^R": score}, index=a.obs_names)
    with pytest.warns(UserWarning, match="no image"):
        (ax,) = scst.pl.ligand_receptor_spatial(a, "L^R", sections="A", show=False)
    fc = ax.collections[0].get_facecolors()
    cm = plt.get_cmap("viridis")
    np.testing.assert_allclose(fc[[0, -1], :3], cm([0.0, 1.0])[:, :3], atol=2 / 255)


def test_local_score_on_data_without_a_section_column():
    """seqFISH+-like data (obs["fov"], no "section") could not be drawn ("adata.obs has no 'section' column"): the
    fields of view are the panels; without any such column (or library_key=None) all cells are one panel."""
    import pandas as pd
    from anndata import AnnData

    n = 12
    obs = pd.DataFrame({"fov": [0] * n + [1] * n}, index=[f"c{i}" for i in range(2 * n)])
    a = AnnData(np.zeros((2 * n, 1), np.float32), obs=obs)
    a.obsm["spatial"] = np.column_stack([np.arange(2 * n) % 4 * 10.0, np.arange(2 * n) // 4 * 10.0])
    a.obsm["scst_ligrec_local"] = pd.DataFrame({"L^R": np.linspace(0.0, 1.0, 2 * n)}, index=a.obs_names)
    with pytest.warns(UserWarning, match="no image"):
        axes = scst.pl.ligand_receptor_spatial(a, "L^R", show=False)
    assert [ax.get_title() for ax in axes] == ["0 · L^R", "1 · L^R"]
    assert [len(ax.collections[0].get_facecolors()) for ax in axes] == [n, n]
    with pytest.warns(UserWarning, match="no image"):
        (ax,) = scst.pl.ligand_receptor_spatial(a, "L^R", sections="1", library_key="fov", show=False)
    assert ax.get_title() == "1 · L^R"
    no_column = a.copy()
    no_column.obs = no_column.obs.drop(columns="fov")
    for b, library_key in ((a, None), (no_column, "auto")):
        with pytest.warns(UserWarning, match="The data have no image"):
            (ax,) = scst.pl.ligand_receptor_spatial(b, "L^R", library_key=library_key, show=False)
        assert ax.get_title() == "L^R" and len(ax.collections[0].get_facecolors()) == 2 * n
    with pytest.raises(KeyError, match="library_key: adata.obs has no 'slide' column"):
        scst.pl.ligand_receptor_spatial(a, "L^R", library_key="slide", show=False)
    with pytest.raises(ValueError, match="sections: picking sections needs their obs column"):
        scst.pl.ligand_receptor_spatial(a, "L^R", sections="0", library_key=None, show=False)


def test_local_score_in_one_panel_of_fields_over_the_same_coordinates():
    """Two fields of view over the same coordinates drawn in one panel (library_key=None): their circles take half
    the grid step between distinct positions, as one field alone (the stacked spots gave a zero radius, which
    spatialdata refused: "Radii of circles must be positive")."""
    import pandas as pd
    from anndata import AnnData

    from scst.pl._spatial import _Section

    n = 12
    obs = pd.DataFrame({"fov": [0] * n + [1] * n}, index=[f"c{i}" for i in range(2 * n)])
    a = AnnData(np.zeros((2 * n, 1), np.float32), obs=obs)
    a.obsm["spatial"] = np.tile(np.column_stack([np.arange(n) % 4 * 10.0, np.arange(n) // 4 * 10.0]), (2, 1))
    a.obsm["scst_ligrec_local"] = pd.DataFrame({"L^R": np.linspace(0.0, 1.0, 2 * n)}, index=a.obs_names)
    with pytest.warns(UserWarning, match="The data have no image"):
        (ax,) = scst.pl.ligand_receptor_spatial(a, "L^R", library_key=None, show=False)
    assert len(ax.collections[0].get_facecolors()) == 2 * n
    with pytest.warns(UserWarning, match="no image"):
        radii = [_Section(a, a, s, key).shapes["radius"].iloc[0] for s, key in ((None, None), ("0", "fov"))]
    assert radii == [5.0, 5.0]


def test_dotplot_nan_scores_are_drawn_in_the_bad_colour():
    """A method whose shown pairs all have NaN scores was drawn in the mid colour, as if every score were equal (and
    warned "All-NaN slice"); NaN scores take the colour map's bad colour (blank by default), the others min–max."""
    import pandas as pd
    from anndata import AnnData

    df = pd.DataFrame(
        {
            "ligand_complex": ["L0", "L1", "L2"],
            "receptor_complex": ["R0", "R1", "R2"],
            "m1_score": [3.0, 2.0, 1.0],
            "m2_score": [np.nan, np.nan, np.nan],
            "m3_score": [5.0, np.nan, 5.0],
        }
    )
    a = AnnData(np.zeros((2, 1), np.float32))
    a.uns["scst_ligrec"] = df
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        ax = scst.pl.ligand_receptor(a, show=False)
    m1, m2, m3 = ax.collections[:3]
    cm = plt.get_cmap("viridis")
    np.testing.assert_allclose(m1.get_facecolors(), cm([1.0, 0.5, 0.0]))
    np.testing.assert_allclose(m2.get_facecolors(), cm([np.nan] * 3))
    np.testing.assert_allclose(m3.get_facecolors(), cm([0.5, np.nan, 0.5]))  # one value: the mid colour


def test_tables_of_the_wrong_type_and_n_top():
    import pandas as pd
    from anndata import AnnData

    a = AnnData(np.zeros((2, 1), np.float32), obs=pd.DataFrame({"section": ["A", "A"]}, index=["c0", "c1"]))
    a.uns["scst_ligrec"] = {"ligand_complex": ["L"], "receptor_complex": ["R"], "m_score": [1.0]}
    with pytest.raises(TypeError, match=r"key: uns\['scst_ligrec'\] must be a DataFrame \(LIANA-style.*got dict"):
        scst.pl.ligand_receptor(a, show=False)
    a.uns["scst_ligrec"] = pd.DataFrame(a.uns["scst_ligrec"])
    for bad in (0, "5"):  # a string was a bare TypeError from the comparison
        with pytest.raises(ValueError, match=f"n_top: expected a positive integer, got {bad!r}"):
            scst.pl.ligand_receptor(a, n_top=bad, show=False)
    a.obsm["scst_ligrec_local"] = np.zeros((2, 1))
    with pytest.raises(TypeError, match=r"key: obsm\['scst_ligrec_local'\] must be a spots × pairs DataFrame, got nd"):
        scst.pl.ligand_receptor_spatial(a, "L^R", show=False)
