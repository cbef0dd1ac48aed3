"""scst.tl.retrieve / embed / gene_importance on small MuData with known answers (chances, unpaired data, checks)."""

from __future__ import annotations

import itertools
import warnings

import anndata as ad
import mudata as md
import numpy as np
import pandas as pd
import pytest
import torch
from test_multimodal import SMALL, synthetic_mudata  # tests/models is on pytest's pythonpath (pyproject.toml)

import scst
from scst.models import MultimodalST

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _linked_mudata(links, n_rna, seed=0):
    """``n_rna`` RNA samples s0.. and one patch per entry of ``links`` (its RNA sample, or None); random embeddings
    ``obsm["E"]``; labels a/b alternating on both sides."""
    rng = np.random.default_rng(seed)
    names = [f"s{i}" for i in range(n_rna)]
    rna = ad.AnnData(np.zeros((n_rna, 1), np.float32), obs=pd.DataFrame(index=names))
    image = ad.AnnData(
        np.zeros((len(links), 1), np.float32),
        obs=pd.DataFrame({"rna_sample": pd.Series(links, dtype=object).to_numpy()},
                         index=[f"p{i}" for i in range(len(links))]),
    )  # fmt: skip
    rna.obsm["E"] = rng.normal(size=(n_rna, 4)).astype(np.float32)
    image.obsm["E"] = rng.normal(size=(len(links), 4)).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return md.MuData({"rna": rna, "image": image})


def test_exact_chance_of_rna_queries_is_that_of_a_random_ranking():
    """RNA queries: a hit is any patch linked to the query sample. With 1, 2 and 3 patches for s0, s1, s2 (s3 has
    none: unpaired, left out) among 7 patches (one unlinked), the chances are those of a uniformly random ranking,
    enumerated here over every top-1 and every top-2 set; image queries keep 1/n and k/n."""
    links = ["s0", "s1", "s1", "s2", "s2", "s2", None]
    mdata = _linked_mudata(links, n_rna=4)
    res = scst.tl.retrieve(mdata, None, query="rna", k=2, use_rep="E", group_keys=[])
    n_t, link = len(links), np.array(links, dtype=object)
    paired = ["s0", "s1", "s2"]
    top1 = np.mean([np.mean([link[i] == q for i in range(n_t)]) for q in paired])
    pairs = list(itertools.combinations(range(n_t), 2))
    top2 = np.mean([np.mean([(link[list(c)] == q).any() for c in pairs]) for q in paired])
    assert res["n_paired"] == 3 and res["n_target"] == 7
    assert top1 == pytest.approx(6 / 21) and top2 == pytest.approx((6 + 11 + 15) / 63)  # m_q / 7 and 1 - C(7-m_q,2)/21
    assert res["chance_exact_top1"] == pytest.approx(top1)
    assert res["chance_exact_topk"] == pytest.approx(top2)
    # the hits themselves: s_q is hit when one of its patches is among its top 2
    want = [(link[res["indices"][i]] == q).any() for i, q in enumerate(paired)]
    assert res["exact_topk"] == pytest.approx(np.mean(want))
    # image queries: one linked RNA sample each, chance 1/n and k/n of the 4 RNA samples (unchanged)
    img = scst.tl.retrieve(mdata, None, query="image", k=2, use_rep="E", group_keys=[])
    assert img["chance_exact_top1"] == pytest.approx(1 / 4) and img["chance_exact_topk"] == pytest.approx(2 / 4)
    assert img["n_paired"] == 6 and img["modalities"] == ["rna", "image"]
    # k = every target: every ranking hits
    every = scst.tl.retrieve(mdata, None, query="rna", k=7, use_rep="E", group_keys=[])
    assert every["chance_exact_topk"] == 1.0 == every["exact_topk"]


