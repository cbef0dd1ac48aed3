"""Shared image-model plumbing (scst.models._image): windows, section/panel checks, registry, targets, prediction."""

from __future__ import annotations

import importlib.util
import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from scst._normalize import log_normalized
from scst.models._hggep import HGGEP
from scst.models._image import (
    _check_sections,
    _kd_cells,
    _random_windows,
    _resolve_panel,
    _section_geometries,
    _sections_of,
    _tiling_windows,
    _validation_sections,
    _WindowDataset,
)
from scst.models._tcgn import TCGN

_spec = importlib.util.spec_from_file_location("_he_synthetic", Path(__file__).with_name("_he_synthetic.py"))
syn = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(syn)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class _RecordingRng:
    """Stands in for a numpy Generator: records ``choice`` calls and returns the first centres."""

    def __init__(self):
        self.calls = []

    def choice(self, n, size, replace):
        self.calls.append((n, size, replace))
        return np.arange(size)


def test_random_windows_are_the_nearest_spots_of_distinct_centres():
    rng = np.random.default_rng(0)
    pos = rng.uniform(0, 100, (41, 2))
    rec = _RecordingRng()
    wins = _random_windows(pos, 10, rec)
    assert rec.calls == [(41, 5, False)]  # ceil(41 / 10) centres, drawn without replacement
    for c, w in zip(range(5), wins):
        nearest = np.argsort(np.linalg.norm(pos - pos[c], axis=1), kind="stable")[:10]
        assert np.array_equal(w, np.sort(nearest))
    assert [len(w) for w in _random_windows(pos[:10], 10, rec)] == [10]  # fits: one window of all spots
    assert len(rec.calls) == 1


def test_kd_cells_split_the_longest_axis_in_halves():
    # 16 spots on a horizontal line (tiny vertical jitter): cells are runs of neighbours along x
    rng = np.random.default_rng(1)
    x = rng.permutation(16).astype(float)
    pos = np.column_stack([x, rng.uniform(0, 0.1, 16)])
    cells = _kd_cells(np.arange(16), pos, 4)
    assert [sorted(x[c].tolist()) for c in cells] == [[float(v) for v in range(i, i + 4)] for i in (0, 4, 8, 12)]
    assert [len(c) for c in _kd_cells(np.arange(7), pos, 4)] == [3, 4]  # halves: 7 // 2 and the rest


def test_tiling_windows_known_answer():
    rng = np.random.default_rng(2)
    uniform = rng.uniform(0, 100, (97, 2))
    # sparse spots around a dense cluster: some cores reach beyond the 20 spots nearest to their centre
    rng = np.random.default_rng(0)
    clustered = np.concatenate([rng.uniform(0, 100, (30, 2)), rng.normal(50, 1, (30, 2))])
    for pos in (uniform, clustered):
        wins = _tiling_windows(pos, 20)
        assert np.array_equal(np.sort(np.concatenate([c for _, c in wins])), np.arange(len(pos)))
        for w, c in wins:
            assert len(c) <= 10  # cores: k-d cells of at most max_spots // 2 spots
            assert len(w) == 20 and len(np.unique(w)) == 20 and np.array_equal(w, np.sort(w))
            # the window = the core + the spots nearest to the core's centre, up to 20
            order = np.argsort(np.linalg.norm(pos - pos[c].mean(0), axis=1))
            extra = [i for i in order if i not in set(c.tolist())][: 20 - len(c)]
            assert set(w.tolist()) == set(c.tolist()) | set(extra)


