"""Paper-default HGGEP and TCGN, leave one section out, on a GPU machine without the scverse stack.

The GPU machines have torch, torchvision and PyG but no anndata/scanpy/spatialdata, so this script works in three
steps and its ``run`` step needs only numpy, torch and ``scst.nn``:

1. ``export`` (here, full scst install): her2st C2–C6 → ``benchmarks/_out/gpu_cache/her2st_112px.npz`` with the
   546-gene panel of ``bench_expression.py``, 112 px patches of 80 µm (uint8), panel counts, library sizes (all
   genes), array and µm coordinates (28 MiB).
2. ``run`` (GPU machine, repository checkout with the cache carried)::

       PYTHONPATH=src python benchmarks/gpu_expression.py run --model hggep --precision bf16 --results $OUT

   one JSON per (model, precision, test section); ``--folds`` picks test sections so that a run fits a time limit.
3. ``report`` (anywhere): JSON results → ``docs/benchmarks/expression_gpu.md``.

Training follows the scst models: one validation section drawn from the training sections (never the test
section) for early stopping on the validation MSE, output bias at the training means, random flips/90° rotations,
AdamW. HGGEP: one whole section per step, paper network (``HGGEP_BENCH["paper"]``, with scst's default LayerNorm
on the LSTM inputs and random output weights), lr 1e-5, 400 epochs, patience 50. TCGN: the ``TCGNModule``
defaults (the authors' CMT-Ti widths, 224 px: the 112 px patches are resized bilinearly), batch 32, lr 1e-4,
100 epochs, patience 10. No pretrained weights (none can be downloaded).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / "benchmarks" / "_out" / "gpu_cache" / "her2st_112px.npz"
OUT = ROOT / "docs" / "benchmarks" / "expression_gpu.md"
SECTIONS = ("C2", "C3", "C4", "C5", "C6")
TRAIN = {
    "hggep": {"lr": 1e-5, "max_epochs": 400, "patience": 50, "weight_decay": 1e-4, "batch_size": 1024},
    "tcgn": {"lr": 1e-4, "max_epochs": 100, "patience": 10, "weight_decay": 1e-4, "batch_size": 32},
}


# ------------------------------------------------------------------------------------------------------------------
# export (needs the full scst install)
# ------------------------------------------------------------------------------------------------------------------
def export(path: Path) -> None:
    if "SCST_DATA_DIR" not in os.environ and (ROOT.parent / "shared" / "data").is_dir():
        os.environ["SCST_DATA_DIR"] = str(ROOT.parent / "shared" / "data")
    import scst

    sdata = scst.datasets.her2st(sections=list(SECTIONS))
    tab = sdata.tables["table"]
    scst.pp.select_genes(tab, n_top=1000, min_fraction=0.5)  # the panel of bench_expression.py
    panel = list(tab.var_names[tab.var["highly_variable_scst"].to_numpy()])
    arrays = scst.pp.extract_patches(sdata, genes=panel, size_um=80.0, out_px=112)
    rows = arrays["index"]
    lib = np.asarray(tab.X[rows].sum(axis=1), dtype=np.float64).ravel()  # normalize_total uses all genes
    upp = np.array([arrays["um_per_px"][i] for i in arrays["sections"]], dtype=np.float64)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez_compressed(
        tmp, patches=arrays["patches"], counts=arrays["counts"].astype(np.float32), library_size=lib,
        sections=np.asarray(arrays["section_names"])[arrays["sections"]], array_coords=arrays["array_coords"],
        positions_um=arrays["pixel_coords"] * upp[:, None], var_names=np.asarray(panel, dtype=str),
    )  # fmt: skip
    tmp.replace(path)
    print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB): {len(rows)} spots × {len(panel)} genes")


# ------------------------------------------------------------------------------------------------------------------
# run (numpy + torch + scst.nn only)
# ------------------------------------------------------------------------------------------------------------------
def _sections(cache: Path) -> tuple[dict, list[str]]:
    z = np.load(cache, allow_pickle=False)
    counts, lib = z["counts"], z["library_size"]
    with np.errstate(divide="ignore", invalid="ignore"):
        scale = np.where(lib > 0, 1e4 / lib, 0.0)
    target = np.log1p(counts * scale[:, None]).astype(np.float32)
    out = {}
    for s in SECTIONS:
        idx = np.flatnonzero((z["sections"] == s) & (lib > 0))
        coords = z["array_coords"][idx]
        out[s] = {
            "patches": z["patches"][idx], "target": target[idx], "counts": counts[idx], "lib": lib[idx],
            "coords": coords - coords.min(0), "positions": z["positions_um"][idx].astype(np.float32),
        }  # fmt: skip
    return out, [str(g) for g in z["var_names"]]


def _to_input(patches, device, augment: bool, img_size: int | None = None):
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(patches).to(device).float().div_(255.0)
    if augment:  # one random flip/rot90 of the dihedral group per batch
        k = int(torch.randint(0, 8, ()).item())
        x = torch.rot90(torch.flip(x, dims=(3,)) if k >= 4 else x, k % 4, dims=(2, 3))
    mean = torch.tensor((0.485, 0.456, 0.406), device=device).view(1, 3, 1, 1)
    std = torch.tensor((0.229, 0.224, 0.225), device=device).view(1, 3, 1, 1)
    x = (x - mean) / std
    if img_size is not None and img_size != x.shape[-1]:
        x = F.interpolate(x, size=(img_size, img_size), mode="bilinear", align_corners=False)
    return x


def _batches(model_name: str, sec: dict, batch_size: int, shuffle: bool, rng: np.random.Generator):
    n = len(sec["target"])
    if model_name == "hggep":  # whole section (her2st sections have < 1024 spots)
        yield np.arange(n)
        return
    order = rng.permutation(n) if shuffle else np.arange(n)
    for i in range(0, n, batch_size):
        b = order[i : i + batch_size]
        if len(b) > 1 or not shuffle:  # BatchNorm needs > 1 sample in training
            yield b


def _step_batch(model_name: str, sec: dict, idx: np.ndarray, device, augment: bool, img_size, med_lib: float):
    import torch

    batch = {"patches": _to_input(sec["patches"][idx], device, augment, img_size),
             "target": torch.from_numpy(sec["target"][idx]).to(device)}  # fmt: skip
    if model_name == "hggep":
        batch.update(
            coords=torch.from_numpy(sec["coords"][idx]).to(device),
            positions=torch.from_numpy(sec["positions"][idx]).to(device),
            counts=torch.from_numpy(sec["counts"][idx]).to(device),
            size_factors=torch.from_numpy((sec["lib"][idx] / med_lib).astype(np.float32)).to(device),
        )
    return batch


def _pearson_per_gene(pred: np.ndarray, y: np.ndarray) -> np.ndarray:
    pc, yc = pred - pred.mean(0), y - y.mean(0)
    den = np.sqrt((pc**2).sum(0) * (yc**2).sum(0))
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, (pc * yc).sum(0) / den, np.nan)


def run_fold(model_name: str, test: str, data: dict, n_genes: int, args) -> dict:
    import torch

    from scst.nn import HGGEP_BENCH, TCGNModule
    from scst.nn._hggep import HGGEPModule

    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    pool = [s for s in SECTIONS if s != test]
    val = pool[int(np.random.default_rng(args.seed).integers(len(pool)))]
    train = [s for s in pool if s != val]
    hp = {**TRAIN[model_name], **({"max_epochs": args.epochs} if args.epochs else {})}
    if model_name == "hggep":
        cfg = dict(HGGEP_BENCH[args.config]["config"])
        net, img_size = HGGEPModule(n_genes, **cfg), None
        head = net.gene_head[-1]
    else:
        from scst.nn import TCGN_BENCH

        cfg = dict(TCGN_BENCH) if args.config == "cpu_small" else {}
        net = TCGNModule(n_genes, **cfg)
        img_size, head = net.img_size, net.head[-1]
    net = net.to(device)
    med_lib = float(np.median(np.concatenate([data[s]["lib"] for s in train])))
    with torch.no_grad():  # start at the training means, as scst's models do
        head.bias.copy_(torch.from_numpy(np.concatenate([data[s]["target"] for s in train]).mean(0)))
    opt = torch.optim.AdamW(net.parameters(), lr=hp["lr"], weight_decay=hp["weight_decay"])
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.precision == "bf16")

    def _sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    def val_mse() -> float:
        net.eval()
        err, n = 0.0, 0
        with torch.no_grad(), amp:
            for idx in _batches(model_name, data[val], hp["batch_size"], False, rng):
                b = _step_batch(model_name, data[val], idx, device, False, img_size, med_lib)
                err += float(net.loss(b)["mse"]) * len(idx)
                n += len(idx)
        return err / n

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    best, best_state, bad, epoch_s, history = math.inf, None, 0, [], []
    for epoch in range(hp["max_epochs"]):
        net.train()
        _sync()
        t0 = time.perf_counter()
        for s in rng.permutation(train):
            for idx in _batches(model_name, data[s], hp["batch_size"], True, rng):
                b = _step_batch(model_name, data[s], idx, device, True, img_size, med_lib)
                with amp:
                    loss = net.loss(b)["loss"]
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"{model_name} fold {test}: non-finite loss at epoch {epoch}.")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        _sync()
        epoch_s.append(time.perf_counter() - t0)
        v = val_mse()
        history.append(v)
        if v < best:
            best, bad = v, 0
            best_state = {k: t.detach().clone() for k, t in net.state_dict().items()}
        else:
            bad += 1
            if bad >= hp["patience"]:
                break
    if best_state is None:
        raise FloatingPointError(f"{model_name} fold {test}: the validation MSE was never finite ({history}).")
    net.load_state_dict(best_state)
    net.eval()
    sec = data[test]
    _sync()
    t0 = time.perf_counter()
    preds = []
    with torch.no_grad(), amp:
        for idx in _batches(model_name, sec, hp["batch_size"], False, rng):
            b = _step_batch(model_name, sec, idx, device, False, img_size, med_lib)
            out = net(b["patches"], b["coords"], b["positions"]) if model_name == "hggep" else net(b["patches"])
            preds.append(out["pred"].float().cpu().numpy())
    _sync()
    predict_s = time.perf_counter() - t0
    r = _pearson_per_gene(np.concatenate(preds), sec["target"])
    return {
        "model": model_name, "precision": args.precision, "config": args.config, "test": test, "validation": val,
        "train": train, "hyper": hp, "epochs": len(epoch_s), "best_val_mse": best, "val_mse": history,
        "s_per_epoch": float(np.median(epoch_s)), "predict_spots_per_s": len(sec["target"]) / predict_s,
        "peak_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
        "pcc_mean": float(np.nanmean(r)), "pcc_median": float(np.nanmedian(r)),
        "frac_pcc_gt_0.2": float(np.mean(r[np.isfinite(r)] > 0.2)), "n_genes_scored": int(np.isfinite(r).sum()),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu", "torch": torch.__version__,
    }  # fmt: skip


def run(args) -> None:
    data, genes = _sections(Path(args.cache))
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    for test in args.folds.split(","):
        t0 = time.perf_counter()
        res = run_fold(args.model, test, data, len(genes), args)
        f = results / f"{args.model}_{args.config}_{args.precision}_{test}.json"
        f.write_text(json.dumps(res, indent=1))
        print(f"{f.name}: PCC {res['pcc_mean']:.3f}, {res['epochs']} epochs, {res['s_per_epoch']:.2f} s/epoch, "
              f"peak {res['peak_gib']} GiB ({time.perf_counter() - t0:.0f} s)", flush=True)  # fmt: skip


# ------------------------------------------------------------------------------------------------------------------
# report
# ------------------------------------------------------------------------------------------------------------------
def report(results: Path, out: Path) -> None:
    rows = [json.loads(f.read_text()) for f in sorted(results.glob("*.json"))]
    if not rows:
        raise SystemExit(f"No results in {results}.")
    lines = [
        "## Histology → expression on a GPU (paper defaults, her2st leave one section out)",
        "",
        "Written by `python benchmarks/gpu_expression.py report`; see the script's docstring for the three steps. "
        "Same panel, targets and PCC as [expression.md](expression.md); no pretrained weights.",
        "",
        "| model | network | precision | folds | mean PCC | median PCC | genes PCC > 0.2 | epochs (per fold) | "
        "s / epoch | peak GPU memory (GiB) | predict spots/s | device |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    keys = sorted({(r["model"], r["config"], r["precision"]) for r in rows})
    for model, config, precision in keys:
        rs = [r for r in rows if (r["model"], r["config"], r["precision"]) == (model, config, precision)]
        peak = [r["peak_gib"] for r in rs if r["peak_gib"] is not None]
        peak_txt = f"{max(peak):.2f}" if peak else "–"
        lines.append(
            f"| {model} | {config} | {precision} | {','.join(r['test'] for r in rs)} | "
            f"{np.mean([r['pcc_mean'] for r in rs]):.3f} | {np.mean([r['pcc_median'] for r in rs]):.3f} | "
            f"{np.mean([r['frac_pcc_gt_0.2'] for r in rs]):.1%} | {', '.join(str(r['epochs']) for r in rs)} | "
            f"{np.mean([r['s_per_epoch'] for r in rs]):.2f} | {peak_txt} | "
            f"{np.mean([r['predict_spots_per_s'] for r in rs]):.0f} | {rs[0]['device']}, torch {rs[0]['torch']} |"
        )
    tmp = out.with_suffix(".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(out)
    print("\n".join(lines))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("export", help="write the patch cache (needs the full scst install)")
    e.add_argument("--cache", default=str(CACHE))
    r = sub.add_parser("run", help="train and score (numpy + torch + scst.nn only)")
    r.add_argument("--cache", default=str(CACHE))
    r.add_argument("--model", choices=sorted(TRAIN), required=True)
    r.add_argument("--config", choices=("paper", "cpu_small"), default="paper")
    r.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    r.add_argument("--folds", default=",".join(SECTIONS), help="test sections, e.g. C6 or C2,C3")
    r.add_argument("--epochs", type=int, default=None, help="override max_epochs (smoke tests)")
    r.add_argument("--device", default="cuda")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--results", default=str(ROOT / "benchmarks" / "_out" / "gpu_results"))
    q = sub.add_parser("report", help="results → markdown")
    q.add_argument("--results", default=str(ROOT / "benchmarks" / "_out" / "gpu_results"))
    q.add_argument("--out", default=str(OUT))
    args = p.parse_args()
    if args.cmd == "export":
        export(Path(args.cache))
    elif args.cmd == "run":
        if str(ROOT / "src") not in sys.path:
            sys.path.insert(0, str(ROOT / "src"))
        run(args)
    else:
        report(Path(args.results), Path(args.out))


if __name__ == "__main__":
    main()
