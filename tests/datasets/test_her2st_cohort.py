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
