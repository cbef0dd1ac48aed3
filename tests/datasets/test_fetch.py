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


def test_a_failed_download_names_the_local_alternatives(tmp_path, monkeypatch):
    import requests

    monkeypatch.delenv("SCST_DATA_DIR", raising=False)
    monkeypatch.setenv("SCST_CACHE_DIR", str(tmp_path))

    def offline(url, **kwargs):
        raise requests.exceptions.ConnectionError(f"Failed to resolve 'raw.githubusercontent.com' ({url})")

    monkeypatch.setattr(_fetch.pooch, "retrieve", offline)
    with pytest.raises(OSError, match=r"Could not download her2st/D1/counts.tsv.gz from https://raw") as err:
        _fetch.fetch("her2st", "D1/counts.tsv.gz")
    msg = str(err.value)
    assert "ConnectionError: Failed to resolve" in msg and "$SCST_DATA_DIR/her2st/D1/counts.tsv.gz" in msg
    assert "path=<folder>" in msg and "git blob" in msg
    assert isinstance(err.value.__cause__, requests.exceptions.ConnectionError)
    assert not (tmp_path / "data" / "her2st" / "D1" / "counts.tsv.gz").exists()


# ------------------------------------------------------------------------------------------------ mutation sweep
HELLO_BLOB = "ce013625030ba8dba906f756967f9e9ca394464a"  # `printf 'hello\n' | git hash-object --stdin`


def test_git_blob_sha1_is_gits_object_id(tmp_path):
    (tmp_path / "f").write_bytes(b"hello\n")
    assert _fetch.git_blob_sha1(tmp_path / "f") == HELLO_BLOB


def test_upstream_sections_are_registered_by_git_blob_id():
    reg = _fetch.REGISTRY["her2st"]
    sections = {rel.split("/")[0] for rel in reg}
    assert len(sections) == 36 and "A1" in sections and "H3" in sections
    assert all(f"{s}/{f}" in reg for s in sections for f in ("counts.tsv.gz", "spots.tsv", "clusters.tsv.gz", "he.jpg"))
    known, url = reg["A1/he.jpg"]
    assert known.startswith(_fetch.GITBLOB) and "/data/ST-imgs/A/A1/" in url and url.endswith(".jpg")
    known, url = reg["A1/spots.tsv"]
    assert known.startswith(_fetch.GITBLOB) and url.endswith("/data/ST-spotfiles/A1_selection.tsv")
    assert not reg["C2/he.jpg"][0].startswith(_fetch.GITBLOB)  # C2-C6 keep their SHA-256


def _fake_pooch(monkeypatch, contents):
    """pooch.retrieve without network and without a hash (as for git-blob entries): it downloads only a missing
    file, writing the next of ``contents``."""
    calls = []

    def retrieve(url, known_hash, fname, path, progressbar):
        calls.append(known_hash)
        out = Path(path) / fname
        if not out.exists():
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(contents[len(calls) - 1])
        return str(out)

    monkeypatch.setattr(_fetch.pooch, "retrieve", retrieve)
    return calls


