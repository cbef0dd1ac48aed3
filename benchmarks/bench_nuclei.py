"""Do nucleus-morphology features add anything to the multi-scale hand-crafted features?

Run from the repository root (her2st C2–C6, 910 spots)::

    SCST_DATA_DIR=../shared/data python benchmarks/bench_nuclei.py

Nuclei are segmented in each spot's window by a threshold on the smoothed haematoxylin channel (Ruifrok–Johnston
``skimage.color.rgb2hed``), a 3 × 3 opening and connected components (``skimage.measure``); objects under 12 µm² are
dropped. Eleven statistics per window (density per tissue area, size distribution, nuclear area fraction,
eccentricity, haematoxylin in the nuclei, nearest-neighbour spacing) at 80 µm (112 px) and 160 µm (224 px), both
≈ 0.7 µm/px so that a nucleus spans ~10 px. Two thresholds are reported, neither chosen: 0.08 (below the 80th
percentile of her2st spot pixels, ``handcrafted_features``' "strong" haematoxylin threshold 0.1) and 0.12.

Compared, leave one section out with each fold's panel chosen on its training sections
(``tl.cross_validate(genes=None)``): ridge and reduced-rank ridge on the shipped input (multi-scale hand-crafted
features scaled per section), on that input plus the nucleus features, and on the nucleus features alone; and the
exact-spot retrieval of a linear image → RNA map (ridge onto 10 expression PCs of the training sections, cosine among
the test section's spots after centring, top 5), the quantity issue 9's exact-spot target asks for. Writes
``docs/benchmarks/nuclei.md``; raw per-gene PCCs and per-section values in ``benchmarks/results/nuclei/``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
from _page import cpu_name, machine_line, write_page
from scipy import ndimage as ndi
from scipy.spatial import cKDTree
from skimage.color import rgb2hed
from skimage.filters import gaussian
from skimage.measure import label, regionprops_table

OUT = Path(__file__).resolve().parents[1] / "docs" / "benchmarks" / "nuclei.md"
RAW = OUT.parents[2] / "benchmarks" / "results" / "nuclei"
COMMAND = "SCST_DATA_DIR=../shared/data python benchmarks/bench_nuclei.py"
SECTIONS = ["C2", "C3", "C4", "C5", "C6"]
SCALES_MS = (80.0, 160.0, 320.0)  # the shipped multi-scale input (bench_expression's "ms_scaled")
WINDOWS = ((80.0, 112), (160.0, 224))  # (µm, px): ≈ 0.7 µm/px in both
THRESHOLDS = (0.08, 0.12)
MIN_AREA_UM2 = 12.0
NAMES = [
    "density_per_1000um2", "log_area_mean", "area_cv", "log_area_q50", "log_area_q90", "large_fraction",
    "nuclear_area_fraction", "eccentricity_median", "elongated_fraction", "h_in_nuclei", "nn_spacing_um",
]  # fmt: skip


def nucleus_features(patch: np.ndarray, um_per_px: float, threshold: float) -> np.ndarray:
    """The eleven statistics of :data:`NAMES` for one ``(3, H, W)`` uint8 RGB patch (zeros when no nucleus)."""
    rgb = np.moveaxis(patch, 0, -1).astype(np.float32) / 255.0
    h = gaussian(rgb2hed(rgb)[..., 0], sigma=1.0)
    tissue_um2 = max(float((rgb @ np.array([0.2125, 0.7154, 0.0721]) < 0.8).sum()) * um_per_px**2, 1.0)
    lab = label(ndi.binary_opening(h > threshold, structure=np.ones((3, 3))))
    p = regionprops_table(lab, intensity_image=h, properties=("area", "eccentricity", "centroid", "intensity_mean"))
    area = p["area"] * um_per_px**2
    keep = area >= MIN_AREA_UM2
    if not keep.any():
        return np.zeros(len(NAMES), dtype=np.float32)
    area, ecc = area[keep], p["eccentricity"][keep]
    xy = np.c_[p["centroid-0"][keep], p["centroid-1"][keep]]
    nn = cKDTree(xy).query(xy, k=2)[0][:, 1] if len(xy) > 1 else np.array([patch.shape[1]])
    return np.array(
        [len(area) / tissue_um2 * 1000, np.log(area.mean()), area.std() / area.mean(), np.log(np.median(area)),
         np.log(np.quantile(area, 0.9)), (area > 60).mean(), area.sum() / tissue_um2, np.median(ecc),
         (ecc > 0.85).mean(), p["intensity_mean"][keep].mean(), np.median(nn) * um_per_px],
        dtype=np.float32,
    )  # fmt: skip


def nuclei_block(sdata, tab, threshold: float) -> np.ndarray:
    """``(n_obs, 22)``: the statistics of every spot's two windows."""
    from scst.pp import SpotPatchDataset

    blocks = []
    for um, px in WINDOWS:
        ds = SpotPatchDataset(sdata, "table", return_counts=False, size_um=um, out_px=px, normalize=None)
        out = np.zeros((tab.n_obs, len(NAMES)), dtype=np.float32)
        for start in range(0, len(ds), 64):
            idx = np.arange(start, min(start + 64, len(ds)))
            batch = ds.patches_uint8(idx, float01=False)
            out[ds.index[idx]] = [nucleus_features(b, um / px, threshold) for b in batch]
        blocks.append(out)
    return np.hstack(blocks)


