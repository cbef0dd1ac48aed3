"""torch.compile on CPU for HGGEP's per-spot encoder (a route tried for issue 12's whole-slide goal; not shipped).

Times ``HGGEPModule.encode_patches`` — GEM, the ShuffleNetV2 x0.5 backbone and the stage projections: the part of
prediction that runs once per spot — at ``bench_config`` size (``HGGEP_BENCH["cpu_small"]``, 112 px patches,
batches of 96), random weights, eval mode, ``torch.inference_mode``. Arms, each in a fresh subprocess so no
compiled code or cache in memory carries over (inductor's on-disk cache is left as it is; the compile time of the
first arm that compiles includes building its C++ kernels):

- ``eager``: the default memory layout;
- ``eager channels-last``: input and 4-D weights channels-last (what ``predict`` does since 2026-12-02);
- ``compiled``: ``torch.compile(module.encode_patches)`` (inductor, default mode), default layout;
- ``compiled channels-last``.

Per arm: the first call's seconds (compile + run), then the median of ``--reps`` calls. Run from the repository
root (writes ``benchmarks/results/scale/compile_cpu.json``)::

    python benchmarks/bench_compile_cpu.py --threads 1
    python benchmarks/bench_compile_cpu.py --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from _page import cpu_name

ROOT = Path(__file__).resolve().parents[1]
RAW = ROOT / "benchmarks" / "results" / "scale" / "compile_cpu.json"
ARMS = ("eager", "eager channels-last", "compiled", "compiled channels-last")


def _one(arm: str, threads: int, reps: int, batch: int) -> dict:
    """Run in the subprocess: time one arm."""
    import torch

    from scst.nn import HGGEP_BENCH, HGGEPModule

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    module = HGGEPModule(50, **HGGEP_BENCH["cpu_small"]["config"]).eval()
    x = torch.rand(batch, 3, HGGEP_BENCH["cpu_small"]["patch_px"], HGGEP_BENCH["cpu_small"]["patch_px"])
    if arm.endswith("channels-last"):
        module = module.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    fn = torch.compile(module.encode_patches) if arm.startswith("compiled") else module.encode_patches
    with torch.inference_mode():
        t0 = time.perf_counter()
        ref = fn(x)
        first = time.perf_counter() - t0
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            fn(x)
            times.append(time.perf_counter() - t0)
        uncompiled = module.encode_patches(x)  # same layout, not compiled
    median = sorted(times)[len(times) // 2]
    return {
        "arm": arm, "threads": threads, "batch": batch, "first_call_s": first, "median_s": median,
        "spots_per_s": batch / median, "max_abs_diff_vs_uncompiled": float((ref - uncompiled).abs().max()),
        "torch": torch.__version__, "cpu": cpu_name(), "load": os.getloadavg(),
    }  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--batch", type=int, default=96)
    p.add_argument("--arm", help=argparse.SUPPRESS)  # internal: run one arm in this process
    args = p.parse_args()
    if args.arm:
        print(json.dumps(_one(args.arm, args.threads, args.reps, args.batch)))
        return
    rows = json.loads(RAW.read_text()) if RAW.is_file() else []
    command = f"python benchmarks/bench_compile_cpu.py --threads {args.threads}"
    for arm in ARMS:
        cmd = [sys.executable, __file__, "--arm", arm, "--threads", str(args.threads), "--reps", str(args.reps),
               "--batch", str(args.batch)]  # fmt: skip
        out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT).stdout
        row = {**json.loads(out.strip().splitlines()[-1]), "command": command}
        print(json.dumps(row))
        rows.append(row)
    RAW.parent.mkdir(parents=True, exist_ok=True)
    tmp = RAW.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(rows, indent=1))
    tmp.replace(RAW)


if __name__ == "__main__":
    main()
