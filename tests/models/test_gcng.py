"""GCNG: the batched network equals the paper's per-pair formula; training finds a planted spatial signal."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch
from anndata import AnnData
from sklearn.metrics import roc_auc_score

from scst.models._gcng import GCNG, entity_expression, normalized_expression, sample_negatives
from scst.nn._gcng import GCNGNet
from scst.pp._graph_matrix import cell_graph, graph_matrix

FAST = {**GCNG.fast_config, "max_epochs": 4, "patience": 4}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def niche_data(n_side: int = 8, n_pairs: int = 60, seed: int = 0) -> tuple[AnnData, list[tuple[str, str, str]]]:
    """Grid of cells; true pairs are co-expressed in the left half (the niche), decoys in the right half.

    Ligand, true receptor and decoy receptor have the same expression level, so only *where* they are expressed
    separates positives from negatives — a spatial signal that a GCNG can learn and transfer to unseen genes.
    """
    rng = np.random.default_rng(seed)
    xy = np.array([(i, j) for i in range(n_side) for j in range(n_side)], float)
    niche = xy[:, 0] < n_side / 2
    cols, names, triples = [], [], []
    for k in range(n_pairs):
        lam = rng.uniform(1, 4)
        cols += [rng.poisson(lam * (1 + 2 * niche)), rng.poisson(lam * (1 + 2 * niche)),
                 rng.poisson(lam * (1 + 2 * ~niche))]  # fmt: skip
        names += [f"L{k}", f"R{k}", f"D{k}"]
        triples.append((f"L{k}", f"R{k}", f"D{k}"))
    return grid_adata(xy, cols, names, rng, n_background=40), triples


def grid_adata(xy, cols, names, rng, n_background: int) -> AnnData:
    """Cells × (given genes + Poisson(20) background genes), 4-neighbour graph and its autocrine+ matrix."""
    cols = [*cols, rng.poisson(20, size=(len(xy), n_background))]
    adata = AnnData(sp.csr_matrix(np.column_stack(cols).astype(np.float32)), obsm={"spatial": xy})
    adata.var_names = [*names, *(f"B{i}" for i in range(n_background))]
    cell_graph(adata, radius=1.1, library_key=None)
    graph_matrix(adata, "autocrine+")
    return adata


def labelled(triples) -> pd.DataFrame:
    return pd.DataFrame([(lg, r, 1) for lg, r, _ in triples] + [(lg, d, 0) for lg, _, d in triples],
                        columns=["ligand", "receptor", "label"])  # fmt: skip


@pytest.fixture(scope="module")
def trained():
    adata, triples = niche_data()
    GCNG.setup_anndata(adata, graph_key="gcng_autocrine_plus")
    model = GCNG(adata, **FAST)
    model.train(labelled(triples[:40]), enable_progress_bar=False, accelerator="cpu")
    return adata, triples, model


def test_batched_forward_equals_per_pair_formula():
    torch.manual_seed(0)
    n = 7
    a = sp.random(n, n, density=0.4, random_state=1)
    g = torch.as_tensor(((a + a.T) > 0).toarray() + np.eye(n), dtype=torch.float32)
    net = GCNGNet(n, hidden_channels=5, dense_units=6)
    net.set_graph(g.to_sparse_csr())
    x = torch.rand(4, n, 2)
    out = net(x)
    # Z = elu(L X W + b), twice; flatten; ReLU(dense); output logit — one pair at a time, dense algebra.
    c1, c2 = net.convs
    for b in range(4):
        z = torch.nn.functional.elu(g @ x[b] @ c1.lin.weight.T + c1.lin.bias)
        z = torch.nn.functional.elu(g @ z @ c2.lin.weight.T + c2.lin.bias)
        h = torch.relu(net.dense(z.reshape(-1)))
        torch.testing.assert_close(out[b], net.out(h)[0], rtol=1e-5, atol=1e-5)
    assert "graph" not in net.state_dict()  # the graph belongs to the data, not the weights
    assert net.predict_proba(x).min() >= 0 and net.predict_proba(x).max() <= 1


def test_expression_normalisation_and_complexes():
    x = sp.csr_matrix(np.array([[1, 3, 0], [0, 0, 0], [2, 2, 4]], dtype=np.float32))
    adata = AnnData(x)
    adata.var_names = ["A", "B", "C"]
    norm = normalized_expression(adata).toarray()
    np.testing.assert_allclose(norm, [[2500, 7500, 0], [0, 0, 0], [2500, 2500, 5000]])
    np.testing.assert_allclose(normalized_expression(adata, log1p=True).toarray(), np.log1p(norm), rtol=1e-6)
    e = entity_expression(norm, adata.var_names, ["A", "B_C"])
    np.testing.assert_allclose(e[:, 1], [0, 0, 2500])  # complex = minimum over its subunits
    adata.X = -x
    with pytest.raises(ValueError, match="negative values"):
        normalized_expression(adata)
    adata.X = x * 100
    with pytest.warns(UserWarning, match="unnormalised counts"):
        normalized_expression(adata, normalize=False)


def test_sample_negatives_random_and_expression_matched():
    pos = pd.DataFrame({"ligand": ["L1", "L1", "L2"], "receptor": ["R1", "R2", "R1"]})
    pool = [f"R{i}" for i in range(1, 41)]
    neg = sample_negatives(pos, pool, n_per_positive=3, seed=0)
    known = set(zip(pos["ligand"], pos["receptor"]))
    assert len(neg) == 9 and not (set(zip(neg["ligand"], neg["receptor"])) & known)
    assert neg.groupby("ligand")["receptor"].nunique().to_dict() == {"L1": 6, "L2": 3}  # distinct per ligand
    expr = pd.Series(np.arange(40, dtype=float), index=pool)  # R1 lowest ... R40 highest
    pos_hi = pd.DataFrame({"ligand": [f"L{i}" for i in range(20)], "receptor": ["R40"] * 20})
    matched = sample_negatives(pos_hi, pool, expression=expr, n_bins=10, seed=1)
    assert set(matched["receptor"]) <= {"R37", "R38", "R39"}  # top decile minus the partner


def test_training_finds_the_planted_signal(trained):
    adata, triples, model = trained
    assert model.is_trained and {"train_loss", "val_accuracy"} <= set(model.history.columns)
    pred = model.predict(labelled(triples[40:]))  # genes never seen in training
    assert roc_auc_score(pred["label"], pred["score"]) > 0.9
    assert pred["score"].between(0, 1).all()


def test_save_load_round_trip(trained, tmp_path):
    adata, triples, model = trained
    pairs = labelled(triples[40:])[["ligand", "receptor"]]
    model.save(tmp_path / "gcng")
    loaded = GCNG.load(tmp_path / "gcng", data=adata)
    # the pairs it was fit on travel with the model (ligand_receptor's in_training after load)
    pd.testing.assert_frame_equal(loaded.training_pairs, model.training_pairs.astype({"label": int}))
    np.testing.assert_allclose(loaded.predict(pairs)["score"], model.predict(pairs)["score"], rtol=1e-6)
    bare = GCNG.load(tmp_path / "gcng")
    with pytest.raises(ValueError, match="no data"):
        bare.predict(pairs)


def test_unlabelled_pairs_get_random_negatives(trained):
    adata, triples, _ = trained
    model = GCNG(adata, **FAST)
    table = model.training_table(pd.DataFrame({"ligand": [t[0] for t in triples], "receptor": [t[1] for t in triples]}))
    assert (table["label"] == 1).sum() == (table["label"] == 0).sum() == len(triples)
    negs = table[table["label"] == 0]
    assert not set(zip(negs["ligand"], negs["receptor"])) & {(t[0], t[1]) for t in triples}


def test_pairs_spelled_in_two_cases_are_one_pair_not_a_skipped_one(trained):
    """("L0", "R0") and ("l0", "r0") are one pair (genes match case-insensitively): one pair is skipped, not two.
    The skipped pairs are a warning (``warnings.warn``, which callers can catch), not only a log line."""
    import warnings

    _, _, model = trained
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = model.predict(pd.DataFrame({"ligand": ["L0", "l0", "NOPE"], "receptor": ["R0", "r0", "R1"]}))
    assert out[["ligand", "receptor"]].values.tolist() == [["L0", "R0"]]
    msgs = [str(w.message) for w in caught if issubclass(w.category, UserWarning) and "GCNG" in str(w.message)]
    assert msgs == ["GCNG: skipped 1 candidate pair(s) with genes absent from the data."]


def test_bad_input(trained):
    adata, triples, model = trained
    out = model.predict(pd.DataFrame({"ligand": ["L0", "NOPE"], "receptor": ["R0", "R1"]}))
    assert out[["ligand", "receptor"]].values.tolist() == [["L0", "R0"]]  # absent genes skipped
    with pytest.raises(ValueError, match="None of the"):
        model.predict(pd.DataFrame({"ligand": ["NOPE"], "receptor": ["R1"]}))
    with pytest.raises(ValueError, match="lacks required column"):
        model.predict(pd.DataFrame({"source": ["L0"], "target": ["R0"]}))
    with pytest.raises(ValueError, match="batch_size: expected a positive integer, got 0"):
        model.predict(pd.DataFrame({"ligand": ["L0"], "receptor": ["R0"]}), batch_size=0)
    with pytest.raises(ValueError, match="single class"):
        model.training_table(labelled(triples[:3]).assign(label=1))
    with pytest.raises(KeyError, match="gcng_exocrine"):
        GCNG.setup_anndata(adata, graph_key="gcng_exocrine")
    bad = adata.copy()
    bad.X = -bad.X
    with pytest.raises(ValueError, match="negative values"):
        GCNG.setup_anndata(bad)
    other = adata[:10].copy()
    with pytest.raises(ValueError, match="tied to the cell set"):
        model._validate_data(other)
    # an untrained model's scores would come from its random initial weights: an error, not scores
    with pytest.raises(RuntimeError, match="This GCNG is not trained"):
        GCNG(adata, **FAST).predict(pd.DataFrame({"ligand": ["L0"], "receptor": ["R0"]}))


def test_tool_writes_gcng_scores(trained):
    from scst.tl._ligrec import ligand_receptor

    adata, triples, model = trained
    pairs = labelled(triples)[["ligand", "receptor"]]  # 40 training ligands' pairs, 20 unseen ligands' pairs
    with pytest.warns(UserWarning, match="in-sample"):
        out = ligand_receptor(adata, model, pairs=pairs, method="gcng", n_perms=9, copy=True)
    res = out.uns["scst_ligrec"]
    expected = model.predict(pairs).set_index(["ligand", "receptor"])["score"]
    got = res.set_index(["ligand_complex", "receptor_complex"])
    np.testing.assert_allclose(got["gcng_score"], expected.loc[got.index], rtol=1e-6)
    # in_training: exactly the pairs the model was fit on (the labelled pairs of the first 40 triples)
    fit = {(lg, r) for lg, r, _ in triples[:40]} | {(lg, d) for lg, _, d in triples[:40]}
    assert got["in_training"].to_dict() == {p: p in fit for p in got.index}
    params = out.uns["scst_ligrec_params"]
    assert params["graph_key"] == "gcng_autocrine_plus" and params["n_in_training"] == 80
    assert params["gcng_mode"] == "model" and got["gcng_pvals"].between(0.1, 1).all()
    untrained = GCNG(adata, **FAST)
    with pytest.raises(ValueError, match="not trained"):
        ligand_receptor(adata, untrained, pairs=pairs, method="gcng")


def test_tool_cross_fits_gcng():
    from scst.tl._ligrec import ligand_receptor

    adata, triples = niche_data(n_pairs=45, seed=1)
    known = pd.DataFrame([(lg, r) for lg, r, _ in triples], columns=["ligand", "receptor"])
    cand = labelled(triples)[["ligand", "receptor"]]  # known pairs and decoys (L, D) that are not known
    ligand_receptor(adata, pairs=cand, known=known, method=["gcng", "expression"], n_folds=3, gcng_config=FAST,
                    n_perms=19, seed=0)  # fmt: skip
    res = adata.uns["scst_ligrec"]
    params = adata.uns["scst_ligrec_params"]
    # Known pairs are scored out-of-fold (never in training); decoys by the model on all known pairs, in training
    # exactly when drawn as one of its random negatives.
    is_known = res["receptor_complex"].str.startswith("R").to_numpy()
    assert params["gcng_mode"] == "cross-fitted" and not res.loc[is_known, "in_training"].any()
    assert params["n_in_training"] == res["in_training"].sum() > 0
    oof = res[is_known | ~res["in_training"]]
    assert roc_auc_score(oof["receptor_complex"].str.startswith("R"), oof["gcng_score"]) > 0.9
    assert abs(roc_auc_score(is_known, res["expression_score"]) - 0.5) < 0.25  # decoys are as abundant
    fit = params["gcng_fit"]
    assert list(fit["model"]) == ["fold 0", "fold 1", "fold 2", "all known pairs"]
    # Negatives (L, R') draw R' among all receptors: about half are other niche receptors, which no spatial model
    # can tell from true partners here, half are decoys; so train and held-out AUROC reach ≈ 0.75, not 1.
    assert (fit["train_auroc"] > 0.65).all() and (fit["heldout_auroc"].iloc[:3] > 0.65).all()
    assert {"val_auroc", "n_train_pairs", "n_val_pairs", "epochs"} <= set(fit.columns)
    assert res.loc[is_known, "gcng_pvals"].median() < 0.2  # planted niche: shuffling positions lowers the score
    with pytest.raises(ValueError, match="cannot fill"):
        ligand_receptor(adata, pairs=cand, known=known.iloc[:2], method="gcng", n_folds=3, gcng_config=FAST)


def test_gcng_pvalues_uniform_on_exchangeable_spots():
    """Spots i.i.d. within sections: out-of-fold GCNG scores are exchangeable with their shuffles."""
    from scipy.stats import kstest

    from scst.tl._ligrec import ligand_receptor

    rng = np.random.default_rng(3)
    n_side, n_pairs = 8, 60
    xy = np.array([(i, j) for i in range(n_side) for j in range(n_side)], float)
    mu = rng.lognormal(0.7, 0.8, 2 * n_pairs + 20)
    counts = rng.negative_binomial(2, 2 / (2 + mu), size=(2 * len(xy), len(mu))).astype(np.float32)
    adata = AnnData(sp.csr_matrix(counts), obsm={"spatial": np.vstack([xy, xy])})
    adata.var_names = [f"L{k}" for k in range(n_pairs)] + [f"R{k}" for k in range(n_pairs)] + [
        f"B{i}" for i in range(20)]  # fmt: skip
    adata.obs["section"] = np.repeat(["a", "b"], len(xy))
    cell_graph(adata, radius=1.1, library_key="section")
    pairs = pd.DataFrame({"ligand": [f"L{k}" for k in range(n_pairs)], "receptor": [f"R{k}" for k in range(n_pairs)]})
    ligand_receptor(adata, pairs=pairs, method="gcng", n_folds=3, gcng_config=FAST, n_perms=49, expr_prop=0.05)
    p = adata.uns["scst_ligrec"]["gcng_pvals"].to_numpy()
    assert len(p) >= 50 and kstest(p, "uniform").pvalue > 0.01 and 0.35 < p.mean() < 0.65


def test_pooled_readout_formula_and_invariances():
    torch.manual_seed(0)
    n = 9
    a = sp.random(n, n, density=0.4, random_state=2)
    g = torch.as_tensor(((a + a.T) > 0).toarray() + np.eye(n), dtype=torch.float32)
    net = GCNGNet(n, hidden_channels=5, dense_units=6, readout="pool", standardize=True)
    net.set_graph(g)
    x = torch.rand(4, n, 2) * torch.tensor([3.0, 50.0])
    out = net(x)
    c1, c2 = net.convs
    for b in range(4):  # standardise each signal over the cells, two convolutions, mean and max over the cells
        z = (x[b] - x[b].mean(0)) / x[b].std(0)
        z = torch.nn.functional.elu(g @ z @ c1.lin.weight.T + c1.lin.bias)
        z = torch.nn.functional.elu(g @ z @ c2.lin.weight.T + c2.lin.bias)
        h = torch.relu(net.dense(torch.cat([z.mean(0), z.max(0).values])))
        torch.testing.assert_close(out[b], net.out(h)[0], rtol=1e-5, atol=1e-5)
    # a gene's abundance (scale and offset of a channel) carries nothing; relabelling the cells changes nothing
    torch.testing.assert_close(net(x * torch.tensor([10.0, 0.1]) + 7.0), out, rtol=1e-4, atol=1e-4)
    perm = torch.randperm(n)
    torch.testing.assert_close(net(x[:, perm], g[perm][:, perm]), out, rtol=1e-5, atol=1e-5)
    # not tied to a cell set: another graph size works; the paper's flatten refuses it
    assert net(torch.rand(2, 4, 2), torch.eye(4)).shape == (2,)
    with pytest.raises(ValueError, match=r"expected shape \(9, 9\)"):
        GCNGNet(n, readout="flatten").set_graph(torch.eye(4))
    with pytest.raises(ValueError, match="readout"):
        GCNGNet(n, readout="sum")


def juxtacrine_data(n_side: int, n_pairs: int, seed: int) -> tuple[AnnData, pd.DataFrame]:
    """Each pair has its own random senders of L; R rises in cells *next to* a sender, the decoy D next to other,
    unmeasured senders with the same abundance — only the L–R arrangement separates positives from decoys."""
    rng = np.random.default_rng(seed)
    xy = np.array([(i, j) for i in range(n_side) for j in range(n_side)], float)
    adj = sp.csr_matrix((np.abs(xy[:, None] - xy[None]).sum(-1) == 1).astype(float))
    cols, names, rows = [], [], []
    for k in range(n_pairs):
        send, hidden = rng.random(len(xy)) < 0.1, rng.random(len(xy)) < 0.1
        mu_l, mu_r = rng.lognormal(1.0, 0.5), rng.lognormal(0.5, 0.5)
        near_s, near_h = (adj @ send) > 0, (adj @ hidden) > 0
        cols += [rng.poisson(mu_l * np.where(send, 1.0, 0.05)), rng.poisson(mu_r * (1 + 4 * near_s)),
                 rng.poisson(mu_r * (1 + 4 * near_h))]  # fmt: skip
        names += [f"L{k}", f"R{k}", f"D{k}"]
        rows += [(f"L{k}", f"R{k}", 1), (f"L{k}", f"D{k}", 0)]
    labels = pd.DataFrame(rows, columns=["ligand", "receptor", "label"])
    return grid_adata(xy, cols, names, rng, n_background=20), labels


def test_pooled_gcng_learns_juxtacrine_pairs_on_unseen_genes_and_other_tissue(tmp_path):
    adata, pairs = juxtacrine_data(n_side=16, n_pairs=60, seed=0)
    train, held = pairs.iloc[:80], pairs.iloc[80:]  # 40 pairs (+ decoys) to train, 20 ligands never seen
    GCNG.setup_anndata(adata, graph_key="gcng_autocrine_plus")
    model = GCNG(adata, **{**GCNG.pooled_config, "max_epochs": 60, "patience": 60})
    model.train(train, validation=None, enable_progress_bar=False, accelerator="cpu")
    pred = model.predict(held)
    assert roc_auc_score(pred["label"], pred["score"]) > 0.85
    assert roc_auc_score(held["label"], adata[:, held["receptor"]].X.mean(0).A1) < 0.75  # abundance alone does not
    # The pooled network is not tied to its cells: the saved model scores another tissue (other size, other pairs).
    model.save(tmp_path / "pooled")
    other, other_pairs = juxtacrine_data(n_side=14, n_pairs=20, seed=1)
    moved = GCNG.load(tmp_path / "pooled", data=other)
    pred = moved.predict(other_pairs)
    assert roc_auc_score(pred["label"], pred["score"]) > 0.85
    # the tool scores the other tissue with the model trained on the first (which keeps its own data)
    from scst.tl._ligrec import ligand_receptor

    with pytest.warns(UserWarning, match="in-sample"):  # same gene names as training pairs: flagged
        out = ligand_receptor(other, model, pairs=other_pairs[["ligand", "receptor"]], method="gcng", n_perms=9,
                              expr_prop=0.0, copy=True)  # fmt: skip
    got = out.uns["scst_ligrec"].set_index(["ligand_complex", "receptor_complex"])["gcng_score"]
    want = pred.set_index(["ligand", "receptor"])["score"]
    np.testing.assert_allclose(got.loc[want.index], want, rtol=1e-5)
    assert model.adata is adata


def test_pooled_model_loaded_on_another_section_registers_that_sections_cells(tmp_path):
    """load(data=other) writes the saved setup to an unset other section with *its* cells, so that a model built on
    it afterwards (here the paper's flatten network) fits its graph, not the training section's cell count."""
    a, _ = niche_data(n_side=3, n_pairs=2, seed=0)
    b, _ = niche_data(n_side=4, n_pairs=2, seed=1)
    GCNG.setup_anndata(a, graph_key="gcng_autocrine_plus")
    GCNG(a, **{**FAST, "readout": "pool", "hidden_channels": 4, "dense_units": 4}).save(tmp_path / "m")
    loaded = GCNG.load(tmp_path / "m", data=b)
    assert loaded.adata is b and GCNG._read_registry(b)["n_obs"] == b.n_obs == 16
    assert GCNG._read_registry(b)["obs_names"] == list(b.obs_names)
    assert GCNG._read_registry(a)["n_obs"] == 9 and loaded.registry["n_obs"] == 9  # the model's own: as saved
    assert GCNG(b, **FAST).module.n_nodes == 16


def test_a_permuted_or_subset_copy_of_set_up_data_registers_its_own_cells(tmp_path):
    """``adata[perm].copy()`` keeps the parent's setup (``uns``): a flatten model built on it recorded the parent's
    cell order, so loading it on the parent passed silently (its per-cell weights meeting other cells) and on its own
    data warned; a subset failed on the graph shape. Now the registry names the data's own cells."""
    a, _ = niche_data(n_side=3, n_pairs=2, seed=0)
    GCNG.setup_anndata(a, graph_key="gcng_autocrine_plus")
    perm = np.random.default_rng(0).permutation(a.n_obs)
    b = a[perm].copy()
    small = {**FAST, "hidden_channels": 4, "dense_units": 4}
    model = GCNG(b, **small)
    assert model.registry["obs_names"] == list(b.obs_names) == GCNG._read_registry(b)["obs_names"]
    model.save(tmp_path / "m")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        GCNG.load(tmp_path / "m", data=b)  # its own cells: no warning
    with pytest.warns(UserWarning, match="other obs_names"):
        GCNG.load(tmp_path / "m", data=a)  # the same cells in another order: the flatten layer would mix them
    # a pooled model loaded on a permuted copy without setup writes that copy's cells, not the saved order
    pooled = GCNG(a, **{**small, "readout": "pool"})
    pooled.save(tmp_path / "p")
    c = a[perm].copy()
    del c.uns["_scst_setup"]
    GCNG.load(tmp_path / "p", data=c)
    assert GCNG._read_registry(c)["obs_names"] == list(c.obs_names)
    assert GCNG(a[:5].copy(), **small).module.n_nodes == 5


def test_validation_split_follows_the_config_unless_train_overrides_it():
    adata, triples = niche_data(n_pairs=20)
    GCNG.setup_anndata(adata, graph_key="gcng_autocrine_plus")
    pairs, cfg = labelled(triples), {**FAST, "max_epochs": 1, "patience": 1}
    paper_split = GCNG(adata, **cfg).train(pairs, enable_progress_bar=False, accelerator="cpu")
    assert 0 < len(paper_split._val_split) < len(pairs)  # the paper's 20 % of the ligands (default config)
    val_lig = set(paper_split._val_split["ligand"])
    assert val_lig.isdisjoint(paper_split._train_split["ligand"])
    no_split = GCNG(adata, **{**cfg, "validation": 0.0}).train(pairs, enable_progress_bar=False, accelerator="cpu")
    assert no_split._val_split is None and len(no_split._train_split) == len(pairs)  # bench_config's setting
    assert GCNG.bench_config["validation"] == 0.0 and "validation" not in GCNG.fast_config
    overridden = GCNG(adata, **{**cfg, "validation": 0.0}).train(pairs, validation=0.2, enable_progress_bar=False,
                                                                  accelerator="cpu")  # fmt: skip
    assert set(overridden._val_split["ligand"]) == val_lig  # same seed, same split as the default
    with pytest.raises(ValueError, match="validation: expected a fraction"):
        GCNG(adata, **cfg).train(pairs, validation="C2", enable_progress_bar=False)


def test_a_single_ligand_cannot_be_split_for_validation_and_says_so():
    """Validation holds out whole ligands: with one ligand the run trained without early stopping, said only in an
    info log."""
    adata, triples = niche_data(n_pairs=4)
    GCNG.setup_anndata(adata, graph_key="gcng_autocrine_plus")
    one = labelled([(triples[0][0], r, d) for _, r, d in triples])  # L0 with every receptor and decoy
    cfg = {**FAST, "max_epochs": 1, "patience": 1}
    with pytest.warns(UserWarning, match="validation: the training pairs have a single ligand \\('L0'\\)"):
        model = GCNG(adata, **cfg).train(one, enable_progress_bar=False, accelerator="cpu")
    assert model._val_split is None and len(model._train_split) == len(one)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="validation:")
        GCNG(adata, **cfg).train(one, validation=0, enable_progress_bar=False, accelerator="cpu")