def test_tiling_windows_on_a_lattice_do_not_depend_on_the_row_order():
    # spots of a regular grid tie on the k-d split axis and in distance to a core's centre: broken by position
    r, c = np.divmod(np.arange(64), 8)
    pos = np.column_stack([c * 100.0, r * 100.0])

    def windows(p):
        return sorted(
            (tuple(sorted(map(tuple, p[w]))), tuple(sorted(map(tuple, p[k])))) for w, k in _tiling_windows(p, 20)
        )

    rng = np.random.default_rng(0)
    for perm in (rng.permutation(64) for _ in range(5)):
        assert windows(pos[perm]) == windows(pos)
    # the same spots translated or scaled (ties then differ by round-off): the same windows of spot indices

    def members(p):
        return sorted((tuple(w.tolist()), tuple(sorted(k.tolist()))) for w, k in _tiling_windows(p, 20))

    for moved in (pos + 1000.3, pos * 1.1, pos * 0.37 - 12345.678):
        assert members(moved) == members(pos)


class _Windows(_WindowDataset):
    pass


def test_window_dataset_items_and_fresh_training_windows():
    import types

    rng = np.random.default_rng(3)
    secs = [types.SimpleNamespace(positions=rng.uniform(0, 100, (n, 2))) for n in (25, 10)]
    train = _Windows(secs, 8, train=True)
    assert len(train) == math.ceil(25 / 8) + math.ceil(10 / 8)  # 4 + 2 items per epoch
    torch.manual_seed(0)
    a = [train._window(0)[1] for _ in range(6)]
    assert all(len(w) == 8 for w in a)
    assert len({tuple(w) for w in a}) > 1  # a new random window at each access
    torch.manual_seed(0)
    assert all(np.array_equal(w, train._window(0)[1]) for w in a)  # drawn from torch's seeded generator
    test = _Windows(secs, 8, train=False)
    assert [(s, list(w)) for s, w in test.items] == [(0, list(w)) for w, _ in _tiling_windows(secs[0].positions, 8)] + [
        (1, list(w)) for w, _ in _tiling_windows(secs[1].positions, 8)
    ]


def test_sections_panels_and_geometries_are_checked():
    import anndata as ad
    import pandas as pd

    obs = pd.DataFrame({"section": pd.Categorical(["A", "B", "A"], categories=["C", "B", "A"])})
    adata = ad.AnnData(np.zeros((3, 3)), obs=obs, var=pd.DataFrame(index=["g0", "g1", "g2"]))
    assert _sections_of(adata) == ["B", "A"]  # category order, categories without spots left out
    assert _check_sections(adata, None) == ["B", "A"] and _check_sections(adata, "A") == ["A"]
    with pytest.raises(ValueError, match="have no spots"):
        _check_sections(adata, ["C"])
    with pytest.raises(ValueError, match="empty list"):
        _check_sections(adata, [])
    adata.var["hv"] = [True, False, True]
    adata.var["score"] = [1.0, 0.0, 1.0]
    adata.var["none"] = False
    assert _resolve_panel(adata, None) == (["g0", "g1", "g2"], None)
    assert _resolve_panel(adata, "hv") == (["g0", "g2"], "hv")
    assert _resolve_panel(adata, ["g2", "g0"]) == (["g2", "g0"], None)
    with pytest.raises(ValueError, match="must be boolean"):
        _resolve_panel(adata, "score")
    with pytest.raises(ValueError, match="selects no gene"):
        _resolve_panel(adata, "none")
    with pytest.raises(ValueError, match="duplicated"):
        _resolve_panel(adata, ["g0", "g0"])
    with pytest.raises(ValueError, match="empty gene list"):
        _resolve_panel(adata, [])
    # a boolean mask selects like evaluate_expression's (it became the names "True"/"False": a KeyError)
    assert _resolve_panel(adata, np.array([True, False, True])) == (["g0", "g2"], None)
    assert _resolve_panel(adata, adata.var["hv"]) == (["g0", "g2"], None)
    with pytest.raises(ValueError, match=r"genes: boolean mask of shape \(2,\), expected \(3,\)"):
        _resolve_panel(adata, [True, False])
    with pytest.raises(ValueError, match="genes: the boolean mask selects no gene"):
        _resolve_panel(adata, np.zeros(3, bool))
    sd = syn.make_sdata(sections=("S1",), grid=2)  # 120 x 120 px image at 2 µm/px
    tab = sd.tables["table"]
    assert _section_geometries(sd, tab, ["S1"], 240.0) == {"S1": 2.0}  # exactly the image: fits
    # 120.4 px: the patch reader cuts round(120.4) = 120 px, which fits (it was refused as larger than the image)
    assert _section_geometries(sd, tab, ["S1"], 240.8) == {"S1": 2.0}
    with pytest.raises(ValueError, match="larger than"):
        _section_geometries(sd, tab, ["S1"], 242.0)
    tab.uns["scst"]["sections"]["S1"]["um_per_px"] = 0.0
    with pytest.raises(ValueError, match="must be positive"):
        _section_geometries(sd, tab, ["S1"], 10.0)
    with pytest.raises(KeyError, match="no geometry"):
        _section_geometries(sd, tab, ["S9"], 10.0)


