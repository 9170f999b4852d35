"""Torch dataset of (image, sentence, mask) samples, following the contract of docs/design.md.

``ReferDataset[i]`` returns a dict:

- ``image``: float32 ``(3, S, S)``, ImageNet-normalised, letterboxed (longer side ``S``,
  zero-padded bottom/right after normalisation);
- ``mask``: float32 ``(S, S)`` letterboxed target in {0, 1};
- ``valid_hw``: int64 ``(2,)`` unpadded extent ``(h, w)``;
- ``tokens``: int64 ``(L,)``, ``1 <= L <= max_words`` (no padding);
- ``index``: int, position in the dataset (``original_mask(index)`` is the ``(H, W)`` target);
- ``family``: str, the expression family (``""`` when the data has none);
- ``target_count``: int, how many objects the expression means (0: nothing, its ``mask`` is empty;
  several: ``mask`` is their union; 1 for REFER data);
- with ``groups=True`` (ShapesRef only, ``train.group_weight``): ``group``, float32 ``(S, S)`` in
  {0, 1}, the letterboxed union of the objects step ``train.group_step`` should mark
  (``data.shapesref.grouping``), and ``has_group``, bool (False: no such objects, no loss).

One sample is one (ref, sentence) pair; refs are in file order, sentences in ref order.
Sentences are tokenised from the REFER-cleaned ``sent`` field (``raw`` when absent).

Photos are decoded in their stored pixel order first, because COCO/REFER annotations were
drawn on that grid (the REFER toolkit and pycocotools ignore EXIF); only when that shape does
not match the annotation but the EXIF-rotated one does is the EXIF orientation applied.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ..text import MAX_WORDS, PAD_ID, UNK_ID, Vocabulary
from .errors import DataError
from .grefer import ref_target_count
from .image_io import DEFAULT_MAX_PIXELS, load_image
from .refer import ReferData, Sample
from .registry import parse_dataset_name
from .transforms import letterbox_image, letterbox_mask

log = logging.getLogger(__name__)

MASK_CACHE_SIZE = 32
"""Decoded masks kept per dataset (per worker): the sentences of one ref share one mask."""

_MAX_LISTED = 5


def sentence_text(sentence: dict) -> str:
    """Text of a REFER sentence dict: ``sent`` (cleaned), else ``raw``, else its ``tokens``."""
    for key in ("sent", "raw"):
        text = sentence.get(key)
        if isinstance(text, str) and text.strip():
            return text
    tokens = sentence.get("tokens")
    if isinstance(tokens, list):
        return " ".join(str(t) for t in tokens)
    return ""


def _family(sample: Sample) -> str:
    fam = sample.sentence.get("family") or sample.ref.get("family") or ""
    return str(fam)


def _resolve(dataset: str, split: str | None) -> tuple[str, str]:
    spec, named_split = parse_dataset_name(dataset)
    if split is None:
        if named_split is None:
            raise ValueError(f"no split given for dataset {dataset!r}; allowed splits: {', '.join(spec.all_splits)}")
        return spec.name, named_split
    split = spec.resolve_split(split)
    if named_split is not None and named_split != split:
        raise ValueError(f"dataset name {dataset!r} names split {named_split!r} but split={split!r} was passed")
    return spec.name, split


class ReferDataset(Dataset):
    """(image, sentence, mask) samples of one split of a REFER dataset (or of a ``jsonl`` folder).

    Args:
        root: data root holding the REFER layout (``jsonl``: the folder with instances.json and refs.jsonl).
        dataset: dataset name (``refcoco``, ``refcoco+``, ``refcocog``, ``refclef``, ``jsonl``, ...); a
            ``name:split`` form is accepted when ``split`` is None.
        split: split name (``train``, ``val``, ``testA``, ...).
        vocab: word vocabulary used to encode the sentences.
        image_size: letterbox side ``S``.
        max_words: sentences are cut to their first ``max_words`` tokens.
        blank_language: replace every expression by a single ``<unk>`` token (language-blind
            baseline).
        data: an already loaded :class:`ReferData` of the same dataset (saves re-reading it).
        max_pixels: decompression-bomb limit passed to ``load_image``.
        check_files: verify at construction that every image file of the split exists.
        groups: also return each expression's group target (see the module docstring); needs the
            ShapesRef logical forms (``sentence["logical_form"]``) and object ``attributes``.

    Raises:
        DataError: missing files, an empty split, or refs pointing to absent annotations.
    """

    def __init__(
        self,
        root: str | Path,
        dataset: str,
        split: str | None,
        vocab: Vocabulary,
        image_size: int,
        max_words: int = MAX_WORDS,
        blank_language: bool = False,
        *,
        data: ReferData | None = None,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        check_files: bool = True,
        groups: bool = False,
    ):
        name, split = _resolve(dataset, split)
        if int(image_size) <= 0:
            raise ValueError(f"image_size must be a positive number of pixels, got {image_size}")
        if int(max_words) <= 0:
            raise ValueError(f"max_words must be positive, got {max_words}")
        if data is None:
            data = ReferData(root, name)
        elif data.spec.name != name:
            raise ValueError(f"data holds {data.spec.name!r}, not {name!r}")
        self.data = data
        self.dataset_name = name
        self.split = split
        self.vocab = vocab
        self.image_size = int(image_size)
        self.max_words = int(max_words)
        self.blank_language = bool(blank_language)
        self.max_pixels = max_pixels
        self.samples: list[Sample] = data.samples(split)
        if not self.samples:
            raise DataError(
                f"split {split!r} of {data.spec.title} has no sentences in {data.refs_path}; pick another "
                f"split ({', '.join(data.spec.all_splits)})"
            )
        self._check(check_files)
        self.groups = bool(groups)
        self._objects: dict[int, dict[int, dict]] | None = None  # image id -> ann id -> attributes
        if self.groups and "logical_form" not in self.samples[0].sentence:
            raise DataError(f"{self.dataset_name}:{split} has no logical forms (sentence['logical_form']), so it "
                            "has no group targets: train.group_weight needs ShapesRef data; set it to 0")
        self._mask_cache: OrderedDict[int, np.ndarray] = OrderedDict()
        log.info("%s:%s: %d samples", name, split, len(self.samples))

    def _check(self, check_files: bool) -> None:
        refs = {id(s.ref): s.ref for s in self.samples}.values()
        no_ann = [r["ref_id"] for r in refs if not self.data.has_ann(r["ann_id"])]
        if no_ann:
            raise DataError(
                f"{len(no_ann)} ref(s) of {self.dataset_name}:{self.split} point to annotations absent from "
                f"{self.data.instances_path} (ref ids {no_ann[:_MAX_LISTED]}); the refs file and "
                "instances.json do not belong together: re-download them (step-ris data check lists all)"
            )
        image_ids = sorted({r["image_id"] for r in refs})
        no_img = [i for i in image_ids if i not in self.data.images]
        if no_img:
            raise DataError(
                f"{len(no_img)} image id(s) of {self.dataset_name}:{self.split} are not in "
                f"{self.data.instances_path} (ids {no_img[:_MAX_LISTED]}); re-download the annotations"
            )
        if check_files:
            missing = [i for i in image_ids if not self.data.image_path(i).is_file()]
            if missing:
                raise DataError(
                    f"{len(missing)} of {len(image_ids)} images of {self.dataset_name}:{self.split} are "
                    f"missing, e.g. {self.data.missing_image_help(missing[0])}"
                )

    # ---- contract ---------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = self._check_index(index)
        sample = self.samples[index]
        mask = self.original_mask(index)
        img = self._load_image(sample.ref["image_id"], mask.shape)
        image, valid_hw = letterbox_image(img, self.image_size)
        return {
            "image": image,
            "mask": letterbox_mask(mask, self.image_size),
            "valid_hw": torch.tensor(valid_hw, dtype=torch.int64),
            "tokens": torch.tensor(self.token_ids(index), dtype=torch.int64),
            "index": index,
            "family": _family(sample),
            "target_count": ref_target_count(sample.ref),
            **(self.group_target(index) if self.groups else {}),
        }

    def group_target(self, index: int) -> dict[str, Any]:
        """``group`` (S, S) float32 and ``has_group`` of sample ``index`` (see the module docstring)."""
        from .shapesref.grouping import group_members

        sample = self.samples[self._check_index(index)]
        if self._objects is None:
            self._objects = {}
            for ann in self.data.anns.values():
                if "attributes" in ann:
                    self._objects.setdefault(ann["image_id"], {})[ann["id"]] = ann["attributes"]
        form = sample.sentence.get("logical_form")  # a sentence without one has no group, and no group loss
        members = group_members(form, self._objects.get(sample.ref["image_id"], {})) if form else []
        if not members:
            return {"group": torch.zeros(self.image_size, self.image_size), "has_group": False}
        union = np.maximum.reduce([self.data.mask(a) for a in members])
        return {"group": letterbox_mask(union, self.image_size), "has_group": True}

    def token_ids(self, index: int) -> list[int]:
        """Word ids of sample ``index`` (``[<unk>]`` for the blind baseline or a wordless sentence)."""
        if self.blank_language:
            return [UNK_ID]
        text = sentence_text(self.samples[index].sentence)
        try:
            return self.vocab.encode(text, self.max_words)
        except ValueError:
            log.debug("sample %d: expression %r has no words; using <unk>", index, text)
            return [UNK_ID]

    def original_mask(self, index: int) -> np.ndarray:
        """Target of sample ``index`` at the original resolution: read-only uint8 ``(H, W)``."""
        ann_id = self.samples[self._check_index(index)].ref["ann_id"]
        cached = self._mask_cache.get(ann_id)
        if cached is not None:
            self._mask_cache.move_to_end(ann_id)
            return cached
        m = self.data.mask(ann_id)
        m.flags.writeable = False
        self._mask_cache[ann_id] = m
        if len(self._mask_cache) > MASK_CACHE_SIZE:
            self._mask_cache.popitem(last=False)
        return m

    def orig_hw(self, index: int) -> tuple[int, int]:
        """``(H, W)`` of sample ``index``'s image, from the annotations (no decoding)."""
        info = self.data.image_info(self.samples[self._check_index(index)].ref["image_id"])
        return int(info["height"]), int(info["width"])

    def sentence(self, index: int) -> str:
        """The raw expression of sample ``index`` (as typed by the annotator)."""
        s = self.samples[self._check_index(index)].sentence
        raw = s.get("raw")
        return raw if isinstance(raw, str) and raw else sentence_text(s)

    def meta(self, index: int) -> dict[str, Any]:
        """Identifiers of sample ``index``: ref_id, sent_id, image_id, ann_id, split, family, target_count."""
        sample = self.samples[self._check_index(index)]
        return {
            "ref_id": sample.ref["ref_id"],
            "sent_id": sample.sentence.get("sent_id"),
            "image_id": sample.ref["image_id"],
            "ann_id": sample.ref["ann_id"],
            "split": sample.ref["split"],
            "family": _family(sample),
            "target_count": ref_target_count(sample.ref),
        }

    def image_path(self, index: int) -> Path:
        return self.data.image_path(self.samples[self._check_index(index)].ref["image_id"])

    # ---- helpers ------------------------------------------------------------------------------

    def _check_index(self, index: int) -> int:
        n = len(self.samples)
        i = int(index)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"sample index {index} out of range for {n} samples")
        return i

    def _load_image(self, image_id: int, hw: tuple[int, ...]) -> np.ndarray:
        path = self.data.image_path(image_id)
        if not path.is_file():
            raise DataError(self.data.missing_image_help(image_id))
        img = load_image(path, max_pixels=self.max_pixels, apply_exif=False)
        if img.shape[:2] == tuple(hw):
            return img
        rotated = load_image(path, max_pixels=self.max_pixels, apply_exif=True)
        if rotated.shape[:2] == tuple(hw):
            log.debug("%s: EXIF orientation applied to match its annotation", path)
            return rotated
        raise DataError(
            f"{path}: image is {img.shape[1]}x{img.shape[0]} pixels but {self.data.instances_path} "
            f"says {hw[1]}x{hw[0]}; the image file does not belong to these annotations"
        )


