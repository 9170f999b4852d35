"""Evaluation at the images' original resolution (Sec. 4; docs/model.md, choice 16).

Each prediction is cropped to its valid extent, resized bilinearly to the image's H x W,
thresholded at 0.5 and compared with the original mask. Beside the model, three non-learned
references are scored on the same samples, so a reader sees at once whether the model reads:
the union of all annotated objects of the image, the largest object, and a random object.

Samples are grouped by image: every image is decoded and encoded once (``STEPModel.encode``:
the visual maps, phi of Eq. 2 and the image side of Eq. 1) and all its expressions run on that
encoding, which is what makes evaluation on REFER-style data (several expressions per image)
several times faster than one image pass per sample (``group_by_image=False``, same metrics).

``crf=True`` refines each probability map at the original resolution with a DenseCRF
(``engine.crf``, the "+DCRF" post-processing of the baselines in Table 2) before thresholding.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm import tqdm

from ..constants import MASK_THRESHOLD, MATCH_THRESHOLD
from ..data.dataset import ReferDataset, collate
from ..data.image_io import DEFAULT_MAX_PIXELS, load_image
from ..data.transforms import unletterbox
from ..model import STEPModel
from ..model.step import ImageEncoding, STEPOutput
from ..precision import autocast, precision_name, resolve_precision
from .features import CachedSamples, FeatureCache, collate_cached
from .gres import GresMeter, GresReferences
from .metrics import SegmentationMeter, intersection_union, iou_from_counts

log = logging.getLogger(__name__)

REFERENCES = ("all objects", "largest object", "random object")
THRESHOLD = MASK_THRESHOLD  # the predictor's threshold (constants.py)


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
             amp: bool = False, progress: bool = True, workers: int = 0, crf: bool = False,
             precision: str | torch.dtype | None = None, group_by_image: bool = True,
             per_sample: bool = False, indices: Sequence[int] | None = None) -> dict[str, Any]:
    """Score ``model`` on ``dataset`` (or a seeded subset of ``limit`` samples, or the samples ``indices``).

    ``group_by_image=True`` (default): the samples are grouped by image; each image is decoded
    and letterboxed once (or its taps read from ``cache``), encoded once (``model.encode``: the
    visual maps, phi of Eq. 2 and the image side of Eq. 1; ``batch_size`` images per call) and
    all its expressions run on that encoding, in chunks of ``batch_size`` expressions.
    ``False``: batches of ``batch_size`` samples, each with its own image pass (the older path;
    the metrics are the same).

    ``precision``: "fp32" | "bf16" | "auto" (``step_ris.precision``), or a dtype from
    ``resolve_precision``; ``amp=True`` is the older spelling of "bf16". Probabilities are
    computed in float32 either way.

    ``crf=True``: DenseCRF post-processing (``engine.crf.dense_crf`` with its default parameters)
    of each probability map at the original resolution, on the original photo; needs pydensecrf2.

    ``indices``: score exactly these samples, in this order (instead of ``limit`` / ``seed``).

    Returns the metrics of ``SegmentationMeter.summary()`` (oIoU, mIoU, prec@X, n, by_family)
    with ``references`` (the same metrics for each non-learned reference), ``split`` and
    ``precision``; with ``crf=True`` also ``crf`` (the CRF parameters used); with
    ``per_sample=True`` also ``samples``: one record per sample (index, image_id, family,
    intersection, union, iou) in sample order.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1")
    dtype = resolve_precision("bf16" if amp and precision is None else precision, device)
    scorer = _Scorer(dataset, references=references, seed=seed, crf=crf)  # a missing CRF package fails here
    if indices is None:
        indices = subset_indices(len(dataset), limit, seed)
    else:
        indices = [int(i) for i in indices]
        bad = [i for i in indices if not 0 <= i < len(dataset)]
        if bad or len(set(indices)) != len(indices) or not indices:
            raise ValueError(f"indices must be distinct sample positions of {dataset.dataset_name}:{dataset.split} "
                             f"(0 .. {len(dataset) - 1}), at least one; got "
                             + (f"{bad[:5]} out of range" if bad else "repeats" if indices else "none"))
    was_training = model.training
    model.eval()
    position = {index: k for k, index in enumerate(indices)}
    desc = f"eval {dataset.dataset_name}:{dataset.split}"
    try:
        if group_by_image:
            chunks = _by_image(model, dataset, indices, batch_size=batch_size, device=device, cache=cache,
                               dtype=dtype, workers=workers, progress=progress, desc=desc)
        else:
            chunks = _by_batch(model, dataset, indices, batch_size=batch_size, device=device, cache=cache,
                               dtype=dtype, workers=workers, progress=progress, desc=desc)
        for batch_indices, probs, valid_hw, families in chunks:
            for k, index in enumerate(batch_indices):
                scorer.score(position[index], index, probs[k], valid_hw[k], families[k])
    finally:
        model.train(was_training)
    result = scorer.summary(indices, per_sample=per_sample)
    result["split"] = f"{dataset.dataset_name}:{dataset.split}"
    result["precision"] = precision_name(dtype)
    return result


