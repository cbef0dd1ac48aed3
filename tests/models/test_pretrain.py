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
from _he_synthetic import SIZE_UM, UM_PER_PX, make_sdata  # noqa: E402

import scst  # noqa: E402
from scst.models import SSLEncoder  # noqa: E402
from scst.nn._train_step import imagenet_normalize  # noqa: E402

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
    # tile_grid's other errors are not "no tissue": a translated image is refused as tile_grid refuses it
    from spatialdata.transformations import Translation, set_transformation

    set_transformation(sdata.images["S1_image"], Translation([10.0, 0.0], axes=("x", "y")), to_coordinate_system="S1")
    with pytest.raises(ValueError, match=r"image_key: image 'S1_image' is translated or otherwise moved"):
        SSLEncoder.setup_sdata(sdata, sections="S1", size_um=SIZE_UM, patch_px=32)


# ----------------------------------------------------------------------------------- BYOL step (recording stubs)
class _Fn(torch.nn.Module):
    """A function standing in for a submodule (augmentation, criterion)."""

    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, *args):
        return self.fn(*args)


def _byol(**kw):
    from scst.models._pretrain import BYOLModule

    torch.manual_seed(0)
    module = BYOLModule(**{**TINY, **kw})
    module.max_steps = 10
    return module


def test_training_without_max_steps_is_refused():
    """Review 2026-12-04: max_steps defaulted to 1, so the momentum was 1.0 from the first step and the target never
    moved from its random start, silently, for anyone training BYOLModule through train_step themselves."""
    from scst.models._pretrain import BYOLModule

    module = BYOLModule(**TINY)
    with pytest.raises(RuntimeError, match="BYOLModule.max_steps: expected the number of optimiser steps"):
        module.loss(torch.zeros(2, 3, 32, 32, dtype=torch.uint8))
    module.eval()  # evaluation needs no schedule
    assert torch.isfinite(module.loss(torch.zeros(2, 3, 32, 32, dtype=torch.uint8))["loss"])


def test_views_are_two_augmentations_scaled_to_unit_range():
    module = _byol()
    seen = []
    module.augment = _Fn(lambda x: seen.append(x) or x * (0.5 if len(seen) == 1 else 1.0))  # two distinct views
    batch = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8).remainder(256).to(torch.uint8)
    v0, v1 = module._views(batch)
    assert len(seen) == 2  # one augmentation per view, not one shared
    torch.testing.assert_close(seen[0], batch.float() / 255.0)  # uint8 → [0, 1] before the augmentation
    torch.testing.assert_close(v0, imagenet_normalize(batch.float() / 255.0 * 0.5))
    torch.testing.assert_close(v1, imagenet_normalize(batch.float() / 255.0))


def test_loss_pairs_each_online_view_with_the_other_target_view():
    module = _byol(momentum_start=1.0, momentum_end=1.0)  # m = 1: the target is not moved by the step
    x = torch.rand(6, 3, 32, 32)
    views = iter([x, x.flip(-1) * 0.7])
    module.augment = _Fn(lambda _: next(views))
    calls = []

    def criterion(p, z):
        calls.append((p.detach().clone(), z.detach().clone()))
        return torch.tensor(float(len(calls)))

    module.criterion = _Fn(criterion)
    out = module.loss(torch.zeros(6, 3, 32, 32, dtype=torch.uint8))
    v0, v1 = imagenet_normalize(x), imagenet_normalize(x.flip(-1) * 0.7)
    with torch.no_grad():
        (p0, z1), (p1, z0) = calls
        torch.testing.assert_close(p0, module._online(v0))
        torch.testing.assert_close(z1, module._target(v1))  # cross-view: online(view 0) vs target(view 1)
        torch.testing.assert_close(p1, module._online(v1))
        torch.testing.assert_close(z0, module._target(v0))
    assert float(out["loss"]) == 0.5 * (1.0 + 2.0)  # symmetric mean of the two terms
    ref = torch.nn.functional.normalize(p0, dim=1).std(0).mean()  # per-dimension spread across the batch
    torch.testing.assert_close(out["pred_std"], ref)