def rna_pcs(tab, test: str, n_pcs: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """``(z, is_test)``: every spot's expression on ``n_pcs`` PCs of the other sections' spots (the retrieval targets
    of :func:`exact_top5`; per-fold panel ``select_genes(n_top=1000, min_fraction=0.25)`` on those sections)."""
    from sklearn.decomposition import PCA

    import scst
    from scst._normalize import log_normalized

    sec = tab.obs["section"].astype(str).to_numpy()
    tr, te = sec != test, sec == test
    sub = tab.copy()
    scst.pp.select_genes(sub, n_top=1000, min_fraction=0.25, sections=sorted(set(sec[tr])))
    genes = list(sub.var_names[sub.var["highly_variable_scst"]])
    y = log_normalized(tab, genes)
    mu, sd = y[tr].mean(0), y[tr].std(0) + 1e-6
    return PCA(n_pcs, random_state=0).fit((y[tr] - mu) / sd).transform((y - mu) / sd), te


def exact_top5(x: np.ndarray, z: np.ndarray, te: np.ndarray) -> float:
    """Linear map from image features ``x`` to the RNA PCs ``z`` fitted on the spots outside ``te``; the fraction of
    ``te``'s spots whose own RNA sample is among the 5 closest (centred cosine) of their prediction."""
    from sklearn.linear_model import RidgeCV

    pred = RidgeCV(alphas=np.logspace(-1, 4, 20)).fit(x[~te], z[~te]).predict(x[te])
    p, t = pred - pred.mean(0), z[te] - z[te].mean(0)  # centred, as tl.retrieve's shipped setting
    p /= np.linalg.norm(p, axis=1, keepdims=True)
    t /= np.linalg.norm(t, axis=1, keepdims=True)
    s = p @ t.T
    rank = (s > np.diag(s)[:, None]).sum(1)
    return float((rank < 5).mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--report-only", action="store_true", help="rewrite the page from the saved results.json")
    args = ap.parse_args()
    if args.report_only:
        raw = json.loads((RAW / "results.json").read_text())
        raw.pop("command")
        return report(raw)
    import torch

    import scst
    from scst.models import RidgeExpression
    from scst.tl import cross_validate

    torch.set_num_threads(1)
    load_before = os.getloadavg()
    sdata = scst.datasets.her2st(sections=SECTIONS)
    tab = sdata.tables["table"]
    scst.tl.embed_patches(sdata, "handcrafted", size_um=list(SCALES_MS), out_px=112, progress=False, key_added="ms")
    keys = {"ms_scaled": "multi-scale hand-crafted, scaled per section (shipped input)"}
    scst.pp.scale_by_section(tab, "ms", key_added="ms_scaled")
    seconds, medians = {}, {}
    for thr in THRESHOLDS:
        w, c = time.perf_counter(), time.process_time()
        nuc = nuclei_block(sdata, tab, thr)
        seconds[thr] = (time.perf_counter() - w, time.process_time() - c)
        medians[thr] = dict(zip([f"{n}_{um:g}um" for um, _ in WINDOWS for n in NAMES], np.median(nuc, 0).tolist()))
        tab.obsm[f"nuc{thr}"] = nuc
        tab.obsm[f"ms_nuc{thr}"] = np.hstack([tab.obsm["ms"], nuc])
        for k in (f"nuc{thr}", f"ms_nuc{thr}"):
            scst.pp.scale_by_section(tab, k, key_added=f"{k}_scaled")
        keys[f"ms_nuc{thr}_scaled"] = f"the same + nucleus features (threshold {thr:g})"
        keys[f"nuc{thr}_scaled"] = f"nucleus features alone (threshold {thr:g}, 22 features)"

    per_section, per_gene, retrieval = {}, [], {}
    targets = {t: rna_pcs(tab, t) for t in SECTIONS}  # per test section, shared by every feature set
    for key in keys:
        for prog in (False, True):
            name = f"{key}{'_prog' if prog else ''}"
            df = cross_validate(RidgeExpression, sdata, config={"n_programs": "auto"} if prog else {},
                                setup_kwargs={"embedding_key": key}, metrics=("pearson",))  # fmt: skip
            per_gene.append(df.assign(features=key, programmes=prog))
            per_section[name] = df.groupby("section")["value"].mean().to_dict()
            print(name, {k: round(v, 4) for k, v in per_section[name].items()}, flush=True)
        retrieval[key] = {t: exact_top5(tab.obsm[key], *targets[t]) for t in SECTIONS}
        print("exact top-5", key, retrieval[key], flush=True)
    RAW.mkdir(parents=True, exist_ok=True)
    pd.concat(per_gene).to_csv(RAW / "per_gene_pcc.csv.gz", index=False)
    raw = {"per_section_pcc": per_section, "exact_top5": retrieval, "labels": keys, "feature_names": NAMES,
           "feature_medians": {str(t): medians[t] for t in THRESHOLDS}, "n_spots": int(tab.n_obs),
           "cpu_seconds": {str(t): seconds[t][1] for t in THRESHOLDS},
           "wall_seconds": {str(t): seconds[t][0] for t in THRESHOLDS},
           "load_before": load_before, "load_after": os.getloadavg(), "cpu": cpu_name()}  # fmt: skip
    report(raw)


def report(raw: dict) -> None:
    """Write the page from the measurements (``raw``, also saved as results.json)."""
    per_section, retrieval, keys, n = raw["per_section_pcc"], raw["exact_top5"], raw["labels"], raw["n_spots"]

    def mean(d):
        return float(np.mean([d[s] for s in SECTIONS]))

    def row(label, values):
        return f"| {label} | " + " | ".join(f"{values[s]:.3f}" for s in SECTIONS) + f" | {mean(values):.3f} |"

    head = "| features | " + " | ".join(SECTIONS) + " | mean |\n|---|" + "---:|" * (len(SECTIONS) + 1)
    base, base_p, base_r = (
        mean(per_section["ms_scaled"]),
        mean(per_section["ms_scaled_prog"]),
        mean(retrieval["ms_scaled"]),
    )
    alone = [mean(per_section[f"nuc{t:g}_scaled"]) for t in THRESHOLDS]
    change = max(
        abs(mean(d[f"ms_nuc{t:g}_scaled{suffix}"]) - mean(d[f"ms_scaled{suffix}"]))
        for t in THRESHOLDS
        for d, suffix in ((per_section, ""), (per_section, "_prog"), (retrieval, ""))
    )
    cost = "; ".join(f"threshold {t:g}: {raw['cpu_seconds'][str(t)] / n * 1000:.1f}" for t in THRESHOLDS)
    diffs = "; ".join(
        f"threshold {t:g}: ridge {mean(per_section[f'ms_nuc{t:g}_scaled']) - base:+.3f}, programmes "
        f"{mean(per_section[f'ms_nuc{t:g}_scaled_prog']) - base_p:+.3f}, exact top-5 "
        f"{mean(retrieval[f'ms_nuc{t:g}_scaled']) - base_r:+.3f}"
        for t in THRESHOLDS
    )
    lines = [
        "# Nucleus morphology as histology features (tried, not shipped)",
        "",
        "Does a segmentation of nuclei add to the hand-crafted colour, stain and texture features? Per spot window, "
        "nuclei are segmented by a threshold on the smoothed haematoxylin channel (`skimage.color.rgb2hed`, Gaussian "
        f"σ = 1 px), a 3 × 3 opening and connected components; objects under {MIN_AREA_UM2:g} µm² are dropped. Eleven "
        "statistics per window (nuclei per 1,000 µm² of tissue, log mean / median / 90th-percentile area, "
        "coefficient of variation of the areas, fraction above 60 µm², nuclear area fraction, median eccentricity, "
        "fraction with eccentricity > 0.85, haematoxylin in the nuclei, median nearest-neighbour spacing) at 80 µm "
        "(112 px) and 160 µm (224 px), both ≈ 0.7 µm/px (a nucleus ≈ 10 px). Two thresholds, both reported, neither "
        f"chosen. Cost, both windows, CPU-s per 1,000 spots: {cost} (the 95 hand-crafted features: 3.4 at 112 px, "
        "[features](features.md)).",
        "",
        "Leave one section out, each fold's panel chosen on its training sections (`tl.cross_validate(genes=None)`), "
        "mean PCC over the panel genes of the held-out section; every feature set is standardised per section "
        "(`pp.scale_by_section`) as the shipped input is.",
        "",
        "**Ridge (per gene)**",
        "",
        head,
        *(row(keys[k], per_section[k]) for k in keys),
        "",
        "**Reduced-rank ridge (expression programmes, the shipped heads' output)**",
        "",
        head,
        *(row(keys[k], per_section[f"{k}_prog"]) for k in keys),
        "",
        "**Exact spot in the top 5** of a linear image → RNA map (ridge onto 10 expression PCs of the training "
        "sections; per-fold panel `select_genes(n_top=1000, min_fraction=0.25)` on the training sections; cosine "
        "among the held-out section's spots after centring; chance 5/n ≈ 0.028, issue 9's bar 0.28):",
        "",
        head,
        *(row(keys[k], retrieval[k]) for k in keys),
        "",
        f"Against the shipped input (mean over the five folds): {diffs}.",
        "",
        f"**Verdict: not shipped.** Alone, the 22 nucleus statistics predict expression about as well as the 95 "
        f"single-scale hand-crafted features (ridge {min(alone):.3f}–{max(alone):.3f}; 80 µm hand-crafted + ridge: "
        "0.152, [expression](expression.md)), so the segmentation measures something real; added to the multi-scale "
        f"features they change the means by at most {change:.3f}, for expression or for exact-spot retrieval: the "
        "colour, stain and texture statistics of three fields of view already carry what these nuclei statistics "
        "carry. For scale: MultimodalST's shipped setting retrieves the exact spot in the top 5 for 0.148 / 0.319 / "
        "0.257 / 0.357 / 0.210 of C2–C6's patches ([multimodal](multimodal.md), rerun 2026-12-04), above this linear "
        "map on every section.",
        "",
        machine_line(tuple(raw["load_before"]), tuple(raw["load_after"]), cpu=raw["cpu"]),
    ]
    write_page(OUT, lines, COMMAND, raw)


if __name__ == "__main__":
    main()
