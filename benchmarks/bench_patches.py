"""Benchmark scst.pp.SpotPatchDataset: patch throughput on her2st and peak memory on a 50k x 50k px image.

Run (from the repository root; writes docs/benchmarks/patches.md):

    SCST_DATA_DIR=../shared/data SCST_CACHE_DIR=<cache> python benchmarks/bench_patches.py

What is measured (CPU only, torch.set_num_threads(1) in every process; each configuration in a fresh subprocess):

1. Throughput on her2st C2-C6 (910 spots): 80 µm windows (116 px) resized to 112 px, batch 64, shuffled,
   DataLoader with 0 and 2 workers (persistent), two epochs (epoch 1 starts with empty chunk caches). Sources:
   (a) the zarr image cache (scst's path: windows read chunk-wise from zarr through the bounded LRU chunk cache,
   128 MB and 512 MB), (b) a patch cache (extract_patches once, in chunk order, then from_patch_cache),
   (c) the naive path: each JPEG decoded whole with Pillow into memory once, then numpy crops. Preparation time
   (extraction, JPEG decode) is reported separately and counted in "epoch 1 incl. prep". Also windows/s of a
   plain dask slice + compute per window on the spatialdata element (no resize), the path scst avoids.
2. Peak memory while iterating all patches of a synthetic 50,000 x 50,000 px RGB zarr image (uint8, chunks
   3 x 1024 x 1024, zstd; a tiled H&E texture so it compresses) with ~20k spots on a jittered 350 px grid:
   peak of the summed PSS of the process and its DataLoader workers (psutil, sampled every 100 ms) and the main
   process's ru_maxrss.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = ["C2", "C3", "C4", "C5", "C6"]


# ---------------------------------------------------------------------------------------------------- helpers
class PeakRSS:
    """Peak of the summed PSS (proportional set size: shared copy-on-write pages counted once across processes)
    of this process and all its children, sampled in a thread."""

    def __init__(self, interval=0.1):
        import psutil

        self.proc, self.interval, self.peak, self._stop = psutil.Process(), interval, 0, threading.Event()

    def _sample(self):
        import psutil

        total = 0
        for p in [self.proc, *self.proc.children(recursive=True)]:
            try:
                total += p.memory_full_info().pss
            except psutil.Error:
                pass
        self.peak = max(self.peak, total)

    def _run(self):
        while not self._stop.is_set():
            self._sample()
            time.sleep(self.interval)

    def __enter__(self):
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self._sample()


def _maxrss_mb() -> dict:
    import resource

    self_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    child_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {"ru_maxrss_self_mb": self_mb, "ru_maxrss_children_mb": child_mb}


def _epochs(ds, workers: int, epochs: int = 2, batch_size: int = 64) -> list[float]:
    import torch

    loader = torch.utils.data.DataLoader(
        ds, batch_size=batch_size, shuffle=True, num_workers=workers, persistent_workers=workers > 0
    )
    times = []
    for _ in range(epochs):
        t = time.perf_counter()
        n = 0
        for b in loader:
            n += len(b["patch"])
        times.append(time.perf_counter() - t)
    assert n == len(ds)
    return times


# ---------------------------------------------------------------------------------------------------- children
def child_real(source: str, workers: int, cache_mb: float = 512.0) -> dict:
    import torch

    torch.set_num_threads(1)
    import scst
    from scst.pp._patches import SpotPatchDataset

    sd = scst.datasets.her2st(SECTIONS)
    res: dict = {"source": source, "workers": workers, "cache_mb": cache_mb}
    with PeakRSS() as rss:
        if source == "zarr":
            ds = SpotPatchDataset(sd, out_px=112, return_counts=False, chunk_cache_mb=cache_mb)
            res["decode_s"] = 0.0
        elif source == "cache":
            from scst.pp._patches import extract_patches

            t = time.perf_counter()
            arrays = extract_patches(sd, out_px=112, return_counts=False, chunk_cache_mb=cache_mb)
            res["decode_s"] = time.perf_counter() - t  # one pass in locality order
            ds = SpotPatchDataset.from_patch_cache(arrays)
        else:
            from PIL import Image

            Image.MAX_IMAGE_PIXELS = None
            t = time.perf_counter()
            images = {}
            for s in SECTIONS:
                with Image.open(ROOT.parent / "shared" / "data" / "her2st" / s / "he.jpg") as im:
                    images[s] = np.moveaxis(np.asarray(im.convert("RGB")), -1, 0)  # (c, y, x) view of (y, x, c)
            res["decode_s"] = time.perf_counter() - t
            tab = sd.tables["table"]
            geo = tab.uns["scst"]["sections"]
            ds = SpotPatchDataset.from_arrays(
                images, tab.obsm["spatial"], tab.obs["section"].astype(str).to_numpy(),
                {s: geo[s]["um_per_px"] for s in SECTIONS}, out_px=112,
            )  # fmt: skip
        res["n"] = len(ds)
        res["epoch_s"] = _epochs(ds, workers)
    res["peak_rss_mb"] = rss.peak / 2**20
    return res


def child_dask(n: int = 100) -> dict:
    import scst
    from scst.pp._patches import _window_origin

    sd = scst.datasets.her2st(["C2"])
    arr = sd.images["C2_image"]["scale0"]["image"].data
    xy = sd.tables["table"].obsm["spatial"][:n]
    t = time.perf_counter()
    for cx, cy in xy:
        x0, y0 = _window_origin(cx, 116), _window_origin(cy, 116)
        arr[:, y0 : y0 + 116, x0 : x0 + 116].compute()
    return {"source": "dask", "n": len(xy), "s": time.perf_counter() - t}


def make_big(path: Path, size: int) -> None:
    """Write the synthetic size x size zarr image chunk by chunk (bounded memory)."""
    import zarr

    import scst

    sd = scst.datasets.her2st(["C2"])
    xy = sd.tables["table"].obsm["spatial"][0]
    x0, y0 = int(xy[0]) - 64, int(xy[1]) - 64
    tex = sd.images["C2_image"]["scale0"]["image"].data[:, y0 : y0 + 128, x0 : x0 + 128].compute()
    chunk = np.tile(tex, (1, 8, 8))  # 1024 x 1024 tiled texture
    z = zarr.create_array(
        str(path), shape=(3, size, size), chunks=(3, 1024, 1024), dtype="uint8",
        compressors=zarr.codecs.ZstdCodec(level=1), fill_value=255,
    )  # fmt: skip
    band = np.tile(chunk, (1, 1, -(-size // 1024)))[:, :, :size]  # one row of chunks (~150 MB) per write
    for y in range(0, size, 1024):
        h = min(1024, size - y)
        z[:, y : y + h, :] = band[:, :h]


def child_big(path: str, size: int, workers: int, spacing: int) -> dict:
    import torch

    torch.set_num_threads(1)
    from scst.pp._patches import SpotPatchDataset

    rng = np.random.default_rng(0)
    g = np.arange(spacing // 2, size, spacing, dtype=float)
    gx, gy = np.meshgrid(g, g)
    xy = np.stack([gx.ravel(), gy.ravel()], 1) + rng.uniform(-20, 20, size=(gx.size, 2))
    xy = np.clip(xy, 0, size - 1)
    import psutil

    baseline = psutil.Process().memory_full_info().pss / 2**20  # after imports (torch, scverse stack)
    with PeakRSS() as rss:
        ds = SpotPatchDataset.from_arrays({"big": path}, xy, np.zeros(len(xy), int), 0.6888, out_px=112, normalize=None)
        loader = torch.utils.data.DataLoader(ds, batch_size=64, shuffle=True, num_workers=workers)
        t = time.perf_counter()
        n = 0
        for b in loader:
            n += len(b["patch"])
        dt = time.perf_counter() - t
    return {"workers": workers, "n": n, "s": dt, "baseline_mb": baseline, "peak_rss_mb": rss.peak / 2**20,
            **_maxrss_mb()}  # fmt: skip


# ---------------------------------------------------------------------------------------------------- driver
def _run_child(*args: str) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--child", *args], check=True, capture_output=True, text=True, cwd=ROOT
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(ROOT / "docs" / "benchmarks" / "patches.md"))
    ap.add_argument("--big-size", type=int, default=50_000)
    ap.add_argument("--big-spacing", type=int, default=350, help="grid spacing of the synthetic spots (px)")
    ap.add_argument("--tmp", default=None, help="folder for the synthetic zarr (default: a temp dir)")
    ap.add_argument("--child", nargs="*", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        kind, *rest = a.child
        res = {
            "real": lambda: child_real(rest[0], int(rest[1]), float(rest[2])),
            "dask": lambda: child_dask(),
            "big": lambda: child_big(rest[0], int(rest[1]), int(rest[2]), int(rest[3])),
        }[kind]()
        print(json.dumps(res))
        return

    rows = []
    for source, w, cache_mb in [
        ("zarr", 0, 128), ("zarr", 0, 512), ("zarr", 2, 512), ("cache", 0, 512), ("cache", 2, 512), ("jpeg", 0, 0),
        ("jpeg", 2, 0),
    ]:  # fmt: skip
        r = _run_child("real", source, str(w), str(cache_mb))
        print(r, flush=True)
        rows.append(r)
    dask_r = _run_child("dask")
    print(dask_r, flush=True)

    big_rows = []
    with tempfile.TemporaryDirectory(dir=a.tmp) as tmp:
        path = Path(tmp) / "big.zarr"
        t = time.perf_counter()
        make_big(path, a.big_size)
        write_s = time.perf_counter() - t
        disk_mb = sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20
        for w in (0, 2):
            r = _run_child("big", str(path), str(a.big_size), str(w), str(a.big_spacing))
            print(r, flush=True)
            big_rows.append(r)

    import torch

    lines = [
        "## Spot patches (`scst.pp.SpotPatchDataset`)",
        "",
        f"Machine: {os.cpu_count()} CPU cores shared with other jobs (load varied during the run), "
        f"{platform.python_implementation()} {platform.python_version()}, torch {torch.__version__}, CPU only, "
        "`torch.set_num_threads(1)`. Command (repository root):",
        "",
        "```",
        "SCST_DATA_DIR=../shared/data SCST_CACHE_DIR=<cache> python benchmarks/bench_patches.py",
        "```",
        "",
        "### Throughput on her2st C2–C6",
        "",
        f"{rows[0]['n']} spots, 80 µm windows (116 px) → 112 px (antialiased bilinear), ImageNet normalisation, "
        "batch 64, shuffled, persistent workers, two epochs (epoch 1 starts with empty caches). Sources: "
        "*zarr* — scst's path: `SpotPatchDataset(sdata)` reads windows chunk-wise from the zarr image cache "
        "through its bounded LRU cache of decoded chunks (`chunk_cache_mb` in all, default 512 MB, split evenly "
        "among DataLoader workers); "
        "*patch cache* — `extract_patches` once (one pass in chunk order; its time is the 'prep' column), then "
        "`SpotPatchDataset.from_patch_cache` (uint8 patches in memory); "
        "*JPEG* — the naive path: each JPEG decoded whole with Pillow into memory (the 'prep' column), then "
        "numpy crops. 'Epoch 1 incl. prep' = patches / (prep + epoch 1). Peak memory = summed PSS of process + "
        "workers (shared copy-on-write pages counted once), including ≈ 0.65 GB of imports (torch + scverse).",
        "",
        "| source | chunk cache (MB) | workers | epoch 1 (patches/s) | epoch 2 (patches/s) | prep (s) | "
        "epoch 1 incl. prep (patches/s) | peak PSS (MB) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    labels = {"zarr": "zarr", "cache": "patch cache", "jpeg": "JPEG"}
    for r in rows:
        e1, e2 = r["epoch_s"]
        cache = f"{r['cache_mb']:.0f}" if r["source"] != "jpeg" else "–"
        lines.append(
            f"| {labels[r['source']]} | {cache} | {r['workers']} | {r['n'] / e1:.0f} | {r['n'] / e2:.0f} | "
            f"{r['decode_s']:.1f} | {r['n'] / (e1 + r['decode_s']):.0f} | {r['peak_rss_mb']:.0f} |"
        )
    lines += [
        "",
        f"For reference, a dask slice + `compute()` per 116 px window of the spatialdata element (C2, "
        f"{dask_r['n']} spots, no resize): {dask_r['n'] / dask_r['s']:.0f} windows/s — the per-patch path that "
        "`SpotPatchDataset` avoids by reading the zarr array behind the element directly.",
        "",
        "### Peak memory on a 50,000 × 50,000 px image",
        "",
        f"Synthetic RGB zarr image {a.big_size:,} × {a.big_size:,} px (uint8, {3 * a.big_size**2 / 2**30:.1f} GiB "
        f"uncompressed; chunks 3 × 1024 × 1024, zstd level 1, a tiled 128 px H&E texture: {disk_mb:.0f} MB on "
        f"disk, written in {write_s:.0f} s), {big_rows[0]['n']:,} spots on a jittered {a.big_spacing} px grid; all "
        "patches iterated once (80 µm → 112 px, batch 64, shuffled). Goal: peak memory < 2 GB.",
        "",
        "| workers | patches/s | PSS after imports (MB) | peak PSS, process + workers (MB) | ru_maxrss main (MB) |",
        "|---|---|---|---|---|",
    ]
    for r in big_rows:
        lines.append(
            f"| {r['workers']} | {r['n'] / r['s']:.0f} | {r['baseline_mb']:.0f} | {r['peak_rss_mb']:.0f} | "
            f"{r['ru_maxrss_self_mb']:.0f} |"
        )
    lines += [
        "",
        "Memory stays bounded because windows are read chunk by chunk and the decoded-chunk cache holds at most "
        "`chunk_cache_mb` (default 512 MB) in all, split evenly among the workers; the image itself is never "
        "loaded. The JPEG path holds every decoded image (≈ 276 MB per her2st section) in memory, which does not "
        "scale to whole-slide images.",
        "",
        "Reading: a chunk-cache miss costs one zarr chunk decode (3 × 1024 × 1024 px, ~7–10 ms here, of which "
        "~3 ms is zstd and the rest zarr's async machinery). With shuffled spots from five images a 128 MB cache "
        "(~40 chunks) thrashes and epochs run at chunk-decode speed; 512 MB holds the tissue chunks of all five "
        "sections (~150 chunks), so each chunk is decoded "
        "about once. Each worker gets only its share of the budget, so with workers the cache can thrash again; "
        "for multi-epoch training a patch cache (`extract_patches` once, in chunk order, then "
        "`from_patch_cache`) reaches in-memory speed without decoding whole images. Inference in "
        "`locality_order()` decodes each chunk about once. On this shared 2-core machine workers pay off only "
        "where reading dominates (the 50k image); for in-memory sources, moving batches between processes costs "
        "more than the work.",
        "",
    ]
    from scst._utils import _atomic_file

    raw = ROOT / "benchmarks" / "results" / "patches" / "results.json"
    raw.parent.mkdir(parents=True, exist_ok=True)
    with _atomic_file(raw) as tmp:
        tmp.write_text(json.dumps({"real": rows, "dask": dask_r, "big": big_rows, "big_size": a.big_size}, indent=1))
    lines += ["Raw results: `benchmarks/results/patches/results.json`.", ""]
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with _atomic_file(out) as tmp:
        tmp.write_text("\n".join(lines))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