def test_momentum_update_moves_the_target_towards_the_online_network():
    module = _byol(momentum_start=0.9, momentum_end=0.9)
    with torch.no_grad():
        for p in module.backbone_momentum.parameters():
            p.zero_()  # target 0: after one update it holds (1 - m) · online
    online = [p.detach().clone() for p in module.backbone.parameters()]
    module.criterion = _Fn(lambda p, z: (p * 0).sum())
    out = module.loss(torch.zeros(4, 3, 32, 32, dtype=torch.uint8))
    assert float(out["momentum"]) == pytest.approx(0.9) and int(module.step) == 1
    for before, p, t in zip(online, module.backbone.parameters(), module.backbone_momentum.parameters()):
        torch.testing.assert_close(p.detach(), before)  # the online network is not pulled towards the target
        torch.testing.assert_close(t, 0.1 * before)
    module.eval()  # evaluation: no update, no step
    target = [t.clone() for t in module.backbone_momentum.parameters()]
    module.loss(torch.zeros(4, 3, 32, 32, dtype=torch.uint8))
    assert int(module.step) == 1
    assert all(torch.equal(a, b) for a, b in zip(target, module.backbone_momentum.parameters()))
    with pytest.raises(ValueError, match="momentum"):
        _byol(momentum_start=0.999, momentum_end=0.99)


def test_dataloader_schedule_warnings_and_train_restart(trained, monkeypatch, tmp_path):
    from scst.models._base import BaseModel

    sdata, _, _ = trained
    model = SSLEncoder(sdata, **TINY)
    n = sum(len(t) for t in model.tiles().values())
    model._max_epochs_pending = 3
    loader, val = model._dataloaders(batch_size=8, validation=None, seed=0)
    # the momentum cosine runs over the optimiser steps of all epochs, not of one
    assert val is None and len(loader) == n // 8 and model.module.max_steps == 3 * (n // 8)
    with pytest.warns(UserWarning, match=f"only {n} tiles; using batches of {n}"):
        model._dataloaders(batch_size=n + 1, validation=None, seed=0)
    with pytest.raises(ValueError, match="validation=None"):
        model._dataloaders(batch_size=8, validation=0.2, seed=0)
    with pytest.warns(UserWarning, match="not trained"):
        model.save_encoder(tmp_path / "init.safetensors")

    seen = {}

    def fake_train(self, max_epochs=None, **kwargs):  # records what SSLEncoder.train hands over
        seen.update(step=int(self.module.step), max_epochs=max_epochs, **kwargs)

    monkeypatch.setattr(BaseModel, "train", fake_train)
    model.module.step.fill_(5)
    assert model.train(max_epochs=2) is model
    # a new train() call restarts the momentum schedule; no validation metric, so no early stopping
    assert seen == {"step": 0, "max_epochs": 2, "early_stopping": False} and model._max_epochs_pending == 2


def test_spacing_and_tile_threshold_are_applied():
    from scst.pp._tissue import filter_tiles

    sdata = make_sdata(sections=("S1",), grid=4)
    SSLEncoder.setup_sdata(
        sdata, size_um=SIZE_UM, patch_px=32, spacing_um=SIZE_UM / 2, min_tissue=0.1, tile_threshold=0.9
    )
    model = SSLEncoder(sdata, **TINY)
    xy = np.asarray(model.registry["centers"]["S1"])
    step_px = SIZE_UM / 2 / UM_PER_PX  # 32 µm at 2 µm/px: half-overlapping tiles
    for axis in (0, 1):
        assert np.diff(np.unique(xy[:, axis])).min() == pytest.approx(step_px)
    tiles = model.tiles()["S1"]
    assert 0 < len(tiles) < len(xy)  # tiles with < 90 % tissue pixels are dropped ...
    assert filter_tiles(tiles, threshold=0.9)[1].all()  # ... and only those
    # tile_centers_: the kept tiles' centres, in order (a dropped centre's window is the tile that is missing)
    kept = model.tile_centers_["S1"]
    assert kept.shape == (len(tiles), 2) and {tuple(c) for c in kept} < {tuple(c) for c in xy}
    model.registry["centers"]["S1"] = kept.tolist()  # re-reading only the kept centres keeps every tile
    model.registry["tile_threshold"] = 0.0  # nothing dropped on the second read
    np.testing.assert_array_equal(model.tiles()["S1"], tiles)