def test_retrieve_without_link_column_reports_exact_metrics_as_nan():
    """New, unpaired images (no obs["rna_sample"]): the group accuracy is still computed (here every patch's closest
    RNA sample shares its label: 1.0), the exact-sample metrics are NaN with n_paired=0, and a warning says so."""
    mdata = _linked_mudata(["s0", "s1", "s2", "s3"], n_rna=4)
    lab = np.array(["a", "b", "a", "b"])
    mdata["rna"].obs["label"] = lab
    mdata["image"].obs["label"] = lab[[1, 0, 3, 2]]
    onehot = {"a": [1.0, 0.0], "b": [0.0, 1.0]}
    mdata["rna"].obsm["E"] = np.array([onehot[x] for x in lab], np.float32)
    mdata["image"].obsm["E"] = np.array([onehot[x] for x in lab[[1, 0, 3, 2]]], np.float32)
    del mdata["image"].obs["rna_sample"]
    with pytest.warns(UserWarning, match="no link column 'rna_sample'.*NaN"):
        res = scst.tl.retrieve(mdata, None, k=2, use_rep="E", group_keys=["label"])
    assert res["accuracy"]["label"] == 1.0 and res["chance"]["label"] == pytest.approx(0.5)
    assert res["n_paired"] == 0 and np.isnan(res["exact_top1"]) and np.isnan(res["exact_topk"])
    assert res["chance_exact_top1"] == pytest.approx(1 / 4)
    with pytest.warns(UserWarning, match="no link column"):
        back = scst.tl.retrieve(mdata, None, query="rna", k=2, use_rep="E", group_keys=["label"])
    assert back["accuracy"]["label"] == 1.0 and np.isnan(back["exact_topk"]) and np.isnan(back["chance_exact_topk"])


def test_embed_and_retrieve_check_the_patches_against_the_model():
    """A MuData without the model's patch key, or with patches of another size, is a named error (not a KeyError
    'patch' or a tensor-size RuntimeError deep in the network)."""
    tr = synthetic_mudata(n=12, px=16)
    MultimodalST.setup_mudata(tr, group_key="label")
    model = MultimodalST(tr, **SMALL)
    te = synthetic_mudata(n=8, px=16, seed=1)
    del te["image"].obsm["patch"]
    with pytest.raises(KeyError, match=r"mdata\['image'\]\.obsm lacks 'patch'"):
        scst.tl.embed(te, model)
    big = synthetic_mudata(n=8, px=32, seed=1)
    with pytest.raises(ValueError, match=r"shape \(8, 3, 32, 32\).*\(n, 3, 16, 16\) patches \(image_px=16\)"):
        scst.tl.retrieve(big, model, k=3)
    with pytest.raises(ValueError, match=r"image_px=16"):
        scst.tl.gene_importance(big, model, score="itc")
    # the matching data still work
    assert scst.tl.retrieve(synthetic_mudata(n=8, px=16, seed=1), model, k=3)["n_paired"] == 8


def test_gene_importance_checks_the_matching_head_and_max_pairs():
    """score="itm" needs a model trained with the matching loss (as retrieve(rerank=...) does); max_pairs=0 is an
    error, None takes every pair (here all 12)."""
    mdata = synthetic_mudata(n=12, n_genes=6)
    MultimodalST.setup_mudata(mdata, group_key="label")
    no_itm = MultimodalST(mdata, **SMALL, weights={"itm": 0.0})
    with pytest.raises(ValueError, match=r"score='itm'.*weights\['itm'\] = 0.*use score='itc'"):
        scst.tl.gene_importance(mdata, no_itm)
    with pytest.raises(ValueError, match="score='itm'"):  # one member of an ensemble without the head is enough
        scst.tl.gene_importance(mdata, [MultimodalST(mdata, **SMALL), no_itm])
    scst.tl.gene_importance(mdata, no_itm, score="itc", n_top=2)
    assert len(mdata.uns["scst_gene_importance"]["pairs"]) == 12
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="max_pairs: expected None"):
            scst.tl.gene_importance(mdata, no_itm, score="itc", max_pairs=bad)
    scst.tl.gene_importance(mdata, no_itm, score="itc", n_top=2, max_pairs=5)
    assert list(mdata.uns["scst_gene_importance"]["pairs"]) == [f"p{i}" for i in range(5)]


def test_retrieve_rejects_a_boolean_k():
    mdata = _linked_mudata(["s0", "s1"], n_rna=2)
    with pytest.raises(ValueError, match="k: expected a positive integer"):
        scst.tl.retrieve(mdata, None, k=True, use_rep="E", group_keys=[])