def build_vocab(root: str | Path, dataset: str, split: str = "train", min_count: int = 1) -> Vocabulary:
    """Vocabulary of the sentences of ``split`` (the training split by default)."""
    name, split = _resolve(dataset, split)
    data = ReferData(root, name)
    return Vocabulary.from_sentences((sentence_text(s.sentence) for s in data.samples(split)), min_count=min_count)


def collate(samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Batch samples: stacks tensors, pads tokens with 0 to the longest.

    Returns ``image (B, 3, S, S)``, ``mask (B, S, S)``, ``valid_hw (B, 2)``, ``tokens (B, L)``,
    ``lengths (B,)`` (int64 token counts), ``index (B,)`` int64, ``family`` (list of str) and
    ``target_count (B,)`` int64 (1 for samples that carry none), and ``group (B, S, S)`` with
    ``has_group (B,)`` bool when the samples carry them.
    """
    if not samples:
        raise ValueError("collate needs at least one sample")
    lengths = [int(s["tokens"].numel()) for s in samples]
    tokens = torch.full((len(samples), max(lengths)), PAD_ID, dtype=torch.int64)
    for row, s in enumerate(samples):
        tokens[row, : lengths[row]] = s["tokens"]
    return {
        "image": torch.stack([s["image"] for s in samples]),
        "mask": torch.stack([s["mask"] for s in samples]),
        "valid_hw": torch.stack([s["valid_hw"] for s in samples]),
        "tokens": tokens,
        "lengths": torch.tensor(lengths, dtype=torch.int64),
        "index": torch.tensor([int(s["index"]) for s in samples], dtype=torch.int64),
        "family": [s.get("family", "") for s in samples],
        "target_count": torch.tensor([int(s.get("target_count", 1)) for s in samples], dtype=torch.int64),
        **collate_groups(samples),
    }


def collate_groups(samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """``group`` (B, S, S) and ``has_group`` (B,) of samples that carry them, else nothing."""
    if "group" not in samples[0]:
        return {}
    return {"group": torch.stack([s["group"] for s in samples]),
            "has_group": torch.tensor([bool(s["has_group"]) for s in samples])}
