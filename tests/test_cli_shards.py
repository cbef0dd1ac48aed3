"""``scst predict-shards`` and ``scst merge``: the fan-out as one command, or one command per shard then a merge."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from scst.cli import main
from scst.models._baselines import RidgeExpression
from scst.tl._embed import embed_patches
from scst.tl._predict import predict_expression

_spec = importlib.util.spec_from_file_location("_he_synthetic", Path(__file__).parent / "models" / "_he_synthetic.py")
syn = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(syn)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A ridge on hand-crafted features of S1, S2 and two single-section stores S3, S4 to predict."""
    root = tmp_path_factory.mktemp("cli_shards")
    sd = syn.make_sdata(sections=("S1", "S2"))
    embed_patches(sd, "handcrafted", size_um=syn.SIZE_UM, out_px=32, progress=False)
    RidgeExpression.setup_sdata(sd, embedding_key="X_handcrafted", genes=["UP", "DOWN", "HOUSE"])
    RidgeExpression(sd).train().save(root / "ridge")
    for s, seed in (("S3", 3), ("S4", 4)):
        syn.make_sdata(sections=(s,), seed=seed).write(root / f"{s}.zarr")
    return root


def _X(path):
    import spatialdata as sd

    tab = sd.read_zarr(path).tables["predicted"]
    return tab.obs_names.to_numpy(), np.asarray(tab.X)


def test_help(capsys):
    for cmd in ("predict-shards", "merge"):
        with pytest.raises(SystemExit) as e:
            main([cmd, "--help"])
        assert e.value.code == 0 and "--out" in capsys.readouterr().out


def test_fan_out_one_command_equals_per_shard_commands_and_serial(setup, dask_client, tmp_path, capsys):
    """On one running scheduler (the session's LocalCluster, as dask-jobqueue would give): the whole fan-out as one
    command, and one command per shard (as an array job would run them) then `scst merge`, equal serial prediction."""
    m, s3, s4 = str(setup / "ridge"), str(setup / "S3.zarr"), str(setup / "S4.zarr")
    address = dask_client.scheduler.address
    out = tmp_path / "all.zarr"
    assert main(["predict-shards", "--model-dir", m, "--shards", s3, s4, "--scheduler", address, "--out",
                 str(out)]) == 0  # fmt: skip
    assert "2 shards, 128 spots on" in capsys.readouterr().out
    names, X = _X(out)
    # serial reference: predict_expression on each store in this process
    import spatialdata as sd

    model = RidgeExpression.load(m)
    want = [predict_expression(sd.read_zarr(p), model, table_added="p", copy=True, progress=False) for p in (s3, s4)]
    np.testing.assert_array_equal(names, np.concatenate([w.obs_names for w in want]))
    np.testing.assert_array_equal(X, np.vstack([w.layers["predicted"] for w in want]))
    for s, p in (("S3", s3), ("S4", s4)):
        cmd = ["predict-shards", "--model-dir", m, "--shards", p, "--scheduler", address]
        assert main([*cmd, "--out", str(tmp_path / f"part_{s}.zarr")]) == 0
    parts = [str(tmp_path / "part_S3.zarr"), str(tmp_path / "part_S4.zarr")]
    assert main(["merge", *parts, "--out", str(tmp_path / "merged.zarr")]) == 0
    names2, X2 = _X(tmp_path / "merged.zarr")
    np.testing.assert_array_equal(names2, names)
    np.testing.assert_array_equal(X2, X)
    assert main(["merge", *parts, "--out", str(tmp_path / "merged.zarr")]) == 2
    assert "--out: " in (err := capsys.readouterr().err) and "exists; pass --overwrite" in err
    assert dask_client.status != "closed"  # the command closed its own connection, not the cluster


def test_options_reach_predict_shards(setup, tmp_path, monkeypatch):
    """Without --scheduler the command asks predict_shards for a local cluster of --workers processes (that path
    itself runs in tests/tl/test_shards.py)."""
    import pandas as pd

    import scst.tl._shards as shards

    seen = {}

    def recording(shard_list, model_dir, out, **kwargs):  # a stub: records what the CLI passes
        seen.update(kwargs, shards=shard_list)
        return pd.DataFrame({"shard": ["S3"], "n_spots": [64], "worker": ["w"]})

    monkeypatch.setattr(shards, "predict_shards", recording)
    s3 = str(setup / "S3.zarr")
    argv = ["predict-shards", "--model-dir", str(setup / "ridge"), "--shards", s3, "--out", str(tmp_path / "o.zarr")]
    assert main([*argv, "--workers", "3", "--precision", "bf16", "--um-per-px", "0.5"]) == 0
    assert seen["client"] is None and seen["n_workers"] == 3 and seen["precision"] == "bf16"
    assert seen["shards"] == [s3] and seen["um_per_px"] == 0.5
    assert main(argv) == 0 and seen["n_workers"] == 2  # the default


