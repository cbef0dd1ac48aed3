"""``bench_multimodal.py`` with the her2st pixel sizes pinned to those of an earlier loader.

Why: the shipped multimodal setting rerun on 2026-12-04 no longer reproduced its 2026-12-02 training histories, and
``multimodal_inputs.py`` showed one input that differs between the two versions of the code: the loader's µm/px
(``read_st`` fits it to the spot grid since 1ec4882), which moves C2's 320 µm window from 465 to 464 px. This script
runs the current benchmark with every section's ``um_per_px`` (and spot diameter in px) replaced by the values in an
inputs file of the older code, then compares the training histories with a recorded result: if they agree to float
round-off, the pixel size is the whole difference. Run from the repository root::

    python benchmarks/multimodal_pinned_geometry.py \\
        --inputs benchmarks/results/multimodal/rerun_2026-12-04/inputs_5b6d4a3.json \\
        --compare benchmarks/results/multimodal/C5_handcrafted_ms_mlp_scaled_rna_pcs10_ens3_on_C2C3C4C5.json \\
        --test C5 --sections C2,C3,C4,C5 --variants handcrafted_ms_mlp_scaled_rna_pcs10 --ensemble 3 --seed 0 \\
        --out benchmarks/results/multimodal/rerun_2026-12-04/cause

Every argument after ``--inputs`` and ``--compare`` goes to ``bench_multimodal.py``.
"""

from __future__ import annotations

import argparse
import json
import math
import runpy
import sys
from pathlib import Path

import scst
from scst._utils import _atomic_file

BENCH = Path(__file__).resolve().parent / "bench_multimodal.py"


def _numbers(history) -> list[float]:
    """The numeric history entries of every model of an ensemble, in order (NaN for stages a loss is not in)."""
    models = history if isinstance(history[0], list) else [history]
    return [float(v) for rows in models for row in rows for v in row.values() if isinstance(v, (int, float))]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--inputs", type=Path, required=True, help="multimodal_inputs.py result of the older code")
    p.add_argument("--compare", type=Path, required=True, help="a result file of the older code's run")
    a, bench_args = p.parse_known_args()
    pinned = json.loads(a.inputs.read_text())["sections"]
    her2st = scst.datasets.her2st

    def her2st_pinned(*args, **kwargs):
        sdata = her2st(*args, **kwargs)
        for s, g in sdata.tables["table"].uns["scst"]["sections"].items():
            g["um_per_px"] = pinned[s]["um_per_px"]
            g["spot_diameter_px"] = g["spot_diameter_um"] / pinned[s]["um_per_px"]
        return sdata

    scst.datasets.her2st = her2st_pinned  # bench_multimodal looks it up at call time
    original_argv = list(sys.argv)
    sys.argv = [sys.argv[0], *bench_args]
    runpy.run_path(str(BENCH), run_name="__main__")

    out = BENCH.parent / "results" / "multimodal"  # bench_multimodal's default --out
    if "--out" in bench_args:
        out = Path(bench_args[bench_args.index("--out") + 1])
    result = out / a.compare.name
    new = json.loads(result.read_text())
    # runpy put bench_multimodal.py into sys.argv[0]: record the command that ran, and what was pinned
    new["command"] = " ".join(["python", *original_argv])
    new["pinned_um_per_px"] = {s: g["um_per_px"] for s, g in pinned.items()}
    x, y = _numbers(json.loads(a.compare.read_text())["history"]), _numbers(new["history"])
    if len(x) != len(y):
        diff = None
        print(f"histories differ in length: {len(x)} against {len(y)} entries")
    else:
        # a loss present in one run and NaN (not in that stage) in the other is a difference, not round-off
        diff = max((0.0 if math.isnan(u) and math.isnan(v) else abs(u - v) for u, v in zip(x, y)), default=0.0)
        diff = math.inf if math.isnan(diff) or any(math.isnan(u) != math.isnan(v) for u, v in zip(x, y)) else diff
        print(f"{len(x)} history entries; largest difference from {a.compare.name}: {diff:.3g}")
    new["history_max_abs_difference"] = {"compared_with": str(a.compare), "value": diff}
    with _atomic_file(result) as tmp:
        tmp.write_text(json.dumps(new, indent=1, default=float))


if __name__ == "__main__":
    main()