def test_setup_refuses_log_normalised_x():
    # log1p(normalize_total) values are >= 0: the old check (X.min() < 0) let them through as training targets
    import scanpy as sc

    sd = syn.make_sdata(sections=("S1", "S2"), grid=3)
    tab = sd.tables["table"]
    tab.layers["counts"] = tab.X.copy()
    sc.pp.normalize_total(tab, target_sum=1e4)
    sc.pp.log1p(tab)
    for cls in (HGGEP, TCGN):
        with pytest.raises(ValueError, match=rf"{cls.__name__}.setup_sdata: adata.X: expected raw counts"):
            cls.setup_sdata(sd, size_um=syn.SIZE_UM)
        cls.setup_sdata(sd, layer="counts", size_um=syn.SIZE_UM)
    tab.layers["neg"] = -tab.layers["counts"]
    with pytest.raises(ValueError, match=r"layers\['neg'\]: expected raw counts"):
        HGGEP.setup_sdata(sd, layer="neg", size_um=syn.SIZE_UM)


def test_validation_sections_draw_with_the_seed():
    secs = ["S1", "S2", "S3"]
    drawn = set()
    for seed in range(12):
        train, val = _validation_sections("M", secs, None, seed)
        assert val == [secs[int(np.random.default_rng(seed).integers(3))]] and train == [
            s for s in secs if s not in val
        ]
        drawn.add(val[0])
    assert len(drawn) > 1
    assert _validation_sections("M", secs, False, 0) == (secs, []) and _validation_sections("M", secs, 0, 0) == (
        secs,
        [],
    )
    assert _validation_sections("M", secs, ["S3", "S1"], 0) == (["S2"], ["S3", "S1"])
    with pytest.warns(UserWarning, match="one training section"):
        assert _validation_sections("M", ["S1"], True, 0) == (["S1"], [])
    with pytest.raises(ValueError, match="leaves no section"):
        _validation_sections("M", ["S1", "S2"], ["S1", "S2"], 0)
    with pytest.raises(ValueError, match="expected None or True"):
        _validation_sections("M", secs, [], 0)


def test_setup_registry_geometry():
    sd = syn.make_sdata(grid=3)
    tab = sd.tables["table"]
    for s, upp in zip(("S1", "S2", "S3"), (1.0, 2.0, 6.0)):
        tab.uns["scst"]["sections"][s]["um_per_px"] = upp
    tab.uns["scst"]["sections"]["S3"]["grid_step_um"] = 100.0
    tab.obs.loc[tab.obs_names[0], "array_row"] = 200  # grid extent 201 rows
    TCGN.setup_sdata(sd, size_um=16.0)
    reg = json.loads(tab.uns["_scst_setup"]["TCGN"])
    assert reg["um_per_px"] == {"S1": 1.0, "S2": 2.0, "S3": 6.0}
    assert reg["um_per_px_train"] == 2.0  # the median, not the mean (3.0)
    assert reg["max_coord"] == 201 and reg["grid_step_um"] is None  # steps differ between sections
    assert reg["patch_px"] is None and reg["sections"] == ["S1", "S2", "S3"]
    TCGN.setup_sdata(sd, size_um=16.0, sections=["S1", "S2"])
    reg = json.loads(tab.uns["_scst_setup"]["TCGN"])
    assert reg["grid_step_um"] == syn.STEP_PX * syn.UM_PER_PX and reg["um_per_px_train"] == 1.5
    assert reg["max_coord"] == 201  # the training sections' extent (S1 holds the far spot), at least 128
    sd2 = syn.make_sdata(sections=("S1",), grid=3)
    sd2.tables["table"].X = sd2.tables["table"].X * 0  # all-zero counts are valid raw counts
    TCGN.setup_sdata(sd2, size_um=16.0)
    assert json.loads(sd2.tables["table"].uns["_scst_setup"]["TCGN"])["sections"] == ["S1"]
    with pytest.raises(ValueError, match="patch_px"):
        TCGN.setup_sdata(sd2, size_um=16.0, patch_px=4)
    with pytest.raises(ValueError, match="size_um"):
        TCGN.setup_sdata(sd2, size_um=0.0)


