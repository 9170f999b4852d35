"""Evaluation at the images' original resolution (Sec. 4; docs/model.md, choice 16).

Each prediction is cropped to its valid extent, resized bilinearly to the image's H x W,
thresholded at 0.5 and compared with the original mask. Beside the model, three non-learned
references are scored on the same samples, so a reader sees at once whether the model reads:
the union of all annotated objects of the image, the largest object, and a random object.

``crf=True`` refines each probability map at the original resolution with a DenseCRF
(``engine.crf``, the "+DCRF" post-processing of the baselines in Table 2) before thresholding.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from ..data.dataset import ReferDataset, collate
from ..data.image_io import DEFAULT_MAX_PIXELS, load_image
from ..data.transforms import unletterbox
from ..model import STEPModel
from .features import CachedSamples, FeatureCache, collate_cached
from .metrics import SegmentationMeter

log = logging.getLogger(__name__)

REFERENCES = ("all objects", "largest object", "random object")
THRESHOLD = 0.5


def subset_indices(n: int, limit: int, seed: int = 0) -> list[int]:
    """All indices, or ``limit`` of them drawn without replacement by a fixed seed (sorted)."""
    if limit <= 0 or limit >= n:
        return list(range(n))
    return sorted(np.random.default_rng(seed).choice(n, size=limit, replace=False).tolist())


class ReferenceMasks:
    """Non-learned reference predictions from an image's annotations."""

    def __init__(self, dataset: ReferDataset, seed: int = 0):
        self.data = dataset.data
        self.by_image: dict[int, list[int]] = defaultdict(list)
        for ann_id, ann in self.data.anns.items():
            if not ann.get("iscrowd", 0):
                self.by_image[ann["image_id"]].append(ann_id)
        self.seed = seed
        self._cache: dict[int, tuple[np.ndarray, np.ndarray, list[int]]] = {}

    def __call__(self, image_id: int, index: int) -> dict[str, np.ndarray]:
        if image_id not in self._cache:
            ann_ids = sorted(self.by_image[image_id])
            masks = [self.data.mask(a).astype(bool) for a in ann_ids]
            if not masks:  # only crowd regions annotated: every reference predicts nothing
                info = self.data.image_info(image_id)
                masks = [np.zeros((int(info["height"]), int(info["width"])), dtype=bool)]
            union = np.logical_or.reduce(masks)
            largest = masks[int(np.argmax([m.sum() for m in masks]))]
            self._cache = {image_id: (union, largest, ann_ids)}  # one image at a time (samples are grouped)
        union, largest, ann_ids = self._cache[image_id]
        if not ann_ids:
            return {"all objects": union, "largest object": largest, "random object": largest}
        pick = np.random.default_rng((self.seed, index)).integers(len(ann_ids))
        return {"all objects": union, "largest object": largest,
                "random object": self.data.mask(ann_ids[int(pick)]).astype(bool)}