Chunk = tuple[list[int], torch.Tensor, torch.Tensor, list[str]]
"""Sample indices, probabilities (B, S, S) float32 on the CPU, valid_hw (B, 2), families."""


def _probabilities(out: STEPOutput) -> torch.Tensor:
    """The output's (B, 1, S, S) logits of any dtype -> (B, S, S) float32 probabilities on the CPU;
    all zero for an expression the no-target decision (``match_logits``) says matches nothing."""
    probs = torch.sigmoid(out.logits.float())[:, 0]
    if out.match_logits is not None:
        probs = probs * (torch.sigmoid(out.match_logits.float()) >= MATCH_THRESHOLD).to(probs.dtype).view(-1, 1, 1)
    return probs.cpu()


def _by_batch(model: STEPModel, dataset: ReferDataset, indices: list[int], *, batch_size: int, device,
              cache: FeatureCache | None, dtype: torch.dtype | None, workers: int, progress: bool,
              desc: str) -> Iterator[Chunk]:
    """Batches of ``batch_size`` samples in sample order; every sample runs its own image pass."""
    if cache is not None:
        loader = DataLoader(Subset(CachedSamples(dataset, cache), indices), batch_size=batch_size,
                            collate_fn=collate_cached)
    else:
        loader = DataLoader(Subset(dataset, indices), batch_size=batch_size, collate_fn=collate, num_workers=workers)
    with tqdm(total=len(indices), desc=desc, unit="expr", disable=not progress, leave=False) as bar:
        for batch in loader:
            tokens = batch["tokens"].to(device)
            valid = batch["valid_hw"].to(device)
            with autocast(device, dtype):
                if cache is not None:
                    features = model.visual.add_coordinates(cache.get(batch["row"], device))
                    out = model(None, tokens, valid, features=features)
                else:
                    out = model(batch["image"].to(device), tokens, valid)
            yield batch["index"].tolist(), _probabilities(out), batch["valid_hw"], batch["family"]
            bar.update(len(batch["family"]))


def image_groups(dataset: ReferDataset, indices: list[int]) -> list[list[int]]:
    """The sample indices of each image, images in order of first appearance, samples in order."""
    groups: dict[int, list[int]] = {}
    for index in indices:
        groups.setdefault(dataset.meta(index)["image_id"], []).append(index)
    return list(groups.values())


class ImageGroups(Dataset):
    """One item per image: its letterboxed tensor (or its row of a feature cache) and its expressions.

    Item: ``indices`` (the samples), ``tokens`` (one (L_i,) int64 per sample), ``family`` (str
    per sample), ``valid_hw`` (2,) and ``image`` (3, S, S) (without a cache) or ``row`` (with one).
    The image is the one ``dataset[i]`` returns for each of its samples.
    """

    def __init__(self, dataset: ReferDataset, groups: list[list[int]], cache: FeatureCache | None = None):
        self.dataset = dataset
        self.groups = groups
        self.cache = cache

    def __len__(self) -> int:
        return len(self.groups)

    def __getitem__(self, g: int) -> dict[str, Any]:
        indices = self.groups[g]
        item: dict[str, Any] = {
            "indices": list(indices),
            "tokens": [torch.tensor(self.dataset.token_ids(i), dtype=torch.int64) for i in indices],
            "family": [self.dataset.meta(i)["family"] for i in indices],
        }
        if self.cache is not None:
            row = self.cache.rows[self.dataset.meta(indices[0])["image_id"]]
            item["row"] = row
            item["valid_hw"] = self.cache.valid_hw[row]
        else:
            sample = self.dataset[indices[0]]  # decoded and letterboxed once for all its expressions
            item["image"] = sample["image"]
            item["valid_hw"] = sample["valid_hw"]
        return item


