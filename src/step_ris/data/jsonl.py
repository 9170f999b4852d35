"""The ``jsonl`` layout: one's own data as COCO ``instances.json`` plus one JSON line per expression.

Layout under a data root (dataset name ``jsonl``, alias ``coco-jsonl``)::

    <root>/instances.json     COCO: images (id, file_name, height, width), annotations (id,
                              image_id, segmentation as polygons or RLE), categories
    <root>/refs.jsonl         one expression per line (blank lines are skipped)
    <root>/images/<file_name> the images named by instances.json

A line of ``refs.jsonl``::

    {"image_id": 7, "ann_id": 31, "sentence": "the dog on the left", "split": "train"}
    {"file_name": "kitchen.jpg", "ann_ids": [4, 5], "sentence": "both cups", "split": "val"}

- the image: ``image_id`` (an ``images[].id``) or ``file_name`` (an ``images[].file_name``), or both
  when they agree;
- the target: ``ann_id`` (one annotation) or ``ann_ids`` (a non-empty list; the target is the union
  of their masks); every annotation must belong to that image;
- ``sentence``: the referring expression (non-empty text); ``split``: one of
  :data:`~step_ris.data.registry.JSONL_SPLITS` (case-insensitive);
- optional ``family``: a label to break results down by (as ShapesRef's expression families).

Each line becomes a REFER-style ref (``ref_id`` = ``sent_id`` = its line number), so every reader
of REFER data (``ReferData``, ``ReferDataset``, training, evaluation) reads this layout too. The
target of a line with several annotations is a *union annotation*: a virtual annotation with a
negative id (``ReferData.virtual_anns``) whose mask is the union of ``ann_ids``.

:func:`convert_refer_to_jsonl` writes any REFER dataset (e.g. ShapesRef) in this layout
(``step-ris data convert-shapesref``).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

from ..fileio import atomic_folder
from .errors import DataError
from .registry import JSONL_SPLITS, get_spec

log = logging.getLogger(__name__)

REFS_FILE = "refs.jsonl"
INSTANCES_FILE = "instances.json"
IMAGE_DIR = "images"
OPTIONAL_FIELDS = ("family",)
KNOWN_FIELDS = ("image_id", "file_name", "ann_id", "ann_ids", "sentence", "split", *OPTIONAL_FIELDS)


class LineError(NamedTuple):
    """One problem of one line of ``refs.jsonl``."""

    line: int  # 1-based
    field: str  # the field at fault ("" when the line as a whole is)
    message: str  # what is wrong and what to do

    def format(self, path: Path | str) -> str:
        where = f"{path}:{self.line}"
        return f"{where}: {self.field}: {self.message}" if self.field else f"{where}: {self.message}"


class JsonlRefs(NamedTuple):
    """What :func:`parse_refs_jsonl` read: refs, union annotations, and the lines it could not use."""

    refs: list[dict]
    virtual_anns: dict[int, dict]
    errors: list[LineError]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _resolve_split(value: Any, splits: tuple[str, ...]) -> str | None:
    if isinstance(value, str):
        for s in splits:
            if s.lower() == value.strip().lower():
                return s
    return None


def parse_refs_jsonl(path: str | Path, images: Mapping[int, dict], anns: Mapping[int, dict],
                     splits: tuple[str, ...] = JSONL_SPLITS) -> JsonlRefs:
    """Read ``refs.jsonl`` against the images and annotations of its ``instances.json``.

    Never raises for a bad line: the line is left out and a :class:`LineError` says why (its line
    number, the field and what to do). Raises :class:`DataError` only if the file cannot be read.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")  # a byte-order mark is fine
    except FileNotFoundError:
        raise DataError(f"refs file not found: {path}; {get_spec('jsonl').annotations_help.format(root=path.parent)}"
                        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read it as UTF-8 text ({exc}); save it as UTF-8") from None
    by_name: dict[str, list[int]] = {}
    for image_id, im in images.items():
        by_name.setdefault(im["file_name"], []).append(image_id)
    refs: list[dict] = []
    virtual: dict[int, dict] = {}
    union_ids: dict[tuple[int, ...], int] = {}
    below = min(min(anns, default=0), 0)  # union ids are negative and never those of a real annotation
    errors: list[LineError] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        ref = _parse_line(number, line, images, anns, by_name, splits, errors)
        if ref is None:
            continue
        ids = tuple(ref["ann_ids"])
        if len(ids) > 1:
            key = tuple(sorted(ids))
            if key not in union_ids:
                union_ids[key] = below - (len(union_ids) + 1)
                first = anns[key[0]]
                virtual[union_ids[key]] = {"id": union_ids[key], "image_id": first["image_id"],
                                           "category_id": first.get("category_id"), "iscrowd": 0,
                                           "ann_ids": list(key)}
            ref["ann_id"] = union_ids[key]
        refs.append(ref)
    return JsonlRefs(refs, virtual, errors)


def _parse_line(number: int, line: str, images: Mapping[int, dict], anns: Mapping[int, dict],
                by_name: Mapping[str, list[int]], splits: tuple[str, ...], errors: list[LineError]) -> dict | None:
    def bad(field: str, message: str) -> None:
        errors.append(LineError(number, field, message))

    try:
        rec = json.loads(line)
    except json.JSONDecodeError as exc:
        bad("", f"not valid JSON ({exc.msg} at column {exc.colno}); each line must be one JSON object such as "
                '{"image_id": 1, "ann_id": 2, "sentence": "the red cup", "split": "train"}')
        return None
    if not isinstance(rec, dict):
        bad("", f"a line must be a JSON object, got {type(rec).__name__}")
        return None
    before = len(errors)
    unknown = sorted(set(rec) - set(KNOWN_FIELDS))
    hint = f" (the line has {', '.join(repr(k) for k in unknown)}: a misspelling?)" if unknown else ""

    # the image
    image_id = rec.get("image_id")
    name = rec.get("file_name")
    if "image_id" in rec and not (_is_int(image_id) and image_id in images):
        bad("image_id", f"{image_id!r} is not the id of an image in {INSTANCES_FILE}" if _is_int(image_id)
            else f"must be an integer image id, got {image_id!r}")
        image_id = None
    elif "file_name" in rec:
        if not isinstance(name, str) or name not in by_name:
            bad("file_name", f"{name!r} is not the file_name of an image in {INSTANCES_FILE}; use the name "
                             "exactly as written there (relative to images/)")
        elif len(by_name[name]) > 1:
            bad("file_name", f"{name!r} names {len(by_name[name])} images of {INSTANCES_FILE} (ids "
                             f"{sorted(by_name[name])}); give image_id instead")
        elif image_id is not None and by_name[name][0] != image_id:
            bad("file_name", f"{name!r} is image {by_name[name][0]}, but image_id says {image_id}; give one of them")
            image_id = None  # which one is meant is unknown: do not judge the annotations against either
        else:
            image_id = by_name[name][0]
    elif "image_id" not in rec:
        bad("image_id", f"missing; give image_id or file_name (of an image in {INSTANCES_FILE}){hint}")

    # the target
    if "ann_id" in rec and "ann_ids" in rec:
        bad("ann_ids", "give ann_id (one object) or ann_ids (several: their union), not both")
        ids = None
    elif "ann_id" in rec:
        ids = [rec["ann_id"]]
        field = "ann_id"
    elif "ann_ids" in rec:
        ids = rec["ann_ids"]
        field = "ann_ids"
        if not isinstance(ids, list) or not ids:
            bad("ann_ids", f"must be a non-empty list of annotation ids, got {ids!r}")
            ids = None
        elif len(set(map(repr, ids))) != len(ids):
            bad("ann_ids", f"lists an annotation twice ({ids}); list each once")
            ids = None
    else:
        bad("ann_id", f"missing; give ann_id (one annotation of {INSTANCES_FILE}) or ann_ids (a list: their "
                      f"union){hint}")
        ids = None
    if ids is not None:
        for a in ids:
            if not _is_int(a):
                bad(field, f"{a!r} is not an annotation id (an integer)")
            elif a not in anns:
                bad(field, f"{a} is not the id of an annotation in {INSTANCES_FILE}")
            elif image_id is not None and anns[a]["image_id"] != image_id:
                bad(field, f"annotation {a} belongs to image {anns[a]['image_id']}, not to image {image_id}; "
                           "fix the image or the annotation id")

    # the words and the split
    sentence = rec.get("sentence")
    if not isinstance(sentence, str) or not sentence.strip():
        bad("sentence", ("missing" + hint) if "sentence" not in rec
            else f"must be a non-empty string (the referring expression), got {sentence!r}")
    split = _resolve_split(rec.get("split"), splits)
    if split is None:
        got = "missing" + hint if "split" not in rec else f"got {rec['split']!r}"
        bad("split", f"must be one of {', '.join(splits)} ({got}); one line belongs to one split")
    family = rec.get("family", "")
    if not isinstance(family, str):
        bad("family", f"must be a string (a label to break results down by), got {family!r}")
    if len(errors) > before:
        return None
    ann_ids = [int(a) for a in ids]
    sent = {"sent_id": number, "sent": sentence, "raw": sentence}
    ref = {"ref_id": number, "ann_id": ann_ids[0], "ann_ids": ann_ids, "image_id": image_id, "split": split,
           "category_id": anns[ann_ids[0]].get("category_id"), "file_name": images[image_id]["file_name"],
           "sent_ids": [number], "sentences": [sent]}
    if family:
        sent["family"] = ref["family"] = family
    return ref


# --------------------------------------------------------------------------------------------
# writing: any REFER dataset -> this layout


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)  # same file system: no second copy of the pixels
    except OSError:
        shutil.copy2(src, dst)


