from __future__ import annotations

import warnings

import anndata as ad
import mudata as md
import numpy as np
import pandas as pd
import pytest
import torch

import scst
from scst.models import MultimodalST
from scst.nn._multimodal import MultimodalModule, supervised_contrastive, triplet_loss

pytestmark = pytest.mark.usefixtures("one_torch_thread")

COLOURS = np.array([[200, 40, 40], [40, 200, 40], [40, 40, 200], [200, 200, 40]])
SMALL = {"dim": 16, "rna_depth": 1, "image_depth": 1, "fusion_depth": 1, "heads": 2, "sub_patch": 8,
         "embed_dim": 16, "dropout": 0.0, "batch_size": 32, "lr": 3e-3, "weight_decay": 0.0}  # fmt: skip


def synthetic_mudata(n=96, n_genes=24, px=16, seed=0, unpaired=False, profile_scale=1.5):
    """Samples of 4 groups: expression = group profile + noise; patch colour = group colour, brightness ∝ gene 5.

    The group profiles are the same for every ``seed`` (train and test sets share them).
    """
    profile = np.random.default_rng(12345).normal(0, profile_scale, size=(4, n_genes))
    rng = np.random.default_rng(seed)
    group = np.arange(n) % 4
    X = (profile[group] + rng.normal(0, 0.5, size=(n, n_genes))).astype(np.float32)
    names = [f"s{i}" for i in range(n)]
    rna = ad.AnnData(X=X, obs=pd.DataFrame({"label": pd.Categorical(group.astype(str))}, index=names),
                     var=pd.DataFrame(index=[f"g{j}" for j in range(n_genes)]))  # fmt: skip
    rna.var["gene_group"] = np.arange(n_genes) % 3
    bright = 0.6 + 0.4 * (X[:, 5] - X[:, 5].min()) / np.ptp(X[:, 5])
    img = (COLOURS[group][:, :, None, None] * bright[:, None, None, None]).repeat(px, 2).repeat(px, 3)
    img = np.clip(img + rng.normal(0, 8, img.shape), 0, 255).astype(np.uint8)
    obs = pd.DataFrame(
        {"rna_sample": names, "label": pd.Categorical(group.astype(str))}, index=[f"p{i}" for i in range(n)]
    )
    if unpaired:
        obs.loc["p0", "rna_sample"] = np.nan  # a patch without RNA
        obs.loc["p1", "rna_sample"] = "no_such_sample"  # an unmatched link
    image = ad.AnnData(X=np.zeros((n, 0), np.float32), obs=obs)
    image.obsm["patch"] = img
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return md.MuData({"rna": rna, "image": image})


def test_supervised_contrastive_and_triplet_known_values():
    z = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    labels = torch.tensor([0, 0, 1])
    # sample 0: positive 1 with sim 1, negative 2 with sim 0 → -log(e / (e + 1)) (same for 1); sample 2 has none
    expected = -np.log(np.e / (np.e + 1))
    assert supervised_contrastive(z, labels, 1.0).item() == pytest.approx(expected, rel=1e-5)
    # triplet: anchor 0, positive 1 (d=0), negative 2 (d=2) → relu(0 - 2 + 0.5) = 0 for anchors 0, 1
    assert triplet_loss(z, labels, 0.5).item() == 0.0
    assert triplet_loss(z, labels, 3.0).item() == pytest.approx(1.0)


def test_module_loss_stages_and_switches():
    m = MultimodalModule([0, 0, 1, 1, 2], dim=8, heads=2, image_px=16, sub_patch=8, embed_dim=8,
                         weights={"itm": 0.0})  # fmt: skip
    b = {"rna": torch.randn(6, 5), "img": torch.randint(0, 255, (6, 3, 16, 16), dtype=torch.uint8),
         "has_rna": torch.ones(6, dtype=torch.bool), "has_img": torch.ones(6, dtype=torch.bool),
         "rna_id": torch.arange(6), "rna_group": torch.tensor([0, 0, 1, 1, 2, 2]),
         "img_group": torch.tensor([0, 0, 1, 1, 2, 2])}  # fmt: skip
    assert set(m.loss(b)) == {"rna_mae", "rna_con", "img_triplet", "loss"}
    m.stage = "joint"
    out = m.loss(b)
    assert set(out) == {"itc", "rna_rec", "loss"}  # itm switched off
    assert out["loss"].item() == pytest.approx(out["itc"].item() + out["rna_rec"].item(), rel=1e-5)
    with pytest.raises(ValueError, match="unknown loss terms"):
        MultimodalModule([0, 1], weights={"mlm": 1.0})


def test_train_retrieve_save_load(tmp_path):
    tr, te = synthetic_mudata(seed=0), synthetic_mudata(n=40, seed=1)
    MultimodalST.setup_mudata(tr, group_key="label")
    model = MultimodalST(tr, **SMALL, pretrain_epochs=2, max_epochs=12, patience=20)
    before = scst.tl.retrieve(te, model, k=5)
    model.train(enable_progress_bar=False, validation=0.0)
    assert model.history["stage"].tolist() == [0.0] * 2 + [1.0] * 12
    assert model.history.index.tolist() == list(range(14))
    res = scst.tl.retrieve(te, model, k=5)
    assert res["chance"]["label"] == pytest.approx(0.25)
    assert res["accuracy"]["label"] >= 0.9 > before["accuracy"]["label"] + 0.3
    assert te.uns["scst_retrieval"]["indices"].shape == (40, 5)
    scst.tl.embed(te, model, umap=True)
    emb = te["image"].obsm["X_multimodal"]
    assert emb.shape == (40, 16) and np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)
    # one joint UMAP of both modalities, split back into each
    u_img, u_rna = te["image"].obsm["X_multimodal_umap"], te["rna"].obsm["X_multimodal_umap"]
    assert u_img.shape == (40, 2) and u_rna.shape == (te["rna"].n_obs, 2) and np.isfinite(u_img).all()
    model.save(tmp_path / "m")
    loaded = MultimodalST.load(tmp_path / "m", data=te)
    np.testing.assert_allclose(loaded.get_latent_representation(te, "image"), emb, atol=1e-5)
    with pytest.raises(ValueError, match="lacks 1 panel genes"):
        loaded.get_latent_representation(te[:, 1:].copy(), "rna")


