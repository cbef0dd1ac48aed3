"""All 36 her2st sections: names, local folders of any section, downloads verified against git blob ids."""

import hashlib
import shutil
from pathlib import Path

import pytest

import scst
from scst.datasets import _fetch

# Rows of ../shared/data/her2st/UPSTREAM_BLOBS.tsv for C2 (checked by hand against the local copies).
C2_BLOBS = {
    "counts.tsv.gz": "data/ST-cnts/C2.tsv.gz",
    "spots.tsv": "data/ST-spotfiles/C2_selection.tsv",
    "clusters.tsv.gz": "res/ST-cluster/lbl/C2-cluster-annotation.tsv.gz",
}


def _tsv_blob(upstream_path: str) -> str:
    for line in _fetch._BLOBS_TSV.read_text().splitlines()[1:]:
        path, blob, *_ = line.split("\t")
        if path == upstream_path:
            return blob
    raise KeyError(upstream_path)


def _blob(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def test_all_sections_are_offered():
    names = scst.datasets.HER2ST_ALL_SECTIONS
    assert len(names) == 36
    assert names[:3] == ("A1", "A2", "A3") and names[-1] == "H3"
    assert {n[0] for n in names} == set("ABCDEFGH")
    assert sum(n.startswith(("E", "F", "G", "H")) for n in names) == 12  # 3 sections each
    reg = _fetch.REGISTRY["her2st"]
    assert len(reg) == 36 * 4
    assert reg["A1/he.jpg"][1].endswith("/data/ST-imgs/A/A1/9769_C1_HE_small.jpg")
    assert reg["G2/spots.tsv"][1].endswith("/data/ST-spotfiles/G2_selection.tsv")
    assert reg["C2/he.jpg"][0] == "26e2f73ae840cdd46c5bba405aae181f13a56a376b9848dff23f7a9c5de7f19e"  # SHA-256 kept
    with pytest.raises(ValueError, match="unknown section.*'all'"):
        scst.datasets.her2st(["C7"])


def test_git_blob_id_of_a_written_file(tmp_path):
    f = tmp_path / "hello.txt"
    f.write_bytes(b"hello\n")
    assert _fetch.git_blob_sha1(f) == "ce013625030ba8dba906f756967f9e9ca394464a"  # `git hash-object hello.txt`
    f.write_bytes(b"")
    assert _fetch.git_blob_sha1(f) == "e69de29bb2d1d6434b8b29ae775ad8c2e48c5391"  # git's empty blob
    # The upstream table's blob ids are those of the local copies (byte-identical to upstream).
    for name, upstream in C2_BLOBS.items():
        assert _fetch.git_blob_sha1(_fetch.fetch("her2st", f"C2/{name}")) == _tsv_blob(upstream)


def test_local_folder_for_a_section_checked_by_blob_id(tmp_path, monkeypatch):
    """A local folder holding another section's files reads as that section, verified by git blob id."""
    src = Path(_fetch.fetch("her2st", "C2/counts.tsv.gz")).parent
    (tmp_path / "B1").mkdir()
    for name, upstream in C2_BLOBS.items():
        shutil.copy(src / name, tmp_path / "B1" / name)
        # Stand in B1's registry entries with C2's upstream blob ids (the files here are C2's).
        monkeypatch.setitem(_fetch.REGISTRY["her2st"], f"B1/{name}", (_fetch.GITBLOB + _tsv_blob(upstream), None))
    t = scst.datasets.her2st("B1", path=tmp_path, images=False).tables["table"]
    assert t.n_obs == 187 and list(t.obs["section"].cat.categories) == ["B1"]
    assert t["B1_10x21", "ISG15"].X.toarray().item() == 1  # hand-checked count of C2's spot 10x21
    spots = tmp_path / "B1" / "spots.tsv"
    spots.write_bytes(spots.read_bytes().replace(b"\t1\n", b"\t0\n", 1))  # one byte changed
    with pytest.raises(ValueError, match="Hash mismatch.*expected git blob id"):
        scst.datasets.her2st("B1", path=tmp_path, images=False)


@pytest.fixture
def network(tmp_path, monkeypatch):
    """Replace the download (pooch.retrieve) by a local function serving ``served[url]``; count the calls."""
    monkeypatch.delenv("SCST_DATA_DIR", raising=False)
    monkeypatch.setenv("SCST_CACHE_DIR", str(tmp_path / "cache"))
    state = {"served": {}, "downloads": 0}

    def fake_retrieve(url, known_hash, fname, path, progressbar):
        assert known_hash is None  # git blob ids are checked by fetch, not by pooch
        out = Path(path) / fname
        if not out.exists():  # as pooch: a cached file without a known hash is returned as it is
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(state["served"][url])
            state["downloads"] += 1
        return str(out)

    monkeypatch.setattr(_fetch.pooch, "retrieve", fake_retrieve)
    return state


def test_download_verified_and_tampered_cache_refetched(network, monkeypatch, tmp_path):
    good = b"x\ty\tpixel_x\tpixel_y\n1\t1\t10.0\t10.0\n"
    url = "https://example.invalid/H3_selection.tsv"
    monkeypatch.setitem(_fetch.REGISTRY["her2st"], "H3/spots.tsv", (_fetch.GITBLOB + _blob(good), url))
    network["served"][url] = good
    out = _fetch.fetch("her2st", "H3/spots.tsv")
    assert out == tmp_path / "cache" / "data" / "her2st" / "H3" / "spots.tsv"
    assert out.read_bytes() == good and network["downloads"] == 1
    _fetch.fetch("her2st", "H3/spots.tsv")
    assert network["downloads"] == 1  # cached and verified: no second download
    out.write_bytes(good.replace(b"10.0", b"99.0"))  # tampered in the cache
    assert _fetch.fetch("her2st", "H3/spots.tsv").read_bytes() == good
    assert network["downloads"] == 2  # detected, deleted and fetched again


def test_download_failing_its_check_twice_is_refused(network, monkeypatch):
    url = "https://example.invalid/H3.tsv.gz"
    monkeypatch.setitem(_fetch.REGISTRY["her2st"], "H3/counts.tsv.gz", (_fetch.GITBLOB + _blob(b"published"), url))
    network["served"][url] = b"something else"
    with pytest.raises(ValueError, match="Hash mismatch for her2st/H3/counts.tsv.gz.*expected git blob id.*twice"):
        _fetch.fetch("her2st", "H3/counts.tsv.gz")
    assert network["downloads"] == 2
    assert not (_fetch.cache_dir() / "data" / "her2st" / "H3" / "counts.tsv.gz").exists()  # nothing bad is left


# ------------------------------------------------------------------------------------------------ mutation sweep
@pytest.fixture
def recorded(monkeypatch):
    """her2st's readers replaced by recorders: which files each section reads (with path=), image or not, and how
    the sections are combined."""
    from scst.datasets import _her2st

    calls = []
    monkeypatch.setattr(_her2st, "fetch", lambda ds, rel, path=None: f"{ds}/{rel}@{path}")
    monkeypatch.setattr(
        _her2st, "read_st", lambda counts, spots, image, **kw: calls.append(("read", counts, spots, image, kw)) or kw
    )
    monkeypatch.setattr(_her2st, "_add_labels", lambda sd, s, f: calls.append(("labels", s, f)))

    def concat(parts, join):
        calls.append(("concat", [p["sample"] for p in parts], join))

    monkeypatch.setattr(_her2st, "concatenate_sections", concat)
    return calls


def _sections(calls):
    return [c[4]["sample"] for c in calls if c[0] == "read"]


def test_sections_argument(recorded):
    """Default C2–C6; "all" the 36 sections; a single name is one section (not its letters); names are checked
    against all 36 sections; duplicates are refused."""
    scst.datasets.her2st()
    assert _sections(recorded) == ["C2", "C3", "C4", "C5", "C6"]
    assert recorded[-1] == ("concat", ["C2", "C3", "C4", "C5", "C6"], "inner")
    recorded.clear()
    scst.datasets.her2st("all", join="outer")
    assert _sections(recorded) == list(scst.datasets.HER2ST_ALL_SECTIONS) and len(_sections(recorded)) == 36
    assert recorded[-1][0] == "concat" and recorded[-1][2] == "outer"
    recorded.clear()
    out = scst.datasets.her2st("H3")
    assert _sections(recorded) == ["H3"] and out["sample"] == "H3"  # one section: returned as read, no concat
    assert [c[0] for c in recorded] == ["read", "labels"]
    recorded.clear()
    scst.datasets.her2st(("A1", "G2"))
    assert _sections(recorded) == ["A1", "G2"]
    with pytest.raises(ValueError, match=r"unknown section\(s\) \['C1x'\]"):
        scst.datasets.her2st(["A1", "C1x"])
    with pytest.raises(ValueError, match=r"sections: duplicates in \['B2', 'B2'\]"):
        scst.datasets.her2st(["B2", "B2"])
    with pytest.raises(ValueError, match=r"sections: expected at least one section"):
        scst.datasets.her2st([])
    # A bad join is refused before any section is read: it was found only when combining them (after every image
    # was converted), and never for a single section
    recorded.clear()
    for sections in ("C2", ["C2", "C3"]):
        with pytest.raises(ValueError, match=r"join: expected 'inner' or 'outer', got 'union'"):
            scst.datasets.her2st(sections, join="union")
    assert recorded == []


def test_files_geometry_and_images_of_a_section(recorded, tmp_path):
    """Each section reads its own four files from path=, the ST geometry (100 µm spots, 200 µm grid), the cache
    folder, and the H&E image only with images=True."""
    scst.datasets.her2st("D4", path=tmp_path, cache_dir=tmp_path / "c")
    p = f"@{tmp_path}"
    kw = {"sample": "D4", "spot_diameter_um": 100.0, "grid_step_um": 200.0, "cache_dir": tmp_path / "c"}
    assert recorded == [
        ("read", f"her2st/D4/counts.tsv.gz{p}", f"her2st/D4/spots.tsv{p}", f"her2st/D4/he.jpg{p}", kw),
        ("labels", "D4", f"her2st/D4/clusters.tsv.gz{p}"),
    ]
    recorded.clear()
    scst.datasets.her2st(["D4", "E1"], images=False)
    assert [c[3] for c in recorded if c[0] == "read"] == [None, None]


@pytest.mark.parametrize("section", ["D1", "C5"])
def test_labels_are_matched_by_section_and_spot(tmp_path, section):
    """clusters.tsv.gz rows of the section only, matched on "<x>x<y>" (x first); a spot without a row is NaN; patient
    C gets the paper's cluster names, the other patients "cluster <k>"."""
    from types import SimpleNamespace

    import anndata as ad
    import numpy as np
    import pandas as pd

    from scst.datasets import _her2st

    other = "D2" if section == "D1" else "C6"
    rows = pd.DataFrame(
        {"ids": [section, section, section, other], "x": [3, 5, 7, 7], "y": [5, 3, 7, 7], "label": [4, 2, 2, 0]}
    )
    f = tmp_path / "clusters.tsv"
    rows.to_csv(f, sep="\t")
    t = ad.AnnData(obs=pd.DataFrame({"spot_id": ["5x3", "3x5", "7x7", "9x9"]}, index=list("abcd")))
    _her2st._add_labels(SimpleNamespace(tables={"table": t}), section, f)
    assert t.obs["label"].tolist()[:3] == [2, 4, 2] and np.isnan(t.obs["label"].iloc[3])
    assert list(t.obs["label"].cat.categories) == [2, 4]  # the other section's label 0 is not a category
    names = ["cancer 1", "cancer 3", "cancer 1"] if section == "C5" else ["cluster 2", "cluster 4", "cluster 2"]
    assert t.obs["label_name"].tolist()[:3] == names and pd.isna(t.obs["label_name"].iloc[3])
