"""Find data files locally or download the public originals with pooch, always against a known hash.

Resolution order for ``fetch(dataset, relpath, path=None)``:

1. ``path`` (a folder laid out like ``../shared/data/<dataset>``), if given;
2. ``$SCST_DATA_DIR/<dataset>``, if the variable is set;
3. the download cache ``$SCST_CACHE_DIR/data/<dataset>`` (default: ``pooch.os_cache("scst")``), filled on
   demand from the upstream URL in the registry below.

Every file is checked against a known hash: its SHA-256, or for the her2st sections not copied to
``../shared/data`` the git blob id of the upstream file (SHA-1 of ``"blob <size>"``, a NUL byte and the content, as
``git hash-object`` computes it; table ``her2st_upstream_blobs.tsv`` beside this module). A file without a known
hash is never downloaded; a downloaded or cached file that fails its check is deleted, fetched once more, and
refused with an error if it fails again.
"""

from __future__ import annotations

import csv
import hashlib
import os
from functools import cache
from pathlib import Path

import pooch

from .._logging import logg
from .._utils import cache_dir

_GH = "https://raw.githubusercontent.com"
_HER2ST = f"{_GH}/almaan/her2st/85df7411b987a7dec3feff9718b869a7a82091ec"
_DRIESLAB = f"{_GH}/drieslab/spatial-datasets/12a495fe6b2394a703f570615b3470d3b3d2bec8"
_GCNG = f"{_GH}/xiaoyeye/GCNG/2fba06bac64e97744a9a8d2a1505aa5c2117730c"
_HER2ST_IMAGES = {"C2": "5714_HE_BT_C2", "C3": "5714_HE_BT_D1", "C4": "5714_HE_BT_D2", "C5": "5714_HE_BT_E1",
                  "C6": "5714_HE_BT_E2"}  # fmt: skip

