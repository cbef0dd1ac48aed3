"""One resolver of backbone weights (scst.nn.build_backbone / load_weights): no network needed.

Downloads are replaced by functions serving a state_dict this test wrote, at the exact place torchvision
(``torchvision.models._api.load_state_dict_from_url``) and timm (``timm.models._hub.hf_hub_download``) call them;
each test then checks that those tensors arrived in the built network.
"""

from __future__ import annotations

import contextlib
import json
import urllib.error
import warnings

import pytest
import torch
import torchvision
from safetensors.torch import save_file

from scst.nn import HGGEPModule, TCGNModule, build_backbone, load_backbone_weights, load_weights
from scst.nn._backbones import weights_overwritten
from scst.nn._hggep import HGGEP_BENCH
from scst.nn._tcgn import TCGN_BENCH

pytestmark = pytest.mark.usefixtures("one_torch_thread")

NAME = "shufflenet_v2_x0_5"  # the smallest torchvision classifier (HGGEP's backbone)
HGGEP_SMALL = {**HGGEP_BENCH["cpu_small"]["config"], "dim": 64, "hg_hidden": 32, "lstm_hidden": 64}
TCGN_TINY = {**TCGN_BENCH, "img_size": 64}


def _reference(seed: int, name: str = NAME) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torchvision.models.get_model(name, weights=None)


def _assert_same_trunk(module: torch.nn.Module, ref: torch.nn.Module) -> None:
    """Every tensor of ``module`` equals the same-named tensor of ``ref`` (the classifier was removed)."""
    ref_state = ref.state_dict()
    own = module.state_dict()
    assert own and set(own) <= set(ref_state)
    for key, value in own.items():
        torch.testing.assert_close(value, ref_state[key], rtol=0, atol=0, msg=key)


@contextlib.contextmanager
def _no_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


# ----------------------------------------------------------------------------------------------- torchvision names
def test_torchvision_name_goes_through_torchvision_download(monkeypatch, tmp_path):
    ref = _reference(1)
    torch.save(ref.state_dict(), tmp_path / "served.pth")
    calls = []

    def fake_download(url, *args, **kwargs):  # what WeightsEnum.get_state_dict calls
        calls.append((url, kwargs))
        return torch.load(tmp_path / "served.pth", weights_only=True)

    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", fake_download)
    with _no_warnings():  # pretrained weights: no random-init warning
        net, dim = build_backbone(NAME, weights="IMAGENET1K_V1")
    ((url, kwargs),) = calls
    assert url == torchvision.models.ShuffleNet_V2_X0_5_Weights.IMAGENET1K_V1.url
    assert kwargs["check_hash"] is True and "progress" in kwargs  # torchvision's own hash check and progress bar
    assert dim == 1024 and isinstance(net.fc, torch.nn.Identity)
    _assert_same_trunk(net, ref)
    assert not torch.equal(_reference(2).conv5[0].weight, net.conv5[0].weight)  # the served tensors, not a seed

    # the enum spelling, "DEFAULT" and "pretrained" resolve to the same file; HGGEP's backbone uses the same resolver
    for spelling in ("ShuffleNet_V2_X0_5_Weights.IMAGENET1K_V1", "DEFAULT", "pretrained"):
        _assert_same_trunk(build_backbone(NAME, weights=spelling)[0], ref)
    m = HGGEPModule(3, **HGGEP_SMALL, backbone_weights="IMAGENET1K_V1")
    torch.testing.assert_close(m.backbone.conv5[0].weight, ref.conv5[0].weight)
    assert len(calls) == 5