def test_group_accuracy_and_chance_count_labelled_queries_with_their_own_label_frequencies():
    """Top-1 group accuracy over the labelled queries only (p4 has no label), against the chance of label frequencies
    that differ between the sides: Σ_g p_query(g) p_target(g) = 3/4·1/6 + 1/4·5/6 = 1/3 (not Σ p_query²)."""
    mdata = _linked_mudata([f"s{i}" for i in range(5)], n_rna=6)
    mdata["rna"].obs["label"] = ["a", "b", "b", "b", "b", "b"]
    mdata["image"].obs["label"] = pd.Series(["a", "a", "a", "b", None], dtype=object).to_numpy()
    eye = np.eye(6, dtype=np.float32)
    target = np.array([0, 1, 0, 2, 3])  # each patch's closest RNA sample, then the next two in turn
    mdata["rna"].obsm["E"] = eye
    mdata["image"].obsm["E"] = eye[target] + 0.5 * eye[(target + 1) % 6] + 0.25 * eye[(target + 2) % 6]
    res = scst.tl.retrieve(mdata, None, k=3, use_rep="E", group_keys=["label"])
    np.testing.assert_array_equal(res["indices"], np.c_[target, (target + 1) % 6, (target + 2) % 6])
    assert list(res["names"]) == [f"s{t}" for t in target]
    assert res["accuracy"]["label"] == pytest.approx(3 / 4)  # p0, p2 (a → s0: a) and p3 (b → s2: b); p1 misses
    assert res["chance"]["label"] == pytest.approx(1 / 3)
    assert res["exact_top1"] == pytest.approx(2 / 5) and res["exact_topk"] == 1.0  # p2, p3, p4: own sample 2nd/3rd
    # without the link column, image queries keep the chances of a random ranking: 1/n and k/n
    del mdata["image"].obs["rna_sample"]
    with pytest.warns(UserWarning, match="no link column"):
        res = scst.tl.retrieve(mdata, None, k=3, use_rep="E", group_keys=["label"])
    assert res["chance_exact_top1"] == pytest.approx(1 / 6) and res["chance_exact_topk"] == pytest.approx(3 / 6)
    with pytest.warns(UserWarning, match="no link column"):  # k beyond the 6 targets: all of them, chance 1
        res = scst.tl.retrieve(mdata, None, k=10, use_rep="E", group_keys=["label"])
    assert res["k"] == 6 and res["indices"].shape == (5, 6) and res["chance_exact_topk"] == 1.0


def test_retrieve_zscore_divides_by_each_dimensions_sd():
    """A dimension of pure noise with sd 100 on the RNA side (0.01 on the image side): centring leaves it in
    charge of every target's norm, z-scoring shrinks it to the weight of one signal dimension."""
    n = 40
    mdata = _linked_mudata([f"s{i}" for i in range(n)], n_rna=n)
    rng = np.random.default_rng(0)
    z = rng.normal(size=(n, 6))
    mdata["rna"].obsm["E"] = np.c_[z, rng.normal(0, 100, n)].astype(np.float32)
    mdata["image"].obsm["E"] = np.c_[z + rng.normal(0, 0.3, (n, 6)), rng.normal(0, 0.01, n)].astype(np.float32)
    cen = scst.tl.retrieve(mdata, None, k=1, use_rep="E", group_keys=[], standardize="center")
    zs = scst.tl.retrieve(mdata, None, k=1, use_rep="E", group_keys=[], standardize="zscore")
    assert cen["exact_top1"] < 0.3 and zs["exact_top1"] > 0.6


def test_exact_sample_rates_count_only_the_paired_queries():
    """Image queries p0, p1 find their own RNA sample first; p2 is linked to no sample (None) and finds s0: the
    exact rates are over the 2 paired queries (1.0), not 2 of 3."""
    mdata = _linked_mudata(["s0", "s1", None], n_rna=3)
    eye = np.eye(3, dtype=np.float32)
    mdata["rna"].obsm["E"] = eye
    mdata["image"].obsm["E"] = eye[[0, 1, 0]] + 0.1 * eye[[1, 2, 2]]
    res = scst.tl.retrieve(mdata, None, k=1, use_rep="E", group_keys=[])
    np.testing.assert_array_equal(res["indices"][:, 0], [0, 1, 0])
    assert res["n_paired"] == 2 and res["exact_top1"] == 1.0 and res["exact_topk"] == 1.0


def test_default_group_keys_are_the_mudata_ones_present_in_both_modalities():
    """Without group_keys: those of uns["scst_mudata"] (written by the MuData builders) that are obs columns of both
    modalities; "section" here exists on the image side only and is skipped (no KeyError)."""
    mdata = _linked_mudata(["s0", "s1", "s2", "s3"], n_rna=4)
    mdata.uns["scst_mudata"] = {"group_keys": ["label", "section"]}
    mdata["rna"].obs["label"] = ["a", "a", "b", "b"]
    mdata["image"].obs["label"] = ["a", "b", "b", "b"]
    mdata["image"].obs["section"] = ["A", "A", "B", "B"]
    eye = np.eye(4, dtype=np.float32)
    mdata["rna"].obsm["E"] = eye
    mdata["image"].obsm["E"] = eye  # each patch finds its own sample: the label agrees for 3 of 4
    res = scst.tl.retrieve(mdata, None, k=1, use_rep="E")
    assert res["group_keys"] == ["label"] and list(res["accuracy"]) == ["label"]
    assert res["accuracy"]["label"] == pytest.approx(3 / 4)
    assert res["chance"]["label"] == pytest.approx(1 / 4 * 1 / 2 + 3 / 4 * 1 / 2)


