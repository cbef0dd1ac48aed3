"""Image backbones by name, and one resolver of their weights.

Torch, torchvision and (optionally) timm only, so that ``scst.nn`` imports without the scverse stack.
:func:`build_backbone` and :func:`load_weights` serve :func:`scst.tl.embed_patches` (``weights=``),
:class:`scst.models.STNet` (``weights``), :class:`scst.models.HGGEP` and :class:`scst.models.TCGN`
(``backbone_weights``). What ``weights`` may be:

* ``None``: random initialisation, with a :class:`UserWarning` that predictions will be weak;
* a torchvision weights name of the model (``"IMAGENET1K_V1"``, ``"DEFAULT"``, ``"ResNet18_Weights.IMAGENET1K_V1"``):
  ``torchvision.models.get_model(name, weights=...)`` downloads into ``$TORCH_HOME/hub/checkpoints`` with torchvision's
  hash check and progress bar (nothing is downloaded when the file is already there);
* ``"pretrained"`` (or ``"DEFAULT"``) for a timm model name, ``"hf-hub:<org>/<model>"`` hub names included:
  ``timm.create_model(name, pretrained=True, num_classes=0)`` (the Hugging Face cache, gated models need
  ``huggingface-cli login`` and an accepted licence);
* a local ``.safetensors`` file or torch state_dict file (read with ``weights_only=True``), a state_dict mapping or an
  :class:`torch.nn.Module` whose state_dict is copied.

Without network access a weights name fails with an error that names the local-file alternative. A state_dict
that does not fit the backbone fails with the first missing, reshaped and unexpected entries. See
``docs/encoders.md`` for choosing weights (ImageNet, pathology foundation models, self-supervised weights).
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
import sys
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = ["build_backbone", "load_backbone_weights", "load_weights"]

_logger = logging.getLogger(__name__)

#: File suffixes taken as a (missing) local weights file rather than a weights name.
_FILE_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt", ".tar")
#: Weights names that ask timm for the model's default pretrained weights.
_TIMM_PRETRAINED = ("pretrained", "DEFAULT")
_WeightsArg = "str | os.PathLike | Mapping[str, torch.Tensor] | nn.Module | None"

_SKIP_WEIGHTS: contextvars.ContextVar[bool] = contextvars.ContextVar("scst_skip_backbone_weights", default=False)


@contextlib.contextmanager
def weights_overwritten() -> Iterator[None]:
    """Inside this context backbones are built randomly, silently and without downloads.

    For rebuilding a saved model whose whole state_dict is loaded right after (``BaseModel.load``): the saved
    ``backbone_weights`` name or file is neither needed nor downloaded again.
    """
    token = _SKIP_WEIGHTS.set(True)
    try:
        yield
    finally:
        _SKIP_WEIGHTS.reset(token)


# --------------------------------------------------------------------------------------------------------------
# Builders
# --------------------------------------------------------------------------------------------------------------
def _replace_last_linear(model: nn.Module) -> int:
    """Replace the model's last :class:`~torch.nn.Linear` (its classifier) by Identity; return its input width."""
    last = None
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Linear):
            last = (name, mod)
    if last is None:
        raise ValueError(f"{type(model).__name__} has no Linear classifier to remove.")
    name, lin = last
    parent = model.get_submodule(name.rpartition(".")[0]) if "." in name else model
    setattr(parent, name.rpartition(".")[2], nn.Identity())
    model._scst_classifier = (name,)  # checkpoint entries under these names are the removed classifier
    return int(lin.in_features)


def _is_torchvision(name: str) -> bool:
    import torchvision

    return name in torchvision.models.list_models(module=torchvision.models)


def _timm(name: str) -> Any:
    """The timm module if ``name`` is a timm model (hub and local-dir names included), else a clear ValueError."""
    hub = name.startswith(("hf-hub:", "hf_hub:", "local-dir:"))
    try:
        import timm
    except ImportError:  # timm is optional: say so instead of failing on the import
        raise ValueError(
            f"backbone: {name!r} is neither a torchvision classification model nor available from timm "
            "(timm is not installed: pip install 'scst[timm]'; see torchvision.models.list_models())."
        ) from None
    if hub or timm.is_model(name):
        return timm
    raise ValueError(
        f"backbone: {name!r} is neither a torchvision classification model nor a timm model "
        "(see torchvision.models.list_models() / timm.list_models(); hub models as 'hf-hub:<org>/<model>')."
    )


