"""Inference options: DataLoader workers give the same predictions, bf16 autocast stays close to fp32, streaming."""

from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from scst._inference import channels_last_weights, inference_options, worker_blocks
from scst.models._hggep import HGGEP, _coords_for
from scst.models._image import _PATCH_CACHE, clear_patch_cache
from scst.models._tcgn import TCGN
from scst.nn import patches_to_input
from scst.pp._patches import SpotPatchDataset
from scst.tl._embed import embed_patches

_spec = importlib.util.spec_from_file_location("_he_synthetic", Path(__file__).with_name("_he_synthetic.py"))
syn = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(syn)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def hggep():
    sd = syn.make_sdata()
    HGGEP.setup_sdata(sd, sections=["S1", "S2"], size_um=syn.SIZE_UM, patch_px=64)
    model = HGGEP(sd, **{**HGGEP.bench_config, "lr": 1e-3, "zero_head": False})
    model.train(max_epochs=2, batch_size=16, validation=False, enable_progress_bar=False)
    return sd, model


@pytest.fixture(scope="module")
def tcgn():
    sd = syn.make_sdata()
    TCGN.setup_sdata(sd, size_um=syn.SIZE_UM, sections=["S1", "S2"])
    model = TCGN(sd, **{**TCGN.bench_config, "img_size": 64})
    model.train(max_epochs=2, validation=False, enable_progress_bar=False)
    return sd, model


def _close_to(a: np.ndarray, b: np.ndarray) -> None:
    """bf16 ``a`` close to fp32 ``b``: within a few bf16 steps (8 mantissa bits: 2**-8 relative), ranked alike."""
    scale = np.abs(b).max()
    np.testing.assert_allclose(a, b, rtol=0.03, atol=0.03 * scale)
    varied = [g for g in range(b.shape[1]) if b[:, g].std() > 4 * 2**-8 * scale]  # spread >> bf16 resolution
    assert varied, b.std(0)
    for g in varied:
        assert syn.pearson(a[:, g], b[:, g]) > 0.98, g


def test_batched_patches_equal_single_patches():
    sd = syn.make_sdata(sections=("S1",), grid=5)
    for out_px in (32, 20):  # no resize (32 px windows) and a resize
        ds = SpotPatchDataset(sd, "table", return_counts=False, size_um=syn.SIZE_UM, out_px=out_px, normalize=None)
        idx = np.array([3, 0, 24, 7, 7])
        single = np.stack([ds.patch_uint8(int(i)) for i in idx])
        np.testing.assert_array_equal(ds.patches_uint8(idx), single)
        floats = np.stack([ds[int(i)]["patch"].numpy() for i in idx])
        np.testing.assert_array_equal(ds.patches_uint8(idx, float01=True), floats)


def test_hggep_workers_give_identical_predictions_and_stream(hggep):
    sd, model = hggep
    clear_patch_cache()
    # batch_size 16 < 64 spots: several overlapping windows per section
    ref = model.predict(sd, ["S2", "S3"], batch_size=16, progress=False)
    assert not _PATCH_CACHE, "prediction must stream patches, not cache whole sections"
    two = model.predict(sd, ["S2", "S3"], batch_size=16, progress=False, num_workers=2)
    # the workers yield the windows in another order, so the CNN encodes other batches of patches: equal to rounding
    np.testing.assert_allclose(two, ref, rtol=1e-6, atol=1e-6)
    assert ref.std(0).max() > 0  # not a constant output: the comparison means something
    bf16 = model.predict(sd, ["S2", "S3"], batch_size=16, progress=False, precision="bf16")
    assert bf16.dtype == np.float32 and not np.array_equal(bf16, ref)  # autocast did run in bf16
    _close_to(bf16, ref)


def test_hggep_prediction_is_the_network_on_the_section(hggep):
    """With a window holding the whole section, predict = the network on all its patches (read one by one)."""
    sd, model = hggep
    pred = model.predict(sd, "S3", batch_size=64, progress=False)
    sec = model._section_data(sd, "table", "S3", with_targets=False)
    patches = np.stack([sec.patches.ds.patch_uint8(i) for i in range(len(sec.rows))])
    model.module.eval()
    with torch.no_grad():
        out = model.module(
            patches_to_input(patches, False),
            _coords_for(sec, np.arange(len(sec.rows)), int(model.registry["max_coord"])),
            torch.from_numpy(sec.positions.astype(np.float32)),
        )["pred"].numpy()
    np.testing.assert_allclose(pred, np.clip(model._unstandardize(out), 0, None), rtol=1e-5, atol=1e-5)


