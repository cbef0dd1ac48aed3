"""scst.tl.predict_shards / merge_shards: dask fan-out over shards equals serial predict_expression per section."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from scst.models._baselines import RidgeExpression
from scst.tl._embed import embed_patches
from scst.tl._predict import predict_expression
from scst.tl._shards import SHARD_TABLE, ShardError, merge_shards, predict_shards

_spec = importlib.util.spec_from_file_location(
    "_he_synthetic", Path(__file__).parents[1] / "models" / "_he_synthetic.py"
)
syn = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(syn)

PANEL = ["UP", "DOWN", "NOISE0", "HOUSE"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """Ridge on hand-crafted patch features of S1, S2: the workers recompute the features of each shard."""
    sd = syn.make_sdata(sections=("S1", "S2"))
    embed_patches(sd, "handcrafted", size_um=syn.SIZE_UM, out_px=32, progress=False)
    RidgeExpression.setup_sdata(sd, embedding_key="X_handcrafted", genes=PANEL, sections=["S1", "S2"])
    d = tmp_path_factory.mktemp("model") / "ridge"
    RidgeExpression(sd).train().save(d)
    return d


@pytest.fixture(scope="module")
def shard_sources(tmp_path_factory):
    """Three shards: two single-section zarr stores with spots (S3, S4) and a bare H&E PNG (S5, pseudo-spots)."""
    from PIL import Image

    root = tmp_path_factory.mktemp("shards")
    out = {}
    for s, seed in (("S3", 3), ("S4", 4)):
        syn.make_sdata(sections=(s,), seed=seed).write(root / f"{s}.zarr")
        out[s] = root / f"{s}.zarr"
    img = np.asarray(syn.make_sdata(sections=("S5",), seed=5).images["S5_image"].values).transpose(1, 2, 0)
    Image.fromarray(img).save(root / "S5.png")
    out["S5"] = root / "S5.png"
    return out


def _serial(source, model_dir):
    """The reference: predict_expression on the shard alone, in this process."""
    import spatialdata as sd

    import scst

    model = RidgeExpression.load(model_dir)
    if source.suffix == ".png":
        from spatialdata import SpatialData

        sdata = SpatialData(images={"S5_image": scst.io.cached_image(source, "S5")})
        return predict_expression(sdata, model, um_per_px=syn.UM_PER_PX, copy=True, progress=False)
    return predict_expression(sd.read_zarr(source), model, table_added="p", copy=True, progress=False)


def test_fan_out_equals_serial(dask_client, model_dir, shard_sources, tmp_path):
    import spatialdata as sd

    out = tmp_path / "merged.zarr"
    report = predict_shards(list(shard_sources.values()), model_dir, out, client=dask_client, um_per_px=syn.UM_PER_PX)
    assert list(report["shard"]) == ["S3", "S4", "S5"] and report["worker"].nunique() >= 1
    merged = sd.read_zarr(out)
    tab = merged.tables[SHARD_TABLE]
    assert list(tab.var_names) == PANEL and tab.X.dtype == np.float32
    assert list(tab.obs["section"].cat.categories) == ["S3", "S4", "S5"]
    assert set(merged.shapes) == {"S3_spots", "S4_spots", "S5_grid"} and not merged.images
    for s, source in shard_sources.items():
        want = _serial(source, model_dir)
        rows = (tab.obs["section"] == s).to_numpy()
        assert rows.sum() == want.n_obs >= 9  # 64 spots; 9 pseudo-spots 200 µm apart on the PNG
        # exact: the same code on the same pixels, only in another process
        np.testing.assert_array_equal(np.asarray(tab.X[rows]), np.asarray(want.layers["predicted"]))
        np.testing.assert_array_equal(tab.obs_names[rows], want.obs_names)
        np.testing.assert_array_equal(tab.obsm["spatial"][rows], want.obsm["spatial"])
        assert (tab.obs.loc[rows, "shard"] == s).all()
    assert report.set_index("shard")["n_spots"].to_dict() == tab.obs["shard"].value_counts().to_dict()
    # the planted signal survives the trip: UP rises with the hidden z on the spot shards
    z = tab.obs["z"].to_numpy(dtype=float)
    spots = np.isfinite(z)
    assert syn.pearson(np.asarray(tab.X[spots, 0]), z[spots]) > 0.8
    assert json.loads(tab.uns["scst_shards"]["json"])[0]["shard"] == "S3"
    # the merged store is itself a shard store: merging it again with nothing else gives the same table
    again = merge_shards([out], tmp_path / "again.zarr")
    assert list(again["shard"]) == ["S3", "S4", "S5"]
    np.testing.assert_array_equal(sd.read_zarr(tmp_path / "again.zarr").tables[SHARD_TABLE].X, tab.X)


def test_failed_shard_is_named_and_nothing_is_written(dask_client, model_dir, shard_sources, tmp_path):
    import spatialdata as sd

    # a store whose table lacks geometry for its section and has no image: predict_expression fails there
    bad = syn.make_sdata(sections=("S9",), seed=9)
    del bad.images["S9_image"]
    bad.write(tmp_path / "broken.zarr")
    out = tmp_path / "merged.zarr"
    srcs = {"good": shard_sources["S3"], "broken": tmp_path / "broken.zarr"}
    with pytest.raises(ShardError, match=r"1 of 2 shards failed.*\n  shard 'broken' \(.*broken\.zarr\): ") as e:
        predict_shards(srcs, model_dir, out, client=dask_client)
    assert list(e.value.failures) == ["broken"]
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["broken.zarr"]  # no scratch shards left behind
    # an existing output is left as it was when a later run fails
    predict_shards({"good": shard_sources["S3"]}, model_dir, out, client=dask_client)
    before = np.asarray(sd.read_zarr(out).tables[SHARD_TABLE].X).copy()
    with pytest.raises(ShardError, match="'broken'"):
        predict_shards(srcs, model_dir, out, client=dask_client, overwrite=True)
    np.testing.assert_array_equal(np.asarray(sd.read_zarr(out).tables[SHARD_TABLE].X), before)
    # with overwrite=True a run that succeeds replaces it
    predict_shards({"other": shard_sources["S4"]}, model_dir, out, client=dask_client, overwrite=True)
    assert set(sd.read_zarr(out).tables[SHARD_TABLE].obs["section"]) == {"S4"}
    # the output may not be one of the sources (replacing it would delete the images being read)
    with pytest.raises(ValueError, match="out: .* is also an input"):
        predict_shards({"self": out}, model_dir, out, client=dask_client, overwrite=True)


def test_relative_paths_are_those_of_the_caller(dask_client, model_dir, shard_sources, tmp_path, monkeypatch):
    """Relative shard sources and out name the caller's files, also for workers started in another folder (the
    session's cluster runs in the test root, as a dask-jobqueue scheduler would elsewhere): the same result as
    absolute paths, not a FileNotFoundError (or another file of that name) in every worker."""
    import spatialdata as sd

    ref = tmp_path / "abs.zarr"
    predict_shards([shard_sources["S3"], shard_sources["S4"]], model_dir, ref, client=dask_client)
    monkeypatch.chdir(shard_sources["S3"].parent)
    rel = Path("sub") / "rel.zarr"
    report = predict_shards(["S3.zarr", "S4.zarr"], model_dir, rel, client=dask_client)
    assert list(report["source"]) == [str(shard_sources[s].resolve()) for s in ("S3", "S4")]
    a, b = sd.read_zarr(ref).tables[SHARD_TABLE], sd.read_zarr(rel.resolve()).tables[SHARD_TABLE]
    np.testing.assert_array_equal(np.asarray(b.X), np.asarray(a.X))
    np.testing.assert_array_equal(b.obs_names, a.obs_names)
    assert sorted(p.name for p in Path("sub").iterdir()) == ["rel.zarr"]  # no scratch shards left behind


def test_bad_input_names_the_argument(model_dir, shard_sources, tmp_path):
    with pytest.raises(ValueError, match=r"shards: shard 'nope' .* neither an existing SpatialData zarr"):
        predict_shards([tmp_path / "nope.zarr"], model_dir, tmp_path / "o.zarr")
    with pytest.raises(ValueError, match=r"shards: shard 'C9' \('her2st:C9'\) names no her2st section"):
        predict_shards(["her2st:C9"], model_dir, tmp_path / "o.zarr")
    with pytest.raises(ValueError, match=r"shards: shard names \['S3'\] occur more than once"):
        predict_shards([shard_sources["S3"], shard_sources["S3"]], model_dir, tmp_path / "o.zarr")
    with pytest.raises(FileNotFoundError, match="model_dir: .* has no attr.json"):
        predict_shards([shard_sources["S3"]], tmp_path, tmp_path / "o.zarr")
    with pytest.raises(ValueError, match="out: expected a path ending in .zarr"):
        predict_shards([shard_sources["S3"]], model_dir, tmp_path / "o.h5ad")
    for bad in (0, True, 1.0):
        with pytest.raises(ValueError, match=f"n_workers: expected a positive integer, got {bad}"):
            predict_shards([shard_sources["S3"]], model_dir, tmp_path / "o.zarr", n_workers=bad)
    with pytest.raises(TypeError, match="client: expected a dask.distributed.Client"):
        predict_shards([shard_sources["S3"]], model_dir, tmp_path / "o.zarr", client="localhost:8786")
    with pytest.raises(ValueError, match=r"um_per_px: \['S7'\] are not shard names"):
        predict_shards([shard_sources["S3"]], model_dir, tmp_path / "o.zarr", um_per_px={"S7": 1.0})
    with pytest.raises(ValueError, match=r"precision: expected one of"):
        predict_shards([shard_sources["S3"]], model_dir, tmp_path / "o.zarr", precision="fp8")
    # checked before the cluster (and the client) is used, not in every worker (or not at all: ridge has no batches)
    with pytest.raises(ValueError, match="batch_size: expected a positive integer, got 0"):
        predict_shards([shard_sources["S3"]], model_dir, tmp_path / "o.zarr", batch_size=0, client=object())
    # the pixel size and the grid settings too (a shard with spots would ignore them, an image shard fail in a worker)
    src = [shard_sources["S3"], shard_sources["S5"]]
    for kw, msg in [
        ({"um_per_px": -1.0}, r"um_per_px: expected a finite positive pixel size in µm, got -1.0"),
        ({"um_per_px": float("nan")}, r"um_per_px: expected a finite positive pixel size in µm, got nan"),
        ({"um_per_px": {"S5": 0}}, r"um_per_px: expected a finite positive pixel size in µm, got 0 for shard 'S5'"),
        ({"spacing_um": 0.0}, r"spacing_um: expected a finite positive pseudo-spot spacing in µm, got 0.0"),
        ({"min_tissue": 1.5}, r"min_tissue: expected a fraction in \[0, 1\], got 1.5"),
        ({"min_tissue": float("nan")}, r"min_tissue: expected a fraction in \[0, 1\], got nan"),
    ]:
        with pytest.raises(ValueError, match=msg):
            predict_shards(src, model_dir, tmp_path / "o.zarr", client=object(), **kw)
    assert not (tmp_path / "o.zarr").exists()


def test_default_local_cluster_and_duplicate_sections(dask_client, model_dir, shard_sources, tmp_path):
    """client=None starts (and closes) its own LocalCluster; two shards holding one section are refused."""
    out = tmp_path / "one.zarr"
    report = predict_shards({"a": shard_sources["S3"]}, model_dir, out, n_workers=1)
    assert report["n_spots"].tolist() == [64] and out.is_dir()
    with pytest.raises(ValueError, match=r"section 'S3' is in both shard 'a' and shard 'b'"):
        predict_shards({"a": shard_sources["S3"], "b": shard_sources["S3"]}, model_dir, tmp_path / "two.zarr",
                       client=dask_client)  # fmt: skip
    assert not (tmp_path / "two.zarr").exists()
    with pytest.raises(ValueError, match=r"section 'S3' is in both"):
        merge_shards([out, out], tmp_path / "two.zarr")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one.zarr"]


def test_a_local_cluster_that_fails_to_start_leaves_nothing_behind(model_dir, shard_sources, tmp_path, monkeypatch):
    """client=None and the LocalCluster cannot start (here: no free port): its error comes through, and neither
    ``out`` nor the scratch folder of the shards is left."""
    import distributed

    def no_cluster(*args, **kwargs):
        raise OSError("no free port for the scheduler")

    monkeypatch.setattr(distributed, "LocalCluster", no_cluster)
    (tmp_path / "dest").mkdir()
    with pytest.raises(OSError, match="no free port for the scheduler"):
        predict_shards({"a": shard_sources["S3"]}, model_dir, tmp_path / "dest" / "o.zarr", n_workers=1)
    assert list((tmp_path / "dest").iterdir()) == []


def test_her2st_sections_as_shards_equal_serial(dask_client, tmp_path):
    """Real data: ridge on hand-crafted features of C2 (one penalty: no inner CV); C5 and C6 as two shards."""
    import spatialdata as sd

    import scst

    train = scst.datasets.her2st(sections=["C2"])
    scst.pp.select_genes(train.tables["table"], n_top=50)
    embed_patches(train, "handcrafted", progress=False)
    RidgeExpression.setup_sdata(train, embedding_key="X_handcrafted")
    model = RidgeExpression(train, alphas=[100.0]).train()
    model.save(tmp_path / "ridge")
    out = tmp_path / "c5c6.zarr"
    report = predict_shards(["her2st:C5", "her2st:C6"], tmp_path / "ridge", out, client=dask_client)
    assert list(report["sections"]) == [["C5"], ["C6"]]
    tab = sd.read_zarr(out).tables[SHARD_TABLE]
    assert (
        list(tab.var_names) == list(model.var_names)
        and 10 <= tab.n_vars <= 50
        and set(sd.read_zarr(out).shapes) == {"C5_spots", "C6_spots"}
    )
    serial = predict_expression(
        scst.datasets.her2st(sections=["C5", "C6"]), RidgeExpression.load(tmp_path / "ridge"), table_added="p",
        copy=True, progress=False,
    )  # fmt: skip
    assert serial.n_obs == tab.n_obs == report["n_spots"].sum()
    np.testing.assert_array_equal(tab.obs_names, serial.obs_names)
    np.testing.assert_array_equal(np.asarray(tab.X), np.asarray(serial.layers["predicted"]))
    pd.testing.assert_series_equal(
        tab.obs["label"].astype(str), serial.obs["label"].astype(str), check_names=False, check_categorical=False
    )


def test_merge_names_a_store_without_section_column(tmp_path):
    """A foreign 'predicted' table lacking obs['section'] is refused with a message naming `paths`, not a KeyError."""
    sdata = syn.make_sdata(sections=("S7",), grid=3)
    tab = sdata.tables["table"]
    del sdata.tables["table"]
    del tab.obs["section"]
    sdata.tables[SHARD_TABLE] = tab
    sdata.write(tmp_path / "foreign.zarr")
    with pytest.raises(
        ValueError, match=r"paths: table 'predicted' of .*foreign\.zarr' has no obs column\(s\) \['section'\]"
    ):
        merge_shards([tmp_path / "foreign.zarr"], tmp_path / "o.zarr")
    assert not (tmp_path / "o.zarr").exists()


def test_shard_names_and_sources(shard_sources, tmp_path):
    from scst.tl._shards import _normalize_shards, _shard_name

    s3 = shard_sources["S3"]
    assert _shard_name("her2st:C5") == "C5" and _shard_name("/data/slide_7.ome.tif") == "slide_7"
    assert _normalize_shards(s3) == {"S3": str(s3)}  # one path, not a sequence of characters
    assert _normalize_shards(str(s3)) == {"S3": str(s3)}
    assert _normalize_shards({"x": s3, "her2st": "her2st:C5"}) == {"x": str(s3), "her2st": "her2st:C5"}
    (tmp_path / "UPPER.PNG").write_bytes(b"")  # suffixes in any case
    assert _normalize_shards([tmp_path / "UPPER.PNG"]) == {"UPPER": str(tmp_path / "UPPER.PNG")}
    # Image shards are sections named after the file: a name SpatialData accepts for the image element (read_wsi
    # and the image cache refused 'patient 1_image' inside the worker)
    assert _shard_name("/data/patient 1.png") == "patient_1" and _shard_name("/d/2024 slide#3.svs") == "2024_slide_3"
    # a name given in a mapping is refused here, not by SpatialData in every worker (other sources take any name)
    with pytest.raises(ValueError, match=r"shards: shard 'patient 1' is an H&E image .* e\.g\. 'patient_1'"):
        _normalize_shards({"patient 1": tmp_path / "UPPER.PNG"})
    assert _normalize_shards({"p-1.a": tmp_path / "UPPER.PNG", "a b": s3}) == {
        "p-1.a": str(tmp_path / "UPPER.PNG"), "a b": str(s3)}  # fmt: skip
    (tmp_path / "notes.txt").write_text("")
    with pytest.raises(ValueError, match="neither an existing SpatialData zarr store"):
        _normalize_shards([tmp_path / "notes.txt"])
    with pytest.raises(ValueError, match="expected at least one shard"):
        _normalize_shards([])
    with pytest.raises(TypeError, match="shards: expected a list"):
        _normalize_shards(3)


def test_model_dir_checks(tmp_path):
    from scst.tl._shards import _model_class

    (tmp_path / "attr.json").write_text('{"model": "NoSuchModel"}')
    with pytest.raises(ValueError, match="unknown model class 'NoSuchModel'"):
        _model_class(tmp_path)
    (tmp_path / "attr.json").write_text("{not json")
    with pytest.raises(ValueError, match="is not valid JSON"):
        _model_class(tmp_path)


def test_settings_reach_the_shard_job(model_dir, shard_sources, tmp_path, monkeypatch):
    """A recording stub in place of ShardPredictor: what each worker would be given (no cluster started)."""
    import scst.tl._shards as shards

    seen = {}

    class Stop(Exception):
        pass

    def recording(**kwargs):
        seen.update(kwargs)
        raise Stop

    monkeypatch.setattr(shards, "ShardPredictor", recording)
    monkeypatch.chdir(model_dir.parent)
    with pytest.raises(Stop):
        predict_shards([shard_sources["S3"], shard_sources["S5"]], model_dir.name, tmp_path / "o.zarr",
                       table="tab", batch_size=5, tile_grid=True, spacing_um=150.0, min_tissue=0.25,
                       um_per_px={"S5": 0.5}, accelerator="gpu", precision="bf16")  # fmt: skip
    assert seen["model_dir"] == str(model_dir.resolve())  # absolute: workers may start elsewhere
    assert seen["predict_kwargs"] == {"table": "tab", "batch_size": 5, "tile_grid": True, "spacing_um": 150.0,
                                      "min_tissue": 0.25, "precision": "bf16"}  # fmt: skip
    assert seen["um_per_px"] == {"S5": 0.5} and type(seen["um_per_px"]) is dict and seen["accelerator"] == "gpu"
    assert list(tmp_path.iterdir()) == []


@pytest.fixture(scope="module")
def shard_stores(model_dir, shard_sources, tmp_path_factory):
    """Shard stores of S3 and S4 written in this process by the job the workers run, with its reports."""
    from scst.tl._shards import ShardPredictor

    root = tmp_path_factory.mktemp("stores")
    job = ShardPredictor(model_dir=str(model_dir))
    reports = {s: job(s, str(shard_sources[s]), str(root / f"{s}.zarr")) for s in ("S3", "S4")}
    return {s: root / f"{s}.zarr" for s in reports}, reports


def test_shard_job_writes_the_prediction_and_its_report(model_dir, shard_sources, shard_stores, monkeypatch):
    import spatialdata as sd

    from scst.tl._shards import ShardPredictor

    stores, reports = shard_stores
    part = sd.read_zarr(stores["S3"])
    tab = part.tables[SHARD_TABLE]
    want = _serial(shard_sources["S3"], model_dir)
    np.testing.assert_array_equal(np.asarray(tab.X), np.asarray(want.layers["predicted"]))
    assert list(tab.var_names) == PANEL and (tab.obs["shard"] == "S3").all() and set(part.shapes) == {"S3_spots"}
    assert tab.X.dtype == np.float32
    assert list(tab.uns["scst"]["sections"]) == ["S3"]  # the geometry travels with the shard
    r = reports["S3"]
    assert r["shard"] == "S3" and r["sections"] == ["S3"] and r["n_spots"] == 64 and r["model"] == "RidgeExpression"
    assert json.loads(tab.uns["scst_shards"]["json"]) == [r]

    # a model whose load takes an accelerator gets the job's; the pixel size of an image shard is looked up by name
    want5 = _serial(shard_sources["S5"], model_dir).layers["predicted"]
    loads = []
    orig = RidgeExpression.load.__func__

    def load(cls, dir_path, data=None, accelerator="cpu"):
        loads.append(accelerator)
        return orig(cls, dir_path, data)

    monkeypatch.setattr(RidgeExpression, "load", classmethod(load))
    job = ShardPredictor(model_dir=str(model_dir), um_per_px={"S5": syn.UM_PER_PX, "other": 99.0}, accelerator="mps")
    root = shard_stores[0]["S3"].parent
    r5 = job("S5", str(shard_sources["S5"]), str(root / "S5.zarr"))
    got = sd.read_zarr(root / "S5.zarr").tables[SHARD_TABLE]
    np.testing.assert_array_equal(np.asarray(got.X), np.asarray(want5))
    assert r5["n_spots"] == got.n_obs >= 9 and loads == ["mps"]
    with pytest.raises(ValueError, match="its pixel size in µm is needed"):
        job("S6", str(shard_sources["S5"]), str(root / "S6.zarr"))


def test_merge_keeps_the_given_order_reports_and_geometry(shard_stores, tmp_path):
    import spatialdata as sd

    stores, reports = shard_stores
    out = tmp_path / "m.zarr"
    report = merge_shards([stores["S4"], stores["S3"]], out)
    assert list(report["shard"]) == ["S4", "S3"] and report.to_dict("records") == [reports["S4"], reports["S3"]]
    merged = sd.read_zarr(out)
    tab = merged.tables[SHARD_TABLE]
    parts = [sd.read_zarr(stores[s]).tables[SHARD_TABLE] for s in ("S4", "S3")]
    np.testing.assert_array_equal(np.asarray(tab.X), np.vstack([np.asarray(p.X) for p in parts]))
    np.testing.assert_array_equal(tab.obs_names, np.concatenate([p.obs_names for p in parts]))
    assert list(tab.obs["section"].cat.categories) == ["S4", "S3"] and set(merged.shapes) == {"S3_spots", "S4_spots"}
    assert set(tab.uns["scst"]["sections"]) == {"S3", "S4"}
    assert json.loads(tab.uns["scst_shards"]["json"]) == [reports["S4"], reports["S3"]]
    # one path as such; an existing output only with overwrite
    assert list(merge_shards(str(stores["S3"]), tmp_path / "one.zarr")["shard"]) == ["S3"]
    with pytest.raises(FileExistsError, match="overwrite=True"):
        merge_shards([stores["S3"]], out)
    merge_shards([stores["S3"]], out, overwrite=True)
    assert set(sd.read_zarr(out).tables[SHARD_TABLE].obs["section"]) == {"S3"}
    with pytest.raises(ValueError, match="expected at least one shard store"):
        merge_shards([], tmp_path / "none.zarr")
    # a file named like the store: an error (it was swapped aside and left beside out as a hidden file)
    (tmp_path / "file.zarr").write_text("mine")
    with pytest.raises(ValueError, match="out: .* is a file; `overwrite=True` replaces only a .zarr folder"):
        merge_shards([stores["S3"]], tmp_path / "file.zarr", overwrite=True)
    assert (tmp_path / "file.zarr").read_text() == "mine" and not list(tmp_path.glob(".file.zarr*"))
    # a folder of other files named *.zarr, and an input store as the output: refused, nothing deleted
    (tmp_path / "notes.zarr").mkdir()
    (tmp_path / "notes.zarr" / "notes.txt").write_text("precious")
    with pytest.raises(ValueError, match="is a folder but no zarr store; `overwrite=True` replaces only a zarr store"):
        merge_shards([stores["S3"]], tmp_path / "notes.zarr", overwrite=True)
    assert (tmp_path / "notes.zarr" / "notes.txt").read_text() == "precious"
    with pytest.raises(ValueError, match="out: .* is also an input"):
        merge_shards([stores["S3"], out], out, overwrite=True)
    assert set(sd.read_zarr(out).tables[SHARD_TABLE].obs["section"]) == {"S3"}


def test_merge_refuses_a_region_name_in_two_stores(shard_stores, tmp_path):
    """Two stores whose spots of different sections share one region name (as readers with a fixed element name
    give): refused naming both stores, not one shapes element silently kept for the spots of both sections."""
    import spatialdata as sd
    from spatialdata.models import TableModel

    stores, _ = shard_stores
    for s in ("S3", "S4"):
        part = sd.read_zarr(stores[s])
        tab = part.tables[SHARD_TABLE]
        del part.tables[SHARD_TABLE]
        part.shapes["spots"] = part.shapes[f"{s}_spots"]
        del part.shapes[f"{s}_spots"]
        tab.obs["region"] = pd.Categorical(["spots"] * tab.n_obs)
        tab.obs["spot_id"] = [f"{s}_{i}" for i in tab.obs["spot_id"]]  # unique across stores
        del tab.uns["spatialdata_attrs"]
        part.tables[SHARD_TABLE] = TableModel.parse(tab, region="spots", region_key="region", instance_key="spot_id")
        part.write(tmp_path / f"{s}.zarr")
    with pytest.raises(ValueError, match=r"paths: region \(shapes element\) 'spots' is in both .*S3\.zarr' and .*S4"):
        merge_shards([tmp_path / "S3.zarr", tmp_path / "S4.zarr"], tmp_path / "o.zarr")
    assert not (tmp_path / "o.zarr").exists()


def test_merge_refuses_other_panels_and_renames_repeated_spots(shard_stores, tmp_path):
    import spatialdata as sd

    stores, _ = shard_stores
    part = sd.read_zarr(stores["S4"])
    tab = part.tables[SHARD_TABLE]
    del part.tables[SHARD_TABLE]
    part.tables[SHARD_TABLE] = tab[:, ::-1].copy()  # the same genes in another order: another model's panel
    part.write(tmp_path / "other_panel.zarr")
    with pytest.raises(ValueError, match="predicts another gene panel"):
        merge_shards([stores["S3"], tmp_path / "other_panel.zarr"], tmp_path / "o.zarr")
    assert not (tmp_path / "o.zarr").exists()

    part = sd.read_zarr(stores["S4"])
    tab = part.tables[SHARD_TABLE]
    del part.tables[SHARD_TABLE]
    tab.obs_names = sd.read_zarr(stores["S3"]).tables[SHARD_TABLE].obs_names  # S4's spots under S3's names
    part.tables[SHARD_TABLE] = tab
    part.write(tmp_path / "same_names.zarr")
    with pytest.warns(UserWarning, match="spot names repeat across shards"):
        merge_shards([stores["S3"], tmp_path / "same_names.zarr"], tmp_path / "o.zarr")
    names = sd.read_zarr(tmp_path / "o.zarr").tables[SHARD_TABLE].obs_names
    assert names.is_unique and len(names) == 128

    part = sd.read_zarr(stores["S4"])
    part.tables["table"] = part.tables[SHARD_TABLE]
    del part.tables[SHARD_TABLE]
    part.write(tmp_path / "no_prediction.zarr")
    with pytest.raises(ValueError, match="has no table 'predicted'"):
        merge_shards([tmp_path / "no_prediction.zarr"], tmp_path / "o2.zarr")


def test_read_shard_of_a_her2st_section_and_of_a_whole_slide_image(tmp_path):
    """A ``her2st:`` source is that dataset section (the pixel size passed through: its table has one); a WSI source
    is read lazily with the pixel size of its TIFF resolution tags when none is given, or the given one."""
    import tifffile

    from scst.tl._shards import _read_shard

    sdata, upp = _read_shard("C5", "her2st:C5", None)
    assert upp is None and set(sdata.tables["table"].obs["section"].astype(str)) == {"C5"}
    assert list(sdata.images) == ["C5_image"]
    img = np.zeros((64, 80, 3), np.uint8)
    img[:, 40:] = 200
    res = {"resolution": (1e4 / 0.25, 1e4 / 0.25), "resolutionunit": "CENTIMETER"}
    tifffile.imwrite(tmp_path / "slide 1.svs", img, tile=(16, 16), photometric="rgb", **res)
    sdata, upp = _read_shard("slide_1", str(tmp_path / "slide 1.svs"), None)
    assert upp == pytest.approx(0.25) and list(sdata.images) == ["slide_1_image"]
    np.testing.assert_array_equal(
        np.asarray(sdata.images["slide_1_image"]["scale0"]["image"].values), img.transpose(2, 0, 1)
    )
    assert _read_shard("slide_1", str(tmp_path / "slide 1.svs"), 0.5)[1] == 0.5


def test_merge_names_a_path_that_is_no_zarr_store(tmp_path):
    """A folder that is no SpatialData store (here: one text file): a ValueError naming `paths` and the folder."""
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "readme.txt").write_text("not a store")
    with pytest.raises(
        ValueError, match=re.escape(f"paths: cannot read {str(folder)!r} as a SpatialData zarr store (")
    ):
        merge_shards([folder], tmp_path / "o.zarr")
    assert not (tmp_path / "o.zarr").exists()