def _record_ssl_encoder(monkeypatch) -> dict:
    """Replace SSLEncoder by a recorder: ``calls[step] = (sdata, kwargs)`` for setup/init, kwargs for train."""
    calls = {}

    class Recorder:
        @staticmethod
        def setup_sdata(sdata, **kw):
            calls["setup"] = (sdata, kw)

        def __init__(self, sdata, **kw):
            calls["init"] = (sdata, kw)

        def train(self, **kw):
            calls["train"] = kw

        def save_encoder(self, path):
            calls["save"] = path
            return Path(path)

    monkeypatch.setattr("scst.models._pretrain.SSLEncoder", Recorder)
    return calls


def test_pretrain_encoder_passes_every_setting_on(monkeypatch, tmp_path):
    calls = _record_ssl_encoder(monkeypatch)
    sdata = object()
    out = scst.tl.pretrain_encoder(
        sdata, "resnet18", out=tmp_path / "w.safetensors", sections=["S2"], size_um=40.0, patch_px=48,
        spacing_um=20.0, max_epochs=3, batch_size=5, lr=0.02, seed=7, table="tab", accelerator="cpu",
        enable_progress_bar=True, p_blur=0.0, min_tissue=0.3, tile_threshold=0.6,
    )  # fmt: skip
    assert out == tmp_path / "w.safetensors" and calls["save"] == out
    assert calls["setup"] == (
        sdata, {"sections": ["S2"], "size_um": 40.0, "patch_px": 48, "spacing_um": 20.0, "table": "tab",
                "min_tissue": 0.3, "tile_threshold": 0.6}
    )  # fmt: skip
    assert calls["init"] == (sdata, {"backbone": "resnet18", "seed": 7, "p_blur": 0.0})
    assert calls["train"] == {
        "max_epochs": 3, "batch_size": 5, "lr": 0.02, "seed": 7, "accelerator": "cpu", "enable_progress_bar": True
    }  # fmt: skip
    with pytest.raises(ValueError, match="out: expected the path"):
        scst.tl.pretrain_encoder(sdata, out=None)


def test_pretrain_encoder_defaults(monkeypatch, tmp_path):
    """The documented defaults: HGGEP's trunk and geometry (80 µm, 112 px), 10 epochs of 64, lr 1e-3, seed 0."""
    calls = _record_ssl_encoder(monkeypatch)
    sdata = object()
    out = scst.tl.pretrain_encoder(sdata, out=str(tmp_path / "w.safetensors"))
    assert out == tmp_path / "w.safetensors" and isinstance(out, Path)
    assert calls["setup"] == (
        sdata, {"sections": None, "size_um": 80.0, "patch_px": 112, "spacing_um": None, "table": "table",
                "min_tissue": 0.5, "tile_threshold": 0.5}
    )  # fmt: skip
    assert calls["init"] == (sdata, {"backbone": "shufflenet_v2_x0_5", "seed": 0})
    assert calls["train"] == {
        "max_epochs": 10, "batch_size": 64, "lr": 1e-3, "seed": 0, "accelerator": "auto", "enable_progress_bar": False
    }  # fmt: skip