def test_dataloader_kwargs_are_refused_not_dropped():
    adata, triples = niche_data(n_pairs=4)
    GCNG.setup_anndata(adata, graph_key="gcng_autocrine_plus")
    with pytest.raises(TypeError, match=r"Unexpected dataloader_kwargs \['num_workers'\] for GCNG"):
        GCNG(adata, **FAST).train(labelled(triples), dataloader_kwargs={"num_workers": 2}, enable_progress_bar=False)


def test_given_model_implies_gcng_and_is_never_ignored(trained):
    """A trained model scores with GCNG when ``method`` is left unset; an explicit method list without "gcng" that
    would silently drop the model is an error naming both arguments."""
    from scst.tl._ligrec import ligand_receptor

    adata, triples, model = trained
    pairs = labelled(triples)[["ligand", "receptor"]]
    with pytest.warns(UserWarning, match="in-sample"):
        out = ligand_receptor(adata, model, pairs=pairs, n_perms=0, expr_prop=0.0, copy=True)
    res = out.uns["scst_ligrec"].set_index(["ligand_complex", "receptor_complex"])
    assert out.uns["scst_ligrec_params"]["methods"] == ["gcng"] and "spatial_pearson_score" not in res
    want = model.predict(pairs).set_index(["ligand", "receptor"])["score"]
    np.testing.assert_allclose(res["gcng_score"], want.loc[res.index], rtol=1e-6)
    for method in ("spatial_pearson", ["pearson", "expression"]):
        with pytest.raises(ValueError, match=r"model: .*method=.*does not include 'gcng'"):
            ligand_receptor(adata, model, pairs=pairs, method=method, n_perms=0, copy=True)
    with pytest.raises(TypeError, match="scst.models.GCNG"):
        ligand_receptor(adata, object(), pairs=pairs, n_perms=0, copy=True)
    # without a model the default stays spatial Pearson
    out = ligand_receptor(adata, pairs=pairs, n_perms=0, expr_prop=0.0, copy=True)
    assert out.uns["scst_ligrec_params"]["methods"] == ["spatial_pearson"]


