"""Benchmark whole-slide prediction: scst.tl.predict_expression on a synthetic 100,000-spot section, and HGGEP memory.

Run from the repository root (CPU; writes docs/benchmarks/scale.md and benchmarks/results/scale/results.json; the
page was made part by part, see CPU_COMMAND)::

    SCST_CACHE_DIR=/tmp/scst_cache_scale nice -n 5 python benchmarks/bench_scale.py

On a GPU machine (the same measurements on the GPU, with 4 loader workers, bf16 autocast rows and peak GPU memory)::

    SCST_CACHE_DIR=/tmp/scst_cache_scale python benchmarks/bench_scale.py --device cuda --workers 4 \
        --subset 20000 --paper-subset 20000 --raw benchmarks/results/scale_gpu/partial.json \
        --out docs/benchmarks/scale_gpu.md

What is measured (every measurement in a fresh subprocess, torch.set_num_threads(1) per process on CPU unless
--threads says otherwise for the prediction runs):

1. The image: a synthetic 60,000 x 60,000 px RGB zarr (uint8, chunks 3 x 1024 x 1024, zstd level 1) with a
   compressible procedural H&E texture (128 px tiles of pink stroma and purple nuclei, four stain mixes varying
   over 8 x 8-chunk regions), written one strip of 1024 rows at a time: the generator never holds the image.
   Spots: 100,000 on a square grid, 188 px (94 µm at 0.5 µm/px) apart; 80 µm = 160 px windows.
2. Training (not timed as the point): two sections of 300 random grid spots of the same image, with counts of 50
   genes planted on the stain mix under each spot; RidgeExpression on hand-crafted features (112 px), and
   HGGEP / TCGN / ST-Net at bench_config, each for one short epoch.
3. Prediction through scst.tl.predict_expression over the 100k-spot table (the ridge pipeline recomputes the
   hand-crafted embedding inside predict_expression, as for a new slide), spots/s and peak memory (summed RSS of
   the process and its DataLoader workers sampled every 50 ms from /proc/<pid>/status, and the main process's
   VmHWM). Image models at bench_config are first timed on a subset, and the fastest runs the whole section;
   HGGEP and TCGN at the paper defaults are timed on a subset only (minutes per 10k spots on CPU), untrained
   (prediction costs the same whatever the weights).
4. HGGEP memory at 1k, 10k, 100k spots: prediction (bench_config, windows of 96 spots) and one training step
   (the product's own dataloader and loss: one window of batch_size spots), with the default patch cache and
   with patch_cache_mb=0.

os.getloadavg() is recorded around every measurement: the 2 cores are shared with other jobs, so times are upper
bounds.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
from _page import cpu_name, machine_line, write_page

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "benchmarks" / "scale.md"
SIZE = 60_000
N_SPOTS = 100_000
UM_PER_PX = 0.5
STEP_PX = 188.0
SIZE_UM = 80.0
N_GENES = 50
CHUNK = 1024
TRAIN_SPOTS = 300  # per training section
FEATURE_KINDS = ("ridge", "head")  # heads on hand-crafted features: no image-model options, no convolutions


# ---------------------------------------------------------------------------------------------------- memory
def _status_kb(pid: int, field: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as fh:
            kids = [int(c) for c in fh.read().split()]
    except OSError:
        return []
    return kids + [g for k in kids for g in _children(k)]


def _pss_kb(pid: int) -> int:
    """Proportional set size (pages shared with other processes, e.g. forked workers, counted once in a sum)."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as fh:
            for line in fh:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return _status_kb(pid, "VmRSS")


class PeakMemory:
    """Peak summed PSS of this process and its children (DataLoader workers), sampled in a thread.

    A sample reads ``/proc/<pid>/smaps_rollup`` of every process, which walks its page tables: a few ms for
    processes of 2 GB. Timed runs sample once a second (memory grows over seconds here): every 50 ms, the sampling
    took ~25 % of the 2 cores in the 100k-spot ridge run (embedding 111 s against 86–88 s at 1 s or unsampled).
    """

    def __init__(self, interval: float = 1.0):
        self.interval, self.peak_kb, self._stop = interval, 0, threading.Event()

    def _sample(self) -> None:
        pid = os.getpid()
        total = sum(_pss_kb(p) for p in [pid, *_children(pid)])
        self.peak_kb = max(self.peak_kb, total)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            time.sleep(self.interval)

    def __enter__(self):
        self._sample()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self._sample()

    @property
    def peak_mb(self) -> float:
        return self.peak_kb / 1024


def _rss_mb() -> float:
    """PSS of this process (MB), comparable with :class:`PeakMemory`."""
    return _pss_kb(os.getpid()) / 1024


def _hwm_mb() -> float:
    return _status_kb(os.getpid(), "VmHWM") / 1024


# ---------------------------------------------------------------------------------------------------- data
def _tiles(seed: int = 0) -> list[np.ndarray]:
    """Four 1024 x 1024 RGB chunk textures (128 px tiles repeated: compressible), stain mixes z = 0, 1/3, 2/3, 1."""
    rng = np.random.default_rng(seed)
    pink, purple = np.array([235.0, 160.0, 205.0]), np.array([70.0, 40.0, 140.0])
    out = []
    for z in (0.0, 1 / 3, 2 / 3, 1.0):
        t = (1 - z) * pink + z * purple + rng.normal(0, 10, (128, 128, 3))
        for _ in range(int(4 + 40 * z)):  # nuclei: more for purple mixes
            cy, cx = rng.integers(4, 124, 2)
            t[cy - 3 : cy + 3, cx - 3 : cx + 3] = purple * 0.5
        tile = np.clip(t, 0, 255).astype(np.uint8).transpose(2, 0, 1)
        out.append(np.tile(tile, (1, 8, 8)))
    return out


