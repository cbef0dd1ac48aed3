"""``scst`` console script: --help, one-line errors with a non-zero exit, a real train → predict run on her2st."""

from __future__ import annotations

import os
import subprocess
import sys

import anndata as ad
import numpy as np
import pytest

from scst.cli import main


def _run(*args, cwd=None):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    return subprocess.run([sys.executable, "-m", "scst.cli", *args], capture_output=True, text=True, cwd=cwd, env=env)


@pytest.mark.parametrize("cmd", ["train", "predict", "ligrec"])
def test_help(cmd, capsys):
    with pytest.raises(SystemExit) as e:
        main([cmd, "--help"])
    assert e.value.code == 0 and "--out" in capsys.readouterr().out


def test_bad_input_is_one_line_and_non_zero(tmp_path):
    r = _run("predict", "--model-dir", str(tmp_path / "nope"), "--out", str(tmp_path / "p.h5ad"))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("scst:")]
    assert lines == [
        f"scst: error: --model-dir: {str(tmp_path / 'nope')!r} has no attr.json (not a model saved by `scst train`)."
    ]
    assert main(["train", "--model", "mean", "--data", str(tmp_path / "missing.zarr"), "--out", str(tmp_path)]) == 2
    assert main(["train", "--model", "mean", "--sections", "C9", "--out", str(tmp_path / "m")]) == 2


@pytest.mark.parametrize(
    ("err", "want"),
    [(ValueError("x: expected 'a', got 'b'"), "x: expected 'a', got 'b'"), (KeyError("no key 'k'"), "no key 'k'"),
     (FileExistsError("out: 'p.zarr' exists"), "out: 'p.zarr' exists")],
)  # fmt: skip
def test_error_messages_keep_their_closing_quotes(err, want, monkeypatch, capsys):
    import scst.cli

    def fail(args):
        raise err

    monkeypatch.setattr(scst.cli, "_merge", fail)
    assert main(["merge", "a.zarr", "--out", "b.zarr"]) == 2
    assert capsys.readouterr().err == f"scst: error: {want}\n"


def test_sections_all_loads_every_her2st_section_and_selects_nothing(tmp_path, monkeypatch, capsys):
    """``--sections all``: her2st is asked for its 36 sections ("all", which it accepts; the CLI passed ['all'] and
    her2st refused it while listing 'all' as valid) and no section is selected afterwards."""
    import _he_synthetic as syn
    import pandas as pd

    import scst

    asked = []

    def her2st(sections=None, **kwargs):
        asked.append(sections)
        return syn.make_sdata(sections=("S1", "S2"))

    def recording(adata, **kwargs):
        asked.append(sorted(set(adata.obs["section"].astype(str))))
        adata.uns["scst_ligrec"] = pd.DataFrame({"ligand_complex": [], "receptor_complex": []})

    monkeypatch.setattr(scst.datasets, "her2st", her2st)
    monkeypatch.setattr(scst.tl, "ligand_receptor", recording)
    assert main(["ligrec", "--sections", "all", "--out", str(tmp_path / "lr.csv")]) == 0
    assert asked == ["all", ["S1", "S2"]]
    assert main(["ligrec", "--sections", "S1", "--out", str(tmp_path / "lr2.csv")]) == 0
    assert asked[2:] == [["S1"], ["S1"]]
    # an unknown --pairs name is said before any data are read
    assert main(["ligrec", "--pairs", "nosuch", "--out", str(tmp_path / "lr3.csv")]) == 2
    assert "scst: error: --pairs: unknown ligand–receptor list 'nosuch'" in capsys.readouterr().err
    assert len(asked) == 4  # her2st never asked


def test_train_then_predict_mean_on_her2st(tmp_path, capsys):
    from scst._normalize import log_normalized

    m = str(tmp_path / "m")
    assert main(["train", "--model", "mean", "--sections", "C2", "C3", "--n-genes", "50", "--out", m]) == 0
    assert main(["predict", "--model-dir", m, "--sections", "C4", "--out", str(tmp_path / "p.h5ad")]) == 0
    pred = ad.read_h5ad(tmp_path / "p.h5ad")
    assert set(pred.obs["section"]) == {"C4"}
    # The mean model predicts the training spots' mean log1p(normalize_total) for every C4 spot.
    import scst

    train = scst.datasets.her2st(sections=["C2", "C3"], images=False).tables["table"]
    panel = np.flatnonzero(pred.var["predicted_mask"].to_numpy())
    genes = pred.var_names[panel]
    assert 20 <= len(genes) <= 50  # the 50-gene panel, less genes absent from C4 alone
    want = log_normalized(train, list(genes)).mean(0)
    np.testing.assert_allclose(
        pred.layers["predicted"][:, panel].toarray(), np.broadcast_to(want, (pred.n_obs, len(genes))), rtol=1e-5
    )
    assert main(["predict", "--model-dir", m, "--sections", "C4", "--out", str(tmp_path / "p.h5ad")]) == 2
    assert "exists; pass --overwrite" in capsys.readouterr().err
    with pytest.warns(UserWarning, match="precision='bf16'.*no effect"):  # the option reaches predict_expression
        assert main(["predict", "--model-dir", m, "--sections", "C4", "--precision", "bf16", "--out",
                     str(tmp_path / "q.h5ad")]) == 0  # fmt: skip