def test_retrieve_zscore_leaves_a_constant_dimension_out():
    """A dimension constant within each modality has sd 0: z-scoring keeps it at 0 (divides by 1), so the ranking
    and the cosines are those without that dimension (no NaN)."""
    n = 12
    mdata = _linked_mudata([f"s{i}" for i in range(n)], n_rna=n)
    rng = np.random.default_rng(1)
    z = rng.normal(size=(n, 4))
    plain = {"rna": z, "image": z + rng.normal(0, 0.5, (n, 4))}
    for m, const in (("rna", 3.0), ("image", -2.0)):
        mdata[m].obsm["E"] = plain[m].astype(np.float32)
        mdata[m].obsm["E_const"] = np.c_[plain[m], np.full(n, const)].astype(np.float32)
    want = scst.tl.retrieve(mdata, None, k=3, use_rep="E", group_keys=[], standardize="zscore")
    got = scst.tl.retrieve(mdata, None, k=3, use_rep="E_const", group_keys=[], standardize="zscore")
    assert np.isfinite(got["scores"]).all()
    np.testing.assert_array_equal(got["indices"], want["indices"])
    np.testing.assert_allclose(got["scores"], want["scores"], rtol=1e-5)


def test_csls_matches_a_loop_over_queries_and_targets_when_they_differ_in_number():
    """3 queries × 5 targets with 4 neighbours: r_T(q) averages each query's 4 best targets, r_Q(t) each target's
    best min(4, 3) = 3 queries (all of them)."""
    from scst.tl._multimodal import _csls

    sim = np.random.default_rng(0).uniform(-1, 1, (3, 5))
    want = np.empty_like(sim)
    for i in range(3):
        for j in range(5):
            r_t = np.sort(sim[i])[::-1][:4].mean()
            r_q = np.sort(sim[:, j])[::-1][:3].mean()
            want[i, j] = 2 * sim[i, j] - r_t - r_q
    np.testing.assert_allclose(_csls(sim, 4), want, rtol=1e-12)
    np.testing.assert_allclose(_csls(sim.T, 4), want.T, rtol=1e-12)  # the roles swap: 3 and 4 neighbours


class _SquareEncoder(torch.nn.Module):
    """Stub RNA encoder: one token holding each gene's squared input; records the mode it runs in."""

    def __init__(self):
        super().__init__()
        self.modes = []

    def forward(self, z, mask_idx=None):
        self.modes.append(self.training)
        return (z**2)[:, None, :]


def _quadratic_score_model(w):
    """A MultimodalST whose matching logit of a pair is Σ_g w_g x_g² of the sample's expression x (standardisation
    and RNA encoder replaced by stubs): Grad-CAM (∂s/∂x · x) is 2 w x², integrated gradients from 0 is w x²."""
    mdata = synthetic_mudata(n=4, n_genes=len(w))
    x = np.array([[1.0, -2.0, 0.5, 1.0], [0.5, 1.0, -3.0, 1.0], [2.0, 0.0, 1.0, -1.0], [1.0, 1.5, 1.0, 1.0]])
    x = np.c_[x, np.ones((4, len(w) - 4))]
    mdata["rna"].X = x.astype(np.float32)
    MultimodalST.setup_mudata(mdata, group_key="label")
    model = MultimodalST(mdata, **SMALL)
    m = model.module
    m._rna_in = lambda v: v
    m.rna_encoder = _SquareEncoder()
    wt = torch.tensor(w, dtype=torch.float32)
    m.match_logit = lambda tok, it: (tok[:, 0] * wt).sum(1)
    model._is_trained, model.module.stage = True, "joint"  # the stubbed head stands for a joint-stage-trained one
    return mdata, model, x


