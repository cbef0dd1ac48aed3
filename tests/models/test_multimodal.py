from __future__ import annotations

import copy
import warnings

import anndata as ad
import lightning.pytorch as pl
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


@pytest.mark.parametrize("kind", ["vit", "mlp"])
def test_float64_module_embeds_images_as_float32(kind):
    """module.double() gave dtype errors on images (uint8 patches / mlp embeddings were cast by a fixed .float());
    float64 ≡ float32, and a batch embeds as its items one by one (eval mode)."""
    torch.manual_seed(0)
    kw = {"image_px": 16, "sub_patch": 8} if kind == "vit" else {"image_features": 6}
    m = MultimodalModule([0, 0, 1, 1, 2], dim=8, heads=2, embed_dim=8, image_encoder=kind, **kw).eval()
    img = torch.randint(0, 256, (3, 3, 16, 16), dtype=torch.uint8) if kind == "vit" else torch.randn(3, 6)
    with torch.no_grad():
        emb = m.embed_image(img)
        emb64 = copy.deepcopy(m).double().embed_image(img)
        one_by_one = torch.cat([m.embed_image(img[i : i + 1]) for i in range(3)])
    assert emb64.dtype == torch.float64
    torch.testing.assert_close(emb64.float(), emb, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(one_by_one, emb, atol=1e-5, rtol=1e-5)


def test_masked_autoencoder_error_is_that_of_each_samples_masked_group():
    # groups of genes [0, 0, 1, 1, 2] (sizes 2, 2, 1); a decoder predicting 0 everywhere → the error of group g is the
    # mean square of its standardised genes: (1, 4, 9) for row 0, (16, 25, 36) for row 1
    m = MultimodalModule([0, 0, 1, 1, 2], dim=8, heads=2, image_px=16, sub_patch=8, embed_dim=8)
    m.gene_mean.fill_(1.0)
    m.gene_std.fill_(2.0)
    x = 1.0 + 2.0 * torch.tensor([[1.0, -1.0, 2.0, 2.0, 3.0], [4.0, 4.0, -5.0, 5.0, 6.0]])

    class Zero(torch.nn.Module):
        def __init__(self, n):
            super().__init__()
            self.n = n

        def forward(self, t):
            return torch.zeros(t.shape[0], self.n)

    decoder = torch.nn.ModuleList([Zero(2), Zero(2), Zero(1)])
    tokens = torch.randn(2, 4, 8)
    assert m._mae(x, tokens, torch.tensor([2, 1]), decoder).item() == pytest.approx((9 + 25) / 2)
    assert m._mae(x, tokens, torch.tensor([0, 2]), decoder).item() == pytest.approx((1 + 36) / 2)


def _joint_batch(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"rna": torch.randn(n, 5, generator=g),
            "img": torch.randint(0, 255, (n, 3, 16, 16), dtype=torch.uint8, generator=g),
            "has_rna": torch.ones(n, dtype=torch.bool), "has_img": torch.ones(n, dtype=torch.bool),
            "rna_id": torch.arange(n), "rna_group": torch.arange(n) % 3, "img_group": torch.arange(n) % 3}  # fmt: skip


def _module(**kw):
    torch.manual_seed(0)
    m = MultimodalModule([0, 0, 1, 1, 2], dim=8, heads=2, image_px=16, sub_patch=8, embed_dim=8, dropout=0.0,
                         weights={"itm": 0.0, "rna_rec": 0.0}, **kw)  # fmt: skip
    m.stage = "joint"
    return m


def test_momentum_queue_contrastive_known_values():
    b = _joint_batch()
    plain = _module().train().loss(b)["itc"].item()
    m = _module(momentum=0.5, queue_size=8).train()
    # first step: the momentum encoders are copies (no dropout) and the queue is empty → the in-batch loss
    assert m.loss(b)["itc"].item() == pytest.approx(plain, rel=1e-5)
    assert bool(m.momentum_ready) and int(m.queue_len) == 6 and int(m.queue_ptr) == 6
    assert m.key_queue[:6].tolist() == list(range(6))
    # same batch again, weights unchanged: every sample now also meets its own (identical) queue entry, a second
    # positive with the same logit → the loss grows by exactly log 2
    assert m.loss(b)["itc"].item() == pytest.approx(plain + np.log(2), rel=1e-5)
    assert int(m.queue_len) == 8 and int(m.queue_ptr) == (12 % 8)  # ring buffer wrapped
    assert m.key_queue.tolist() == [2, 3, 4, 5, 4, 5, 0, 1]  # slots 6, 7, 0–3 took keys 0–5
    # a batch of 3 of those samples after a weight change: each meets its own (momentum) batch entry and its 2 older
    # queue entries as positives, the rest of the queue as negatives (loss written out sample by sample)
    b3 = {k: v[:3] for k, v in b.items()}
    with torch.no_grad():
        m.img_proj.weight.add_(0.5 * torch.randn(m.img_proj.weight.shape, generator=torch.Generator().manual_seed(1)))
    q_i, q_r, q_k = m.img_queue.numpy().copy(), m.rna_queue.numpy().copy(), m.key_queue.numpy().copy()
    got = m.loss(b3)["itc"].item()
    enc, unit = m.momentum_encoders, torch.nn.functional.normalize
    with torch.no_grad():
        u_i = unit(m.img_proj(m.encode_image(b3["img"])[:, 0]), dim=-1).numpy()
        u_r = unit(m.rna_proj(m.encode_rna(b3["rna"])[:, 0]), dim=-1).numpy()
        m_i = unit(enc["img_proj"](enc["image_encoder"](m._img_in(b3["img"]))[:, 0]), dim=-1).numpy()
        m_r = unit(enc["rna_proj"](enc["rna_encoder"](m._rna_in(b3["rna"]))[:, 0]), dim=-1).numpy()
    expected = 0.0
    for a, other, q in ((u_i, m_r, q_r), (u_r, m_i, q_i)):
        for i in range(3):
            logits = np.r_[other @ a[i], q @ a[i]] / m.tau_c
            logp = logits - np.log(np.exp(logits).sum())
            positive = np.r_[np.arange(3) == i, q_k == i]
            expected += -logp[positive].mean() / 3 / 2
    assert got == pytest.approx(expected, rel=1e-5)
    # EMA: θ_m ← 0.5 θ_m + 0.5 θ
    w_m = m.momentum_encoders["rna_proj"].weight.clone()
    with torch.no_grad():
        m.rna_proj.weight.add_(1.0)
    m.loss(b)
    torch.testing.assert_close(m.momentum_encoders["rna_proj"].weight, 0.5 * w_m + 0.5 * m.rna_proj.weight.detach())
    # validation (eval mode): in-batch loss, the queue is left alone
    ptr = int(m.queue_ptr)
    same = _module()
    same.load_state_dict(m.state_dict(), strict=False)  # the online weights only
    with torch.no_grad():
        assert m.eval().loss(b)["itc"].item() == pytest.approx(same.eval().loss(b)["itc"].item(), rel=1e-6)
    assert int(m.queue_ptr) == ptr
    assert not any(p.requires_grad for p in m.momentum_encoders.parameters())
    with pytest.raises(ValueError, match="momentum"):
        _module(momentum=1.0)
    with pytest.raises(ValueError, match="queue_size"):
        _module(queue_size=16)


def test_rna_pcs_denoises_the_rna_input_with_the_training_axes(tmp_path):
    """rna_pcs: the RNA input is its projection on the training samples' principal axes (numpy SVD by hand here),
    standardised by the projected training data; kept through save/load; bad values are named."""
    mdata = synthetic_mudata(n=40)
    MultimodalST.setup_mudata(mdata, group_key="label")
    model = MultimodalST(mdata, **SMALL, rna_pcs=3)
    X = np.asarray(mdata["rna"].X, dtype=np.float64)
    mu = X.mean(0)
    v = np.linalg.svd(X - mu, full_matrices=False)[2][:3].T
    rec = mu + (X - mu) @ v @ v.T
    m = model.module
    got = m.denoise_rna(torch.from_numpy(X.astype(np.float32))).numpy()
    np.testing.assert_allclose(got, rec, atol=1e-4)
    np.testing.assert_allclose(m.gene_mean.numpy(), rec.mean(0), atol=1e-5)
    np.testing.assert_allclose(m.gene_std.numpy(), np.maximum(rec.std(0), 1e-3), rtol=1e-4)
    # a direction outside the 3 axes is removed entirely; the training mean is a fixed point
    off = torch.from_numpy((mu + 5 * (np.eye(24)[7] - v @ (v.T @ np.eye(24)[7]))).astype(np.float32))[None]
    np.testing.assert_allclose(m.denoise_rna(off).numpy()[0], mu, atol=1e-4)
    plain = MultimodalST(mdata, **SMALL).module
    assert plain.rna_pcs is None and torch.equal(plain.denoise_rna(off), off)
    model.save(tmp_path / "m")
    loaded = MultimodalST.load(tmp_path / "m", data=mdata)
    torch.testing.assert_close(loaded.module.rna_basis, m.rna_basis)
    np.testing.assert_allclose(
        loaded.get_latent_representation(mdata, "rna"), model.get_latent_representation(mdata, "rna"), atol=1e-5
    )
    with pytest.raises(ValueError, match="rna_pcs"):
        MultimodalST(mdata, **SMALL, rna_pcs=24)  # as many as the genes
    with pytest.raises(ValueError, match="rna_pcs"):
        MultimodalModule([0, 1, 2], rna_pcs=0)
    with pytest.raises(ValueError, match="rna_pcs"):
        MultimodalModule([0, 1, 2], rna_pcs=True)  # not one axis
    for bad in (2.5, True, 0):  # 2.5 was truncated to 2 axes and True taken as 1, silently
        with pytest.raises(ValueError, match="rna_pcs: expected None or a positive integer"):
            MultimodalST(mdata, **SMALL, rna_pcs=bad)


@pytest.mark.parametrize("albef", [{}, {"momentum": 0.9, "queue_size": 32}], ids=["in_batch", "momentum_queue"])
def test_train_retrieve_save_load(tmp_path, albef):
    tr, te = synthetic_mudata(seed=0), synthetic_mudata(n=40, seed=1)
    MultimodalST.setup_mudata(tr, group_key="label")
    model = MultimodalST(tr, **SMALL, **albef, pretrain_epochs=2, max_epochs=12, patience=20)
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
    assert loaded.module.stage == model.module.stage == "joint"  # module.loss computes the joint losses after load
    if albef:  # the queue and momentum encoders were used, and survive save/load (exact resume)
        assert int(model.module.queue_len) == 32 and loaded.config["queue_size"] == 32
        torch.testing.assert_close(loaded.module.rna_queue, model.module.rna_queue)
        assert not torch.equal(model.module.momentum_encoders["img_proj"].weight, model.module.img_proj.weight)
    with pytest.raises(ValueError, match="lacks 1 panel genes"):
        loaded.get_latent_representation(te[:, 1:].copy(), "rna")


@pytest.mark.parametrize(
    ("sizes", "expected"),
    [([1], []), ([2], [2]), ([5], [5]), ([6], [6]), ([7], [5, 2]), ([11], [5, 6]), ([1, 5, 6, 12], [5, 6, 5, 5, 2])],
)
def test_batches_within_groups_count_at_the_edges(sizes, expected):
    """Batches of 5 within groups of the given sizes: a group of one item has none, a single item left over after a
    full batch joins it, a larger remainder is a batch of its own; the sampler's length (computed without building
    the batches) equals the number it yields."""
    from scst.models._multimodal import _BatchesWithin

    groups = np.repeat(np.arange(len(sizes)), sizes)
    sampler = _BatchesWithin(groups, 5, torch.Generator().manual_seed(0))
    batches = list(sampler)
    assert sorted(len(b) for b in batches) == sorted(expected) and len(sampler) == len(expected)
    assert all(len(set(groups[b])) == 1 for b in batches)
    assert sorted(i for b in batches for i in b) == sorted(
        np.flatnonzero(np.isin(groups, np.flatnonzero(np.array(sizes) > 1)))
    )
    with pytest.raises(ValueError, match="batch_size: minibatch_by needs batches of at least 2 samples, got 1"):
        _BatchesWithin(groups, 1, torch.Generator())  # its length would count batches it never yields


def test_minibatch_by_keeps_each_batch_within_one_section():
    """``minibatch_by="section"``: every training minibatch holds samples of one section only, every training item
    comes once per epoch (a section's short last batch included), the validation samples never; the model trains."""
    mdata = synthetic_mudata(n=90, unpaired=True)  # p0: a patch without RNA, p1: an unmatched link
    sections = np.repeat(["A", "B", "C"], 30)  # ~24 training items per section: batches of 12 (+ a short one)
    for m in ("rna", "image"):
        mdata[m].obs["section"] = pd.Categorical(sections)
    with pytest.warns(UserWarning, match="link to no sample"):
        MultimodalST.setup_mudata(mdata, group_key="label")
    model = MultimodalST(mdata, **{**SMALL, "batch_size": 12}, minibatch_by="section", pretrain_epochs=1, max_epochs=1)
    train, val = model._dataloaders(12, 0.2, seed=0)
    rna_names = mdata["rna"].obs_names
    val_rna = {int(i) for b in val for i in b["rna_id"] if i >= 0}
    seen, sizes = [], []
    for epoch in range(2):
        for b in train:
            rows = b["rna_id"][b["rna_id"] >= 0].numpy()
            assert len(set(sections[rows])) == 1, f"epoch {epoch}: a batch mixes sections {set(sections[rows])}"
            assert not set(rows.tolist()) & val_rna
            seen += rows.tolist() if epoch == 0 else []
            sizes.append(len(b["rna_id"]))
    n_train_rna = mdata["rna"].n_obs - len(val_rna)
    assert sorted(seen) == sorted(set(range(len(rna_names))) - val_rna) and len(seen) == n_train_rna
    assert len(train) == len(sizes) // 2 and max(sizes) <= 13 and min(sizes) >= 2  # a lone last item joins a batch
    # the two lonely patches (no RNA) land in their own section's batches, not as a section of their own
    model.train(enable_progress_bar=False, validation=0.2)
    assert len(model.history) == 2 and model.config["minibatch_by"] == "section"
    with pytest.raises(ValueError, match=r"minibatch_by: 'slide' is not an obs column of modality \['rna', 'image'\]"):
        MultimodalST(mdata, **SMALL, minibatch_by="slide")


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
    one = mdata.copy()
    one.mod["image"] = one["image"][:1].copy()  # a single patch: centring it leaves the zero vector
    assert scst.tl.retrieve(one, None, k=1, use_rep="E", group_keys=[])["n_query"] == 1
    with pytest.raises(ValueError, match=r"standardize='center': needs at least 2 samples.*'image': 1"):
        scst.tl.retrieve(one, None, k=1, use_rep="E", group_keys=[], standardize="center")


def test_retrieve_csls_demotes_hub_targets():
    """Three RNA samples lie mostly along a direction every patch shares (hubs): plain cosine returns them for most
    patches; CSLS subtracts each target's mean cosine to its closest queries and recovers most true pairs."""
    from scst.tl._multimodal import _csls

    # hand-checked with one neighbour: r_T = (0.9, 0.8) per query, r_Q = (0.9, 0.75) per target
    sim = np.array([[0.9, 0.1], [0.8, 0.75]])
    np.testing.assert_allclose(_csls(sim, 1), [[0.0, -1.45], [-0.1, -0.05]])
    rng = np.random.default_rng(0)
    mdata = synthetic_mudata(n=40)
    z = rng.normal(size=(40, 8))
    c = rng.normal(size=8)
    c /= np.linalg.norm(c)
    hubs = [3, 17, 29]
    rna = z.copy()
    rna[hubs] = 4 * c + 0.3 * z[hubs]
    mdata["rna"].obsm["E"] = rna.astype(np.float32)
    link = mdata["rna"].obs_names.get_indexer(mdata["image"].obs["rna_sample"])
    mdata["image"].obsm["E"] = (z[link] + 3 * c + rng.normal(0, 0.3, (40, 8))).astype(np.float32)
    cos = scst.tl.retrieve(mdata, None, k=1, use_rep="E", group_keys=[])
    res = scst.tl.retrieve(mdata, None, k=1, use_rep="E", group_keys=[], csls=10)
    assert np.isin(cos["indices"][:, 0], hubs).mean() > 0.5 and cos["exact_top1"] < 0.3 and cos["csls"] is None
    assert np.isin(res["indices"][:, 0], hubs).mean() < 0.25 and res["exact_top1"] > 0.7 and res["csls"] == 10
    # the scores stay the cosines of the returned targets
    e_i, e_r = (e / np.linalg.norm(e, axis=1, keepdims=True) for e in (mdata[m].obsm["E"] for m in ("image", "rna")))
    np.testing.assert_allclose(res["scores"], np.take_along_axis(e_i @ e_r.T, res["indices"], 1), rtol=1e-5)
    for bad in (0, 2.5, True):
        with pytest.raises(ValueError, match="csls"):
            scst.tl.retrieve(mdata, None, use_rep="E", csls=bad)


def _joint_trained(model):
    """Marks ``model`` as through its joint stage: the tests below stub its matching head (known answers), and
    retrieve/gene_importance refuse a head no joint stage trained."""
    model._is_trained, model.module.stage = True, "joint"
    return model


def test_ensemble_of_models_averages_their_cosines():
    """Two models whose embeddings each carry the pairing under independent noise: the ensemble's cosine is the mean
    of theirs (exactly), it finds more true pairs than either, and its re-ranking uses the mean matching logit."""
    rng = np.random.default_rng(0)
    mdata = synthetic_mudata(n=40)
    MultimodalST.setup_mudata(mdata, group_key="label")
    a, b = _joint_trained(MultimodalST(mdata, **SMALL)), _joint_trained(MultimodalST(mdata, **SMALL))
    link = mdata["rna"].obs_names.get_indexer(mdata["image"].obs["rna_sample"])
    z = rng.normal(size=(40, 6))

    def unit(x):
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)

    for m in (a, b):  # each model: the RNA side exact, the image side its own noise (sd 1.2 against the signal's 1)
        emb = {"rna": unit(z), "image": unit(z[link] + rng.normal(0, 1.2, (40, 6)))}
        m.get_latent_representation = lambda md_, modality="rna", batch_size=256, emb=emb: emb[modality]
    single = [scst.tl.retrieve(mdata, m, k=1, group_keys=[])["exact_top1"] for m in (a, b)]
    ens = scst.tl.retrieve(mdata, [a, b], k=1, group_keys=[])
    assert ens["exact_top1"] > max(single) and ens["n_models"] == 2
    scst.tl.embed(mdata, (a, b), key_added="E2")
    e_i, e_r = mdata["image"].obsm["E2"], mdata["rna"].obsm["E2"]
    assert e_i.shape == (40, 12)
    np.testing.assert_allclose(np.linalg.norm(e_i, axis=1), 1.0, rtol=1e-5)
    cos = [m.get_latent_representation(mdata, "image") @ m.get_latent_representation(mdata, "rna").T for m in (a, b)]
    np.testing.assert_allclose(e_i @ e_r.T, (cos[0] + cos[1]) / 2, atol=1e-6)
    # re-ranking: model a's head knows the pairs (1 vs 0), model b's prefers another sample (0.6): the mean keeps truth
    a.get_match_scores = lambda md_, i, r, batch_size=256: (link[np.asarray(i)] == np.asarray(r)).astype(np.float32)
    b.get_match_scores = lambda md_, i, r, batch_size=256: 0.6 * ((link[np.asarray(i)] + 1) % 40 == np.asarray(r))
    res = scst.tl.retrieve(mdata, [a, b], k=1, group_keys=[], rerank=40)
    assert res["exact_top1"] == 1.0
    np.testing.assert_allclose(res["match_scores"][:, 0], 0.5)
    # bad input: no model, or models set up on different panels
    with pytest.raises(ValueError, match="non-empty"):
        scst.tl.retrieve(mdata, [], k=1)
    other = synthetic_mudata(n=40, n_genes=20)
    MultimodalST.setup_mudata(other, group_key="label")
    with pytest.raises(ValueError, match="share modalities, panel genes and image input"):
        scst.tl.embed(mdata, [a, MultimodalST(other, **SMALL)])