def _torchvision_trunk(name: str, weights: Any, kwargs: Mapping[str, Any]) -> tuple[nn.Module, int]:
    import torchvision

    model = torchvision.models.get_model(name, weights=weights, **kwargs)
    removed = []
    if hasattr(model, "aux_logits"):  # Inception/GoogLeNet: no auxiliary heads in feature extraction
        model.aux_logits = False
        for aux in ("AuxLogits", "aux1", "aux2"):
            if getattr(model, aux, None) is not None:
                setattr(model, aux, None)
                removed.append(aux)
    n_features = _replace_last_linear(model)
    model._scst_classifier += tuple(removed)  # an official checkpoint holds the auxiliary heads too
    return model, n_features


def _timm_trunk(timm: Any, name: str, pretrained: bool, kwargs: Mapping[str, Any]) -> tuple[nn.Module, int]:
    model = timm.create_model(name, pretrained=pretrained, **{**kwargs, "num_classes": 0})
    heads = model.pretrained_cfg.get("classifier") or ()  # a name, or several (distilled DeiT: head, head_dist)
    model._scst_classifier = (heads,) if isinstance(heads, str) else tuple(heads)
    return model, int(model.num_features)


def _offline_error(where: str, name: str, weights: str, err: Exception, cached: str | None = None) -> OSError:
    if name.startswith(("hf-hub:", "hf_hub:")):
        repo = name.split(":", 1)[1].split("@")[0]
        hint = (
            f"gated models need `huggingface-cli login` and an accepted licence. Without network access, download "
            f"the repository elsewhere (`huggingface-cli download {repo} --local-dir DIR`), copy DIR here and use "
            f"the name 'local-dir:DIR' with {where}='pretrained', or pass a local state_dict file: "
            f"{where}='/path/to/model.safetensors'"
        )
    else:
        hint = (
            f"without network access, download the weights elsewhere and pass the local file: "
            f"{where}='/path/to/{name}.safetensors' (or a torch state_dict file, read with weights_only=True)"
        )
        if cached:
            hint += f", or copy the file to {cached} (torchvision's cache, hash-checked)"
    return OSError(
        f"{where}: could not get the pretrained weights {weights!r} of {name!r} ({type(err).__name__}: {err}); "
        f"{hint}. See docs/encoders.md."
    )


def _pretrained(name: str, weights: str, where: str, kwargs: Mapping[str, Any]) -> tuple[nn.Module, int]:
    """Build ``name`` with the named pretrained weights (torchvision enum member or timm ``pretrained``)."""
    if _is_torchvision(name):
        import torchvision

        enum = torchvision.models.get_model_weights(name)
        member = "DEFAULT" if weights == "pretrained" else weights.rsplit(".", 1)[-1]
        enum_name = weights.rpartition(".")[0].rpartition(".")[2]  # "ResNet18_Weights" of "ResNet18_Weights.X"
        if member not in enum.__members__ or enum_name not in ("", enum.__name__):  # not another model's weights
            raise ValueError(
                f"{where}: expected a local state_dict file or a torchvision weights name of {name} "
                f"({['pretrained', *enum.__members__]}, or as {enum.__name__}.<name>), got {weights!r}."
            )
        chosen = enum[member]
        cached = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(chosen.url))
        try:
            return _torchvision_trunk(name, chosen, kwargs)
        except (TypeError, ValueError):  # model_kwargs the model or its weights do not take: not a download problem
            raise
        except Exception as err:  # network, proxy, hash check: all mean "no usable download here"
            raise _offline_error(where, name, weights, err, cached) from err
    timm = _timm(name)
    if weights not in _TIMM_PRETRAINED:
        raise ValueError(
            f"{where}: expected 'pretrained' (timm's default weights of {name!r}; choose others with a tag in the "
            f"name, e.g. 'resnet50.a1_in1k') or a local state_dict file, got {weights!r}."
        )
    with _timm_load_log() as mismatches:
        try:
            trunk = _timm_trunk(timm, name, pretrained=True, kwargs=kwargs)
        except (TypeError, ValueError):  # model_kwargs the model does not take: not a download problem
            raise
        except RuntimeError as err:
            if "state_dict" not in str(err):  # not torch's load_state_dict: treated as a download problem
                raise _offline_error(where, name, weights, err) from err
            # the weights arrived but do not fit: torch lists one line per entry of another shape
            lines = [ln.strip() for ln in str(err).splitlines() if ln.strip().startswith("size mismatch")]
            mismatches.append(f"{len(lines)} with another shape ({lines[0]})" if lines else str(err)[:300])
        except Exception as err:  # hub offline, gated repository, no pretrained weights for this tag
            raise _offline_error(where, name, weights, err) from err
    if mismatches:  # timm loads without its classifier non-strictly and only logs what did not fit
        raise ValueError(
            f"{where}: the pretrained weights of {name!r} do not match the model built: {'; '.join(mismatches)}. "
            "Hub models often need model_kwargs (encoder_kwargs in embed_patches) to build the architecture their "
            "weights fit, e.g. {'init_values': 1e-5} for UNI / H-optimus; see the model card and docs/encoders.md."
        )
    return trunk