def test_gene_importance_known_attributions_of_a_quadratic_score():
    """Score Σ_g w_g x_g²: Grad-CAM 2 w x², integrated gradients (midpoint steps, exact here) w x²; genes ranked by
    |attribution| per pair (negative ones too), counted over the pairs' top 2, mean |attribution| per gene; the
    module runs in eval mode and gets its mode back; an ensemble of the same model twice gives the same means."""
    w = np.array([1.0, -1.0, 0.5, 0.25, 0.0, 0.0])  # 6 genes (the synthetic patches need them); g4, g5 play no part
    mdata, model, x = _quadratic_score_model(w)
    genes = list(mdata["rna"].var_names)
    for method, want in (("gradcam", 2 * w * x**2), ("integrated_gradients", w * x**2)):
        model.module.train()
        table = scst.tl.gene_importance(mdata, model, method=method, n_top=2, n_steps=4, batch_size=3)
        enc = model.module.rna_encoder
        assert enc.modes and not any(enc.modes) and model.module.training  # eval inside, train mode restored
        enc.modes.clear()
        top = np.argsort(-np.abs(want), axis=1, kind="stable")[:, :2]
        # by hand (|w x²|): pair 0 → g1 (4), g0 (1); pair 1 → g2 (4.5), g1 (1); pair 2 → g0 (4), g2 (0.5); pair 3 → g1
        # (2.25), g0 (1): counts 3, 3, 2, 0, g1 before g0 by its larger mean |attribution| (1.8125 vs 1.5625)
        np.testing.assert_array_equal(top, [[1, 0], [2, 1], [0, 2], [1, 0]])
        res = mdata.uns["scst_gene_importance"]
        np.testing.assert_array_equal(res["top_genes"], np.asarray(genes)[top])
        np.testing.assert_allclose(mdata["rna"].var["scst_importance_mean"], np.abs(want).mean(0), rtol=1e-5)
        assert mdata["rna"].var["scst_importance_count"].tolist() == [3, 3, 2, 0, 0, 0]
        assert list(table.index[:4]) == ["g1", "g0", "g2", "g3"] and table["occurrence"].tolist() == [3, 3, 2, 0, 0, 0]
        np.testing.assert_allclose(table.loc[genes, "mean_attribution"], np.abs(want).mean(0), rtol=1e-5)
    model.module.eval()
    scst.tl.gene_importance(mdata, [model, model], method="gradcam", n_top=2)
    assert not model.module.training
    np.testing.assert_allclose(mdata["rna"].var["scst_importance_mean"], np.abs(2 * w * x**2).mean(0), rtol=1e-5)


def test_gene_importance_writes_var_columns_by_gene_name_and_caps_n_top():
    """The RNA modality's genes in another order than the model's panel: each var row gets its own gene's count and
    mean; n_top beyond the 6 genes keeps all of them (and says 6)."""
    w = np.array([1.0, -1.0, 0.5, 0.25, 0.0, 0.0])
    mdata, model, x = _quadratic_score_model(w)
    rev = mdata["rna"][:, ::-1].copy()
    mdata.mod["rna"] = rev
    scst.tl.gene_importance(mdata, model, method="gradcam", n_top=2)
    var = mdata["rna"].var
    assert list(var.index) == ["g5", "g4", "g3", "g2", "g1", "g0"]
    assert var["scst_importance_count"].tolist() == [0, 0, 0, 2, 3, 3]
    np.testing.assert_allclose(var["scst_importance_mean"], np.abs(2 * w * x**2).mean(0)[::-1], rtol=1e-5)
    scst.tl.gene_importance(mdata, model, method="gradcam", n_top=10)
    res = mdata.uns["scst_gene_importance"]
    assert res["n_top"] == 6 and res["top_genes"].shape == (4, 6)
    assert var["scst_importance_count"].tolist() == [4] * 6


def test_integrated_gradients_of_the_cosine_sum_to_its_change_from_the_baseline():
    """Completeness with score="itc" on an untrained model: each pair's attributions add up to the cosine of its two
    shared-space embeddings (get_latent_representation) minus that of the all-mean RNA input (standardised 0)."""
    mdata = synthetic_mudata(n=6, n_genes=6)
    MultimodalST.setup_mudata(mdata, group_key="label")
    model = MultimodalST(mdata, **SMALL)
    from scst.tl._multimodal import _attributions

    data, rna_row = model._arrays(mdata)
    paired = np.flatnonzero(rna_row >= 0)
    A = _attributions(model, data, rna_row, paired, "integrated_gradients", "itc", 64, 4)
    u_rna = model.get_latent_representation(mdata, modality="rna")
    u_img = model.get_latent_representation(mdata, modality="image")
    cos = (u_img[paired] * u_rna[rna_row[paired]]).sum(1)
    m = model.module.eval()
    with torch.no_grad():
        base = torch.nn.functional.normalize(m.rna_proj(m.rna_encoder(torch.zeros(len(paired), 6))[:, 0]), dim=-1)
    cos0 = (u_img[paired] * base.numpy()).sum(1)
    np.testing.assert_allclose(A.sum(1), cos - cos0, atol=2e-3)
    assert np.abs(cos - cos0).max() > 0.05  # a change worth explaining