def test_retrieve_rerank_reorders_the_cosine_candidates_by_the_matching_head():
    """Embeddings carry only the group (cosine ties within a group); a stub matching head that knows the true pairs
    must recover every pair, in both directions, from the top-``rerank`` cosine candidates."""
    rng = np.random.default_rng(0)
    mdata = synthetic_mudata(n=40)
    group = mdata["rna"].obs["label"].astype(int).to_numpy()
    onehot = np.eye(4, dtype=np.float32)
    mdata["rna"].obsm["E"] = onehot[group] + rng.normal(0, 0.01, (40, 4)).astype(np.float32)
    perm = rng.permutation(40)  # patches in another order than their RNA samples
    mdata.mod["image"] = mdata["image"][perm].copy()
    mdata["image"].obsm["E"] = onehot[group[perm]] + rng.normal(0, 0.01, (40, 4)).astype(np.float32)
    MultimodalST.setup_mudata(mdata, group_key="label")
    model = _joint_trained(MultimodalST(mdata, **SMALL))
    link = mdata["rna"].obs_names.get_indexer(mdata["image"].obs["rna_sample"])
    calls = []

    def stub(md_, image_index, rna_index, batch_size=256):
        calls.append((np.asarray(image_index), np.asarray(rna_index)))
        return (link[np.asarray(image_index)] == np.asarray(rna_index)).astype(np.float32)

    model.get_match_scores = stub
    cos = scst.tl.retrieve(mdata, model, k=3, use_rep="E", group_keys=["label"])
    assert cos["exact_top1"] < 0.3 and cos["accuracy"]["label"] == 1.0 and cos["rerank"] is None and not calls
    res = scst.tl.retrieve(mdata, model, k=3, use_rep="E", group_keys=["label"], rerank=10)
    assert res["exact_top1"] == 1.0 and res["rerank"] == 10
    img_idx, rna_idx = calls[-1]
    assert len(img_idx) == 40 * 10 and np.array_equal(img_idx, np.repeat(np.arange(40), 10))
    assert np.array_equal(res["match_scores"][:, 0], np.ones(40, np.float32))
    # the scores stay the cosines of the returned targets
    e_i, e_r = (e / np.linalg.norm(e, axis=1, keepdims=True) for e in (mdata[m].obsm["E"] for m in ("image", "rna")))
    np.testing.assert_allclose(res["scores"], np.take_along_axis(e_i @ e_r.T, res["indices"], 1), rtol=1e-5)
    # too few candidates: only where the true sample is among the top 2 by cosine can it be found
    few = scst.tl.retrieve(mdata, model, k=1, use_rep="E", group_keys=[], rerank=2)
    in_top2 = (cos["indices"][:, :2] == link[:, None]).any(1).mean()
    assert few["exact_top1"] == pytest.approx(in_top2) and in_top2 < 1.0
    # RNA → image: the stub receives (candidate patches, the querying sample)
    back = scst.tl.retrieve(mdata, model, query="rna", k=1, use_rep="E", group_keys=[], rerank=10)
    assert back["exact_top1"] == 1.0
    assert np.array_equal(calls[-1][1], np.repeat(np.arange(40), 10))
    with pytest.raises(ValueError, match="rerank"):
        scst.tl.retrieve(mdata, None, use_rep="E", rerank=5)
    for bad in (0, True):  # True would have re-ranked one candidate, i.e. nothing
        with pytest.raises(ValueError, match="rerank: expected None or a positive integer"):
            scst.tl.retrieve(mdata, model, use_rep="E", rerank=bad)
    no_itm = MultimodalST(mdata, **SMALL, weights={"itm": 0.0})
    with pytest.raises(ValueError, match="matching loss"):
        scst.tl.retrieve(mdata, no_itm, use_rep="E", rerank=5)