def test_hggep_windows_encode_each_patch_once_and_predict_as_the_network_on_each_window(hggep, monkeypatch):
    """Several overlapping windows (batch_size 16 < 64 spots): every core's prediction is the whole network on its
    window's patches (the ViT and hypergraph see the window), while each spot's patch is read and encoded once."""
    from scst.models._image import _tiling_windows

    sd, model = hggep
    clear_patch_cache()
    sec = model._section_data(sd, "table", "S3", with_targets=False)
    windows = _tiling_windows(sec.positions, 16)
    assert len(windows) >= 4 and sum(len(w) for w, _ in windows) >= 2 * len(sec.rows)  # spots shared
    patches = np.stack([sec.patches.ds.patch_uint8(i) for i in range(len(sec.rows))])
    ref = np.zeros((len(sec.rows), len(model.var_names)), dtype=np.float32)
    model.module.eval()
    with torch.no_grad():
        for window, core in windows:
            out = model.module(
                patches_to_input(patches[window], False),
                _coords_for(sec, window, int(model.registry["max_coord"])),
                torch.from_numpy(sec.positions[window].astype(np.float32)),
            )["pred"].numpy()
            ref[core] = out[np.searchsorted(window, core)]
    read, encoded = [], []
    orig_read, orig_encode = SpotPatchDataset.patches_uint8, type(model.module).encode_patches
    monkeypatch.setattr(
        SpotPatchDataset, "patches_uint8", lambda ds, idx, **k: read.extend(idx) or orig_read(ds, idx, **k)
    )
    monkeypatch.setattr(type(model.module), "encode_patches", lambda m, x: encoded.append(len(x)) or orig_encode(m, x))
    pred = model.predict(sd, "S3", batch_size=16, progress=False)
    assert sorted(read) == list(range(len(sec.rows))) and sum(encoded) == len(sec.rows)
    # neighbouring windows are encoded together, never more than batch_size patches at once
    assert max(encoded) <= 16 and len(encoded) < len(windows), (encoded, len(windows))
    np.testing.assert_allclose(pred, np.clip(model._unstandardize(ref), 0, None), rtol=1e-5, atol=1e-5)
    monkeypatch.undo()
    # with two loader workers the windows come in another order (worker blocks): the same predictions
    np.testing.assert_allclose(model.predict(sd, "S3", batch_size=16, progress=False, num_workers=2), pred, 1e-6, 1e-6)


def test_prediction_reuses_patches_cached_by_training(hggep):
    sd, model = hggep
    clear_patch_cache()
    sec = model._section_data(sd, "table", "S1", with_targets=False)
    sec.patches.get(np.arange(3))  # training path: caches the whole section
    assert len(_PATCH_CACHE) == 1
    again = model._section_data(sd, "table", "S1", with_targets=False)
    assert again.patches.in_memory() is next(iter(_PATCH_CACHE.values()))
    cached = model.predict(sd, "S1", batch_size=16, progress=False)
    clear_patch_cache()
    streamed = model.predict(sd, "S1", batch_size=16, progress=False)
    np.testing.assert_array_equal(cached, streamed)


def test_tcgn_workers_and_bf16(tcgn):
    sd, model = tcgn
    ref = model.predict(sd, "S3", batch_size=10, progress=False)
    np.testing.assert_array_equal(model.predict(sd, "S3", batch_size=10, progress=False, num_workers=2), ref)
    # batch order (image-chunk order) and batch size do not change a spot's prediction beyond float noise
    np.testing.assert_allclose(model.predict(sd, "S3", batch_size=64, progress=False), ref, rtol=1e-5, atol=1e-5)
    bf16 = model.predict(sd, "S3", batch_size=10, progress=False, precision="bf16-mixed")
    assert not np.array_equal(bf16, ref)
    _close_to(bf16, ref)


class _TinyEncoder(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 8, 3)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).mean((2, 3)))


def test_embed_patches_workers_and_bf16():
    sd = syn.make_sdata(sections=("S1", "S2"), grid=6)
    enc = _TinyEncoder()
    kw = {"size_um": syn.SIZE_UM, "out_px": 24, "batch_size": 7, "progress": False}
    embed_patches(sd, enc, key_added="ref", **kw)
    embed_patches(sd, enc, key_added="two", num_workers=2, **kw)
    embed_patches(sd, enc, key_added="bf16", precision="bf16", **kw)
    embed_patches(sd, "handcrafted", key_added="hc0", **kw)
    embed_patches(sd, "handcrafted", key_added="hc2", num_workers=2, **kw)
    obsm = sd.tables["table"].obsm
    np.testing.assert_array_equal(obsm["two"], obsm["ref"])
    np.testing.assert_array_equal(obsm["hc2"], obsm["hc0"])
    # rows follow the table, whatever the reading order: the features of spot i are those of its own patch
    ds = SpotPatchDataset(sd, "table", return_counts=False, size_um=syn.SIZE_UM, out_px=24, normalize="imagenet")
    with torch.no_grad():
        direct = enc(torch.stack([ds[i]["patch"] for i in (0, 40, 71)])).numpy()
    np.testing.assert_allclose(obsm["ref"][[0, 40, 71]], direct, rtol=1e-4, atol=1e-5)
    assert not np.array_equal(obsm["bf16"], obsm["ref"])
    _close_to(obsm["bf16"], obsm["ref"])