def test_unpaired_samples_frozen_encoders_and_bad_input():
    mdata = synthetic_mudata(n=40, unpaired=True)
    with pytest.warns(UserWarning, match="1 of 40 patches link to no sample"):
        MultimodalST.setup_mudata(mdata, group_key="label")
    model = MultimodalST(mdata, **SMALL, pretrain_epochs=0, max_epochs=2, freeze_encoders=True)
    w_rna = [p.detach().clone() for p in model.module.rna_encoder.parameters()]
    w_proj = model.module.rna_proj.weight.detach().clone()
    model.train(enable_progress_bar=False, validation=0.0)
    assert all(torch.equal(a, b) for a, b in zip(w_rna, model.module.rna_encoder.parameters()))
    assert not torch.equal(w_proj, model.module.rna_proj.weight)  # projections still learn
    bad = synthetic_mudata(n=8)
    del bad["rna"].var["gene_group"]
    with pytest.raises(KeyError, match="gene_groups"):
        MultimodalST.setup_mudata(bad)
    bad = synthetic_mudata(n=8)
    bad["image"].obs["rna_sample"] = "nope"
    with pytest.raises(ValueError, match="no patch"), pytest.warns(UserWarning, match="8 of 8"):
        MultimodalST.setup_mudata(bad)
    with pytest.raises(ValueError, match="Unknown config"):
        MultimodalST(mdata, nonsense=1)


def test_retrieve_standardize_matches_a_shrunk_offset_image_side():
    """Image embeddings = 0.05 × the RNA embeddings (in another order) + one large common offset, as a regression
    onto the RNA side gives: raw cosine sees mostly the offset, z-scoring each modality recovers every pair."""
    rng = np.random.default_rng(0)
    mdata = synthetic_mudata(n=40)
    z = rng.normal(size=(40, 6)).astype(np.float32)
    mdata["rna"].obsm["E"] = z
    link = mdata["rna"].obs_names.get_indexer(mdata["image"].obs["rna_sample"])
    perm = rng.permutation(40)  # patches in another order than their RNA samples
    mdata.mod["image"] = mdata["image"][perm].copy()
    mdata["image"].obsm["E"] = 0.05 * z[link[perm]] + np.array([5.0, -3.0, 4.0, 0.0, 2.0, 6.0], np.float32)
    raw = scst.tl.retrieve(mdata, None, k=1, use_rep="E", group_keys=[])
    zs = scst.tl.retrieve(mdata, None, k=1, use_rep="E", group_keys=[], standardize="zscore")
    cen = scst.tl.retrieve(mdata, None, k=1, use_rep="E", group_keys=[], standardize="center")
    assert zs["exact_top1"] == 1.0 and cen["exact_top1"] == 1.0 and zs["standardize"] == "zscore"
    assert raw["exact_top1"] < 0.5 and raw["standardize"] is None
    # RNA → image the same way; and the option is checked
    assert (
        scst.tl.retrieve(mdata, None, query="rna", k=1, use_rep="E", group_keys=[], standardize="zscore")["exact_top1"]
        == 1.0
    )
    with pytest.raises(ValueError, match="standardize"):
        scst.tl.retrieve(mdata, None, use_rep="E", standardize="whiten")


def test_gene_importance_finds_the_planted_gene():
    # groups share one expression profile: only gene 5 (patch brightness) tells which RNA matches a patch
    mdata = synthetic_mudata(n=96, n_genes=12, profile_scale=0.0)
    MultimodalST.setup_mudata(mdata, group_key="label")
    model = MultimodalST(mdata, **SMALL, pretrain_epochs=0, max_epochs=40, patience=80, weights={"rna_rec": 0.0})
    model.train(enable_progress_bar=False, validation=0.0)
    for method in ("gradcam", "integrated_gradients"):
        table = scst.tl.gene_importance(mdata, model, method=method, score="itc", n_top=3, max_pairs=48)
        assert mdata.uns["scst_gene_importance"]["top_genes"].shape == (48, 3)
        assert mdata["rna"].var["scst_importance_count"].sum() == 48 * 3
        assert table.index[0] == "g5", table.head()
        assert table["occurrence"].iloc[0] >= 1.2 * table["occurrence"].iloc[1]
    with pytest.raises(ValueError, match="score"):
        scst.tl.gene_importance(mdata, model, score="cosine")


def test_backbone_image_encoder_takes_local_weights(tmp_path):
    from scst.nn._backbones import build_backbone

    mdata = synthetic_mudata(n=8)
    MultimodalST.setup_mudata(mdata, group_key="label")
    with pytest.warns(UserWarning):
        net, _ = build_backbone("resnet18", None)
    torch.save(net.state_dict(), tmp_path / "ssl.pt")
    model = MultimodalST(mdata, **SMALL, image_encoder="resnet18", image_weights=str(tmp_path / "ssl.pt"))
    assert torch.equal(model.module.image_encoder.net.conv1.weight, net.conv1.weight)
    assert model.get_latent_representation(modality="image").shape == (8, 16)
    with pytest.raises(FileNotFoundError):
        MultimodalST(mdata, **SMALL, image_encoder="resnet18", image_weights=str(tmp_path / "missing.pt"))