def test_embed_umap_splits_the_joint_layout_back_by_modality(monkeypatch):
    """One UMAP of both modalities stacked (RNA first): a stub UMAP that returns each point's first two embedding
    coordinates shows every modality gets its own rows back (40 RNA samples, 30 patches), with the given seed."""
    import scanpy as sc

    mdata = synthetic_mudata(n=40)
    MultimodalST.setup_mudata(mdata, group_key="label")
    model = MultimodalST(mdata, **SMALL)
    mdata.mod["image"] = mdata["image"][:30].copy()
    rng = np.random.default_rng(0)
    emb = {"rna": rng.normal(size=(40, 4)).astype(np.float32), "image": rng.normal(size=(30, 4)).astype(np.float32)}
    model.get_latent_representation = lambda md_, modality="rna", batch_size=256: emb[modality]
    seeds = []
    monkeypatch.setattr(sc.pp, "neighbors", lambda a, use_rep, n_neighbors, random_state: seeds.append(random_state))

    def umap(a, random_state):
        seeds.append(random_state)
        a.obsm["X_umap"] = a.obsm["X_multimodal"][:, :2] * 10

    monkeypatch.setattr(sc.tl, "umap", umap)
    scst.tl.embed(mdata, model, umap=True, seed=7)
    assert seeds == [7, 7]
    for m in ("rna", "image"):
        np.testing.assert_array_equal(mdata[m].obsm["X_multimodal"], emb[m])
        np.testing.assert_allclose(mdata[m].obsm["X_multimodal_umap"], emb[m][:, :2] * 10, rtol=1e-6)


def test_group_accuracy_and_chance_of_each_group_key_use_that_keys_labels():
    """Two group keys on the same top-1 targets (each patch finds its own sample): "label" agrees for 3 of 4 patches,
    "patient" for all 4; each chance from that key's own frequencies (5/8 and 1/2)."""
    mdata = _linked_mudata(["s0", "s1", "s2", "s3"], n_rna=4)
    mdata["rna"].obs["label"] = ["a", "a", "b", "b"]
    mdata["image"].obs["label"] = ["a", "b", "b", "b"]
    mdata["rna"].obs["patient"] = ["P1", "P1", "P1", "P2"]
    mdata["image"].obs["patient"] = ["P1", "P1", "P1", "P2"]
    eye = np.eye(4, dtype=np.float32)
    mdata["rna"].obsm["E"] = mdata["image"].obsm["E"] = eye
    res = scst.tl.retrieve(mdata, None, k=1, use_rep="E", group_keys=["patient", "label"])
    assert res["accuracy"] == {"patient": 1.0, "label": pytest.approx(3 / 4)}
    assert res["chance"]["patient"] == pytest.approx(3 / 4 * 3 / 4 + 1 / 4 * 1 / 4)
    assert res["chance"]["label"] == pytest.approx(1 / 2)


def test_retrieve_group_keys_may_be_one_column_name():
    mdata = _linked_mudata([f"s{i}" for i in range(4)], n_rna=4)
    for m in ("rna", "image"):
        mdata[m].obs["label"] = list("abab")
    one = scst.tl.retrieve(mdata, None, k=2, use_rep="E", group_keys="label")
    assert one["group_keys"] == ["label"]
    assert one["accuracy"] == scst.tl.retrieve(mdata, None, k=2, use_rep="E", group_keys=["label"])["accuracy"]


def test_gene_importance_rejects_a_non_positive_n_top_or_n_steps():
    """n_top=-1 used to slice off the last gene (all genes but one counted as top genes); n_steps=0 divided by 0."""
    mdata = synthetic_mudata(n=8, n_genes=6)
    MultimodalST.setup_mudata(mdata, group_key="label")
    model = MultimodalST(mdata, **SMALL, weights={"itm": 0.0})
    for name, bad in (("n_top", 0), ("n_top", -1), ("n_top", True), ("n_steps", 0)):
        with pytest.raises(ValueError, match=f"{name}: expected a positive integer"):
            scst.tl.gene_importance(mdata, model, "integrated_gradients", score="itc", **{name: bad})