def test_torchvision_name_offline_names_the_local_file(monkeypatch):
    def offline(url, *args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", offline)
    with pytest.raises(OSError, match=r"weights: could not get .*IMAGENET1K_V1.*URLError.*local file") as err:
        build_backbone(NAME, weights="IMAGENET1K_V1")
    assert "shufflenetv2_x0.5-f707e7126e.pth" in str(err.value)  # where torchvision's cache expects the file
    with pytest.raises(OSError, match="backbone_weights: could not get"):
        HGGEPModule(3, **HGGEP_SMALL, backbone_weights="IMAGENET1K_V1")
    with pytest.raises(ValueError, match=r"torchvision weights name of shufflenet_v2_x0_5 .*IMAGENET1K_V1"):
        build_backbone(NAME, weights="IMAGENET21K")
    # another model's weights enum: resnet50's IMAGENET1K_V1 was downloaded for "ResNet18_Weights.IMAGENET1K_V1"
    with pytest.raises(ValueError, match=r"ShuffleNet_V2_X0_5_Weights.<name>\), got 'ResNet18_Weights.IMAGENET1K_V1'"):
        build_backbone(NAME, weights="ResNet18_Weights.IMAGENET1K_V1")
    with pytest.raises(OSError, match="could not get"):  # the full spelling still reaches the download
        build_backbone(NAME, weights="torchvision.models.ShuffleNet_V2_X0_5_Weights.IMAGENET1K_V1")
    # model_kwargs the weights or the model do not take were reported as a failed download ("without network...")
    with pytest.raises(ValueError, match="'num_classes' expected value 1000 but got 10"):
        build_backbone(NAME, weights="IMAGENET1K_V1", model_kwargs={"num_classes": 10})
    with pytest.raises(TypeError, match="unexpected keyword argument 'depth'"):
        build_backbone(NAME, weights="IMAGENET1K_V1", model_kwargs={"depth": 10})


# ------------------------------------------------------------------------------------------------------ timm names
def _fake_hub(monkeypatch, tmp_path, ref, architecture):
    """Serve config.json and model.safetensors of ``ref`` (a timm ``architecture``) from tmp_path for any repository."""
    import timm.models._hub as hub

    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(tmp_path / "model.safetensors"))
    cfg = {"architecture": architecture, "num_classes": 1000,
           "pretrained_cfg": {"classifier": "head" if "vit" in architecture else "fc", "num_classes": 1000,
                              "input_size": [3, 224, 224]}}  # fmt: skip
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    calls = []

    def fake_hf_hub_download(repo_id, filename, *args, **kwargs):
        calls.append((repo_id, filename))
        return str(tmp_path / filename)

    monkeypatch.setattr(hub, "hf_hub_download", fake_hf_hub_download)
    return calls


def test_hf_hub_name_with_model_kwargs_loads_served_weights(monkeypatch, tmp_path):
    import timm

    # a pathology foundation model in miniature: a ViT with LayerScale, which (like UNI or H-optimus) needs
    # init_values to build the architecture its weights fit
    torch.manual_seed(3)
    ref = timm.create_model("vit_tiny_patch16_224", pretrained=False, init_values=1e-5)
    calls = _fake_hub(monkeypatch, tmp_path, ref, "vit_tiny_patch16_224")
    with _no_warnings():
        net, dim = build_backbone("hf-hub:my-org/my-pathology-model", "pretrained", model_kwargs={"init_values": 1e-5})
    assert ("my-org/my-pathology-model", "config.json") in calls
    assert ("my-org/my-pathology-model", "model.safetensors") in calls
    assert dim == 192 and isinstance(net.head, torch.nn.Identity)
    _assert_same_trunk(net, ref)
    with pytest.raises(ValueError, match=r"do not match the model built: 24 unexpected entries \['blocks.0.ls1.gamma'"):
        build_backbone("hf-hub:my-org/my-pathology-model", weights="pretrained")  # without init_values
    plain = {k: v for k, v in ref.state_dict().items() if ".ls" not in k}  # weights without LayerScale
    save_file({k: v.contiguous() for k, v in plain.items()}, str(tmp_path / "model.safetensors"))
    with pytest.raises(ValueError, match=r"24 missing entries \['blocks.0.ls1.gamma'"):  # not left at random
        build_backbone("hf-hub:my-org/my-pathology-model", "pretrained", model_kwargs={"init_values": 1e-5})