def _pad(tokens: list[torch.Tensor]) -> torch.Tensor:
    """Token id vectors -> (B, L) padded with 0 to the longest (as ``data.dataset.collate``)."""
    out = torch.zeros(len(tokens), max(t.numel() for t in tokens), dtype=torch.int64)
    for row, t in enumerate(tokens):
        out[row, : t.numel()] = t
    return out


def _one_image(encoding: ImageEncoding, k: int) -> ImageEncoding:
    """Image ``k`` of a batched encoding, as a batch of 1 (views, no copies)."""
    return ImageEncoding(maps=[m[k:k + 1] for m in encoding.maps],
                         phi={lv: t[k:k + 1] for lv, t in encoding.phi.items()},
                         keys={lv: t[k:k + 1] for lv, t in encoding.keys.items()})


def _by_image(model: STEPModel, dataset: ReferDataset, indices: list[int], *, batch_size: int, device,
              cache: FeatureCache | None, dtype: torch.dtype | None, workers: int, progress: bool,
              desc: str) -> Iterator[Chunk]:
    """Each image encoded once; its expressions run on its encoding in chunks of ``batch_size``.

    Images are encoded ``batch_size`` at a time (a backbone runs faster per image on a batch, and
    the per-sample path holds as many); each image's expressions run on its batch-1 slice of
    that encoding, broadcast to the chunk (no copies: on a CPU, copying the encoding row by row
    to batch expressions of several images costs as much as it saves).
    """
    groups = image_groups(dataset, indices)
    loader = iter(DataLoader(ImageGroups(dataset, groups, cache), batch_size=None, shuffle=False,
                             num_workers=0 if cache is not None else workers))
    done = 0
    with tqdm(total=len(groups), desc=desc, unit="img", disable=not progress, leave=False) as bar:
        for first in range(0, len(groups), batch_size):
            items = [next(loader) for _ in groups[first:first + batch_size]]
            with autocast(device, dtype):
                if cache is not None:
                    rows = torch.tensor([item["row"] for item in items], dtype=torch.int64)
                    encoding = model.encode(maps=model.visual.add_coordinates(cache.get(rows, device)))
                else:
                    encoding = model.encode(torch.stack([item["image"] for item in items]).to(device))  # (n, 3, S, S)
            for k, item in enumerate(items):
                image = _one_image(encoding, k)  # batch 1, broadcast to each chunk
                valid_hw = item["valid_hw"].view(1, 2)
                for start in range(0, len(item["indices"]), batch_size):
                    stop = start + batch_size
                    tokens = _pad(item["tokens"][start:stop]).to(device)  # (B, L)
                    valid = valid_hw.expand(tokens.shape[0], 2)  # (B, 2)
                    with autocast(device, dtype):
                        out = model(None, tokens, valid.to(device), features=image)
                    yield item["indices"][start:stop], _probabilities(out), valid, item["family"][start:stop]
                done += len(item["indices"])
                bar.set_postfix(expressions=done, refresh=False)  # shown by the update's refresh
                bar.update(1)


