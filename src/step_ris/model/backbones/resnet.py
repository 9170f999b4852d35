"""torchvision ResNet-18 / 50 / 101 at output stride 8 with five taps (Sec. 3.1).

Output stride 8 by dilation (layer3 dilation 2, layer4 dilation 4); taps: stem after max-pool,
layer1, layer2, layer3, layer4. Weights: None, ``'imagenet'`` (torchvision's classifiers),
``'deeplabv3-coco'`` (ResNet-50 / 101: the backbone of torchvision's COCO-trained DeepLabV3, the
closest public match to the paper's DeepLab ResNet-101) or a local state-dict file.
"""

from __future__ import annotations

import os

import torch
import torchvision

from .base import Backbone, check_images
from .weights import load_backbone_state, read_state_dict, torchvision_checkpoint

__all__ = ["ResNetBackbone", "build_resnet18", "build_resnet50", "build_resnet101"]

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
    """torchvision ResNet-18/50/101 at output stride 8 with five taps (Sec. 3.1).

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
            path = torchvision_checkpoint(_RESNET_IMAGENET[self.depth])
            load_backbone_state(self, read_state_dict(path), path, ignore_prefixes=("fc.",))
        elif weights == "deeplabv3-coco":
            if self.depth not in _RESNET_DEEPLAB:
                raise ValueError(
                    f"'deeplabv3-coco' weights exist for resnet50 / resnet101 only, not resnet{self.depth}"
                )
            path = torchvision_checkpoint(_RESNET_DEEPLAB[self.depth])
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
        """images: (B, 3, S, S) -> [F1 (B, 64, S/4, S/4), F2 (.., S/4), F3, F4, F5 (.., S/8, S/8)]."""
        check_images(images)
        f1 = self.maxpool(self.relu(self.bn1(self.conv1(images))))
        f2 = self.layer1(f1)
        f3 = self.layer2(f2)
        f4 = self.layer3(f3)
        f5 = self.layer4(f4)
        return [f1, f2, f3, f4, f5]


def build_resnet101(weights: str | None = None, *, frozen_bn: bool = True) -> ResNetBackbone:
    """ResNet-101 at output stride 8, the paper's backbone (Sec. 3.1)."""
    return ResNetBackbone(101, weights, frozen_bn=frozen_bn)


def build_resnet50(weights: str | None = None, *, frozen_bn: bool = True) -> ResNetBackbone:
    """ResNet-50 at output stride 8."""
    return ResNetBackbone(50, weights, frozen_bn=frozen_bn)


def build_resnet18(weights: str | None = None, *, frozen_bn: bool = True) -> ResNetBackbone:
    """ResNet-18 at output stride 8 (BasicBlocks dilated as torchvision dilates Bottlenecks)."""
    return ResNetBackbone(18, weights, frozen_bn=frozen_bn)