def test_timm_name_pretrained_comes_from_the_hub(monkeypatch, tmp_path):
    import timm

    torch.manual_seed(4)
    ref = timm.create_model("resnet10t", pretrained=False)
    calls = _fake_hub(monkeypatch, tmp_path, ref, "resnet10t")
    net, dim = build_backbone("resnet10t", weights="pretrained")  # default tag: timm/resnet10t.c3_in1k
    assert calls == [("timm/resnet10t.c3_in1k", "model.safetensors")]
    assert dim == 512 and isinstance(net.fc, torch.nn.Identity)
    _assert_same_trunk(net, ref)
    with pytest.raises(ValueError, match="expected 'pretrained'"):
        build_backbone("resnet10t", weights="IMAGENET1K_V1")


def test_hf_hub_name_offline_names_local_alternatives(monkeypatch):
    import timm.models._hub as hub

    def offline(*args, **kwargs):
        raise ConnectionError("Max retries exceeded with url: /MahmoodLab/UNI/resolve/main/config.json")

    monkeypatch.setattr(hub, "hf_hub_download", offline)
    with pytest.raises(OSError, match=r"hf-hub:MahmoodLab/UNI.*ConnectionError.*huggingface-cli login") as err:
        build_backbone("hf-hub:MahmoodLab/UNI", weights="pretrained")
    assert "local-dir:DIR" in str(err.value) and "weights='/path/to/model.safetensors'" in str(err.value)


# -------------------------------------------------------------------------------------------------- None, modules
def test_none_warns_random_init_and_saved_models_do_not():
    with pytest.warns(UserWarning, match=r"weights=None: .*random initialisation; predictions will be weak"):
        build_backbone(NAME)
    with pytest.warns(UserWarning, match=r"backbone_weights=None: the TCGN CMT backbone .*random initialisation"):
        TCGNModule(4, **TCGN_TINY)
    with _no_warnings(), weights_overwritten():  # BaseModel.load: the saved state_dict replaces the weights
        build_backbone(NAME, weights="IMAGENET1K_V1")  # no download either (it would fail here)
        TCGNModule(4, **TCGN_TINY)
    with _no_warnings():  # random on purpose (pretraining from scratch, a caller that warns itself)
        build_backbone(NAME, warn_random=False)
    with pytest.raises(FileNotFoundError):  # warn_random concerns None only: weights still load and are checked
        build_backbone(NAME, weights="missing.safetensors", warn_random=False)


def test_module_and_state_dict_pass_through():
    ref = _reference(4)
    net, _ = build_backbone(NAME, weights=ref)
    _assert_same_trunk(net, ref)
    trunk = {k: v for k, v in ref.state_dict().items() if not k.startswith("fc.")}
    _assert_same_trunk(build_backbone(NAME, weights=trunk)[0], ref)
    assert load_weights(net, net) is net  # a module given its own weights: nothing to do
    with pytest.raises(TypeError, match="weights: expected a weights name"):
        build_backbone(NAME, weights=3)


# ------------------------------------------------------------------------------------------------------ local files
def test_local_safetensors_and_torch_files(tmp_path):
    ref = _reference(5)
    # scst.tl.pretrain_encoder's format: a safetensors state_dict of the torchvision backbone without classifier
    trunk = {k: v.contiguous() for k, v in ref.state_dict().items() if not k.startswith("fc.")}
    save_file(trunk, str(tmp_path / "ssl.safetensors"))
    net, _ = build_backbone(NAME, weights=str(tmp_path / "ssl.safetensors"))
    _assert_same_trunk(net, ref)
    hg = HGGEPModule(3, **HGGEP_SMALL, backbone_weights=str(tmp_path / "ssl.safetensors"))
    torch.testing.assert_close(hg.backbone.conv5[0].weight, ref.conv5[0].weight)
    torch.testing.assert_close(hg.backbone.stage3[0].branch1[0].weight, ref.stage3[0].branch1[0].weight)

    # a torch file of an SSL checkpoint: wrapped, prefixed, with a projection head that is not loaded
    ssl = {**{f"encoder.{k}": v for k, v in trunk.items()}, "projector.0.weight": torch.zeros(8, 1024)}
    torch.save({"state_dict": ssl}, tmp_path / "ssl.pt")
    with pytest.warns(UserWarning, match="random initialisation"):
        net, _ = build_backbone(NAME)
    assert load_backbone_weights(net, tmp_path / "ssl.pt") == ["projector.0.weight"]
    _assert_same_trunk(net, ref)

    with pytest.raises(FileNotFoundError, match=r"weights: .*missing\.safetensors' is not a file"):
        build_backbone(NAME, weights=str(tmp_path / "missing.safetensors"))
    torch.save({"weights": [1, 2]}, tmp_path / "not_a_state_dict.pt")
    with pytest.raises(ValueError, match="does not hold a state_dict"):
        build_backbone(NAME, weights=str(tmp_path / "not_a_state_dict.pt"))


