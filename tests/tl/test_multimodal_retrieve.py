"""scst.tl.retrieve / embed / gene_importance on small MuData with known answers (chances, unpaired data, checks)."""

from __future__ import annotations

import itertools
import warnings

import anndata as ad
import mudata as md
import numpy as np
import pandas as pd
import pytest
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