def test_get_match_scores_are_the_matching_head_logits():
    mdata = synthetic_mudata(n=12)
    MultimodalST.setup_mudata(mdata, group_key="label")
    model = MultimodalST(mdata, **SMALL)
    ii, jj = np.array([0, 3, 3, 11]), np.array([0, 0, 7, 2])
    got = model.get_match_scores(mdata, ii, jj, batch_size=3)
    m = model.module.eval()
    with torch.no_grad():
        x = torch.from_numpy(mdata["rna"].X[jj])
        img = torch.from_numpy(mdata["image"].obsm["patch"][ii])
        want = m.match_logit(m.encode_rna(x), m.encode_image(img)).numpy()
    assert got.shape == (4,) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert len(np.unique(np.round(got, 6))) > 1  # pairs differ
    with pytest.raises(ValueError, match="equal lengths"):
        model.get_match_scores(mdata, [0, 1], [0])
    with pytest.raises(IndexError, match="rna_index"):
        model.get_match_scores(mdata, [0], [12])
    for bad in (0, -3):  # 0: range()'s error; negative: no batch, an empty or failed result
        with pytest.raises(ValueError, match="batch_size: expected a positive integer"):
            model.get_match_scores(mdata, ii, jj, batch_size=bad)
        with pytest.raises(ValueError, match="batch_size: expected a positive integer"):
            model.get_latent_representation(mdata, "rna", batch_size=bad)


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
    # an ensemble's attributions are the mean of its models' (its score is the mean of theirs)
    from scst.tl._multimodal import _attributions

    other = MultimodalST(mdata, **SMALL, seed=1)  # untrained: attributions of another size and pattern
    data, rna_row = model._arrays(mdata)
    paired = np.flatnonzero(rna_row >= 0)[:48]
    each = [_attributions(m, data, rna_row, paired, "gradcam", "itc", 16, 64) for m in (model, other)]
    assert not np.allclose(each[0], each[1])
    scst.tl.gene_importance(mdata, [model, other], score="itc", n_top=3, max_pairs=48)
    want = np.abs((each[0] + each[1]) / 2).mean(0)
    np.testing.assert_allclose(mdata["rna"].var["scst_importance_mean"], want, rtol=1e-5, atol=1e-7)


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
    # a named trunk without weights starts from random initialisation: it says so; the paper's ViT does not warn
    with pytest.warns(UserWarning, match=r"image_weights=None: the resnet18 image encoder starts from random"):
        random = MultimodalST(mdata, **SMALL, image_encoder="resnet18")
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        MultimodalST(mdata, **SMALL)
        random.save(tmp_path / "random", overwrite=True)
        MultimodalST.load(tmp_path / "random", mdata)  # the saved weights replace the trunk's: no warning


def test_unpaired_or_unlabelled_patches_are_no_positives_of_each_other():
    """Group codes of the triplet / contrastive losses: a patch without a label of its own takes its RNA sample's;
    one with neither has a code no other sample shares — with no label column on the image side at all (as
    bulk_to_mudata writes by default), and when an unlabelled RNA sample's negative code is inherited by its patch.
    Fully paired, labelled data keep the category codes."""
    # (a) no label column on the image side, three unpaired patches
    mdata = synthetic_mudata(n=12, n_genes=6)
    im = mdata["image"]
    im.obs["rna_sample"] = im.obs["rna_sample"].astype(object)
    im.obs.loc[["p0", "p1", "p2"], "rna_sample"] = np.nan
    del im.obs["label"]
    MultimodalST.setup_mudata(mdata, group_key="label")
    data, rna_row = MultimodalST(mdata, **SMALL)._arrays(mdata)
    label = np.arange(12) % 4
    np.testing.assert_array_equal(data["rna_group"], label)
    np.testing.assert_array_equal(data["img_group"][3:], label[3:])  # from their RNA samples
    lone = data["img_group"][:3]
    assert (lone < 0).all() and len(set(lone)) == 3 and not set(lone) & set(data["rna_group"])
    same = data["img_group"][:, None] == data["img_group"][None, :]
    assert not (same[:3] & ~np.eye(12, dtype=bool)[:3]).any()  # no positive for the unpaired patches
    # (b) an unpaired unlabelled patch (p0) and the patch (p5) of an unlabelled RNA sample (s0): distinct codes
    mdata = synthetic_mudata(n=12, n_genes=6)
    r, im = mdata["rna"], mdata["image"]
    r.obs["label"] = r.obs["label"].astype(object)
    r.obs.loc["s0", "label"] = np.nan
    im.obs["label"] = im.obs["label"].astype(object)
    im.obs["rna_sample"] = im.obs["rna_sample"].astype(object)
    im.obs.loc["p0", ["label", "rna_sample"]] = [np.nan, np.nan]
    im.obs.loc["p5", ["label", "rna_sample"]] = [np.nan, "s0"]
    MultimodalST.setup_mudata(mdata, group_key="label")
    data, _ = MultimodalST(mdata, **SMALL)._arrays(mdata)
    assert data["rna_group"][0] < 0 and data["img_group"][5] == data["rna_group"][0]  # p5 takes s0's code
    assert data["img_group"][0] < 0 and data["img_group"][0] != data["img_group"][5]
    assert np.sum(data["img_group"] == data["img_group"][0]) == 1
    # fully paired and labelled: the category codes, as before
    mdata = synthetic_mudata(n=12, n_genes=6)
    MultimodalST.setup_mudata(mdata, group_key="label")
    data, rna_row = MultimodalST(mdata, **SMALL)._arrays(mdata)
    np.testing.assert_array_equal(rna_row, np.arange(12))
    np.testing.assert_array_equal(data["rna_group"], label)
    np.testing.assert_array_equal(data["img_group"], label)