def test_ligrec_on_one_section(tmp_path):
    import pandas as pd

    assert main(["ligrec", "--sections", "C2", "--n-perms", "20", "--out", str(tmp_path / "lr.csv.gz")]) == 0
    df = pd.read_csv(tmp_path / "lr.csv.gz")
    assert {"ligand_complex", "receptor_complex", "spatial_pearson_score", "spatial_pearson_pvals"} <= set(df.columns)
    # p = (1 + #null >= observed) / (1 + 20): multiples of 1/21 in [1/21, 1].
    p = df["spatial_pearson_pvals"].dropna().to_numpy()
    assert len(p) > 100 and np.allclose(p * 21, np.round(p * 21)) and p.min() >= 1 / 21 - 1e-12
    assert main(["ligrec", "--sections", "C2", "--out", str(tmp_path / "lr.txt")]) == 2


def test_ligrec_gcng_config_reaches_the_tool(tmp_path, monkeypatch):
    import scst

    seen = {}

    def recording(adata, **kwargs):  # a stub tool: records what the CLI passes, writes an empty table
        import pandas as pd

        seen.update(kwargs)
        adata.uns["scst_ligrec"] = pd.DataFrame({"ligand_complex": [], "receptor_complex": []})

    monkeypatch.setattr(scst.tl, "ligand_receptor", recording)
    out = str(tmp_path / "lr.csv")
    assert main(["ligrec", "--sections", "C2", "--method", "gcng", "--gcng-config", "pooled", "--out", out]) == 0
    assert seen["gcng_config"] == scst.models.GCNG.pooled_config and seen["method"] == ["gcng"]
    assert main(["ligrec", "--sections", "C2", "--method", "gcng", "--out", out, "--overwrite"]) == 0
    assert seen["gcng_config"] == scst.models.GCNG.bench_config
    assert main(["ligrec", "--sections", "C2", "--method", "gcng", "--gcng-config", "fast", "--out", out,
                 "--overwrite"]) == 0  # fmt: skip
    assert seen["gcng_config"] == scst.models.GCNG.fast_config != scst.models.GCNG.bench_config


def test_train_head_then_predict_a_bare_he_image(tmp_path):
    """`scst train --model hggep_head` → `scst predict --image he.jpg`: pseudo-spots, features recomputed."""
    import scst

    image = os.path.join(os.environ["SCST_DATA_DIR"], "her2st", "C4", "he.jpg")  # set by tests/conftest.py
    assert os.path.isfile(image), f"{image} missing: the her2st data are needed (../shared/data or SCST_DATA_DIR)"
    m = str(tmp_path / "m")
    assert main(["train", "--model", "hggep_head", "--sections", "C2", "C3", "--n-genes", "50", "--max-epochs", "5",
                 "--out", m]) == 0  # fmt: skip
    upp = scst.datasets.her2st(sections=["C4"], images=False).tables["table"].uns["scst"]["sections"]["C4"]["um_per_px"]
    out = tmp_path / "he.h5ad"
    assert main(["predict", "--model-dir", m, "--image", image, "--um-per-px", str(upp), "--spacing-um", "200",
                 "--out", str(out)]) == 0  # fmt: skip
    pred = ad.read_h5ad(out)
    assert pred.n_obs > 50 and pred.obsm["X_hc_ms_scaled"].shape[1] == 3 * len(scst.pp.handcrafted_feature_names())
    assert np.isfinite(pred.X).all() and np.median(pred.X.std(0)) > 0  # pseudo-spots differ
    np.testing.assert_allclose(pred.obsm["X_hc_ms_scaled"].mean(0), 0, atol=1e-4)  # scaled over the slide, as trained
    assert main(["predict", "--model-dir", m, "--image", image, "--out", str(tmp_path / "x.h5ad")]) == 2  # no µm/px


def test_train_config_overrides_reach_the_model(tmp_path, capsys, monkeypatch):
    """`--config KEY=VALUE` (JSON values) reaches the model; a bad key or value is one named error, and a bad key
    fails before the data are read (a synthetic store: what is tested is the config's path, not her2st)."""
    import _he_synthetic as syn  # tests/models is on pytest's pythonpath (pyproject.toml)

    import scst

    data = tmp_path / "syn.zarr"
    syn.make_sdata(sections=("S1", "S2")).write(data)
    m = tmp_path / "m"
    assert main(["train", "--model", "ridge", "--data", str(data), "--n-genes", "8", "--config", "n_programs=2",
                 "--config", "alphas=[10.0, 1000.0]", "--out", str(m)]) == 0  # fmt: skip
    model = scst.models.RidgeExpression.load(m)
    assert model.n_programs_ == 2 and model.config["alphas"] == [10.0, 1000.0]
    capsys.readouterr()
    assert main(["train", "--model", "ridge", "--data", str(data), "--config", "n_programs=0", "--out",
                 str(tmp_path / "x")]) == 2  # fmt: skip
    assert 'scst: error: --config: n_programs: expected None, "auto" or an int' in capsys.readouterr().err
    assert main(["train", "--model", "mean", "--config", "n_programs", "--out", str(tmp_path / "y")]) == 2
    assert "--config: expected KEY=VALUE (e.g. n_programs=6), got 'n_programs'" in capsys.readouterr().err

    def no_reading(*args, **kwargs):
        raise AssertionError("the data were read before the config was checked")

    monkeypatch.setattr("scst.cli._load_data", no_reading)
    for model_name, cls in (("mean", "MeanExpression"), ("hggep", "HGGEP")):
        assert main(["train", "--model", model_name, "--config", "hidden=3", "--out", str(tmp_path / "z")]) == 2
        assert f"--config: Unknown config key(s) ['hidden'] for {cls}" in capsys.readouterr().err
    # a number's value that is not one is refused before the data are read too (it failed after the features)
    assert main(["train", "--model", "hggep_head", "--config", "lr=1e-3x", "--out", str(tmp_path / "z")]) == 2
    assert "--config: lr: expected a number, got '1e-3x'" in capsys.readouterr().err


def _no_reading(*args, **kwargs):
    raise AssertionError("the data were read before the arguments were checked")


