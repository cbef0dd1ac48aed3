"""Inference options of `tl.embed_patches` and the models' `predict`: loader workers, pinned memory, autocast.

One place resolves and checks ``num_workers``, ``pin_memory`` and ``precision`` so that every prediction path reads
them the same way. Defaults suit a small CPU machine (no workers, no pinning, fp32); on a GPU pass e.g.
``num_workers=4, precision="bf16"`` (``pin_memory`` follows the device by default). During inference each batch norm
that follows a convolution is folded into it and convolutions run in the channels-last memory layout
(:meth:`InferenceOptions.convolutions`): the same values to float rounding, faster on CPU (oneDNN) and on GPU tensor
cores.
"""

from __future__ import annotations

import contextlib
import itertools
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ._utils import _positive_int
from .nn._fold import folded_batchnorm
from .nn._train_step import PRECISIONS  # one table of accepted precisions (torch-only; shared with training)

#: Batches each DataLoader worker reads ahead of the model (``prefetch_factor``).
PREFETCH = 4


@dataclass(frozen=True)
class InferenceOptions:
    """Resolved inference options (see :func:`inference_options`)."""

    device: torch.device
    num_workers: int = 0
    pin_memory: bool = False
    dtype: torch.dtype | None = None
    channels_last: bool = True
    fold_batchnorm: bool = True

    def loader_kwargs(self, n_items: int | None = None) -> dict[str, Any]:
        """``DataLoader`` keyword arguments: workers (each reading ``PREFETCH`` batches ahead) and pinning.

        ``n_items``: the number of batches of a dataset whose neighbouring items share image chunks (batches in
        chunk order); with several workers a :func:`worker_blocks` sampler then hands each worker its own run of
        neighbouring batches, so that the workers seldom decode the same chunks (only at the blocks' edges).
        """
        kw: dict[str, Any] = {"num_workers": self.num_workers, "pin_memory": self.pin_memory}
        if self.num_workers > 0:
            kw["prefetch_factor"] = PREFETCH
        if self.num_workers > 1 and n_items is not None:
            kw["sampler"] = self.item_order(n_items)
        return kw

    def item_order(self, n_items: int) -> list[int]:
        """The order in which a loader made with ``loader_kwargs(n_items)`` yields its ``n_items`` items."""
        return worker_blocks(n_items, self.num_workers) if self.num_workers > 1 else list(range(n_items))

    def autocast(self) -> contextlib.AbstractContextManager:
        """``torch.autocast`` on the device in the requested dtype, or a no-op for fp32."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    def to_device(self, x: torch.Tensor) -> torch.Tensor:
        """Move a (possibly pinned) batch to the device; asynchronous when pinned."""
        return x.to(self.device, non_blocking=self.pin_memory)

    @contextlib.contextmanager
    def convolutions(self, module: torch.nn.Module) -> Iterator[None]:
        """The module's convolutions prepared for inference while the context is open (restored on exit).

        Batch norms after a convolution folded into it (:func:`scst.nn.folded_batchnorm`, when ``fold_batchnorm``),
        then the convolution weights in channels-last layout (:meth:`conv_layout`). Batches go in with
        :meth:`input_layout`.
        """
        with contextlib.ExitStack() as stack:
            if self.fold_batchnorm:
                stack.enter_context(folded_batchnorm(module))
            stack.enter_context(self.conv_layout(module))
            yield

    def conv_layout(self, module: torch.nn.Module) -> contextlib.AbstractContextManager:
        """The module's convolution weights in channels-last layout while the context is open.

        See :func:`channels_last_weights`; a no-op when ``channels_last`` is False. Batches go in with
        :meth:`input_layout`.
        """
        return channels_last_weights(module) if self.channels_last else contextlib.nullcontext()

    def input_layout(self, x: torch.Tensor) -> torch.Tensor:
        """A 4-D image batch in the layout of :meth:`conv_layout` (channels-last when ``channels_last``)."""
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last and x.ndim == 4 else x


@contextlib.contextmanager
def channels_last_weights(module: torch.nn.Module) -> Iterator[None]:
    """Hold ``module``'s 4-D parameters and buffers (convolution kernels) in ``torch.channels_last`` layout.

    The values are the same; only the memory order changes, which lets oneDNN on CPU and cuDNN on GPU tensor cores
    pick faster kernels (on the benchmark CPU: ST-Net ~19 % more spots/s, TCGN and HGGEP within the run-to-run
    spread, docs/benchmarks/scale.md). The default layout is restored on exit (also after an error), so checkpoints
    (safetensors needs contiguous tensors) and training see the module as before. A module without 4-D tensors, or
    one whose 4-D tensors are not all in the default layout (converted by the user), is left as it is.
    """
    four_d = [t for t in itertools.chain(module.parameters(), module.buffers()) if t.ndim == 4]
    if not four_d or not all(t.is_contiguous() for t in four_d):
        yield
        return
    module.to(memory_format=torch.channels_last)
    try:
        yield
    finally:
        module.to(memory_format=torch.contiguous_format)


def worker_blocks(n_items: int, num_workers: int) -> list[int]:
    """Item order that gives each DataLoader worker one contiguous block of the items.

    A ``DataLoader`` hands the sampler's indices to its workers in turn (index ``k`` to worker ``k % num_workers``
    while all are active), so interleaving ``num_workers`` contiguous blocks — ``0, m, 2m, …, 1, m + 1, …`` —
    gives worker ``j`` the items of block ``j`` in order. Items are still returned in this order and placed by their
    index, so the result does not depend on it; only which worker reads what (and so which decoded image chunks each
    worker's cache holds) does. Every item appears exactly once.
    """
    if n_items < 0 or num_workers < 1:
        raise ValueError(f"worker_blocks: expected n_items >= 0 and num_workers >= 1, got {n_items}, {num_workers}.")
    # Block sizes differ by at most one, the longer blocks first: the last round then ends on workers 0, 1, ….
    size, extra = divmod(n_items, num_workers)
    starts = np.cumsum([0] + [size + (j < extra) for j in range(num_workers)])
    rounds = range(size + (extra > 0))
    return [int(starts[j] + k) for k in rounds for j in range(num_workers) if starts[j] + k < starts[j + 1]]


def inference_options(
    device: str | torch.device, num_workers: int = 0, pin_memory: bool | None = None, precision: str = "32"
) -> InferenceOptions:
    """Check and resolve the inference options of a prediction call.

    Parameters
    ----------
    device
        Torch device of the model.
    num_workers
        DataLoader worker processes reading patches while the model computes (0: read in the main process).
    pin_memory
        Page-locked host batches for asynchronous copies to a GPU; None: True on CUDA, False otherwise. True
        without CUDA is ignored with a warning.
    precision
        ``"32"`` (fp32, default), ``"bf16"`` or ``"16"`` (fp16) autocast of the forward pass (Lightning's
        ``"bf16-mixed"``/``"16-mixed"``/``"32-true"`` are accepted too). Outputs are returned as float32.

    Returns
    -------
    The resolved :class:`InferenceOptions`.
    """
    device = torch.device(device)
    key = check_inference_options(num_workers, pin_memory, precision)
    if pin_memory is None:
        pin_memory = device.type == "cuda"
    elif pin_memory and not torch.cuda.is_available():
        warnings.warn("pin_memory=True needs CUDA, which is not available: batches are not pinned.", stacklevel=3)
        pin_memory = False
    # numpy values (np.int64 workers, np.bool_) as the Python ones the DataLoader and the `is` checks expect
    return InferenceOptions(
        device=device, num_workers=int(num_workers), pin_memory=bool(pin_memory), dtype=PRECISIONS[key]
    )


def check_inference_options(num_workers: Any, pin_memory: Any, precision: Any) -> str:
    """Check the inference options without a device (before any work); returns the precision key."""
    _positive_int("num_workers", num_workers, minimum=0)
    if pin_memory is not None and not isinstance(pin_memory, bool | np.bool_):
        raise TypeError(f"pin_memory: expected True, False or None, got {type(pin_memory).__name__}.")
    if str(precision) not in PRECISIONS:
        raise ValueError(f"precision: expected one of {sorted(PRECISIONS)}, got {precision!r}.")
    return str(precision)


def _to_float32(out: Any) -> Any:
    """Floating tensors in (nested) outputs as float32 (autocast leaves bf16/fp16 outputs)."""
    if isinstance(out, torch.Tensor):
        return out.float() if out.is_floating_point() else out
    if isinstance(out, dict):
        return {k: _to_float32(v) for k, v in out.items()}
    if isinstance(out, list | tuple):
        return type(out)(_to_float32(v) for v in out)
    return out