def test_validation_holds_out_whole_rna_samples_with_all_their_patches():
    """Several patches per RNA sample: ``validation`` draws a fraction of the RNA *samples*; every patch of a drawn
    sample (and the sample itself) is validation, none reaches training — no sample straddles the split."""
    mdata = synthetic_mudata(n=20, n_genes=6)
    im = mdata["image"]
    three = ad.concat([im] * 3, index_unique="-")  # three patches per RNA sample
    three.obs_names = [f"p{i}" for i in range(three.n_obs)]
    three.obsm["patch"] = np.concatenate([im.obsm["patch"]] * 3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mdata = md.MuData({"rna": mdata["rna"], "image": three})
    MultimodalST.setup_mudata(mdata, group_key="label")
    model = MultimodalST(mdata, **SMALL)
    for seed in (0, 1, 2):
        train, val = model._dataloaders(8, 0.25, seed=seed)
        train_pairs, val_pairs = train.dataset.pairs, val.dataset.pairs
        val_rna, train_rna = set(val_pairs[:, 1].tolist()), set(train_pairs[:, 1].tolist())
        assert len(val_rna) == 5 and len(train_rna) == 15 and not val_rna & train_rna
        # each sample's three patches all sit on its side
        assert len(val_pairs) == 15 and len(train_pairs) == 45
        link = mdata["rna"].obs_names.get_indexer(three.obs["rna_sample"])
        assert sorted(val_pairs[:, 0].tolist()) == sorted(np.flatnonzero(np.isin(link, list(val_rna))).tolist())
        assert all(link[i] == r for i, r in np.concatenate([train_pairs, val_pairs]))
        # the training loader yields no validation sample
        seen = {int(r) for b in train for r in b["rna_id"]}
        assert seen == train_rna
    assert train.dataset.augment and not val.dataset.augment  # validation patches are not flipped at random
    for bad in (1.0, -0.1, ["S1"], "C3"):  # a list of sections (the image models' validation) is no fraction
        with pytest.raises(ValueError, match=r"validation: expected a fraction of RNA samples in \[0, 1\)"):
            model._dataloaders(8, bad, seed=0)


def test_retrieve_rerank_reorders_only_the_pool_and_keeps_the_cosine_order_beyond_it():
    """k=6, rerank=3: a stub head scoring candidates by their cosine rank (the last best) reverses each query's first
    three cosine candidates; the targets 4–6 stay in their cosine order."""
    rng = np.random.default_rng(0)
    mdata = synthetic_mudata(n=12)
    mdata["rna"].obsm["E"] = rng.normal(size=(12, 5)).astype(np.float32)
    mdata["image"].obsm["E"] = rng.normal(size=(12, 5)).astype(np.float32)
    MultimodalST.setup_mudata(mdata, group_key="label")
    model = _joint_trained(MultimodalST(mdata, **SMALL))
    cos = scst.tl.retrieve(mdata, None, k=12, use_rep="E", group_keys=[])["indices"]
    rank = np.argsort(cos, axis=1)  # rank[q, t]: position of target t in query q's cosine order

    def stub(md_, image_index, rna_index, batch_size=256):
        return rank[np.asarray(image_index), np.asarray(rna_index)].astype(np.float32)

    model.get_match_scores = stub
    res = scst.tl.retrieve(mdata, model, k=6, use_rep="E", group_keys=[], rerank=3)
    np.testing.assert_array_equal(res["indices"], np.c_[cos[:, 2::-1], cos[:, 3:6]])
    np.testing.assert_array_equal(res["match_scores"], np.tile([2.0, 1.0, 0.0], (12, 1)))


def test_supervised_contrastive_and_triplet_match_a_loop_over_anchors():
    """Unequal, unnormalised vectors and tau 0.5: each anchor's loss is its own row's log-softmax (self excluded)
    averaged over its positives; the triplet loss, with one positive and one negative per anchor, is
    relu(d(a, p)² − d(a, n)² + margin) on unit vectors, the anchor without a positive left out."""
    z = torch.tensor([[3.0, 0.5, 0.0], [1.0, 1.0, 1.0], [0.0, 2.0, -1.0], [0.5, -1.0, 2.0], [-1.0, 0.0, 0.5]])
    labels = torch.tensor([0, 0, 1, 1, 1])  # anchors with one and with two positives
    u = (z / z.norm(dim=1, keepdim=True)).numpy().astype(np.float64)
    sim = u @ u.T / 0.5
    expected = []
    for i in range(5):
        others = [j for j in range(5) if j != i]
        lse = np.log(np.exp(sim[i, others]).sum())
        expected.append(-np.mean([sim[i, j] - lse for j in others if labels[j] == labels[i]]))
    assert supervised_contrastive(z, labels, 0.5).item() == pytest.approx(np.mean(expected), rel=1e-5)
    three = torch.tensor([0, 0, 1])
    d = ((u[:3, None] - u[None, :3]) ** 2).sum(-1)
    want = np.mean([max(d[0, 1] - d[0, 2] + 1.5, 0), max(d[1, 0] - d[1, 2] + 1.5, 0)])
    assert want > 0 and triplet_loss(z[:3], three, 1.5).item() == pytest.approx(want, rel=1e-5)
    # one label only: no anchor has a negative, so there is no triplet (0, not a distance to an arbitrary sample)
    assert triplet_loss(z[:2], torch.tensor([0, 0]), 1.5).item() == 0.0


def test_rna_encoder_masking_standardisation_and_stage_switches():
    """The masked group's values cannot reach the encoder's output (its token is replaced, not added to); the input is
    standardised as (x − gene_mean) / gene_std; with ``unimodal_in_joint`` the pre-training stage still computes the
    pre-training losses only."""
    torch.manual_seed(0)
    m = MultimodalModule([0, 0, 1, 1, 2], dim=8, heads=2, image_px=16, sub_patch=8, embed_dim=8, dropout=0.0,
                         unimodal_in_joint=True).eval()  # fmt: skip
    x = torch.randn(4, 5)
    other = x.clone()
    other[:, 2:4] += 5.0  # group 1 only
    masked = torch.ones(4, dtype=torch.long)
    with torch.no_grad():
        torch.testing.assert_close(m.encode_rna(x, masked), m.encode_rna(other, masked))
        assert not torch.allclose(m.encode_rna(x), m.encode_rna(other))
        m.gene_mean.copy_(torch.arange(5.0))
        m.gene_std.copy_(torch.tensor([1.0, 2.0, 4.0, 0.5, 1.0]))
        torch.testing.assert_close(m._rna_in(x), (x - torch.arange(5.0)) / torch.tensor([1.0, 2.0, 4.0, 0.5, 1.0]))
    b = _joint_batch(n=6)
    b["rna"] = b["rna"][:, :5]
    assert set(m.loss(b)) == {"rna_mae", "rna_con", "img_triplet", "loss"}  # stage "pretrain"


def test_group_tokens_masked_token_and_decoder_heads_by_group():
    """Genes of interleaved groups: token g = Linear_g(the genes of group g, in panel order) + group embedding g; the
    masked group's token is the mask token + its group embedding (CLS first); decoder head g reads token g + 1; a
    group id without any gene is an error."""
    from scst.nn._multimodal import GroupDecoder, GroupTokenizer, RNAEncoder

    torch.manual_seed(0)
    groups = [1, 0, 2, 0, 1, 1]
    tok = GroupTokenizer(groups, 4)
    assert tok.sizes == [2, 3, 1]
    x = torch.randn(3, 6)
    got = tok(x)
    for g, genes in enumerate(([1, 3], [0, 4, 5], [2])):
        torch.testing.assert_close(got[:, g], tok.proj[g](x[:, genes]) + tok.group_embed[g])
    with pytest.raises(ValueError, match=r"groups \[1\] have no gene"):
        GroupTokenizer([0, 2, 2], 4)
    enc = RNAEncoder(groups, 4, depth=1, heads=2, dropout=0.0)
    enc.blocks, enc.norm = torch.nn.Identity(), torch.nn.Identity()  # the tokens as they enter the transformer
    with torch.no_grad():
        out = enc(x, torch.tensor([0, 2, 1]))
        plain = tok.__class__.forward(enc.tokenizer, x)
    for row, g in enumerate([0, 2, 1]):
        torch.testing.assert_close(out[row, 0], enc.cls[0, 0])
        torch.testing.assert_close(out[row, 1 + g], enc.mask_token[0, 0] + enc.tokenizer.group_embed[g])
        kept = [h for h in range(3) if h != g]
        torch.testing.assert_close(out[row, [1 + h for h in kept]], plain[row, kept])
    dec = GroupDecoder([2, 3, 1], 4, heads=2)
    dec.blocks = torch.nn.Identity()
    tokens = torch.randn(3, 4, 4)
    rec = dec(tokens)
    for g in range(3):
        torch.testing.assert_close(rec[g], dec.heads[g](tokens[:, g + 1]))


def test_patch_vit_positions_fusion_image_input_and_shared_embeddings():
    """The ViT's CLS output depends on where each sub-patch sits (learned positions; without them a transformer
    cannot tell two swapped sub-patches apart); the sub-patch must divide the patch; uint8 patches are scaled to
    [0, 1] before ImageNet normalisation; the fusion encoder's output depends on the image tokens; the shared
    embeddings are the unit-norm projections of the CLS tokens."""
    from scst.nn._multimodal import PatchViT

    torch.manual_seed(0)
    m = MultimodalModule([0, 0, 1, 1, 2], dim=8, heads=2, image_px=16, sub_patch=8, embed_dim=8, dropout=0.0).eval()
    img = torch.randint(0, 255, (2, 3, 16, 16), dtype=torch.uint8)
    swapped = img.clone()
    swapped[..., :8, :8], swapped[..., 8:, 8:] = img[..., 8:, 8:], img[..., :8, :8]  # two sub-patches trade places
    vit = m.image_encoder
    with torch.no_grad():
        assert not torch.allclose(vit(m._img_in(img))[:, 0], vit(m._img_in(swapped))[:, 0], atol=1e-4)
        vit.pos.zero_()  # control: without positions the CLS output cannot tell the two apart
        torch.testing.assert_close(vit(m._img_in(img))[:, 0], vit(m._img_in(swapped))[:, 0])
        torch.testing.assert_close(m.encode_image(img), m.encode_image(img.float() / 255.0))
        x = torch.randn(2, 5)
        r_tok, i_tok = m.encode_rna(x), m.encode_image(img)
        assert not torch.allclose(m.fusion(r_tok, i_tok), m.fusion(r_tok, m.encode_image(swapped.flip(1))))
        fused = m.fusion(r_tok, i_tok)  # ends in a (freshly initialised) LayerNorm: each token standardised
        torch.testing.assert_close(fused.mean(-1), torch.zeros(2, 4), atol=1e-5, rtol=0)
        torch.testing.assert_close(fused.var(-1, unbiased=False), torch.ones(2, 4), atol=1e-3, rtol=0)
        want_r = torch.nn.functional.normalize(m.rna_proj(r_tok[:, 0]), dim=-1)
        want_i = torch.nn.functional.normalize(m.img_proj(i_tok[:, 0]), dim=-1)
        torch.testing.assert_close(m.embed_rna(x), want_r)
        torch.testing.assert_close(m.embed_image(img), want_i)
        torch.testing.assert_close(want_i.norm(dim=1), torch.ones(2))
    with pytest.raises(ValueError, match="must divide"):
        PatchViT(20, 8, 8, 1, 2, 0.0)


def _mixed_batch(match_groups=(0, 1, 0, 2, 1, 2)):
    """Six items: item 1 has no patch, item 5 no RNA (so the paired items sit at other rows of the RNA and of the
    image tensors); items 3 and 4 are two patches of one RNA sample (id 3)."""
    b = _joint_batch(n=6)
    b["has_rna"] = torch.tensor([True, True, True, True, True, False])
    b["has_img"] = torch.tensor([True, False, True, True, True, True])
    b["rna"][4] = b["rna"][3]
    b["rna_id"] = torch.tensor([0, 1, 2, 3, 3, -1])
    b["rna_group"] = torch.tensor(match_groups)
    b["img_group"] = torch.tensor([1, 0, 1, 0, 2, 2])
    return b


@pytest.mark.parametrize("match_on", ["sample", "group"])
def test_image_rna_contrastive_pairs_each_patch_with_its_own_sample(match_on):
    """In-batch image–RNA loss written out pair by pair: only items with both modalities enter, each patch's
    positives are the RNA of its own sample (``"sample"``: items 3 and 4 share one) or of its group, the target
    spreads evenly over the positives, and the two directions use image→RNA and RNA→image softmaxes."""
    m = _module(match_on=match_on).eval()
    b = _mixed_batch()
    with torch.no_grad():
        got = m.loss(b)["itc"].item()
        u_i = m.embed_image(b["img"]).numpy().astype(np.float64)
        u_r = m.embed_rna(b["rna"]).numpy().astype(np.float64)
    paired = [0, 2, 3, 4]
    key = (b["rna_id"] if match_on == "sample" else b["rna_group"]).numpy()[paired]
    sim = u_i[paired] @ u_r[paired].T / m.tau_c
    expected = 0.0
    for s in (sim, sim.T):
        logp = s - np.log(np.exp(s).sum(1, keepdims=True))
        expected += np.mean([-logp[i, key == key[i]].mean() for i in range(4)]) / 2
    assert got == pytest.approx(expected, rel=1e-5)


def test_unimodal_losses_use_each_modalitys_own_samples_and_groups():
    """Pre-training: the RNA contrastive loss counts an RNA sample shown with several patches once and uses the RNA
    groups; the triplet loss uses the patches' own groups (here unlike their samples' groups); the total is the
    weighted sum of the terms."""
    torch.manual_seed(0)
    m = MultimodalModule([0, 0, 1, 1, 2], dim=8, heads=2, image_px=16, sub_patch=8, embed_dim=8, dropout=0.0,
                         margin=4.0, weights={"rna_mae": 0.0, "rna_con": 0.5, "img_triplet": 2.0}).eval()  # fmt: skip
    b = _mixed_batch(match_groups=(0, 1, 5, 0, 0, 1))
    b["has_img"] = torch.tensor([True, False, True, True, False, False])
    b["img_group"] = torch.tensor([0, 9, 0, 1, 9, 9])  # patches 0, 2: group 0, patch 3: group 1 (its sample's: 0)
    with torch.no_grad():
        out = m.loss(b)
        tok = m.encode_rna(b["rna"][[0, 1, 2, 3]])[:, 0]  # item 4 repeats item 3's sample
        u = torch.nn.functional.normalize(m.encode_image(b["img"][[0, 2, 3]])[:, 0], dim=-1).numpy()
    want_con = supervised_contrastive(tok, torch.tensor([0, 1, 5, 0]), m.tau).item()
    assert out["rna_con"].item() == pytest.approx(want_con, rel=1e-5)
    # anchors 0 and 2 (group 0): each other's positive, patch 3 their negative; patch 3 has no positive
    d = ((u[:, None] - u[None]) ** 2).sum(-1)
    want_tri = np.mean([d[0, 1] - d[0, 2] + 4.0, d[1, 0] - d[1, 2] + 4.0])
    assert out["img_triplet"].item() == pytest.approx(want_tri, rel=1e-5)
    assert out["loss"].item() == pytest.approx(0.5 * want_con + 2.0 * want_tri, rel=1e-5)


def test_matching_hard_negatives_are_drawn_from_each_side_and_never_the_true_pair():
    """``_itm`` with tokens that carry their row number and a recording matching head: the positive pairs come first
    (label 1), then each image with an RNA drawn from its own image→RNA similarities, then each RNA with an image
    drawn from its RNA→image similarities (label 0). The similarities make image i prefer RNA i + 1 among the
    negatives (so RNA r prefers image r − 1); then the true pairs are rated so far ahead that every negative's
    softmax weight underflows to 0. No true pair is ever drawn."""
    m = _module()
    n = 5
    rt = torch.arange(n, dtype=torch.float32)[:, None, None].expand(n, 2, 8)
    it = 10 + torch.arange(n, dtype=torch.float32)[:, None, None].expand(n, 3, 8)
    key = torch.tensor([0, 1, 1, 2, 3])  # items 1 and 2 match each other (same group)
    pos = key[:, None] == key[None, :]
    sim = torch.zeros(n, n)
    sim[torch.arange(n), (torch.arange(n) + 1) % n] = 30.0
    sim[pos] = 0.0
    calls = []

    def head(rna_all, img_all):
        r, i = rna_all[:, 0, 0].long(), img_all[:, 0, 0].long() - 10
        calls.append((r, i))
        return torch.where(key[r] == key[i], 50.0, -50.0)  # a head that knows the pairs: loss ~ 0 iff labels right

    m.match_logit = head
    torch.manual_seed(0)
    for s in [sim] * 10 + [200.0 * pos] * 10:  # then true pairs so far ahead that no negative keeps a weight
        assert m._itm(rt, it, s, pos).item() < 1e-6
    for r, i in calls:
        assert torch.equal(r[:n], torch.arange(n)) and torch.equal(i[:n], torch.arange(n))
        assert (key[r[n:]] != key[i[n:]]).all()  # hard negatives only
        img_side, rna_side = slice(n, 2 * n), slice(2 * n, 3 * n)
        assert torch.equal(i[img_side], torch.arange(n)) and torch.equal(r[rna_side], torch.arange(n))
    r, i = calls[0]  # image 1's preferred RNA (2) is its positive: it draws another
    for img in (0, 2, 3, 4):  # the preferred negative RNA (img + 1) is not a positive for these images
        assert r[n + img] == (img + 1) % n
    for rna in (0, 1, 3, 4):  # RNA r prefers image r − 1 where that is not a positive
        if key[(rna - 1) % n] != key[rna]:
            assert i[2 * n + rna] == (rna - 1) % n
    # a batch whose items all show one sample has no negative pair: no matching loss (not one on positives only)
    m = _module()
    m.weights["itm"] = 1.0
    b = _joint_batch()
    b["rna_id"] = torch.zeros(6, dtype=torch.long)
    out = m.loss(b)
    assert "itm" not in out and "itc" in out


def test_momentum_encoders_copy_then_follow_slowly_and_the_queue_keeps_the_latest():
    """momentum 0.9: the first joint step copies the trained encoders (weights changed since construction, as after
    pre-training) and their buffers; later steps move θ_m by 10 % towards θ; a batch larger than the queue leaves
    its last samples there; without a queue the loss is the in-batch one against the momentum embeddings."""
    b = _joint_batch()
    m = _module(momentum=0.9, queue_size=4).train()
    m.image_encoder.register_buffer("stat", torch.zeros(3))  # as a BatchNorm's running statistics
    m.momentum_encoders["image_encoder"].register_buffer("stat", torch.zeros(3))
    with torch.no_grad():
        for p in m.rna_encoder.parameters():
            p.add_(0.1)
        m.rna_proj.weight.add_(1.0)
        m.image_encoder.stat.fill_(3.0)
    m.loss(b)
    for k in ("rna_encoder", "image_encoder", "rna_proj", "img_proj"):
        for p_m, p in zip(m.momentum_encoders[k].parameters(), getattr(m, k).parameters()):
            assert torch.equal(p_m, p.detach()), k
    assert torch.equal(m.momentum_encoders["image_encoder"].stat, torch.full((3,), 3.0))
    assert m.key_queue.tolist() == [2, 3, 4, 5] and int(m.queue_ptr) == 0 and int(m.queue_len) == 4
    w_m = m.momentum_encoders["rna_proj"].weight.clone()
    with torch.no_grad():
        m.rna_proj.weight.add_(1.0)
    m.loss(b)
    torch.testing.assert_close(m.momentum_encoders["rna_proj"].weight, 0.9 * w_m + 0.1 * m.rna_proj.weight.detach())
    enc, unit = m.momentum_encoders, torch.nn.functional.normalize
    with torch.no_grad():  # the queue holds the momentum embeddings (not the online ones, which now differ)
        m_r = unit(enc["rna_proj"](enc["rna_encoder"](m._rna_in(b["rna"][2:]))[:, 0]), dim=-1)
        m_i = unit(enc["img_proj"](enc["image_encoder"](m._img_in(b["img"][2:]))[:, 0]), dim=-1)
    torch.testing.assert_close(m.rna_queue, m_r)
    torch.testing.assert_close(m.img_queue, m_i)
    assert not torch.allclose(m.rna_queue, m.embed_rna(b["rna"][2:]).detach(), atol=1e-3)
    # no queue: each sample against this batch's momentum embeddings only
    m = _module(momentum=0.9).train()
    with torch.no_grad():
        m.momentum_encoders["rna_proj"].weight.add_(0.5)  # made to differ; the first step copies it back
        m.loss(b)  # copies
        m.rna_proj.weight.mul_(-1.0)  # the online side moves; the momentum side lags
    got = m.loss(b)["itc"].item()
    enc, unit = m.momentum_encoders, torch.nn.functional.normalize
    with torch.no_grad():
        u_i, u_r = m.embed_image(b["img"]).numpy(), m.embed_rna(b["rna"]).numpy()
        m_i = unit(enc["img_proj"](enc["image_encoder"](m._img_in(b["img"]))[:, 0]), dim=-1).numpy()
        m_r = unit(enc["rna_proj"](enc["rna_encoder"](m._rna_in(b["rna"]))[:, 0]), dim=-1).numpy()
    expected = 0.0
    for a, other in ((u_i, m_r), (u_r, m_i)):
        logits = a @ other.T / m.tau_c
        expected += -np.mean(np.diag(logits - np.log(np.exp(logits).sum(1, keepdims=True)))) / 2
    assert got == pytest.approx(expected, rel=1e-5) and int(m.queue_len) == 0


def test_masking_reaches_every_group_and_the_decoders_see_only_masked_tokens():
    """One masked group per RNA sample, drawn over all groups (the last included); the masked-autoencoder decoder and
    the fusion encoder of the RNA-decoder head get the tokens of that masked encoding (never the unmasked ones, which
    would show the target), the fusion one for the paired items only; the RNA decoder head g reads token g + 1."""
    torch.manual_seed(0)
    m = MultimodalModule([0, 0, 1, 1, 2], dim=8, heads=2, image_px=16, sub_patch=8, embed_dim=8, dropout=0.0)
    m.stage = "joint"
    m.unimodal_in_joint = True
    b = _mixed_batch()
    b = {k: v.repeat(8, *([1] * (v.ndim - 1))) for k, v in b.items()}  # 48 items, 40 with RNA
    encoded, fused_in, decoded = [], [], []
    encode_rna, fusion, mae = m.encode_rna, m.fusion.forward, m._mae

    def rec_encode(x, mask_idx=None):
        out = encode_rna(x, mask_idx)
        encoded.append((mask_idx, out))
        return out

    def rec_fusion(r, i):
        fused_in.append(r)
        return fusion(r, i)

    def rec_mae(x, tokens, mask_idx, decoder):
        decoded.append((tokens, mask_idx, decoder))
        return mae(x, tokens, mask_idx, decoder)

    m.encode_rna, m.fusion.forward, m._mae = rec_encode, rec_fusion, rec_mae
    with torch.no_grad():
        m.eval().loss(b)
    ((mask_idx, masked_tok),) = [(i, t) for i, t in encoded if i is not None]
    assert sorted(set(mask_idx.tolist())) == [0, 1, 2]
    ri = torch.cumsum(b["has_rna"].long(), 0)[b["has_rna"] & b["has_img"]] - 1
    mae_tok, mae_idx, mae_dec = decoded[0]
    assert mae_dec is m.mae_decoder and mae_tok is masked_tok and torch.equal(mae_idx, mask_idx)
    rec_tok, rec_idx, rec_dec = decoded[1]
    assert rec_dec is m.rna_decoder and torch.equal(rec_idx, mask_idx[ri])
    torch.testing.assert_close(fused_in[-1], masked_tok[ri])
    # the RNA decoder head of group g reads fused token g + 1: heads that copy their token's first entries
    tokens = torch.randn(2, 4, 8)
    x = torch.randn(2, 5)
    target = m.rna_encoder.tokenizer.split(m._rna_in(x))
    for g, t in enumerate(target):
        tokens[:, g + 1, : t.shape[1]] = t

    class First(torch.nn.Module):
        def __init__(self, n):
            super().__init__()
            self.n = n

        def forward(self, t):
            return t[:, : self.n]

    copy = torch.nn.ModuleList([First(2), First(2), First(1)])
    for g in range(3):
        assert mae(x, tokens, torch.full((2,), g), copy).item() == pytest.approx(0.0, abs=1e-12)


def test_frozen_encoders_only_in_the_joint_stage_and_matching_does_not_train_the_projections():
    """``freeze_encoders``: the encoders still learn in pre-training and receive no gradient in the joint stage; the
    matching loss uses the contrastive similarities only to draw negatives (detached): alone it leaves the shared
    projections without gradient."""
    torch.manual_seed(0)
    m = MultimodalModule([0, 0, 1, 1, 2], dim=8, heads=2, image_px=16, sub_patch=8, embed_dim=8, dropout=0.0,
                         freeze_encoders=True)  # fmt: skip
    b = _joint_batch()
    m.loss(b)["loss"].backward()
    assert m.rna_encoder.cls.grad is not None and m.image_encoder.cls.grad is not None
    m.zero_grad(set_to_none=True)
    m.stage = "joint"
    m.loss(b)["loss"].backward()
    assert all(p.grad is None for p in [*m.rna_encoder.parameters(), *m.image_encoder.parameters()])
    assert m.rna_proj.weight.grad is not None and m.itm_head.weight.grad is not None
    m = _module(freeze_encoders=False)
    m.weights.update(itc=0.0, itm=1.0)
    out = m.loss(b)
    assert set(out) == {"itm", "loss"}
    out["loss"].backward()
    assert m.itm_head.weight.grad is not None and m.rna_encoder.cls.grad is not None
    assert m.rna_proj.weight.grad is None and m.img_proj.weight.grad is None


def test_training_items_groups_and_loaders_by_hand():
    """Twelve samples: patch p0 links to s0 (row 0 is a real link), patch p11 has no sample and sample s11 no patch
    (both become unpaired items), patch p3 has a label of its own unlike its sample's. The items, their groups, the
    held-out share (nearest whole number of samples), the seeded shuffling and flips, and the single batch of a
    training set smaller than ``batch_size`` are checked one by one."""
    from scst.models._multimodal import _Items

    mdata = synthetic_mudata(n=12, n_genes=6)
    im = mdata["image"]
    im.obs["rna_sample"] = im.obs["rna_sample"].astype(object)
    im.obs.loc["p11", "rna_sample"] = np.nan
    im.obs["label"] = im.obs["label"].astype(str)
    im.obs.loc["p3", "label"] = "0"  # s3 is in group 3
    MultimodalST.setup_mudata(mdata, group_key="label")
    model = MultimodalST(mdata, **SMALL, augment=True)
    data, rna_row = model._arrays(mdata)
    np.testing.assert_array_equal(rna_row, [*range(11), -1])
    assert data["img_group"][3] == 0 and data["rna_group"][3] == 3 and data["img_group"][7] == 3
    train, val = model._dataloaders(64, 0.0, seed=0)
    assert val is None
    pairs = train.dataset.pairs
    assert sorted(map(tuple, pairs.tolist())) == sorted([(i, i) for i in range(11)] + [(11, -1), (-1, 11)])
    (batch,) = list(train)  # 13 items < batch_size: one batch, not none
    assert len(batch["rna_id"]) == 13
    order = pairs[[int(np.flatnonzero((pairs == p).all(1))[0]) for p in ([0, 0], [3, 3], [11, -1], [-1, 11])]]
    items = _Items(order, data, False, 0).collate([0, 1, 2, 3])
    assert items["has_img"].tolist() == [True, True, True, False]
    assert items["has_rna"].tolist() == [True, True, False, True]
    assert items["rna_id"].tolist() == [0, 3, -1, 11]
    assert items["rna_group"][[0, 1, 3]].tolist() == [0, 3, 3] and items["img_group"][:3].tolist() == [0, 0, 3]
    np.testing.assert_array_equal(items["img"][:3].numpy(), data["img"][[0, 3, 11]])  # no flips without augment
    torch.testing.assert_close(items["rna"][[0, 1, 3]], torch.from_numpy(data["rna"][[0, 3, 11]]))
    # flips and shuffling follow the seed
    every = list(range(len(pairs)))
    flips = [_Items(pairs, data, True, s).collate(every)["img"] for s in (0, 0, 1)]
    assert torch.equal(flips[0], flips[1]) and not torch.equal(flips[0], flips[2])
    ids = [[b["rna_id"].tolist() for b in model._dataloaders(4, 0.0, seed=s)[0]] for s in (0, 0, 1)]
    assert ids[0] == ids[1] and ids[0] != ids[2]
    # validation: the nearest whole number of RNA samples (0.3 × 12 = 3.6 → 4), 10 % (→ 1) by default
    assert len({int(r) for b in model._dataloaders(64, 0.3, seed=0)[1] for r in b["rna_id"]}) == 4
    assert len({int(r) for b in model._dataloaders(64, None, seed=0)[1] for r in b["rna_id"]}) == 1
    held = [{int(r) for b in model._dataloaders(64, 0.5, seed=s)[1] for r in b["rna_id"]} for s in (0, 0, 1)]
    assert held[0] == held[1] and held[0] != held[2]  # the held-out samples follow the seed


def test_setup_and_inference_checks_gene_order_and_constant_genes():
    """Group ids need not be contiguous (3, 7, 0 → 1, 2, 0; genes of group -1 left out); patches must be
    (n, 3, px, px) when set up and at inference; genes are picked by name at inference (another order gives the
    same embeddings); a constant gene is standardised with a floor on its spread; ``space="cls"`` gives the
    encoder's CLS token; negative pair positions are refused."""
    mdata = synthetic_mudata(n=12, n_genes=6)
    mdata["rna"].var["gene_group"] = [3, 3, 7, -1, 7, 0]
    mdata["rna"].X[:, 5] = 2.0
    MultimodalST.setup_mudata(mdata, group_key="label")
    model = MultimodalST(mdata, **SMALL)
    reg = model.registry
    assert reg["var_names"] == ["g0", "g1", "g2", "g4", "g5"] and reg["group_of_gene"] == [1, 1, 2, 2, 0]
    assert model.module.gene_std[-1].item() == pytest.approx(1e-3)
    emb = model.get_latent_representation(mdata, "rna")
    assert np.isfinite(emb).all()
    shuffled = mdata.copy()
    shuffled.mod["rna"] = mdata["rna"][:, ::-1].copy()
    np.testing.assert_allclose(model.get_latent_representation(shuffled, "rna"), emb, atol=1e-6)
    cls = model.get_latent_representation(mdata, "rna", space="cls")
    with torch.no_grad():
        want = model.module.eval().encode_rna(torch.from_numpy(mdata["rna"].X[:, [0, 1, 2, 4, 5]]))[:, 0].numpy()
    np.testing.assert_allclose(cls, want, rtol=1e-5, atol=1e-6)
    small = mdata.copy()
    small["image"].obsm["patch"] = small["image"].obsm["patch"][:, :, :8, :8].copy()
    with pytest.raises(ValueError, match="Cut or resize the patches to 16 px"):
        model.get_latent_representation(small, "image")
    with pytest.raises(IndexError, match="image_index"):
        model.get_match_scores(mdata, [-1], [0])
    four = mdata.copy()
    four["image"].obsm["patch"] = np.concatenate([four["image"].obsm["patch"], four["image"].obsm["patch"][:, :1]], 1)
    with pytest.raises(ValueError, match=r"expected \(n, 3, px, px\)"):
        MultimodalST.setup_mudata(four, group_key="label")
    with pytest.raises(ValueError, match="lacks 1 panel genes"):
        model.get_latent_representation(mdata[:, 1:].copy(), "rna")
    # 4 samples of 8 genes: at most 3 principal axes (as many as the samples is refused too)
    wide = synthetic_mudata(n=4, n_genes=8)
    MultimodalST.setup_mudata(wide, group_key="label")
    with pytest.raises(ValueError, match="rna_pcs: expected fewer than 4 axes"):
        MultimodalST(wide, **SMALL, rna_pcs=4)


def test_staged_training_history_numbers_both_stages():
    """Two pre-training epochs then one joint epoch: ``history`` rows 0–2 with stages 0, 0, 1; a pre-training-only run
    also leaves the module in the joint stage (as a trained model is loaded)."""
    mdata = synthetic_mudata(n=12, n_genes=6)
    MultimodalST.setup_mudata(mdata, group_key="label")
    model = MultimodalST(mdata, **SMALL, pretrain_epochs=2, max_epochs=1)
    model.train(enable_progress_bar=False, validation=0.0)
    assert model.history.index.tolist() == [0, 1, 2] and model.history["stage"].tolist() == [0.0, 0.0, 1.0]
    assert model.module.stage == "joint"
    model = MultimodalST(mdata, **SMALL)
    model.train(pretrain_epochs=1, max_epochs=0, enable_progress_bar=False, validation=0.0)
    assert model.history["stage"].tolist() == [0.0] and model.module.stage == "joint"


class _CrashInStage(pl.Callback):
    """Raise at the start of epoch ``at`` of one training stage (after that stage's previous ``last.ckpt``)."""

    def __init__(self, stage, at):
        self.stage, self.at = stage, at

    def on_train_epoch_start(self, trainer, pl_module):
        if pl_module.module.stage == self.stage and trainer.current_epoch == self.at:
            raise RuntimeError("power cut")


@pytest.mark.parametrize("stage", ["pretrain", "joint"])
def test_staged_training_resumes_from_either_stages_checkpoint(tmp_path, stage):
    """``ckpt_path`` went to both stages: a joint-stage ``last.ckpt`` was loaded into pre-training (and one folder
    held both stages' checkpoints). Each stage now has its folder, and resuming equals the uninterrupted run."""
    mdata = synthetic_mudata(n=24, n_genes=6)
    MultimodalST.setup_mudata(mdata, group_key="label")
    cfg = {**SMALL, "pretrain_epochs": 3, "max_epochs": 3, "dropout": 0.1}
    run = {"enable_progress_bar": False, "validation": 0.25, "early_stopping": False}
    full = MultimodalST(mdata, **cfg).train(checkpoint_dir=tmp_path / "full", **run)
    assert sorted(p.name for p in (tmp_path / "full").iterdir()) == ["joint", "pretrain"]
    assert (tmp_path / "full" / "pretrain" / "last.ckpt").is_file() and (
        tmp_path / "full" / "joint" / "best.ckpt"
    ).is_file()
    with pytest.raises(RuntimeError, match="power cut"):
        MultimodalST(mdata, **cfg).train(checkpoint_dir=tmp_path / "cut", callbacks=[_CrashInStage(stage, 2)], **run)
    assert (tmp_path / "cut" / "joint").exists() == (stage == "joint")
    resumed = MultimodalST(mdata, **cfg).train(ckpt_path=tmp_path / "cut" / stage / "last.ckpt", **run)
    pd.testing.assert_frame_equal(resumed.history, full.history, rtol=1e-6)
    assert resumed.history["stage"].tolist() == [0.0] * 3 + [1.0] * 3
    for modality in ("rna", "image"):
        np.testing.assert_allclose(resumed.get_latent_representation(modality=modality),
                                   full.get_latent_representation(modality=modality), rtol=0, atol=1e-5)  # fmt: skip
    assert resumed.module.stage == "joint" and resumed.is_trained
    with pytest.raises(ValueError, match="ckpt_path: a joint-stage checkpoint, but `max_epochs` is 0"):
        MultimodalST(mdata, **cfg).train(ckpt_path=tmp_path / "full" / "joint" / "last.ckpt", max_epochs=0, **run)


def test_staged_training_resumes_from_a_checkpoint_moved_out_of_its_stage_folder(tmp_path):
    """A pre-training ``last.ckpt`` copied to a folder not named after its stage, without ``checkpoint_dir``: the
    resumed stage writes next to the checkpoint, the joint stage into a temporary folder (no ``joint`` subfolder
    appears there), and the result equals the uninterrupted run."""
    import shutil

    mdata = synthetic_mudata(n=24, n_genes=6)
    MultimodalST.setup_mudata(mdata, group_key="label")
    cfg = {**SMALL, "pretrain_epochs": 3, "max_epochs": 3, "dropout": 0.1}
    run = {"enable_progress_bar": False, "validation": 0.25, "early_stopping": False}
    full = MultimodalST(mdata, **cfg).train(**run)
    with pytest.raises(RuntimeError, match="power cut"):
        crash = [_CrashInStage("pretrain", 2)]
        MultimodalST(mdata, **cfg).train(checkpoint_dir=tmp_path / "cut", callbacks=crash, **run)
    (tmp_path / "moved").mkdir()
    shutil.copy(tmp_path / "cut" / "pretrain" / "last.ckpt", tmp_path / "moved" / "last.ckpt")
    resumed = MultimodalST(mdata, **cfg).train(ckpt_path=tmp_path / "moved" / "last.ckpt", **run)
    pd.testing.assert_frame_equal(resumed.history, full.history, rtol=1e-6)
    assert sorted(p.name for p in (tmp_path / "moved").iterdir()) == ["best.ckpt", "last.ckpt"]


def test_stages_that_run_no_step_leave_no_history_and_an_untrained_model():
    """``limit_train_batches=0`` (a trainer limit) stops both stages before any step: each says so, no history
    rows are made up for them, and the model stays untrained."""
    mdata = synthetic_mudata(n=24, n_genes=6)
    MultimodalST.setup_mudata(mdata, group_key="label")
    model = MultimodalST(mdata, **{**SMALL, "pretrain_epochs": 2, "max_epochs": 2})
    with pytest.warns(UserWarning, match="MultimodalST: no training step ran") as record:
        model.train(enable_progress_bar=False, limit_train_batches=0)
    assert sum("no training step ran" in str(w.message) for w in record) == 2
    assert model.history is None and not model.is_trained and model.module.stage == "joint"


def test_staged_training_refuses_a_checkpoint_of_another_model(tmp_path):
    mdata = synthetic_mudata(n=12, n_genes=6)
    MultimodalST.setup_mudata(mdata, group_key="label")
    other = tmp_path / "last.ckpt"
    torch.save({"epoch": 0, "state_dict": {}, "callbacks": {"History": {"rows": {}}}}, other)
    with pytest.raises(ValueError, match="ckpt_path: .* records no MultimodalST training stage"):
        MultimodalST(mdata, **SMALL).train(ckpt_path=other, enable_progress_bar=False)
    with pytest.raises(FileNotFoundError, match="`ckpt_path` .* is not a file"):
        MultimodalST(mdata, **SMALL).train(ckpt_path=tmp_path / "nothing.ckpt", enable_progress_bar=False)


def test_unpaired_patch_and_unlabelled_sample_codes_differ_without_an_image_label_column():
    """No label column on the image side, sample s0 unlabelled, patch p0 unpaired and patch p5 linked to s0: p5
    takes s0's code, p0 one of its own (not s0's), so p0 and p5 are not triplet positives of each other."""
    mdata = synthetic_mudata(n=12, n_genes=6)
    r, im = mdata["rna"], mdata["image"]
    r.obs["label"] = r.obs["label"].astype(object)
    r.obs.loc["s0", "label"] = np.nan
    del im.obs["label"]
    im.obs["rna_sample"] = im.obs["rna_sample"].astype(object)
    im.obs.loc["p0", "rna_sample"] = np.nan
    im.obs.loc["p5", "rna_sample"] = "s0"
    MultimodalST.setup_mudata(mdata, group_key="label")
    data, _ = MultimodalST(mdata, **SMALL)._arrays(mdata)
    assert data["img_group"][5] == data["rna_group"][0] < 0
    assert data["img_group"][0] < 0 and np.sum(data["img_group"] == data["img_group"][0]) == 1


def test_mlp_image_encoder_on_embeddings_checks_their_width():
    """Patch embeddings (2-D, float64 here) with ``image_encoder="mlp"``: float32 unit vectors come out; embeddings of
    another width at inference are refused by name, not by a shape error deep in the network."""
    mdata = synthetic_mudata(n=8, n_genes=6)
    mdata["image"].obsm["patch"] = np.random.default_rng(0).normal(size=(8, 6))
    MultimodalST.setup_mudata(mdata, group_key="label")
    model = MultimodalST(mdata, **SMALL, image_encoder="mlp")
    emb = model.get_latent_representation(mdata, "image")
    assert emb.shape == (8, 16) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-5)
    narrow = mdata.copy()
    narrow["image"].obsm["patch"] = narrow["image"].obsm["patch"][:, :5].copy()
    with pytest.raises(ValueError, match=r"\(n, 6\) patch embeddings \(image_features=6\)"):
        model.get_latent_representation(narrow, "image")