def convert_refer_to_jsonl(root: str | Path, dataset: str, out: str | Path) -> dict[str, Any]:
    """Write the REFER dataset ``dataset`` under ``root`` as a ``jsonl`` data root ``out``.

    ``out/instances.json`` is the dataset's instances file (byte for byte), ``out/images/`` holds its
    images (hard links where the file system allows, else copies) and ``out/refs.jsonl`` one line per
    sentence: ``image_id``, ``ann_id``, ``sentence`` (the text the REFER reader tokenises), ``split``
    and ``family`` when the sentence has one. The tree is built in a hidden sibling folder and renamed
    to ``out`` at the end; ``out`` must not exist or be empty. Returns a summary (``out``, ``lines``
    per split, ``images``).
    """
    from .dataset import sentence_text
    from .refer import ReferData

    data = ReferData(root, dataset)
    spec_splits = set(JSONL_SPLITS)
    odd = sorted({r["split"] for r in data.refs} - spec_splits)
    if odd:
        raise DataError(f"{data.refs_path}: split value(s) {', '.join(odd)} have no place in the jsonl layout "
                        f"(splits {', '.join(JSONL_SPLITS)})")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DataError(f"{out} exists and is not an empty folder; choose a new output folder")
    with atomic_folder(out, overwrite=True) as tmp:  # out is absent or empty (checked above)
        (tmp / IMAGE_DIR).mkdir()
        image_root = data.spec.image_root(data.root)
        for image_id in sorted(data.images):
            name = data.images[image_id]["file_name"]
            src = image_root / name
            if not src.is_file():
                raise DataError(data.missing_image_help(image_id))
            dst = tmp / IMAGE_DIR / name
            dst.parent.mkdir(parents=True, exist_ok=True)
            _link_or_copy(src, dst)
        shutil.copyfile(data.instances_path, tmp / INSTANCES_FILE)
        lines: list[str] = []
        counts: dict[str, int] = {}
        for ref in data.refs:
            for sent in ref["sentences"]:
                rec = {"image_id": ref["image_id"], "ann_id": ref["ann_id"], "sentence": sentence_text(sent),
                       "split": ref["split"]}
                family = sent.get("family") or ref.get("family")
                if family:
                    rec["family"] = str(family)
                lines.append(json.dumps(rec, ensure_ascii=False))
                counts[ref["split"]] = counts.get(ref["split"], 0) + 1
        (tmp / REFS_FILE).write_text("\n".join(lines) + "\n", encoding="utf-8")
    summary = {"out": str(out), "source": f"{data.spec.name} in {data.root}", "lines": counts,
               "images": len(data.images)}
    log.info("wrote %d lines and %d images to %s", len(lines), len(data.images), out)
    return summary
