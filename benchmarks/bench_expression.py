"""Leave-one-section-out benchmark of histology → expression models on her2st C2–C6 (CPU, ``bench_config``).

Run from the repository root (all methods, then the markdown)::

    python benchmarks/bench_expression.py

Parts can be rerun: ``--methods hggep,tcgn`` (results of other methods are kept in ``--results``), ``--sections``
(folds), ``--epochs hggep=20,tcgn=10`` (override ``bench_config["max_epochs"]``), ``--ablations`` (HGGEP without
GEM / CBAM / HAM / ZINB, 40 / 160 µm patches, a longer run), ``--report-only`` (rewrite the markdown from saved
results).

Methods: ``mean`` (training mean), ``handcrafted`` (colour/stain/texture features + ridge), ``encoder``
(random-init ResNet-18 embedding + ridge), ``stnet`` (ResNet-18 ST-Net-style CNN), ``tcgn``, ``hggep``. Every
network is trained from random initialisation (no pretrained weights can be downloaded here). Gene panel:
``scst.pp.select_genes(n_top=1000, min_fraction=0.5)``. Writes ``docs/benchmarks/expression.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "benchmarks" / "expression.md"
RESULTS = ROOT / "benchmarks" / "results" / "expression"
COMMAND = "python benchmarks/bench_expression.py"
# Local copy of the data beside the checkout, as in tests/conftest.py (else pooch downloads it).
if "SCST_DATA_DIR" not in os.environ and (ROOT.parent / "shared" / "data").is_dir():
    os.environ["SCST_DATA_DIR"] = str(ROOT.parent / "shared" / "data")
METHODS = ("mean", "handcrafted", "encoder", "stnet", "tcgn", "hggep")
# HGGEP variants: keyword overrides of bench_config; ``size_um`` changes the patch's field of view (still 112 px).
# ``--ablations`` runs them all.
ABLATIONS = {
    "hggep_no_gem": {"use_gem": False},
    "hggep_no_cbam": {"use_cbam": False},
    "hggep_no_ham": {"use_ham": False},
    "hggep_no_zinb": {"use_zinb": False},
    "hggep_patch_40um": {"size_um": 40.0},
    "hggep_patch_160um": {"size_um": 160.0},
    "hggep_long": {"max_epochs": 80, "patience": 15},
    "hggep_no_step_norm": {"step_norm": False},
}
LABELS = {
    "mean": "training mean",
    "handcrafted": "hand-crafted features + ridge",
    "encoder": "ResNet-18 (random init) embedding + ridge",
    "stnet": "ST-Net-style CNN (ResNet-18)",
    "tcgn": "TCGN",
    "hggep": "HGGEP",
    "hggep_no_gem": "HGGEP, no GEM",
    "hggep_no_cbam": "HGGEP, no CBAM",
    "hggep_no_ham": "HGGEP, no HAM (hypergraph)",
    "hggep_no_zinb": "HGGEP, no ZINB",
    "hggep_patch_40um": "HGGEP, 40 µm patches",
    "hggep_patch_160um": "HGGEP, 160 µm patches",
    "hggep_long": "HGGEP, up to 80 epochs (patience 15)",
    "hggep_no_step_norm": "HGGEP, no LayerNorm on the LSTM inputs",
    # Earlier runs at the first bench_config (lr 1e-3, random output weights, no LayerNorm on the LSTM inputs)
    "hggep_v0": "HGGEP, first setting (lr 1e-3, random head, no step norm)",
    "hggep_v0_no_gem": "HGGEP, first setting, no GEM",
    "hggep_v0_no_zinb": "HGGEP, first setting, no ZINB",
}
EARLIER = ("hggep_v0", "hggep_v0_no_gem", "hggep_v0_no_zinb")
BASELINES = ("mean", "handcrafted", "encoder", "stnet")
SCST_MODELS = ("tcgn", "hggep")


class PeakRSS:
    """Peak resident memory of this process while the block runs (sampled every 0.1 s), in MiB above the start."""

    def __init__(self):
        import psutil

        self.proc = psutil.Process()

    def __enter__(self):
        self.start = self.peak = self.proc.memory_info().rss
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def _run(self):
        while not self._stop.wait(0.1):
            self.peak = max(self.peak, self.proc.memory_info().rss)

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)
        self.mib = (self.peak - self.start) / 2**20
        self.peak_mib = self.peak / 2**20


def load(sections):
    import scst

    sdata = scst.datasets.her2st()
    tab = sdata.tables["table"]
    scst.pp.select_genes(tab, n_top=1000, min_fraction=0.5)
    return sdata, tab


def run_method(name, sdata, tab, sections, epochs):
    from scst.models._baselines import MeanExpression, RidgeExpression, STNet
    from scst.models._hggep import HGGEP
    from scst.models._tcgn import TCGN
    from scst.tl._embed import embed_patches
    from scst.tl._predict import cross_validate

    meta = {"method": name, "sections": sections}
    setup_kwargs, config, cls = {}, {}, None
    with PeakRSS() as mem_embed:
        t0 = time.perf_counter()
        if name == "handcrafted":
            embed_patches(sdata, "handcrafted", out_px=112, progress=False)
            setup_kwargs = {"embedding_key": "X_handcrafted"}
        elif name == "encoder":
            torch.manual_seed(0)
            embed_patches(sdata, "resnet18", out_px=112, progress=False)
            setup_kwargs = {"embedding_key": "X_resnet18"}
        t_embed = time.perf_counter() - t0
    if name in ("handcrafted", "encoder"):
        cls = RidgeExpression
        meta.update(
            embed_seconds=t_embed, embed_spots_per_s=tab.n_obs / t_embed, embed_peak_mib=mem_embed.mib,
            settings="patches 80 µm → 112 px; ridge penalty per gene by inner CV grouped by section",
        )  # fmt: skip
    elif name == "mean":
        cls = MeanExpression
        meta["settings"] = "mean of the training spots"
    else:
        cls = {"stnet": STNet, "tcgn": TCGN}.get(name, HGGEP)
        config = dict(cls.bench_config)
        variant = dict(ABLATIONS.get(name, {}))
        size_um = float(variant.pop("size_um", 80.0))
        config.update(variant)
        key = "hggep" if name in ABLATIONS else name
        if key in epochs:
            config["max_epochs"] = epochs[key]
        meta["config"] = config
        px = {"stnet": 112, "tcgn": int(config.get("img_size", 128))}.get(name, 112)
        setup_kwargs = {"size_um": size_um, "patch_px": px}
        bs = config.get("batch_size", cls._default_config.get("batch_size"))
        meta["settings"] = (
            f"{px} px patches of {size_um:g} µm, max {config['max_epochs']} epochs, batch {bs}"
            f"{' spots per step (spatial windows)' if cls is HGGEP else ''}, lr {config.get('lr')}, early stopping "
            f"(patience {config.get('patience')}) on a held-out training section"
        )
    with PeakRSS() as mem:
        t0 = time.perf_counter()
        df, preds = cross_validate(
            cls, sdata, config=config, genes="highly_variable_scst", sections=sections, setup_kwargs=setup_kwargs,
            metrics=("pearson",), return_predictions=True,
        )  # fmt: skip
        meta["cv_seconds"] = time.perf_counter() - t0
    meta["cv_peak_mib"] = mem.mib
    meta["peak_rss_mib"] = mem.peak_mib
    meta["folds"] = df.attrs["folds"]
    return df, preds, meta


def domain_scores(tab, preds, panel):
    """k-means ARI vs. the data paper's labels on predicted and on observed expression, per test section."""
    import anndata as ad

    from scst.tl._expression import domain_ari, spatial_domains

    rows = []
    for s, p in preds.items():
        m = (tab.obs["section"].astype(str) == s).to_numpy()
        ev = ad.AnnData(
            X=tab.X[m], obs=tab.obs.loc[m, ["section", "label"]].copy(), var=pd.DataFrame(index=tab.var_names)
        )
        k = int(ev.obs["label"].dropna().nunique())
        M = np.zeros(ev.shape, dtype=np.float32)
        M[:, tab.var_names.get_indexer(panel)] = p
        ev.layers["predicted"] = M
        spatial_domains(ev, "predicted", n_domains=k, method="kmeans", use_genes=panel, key_added="dom_pred")
        spatial_domains(ev, None, n_domains=k, method="kmeans", use_genes=panel, key_added="dom_obs")
        rows.append({"section": s, "n_domains": k,
                     "ari_predicted": float(domain_ari(ev, "dom_pred").loc[s, "ari"]),
                     "ari_observed": float(domain_ari(ev, "dom_obs").loc[s, "ari"])})  # fmt: skip
    return pd.DataFrame(rows)