def test_embed_patches_folds_conv_bn_with_the_same_features():
    """An encoder with a conv→BN pair (planted running statistics): embed_patches runs it folded (the batch norm never
    runs) and gives the unfolded encoder's features of each spot's own patch; the encoder is unchanged afterwards."""
    sd = syn.make_sdata(sections=("S1",), grid=5)
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(6)
    with torch.no_grad():
        bn.running_mean.uniform_(-0.5, 0.5), bn.running_var.uniform_(0.3, 2.0)
        bn.weight.uniform_(0.5, 1.5), bn.bias.uniform_(-0.3, 0.3)
    enc = nn.Sequential(nn.Conv2d(3, 6, 3, bias=False), bn, nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    calls: list = []
    handle = bn.register_forward_hook(lambda *a: calls.append(1))
    try:
        embed_patches(sd, enc, key_added="folded", size_um=syn.SIZE_UM, out_px=24, batch_size=7, progress=False)
    finally:
        handle.remove()
    assert not calls and enc[1] is bn
    ds = SpotPatchDataset(sd, "table", return_counts=False, size_um=syn.SIZE_UM, out_px=24, normalize="imagenet")
    with torch.no_grad():
        direct = enc.eval()(torch.stack([ds[i]["patch"] for i in range(len(ds))])).numpy()
    np.testing.assert_allclose(sd.tables["table"].obsm["folded"], direct, rtol=1e-4, atol=1e-5)


def test_bad_options():
    with pytest.raises(ValueError, match="num_workers"):
        inference_options("cpu", num_workers=-1)
    with pytest.raises(ValueError, match="precision"):
        inference_options("cpu", precision="int8")
    with pytest.raises(TypeError, match="pin_memory"):
        inference_options("cpu", pin_memory="yes")
    if not torch.cuda.is_available():
        with pytest.warns(UserWarning, match="pin_memory=True needs CUDA"):
            assert inference_options("cpu", pin_memory=True).pin_memory is False
    assert inference_options("cpu").loader_kwargs() == {"num_workers": 0, "pin_memory": False}
    sd = syn.make_sdata(sections=("S1",), grid=3)
    with pytest.raises(ValueError, match="precision"):
        embed_patches(sd, "handcrafted", size_um=syn.SIZE_UM, out_px=24, precision="8", progress=False)


def test_numpy_integer_workers_and_numpy_bool_pinning_are_accepted():
    # np.int64(2) was refused as "expected an integer >= 0, got np.int64(2)" (e.g. a value from a numpy grid)
    opts = inference_options("cpu", num_workers=np.int64(2), pin_memory=np.bool_(False))
    assert opts.num_workers == 2 and type(opts.num_workers) is int and opts.pin_memory is False
    assert opts.loader_kwargs() == {"num_workers": 2, "pin_memory": False, "prefetch_factor": 4}
    with pytest.raises(ValueError, match="num_workers"):
        inference_options("cpu", num_workers=np.int64(-1))
    sd = syn.make_sdata(sections=("S1",), grid=3)
    embed_patches(sd, "handcrafted", size_um=syn.SIZE_UM, out_px=24, num_workers=np.int64(0), progress=False)
    assert sd.tables["table"].obsm["X_handcrafted"].shape[0] == 9


class _WhoReads(torch.utils.data.Dataset):
    """Item i → (i, id of the worker that read it)."""

    def __len__(self):
        return 11

    def __getitem__(self, i):
        return i, torch.utils.data.get_worker_info().id


def test_workers_read_contiguous_blocks():
    # 11 batches in chunk order, 3 workers: each worker reads one run of neighbouring batches (blocks 4, 4, 3), so no
    # two workers decode the same image chunks; every batch arrives once.
    assert worker_blocks(11, 3) == [0, 4, 8, 1, 5, 9, 2, 6, 10, 3, 7]
    assert worker_blocks(2, 4) == [0, 1] and worker_blocks(0, 2) == [] and worker_blocks(5, 1) == [0, 1, 2, 3, 4]
    kw = inference_options("cpu", num_workers=3).loader_kwargs(n_items=11)
    got = list(torch.utils.data.DataLoader(_WhoReads(), batch_size=None, **kw))
    assert sorted(int(i) for i, _ in got) == list(range(11))
    reads = {w: sorted(int(i) for i, ww in got if ww == w) for w in range(3)}
    assert reads == {0: [0, 1, 2, 3], 1: [4, 5, 6, 7], 2: [8, 9, 10]}
    assert "sampler" not in inference_options("cpu", num_workers=1).loader_kwargs(n_items=11)
    with pytest.raises(ValueError, match="num_workers"):
        worker_blocks(3, 0)


def test_predict_expression_passes_workers_and_autocast(hggep):
    import scst

    sd, model = hggep
    ref = model.predict(sd, ["S3"], batch_size=16, progress=False)
    out = scst.tl.predict_expression(sd, model, sections="S3", batch_size=16, num_workers=2, progress=False, copy=True)
    rows, genes = out.obs["predicted_mask"].to_numpy(), list(model.var_names)
    # two workers take the windows in another order, so other groups of patches are encoded together: the same
    # predictions to float rounding (convolution kernels round differently for other batch compositions)
    np.testing.assert_allclose(out[rows][:, genes].layers["predicted"].toarray(), ref, rtol=1e-6, atol=1e-6)
    bf16 = scst.tl.predict_expression(
        sd, model, sections="S3", batch_size=16, precision="bf16", progress=False, copy=True
    )
    got = bf16[rows][:, genes].layers["predicted"].toarray()
    assert not np.array_equal(got, ref)  # the autocast reached the network
    _close_to(got, ref)


def test_channels_last_weights_during_the_call_and_restored_after():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 2, 1), nn.Flatten(), nn.Linear(2, 1))
    w = net[0].weight
    cl = torch.channels_last
    with channels_last_weights(net):
        assert net[0].weight.is_contiguous(memory_format=cl) and not net[0].weight.is_contiguous()
        assert net[0].weight is w and torch.equal(net[0].weight, w)  # same parameter, same values, other layout
    assert net[0].weight.is_contiguous() and net[0].weight is w  # restored: safetensors/training see it as before
    with pytest.raises(KeyError), channels_last_weights(net):
        raise KeyError("an error inside the call")
    assert net[0].weight.is_contiguous()  # restored after the error too
    net.to(memory_format=cl)  # a layout the user chose is left as it is
    with channels_last_weights(net):
        pass
    assert not net[0].weight.is_contiguous() and net[0].weight.is_contiguous(memory_format=cl)
    lin = nn.Linear(3, 2)
    with channels_last_weights(lin):  # no convolutions: nothing to do
        assert lin.weight.is_contiguous()