def test_saved_file_metadata_and_new_folders(trained, tmp_path):
    from safetensors import safe_open

    _, model, path = trained
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    n = sum(len(t) for t in model.tiles().values())  # tiles of both sections after the tissue filter
    assert meta["size_um"] == str(SIZE_UM) and meta["patch_px"] == "32" and meta["sections"] == '["S1", "S2"]'
    assert meta["n_tiles"] == str(n) and n > max(len(t) for t in model.tiles().values())
    deep = tmp_path / "a" / "b" / "enc.safetensors"  # missing folders are made
    assert model.save_encoder(deep) == deep and deep.is_file()


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(trained, tmp_path, monkeypatch):
    import safetensors.torch

    _, model, _ = trained
    path = model.save_encoder(tmp_path / "enc.safetensors")
    before = path.read_bytes()
    written = []

    def failing_save(tensors, filename, metadata=None):
        written.append(Path(filename))
        Path(filename).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", failing_save)
    with pytest.raises(OSError, match="disk full"):
        model.save_encoder(path)
    # the temporary file sits next to the target (same file system: the rename is atomic) and is removed
    assert len(written) == 1 and written[0].parent == path.parent and written[0] != path
    assert list(tmp_path.iterdir()) == [path] and path.read_bytes() == before


def test_tiles_after_a_corrected_pixel_size_are_not_the_patches_cut_at_the_old_one():
    """The tile window in pixels is size_um / um_per_px: after correcting um_per_px and setting up again (a spacing
    giving the same grid in pixels), tiles() must re-read the tiles, not serve the process cache's old windows."""
    from scst.models._image import clear_patch_cache

    clear_patch_cache()
    sdata = make_sdata(sections=("S1",), grid=3)
    kw = {"size_um": SIZE_UM, "patch_px": 16, "min_tissue": 0.0, "tile_threshold": 0.0}
    SSLEncoder.setup_sdata(sdata, spacing_um=64.0, **kw)  # 32 px grid, 32 px windows at 2 µm/px
    old = SSLEncoder(sdata, **TINY)
    first = old.tiles()["S1"]
    sdata.tables["table"].uns["scst"]["sections"]["S1"]["um_per_px"] = 2.5
    SSLEncoder.setup_sdata(sdata, spacing_um=80.0, **kw)  # the same 32 px grid, 25.6 px windows
    new = SSLEncoder(sdata, **TINY)
    assert new.registry["centers"] == old.registry["centers"] and new.registry["um_per_px"] == {"S1": 2.5}
    served = new.tiles()["S1"]
    clear_patch_cache()
    fresh = new.tiles()["S1"]  # what the new geometry reads
    assert not np.array_equal(fresh, first)
    np.testing.assert_array_equal(served, fresh)
    clear_patch_cache()


def test_setup_takes_numpy_scalars_for_the_tile_geometry():
    """A size/spacing computed with numpy (np.float32, np.int64) is a number, not 'expected a positive number';
    NaN, inf, zero and booleans are still rejected."""
    sdata = make_sdata(sections=("S1",), grid=3)
    SSLEncoder.setup_sdata(sdata, size_um=64.0, spacing_um=64.0, patch_px=16)
    ref = SSLEncoder._read_registry(sdata.tables["table"])
    for size, spacing in ((np.float32(64), np.int64(64)), (np.int64(64), None)):
        SSLEncoder.setup_sdata(sdata, size_um=size, spacing_um=spacing, patch_px=np.int64(16))
        assert SSLEncoder._read_registry(sdata.tables["table"]) == ref
    for bad in (np.float32("nan"), np.inf, 0.0, True):
        with pytest.raises(ValueError, match="size_um: expected"):
            SSLEncoder.setup_sdata(sdata, size_um=bad, patch_px=16)
        with pytest.raises(ValueError, match="spacing_um: expected"):
            SSLEncoder.setup_sdata(sdata, size_um=64.0, spacing_um=bad, patch_px=16)