def test_minibatch_by_takes_each_items_section_from_its_own_sample_when_patches_are_reordered():
    """Patches stored in another order than their RNA samples: an item's ``minibatch_by`` value is that of its RNA
    sample (not of the sample at the patch's row number), so every batch still holds one section."""
    mdata = synthetic_mudata(n=24, n_genes=6)
    perm = np.random.default_rng(0).permutation(24)
    mdata.mod["image"] = mdata["image"][perm].copy()
    sections = np.repeat(["A", "B"], 12)
    mdata["rna"].obs["section"] = sections
    mdata["image"].obs["section"] = sections[perm]
    MultimodalST.setup_mudata(mdata, group_key="label")
    model = MultimodalST(mdata, **{**SMALL, "batch_size": 6}, minibatch_by="section")
    train, _ = model._dataloaders(6, 0.0, seed=0)
    batches = [b["rna_id"].numpy() for b in train]
    assert sorted(np.concatenate(batches).tolist()) == list(range(24))
    assert all(len(set(sections[b])) == 1 for b in batches)


def test_rna_decoder_alone_a_batch_without_terms_and_random_triplet_positives():
    """The RNA-decoder loss alone still encodes the patches it fuses with; a joint batch without any pair gives a
    zero loss that can be back-propagated; the triplet loss draws each anchor's positive at random among several."""
    m = _module()
    m.weights.update(itc=0.0, rna_rec=1.0)
    b = _joint_batch()
    assert set(m.loss(b)) == {"rna_rec", "loss"}
    b["has_img"][:] = False
    out = m.loss(b)
    assert set(out) == {"loss"} and out["loss"].item() == 0.0 and out["loss"].requires_grad
    out["loss"].backward()
    z = torch.randn(4, 3, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 0, 0, 1])  # anchors 0–2: two positives each, one negative
    u = torch.nn.functional.normalize(z, dim=-1).numpy()
    d = ((u[:, None] - u[None]) ** 2).sum(-1)
    every = np.array(
        [
            np.mean([d[a, p] - d[a, 3] + 4.0 for a, p in zip(range(3), ps)])
            for ps in [(p0, p1, p2) for p0 in (1, 2) for p1 in (0, 2) for p2 in (0, 1)]
        ]
    )
    torch.manual_seed(0)
    seen = np.array([triplet_loss(z, labels, 4.0).item() for _ in range(40)])
    assert np.abs(seen[:, None] - every[None]).min(1).max() < 1e-5  # each draw is one of the 8 choices
    assert len(np.unique(np.round(seen, 4))) >= 4
    # no anchor with a positive: a zero that stays connected to the embeddings (a batch's only term can be it)
    z.requires_grad_(True)
    zero = supervised_contrastive(z, torch.arange(4), 0.1)
    assert zero.item() == 0.0 and zero.requires_grad


