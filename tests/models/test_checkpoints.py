"""Checkpoints: atomic save, clear errors for truncated/corrupt files, another model class, another gene panel."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import _toys as toys  # tests/models is on pytest's pythonpath (pyproject.toml): spawned DDP workers import it
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from scst.models._base import ATTR_FILE, WEIGHTS_FILE, BaseModel

pytestmark = pytest.mark.usefixtures("one_torch_thread")
W_TRUE = toys.W_TRUE


class Toy(toys.ToyRegressor):
    _default_config = {"lr": 0.1, "batch_size": 32, "max_epochs": 5}

    def _dataloaders(self, batch_size, validation, seed, **kw):
        return DataLoader(TensorDataset(*self._xy()), batch_size=batch_size, shuffle=True), None


class OtherToy(Toy):
    pass


def _adata(genes=("g0", "g1", "g2", "g3"), seed=0):
    return toys.linear_adata(noise=0.0, seed=seed, genes=genes)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    a = _adata()
    Toy.setup_anndata(a)
    m = Toy(a).train(max_epochs=30, enable_progress_bar=False)
    d = tmp_path_factory.mktemp("ckpt") / "toy"
    m.save(d)
    return d, a, m.predict()


def _copy(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


def test_round_trip_and_learned_weights(saved):
    d, a, pred = saved
    m = Toy.load(d, data=a)
    np.testing.assert_array_equal(m.predict(), pred)
    w = m.module.linear.weight.detach().numpy().ravel()
    np.testing.assert_allclose(w, W_TRUE, atol=0.3)  # it learned the planted map, so the weights are real


def test_truncated_or_corrupt_files_are_clear_errors(saved, tmp_path):
    d, a, _ = saved
    c = _copy(d, tmp_path / "trunc")
    w = (c / WEIGHTS_FILE).read_bytes()
    (c / WEIGHTS_FILE).write_bytes(w[: len(w) - 7])
    with pytest.raises(ValueError, match=f"{WEIGHTS_FILE} is truncated or corrupt"):
        Toy.load(c)
    (c / WEIGHTS_FILE).write_bytes(b"\x00" * 3)
    with pytest.raises(ValueError, match="truncated or corrupt"):
        Toy.load(c)
    c = _copy(d, tmp_path / "attr")
    text = (c / ATTR_FILE).read_text()
    (c / ATTR_FILE).write_text(text[: len(text) // 2])
    with pytest.raises(ValueError, match=f"{ATTR_FILE} of .* is truncated or corrupt \\(not JSON"):
        Toy.load(c)
    (c / ATTR_FILE).write_text(json.dumps({"model": "Toy"}))
    with pytest.raises(ValueError, match=r"lacks \['registry', 'config', 'module_kwargs'\]"):
        Toy.load(c)
    (c / ATTR_FILE).unlink()
    with pytest.raises(FileNotFoundError, match="not a saved model"):
        Toy.load(c)


def test_another_model_class_is_refused(saved):
    d, _, pred = saved
    with pytest.raises(ValueError, match="holds a 'Toy' model, not 'OtherToy'; use Toy.load"):
        OtherToy.load(d)
    m = BaseModel.load(d, data=_adata())  # the base class dispatches to the saved class
    assert type(m) is Toy


def test_dispatch_uses_the_qualified_class_name(saved, tmp_path):
    """Two classes named 'Toy' (e.g. in a user's notebook): the saved module.qualname decides, not the bare name."""
    import gc
    import json

    d, _, _ = saved
    twin = type("Toy", (Toy,), {"__module__": "someone_elses_notebook"})
    try:
        assert json.loads((d / "attr.json").read_text())["model_class"] == f"{Toy.__module__}.Toy"
        assert type(BaseModel.load(d)) is Toy
        old = _copy(d, tmp_path / "old")  # a checkpoint written before the qualified name was recorded
        attrs = json.loads((old / "attr.json").read_text())
        del attrs["model_class"]
        (old / "attr.json").write_text(json.dumps(attrs))
        with pytest.raises(ValueError, match=r"'Toy' is ambiguous: .*someone_elses_notebook\.Toy.*Toy\.load"):
            BaseModel.load(old)
        assert type(Toy.load(old)) is Toy  # the class itself still loads it
    finally:
        del twin
        gc.collect()  # subclasses are weakly referenced: the twin must not outlive the test


def test_another_gene_panel_is_refused(saved, tmp_path):
    d, _, _ = saved
    with pytest.raises(ValueError, match=r"`data` lacks 1 of the model's 4 genes: \['g3'\]"):
        Toy.load(d, data=_adata(genes=("g0", "g1", "g2", "gX")))
    # weights of the 4-gene model next to the attr.json of a 5-gene model (two checkpoints mixed up)
    b = _adata(genes=("g0", "g1", "g2", "g3", "g4"))
    Toy.setup_anndata(b)
    Toy(b).save(tmp_path / "five")
    (tmp_path / "five" / WEIGHTS_FILE).write_bytes((d / WEIGHTS_FILE).read_bytes())
    with pytest.raises(ValueError, match="does not fit the Toy built from its attr.json .*gene panel"):
        Toy.load(tmp_path / "five")


def test_failed_save_keeps_the_previous_checkpoint(saved, tmp_path, monkeypatch):
    d, a, pred = saved
    c = _copy(d, tmp_path / "ckpt")
    m = Toy.load(c, data=a)
    with torch.no_grad():
        m.module.linear.weight.zero_()

    def interrupted(*args, **kwargs):  # the process is interrupted while writing the new weights
        Path(args[1]).write_bytes(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr("safetensors.torch.save_model", interrupted)
    with pytest.raises(KeyboardInterrupt):
        m.save(c, overwrite=True)
    np.testing.assert_array_equal(Toy.load(c, data=a).predict(), pred)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # no half-written folder left behind


def test_overwrite_replaces_only_a_saved_model_or_an_empty_folder(saved, tmp_path):
    """overwrite=True deleted whatever folder it was given (a results folder, a data store) to put the model there."""
    d, a, pred = saved
    m = Toy.load(d, data=a)
    results = tmp_path / "results"
    results.mkdir()
    (results / "table.csv").write_text("precious")
    with pytest.raises(FileExistsError, match="is not a saved model folder"):
        m.save(results, overwrite=True)
    assert (results / "table.csv").read_text() == "precious"
    (tmp_path / "file").write_text("x")
    with pytest.raises(FileExistsError, match="is not a saved model folder"):
        m.save(tmp_path / "file", overwrite=True)
    (tmp_path / "empty").mkdir()
    m.save(tmp_path / "empty", overwrite=True)  # an empty folder and a saved model are replaced
    m.save(tmp_path / "empty", overwrite=True)
    np.testing.assert_array_equal(Toy.load(tmp_path / "empty", data=a).predict(), pred)


def test_killed_save_keeps_the_previous_checkpoint(saved, tmp_path):
    """SIGKILL in the middle of ``save(overwrite=True)`` (a forked process): the previous checkpoint still loads."""
    d, a, pred = saved
    c = _copy(d, tmp_path / "ckpt")
    marker = tmp_path / "writing"
    m = Toy.load(c, data=a)
    pid = os.fork()
    if pid == 0:  # child: start saving, stall inside the write of the weights, wait to be killed
        try:
            import safetensors.torch

            def slow(module, path, **kw):
                Path(path).write_bytes(b"partial")
                marker.touch()
                time.sleep(60)

            safetensors.torch.save_model = slow
            m.save(c, overwrite=True)
        finally:
            os._exit(1)
    try:
        t0 = time.time()
        while not marker.exists():
            assert os.waitpid(pid, os.WNOHANG) == (0, 0), "the saving process ended early"
            assert time.time() - t0 < 30
            time.sleep(0.02)
        os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    finally:
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass
    np.testing.assert_array_equal(Toy.load(c, data=a).predict(), pred)