def test_given_model_with_cross_fitting_settings_is_an_error(trained):
    """``known``, ``gcng_config`` and ``train_kwargs`` only set up the cross-fitting that a given model replaces:
    they were silently ignored."""
    from scst.tl._ligrec import ligand_receptor

    adata, triples, model = trained
    pairs = labelled(triples)[["ligand", "receptor"]]
    for kw in ({"known": pairs}, {"gcng_config": GCNG.fast_config}, {"train_kwargs": {"max_epochs": 1}}):
        with pytest.raises(ValueError, match=f"{next(iter(kw))}: set how GCNG is cross-fitted here"):
            ligand_receptor(adata, model, pairs=pairs, n_perms=0, expr_prop=0.0, **kw)
    assert "scst_ligrec" not in adata.uns


def test_tool_null_of_a_given_model_shuffles_cells_within_sections(trained, monkeypatch):
    """With a model, each permutation re-scores the pairs on cells shuffled within their section (``obs``
    ``section``, found by ``groups_key="auto"``): a recording wrapper of ``predict`` sees every cell order."""
    from scst.tl._ligrec import ligand_receptor

    adata, triples, model = trained
    data = adata.copy()
    data.obs["section"] = np.where(np.arange(data.n_obs) < 32, "a", "b")
    orders, real = [], model.predict

    def recording(pairs, *args, cell_order=None, **kwargs):
        if cell_order is not None:
            orders.append(np.asarray(cell_order).copy())
        return real(pairs, *args, cell_order=cell_order, **kwargs)

    monkeypatch.setattr(model, "predict", recording)
    pairs = labelled(triples[40:45])[["ligand", "receptor"]]  # ligands the model was not fit on
    ligand_receptor(data, model, pairs=pairs, n_perms=5, expr_prop=0.0)
    assert len(orders) == 5 and data.uns["scst_ligrec_params"]["groups_key"] == "section"
    for order in orders:
        assert sorted(order[:32]) == list(range(32)) and sorted(order[32:]) == list(range(32, 64))
    assert any((order != np.arange(64)).any() for order in orders)