def test_files_are_read_by_content_and_truncated_safetensors_are_clear_errors(tmp_path):
    """A torch file named .safetensors (and the reverse) failed with a raw SafetensorError / an unpickling error; a
    truncated .safetensors with safetensors' bare "header too large"-style error naming no file."""
    ref = _reference(12)
    torch.save(ref.state_dict(), tmp_path / "torch.safetensors")
    _assert_same_trunk(build_backbone(NAME, weights=str(tmp_path / "torch.safetensors"))[0], ref)
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(tmp_path / "st.pth"))
    _assert_same_trunk(build_backbone(NAME, weights=str(tmp_path / "st.pth"))[0], ref)
    (tmp_path / "cut.safetensors").write_bytes((tmp_path / "st.pth").read_bytes()[:1000])
    with pytest.raises(ValueError, match=r"weights: .*cut\.safetensors' is not a readable safetensors file"):
        build_backbone(NAME, weights=str(tmp_path / "cut.safetensors"))


def test_mismatched_keys_are_listed(tmp_path):
    small, _ = build_backbone(NAME, weights=_reference(6))
    other = _reference(6, "shufflenet_v2_x1_0").state_dict()
    first_reshaped = next(k for k, v in small.state_dict().items() if v.shape != other[k].shape)
    save_file({k: v.contiguous() for k, v in other.items()}, str(tmp_path / "x1_0.safetensors"))
    with pytest.raises(ValueError, match=r"does not match ShuffleNetV2 .* with another shape") as err:
        build_backbone(NAME, weights=str(tmp_path / "x1_0.safetensors"))
    shape = f"{first_reshaped}: file {tuple(other[first_reshaped].shape)} vs model "
    assert shape in str(err.value)

    state = dict(_reference(6).state_dict())
    del state["conv5.1.running_var"]
    state["layer9.weight"] = torch.zeros(3)
    with pytest.raises(ValueError, match=r"1 missing entries \['conv5.1.running_var'\].*\['layer9.weight'\]"):
        build_backbone(NAME, weights=state)


# ------------------------------------------------------------------------------------------------------------ TCGN
def test_tcgn_backbone_from_local_file_only(tmp_path):
    torch.manual_seed(7)
    with pytest.warns(UserWarning):
        trained = TCGNModule(4, **TCGN_TINY)
    torch.save(trained.state_dict(), tmp_path / "tcgn.pt")  # a whole TCGN: graphs and head entries are ignored
    torch.manual_seed(8)
    m = TCGNModule(4, **TCGN_TINY, backbone_weights=str(tmp_path / "tcgn.pt"))
    for key, value in m.state_dict().items():
        same = torch.equal(value, trained.state_dict()[key])
        if key.startswith(("stem.", "stages.")):
            assert same, key
        elif key.endswith("weight") and value.numel() > 1 and "norm" not in key and value.std() > 0:
            assert not same, key  # the graph blocks and the head keep their own initialisation
    with pytest.raises(ValueError, match="TCGN CMT backbone has no weights to download by name"):
        TCGNModule(4, **TCGN_TINY, backbone_weights="IMAGENET1K_V1")


def test_the_last_linear_is_the_classifier_removed():
    with pytest.warns(UserWarning, match="random initialisation") as rec:
        net, dim = build_backbone("mobilenet_v3_small")  # classifier: Linear(576, 1024) → … → Linear(1024, 1000)
    assert rec[0].filename == __file__  # the warning points at the caller's line, not into scst
    assert dim == 1024 and isinstance(net.classifier[3], torch.nn.Identity)
    assert isinstance(net.classifier[0], torch.nn.Linear)
    assert net.eval()(torch.rand(2, 3, 64, 64)).shape == (2, 1024)


