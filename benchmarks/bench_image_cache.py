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
    args = ap.parse_args()
    n = args.size
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
    res = ROOT / "benchmarks" / "results" / "image_cache"
    res.mkdir(parents=True, exist_ok=True)
    (res / f"convert_{n}.json").write_text(json.dumps(raw, indent=1))
    print(json.dumps(raw, indent=1))


if __name__ == "__main__":
    main()