def test_tool_scores_of_a_given_model_do_not_depend_on_the_cell_order(trained):
    """The model's cells in another order (``adata[perm].copy()``, e.g. sorted by section): the flatten layer
    weighted each cell by its row, so the GCNG scores and p-values changed (with a warning about other obs_names).
    Now the cells are scored in the model's order: the same values."""
    from scst.tl._ligrec import ligand_receptor

    adata, triples, model = trained
    data = adata.copy()
    data.obs["section"] = np.where(np.arange(data.n_obs) < 32, "a", "b")
    pairs = labelled(triples[40:48])[["ligand", "receptor"]]
    ref = ligand_receptor(data, model, pairs=pairs, n_perms=9, expr_prop=0.0, copy=True).uns["scst_ligrec"]
    perm = np.random.default_rng(3).permutation(data.n_obs)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        got = ligand_receptor(data[perm].copy(), model, pairs=pairs, n_perms=9, expr_prop=0.0, copy=True)
    got = got.uns["scst_ligrec"].set_index(["ligand_complex", "receptor_complex"])
    ref = ref.set_index(["ligand_complex", "receptor_complex"])
    for col in ("gcng_score", "gcng_pvals"):
        np.testing.assert_allclose(got.loc[ref.index, col], ref[col], rtol=1e-6, err_msg=col)
    assert model.adata is adata