def _conv_layouts(module: nn.Module) -> tuple[list, object]:
    """Record (input channels-last?, weight channels-last?) at each call of the module's first convolution.

    The hook sits on the convolution's parent and reads the child at call time: during prediction the convolution
    may be swapped for its batch-norm-folded copy.
    """
    parent, name = next((p, n) for p in module.modules() for n, c in p.named_children() if isinstance(c, nn.Conv2d))
    seen: list = []

    def hook(mod, args):
        x, w = args[0], getattr(mod, name).weight
        cl = torch.channels_last
        seen.append((x.is_contiguous(memory_format=cl) and not x.is_contiguous(), w.is_contiguous(memory_format=cl)))

    return seen, parent.register_forward_pre_hook(hook)


def test_predict_folds_batch_norms_with_the_same_values(hggep, monkeypatch):
    """During predict only the three stage projections' batch norms run (they come before their convolution); every
    other one is folded into its convolution, with the predictions of the unfolded network (trained running
    statistics); afterwards the module holds its own batch norms again."""
    import scst._inference as inf

    sd, model = hggep
    norms = [m for m in model.module.modules() if isinstance(m, nn.BatchNorm2d)]
    calls: list = []
    handles = [m.register_forward_hook(lambda mod, *a: calls.append(mod)) for m in norms]
    try:
        folded = model.predict(sd, "S3", batch_size=16, progress=False)
        ran = {id(m) for m in calls}
        assert ran == {id(p.norm) for p in model.module.stage_proj}, len(ran)
        calls.clear()
        plain = inference_options
        monkeypatch.setattr(
            inf, "inference_options", lambda *a, **k: dataclasses.replace(plain(*a, **k), fold_batchnorm=False)
        )
        ref = model.predict(sd, "S3", batch_size=16, progress=False)
        assert {id(m) for m in calls} == {id(m) for m in norms}
    finally:
        for h in handles:
            h.remove()
        monkeypatch.undo()
    assert any(float((m.running_var - 1).abs().max()) > 1e-3 for m in norms)  # trained statistics, not the identity
    np.testing.assert_allclose(folded, ref, rtol=1e-5, atol=1e-5)
    assert [m for m in model.module.modules() if isinstance(m, nn.BatchNorm2d)] == norms


