"""Robustness of the shipped expression pipeline to slide-wide stain and resolution shifts (her2st C2–C6, LOSO).

Another patient's slide differs from the training slides as a whole: staining strength, scanner resolution.
No other patient is on this machine, so the test section of each fold is shifted on purpose and predicted by
models trained on the unshifted training sections:

- stain: haematoxylin / eosin concentrations (Ruifrok–Johnston colour deconvolution, as in the HED jitter of
  ``scst.nn.HEAugment``) scaled by fixed factors, or the whole optical density (paler / darker slide);
- resolution: each patch downsampled (antialiased) by 2 or 4 and resized back, as a slide scanned at 1.4 or 2.8
  µm/px gives (her2st patient A's images are the repository's smaller ``*_HE_small.jpg``).

Models: reduced-rank ridge and HGGEP's spatial head (``bench_config``, seed 0; the demo's model) on the
multi-scale hand-crafted features, raw and standardised per section (``scst.pp.scale_by_section``; the test
section by its own spots, as a new slide would be). Panel per fold on its training sections, as on the expression
page. Run from the repository root::

    python benchmarks/bench_shift.py            # all five folds → docs/benchmarks/shift.md
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from _page import CPU_NOT_RECORDED, cpu_name, machine_line, write_page  # noqa: E402

OUT = ROOT / "docs" / "benchmarks" / "shift.md"
SECTIONS = ["C2", "C3", "C4", "C5", "C6"]
SCALES = (80.0, 160.0, 320.0)
if "SCST_DATA_DIR" not in os.environ and (ROOT.parent / "shared" / "data").is_dir():
    os.environ["SCST_DATA_DIR"] = str(ROOT.parent / "shared" / "data")

#: name → ("stain", (H, E, DAB) factors, optical-density factor) or ("resolution", downsampling factor)
SHIFTS = {
    "none": ("stain", (1.0, 1.0, 1.0), 1.0),
    "H ×1.3": ("stain", (1.3, 1.0, 1.0), 1.0),
    "H ×0.7": ("stain", (0.7, 1.0, 1.0), 1.0),
    "E ×1.4": ("stain", (1.0, 1.4, 1.0), 1.0),
    "E ×0.6": ("stain", (1.0, 0.6, 1.0), 1.0),
    "H ×0.8, E ×1.3": ("stain", (0.8, 1.3, 1.0), 1.0),
    "paler (OD ×0.75)": ("stain", (1.0, 1.0, 1.0), 0.75),
    "darker (OD ×1.25)": ("stain", (1.0, 1.0, 1.0), 1.25),
    "resolution ÷2": ("resolution", 2),
    "resolution ÷4": ("resolution", 4),
}


def shift_patches(x: np.ndarray, shift: tuple) -> np.ndarray:
    """uint8 patches (n, 3, h, w) under one slide-wide shift."""
    from scst.nn._augment import hed_to_rgb, rgb_to_hed

    t = torch.from_numpy(x).double() / 255
    if shift[0] == "stain":
        alpha = torch.tensor(shift[1], dtype=torch.float64).view(1, 3, 1, 1) * shift[2]
        t = hed_to_rgb(rgb_to_hed(t) * alpha)
    else:
        size = x.shape[-1]
        t = F.interpolate(t, size=size // shift[1], mode="bilinear", antialias=True, align_corners=False)
        t = F.interpolate(t, size=size, mode="bilinear", align_corners=False).clamp(0, 1)
    return (t * 255).round().to(torch.uint8).numpy()


def fold(sdata, tab, test: str, rows: list, per_gene: list) -> None:
    import scst
    from scst._normalize import log_normalized
    from scst._utils import _colwise_pearson

    train = [s for s in SECTIONS if s != test]
    scst.pp.select_genes(tab, n_top=1000, min_fraction=0.5, sections=train)
    genes = list(tab.var_names[tab.var["highly_variable_scst"]])
    m = (tab.obs["section"] == test).to_numpy()
    obs = log_normalized(tab[m], genes)
    t0 = time.perf_counter()
    patches = {um: scst.pp.extract_patches(sdata, size_um=um, out_px=112, obs_subset=m, return_counts=False)["patches"]
               for um in SCALES}  # fmt: skip
    feats = {
        name: np.hstack([scst.pp.handcrafted_features(shift_patches(patches[um], s)) for um in SCALES])
        for name, s in SHIFTS.items()
    }
    print(f"{test}: shifted features in {time.perf_counter() - t0:.0f} s", flush=True)
    for norm in ("raw", "scaled"):
        base = tab.obsm["ms" if norm == "raw" else "ms_scaled"]
        tab.obsm["rep"] = base.copy()
        scst.pp.hypergraph(tab, use_rep="rep", k=3)
        scst.models.RidgeExpression.setup_anndata(tab, embedding_key="rep", genes=genes, sections=train)
        models = {"reduced-rank ridge": scst.models.RidgeExpression(tab, n_programs="auto").train()}
        scst.models.HGGEPHead.setup_anndata(tab, use_rep="rep", genes=genes, sections=train)
        head = scst.models.HGGEPHead(tab, **{**scst.models.HGGEPHead.bench_config, "seed": 0})
        models["HGGEPHead (bench_config)"] = head.train(enable_progress_bar=False)
        for name, x in feats.items():
            rep = base.copy()
            rep[m] = x
            tab.obsm["rep"] = rep
            if norm == "scaled":  # the test section by its own spots, as a new slide
                scst.pp.scale_by_section(tab, "rep", key_added="rep")
            scst.pp.hypergraph(tab, use_rep="rep", k=3)
            for mname, model in models.items():
                scst.tl.predict_expression(sdata, model, layer="shifted", sections=test, progress=False)
                p = tab[m, genes].layers["shifted"]
                p = p.toarray() if hasattr(p, "toarray") else np.asarray(p)
                r = _colwise_pearson(p, obs)
                sd = float(np.median(p.std(0) / np.maximum(obs.std(0), 1e-8)))
                err = float(np.mean(np.abs(p.mean(0) - obs.mean(0))))
                key = {"test": test, "features": norm, "model": mname, "shift": name}
                rows.append(
                    {**key, "mean_pcc": float(np.nanmean(r)), "sd_ratio": sd, "mean_abs_error_of_gene_means": err}
                )
                per_gene.append(pd.DataFrame({**key, "gene": genes, "pcc": r}))
                print(f"{test} {norm:<6} {mname:<26} {name:<18} PCC {rows[-1]['mean_pcc']:.3f}", flush=True)


def report(df: pd.DataFrame, load: tuple, load_after: tuple, command: str, cpu: str) -> None:
    """Write the page; ``cpu`` is the CPU the run recorded (a rewrite from saved results must not name today's)."""
    import scst

    lines = [
        "# Robustness to slide-wide stain and resolution shifts (her2st, leave one section out)",
        "",
        (sys.modules[__name__].__doc__ or "").split("Run from")[0].split("\n\n", 1)[1].strip(),
        "",
        "Mean per-gene PCC on the shifted test section, mean over the five folds (worst fold in brackets):",
        "",
    ]
    shifts = list(SHIFTS)
    lines += ["| model | features | " + " | ".join(shifts) + " |", "|---|---|" + "---|" * len(shifts)]
    for (model, norm), g in df.groupby(["model", "features"], sort=False):
        cells = []
        for s in shifts:
            v = g[g["shift"] == s]["mean_pcc"]
            cells.append(f"{v.mean():.3f} ({v.min():.3f})")
        label = "raw" if norm == "raw" else "scaled per section"
        lines.append(f"| {model} | {label} | " + " | ".join(cells) + " |")
    worst = df[df["shift"] != "none"].groupby(["model", "features"], sort=False)["mean_pcc"].min()
    none = df[df["shift"] == "none"].groupby(["model", "features"], sort=False)["mean_pcc"].mean()
    err = df.groupby(["model", "features"], sort=False)["mean_abs_error_of_gene_means"].agg(["min", "max"])
    lines += [
        "",
        "Summary: unshifted mean PCC, worst (fold, shift) PCC, and the error of the predicted gene means "
        "(mean over genes of |mean prediction − mean observed|, log1p units; range over folds and shifts):",
        "",
        "| model | features | unshifted | worst shifted | error of gene means |",
        "|---|---|---|---|---|",
    ]
    for key in none.index:
        label = "raw" if key[1] == "raw" else "scaled per section"
        lines.append(f"| {key[0]} | {label} | {none[key]:.3f} | {worst[key]:.3f} | "
                     f"{err.loc[key, 'min']:.3f}–{err.loc[key, 'max']:.3f} |")  # fmt: skip
    mean = df.groupby(["model", "features", "shift"], sort=False)["mean_pcc"].mean()
    ridge = "reduced-rank ridge"
    sc = df[df["features"] == "scaled"]
    same = np.allclose(sc[sc["model"] == ridge]["mean_pcc"], sc[sc["model"] != ridge]["mean_pcc"], atol=2e-3)
    stain_gap = max(abs(mean[(ridge, "scaled", s)] - mean[(ridge, "scaled", "none")]) for s in shifts[1:8])
    lines += [
        "",
        "**Reading.** Stain changes of this size cost the raw features little (mean over folds at worst "
        f"{min(mean[(m, 'raw', s)] for m in df['model'].unique() for s in shifts[1:8]):.3f} against "
        f"{mean[(ridge, 'raw', 'none')]:.3f} unshifted), the HGGEP head more than ridge on its worst fold; a lower "
        f"resolution costs a lot (÷4: {mean[(ridge, 'raw', 'resolution ÷4')]:.3f}), because texture features "
        "(LBP, co-occurrence, gradients) of a blurred patch differ from the training sections' as a whole. "
        "Standardising each section's features by its own spots removes most of that slide-wide part: ÷4 "
        f"{mean[(ridge, 'scaled', 'resolution ÷4')]:.3f}, ÷2 {mean[(ridge, 'scaled', 'resolution ÷2')]:.3f}, every "
        f"stain shift within {stain_gap:.3f} of the unshifted {mean[(ridge, 'scaled', 'none')]:.3f}, and the "
        "predicted gene means no longer move with the shift (last column of the summary). It costs nothing "
        "unshifted. Hence the shipped pipeline (demo, tutorial, README, `scst train` for the heads) scales the "
        "features per section, and `predict_expression` scales a new slide's remade features the same way."
        + (
            " On the scaled features the HGGEP head scores the same as reduced-rank ridge (its residual network "
            "never improved the validation MSE of its ridge path; see the expression page)."
            if same
            else ""
        ),
        "",
        "What this does not cover: shifts that are not slide-wide (tissue composition, section thickness varying "
        "within a slide, other tissue types), and a patient's biology — those need the other patients' sections "
        "(`scst.datasets.her2st(sections=...)` on a machine with the data; only patient C is here).",
    ]
    lines += ["", f"scst {scst.__version__}. " + machine_line(load, load_after, cpu=cpu)]
    raw = {"rows": df.to_dict(orient="records"), "load": list(load), "load_after": list(load_after), "cpu": cpu,
           "per_gene_csv": "benchmarks/results/shift/per_gene.csv.gz"}  # fmt: skip
    write_page(OUT, lines, command, raw=raw)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sections", default=",".join(SECTIONS), help="test sections (comma-separated)")
    p.add_argument("--report-only", action="store_true", help="rewrite the page from the committed raw results")
    args = p.parse_args()
    import json

    import scst

    raw = ROOT / "benchmarks" / "results" / "shift" / "results.json"
    if args.report_only:
        saved = json.loads(raw.read_text())
        report(pd.DataFrame(saved["rows"]), tuple(saved["load"]), tuple(saved["load_after"]), saved["command"],
               saved.get("cpu", CPU_NOT_RECORDED))  # fmt: skip
        return

    torch.set_num_threads(1)
    load = os.getloadavg()
    sdata = scst.datasets.her2st(sections=SECTIONS)
    tab = sdata.tables["table"]
    scst.tl.embed_patches(sdata, "handcrafted", size_um=SCALES, out_px=112, progress=False, key_added="ms")
    scst.pp.scale_by_section(tab, "ms", key_added="ms_scaled")
    rows, per_gene = [], []
    for test in args.sections.split(","):
        fold(sdata, tab, test, rows, per_gene)
    out = ROOT / "benchmarks" / "results" / "shift"
    out.mkdir(parents=True, exist_ok=True)
    pd.concat(per_gene).to_csv(out / "per_gene.csv.gz", index=False, float_format="%.5f")
    command = " ".join(["python benchmarks/bench_shift.py", *sys.argv[1:]])
    report(pd.DataFrame(rows), load, os.getloadavg(), command, cpu_name())


if __name__ == "__main__":
    main()