def test_setup_names_a_missing_or_boolean_patch_size_and_fraction():
    """patch_px=None / NaN and min_tissue/tile_threshold=None were bare TypeErrors from int() or a comparison, and
    tile_threshold=True was taken as 1.0."""
    sdata = make_sdata(sections=("S1",), grid=3)
    for kw, name in (
        ({"patch_px": None}, "patch_px"),
        ({"patch_px": np.nan}, "patch_px"),
        ({"min_tissue": None}, "min_tissue"),
        ({"tile_threshold": None}, "tile_threshold"),
        ({"tile_threshold": True}, "tile_threshold"),
    ):
        with pytest.raises(ValueError, match=f"{name}: expected"):
            SSLEncoder.setup_sdata(sdata, **{"size_um": SIZE_UM, "patch_px": 16, **kw})
    SSLEncoder.setup_sdata(sdata, size_um=SIZE_UM, patch_px=np.int64(16), min_tissue=np.float32(0.5), tile_threshold=1)


def test_review_out_checked_before_training_tilde_tile_filters_tile_count_and_geometry_warning(
    trained, tmp_path, monkeypatch
):
    """Review 2026-12-04: ``out`` a folder failed only after training (the run lost); ``~`` was written literally
    while the loaders expand it; pretrain_encoder could not set the tile filters its errors name; a loaded model's
    file counted the tiles before filtering; embed_patches took a file pretrained at another geometry silently."""
    sdata, model, path = trained

    def no_training(*args, **kwargs):
        raise AssertionError("training started before `out` was checked")

    monkeypatch.setattr(SSLEncoder, "train", no_training)
    (tmp_path / "d.safetensors").mkdir()
    with pytest.raises(IsADirectoryError, match="out: .* is a folder"):
        scst.tl.pretrain_encoder(sdata, out=tmp_path / "d.safetensors", size_um=SIZE_UM, patch_px=32)
    monkeypatch.undo()
    monkeypatch.setenv("HOME", str(tmp_path))
    written = model.save_encoder("~/enc.safetensors")
    assert written == tmp_path / "enc.safetensors" and written.is_file()
    # the filters reach setup: no tile passes a threshold of 1.0 on these sections' pink-and-white tiles
    with pytest.raises(ValueError, match="tile_threshold"):
        scst.tl.pretrain_encoder(sdata, out=tmp_path / "x.safetensors", sections=["S1"], size_um=SIZE_UM,
                                 patch_px=32, tile_threshold=1.0, max_epochs=1)  # fmt: skip
    model.save(tmp_path / "model")
    loaded = SSLEncoder.load(tmp_path / "model")
    from safetensors import safe_open

    with safe_open(str(loaded.save_encoder(tmp_path / "again.safetensors")), framework="pt") as f:
        assert int(f.metadata()["n_tiles"]) == model.n_tiles_
    with pytest.warns(UserWarning, match=rf"pretrained on {SIZE_UM:g} µm tiles at 32 px"):
        scst.tl.embed_patches(sdata, "shufflenet_v2_x0_5", weights=str(path), size_um=2 * SIZE_UM, out_px=32,
                              key_added="X_other", progress=False)  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # its own geometry: no warning
        scst.tl.embed_patches(sdata, "shufflenet_v2_x0_5", weights=str(path), size_um=SIZE_UM, out_px=32,
                              key_added="X_same", progress=False)  # fmt: skip


