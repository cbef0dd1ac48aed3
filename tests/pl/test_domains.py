"""pl.spatial_domains on her2st C2/C3: ARI in the titles (1 for the labels themselves), colours, baseline image."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import scst

_spec = importlib.util.spec_from_file_location("_plconf", Path(__file__).with_name("conftest.py"))
_conf = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_conf)


@pytest.fixture(scope="module")
def with_domains(her2st_two):
    """``dom_same``: the pathologists' labels renamed (ARI 1); ``dom_coarse``: cancer vs the rest."""
    t = her2st_two.tables["table"]
    lab = t.obs["label_name"].astype(str).where(t.obs["label_name"].notna())
    t.obs["dom_same"] = pd.Categorical(lab.map(lambda s: f"d_{s}" if isinstance(s, str) else s))
    t.obs["dom_coarse"] = pd.Categorical(
        lab.map(lambda s: ("tumour" if "cancer" in s else "other") if isinstance(s, str) else s)
    )
    yield her2st_two
    t.obs.drop(columns=["dom_same", "dom_coarse"], inplace=True)


def test_titles_carry_the_ari(with_domains):
    t = with_domains.tables["table"]
    axes = scst.pl.spatial_domains(with_domains, ["dom_same", "dom_coarse"], truth="label_name", show=False)
    assert len(axes) == 6
    assert [a.get_title() for a in axes[:3]] == [
        "C2 · label_name",
        "C2 · dom_same · ARI 1.00",
        f"C2 · dom_coarse · ARI {_ari(t, 'C2'):.2f}",
    ]
    assert 0 < _ari(t, "C2") < 1 and axes[5].get_title() == f"C3 · dom_coarse · ARI {_ari(t, 'C3'):.2f}"
    # Spots coloured by their category with the legend's colours.
    ax, sec = axes[2], "C2"
    leg = ax.get_legend()
    colours = {tx.get_text(): np.ravel(h.get_facecolor())[:3] for tx, h in zip(leg.texts, leg.legend_handles)}
    m = (t.obs["section"] == sec).to_numpy()
    spot_cat = dict(zip(t.obs["spot_id"][m].astype(str), t.obs["dom_coarse"][m].astype(str)))
    fc = ax.collections[0].get_facecolors()
    ids = with_domains.shapes[f"{sec}_spots"].index.astype(str)
    for i, c in zip(ids, fc):
        if spot_cat[i] in colours:
            np.testing.assert_allclose(c[:3], colours[spot_cat[i]], atol=1e-6)


def _ari(t, sec):
    return scst.tl.domain_ari(t[(t.obs["section"] == sec).to_numpy()], "dom_coarse", "label_name").loc[sec, "ari"]


def test_image_matches_baseline(with_domains, tmp_path):
    fig = scst.pl.spatial_domains(with_domains, "dom_coarse", truth="label_name", sections="C2", return_fig=True)
    _conf.compare_to_baseline(fig, "spatial_domains", tmp_path, tol=3)


def test_bad_input(with_domains):
    with pytest.raises(KeyError, match=r"keys: 'domian' not found in adata.obs.*close matches: \['domain'|dom"):
        scst.pl.spatial_domains(with_domains, "domian", truth="label_name", show=False)
    with pytest.raises(KeyError, match="truth: 'labels'"):
        scst.pl.spatial_domains(with_domains, "dom_same", truth="labels", show=False)
    axes = scst.pl.spatial_domains(with_domains, "dom_same", truth=None, sections="C3", show=False)
    assert [a.get_title() for a in axes] == ["C3 · dom_same"]
    for keys in (["dom_same", "dom_same"], ["label_name"]):  # duplicated columns: pandas' unclear error before
        with pytest.raises(ValueError, match="keys: each column once, and not the reference `truth` column"):
            scst.pl.spatial_domains(with_domains, keys, truth="label_name", show=False)