def test_duplicate_var_names_are_a_clear_error():
    adata, triples = niche_data(n_pairs=4)
    names = list(adata.var_names)
    names[-1] = names[0]  # a background gene renamed L0: "L0" is ambiguous
    adata.var_names = names
    with pytest.raises(ValueError, match=r"var_names: 1 gene name.*\['L0'\].*var_names_make_unique"):
        GCNG.setup_anndata(adata, graph_key="gcng_autocrine_plus")
    adata.var_names_make_unique()
    GCNG.setup_anndata(adata, graph_key="gcng_autocrine_plus")  # the suggested fix works


def test_bad_values_missing_subunits_and_non_integer_counts():
    adata = AnnData(sp.csr_matrix(np.array([[1, 3, 0], [2, 2, 4]], dtype=np.float32)))
    adata.var_names = ["A", "B", "C"]
    adata.X = adata.X.toarray()
    adata.X[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN or infinite"):
        normalized_expression(adata)
    adata.X[0, 0] = np.inf
    with pytest.raises(ValueError, match="NaN or infinite"):
        normalized_expression(adata)
    adata.X[0, 0] = 0.5
    with pytest.warns(UserWarning, match="not integer counts"):
        normalized_expression(adata)
    norm = normalized_expression(adata, normalize=False)
    with pytest.raises(KeyError, match=r"not in var_names: \['D'\]"):
        entity_expression(norm, adata.var_names, ["A", "B_D"])
    e = entity_expression(norm, adata.var_names, ["B", "A", "B"])  # an entity asked twice gets two columns
    np.testing.assert_allclose(e, norm.toarray()[:, [1, 0, 1]])


def test_sample_negatives_edge_cases_by_hand():
    pool = ["R1", "R2", "R3", "R4"]
    # `known` adds to the positives: neither another positive of the ligand nor a known pair is a negative
    pos = pd.DataFrame({"ligand": ["L1", "L1"], "receptor": ["R1", "R2"]})
    neg = sample_negatives(pos, pool, known=pd.DataFrame({"ligand": ["L1"], "receptor": ["R3"]}), n_per_positive=3)
    assert neg["receptor"].tolist() == ["R4"] * 6 and neg["partner"].tolist() == ["R1"] * 3 + ["R2"] * 3
    # more negatives than valid receptors: each valid receptor once, then repeats
    neg = sample_negatives(pos.iloc[:1], pool[:3], n_per_positive=4, seed=0)
    assert len(neg) == 4 and set(neg["receptor"].iloc[:2]) == {"R2", "R3"} and set(neg["receptor"]) == {"R2", "R3"}


def test_expression_matched_negatives_bins_outside_partners_and_fallback():
    pool = [f"R{i}" for i in range(1, 41)]
    expr = pd.Series(np.arange(40, dtype=float), index=pool)  # R1 lowest ... R40 highest; bins of 4
    ligands = [f"L{i}" for i in range(30)]
    # the lowest partner: its bin is R1-R4
    low = sample_negatives(pd.DataFrame({"ligand": ligands, "receptor": "R1"}), pool, expression=expr, seed=0)
    assert set(low["receptor"]) == {"R2", "R3", "R4"}
    # a partner outside the pool is placed by its expression (35.5: above 36 receptors, so in the top bin)
    out = sample_negatives(pd.DataFrame({"ligand": ligands, "receptor": "RX"}), pool,
                           expression=pd.concat([expr, pd.Series({"RX": 35.5})]), seed=0)  # fmt: skip
    assert set(out["receptor"]) == {"R37", "R38", "R39", "R40"}
    # every receptor of the partner's bin is a known partner: the 4 nearest valid ranks instead
    known = pd.DataFrame(
        [(lg, r) for lg in ligands for r in ("R37", "R38", "R39", "R40")], columns=["ligand", "receptor"]
    )
    near = sample_negatives(pd.DataFrame({"ligand": ligands, "receptor": "R40"}), pool, known=known, expression=expr,
                            seed=0)  # fmt: skip
    assert set(near["receptor"]) == {"R33", "R34", "R35", "R36"}


def test_network_sees_ligand_then_receptor_as_configured_and_cell_orders():
    """Recording stub: channel 0 is the ligand, channel 1 the receptor, from the registered layer scaled as
    configured; ``cell_order`` gives cell i both genes of cell ``order[i]``, ``ligand_only`` the ligand's only.
    The model's graph is the registered matrix as given (a directed one here), not its transpose."""
    adata, _ = niche_data(n_side=4, n_pairs=3)
    counts = adata.X.toarray().astype(np.float64)
    adata.layers["counts"] = adata.X.copy()
    adata.X = sp.csr_matrix(counts[:, ::-1])  # not the layer that is registered
    n = adata.n_obs
    directed = sp.random(n, n, density=0.3, random_state=0, format="csr", dtype=np.float32)
    adata.obsp["directed"] = directed
    GCNG.setup_anndata(adata, graph_key="directed", layer="counts")
    model = GCNG(adata, **{**FAST, "log1p": True, "target_sum": 100.0})
    model._is_trained = True  # predict refuses untrained models; the inputs of the network are checked here
    np.testing.assert_allclose(model.module.graph.to_dense().numpy(), directed.toarray(), rtol=1e-6)
    seen = []

    def record(x):
        seen.append(x.clone())
        return torch.full(x.shape[:1], 0.5)

    model.module.predict_proba = record
    expr = np.log1p(counts / counts.sum(1, keepdims=True) * 100)
    col = {g: i for i, g in enumerate(adata.var_names)}
    pairs = pd.DataFrame({"ligand": ["L0", "L1", "R2"], "receptor": ["R0", "D2", "L2"]})
    perm = np.random.default_rng(0).permutation(n)
    for order, ligand_only in [(None, False), (perm, False), (perm, True)]:
        seen.clear()
        model.predict(pairs, cell_order=order, ligand_only=ligand_only)
        x = torch.cat(seen).numpy()
        lig_cells = np.arange(n) if order is None else order
        rec_cells = np.arange(n) if order is None or ligand_only else order
        for b, (lig, rec) in enumerate(zip(pairs["ligand"], pairs["receptor"])):
            np.testing.assert_allclose(x[b, :, 0], expr[lig_cells, col[lig]], rtol=1e-5)
            np.testing.assert_allclose(x[b, :, 1], expr[rec_cells, col[rec]], rtol=1e-5)
    with pytest.raises(ValueError, match="permutation"):
        model.predict(pairs, cell_order=np.zeros(n, dtype=int))
    with pytest.raises(ValueError, match="ligand_only: .* pass `cell_order` too"):  # not the unshuffled scores
        model.predict(pairs, ligand_only=True)
    # normalize=False: the registered values as they are
    adata.layers["norm"] = sp.csr_matrix(expr)
    GCNG.setup_anndata(adata, graph_key="directed", layer="norm", normalize=False)
    model = GCNG(adata, **{**FAST, "log1p": False})
    model._is_trained = True
    model.module.predict_proba = record
    seen.clear()
    model.predict(pairs.iloc[:1])
    np.testing.assert_allclose(seen[0][0].numpy(), expr[:, [col["L0"], col["R0"]]], rtol=1e-5)


def test_train_passes_the_paper_patience_and_validation_mode(monkeypatch):
    from scst.models._base import BaseModel

    adata, triples = niche_data(n_side=4, n_pairs=6)
    GCNG.setup_anndata(adata, graph_key="gcng_autocrine_plus")
    calls = []
    monkeypatch.setattr(BaseModel, "train", lambda self, **kw: calls.append(kw) or self)
    model = GCNG(adata, **FAST)
    model.train(labelled(triples), max_epochs=10)
    assert (calls[-1]["max_epochs"], calls[-1]["patience"], calls[-1]["validation"]) == (10, 5, 0.2)
    model.train(labelled(triples), max_epochs=10, patience=7, validation=None)
    assert (calls[-1]["patience"], calls[-1]["validation"]) == (7, 0.0)
    model.train(labelled(triples[:4]), validation=labelled(triples[4:]))  # given validation pairs
    assert calls[-1]["validation"] == -1.0 and set(model._val_table["ligand"]) == {"L4", "L5"}
    for bad in (1, 1.5, -0.1):
        with pytest.raises(ValueError, match="validation: expected a fraction"):
            model.train(labelled(triples), validation=bad)
    # validation pairs that are also training pairs: early stopping on fit, said
    with pytest.warns(UserWarning, match="validation: 2 of its 4 pairs are also training pairs"):
        model.train(labelled(triples[:4]), validation=labelled(triples[3:5]))
    # errors in given validation pairs name `validation`, not `pairs`
    with pytest.raises(ValueError, match=r"^validation\['label'\] has a single class"):
        model.train(labelled(triples[:4]), validation=labelled(triples[4:]).assign(label=1))
    with pytest.raises(ValueError, match=r"None of the 1 validation pairs \(`validation`\)"):
        model.train(labelled(triples[:4]), validation=pd.DataFrame({"ligand": ["NOPE"], "receptor": ["R0"]}))
    with pytest.raises(ValueError, match="`validation` lacks required column"):
        model.train(labelled(triples[:4]), validation=pd.DataFrame({"source": ["L4"], "target": ["R4"]}))


def test_validation_split_takes_whole_ligands_up_to_the_fraction():
    adata, triples = niche_data(n_side=4, n_pairs=10)
    GCNG.setup_anndata(adata, graph_key="gcng_autocrine_plus")
    model = GCNG(adata, **FAST)
    table = labelled(triples)  # 10 ligands with 2 pairs each
    train, val = model._split(table, 0.2, seed=0)
    assert len(val) == 4 and val["ligand"].nunique() == 2  # 20 % of the pairs, whole ligands
    assert set(val["ligand"]).isdisjoint(train["ligand"]) and len(train) + len(val) == len(table)
    train, val = model._split(labelled(triples[:2]), 0.9, seed=0)  # one ligand always stays to train on
    assert train["ligand"].nunique() == val["ligand"].nunique() == 1
    # a split that leaves one class to train on is an error, not a silent one-class fit
    one_class = pd.DataFrame({"ligand": ["L0", "L1"], "receptor": ["R0", "D1"], "label": [1, 0]})
    with pytest.raises(ValueError, match="training split has a single class"):
        GCNG(adata, **FAST).train(one_class, validation=0.2, enable_progress_bar=False, accelerator="cpu")


def test_training_table_seed_receptors_and_labels():
    adata, triples = niche_data(n_side=4, n_pairs=12)
    GCNG.setup_anndata(adata, graph_key="gcng_autocrine_plus")
    model = GCNG(adata, **FAST)
    pos = pd.DataFrame({"ligand": [t[0] for t in triples], "receptor": [t[1] for t in triples]})
    for seed in (1, 2):
        got = model.training_table(pos, seed=seed)
        want = sample_negatives(pos, pos["receptor"], seed=seed)
        assert (
            got.loc[got["label"] == 0, ["ligand", "receptor"]].values.tolist()
            == want[["ligand", "receptor"]].values.tolist()
        )
    decoys = [t[2] for t in triples]
    got = model.training_table(pos, receptors=[*decoys, "NOPE"])
    assert set(got.loc[got["label"] == 0, "receptor"]) <= set(decoys)
    with pytest.raises(ValueError, match="must be 0 or 1"):
        model.training_table(labelled(triples).assign(label=[2] + [1] * 11 + [0] * 12))
    # a pair given twice with both labels (here in two cases) is an error, not one label kept silently
    clash = pd.concat([labelled(triples), pd.DataFrame({"ligand": ["l0"], "receptor": ["r0"], "label": [0]})])
    with pytest.raises(ValueError, match=r"pairs\['label'\]: 1 pair\(s\) are labelled both 1 and 0 .*'l0', 'r0'"):
        model.training_table(clash)
    repeated = pd.concat([labelled(triples), labelled(triples[:1])])  # the same label twice: one row kept
    assert len(model.training_table(repeated)) == len(labelled(triples))
    other = adata.copy()
    other.obs_names = [f"cell{i}" for i in range(other.n_obs)]
    with pytest.warns(UserWarning, match="other obs_names"):
        model._validate_data(other)


def test_config_reaches_the_network_and_training_order_is_shuffled_by_seed():
    adata, triples = niche_data(n_side=4, n_pairs=8)
    GCNG.setup_anndata(adata, graph_key="gcng_autocrine_plus")
    cfg = {**FAST, "readout": "pool", "standardize": True, "dropout": 0.3, "n_layers": 3, "hidden_channels": 6}
    net = GCNG(adata, **cfg).module
    assert (net.readout, net.standardize, net.dropout.p, len(net.convs)) == ("pool", True, 0.3, 3)
    assert net.convs[-1].out_channels == 6 and net.dense.out_features == FAST["dense_units"]
    model = GCNG(adata, **FAST)
    model._fit_table, model._val_table = labelled(triples), None
    epochs = []
    for seed in (0, 0, 1):
        train_dl, val_dl = model._dataloaders(batch_size=4, validation=0.0, seed=seed)
        assert val_dl is None
        epochs.append([torch.cat([y for _, y in train_dl]) for _ in range(2)])
    ordered = torch.as_tensor(labelled(triples)["label"].to_numpy(), dtype=torch.float32)
    for first, second in epochs:
        assert torch.equal(first.sort().values, ordered.sort().values)  # every pair once per epoch
        assert not torch.equal(first, ordered) and not torch.equal(first, second)  # shuffled, anew each epoch
    assert torch.equal(epochs[0][0], epochs[1][0]) and not torch.equal(epochs[0][0], epochs[2][0])  # by the seed


def test_given_validation_pairs_are_saved_as_fit_pairs(tmp_path):
    adata, triples = niche_data(n_side=4, n_pairs=6)
    GCNG.setup_anndata(adata, graph_key="gcng_autocrine_plus")
    model = GCNG(adata, **{**FAST, "max_epochs": 1, "patience": 1})
    model.train(labelled(triples[:4]), validation=labelled(triples[4:]), enable_progress_bar=False,
                accelerator="cpu")  # fmt: skip
    assert len(model.training_pairs) == 12 and set(model.training_pairs["ligand"]) == {f"L{k}" for k in range(6)}
    model.save(tmp_path / "m")
    loaded = GCNG.load(tmp_path / "m", data=adata)
    pd.testing.assert_frame_equal(loaded.training_pairs, model.training_pairs.astype({"label": int}))


def test_untrained_model_input_checks_name_the_argument():
    """Before training: no training pairs (an empty table with the columns) and ``_dataloaders`` asks for them; setup
    takes an AnnData; negatives need an expression value per receptor and a
    receptor that is no known partner."""
    adata, triples = niche_data(n_side=4, n_pairs=4)
    GCNG.setup_anndata(adata, graph_key="gcng_autocrine_plus")
    model = GCNG(adata, **FAST)
    empty = model.training_pairs
    assert empty.empty and list(empty.columns) == ["ligand", "receptor", "label"]
    with pytest.raises(RuntimeError, match=r"Call `GCNG.train\(pairs\)`: the training pairs are given to `train`"):
        model._dataloaders(8, None, 0)
    with pytest.raises(TypeError, match="`adata` must be an AnnData, got ndarray"):
        GCNG.setup_anndata(adata.X.toarray())
    pos = pd.DataFrame({"ligand": ["L0"], "receptor": ["R0"]})
    with pytest.raises(KeyError, match=r"expression: no value for receptor\(s\) \['R1'\]"):
        sample_negatives(pos, ["R0", "R1"], expression=pd.Series({"R0": 1.0}))
    with pytest.raises(ValueError, match="pairs: no negative pair could be drawn: every candidate receptor is a known"):
        model.training_table(pos, receptors=["R0"])


def test_a_table_of_zeros_normalises_to_zeros_and_data_not_set_up_is_named():
    """A sparse table with no stored values has nothing to check (no NaN, negatives or non-integers) and
    normalises to zeros; a GCNG on a table never set up says which call sets it up."""
    adata = AnnData(sp.csr_matrix((3, 2), dtype=np.float32))
    norm = normalized_expression(adata)
    assert norm.shape == (3, 2) and norm.nnz == 0
    with pytest.raises(ValueError, match=r"`data` is not set up for GCNG; call `scst.models.GCNG.setup_anndata\("):
        GCNG(adata)


def test_tool_scores_in_place_on_the_models_own_table_and_with_a_model_loaded_without_data(trained, tmp_path):
    """``ligand_receptor`` on the very table the model was set up on (in place, no copy) scores without re-attaching
    it; a model loaded without data is attached to the table for the call and left without data afterwards. Both
    give the scores of the trained model."""
    from scst.tl._ligrec import ligand_receptor

    adata, triples, model = trained
    pairs = labelled(triples[40:46])[["ligand", "receptor"]]
    want = model.predict(pairs).set_index(["ligand", "receptor"])["score"]
    uns, obsp = set(adata.uns), set(adata.obsp)
    try:
        ligand_receptor(adata, model, pairs=pairs, n_perms=0, expr_prop=0.0)
        got = adata.uns["scst_ligrec"].set_index(["ligand_complex", "receptor_complex"])["gcng_score"]
    finally:
        for key in set(adata.uns) - uns:
            del adata.uns[key]
        for key in set(adata.obsp) - obsp:
            del adata.obsp[key]
    np.testing.assert_allclose(got, want.loc[got.index], rtol=1e-6)
    assert model.adata is adata
    model.save(tmp_path / "gcng")
    bare = GCNG.load(tmp_path / "gcng")
    out = ligand_receptor(adata.copy(), bare, pairs=pairs, n_perms=0, expr_prop=0.0, copy=True)
    got = out.uns["scst_ligrec"].set_index(["ligand_complex", "receptor_complex"])["gcng_score"]
    np.testing.assert_allclose(got, want.loc[got.index], rtol=1e-6)
    assert bare.adata is None and bare.data is None


def test_cross_fitting_candidates_without_known_pairs_are_all_scored_by_the_model_on_all_known_pairs():
    """Candidates that hold no known pair (only decoys here): no fold model scores anything, every candidate gets
    the score of the model fit on all known pairs (``model`` = n_folds)."""
    from scst.tl._ligrec_gcng import gcng_scores

    adata, triples = niche_data(n_side=6, n_pairs=9, seed=2)
    known = pd.DataFrame([(lg, r) for lg, r, _ in triples], columns=["ligand", "receptor"])
    decoys = pd.DataFrame([(lg, d) for lg, _, d in triples], columns=["ligand", "receptor"])
    res = gcng_scores(adata, decoys, known, graph_key="gcng_autocrine_plus", n_folds=3,
                      config={**FAST, "max_epochs": 2}, seed=0)  # fmt: skip
    assert (res.table["model"] == 3).all() and len(res.models) == 4
    want = res.models[-1].predict(decoys)["score"].to_numpy()
    np.testing.assert_allclose(res.table["score"].to_numpy(), want, rtol=1e-6)


def test_graph_tensor_does_not_show_torchs_beta_notice():
    """Every GCNG call printed torch's "Sparse CSR tensor support is in beta" UserWarning (nothing a user can act on).

    torch warns once per process, so the check runs in a fresh one (an earlier test may have used up the warning).
    """
    import subprocess
    import sys

    code = (
        "import warnings, scipy.sparse as sp\n"
        "from scst.models._gcng import _to_torch_sparse\n"
        "warnings.simplefilter('error', UserWarning)\n"
        "t = _to_torch_sparse(sp.csr_matrix([[0, 2.0], [1.0, 0]]))\n"
        "assert t.to_dense().tolist() == [[0, 2.0], [1.0, 0]], t\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
