"""Self-supervised (BYOL) pretraining on her2st: tile counts, CPU cost and the per-fold encoders of the ablation.

For each held-out section S, ``shufflenet_v2_x0_5`` is pretrained on the tissue tiles of the OTHER sections only
(80 µm → 112 px, seed 0, one torch thread) and saved to ``<out>/shufflenet_v2_x0_5_heldout_<S>.safetensors``.
Raw results (settings, tile counts, timings, losses, sha256 of every file) go to ``benchmarks/results/pretrain/``;
each fold is appended as soon as it finishes, so a partial run keeps what it did.

    OMP_NUM_THREADS=1 SCST_DATA_DIR=/work/shared/data python benchmarks/bench_pretrain.py --epochs 6
    OMP_NUM_THREADS=1 SCST_DATA_DIR=/work/shared/data python benchmarks/bench_pretrain.py --probe   # effect
    python benchmarks/bench_pretrain.py --page                                                    # the page

``--probe`` is a cheap linear probe of the effect (not the main ablation, which trains the expression models):
for each fold, every spot is embedded with the fold's SSL trunk and with the *same trunk before pretraining*
(BYOL's seed-0 initialisation), a ridge regression (alpha by generalised CV) is fitted on the four training
sections' spots and the held-out section's expression (log1p normalize_total, 1000-gene panel of
``scst.pp.select_genes``) is scored by the mean per-gene Pearson r.
"""

from __future__ import annotations

import argparse
import copy
import gzip
import hashlib
import json
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from _page import cpu_name  # noqa: E402

SECTIONS = ["C2", "C3", "C4", "C5", "C6"]


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_json(path: Path, obj) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--heldout", nargs="+", default=SECTIONS, help="held-out sections (one fold each)")
    ap.add_argument("--backbone", default="shufflenet_v2_x0_5")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--size-um", type=float, default=80.0)
    ap.add_argument("--patch-px", type=int, default=112)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--accelerator", default="cpu")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "_out" / "ssl")
    ap.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results" / "pretrain")
    ap.add_argument("--tag", default="folds", help="raw results file <tag>.json (--probe: probe_<tag>.json)")
    ap.add_argument("--probe", action="store_true", help="linear-probe the saved fold encoders vs their init")
    ap.add_argument("--page", action="store_true", help="write docs/benchmarks/pretrain.md from the raw results")
    args = ap.parse_args()
    if args.page:
        return write_page(args)
    if args.probe:
        return probe(args)

    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message=".*read_st.*")
    import scst
    from scst.models import SSLEncoder

    args.out.mkdir(parents=True, exist_ok=True)
    args.results.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    sdata = scst.datasets.her2st()
    load_s = time.perf_counter() - t0

    # Tissue tiles of every section (the grid only; cheap).
    t0 = time.perf_counter()
    SSLEncoder.setup_sdata(sdata, sections=SECTIONS, size_um=args.size_um, patch_px=args.patch_px)
    reg = SSLEncoder._read_registry(sdata.tables["table"])
    grid_tiles = {s: len(c) for s, c in reg["centers"].items()}
    grid_s = time.perf_counter() - t0
    spots = sdata.tables["table"].obs["section"].astype(str).value_counts().to_dict()

    record = {
        "command": "OMP_NUM_THREADS=1 python benchmarks/bench_pretrain.py "
        + " ".join(
            f"--{k.replace('_', '-')} {' '.join(v) if isinstance(v, list) else v}"
            for k, v in vars(args).items()
            if k not in ("out", "results", "probe", "page")  # the two mode switches are off in this mode
        ),  # fmt: skip
        "settings": {
            "method": "BYOL (lightly)",
            "backbone": args.backbone,
            "size_um": args.size_um,
            "patch_px": args.patch_px,
            "spacing_um": args.size_um,
            "epochs": args.epochs,
            "batch_size": args.batch_size,
            "lr": args.lr,
            # the training settings the command does not set: SSLEncoder's defaults
            **{k: SSLEncoder._train_defaults[k] for k in ("weight_decay", "optimizer", "lr_scheduler", "patience")},
            "seed": args.seed,
            "torch_threads": args.threads,
            "accelerator": args.accelerator,
            "config": {k: v for k, v in SSLEncoder._default_config.items()},
        },  # fmt: skip
        "machine": {
            "cpu_count": os.cpu_count(),
            "cpu": cpu_name(),
            "loadavg_start": list(os.getloadavg()),
            "torch": torch.__version__,
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        },  # fmt: skip
        "data_load_s": round(load_s, 2),
        "grid_s": round(grid_s, 2),
        "tiles_per_section": grid_tiles,
        "spots_per_section": {k: int(v) for k, v in spots.items()},
        "folds": [],
    }
    raw = args.results / f"{args.tag}.json"
    write_json(raw, record)
    histories = []
    for held in args.heldout:
        train = [s for s in SECTIONS if s != held]
        t0 = time.perf_counter()
        SSLEncoder.setup_sdata(sdata, sections=train, size_um=args.size_um, patch_px=args.patch_px)
        model = SSLEncoder(sdata, backbone=args.backbone, seed=args.seed)
        tiles = model.tiles()
        n_tiles = int(sum(len(v) for v in tiles.values()))
        read_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        model.train(
            max_epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
            accelerator=args.accelerator, enable_progress_bar=False,
        )  # fmt: skip
        train_s = time.perf_counter() - t0
        path = model.save_encoder(args.out / f"{args.backbone}_heldout_{held}.safetensors")
        hist = model.history.reset_index()
        hist.insert(0, "heldout", held)
        histories.append(hist)
        steps = (n_tiles // min(args.batch_size, n_tiles)) * args.epochs
        fold = {
            "heldout": held,
            "train_sections": train,
            "n_tiles": n_tiles,
            "tiles_per_section": {s: int(len(v)) for s, v in tiles.items()},
            "read_tiles_s": round(read_s, 2),
            "train_s": round(train_s, 2),
            "steps": steps,
            "tiles_per_s": round(steps * args.batch_size / train_s, 2),
            "loss_first_epoch": float(hist["train_loss"].iloc[0]),
            "loss_last_epoch": float(hist["train_loss"].iloc[-1]),
            "pred_std_last_epoch": float(hist["train_pred_std"].iloc[-1]),
            "file": str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path),
            "sha256": sha256(path),
            "loadavg_end": list(os.getloadavg()),
        }
        record["folds"].append(fold)
        write_json(raw, record)
        import pandas as pd

        with gzip.open(args.results / f"{args.tag}_history.csv.gz", "wt") as f:
            pd.concat(histories).to_csv(f, index=False)
        print(json.dumps(fold), flush=True)
    print(f"done: {raw}", flush=True)