# (sha256, upstream URL or None). Hashes equal ../shared/data/<dataset>/SHA256SUMS (byte-identical copies).
REGISTRY: dict[str, dict[str, tuple[str, str | None]]] = {
    "her2st": {
        "C2/clusters.tsv.gz": ("3211500325b1be1cd2be7480f2b094a48647fc25df4d8fe6afb8c48c15650ece", None),
        "C2/counts.tsv.gz": ("c1c59ea6cffae36b9ecb561b8e2a97e3aa5f4085f748e991a0e330ed9d09773d", None),
        "C2/he.jpg": ("26e2f73ae840cdd46c5bba405aae181f13a56a376b9848dff23f7a9c5de7f19e", None),
        "C2/spots.tsv": ("235b5f4306b3b57c628ffc82c98c7109602474fbcc79a917b9c50517f99b6b1c", None),
        "C3/clusters.tsv.gz": ("a1522a14855bc2022ccbb9ea9cbae59837cbcd310bc4c02727ae6bfa37e6d369", None),
        "C3/counts.tsv.gz": ("e00c55a3eb9caac5d9c71b8906aae8be8b38f93e23938f4a0ebee17683ef6a2a", None),
        "C3/he.jpg": ("0005a92674014d473040a28f0afca89ce5fa5c44019b479b638ceb3272ceb568", None),
        "C3/spots.tsv": ("7fd76c13370b7804ac3bb377b846d22485cf9223f9dd8dfc25be06e5aaf65755", None),
        "C4/clusters.tsv.gz": ("a5cc7a3a40983a21ea8400145c80a7dc5b13e7468b987ec0610f4c2123978c71", None),
        "C4/counts.tsv.gz": ("33201f76d41d7131dc600a0f87d9a70383af3503e81698b4d11e6f2e8d73e9da", None),
        "C4/he.jpg": ("f40607eb1d5f0d125decd71c48b0c5d29cf6776ad92297fd185631208c82d6f2", None),
        "C4/spots.tsv": ("47e79f3b9dbfa3a8c18af9e948ba7ba4bf0a75ea1b4c292bc714ced7d0917d4c", None),
        "C5/clusters.tsv.gz": ("5929e9183e09717891fce94a71ec94551a86d5267ebb085067ac1d71894bc4ea", None),
        "C5/counts.tsv.gz": ("c0f310315ca6110d74dbdf7011e5b42432ba0b8eb5f001824764911988f39338", None),
        "C5/he.jpg": ("34028ea41e376396b50c42b0a11a7e689c85be4a8022e668d0a09cc128c04c65", None),
        "C5/spots.tsv": ("2114cc3b4da759772112897f1e247d5443c9f8c808e6a9a952eb4fda379a194c", None),
        "C6/clusters.tsv.gz": ("bc1234a7a05073a65017f7c0c101547ae2d3c9aa37b895a27dafd9c33842f9d2", None),
        "C6/counts.tsv.gz": ("60478b0d2411501866685f41312c65c6591e499d64d5b719be8ee9bab25c9bc8", None),
        "C6/he.jpg": ("dddd87232589648861a9b6776dc1749be8306213f6589aeef0e805fb2b1ee263", None),
        "C6/spots.tsv": ("efdbbc6759c6af43baa966505c31705f09c087c1dccf1ea3e0d1db7b55717117", None),
    },
    "seqfish_cortex": {
        "original/cortex_annotation.txt": (
            "6b1880de268575bef63dac55bcd5ce0a3f04e7cf3d2b944c29ff751e0a04d61b",
            f"{_GCNG}/seqfish_plus/cortex_annotation.txt",
        ),
        # Member of the Cai lab's celltype_annotations.zip; the zip's own hash is not known, so local only.
        "original/cortex_svz_cell_type_annotations.csv": (
            "4cb55cb3999aea0d58432effb83ff3a54c8495cd9e07c2be19c674e8e1121680",
            None,
        ),
        "original/cortex_svz_cellcentroids.csv": (
            "df6a9dcee35f8946aaec9cbc6df8873fe24dcf5e1098c7615bc825b8a5e95112",
            f"{_GCNG}/seqfish_plus/cortex_svz_cellcentroids.csv",
        ),
        "original/seqfish_field_expr.txt.gz": (
            "6ce2e2c7c709bb1154e36d0b98f8f4abe63e7092fa05ca83f35222076a5fff71",
            f"{_DRIESLAB}/data/2022_miniseqFISH/seqfish_field_expr.txt.gz",
        ),
        "original/seqfish_field_locs.txt": (
            "5ad2c52f50fbb016be41c9472204a7473ccd0b979570abeea3ae7aa8f029b7a5",
            f"{_DRIESLAB}/data/2022_miniseqFISH/seqfish_field_locs.txt",
        ),
    },
    "ligand_receptor": {
        "gcng_ligand_receptor_pairs2.txt": (
            "b80b52279602a372c3b48efb0017a7f1d56b5ea57a82b6667a0b514a83c3698e",
            f"{_GCNG}/LR_database/ligand_receptor_pairs2.txt",
        ),
        "gcng_ligand_list2.txt": (
            "fc931cffd2584a1c5c4ca776d688360cc1ac93a07540b19fec0e47be89b83196",
            f"{_GCNG}/LR_database/ligand_list2.txt",
        ),
        "gcng_receptor_list2.txt": (
            "0d60e4f59c1e731f2762b9808b18177a71cd4706ef43614a38d5bea39ecac4eb",
            f"{_GCNG}/LR_database/receptor_list2.txt",
        ),
        "giotto_mouse_ligand_receptors.txt": (
            "0f041a73a43b0857d5c8251edef8c605c109c9fa01e5a8b891f2b05b43131486",
            f"{_DRIESLAB}/data/2022_miniseqFISH/mouse_ligand_receptors.txt",
        ),
        "ramilowski2015_PairsLigRec_human.txt": (
            "813c83942d55de5f44463d7d8569a4ef72409b94501c52d1afad58e6dadd21d9",
            f"{_DRIESLAB}/data/2020_ST_SCC/PairsLigRec.txt",
        ),
        # Filtered from liana's omni_resource.csv (resource == "consensus"/"mouseconsensus"): no upstream file
        # has these bytes, so they are local only; without them use liana itself (see ligand_receptor()).
        "liana_consensus.csv": ("64de12088808a36fafa8a4566693676ccc4a5040775a0d6b17a744a1a2c69ccd", None),
        "liana_mouseconsensus.csv": ("d1ff849b54722e8aa665dcdd614a783f9ecc110b98326c3e10ded314138fccdc", None),
    },
}
for _s, _stem in _HER2ST_IMAGES.items():
    _reg = REGISTRY["her2st"]
    _reg[f"{_s}/counts.tsv.gz"] = (_reg[f"{_s}/counts.tsv.gz"][0], f"{_HER2ST}/data/ST-cnts/{_s}.tsv.gz")
    _reg[f"{_s}/spots.tsv"] = (_reg[f"{_s}/spots.tsv"][0], f"{_HER2ST}/data/ST-spotfiles/{_s}_selection.tsv")
    _reg[f"{_s}/clusters.tsv.gz"] = (
        _reg[f"{_s}/clusters.tsv.gz"][0],
        f"{_HER2ST}/res/ST-cluster/lbl/{_s}-cluster-annotation.tsv.gz",
    )
    _reg[f"{_s}/he.jpg"] = (_reg[f"{_s}/he.jpg"][0], f"{_HER2ST}/data/ST-imgs/C/{_s}/{_stem}.jpg")


