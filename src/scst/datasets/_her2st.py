"""HER2-positive breast cancer Spatial Transcriptomics (Andersson et al. 2021): 36 sections of 8 patients."""

from __future__ import annotations

import os
from collections.abc import Sequence

import pandas as pd
from spatialdata import SpatialData

from .._constants import TABLE_KEY
from ..io import concatenate_sections, read_st
from ._fetch import REGISTRY, fetch

__all__ = ["her2st", "HER2ST_SECTIONS", "HER2ST_ALL_SECTIONS"]

#: The five sections of patient C copied to ``../shared/data/her2st`` (the default).
HER2ST_SECTIONS = ("C2", "C3", "C4", "C5", "C6")
#: All sections of the upstream repository: A1–A6, B1–B6, C1–C6, D1–D6, E1–E3, F1–F3, G1–G3, H1–H3.
HER2ST_ALL_SECTIONS = tuple(sorted({k.split("/")[0] for k in REGISTRY["her2st"]}))
# res/ST-cluster/motivation.csv of the source repository, patient C.
HER2ST_LABEL_NAMES = {
    0: "immune (B/plasma)", 1: "immune (B/plasma)", 2: "cancer 1", 3: "cancer 2", 4: "cancer 3",
    5: "immune (APC)", 6: "unknown",
}  # fmt: skip
#: ST array geometry (µm): spots are 100 µm wide and 200 µm apart; 0.69 µm/px at full resolution.
ST_SPOT_DIAMETER_UM = 100.0
ST_GRID_STEP_UM = 200.0


def her2st(
    sections: Sequence[str] | str | None = None,
    path: str | os.PathLike | None = None,
    *,
    images: bool = True,
    join: str = "inner",
    cache_dir: str | os.PathLike | None = None,
) -> SpatialData:
    """HER2+ breast cancer ST sections (36 sections of 8 patients) with H&E and cluster labels.

    Files are taken from ``path`` or ``$SCST_DATA_DIR/her2st`` (layout ``<S>/counts.tsv.gz``,
    ``<S>/spots.tsv``, ``<S>/he.jpg``, ``<S>/clusters.tsv.gz``), else downloaded from the public
    repository (almaan/her2st at commit 85df741) with pooch. Every file is verified: C2–C6 against known
    SHA-256 hashes, the other sections against the upstream git blob ids (``her2st_upstream_blobs.tsv``); a
    local file that fails is an error, a downloaded one is fetched again once, then refused.

    Only C2–C6 are in ``../shared/data/her2st`` on the project's machines (which cannot download); the other
    31 sections need internet access, or a local folder with the layout above holding the upstream files.
    Patient A's upstream images are the repository's ``*_HE_small.jpg`` (lower resolution: µm/px is derived
    from the spot grid, as always).

    Parameters
    ----------
    sections
        Section names among :data:`HER2ST_ALL_SECTIONS` (``A1``–``H3``), or ``"all"`` for all 36; default the
        five sections ``C2``–``C6``.
    path
        Local folder with the layout above.
    images
        Read the H&E images (converted once to a zarr cache, then opened lazily). ``False`` gives counts and
        spot shapes only.
    join
        Gene alignment across sections: ``"inner"`` (default; 14,382 genes common to C2–C6) or ``"outer"``.
    cache_dir
        Folder for the zarr image cache.

    Returns
    -------
    SpatialData as documented in :func:`scst.io.read_st`, sections combined with
    :func:`scst.io.concatenate_sections`. The table also has ``obs["label"]`` (the data paper's
    per-patient expression cluster, categorical; NaN for the 1–2 unlabelled spots per section) and
    ``obs["label_name"]`` (patient C's cluster names; ``"cluster <k>"`` for the other patients, whose names
    were not transcribed). Geometry: 0.69 µm/px (≈ 290 px per 200 µm grid step), spot diameter ≈ 145 px: the nominal
    100 µm at that pixel size (the shapes' circles). The printed spots measure 138–144 px in the images (the data
    README's direct measurement, which recommends ≈ 140 px); patches and features are cut by µm, not by this
    diameter.
    """
    if sections is None:
        sections = list(HER2ST_SECTIONS)
    elif isinstance(sections, str):
        sections = list(HER2ST_ALL_SECTIONS) if sections == "all" else [sections]
    sections = list(sections)
    if not sections:
        raise ValueError(f"sections: expected at least one section of {list(HER2ST_ALL_SECTIONS)} or 'all', got [].")
    unknown = [s for s in sections if s not in HER2ST_ALL_SECTIONS]
    if unknown:
        raise ValueError(
            f"sections: unknown section(s) {unknown}; expected some of {list(HER2ST_ALL_SECTIONS)} or 'all'."
        )
    if len(set(sections)) != len(sections):
        raise ValueError(f"sections: duplicates in {list(sections)}.")
    if join not in ("inner", "outer"):  # before any section is read (and its image converted)
        raise ValueError(f"join: expected 'inner' or 'outer', got {join!r}.")
    parts = []
    for s in sections:
        sd = read_st(
            fetch("her2st", f"{s}/counts.tsv.gz", path),
            fetch("her2st", f"{s}/spots.tsv", path),
            fetch("her2st", f"{s}/he.jpg", path) if images else None,
            sample=s,
            spot_diameter_um=ST_SPOT_DIAMETER_UM,
            grid_step_um=ST_GRID_STEP_UM,
            cache_dir=cache_dir,
        )
        _add_labels(sd, s, fetch("her2st", f"{s}/clusters.tsv.gz", path))
        parts.append(sd)
    return parts[0] if len(parts) == 1 else concatenate_sections(parts, join=join)


def _add_labels(sd: SpatialData, section: str, clusters_file) -> None:
    lab = pd.read_csv(clusters_file, sep="\t", index_col=0)
    lab = lab[lab["ids"] == section]
    key = pd.Index([f"{x}x{y}" for x, y in zip(lab["x"], lab["y"])])
    labels = pd.Series(lab["label"].to_numpy(), index=key)
    t = sd.tables[TABLE_KEY]
    values = labels.reindex(t.obs["spot_id"].astype(str)).to_numpy()
    t.obs["label"] = pd.Categorical(values, categories=sorted(labels.unique()))
    names = HER2ST_LABEL_NAMES if section.startswith("C") else {k: f"cluster {k}" for k in labels.unique()}
    t.obs["label_name"] = pd.Categorical(pd.Series(values).map(names).to_numpy())