def test_file_like_names_and_unsafe_pickles_are_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match="'enc.safetensors' is not a file"):
        build_backbone(NAME, weights="enc.safetensors")  # a relative file name, not a weights name

    marker = tmp_path / "code_ran"

    class Payload:  # a checkpoint that runs code when unpickled
        def __reduce__(self):
            return (open, (str(marker), "w"))

    torch.save({"state_dict": _reference(9).state_dict(), "extra": Payload()}, tmp_path / "unsafe.pt")
    with pytest.raises(ValueError, match=r"not a state_dict readable with torch.load\(weights_only=True\)"):
        build_backbone(NAME, weights=str(tmp_path / "unsafe.pt"))
    assert not marker.exists()

    ref = _reference(9)
    torch.save({"model": ref.state_dict(), "epoch": 3}, tmp_path / "wrapped.pt")  # {"model": ...} wrapper
    _assert_same_trunk(build_backbone(NAME, weights=str(tmp_path / "wrapped.pt"))[0], ref)
    with pytest.raises(ValueError, match=r"a mapping must be a state_dict"):
        build_backbone(NAME, weights={"conv1.0.weight": [0.0]})


def test_pretrained_means_the_default_weights(monkeypatch, tmp_path):
    import timm

    urls = []

    def record(url, *args, **kwargs):  # no download: the chosen file is all this test needs
        urls.append(url)
        raise urllib.error.URLError("offline")

    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", record)
    with pytest.raises(OSError, match="could not get"):
        build_backbone("resnet50", weights="pretrained")  # resnet50: DEFAULT is IMAGENET1K_V2, not V1
    assert urls == [torchvision.models.ResNet50_Weights.DEFAULT.url]
    assert "IMAGENET1K_V2" in str(torchvision.models.ResNet50_Weights.DEFAULT)

    torch.manual_seed(10)
    ref = timm.create_model("resnet10t", pretrained=False)
    _fake_hub(monkeypatch, tmp_path, ref, "resnet10t")
    _assert_same_trunk(build_backbone("resnet10t", weights="DEFAULT")[0], ref)  # "DEFAULT" for timm as well


def test_ddp_prefixed_checkpoint_and_ignored_keys():
    ref = _reference(11)
    trunk = {k: v for k, v in ref.state_dict().items() if not k.startswith("fc.")}
    # a DistributedDataParallel-wrapped SSL model: module. then encoder., next to the projection head
    ddp = {**{f"module.encoder.{k}": v for k, v in trunk.items()}, "module.projector.weight": torch.zeros(4, 1024)}
    with pytest.warns(UserWarning, match="random initialisation"):
        net, _ = build_backbone(NAME)
    assert load_backbone_weights(net, ddp) == ["projector.weight"]
    _assert_same_trunk(net, ref)
    # ignore= names exact keys as well as prefixes
    extra = {**trunk, "temperature": torch.ones(()), "queue.0": torch.zeros(3)}
    assert sorted(load_backbone_weights(net, extra, ignore=["temperature", "queue."])) == ["queue.0", "temperature"]
    with pytest.raises(ValueError, match=r"1 entries the model lacks \['temperature'\]"):
        load_backbone_weights(net, extra, ignore=["queue."])


def test_review_checkpoints_with_auxiliary_or_several_heads_and_without_batch_counts(tmp_path):
    """Review 2026-12-04: the official Inception checkpoint (with its auxiliary heads), a distilled DeiT's own
    checkpoint (two classifier heads) and BatchNorm checkpoints without num_batches_tracked were refused."""
    import timm
    import torchvision

    torch.manual_seed(0)
    inc = torchvision.models.inception_v3(weights=None, aux_logits=True, init_weights=False)
    torch.save(inc.state_dict(), tmp_path / "inception.pth")
    net, dim = build_backbone("inception_v3", str(tmp_path / "inception.pth"))
    assert dim == 2048 and torch.equal(net.Conv2d_1a_3x3.conv.weight, inc.Conv2d_1a_3x3.conv.weight)
    deit = timm.create_model("deit_tiny_distilled_patch16_224", pretrained=False)
    torch.save(deit.state_dict(), tmp_path / "deit.pth")
    net, dim = build_backbone("deit_tiny_distilled_patch16_224", str(tmp_path / "deit.pth"))
    assert dim == 192 and torch.equal(net.pos_embed, deit.pos_embed)
    ref = _reference(7)
    state = {k: v for k, v in ref.state_dict().items() if not k.endswith("num_batches_tracked")}
    net, _ = build_backbone(NAME, state)
    _assert_same_trunk(net, ref)
    # a wrong file is still refused
    state.pop("conv1.0.weight")
    with pytest.raises(ValueError, match=r"1 missing entries \['conv1.0.weight'\]"):
        build_backbone(NAME, state)


