import hashlib
from pathlib import Path

import pytest

from scst.datasets import _fetch


def test_registry_matches_shared_sha256sums():
    """Every hash in the registry equals the data folder's SHA256SUMS (the files are byte-identical to upstream)."""
    import os

    root = Path(os.environ["SCST_DATA_DIR"])
    for dataset, files in _fetch.REGISTRY.items():
        sums = dict(reversed(line.split(None, 1)) for line in (root / dataset / "SHA256SUMS").read_text().splitlines())
        for rel, (sha, _url) in files.items():
            if not sha.startswith(_fetch.GITBLOB):  # sections not copied here: checked by git blob id
                assert sums[rel] == sha, (dataset, rel)


def test_fetch_downloads_with_known_hash(tmp_path, monkeypatch):
    """No network here: stand in for pooch.retrieve and check what fetch asks it for."""
    monkeypatch.delenv("SCST_DATA_DIR", raising=False)
    monkeypatch.setenv("SCST_CACHE_DIR", str(tmp_path))
    calls = {}

    def fake_retrieve(url, known_hash, fname, path, progressbar):
        calls.update(url=url, known_hash=known_hash, fname=fname, path=Path(path))
        return str(Path(path) / fname)

    monkeypatch.setattr(_fetch.pooch, "retrieve", fake_retrieve)
    out = _fetch.fetch("her2st", "C4/he.jpg")
    assert calls["url"].endswith("/data/ST-imgs/C/C4/5714_HE_BT_D2.jpg")
    assert calls["known_hash"] == "sha256:" + _fetch.REGISTRY["her2st"]["C4/he.jpg"][0]
    assert out == tmp_path / "data" / "her2st" / "C4" / "he.jpg"
    with pytest.raises(FileNotFoundError, match="no public download"):
        _fetch.fetch("ligand_receptor", "liana_consensus.csv")


def test_fetch_verifies_local_files(tmp_path):
    f = tmp_path / "C2" / "spots.tsv"
    f.parent.mkdir()
    f.write_text("x\ty\n")
    with pytest.raises(ValueError, match="Hash mismatch"):
        _fetch.fetch("her2st", "C2/spots.tsv", path=tmp_path)
    with pytest.raises(KeyError, match="Unknown file"):
        _fetch.fetch("her2st", "C9/spots.tsv")
    assert hashlib.sha256(f.read_bytes()).hexdigest() != _fetch.REGISTRY["her2st"]["C2/spots.tsv"][0]


def test_an_explicit_path_without_the_file_never_downloads(tmp_path, monkeypatch):
    monkeypatch.setenv("SCST_CACHE_DIR", str(tmp_path / "cache"))

    def no_download(*args, **kwargs):
        raise AssertionError("fetch downloaded although path= was given")

    monkeypatch.setattr(_fetch.pooch, "retrieve", no_download)
    with pytest.raises(FileNotFoundError, match="not found under path="):
        _fetch.fetch("her2st", "C4/he.jpg", path=tmp_path)  # has a public URL, but path= is authoritative
