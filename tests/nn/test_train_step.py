import numpy as np
import pytest
import torch
from torch import nn

from scst.nn import (
    HGGEP_BENCH,
    PRECISIONS,
    TCGN_BENCH,
    HGGEPModule,
    TCGNModule,
    patches_to_input,
    train_step,
    training_loss,
)
from scst.nn._train_step import imagenet_normalize

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class _Linear(nn.Module):
    """y = w · x; loss = mean squared error; records the dtype its matmul ran in."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(2, 1, bias=False)
        with torch.no_grad():
            self.lin.weight.copy_(torch.tensor([[1.0, -1.0]]))
        self.seen_dtype = None

    def forward(self, x):
        y = self.lin(x)
        self.seen_dtype = y.dtype
        return y

    def loss(self, batch):
        pred = self(batch["x"]).float()
        mse = ((pred - batch["y"]) ** 2).mean()
        return {"loss": mse, "mse": mse, "pred": pred}


def _batch():
    return {"x": torch.tensor([[1.0, 2.0], [3.0, 0.0]]), "y": torch.tensor([[1.0], [1.0]])}


def test_sgd_step_hand_checked():
    m = _Linear()
    out = train_step(m, _batch(), torch.optim.SGD(m.parameters(), lr=0.1))
    # pred = [-1, 3], residuals r = [-2, 2], loss = (4 + 4) / 2 = 4
    assert out["loss"].item() == pytest.approx(4.0)
    assert not out["loss"].requires_grad and not out["pred"].requires_grad
    # dL/dw = (2/n) sum r_i x_i = [(-2*1 + 2*3), (-2*2 + 2*0)] = [4, -4]; w - 0.1 * grad = [0.6, -0.6]
    torch.testing.assert_close(m.lin.weight, torch.tensor([[0.6, -0.6]]))
    assert m.seen_dtype == torch.float32


def test_bf16_autocast_runs_the_forward_in_bf16():
    m = _Linear()
    out = train_step(m, _batch(), torch.optim.SGD(m.parameters(), lr=0.1), precision="bf16-mixed")
    assert m.seen_dtype == torch.bfloat16
    assert out["loss"].dtype == torch.float32  # the model's loss stays float32
    assert m.lin.weight.dtype == torch.float32  # master weights
    torch.testing.assert_close(m.lin.weight, torch.tensor([[0.6, -0.6]]), rtol=0, atol=0.02)


def test_fp16_with_scaler_matches_fp32_step():
    m = _Linear()
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    train_step(m, _batch(), torch.optim.SGD(m.parameters(), lr=0.1), precision="16-mixed", scaler=scaler)
    assert m.seen_dtype == torch.float16
    torch.testing.assert_close(m.lin.weight, torch.tensor([[0.6, -0.6]]), rtol=0, atol=0.01)
    with pytest.warns(UserWarning, match="GradScaler"):
        train_step(_Linear(), _batch(), torch.optim.SGD(m.parameters(), lr=0.1), precision="fp16")


def test_every_precision_alias_runs_the_forward_in_its_dtype():
    """Lightning's names and the short aliases: 32 → float32 (no autocast), bf16 → bfloat16, 16 → float16."""
    expected = {
        "32": torch.float32,
        "32-true": torch.float32,
        "fp32": torch.float32,
        "bf16": torch.bfloat16,
        "bf16-mixed": torch.bfloat16,
        "16": torch.float16,
        "16-mixed": torch.float16,
        "fp16": torch.float16,
    }
    assert set(PRECISIONS) == set(expected)
    for precision, dtype in expected.items():
        m = _Linear()
        scaler = torch.amp.GradScaler("cpu") if dtype is torch.float16 else None
        train_step(m, _batch(), torch.optim.SGD(m.parameters(), lr=0.1), precision=precision, scaler=scaler)
        assert m.seen_dtype == dtype, precision


def test_second_step_uses_fresh_gradients():
    """Gradients are zeroed before each backward: step 2 follows the gradient at the new weights only."""
    m = _Linear()
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    train_step(m, _batch(), opt)
    out = train_step(m, _batch(), opt)
    # w = [0.6, -0.6]: pred = [-0.6, 1.8], r = [-1.6, 0.8], loss = (2.56 + 0.64) / 2 = 1.6
    assert out["loss"].item() == pytest.approx(1.6)
    # grad = [(-1.6*1 + 0.8*3), (-1.6*2 + 0.8*0)] = [0.8, -3.2] (accumulated it would be [4.8, -7.2])
    torch.testing.assert_close(m.lin.weight.grad, torch.tensor([[0.8, -3.2]]))
    torch.testing.assert_close(m.lin.weight, torch.tensor([[0.52, -0.28]]))