def test_review_a_fixed_size_vit_is_pretrained_with_backbone_kwargs_and_loads_with_the_same(tmp_path):
    """Review 2026-12-04: a timm ViT of fixed input size (224) failed at the first step on 32 px tiles and the
    constructor's arguments could not be passed (unknown config key); hub models needing model_kwargs likewise."""
    import json

    from safetensors import safe_open

    sdata = make_sdata(sections=("S1",), grid=4)
    SSLEncoder.setup_sdata(sdata, sections=["S1"], size_um=SIZE_UM, patch_px=32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = SSLEncoder(sdata, backbone="vit_tiny_patch16_224", backbone_kwargs={"img_size": 32}, **TINY)
        model.train(max_epochs=1, batch_size=8, accelerator="cpu", enable_progress_bar=False)
    path = model.save_encoder(tmp_path / "vit.safetensors")
    with safe_open(str(path), framework="pt") as f:
        assert json.loads(f.metadata()["backbone_kwargs"]) == {"img_size": 32}
    scst.tl.embed_patches(sdata, "vit_tiny_patch16_224", weights=str(path), encoder_kwargs={"img_size": 32},
                          size_um=SIZE_UM, out_px=32, key_added="X_vit", progress=False)  # fmt: skip
    x = sdata.tables["table"].obsm["X_vit"]
    assert x.shape[1] == 192 and np.isfinite(x).all()


def test_review_a_pretrained_file_loaded_into_another_backbone_names_its_own(trained):
    from scst.nn import build_backbone

    _, _, path = trained
    with pytest.raises(ValueError, match=r"\(pretrained as 'shufflenet_v2_x0_5'\) does not match ResNet"):
        build_backbone("resnet18", str(path))


def test_byol_forward_is_the_trunks_pooled_features_and_tile_batches_count_tiles():
    from scst.models._pretrain import _TileBatches
    from scst.nn._ssl import _features

    module = _byol().eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        feats = module(x)
        maps = module.backbone(x)
    assert feats.shape == (2, module.n_features)
    want = maps.mean(dim=(2, 3)) if maps.ndim == 4 else maps.flatten(1)
    torch.testing.assert_close(feats, want)
    torch.testing.assert_close(feats, _features(module.backbone, x))
    tiles = np.zeros((5, 3, 8, 8), np.uint8)
    assert len(_TileBatches(tiles)) == 5


def test_tiles_need_the_spatialdata_and_setup_needs_images(tmp_path):
    """A loaded SSLEncoder reads its tiles from the data it is given (the same tiles), names a missing image, and
    has none without data; setup refuses a table or a SpatialData without images by argument."""
    from spatialdata import SpatialData

    sdata = make_sdata(sections=("S1",), grid=4)
    SSLEncoder.setup_sdata(sdata, size_um=SIZE_UM, patch_px=32)
    model = SSLEncoder(sdata, **TINY)
    model.save(tmp_path / "m")
    with pytest.raises(ValueError, match="SSLEncoder: tiles are read from the SpatialData; load the model with data="):
        SSLEncoder.load(tmp_path / "m").tiles()
    loaded = SSLEncoder.load(tmp_path / "m", data=sdata)
    np.testing.assert_array_equal(loaded.tiles()["S1"], model.tiles()["S1"])
    del sdata.images["S1_image"]
    with pytest.raises(KeyError, match=r"Image 'S1_image' of section 'S1' is not in the data \(\[\]\)"):
        SSLEncoder.load(tmp_path / "m", data=sdata).tiles()
    with pytest.raises(TypeError, match="sdata: expected a SpatialData object with images, got AnnData"):
        SSLEncoder.setup_sdata(sdata.tables["table"])
    with pytest.raises(ValueError, match=r"sections: no section to pretrain on \(sections with an image: \[\]\)"):
        SSLEncoder.setup_sdata(SpatialData(tables={"table": sdata.tables["table"]}), size_um=SIZE_UM, patch_px=32)


def test_one_tissue_tile_is_too_few_to_train_on():
    """A small section at a tile spacing larger than its tissue: one tile, no batch statistics for BYOL."""
    sdata = make_sdata(sections=("S1",), grid=2)
    SSLEncoder.setup_sdata(sdata, size_um=SIZE_UM, patch_px=32, spacing_um=3 * SIZE_UM)
    model = SSLEncoder(sdata, **TINY)
    assert len(model.registry["centers"]["S1"]) == 1
    with pytest.raises(ValueError, match=r"SSLEncoder needs at least 2 tiles \(batch statistics\), got 1"):
        model.train(max_epochs=1, batch_size=16, accelerator="cpu", enable_progress_bar=False)
    assert not model.is_trained