@contextlib.contextmanager
def _timm_load_log() -> Iterator[list[str]]:
    """Collect timm's "Missing keys (...)" / "Unexpected keys (...)" log lines of a pretrained load (first 5 keys)."""
    found: list[str] = []

    class _Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            msg = record.getMessage()
            for kind in ("Missing", "Unexpected"):
                if msg.startswith(f"{kind} keys ("):
                    keys = msg[len(kind) + 7 :].split(")", 1)[0].split(", ")
                    found.append(f"{len(keys)} {kind.lower()} entries {keys[:5]}")

    log = logging.getLogger("timm.models._builder")
    handler, level, propagate = _Collect(logging.INFO), log.level, log.propagate
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False  # the mismatch becomes our error; timm's own lines would only repeat it
    try:
        yield found
    finally:
        log.removeHandler(handler)
        log.setLevel(level)
        log.propagate = propagate


def _looks_like_path(weights: str) -> bool:
    return os.sep in weights or "/" in weights or weights.startswith(("~", ".")) or weights.endswith(_FILE_SUFFIXES)


def _warn_random(where: str, what: str) -> None:
    warnings.warn(
        f"{where}=None: the {what} starts from random initialisation; predictions will be weak. Pass pretrained "
        f"weights ({where}='IMAGENET1K_V1' for torchvision models, 'pretrained' for timm / hf-hub models, or a "
        "local state_dict file; see docs/encoders.md).",
        UserWarning,
        stacklevel=_user_stacklevel(),
    )


def _user_stacklevel() -> int:
    """Stack level of the first caller outside scst (so the warning points at the user's line)."""
    pkg = str(Path(__file__).resolve().parents[1])
    frame, level = sys._getframe(1), 1
    while frame is not None and str(Path(frame.f_code.co_filename).resolve()).startswith(pkg):
        frame, level = frame.f_back, level + 1
    return level


def build_backbone(
    name: str,
    weights: Any = None,
    *,
    where: str = "weights",
    model_kwargs: Mapping[str, Any] | None = None,
    warn_random: bool = True,
) -> tuple[nn.Module, int]:
    """A torchvision or timm classification network with its classifier removed, and its weights.

    Parameters
    ----------
    name
        A torchvision classification model (``torchvision.models.list_models(module=torchvision.models)``, e.g.
        ``"resnet18"``, ``"densenet121"``) or a timm model (``timm.list_models()``, a pretrained tag allowed:
        ``"resnet50.a1_in1k"``; hub models ``"hf-hub:<org>/<model>"``); torchvision wins a tie.
    weights
        None (random initialisation, with a warning), a torchvision weights name (``"IMAGENET1K_V1"``,
        ``"DEFAULT"``), ``"pretrained"`` (torchvision ``DEFAULT`` / timm's pretrained weights, hub included), a
        local ``.safetensors`` / torch state_dict file, a state_dict mapping or a module whose state_dict is copied.
        Files may hold the classifier (ignored) or not, and may be wrapped (``{"state_dict": ...}``,
        ``{"model": ...}``, ``module.`` or any one prefix such as ``encoder.``).
    where
        Argument name used in messages.
    model_kwargs
        Extra keyword arguments of ``torchvision.models.get_model`` / ``timm.create_model``; several hub models need
        them to build the architecture their weights fit (UNI, H-optimus: ``{"init_values": 1e-5}``; see
        ``docs/encoders.md``). ``num_classes`` is always 0 for timm models.
    warn_random
        Whether ``weights=None`` warns that predictions will be weak. False where random initialisation is the
        intent (self-supervised pretraining from scratch) or the caller warns itself.

    Returns
    -------
    ``(module, n_features)``: the module maps ``(B, 3, H, W)`` ImageNet-normalised images to globally pooled
    ``(B, n_features)`` features.

    Raises
    ------
    ValueError
        Unknown model name or weights name; a state_dict that does not fit (the first mismatches are listed).
    FileNotFoundError
        ``weights`` looks like a path but is not a file.
    OSError
        Named weights could not be downloaded (offline, gated hub model): the message names the local-file
        alternative.
    """
    if not isinstance(name, str) or not name:
        raise TypeError(f"backbone: expected a model name (str), got {name!r}.")
    kwargs = dict(model_kwargs or {})
    tv = _is_torchvision(name)
    timm = None if tv else _timm(name)  # validates the name before any weights are looked at

    def random_init() -> tuple[nn.Module, int]:
        if tv:
            return _torchvision_trunk(name, None, kwargs)
        try:
            return _timm_trunk(timm, name, pretrained=False, kwargs=kwargs)
        except Exception as err:  # hub names fetch their config.json even without weights
            if name.startswith(("hf-hub:", "hf_hub:")):
                raise _offline_error(where, name, "config.json", err) from err
            raise

    if _SKIP_WEIGHTS.get():
        return random_init()
    if isinstance(weights, str) and not os.path.isfile(weights) and not _looks_like_path(weights):
        return _pretrained(name, weights, where, kwargs)
    module, n_features = random_init()
    if weights is None and not warn_random:
        return module, n_features
    load_weights(module, weights, where=where, what=f"{name} backbone")
    return module, n_features


