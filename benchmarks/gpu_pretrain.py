"""BYOL pretraining (issue 8 §2) on a GPU machine without the scverse stack: cost (tiles/s) and longer per-fold runs.

The GPU machines have torch and torchvision but no anndata/spatialdata/Lightning, and ``../shared`` does not travel.
This script works in steps whose GPU part needs only numpy, torch, ``scst.nn`` and ``lightly`` (pure Python; carried):

1. ``export`` (here, full scst install): for every her2st section C2–C6, the product's tissue tiles
   (:meth:`scst.models.SSLEncoder.tiles`: 80 µm tiles on an 80 µm grid over the tissue mask, tiles with < 50 %
   tissue pixels dropped, 112 px) are described by their windows — the integer origin of each tile's window in the
   full-resolution H&E and the window's edge in pixels — next to a copy of each section's ``he.jpg`` and the sha256
   of the product's uint8 tiles. The tiles themselves are too large to carry (170 MiB as compressed npz, 116 MiB
   as PNG); the JPEGs are 19 MiB. ``export`` rebuilds the tiles from the JPEGs as the device will (Pillow decode,
   window slice with white padding, torch's antialiased bilinear uint8 resize, as ``SpotPatchDataset.patch_uint8``)
   and refuses to write unless they equal the product's bit for bit.
2. ``tiles`` (device): the same rebuild, checked against the exported sha256 (recorded), written to one ``.npy``.
3. ``speed`` (device): training tiles/s and peak memory of the product's step (:func:`scst.nn.train_step` on
   :meth:`scst.nn.BYOLModule.loss`) per batch size and precision.
4. ``run`` (device): one fold = pretraining on the four other sections, as :class:`~scst.models.SSLEncoder` trains
   through Lightning (seed-0 initialisation, AdamW with weight decay 1e-4, cosine learning rate over the epochs, a
   shuffled ``drop_last`` batch order from a seeded generator, target momentum along a cosine over all steps, the
   trunk of the epoch with the lowest mean training loss kept) but on the GPU through the product's step. With
   ``--budget``, the number of epochs is set after the first epoch to what fits in the budget (at most ``--epochs``;
   the cosine schedules are then laid over that number). Writes the trunk's state_dict (``.pt``) and a JSON.
5. ``convert`` (here): ``.pt`` → the safetensors file :meth:`SSLEncoder.save_encoder` writes (same keys and metadata),
   which ``bench_pretrain.py --probe`` reads.

One device session: ``benchmarks/gpu_pretrain.sh``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / "benchmarks" / "_out" / "gpu_cache" / "ssl"
SECTIONS = ("C2", "C3", "C4", "C5", "C6")
SIZE_UM, PATCH_PX = 80.0, 112


def _sha(arr: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(arr).tobytes()).hexdigest()


def _write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


# ------------------------------------------------------------------------------------------------------------------
# tiles from the JPEGs (numpy + torch + Pillow)
# ------------------------------------------------------------------------------------------------------------------
def _rebuild(jpeg: Path, origins: np.ndarray, size: int, out_px: int) -> np.ndarray:
    """uint8 ``(n, 3, out_px, out_px)``: each ``size``-px window at ``origins`` ``[x0, y0]``, white outside the image,
    resized as ``SpotPatchDataset._resize_uint8`` does (torch, antialiased bilinear on uint8)."""
    import torch.nn.functional as F
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = None
    with Image.open(jpeg) as im:
        img = np.asarray(im.convert("RGB")).transpose(2, 0, 1)  # (3, h, w)
    _, h, w = img.shape
    out = np.empty((len(origins), 3, out_px, out_px), dtype=np.uint8)
    for i, (x0, y0) in enumerate(np.asarray(origins, dtype=np.int64)):
        win = np.full((3, size, size), 255, dtype=np.uint8)
        xa, xb, ya, yb = max(x0, 0), min(x0 + size, w), max(y0, 0), min(y0 + size, h)
        win[:, ya - y0 : yb - y0, xa - x0 : xb - x0] = img[:, ya:yb, xa:xb]
        t = torch.from_numpy(win)
        if size != out_px:
            t = F.interpolate(t[None], size=(out_px, out_px), mode="bilinear", align_corners=False, antialias=True)[0]
        out[i] = t.numpy()
    return out


def _windows(centers: np.ndarray, um_per_px: float, size_um: float) -> tuple[np.ndarray, int]:
    """Integer ``[x0, y0]`` origins of the windows of ``centers`` (full-resolution px) and their edge, as
    ``SpotPatchDataset`` cuts them (edge ``round(size_um / um_per_px)``, origin ``scst.pp._patches._window_origin``)."""
    from scst.pp._patches import _window_origin

    size = max(1, int(round(size_um / um_per_px)))
    xy = np.asarray(centers, dtype=np.float64).reshape(-1, 2)
    return np.array([[_window_origin(x, size), _window_origin(y, size)] for x, y in xy], dtype=np.int64), size


def _load_export(cache: Path) -> tuple[dict, dict]:
    meta = json.loads((cache / "tiles.json").read_text())
    z = np.load(cache / "windows.npz", allow_pickle=False)
    return meta, {s: z[s] for s in meta["sections"]}


def export(cache: Path) -> None:
    if "SCST_DATA_DIR" not in os.environ and (ROOT.parent / "shared" / "data").is_dir():
        os.environ["SCST_DATA_DIR"] = str(ROOT.parent / "shared" / "data")
    import warnings

    warnings.filterwarnings("ignore", message=".*read_st.*")
    import scst
    from scst.datasets._fetch import fetch
    from scst.models import SSLEncoder

    sdata = scst.datasets.her2st(sections=list(SECTIONS))
    SSLEncoder.setup_sdata(sdata, sections=list(SECTIONS), size_um=SIZE_UM, patch_px=PATCH_PX)
    model = SSLEncoder(sdata, seed=0)
    tiles = model.tiles()
    reg = model.registry
    cache.mkdir(parents=True, exist_ok=True)
    meta = {
        "sections": list(SECTIONS),
        "size_um": SIZE_UM,
        "patch_px": PATCH_PX,
        "window_px": {},
        "sha256": {},
        "n_tiles": {},
        "um_per_px": {},
        "product": "SSLEncoder.setup_sdata(size_um=80, patch_px=112), tiles()",
    }
    windows = {}
    for s in SECTIONS:
        upp = float(reg["um_per_px"][s])
        windows[s], size = _windows(model.tile_centers_[s], upp, SIZE_UM)
        jpeg = cache / f"{s}.jpg"
        shutil.copyfile(fetch("her2st", f"{s}/he.jpg"), jpeg)
        rebuilt = _rebuild(jpeg, windows[s], size, PATCH_PX)
        if rebuilt.shape != tiles[s].shape or not np.array_equal(rebuilt, tiles[s]):
            diff = np.abs(rebuilt.astype(int) - tiles[s].astype(int)).max() if rebuilt.shape == tiles[s].shape else "-"
            raise SystemExit(f"{s}: tiles rebuilt from the JPEG differ from SSLEncoder.tiles() (max |diff| {diff})")
        meta["window_px"][s], meta["sha256"][s], meta["n_tiles"][s] = size, _sha(tiles[s]), int(len(tiles[s]))
        meta["um_per_px"][s] = upp
        print(f"{s}: {len(tiles[s])} tiles, window {size} px, rebuilt from the JPEG = product tiles", flush=True)
    tmp = cache / "windows.tmp.npz"
    np.savez(tmp, **windows)
    tmp.replace(cache / "windows.npz")
    _write_json(cache / "tiles.json", meta)
    mib = sum(f.stat().st_size for f in cache.iterdir()) / 2**20
    print(f"wrote {cache} ({mib:.1f} MiB)")


def tiles(cache: Path, out: Path, record: Path) -> None:
    meta, windows = _load_export(cache)
    res, arrs = {"sections": {}}, {}
    t0 = time.perf_counter()
    for s in meta["sections"]:
        a = _rebuild(cache / f"{s}.jpg", windows[s], int(meta["window_px"][s]), int(meta["patch_px"]))
        arrs[s] = a
        res["sections"][s] = {"n_tiles": int(len(a)), "sha256_equal": _sha(a) == meta["sha256"][s]}
    res["rebuild_s"] = round(time.perf_counter() - t0, 2)
    res["all_equal"] = all(v["sha256_equal"] for v in res["sections"].values())
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(out, **arrs)
    _write_json(record, res)
    print(json.dumps(res), flush=True)


# ------------------------------------------------------------------------------------------------------------------
# training (numpy + torch + scst.nn + lightly)
# ------------------------------------------------------------------------------------------------------------------
def _module(seed: int, device: str, **module_kwargs):
    from scst.nn import BYOLModule

    torch.manual_seed(seed)  # BaseModel._build_module: the seed-0 initialisation the probe's random-init arm uses
    return BYOLModule(**{"backbone": "shufflenet_v2_x0_5", **module_kwargs}).to(device)


def pretrain(
    x_all: torch.Tensor,
    *,
    epochs: int,
    batch_size: int = 64,
    lr: float = 1e-3,
    weight_decay: float = 1e-4,
    precision: str = "fp32",
    seed: int = 0,
    budget: float | None = None,
    **module_kwargs,
) -> dict:
    """BYOL on the uint8 tiles ``x_all`` (on the training device) as ``SSLEncoder.train`` does through Lightning.

    Returns ``history`` (per epoch: mean loss and pred_std, learning rate, seconds), ``best_state`` (the trunk of
    the epoch with the lowest mean loss, on the CPU), ``best_epoch``, ``epochs``, ``steps_per_epoch``, ``train_s``.
    """
    from scst.nn import train_step

    device = x_all.device
    n = len(x_all)
    bs = min(batch_size, n)
    steps_per_epoch = n // bs  # BatchSampler(drop_last=True)
    m = _module(seed, str(device), **module_kwargs)
    m.max_steps = steps_per_epoch * epochs
    opt = torch.optim.AdamW(m.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, epochs))
    torch.manual_seed(seed)  # Lightning's seed_everything before training: the augmentations' RNG
    gen = torch.Generator().manual_seed(seed)  # the loader's RandomSampler generator
    hist, best, t_start, epoch = [], (math.inf, None, -1), time.perf_counter(), 0
    while epoch < epochs:
        m.train()
        t0 = time.perf_counter()
        torch.empty((), dtype=torch.int64).random_()  # each DataLoader iterator draws its base seed from the RNG
        order = torch.randperm(n, generator=gen)
        losses, stds = [], []
        for b in range(steps_per_epoch):
            idx = order[b * bs : (b + 1) * bs].sort().values.to(device)  # _TileBatches sorts each batch
            out = train_step(m, x_all[idx], opt, precision=precision)
            losses.append(out["loss"])
            stds.append(out["pred_std"])
        loss = float(torch.stack(losses).float().mean())
        hist.append({"epoch": epoch, "train_loss": loss, "train_pred_std": float(torch.stack(stds).float().mean()),
                     "lr": opt.param_groups[0]["lr"], "epoch_s": round(time.perf_counter() - t0, 3)})  # fmt: skip
        sched.step()
        if loss < best[0]:
            best = (loss, {k: v.detach().cpu().clone() for k, v in m.backbone.state_dict().items()}, epoch)
        if epoch == 0 and budget is not None:  # fit the epochs to the budget, then lay the schedules over them
            fit = max(1, int(budget // max(hist[0]["epoch_s"], 1e-9)))
            if fit < epochs:
                epochs = fit
                m.max_steps = steps_per_epoch * epochs
                sched.T_max = max(1, epochs)
        epoch += 1
    return {"history": hist, "best_state": best[1], "best_epoch": best[2], "epochs": epochs,
            "steps_per_epoch": steps_per_epoch, "batch_size": bs, "train_s": time.perf_counter() - t_start}  # fmt: skip


def _env(device: str) -> dict:
    import torchvision

    return {
        "torch": torch.__version__, "torchvision": torchvision.__version__, "python": sys.version.split()[0],
        "device": torch.cuda.get_device_name(0) if device.startswith("cuda") else "cpu",
        "cudnn_allow_tf32": bool(torch.backends.cudnn.allow_tf32),
        "matmul_precision": torch.get_float32_matmul_precision(),
    }  # fmt: skip


def speed(args) -> None:
    from scst.nn import train_step

    z = np.load(args.tiles)
    x_all = torch.from_numpy(np.concatenate([z[s] for s in SECTIONS if s != "C6"])).to(args.device)
    cuda, rows = args.device.startswith("cuda"), []
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    for bs in (int(b) for b in args.batch_sizes.split(",")):
        for prec in args.precisions.split(","):
            m = _module(0, args.device)
            m.max_steps = args.steps + args.warmup
            opt = torch.optim.AdamW(m.parameters(), lr=1e-3, weight_decay=1e-4)
            gen = torch.Generator().manual_seed(0)
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            for i in range(args.warmup + args.steps):
                if i == args.warmup:
                    sync()
                    t0 = time.perf_counter()
                idx = torch.randperm(len(x_all), generator=gen)[:bs].to(args.device)
                train_step(m, x_all[idx], opt, precision=prec)
            sync()
            dt = time.perf_counter() - t0
            peak = round(torch.cuda.max_memory_allocated() / 2**20, 1) if cuda else None
            row = {"batch_size": bs, "precision": prec, "steps": args.steps, "s_per_step": dt / args.steps,
                   "tiles_per_s": bs * args.steps / dt, "peak_mib": peak}  # fmt: skip
            rows.append(row)
            print(json.dumps(row), flush=True)
    _write_json(Path(args.out), {"env": _env(args.device), "rows": rows, "warmup": args.warmup,
                                 "tiles": "C2–C5 tissue tiles, 112 px, uint8 on the device"})  # fmt: skip


def run(args) -> None:
    held = args.heldout
    train_secs = [s for s in SECTIONS if s != held]
    z = np.load(args.tiles)
    x_all = torch.from_numpy(np.concatenate([z[s] for s in train_secs])).to(args.device)
    res = pretrain(x_all, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
                   precision=args.precision, seed=args.seed, budget=args.budget)  # fmt: skip
    hist, steps = res["history"], res["steps_per_epoch"] * res["epochs"]
    out_dir = Path(args.results)
    out_dir.mkdir(parents=True, exist_ok=True)
    pt = out_dir / f"shufflenet_v2_x0_5_heldout_{held}.pt"
    tmp = pt.with_suffix(".pt.tmp")
    torch.save(res["best_state"], tmp)
    os.replace(tmp, pt)
    rec = {
        "heldout": held, "train_sections": train_secs, "n_tiles": len(x_all), "batch_size": res["batch_size"],
        "lr": args.lr, "weight_decay": args.weight_decay, "precision": args.precision, "seed": args.seed,
        "epochs_requested": int(args.epochs), "budget_s": args.budget, "epochs": res["epochs"], "steps": steps,
        "train_s": round(res["train_s"], 2), "tiles_per_s": round(steps * res["batch_size"] / res["train_s"], 1),
        "best_epoch": res["best_epoch"], "loss_first_epoch": hist[0]["train_loss"],
        "loss_last_epoch": hist[-1]["train_loss"], "pred_std_last_epoch": hist[-1]["train_pred_std"],
        "file": pt.name, "env": _env(args.device),
        "config": "BYOLModule defaults (SSLEncoder._default_config): heads 1024/256/1024, momentum 0.99 → 1.0, "
        "HEAugment crop (0.5, 1), HED 0.05/0.01, blur (0.1, 1.5) px p 0.5", "history": hist,
    }  # fmt: skip
    _write_json(out_dir / f"fold_{held}.json", rec)
    print(json.dumps({k: v for k, v in rec.items() if k != "history"}), flush=True)


def convert(results: Path, out: Path) -> None:
    """Device ``.pt`` trunks → safetensors with :meth:`SSLEncoder.save_encoder`'s metadata."""
    from safetensors.torch import save_file

    import scst

    out.mkdir(parents=True, exist_ok=True)
    for rec_path in sorted(results.glob("fold_*.json")):
        rec = json.loads(rec_path.read_text())
        state = torch.load(results / rec["file"], map_location="cpu", weights_only=True)
        meta = {
            "backbone": "shufflenet_v2_x0_5",
            "method": "BYOL (lightly)",
            "size_um": str(SIZE_UM),
            "patch_px": str(PATCH_PX),
            "sections": json.dumps(rec["train_sections"]),
            "n_tiles": str(rec["n_tiles"]),
            "scst_version": scst.__version__,
            "trained_on": rec["env"]["device"],
        }
        path = out / f"shufflenet_v2_x0_5_heldout_{rec['heldout']}.safetensors"
        tmp = path.with_suffix(".tmp")
        save_file({k: v.contiguous() for k, v in state.items()}, str(tmp), metadata=meta)
        os.replace(tmp, path)
        print(f"{path}", flush=True)