def test_predict_and_embed_run_convolutions_channels_last_with_the_same_values(hggep, tmp_path, monkeypatch):
    """Prediction runs the CNN in channels-last layout (input and weights), gives the predictions of the default
    layout, and leaves the module's weights in the default layout (the model still saves)."""
    import scst._inference as inf

    sd, model = hggep
    seen, handle = _conv_layouts(model.module)
    try:
        fast = model.predict(sd, "S3", batch_size=16, progress=False)
        assert seen and all(x and w for x, w in seen), seen[:3]
        seen.clear()
        plain = inference_options  # the same call with channels_last off
        monkeypatch.setattr(
            inf, "inference_options", lambda *a, **k: dataclasses.replace(plain(*a, **k), channels_last=False)
        )
        ref = model.predict(sd, "S3", batch_size=16, progress=False)
        assert seen and not any(x or w for x, w in seen), seen[:3]
    finally:
        handle.remove()
        monkeypatch.undo()
    assert ref.std(0).max() > 0
    np.testing.assert_allclose(fast, ref, rtol=1e-5, atol=1e-5)
    assert all(p.is_contiguous() for p in model.module.parameters())
    model.save(tmp_path / "m")  # safetensors refuses non-contiguous tensors

    sd2 = syn.make_sdata(sections=("S1",), grid=5)
    enc = _TinyEncoder()
    seen, handle = _conv_layouts(enc)
    try:
        embed_patches(sd2, enc, size_um=syn.SIZE_UM, out_px=24, batch_size=7, progress=False)
    finally:
        handle.remove()
    assert seen and all(x and w for x, w in seen), seen[:3]
    assert enc.conv.weight.is_contiguous()


def test_options_resolve_to_loader_kwargs_dtype_and_pinning(monkeypatch):
    """Known answers of the resolved options: worker kwargs, autocast dtype, pinning by device and CUDA."""
    import warnings

    two = inference_options("cpu", num_workers=2)
    assert two.loader_kwargs() == {"num_workers": 2, "pin_memory": False, "prefetch_factor": 4}
    # 5 batches, 2 workers: blocks [0, 1, 2] and [3, 4] interleaved; the order predictions are placed in
    assert two.loader_kwargs(n_items=5)["sampler"] == [0, 3, 1, 4, 2] == two.item_order(5)
    assert inference_options("cpu", num_workers=1).item_order(3) == [0, 1, 2]
    assert inference_options("cpu").dtype is None and inference_options("cpu", precision="32-true").dtype is None
    assert inference_options("cpu", precision="bf16").dtype is torch.bfloat16
    assert inference_options("cpu", precision="16-mixed").dtype is torch.float16
    with pytest.raises(ValueError, match="num_workers"):  # a bool is not a worker count
        inference_options("cpu", num_workers=True)
    assert inference_options("cuda").pin_memory is True  # None: pinned on CUDA devices (no CUDA needed to resolve)
    assert inference_options("cpu").pin_memory is False
    assert inference_options("cuda", pin_memory=False).pin_memory is False
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with warnings.catch_warnings():  # with CUDA, an explicit True is kept without a warning
        warnings.simplefilter("error")
        assert inference_options("cpu", pin_memory=True).pin_memory is True


def test_autocast_runs_in_the_requested_dtype_and_outputs_come_back_float32():
    from scst._inference import _to_float32

    a = torch.ones(2, 3)
    for precision, dtype in (("32", torch.float32), ("bf16", torch.bfloat16)):
        opts = inference_options("cpu", precision=precision)
        with opts.autocast():
            assert (a @ a.T).dtype == dtype
    x = torch.ones(2, dtype=torch.bfloat16)
    out = _to_float32({"pred": x, "parts": (x, torch.arange(3)), "more": [x], "name": "n"})
    assert out["pred"].dtype == torch.float32 and out["more"][0].dtype == torch.float32
    assert isinstance(out["parts"], tuple) and out["parts"][0].dtype == torch.float32
    assert out["parts"][1].dtype == torch.int64 and out["name"] == "n"  # integer tensors and others as they were