def probe(args) -> None:
    """Ridge from spot embeddings (SSL trunk vs the same trunk at init) to held-out expression, per fold."""
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message=".*read_st.*")
    warnings.filterwarnings("ignore", message=".*random initialisation.*")
    from sklearn.linear_model import RidgeCV
    from sklearn.preprocessing import StandardScaler

    import scst
    from scst._normalize import log_normalized
    from scst.models._pretrain import BYOLModule

    sdata = scst.datasets.her2st()
    adata = sdata.tables["table"]
    sec = adata.obs["section"].astype(str).to_numpy()
    with torch.random.fork_rng(devices=[]):  # BYOL's initial trunk (SSLEncoder seed 0): the random-init arm
        torch.manual_seed(args.seed)
        init = BYOLModule(backbone=args.backbone).backbone
    rows, t0 = [], time.perf_counter()
    for held in args.heldout:
        path = args.out / f"{args.backbone}_heldout_{held}.safetensors"
        if not path.is_file():
            print(f"skip {held}: {path} missing", flush=True)
            continue
        from safetensors.torch import load_file

        ssl = copy.deepcopy(init)
        ssl.load_state_dict(load_file(str(path)), strict=True)
        tr, te = sec != held, sec == held
        # the panel of this fold, chosen on its training sections only (the held-out section never picks genes)
        scst.pp.select_genes(adata, n_top=1000, min_fraction=0.5, sections=sorted(set(sec[tr])))
        genes = adata.var_names[adata.var["highly_variable_scst"].to_numpy()]
        y_all = log_normalized(adata, list(genes))
        row = {"heldout": held, "sha256": sha256(path), "n_genes": int(len(genes))}
        for arm, trunk in (("random_init", init), ("ssl", ssl)):
            key = f"X_probe_{arm}"
            scst.tl.embed_patches(sdata, trunk, size_um=args.size_um, out_px=args.patch_px, key_added=key,
                                  progress=False)  # fmt: skip
            X = adata.obsm[key]
            scaler = StandardScaler().fit(X[tr])
            ridge = RidgeCV(alphas=10.0 ** np.arange(-1, 6.5, 0.5)).fit(scaler.transform(X[tr]), y_all[tr])
            pred = ridge.predict(scaler.transform(X[te]))
            yt = y_all[te]
            ok = (yt.std(0) > 0) & (pred.std(0) > 0)
            pc, tc = pred[:, ok] - pred[:, ok].mean(0), yt[:, ok] - yt[:, ok].mean(0)
            r = (pc * tc).sum(0) / np.sqrt((pc**2).sum(0) * (tc**2).sum(0))
            row[f"{arm}_mean_pcc"] = float(np.mean(r))
            row[f"{arm}_alpha"] = float(ridge.alpha_)
            row[f"{arm}_feature_std"] = float(X.std(0).mean())
        rows.append(row)
        print(json.dumps(row), flush=True)
    out = {
        "command": "OMP_NUM_THREADS=1 python benchmarks/bench_pretrain.py --probe"
        + (f" --out {args.out} --heldout {' '.join(args.heldout)} --tag {args.tag}" if args.tag != "folds" else ""),
        "probe": "StandardScaler + RidgeCV(alphas=10**arange(-1, 6.5, 0.5), GCV, one alpha for all genes) on "
        "embed_patches features (ImageNet normalisation, global average pool), per-fold gene panel of "
        "select_genes(n_top=1000, min_fraction=0.5, sections=the fold's training sections), target "
        "log1p(normalize_total 1e4)",
        "elapsed_s": round(time.perf_counter() - t0, 1),
        "folds": rows,
    }
    write_json(args.results / ("probe.json" if args.tag == "folds" else f"probe_{args.tag}.json"), out)


