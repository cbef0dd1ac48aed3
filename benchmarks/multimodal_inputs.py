"""Fingerprint of the multimodal benchmark's inputs under one version of the code.

The shipped multimodal setting rerun on 2026-12-04 no longer reproduced its 2026-12-02 training histories. This
script records what the benchmark reads before any training — per section the µm/px the loader derives, the window
width in pixels of each multi-scale feature scale (``round(size_um / um_per_px)``, as ``pp.SpotPatchDataset``) and
a SHA-256 of each section × scale block of the hand-crafted features (``tl.embed_patches``, as
``bench_multimodal.multiscale``) — so that two versions of the code can be compared input by input. No training;
about a minute. Run from the repository root, once per version (the older one from a worktree)::

    python benchmarks/multimodal_inputs.py --out benchmarks/results/multimodal/rerun_2026-12-04/inputs_9c7bd01.json
    git worktree add /tmp/wt_old 5b6d4a3
    PYTHONPATH=/tmp/wt_old/src python benchmarks/multimodal_inputs.py \\
        --out benchmarks/results/multimodal/rerun_2026-12-04/inputs_5b6d4a3.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import tempfile
from pathlib import Path

import numpy as np

import scst

SECTIONS = ("C2", "C3", "C4", "C5", "C6")
SCALES_MS = (80.0, 160.0, 320.0)  # bench_multimodal.SCALES_MS


def fingerprint() -> dict:
    sdata = scst.datasets.her2st(sections=list(SECTIONS))
    tab = sdata.tables["table"]
    geometry = tab.uns["scst"]["sections"]
    scst.tl.embed_patches(sdata, "handcrafted", size_um=list(SCALES_MS), out_px=112, progress=False,
                          key_added="X_hc_ms")  # fmt: skip
    feats = np.asarray(tab.obsm["X_hc_ms"], dtype=np.float32)
    width = feats.shape[1] // len(SCALES_MS)
    out = {"scst": scst.__file__, "scales_um": list(SCALES_MS), "sections": {}}
    for s in SECTIONS:
        rows = np.flatnonzero(tab.obs["section"].to_numpy() == s)
        um = float(geometry[s]["um_per_px"])
        out["sections"][s] = {
            "n_spots": int(rows.size),
            "um_per_px": um,
            "window_px": [int(round(size / um)) for size in SCALES_MS],
            "sha256": [
                hashlib.sha256(np.ascontiguousarray(feats[rows, k * width : (k + 1) * width]).tobytes()).hexdigest()
                for k in range(len(SCALES_MS))
            ],
        }
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args()
    result = fingerprint()
    text = json.dumps(result, indent=1) + "\n"
    # temp file, then rename; not scst._utils._atomic_file: the older code this runs under does not have it
    a.out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=a.out.parent, suffix=".tmp")
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, a.out)
    for s, r in result["sections"].items():
        print(s, f"{r['um_per_px']:.7f} µm/px", "windows", r["window_px"], "features", [h[:10] for h in r["sha256"]])


if __name__ == "__main__":
    main()
