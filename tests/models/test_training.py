"""The Lightning pieces behind BaseModel.train, one at a time (optimisers, schedulers, batch sizes, random streams)."""

from __future__ import annotations

import random
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from scst.models._training import (
    AtomicCheckpointIO,
    RNGState,
    TrainingPlan,
    _as_scalar,
    _batch_size,
    _rerunnable_script,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class _Params(nn.Module):
    """Two parameters and a loss whose gradient is zero: only weight decay moves them."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.tensor([2.0, -4.0]))
        self.frozen = nn.Parameter(torch.tensor([1.0]), requires_grad=False)

    def loss(self, batch):
        return {"loss": 0.0 * self.w.sum()}


def _one_step(plan):
    opt = plan.configure_optimizers()
    opt = opt["optimizer"] if isinstance(opt, dict) else opt
    opt.zero_grad()
    plan.module.loss(None)["loss"].backward()
    opt.step()
    return opt


def test_adamw_decays_decoupled_and_adam_through_the_gradient():
    # AdamW: the zero gradient gives a zero Adam step, the decay multiplies by 1 - lr * wd = 0.95
    m = _Params()
    opt = _one_step(TrainingPlan(m, lr=0.1, weight_decay=0.5, optimizer="adamw"))
    torch.testing.assert_close(m.w.detach(), torch.tensor([1.9, -3.8]))
    assert isinstance(opt, torch.optim.AdamW) and opt.param_groups[0]["params"] == [m.w]  # trainable ones only
    # Adam: wd * w is added to the gradient, and Adam's first step is lr * sign(grad)
    m = _Params()
    _one_step(TrainingPlan(m, lr=0.1, weight_decay=0.5, optimizer="adam"))
    torch.testing.assert_close(m.w.detach(), torch.tensor([1.9, -3.9]))


def test_schedulers():
    m = _Params()
    out = TrainingPlan(m, lr=0.1, lr_scheduler="cosine", max_epochs=4).configure_optimizers()
    opt, sched = out["optimizer"], out["lr_scheduler"]
    lrs = []
    for _ in range(4):
        opt.step()
        sched.step()
        lrs.append(opt.param_groups[0]["lr"])
    # cosine annealing over max_epochs: 0.1 * (1 + cos(pi * t / 4)) / 2, zero at the last epoch
    np.testing.assert_allclose(lrs, [0.1 * (1 + np.cos(np.pi * t / 4)) / 2 for t in range(1, 5)], atol=1e-9)

    out = TrainingPlan(m, lr=0.1, lr_scheduler="plateau", monitor="val_acc", mode="max", patience=4)
    out = out.configure_optimizers()
    opt, sched = out["optimizer"], out["lr_scheduler"]["scheduler"]
    assert out["lr_scheduler"]["monitor"] == "val_acc"
    lrs = []
    for metric in (0.5, 0.6, 0.6, 0.6, 0.6, 0.6):  # improves once (mode "max"), then flat
        sched.step(metric)
        lrs.append(opt.param_groups[0]["lr"])
    # patience 4 // 2 = 2 checks without improvement are tolerated; the third halves the learning rate
    assert lrs == [0.1, 0.1, 0.1, 0.1, 0.05, 0.05]


def test_training_plan_checks_its_settings():
    m = _Params()
    with pytest.raises(ValueError, match="`optimizer` must be one of \\['adam', 'adamw'\\]"):
        TrainingPlan(m, optimizer="sgd")
    with pytest.raises(ValueError, match="`lr_scheduler`"):
        TrainingPlan(m, lr_scheduler="step")
    for lr, wd in ((-0.1, 0.0), (float("nan"), 0.0), (0.1, -1.0)):
        with pytest.raises(ValueError, match="`lr` and `weight_decay` must be >= 0"):
            TrainingPlan(m, lr=lr, weight_decay=wd)
    with pytest.raises(TypeError, match="must define `loss"):
        TrainingPlan(nn.Linear(2, 1))


def test_batch_size_and_scalars():
    assert _batch_size(types.SimpleNamespace(num_graphs=3, x=torch.zeros(10, 2))) == 3  # a PyG batch of 3 graphs
    assert _batch_size(torch.zeros(5, 2)) == 5
    assert _batch_size(torch.tensor(1.0)) == 1
    assert _batch_size({"scale": torch.tensor(2.0), "x": torch.zeros(7, 3), "y": torch.zeros(9)}) == 7
    assert _batch_size((torch.zeros(4, 2), torch.zeros(4))) == 4
    assert _batch_size(["no tensors"]) == 1
    assert _as_scalar(torch.tensor([[2.5]])).shape == () and float(_as_scalar(torch.tensor([[2.5]]))) == 2.5
    assert _as_scalar(torch.ones(2)) is None and _as_scalar("text") is None and _as_scalar(True) is None
    assert _as_scalar(3) == 3.0 and isinstance(_as_scalar(3), float)


def test_rng_state_restores_every_stream():
    gen = torch.Generator().manual_seed(1)
    loader = DataLoader(TensorDataset(torch.arange(10)), batch_size=2, shuffle=True, generator=gen)

    def draw():
        return (torch.rand(3), np.random.rand(3), np.random.randn(), random.random(), [b[0] for b in loader])  # noqa: NPY002

    cb = RNGState([loader, None])
    state = cb.state_dict()
    first = draw()
    RNGState([loader]).load_state_dict(state)
    second = draw()
    torch.testing.assert_close(first[0], second[0], rtol=0, atol=0)
    np.testing.assert_array_equal(first[1], second[1])
    assert first[2] == second[2] and first[3] == second[3]
    for a, b in zip(first[4], second[4], strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    # without the generator state (another number of loader generators) the shuffling cannot be restored: warn
    with pytest.warns(UserWarning, match="holds 1 data-loader generator state.*have 0"):
        RNGState([]).load_state_dict(state)


@pytest.mark.parametrize("name", ["train.py", "pytest"])
def test_rerunnable_script(monkeypatch, tmp_path, name):
    """A script file is re-run with python; a pytest executable is not a script to re-run."""
    import __main__

    script = tmp_path / name
    script.write_text("")
    monkeypatch.setattr(__main__, "__spec__", None, raising=False)
    monkeypatch.delattr(sys, "ps1", raising=False)
    monkeypatch.setattr(sys, "argv", [str(script)])
    assert _rerunnable_script() == (f"python {script}" if name == "train.py" else None)
    for argv in ([""], ["-c"], [str(tmp_path / "missing.py")], [str(tmp_path)]):
        monkeypatch.setattr(sys, "argv", argv)
        assert _rerunnable_script() is None, argv
    monkeypatch.setattr(sys, "argv", [str(script)])
    monkeypatch.setattr(sys, "ps1", ">>> ", raising=False)
    assert _rerunnable_script() is None  # interactive interpreter
    monkeypatch.setattr(__main__, "__spec__", types.SimpleNamespace(name="mypkg.train"))
    assert _rerunnable_script() == "python -m mypkg.train"
    for name in ("pytest", "_pytest.main", "ipykernel.kernelapp", "IPython.terminal"):
        monkeypatch.setattr(__main__, "__spec__", types.SimpleNamespace(name=name))
        assert _rerunnable_script() is None, name


def test_checkpoint_writer_renames_a_complete_file_and_keeps_the_old_one_on_failure(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    target = tmp_path / "ckpts" / "last.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch.tensor([1.0, 2.0])}, "epoch": 3}, target)
    saved = torch.load(target, weights_only=True)
    assert saved["epoch"] == 3 and torch.equal(saved["state_dict"]["w"], torch.tensor([1.0, 2.0]))
    before = target.read_bytes()
    written = []

    def failing_save(obj, f, *args, **kwargs):  # a run killed (here: a full disk) halfway through the write
        written.append(Path(f))
        Path(f).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        io.save_checkpoint({"epoch": 4}, target)
    # the partial file was a temporary beside the target (same file system: the rename is atomic), and is gone
    assert len(written) == 1 and written[0].parent == target.parent and written[0] != target
    assert list(target.parent.iterdir()) == [target] and target.read_bytes() == before


def test_training_plan_forward_is_the_modules():
    module = nn.Linear(2, 1)
    x = torch.tensor([[1.0, 2.0]])
    module.loss = lambda batch: {"loss": torch.zeros(())}
    with torch.no_grad():
        torch.testing.assert_close(TrainingPlan(module)(x), module(x))


def test_checkpoint_writer_hands_urls_to_lightnings_writer(tmp_path):
    target = tmp_path / "remote" / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"epoch": 5}, f"file://{target}")
    assert torch.load(target, weights_only=True)["epoch"] == 5


def test_generators_are_found_once_and_missing_loaders_skipped():
    from scst.models._training import _generators

    g = torch.Generator().manual_seed(0)
    loader = DataLoader(TensorDataset(torch.zeros(4)), batch_size=2, shuffle=True, generator=g)
    assert _generators([loader, None, loader]) == [g]  # the validation loader of a run without one is None
    loader.dataset.sampler = "by_section"  # an attribute that is a name, not a sampler: not searched
    assert _generators([loader]) == [g]


def test_best_checkpoint_found_in_neither_folder_is_left_to_lightning(tmp_path):
    """A resumed checkpoint whose best file is in neither its recorded folder nor the resume folder: nothing is
    copied and its paths are not rewritten (Lightning then says the best score is not reloaded)."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    from scst.models._training import BestFromAnotherFolder

    new, old = tmp_path / "new", tmp_path / "old"
    new.mkdir()
    cb = ModelCheckpoint(dirpath=new, filename="best", monitor="val_loss")
    state = {"dirpath": str(old), "best_model_path": str(old / "best.ckpt"), "last_model_path": str(old / "last.ckpt")}
    checkpoint = {"callbacks": {cb.state_key: dict(state)}}
    trainer = types.SimpleNamespace(is_global_zero=True)
    BestFromAnotherFolder([cb], tmp_path / "resumed_from").on_load_checkpoint(trainer, None, checkpoint)
    assert checkpoint["callbacks"][cb.state_key] == state and list(new.iterdir()) == []


class _Counter:
    """A callback state of primitives (``state_key`` and ``state_dict`` as Lightning's callbacks have them)."""

    def __init__(self, n=0, key="Counter", fails=False):
        self.n, self.state_key, self.fails = n, key, fails

    def state_dict(self):
        return {"n": self.n}

    def load_state_dict(self, state):
        if self.fails:
            raise ValueError("not tensors")
        self.n = state["n"]


def test_spawn_launcher_brings_the_callback_states_of_rank_0_back():
    """What the DDP workers send (run here in one process): every callback's state but the random streams, and the
    metrics; the calling process loads them into its callbacks, or warns naming one whose state does not load."""
    from scst.models._training import _ResultsLauncher

    launcher = object.__new__(_ResultsLauncher)  # the spawning machinery is not needed for the two hooks
    rng = RNGState([])
    worker = types.SimpleNamespace(callbacks=[_Counter(7), _Counter(3, "Other"), _Counter(5, "Third"), rng],
                                   callback_metrics={"val_loss": torch.tensor(0.25)})  # fmt: skip
    extra = launcher.get_extra_results(worker)
    assert sorted(extra["scst_callback_states"]) == ["Counter", "Other", "Third"]  # RNGState stays in this process
    # the calling process's RNGState (no state sent) and a failing callback come before others that still load
    main = types.SimpleNamespace(callbacks=[RNGState([]), _Counter(), _Counter(key="Other", fails=True),
                                            _Counter(key="Third")], callback_metrics={})  # fmt: skip
    with pytest.warns(UserWarning, match=r"The state of callback Other could not be brought back .*\(ValueError: not"):
        launcher.update_main_process_results(main, extra)
    assert [cb.n for cb in main.callbacks[1:]] == [7, 0, 5]
    torch.testing.assert_close(main.callback_metrics["val_loss"], torch.tensor(0.25))


def test_ddp_is_accepted_in_a_rerun_child_and_from_a_script(monkeypatch):
    """Lightning's 'ddp' is refused only where the re-run cannot work (here: under pytest). Its re-run processes
    (``LOCAL_RANK`` set by Lightning) and a ``python script.py`` run keep Lightning's launcher."""
    import lightning.pytorch as pl
    from lightning.pytorch.strategies.launchers.subprocess_script import _SubprocessScriptLauncher

    from scst.models import _training
    from scst.models._training import prepare_strategy

    def trainer():
        return pl.Trainer(accelerator="cpu", devices=2, strategy="ddp", logger=False, enable_progress_bar=False)

    monkeypatch.delenv("LOCAL_RANK", raising=False)
    with pytest.raises(ValueError, match="`strategy='ddp'` with 2 processes"):
        prepare_strategy(trainer(), "ddp", 2)
    monkeypatch.setenv("LOCAL_RANK", "1")
    t = trainer()
    prepare_strategy(t, "ddp", 2)
    assert type(t.strategy.launcher) is _SubprocessScriptLauncher
    monkeypatch.delenv("LOCAL_RANK")
    monkeypatch.setattr(_training, "_rerunnable_script", lambda: "python train.py")
    t = trainer()
    prepare_strategy(t, "ddp", 2)
    assert type(t.strategy.launcher) is _SubprocessScriptLauncher


def test_cuda_random_streams_are_saved_and_restored_on_as_many_devices(monkeypatch):
    """On a GPU machine the CUDA generators travel with the checkpoint; resumed on another number of GPUs they
    cannot be restored, which is said (simulated here: the CUDA calls are replaced)."""
    cuda_state = [torch.tensor([1, 2], dtype=torch.uint8), torch.tensor([3, 4], dtype=torch.uint8)]
    restored = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: cuda_state)
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", restored.append)
    state = RNGState([]).state_dict()
    assert state["cuda"] is cuda_state
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    RNGState([]).load_state_dict(state)
    assert restored == [cuda_state]
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.warns(UserWarning, match=r"CUDA RNG of 2 device\(s\), this machine has 1"):
        RNGState([]).load_state_dict(state)
    assert len(restored) == 1
