"""Frozen-backbone feature cache: decode and run the backbone once per image, not per sample.

With ``model.freeze_backbone`` the five taps of an image never change, and every image has
several sentences, so training and evaluation read the taps (float16) instead of decoding the
image and running the backbone again: this is what makes the CPU presets ~4x faster
(docs/recipes.md). The cache holds taps *without* coordinates (added per batch). A cache kept on
disk is used memory-mapped, so a large set sits in page cache that the OS can reclaim rather than
in the process's own memory.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from ..data.dataset import ReferDataset, collate_groups
from ..data.transforms import letterbox_mask
from .checkpoint import atomic_save

log = logging.getLogger(__name__)


class FeatureCache:
    """Backbone taps of every image of ``dataset``: ``rows[image_id]`` indexes ``levels[l]``.

    Args:
        backbone: the (frozen) backbone; run in eval mode under ``no_grad``.
        dataset: the samples whose images to encode.
        batch_size: images per backbone call. 8 rather than more: at S = 128 the stride-8 taps of
            EfficientNet-Lite0 spill the CPU's caches beyond that (scripts/bench_cache.py).
        device: where the backbone runs; the cache itself stays on the CPU.
        channels_last: feed the backbone NHWC images (faster with mkldnn; the same taps to float
            rounding, stored float16 either way).
        indices: restrict to the images of these sample indices (e.g. an evaluation subset).
    """

    def __init__(self, backbone: torch.nn.Module, dataset: ReferDataset, *, batch_size: int = 8,
                 device: str | torch.device = "cpu", indices: list[int] | None = None, progress: bool = True,
                 cache_file: str | Path | None = None, channels_last: bool = True):
        first_sample: dict[int, int] = {}
        for i in indices if indices is not None else range(len(dataset)):
            first_sample.setdefault(dataset.meta(i)["image_id"], i)
        self.rows = {image_id: row for row, image_id in enumerate(first_sample)}
        samples = list(first_sample.values())
        if cache_file is not None and self._load(Path(cache_file), list(first_sample)):
            return
        self.valid_hw = torch.zeros(len(samples), 2, dtype=torch.int64)
        self.levels: list[torch.Tensor] = []
        was_training = backbone.training
        backbone.eval()
        bar = tqdm(total=len(samples), desc="caching backbone features", unit="img", disable=not progress)
        with torch.no_grad():
            for start in range(0, len(samples), batch_size):
                chunk = samples[start:start + batch_size]
                items = [dataset[i] for i in chunk]
                images = torch.stack([it["image"] for it in items]).to(device)
                if channels_last:
                    images = images.contiguous(memory_format=torch.channels_last)
                taps = backbone(images)
                if not self.levels:
                    self.levels = [torch.empty(len(samples), *t.shape[1:], dtype=torch.float16) for t in taps]
                for level, t in zip(self.levels, taps, strict=True):
                    level[start:start + len(chunk)] = t.to("cpu", torch.float16)
                self.valid_hw[start:start + len(chunk)] = torch.stack([it["valid_hw"] for it in items])
                bar.update(len(chunk))
        bar.close()
        backbone.train(was_training)
        mb = sum(t.numel() * 2 for t in self.levels) / 2**20
        log.info("cached backbone features of %d images (%.0f MB)", len(samples), mb)
        if cache_file is not None:
            try:
                atomic_save({"image_ids": list(first_sample), "valid_hw": self.valid_hw, "levels": self.levels},
                            cache_file)
            except OSError as e:  # a read-only data folder: train on without the disk copy
                log.warning("could not keep the feature cache at %s (%s); it will be recomputed next time",
                            cache_file, e.strerror or e)
            else:  # train from the memory-mapped file: page cache the OS can reclaim, not private memory
                self._load(Path(cache_file), list(first_sample))

    def _load(self, path: Path, image_ids: list[int]) -> bool:
        """Reuse features saved by an earlier run when they cover exactly these images."""
        if not path.is_file():
            return False
        try:
            saved = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except Exception as e:  # noqa: BLE001 - a damaged cache is recomputed, never trusted
            log.warning("ignoring unreadable feature cache %s (%s)", path, e)
            return False
        if saved.get("image_ids") != image_ids:
            log.info("feature cache %s is for other images; recomputing", path)
            return False
        self.valid_hw, self.levels = saved["valid_hw"], saved["levels"]
        log.info("loaded backbone features of %d images from %s", len(image_ids), path)
        return True

    def get(self, rows: torch.Tensor, device: str | torch.device = "cpu") -> list[torch.Tensor]:
        """Taps of the images at ``rows`` (B,) as float32 on ``device``: five (B, C_l, h_l, w_l)."""
        return [level[rows].to(device, torch.float32) for level in self.levels]


def cache_path(folder: str | Path, model_cfg: Any, dataset: ReferDataset, tag: str) -> Path:
    """Where the features of ``dataset`` under this backbone/input size are kept."""
    key = json.dumps([model_cfg.backbone, model_cfg.backbone_weights, model_cfg.image_size,
                      dataset.dataset_name, dataset.split, tag])
    return Path(folder) / f"features-{hashlib.sha256(key.encode()).hexdigest()[:16]}.pt"


class CachedSamples(Dataset):
    """The samples of a ReferDataset without image decoding: tokens, target and a cache row.

    Letterboxed targets are kept per annotation (uint8), since the sentences of one ref share one.
    """

    def __init__(self, dataset: ReferDataset, cache: FeatureCache):
        self.dataset = dataset
        self.cache = cache
        self._masks: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any]:
        meta = self.dataset.meta(index)
        row = self.cache.rows[meta["image_id"]]
        mask = self._masks.get(meta["ann_id"])
        if mask is None:
            boxed = letterbox_mask(self.dataset.original_mask(index), self.dataset.image_size)  # (S, S)
            mask = (np.asarray(boxed) > 0.5).astype(np.uint8)
            self._masks[meta["ann_id"]] = mask
        return {
            "row": row,
            "mask": torch.from_numpy(mask.astype(np.float32)),
            "valid_hw": self.cache.valid_hw[row],
            "tokens": torch.tensor(self.dataset.token_ids(index), dtype=torch.int64),
            "index": index,
            "family": meta["family"],
            "target_count": meta["target_count"],
            **(self.dataset.group_target(index) if self.dataset.groups else {}),
        }


def collate_cached(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Like ``data.dataset.collate`` with ``row`` (B,) instead of images (and ``target_count`` (B,))."""
    lengths = [int(s["tokens"].numel()) for s in samples]
    tokens = torch.zeros(len(samples), max(lengths), dtype=torch.int64)
    for k, s in enumerate(samples):
        tokens[k, :lengths[k]] = s["tokens"]
    return {
        "row": torch.tensor([s["row"] for s in samples], dtype=torch.int64),
        "mask": torch.stack([s["mask"] for s in samples]),
        "valid_hw": torch.stack([s["valid_hw"] for s in samples]),
        "tokens": tokens,
        "index": torch.tensor([s["index"] for s in samples], dtype=torch.int64),
        "family": [s["family"] for s in samples],
        "target_count": torch.tensor([int(s.get("target_count", 1)) for s in samples], dtype=torch.int64),
        **collate_groups(samples),
    }