@pytest.fixture
def hello_entry(tmp_path, monkeypatch):
    monkeypatch.delenv("SCST_DATA_DIR", raising=False)
    monkeypatch.setenv("SCST_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setitem(_fetch.REGISTRY["her2st"], "A1/spots.tsv", (_fetch.GITBLOB + HELLO_BLOB, "https://x/A1.tsv"))
    return tmp_path / "cache" / "data" / "her2st" / "A1" / "spots.tsv"


def test_a_tampered_git_blob_download_is_deleted_and_fetched_once_more(hello_entry, monkeypatch):
    calls = _fake_pooch(monkeypatch, [b"jello\n", b"hello\n"])
    out = _fetch.fetch("her2st", "A1/spots.tsv")
    assert out == hello_entry and out.read_bytes() == b"hello\n" and calls == [None, None]


def test_a_git_blob_download_failing_twice_is_refused_and_deleted(hello_entry, monkeypatch):
    calls = _fake_pooch(monkeypatch, [b"jello\n", b"jelly\n"])
    with pytest.raises(ValueError, match=f"Hash mismatch for her2st/A1/spots.tsv .* git blob id {HELLO_BLOB}, twice"):
        _fetch.fetch("her2st", "A1/spots.tsv")
    assert len(calls) == 2 and not hello_entry.exists()


def test_local_files_are_rechecked_after_they_change(tmp_path, monkeypatch):
    import os

    monkeypatch.setitem(_fetch.REGISTRY["her2st"], "A1/spots.tsv", (_fetch.GITBLOB + HELLO_BLOB, None))
    f = tmp_path / "A1" / "spots.tsv"
    f.parent.mkdir()
    f.write_bytes(b"hello\n")
    os.utime(f, ns=(1_000_000_000, 1_000_000_000))
    assert _fetch.fetch("her2st", "A1/spots.tsv", path=tmp_path) == f
    f.write_bytes(b"jello\n")  # same size, new content and modification time: hashed again
    os.utime(f, ns=(2_000_000_000, 2_000_000_000))
    with pytest.raises(ValueError, match="Hash mismatch"):
        _fetch.fetch("her2st", "A1/spots.tsv", path=tmp_path)


def test_scst_data_dir_is_used_before_the_download_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SCST_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("SCST_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setitem(_fetch.REGISTRY["her2st"], "A1/spots.tsv", (_fetch.GITBLOB + HELLO_BLOB, "https://x/A1.tsv"))
    f = tmp_path / "data" / "her2st" / "A1" / "spots.tsv"
    f.parent.mkdir(parents=True)
    f.write_bytes(b"hello\n")
    calls = _fake_pooch(monkeypatch, [])
    assert _fetch.fetch("her2st", "A1/spots.tsv") == f and calls == []
    assert _fetch.data_dir("her2st") == tmp_path / "data" / "her2st"
    assert _fetch.data_dir("her2st", path=tmp_path / "p") == tmp_path / "p"


def test_a_sha256_download_failing_its_check_is_fetched_once_more_then_refused(tmp_path, monkeypatch):
    """The real pooch.retrieve with a stub downloader: a SHA-256 mismatch raised pooch's error at the first corrupt
    download (no second try, unlike git blob ids) and left a corrupt cached copy in place."""
    import pooch.core

    monkeypatch.delenv("SCST_DATA_DIR", raising=False)
    monkeypatch.setenv("SCST_CACHE_DIR", str(tmp_path / "cache"))
    sha = hashlib.sha256(b"hello\n").hexdigest()
    monkeypatch.setitem(_fetch.REGISTRY["her2st"], "A1/spots.tsv", (sha, "https://x/A1.tsv"))
    served = []

    def choose_downloader(url, progressbar=False):
        def download(url, output_file, pooch_obj, check_only=False):
            Path(output_file).write_bytes(served.pop(0))

        return download

    monkeypatch.setattr(pooch.core, "choose_downloader", choose_downloader)
    target = tmp_path / "cache" / "data" / "her2st" / "A1" / "spots.tsv"
    target.parent.mkdir(parents=True)
    target.write_bytes(b"tampered\n")  # a corrupt cached copy, then a corrupt download, then the right file
    served[:] = [b"jello\n", b"hello\n"]
    assert _fetch.fetch("her2st", "A1/spots.tsv") == target and target.read_bytes() == b"hello\n"
    target.write_bytes(b"tampered\n")
    served[:] = [b"jello\n", b"jelly\n"]
    with pytest.raises(ValueError, match=f"Hash mismatch for her2st/A1/spots.tsv .* sha256 {sha}, twice"):
        _fetch.fetch("her2st", "A1/spots.tsv")
    assert not served and not target.exists()


def test_unknown_datasets_and_pooch_errors_other_than_a_hash_mismatch(tmp_path, monkeypatch):
    monkeypatch.delenv("SCST_DATA_DIR", raising=False)
    monkeypatch.setenv("SCST_CACHE_DIR", str(tmp_path))
    with pytest.raises(KeyError, match=r"Unknown dataset 'her3st'; known: \['her2st'"):
        _fetch.fetch("her3st", "D1/counts.tsv.gz")

    def bad_url(url, **kwargs):
        raise ValueError("Invalid URL scheme")

    monkeypatch.setattr(_fetch.pooch, "retrieve", bad_url)
    with pytest.raises(ValueError, match="^Invalid URL scheme$"):  # pooch's own error, not taken for a bad hash
        _fetch.fetch("her2st", "D1/counts.tsv.gz")