# --------------------------------------------------------------------------------------------------------------
# State dicts
# --------------------------------------------------------------------------------------------------------------
def _is_safetensors(path: Path) -> bool:
    """Whether ``path`` holds safetensors (an 8-byte header length, then the JSON header), whatever its suffix."""
    with open(path, "rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{"


def _read_state(path: Path, where: str) -> dict[str, torch.Tensor]:
    # by content, not suffix: a torch file named .safetensors (or the reverse) is common after a rename
    if _is_safetensors(path):
        from safetensors.torch import load_file

        try:
            state: Any = load_file(str(path))
        except Exception as err:  # truncated file, corrupt header
            raise ValueError(
                f"{where}: {str(path)!r} is not a readable safetensors file (truncated or corrupt? "
                f"{type(err).__name__}: {err})."
            ) from err
    else:
        try:
            with open(path, "rb") as f:  # a file object: torch.load reads a path ending in .safetensors as one
                state = torch.load(f, map_location="cpu", weights_only=True)
        except Exception as err:  # pickles with code, truncated files
            raise ValueError(
                f"{where}: {str(path)!r} is not a state_dict readable with torch.load(weights_only=True) "
                f"({type(err).__name__}: {err})."
            ) from err
    for wrapper in ("state_dict", "model"):
        if isinstance(state, Mapping) and isinstance(state.get(wrapper), Mapping):
            state = state[wrapper]
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{where}: {str(path)!r} does not hold a state_dict (name → tensor).")
    return dict(state)


def _strip_prefix(state: dict[str, torch.Tensor], own: Mapping[str, torch.Tensor]) -> tuple[dict, list[str]]:
    """Drop ``module.``; if the module's keys are not there, try each first key component as a prefix."""
    state = {k.removeprefix("module."): v for k, v in state.items()}
    if set(own) <= set(state):
        return state, []
    for prefix in sorted({k.split(".", 1)[0] + "." for k in state if "." in k}):
        sub = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        if own and set(own) <= set(sub):
            return sub, [k for k in state if not k.startswith(prefix)]
    return state, []


def _fit(
    module: nn.Module, state: dict[str, torch.Tensor], where: str, source: str, ignore: Sequence[str]
) -> list[str]:
    """Check ``state`` against ``module`` (listing the first mismatches), load it, return the ignored keys."""
    own = module.state_dict()
    state, outside = _strip_prefix(state, own)
    # BatchNorm's num_batches_tracked: absent from old/converted checkpoints; torch's strict load fills it in
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    wrong = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    heads = getattr(module, "_scst_classifier", ())  # names of the removed classifier (and auxiliary heads)
    skip = tuple(ignore) + tuple(p for h in heads for p in (h, h + "."))
    extra = [k for k in state if k not in own]
    alien = [k for k in extra if not (k in skip or k.startswith(tuple(p for p in skip if p.endswith("."))))]
    if missing or wrong or alien:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing entries {missing[:5]}")
        if wrong:
            shapes = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}" for k in wrong[:5]]
            parts.append(f"{len(wrong)} with another shape [{'; '.join(shapes)}]")
        if alien:
            parts.append(f"{len(alien)} entries the model lacks {alien[:5]} (a checkpoint of another architecture?)")
        raise ValueError(
            f"{where}: {source} does not match {type(module).__name__} ({len(own)} entries): {', '.join(parts)}."
        )
    module.load_state_dict({k: state[k] for k in own if k in state}, strict=True)
    ignored = outside + extra
    _logger.info(f"{where}: loaded {len(own)} tensors from {source}; {len(ignored)} ignored (e.g. {ignored[:3]})")
    return ignored


