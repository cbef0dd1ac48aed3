"""The label chance of the multimodal page per test section, as ``tl.retrieve`` computes it now.

``tl.retrieve`` reports the top-1 label accuracy of a random ranking, ``Σ_g p_query(g) p_target(g)``. Until
2026-12-03 the target frequencies were taken over the *labelled* targets only, while the accuracy counts an
unlabelled retrieved target as a miss; 1–2 spots per her2st section have no cluster label, so that chance was
slightly high. This script gives both values for each section's patches (queries) and RNA samples (targets; on these
paired data both are the section's spots) from the loader's labels, with the product's own function. Run from the
repository root (no training; seconds)::

    python benchmarks/multimodal_chance.py   # → benchmarks/results/multimodal/label_chance.json
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

import scst
from scst.tl._multimodal import _chance  # behind scst.tl.retrieve's uns["scst_retrieval"]["chance"]

OUT = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "multimodal" / "label_chance.json"


def main() -> None:
    obs = scst.datasets.her2st().tables["table"].obs
    rows = []
    for s in ["C2", "C3", "C4", "C5", "C6"]:
        lab = obs.loc[obs["section"] == s, "label"]
        known = lab.dropna().astype(str)
        before = float((known.value_counts(normalize=True) ** 2).sum())  # target frequencies over labelled spots
        rows.append({"section": s, "n_spots": len(lab), "n_unlabelled": int(lab.isna().sum()),
                     "chance_sum_p2": _chance(lab, lab), "chance_before_2026_12_03": before})  # fmt: skip
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(rows, indent=1) + "\n")
    print(pd.DataFrame(rows).to_string(index=False, float_format="%.4f"))


if __name__ == "__main__":
    main()