def _spots_only(n=24, **obs_cols):
    """An AnnData of one section laid on a grid (spots only, no image), with the given obs columns."""
    from anndata import AnnData

    obs = pd.DataFrame({"section": pd.Categorical(["A"] * n), **obs_cols}, index=[f"s{i}" for i in range(n)])
    a = AnnData(np.ones((n, 1), np.float32), obs=obs)
    a.obsm["spatial"] = np.column_stack([np.arange(n) % 6 * 10.0, np.arange(n) // 6 * 10.0])
    return a


def test_colours_come_from_uns_in_the_columns_category_order():
    """uns['<key>_colors'] follows the column's own category order (1, 2, 10), not the string order (1, 10, 2)."""
    rng = np.random.default_rng(0)
    a = _spots_only(
        domain=pd.Categorical(rng.choice([1, 2, 10], 24), categories=[1, 2, 10]),
        label=pd.Categorical(rng.choice(["x", "y"], 24)),
    )
    a.uns["domain_colors"] = ["#ff0000", "#00ff00", "#0000ff"]
    a.uns["label_colors"] = ["#000000", "#ffff00"]
    with pytest.warns(UserWarning, match="no image"):
        axes = scst.pl.spatial_domains(a, "domain", truth="label", show=False)
    for ax, want in zip(axes, ({"x": (0, 0, 0), "y": (1, 1, 0)}, {"1": (1, 0, 0), "2": (0, 1, 0), "10": (0, 0, 1)})):
        leg = ax.get_legend()
        got = {tx.get_text(): tuple(np.ravel(h.get_facecolor())[:3]) for tx, h in zip(leg.texts, leg.legend_handles)}
        assert got == want
    # each spot in its category's colour
    fc = axes[1].collections[0].get_facecolors()[:, :3]
    want = np.array([{1: (1, 0, 0), 2: (0, 1, 0), 10: (0, 0, 1)}[d] for d in a.obs["domain"]], float)
    np.testing.assert_allclose(fc, want, atol=1e-6)


def test_unused_section_category_is_not_a_section():
    """A category of obs['section'] without spots is skipped by default and is a clear error when asked for."""
    a = _spots_only(dom=pd.Categorical(["p", "q"] * 12))
    a.obs["section"] = pd.Categorical(["A"] * a.n_obs, categories=["A", "B"])
    with pytest.warns(UserWarning, match="no image"):
        axes = scst.pl.spatial_domains(a, "dom", truth=None, show=False)
    assert [ax.get_title() for ax in axes] == ["A · dom"]
    with pytest.raises(KeyError, match=r"sections: 'B' not found in adata.obs\['section'\]; available: \['A'\]"):
        scst.pl.spatial_domains(a, "dom", truth=None, sections="B", show=False)


def test_legend_lists_the_sections_own_categories_and_can_be_left_out():
    """Each panel's legend lists the categories present in that section (a missing value is no category of its
    own: spatialdata-plot's grey "NA" entry, not a "nan" category);
    ``legend=False`` draws none."""
    dom = ["p", "q"] * 5 + [None, "q"] + ["q", "r"] * 6
    a = _spots_only(dom=pd.Categorical(dom))
    a.obs["section"] = pd.Categorical(["A"] * 12 + ["B"] * 12)
    with pytest.warns(UserWarning, match="no image"):
        axes = scst.pl.spatial_domains(a, "dom", truth=None, show=False)
    assert [[t.get_text() for t in ax.get_legend().texts] for ax in axes] == [["p", "q", "NA"], ["q", "r"]]
    with pytest.warns(UserWarning, match="no image"):
        axes = scst.pl.spatial_domains(a, "dom", truth=None, legend=False, show=False)
    assert [ax.get_legend() for ax in axes] == [None, None]


def test_spots_keep_their_colours_whatever_the_table_row_order_or_category_names():
    """Metamorphic guard: spots drawn from the section's shapes (joined to the table by spot id) keep their colour
    when the table's rows come in another order, and renaming the categories changes only the legend's labels."""
    from anndata import AnnData
    from spatialdata import SpatialData
    from spatialdata.models import ShapesModel, TableModel
    from spatialdata.transformations import Identity

    n = 16
    xy = np.column_stack([np.arange(n) % 4 * 10.0 + 10, np.arange(n) // 4 * 10.0 + 10])
    rng = np.random.default_rng(0)
    obs = pd.DataFrame(
        {
            "section": pd.Categorical(["A"] * n),
            "spot_id": np.arange(n),
            "region": pd.Categorical(["A_spots"] * n),
            "dom": pd.Categorical(rng.choice(["x", "y", "z"], n)),
        },
        index=[f"s{i}" for i in range(n)],
    )
    t = AnnData(np.zeros((n, 1), np.float32), obs=obs)
    t.uns["scst"] = {"sections": {"A": {"shapes_key": "A_spots", "coordinate_system": "A"}}}
    shapes = ShapesModel.parse(
        xy, geometry=0, radius=np.full(n, 4.0), index=np.arange(n), transformations={"A": Identity()}
    )
    renamed = t.copy()
    renamed.obs["dom"] = renamed.obs["dom"].cat.rename_categories({"x": "c", "y": "a", "z": "b"})
    drawn = []
    for tab in (t, t[rng.permutation(n)].copy(), renamed):
        table = TableModel.parse(tab, region="A_spots", region_key="region", instance_key="spot_id")
        sd = SpatialData(shapes={"A_spots": shapes}, tables={"table": table})
        with pytest.warns(UserWarning, match="no image"):
            (ax,) = scst.pl.spatial_domains(sd, "dom", truth=None, show=False)
        (coll,) = [c for c in ax.collections if len(c.get_facecolors()) == n]
        centres = [tuple(p.vertices.mean(0).round(6)) for p in coll.get_paths()]
        drawn.append(
            (dict(zip(centres, map(tuple, coll.get_facecolors()))), [tx.get_text() for tx in ax.get_legend().texts])
        )
    assert len(drawn[0][0]) == n and len(set(drawn[0][0].values())) == 3
    assert drawn[1] == drawn[0]
    assert drawn[2][0] == drawn[0][0] and drawn[0][1] == ["x", "y", "z"] and drawn[2][1] == ["a", "b", "c"]


def test_keys_must_name_at_least_one_column():
    with pytest.raises(ValueError, match="keys: expected at least one obs column"):
        scst.pl.spatial_domains(_spots_only(domain=pd.Categorical(["x"] * 24)), [], truth=None, show=False)