class _Scorer:
    """Per-sample counts of the model (and the references), added to the meters in sample order."""

    def __init__(self, dataset: ReferDataset, *, references: bool, seed: int, crf: bool):
        self.dataset = dataset
        self.crf = crf
        if crf:
            from .crf import require_densecrf

            require_densecrf()  # a missing package fails before any work
            self.photos = _OriginalImages(dataset)
        self.refs = ReferenceMasks(dataset, seed) if references else None
        self.counts: dict[int, tuple[int, int, str]] = {}  # position -> (intersection, union, family)
        self.ref_counts: dict[int, dict[str, tuple[int, int]]] = {}
        self.gres: dict[int, tuple[int, int, int, int, str]] = {}  # position -> (I, U, pred area, targets, family)
        self.gres_refs: dict[int, tuple[tuple[int, int, int], ...]] = {}  # (I, U, pred area) per GRES reference

    def score(self, position: int, index: int, prob: torch.Tensor, valid_hw: torch.Tensor, family: str) -> None:
        """Score sample ``index`` from its letterboxed probabilities ``prob`` (S, S)."""
        target = self.dataset.original_mask(index).astype(bool)
        p = unletterbox(prob, valid_hw, target.shape).numpy()  # (H, W)
        if self.crf:
            from .crf import dense_crf

            p = dense_crf(self.photos(index, target.shape), p)  # (H, W)
        pred = p >= THRESHOLD
        inter, union = intersection_union(pred, target)
        self.counts[position] = (inter, union, family)
        meta = self.dataset.meta(index)
        self.gres[position] = (inter, union, int(pred.sum()), meta["target_count"], family)
        if self.refs is not None:
            masks = self.refs(meta["image_id"], index)
            self.ref_counts[position] = {name: intersection_union(m, target) for name, m in masks.items()}
            empty = np.zeros_like(target)
            self.gres_refs[position] = tuple(  # (I, U, pred area) of "always empty" and "all objects"
                (*intersection_union(m, target), int(m.sum())) for m in (empty, masks["all objects"]))

    def _gres_summary(self, indices: list[int]) -> dict[str, Any]:
        """The GRES metrics (engine/gres.py): gIoU, cIoU, N-acc, T-acc, by_target_count, and under
        ``gres_references`` the same for "always empty" and "all objects" (when references are on)."""
        meter = GresMeter()
        refs = GresReferences()
        for position in range(len(indices)):
            inter, union, area, count, family = self.gres[position]
            meter.add(inter, union, area, count, family)
            if position in self.gres_refs:
                for name, counts in zip(("always empty", "all objects"), self.gres_refs[position], strict=True):
                    refs.meters[name].add(*counts, count, family)
        gres = meter.result()
        out = {key: gres[key] for key in ("gIoU", "cIoU", "N-acc", "T-acc", "n_no_target", "n_target")}
        out["by_target_count"] = gres["by_target_count"]
        out["gres_by_family"] = gres["by_family"]
        if self.refs is not None:
            out["gres_references"] = refs.result()
        return out

    def summary(self, indices: list[int], *, per_sample: bool) -> dict[str, Any]:
        meter = SegmentationMeter()
        ref_meters = {name: SegmentationMeter() for name in REFERENCES}
        for position in range(len(indices)):
            inter, union, family = self.counts[position]
            meter.add(inter, union, family)
            for name, (i, u) in self.ref_counts.get(position, {}).items():
                ref_meters[name].add(i, u, family)
        result = meter.summary()
        result.update(self._gres_summary(indices))
        if self.refs is not None:
            result["references"] = {name: m.summary() for name, m in ref_meters.items()}
        if self.crf:
            from .crf import DEFAULT_PARAMS

            result["crf"] = dict(DEFAULT_PARAMS)
        if per_sample:
            result["samples"] = [
                {"index": index, "image_id": self.dataset.meta(index)["image_id"], "family": self.counts[k][2],
                 "intersection": self.counts[k][0], "union": self.counts[k][1],
                 "iou": iou_from_counts(*self.counts[k][:2])}
                for k, index in enumerate(indices)]
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
    if result.get("n_no_target"):  # generalized data: the GRES metrics (engine/gres.py)
        lines.append("")
        lines.append(f"GRES ({result['n_no_target']} no-target, {result['n_target']} target expressions)")
        gres_cols = ["gIoU", "cIoU", "N-acc", "T-acc"]
        lines.append(f"{'':16s}" + "".join(f"{c:>10s}" for c in gres_cols))
        for name, r in [("model", result), *result.get("gres_references", {}).items()]:
            lines.append(f"{name:16s}" + "".join(f"{r[c]:10.3f}" if r[c] is not None else f"{'-':>10s}"
                                                  for c in gres_cols))
    families = sorted(result.get("by_family", {}))
    if families:
        lines.append("")
        lines.append("oIoU by family  " + "".join(f"{f[:12]:>13s}" for f in families))
        for name, r in rows:
            by = r.get("by_family", {})
            lines.append(f"{name:16s}" + "".join(f"{by[f]['oIoU']:13.3f}" if f in by else f"{'-':>13s}"
                                                  for f in families))
    return "\n".join(lines)