def test_float64_patches_in_unit_range_embed_as_their_uint8_originals():
    """Float patches in [0, 1] are documented alongside uint8 ones; float64 ones (e.g. skimage's img_as_float) used to
    reach the float32 network as doubles (RuntimeError: Input type (double) and bias type (float))."""
    mdata = synthetic_mudata(n=8, n_genes=6)
    MultimodalST.setup_mudata(mdata, group_key="label")
    model = MultimodalST(mdata, **SMALL)
    ref = model.get_latent_representation(mdata, "image")
    mdata["image"].obsm["patch"] = mdata["image"].obsm["patch"] / 255.0  # float64
    np.testing.assert_allclose(model.get_latent_representation(mdata, "image"), ref, atol=1e-5)


def test_dataloader_kwargs_are_refused_not_dropped():
    """``dataloader_kwargs={"num_workers": 2}`` was silently ignored (the run looked as asked); now a TypeError, as in
    the other models."""
    mdata = synthetic_mudata(n=8, n_genes=6)
    MultimodalST.setup_mudata(mdata, group_key="label")
    model = MultimodalST(mdata, **SMALL)
    with pytest.raises(TypeError, match=r"Unexpected dataloader_kwargs \['num_workers'\] for MultimodalST"):
        model.train(pretrain_epochs=1, max_epochs=1, dataloader_kwargs={"num_workers": 2}, enable_progress_bar=False)
    assert not model.is_trained