def _gpu_section(args, cpu_folds: list, base: dict) -> list[str]:
    """The device sessions (``gpu.json``: speed + per-fold encoders, probed in ``probe_gpu.json``; ``gpu_long*.json``:
    longer runs) next to the CPU runs' probes (``base``: main run; ``probe_long<E>.json``)."""
    path = args.results / "gpu.json"
    if not path.is_file():
        return ["", "## GPU", "", "Not measured yet: `benchmarks/gpu_pretrain.sh` (commands below)."] + GPU_COMMANDS
    g = json.loads(path.read_text())
    folds = g["folds"]
    env, t = folds[0]["env"], g["tiles"]
    n_tiles = sum(v["n_tiles"] for v in t["sections"].values())
    cpu_tps = np.mean([f["tiles_per_s"] for f in cpu_folds])
    probe_path = args.results / "probe_gpu.json"
    pr = {f["heldout"]: f for f in json.loads(probe_path.read_text())["folds"]} if probe_path.is_file() else {}
    long_pr = {}
    for lp in sorted(args.results.glob("probe_long*.json")):
        epochs = int(lp.stem.removeprefix("probe_long"))
        long_pr[epochs] = {f["heldout"]: f for f in json.loads(lp.read_text())["folds"]}
    L = [
        "",
        "## GPU",
        "",
        f"One device session on an {env['device']} (torch {env['torch']}, torchvision {env['torchvision']}, Python "
        f"{env['python']}; fp32 with TF32 convolutions allowed, torch's default). `benchmarks/gpu_pretrain.py` "
        "trains the same BYOL network (`scst.nn.BYOLModule`) through the product's step (`scst.nn.train_step`) "
        "without the scverse stack; `tests/test_gpu_pretrain.py` checks that its loop reproduces "
        "`SSLEncoder.train` (Lightning) exactly and that its tiles, rebuilt from the section JPEGs (the tiles "
        "themselves are too large to carry), are the product's bit for bit. On the device all "
        f"{n_tiles:,} tiles were rebuilt in {t['rebuild_s']} s and "
        + ("every section's tiles matched the exported sha256." if t["all_equal"] else "**not all matched**.")
        + f" (The export was made with the tile filter of its day: {n_tiles:,} tiles against the CPU runs' "
        f"{sum(json.loads((args.results / 'folds.json').read_text())['tiles_per_section'].values()):,}.)",
        "",
        "### Cost of one training step",
        "",
        f"`speed`: {g['speed']['rows'][0]['steps']} steps after {g['speed']['warmup']} warm-up steps on the C2–C5 "
        "tiles, one process alone on the GPU.",
        "",
        "| batch | precision | s/step | tiles/s | peak GPU memory (MiB) |",
        "|---|---|---|---|---|",
        *[
            f"| {r['batch_size']} | {r['precision']} | {r['s_per_step']:.3f} | {r['tiles_per_s']:.0f} | "
            f"{r['peak_mib']:.0f} |"
            for r in g["speed"]["rows"]
        ],
        "",
    ]
    rows = g["speed"]["rows"]
    best = max(rows, key=lambda r: r["tiles_per_s"])
    s64 = [r for r in rows if r["batch_size"] == 64 and r["precision"] == "fp32"]
    L += [
        f"The step time hardly grows with the batch (a small network launched as many small kernels), so the "
        f"throughput grows with it: {best['tiles_per_s']:.0f} tiles/s at batch {best['batch_size']} "
        f"{best['precision']} against "
        + (f"{s64[0]['tiles_per_s']:.0f} at the shipped batch 64 fp32 and " if s64 else "")
        + f"{cpu_tps:.0f} on one CPU thread (the main run's mean). bf16 against fp32: "
        + "; ".join(
            f"batch {bs} {r16['tiles_per_s'] / r32['tiles_per_s']:.2f}× the tiles/s, "
            f"{r16['peak_mib'] / r32['peak_mib']:.2f}× the memory"
            for bs in sorted({r["batch_size"] for r in rows})
            for r32 in [r for r in rows if r["batch_size"] == bs and r["precision"] == "fp32"]
            for r16 in [r for r in rows if r["batch_size"] == bs and r["precision"] == "bf16"]
        )
        + ".",
        "",
        f"### Longer per-fold encoders ({folds[0]['budget_s']:g} s budget each)",
        "",
        "The five folds ran at once on the one GPU, with the shipped settings (batch 64, fp32, same seed, "
        "schedules and augmentations as the CPU runs); the number of epochs was set after the first epoch to what "
        "fits the budget (at most 100); tiles/s is per process, five sharing the GPU. The kept trunk is the epoch "
        "with the lowest mean training loss (counted from 1), as `SSLEncoder` keeps. Converted to the "
        "safetensors files `SSLEncoder.save_encoder` writes and probed as above (`probe_gpu.json`).",
        "",
        "| held out | epochs | kept epoch | train (s) | tiles/s | loss epoch 1 → last | pred std | probe: random "
        "init | SSL, CPU 6 epochs | "
        + "".join(f"SSL, CPU {e} epochs | " for e in sorted(long_pr))
        + "SSL, GPU | Δ GPU vs random init |",
        "|---|---|---|---|---|---|---|---|---|" + "---|" * len(long_pr) + "---|---|",
    ]
    for f in folds:
        h = f["heldout"]
        q, b = pr.get(h), base.get(h)
        L.append(
            f"| {h} | {f['epochs']} | {f['best_epoch'] + 1} | {f['train_s']} | {f['tiles_per_s']} | "
            f"{f['loss_first_epoch']:.3f} → {f['loss_last_epoch']:.3f} | {f['pred_std_last_epoch']:.3f} | "
            + _probe_cells(
                q, b, [f"{long_pr[e][h]['ssl_mean_pcc']:.3f}" if h in long_pr[e] else "–" for e in sorted(long_pr)]
            )  # fmt: skip
        )
    both = [f["heldout"] for f in folds if f["heldout"] in pr and f["heldout"] in base]
    if len(both) > 1:
        a = np.mean([pr[h]["random_init_mean_pcc"] for h in both])
        mg = np.mean([pr[h]["ssl_mean_pcc"] for h in both])
        m6 = np.mean([base[h]["ssl_mean_pcc"] for h in both])
        ml = "".join(
            f"{np.mean([long_pr[e][h]['ssl_mean_pcc'] for h in both]):.3f} | " if all(h in long_pr[e] for h in both)
            else "– | "
            for e in sorted(long_pr)
        )  # fmt: skip
        L.append(f"| mean ({len(both)}) | | | | | | | {a:.3f} | {m6:.3f} | {ml}{mg:.3f} | {mg - a:+.3f} |")
        d = [pr[h]["ssl_mean_pcc"] - pr[h]["random_init_mean_pcc"] for h in both]
        eps = [f["epochs"] for f in folds]
        below = [h for h in both if pr[h]["ssl_mean_pcc"] < pr[h]["random_init_mean_pcc"]]
        L += [
            "",
            f"{min(eps)}–{max(eps)} epochs instead of 6 lower the BYOL loss further without collapse (pred std "
            f"{min(f['pred_std_last_epoch'] for f in folds):.3f}–{max(f['pred_std_last_epoch'] for f in folds):.3f}), "
            f"and the probe on the GPU encoders gives {mg:.3f} against {a:.3f} for their random starting point "
            f"({mg - a:+.3f}; per fold {min(d):+.3f} to {max(d):+.3f}; below the random start: "
            f"{', '.join(below) or 'none'}), against {m6:.3f} after 6 CPU epochs"
            + "".join(
                f" and {np.mean([long_pr[e][h]['ssl_mean_pcc'] for h in both]):.3f} after {e}"
                for e in sorted(long_pr)
                if all(h in long_pr[e] for h in both)
            )
            + ". Longer BYOL on these five sections' ~4,500 training tiles per fold does not turn "
            "into features a linear probe reads better than the untrained trunk's standardised features; "
            "`SSLEncoder` stays an option, not a default (expression page).",
        ]
    lp = sorted(args.results.glob("gpu_long*.json"))
    for path in lp:
        r = json.loads(path.read_text())
        lf = r["folds"]
        n_w = sum(f.get("sha256_pt") is not None for f in lf)
        budget = f"{lf[0]['budget_s']:g}"  # each fold records the budget it ran under
        L += [
            "",
            f"A second device run (`{path.name}`, {budget} s per fold) trained {min(f['epochs'] for f in lf)}–"
            f"{max(f['epochs'] for f in lf)} epochs per fold: last-epoch loss "
            f"{min(f['loss_last_epoch'] for f in lf):.3f} to {max(f['loss_last_epoch'] for f in lf):.3f}, pred std "
            f"{min(f['pred_std_last_epoch'] for f in lf):.3f}–{max(f['pred_std_last_epoch'] for f in lf):.3f}. "
            + (
                "Its trunks did not come back from the device (the run wrote them as separate files, and the "
                "device returns only a limited number of files per command; `gpu_pretrain.sh` tars its output for "
                "that reason, this hand-typed command did not), so it is not probed; its record shows how far the "
                f"loss goes on falling (first run: {min(f['loss_last_epoch'] for f in folds):.3f} to "
                f"{max(f['loss_last_epoch'] for f in folds):.3f})."
                if n_w == 0
                else f"{n_w} trunks came back."
            ),
        ]
    L += ["", "Commands:"] + GPU_COMMANDS
    return L