@torch.no_grad()
def evaluate(model: STEPModel, dataset: ReferDataset, *, batch_size: int = 16, device: str | torch.device = "cpu",
             limit: int = 0, seed: int = 0, cache: FeatureCache | None = None, references: bool = True,
             amp: bool = False, progress: bool = True, workers: int = 0, crf: bool = False) -> dict[str, Any]:
    """Score ``model`` on ``dataset`` (or a seeded subset of ``limit`` samples).

    ``crf=True``: DenseCRF post-processing (``engine.crf.dense_crf`` with its default parameters)
    of each probability map at the original resolution, on the original photo; needs pydensecrf2.

    Returns the metrics of ``SegmentationMeter.summary()`` (oIoU, mIoU, prec@X, n, by_family)
    with ``references`` (the same metrics for each non-learned reference) and ``split``; with
    ``crf=True`` also ``crf`` (the CRF parameters used).
    """
    if crf:
        from .crf import DEFAULT_PARAMS, dense_crf, require_densecrf

        require_densecrf()  # a missing package fails before any work
        photos = _OriginalImages(dataset)
    was_training = model.training
    model.eval()
    indices = subset_indices(len(dataset), limit, seed)
    if cache is not None:
        loader = DataLoader(Subset(CachedSamples(dataset, cache), indices), batch_size=batch_size,
                            collate_fn=collate_cached)
    else:
        loader = DataLoader(Subset(dataset, indices), batch_size=batch_size, collate_fn=collate, num_workers=workers)
    meter = SegmentationMeter()
    ref_meters = {name: SegmentationMeter() for name in REFERENCES} if references else {}
    refs = ReferenceMasks(dataset, seed) if references else None
    device_type = torch.device(device).type
    for batch in tqdm(loader, desc=f"eval {dataset.dataset_name}:{dataset.split}", unit="batch",
                      disable=not progress, leave=False):
        tokens = batch["tokens"].to(device)
        valid = batch["valid_hw"].to(device)
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=amp):
            if cache is not None:
                features = model.visual.add_coordinates(cache.get(batch["row"], device))
                out = model(None, tokens, valid, features=features)
            else:
                out = model(batch["image"].to(device), tokens, valid)
        probs = torch.sigmoid(out.logits.float())[:, 0].cpu()  # (B, S, S)
        for k, index in enumerate(batch["index"].tolist()):
            target = dataset.original_mask(index).astype(bool)
            prob = unletterbox(probs[k], batch["valid_hw"][k], target.shape).numpy()  # (H, W)
            if crf:
                prob = dense_crf(photos(index, target.shape), prob)  # (H, W)
            family = batch["family"][k]
            meter.update(prob >= THRESHOLD, target, family)
            if refs is not None:
                for name, pred in refs(dataset.meta(index)["image_id"], index).items():
                    ref_meters[name].update(pred, target, family)
    model.train(was_training)
    result = meter.summary()
    result["split"] = f"{dataset.dataset_name}:{dataset.split}"
    if references:
        result["references"] = {name: m.summary() for name, m in ref_meters.items()}
    if crf:
        result["crf"] = dict(DEFAULT_PARAMS)
    return result


class _OriginalImages:
    """The original photo of a sample, decoded as ``ReferDataset`` does (one image kept: samples are grouped)."""

    def __init__(self, dataset: ReferDataset):
        self.dataset = dataset
        self._path = None
        self._image: np.ndarray | None = None

    def __call__(self, index: int, hw: tuple[int, ...]) -> np.ndarray:
        path = self.dataset.image_path(index)
        if path != self._path:
            max_pixels = getattr(self.dataset, "max_pixels", DEFAULT_MAX_PIXELS)
            image = load_image(path, max_pixels=max_pixels, apply_exif=False)  # the annotations' grid
            if image.shape[:2] != tuple(hw):
                image = load_image(path, max_pixels=max_pixels, apply_exif=True)
            self._path, self._image = path, image
        if self._image.shape[:2] != tuple(hw):
            raise ValueError(f"{path}: image is {self._image.shape[1]}x{self._image.shape[0]} pixels but its mask "
                             f"is {hw[1]}x{hw[0]}; the image file does not belong to the annotations")
        return self._image


def format_results(result: dict[str, Any]) -> str:
    """A table: the model and the references, overall and per family."""
    cols = ["oIoU", "mIoU", "prec@0.5", "prec@0.7", "prec@0.9"]
    rows = [("model", result)] + [(name, r) for name, r in result.get("references", {}).items()]
    lines = [f"{result.get('split', '')}  (n = {result['n']}; oIoU = overall IoU, the paper's 'mIoU')",
             f"{'':16s}" + "".join(f"{c:>10s}" for c in cols)]
    for name, r in rows:
        lines.append(f"{name:16s}" + "".join(f"{r[c]:10.3f}" for c in cols))
    families = sorted(result.get("by_family", {}))
    if families:
        lines.append("")
        lines.append("oIoU by family  " + "".join(f"{f[:12]:>13s}" for f in families))
        for name, r in rows:
            by = r.get("by_family", {})
            lines.append(f"{name:16s}" + "".join(f"{by[f]['oIoU']:13.3f}" if f in by else f"{'-':>13s}"
                                                  for f in families))
    return "\n".join(lines)
