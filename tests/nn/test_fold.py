"""scst.nn.folded_batchnorm: batch norms folded into the convolution before them while the context is open."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from scst.nn import HGGEP_BENCH, CDCConv2d, HGGEPModule, folded_batchnorm


def _planted_stats(module: nn.Module, seed: int = 0) -> nn.Module:
    """Batch norms with running statistics and affine parameters far from the identity (a fold that ignored any of
    them would change the output)."""
    g = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.copy_(torch.randn(c, generator=g) * 0.5)
            m.running_var.copy_(torch.rand(c, generator=g) * 1.5 + 0.5)
            m.weight.data.copy_(torch.rand(c, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(c, generator=g) * 0.3)
    return module.eval()


def _bn_calls(module: nn.Module) -> tuple[list, list]:
    calls: list = []
    handles = [
        m.register_forward_hook(lambda *a: calls.append(1)) for m in module.modules() if isinstance(m, nn.BatchNorm2d)
    ]
    return calls, handles


def test_conv_bn_pairs_fold_to_the_same_values_and_are_restored_after_the_call():
    torch.manual_seed(0)
    net = _planted_stats(
        nn.Sequential(
            nn.Conv2d(3, 5, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(5),
            nn.ReLU(),
            CDCConv2d(5, 4, 3, theta=0.7, cross=True),
            nn.BatchNorm2d(4),
            nn.ReLU6(),
            nn.BatchNorm2d(4),  # after an activation: not foldable, stays
            nn.Conv2d(4, 6, 1, bias=True),
            nn.BatchNorm2d(6),
        )  # fmt: skip
    )
    x = torch.randn(4, 3, 17, 17)
    children = list(net)
    state = {k: v.clone() for k, v in net.state_dict().items()}
    with torch.no_grad():
        ref = net(x)
        calls, handles = _bn_calls(net)
        with folded_batchnorm(net) as n_folded:
            assert n_folded == 3
            kinds = [nn.Conv2d, nn.Identity, nn.ReLU, nn.Conv2d, nn.Identity, nn.ReLU6, nn.BatchNorm2d, nn.Conv2d]
            assert [type(m) for m in net] == [*kinds, nn.Identity]
            got = net(x)
        for h in handles:
            h.remove()
    assert len(calls) == 1  # only the batch norm after the activation ran
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    assert list(net) == children and all(a is b for a, b in zip(net, children))  # the same modules again
    assert all(torch.equal(v, state[k]) for k, v in net.state_dict().items())
    with torch.no_grad():
        torch.testing.assert_close(net(x), ref, rtol=0, atol=0)


def test_cdc_folds_its_effective_kernel_not_its_raw_weight():
    torch.manual_seed(1)
    net = _planted_stats(nn.Sequential(CDCConv2d(3, 4, 3, theta=0.7), nn.BatchNorm2d(4)))
    x = torch.randn(2, 3, 9, 9)
    with torch.no_grad():
        ref = net(x)
        plain_ref = nn.functional.batch_norm(
            nn.functional.conv2d(x, net[0].weight, padding=1), net[1].running_mean, net[1].running_var,
            net[1].weight, net[1].bias, eps=net[1].eps,
        )  # fmt: skip
        assert (plain_ref - ref).abs().max() > 0.1  # the difference term matters here
        with folded_batchnorm(net) as n:
            got = net(x)
    assert n == 1
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    assert isinstance(net[0], CDCConv2d)


def test_what_is_not_folded():
    class Doubled(nn.Conv2d):  # a Conv2d subclass with its own forward: its raw weight is not its kernel
        def forward(self, x):
            return 2 * super().forward(x)

    torch.manual_seed(2)
    training = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))  # training mode: batch statistics
    no_stats = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, track_running_stats=False)).eval()
    custom = _planted_stats(nn.Sequential(Doubled(3, 4, 3), nn.BatchNorm2d(4)))

    class Attrs(nn.Module):  # a pair outside an nn.Sequential: the forward could use them in any order
        def __init__(self):
            super().__init__()
            self.conv, self.bn = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)

        def forward(self, x):
            return self.bn(self.conv(x))

    class Residual(nn.Sequential):  # a Sequential subclass with its own forward: its children are not a chain
        def forward(self, x):
            return self[1](x) + self[0](x)

    residual = _planted_stats(Residual(nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4)))
    for net in (training, no_stats, custom, _planted_stats(Attrs()), residual):
        before = list(net.children())
        with folded_batchnorm(net) as n:
            assert n == 0 and list(net.children()) == before


def test_restored_after_an_error_inside_the_call():
    net = _planted_stats(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)))
    conv, bn = net[0], net[1]
    with pytest.raises(KeyError), folded_batchnorm(net):
        assert net[0] is not conv
        raise KeyError("inside")
    assert net[0] is conv and net[1] is bn


def test_hggep_encoder_folds_every_pair_and_encodes_the_same_tokens():
    """GEM's two branches and mixing conv, the ShuffleNet stem, branches and conv5: every batch norm folds but the
    stage projections' (it precedes its convolution), with the same tokens."""
    torch.manual_seed(3)
    m = _planted_stats(HGGEPModule(7, **HGGEP_BENCH["cpu_small"]["config"]))
    x = torch.randn(5, 3, 64, 64)
    n_bn = sum(isinstance(b, nn.BatchNorm2d) for b in m.modules())
    with torch.no_grad():
        ref = m.encode_patches(x)
        calls, handles = _bn_calls(m)
        with folded_batchnorm(m) as n:
            got = m.encode_patches(x)
        for h in handles:
            h.remove()
    assert n == n_bn - 3 and len(calls) == 3  # the three stage projections' norms still run
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5)


def test_a_cdc_with_a_bias_folds_with_its_bias():
    """The plain copy of a convolution with an ``effective_weight`` keeps its bias: folded == unfolded output."""
    from scst.nn._fold import _plain_conv

    torch.manual_seed(2)
    cdc = CDCConv2d(3, 4, 3, theta=0.7, bias=True)
    with torch.no_grad():
        cdc.bias.copy_(torch.tensor([1.0, -2.0, 0.5, 3.0]))
    plain = _plain_conv(cdc)
    assert type(plain) is nn.Conv2d and torch.equal(plain.bias, cdc.bias)
    x = torch.randn(2, 3, 7, 7)
    with torch.no_grad():
        torch.testing.assert_close(plain(x), cdc(x), rtol=1e-5, atol=1e-5)
        net = _planted_stats(nn.Sequential(cdc, nn.BatchNorm2d(4))).eval()
        ref = net(x)
        with folded_batchnorm(net) as n:
            got = net(x)
    assert n == 1
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