def test_errors(setup, tmp_path, capsys):
    m = str(setup / "ridge")
    assert main(["merge", str(tmp_path / "nope.zarr"), "--out", str(tmp_path / "o.zarr")]) == 2
    assert "are not zarr stores written by `scst predict-shards`" in capsys.readouterr().err
    assert main(["predict-shards", "--model-dir", m, "--shards", "her2st:Z1", "--out", str(tmp_path / "o.zarr")]) == 2
    assert "scst: error: shards: shard 'Z1' ('her2st:Z1') names no her2st section" in capsys.readouterr().err
    # options named as options, before any scheduler is contacted (the address would fail otherwise)
    base = ["predict-shards", "--shards", "her2st:C6", "--scheduler", "no-port-here"]
    for extra, want in (
        (["--model-dir", str(tmp_path / "none"), "--out", "o.zarr"], "--model-dir: "),
        (["--model-dir", m, "--workers", "0", "--out", "o.zarr"], "--workers: expected a positive number"),
        (["--model-dir", m, "--um-per-px", "-1", "--out", "o.zarr"], "--um-per-px: expected a finite positive"),
        (["--model-dir", m, "--out", "o.h5ad"], "--out: expected a path ending in .zarr"),
        (["--model-dir", m, "--out", str(tmp_path / "o.zarr")], "--scheduler: cannot connect to 'no-port-here'"),
    ):
        assert main([*base, *extra]) == 2
        assert f"scst: error: {want}" in capsys.readouterr().err
    # a shard that fails at run time: exit status 1, the shard and its error named, no output
    bad = syn.make_sdata(sections=("S9",), seed=9)
    del bad.images["S9_image"]
    bad.write(tmp_path / "broken.zarr")
    cmd = ["predict-shards", "--model-dir", m, "--shards", str(setup / "S3.zarr"), str(tmp_path / "broken.zarr")]
    with pytest.raises(SystemExit) as e:
        main([*cmd, "--workers", "1", "--out", str(tmp_path / "o.zarr")])
    assert e.value.code == 1
    err = capsys.readouterr().err
    assert "scst: error: 1 of 2 shards failed" in err and "shard 'broken'" in err and "shard 'S3'" not in err
    assert not (tmp_path / "o.zarr").exists()


# ------------------------------------------------------------------------------------------------ mutation sweep
def test_scheduler_connection_is_closed_and_overwrite_reaches_the_tools(setup, tmp_path, monkeypatch, capsys):
    """--scheduler: one client for that address, closed after the run (also when a shard fails: exit status 1); a
    scheduler that cannot be reached is a one-line error. --overwrite reaches predict_shards and merge_shards."""
    import distributed
    import pandas as pd

    import scst.tl._shards as shards

    clients, seen = [], {}

    class FakeClient:
        def __init__(self, address, timeout):
            if address == "tcp://down:1":
                raise OSError("connection refused")
            self.address, self.timeout, self.closed = address, timeout, False
            clients.append(self)

        def close(self):
            self.closed = True

    def recording(shard_list, model_dir, out, **kwargs):
        seen.update(kwargs)
        if kwargs["um_per_px"] == 9.0:
            raise shards.ShardError("1 of 1 shards failed: shard 'S3': boom", {"S3": RuntimeError("boom")})
        return pd.DataFrame({"shard": ["S3"], "n_spots": [64], "worker": ["w"]})

    monkeypatch.setattr(distributed, "Client", FakeClient)
    monkeypatch.setattr(shards, "predict_shards", recording)
    argv = ["predict-shards", "--model-dir", str(setup / "ridge"), "--shards", str(setup / "S3.zarr"), "--out",
            str(tmp_path / "o.zarr")]  # fmt: skip
    assert main([*argv, "--scheduler", "tcp://h:8786", "--overwrite"]) == 0
    assert [(c.address, c.timeout, c.closed) for c in clients] == [("tcp://h:8786", "30s", True)]
    assert seen["client"] is clients[0] and seen["overwrite"] is True
    assert main(argv) == 0 and seen["overwrite"] is False and seen["client"] is None
    with pytest.raises(SystemExit) as e:
        main([*argv, "--scheduler", "tcp://h:8786", "--um-per-px", "9"])
    assert e.value.code == 1 and len(clients) == 2 and clients[1].closed
    assert "scst: error: 1 of 1 shards failed: shard 'S3': boom" in capsys.readouterr().err
    assert main([*argv, "--scheduler", "tcp://down:1"]) == 2
    assert "scst: error: --scheduler: cannot connect to 'tcp://down:1' (connection refused)." in capsys.readouterr().err
    merged = []
    monkeypatch.setattr(shards, "merge_shards", lambda stores, out, overwrite: merged.append(overwrite) or [1, 2])
    stores = [str(setup / "S3.zarr"), str(setup / "S4.zarr")]
    assert main(["merge", *stores, "--out", str(tmp_path / "m.zarr"), "--overwrite"]) == 0
    assert main(["merge", *stores, "--out", str(tmp_path / "m.zarr")]) == 0 and merged == [True, False]
    assert "scst merge: 2 stores (2 shards)" in capsys.readouterr().out
