"""Inference-time folding of BatchNorm into the convolution before it (torch's ``fuse_conv_bn_eval``)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

__all__ = ["folded_batchnorm"]


def _plain_conv(conv: nn.Conv2d) -> nn.Conv2d | None:
    """``conv`` as a plain ``nn.Conv2d`` (a copy for convolutions with an ``effective_weight``), else None."""
    if type(conv) is nn.Conv2d:
        return conv
    if not (isinstance(conv, nn.Conv2d) and callable(getattr(conv, "effective_weight", None))):
        return None  # a Conv2d subclass with its own forward: folding its raw weight would change its output
    w = conv.effective_weight().detach()
    plain = nn.Conv2d(
        conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride, padding=conv.padding,
        dilation=conv.dilation, groups=conv.groups, bias=conv.bias is not None, padding_mode=conv.padding_mode,
        device=w.device, dtype=w.dtype,
    )  # fmt: skip
    with torch.no_grad():
        plain.weight.copy_(w)
        if conv.bias is not None:
            plain.bias.copy_(conv.bias)
    return plain.train(conv.training)


def _foldable(conv: nn.Module, bn: nn.Module) -> bool:
    return (
        isinstance(conv, nn.Conv2d)
        and type(bn) is nn.BatchNorm2d
        and not conv.training
        and not bn.training
        and bn.track_running_stats
        and bn.running_mean is not None
        and bn.running_var is not None
        and bn.num_features == conv.out_channels
    )


@contextlib.contextmanager
def folded_batchnorm(module: nn.Module) -> Iterator[int]:
    """Fold each eval-mode ``BatchNorm2d`` into the ``Conv2d`` just before it while the context is open.

    Inside an ``nn.Sequential`` (the blocks of torchvision's ShuffleNet/MobileNet stems and branches, ResNet
    downsample paths, HGGEP's GEM), a convolution followed by a batch norm in eval mode computes
    ``bn(conv(x))``, an affine map of the convolution; torch's :func:`~torch.nn.utils.fusion.fuse_conv_bn_eval`
    turns the pair into one convolution (the same values to float rounding, one pass over the feature map
    instead of two: ~13–20 % less time in HGGEP's ShuffleNet encoder on CPU, docs/benchmarks/scale.md). Pairs
    are swapped for ``(fused conv, nn.Identity())`` and restored on exit (also after an error): the module, its
    parameters and its ``state_dict`` are the same objects afterwards. Convolutions with an ``effective_weight()``
    (:class:`scst.nn.CDCConv2d`) fold their effective kernel; other ``Conv2d`` subclasses, batch norms in training
    mode or without running statistics, and pairs outside an ``nn.Sequential`` (or in a subclass of it with its
    own ``forward``) are left as they are.

    Parameters
    ----------
    module
        The network, in eval mode for the pairs to fold.

    Yields
    ------
    The number of pairs folded.
    """
    pairs = []
    for parent in module.modules():
        if not isinstance(parent, nn.Sequential) or type(parent).forward is not nn.Sequential.forward:
            continue  # a subclass with its own forward may not apply its children one after the other
        names = list(parent._modules)
        for a, b in zip(names, names[1:]):
            conv, bn = parent._modules[a], parent._modules[b]
            plain = _plain_conv(conv) if _foldable(conv, bn) else None
            if plain is not None:
                pairs.append((parent, a, conv, b, bn, plain))
    done = []
    try:
        with torch.no_grad():
            for parent, a, conv, b, bn, plain in pairs:
                parent._modules[a], parent._modules[b] = fuse_conv_bn_eval(plain, bn), nn.Identity()
                done.append((parent, a, conv, b, bn))
        yield len(done)
    finally:
        for parent, a, conv, b, bn in reversed(done):
            parent._modules[a], parent._modules[b] = conv, bn
