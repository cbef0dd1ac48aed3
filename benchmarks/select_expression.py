"""Model selection for docs/benchmarks/expression.md on the C6 fold's training sections only (C6 is never loaded).

Fit on C2–C4 (the deep heads early-stop on C3), score on C5: ridge, the MLP head and HGGEP's spatial head on
hand-crafted features at several fields of view, with and without grid-neighbour context. Output: one JSON of
(mean PCC, median sd ratio[, epochs, seconds]) per setting in benchmarks/results/expression_selection/.

    python benchmarks/select_expression.py hc80,hc80_ctx
    python benchmarks/select_expression.py hc80_160,hc80_160_ctx
    python benchmarks/select_expression.py hc80_160_320,hc40_80_160_320
    python benchmarks/select_expression.py hc80,hc80_160_320 'noprog={"n_programs": null}' --tag programs
    python benchmarks/select_expression.py hc80_160_320_scaled,hc80_160_320_56_scaled --tag px56
    python benchmarks/select_expression.py hc80_160_320_scaled 'linval={"linear_on_validation": false}' \
        --mlp-variants --tag linval

Before the ``--tag programs`` round the heads had no ``n_programs`` option (one output per gene); from it on their
default is ``n_programs="auto"``, and the round adds reduced-rank ridge (``n_programs="auto"``) and the heads
without programmes (``noprog``).
"""

import json
import sys
import time

import numpy as np
import scipy.sparse as sp
import torch

import scst
from scst._normalize import log_normalized
from scst.models import HGGEPHead, MLPExpression, RidgeExpression

torch.set_num_threads(1)

sdata = scst.datasets.her2st(sections=["C2", "C3", "C4", "C5"])
tab = sdata.tables["table"]
scst.pp.select_genes(tab, n_top=1000, min_fraction=0.5, sections=["C2", "C3", "C4"])
panel = list(tab.var_names[tab.var.highly_variable_scst])
scst.tl.embed_patches(sdata, "handcrafted", out_px=112, progress=False, key_added="hc80")
scst.tl.embed_patches(sdata, "handcrafted", size_um=160, out_px=112, progress=False, key_added="hc160")
scst.pp.cell_graph(tab, grid=True, n_neighs=4, library_key="section", key_added="grid")
A = tab.obsp["grid_connectivities"]
A = sp.diags(1 / np.maximum(np.asarray(A.sum(1)).ravel(), 1)) @ A
scst.tl.embed_patches(sdata, "handcrafted", size_um=320, out_px=112, progress=False, key_added="hc320")
scst.tl.embed_patches(sdata, "handcrafted", size_um=40, out_px=112, progress=False, key_added="hc40")
tab.obsm["hc80_160_320"] = np.hstack([tab.obsm["hc80"], tab.obsm["hc160"], tab.obsm["hc320"]])
tab.obsm["hc40_80_160_320"] = np.hstack([tab.obsm["hc40"], tab.obsm["hc80"], tab.obsm["hc160"], tab.obsm["hc320"]])
# the shipped input (scaled per section), and the same fields of view at 56 px (a third of the feature cost)
for um in (80, 160, 320):
    scst.tl.embed_patches(sdata, "handcrafted", size_um=um, out_px=56, progress=False, key_added=f"hc{um}_56")
tab.obsm["hc80_160_320_56"] = np.hstack([tab.obsm[f"hc{um}_56"] for um in (80, 160, 320)])
scst.pp.scale_by_section(tab, "hc80_160_320", key_added="hc80_160_320_scaled")
scst.pp.scale_by_section(tab, "hc80_160_320_56", key_added="hc80_160_320_56_scaled")
tab.obsm["hc80_ctx"] = np.hstack([tab.obsm["hc80"], A @ tab.obsm["hc80"]])
tab.obsm["hc80_160"] = np.hstack([tab.obsm["hc80"], tab.obsm["hc160"]])
tab.obsm["hc80_160_ctx"] = np.hstack([tab.obsm["hc80_160"], A @ tab.obsm["hc80_160"]])
m5 = (tab.obs.section.astype(str) == "C5").to_numpy()
obs = log_normalized(tab[m5], panel)


def score(pred):
    r = [
        np.corrcoef(pred[:, g], obs[:, g])[0, 1]
        for g in range(obs.shape[1])
        if pred[:, g].std() > 0 and obs[:, g].std() > 0
    ]
    return round(float(np.nanmean(r)), 4), round(float(np.median(pred.std(0) / np.maximum(obs.std(0), 1e-8))), 3)


args = sys.argv[2:]
tag = ""
if "--tag" in args:  # results of a later selection round go to their own file
    i = args.index("--tag")
    tag, args = "_" + args[i + 1], args[:i] + args[i + 2 :]
mlp_variants = "--mlp-variants" in args  # the extra configurations also for the MLP head (not only HGGEP's)
args = [a for a in args if a != "--mlp-variants"]
res = {}
for rep in sys.argv[1].split(","):
    RidgeExpression.setup_anndata(tab, embedding_key=rep, sections=["C2", "C3", "C4"])
    res[f"ridge_{rep}"] = score(RidgeExpression(tab).train().predict(tab, ["C5"]))
    print(f"ridge_{rep}", res[f"ridge_{rep}"], flush=True)
    if tag:
        rrr = RidgeExpression(tab, n_programs="auto").train()
        res[f"ridge_programs_{rep}"] = score(rrr.predict(tab, ["C5"])) + (int(rrr.params["n_programs"]),)
        print(f"ridge_programs_{rep}", res[f"ridge_programs_{rep}"], flush=True)
    variants = [(k, json.loads(v)) for k, v in (kv.split("=", 1) for kv in args)]
    for name, cls, cfg in (
        [("mlp", MLPExpression, {}), ("head", HGGEPHead, {"max_epochs": 150})]
        + [(f"mlp_{k}", MLPExpression, v) for k, v in variants if mlp_variants]
        + [(f"head_{k}", HGGEPHead, dict(max_epochs=150, **v)) for k, v in variants]
    ):
        if cls is HGGEPHead:
            scst.pp.hypergraph(tab, use_rep=rep, k=3)
        cls.setup_anndata(tab, use_rep=rep, sections=["C2", "C3", "C4"])
        t = time.time()
        m = cls(tab, **cfg).train(validation="C3", enable_progress_bar=False)
        res[f"{name}_{rep}"] = score(m.predict(tab, ["C5"])) + (
            len(m.history),
            round(time.time() - t, 1),
            m.n_programs_,
        )
        print(f"{name}_{rep}", res[f"{name}_{rep}"], flush=True)
json.dump(res, open(f"benchmarks/results/expression_selection/msel_{sys.argv[1]}{tag}.json", "w"))