def test_a_validation_fraction_that_rounds_to_every_sample_is_a_clear_error():
    """``validation=0.99`` of 24 samples rounds to all 24: torch's sampler failed with "num_samples should be a positive
    integer value"; now the error names `validation`."""
    mdata = synthetic_mudata(n=24, n_genes=6)
    MultimodalST.setup_mudata(mdata, group_key="label")
    with pytest.raises(ValueError, match=r"validation: 0.99 of 24 RNA samples holds out 24 .* smaller fraction"):
        MultimodalST(mdata, **SMALL).train(pretrain_epochs=1, max_epochs=1, validation=0.99, enable_progress_bar=False)


def test_a_validation_fraction_that_rounds_to_no_sample_warns():
    """``validation=0.05`` of 8 samples rounds to none: training silently ran without validation or early stopping
    (a log line only); now a warning says so, and ``validation=0`` stays silent."""
    mdata = synthetic_mudata(n=8, n_genes=6)
    MultimodalST.setup_mudata(mdata, group_key="label")
    run = {"pretrain_epochs": 1, "max_epochs": 0, "enable_progress_bar": False}
    with pytest.warns(UserWarning, match=r"validation: 0.05 of 8 RNA samples rounds to none; training without"):
        model = MultimodalST(mdata, **SMALL).train(validation=0.05, **run)
    assert "val_loss" not in model.history
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="validation:")
        MultimodalST(mdata, **SMALL).train(validation=0, **run)


def test_stage_epochs_are_whole_numbers():
    """``pretrain_epochs=1.5`` was truncated to 1 by ``int()``; a stage's epochs are now a count ≥ 0 (0 skips the
    stage), refused otherwise with the argument's name, before anything is trained."""
    mdata = synthetic_mudata(n=8, n_genes=6)
    MultimodalST.setup_mudata(mdata, group_key="label")
    model = MultimodalST(mdata, **SMALL)
    for name, bad in (("pretrain_epochs", 1.5), ("pretrain_epochs", -1), ("max_epochs", True), ("max_epochs", 0.5)):
        with pytest.raises(ValueError, match=f"{name}: expected an integer >= 0, got {bad!r}"):
            model.train(**{"pretrain_epochs": 1, "max_epochs": 1, name: bad}, enable_progress_bar=False)
    assert not model.is_trained


