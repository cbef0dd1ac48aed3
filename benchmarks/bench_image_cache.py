"""Peak memory of converting a large JPEG to scst's zarr image cache (strip-wise) and of opening a WSI lazily.

A synthetic H&E-like JPEG (libvips Perlin/Worley texture, written strip by strip, never held in memory) of
``--size`` × ``--size`` px is converted with :func:`scst.io.cached_image` in a fresh process; the peak resident
set size (``ru_maxrss``) of that process is compared with the same process that only imports scst. Raw numbers go
to ``benchmarks/results/image_cache/``, the page to ``docs/benchmarks/image_cache.md``.

    python benchmarks/bench_image_cache.py --size 20000
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _page import write_page

ROOT = Path(__file__).resolve().parents[1]
CHILD = """
import json, resource, sys, time
import scst.io
from scst.io._image import cached_image
t = time.perf_counter()
if sys.argv[1] != "-":
    el = cached_image(sys.argv[1], "S", cache=sys.argv[2])
    shape = list(el["scale0"]["image"].shape)
else:
    shape = None
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"seconds": time.perf_counter() - t, "peak_rss_mb": rss, "shape": shape}))
"""


def _child(*args: str) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", CHILD, *args], capture_output=True, text=True, env=env, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    import pyvips

    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=20000)
    ap.add_argument("--page-only", action="store_true", help="rewrite the page from the saved results")
    args = ap.parse_args()
    if args.page_only:
        write_page_from_results(ROOT / "benchmarks" / "results" / "image_cache")
        return
    n = args.size
    load0 = os.getloadavg()
    with tempfile.TemporaryDirectory() as d:
        jpg = Path(d) / "big.jpg"
        t = time.perf_counter()
        p = pyvips.Image.perlin(n, n, cell_size=128, uchar=True)
        q = pyvips.Image.worley(n, n, cell_size=200).cast("uchar")
        p.bandjoin([(p * 0.6 + 60).cast("uchar"), q]).write_to_file(str(jpg), Q=85)
        t_make = time.perf_counter() - t
        base = _child("-", "-")
        conv = _child(str(jpg), str(Path(d) / "cache"))
        store = next((Path(d) / "cache").iterdir())
        cache_mb = sum(f.stat().st_size for f in store.rglob("*") if f.is_file()) / 2**20
        raw = {"size_px": n, "jpeg_mb": jpg.stat().st_size / 2**20, "rgb_decoded_mb": 3 * n * n / 2**20,
               "make_seconds": t_make, "import_only": base, "convert": conv, "cache_mb": cache_mb}  # fmt: skip
    raw["load_average"] = [load0[0], os.getloadavg()[0]]
    res = ROOT / "benchmarks" / "results" / "image_cache"
    res.mkdir(parents=True, exist_ok=True)
    (res / f"convert_{n}.json").write_text(json.dumps(raw, indent=1))
    print(json.dumps(raw, indent=1))
    write_page_from_results(res)


def write_page_from_results(res: Path) -> None:
    """docs/benchmarks/image_cache.md from every ``convert_<size>.json`` in ``res``."""
    rows = sorted((json.loads(f.read_text()) for f in res.glob("convert_*.json")), key=lambda r: r["size_px"])
    lines = [
        "# Image cache: JPEG → multiscale zarr in strips",
        "",
        "`scst.io.cached_image` (used by `read_st` and `datasets.her2st`) decodes JPEG/PNG top to bottom with libvips",
        "(sequential access) and TIFF/SVS/NDPI through tifffile's zarr view, 1024 rows at a time, into a",
        "full-resolution zarr array; the pyramid (1/2 … 1/16) is then written from that array by dask chunk by chunk.",
        "Before, the whole image was decoded into memory first (at least the decoded RGB column below).",
        "Synthetic H&E-like JPEG (libvips Perlin + Worley texture, quality 85), written strip by strip; peak RSS",
        "(`ru_maxrss`) of a fresh process that converts it, next to one that only imports scst.",
        "",
        "| image (px) | JPEG (MB) | decoded RGB (MB) | import only: peak RSS (MB) | conversion: peak RSS (MB) | "
        "conversion (s) | cache (MB) | 1-min load before / after |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        la = r.get("load_average")
        lines.append(
            f"| {r['size_px']:,} × {r['size_px']:,} | {r['jpeg_mb']:.0f} | {r['rgb_decoded_mb']:,.0f} | "
            f"{r['import_only']['peak_rss_mb']:.0f} | {r['convert']['peak_rss_mb']:.0f} | "
            f"{r['convert']['seconds']:.0f} | {r['cache_mb']:,.0f} | "
            + (f"{la[0]:.1f} / {la[1]:.1f} |" if la else "not recorded |")
        )
    lines += [f"\n{r['size_px']:,} px: {r['note']}." for r in rows if r.get("note")]
    lines += [
        "",
        "Goal of issue 12: peak RSS < 2 GB on a 60k × 60k px image. 2 CPU cores shared with other jobs during the",
        "runs (timings are upper bounds); raw numbers in `benchmarks/results/image_cache/`.",
    ]
    sizes = " ".join(str(r["size_px"]) for r in rows)
    cmd = f"for n in {sizes}; do python benchmarks/bench_image_cache.py --size $n; done"
    write_page(ROOT / "docs" / "benchmarks" / "image_cache.md", lines, cmd)


if __name__ == "__main__":
    main()