def test_review_timm_weights_that_arrived_but_do_not_fit_are_not_called_a_download_problem(monkeypatch, tmp_path):
    import timm

    torch.manual_seed(3)
    ref = timm.create_model("vit_tiny_patch16_224", pretrained=False, mlp_ratio=2.0)  # served weights of other width
    _fake_hub(monkeypatch, tmp_path, ref, "vit_tiny_patch16_224")
    shape = r"do not match the model built: \d+ with another shape \(size mismatch for blocks.0.mlp.fc1.weight.*kwargs"
    with pytest.raises(ValueError, match=shape):
        build_backbone("hf-hub:my-org/my-model", "pretrained")
    with pytest.raises(TypeError, match="bogus_arg"):  # a keyword the model does not take: the user's own error
        build_backbone("hf-hub:my-org/my-model", "pretrained", model_kwargs={"bogus_arg": 1})


def test_backbone_name_type_trunk_without_classifier_and_unreadable_metadata(tmp_path):
    """A non-string backbone is a TypeError naming ``backbone``; a trunk without a Linear layer has no classifier
    to remove (named); a safetensors file whose header cannot be parsed has no metadata ({}), its error is left to
    the weights loader; scst names unknown attributes like a module does."""
    import scst
    from scst.nn._backbones import _replace_last_linear, weights_metadata

    for bad in (None, "", 3):
        with pytest.raises(TypeError, match=r"backbone: expected a model name \(str\)"):
            build_backbone(bad)
    with pytest.raises(ValueError, match="Sequential has no Linear classifier to remove"):
        _replace_last_linear(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU()))
    bad_file = tmp_path / "w.safetensors"
    bad_file.write_bytes((40).to_bytes(8, "little") + b"{not json" + b" " * 31)  # looks like safetensors; bad header
    assert weights_metadata(bad_file) == {}
    with pytest.raises(AttributeError, match="module 'scst' has no attribute 'nope'"):
        scst.nope  # noqa: B018


def test_timm_downloads_that_fail_and_random_init_without_the_hub_config(monkeypatch):
    """A timm name whose weights cannot be fetched names the local file (no torchvision cache to copy to); a
    RuntimeError that is not torch's load_state_dict is a download problem too. Without weights, a hub model
    still fetches its config.json: offline, that is said with the local alternatives; another model's own
    error (a keyword it does not take) is raised as it is."""
    import timm.models._hub as hub

    def offline(*args, **kwargs):
        raise ConnectionError("Max retries exceeded")

    monkeypatch.setattr(hub, "hf_hub_download", offline)
    with pytest.raises(OSError, match=r"weights: could not get .*'pretrained' of 'resnet10t' \(ConnectionError") as err:
        build_backbone("resnet10t", weights="pretrained")
    assert "weights='/path/to/resnet10t.safetensors'" in str(err.value) and "torchvision" not in str(err.value)
    with pytest.raises(OSError, match=r"could not get the pretrained weights 'config.json' of 'hf-hub:org/m'"):
        build_backbone("hf-hub:org/m", weights=None)
    with pytest.raises(TypeError, match="bogus_arg"):
        build_backbone("resnet10t", weights=None, model_kwargs={"bogus_arg": 1})

    def broken(*args, **kwargs):
        raise RuntimeError("unexpected end of data")

    monkeypatch.setattr(hub, "hf_hub_download", broken)
    with pytest.raises(OSError, match=r"could not get .*\(RuntimeError: unexpected end of data\); without network"):
        build_backbone("resnet10t", weights="pretrained")
