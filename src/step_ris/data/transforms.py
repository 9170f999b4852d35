"""Letterboxing (Sec. 3.1: "re-sized ... with zero-padding") and its inverse.

- ``letterbox_image``: resize so that the longer side is ``S`` (bilinear with antialiasing,
  as PIL and torchvision do when shrinking), ImageNet-normalise, then pad bottom/right with 0
  (zero *after* normalisation, i.e. the padding is the mean colour) to ``S x S``.
- ``letterbox_mask``: the same geometry for a target mask, nearest neighbour (pixel-centre
  rule, ``nearest-exact``, the same as PIL's NEAREST), padded with 0.
- ``unletterbox``: crop a ``(..., S, S)`` probability map to the valid extent and resize it
  bilinearly to the original ``H x W`` (evaluation happens at the original resolution).

The valid extent of an ``H x W`` image is ``h = round(H * S / max(H, W))``,
``w = round(W * S / max(H, W))`` (halves rounded up, computed exactly in integers), each at
least 1; the longer side is exactly ``S``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..constants import IMAGENET_MEAN, IMAGENET_STD  # re-exported: step_ris.data.transforms.IMAGENET_MEAN

_MEAN = np.asarray(IMAGENET_MEAN, dtype=np.float32)
_STD = np.asarray(IMAGENET_STD, dtype=np.float32)

HW = tuple[int, int]


def valid_extent(orig_hw: Sequence[int], size: int) -> HW:
    """``(h, w)`` of an ``orig_hw`` image letterboxed into ``size x size``."""
    H, W = int(orig_hw[0]), int(orig_hw[1])
    if H <= 0 or W <= 0:
        raise ValueError(f"image size must be positive, got {H} x {W}")
    if size <= 0:
        raise ValueError(f"letterbox size must be positive, got {size}")
    m = max(H, W)
    # floor(x * S / m + 1/2) in exact integer arithmetic
    h = (2 * H * size + m) // (2 * m)
    w = (2 * W * size + m) // (2 * m)
    return max(1, min(size, h)), max(1, min(size, w))


def letterbox_image(img: np.ndarray, size: int) -> tuple[torch.Tensor, HW]:
    """Letterbox an ``(H, W, 3)`` uint8 RGB image.

    Returns:
        ``(tensor, (h, w))``: float32 ``(3, size, size)`` ImageNet-normalised image whose
        ``[:, :h, :w]`` block holds the resized picture and whose padding is 0.
    """
    if not isinstance(img, np.ndarray) or img.ndim != 3 or img.shape[2] != 3:
        shape = getattr(img, "shape", None)
        raise ValueError(f"letterbox_image expects an (H, W, 3) uint8 array, got shape {shape}")
    if img.dtype != np.uint8:
        raise ValueError(f"letterbox_image expects uint8 pixels, got {img.dtype} (use load_image)")
    h, w = valid_extent(img.shape[:2], size)
    # uint8 channels-last resize: torch's fast path, the same arithmetic as PIL's antialiased
    # bilinear (results are rounded to uint8, as PIL's are)
    x = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).unsqueeze(0)
    if (h, w) != tuple(img.shape[:2]):
        x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
    # normalise and pad in numpy: tiny torch ops pay OpenMP start-up costs on busy CPUs
    scale = (1.0 / (255.0 * _STD)).reshape(3, 1, 1)
    offset = (_MEAN / _STD).reshape(3, 1, 1)
    out = np.zeros((3, size, size), dtype=np.float32)
    out[:, :h, :w] = x[0].numpy() * scale - offset
    return torch.from_numpy(out), (h, w)


def letterbox_mask(mask: np.ndarray | torch.Tensor, size: int) -> torch.Tensor:
    """Letterbox an ``(H, W)`` mask (nonzero = foreground) to float32 ``(size, size)`` in {0, 1}."""
    fg = mask.detach().cpu().numpy() != 0 if isinstance(mask, torch.Tensor) else np.asarray(mask) != 0
    if fg.ndim != 2:
        raise ValueError(f"letterbox_mask expects an (H, W) mask, got shape {tuple(fg.shape)}")
    H, W = fg.shape
    h, w = valid_extent((H, W), size)
    # nearest neighbour with the pixel-centre rule (torch "nearest-exact", PIL NEAREST)
    rows = np.minimum(((np.arange(h) + 0.5) * (H / h)).astype(np.int64), H - 1)
    cols = np.minimum(((np.arange(w) + 0.5) * (W / w)).astype(np.int64), W - 1)
    out = np.zeros((size, size), dtype=np.float32)
    out[:h, :w] = fg[rows[:, None], cols[None, :]]
    return torch.from_numpy(out)


def unletterbox(prob: torch.Tensor, valid_hw: Sequence[int] | torch.Tensor, orig_hw: Sequence[int]) -> torch.Tensor:
    """Map a letterboxed ``(..., S, S)`` map back to ``(..., H, W)``.

    Crops to the valid extent ``valid_hw = (h, w)`` and resizes bilinearly (antialiased when
    shrinking) to ``orig_hw = (H, W)``. Apply it to probabilities, then threshold.
    """
    if not isinstance(prob, torch.Tensor):
        prob = torch.as_tensor(prob)
    if prob.ndim < 2:
        raise ValueError(f"unletterbox expects a (..., S, S) map, got shape {tuple(prob.shape)}")
    h, w = (int(v) for v in (valid_hw.tolist() if isinstance(valid_hw, torch.Tensor) else valid_hw))
    H, W = int(orig_hw[0]), int(orig_hw[1])
    if not (0 < h <= prob.shape[-2] and 0 < w <= prob.shape[-1]):
        raise ValueError(f"valid extent {(h, w)} does not fit in a map of shape {tuple(prob.shape[-2:])}")
    if H <= 0 or W <= 0:
        raise ValueError(f"original size must be positive, got {H} x {W}")
    lead = prob.shape[:-2]
    x = prob[..., :h, :w]
    if not x.is_floating_point():
        x = x.float()
    if (h, w) == (H, W):
        return x.clone()
    x = x.reshape(-1, 1, h, w)
    y = F.interpolate(x, size=(H, W), mode="bilinear", align_corners=False, antialias=True)
    return y.reshape(*lead, H, W)