def load_backbone_weights(
    module: nn.Module, weights: Any, where: str = "weights", *, ignore: Sequence[str] = ()
) -> list[str]:
    """Load a local state_dict file, a state_dict mapping or another module's weights into ``module``.

    Parameters
    ----------
    module
        Network, e.g. from :func:`build_backbone`.
    weights
        Path to a ``.safetensors`` file or a torch file holding a state_dict (told apart by their content, not
        the suffix; torch files are read with ``weights_only=True``;
        a ``{"state_dict": ...}`` or ``{"model": ...}`` wrapper, ``module.`` and one common prefix such as
        ``encoder.`` are accepted), a state_dict mapping, or an :class:`torch.nn.Module` whose state_dict is copied.
    where
        Argument name used in error messages.
    ignore
        Key prefixes (ending with ``"."``) or keys of the file that may be present and are not loaded (besides the
        classifier removed by :func:`build_backbone`).

    Returns
    -------
    Keys of the file that were ignored (the classifier, ``ignore`` entries, entries outside a stripped prefix).

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    ValueError
        If a parameter or buffer of ``module`` is missing from the file or has another shape, or if the file holds
        other entries than the module's and the ignored ones (a checkpoint of another architecture); the first
        mismatches are listed.
    """
    if isinstance(weights, nn.Module):
        if weights is module:
            return []
        return _fit(module, dict(weights.state_dict()), where, f"the given {type(weights).__name__}", ignore)
    if isinstance(weights, Mapping):
        if not all(isinstance(v, torch.Tensor) for v in weights.values()):
            raise ValueError(f"{where}: a mapping must be a state_dict (name → tensor).")
        return _fit(module, dict(weights), where, "the given state_dict", ignore)
    if not isinstance(weights, str | os.PathLike):
        raise TypeError(
            f"{where}: expected a weights name, a local state_dict file, a state_dict or a module, "
            f"got {type(weights).__name__}."
        )
    path = Path(weights).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"{where}: {str(path)!r} is not a file; pass an existing local state_dict file (.safetensors or a torch "
            "file) or a weights name."
        )
    return _fit(module, _read_state(path, where), where, repr(str(path)) + _recorded_backbone(path), ignore)


def weights_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The metadata of a safetensors weights file; ``{}`` for a torch file, no metadata or an unreadable header.

    :func:`scst.tl.pretrain_encoder` records the backbone and the tile geometry there.
    """
    path = Path(path).expanduser()
    if not path.is_file() or not _is_safetensors(path):
        return {}
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except Exception:  # noqa: BLE001 - an unreadable header is reported where the weights are read
        return {}


def _recorded_backbone(path: Path) -> str:
    """`` (pretrained as 'name')`` when a safetensors file records its backbone (scst.tl.pretrain_encoder), else ""."""
    name = weights_metadata(path).get("backbone")
    return f" (pretrained as {name!r})" if name else ""


def load_weights(
    module: nn.Module, weights: Any, *, where: str = "weights", what: str | None = None, ignore: Sequence[str] = ()
) -> nn.Module:
    """Resolve ``weights`` for an already built network (random init, local file, state_dict or module).

    Named weights need the model's builder: use :func:`build_backbone` for torchvision / timm models; for a network
    without downloadable weights (e.g. TCGN's CMT backbone) a name is refused with a clear error.

    Parameters
    ----------
    module
        The network (its parameters are overwritten in place).
    weights
        None (keep the random initialisation, with a :class:`UserWarning`), a local file, a state_dict mapping or a
        module (see :func:`load_backbone_weights`).
    where
        Argument name used in messages.
    what
        How to call the network in messages (default: its class name).
    ignore
        See :func:`load_backbone_weights`.

    Returns
    -------
    ``module``.
    """
    what = what or type(module).__name__
    if _SKIP_WEIGHTS.get():
        return module
    if weights is None:
        _warn_random(where, what)
        return module
    if isinstance(weights, str) and not os.path.isfile(weights) and not _looks_like_path(weights):
        raise ValueError(
            f"{where}: {weights!r} is not a file, and the {what} has no weights to download by name; pass a local "
            "state_dict file (.safetensors or a torch file)."
        )
    load_backbone_weights(module, weights, where, ignore=ignore)
    return module