def test_targets_standardised_with_training_spots_only():
    sd = syn.make_sdata(grid=4)
    tab = sd.tables["table"]
    X = tab.X.toarray()
    s2 = (tab.obs["section"] == "S2").to_numpy()
    X[s2, 0] *= 20  # the validation section's UP is far higher: its statistics must not enter
    X[:, -1] = 0  # HOUSE: no counts anywhere
    from scipy import sparse

    tab.X = sparse.csr_matrix(X)
    HGGEP.setup_sdata(sd, sections=["S1", "S2"], size_um=syn.SIZE_UM, patch_px=32)
    model = HGGEP(sd, **HGGEP.bench_config)
    train, val = model._training_sections("S2", seed=0)
    assert [s.name for s in train] == ["S1"] and [s.name for s in val] == ["S2"]
    s1 = (tab.obs["section"] == "S1").to_numpy()
    y1 = log_normalized(tab[s1], model.var_names)
    mean, sd_ = y1.mean(0), y1.std(0)
    sd_ = np.where(sd_ > 1e-8, sd_, 1.0)  # HOUSE has no counts: sd 0 -> 1
    np.testing.assert_allclose(model._target_std["mean"], mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(model._target_std["sd"], sd_, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        val[0].target, (log_normalized(tab[s2], model.var_names) - mean) / sd_, rtol=1e-4, atol=1e-5
    )
    np.testing.assert_allclose(model._unstandardize(val[0].target), log_normalized(tab[s2], model.var_names), atol=1e-4)
    lib = X.sum(1)
    np.testing.assert_allclose(val[0].size_factors, lib[s2] / np.median(lib[s1]), rtol=1e-5)


def test_predict_is_the_eval_network_clipped_at_zero_and_restores_the_mode(monkeypatch):
    from scst.models._image import clear_patch_cache
    from scst.nn import patches_to_input
    from scst.pp._patches import SpotPatchDataset

    clear_patch_cache()  # streamed prediction, in the dataset's reading order (reversed here): rows still match
    monkeypatch.setattr(SpotPatchDataset, "locality_order", lambda ds: np.arange(len(ds))[::-1].copy())

    sd = syn.make_sdata(sections=("S1", "S2"), grid=3)
    TCGN.setup_sdata(sd, size_um=syn.SIZE_UM, sections=["S1"])
    model = TCGN(sd, **{**TCGN.bench_config, "img_size": 64})
    with torch.no_grad():
        model.module.head[-1].bias[0] = -100.0  # gene 0 predicted below 0 everywhere: clipped
        model.module.head[-1].bias[1] = 100.0
    model._is_trained = True  # predict refuses untrained models; the initial weights are what is checked here
    model.module.train()
    pred = model.predict(sd, "S2", batch_size=4, progress=False)
    assert model.module.training  # the module's mode is restored
    rows = np.flatnonzero((sd.tables["table"].obs["section"] == "S2").to_numpy())
    ds = SpotPatchDataset(sd, "table", return_counts=False, size_um=syn.SIZE_UM, out_px=64, normalize=None)
    x = patches_to_input(np.stack([ds.patch_uint8(int(r)) for r in rows]))
    model.module.eval()
    with torch.no_grad():
        ref = model.module(x)["pred"].numpy()
    assert (ref[:, 0] < 0).all() and (pred[:, 0] == 0).all()
    np.testing.assert_allclose(pred, np.clip(ref, 0, None), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="batch_size"):
        model.predict(sd, "S2", batch_size=-1, progress=False)
    # sections at another resolution (either way) are predicted with a warning; within 5 % silently
    tab = sd.tables["table"]
    for factor, warns in ((1.04, False), (0.96, False), (1.06, True), (0.94, True)):
        tab.uns["scst"]["sections"]["S2"]["um_per_px"] = syn.UM_PER_PX * factor
        with warnings.catch_warnings(record=True) as rec:
            warnings.simplefilter("always")
            model._check_predict_sections(sd, tab, ["S2"])
        assert any("µm/px" in str(w.message) for w in rec) == warns, factor


def test_output_bias_and_standardisation_are_set_once_before_the_first_training():
    sd = syn.make_sdata(sections=("S1", "S2"), grid=3)
    HGGEP.setup_sdata(sd, size_um=syn.SIZE_UM, patch_px=32)
    model = HGGEP(sd, **HGGEP.bench_config)  # standardize_targets: True
    model._training_sections(False, seed=0)
    std = model._target_std
    bias = model.module.gene_head[-1].bias
    np.testing.assert_allclose(bias.detach().numpy(), 0.0, atol=1e-4)  # mean of the z-scored training targets
    with torch.no_grad():
        bias.fill_(3.0)
    model._is_trained = True  # a trained model trains on (fine-tuning): its bias and statistics stay
    model._training_sections("S2", seed=0)
    assert torch.equal(bias, torch.full_like(bias, 3.0)) and model._target_std is std


def test_spots_without_counts_are_left_out_of_training_with_a_warning():
    sd = syn.make_sdata(grid=4)
    tab = sd.tables["table"]
    X = tab.X.toarray()
    s1 = np.flatnonzero((tab.obs["section"] == "S1").to_numpy())
    X[s1[[2, 5]]] = 0  # two S1 spots without counts
    from scipy import sparse

    tab.X = sparse.csr_matrix(X)
    HGGEP.setup_sdata(sd, sections=["S1", "S2"], size_um=syn.SIZE_UM, patch_px=32)
    model = HGGEP(sd, **HGGEP.bench_config)
    with pytest.warns(UserWarning, match=rf"Section 'S1': 2 of {len(s1)} spot\(s\) have no counts"):
        train, _ = model._training_sections("S2", seed=0)
    np.testing.assert_array_equal(train[0].keep, np.setdiff1d(np.arange(len(s1)), [2, 5]))


@pytest.mark.parametrize("batch_size", [0, -4, 2.5, True])
def test_predict_refuses_a_batch_size_that_is_not_a_positive_integer(batch_size):
    """batch_size=0 (or a negative) fell back to the training batch size without a word."""
    sd = syn.make_sdata(sections=("S1", "S2"), grid=3)
    TCGN.setup_sdata(sd, size_um=syn.SIZE_UM, sections=["S1"])
    model = TCGN(sd, **{**TCGN.bench_config, "img_size": 64})
    model._is_trained = True  # predict refuses untrained models; only the argument check is tested here
    with pytest.raises(ValueError, match=r"batch_size: expected a positive integer, got"):
        model.predict(sd, "S2", batch_size=batch_size, progress=False)


def test_section_um_per_px_is_that_of_the_image_the_patches_come_from():
    """Review 2026-12-04: an image stored 4× coarser than its section's coordinates (a Scale transformation, as for
    a hires-only Visium image) is cut at 4× the µm/px; setup and the predict-time resolution warning read the
    coordinates' µm/px."""
    from spatialdata.models import Image2DModel
    from spatialdata.transformations import Scale

    sd = syn.make_sdata(sections=("S1", "S2"), grid=4)
    small = np.asarray(sd.images["S2_image"].data)[:, ::4, ::4].copy()
    sd.images["S2_image"] = Image2DModel.parse(
        small, dims=("c", "y", "x"), transformations={"S2": Scale([4.0, 4.0], axes=("y", "x"))}
    )
    TCGN.setup_sdata(sd, size_um=16.0, sections=["S1", "S2"])
    reg = json.loads(sd.tables["table"].uns["_scst_setup"]["TCGN"])
    assert reg["um_per_px"] == {"S1": syn.UM_PER_PX, "S2": 4 * syn.UM_PER_PX}
    with pytest.raises(ValueError, match="51 px is larger than the 50 × 50 px image of section 'S2'"):
        TCGN.setup_sdata(sd, size_um=4 * syn.UM_PER_PX * 51, sections=["S2"])  # 51 px of S1's image would fit


def test_predict_on_the_table_alone_reads_the_images_of_the_attached_spatialdata(tmp_path):
    """``predict(adata)``: the table's spots with the images of the model's SpatialData, the same prediction as
    ``predict(sdata)``; without attached images, or for another type, a clear error."""
    sd = syn.make_sdata(sections=("S1", "S2"), grid=3)
    TCGN.setup_sdata(sd, size_um=syn.SIZE_UM, sections=["S1"])
    model = TCGN(sd, **{**TCGN.bench_config, "img_size": 64})
    model._is_trained = True  # the initial weights are enough to compare the two paths
    tab = sd.tables["table"]
    want = model.predict(sd, "S2", progress=False)
    np.testing.assert_array_equal(model.predict(tab, "S2", progress=False), want)
    s2 = np.flatnonzero(tab.obs["section"] == "S2")
    rev = tab[s2[::-1][:5]].copy()  # the given table's spots, in its order: not the attached data's table
    np.testing.assert_array_equal(model.predict(rev, "S2", progress=False), want[::-1][:5])
    with pytest.raises(TypeError, match="data: expected SpatialData or AnnData, got ndarray"):
        model.predict(np.zeros((3, 3)), progress=False)
    model.save(tmp_path / "m")
    loaded = TCGN.load(tmp_path / "m")
    with pytest.raises(ValueError, match="data: this model has no data attached; pass a SpatialData"):
        loaded.predict(progress=False)
    with pytest.raises(ValueError, match=r"data: an AnnData has no images; pass the SpatialData holding them"):
        loaded.predict(tab, "S2", progress=False)
    empty = sd.tables["table"][:0].copy()
    with pytest.raises(ValueError, match="data: the table has no spots to predict"):
        model.predict(empty, progress=False)


def _spoil_setup(sd, what):
    tab = sd.tables["table"]
    if what == "obs":
        del tab.obs["array_row"]
    elif what == "obsm":
        del tab.obsm["spatial"]
    return sd


@pytest.mark.parametrize(
    ("what", "kwargs", "err", "match"),
    [
        ("table", {}, TypeError, "sdata: expected a SpatialData object, got AnnData"),
        (None, {"layer": "counts"}, KeyError, r"layer: 'counts' not in table.layers \(\[\]\)"),
        ("obs", {}, KeyError, "table.obs lacks 'array_row'; read the data with scst.io.read_st"),
        ("obsm", {}, KeyError, r"table.obsm lacks 'spatial' \(spot centres in pixels\)"),
    ],
)
def test_image_model_setup_names_what_the_data_lacks(what, kwargs, err, match):
    sd = _spoil_setup(syn.make_sdata(sections=("S1",), grid=2), what)
    data = sd.tables["table"] if what == "table" else sd
    with pytest.raises(err, match=match):
        TCGN.setup_sdata(data, size_um=syn.SIZE_UM, **kwargs)


def test_training_and_attached_data_checks_name_the_table():
    sd = syn.make_sdata(sections=("S1", "S2"), grid=2)
    TCGN.setup_sdata(sd, size_um=syn.SIZE_UM)
    model = TCGN(sd, **{**TCGN.bench_config, "img_size": 64})
    no_section = sd.tables["table"].copy()
    del no_section.obs["section"]
    with pytest.raises(KeyError, match="data: table.obs lacks 'section'"):
        model._validate_data(no_section)
    with pytest.raises(ValueError, match=r"Section 'S9' has no spots in table 'table'"):
        model._section_data(sd, "table", "S9", with_targets=False)
    model.adata = sd.tables["table"][:, 1:].copy()
    with pytest.raises(ValueError, match=rf"The training table lacks 1 panel genes: \['{model.var_names[0]}'\]"):
        model._train_table()
    model.data = model.adata
    with pytest.raises(TypeError, match="TCGN trains on a SpatialData \\(with images\\), got"):
        model._train_table()


def test_a_section_over_the_cache_budget_reads_its_patches_per_call():
    """cache_mb=0: nothing is cached, every get reads its spots from the image, the same pixels as the cached path."""
    from scst.models._image import _SectionPatches, clear_patch_cache

    clear_patch_cache()
    sd = syn.make_sdata(sections=("S1",), grid=3)
    rows = np.arange(sd.tables["table"].n_obs)
    lazy = _SectionPatches(sd, "table", rows, syn.SIZE_UM, 16, 0.0)
    cached = _SectionPatches(sd, "table", rows, syn.SIZE_UM, 16, 64.0)
    assert not lazy.cached and cached.cached
    idx = np.array([4, 0, 7])
    got = lazy.get(idx)
    assert got.shape == (3, 3, 16, 16) and got.dtype == np.uint8 and lazy._arr is None
    np.testing.assert_array_equal(got, cached.get(idx))
    np.testing.assert_array_equal(got[1], lazy.ds.patch_uint8(0))
    clear_patch_cache()


def test_setup_of_a_table_without_spots_and_a_network_without_a_linear_head():
    """A table of 0 spots (in a SpatialData-like object: spatialdata refuses an empty annotating table) is named at
    setup; a network whose ``_output_layer`` is None keeps its initial output bias (the documented skip)."""
    import types

    sd = syn.make_sdata(sections=("S1", "S2"), grid=3)
    empty = types.SimpleNamespace(tables={"table": sd.tables["table"][:0].copy()}, images=sd.images)
    with pytest.raises(ValueError, match="The table has no spots"):
        TCGN.setup_sdata(empty, size_um=syn.SIZE_UM)
    TCGN.setup_sdata(sd, size_um=syn.SIZE_UM)
    model = TCGN(sd, **{**TCGN.bench_config, "img_size": 64})
    before = model.module.head[-1].bias.detach().clone()
    model._output_layer = lambda: None
    model._training_sections(False, seed=0)
    assert torch.equal(model.module.head[-1].bias, before)
    del model._output_layer
    model._training_sections(False, seed=0)  # the default sets it: each gene's mean over the training spots
    truth = log_normalized(sd.tables["table"], model.var_names).mean(0)
    np.testing.assert_allclose(model.module.head[-1].bias.detach().numpy(), truth, rtol=1e-5)


def test_zarr_files_stamp_counts_local_chunk_files_and_skips_an_in_memory_store(tmp_path):
    """An image read from a local zarr folder is stamped with its files (count, bytes); one in a memory store has
    no folder to stat and adds nothing (dask's token names it)."""
    import dask.array as da
    import zarr

    from scst.models._image import _zarr_files_stamp

    in_memory = da.from_zarr(zarr.array(np.arange(12).reshape(3, 4), chunks=(2, 2)))
    assert _zarr_files_stamp(in_memory) == ()
    path = tmp_path / "a.zarr"
    zarr.save_array(str(path), np.arange(12).reshape(3, 4))
    ((folder, n, size, _),) = _zarr_files_stamp(da.from_zarr(str(path)))
    files = [p for p in path.rglob("*") if p.is_file()]
    assert folder.rstrip("/") == str(path) and n == len(files) and size == sum(p.stat().st_size for p in files)