def test_group_chance_counts_unlabelled_targets_as_misses():
    """Two 'a' queries, targets 'a' and unlabelled: a random ranking puts the 'a' target first half the time (the
    unlabelled one is a miss in the accuracy), so the chance is 1/2, not 1 (frequencies over labelled targets)."""
    mdata = _linked_mudata(["s0", "s1"], n_rna=2)
    mdata["rna"].obs["label"] = pd.Series(["a", None], dtype=object).to_numpy()
    mdata["image"].obs["label"] = ["a", "a"]
    mdata["rna"].obsm["E"] = np.eye(2, dtype=np.float32)
    mdata["image"].obsm["E"] = np.eye(2, dtype=np.float32)  # each patch retrieves its own sample
    res = scst.tl.retrieve(mdata, None, k=1, use_rep="E", group_keys=["label"])
    assert res["accuracy"]["label"] == pytest.approx(1 / 2) and res["chance"]["label"] == pytest.approx(1 / 2)


def test_group_chance_is_nan_like_the_accuracy_when_no_query_is_labelled():
    """Image queries all unlabelled, RNA targets labelled: no top-1 group to compare, accuracy NaN, and so the
    chance (it was 0.0, next to which any accuracy looks good); the other direction keeps both numbers."""
    mdata = _linked_mudata(["s0", "s1", "s2"], n_rna=3)
    mdata["rna"].obs["label"] = ["a", "b", "a"]
    mdata["image"].obs["label"] = pd.Categorical([None] * 3, categories=["a", "b"])
    res = scst.tl.retrieve(mdata, None, k=1, use_rep="E", group_keys="label")
    assert np.isnan(res["accuracy"]["label"]) and np.isnan(res["chance"]["label"])
    res = scst.tl.retrieve(mdata, None, query="rna", k=1, use_rep="E", group_keys="label")
    assert res["accuracy"]["label"] == 0.0 and res["chance"]["label"] == 0.0  # labelled queries, unlabelled targets


def test_retrieve_warns_when_the_models_group_key_is_missing_from_the_patches():
    """Patches without the model's label column (training gives each its RNA sample's group): the same model, but
    the default group accuracy silently vanished (accuracy {}); now a warning names the key and the modality."""
    mdata = synthetic_mudata(n=12, n_genes=6)
    MultimodalST.setup_mudata(mdata, group_key="label")
    model = MultimodalST(mdata, **SMALL)
    assert list(scst.tl.retrieve(mdata, model, k=1)["accuracy"]) == ["label"]
    del mdata["image"].obs["label"]
    with pytest.warns(UserWarning, match=r"group_key 'label' is not an obs column of modality 'image'"):
        res = scst.tl.retrieve(mdata, model, k=1)
    assert res["accuracy"] == {} and res["group_keys"] == []
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # group keys given: no warning
        assert scst.tl.retrieve(mdata, model, k=1, group_keys=[])["accuracy"] == {}


def test_group_labels_that_are_equal_numbers_match_across_int_and_float_columns():
    """The RNA side's label column holds ints, the image side's ints with a missing value (floats to pandas: 1.0,
    NaN): 1 and 1.0 are the same label (they compared as "1" ≠ "1.0", every query a miss, accuracy 0)."""
    mdata = _linked_mudata(["s0", "s1", "s2", "s3"], n_rna=4)
    mdata["rna"].obs["label"] = [1, 1, 2, 2]
    mdata["image"].obs["label"] = [1, 2, 2, np.nan]
    assert mdata["image"].obs["label"].dtype == np.float64
    eye = np.eye(4, dtype=np.float32)
    mdata["rna"].obsm["E"] = mdata["image"].obsm["E"] = eye  # each patch finds its own sample
    res = scst.tl.retrieve(mdata, None, k=1, use_rep="E", group_keys=["label"])
    assert res["accuracy"]["label"] == pytest.approx(2 / 3)  # p0, p2 agree, p1 misses, p3 is unlabelled
    assert res["chance"]["label"] == pytest.approx(1 / 3 * 1 / 2 + 2 / 3 * 1 / 2)
    # the model's group codes: the same code for the same number on both sides
    from scst.models._multimodal import _codes

    np.testing.assert_array_equal(_codes(mdata["image"].obs["label"], ["1", "2"], start=4), [0, 1, 1, -8])
    np.testing.assert_array_equal(_codes(mdata["rna"].obs["label"], ["1", "2"]), [0, 0, 1, 1])


