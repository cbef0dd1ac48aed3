"""benchmarks/gpu_pretrain.py: its device loop must train as SSLEncoder does, and its tiles must be the product's.

The GPU machines lack Lightning and the scverse stack, so the benchmark re-states ``SSLEncoder.train`` as a plain loop
over the product's step and rebuilds the tissue tiles from the JPEGs. Both are checked against the product here.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent / "models"))
from _he_synthetic import SIZE_UM, UM_PER_PX, make_sdata  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = {"proj_hidden_dim": 64, "proj_dim": 32, "pred_hidden_dim": 64}


@pytest.fixture(scope="module")
def gpu_pretrain(load_benchmark):
    return load_benchmark("gpu_pretrain")


@pytest.fixture(scope="module")
def sdata():
    return make_sdata(grid=6)


def test_device_loop_trains_exactly_as_sslencoder(gpu_pretrain, sdata):
    from scst.models import SSLEncoder

    SSLEncoder.setup_sdata(sdata, sections=["S1", "S2"], size_um=SIZE_UM, patch_px=32)
    model = SSLEncoder(sdata, **TINY)
    model.train(max_epochs=3, batch_size=16, accelerator="cpu", enable_progress_bar=False)
    x = torch.from_numpy(np.concatenate(list(model.tiles().values())))
    res = gpu_pretrain.pretrain(x, epochs=3, batch_size=16, **TINY)
    # same losses epoch by epoch: same initialisation, batch order, augmentations, optimiser and both schedules
    np.testing.assert_allclose([h["train_loss"] for h in res["history"]], model.history["train_loss"], rtol=1e-5)
    np.testing.assert_allclose([h["train_pred_std"] for h in res["history"]], model.history["train_pred_std"],
                               rtol=1e-4)  # fmt: skip
    # the kept trunk is the product's (the epoch of lowest loss), weight for weight
    product = model.module.backbone.state_dict()
    assert res["best_state"].keys() == product.keys()
    for k, v in product.items():
        torch.testing.assert_close(res["best_state"][k], v, rtol=1e-4, atol=1e-6, msg=k)


def test_budget_sets_the_epochs_after_the_first(gpu_pretrain):
    x = torch.randint(0, 256, (32, 3, 16, 16), dtype=torch.uint8)
    res = gpu_pretrain.pretrain(x, epochs=50, batch_size=16, budget=1e-9, **TINY)  # no second epoch fits
    assert res["epochs"] == 1 and len(res["history"]) == 1
    res = gpu_pretrain.pretrain(x, epochs=2, batch_size=16, budget=1e6, **TINY)  # all requested epochs fit
    assert res["epochs"] == 2 and len(res["history"]) == 2


def test_tiles_rebuilt_from_the_image_file_are_the_products(gpu_pretrain, sdata, tmp_path):
    from PIL import Image

    from scst.pp._patches import SpotPatchDataset

    key = sdata.tables["table"].uns["scst"]["sections"]["S1"]["image_key"]
    img = np.asarray(sdata.images[key])
    path = tmp_path / "S1.png"  # lossless: the pixels the product reads
    Image.fromarray(img.transpose(1, 2, 0)).save(path)
    h, w = img.shape[1:]
    size_um, out_px = 61.0, 24  # window round(61 / 2) = 30 px (31 would be 30.5 → round-half-even 30)
    # centres inside, on half-pixel rounding edges, at the borders and corners (padding with white)
    centers = np.array([[100.0, 120.0], [100.5, 99.5], [14.5, 15.5], [0.0, 0.0], [w - 1.0, h - 1.0],
                        [w - 0.5, 50.25], [60.49, 60.51]])  # fmt: skip
    origins, size = gpu_pretrain._windows(centers, UM_PER_PX, size_um)
    assert size == 30
    rebuilt = gpu_pretrain._rebuild(path, origins, size, out_px)
    ds = SpotPatchDataset.from_arrays({"S1": sdata.images[key]}, centers, np.zeros(len(centers), dtype=np.int64),
                                      {"S1": UM_PER_PX}, size_um=size_um, out_px=out_px, normalize=None)  # fmt: skip
    expected = np.stack([ds.patch_uint8(i) for i in range(len(centers))])
    np.testing.assert_array_equal(rebuilt, expected)
    assert (rebuilt[3, :, 0, 0] == 255).all()  # the corner tile's top-left lies outside the image: white


def test_record_keeps_each_folds_history_apart_and_the_weights_it_got(gpu_pretrain, tmp_path):
    import gzip
    import json

    import pandas as pd

    loso = tmp_path / "dev" / "loso"
    loso.mkdir(parents=True)
    for held, n_ep in (("C2", 2), ("C6", 3)):
        hist = [{"epoch": e, "train_loss": -0.5 - e / 10, "train_pred_std": 0.02, "lr": 1e-3, "epoch_s": 1.0}
                for e in range(n_ep)]  # fmt: skip
        rec = {"heldout": held, "epochs": n_ep, "file": f"trunk_{held}.pt", "history": hist}
        (loso / f"fold_{held}.json").write_text(json.dumps(rec))
    (loso / "trunk_C2.pt").write_bytes(b"weights")  # sha256 9a1290…; C6's trunk did not come back
    (tmp_path / "dev" / "tiles.json").write_text(json.dumps({"all_equal": True}))
    gpu_pretrain.record(tmp_path / "dev", tmp_path / "res", "gpu", "the command")
    out = json.loads((tmp_path / "res" / "gpu.json").read_text())
    assert out["command"] == "the command" and out["tiles"] == {"all_equal": True} and out["speed"] is None
    folds = {f["heldout"]: f for f in out["folds"]}
    assert "history" not in folds["C2"]
    assert folds["C2"]["sha256_pt"] == "9a129038d9a00aed0cf6a7ea059ca50a813449061ab87848cf1a13eafdf33b2c"
    assert folds["C6"]["sha256_pt"] is None
    with gzip.open(tmp_path / "res" / "gpu_history.csv.gz", "rt") as f:
        h = pd.read_csv(f)
    assert h.groupby("heldout").size().to_dict() == {"C2": 2, "C6": 3}
    assert h.loc[h["heldout"] == "C6", "train_loss"].tolist() == pytest.approx([-0.5, -0.6, -0.7])
    with pytest.raises(FileNotFoundError, match="fold_"):
        gpu_pretrain.record(tmp_path / "res", tmp_path / "res2", "x", "c")