#: Prefix of registry hashes that are git blob ids (SHA-1 of "blob <size>", NUL, content) instead of SHA-256.
GITBLOB = "gitblob:"
_BLOBS_TSV = Path(__file__).with_name("her2st_upstream_blobs.tsv")


def _her2st_upstream() -> dict[str, tuple[str, str]]:
    """``{"<S>/<file>": ("gitblob:<sha1>", url)}`` for all 36 sections of the upstream repository."""
    out = {}
    with _BLOBS_TSV.open() as fh:
        for row in csv.DictReader(fh, delimiter="\t"):
            parts = row["path"].split("/")
            if row["path"].startswith("data/ST-cnts/"):
                rel = f"{parts[-1].removesuffix('.tsv.gz')}/counts.tsv.gz"
            elif row["path"].startswith("data/ST-spotfiles/"):
                rel = f"{parts[-1].removesuffix('_selection.tsv')}/spots.tsv"
            elif row["path"].startswith("res/ST-cluster/lbl/"):
                rel = f"{parts[-1].removesuffix('-cluster-annotation.tsv.gz')}/clusters.tsv.gz"
            elif row["path"].startswith("data/ST-imgs/"):
                rel = f"{parts[-2]}/he.jpg"
            else:
                continue
            out[rel] = (GITBLOB + row["git_blob_sha1"], f"{_HER2ST}/{row['path']}")
    return out


for _rel, _entry in _her2st_upstream().items():
    REGISTRY["her2st"].setdefault(_rel, _entry)  # C2-C6 keep their SHA-256 (checked against ../shared/data)


def git_blob_sha1(path: str | os.PathLike) -> str:
    """Git blob id of a file: SHA-1 of ``"blob <size>"``, a NUL byte and the content (``git hash-object``)."""
    path = Path(path)
    h = hashlib.sha1(f"blob {path.stat().st_size}\0".encode())  # noqa: S324 - git's id, not for security
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def data_dir(dataset: str, path: str | os.PathLike | None = None) -> Path | None:
    """Local folder of ``dataset``: ``path``, else ``$SCST_DATA_DIR/<dataset>``, else ``None``."""
    if path is not None:
        return Path(path)
    env = os.environ.get("SCST_DATA_DIR")
    return Path(env) / dataset if env else None


@cache
def _verified(path: str, size: int, mtime_ns: int, known: str) -> bool:
    # Memoised on (size, mtime): hashing a 90 MB image once per process is enough.
    if known.startswith(GITBLOB):
        return git_blob_sha1(path) == known.removeprefix(GITBLOB)
    return pooch.file_hash(path, alg="sha256") == known