def test_a_parameter_left_out_of_a_step_is_not_moved():
    """Gradients are set to None, not zero: a parameter the loss does not use is skipped (no momentum step)."""

    class Switch(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Parameter(torch.tensor(1.0)), nn.Parameter(torch.tensor(1.0))
            self.use_b = True

        def loss(self, batch):
            return {"loss": self.a**2 + (self.b**2 if self.use_b else 0.0)}

    m = Switch()
    opt = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9)
    train_step(m, None, opt)  # grads 2, 2: a = b = 0.8
    m.use_b = False
    train_step(m, None, opt)  # a: grad 1.6, momentum 0.9 * 2 + 1.6 = 3.4 → 0.46; b: no gradient, not stepped
    torch.testing.assert_close(m.a.detach(), torch.tensor(0.46))
    torch.testing.assert_close(m.b.detach(), torch.tensor(0.8))


def test_fp16_scaler_clips_the_unscaled_gradients_and_updates_the_scale():
    m = _Linear()
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0, growth_interval=1)
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    train_step(m, _batch(), opt, precision="16-mixed", scaler=scaler, clip_grad_norm=1.0)
    # the unscaled grad [4, -4] is clipped to norm 1 (the scaled one, [4096, -4096], would give a ~1e-4 step)
    step = 0.1 / 2**0.5
    torch.testing.assert_close(m.lin.weight, torch.tensor([[1 - step, -1 + step]]), rtol=0, atol=0.01)
    # one finite step with growth_interval=1: the scale doubles
    assert scaler.get_scale() == 2048.0


def test_clip_grad_norm():
    m = _Linear()
    train_step(m, _batch(), torch.optim.SGD(m.parameters(), lr=0.1), clip_grad_norm=1.0)
    # grad [4, -4] has norm 4 sqrt 2 → clipped to [1, -1] / sqrt 2
    step = 0.1 / 2**0.5
    torch.testing.assert_close(m.lin.weight, torch.tensor([[1 - step, -1 + step]]), rtol=1e-6, atol=1e-6)


def test_non_finite_loss_stops_before_the_update():
    m = _Linear()
    batch = _batch()
    batch["y"][0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match="not taken"):
        train_step(m, batch, torch.optim.SGD(m.parameters(), lr=0.1))
    torch.testing.assert_close(m.lin.weight, torch.tensor([[1.0, -1.0]]))


def test_bad_arguments():
    m = _Linear()
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="precision"):
        train_step(m, _batch(), opt, precision="fp8")
    with pytest.raises(ValueError, match="clip_grad_norm"):
        train_step(m, _batch(), opt, clip_grad_norm=0)
    with pytest.raises(TypeError, match="must define `loss"):
        training_loss(nn.Linear(2, 1), _batch())

    class NoLossKey(_Linear):
        def loss(self, batch):
            return {"mse": super().loss(batch)["mse"]}

    with pytest.raises(TypeError, match="key 'loss'.*keys \\['mse'\\]"):
        training_loss(NoLossKey(), _batch())

    class TensorLoss(_Linear):
        def loss(self, batch):
            return super().loss(batch)["mse"]

    with pytest.raises(TypeError, match="must return a dict with key 'loss', got Tensor\\.$"):
        training_loss(TensorLoss(), _batch())

    class VectorLoss(_Linear):
        def loss(self, batch):
            out = super().loss(batch)
            return {**out, "loss": (out["pred"] - batch["y"]).pow(2).ravel()}

    m = VectorLoss()
    with pytest.raises(TypeError, match="must be a scalar tensor"):
        train_step(m, _batch(), torch.optim.SGD(m.parameters(), lr=0.1))