GPU_COMMANDS = [
    "",
    "```bash",
    "SCST_DATA_DIR=/work/shared/data python benchmarks/gpu_pretrain.py export   # here: 18.6 MiB to carry",
    "mkdir -p benchmarks/_out/pylib && cp -r "
    "$(python -c 'import lightly, os; print(os.path.dirname(lightly.__file__))') benchmarks/_out/pylib/",
    "# on the device, carrying benchmarks/_out/gpu_cache/ssl and benchmarks/_out/pylib:",
    "TAR=$OUT/gpu_pretrain.tgz OUT=/tmp/gpu_pretrain BUDGET=270 bash benchmarks/gpu_pretrain.sh",
    "# here, with the tarball unpacked into benchmarks/_out/gpu_pretrain:",
    "python benchmarks/gpu_pretrain.py record --device-out benchmarks/_out/gpu_pretrain --tag gpu --command '…'",
    "python benchmarks/gpu_pretrain.py convert --results benchmarks/_out/gpu_pretrain/loso "
    "--out benchmarks/_out/ssl_gpu",
    "OMP_NUM_THREADS=1 SCST_DATA_DIR=/work/shared/data python benchmarks/bench_pretrain.py --probe "
    "--out benchmarks/_out/ssl_gpu --tag gpu",
    "```",
]