def test_patch_types_duplicate_samples_unmatched_links_and_mixed_ensembles_are_named():
    """Patches must be uint8 or floats in [0, 1] (int64 gave NaN embeddings, floats in 0–255 were accepted);
    duplicate RNA sample names are refused at setup (training failed with a pandas error); retrieve and
    gene_importance count the patches whose link names no sample; an ensemble must share its image input."""
    mdata = synthetic_mudata(n=12)
    for bad, match in ((np.int64, r"got dtype int64"), (np.float32, r"in \[0, 1\], got values in \[0, \d+\]")):
        m = mdata.copy()
        m["image"].obsm["patch"] = mdata["image"].obsm["patch"].astype(bad)
        with pytest.raises(ValueError, match=r"obsm\['patch'\]: .*" + match):
            MultimodalST.setup_mudata(m, group_key="label")
    m = mdata.copy()
    m["image"].obsm["patch"] = mdata["image"].obsm["patch"].astype(np.float32) / 255  # as documented: accepted
    MultimodalST.setup_mudata(m, group_key="label")
    MultimodalST.setup_mudata(mdata, group_key="label")
    model = MultimodalST(mdata, **SMALL)
    test = mdata.copy()
    test["image"].obsm["patch"] = mdata["image"].obsm["patch"].astype(np.int64)
    with pytest.raises(ValueError, match="got dtype int64"):  # new data are checked too, not embedded as NaN
        model.get_latent_representation(test, "image")
    dup = mdata.copy()
    dup.mod["rna"] = ad.concat([mdata["rna"][:6], mdata["rna"][:6]])
    dup.mod["rna"].var["gene_group"] = mdata["rna"].var["gene_group"].to_numpy()
    with pytest.raises(ValueError, match=r"mdata\['rna'\]: duplicate sample names, e.g. \['s0', 's1', 's2'\]"):
        MultimodalST.setup_mudata(dup, group_key="label")
    # links that name no sample: counted in a warning (all unmatched: the exact metrics are NaN)
    upper = mdata.copy()
    upper["image"].obs["rna_sample"] = [s.upper() for s in mdata["image"].obs["rna_sample"]]
    with pytest.warns(UserWarning, match=r"retrieve: 12 of 12 patches of mdata\['image'\] link to no sample"):
        res = scst.tl.retrieve(upper, model, k=5)
    assert res["n_paired"] == 0 and np.isnan(res["exact_top1"])
    half = mdata.copy()
    half["image"].obs["rna_sample"] = [s.upper() if i % 2 else s for i, s in enumerate(half["image"].obs["rna_sample"])]
    with pytest.warns(UserWarning, match="gene_importance: 6 of 12 patches"):
        scst.tl.gene_importance(half, model, score="itc", n_top=2, max_pairs=4)
    with (
        pytest.warns(UserWarning, match="12 of 12"),
        pytest.raises(ValueError, match=r"no patch is linked .* \(12 links name no sample of mdata\['rna'\]\)"),
    ):
        scst.tl.gene_importance(upper, model, score="itc")
    # an ensemble whose models read different image inputs: refused (gene_importance fed one model's to all)
    mdata["image"].obsm["emb"] = np.random.default_rng(0).normal(size=(12, 5)).astype(np.float32)
    MultimodalST.setup_mudata(mdata, group_key="label", patch_key="emb")
    mlp = MultimodalST(mdata, **SMALL, image_encoder="mlp")
    for fn in (scst.tl.retrieve, scst.tl.gene_importance):
        with pytest.raises(ValueError, match="must share modalities, panel genes and image input"):
            fn(mdata, [model, mlp])


def test_frozen_encoders_stay_fixed_and_a_cast_module_takes_float_patches():
    """Review 2026-12-04: freeze_encoders turned off gradients only — a BatchNorm backbone's running statistics and
    the encoders' dropout still moved with every joint-stage batch; a module cast to float64 refused float patches."""
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random-init backbone
        m = MultimodalModule([0, 0, 1, 1, 2], dim=8, heads=2, image_px=32, embed_dim=8, image_encoder="resnet18",
                             freeze_encoders=True, dropout=0.5)  # fmt: skip
    m.stage = "joint"
    n, g = 6, torch.Generator().manual_seed(0)
    batch = {"rna": torch.randn(n, 5, generator=g), "has_rna": torch.ones(n, dtype=torch.bool),
             "img": torch.randint(0, 255, (n, 3, 32, 32), dtype=torch.uint8, generator=g),
             "has_img": torch.ones(n, dtype=torch.bool), "rna_id": torch.arange(n), "rna_group": torch.arange(n) % 3,
             "img_group": torch.arange(n) % 3}  # fmt: skip
    before = copy.deepcopy(m.image_encoder.state_dict())
    m.eval()
    with torch.no_grad():
        e0, r0 = m.embed_image(batch["img"]), m.encode_rna(batch["rna"])
    m.train()
    m.loss(batch)["loss"].backward()
    assert all(p.grad is None for p in m.image_encoder.parameters())
    assert all(torch.equal(before[k], v) for k, v in m.image_encoder.state_dict().items())  # BatchNorm statistics too
    assert m.image_encoder.training and m.rna_encoder.training  # their own mode back after the step
    m.eval()
    with torch.no_grad():
        torch.testing.assert_close(m.embed_image(batch["img"]), e0, rtol=0, atol=0)
        torch.testing.assert_close(m.encode_rna(batch["rna"]), r0, rtol=0, atol=0)
    cast = MultimodalModule([0, 0, 1, 1, 2], dim=8, heads=2, image_px=16, sub_patch=8, embed_dim=8).eval().double()
    out = cast.embed_image(torch.rand(2, 3, 16, 16))
    assert out.dtype == torch.float64 and torch.allclose(out.norm(dim=1), torch.ones(2, dtype=torch.float64))


def test_save_data_writes_the_mudata_and_load_reads_it_back(tmp_path):
    """``save(save_data=True)`` of a model on a MuData writes ``data.h5mu``; ``load`` without ``data`` reads it back
    (both modalities, the patches, the registry) and embeds it as the saved model did."""
    mdata = synthetic_mudata(n=8)
    MultimodalST.setup_mudata(mdata, group_key="label")
    model = MultimodalST(mdata, **SMALL)
    model.save(tmp_path / "m", save_data=True)
    assert (tmp_path / "m" / "data.h5mu").is_file() and not (tmp_path / "m" / "data.h5ad").exists()
    loaded = MultimodalST.load(tmp_path / "m")
    assert isinstance(loaded.data, md.MuData) and loaded.adata is loaded.data
    assert list(loaded.data.mod) == ["rna", "image"]
    np.testing.assert_array_equal(loaded.data["rna"].X, mdata["rna"].X)
    np.testing.assert_array_equal(loaded.data["image"].obsm["patch"], mdata["image"].obsm["patch"])
    for modality in ("rna", "image"):
        np.testing.assert_allclose(
            loaded.get_latent_representation(modality=modality),
            model.get_latent_representation(mdata, modality),
            atol=1e-6,
        )


def test_vit_and_mlp_image_encoders_take_local_weights(tmp_path):
    """``image_weights`` (a local state_dict file) for the paper's ViT and for the MLP on embeddings: the encoder of
    a model of another seed ends equal to the saved one."""
    mdata = synthetic_mudata(n=8)
    emb = synthetic_mudata(n=8)
    emb["image"].obsm["patch"] = np.random.default_rng(0).normal(size=(8, 6))
    for data, kw in ((mdata, {}), (emb, {"image_encoder": "mlp"})):
        MultimodalST.setup_mudata(data, group_key="label")
        source = MultimodalST(data, **SMALL, **kw, seed=1).module.image_encoder
        torch.save(source.state_dict(), tmp_path / "enc.pt")
        other = MultimodalST(data, **SMALL, **kw, seed=2).module.image_encoder
        assert not all(torch.equal(a, b) for a, b in zip(source.parameters(), other.parameters()))
        loaded = MultimodalST(data, **SMALL, **kw, seed=2, image_weights=str(tmp_path / "enc.pt")).module
        assert all(torch.equal(a, b) for a, b in zip(source.parameters(), loaded.image_encoder.parameters()))


def _no_group(m):
    m["rna"].var["gene_group"] = -1


def _drop_patch(m):
    del m["image"].obsm["patch"]


def _patches_3d(m):
    m["image"].obsm["patch"] = np.zeros((m["image"].n_obs, 3, 16), np.uint8)


def _drop_link(m):
    del m["image"].obs["rna_sample"]


@pytest.mark.parametrize(
    ("spoil", "kwargs", "err", "match"),
    [
        (None, {"image": "he"}, KeyError, r"mdata: modality 'he' missing; has \['rna', 'image'\]"),
        (_no_group, {}, ValueError, r"mdata\['rna'\]\.var\['gene_group'\]: no gene is in a group \(all -1\)"),
        (_drop_patch, {}, KeyError, r"mdata\['image'\]\.obsm lacks 'patch' \(patches or patch embeddings\)"),
        (_patches_3d, {}, ValueError, r"obsm\['patch'\]: expected 4-D patches or 2-D embeddings"),
        (_drop_link, {}, KeyError, r"mdata\['image'\]\.obs lacks the link column 'rna_sample'"),
        (None, {"group_key": "lineage"}, KeyError, r"mdata\['rna'\]\.obs lacks group_key 'lineage'"),
    ],
    ids=["modality", "gene_groups", "patch_key", "patch_ndim", "link_key", "group_key"],
)
def test_setup_mudata_names_the_missing_or_bad_input(spoil, kwargs, err, match):
    mdata = synthetic_mudata(n=8)
    if spoil is not None:
        spoil(mdata)
    with pytest.raises(err, match=match):
        MultimodalST.setup_mudata(mdata, **{"group_key": "label", **kwargs})


def test_model_and_embedding_arguments_are_checked(tmp_path):
    mdata = synthetic_mudata(n=8)
    MultimodalST.setup_mudata(mdata, group_key="label")
    with pytest.raises(ValueError, match=r"weights: unknown loss terms \['mlm'\]; expected some of"):
        MultimodalST(mdata, **SMALL, weights={"mlm": 1.0})
    emb = synthetic_mudata(n=8)
    emb["image"].obsm["patch"] = np.zeros((8, 6), np.float32)
    MultimodalST.setup_mudata(emb, group_key="label")
    with pytest.raises(ValueError, match="image_encoder: the image modality holds embeddings; use image_encoder='mlp'"):
        MultimodalST(emb, **SMALL)
    model = MultimodalST(mdata, **SMALL)
    with pytest.raises(ValueError, match="data: expected a MuData with modality 'image'"):
        model.get_latent_representation(md.MuData({"rna": mdata["rna"].copy()}), "rna")
    with pytest.raises(ValueError, match="modality: expected 'rna' or 'image', got 'he'"):
        model.get_latent_representation(mdata, "he")
    with pytest.raises(ValueError, match="space: expected 'shared' or 'cls', got 'joint'"):
        model.get_latent_representation(mdata, "rna", space="joint")
    model.save(tmp_path / "m")
    with pytest.raises(ValueError, match="mdata: the model has no data; pass a MuData"):
        MultimodalST.load(tmp_path / "m").get_latent_representation(modality="rna")


@pytest.mark.parametrize(
    ("build", "match"),
    [(lambda: MultimodalModule([]), r"group_of_gene: expected a non-empty list of group ids >= 0, one per gene"),
     (lambda: MultimodalModule([0, -1, 1]), r"group_of_gene: expected a non-empty list of group ids >= 0"),
     (lambda: MultimodalModule([0, 1, 1], match_on="label"), r"match_on: expected 'sample' or 'group', got 'label'"),
     (lambda: MultimodalModule([0, 1, 1], image_encoder="mlp"),
      r"image_features: needed \(input width\) for image_encoder='mlp'")],
)  # fmt: skip
def test_multimodal_network_settings_are_named(build, match):
    with pytest.raises(ValueError, match=match):
        build()