def test_patches_to_input_values_and_augmentation():
    p = np.zeros((2, 3, 4, 4), dtype=np.uint8)
    p[:, :, 0, 0] = 255  # one white pixel in the top-left corner
    x = patches_to_input(p)
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    torch.testing.assert_close(x[0, :, 0, 0], (1 - mean) / std)
    torch.testing.assert_close(x[1, :, 3, 3], (0 - mean) / std)
    assert x.is_contiguous(memory_format=torch.contiguous_format)
    assert patches_to_input(p, channels_last=True).is_contiguous(memory_format=torch.channels_last)
    assert patches_to_input(p, device="meta").device.type == "meta"  # converted where it is asked to be
    # augmentation moves the white pixel to one of the four corners of each patch and never interpolates
    g = torch.Generator().manual_seed(3)
    xa = patches_to_input(np.repeat(p, 50, 0), augment=True, generator=g)
    white = (xa[:, 0] > 2).nonzero()[:, 1:].tolist()
    assert len(white) == 100 and {tuple(w) for w in white} == {(0, 0), (0, 3), (3, 0), (3, 3)}
    for bad in (p.astype(np.float32), np.zeros((2, 4, 4, 4), np.uint8), np.zeros((2, 3, 4), np.uint8)):
        with pytest.raises(ValueError, match="uint8"):
            patches_to_input(bad)
    # the out-of-place normalisation leaves its input as it was
    x01 = torch.rand(2, 3, 4, 4)
    before = x01.clone()
    y = imagenet_normalize(x01)
    torch.testing.assert_close(x01, before, rtol=0, atol=0)
    torch.testing.assert_close(y[:, :, 0, 0], (before[:, :, 0, 0] - mean) / std)


def test_patches_to_input_draws_as_documented():
    """randint(0, 8) per patch, flip when >= 4, then r % 4 quarter turns: checked patch by patch."""
    rng = np.random.default_rng(0)
    p = rng.integers(0, 256, (16, 3, 8, 8), dtype=np.uint8)
    out = patches_to_input(p, True, torch.Generator().manual_seed(5))
    r = torch.randint(0, 8, (16,), generator=torch.Generator().manual_seed(5))
    assert len(set(r.tolist())) > 4  # the draw exercises flips and several turns
    plain = patches_to_input(p)
    for i in range(16):
        ref = plain[i].flip(-1) if r[i] >= 4 else plain[i]
        torch.testing.assert_close(out[i], torch.rot90(ref, int(r[i]) % 4, dims=(1, 2)), rtol=0, atol=0)


def test_prediction_input_is_the_training_input():
    """The models' prediction path (uint8 moved to the device, converted there) gives the training batch bitwise."""
    from scst._inference import inference_options
    from scst.models._image import _input_on

    p = np.random.default_rng(1).integers(0, 256, (5, 3, 8, 8), dtype=np.uint8)
    got = _input_on(torch.from_numpy(p), inference_options("cpu"))
    torch.testing.assert_close(got, patches_to_input(p), rtol=0, atol=0)


@pytest.mark.filterwarnings("ignore:backbone_weights=None")
def test_train_step_on_the_scst_networks_lowers_the_loss():
    """A few steps of HGGEP (cpu_small) and TCGN (bench config) on one fixed batch: the training loss falls."""
    torch.manual_seed(0)
    n, g = 24, 5
    rng = np.random.default_rng(0)
    rows, cols = np.divmod(np.arange(n), 6)
    batch = {
        "patches": patches_to_input(rng.integers(0, 256, (n, 3, 112, 112), dtype=np.uint8)),
        "coords": torch.from_numpy(np.stack([rows, cols], 1)),
        "positions": torch.from_numpy(np.stack([rows, cols], 1).astype(np.float32) * 100),
        "target": torch.rand(n, g) * 2,
        "counts": torch.poisson(torch.full((n, g), 3.0)),
        "size_factors": torch.ones(n),
    }
    hg = HGGEPModule(g, **HGGEP_BENCH["cpu_small"]["config"])
    opt = torch.optim.AdamW(hg.parameters(), lr=1e-3)
    losses = [train_step(hg, batch, opt, precision="bf16")["mse"].item() for _ in range(8)]
    assert losses[-1] < 0.8 * losses[0]
    tc = TCGNModule(g, **dict(TCGN_BENCH, img_size=64, channels=(8, 16, 32, 64), fc_dim=32, graph_out=8))
    small = {"patches": batch["patches"][:8, :, :64, :64].contiguous(), "target": batch["target"][:8]}
    opt = torch.optim.AdamW(tc.parameters(), lr=3e-3)
    losses = [train_step(tc, small, opt)["loss"].item() for _ in range(12)]
    assert losses[-1] < 0.8 * losses[0]


def test_the_device_of_a_parameter_free_module_is_that_of_the_batchs_first_tensor():
    from scst.nn._train_step import _device_type

    meta = torch.empty(2, device="meta")
    free = nn.ReLU()
    assert _device_type(free, {"name": "s1", "x": meta}) == "meta"
    assert _device_type(free, ("s1", meta)) == "meta"
    assert _device_type(free, meta) == "meta"
    assert _device_type(free, {"name": "s1"}) == "cpu"  # no tensor at all
    assert _device_type(_Linear(), {"x": meta}) == "cpu"  # the parameters decide first
