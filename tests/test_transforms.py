"""Letterbox geometry and the letterbox -> unletterbox round trip."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from step_ris.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    letterbox_image,
    letterbox_mask,
    unletterbox,
    valid_extent,
)


def _blobs(H: int, W: int, seed: int) -> np.ndarray:
    """A mask of a few discs and a rectangle, structures large relative to the scale change."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:H, :W]
    m = np.zeros((H, W), dtype=bool)
    for _ in range(4):
        cy, cx = rng.integers(0, H), rng.integers(0, W)
        r = rng.integers(max(H, W) // 12, max(H, W) // 5)
        m |= (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
    m[H // 4 : H // 2, W // 5 : W // 2] = True
    return m.astype(np.uint8)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


@pytest.mark.parametrize(
    "hw,size,expected",
    [
        ((427, 640), 320, (214, 320)),  # 427 * 320 / 640 = 213.5, halves round up
        ((640, 427), 320, (320, 214)),
        ((100, 60), 320, (320, 192)),
        ((60, 100), 320, (192, 320)),
        ((320, 320), 320, (320, 320)),
        ((1, 5000), 320, (1, 320)),  # never below 1
    ],
)
def test_valid_extent(hw: tuple[int, int], size: int, expected: tuple[int, int]) -> None:
    H, W = hw
    m = max(H, W)
    exp = (max(1, int(np.floor(H * size / m + 0.5))), max(1, int(np.floor(W * size / m + 0.5))))
    assert valid_extent(hw, size) == exp == expected
    assert max(exp) == size


@pytest.mark.parametrize("hw", [(427, 640), (640, 427), (50, 30)])
def test_letterbox_image_shapes_and_padding(hw: tuple[int, int]) -> None:
    S = 320
    img = np.full((*hw, 3), 255, dtype=np.uint8)
    t, (h, w) = letterbox_image(img, S)
    assert t.shape == (3, S, S) and t.dtype == torch.float32
    assert (h, w) == valid_extent(hw, S)
    assert (h == S) == (hw[0] >= hw[1]) and (w == S) == (hw[1] >= hw[0])
    white = (1.0 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    torch.testing.assert_close(t[:, :h, :w], white.view(3, 1, 1).expand(3, h, w), atol=1e-5, rtol=0)
    assert (t[:, h:, :] == 0).all() and (t[:, :, w:] == 0).all()


def test_letterbox_image_normalisation_of_a_colour() -> None:
    img = np.zeros((10, 20, 3), dtype=np.uint8)
    img[..., 0] = 255
    t, (h, w) = letterbox_image(img, 40)
    assert (h, w) == (20, 40)
    expected = (torch.tensor([1.0, 0.0, 0.0]) - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    torch.testing.assert_close(t[:, 5, 7], expected, atol=1e-5, rtol=0)


def test_letterbox_mask_values_and_padding() -> None:
    m = _blobs(427, 640, 0) * 255  # any nonzero value is foreground
    lm = letterbox_mask(m, 320)
    assert lm.shape == (320, 320) and lm.dtype == torch.float32
    assert set(lm.unique().tolist()) <= {0.0, 1.0}
    assert (lm[214:] == 0).all()
    # foreground share preserved up to border effects
    assert abs(lm[:214].mean().item() - (m > 0).mean()) < 0.01


@pytest.mark.parametrize("hw", [(100, 60), (60, 100), (77, 31)])
def test_round_trip_exact_when_upsampling(hw: tuple[int, int]) -> None:
    S = 320
    for mask in (_blobs(*hw, seed=1), (np.random.default_rng(2).random(hw) > 0.5).astype(np.uint8)):
        lm = letterbox_mask(mask, S)
        back = unletterbox(lm, valid_extent(hw, S), hw)
        assert back.shape == hw
        np.testing.assert_array_equal((back > 0.5).numpy().astype(np.uint8), mask)


@pytest.mark.parametrize("hw", [(427, 640), (640, 427), (1000, 700)])
def test_round_trip_near_exact_when_downsampling(hw: tuple[int, int]) -> None:
    S = 320
    mask = _blobs(*hw, seed=3)
    back = unletterbox(letterbox_mask(mask, S), valid_extent(hw, S), hw)
    assert back.shape == hw
    assert _iou((back > 0.5).numpy(), mask.astype(bool)) > 0.98


def test_unletterbox_batched_and_valid_hw_tensor() -> None:
    prob = torch.rand(2, 3, 32, 32)
    out = unletterbox(prob, torch.tensor([32, 20]), (64, 40))
    assert out.shape == (2, 3, 64, 40)
    same = unletterbox(prob, (32, 20), (32, 20))
    torch.testing.assert_close(same, prob[..., :32, :20])
    with pytest.raises(ValueError, match="does not fit"):
        unletterbox(prob, (33, 20), (10, 10))


def test_bad_inputs() -> None:
    with pytest.raises(ValueError, match="uint8"):
        letterbox_image(np.zeros((4, 4, 3), dtype=np.float32), 8)
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        letterbox_image(np.zeros((4, 4), dtype=np.uint8), 8)
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        letterbox_mask(np.zeros((4, 4, 3)), 8)
