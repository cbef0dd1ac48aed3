"""Tools over :class:`scst.models.MultimodalST`: embeddings, image → RNA retrieval, gene importance.

Keys written:

* ``mdata[m].obsm[key_added]`` (default ``"X_multimodal"``) for ``m`` in the RNA and image modalities: unit vectors
  in the shared space (:func:`embed`).
* ``mdata.uns["scst_retrieval"]``: per query, the ``k`` closest targets by cosine (``"indices"``, ``"names"``,
  ``"scores"``), accuracy of the top-1 target's group per ``group_keys`` against the label-frequency chance
  ``Σ_g p_query(g) p_target(g)`` (``Σ p²`` when queries and targets share labels; ``p_query`` over the labelled
  queries, ``p_target`` over all targets, an unlabelled one never matching; both NaN when no query is labelled),
  exact-sample top-1/top-k rates (paired queries only) against the rates of a random ranking (``1/n`` and ``k/n``
  for image queries); with ``rerank``, the matching-head logits ``"match_scores"`` (:func:`retrieve`).
* ``mdata[rna].var["scst_importance_mean"]`` / ``["scst_importance_count"]`` and
  ``mdata.uns["scst_gene_importance"]`` (:func:`gene_importance`).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch

from .._logging import logg
from .._utils import _labels, _positive_int

__all__ = ["embed", "retrieve", "gene_importance"]


def _check_model(model: Any) -> None:
    from ..models._multimodal import MultimodalST

    if not isinstance(model, MultimodalST):
        raise TypeError(f"model: expected a scst.models.MultimodalST, got {type(model).__name__}.")


def _models(model: Any) -> list:
    """``model`` as a list of MultimodalST: one model, or a non-empty sequence of them (an ensemble) set up alike."""
    models = list(model) if isinstance(model, list | tuple) else [model]
    if not models:
        raise ValueError("model: expected a MultimodalST or a non-empty sequence of them, got an empty sequence.")
    for m in models:
        _check_model(m)
    keys = ("rna", "image", "var_names", "patch_key", "link_key", "image_px", "image_features")
    setups = [[list(v) if k == "var_names" else v for k, v in ((k, m.registry.get(k)) for k in keys)] for m in models]
    if any(setup != setups[0] for setup in setups[1:]):
        raise ValueError(
            "model: the models of an ensemble must share modalities, panel genes and image input (patch_key, link "
            "key, patch size or embedding width: the same setup_mudata)."
        )
    return models


def _warn_unmatched(link: pd.Series, row: np.ndarray, img_mod: str, rna_mod: str, who: str) -> int:
    """Warn (with the count) when patches name an RNA sample that is not in the data; returns the count."""
    n = int((pd.notna(link).to_numpy() & (np.asarray(row) < 0)).sum())
    if n:
        warnings.warn(
            f"{who}: {n} of {len(link)} patches of mdata[{img_mod!r}] link to no sample of mdata[{rna_mod!r}] "
            "(unmatched; they have no exact-sample answer).",
            UserWarning,
            stacklevel=3,
        )
    return n


def _shared_embedding(mdata: Any, models: list, modality: str, batch_size: int) -> np.ndarray:
    """Shared-space embedding of one modality from one model or an ensemble.

    For an ensemble of M models: each model's unit vectors side by side, scaled by 1/sqrt(M) — again unit vectors,
    whose cosine is the mean of the models' cosines.
    """
    embs = [m.get_latent_representation(mdata, modality=modality, batch_size=batch_size) for m in models]
    return embs[0] if len(embs) == 1 else (np.hstack(embs) / np.sqrt(len(embs))).astype(np.float32)


def embed(
    mdata: Any, model: Any, key_added: str = "X_multimodal", batch_size: int = 256, umap: bool = False, seed: int = 0
) -> None:
    """Shared-space embeddings of both modalities into ``obsm[key_added]`` of ``mdata["rna"]`` and ``mdata["image"]``.

    Parameters
    ----------
    mdata
        MuData with the model's modalities (panel genes, patches).
    model
        A trained :class:`scst.models.MultimodalST`, or a sequence of them (a deep ensemble: the same setting trained
        with different seeds). An ensemble's embedding is its models' unit vectors side by side, scaled by
        ``1/sqrt(len(model))``, so that the cosine of two embeddings is the mean of the models' cosines.
    key_added
        ``obsm`` key.
    batch_size
        Inference batch size.
    umap
        Also compute one UMAP of both modalities together (scanpy's ``neighbors`` + ``umap`` on the concatenated
        embeddings) into ``obsm[f"{key_added}_umap"]`` of each modality, for :func:`scst.pl.retrieval`.
    seed
        Random state of the UMAP.
    """
    models = _models(model)
    reg = models[0].registry
    mods = (reg["rna"], reg["image"])
    for mod in mods:
        mdata[mod].obsm[key_added] = _shared_embedding(mdata, models, mod, batch_size)
    logg.info(f"embed: wrote obsm[{key_added!r}] of modalities {reg['rna']!r} and {reg['image']!r}")
    if umap:
        import anndata as ad
        import scanpy as sc

        joint = ad.AnnData(obsm={key_added: np.vstack([mdata[m].obsm[key_added] for m in mods]).astype(np.float32)})
        sc.pp.neighbors(joint, use_rep=key_added, n_neighbors=min(15, joint.n_obs - 1), random_state=seed)
        sc.tl.umap(joint, random_state=seed)
        n_rna = mdata[mods[0]].n_obs
        mdata[mods[0]].obsm[f"{key_added}_umap"] = joint.obsm["X_umap"][:n_rna]
        mdata[mods[1]].obsm[f"{key_added}_umap"] = joint.obsm["X_umap"][n_rna:]


def _chance(q: pd.Series, t: pd.Series) -> float:
    """Top-1 group accuracy of a random ranking over the labelled queries.

    Each target is equally likely to come first; an unlabelled target is a miss, as in the accuracy, so the target
    label frequencies are over all targets. NaN, like the accuracy, when no query is labelled.
    """
    pq = _labels(q).dropna().value_counts(normalize=True)
    if pq.empty:  # no labelled query: no accuracy to compare with (a chance of 0 would make any accuracy look good)
        return float("nan")
    pt = _labels(t).dropna().value_counts() / max(len(t), 1)
    return float((pq * pt.reindex(pq.index).fillna(0)).sum())


def _standardize(x: np.ndarray, how: str) -> np.ndarray:
    """Embeddings of one modality centred (``"center"``) or z-scored per dimension (``"zscore"``; sd 0 → 1)."""
    x = np.asarray(x, dtype=np.float64)
    out = x - x.mean(0)
    if how == "zscore":
        sd = out.std(0)
        out = out / np.where(sd > 0, sd, 1.0)
    return out.astype(np.float32)


def _csls(sim: np.ndarray, n_neighbors: int) -> np.ndarray:
    """CSLS of a (queries × targets) cosine matrix: ``2 sim − r_T(q) − r_Q(t)``, the r being mean top-k cosines."""
    kt, kq = min(n_neighbors, sim.shape[1]), min(n_neighbors, sim.shape[0])
    r_t = -np.partition(-sim, kt - 1, axis=1)[:, :kt].mean(1)  # each query's mean cosine to its closest targets
    r_q = -np.partition(-sim, kq - 1, axis=0)[:kq].mean(0)  # each target's mean cosine to its closest queries
    return 2 * sim - r_t[:, None] - r_q[None, :]


def _check_matching_head(models: list, arg: str, instead: str) -> None:
    """A ValueError naming ``arg`` unless every model's matching head was trained.

    Trained means the matching loss on and a joint stage run: untrained, or pre-trained only (``max_epochs=0``), the
    head is at its random start.
    """
    for m in models:
        if m.module.weights.get("itm", 0.0) <= 0:
            raise ValueError(f"{arg}: the model was trained without the matching loss (weights['itm'] = 0), so its "
                             f"matching head is untrained; {instead}.")  # fmt: skip
        if not (m.is_trained and m.module.stage == "joint"):
            raise ValueError(f"{arg}: the model's matching head is untrained (no joint training stage ran: "
                             f"{'pre-trained only' if m.is_trained else 'not trained'}); {instead}.")  # fmt: skip


def retrieve(
    mdata: Any,
    model: Any = None,
    query: Literal["image", "rna"] = "image",
    k: int = 5,
    *,
    group_keys: str | Sequence[str] | None = None,
    use_rep: str | None = None,
    key_added: str = "scst_retrieval",
    batch_size: int = 256,
    standardize: Literal["zscore", "center"] | None = None,
    csls: int | None = None,
    rerank: int | None = None,
) -> dict[str, Any]:
    """For each query sample, the ``k`` closest samples of the other modality by cosine similarity (paper eq. 9).

    Parameters
    ----------
    mdata
        MuData with modalities ``rna`` and ``image`` (patches linked to RNA samples by ``obs["rna_sample"]``, the
        model's ``link_key``). Without that column (new, unpaired images) the exact-sample metrics are NaN with
        ``n_paired=0`` (a warning says so); the group accuracies are still computed where labels exist.
    model
        Trained :class:`scst.models.MultimodalST`, or a sequence of them (a deep ensemble, cosine = the mean of the
        models' cosines, see :func:`embed`); may be None when ``use_rep`` holds embeddings.
    query
        ``"image"`` (patch → RNA samples, the paper's retrieval) or ``"rna"``.
    k
        Number of targets kept per query, best first (equal scores keep the targets' order in their modality: a
        stable sort).
    group_keys
        ``obs`` column(s) (one name or a sequence) on which the top-1 target's group is compared with the query's
        (default: the model's ``group_key`` and ``mdata.uns["scst_mudata"]["group_keys"]`` where present in both
        modalities; a warning when the model's ``group_key`` is left out because one modality lacks it). Labels
        that are equal numbers match (``1`` of an integer column and ``1.0`` of a float one).
    use_rep
        Read embeddings from ``obsm[use_rep]`` of both modalities instead of computing them.
    key_added
        ``mdata.uns`` key of the results.
    batch_size
        Inference batch size.
    standardize
        Test-time standardisation of each modality's embeddings over the samples being matched, before the cosine:
        ``None`` (the paper's cosine on the shared space), ``"center"`` (subtract each modality's mean) or
        ``"zscore"`` (each dimension to mean 0 and sd 1 within each modality). A model whose image side is shrunk
        or offset against its RNA side (a regression, a briefly trained encoder) then matches by each sample's
        deviation from its own modality, not by the common offset. It uses the embeddings only (no labels, no
        pairing). docs/benchmarks/multimodal.md measures it: for one model it is mixed, for the shipped ensemble of
        three ``"center"`` raises both accuracies on a selection split, so the demo and the tutorial use it; the
        default stays the paper's cosine.
    csls
        Rank targets by cross-domain similarity local scaling (CSLS, Conneau et al. 2018, "Word translation without
        parallel data") with ``csls`` neighbours instead of the raw cosine: ``2 cos(q, t) − r_T(q) − r_Q(t)``, where
        ``r_T(q)`` is the mean cosine of query ``q`` to its ``csls`` closest targets and ``r_Q(t)`` that of target
        ``t`` to its ``csls`` closest queries. It penalises *hubs* — targets close to many queries, which plain cosine
        returns for most of them — and, like ``standardize``, uses only the embeddings of the samples being matched
        (no labels, no pairing). ``None`` (default): the paper's cosine. The paper of CSLS uses 10.
    rerank
        ALBEF's two-stage retrieval: the ``rerank`` closest targets (cosine, or CSLS) are re-ordered by the matching
        head (fusion encoder on the query and each candidate, :meth:`~scst.models.MultimodalST.get_match_scores`;
        an ensemble's mean logit); targets beyond them keep their order. ``None`` (default): no re-ranking, as
        the paper. Needs ``model`` trained with the matching loss (``weights["itm"] > 0``); with
        ``match_on="group"`` the head scores group matches, not samples.

    Returns
    -------
    The dict written to ``mdata.uns[key_added]``: ``indices``/``scores`` ``(n_query, k)``, ``names`` (top-1 target),
    ``accuracy``/``chance`` per group key, ``exact_top1``, ``exact_topk`` (over the ``n_paired`` paired queries),
    ``chance_exact_top1``, ``chance_exact_topk``, ``n_query``, ``n_target``, ``n_paired``, ``k``, ``query``,
    ``standardize``, ``csls``, ``rerank``, ``n_models`` (0 with ``use_rep``), ``modalities`` (the RNA and image
    modality names) and, when re-ranking, ``match_scores`` (the matching logits of the returned targets among the
    re-ranked ones). ``scores`` are always the cosines of the returned targets (also when ``csls`` ordered them).

    The exact-sample chances are the rates of a random ranking of the ``n`` targets. An image query has one linked
    RNA sample: ``1/n`` (top-1) and ``k/n`` (top-k). An RNA query hits when any of the ``m_q`` patches linked to it
    is retrieved: ``m_q/n`` and ``1 − C(n − m_q, k)/C(n, k)``, averaged over the paired queries (NaN when none is
    paired).
    """
    from ..pp._mudata import LINK_KEY, MUDATA_UNS

    if query not in ("image", "rna"):
        raise ValueError(f"query: expected 'image' or 'rna', got {query!r}.")
    models = None if model is None else _models(model)
    reg = models[0].registry if models else {"rna": "rna", "image": "image", "link_key": LINK_KEY}
    rna_mod, img_mod = reg["rna"], reg["image"]
    if use_rep is None:
        if models is None:
            raise ValueError("model: needed unless `use_rep` names precomputed embeddings.")
        emb = {m: _shared_embedding(mdata, models, m, batch_size) for m in (rna_mod, img_mod)}
    else:
        emb = {}
        for m in (rna_mod, img_mod):
            if use_rep not in mdata[m].obsm:
                raise KeyError(f"use_rep: {use_rep!r} not in mdata[{m!r}].obsm; run scst.tl.embed first.")
            emb[m] = np.asarray(mdata[m].obsm[use_rep], dtype=np.float32)
    k = _positive_int("k", k)
    if standardize not in (None, "center", "zscore"):
        raise ValueError(f"standardize: expected None, 'center' or 'zscore', got {standardize!r}.")
    if standardize is not None:
        few = {m: len(e) for m, e in emb.items() if len(e) < 2}
        if few:  # one sample minus its own mean is the zero vector: every cosine 0, an arbitrary order
            raise ValueError(
                f"standardize={standardize!r}: needs at least 2 samples of each modality to take their mean, got "
                f"{few}; retrieve a set of samples together, or use standardize=None."
            )
        emb = {m: _standardize(e, standardize) for m, e in emb.items()}
    if csls is not None:
        csls = _positive_int("csls", csls, what="None or a positive number of neighbours")
    if rerank is not None:
        if models is None:
            raise ValueError("rerank: needs `model` (its matching head re-scores the candidates).")
        rerank = _positive_int("rerank", rerank, what="None or a positive integer")  # True is not 1
        _check_matching_head(models, "rerank", "use rerank=None (cosine)")
    q_mod, t_mod = (img_mod, rna_mod) if query == "image" else (rna_mod, img_mod)
    q = emb[q_mod] / np.maximum(np.linalg.norm(emb[q_mod], axis=1, keepdims=True), 1e-12)
    t = emb[t_mod] / np.maximum(np.linalg.norm(emb[t_mod], axis=1, keepdims=True), 1e-12)
    k = min(k, len(t))
    sim = q @ t.T
    order = np.argsort(-(sim if csls is None else _csls(sim, csls)), axis=1, kind="stable")
    match = None
    if rerank is not None:
        r = min(rerank, len(t))
        pool, own = order[:, :r], np.repeat(np.arange(len(q)), r)  # each query's first r candidates
        img_idx, rna_idx = (own, pool.ravel()) if query == "image" else (pool.ravel(), own)
        logit = np.mean([m.get_match_scores(mdata, img_idx, rna_idx, batch_size=batch_size) for m in models], axis=0)
        logit = logit.reshape(len(q), r)
        by_match = np.argsort(-logit, axis=1, kind="stable")
        order = np.concatenate([np.take_along_axis(pool, by_match, axis=1), order[:, r:]], axis=1)
        match = np.take_along_axis(logit, by_match, axis=1)[:, :k]
    top = order[:, :k]
    qo, to = mdata[q_mod].obs, mdata[t_mod].obs
    if group_keys is None:
        own = [reg["group_key"]] if "group_key" in reg else []
        cand = own + list(mdata.uns.get(MUDATA_UNS, {}).get("group_keys", []))
        group_keys = [g for g in dict.fromkeys(cand) if g in qo and g in to]
        for g in own:  # training lets a patch take its RNA sample's group; the accuracy needs the column on both sides
            lacking = [m for m, o in ((q_mod, qo), (t_mod, to)) if g not in o]
            if lacking:
                warnings.warn(
                    f"retrieve: the model's group_key {g!r} is not an obs column of modality "
                    f"{' and '.join(map(repr, lacking))}, so no group accuracy is computed for it; copy the column "
                    "there (e.g. each patch its RNA sample's label) or pass group_keys.",
                    UserWarning,
                    stacklevel=2,
                )
    group_keys = [group_keys] if isinstance(group_keys, str) else list(group_keys)  # one column, or several
    acc, chance = {}, {}
    for g in group_keys:
        if g not in qo or g not in to:
            raise KeyError(f"group_keys: {g!r} must be an obs column of both {q_mod!r} and {t_mod!r}.")
        qv = _labels(qo[g]).to_numpy()  # equal numbers alike: 1 of an int column is 1.0 of a float one
        tv = _labels(to[g]).to_numpy()[top[:, 0]]
        ok = pd.notna(qv)
        acc[g] = float(np.mean(qv[ok] == tv[ok])) if ok.any() else float("nan")
        chance[g] = _chance(qo[g][ok], to[g])
    # exact sample: for image queries the linked RNA sample; for RNA queries any patch linked to it
    n_t = len(t)
    link_key = reg.get("link_key", LINK_KEY)
    if link_key not in mdata[img_mod].obs:
        warnings.warn(
            f"retrieve: mdata[{img_mod!r}].obs has no link column {link_key!r} (no patch is paired with an RNA "
            "sample); the exact-sample metrics are NaN (n_paired=0), only the group accuracies are computed.",
            UserWarning,
            stacklevel=2,
        )
        hit, paired = np.zeros(top.shape, dtype=bool), np.zeros(len(q), dtype=bool)
        chance_top1, chance_topk = (1.0 / n_t, k / n_t) if query == "image" else (float("nan"), float("nan"))
    elif query == "image":
        link = _labels(mdata[img_mod].obs[link_key]).astype(str)  # a number column links 1.0 to "1"
        truth = to.index.get_indexer(link)
        _warn_unmatched(mdata[img_mod].obs[link_key], truth, img_mod, rna_mod, "retrieve")
        hit = top == truth[:, None]
        paired = truth >= 0
        chance_top1, chance_topk = 1.0 / n_t, k / n_t  # one linked target per query
    else:
        link = _labels(mdata[img_mod].obs[link_key]).astype(str)  # a number column links 1.0 to "1"
        linked = np.asarray(link)[top]
        hit = linked == np.asarray(qo.index)[:, None]
        paired = np.isin(np.asarray(qo.index), link.to_numpy())
        # m_q patches linked to query q among the n_t targets: a random ranking puts one first with probability
        # m_q / n_t, and one among its first k with 1 - C(n_t - m_q, k) / C(n_t, k); averaged over paired queries
        m_q = link.value_counts().reindex(np.asarray(qo.index)[paired]).to_numpy(dtype=np.float64)
        steps = np.arange(k, dtype=np.float64)
        miss = np.prod(np.clip(n_t - m_q[:, None] - steps, 0, None) / (n_t - steps), axis=1)
        chance_top1 = float(np.mean(m_q / n_t)) if paired.any() else float("nan")
        chance_topk = float(np.mean(1.0 - miss)) if paired.any() else float("nan")
    res = {
        "query": query,
        "standardize": standardize,
        "csls": csls,
        "rerank": rerank,
        "n_models": 0 if models is None else len(models),
        "k": k,
        "n_query": len(q),
        "n_target": n_t,
        "n_paired": int(paired.sum()),
        "indices": top,
        "scores": np.take_along_axis(sim, top, axis=1).astype(np.float32),
        "names": np.asarray(to.index)[top[:, 0]].astype(str),
        "group_keys": list(group_keys),
        "accuracy": acc,
        "chance": chance,
        "exact_top1": float(hit[paired, 0].mean()) if paired.any() else float("nan"),
        "exact_topk": float(hit[paired].any(1).mean()) if paired.any() else float("nan"),
        "chance_exact_top1": chance_top1,
        "chance_exact_topk": chance_topk,
        "modalities": [rna_mod, img_mod],
    }
    if match is not None:
        res["match_scores"] = match.astype(np.float32)
    mdata.uns[key_added] = res
    logg.info(
        f"retrieve ({query} → {t_mod}): top-1 group accuracy {acc} (chance {chance}); exact top-{k} "
        f"{res['exact_topk']:.3f} (chance {chance_topk:.3f}) → uns[{key_added!r}]"
    )
    return res


def _attributions(
    model: Any,
    data: dict,
    rna_row: np.ndarray,
    paired: np.ndarray,
    method: str,
    score: str,
    n_steps: int,
    batch_size: int,
) -> np.ndarray:
    """Per-gene attributions ``(n_pairs, n_genes)`` of one model's match score of each paired patch and its sample."""
    m, device = model.module, model.device
    was = m.training
    m.eval()
    attrs = []
    try:
        for s in range(0, len(paired), batch_size):
            idx = paired[s : s + batch_size]
            x = torch.from_numpy(data["rna"][rna_row[idx]]).to(device)
            img = torch.from_numpy(np.ascontiguousarray(data["img"][idx])).to(device)
            with torch.no_grad():
                it = m.encode_image(img)
                u_img = torch.nn.functional.normalize(m.img_proj(it[:, 0]), dim=-1)
            z = m._rna_in(x)  # standardised expression: the input position of each gene

            def score_fn(zz: torch.Tensor, it: torch.Tensor = it, u_img: torch.Tensor = u_img) -> torch.Tensor:
                tok = m.rna_encoder(zz)
                if score == "itm":
                    return m.match_logit(tok, it)
                return (torch.nn.functional.normalize(m.rna_proj(tok[:, 0]), dim=-1) * u_img).sum(1)

            if method == "gradcam":
                zz = z.detach().requires_grad_(True)
                (g,) = torch.autograd.grad(score_fn(zz).sum(), zz)
                a = g * zz
            else:
                total = torch.zeros_like(z)
                for step in range(1, n_steps + 1):
                    zz = (z * (step - 0.5) / n_steps).detach().requires_grad_(True)
                    (g,) = torch.autograd.grad(score_fn(zz).sum(), zz)
                    total += g
                a = total / n_steps * z
            attrs.append(a.detach().cpu().numpy())
    finally:
        m.train(was)
    return np.concatenate(attrs)


def gene_importance(
    mdata: Any,
    model: Any,
    method: Literal["gradcam", "integrated_gradients"] = "gradcam",
    n_top: int = 15,
    *,
    score: Literal["itm", "itc"] = "itm",
    n_steps: int = 16,
    max_pairs: int | None = None,
    key_added: str = "scst_gene_importance",
    batch_size: int = 64,
) -> pd.DataFrame:
    """Per-gene attribution of the image–RNA match score of each paired sample; top genes and their occurrence.

    The score explained is, for each patch and its own RNA sample, the matching head's logit (fusion encoder; the
    paper's Grad-CAM analysis) or their cosine in the shared space (``score="itc"``).
    ``"gradcam"``: Grad-CAM at the RNA input, where each gene is one position with
    a single channel, i.e. ``∂score/∂x_g · x_g`` on the standardised expression; genes are ranked by its magnitude
    (Grad-CAM's ReLU is not applied: a gene whose level lowers the match is as informative, and with the ReLU the
    planted gene of the test is missed whenever it sits below its mean).
    ``"integrated_gradients"``: integrated gradients from the all-mean baseline (standardised 0) with ``n_steps``
    Riemann steps (completeness: attributions sum to ``score(x) − score(baseline)`` up to the step error).

    Parameters
    ----------
    mdata
        MuData with paired samples.
    model
        Trained :class:`scst.models.MultimodalST`, or a sequence of them (an ensemble, as in :func:`retrieve`: its
        score is the mean of the models' scores, so the attributions are the mean of theirs).
    method
        ``"gradcam"`` or ``"integrated_gradients"``.
    score
        ``"itm"``: the matching head's logit on the fused pair (the paper's; needs ``model`` trained with the matching
        loss, ``weights["itm"] > 0``, else a ValueError); ``"itc"``: the cosine of the pair in the shared space (no
        fusion encoder).
    n_top
        Top genes kept per paired sample (paper: occurrences of the 15 most important).
    n_steps
        Integration steps for integrated gradients.
    max_pairs
        Use at most this many paired patches (the first ones); ``None``: all of them.
    key_added
        ``mdata.uns`` key; ``var`` columns ``scst_importance_mean`` / ``scst_importance_count`` of the RNA modality.
    batch_size
        Pairs per backward pass.

    Genes are ranked per pair by ``|attribution|``.

    Returns
    -------
    DataFrame of genes sorted by occurrence count (``occurrence``, ``mean_attribution``), also in
    ``mdata.uns[key_added]["occurrence"]``; ``uns[key_added]["top_genes"]`` is ``(n_pairs, n_top)`` gene names and
    ``uns[key_added]["pairs"]`` the patch obs names.
    """
    models = _models(model)
    if score not in ("itm", "itc"):
        raise ValueError(f"score: expected 'itm' or 'itc', got {score!r}.")
    if method not in ("gradcam", "integrated_gradients"):
        raise ValueError(f"method: expected 'gradcam' or 'integrated_gradients', got {method!r}.")
    if max_pairs is not None:
        _positive_int("max_pairs", max_pairs, what="None (all pairs) or a positive integer")
    for name, v in (("n_top", n_top), ("n_steps", n_steps)):  # n_top=-1 would keep all genes but one
        _positive_int(name, v)
    if score == "itm":
        _check_matching_head(models, "score='itm'", "use score='itc' (the cosine in the shared space)")
    reg = models[0].registry
    models[0]._validate_data(mdata)
    data, rna_row = models[0]._arrays(mdata)
    link = mdata[reg["image"]].obs[reg["link_key"]]
    n_unmatched = _warn_unmatched(link, rna_row, reg["image"], reg["rna"], "gene_importance")
    paired = np.flatnonzero(rna_row >= 0)[:max_pairs]
    if len(paired) == 0:
        raise ValueError(
            "mdata: no patch is linked to an RNA sample; gene importance needs pairs"
            + (f" ({n_unmatched} links name no sample of mdata[{reg['rna']!r}])." if n_unmatched else ".")
        )
    genes = np.asarray(reg["var_names"])
    n_top = min(int(n_top), len(genes))
    # an ensemble's score is the mean of its models' scores, so its attributions are the mean of theirs
    A = np.mean([_attributions(m, data, rna_row, paired, method, score, n_steps, batch_size) for m in models], axis=0)
    mag = np.abs(A)
    top = np.argsort(-mag, axis=1, kind="stable")[:, :n_top]
    counts = np.bincount(top.ravel(), minlength=len(genes))
    rna = mdata[reg["rna"]]
    mean = pd.Series(mag.mean(0), index=genes)
    cnt = pd.Series(counts, index=genes)
    rna.var["scst_importance_mean"] = mean.reindex(rna.var_names).to_numpy()
    rna.var["scst_importance_count"] = cnt.reindex(rna.var_names).fillna(0).astype(int).to_numpy()
    table = pd.DataFrame({"occurrence": cnt, "mean_attribution": mean}).sort_values(
        ["occurrence", "mean_attribution"], ascending=False
    )
    mdata.uns[key_added] = {
        "method": method,
        "score": score,
        "n_top": n_top,
        "top_genes": genes[top],
        "pairs": np.asarray(mdata[reg["image"]].obs_names[paired]).astype(str),
        "occurrence": table,
    }
    logg.info(f"gene_importance ({method}): {len(paired)} pairs; most frequent: {list(table.index[:5])}")
    return table