def test_multimodal_setup_groups_int_and_float_labels_as_one_category():
    mdata = synthetic_mudata(n=8, n_genes=6)
    n_img = mdata["image"].n_obs
    mdata["rna"].obs["num"] = np.arange(mdata["rna"].n_obs) % 2
    mdata["image"].obs["num"] = np.where(np.arange(n_img) == 0, np.nan, np.arange(n_img) % 2)
    MultimodalST.setup_mudata(mdata, group_key="num")
    model = MultimodalST(mdata, **SMALL, weights={"itm": 0.0})
    assert model.registry["group_categories"] == ["0", "1"]


def test_links_that_are_numbers_find_their_rna_samples():
    """RNA samples named "0", "1", ..., patches linked by a number column with a missing link (floats to pandas:
    1.0, NaN): 1.0 links to sample "1" (it was "1.0", no patch paired: setup refused, retrieval had n_paired=0)."""
    base = synthetic_mudata(n=8, n_genes=6)
    rna, image = base["rna"].copy(), base["image"].copy()
    rna.obs_names = [str(i) for i in range(8)]
    image.obs["rna_sample"] = np.r_[np.nan, np.arange(1, 8)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mdata = md.MuData({"rna": rna, "image": image})
    eye = np.eye(8, dtype=np.float32)
    mdata["rna"].obsm["E"] = eye
    mdata["image"].obsm["E"] = eye  # patch i finds sample i
    res = scst.tl.retrieve(mdata, None, k=1, use_rep="E", group_keys=[])
    assert res["n_paired"] == 7 and res["exact_top1"] == 1.0
    res = scst.tl.retrieve(mdata, None, query="rna", k=1, use_rep="E", group_keys=[])
    assert res["n_paired"] == 7 and res["exact_top1"] == 1.0
    MultimodalST.setup_mudata(mdata, group_key="label")
    model = MultimodalST(mdata, **SMALL, weights={"itm": 0.0})
    _, rna_row = model._arrays(mdata)
    np.testing.assert_array_equal(rna_row, [-1, 1, 2, 3, 4, 5, 6, 7])


def test_the_matching_head_must_have_been_trained_in_a_joint_stage():
    """Review 2026-12-04: the guard read only weights['itm'] (1.0 by default), so an untrained model, or one trained
    with max_epochs=0 (pre-training only), re-ranked and attributed with a randomly initialised head."""
    w = np.linspace(0.5, 2.0, 6)
    mdata, model, _ = _quadratic_score_model(w)
    model._is_trained, model.module.stage = False, "pretrain"
    with pytest.raises(ValueError, match=r"score='itm': the model's matching head is untrained \(no joint training "):
        scst.tl.gene_importance(mdata, model, score="itm")
    model._is_trained = True  # pre-trained only
    rng = np.random.default_rng(0)
    for mod in ("rna", "image"):
        mdata[mod].obsm["E"] = rng.normal(size=(mdata[mod].n_obs, 3)).astype(np.float32)
    with pytest.raises(ValueError, match=r"rerank: .*untrained \(no joint training stage ran: pre-trained only\)"):
        scst.tl.retrieve(mdata, model, k=3, use_rep="E", group_keys=[], rerank=2)


def test_retrieve_and_gene_importance_name_their_bad_arguments():
    mdata = _linked_mudata(["s0", "s1", "s2"], n_rna=3)
    mdata["rna"].obs["label"] = list("aba")
    cases = [
        (TypeError, r"model: expected a scst.models.MultimodalST, got str", dict(model="my_model")),
        (ValueError, r"query: expected 'image' or 'rna', got 'spot'", dict(query="spot", use_rep="E")),
        (ValueError, r"model: needed unless `use_rep` names precomputed embeddings", {}),
        (KeyError, r"use_rep: 'X_emb' not in mdata\['rna'\].obsm; run scst.tl.embed first", dict(use_rep="X_emb")),
        (KeyError, r"group_keys: 'label' must be an obs column of both 'image' and 'rna'",
         dict(use_rep="E", group_keys=["label"])),
    ]  # fmt: skip
    for exc, match, kw in cases:
        with pytest.raises(exc, match=match):
            scst.tl.retrieve(mdata, kw.pop("model", None), k=2, **kw)
    mdata = synthetic_mudata(n=8, n_genes=6)
    MultimodalST.setup_mudata(mdata, group_key="label")
    model = MultimodalST(mdata, **SMALL, weights={"itm": 0.0})
    with pytest.raises(ValueError, match=r"method: expected 'gradcam' or 'integrated_gradients', got 'shap'"):
        scst.tl.gene_importance(mdata, model, "shap", score="itc")
    assert "scst_gene_importance" not in mdata.uns
