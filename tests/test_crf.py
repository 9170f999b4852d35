"""DenseCRF post-processing: it sharpens a blurred, shifted map; evaluate(crf=True) feeds it the photo."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from step_ris.engine import crf as crf_module
from step_ris.engine.crf import DEFAULT_PARAMS, DenseCRFPackageError, dense_crf, require_densecrf


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def _scene(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A red ellipse on green grass (slight noise), its mask, and a coarse, shifted probability map."""
    rng = np.random.default_rng(seed)
    H, W = 120, 160
    yy, xx = np.mgrid[:H, :W]
    obj = ((yy - 60) ** 2 / 35**2 + (xx - 80) ** 2 / 45**2) <= 1
    img = np.empty((H, W, 3), np.float64)
    img[:] = (40, 110, 40)
    img[obj] = (210, 50, 40)
    img = np.clip(img + rng.normal(0, 2, img.shape), 0, 255).astype(np.uint8)
    # what a stride-8 network gives: a blocky map, bilinearly upsampled, off by a few pixels
    shifted = torch.from_numpy(np.roll(obj, (6, 8), axis=(0, 1)).astype(np.float32))[None, None]
    coarse = F.interpolate(F.avg_pool2d(shifted, 8), size=(H, W), mode="bilinear", align_corners=False)
    prob = 0.15 + 0.7 * coarse[0, 0].numpy()
    return img, obj, prob


def test_crf_snaps_a_blurred_shifted_map_to_the_object() -> None:
    pytest.importorskip("pydensecrf.densecrf")
    img, obj, prob = _scene()
    before = _iou(prob >= 0.5, obj)
    out = dense_crf(img, prob)
    assert out.shape == prob.shape and out.dtype == np.float32
    assert 0.0 <= out.min() and out.max() <= 1.0
    after = _iou(out >= 0.5, obj)
    assert before < 0.8 and after > 0.95 and after > before + 0.15


def test_crf_keeps_a_confident_correct_map() -> None:
    pytest.importorskip("pydensecrf.densecrf")
    img, obj, _ = _scene(1)
    prob = np.where(obj, 0.95, 0.05).astype(np.float32)
    assert _iou(dense_crf(img, prob) >= 0.5, obj) > 0.98


def test_crf_input_checks() -> None:
    pytest.importorskip("pydensecrf.densecrf")
    img, _, prob = _scene()
    with pytest.raises(ValueError, match="uint8"):
        dense_crf(img.astype(np.float32), prob)
    with pytest.raises(ValueError, match="same H x W"):
        dense_crf(img, prob[:-1])
    with pytest.raises(ValueError, match="iters"):
        dense_crf(img, prob, iters=0)
    assert DEFAULT_PARAMS == {"iters": 5, "gaussian_sxy": 3.0, "gaussian_compat": 3.0, "bilateral_sxy": 20.0,
                              "bilateral_srgb": 3.0, "bilateral_compat": 10.0}


def test_missing_package_explained(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pydensecrf", None)
    monkeypatch.setitem(sys.modules, "pydensecrf.densecrf", None)
    with pytest.raises(DenseCRFPackageError, match=r"pip install 'step-ris\[crf\]'") as exc:
        require_densecrf()
    assert isinstance(exc.value, ImportError) and isinstance(exc.value, ValueError)
    img, _, prob = _scene()
    with pytest.raises(ImportError, match="pydensecrf2"):
        dense_crf(img, prob)


def _tiny_model_and_dataset(root: Path):
    from step_ris.config import get_preset
    from step_ris.data.dataset import ReferDataset, build_vocab
    from step_ris.model import build_model

    torch.manual_seed(0)
    cfg = get_preset("tiny")
    vocab = build_vocab(root, "refcoco")
    model = build_model(cfg.model, len(vocab), load_backbone_weights=False)
    dataset = ReferDataset(root, "refcoco", "val", vocab, cfg.model.image_size)
    return model, dataset


def test_evaluate_with_crf_uses_the_original_photo(refer_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("pydensecrf.densecrf")
    from step_ris.data.image_io import load_image
    from step_ris.engine.evaluate import evaluate

    model, dataset = _tiny_model_and_dataset(refer_root)
    calls: list[tuple[int, tuple[int, ...]]] = []
    real = crf_module.dense_crf

    def spy(image: np.ndarray, prob: np.ndarray, *args, **kwargs) -> np.ndarray:
        calls.append((len(calls), image.shape))
        index = len(calls) - 1
        np.testing.assert_array_equal(image, load_image(dataset.image_path(index), apply_exif=False))
        assert prob.shape == dataset.orig_hw(index)
        return real(image, prob, *args, **kwargs)

    monkeypatch.setattr(crf_module, "dense_crf", spy)
    result = evaluate(model, dataset, batch_size=4, progress=False, references=False, crf=True)
    assert len(calls) == len(dataset) == result["n"]
    assert result["crf"] == DEFAULT_PARAMS
    plain = evaluate(model, dataset, batch_size=4, progress=False, references=False)
    assert "crf" not in plain and plain["n"] == result["n"]


def test_evaluate_with_crf_fails_early_without_the_package(refer_root: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from step_ris.engine.evaluate import evaluate

    model, dataset = _tiny_model_and_dataset(refer_root)
    monkeypatch.setitem(sys.modules, "pydensecrf", None)
    monkeypatch.setitem(sys.modules, "pydensecrf.densecrf", None)
    model.forward = None  # the model must not even run
    with pytest.raises(DenseCRFPackageError):
        evaluate(model, dataset, progress=False, crf=True)