def _mix(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Stain mix index (0-3) at pixel (x, y): constant over 8 x 8-chunk regions."""
    return ((np.asarray(x) // (8 * CHUNK)).astype(int) + (np.asarray(y) // (8 * CHUNK)).astype(int)) % 4


def make_image(path: Path, size: int) -> dict:
    """Write the size x size synthetic image in strips of 1024 rows (one strip, ~180 MB, in memory at a time)."""
    import zarr

    tiles = _tiles()
    t = time.perf_counter()
    with PeakMemory() as mem:
        z = zarr.create_array(
            str(path), shape=(3, size, size), chunks=(3, CHUNK, CHUNK), dtype="uint8",
            compressors=zarr.codecs.ZstdCodec(level=1), fill_value=255,
        )  # fmt: skip
        n_cx = -(-size // CHUNK)
        for y in range(0, size, CHUNK):
            h = min(CHUNK, size - y)
            kinds = _mix(np.arange(n_cx) * CHUNK, y)
            strip = np.concatenate([tiles[k][:, :h] for k in kinds], axis=2)[:, :, :size]
            z[:, y : y + h, :] = strip
    disk = sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20
    return {"write_s": time.perf_counter() - t, "disk_mb": disk, "peak_rss_mb": mem.peak_mb, "size": size}


def _grid(size: int, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(xy px, row, col) of ``n`` spots on the square grid covering the image, in row-major order."""
    per_row = int((size - STEP_PX) // STEP_PX)
    k = np.arange(n)
    row, col = k // per_row, k % per_row
    xy = np.stack([(col + 1) * STEP_PX, (row + 1) * STEP_PX], 1).astype(np.float64)
    if xy[:, 1].max() > size - STEP_PX / 2:
        raise ValueError(f"{n} spots do not fit a {size} px image at {STEP_PX} px spacing.")
    return xy, row, col


def _block(size: int, n: int, origin: tuple[int, int] = (0, 0)) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``n`` spots in a compact near-square block of the grid starting at grid cell ``origin``."""
    side = int(np.ceil(np.sqrt(n)))
    k = np.arange(n)
    row, col = k // side + origin[0], k % side + origin[1]
    xy = np.stack([(col + 1) * STEP_PX, (row + 1) * STEP_PX], 1).astype(np.float64)
    if xy.max() > size - STEP_PX / 2:
        raise ValueError(f"block of {n} spots at {origin} leaves the {size} px image.")
    return xy, row, col


def make_sdata(path: Path, size: int, sections: dict[str, tuple], counts: bool, seed: int = 0):
    """SpatialData over the zarr image (lazy: a plain dask view of the zarr array) with one table of ``sections``.

    ``sections``: name → (xy, row, col). Counts: Poisson, gene g's rate planted on the stain mix under the spot
    (``counts=False``: an all-zero sparse matrix, the table only carries the panel).
    """
    import anndata as ad
    import dask.array as da
    import pandas as pd
    import zarr
    from scipy import sparse
    from spatialdata import SpatialData
    from spatialdata.models import Image2DModel, TableModel
    from spatialdata.transformations import Identity

    z = zarr.open_array(str(path), mode="r")
    img = Image2DModel.parse(da.from_zarr(z), dims=("c", "y", "x"), transformations={s: Identity() for s in sections})
    rng = np.random.default_rng(seed)
    genes = [f"G{i:02d}" for i in range(N_GENES)]
    effect = rng.normal(0, 0.6, (4, N_GENES))
    tabs, geos = [], {}
    for s, (xy, row, col) in sections.items():
        if counts:
            mix = _mix(xy[:, 0], xy[:, 1])
            lam = 5.0 * np.exp(effect[mix])
            X = sparse.csr_matrix(rng.poisson(lam).astype(np.float32))
        else:
            X = sparse.csr_matrix((len(xy), N_GENES), dtype=np.float32)
        ids = [f"{s}_{i}" for i in range(len(xy))]
        obs = pd.DataFrame(
            {"section": s, "region": f"{s}_spots", "spot_id": np.arange(len(xy)), "array_row": row,
             "array_col": col}, index=ids,
        )  # fmt: skip
        t = ad.AnnData(X=X, obs=obs, var=pd.DataFrame(index=genes))
        t.obsm["spatial"] = xy
        tabs.append(t)
        geos[s] = {
            "image_key": "slide_image", "shapes_key": f"{s}_spots", "coordinate_system": s, "um_per_px": UM_PER_PX,
            "spot_diameter_um": 55.0, "spot_diameter_px": 55.0 / UM_PER_PX, "grid_step_um": STEP_PX * UM_PER_PX,
            "image_shape": [size, size], "source": None,
        }  # fmt: skip
    table = ad.concat(tabs, merge="same") if len(tabs) > 1 else tabs[0]
    table.obs["section"] = pd.Categorical(table.obs["section"], categories=list(sections))
    table.obs["region"] = pd.Categorical(table.obs["region"], categories=[f"{s}_spots" for s in sections])
    table.uns["scst"] = {"sections": geos, "gene_alignment": "intersection"}
    table.var["highly_variable_scst"] = True
    table = TableModel.parse(
        table, region=[f"{s}_spots" for s in sections], region_key="region", instance_key="spot_id"
    )
    return SpatialData(images={"slide_image": img}, tables={"table": table})


def _train_sdata(path: Path, size: int):
    """Two training sections (T1, T2): random grid spots over the whole image (all stain mixes), planted counts."""
    per_row = int((size - STEP_PX) // STEP_PX)
    xy, row, col = _grid(size, per_row * per_row)
    pick = np.random.default_rng(1).choice(len(xy), 2 * TRAIN_SPOTS, replace=False)
    halves = np.sort(pick[:TRAIN_SPOTS]), np.sort(pick[TRAIN_SPOTS:])
    secs = {s: (xy[h], row[h], col[h]) for s, h in zip(("T1", "T2"), halves)}
    return make_sdata(path, size, secs, counts=True)


# ---------------------------------------------------------------------------------------------------- models
def _train_model(kind: str, train_sd, device: str, px: int = 112):
    """Train one model briefly on the training sections (returns the model); ``px``: hand-crafted patch size."""
    import scst
    from scst.models import HGGEP, TCGN, RidgeExpression, STNet

    if kind == "ridge":
        scst.tl.embed_patches(train_sd, "handcrafted", size_um=SIZE_UM, out_px=px, progress=False)
        RidgeExpression.setup_sdata(train_sd, embedding_key="X_handcrafted", sections=["T1", "T2"])
        return RidgeExpression(train_sd).train()
    if kind == "head":  # the demo's pipeline at one scale: features standardised per section, feature hypergraph
        from scst.models import HGGEPHead

        adata = train_sd.tables["table"]
        scst.tl.embed_patches(train_sd, "handcrafted", size_um=SIZE_UM, out_px=px, progress=False, key_added="X_hc")
        scst.pp.scale_by_section(adata, "X_hc")
        scst.pp.hypergraph(adata, use_rep="X_hc_scaled", k=3)
        HGGEPHead.setup_anndata(adata, use_rep="X_hc_scaled", sections=["T1", "T2"])
        model = HGGEPHead(adata, **HGGEPHead.bench_config)
        return model.train(max_epochs=50, validation=False, enable_progress_bar=False)
    cls = {"hggep": HGGEP, "tcgn": TCGN, "stnet": STNet, "hggep_paper": HGGEP, "tcgn_paper": TCGN}[kind]
    cfg = dict(cls.bench_config) if not kind.endswith("_paper") else {}
    if kind == "hggep_paper":
        cfg["backbone_weights"] = None  # the paper's ImageNet weights cannot be downloaded here; same compute
    cls.setup_sdata(train_sd, size_um=SIZE_UM, sections=["T1", "T2"])
    model = cls(train_sd, **cfg)
    model.to_device(device)
    if kind.endswith("_paper"):
        # Throughput only: prediction costs the same whatever the weights, and training the paper-sized networks
        # on CPU would take longer than the measurement itself.
        model._is_trained = True
        return model
    bs = {"hggep": 96, "hggep_paper": 256, "tcgn": 32, "tcgn_paper": 32, "stnet": 32}[kind]
    model.train(max_epochs=1, batch_size=bs, validation=False, enable_progress_bar=False)
    return model


def child_predict(args: dict) -> dict:
    """Train ``kind``, then time predict_expression on ``n`` spots of the whole-slide grid."""
    import torch

    if args["device"] == "cpu":
        torch.set_num_threads(int(args.get("threads", 1)))
    import warnings

    warnings.filterwarnings("ignore", message=".*random initialisation.*")
    import scst

    layout = args.get("conv_layout", "channels-last")
    if layout == "default":  # the A/B's other arm: convolutions in the default layout, as before channels-last
        import dataclasses

        import scst._inference as inf

        plain = inf.inference_options
        inf.inference_options = lambda *a, **k: dataclasses.replace(plain(*a, **k), channels_last=False)
    inference = args.get("inference", "grouped+folded")
    if inference == "per window":  # the A/B's other arm: as before 2026-12-03 — one window per encode batch, BN kept
        import dataclasses

        import scst._inference as inf
        import scst.models._hggep as hg

        hg._window_groups = lambda windows, n_spots, max_new: [np.array([w]) for w in range(len(windows))]
        plain_opts = inf.inference_options
        inf.inference_options = lambda *a, **k: dataclasses.replace(plain_opts(*a, **k), fold_batchnorm=False)
    path, size, n, kind = Path(args["image"]), args["size"], args["n"], args["kind"]
    model = _train_model(kind, _train_sdata(path, size), args["device"], int(args.get("px", 112)))
    xy, row, col = _grid(size, n)
    big = make_sdata(path, size, {"W": (xy, row, col)}, counts=False)
    kw: dict = {}
    if kind not in FEATURE_KINDS:
        kw = {"num_workers": args["workers"], "precision": args["precision"]}
    rss0 = _rss_mb()
    load0 = os.getloadavg()
    if args["device"] == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    with PeakMemory() as mem:
        if kind == "ridge" and args["workers"] > 0:
            # embedding with loader workers (hand-crafted features computed in them), then the ridge head
            emb = model.registry["embedding"]
            scst.tl.embed_patches(big, "handcrafted", size_um=emb["size_um"], out_px=int(emb["out_px"]),
                                  key_added=model.registry["embedding_key"], num_workers=args["workers"],
                                  progress=False)  # fmt: skip
            scst.tl.predict_expression(big, model, progress=False)
        elif kind == "ridge":
            scst.tl.predict_expression(big, model, progress=False)
        elif kind == "head":  # features (in the loader workers), per-section scaling, hypergraph, the head
            scst.tl.predict_expression(big, model, progress=False, num_workers=args["workers"])
        else:
            pred = model.predict(big, "W", progress=False, **kw)
            big.tables["table"].layers["predicted"] = pred
    dt = time.perf_counter() - t
    pred = big.tables["table"].layers["predicted"]
    pred = pred.toarray() if hasattr(pred, "toarray") else np.asarray(pred)
    res = {
        **args, "seconds": dt, "spots_per_s": n / dt, "peak_rss_mb": mem.peak_mb, "rss_before_mb": rss0,
        "memory_sample_s": mem.interval, "item_order": "worker_blocks" if args["workers"] > 1 else "-",
        "cpu": cpu_name(), "threads": torch.get_num_threads(),
        "conv_layout": layout if kind not in FEATURE_KINDS else "-",
        "vmhwm_main_mb": _hwm_mb(), "load_before": load0, "load_after": os.getloadavg(),
        "pred_finite": bool(np.isfinite(pred).all()), "pred_sd_mean": float(np.nanstd(pred, 0).mean()),
    }  # fmt: skip
    if args["device"] == "cuda":
        res["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
    if kind.startswith("hggep"):  # each patch encoded once, its tokens held from its first to its last window
        res["hggep_encode"] = (
            "once per spot" if inference == "per window" else "once per spot, window groups, windows batched"
        )
    if kind not in FEATURE_KINDS:
        res["bn_folded"] = inference != "per window"
        res.update(_tokens_held(xy.astype(float), int(model._train_setting("batch_size", None)), args["workers"]))
    return res


def _tokens_held(positions: np.ndarray, batch_size: int, workers: int) -> dict:
    """HGGEP prediction windows of a section: patches encoded before (once per window holding the spot), the most
    spots whose tokens prediction holds at once now (from the read of the group of windows that first needs them to
    the last window that needs them) and the encode batches (groups of windows read and encoded together)."""
    from scst._inference import inference_options
    from scst.models._hggep import _PredictionPlan
    from scst.models._image import _tiling_windows

    windows = _tiling_windows(positions, batch_size)
    plan = _PredictionPlan(windows, len(positions), batch_size, inference_options("cpu", workers))
    n = len(windows)
    put = np.zeros(len(positions), dtype=np.int64)
    for group, spots in zip(plan.groups, plan.new):
        put[spots] = plan.rank[group].min()
    live = np.cumsum(np.bincount(put, minlength=n + 1) - np.bincount(plan.last + 1, minlength=n + 1))
    return {"windows": n, "encodes_per_window_before": sum(len(w) for w, _ in windows),
            "tokens_held_max": int(live.max()), "encode_groups": len(plan.groups),
            "mean_encode_batch": len(positions) / len(plan.groups)}  # fmt: skip


def child_hggep_memory(args: dict) -> dict:
    """Peak memory of HGGEP (bench_config) prediction and of one training step on a section of ``n`` spots."""
    import torch

    if args["device"] == "cpu":
        torch.set_num_threads(1)
    import warnings

    warnings.filterwarnings("ignore", message=".*random initialisation.*")
    from scst.models import HGGEP

    path, size, n = Path(args["image"]), args["size"], args["n"]
    xy, row, col = _block(size, n)
    sd = make_sdata(path, size, {"S": (xy, row, col)}, counts=True)
    HGGEP.setup_sdata(sd, size_um=SIZE_UM, sections=["S"])
    model = HGGEP(sd, **{**HGGEP.bench_config, "patch_cache_mb": args["cache_mb"]})
    model.to_device(args["device"])
    bs = int(HGGEP.bench_config["batch_size"])
    rss0, load0 = _rss_mb(), os.getloadavg()
    res: dict = {**args, "rss_before_mb": rss0, "load_before": load0}
    if args["what"] == "train_step":
        with PeakMemory(0.05) as mem:  # a few seconds: sampled often (memory is the point of these rows)
            t = time.perf_counter()
            train_dl, _ = model._dataloaders(bs, False, 0)
            batch = next(iter(train_dl))
            batch = {k: v.to(model.device) for k, v in batch.items()}
            model.module.train()
            loss = model.module.loss(batch)["loss"]
            loss.backward()
            dt = time.perf_counter() - t
        res.update(seconds=dt, spots_in_step=int(batch["patches"].shape[0]), loss=float(loss))
    else:
        model._is_trained = True  # memory/throughput of the prediction path; weights need no training for that
        if args.get("max_windows"):
            # Only the first windows are predicted (the whole section is set up: tiling, patch reader, outputs):
            # the steady state of the streaming loop, without its full run time on the shared CPU.
            import scst.models._hggep as mod

            tiling = mod._tiling_windows
            mod._tiling_windows = lambda pos, bs: tiling(pos, bs)[: args["max_windows"]]
        with PeakMemory(0.05) as mem:
            t = time.perf_counter()
            model.predict(sd, "S", progress=False, num_workers=args["workers"])
            dt = time.perf_counter() - t
        done = int(bs // 2 * args["max_windows"]) if args.get("max_windows") else n
        res.update(seconds=dt, spots_predicted_about=done, spots_per_s=done / dt)
    res.update(peak_rss_mb=mem.peak_mb, vmhwm_main_mb=_hwm_mb(), load_after=os.getloadavg())
    return res


def _freeze_inherited(worker_id: int) -> None:
    """``worker_init_fn`` of the gc A/B: the worker's collector skips the objects inherited at the fork."""
    import gc

    gc.freeze()


def child_loader_ab(args: dict) -> dict:
    """Same-run A/B of a DataLoader setting of the hand-crafted embedding, ``args["reps"]`` alternating runs each.

    ``args["ab"]``: ``"blocks"`` — the loader's own round robin against the product's ``worker_blocks`` order;
    ``"gc"`` — the product's loaders against ``gc.freeze()`` in each worker (tried, not adopted: a forked worker's
    cyclic collector writes to the header of every tracked object it scans, which could copy the parent's heap pages
    over a long run). Per run: wall time, the reaped workers' CPU time and the peak summed PSS (sampled every second).
    """
    import resource

    import torch

    torch.set_num_threads(1)
    import scst
    import scst._inference as inf

    xy, row, col = _grid(args["size"], args["n"])
    big = make_sdata(Path(args["image"]), args["size"], {"W": (xy, row, col)}, counts=False)
    product = inf.InferenceOptions.loader_kwargs

    def round_robin(self, n_items=None):  # the loader's own order: batch k to worker k % num_workers
        return product(self, None)

    def frozen(self, n_items=None):
        return {**product(self, n_items), "worker_init_fn": _freeze_inherited}

    variants = {
        "blocks": (("round_robin", round_robin), ("worker_blocks", product)),
        "gc": (("gc_scans_inherited", product), ("gc_frozen", frozen)),
    }[args["ab"]]
    runs = []
    try:
        for rep in range(args["reps"]):
            for mode, fn in variants:
                inf.InferenceOptions.loader_kwargs = fn
                c0 = resource.getrusage(resource.RUSAGE_CHILDREN)
                with PeakMemory(1.0) as mem:
                    t = time.perf_counter()
                    scst.tl.embed_patches(big, "handcrafted", size_um=SIZE_UM, out_px=args["px"],
                                          num_workers=args["workers"], progress=False)  # fmt: skip
                    dt = time.perf_counter() - t
                c1 = resource.getrusage(resource.RUSAGE_CHILDREN)
                cpu = (c1.ru_utime + c1.ru_stime) - (c0.ru_utime + c0.ru_stime)
                runs.append({"mode": mode, "rep": rep, "seconds": dt, "worker_cpu_s": cpu, "peak_rss_mb": mem.peak_mb})
    finally:
        inf.InferenceOptions.loader_kwargs = product
    return {**args, "runs": runs, "load_after": os.getloadavg()}


# ---------------------------------------------------------------------------------------------------- page
#: Reading of the CPU results (written after the run; the GPU page gets none).
NOTES: list[str] = """### Reading

**Whole section, hand-crafted + ridge (goal < 2 min): met with 56 px patches.** 100,000 spots in **102 s (976
spots/s), peak PSS 2.46 GB** and, in a rerun, **80 s (1,251 spots/s), 2.71 GB**, two loader workers computing the
features; the same pipeline at 112 px took 231 s (3.45 GB) and 211 s (4.31 GB) (the last four rows, 2026-12-01/02).
The rerun's workers froze their garbage collector (`gc.freeze()`); the A/B table above shows no consistent effect of
that on time or memory, so it was reverted and the 80–102 s spread is run-to-run variation on this shared machine.
Four things changed since the 311 s row:

1. *The measurement.* The benchmark's memory sampler read every process's `/proc/<pid>/smaps_rollup` every 50 ms,
   which walks its page tables: with a main process and two forked workers of ~2 GB each it took ~25 % of the two
   cores (rows above, same code: 126 s sampled every 50 ms, 102 s every second; in an ad-hoc check outside this
   script, not in the raw results, the 100k embedding alone took 111 s sampled every 50 ms and 86–88 s unsampled or
   every second, with peaks of 2.77 and 2.90 GB: sampling less often did not lower the peak). Every earlier row
   carries that overhead; timed rows now sample once a second (column "PSS sampled every").
2. *GLCM properties from the counts.* The six properties are computed from the co-occurrence counts at once (one
   matrix product, the marginals, `c log c` looked up): 3.4× faster than scst's previous version (ad-hoc timing on
   64 real patches) and 13× skimage's `graycoprops` ([features page](features.md) A/B), the same values to 1e-14.
   Their cost does not shrink with the patch (a 32 × 32 × 12 matrix per channel), so they had dominated small
   patches.
3. *Each worker reads its own run of batches* (`worker_blocks`, table above): batches are in image-chunk order, and
   the DataLoader's round robin made both workers decode nearly every chunk. ~5 % less worker CPU (mean of three
   alternating runs each on 20,000 spots; the runs overlap).
4. *56 px instead of 112 px.* The features cost ~3× less (1.2 against 3.4 CPU-ms per real her2st patch on the
   features page) and the resize less. On her2st the hand-crafted ridge baseline loses nothing at 56 px: LOSO mean
   PCC 0.155 against 0.152 at 112 px ([features page](features.md), per-fold panels) — reported, not used to change
   a default (every section is a test section there): `embed_patches` and the expression benchmarks keep their
   sizes. For whole slides, train the ridge on `embed_patches(..., "handcrafted", out_px=56)`: the model records
   the patch size and `predict_expression` remakes the features at that size.

Where the time goes: ~1.75 CPU-ms per spot in the workers (features ~1.4, reading and resizing ~0.4: an ad-hoc
cProfile of 5,000 spots in one process; the worker CPU of the A/B table gives 1.6–1.7), i.e. ~80–88 s of the two
cores, plus setting up the 100k-spot reader and the ridge head (~1 s). Intermediate rows: 117 s / 308 s at 56 / 112
px with round robin and the 50 ms sampler (the 308 s run shared the cores with a test run for ~30 s), 126 s / 287 s
with worker blocks and the 50 ms sampler.

**Whole section, HGGEP's spatial head on hand-crafted features (the demo's model at one scale; 2026-12-03, idle
machine, table "HGGEP's spatial head").** `scst.tl.predict_expression(sdata, head, num_workers=2)` on the 100k-spot
table without an embedding does every step the model's registry records: the 56 px features in the two loader
workers, the per-section standardisation, the feature hypergraph (`pp.hypergraph`'s fast path above 2,048 spots) and
the head, window by window on two torch threads: **112 s (895 spots/s), peak 2.26 GB**, non-constant predictions
(mean per-gene sd over the spots 0.57). So a learned model meets the 2-minute goal on 2 CPU cores when it reads
features rather than pixels; most of the time is the features (ad-hoc cProfile of 3,000 spots in one process on
one thread at load ~10: 16.4 s features, 2.4 s head windows). The head was trained briefly (50 epochs, no
validation: the training cost is not the point) at one patch scale; the demo's three scales (80/160/320 µm) compute
three feature sets per spot instead of one. It reads no pixels itself, so the image-model goal below stands as measured.

*Two torch threads on a busy machine* (ad-hoc, same cProfile run at load ~10, not in the raw results): the head's
windows took 36 s on two threads and 2.4 s on one, training the head 25 s and 6 s — OpenMP threads wait for cores
that other processes hold. On a shared machine, `torch.set_num_threads(1)` (or `OMP_NUM_THREADS=1`) before
predicting.

**Whole section, fastest image model at bench_config (goal < 2 min): met on 2026-12-03, 97 s** (*Window groups,
folded batch norms, batched windows* below; the paragraphs before it tell how it got there). HGGEP's cpu_small
network was the fastest
of the three on the 1,000-spot subset (first rows; the subset rows include the loader start-up). It predicted all
100,000 spots of the section in 718 s (139 spots/s, load 6–9; 163 spots/s over the first 20,000 spots at load ~10),
peak 2.2 GB, and in **621 s (161 spots/s), peak 2.69 GB** in the rerun of 2026-12-01 on the idle machine with the
memory sampled once a second. The loop is model-bound: cProfile of 1,500 spots without workers:
45 % `conv2d` (ShuffleNet), ~5 % batch norm, 13 % turning uint8 batches into normalised floats (now in
place), ~3 % the batched antialiased resize, and the zarr reads below that; no Python work per spot except
slicing each spot's window out of the cached chunks. Overlap: with `num_workers=1` a worker reads and resizes
the next 4 batches while the model computes.

That profile missed where the convolutions went: HGGEP predicts each k-d cell of ≤ 48 spots inside a window of 96
(the cell and its nearest neighbours, so border spots see context on all sides), and the loop ran the whole network
on every window — each spot's patch was read and pushed through the CNN in about 3.6 windows (359,424 encodes for
100,000 spots; column "HGGEP patches encoded": *per window*). Only the ViTs, the hypergraph and the LSTM need the
window; the CNN part of a spot depends on its own patch alone (eval-mode BatchNorm). Prediction now reads and
encodes each patch once (`HGGEPModule.encode_patches`) and runs the spatial part (`forward_tokens`) on each window
from kept tokens, held from a spot's first to its last window: at most 2,574 spots' tokens at once over the 100k
section (4,148 in two workers' window order: 4.0 / 6.4 MB at dim 128, at most twice that in the pool, which doubles
when full; it grows with the k-d frontier, not with the section). The predictions are those of the whole network on
each window (test, to 1e-5). The same 100k section: **396 s (253 spots/s), peak 2.78 GB** on the idle machine (last
row; 621 s before). The subset: 187 spots/s (178 before), while TCGN and ST-Net ran 30–33 % slower than in their
rows of the earlier day (78 and 30 against 111 and 45 spots/s, same code): the machine varies between days, so
subset rows of different days compare loosely. The goal is still not met on CPU: 2 minutes needs ~830 spots/s,
3.3× more; what is left is the CNN once per spot and the spatial part once per window. The hand-crafted
route above is the one that meets the goal on CPU.

*Both cores for the model; convolutions channels-last* (2026-12-02, idle machine, the last two rows). Every earlier
row ran the model on one torch thread with one loader worker reading ahead. For HGGEP the reading is light (zarr
reads and the resize: ~0.35 ms of a core per spot in a cProfile of 4,000 spots), so that worker idles most of the
time and the second core with it. With `num_workers=0` and two torch threads — torch's default on a 2-core machine,
i.e. what `predict_expression(sdata, model)` does out of the box — the section took **280 s (357 spots/s), 2.08
GB**, 1.41× faster than the 396 s row; the same code with one thread and one worker 365 s (274 spots/s). Prediction
now also runs the convolutions in channels-last layout (`InferenceOptions.conv_layout`; same values, test to 1e-5;
the module's layout restored afterwards). Its effect, in a same-run A/B on the 1,000-spot subset (one thread, one
worker, two alternations, subset table above, column "conv layout"): ST-Net 32.4 / 33.6 → 39.3 / 39.2 spots/s
(+19 %), TCGN 78 / 85 → 85 / 85, HGGEP 231 / 233 → 233 / 231 — only ST-Net's ResNet gains measurably end to end
(an encoder-only timing of HGGEP's ShuffleNet gave ~11 % per batch, ~6 % of its end-to-end time, inside the spread),
so most of the 396 → 365 s is the day, not the layout. **Still missed on CPU: 280 s against 120 s (2.3×).**

*torch.compile, tried and not shipped* (`benchmarks/bench_compile_cpu.py`, raw rows in
`benchmarks/results/scale/compile_cpu.json`): HGGEP's per-spot encoder (`HGGEPModule.encode_patches`: GEM,
ShuffleNetV2 x0.5, stage projections; batches of 96 at 112 px) compiled with inductor runs at 724 spots/s on two
threads against 566 eager channels-last and 418 eager (452 / 414 / 378 on one thread), the same values to 5e-8 —
but the first call compiles for 62–74 s on this CPU (new batch shapes compile again). At 566 → 724 spots/s the
encoder's share of the 100k section drops from ~177 s to ~138 s, less than the compile time: compiling pays only
beyond ~200k spots per process, and does not reach the 2-minute goal either.

*int8 quantisation, tried and not shipped* (`benchmarks/bench_quantize_cpu.py`, raw rows in
`benchmarks/results/scale/quantize_cpu.json`; same batches, random weights): of `encode_patches` (261 spots/s on one
thread, 533 on two) the ShuffleNet trunk takes 55–64 % (trunk alone 408 / 977 spots/s; GEM and the stage
projections the rest), so even a free trunk would not give the 2.3× needed. torch.ao eager-mode static int8 of the
same trunk (torchvision's quantizable ShuffleNetV2 x0.5: conv-BN-ReLU fused, calibrated) runs at 709 (x86) / 808
(oneDNN) spots/s on one thread and 1,168 / 1,103 on two, against 676 and 1,044 for fp32 channels-last: 1.1–1.2× on
the trunk, ≤ 1.1× on the encoder, while the int8 output differed from fp32 by 28–40 % (relative norm; random
weights, random calibration — an accuracy check would need trained weights, not done since the speed-up is too
small). This CPU (AMD EPYC) has AVX2 but no VNNI instructions (/proc/cpuinfo), which int8 gains most from.

*Window groups, folded batch norms, batched windows* (2026-12-03, last eleven rows of the whole-section table;
raw rows record `inference`, `encode_groups`, `mean_encode_batch`). A profile of 20,000 spots (two threads, no
worker) put ~60 % of the time in `encode_patches`, ~20 % in reading (zarr chunk decoding and the resize) and ~15 %
in the spatial part. Three changes:
1. *Neighbouring windows encoded together.* On a large section a k-d core holds ~27 spots (3,744 windows of 96 over
   the 100k section), so each window brought ~27 new patches and the encoder ran on batches of ~27, where it gives
   ~1,200 spots/s against ~1,900–2,000 at 96–192 (an encoder-only timing on two threads, ad hoc, not in the raw
   results). Prediction now reads and encodes consecutive windows together, up to `batch_size` new patches per
   encode (1,234 groups of 81 patches on average over the section); each patch is still read and encoded once, no
   encode batch exceeds `batch_size`, and the most spots' tokens held at once is 2,609 (2,557 before).
2. *Batch norms folded into the convolution before them* during prediction (`scst.nn.folded_batchnorm`, torch's
   `fuse_conv_bn_eval`; the module is restored afterwards): every conv–BN pair of GEM and ShuffleNet (the three stage
   projections keep theirs: it comes before their convolution). ~13 % less encoder time in an ad-hoc 20k run. The
   same applies to TCGN, ST-Net and `embed_patches` backbones wherever a conv–BN pair sits in an `nn.Sequential`.
3. *A group's windows through the spatial part in one call* (added after the first four pairs below;
   `HGGEPModule.forward_windows`): the ViTs run on a batch of windows, each window's hypergraph is built on its own
   and the hypergraphs are joined block-diagonally for the hypergraph convolution, one LSTM call; each window stays
   its own set of spots (the same values as `forward_tokens` per window, tested). The spatial part took ~30 % less
   time in an ad-hoc 20k A/B (3.4–3.9 → 2.5–2.7 s); it matters more on a large section, which has more windows per
   spot (3,744 windows for 100k spots against 512 for 20k).

The predictions are the same to float rounding (tests to 1e-5; with two loader workers the windows come in another
order and other patches share an encode batch: differences of 5e-7 on the test data). Same-run A/B on the whole
section, two threads, no worker, alternated (`--inference "per window"` is the code before, column "HGGEP patches
encoded" tells the arms apart). With 1. and 2. (four pairs): before 167 / 163 / 140 s, now 130 / 132 / 138 / 110 s
(1.23× on the means, 1.18–1.29× within a pair; one "before" run was discarded and not replaced: an encoder timing
ran beside it, 191 s). **With 1.–3. (last four rows, two pairs): before 159 / 160 s, now 97 / 97 s (1.64×), peak
2.0–2.1 → 2.2 GB.** An ad-hoc A/B of 1. and 2. earlier the same day (the same child command outside the script,
not niced): 153 / 163 s before, 108 / 118 s now. This day's CPU (AMD EPYC with native bf16) ran the old code at
140–167 s where the CPU of 2026-12-02 took 280 s: the machine alone is ~1.7–2×, and it varies within the day (the
fourth pair ran ~20 % faster than the first). **The 2-minute goal is met on this CPU: 97 s in both runs of the
shipped code** (~100 s if the slowest "before" run's phase is scaled in); by the same-run ratio, the CPU of 2026-12-02
would take ~170 s. What is left per 100k spots: the encoder (about half), reading (~20 %, decoding 1024² zstd
chunks; a loader worker beside two torch threads is slower on two cores: 23–24 s against 20–22 s per 20k in an
ad-hoc A/B) and the spatial part.

**Paper defaults.** HGGEP (1024-d, ViT depth 4, 4-layer 1024-d LSTM, windows of 1024 spots): 25 spots/s fp32,
27 bf16 on the 300-spot subset; TCGN (CMT, 224 px): 2.2 spots/s fp32, 4.6 bf16 — at load ~10, on that day's CPU with
native bf16 (AVX512-BF16). Rerun on 2026-12-02 on the idle machine, which that day was an AMD EPYC without native
bf16 (later rows): HGGEP **69 spots/s fp32, 21 bf16**; TCGN **4.2 fp32, 0.6 bf16** — emulated bf16 is 3–7× slower,
so `precision="bf16"` on a CPU pays only where the CPU has bf16 instructions (the raw results record the CPU from
now on; the page's machine line names it). The 200–290 spots/s of the issue for HGGEP's model compute alone were
measured on an unloaded machine of an earlier day. A GPU (command below) is where these networks belong. The subset
rows of the bench-size networks, rerun the same day: HGGEP 178, TCGN 111, ST-Net 45 spots/s (HGGEP still the
fastest).

**Peak memory (goal < 4 GB).** Image models: ≤ 2.9 GB summed PSS (process + loader worker), most of it there
before prediction starts (imports, the trained model). The *choice* rows ran before training freed its
decoded-chunk caches: 2.2 GB before prediction there, 1.4 GB in the later whole-section run after the same
training. The ridge run with two workers peaked at 4.08 GB under load and at 3.81 GB in the idle rerun (the main process
1.6–1.8 GB VmHWM; the rest is the two forked workers, which gradually copy the parent's pages they touch — Python
reference counts — and hold their own share of the chunk cache and feature temporaries): at the goal's edge; 2.49 GB
in the third run (batched LBP in chunks of 8 patches, shorter run, fewer copied pages). On 2026-12-01/02: 2.43–2.86
GB at 56 px and 3.45–4.31 GB at 112 px over the four runs of each: at 112 px the sum stays at the goal's edge, and
the same run varies by up to 1 GB (the gc A/B table: 2.1–3.3 GB for identical 40k-spot runs). Not measured at
100k: `num_workers=0` (one core, no worker copies) or a `forkserver` worker context (no copies).

**HGGEP memory past the batch size.** Prediction: 0.91 GB at 1k spots, 1.48 GB at 10k, 1.05 GB at 100k (first 40
windows). It does not grow with the section: the network only ever sees one window of 96 spots (ViT attention and
hypergraph within the window), patches are streamed batch by batch, and what is O(n) is small (tiling, spot
coordinates, the n × genes float32 output: 20 MB at 100k × 50). The 1k → 10k step is the patch reader's LRU cache
of decoded zarr chunks filling to its budget (`chunk_cache_mb`, 512 MB: 10k spots touch ~360 chunks of 3 MB, 1k
spots ~40); the capped 100k run touched fewer chunks than the full 10k run; a full 100k run levels off at the
same 512 MB. Before this change, prediction cached every patch of the section in the process-wide patch cache
when it fitted `patch_cache_mb` (2 GB): memory grew linearly with the section (37 MB per 1k spots at 112 px) up
to 2 GB. Now prediction only reuses patches that training already cached.

**HGGEP training step.** With `patch_cache_mb=0`: 1.00 / 1.03 / 1.10 GB at 1k / 10k / 100k spots — flat: one step
is one window of `batch_size` spots, and the section's targets are O(n) but small. With the default 2 GB patch
cache, training keeps a section's uint8 patches in memory when they fit (37 MB at 1k, 376 MB at 10k, for fast
epochs): 1.88 GB at 10k, which also counted up to 512 MB of decoded chunks that training held after caching
(now freed as soon as the section is cached); at 100k the 3.8 GB of patches do not fit and are read per step
(1.15 GB). So training memory grows linearly only up to the cache budget, by design, and is flat past it.
""".splitlines()
CPU_COMMAND = """export SCST_CACHE_DIR=/tmp/scst_cache_scale OMP_NUM_THREADS=1
B="nice -n 5 python benchmarks/bench_scale.py"
$B --parts image memory && $B --parts choice --subset 1000 && $B --parts paper --paper-subset 300 \\
  && $B --parts ridge && $B --parts full --spots 20000 && $B --parts full && $B --parts page
# the later ridge rows, later sessions on an idle machine (runs appended to the committed results.json):
python -c "import json; d = json.load(open('benchmarks/results/scale/results.json')); d.pop('command'); \
json.dump(d, open('benchmarks/results/scale/partial.json', 'w'))" && $B --parts image ridge && $B --parts page
# the 2026-12-01/02 rows: patch sizes, the worker-order A/B, the image model rerun without the 50 ms sampler,
# the patch sizes again (workers' gc frozen, since reverted), the gc A/B, the subset rows on the idle machine
$B --parts ridge --ridge-px 56 112 && $B --parts blocks && $B --parts full && $B --parts ridge --ridge-px 56 112 \
  && $B --parts gc && $B --parts paper --paper-subset 300 && $B --parts choice --subset 1000 && $B --parts page
# HGGEP encoding each patch once (idle machine, the choice rows and the whole section again)
$B --parts image choice --subset 1000 && $B --parts full && $B --parts page
# convolutions channels-last: the subset A/B (two alternations), then the section with two threads and no worker
# and with one thread and one worker (idle machine)
for i in 1 2; do $B --parts choice --subset 1000 --conv-layout default && $B --parts choice --subset 1000; done
$B --parts full --threads 2 --workers 0 && $B --parts full && $B --parts page
# HGGEP's spatial head on 56 px hand-crafted features, the whole section (idle machine)
$B --parts head && $B --parts page
# HGGEP: window groups and folded batch norms, same-run A/B on the section, four pairs (an ad-hoc timing ran beside
# the second 'per window' run, which was removed from partial.json); then, with the windows of a group batched
# through the spatial part, two more pairs
for i in 1 2 3 4; do $B --parts full --threads 2 --workers 0 --inference "per window" \
  && $B --parts full --threads 2 --workers 0; done && $B --parts page
for i in 1 2; do $B --parts full --threads 2 --workers 0 --inference "per window" \
  && $B --parts full --threads 2 --workers 0; done && $B --parts page"""
GPU_COMMAND = (
    "SCST_CACHE_DIR=/tmp/scst_cache_scale python benchmarks/bench_scale.py --device cuda --workers 4 "
    "--subset 20000 --paper-subset 20000 --raw benchmarks/results/scale_gpu/partial.json "
    "--out docs/benchmarks/scale_gpu.md"
)
NAMES = {
    "ridge": "hand-crafted features (112 px) + RidgeExpression",
    "head": "hand-crafted features (112 px) + HGGEPHead bench_config",
    "hggep": "HGGEP bench_config",
    "tcgn": "TCGN bench_config",
    "stnet": "ST-Net bench_config (ResNet-18, 112 px)",
    "hggep_paper": "HGGEP paper defaults (untrained)",
    "tcgn_paper": "TCGN paper defaults (224 px, untrained)",
}


def _fmt(r: dict, cols: list[str]) -> str:
    if "error" in r:
        return (
            "| "
            + " | ".join([NAMES.get(r.get("kind"), r.get("kind", "")), str(r.get("n", ""))])
            + (f" | error: {r['error']} |" + " |" * (len(cols) - 3))
        )
    vals = []
    for c in cols:
        v = r.get(c)
        if c == "kind":
            vals.append(NAMES.get(v, v).replace("(112 px)", f"({r.get('px', 112)} px)"))
        elif c == "load_before":
            vals.append(f"{v[0]:.1f}")
        elif c == "memory_sample_s":  # rows run before it was recorded: the sampler's interval then
            vals.append(f"{v if v is not None else 0.05:g}")
        elif c == "item_order":  # rows run before it was recorded: the DataLoader's own order
            v = v or ("round_robin" if r.get("workers", 0) > 1 else "-")
            vals.append(v.replace("_", " "))
        elif c == "hggep_encode":  # HGGEP rows before it was recorded encoded every window's patches
            vals.append((v or "per window") if str(r.get("kind", "")).startswith("hggep") else "-")
        elif c == "threads":  # rows before it was recorded: one torch thread
            vals.append(str(v or 1))
        elif c == "conv_layout":  # rows before it was recorded: the default layout (no convolutions in the ridge)
            vals.append(v or ("-" if r.get("kind") == "ridge" else "default"))
        elif c == "bn_folded":  # rows before it was recorded: batch norms ran (no convolutions in the feature heads)
            vals.append("-" if r.get("kind") in FEATURE_KINDS else ("yes" if v else "no"))
        elif c == "worker_gc_frozen":  # recorded only by the two 2026-12-02 rows that froze it; the product does not
            vals.append("-" if not r.get("workers") else ("yes" if v else "no"))
        elif isinstance(v, float):
            vals.append(f"{v:.0f}" if abs(v) >= 10 else f"{v:.2f}")
        else:
            vals.append(str(v))
    return "| " + " | ".join(vals) + " |"


def write_report(raw: dict, out: Path) -> None:
    """The page from the raw results (whatever parts ran)."""
    runs = raw["runs"]
    loads = [tuple(r["load_before"]) for r in runs if "load_before" in r]
    after = [tuple(r["load_after"]) for r in runs if "load_after" in r]
    img = raw.get("image", {})
    lines = ["## Whole-slide prediction and HGGEP memory on large sections", ""]
    if loads:
        lines += [
            machine_line(loads[0], after[-1]),
            f"1-min load average over the runs: {min(x[0] for x in loads):.1f}–{max(x[0] for x in loads):.1f} "
            "on 2 cores (other engineers' benchmarks and tests ran at the same time for most rows): **the times of "
            "loaded rows are upper bounds** (the ridge pipeline: 614 s at load 5.7, 418 s on the idle machine, "
            "311 s with the batched texture features on a slower day, 211–231 s at 112 px and 80–102 s at 56 px with "
            "the changes of the last rows; "
            "single-process rows suffer more, up to the load ÷ 2). Each row is a fresh process with "
            "`torch.set_num_threads(1)` unless its column 'torch threads' says otherwise; device: CPU. The machine "
            "line names the CPU when the page was written; "
            "the CPU changes between days (the first paper-default rows ran on one with native bf16, the rows of "
            "2026-12-01/02 on an AMD EPYC without; newer rows record theirs in the raw results).",
            "",
        ]
    if img:
        lines += [
            f"Image: synthetic {img['size']:,} × {img['size']:,} px RGB zarr (uint8, chunks 3 × 1024 × 1024, zstd "
            f"level 1, procedural H&E texture with four stain mixes), {img['disk_mb']:.0f} MB on disk, written in "
            f"strips of 1024 rows in {img['write_s']:.0f} s with a peak of {img['peak_rss_mb']:.0f} MB (the "
            "generator never holds the 10 GB image). Spots on a square grid 188 px = 94 µm apart (0.5 µm/px), "
            "80 µm = 160 px windows. Models are trained briefly on two 300-spot sections of the same image with "
            "counts planted on the stain mix (the training cost is not the point).",
            "",
        ]
    pred_cols = ["kind", "n", "workers", "precision", "seconds", "spots_per_s", "peak_rss_mb", "load_before",
                 "memory_sample_s", "item_order", "worker_gc_frozen", "hggep_encode", "threads",
                 "conv_layout", "bn_folded"]  # fmt: skip
    head = (
        "| pipeline | spots | loader workers | precision | seconds | spots/s | peak PSS (MB) | load "
        "| PSS sampled every (s) | batches to workers | workers' GC frozen | HGGEP patches encoded | torch threads "
        "| conv layout | BN folded |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    )
    for part, title, note in [
        (
            "ridge",
            "Hand-crafted + ridge pipeline over the whole section",
            "`scst.tl.embed_patches(..., 'handcrafted', num_workers=w)` on the 100k-spot table, then "
            "`scst.tl.predict_expression(sdata, ridge)` (the ridge head on the embedding). With workers the features "
            "are computed in the workers (`PatchBatches(fn=handcrafted_features)`), so both cores work.",
        ),
        (
            "head",
            "HGGEP's spatial head on hand-crafted features over the whole section",
            "`scst.tl.predict_expression(sdata, head, num_workers=2)` on the 100k-spot table without an embedding: "
            "the call computes the model's features (in the two loader workers), standardises them within the "
            "section, builds the feature hypergraph and runs the head window by window — the demo's model, at one "
            "patch scale instead of three.",
        ),
        (
            "full",
            "Fastest image model (bench_config) over the whole section",
            "`model.predict(sdata, 'W', num_workers=w)` — the call `scst.tl.predict_expression` makes.",
        ),
        (
            "choice",
            "Image models at bench_config on a subset (which one is fastest)",
            "First spots of the grid (row-major), after a short training.",
        ),
        (
            "paper",
            "HGGEP and TCGN at the paper defaults on a subset",
            "Untrained networks of the paper's size (prediction costs the same whatever the weights); fp32 and bf16 "
            "autocast (`precision='bf16'`); this CPU has AVX512-BF16 (a CPU without it "
            "emulates bf16 and gets slower). HGGEP's whole 300-spot subset is one window of 1024 spots.",
        ),
    ]:
        rows = [r for r in runs if r.get("part") == part]
        if not rows:
            continue
        lines += [f"### {title}", "", note, "", head, *[_fmt(r, pred_cols) for r in rows], ""]
    for part, title, intro, modes, key, label, fmt in [
        (
            "blocks",
            "Which worker reads which batch (same-run A/B)",
            "batches in image-chunk order. *round robin*: the DataLoader's own order (batch k to worker k mod 2, so "
            "both workers decode nearly every chunk); *worker blocks*: `scst._inference.worker_blocks`, each worker "
            "one run of neighbouring batches (the default since this run). Worker CPU: the reaped workers' user + "
            "system time.",
            ("round_robin", "worker_blocks"), "worker_cpu_s", "worker CPU s", "{:.1f}",
        ),
        (
            "gc",
            "Workers' garbage collector (same-run A/B)",
            "*gc scans inherited*: the workers' cyclic garbage collector also scans the objects inherited from the "
            "parent at the fork (writing to their headers, so copying the parent's pages); *gc frozen*: "
            "`gc.freeze()` in each worker (`worker_init_fn`). Tried on the strength of one earlier comparison (3.27 vs "
            "2.33 GB), kept in the product for two 100k rows above, then reverted after this A/B: no consistent "
            "effect on time or memory. Peak summed PSS sampled once a second.",
            ("gc_scans_inherited", "gc_frozen"), "peak_rss_mb", "peak PSS MB", "{:.0f}",
        ),
    ]:  # fmt: skip
        ab = [r for r in runs if r.get("part") == part and "runs" in r]
        if not ab:
            continue
        r = ab[-1]
        lines += [
            f"### {title}",
            "",
            f"`tl.embed_patches(..., 'handcrafted', out_px={r['px']}, num_workers={r['workers']})` on the first "
            f"{r['n']:,} spots, {r['reps']} alternating runs each; " + intro,
            "",
            f"| variant | seconds (each run) | {label} (each run) | mean s | mean {label} |",
            "|---|---|---|---:|---:|",
        ]
        for mode in modes:
            secs = [x["seconds"] for x in r["runs"] if x["mode"] == mode]
            vals = [x[key] for x in r["runs"] if x["mode"] == mode]
            lines.append(
                f"| {mode.replace('_', ' ')} | {', '.join(f'{v:.1f}' for v in secs)} | "
                f"{', '.join(fmt.format(v) for v in vals)} | {sum(secs) / len(secs):.1f} | "
                f"{fmt.format(sum(vals) / len(vals))} |"
            )
        lines.append("")
    mem = [r for r in runs if r.get("part") == "memory"]
    if mem:
        lines += [
            "### HGGEP memory at 1k, 10k and 100k spots (bench_config, windows of 96 spots)",
            "",
            "One section of n spots (a compact block of the grid). *predict*: `model.predict` (spatial windows of "
            "96 spots: k-d cells of 48 plus their neighbours); above 10k spots only the first "
            f"{max((r.get('max_windows') or 0) for r in mem)} windows are predicted after the whole section is set "
            "up (tiling, patch reader, output array), which is the streaming loop's steady state. *train step*: "
            "the product's training dataloader (`_dataloaders`: targets of the section, window sampler) and one "
            "forward/backward of `module.loss` on one 96-spot window, with the default patch cache (2048 MB) and "
            "with `patch_cache_mb=0`. Peak PSS of the process (and workers) over the whole child (imports, "
            "setup, call) and the main process's VmHWM.",
            "",
            "| spots | what | patch cache (MB) | seconds | peak PSS (MB) | VmHWM main (MB) | load |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in mem:
            if "error" in r:
                lines.append(f"| {r['n']:,} | {r['what']} | {r['cache_mb']:.0f} | error: {r['error']} | | | |")
                continue
            what = r["what"] + (f" (first {r['max_windows']} windows)" if r.get("max_windows") else "")
            lines.append(
                f"| {r['n']:,} | {what} | {r['cache_mb']:.0f} | {r['seconds']:.1f} | {r['peak_rss_mb']:.0f} "
                f"| {r['vmhwm_main_mb']:.0f} | {r['load_before'][0]:.1f} |"
            )
        lines.append("")
    lines += raw.get("notes", [])
    lines += ["", "On a GPU machine (not lent here; untested on hardware):", "", "```bash", GPU_COMMAND, "```"]
    write_page(out, lines, CPU_COMMAND, raw=raw)


# ---------------------------------------------------------------------------------------------------- driver
def _run_child(name: str, args: dict, timeout: float) -> dict:
    cmd = [sys.executable, __file__, "--child", name, json.dumps(args)]
    try:
        out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {**args, "error": f"timed out after {timeout:.0f} s"}
    except subprocess.CalledProcessError as e:
        return {**args, "error": e.stderr.strip().splitlines()[-1] if e.stderr.strip() else f"exit {e.returncode}"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def _save(raw: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(raw, indent=1, default=float))
    tmp.replace(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--workers", type=int, default=1, help="DataLoader workers of the prediction runs")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of each prediction run's main process")
    ap.add_argument(
        "--conv-layout",
        choices=["channels-last", "default"],
        default="channels-last",
        help="layout of the image models' convolutions during prediction (the product: channels-last)",
    )
    ap.add_argument(
        "--inference",
        choices=["grouped+folded", "per window"],
        default="grouped+folded",
        help="HGGEP prediction: encode batches of window groups with batch norms folded (the product), or one window "
        "per encode batch with batch norms run (before 2026-12-03)",
    )
    ap.add_argument("--size", type=int, default=SIZE)
    ap.add_argument("--spots", type=int, default=N_SPOTS)
    ap.add_argument("--subset", type=int, default=1000, help="spots of the subset timings (model choice)")
    ap.add_argument("--memory-sizes", type=int, nargs="+", default=[1000, 10_000, 100_000])
    ap.add_argument("--max-windows", type=int, default=40, help="HGGEP memory runs above 10k spots: windows predicted")
    ap.add_argument("--ridge-workers", type=int, nargs="+", default=[2], help="embedding workers of the ridge runs")
    ap.add_argument("--ridge-px", type=int, nargs="+", default=[112], help="hand-crafted patch sizes of the ridge runs")
    ap.add_argument("--head-px", type=int, default=56, help="hand-crafted patch size of the HGGEPHead run")
    ap.add_argument("--paper-subset", type=int, default=300, help="spots of the paper-default timings")
    ap.add_argument("--image", default=None, help="zarr image path (default: $SCST_CACHE_DIR/scale_<size>.zarr)")
    parts = ["image", "ridge", "head", "blocks", "gc", "choice", "full", "paper", "memory", "page"]
    ap.add_argument("--parts", nargs="+", default=parts)
    ap.add_argument("--raw", default=str(ROOT / "benchmarks" / "results" / "scale" / "partial.json"))
    ap.add_argument("--timeout", type=float, default=3600)
    ap.add_argument("--out", default=str(OUT))
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        name, args = a.child[0], json.loads(a.child[1])
        res = {"predict": child_predict, "hggep_memory": child_hggep_memory, "loader_ab": child_loader_ab}[name](args)
        print(json.dumps(res, default=float))
        return
    cache = Path(os.environ.get("SCST_CACHE_DIR", "/tmp/scst_cache_scale"))
    image = Path(a.image) if a.image else cache / f"scale_{a.size}.zarr"
    raw_path = Path(a.raw)
    raw = json.loads(raw_path.read_text()) if raw_path.exists() else {}
    raw.setdefault("runs", [])
    base = {"image": str(image), "size": a.size, "device": a.device, "workers": a.workers, "precision": "32",
            "threads": a.threads, "conv_layout": a.conv_layout, "inference": a.inference}  # fmt: skip

    def record(r: dict) -> None:
        print(json.dumps(r, default=float), flush=True)
        raw["runs"].append(r)
        _save(raw, raw_path)

    if "image" in a.parts and not image.exists():
        image.parent.mkdir(parents=True, exist_ok=True)
        raw["image"] = make_image(image, a.size)
        print(raw["image"], flush=True)
        _save(raw, raw_path)
    if "ridge" in a.parts:
        for px in a.ridge_px:
            for w in a.ridge_workers:
                args = {**base, "part": "ridge", "kind": "ridge", "n": a.spots, "workers": w, "px": px}
                record(_run_child("predict", args, a.timeout))
    if "head" in a.parts:
        args = {**base, "part": "head", "kind": "head", "n": a.spots, "workers": 2, "px": a.head_px, "threads": 2}
        record(_run_child("predict", args, a.timeout))
    for part, n, px in (("blocks", 20_000, 56), ("gc", 40_000, 112)):
        if part in a.parts:
            args = {**base, "part": part, "ab": part, "n": n, "px": px, "reps": 3, "workers": 2}
            args["load_before"] = os.getloadavg()
            record(_run_child("loader_ab", args, a.timeout))
    if "choice" in a.parts:
        for kind in ("hggep", "tcgn", "stnet"):
            record(_run_child("predict", {**base, "part": "choice", "kind": kind, "n": a.subset}, a.timeout))
    if "full" in a.parts:
        choice = [r for r in raw["runs"] if r.get("part") == "choice" and "error" not in r]
        kind = max(choice, key=lambda r: r["spots_per_s"])["kind"] if choice else "stnet"
        record(_run_child("predict", {**base, "part": "full", "kind": kind, "n": a.spots}, a.timeout))
    if "paper" in a.parts:
        for kind in ("hggep_paper", "tcgn_paper"):
            for precision in ("32", "bf16"):
                args = {**base, "part": "paper", "kind": kind, "n": a.paper_subset, "precision": precision}
                record(_run_child("predict", args, a.timeout))
    if "memory" in a.parts:
        for n in a.memory_sizes:
            for what, cache_mb in (("predict", 2048.0), ("train_step", 2048.0), ("train_step", 0.0)):
                args = {**base, "part": "memory", "what": what, "n": n, "cache_mb": cache_mb}
                if what == "predict" and n > 10_000:
                    args["max_windows"] = a.max_windows
                record(_run_child("hggep_memory", args, a.timeout))
    if "page" in a.parts:
        if not raw["runs"]:  # writing the page would replace the committed results.json with an empty one
            raise SystemExit(
                f"--raw: {raw_path} holds no runs; to rewrite the page from the committed results, copy "
                "results.json there without its 'command' (see the page's Reproduce block)."
            )
        raw["notes"] = NOTES if a.device == "cpu" else []
        write_report(raw, Path(a.out))


if __name__ == "__main__":
    main()