def _predict_with_attr_json(tmp_path, capsys, monkeypatch, content: str) -> tuple:
    """``scst predict`` on a model dir holding only ``attr.json`` = ``content`` (data never read): (dir, stderr)."""
    monkeypatch.setattr("scst.cli._load_data", _no_reading)
    m = tmp_path / "m"
    m.mkdir()
    (m / "attr.json").write_text(content)
    assert main(["predict", "--model-dir", str(m), "--out", str(tmp_path / "p.h5ad")]) == 2
    return m, capsys.readouterr().err


@pytest.mark.parametrize(("content", "expect"), [("not json", "is not valid JSON"),
                                                 ("[1,2]", "holds a JSON list, expected an object")])  # fmt: skip
def test_predict_bad_attr_json_is_a_model_dir_error(tmp_path, capsys, monkeypatch, content, expect):
    """A corrupt attr.json names --model-dir and the file (no bare JSON message, no AttributeError traceback)."""
    m, err = _predict_with_attr_json(tmp_path, capsys, monkeypatch, content)
    err = err.strip()
    assert err.startswith(f"scst: error: --model-dir: {str(m / 'attr.json')!r} {expect}"), err


def test_predict_checks_the_model_dir_before_reading_the_data(tmp_path, capsys, monkeypatch):
    """attr.json of a known class but no weights: the model directory fails before any data set is read."""
    monkeypatch.setattr("scst.cli._load_data", _no_reading)
    m = tmp_path / "m"
    m.mkdir()
    (m / "attr.json").write_text('{"model": "HGGEP"}')
    assert main(["predict", "--model-dir", str(m), "--sections", "C4", "--out", str(tmp_path / "p.h5ad")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("scst: error: --model-dir: ") and "lacks attr.json / model.safetensors" in err


def test_a_store_without_table_or_section_column(tmp_path, capsys, monkeypatch):
    """No table 'table': a --data error listing the tables (train, ligrec). A table without obs['section']: ligrec
    builds one grid graph over all spots (an 8 × 8 grid: 2·2·8·7 = 224 directed 4-neighbour links); --sections is
    then an error naming obs['section'], and a section absent from the store is one too."""
    import _he_synthetic as syn
    import pandas as pd
    from spatialdata import SpatialData

    import scst

    full = syn.make_sdata(sections=("S1",))
    empty = tmp_path / "empty.zarr"
    SpatialData(images=dict(full.images)).write(empty)
    for cmd in (["train", "--model", "mean"], ["ligrec"]):
        out = str(tmp_path / ("m" if cmd[0] == "train" else "lr.csv"))
        assert main([*cmd, "--data", str(empty), "--out", out]) == 2
        assert f"scst: error: --data: {str(empty)!r} has no table 'table' (tables: [])." in capsys.readouterr().err
    seen = {}

    def recording(adata, **kwargs):
        seen["adata"] = adata
        adata.uns["scst_ligrec"] = pd.DataFrame({"ligand_complex": [], "receptor_complex": []})

    monkeypatch.setattr(scst.tl, "ligand_receptor", recording)
    del full.tables["table"].obs["section"]
    flat = tmp_path / "flat.zarr"
    full.write(flat)
    assert main(["ligrec", "--data", str(flat), "--out", str(tmp_path / "lr.csv")]) == 0
    conn = seen["adata"].obsp["spatial_connectivities"]
    assert seen["adata"].n_obs == 64 and conn.nnz == 224
    assert main(["ligrec", "--data", str(flat), "--sections", "S1", "--out", str(tmp_path / "lr2.csv")]) == 2
    assert "--sections: the table has no obs['section'] column" in capsys.readouterr().err
    # train and predict need the column whatever --sections is: said naming --data, before any work
    assert main(["train", "--model", "mean", "--data", str(flat), "--out", str(tmp_path / "m2")]) == 2
    assert "scst: error: --data: scst train needs obs['section'] in the table" in capsys.readouterr().err
    two = tmp_path / "two.zarr"
    syn.make_sdata(sections=("S1", "S2")).write(two)
    seen.clear()
    assert main(["ligrec", "--data", str(two), "--sections", "S1", "BOGUS", "--out", str(tmp_path / "lr3.csv")]) == 2
    assert "scst: error: --sections: ['BOGUS'] not in the data (sections: ['S1', 'S2'])." in capsys.readouterr().err
    assert not seen
    # sections marked by obs['library_id'] (the squidpy convention): one grid per section, none across them
    lib = syn.make_sdata(sections=("S1", "S2"))
    tab = lib.tables["table"]
    tab.obs["library_id"] = tab.obs.pop("section")
    lib.write(tmp_path / "lib.zarr")
    assert main(["ligrec", "--data", str(tmp_path / "lib.zarr"), "--out", str(tmp_path / "lr4.csv")]) == 0
    a = seen["adata"]
    rows, cols = a.obsp["spatial_connectivities"].nonzero()
    lab = a.obs["library_id"].astype(str).to_numpy()
    assert len(rows) == 2 * 224 and (lab[rows] == lab[cols]).all()


def test_options_that_do_not_apply_are_errors(tmp_path, capsys, monkeypatch):
    """--max-epochs 0 (or for a closed-form model) and predict options of the other mode are errors, raised
    before any data are read."""
    monkeypatch.setattr("scst.cli._load_data", _no_reading)
    monkeypatch.setattr("scst.cli._image_only", _no_reading)
    out = str(tmp_path / "m")
    assert main(["train", "--model", "mlp", "--max-epochs", "0", "--out", out]) == 2
    assert "scst: error: --max-epochs: expected a positive number of epochs, got 0." in capsys.readouterr().err
    assert main(["train", "--model", "ridge", "--max-epochs", "5", "--out", out]) == 2
    assert "--max-epochs: not used by --model ridge" in capsys.readouterr().err
    m = tmp_path / "model"
    m.mkdir()
    (m / "attr.json").write_text('{"model": "MeanExpression"}')
    pred = ["predict", "--model-dir", str(m), "--out", str(tmp_path / "p.h5ad")]
    for extra, opt in ((["--spacing-um", "100"], "--spacing-um"), (["--data", "her2st", "--um-per-px", "1"],
                                                                   "--um-per-px")):  # fmt: skip
        assert main([*pred, *extra]) == 2
        assert f"scst: error: {opt}: only used with --image" in capsys.readouterr().err
    image = tmp_path / "he.png"
    image.write_bytes(b"")
    for extra, opt in ((["--sections", "C4"], "--sections"), (["--data", "her2st"], "--data")):
        assert main([*pred, "--image", str(image), "--um-per-px", "1", *extra]) == 2
        assert f"scst: error: {opt}: not used with --image" in capsys.readouterr().err


def test_train_chooses_the_panel_from_the_training_sections_only(tmp_path, monkeypatch):
    """A store with three sections (read whole, as a zarr store is), trained on S1 and S2: the panel is the one
    select_genes picks from S1 and S2. S3, where NOISE7 is the most variable gene (0 or 1000 counts), must not bring
    NOISE7 into it."""
    import _he_synthetic as syn  # tests/models is on pytest's pythonpath (pyproject.toml)
    from scipy import sparse

    import scst

    sdata = syn.make_sdata(sections=("S1", "S2", "S3"), image=False)
    tab = sdata.tables["table"]
    X = tab.X.toarray()
    s3 = np.flatnonzero(tab.obs["section"] == "S3")
    X[s3, tab.var_names.get_loc("NOISE7")] = np.where(np.arange(len(s3)) % 2, 1000, 0)
    tab.X = sparse.csr_matrix(X)
    del tab.var["highly_variable_scst"]
    monkeypatch.setattr("scst.cli._load_data", lambda data, sections: sdata)
    m = tmp_path / "m"
    assert main(["train", "--model", "mean", "--data", "store.zarr", "--sections", "S1", "S2", "--n-genes", "2",
                 "--out", str(m)]) == 0  # fmt: skip
    ref = tab[tab.obs["section"].isin(["S1", "S2"])].copy()
    scst.pp.select_genes(ref, n_top=2)
    want = list(ref.var_names[ref.var["highly_variable_scst"]])
    assert list(scst.models.MeanExpression.load(m).var_names) == want and "NOISE7" not in want


# ------------------------------------------------------------------------------------------------ mutation sweep
# Recording stand-ins for the models and tools: what the CLI passes on (sections, epochs, options, --overwrite) is
# checked without training anything, on a small synthetic store that `_load_data` hands out.
def _fake_model_class(calls):
    class FakeModel:
        """A model class as the CLI uses it: records every call into ``calls``."""

        bench_config = {"a": 1}
        var_names = ["G1", "G2"]  # the panel (train prints its size)

        @classmethod
        def _merge_config(cls, config):
            unknown = sorted(set(config) - {"a", "b"})
            if unknown:
                raise ValueError(f"Unknown config key(s) {unknown} for FakeModel")
            return dict(config)

        @classmethod
        def setup_sdata(cls, sdata, **kwargs):
            calls.append(("setup_sdata", kwargs))

        @classmethod
        def setup_anndata(cls, adata, **kwargs):
            calls.append(("setup_anndata", kwargs))

        @classmethod
        def load(cls, model_dir, sdata=None):
            calls.append(("load", sdata is not None))
            return cls(None)

        def __init__(self, data, **config):
            if data is not None:
                calls.append(("init", type(data).__name__, config))

        def train(self, **kwargs):
            calls.append(("train", kwargs))
            return self

        def save(self, out, overwrite=False):
            calls.append(("save", str(out), overwrite))

    return FakeModel


@pytest.fixture
def syn_store(monkeypatch):
    """`_load_data` stubbed: a fresh three-section synthetic SpatialData (no images) per call; calls recorded."""
    import _he_synthetic as syn

    loads = []

    def load(data, sections):
        loads.append((data, sections))
        return syn.make_sdata(sections=("S1", "S2", "S3"), image=False)

    monkeypatch.setattr("scst.cli._load_data", load)
    return loads


@pytest.fixture
def fake_train(monkeypatch, syn_store):
    """Every model class of `scst train` and the feature tools replaced by recorders (one shared call list)."""
    import scst
    from scst.cli import MODELS

    calls = []
    fake = _fake_model_class(calls)
    for cls_name in MODELS.values():
        monkeypatch.setattr(scst.models, cls_name, fake)
    monkeypatch.setattr(scst.pp, "select_genes", lambda adata, **kw: calls.append(("select_genes", kw)))
    monkeypatch.setattr(scst.tl, "embed_patches", lambda sdata, method, **kw: calls.append(("embed", method, kw)))
    monkeypatch.setattr(scst.pp, "scale_by_section", lambda adata, key: calls.append(("scale", key)))
    monkeypatch.setattr(scst.pp, "hypergraph", lambda adata, **kw: calls.append(("hypergraph", kw)))
    return calls


@pytest.mark.parametrize("model", ["mean", "ridge", "hggep_head", "mlp", "tcgn", "hggep", "stnet"])
def test_train_passes_sections_epochs_config_and_overwrite_on(fake_train, syn_store, tmp_path, model):
    """Each model gets the training sections, --max-epochs (the networks), --config over its bench_config and the
    --overwrite flag; the heads train on the multi-scale hand-crafted features, hggep_head on their hypergraph."""
    from scst.cli import HEAD_SCALES_UM

    out = tmp_path / "m"
    net = model not in ("mean", "ridge")
    epochs = ["--max-epochs", "1"] if net else []  # 1 is the smallest allowed
    argv = ["train", "--model", model, "--data", "store.zarr", "--sections", "S1", "S3", "--n-genes", "7",
            "--config", "b=[2, 3]", "--config", "a=5", *epochs, "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    assert syn_store == [("store.zarr", ["S1", "S3"])]
    sections = ["S1", "S3"]
    want = [("select_genes", {"n_top": 7, "sections": sections})]
    if model == "ridge":
        want += [("embed", "handcrafted", {"progress": False}),
                 ("setup_sdata", {"embedding_key": "X_handcrafted", "sections": sections})]  # fmt: skip
    elif model in ("hggep_head", "mlp"):
        want += [("embed", "handcrafted", {"size_um": HEAD_SCALES_UM, "out_px": 112, "key_added": "X_hc_ms"}),
                 ("scale", "X_hc_ms")]  # fmt: skip
        if model == "hggep_head":
            want += [("hypergraph", {"use_rep": "X_hc_ms_scaled", "k": 3})]
        want += [("setup_anndata", {"use_rep": "X_hc_ms_scaled", "sections": sections})]
    else:
        want += [("setup_sdata", {"sections": sections})]
    data = "AnnData" if model in ("hggep_head", "mlp") else "SpatialData"
    want += [("init", data, {"a": 5, "b": [2, 3]}), ("train", {"max_epochs": 1} if net else {}),
             ("save", str(out), False)]  # fmt: skip
    assert fake_train == want
    # --out exists: an error before any data are read; with --overwrite the model replaces it
    out.mkdir()
    fake_train.clear()
    syn_store.clear()
    assert main(argv) == 2 and fake_train == [] and syn_store == []
    assert main([*argv, "--overwrite"]) == 0 and fake_train[-1] == ("save", str(out), True)


def test_train_argument_checks_before_the_data(fake_train, syn_store, tmp_path, capsys):
    """--max-epochs for the closed-form mean, --out that exists, a --config item without a key: errors that name
    the option, raised before any data are read."""
    out = tmp_path / "m"
    assert main(["train", "--model", "mean", "--max-epochs", "5", "--out", str(out)]) == 2
    assert "scst: error: --max-epochs: not used by --model mean (closed form, no epochs)." in capsys.readouterr().err
    assert main(["train", "--model", "mlp", "--config", "=3", "--out", str(out)]) == 2
    assert "scst: error: --config: expected KEY=VALUE (e.g. n_programs=6), got '=3'." in capsys.readouterr().err
    out.mkdir()
    assert main(["train", "--model", "mean", "--out", str(out)]) == 2
    assert f"scst: error: --out: {str(out)!r} exists; pass --overwrite to replace it." in capsys.readouterr().err
    (out / "notes.txt").write_text("kept")  # --overwrite never deletes a folder of other files
    assert main(["train", "--model", "mean", "--out", str(out), "--overwrite"]) == 2
    assert f"--out: {str(out)!r} exists and is not a saved model folder" in capsys.readouterr().err
    assert (out / "notes.txt").read_text() == "kept"
    assert syn_store == [] and fake_train == []


def test_config_values(tmp_path):
    """KEY=VALUE: JSON values or Python's True/False/None, else the string; only the first '=' splits."""
    from scst.cli import _config

    assert _config(["n=6", "f=false", "z=null", "s=auto", "e=a=b", "l=[1, 2]"]) == {
        "n": 6, "f": False, "z": None, "s": "auto", "e": "a=b", "l": [1, 2]
    }  # fmt: skip
    assert _config(None) == {}
    # Python's spellings, as users type them (ridge_skip=False was refused: "expected True or False, got 'False'")
    assert _config(["a=False", "b=True", "c=None", "d=false"]) == {"a": False, "b": True, "c": None, "d": False}


@pytest.fixture
def fake_predict(monkeypatch, tmp_path):
    """A model directory of a recording model class and a recording predict_expression that fills the layer."""
    import scst

    calls = []
    monkeypatch.setattr(scst.models, "FakeModel", _fake_model_class(calls), raising=False)
    m = tmp_path / "model"
    m.mkdir()
    (m / "attr.json").write_text('{"model": "FakeModel"}')

    def predict(sdata, model, **kwargs):
        calls.append(("predict", kwargs))
        if "um_per_px" in kwargs:  # image mode: a pseudo-spot table
            sdata.tables["table_predicted"] = ad.AnnData(np.ones((3, 2), np.float32))
        else:
            t = sdata.tables["table"]
            t.layers["predicted"] = np.full(t.shape, 2.0, np.float32)

    monkeypatch.setattr(scst.tl, "predict_expression", predict)
    return m, calls


def test_predict_passes_data_sections_and_options_on(fake_predict, syn_store, tmp_path, capsys):
    m, calls = fake_predict
    out = tmp_path / "p.h5ad"
    argv = ["predict", "--model-dir", str(m), "--data", "store.zarr", "--sections", "S2", "--num-workers", "3",
            "--precision", "16", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    assert syn_store == [("store.zarr", ["S2"])]
    assert calls == [("load", False), ("load", True), ("predict", {"sections": ["S2"], "num_workers": 3,
                                                                   "precision": "16"})]  # fmt: skip
    pred = ad.read_h5ad(out)
    assert pred.n_obs == 3 * 64 and (pred.layers["predicted"] == 2).all()
    # defaults: her2st, all sections, no workers, 32-bit; --overwrite replaces the file
    calls.clear()
    syn_store.clear()
    assert main(["predict", "--model-dir", str(m), "--out", str(out), "--overwrite"]) == 0
    assert syn_store == [("her2st", None)]
    assert calls[-1] == ("predict", {"sections": None, "num_workers": 0, "precision": "32"})
    # a section not in the data: an error before predicting, nothing written
    calls.clear()
    capsys.readouterr()
    assert main([*argv[:-2], "--sections", "S9", "--out", str(tmp_path / "q.h5ad")]) == 2
    assert "scst: error: --sections: ['S9'] not in the data (sections: ['S1', 'S2', 'S3'])." in capsys.readouterr().err
    assert ("predict" not in [c[0] for c in calls]) and not (tmp_path / "q.h5ad").exists()
    # a negative number of workers: an error naming the option before the model and the data are read
    calls.clear()
    syn_store.clear()
    assert main([*argv[:-2], "--num-workers", "-1", "--out", str(tmp_path / "q.h5ad")]) == 2
    assert "scst: error: --num-workers: expected an integer >= 0" in capsys.readouterr().err
    assert calls == [] and syn_store == []


def test_predict_writes_zarr_and_never_half_an_output(fake_predict, syn_store, tmp_path, monkeypatch, capsys):
    """--out .zarr: the whole SpatialData with the predicted layer. A write that fails half-way leaves no --out
    (nor a temporary file); an --out of another suffix is an error before any data are read."""
    import spatialdata as sd

    m, calls = fake_predict
    out = tmp_path / "p.zarr"
    assert main(["predict", "--model-dir", str(m), "--data", "store.zarr", "--out", str(out)]) == 0
    back = sd.read_zarr(out).tables["table"]
    assert back.n_obs == 3 * 64 and (np.asarray(back.layers["predicted"]) == 2).all()

    def half_written(self, path, *args, **kwargs):
        with open(path, "wb") as f:
            f.write(b"\x89HDF")
        raise ValueError("disk full")

    monkeypatch.setattr(ad.AnnData, "write_h5ad", half_written)
    bad = tmp_path / "bad" / "p.h5ad"
    bad.parent.mkdir()
    assert main(["predict", "--model-dir", str(m), "--data", "store.zarr", "--out", str(bad)]) == 2
    assert "scst: error: disk full" in capsys.readouterr().err
    assert list(bad.parent.iterdir()) == []
    syn_store.clear()
    assert main(["predict", "--model-dir", str(m), "--data", "store.zarr", "--out", str(tmp_path / "p.csv")]) == 2
    assert "--out: expected a path ending in .h5ad or .zarr, got" in capsys.readouterr().err and syn_store == []


def test_an_out_of_the_wrong_kind_is_an_error_before_the_data_are_read(fake_predict, syn_store, tmp_path, capsys):
    """predict --out x.h5ad --overwrite on a folder x.h5ad ended in an IsADirectoryError traceback after predicting
    (a file x.zarr was left aside as a hidden file); ligrec --out x.csv on a folder too: one-line errors now."""
    m, calls = fake_predict
    (tmp_path / "x.h5ad").mkdir()
    (tmp_path / "x.zarr").write_text("mine")
    (tmp_path / "x.csv").mkdir()
    for name, kind in (("x.h5ad", "a folder"), ("x.zarr", "a file")):
        out = str(tmp_path / name)
        assert main(["predict", "--model-dir", str(m), "--data", "store.zarr", "--out", out, "--overwrite"]) == 2
        assert f"scst: error: --out: {out!r} is {kind}; --overwrite replaces only" in capsys.readouterr().err
    out = str(tmp_path / "x.csv")
    assert main(["ligrec", "--data", "store.zarr", "--out", out, "--overwrite"]) == 2
    assert f"scst: error: --out: {out!r} is a folder" in capsys.readouterr().err
    assert calls == [] and syn_store == []
    assert (tmp_path / "x.zarr").read_text() == "mine" and sorted(p.name for p in tmp_path.iterdir()) == [
        "model", "x.csv", "x.h5ad", "x.zarr"
    ]  # fmt: skip
    # a folder named *.zarr that holds other files (no zarr store) is never deleted by --overwrite
    (tmp_path / "y.zarr").mkdir()
    (tmp_path / "y.zarr" / "results.csv").write_text("mine")
    out = str(tmp_path / "y.zarr")
    assert main(["predict", "--model-dir", str(m), "--data", "store.zarr", "--out", out, "--overwrite"]) == 2
    assert f"scst: error: --out: {out!r} is a folder but no zarr store" in capsys.readouterr().err
    assert (tmp_path / "y.zarr" / "results.csv").read_text() == "mine" and calls == [] and syn_store == []


def test_predict_image_options_reach_the_tool(fake_predict, tmp_path, monkeypatch, capsys):
    """--image: µm/px (to the reader and predict_expression) and the spacing reach the tools; a zero µm/px is an error
    before the image is read."""
    from spatialdata import SpatialData

    m, calls = fake_predict
    images = []
    monkeypatch.setattr("scst.cli._image_only", lambda path, upp: images.append((path, upp)) or SpatialData())
    image = tmp_path / "he.png"
    image.write_bytes(b"")
    out = tmp_path / "p.h5ad"
    base = ["predict", "--model-dir", str(m), "--image", str(image), "--out", str(out)]
    assert main([*base, "--um-per-px", "0.5", "--spacing-um", "150", "--num-workers", "2"]) == 0
    assert images == [(str(image), 0.5)]  # a whole-slide reader gets the pixel size too (for slides without one)
    assert calls[-1] == ("predict", {"um_per_px": 0.5, "spacing_um": 150.0, "num_workers": 2, "precision": "32"})
    assert ad.read_h5ad(out).n_obs == 3
    images.clear()
    for bad in ("0", "nan", "inf", "-1"):
        assert main([*base, "--um-per-px", bad, "--overwrite"]) == 2
        assert "scst: error: --um-per-px: the pixel size of --image in µm is required" in capsys.readouterr().err
        assert main([*base, "--um-per-px", "0.5", "--spacing-um", bad, "--overwrite"]) == 2
        assert "scst: error: --spacing-um: expected a finite positive spacing in µm" in capsys.readouterr().err
    assert images == []


def test_ligrec_passes_sections_and_options_on(syn_store, tmp_path, monkeypatch, capsys):
    """--sections keeps only those spots; one 4-neighbour grid graph per section (8 × 8 grids: 224 links each,
    none across sections, whose coordinates overlap); --n-perms, --seed, --pairs and the paper's GCNG settings
    reach the tool; an existing --out is kept without --overwrite."""
    import pandas as pd

    import scst

    seen = {}

    def recording(adata, **kwargs):
        seen.update(kwargs, adata=adata)
        adata.uns["scst_ligrec"] = pd.DataFrame({"ligand_complex": ["A"], "receptor_complex": ["B"]})

    monkeypatch.setattr(scst.tl, "ligand_receptor", recording)
    out = tmp_path / "lr.csv"
    assert main(["ligrec", "--data", "store.zarr", "--sections", "S1", "S3", "--n-perms", "7", "--seed", "3",
                 "--pairs", "liana", "--gcng-config", "paper", "--out", str(out)]) == 0  # fmt: skip
    a = seen["adata"]
    assert a.n_obs == 128 and set(a.obs["section"]) == {"S1", "S3"}
    assert a.obsp["spatial_connectivities"].nnz == 2 * 224
    assert seen["n_perms"] == 7 and seen["seed"] == 3 and seen["pairs"] == "liana"
    assert seen["gcng_config"] == scst.models.GCNG._default_config
    assert list(pd.read_csv(out)["ligand_complex"]) == ["A"]
    assert main(["ligrec", "--data", "store.zarr", "--out", str(out), "--overwrite"]) == 0
    assert seen["adata"].n_obs == 192 and seen["adata"].obsp["spatial_connectivities"].nnz == 3 * 224
    assert seen["n_perms"] == 100 and seen["seed"] == 0 and seen["pairs"] is None  # the defaults
    out.write_text("mine")
    seen.clear()
    assert main(["ligrec", "--data", "store.zarr", "--out", str(out)]) == 2
    assert f"--out: {str(out)!r} exists; pass --overwrite" in capsys.readouterr().err
    assert out.read_text() == "mine" and not seen
    syn_store.clear()  # a negative --n-perms: an error naming the option before the data are read
    assert main(["ligrec", "--data", "store.zarr", "--n-perms", "-5", "--out", str(tmp_path / "x.csv")]) == 2
    assert "scst: error: --n-perms: expected an integer >= 0" in capsys.readouterr().err
    assert syn_store == [] and not seen


def test_ligrec_passes_a_liana_resource_name_on(syn_store, tmp_path, monkeypatch):
    """--pairs takes a liana resource (not one of scst's own lists) and hands it to the tool."""
    import pandas as pd

    import scst

    seen = {}

    def recording(adata, **kwargs):
        seen.update(kwargs)
        adata.uns["scst_ligrec"] = pd.DataFrame({"ligand_complex": ["A"], "receptor_complex": ["B"]})

    monkeypatch.setattr(scst.tl, "ligand_receptor", recording)
    monkeypatch.setattr("scst.datasets._ligand_receptor._liana_resource_names", lambda: ["cellphonedb"])
    assert main(["ligrec", "--data", "store.zarr", "--pairs", "cellphonedb", "--out", str(tmp_path / "lr.csv")]) == 0
    assert seen["pairs"] == "cellphonedb" and len(syn_store) == 1


def test_data_that_is_not_a_store(tmp_path, capsys):
    assert main(["train", "--model", "mean", "--data", str(tmp_path / "missing.zarr"), "--out",
                 str(tmp_path / "m")]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert f"scst: error: --data: {str(tmp_path / 'missing.zarr')!r} is neither 'her2st' nor an existing" in err


@pytest.mark.parametrize(("content", "name"), [("{}", "None"), ('{"model": "nope"}', "'nope'"),
                                               ('{"model": "_base"}', "'_base'")])  # fmt: skip
def test_predict_unknown_model_class(tmp_path, capsys, monkeypatch, content, name):
    _, err = _predict_with_attr_json(tmp_path, capsys, monkeypatch, content)
    assert f"scst: error: --model-dir: unknown model class {name} in " in err


def test_predict_an_image_whose_file_name_has_spaces(fake_predict, tmp_path, capsys):
    """`--image "patient 1.png"` (and a slide "2024-01 slide#3.svs"): the section is named after the file with other
    characters replaced by '_', not refused by spatialdata's element-name rule ('patient 1_image')."""
    import tifffile
    from PIL import Image

    import scst

    m, calls = fake_predict
    img = np.full((64, 80, 3), 200, np.uint8)
    Image.fromarray(img).save(tmp_path / "patient 1.png")
    out = tmp_path / "p.h5ad"
    argv = ["predict", "--model-dir", str(m), "--image", str(tmp_path / "patient 1.png"), "--um-per-px", "0.5"]
    assert main([*argv, "--out", str(out)]) == 0, capsys.readouterr().err
    tifffile.imwrite(tmp_path / "2024-01 slide#3.svs", img, tile=(16, 16), photometric="rgb")
    assert list(scst.cli._image_only(str(tmp_path / "2024-01 slide#3.svs")).images) == ["2024-01_slide_3_image"]
    assert list(scst.io.read_wsi(tmp_path / "2024-01 slide#3.svs", um_per_px=0.5).images) == ["2024-01_slide_3_image"]
    with pytest.raises(ValueError, match="sample: 'a b' names the SpatialData elements"):
        scst.io.read_wsi(tmp_path / "2024-01 slide#3.svs", sample="a b", um_per_px=0.5)


def test_train_an_empty_gene_panel_names_n_genes(tmp_path, monkeypatch, capsys):
    """--n-genes so small that no highly variable gene is detected in half the spots (her2st C2 with 20): an error
    naming --n-genes, raised before any feature or model (which said "genes: var['highly_variable_scst'] selects no
    gene", or blamed --config); --n-genes 0 is refused before the data are read."""
    import _he_synthetic as syn

    sdata = syn.make_sdata(sections=("S1", "S2"), image=False)
    tab = sdata.tables["table"]
    X = tab.X.toarray()
    X[:, :-1] = np.where(np.arange(tab.n_obs)[:, None] % 4 == 0, X[:, :-1] * 50 + 1, 0)  # variable, but in 1/4 spots
    tab.X = __import__("scipy").sparse.csr_matrix(X)
    loads = []
    monkeypatch.setattr("scst.cli._load_data", lambda data, sections: loads.append(data) or sdata)
    out = tmp_path / "m"
    for model in ("mean", "mlp"):
        assert main(["train", "--model", model, "--data", "s.zarr", "--n-genes", "1", "--out", str(out)]) == 2
        assert "scst: error: --n-genes: the gene panel is empty" in capsys.readouterr().err
    assert not out.exists() and "X_hc_ms" not in tab.obsm
    loads.clear()
    assert main(["train", "--model", "mean", "--data", "s.zarr", "--n-genes", "0", "--out", str(out)]) == 2
    assert "scst: error: --n-genes: expected a positive number of genes, got 0." in capsys.readouterr().err
    assert loads == []


def test_review_cli_errors_name_the_options(tmp_path, monkeypatch, capsys):
    """Review 2026-12-04: an offline her2st section was a traceback (status 1); predict-shards/merge told CLI users
    to pass `overwrite=True`; a one-section ridge failed after the features with Python-keyword advice."""
    import _he_synthetic as syn  # tests/models is on pytest's pythonpath (pyproject.toml)

    import scst

    def offline(*args, **kwargs):
        raise OSError("Could not download her2st/A1/counts.tsv.gz; put the file at $SCST_DATA_DIR/her2st/A1/...")

    with monkeypatch.context() as m:
        m.setattr(scst.datasets, "her2st", offline)
        assert main(["train", "--model", "mean", "--data", "her2st", "--sections", "A1", "--out",
                     str(tmp_path / "m")]) == 2  # fmt: skip
    assert "scst: error: --data her2st: Could not download her2st/A1" in capsys.readouterr().err
    (tmp_path / "exists.zarr").mkdir()
    (tmp_path / "store.zarr").mkdir()
    assert main(["merge", str(tmp_path / "store.zarr"), "--out", str(tmp_path / "exists.zarr")]) == 2
    assert "--out: " in (err := capsys.readouterr().err) and "pass --overwrite" in err and "overwrite=True" not in err
    data = tmp_path / "syn.zarr"
    syn.make_sdata(sections=("S1", "S2")).write(data)

    def no_features(*args, **kwargs):
        raise AssertionError("features computed before the one-section ridge was refused")

    monkeypatch.setattr(scst.tl, "embed_patches", no_features)
    assert main(["train", "--model", "ridge", "--data", str(data), "--sections", "S1", "--n-genes", "5",
                 "--out", str(tmp_path / "r")]) == 2  # fmt: skip
    assert "--config 'alphas=[100.0]'" in capsys.readouterr().err


def test_unreadable_data_image_and_an_empty_table_are_option_errors(fake_predict, tmp_path, monkeypatch, capsys):
    """--data a directory that is no zarr store, --image a missing path or a file no image decoder reads, and a
    ligrec table without spots: each a one-line error naming the option, exit code 2."""
    import types

    import _he_synthetic as syn

    import scst

    m, calls = fake_predict
    monkeypatch.setenv("SCST_CACHE_DIR", str(tmp_path / "cache"))
    not_zarr = tmp_path / "plain_dir"
    not_zarr.mkdir()
    (not_zarr / "notes.txt").write_text("no zarr here")
    pred = ["predict", "--model-dir", str(m), "--out", str(tmp_path / "p.h5ad")]
    assert main([*pred, "--data", str(not_zarr)]) == 2
    assert f"scst: error: --data: cannot read {str(not_zarr)!r} as SpatialData zarr (" in capsys.readouterr().err
    missing = tmp_path / "nope.png"
    assert main([*pred, "--image", str(missing), "--um-per-px", "1"]) == 2
    assert capsys.readouterr().err == f"scst: error: --image: {str(missing)!r} is not a file.\n"
    garbage = tmp_path / "he.png"
    garbage.write_bytes(b"this is not a PNG")
    assert main([*pred, "--image", str(garbage), "--um-per-px", "1"]) == 2
    assert "scst: error: --image: image: cannot decode " in capsys.readouterr().err
    assert "predict" not in [c[0] for c in calls]

    def no_spots(data, sections):  # SpatialData refuses a table with none of its regions: a stand-in with .tables
        return types.SimpleNamespace(tables={"table": syn.make_sdata(sections=("S1",), image=False)["table"][:0]})

    monkeypatch.setattr("scst.cli._load_data", no_spots)
    monkeypatch.setattr(scst.tl, "ligand_receptor", _no_reading)
    assert main(["ligrec", "--data", "empty.zarr", "--out", str(tmp_path / "lr.csv")]) == 2
    assert capsys.readouterr().err == "scst: error: --data: the table of 'empty.zarr' has no spots.\n"