def _genes_per_fold(rows: list) -> str:
    """``"546 genes"`` (one panel for all folds, as in the probes before 2026-12-04) or ``"401–430 genes per fold"``."""
    n = sorted({r["n_genes"] for r in rows}) or [0]
    return f"{n[0]} genes" if len(n) == 1 else f"{n[0]}–{n[-1]} genes per fold"


def _probe_cells(q: dict | None, b: dict | None, between: list[str] = ()) -> str:
    """A fold row's probe cells: random init (``q``, this run's probe), SSL of the main run (``b``), ``between``,
    this run's SSL and its Δ vs random init; "–" where a probe is missing."""
    cells = [f"{q['random_init_mean_pcc']:.3f}" if q else "–", f"{b['ssl_mean_pcc']:.3f}" if b else "–", *between]
    cells += [f"{q['ssl_mean_pcc']:.3f}", f"{q['ssl_mean_pcc'] - q['random_init_mean_pcc']:+.3f}"] if q else ["–", "–"]
    return " | ".join(cells) + " |"


def _long_section(args, main_epochs: int, base: dict) -> list[str]:
    """The longer CPU runs (``long<E>_*.json``, merged per epoch count) and their probe, next to the main run's
    probe ``base`` (held-out section → its row of ``probe.json``)."""
    runs: dict[int, list] = {}
    for path in sorted(args.results.glob("long*_*.json")):
        r = json.loads(path.read_text())
        runs.setdefault(int(r["settings"]["epochs"]), []).append((path.name, r))
    L = []
    for epochs, recs in sorted(runs.items()):
        pr_path = args.results / f"probe_long{epochs}.json"
        pr = {f["heldout"]: f for f in json.loads(pr_path.read_text())["folds"]} if pr_path.is_file() else {}
        folds = sorted((f for _, r in recs for f in r["folds"]), key=lambda f: f["heldout"])
        L += [
            "",
            f"## Longer pretraining on the CPU: {epochs} epochs",
            "",
            f"The same command with `--epochs {epochs}` instead of {main_epochs} (raw: "
            + ", ".join(f"`{n}`" for n, _ in recs)
            + f"; two folds at a time on the 2 cores), probed as above (`probe_long{epochs}.json`; the random-init "
            "arm is the same trunk as in the main run's probe).",
            "",
            "| held out | train (s) | tiles/s | loss epoch 1 → last | pred std | probe: random init | SSL, "
            f"{main_epochs} epochs | SSL, {epochs} epochs | Δ vs random init |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for f in folds:
            h = f["heldout"]
            q, b = pr.get(h), base.get(h)
            L.append(
                f"| {h} | {f['train_s']} | {f['tiles_per_s']} | {f['loss_first_epoch']:.3f} → "
                f"{f['loss_last_epoch']:.3f} | {f['pred_std_last_epoch']:.3f} | " + _probe_cells(q, b)
            )
        both = [h for h in pr if h in base]
        if len(both) > 1:
            a = np.mean([pr[h]["random_init_mean_pcc"] for h in both])
            m6 = np.mean([base[h]["ssl_mean_pcc"] for h in both])
            mL = np.mean([pr[h]["ssl_mean_pcc"] for h in both])
            L.append(f"| mean ({len(both)}) | | | | | {a:.3f} | {m6:.3f} | {mL:.3f} | {mL - a:+.3f} |")
            d = [pr[h]["ssl_mean_pcc"] - base[h]["ssl_mean_pcc"] for h in both]
            losses = [f["loss_last_epoch"] for f in folds]
            stds = [f["pred_std_last_epoch"] for f in folds]
            flat = abs(np.mean(d)) < 0.01
            L += [
                "",
                f"{epochs / main_epochs:.0f} × the training lowers the BYOL loss further (last epoch "
                f"{min(losses):.3f} to {max(losses):.3f}; pred std {min(stds):.3f}–{max(stds):.3f}, no collapse), "
                + ("but the probe does not follow" if flat else "and the probe changes")
                + f": SSL features after {epochs} epochs against {main_epochs}, per fold {min(d):+.3f} to "
                f"{max(d):+.3f} (mean {np.mean(d):+.3f}); against their random starting point {mL - a:+.3f} on "
                f"average ({main_epochs} epochs: {m6 - a:+.3f})."
                + (
                    " The weak effect of the main run is not a matter of its short CPU budget, up to this length."
                    if flat
                    else ""
                ),
            ]
        L += ["", "Commands:", "", "```bash"]
        L += [f"SCST_DATA_DIR=/work/shared/data {r['command']} --out benchmarks/_out/ssl_long" for _, r in recs]
        if pr_path.is_file():
            L.append(f"SCST_DATA_DIR=/work/shared/data {json.loads(pr_path.read_text())['command']}")
        L += ["```"]
    return L


def write_page(args) -> None:
    """docs/benchmarks/pretrain.md from folds.json (+ probe.json, pilot_2epochs.json when present)."""
    folds = json.loads((args.results / "folds.json").read_text())
    st, fl = folds["settings"], folds["folds"]
    # Records written before the weight decay was stored ran with SSLEncoder's default of the time.
    wd = f"{st['weight_decay']:g}" if "weight_decay" in st else "1e-4 (SSLEncoder's default; not in this record)"
    L = [
        "# Self-supervised pretraining on the user's own slides (BYOL)",
        "",
        "`scst.tl.pretrain_encoder` / `scst.models.SSLEncoder`: BYOL (lightly's heads, loss and momentum update) on "
        "**all tissue tiles** of the training sections (`scst.pp.tile_grid`, then `scst.pp.filter_tiles`), not "
        "only the ST spots, with H&E augmentations (`scst.nn.HEAugment`: scale crop, flips/90° rotations, HED "
        "stain jitter, blur). Why BYOL: no negatives (small CPU batches), a momentum target against collapse.",
        "",
        f"Machine: {folds['machine']['cpu_count']} CPU cores shared with other jobs (1-min load average "
        f"{folds['machine']['loadavg_start'][0]:.1f} at the start, "
        f"{min(f['loadavg_end'][0] for f in fl):.1f}–{max(f['loadavg_end'][0] for f in fl):.1f} at the ends of the "
        f"folds: timings vary with the other jobs), torch {folds['machine']['torch']}, "
        f"**{st['torch_threads']} torch thread**. GPU: last section.",
        "",
        "## Settings",
        "",
        f"`{st['backbone']}` from random initialisation, {st['size_um']:g} µm tiles on a {st['spacing_um']:g} µm "
        f"grid resized to {st['patch_px']} px, batch {st['batch_size']}, {st['epochs']} epochs, AdamW lr "
        f"{st['lr']:g} (cosine), weight decay {wd}, seed {st['seed']}; heads "
        f"{st['config']['proj_hidden_dim']}/{st['config']['proj_dim']}/{st['config']['pred_hidden_dim']}; "
        f"momentum {st['config']['momentum_start']} → {st['config']['momentum_end']} (cosine); HED jitter "
        f"sigma {st['config']['hed_sigma']}, bias {st['config']['hed_bias']}; crop scale "
        f"{st['config']['crop_scale']}; blur sigma {st['config']['blur_sigma']} px with p {st['config']['p_blur']}.",
        "",
        "## Tissue tiles per section (her2st)",
        "",
        "| section | tissue tiles (80 µm) | ST spots |",
        "|---|---|---|",
        *[f"| {s} | {n} | {folds['spots_per_section'].get(s, '')} |" for s, n in folds["tiles_per_section"].items()],
        "",
        f"Tile grid of all five sections: {folds['grid_s']} s. "
        f"{sum(folds['tiles_per_section'].values()) / sum(folds['spots_per_section'].values()):.1f}× as many "
        "training images as the spots alone.",
        "",
        "## Cost and per-fold encoders (CPU, one thread)",
        "",
        "Each fold pretrains on the four other sections (never the held-out one). tiles/s = training tiles per "
        "second (each tile gives two views: two forward+backward passes of the online network, two forward "
        "passes of the target).",
        "",
        "| held out | tiles | read tiles (s) | train (s) | steps | tiles/s | loss epoch 1 → last | pred std | sha256 |",
        "|---|---|---|---|---|---|---|---|---|",
        *[
            f"| {f['heldout']} | {f['n_tiles']} | {f['read_tiles_s']} | {f['train_s']} | {f['steps']} | "
            f"{f['tiles_per_s']} | {f['loss_first_epoch']:.3f} → {f['loss_last_epoch']:.3f} | "
            f"{f['pred_std_last_epoch']:.3f} | `{f['sha256'][:16]}…` |"
            for f in fl
        ],
        "",
        "Loss: symmetric negative cosine similarity of online predictions and target projections (−1 = views "
        "agree perfectly). pred std: mean per-dimension std of the L2-normalised predictions over a batch "
        f"(0 = collapse to a constant; 1/√{st['config']['proj_dim']} = "
        f"{1 / np.sqrt(st['config']['proj_dim']):.3f} for spread-out outputs).",
        "",
        "Files (not committed): `benchmarks/_out/ssl/shufflenet_v2_x0_5_heldout_<S>.safetensors`; full sha256 in "
        "`benchmarks/results/pretrain/folds.json`, per-epoch history in `folds_history.csv.gz`.",
    ]
    pilot = args.results / "pilot_2epochs.json"
    if pilot.is_file():
        p = json.loads(pilot.read_text())
        tps = [f["tiles_per_s"] for f in p["folds"]]
        L += [
            "",
            f"A 2-epoch pilot of the same five folds (`pilot_2epochs.json`, 1-min load average "
            f"{p['machine']['loadavg_start'][0]:.1f} at its start) trained at {min(tps)}–{max(tps)} tiles/s; "
            "the epoch count above was chosen from it for about 5 minutes per fold.",
        ]
    first = {f["heldout"]: f for f in fl}
    for rerun in sorted(args.results.glob("rerun_*.json")):  # the same command again, on another machine
        r = json.loads(rerun.read_text())
        for f in r["folds"]:
            o = first[f["heldout"]]
            same = f["sha256"] == o["sha256"]
            L += [
                "",
                f"Rerun of the {f['heldout']} fold (`{rerun.name}`: the same command, torch {r['machine']['torch']}, "
                f"on a later session's machine): loss {f['loss_first_epoch']:.3f} → {f['loss_last_epoch']:.3f} against "
                f"{o['loss_first_epoch']:.3f} → {o['loss_last_epoch']:.3f}, pred std {f['pred_std_last_epoch']:.3f} "
                f"against {o['pred_std_last_epoch']:.3f}; "
                + (
                    "the file is bit-identical (same sha256)."
                    if same
                    else f"the file differs (sha256 `{f['sha256'][:16]}…`): CPU training with the same seed is not "
                    "bit-reproducible across machines, only to within the loss differences shown."
                ),
            ]
    probe_path, probe_rows = args.results / "probe.json", []
    if probe_path.is_file():
        pr = json.loads(probe_path.read_text())
        rows = probe_rows = pr["folds"]
        L += [
            "",
            "## Effect: linear probe, random init vs SSL init (same trunk, same seed)",
            "",
            f"{pr['probe']}; {_genes_per_fold(rows)} pass the panel filters. Fit on the four "
            "training sections' spots, scored on the held-out section: mean per-gene Pearson r. Random init = the "
            "very weights BYOL started from.",
            *(
                [
                    "",
                    "Until 2026-12-04 the probe chose one 546-gene panel on all five sections, the held-out one "
                    "included (found in a code review; both arms shared it, so the comparison was fair, but the test "
                    "section helped pick its genes). It now picks each fold's panel on its training sections, and "
                    "reads the encoders on disk: the reruns of every fold above (sha256 per fold in `probe.json`; "
                    "the first run's C2–C5 files were not kept). The first probe gave random init 0.085, SSL 0.085 "
                    "on average; the per-fold SSL values move by up to ±0.03 between the first run's encoders and "
                    "the reruns (same command), as large as the per-fold Δ below.",
                ]
                if len({r["n_genes"] for r in rows}) > 1
                else []
            ),
            "",
            "| held out | random init | SSL init | Δ |",
            "|---|---|---|---|",
            *[
                f"| {r['heldout']} | {r['random_init_mean_pcc']:.3f} | {r['ssl_mean_pcc']:.3f} | "
                f"{r['ssl_mean_pcc'] - r['random_init_mean_pcc']:+.3f} |"
                for r in rows
            ],
        ]
        if rows:
            a = np.mean([r["random_init_mean_pcc"] for r in rows])
            b = np.mean([r["ssl_mean_pcc"] for r in rows])
            d = [r["ssl_mean_pcc"] - r["random_init_mean_pcc"] for r in rows]
            fs_r = np.mean([r["random_init_feature_std"] for r in rows])
            fs_s = np.mean([r["ssl_feature_std"] for r in rows])
            L += [
                f"| mean | {a:.3f} | {b:.3f} | {b - a:+.3f} |",
                "",
                f"Probe run time: {pr['elapsed_s']} s. Mean feature std across spots: random init {fs_r:.1e} (the "
                f"untrained trunk's pooled features are nearly constant; standardisation still recovers signal), "
                f"SSL {fs_s:.2f}. At this budget ({st['epochs']} epochs, ~{np.mean([f['n_tiles'] for f in fl]):.0f} "
                "tiles, one CPU thread) a ridge probe on the SSL features predicts held-out expression with a mean Δ "
                f"of {b - a:+.3f} over the features of its random starting point (per-fold Δ from {min(d):+.3f} to "
                f"{max(d):+.3f}). Whether SSL "
                "helps as an *initialisation* of end-to-end training is the main ablation's question (same model "
                "and settings, `backbone_weights` = these files vs None).",
            ]
    base = {r["heldout"]: r for r in probe_rows}
    L += _long_section(args, st["epochs"], base) + _gpu_section(args, fl, base)
    L += [
        "",
        "Reproduce:",
        "",
        "```bash",
        f"SCST_DATA_DIR=/work/shared/data {folds['command']}",
        "OMP_NUM_THREADS=1 SCST_DATA_DIR=/work/shared/data python benchmarks/bench_pretrain.py --probe",
        "python benchmarks/bench_pretrain.py --page",
        "```",
        "",
    ]
    out = ROOT / "docs" / "benchmarks" / "pretrain.md"
    tmp = out.with_suffix(".md.tmp")
    tmp.write_text("\n".join(L))
    os.replace(tmp, out)
    print("\n".join(L))


if __name__ == "__main__":
    main()