def _check(f: Path, known: str) -> bool:
    st = f.stat()
    return _verified(str(f.resolve()), st.st_size, st.st_mtime_ns, known)


def _describe(known: str) -> str:
    return f"git blob id {known.removeprefix(GITBLOB)}" if known.startswith(GITBLOB) else f"sha256 {known}"


def fetch(dataset: str, relpath: str, path: str | os.PathLike | None = None) -> Path:
    """Return a verified local path to ``relpath`` of ``dataset``, downloading it if needed.

    Parameters
    ----------
    dataset
        Key of :data:`REGISTRY` (``"her2st"``, ``"seqfish_cortex"``, ``"ligand_receptor"``).
    relpath
        File inside the data set's folder, e.g. ``"C2/he.jpg"``.
    path
        Local folder with the data set's layout; overrides ``$SCST_DATA_DIR``.

    Raises
    ------
    KeyError
        Unknown data set or file.
    ValueError
        A local file whose hash differs from the registry, or a download that fails its check twice.
    FileNotFoundError
        The file is not local and has no upstream URL with a known hash.
    OSError
        The download failed (offline, proxy, HTTP error); the message names the local alternatives.
    """
    if dataset not in REGISTRY:
        raise KeyError(f"Unknown dataset {dataset!r}; known: {sorted(REGISTRY)}.")
    if relpath not in REGISTRY[dataset]:
        raise KeyError(f"Unknown file {relpath!r} of dataset {dataset!r}; known: {sorted(REGISTRY[dataset])}.")
    known, url = REGISTRY[dataset][relpath]
    local = data_dir(dataset, path)
    if local is not None and (local / relpath).exists():
        f = local / relpath
        if not _check(f, known):
            raise ValueError(
                f"Hash mismatch for {f}: expected {_describe(known)}. The file is corrupt or not the published version."
            )
        return f
    if path is not None:
        raise FileNotFoundError(f"{relpath!r} not found under path={str(path)!r} (expected {Path(path) / relpath}).")
    if url is None:
        raise FileNotFoundError(
            f"{dataset}/{relpath} is not available locally (set SCST_DATA_DIR or pass path=) and has no public "
            "download with a known hash."
        )
    target = cache_dir() / "data" / dataset / relpath
    # pooch checks SHA-256 itself; git blob ids are checked here, after the download. A cached file that fails
    # its check (tampered, truncated) is deleted and fetched once more; failing twice is an error.
    pooch_hash = None if known.startswith(GITBLOB) else f"sha256:{known}"
    for attempt in (1, 2):
        if not target.exists():
            logg.info(f"Downloading {dataset}/{relpath} from {url}")
        try:
            out = Path(
                pooch.retrieve(url, known_hash=pooch_hash, fname=target.name, path=target.parent, progressbar=True)
            )
        except ValueError as e:  # pooch's SHA-256 mismatch: it deleted the download but keeps a bad cached copy
            if "does not match the known hash" not in str(e):
                raise
            out = target
        except OSError as e:  # offline, proxy, HTTP errors (requests' exceptions are OSErrors)
            raise OSError(
                f"Could not download {dataset}/{relpath} from {url} ({type(e).__name__}: {e}). Without network "
                f"access, put the file at $SCST_DATA_DIR/{dataset}/{relpath} (the layout of ../shared/data/{dataset}) "
                f"or pass path=<folder>; its {_describe(known)} is checked either way."
            ) from e
        else:
            if pooch_hash is not None or _check(out, known):  # pooch verified (or re-fetched) SHA-256 itself
                return out
        out.unlink(missing_ok=True)
        if attempt == 1:
            logg.warning(f"{out} failed its {_describe(known)} check; deleted, fetching it again")
    raise ValueError(
        f"Hash mismatch for {dataset}/{relpath} downloaded from {url}: expected {_describe(known)}, twice. The "
        "upstream file changed or the download is being corrupted; the file was deleted."
    )