def summarise(df, top50):
    """Per-fold mean/median PCC over genes and fraction > 0.2, then the mean over folds."""
    r = df[df["metric"] == "pearson"].dropna(subset=["value"])
    out = {}
    for label, sub in (("all", r), ("top50", r[r["gene"].isin(top50)])):
        g = sub.groupby("section")["value"]
        out[f"{label}_mean"] = float(g.mean().mean())
        out[f"{label}_median"] = float(g.median().mean())
        out[f"{label}_frac02"] = float((sub.assign(v=sub["value"] > 0.2).groupby("section")["v"].mean()).mean())
        out[f"{label}_sd_sections"] = float(g.mean().std(ddof=0))
    return out


def report(results_dir: Path, out: Path) -> None:
    from scst._utils import _atomic_file

    metas = {}
    for f in sorted(results_dir.glob("*.json")):
        if f.name == "panel.json":
            continue
        metas[f.stem] = json.loads(f.read_text())
    if not metas:
        raise SystemExit(f"No results in {results_dir}.")
    panel_info = json.loads((results_dir / "panel.json").read_text())
    args_note = f" {panel_info['args']}" if panel_info.get("args") else ""
    order = [m for m in (*METHODS, *ABLATIONS, *EARLIER) if m in metas]
    lines = [
        "## Histology → expression (her2st, leave one section out)",
        "",
        f"Data: her2st patient C, sections {', '.join(panel_info['sections'])} (one fold per section: train on the "
        "others, validation/early stopping on one *training* section, score the held-out section). Gene panel: "
        f"`scst.pp.select_genes(n_top=1000, min_fraction=0.5)` → **{panel_info['n_genes']} genes** (union of each "
        "section's top-1000 HVGs, detected in ≥ 50 % of spots). Targets and predictions: log1p(normalize_total 1e4). "
        "PCC per gene across the test section's spots (genes constant in a section left out), summarised over genes "
        "per fold, then averaged over the folds; 'top-50' = the 50 panel genes with the highest mean expression.",
        "",
        "**All networks were trained without pretrained weights** (random initialisation; no weights can be "
        f"downloaded here), at `bench_config` on CPU: {panel_info['machine']}. Command: `{COMMAND}{args_note}`.",
        "",
        "| method | mean PCC | median PCC | genes PCC > 0.2 | top-50 mean PCC | top-50 median | top-50 > 0.2 | "
        "sd of fold means |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for m in order:
        s = metas[m]["summary"]
        lines.append(
            f"| {LABELS.get(m, m)} | {s['all_mean']:.3f} | {s['all_median']:.3f} | {s['all_frac02']:.1%} | "
            f"{s['top50_mean']:.3f} | {s['top50_median']:.3f} | {s['top50_frac02']:.1%} | {s['all_sd_sections']:.3f} |"
        )
    lines += ["", "Per test section (mean PCC over genes):", "",
              "| method | " + " | ".join(panel_info["sections"]) + " |",
              "|---|" + "---|" * len(panel_info["sections"])]  # fmt: skip
    for m in order:
        per = metas[m]["per_section_mean"]
        lines.append(f"| {LABELS.get(m, m)} | " + " | ".join(f"{per.get(s, float('nan')):.3f}" for s in
                                                             panel_info["sections"]) + " |")  # fmt: skip
    lines += ["", "Spatial domains: k-means (k = number of data-paper expression clusters in the section) on the "
              "predicted expression vs. on the observed expression (the ceiling), ARI against the her2st cluster "
              "labels (expression clusters of the data paper, not pathologist annotations: not comparable to "
              "HGGEP's table). Mean over test sections.", "",
              "| method | ARI predicted | ARI observed |", "|---|---|---|"]  # fmt: skip
    for m in order:
        d = metas[m].get("domains")
        if d:
            lines.append(
                f"| {LABELS.get(m, m)} | {np.mean(d['ari_predicted']):.3f} | {np.mean(d['ari_observed']):.3f} |"
            )
    lines += ["", "Cost (CPU, per fold averages): training time per epoch, peak resident memory during the whole "
              "cross-validation (process RSS above the start, MiB), prediction speed (patches already in memory; "
              "ridge methods: embedding speed, patches read from the image).", "",
              "| method | settings | epochs run (per fold) | s / epoch | CV wall time (s) | peak RSS + (MiB) | "
              "predict spots/s |", "|---|---|---|---|---|---|---|"]  # fmt: skip
    for m in order:
        meta = metas[m]
        folds = meta["folds"]
        ep = [f["epochs"] for f in folds if f.get("epochs")]
        spe = [f["train_seconds"] / f["epochs"] for f in folds if f.get("epochs")]
        sps = sum(f["n_spots"] for f in folds) / max(sum(f["predict_seconds"] for f in folds), 1e-9)
        if "embed_spots_per_s" in meta:
            sps = meta["embed_spots_per_s"]
        lines.append(
            f"| {LABELS.get(m, m)} | {meta.get('settings', '')} | {', '.join(map(str, ep)) if ep else '–'} | "
            f"{np.mean(spe):.1f} | {meta['cv_seconds']:.0f} | {meta['cv_peak_mib']:.0f} | {sps:.0f} |"
            if spe else
            f"| {LABELS.get(m, m)} | {meta.get('settings', '')} | – | – | {meta['cv_seconds']:.0f} | "
            f"{max(meta['cv_peak_mib'], meta.get('embed_peak_mib', 0)):.0f} | {sps:.0f} |"
        )  # fmt: skip
    best_scst = max((metas[m]["summary"]["all_mean"], m) for m in order if m not in BASELINES) \
        if any(m not in BASELINES for m in order) else None  # fmt: skip
    best_base = max((metas[m]["summary"]["all_mean"], m) for m in order if m in BASELINES) \
        if any(m in BASELINES for m in order) else None  # fmt: skip
    if best_scst and best_base:
        ratio = best_scst[0] / best_base[0] if best_base[0] > 0 else float("inf")
        hit = ratio >= 1.25
        lines += ["", f"**Target check** (best scst model ≥ 1.25 × best baseline mean PCC): best scst model "
                  f"{LABELS[best_scst[1]]} {best_scst[0]:.3f}, best baseline {LABELS[best_base[1]]} "
                  f"{best_base[0]:.3f}: "
                  f"ratio {ratio:.2f} → **{'met' if hit else 'missed'}**."]  # fmt: skip
    if panel_info.get("notes"):
        lines += ["", panel_info["notes"]]
    with _atomic_file(out) as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--sections", default="C2,C3,C4,C5,C6")
    p.add_argument("--epochs", default="", help="e.g. hggep=20,tcgn=10,stnet=3")
    p.add_argument("--ablations", action="store_true")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--results", default=str(RESULTS))
    p.add_argument("--out", default=str(OUT))
    p.add_argument("--report-only", action="store_true")
    p.add_argument("--notes", default=None, help="free text appended to the markdown (what was run)")
    p.add_argument("--run-args", default=None, help="with --report-only: the arguments of the run, for the markdown")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    if args.report_only:
        panel_file = results / "panel.json"
        info = json.loads(panel_file.read_text())
        if args.notes is not None:
            info["notes"] = args.notes
        if args.run_args is not None:
            info["args"] = args.run_args
        panel_file.write_text(json.dumps(info, indent=1))
        report(results, Path(args.out))
        return
    methods = [m for m in args.methods.split(",") if m]
    if args.ablations:
        methods += [m for m in ABLATIONS if m not in methods]
    unknown = [m for m in methods if m not in METHODS and m not in ABLATIONS]
    if unknown:
        raise SystemExit(f"--methods: unknown {unknown}; choose from {list(METHODS) + list(ABLATIONS)}.")
    sections = args.sections.split(",")
    epochs = {k: int(v) for k, v in (kv.split("=") for kv in args.epochs.split(",") if kv)}
    t0 = time.perf_counter()
    sdata, tab = load(sections)
    panel = list(tab.var_names[tab.var["highly_variable_scst"].to_numpy()])
    from scst.tl._expression import log_normalized

    expr = log_normalized(tab, panel)
    top50 = [panel[i] for i in np.argsort(-expr.mean(0))[:50]]
    panel_file = results / "panel.json"
    old = json.loads(panel_file.read_text()) if panel_file.exists() else {}
    panel_info = {
        "n_genes": len(panel), "sections": sections, "top50": top50,
        "machine": f"{os.cpu_count()} CPU cores (shared with other jobs), torch {torch.__version__}, "
                   f"{args.threads} torch thread(s), {platform.processor() or platform.machine()}",
        "notes": args.notes if args.notes is not None else old.get("notes", ""),
        "args": " ".join(sys.argv[1:]),
    }  # fmt: skip
    panel_file.write_text(json.dumps(panel_info, indent=1))
    print(f"loaded her2st + panel of {len(panel)} genes in {time.perf_counter() - t0:.0f} s", flush=True)
    for m in methods:
        t1 = time.perf_counter()
        df, preds, meta = run_method(m, sdata, tab, sections, epochs)
        meta["summary"] = summarise(df, top50)
        r = df[df["metric"] == "pearson"]
        meta["per_section_mean"] = {s: float(v) for s, v in r.groupby("section")["value"].mean().items()}
        meta["domains"] = domain_scores(tab, preds, panel).to_dict("list")
        df.to_csv(results / f"{m}.csv.gz", index=False)
        (results / f"{m}.json").write_text(json.dumps(meta, indent=1, default=float))
        print(f"{m}: mean PCC {meta['summary']['all_mean']:.3f} ({time.perf_counter() - t1:.0f} s)", flush=True)
    report(results, Path(args.out))


if __name__ == "__main__":
    main()