def record(device_out: Path, results: Path, tag: str, command: str) -> None:
    """One device session's output folder → ``<results>/<tag>.json`` (machine, tile check, speed, per-fold records
    without their history, sha256 of each returned ``.pt``) and ``<tag>_history.csv.gz`` (per fold and epoch)."""
    import gzip

    import pandas as pd  # here, not on the device

    def _read(name: str):
        path = device_out / name
        if not path.is_file():
            return None
        return json.loads(path.read_text()) if name.endswith(".json") else path.read_text().strip()

    folds, hist_rows = [], []
    for rec_path in sorted((device_out / "loso").glob("fold_*.json")):
        rec = json.loads(rec_path.read_text())
        pt = device_out / "loso" / rec["file"]
        rec["sha256_pt"] = hashlib.sha256(pt.read_bytes()).hexdigest() if pt.is_file() else None
        hist_rows += [{"heldout": rec["heldout"], **h} for h in rec.pop("history")]
        folds.append(rec)
    if not folds:
        raise FileNotFoundError(f"no fold_*.json under {device_out / 'loso'}")
    out = {"command": command, "gpu_csv": _read("gpu.csv"), "versions": _read("versions.txt"),
           "tiles": _read("tiles.json"), "speed": _read("speed.json"), "folds": folds}  # fmt: skip
    _write_json(results / f"{tag}.json", out)
    path = results / f"{tag}_history.csv.gz"
    tmp = path.with_suffix(".gz.tmp")
    with gzip.open(tmp, "wt") as f:  # as bench_pretrain.py writes its histories
        pd.DataFrame(hist_rows).to_csv(f, index=False)
    os.replace(tmp, path)
    n_weights = sum(f["sha256_pt"] is not None for f in folds)
    print(f"{results / f'{tag}.json'}: {len(folds)} folds, {n_weights} with weights")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("export", help="tile windows + JPEG copies + product tile hashes (needs the full scst install)")
    e.add_argument("--cache", type=Path, default=CACHE)
    t = sub.add_parser("tiles", help="rebuild the tiles from the JPEGs and check them against the export")
    t.add_argument("--cache", type=Path, default=CACHE)
    t.add_argument("--out", type=Path, required=True, help="output .npz (one array per section)")
    t.add_argument("--record", type=Path, required=True, help="JSON with the hash check")
    s = sub.add_parser("speed", help="training tiles/s and peak memory per batch size and precision")
    s.add_argument("--tiles", required=True)
    s.add_argument("--batch-sizes", default="64,256")
    s.add_argument("--precisions", default="fp32,bf16")
    s.add_argument("--steps", type=int, default=30)
    s.add_argument("--warmup", type=int, default=5)
    s.add_argument("--device", default="cuda")
    s.add_argument("--out", required=True)
    r = sub.add_parser("run", help="pretrain one fold (the held-out section never seen)")
    r.add_argument("--tiles", required=True)
    r.add_argument("--heldout", choices=SECTIONS, required=True)
    r.add_argument("--epochs", type=int, default=100)
    r.add_argument("--budget", type=float, default=None, help="seconds of training; epochs set after the first")
    r.add_argument("--batch-size", type=int, default=64)
    r.add_argument("--lr", type=float, default=1e-3)
    r.add_argument("--weight-decay", type=float, default=1e-4)
    r.add_argument("--precision", default="fp32")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--device", default="cuda")
    r.add_argument("--results", required=True)
    c = sub.add_parser("convert", help="device .pt trunks → safetensors for bench_pretrain.py --probe")
    c.add_argument("--results", type=Path, required=True)
    c.add_argument("--out", type=Path, required=True)
    g = sub.add_parser("record", help="a device session's output folder → benchmarks/results/pretrain/<tag>.json")
    g.add_argument("--device-out", type=Path, required=True, help="the unpacked device output ($OUT of the .sh)")
    g.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results" / "pretrain")
    g.add_argument("--tag", required=True)
    g.add_argument("--command", required=True, help="the device command that made the folder (recorded)")
    args = p.parse_args()
    if str(ROOT / "src") not in sys.path:
        sys.path.insert(0, str(ROOT / "src"))
    if args.cmd == "export":
        export(args.cache)
    elif args.cmd == "tiles":
        tiles(args.cache, args.out, args.record)
    elif args.cmd == "speed":
        speed(args)
    elif args.cmd == "run":
        run(args)
    elif args.cmd == "record":
        record(args.device_out, args.results, args.tag, args.command)
    else:
        convert(args.results, args.out)


if __name__ == "__main__":
    main()
