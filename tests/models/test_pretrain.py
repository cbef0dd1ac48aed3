"""SSLEncoder / scst.tl.pretrain_encoder: tissue tiles, BYOL training, the saved trunk and the no-tissue error."""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from _he_synthetic import SIZE_UM, make_sdata  # noqa: E402

import scst  # noqa: E402
from scst.models import SSLEncoder  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = {"proj_hidden_dim": 64, "proj_dim": 32, "pred_hidden_dim": 64}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """BYOL for 4 epochs on the tissue tiles of two synthetic sections (S3 held out)."""
    sdata = make_sdata(grid=6)
    SSLEncoder.setup_sdata(sdata, sections=["S1", "S2"], size_um=SIZE_UM, patch_px=32)
    model = SSLEncoder(sdata, **TINY)
    model.train(max_epochs=4, batch_size=16, accelerator="cpu", enable_progress_bar=False)
    path = model.save_encoder(tmp_path_factory.mktemp("ssl") / "enc.safetensors")
    return sdata, model, path


def test_setup_collects_all_tissue_tiles_not_only_spots(trained):
    sdata, model, _ = trained
    reg = model.registry
    assert reg["sections"] == ["S1", "S2"]
    spots = {s: int((sdata.tables["table"].obs["section"] == s).sum()) for s in ("S1", "S2")}
    for s in ("S1", "S2"):
        xy = np.asarray(reg["centers"][s])
        # The 6 × 6 tissue squares cover a (6 · 80 µm)² block: 64 µm tiles on a 64 µm grid give more tiles than
        # spots, all inside the image, none on the blank margin (the tissue mask starts ~40 px in).
        assert len(xy) > spots[s]
        side = sdata.tables["table"].uns["scst"]["sections"][s]["image_shape"][0]
        assert xy.min() > 10 and xy.max() < side - 10
    tiles = model.tiles()
    assert {k: v.dtype for k, v in tiles.items()} == {"S1": np.uint8, "S2": np.uint8}
    assert all(v.shape[1:] == (3, 32, 32) for v in tiles.values())


def test_loss_goes_down_without_collapse(trained):
    _, model, _ = trained
    h = model.history
    assert len(h) == 4 and model.is_trained
    # Negative cosine similarity of the two views' predictions: from ~0 at random init towards -1.
    assert h["train_loss"].iloc[-1] < h["train_loss"].iloc[0] - 0.1
    assert h["train_momentum"].is_monotonic_increasing
    # Not a constant output: normalised predictions keep a spread across tiles (0 = collapse).
    assert h["train_pred_std"].iloc[-1] > 0.02


def test_saved_trunk_loads_into_torchvision_and_embed_patches(trained):
    import torchvision
    from safetensors import safe_open
    from safetensors.torch import load_file

    sdata, model, path = trained
    assert not [p for p in path.parent.iterdir() if p != path]  # atomic write: no temporary file left
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # readable like any file the user writes
    state = load_file(str(path))
    net = torchvision.models.shufflenet_v2_x0_5()
    res = net.load_state_dict(state, strict=False)
    assert sorted(res.missing_keys) == ["fc.bias", "fc.weight"] and res.unexpected_keys == []
    trunk = model.encoder.state_dict()
    assert set(state) == set(trunk)
    assert all(torch.equal(state[k], trunk[k].cpu()) for k in state)
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    assert meta["backbone"] == "shufflenet_v2_x0_5" and meta["method"] == "BYOL (lightly)"

    # embed_patches with the file = embed_patches with the trained trunk itself, and ≠ random init.
    kw = {"size_um": SIZE_UM, "out_px": 32, "progress": False}
    scst.tl.embed_patches(sdata, "shufflenet_v2_x0_5", weights=str(path), key_added="X_ssl", **kw)
    scst.tl.embed_patches(sdata, model.encoder, key_added="X_trunk", **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # random-initialisation warning
        scst.tl.embed_patches(sdata, "shufflenet_v2_x0_5", key_added="X_rand", **kw)
    obsm = sdata.tables["table"].obsm
    np.testing.assert_allclose(obsm["X_ssl"], obsm["X_trunk"], rtol=1e-5, atol=1e-6)
    assert not np.allclose(obsm["X_ssl"], obsm["X_rand"], atol=1e-3)

    with pytest.raises(FileExistsError, match="overwrite"):
        model.save_encoder(path, overwrite=False)


def test_pretrain_encoder_returns_the_file(tmp_path):
    sdata = make_sdata(sections=("S1",), grid=4)
    out = scst.tl.pretrain_encoder(
        sdata, "shufflenet_v2_x0_5", out=tmp_path / "w.safetensors", size_um=SIZE_UM, patch_px=32, max_epochs=1,
        batch_size=8, accelerator="cpu", **TINY,
    )  # fmt: skip
    assert out == tmp_path / "w.safetensors" and out.is_file()
    reg = SSLEncoder._read_registry(sdata.tables["table"])
    assert reg["sections"] == ["S1"] and reg["size_um"] == SIZE_UM


def test_no_tissue_tiles_error_names_the_sections():
    from spatialdata.models import Image2DModel
    from spatialdata.transformations import Identity

    sdata = make_sdata(grid=4)
    rng = np.random.default_rng(0)
    for s in ("S2", "S3"):  # bare glass
        shape = sdata.images[f"{s}_image"].shape
        glass = np.clip(rng.normal(245, 5, size=shape), 0, 255).astype(np.uint8)
        sdata.images[f"{s}_image"] = Image2DModel.parse(glass, dims=("c", "y", "x"), transformations={s: Identity()})
    with pytest.raises(ValueError, match=r"\['S2', 'S3'\] have no tissue tile"):
        SSLEncoder.setup_sdata(sdata, size_um=SIZE_UM, patch_px=32)
    SSLEncoder.setup_sdata(sdata, sections="S1", size_um=SIZE_UM, patch_px=32)  # the tissue section alone is fine
    with pytest.raises(ValueError, match=r"sections: \['S9'\] have no image"):
        SSLEncoder.setup_sdata(sdata, sections=["S9"])
    with pytest.raises(ValueError, match="patch_px"):
        SSLEncoder.setup_sdata(sdata, sections="S1", patch_px=4)
