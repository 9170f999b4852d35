"""Reader for the gRefCOCO layout: referring expressions with no target or several targets (GRES).

Layout under a data root (the files of gRefCOCO, Liu, Ding and Jiang, CVPR 2023, as their
``grefer.py`` loader reads them)::

    <root>/grefcoco/grefs(unc).json       JSON list of refs
    <root>/grefcoco/instances.json        COCO images / annotations / categories
    <root>/images/mscoco/images/train2014/<file_name>

ShapesRef-g (``step-ris data shapesref --generalized``) is written the same way, under
``<root>/shapesref-g/`` with its images in ``<root>/images/shapesref/`` (dataset ``shapesref-g``).

A ref is ``{ref_id, image_id, split, ann_id, category_id, no_target, sentences: [{sent_id, sent,
raw, tokens}], sent_ids, file_name}``. Unlike REFER, ``ann_id`` is a **list**: the annotations the
expression means (their union is the target); a ref that means nothing has ``ann_id`` ``[-1]``
(the official files; ``[]`` is accepted too) and ``no_target`` true. A bare integer ``ann_id`` is
read as a one-element list, and a missing ``no_target`` is taken from ``ann_id``, as the official
loader does.

Reading checks every ref against ``instances.json`` and leaves out the ones it cannot use, each
with a :class:`RefError` (ref index, ``ref_id``, field, what to do). The refs it keeps are copies,
normalised so that every reader of REFER data (``ReferData``, ``ReferDataset``, training,
evaluation, ``data check``) reads them:

- ``ann_ids``: the referents' annotation ids (``[]`` for no target);
- ``target_count``: ``len(ann_ids)``; ``no_target``: a bool;
- ``ann_id``: one integer, the annotation whose mask is the target: the referent itself for one
  target; for several, a *union annotation* (a virtual one with a negative id, whose ``ann_ids``
  are the non-crowd referents, or all of them when every one is a crowd region, as the official
  loader skips crowd masks); for no target, an *empty annotation* (a virtual one of that image with
  an empty segmentation, so its mask is all zeros). Virtual annotations are in
  ``ReferData.virtual_anns``; ``category_id`` stays the file's list.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

from .errors import DataError

log = logging.getLogger(__name__)

GREFS_FILE = "grefs(unc).json"
NO_TARGET_ID = -1
MAX_SHOWN = 3
"""How many ref errors a :class:`DataError` of ``ReferData`` quotes (``data check`` lists them all)."""


class RefError(NamedTuple):
    """One problem of one ref of a ``grefs`` file."""

    index: int  # 0-based position in the JSON list
    ref_id: Any  # the ref's ref_id as written (None when it has none)
    field: str  # the field at fault ("" when the ref as a whole is)
    message: str  # what is wrong and what to do

    def format(self, path: Path | str) -> str:
        where = f"{path}: ref #{self.index}" + (f" (ref_id {self.ref_id!r})" if self.ref_id is not None else "")
        return f"{where}: {self.field}: {self.message}" if self.field else f"{where}: {self.message}"


class GRefs(NamedTuple):
    """What :func:`parse_grefs` read: normalised refs, virtual annotations, the refs it could not use."""

    refs: list[dict]
    virtual_anns: dict[int, dict]
    errors: list[RefError]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def read_grefs_file(path: str | Path) -> list:
    """The JSON list of a ``grefs(...).json`` file; :class:`DataError` naming the file (and the position
    of a syntax error) when it is missing, unreadable, not JSON or not a list."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")  # a byte-order mark is fine
    except FileNotFoundError:
        raise DataError(f"refs file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read it as UTF-8 text ({exc}); re-download or re-generate it") from None
    try:
        refs = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}; re-download "
                        "or re-generate it") from None
    if not isinstance(refs, list):
        raise DataError(f"{path}: a gRefCOCO refs file is a JSON list of ref objects, got {_type_name(refs)}")
    return refs


def ref_target_count(ref: Mapping[str, Any]) -> int:
    """How many objects a ref (of any layout) means: ``target_count`` when read from this layout,
    ``len(ann_ids)`` for union lines of the ``jsonl`` layout, 1 for REFER refs."""
    if "target_count" in ref:
        return int(ref["target_count"])
    if isinstance(ref.get("ann_ids"), list):
        return len(ref["ann_ids"])
    return 1


def parse_grefs(path: str | Path, images: Mapping[int, dict], anns: Mapping[int, dict]) -> GRefs:
    """Read a ``grefs`` file against the images and annotations of its ``instances.json``.

    Never raises for a bad ref: it is left out and a :class:`RefError` says why. Raises
    :class:`DataError` only when the file as a whole is unusable (:func:`read_grefs_file`).
    """
    path = Path(path)
    raw = read_grefs_file(path)
    refs: list[dict] = []
    virtual: dict[int, dict] = {}
    union_ids: dict[tuple[int, ...], int] = {}
    empty_ids: dict[int, int] = {}
    below = min(min(anns, default=0), 0)  # virtual ids are negative and never those of a real annotation
    errors: list[RefError] = []
    seen_refs: dict[Any, int] = {}
    seen_sents: dict[Any, int] = {}

    def new_id() -> int:
        return below - (len(virtual) + 1)

    for index, ref in enumerate(raw):
        ref = _check_ref(index, ref, images, anns, seen_refs, seen_sents, errors)
        if ref is None:
            continue
        ids = ref["ann_ids"]
        if not ids:
            image_id = ref["image_id"]
            if image_id not in empty_ids:
                empty_ids[image_id] = new_id()
                virtual[empty_ids[image_id]] = {"id": empty_ids[image_id], "image_id": image_id, "category_id": None,
                                                "iscrowd": 0, "segmentation": [], "area": 0.0, "no_target": True}
            ref["ann_id"] = empty_ids[image_id]
        elif len(ids) == 1:
            ref["ann_id"] = ids[0]
        else:
            key = tuple(sorted(ids))
            if key not in union_ids:
                union_ids[key] = new_id()
                solid = [a for a in key if not anns[a].get("iscrowd", 0)] or list(key)
                first = anns[key[0]]
                virtual[union_ids[key]] = {"id": union_ids[key], "image_id": first["image_id"],
                                           "category_id": first.get("category_id"), "iscrowd": 0, "ann_ids": solid}
            ref["ann_id"] = union_ids[key]
        refs.append(ref)
    return GRefs(refs, virtual, errors)


def _check_ref(index: int, ref: Any, images: Mapping[int, dict], anns: Mapping[int, dict],
               seen_refs: dict[Any, int], seen_sents: dict[Any, int], errors: list[RefError]) -> dict | None:
    """The normalised copy of one ref, or None (with its errors appended)."""
    if not isinstance(ref, dict):
        errors.append(RefError(index, None, "", f"must be a JSON object (a ref), got {_type_name(ref)}"))
        return None
    ref_id = ref.get("ref_id")
    before = len(errors)

    def bad(field: str, message: str) -> None:
        errors.append(RefError(index, ref_id, field, message))

    missing = [k for k in ("ref_id", "image_id", "split", "ann_id", "sentences") if k not in ref]
    if missing:
        bad(missing[0], f"missing (the ref lacks {', '.join(missing)}); a gRefCOCO ref has ref_id, image_id, split, "
                        "ann_id (a list), sentences, no_target: is this a gRefCOCO grefs file?")
        return None
    if not _is_int(ref_id):
        bad("ref_id", f"must be an integer, got {ref_id!r}")
    elif ref_id in seen_refs:
        bad("ref_id", f"duplicate: ref #{seen_refs[ref_id]} has the same ref_id; ref ids must be unique")
    else:
        seen_refs[ref_id] = index
    image_id = ref["image_id"]
    if not _is_int(image_id):
        bad("image_id", f"must be an integer image id, got {image_id!r}")
        image_id = None
    elif image_id not in images:
        bad("image_id", f"{image_id} is not the id of an image in instances.json; the refs file and "
                        "instances.json do not belong together")
        image_id = None
    if not isinstance(ref["split"], str) or not ref["split"]:
        bad("split", f"must be a split name such as 'train', got {ref['split']!r}")
    ann_ids = _check_targets(ref, image_id, anns, bad)
    _check_sentences(ref, index, seen_sents, bad)
    category = ref.get("category_id")
    if category is not None and not (_is_int(category) or (isinstance(category, list)
                                                           and all(_is_int(c) for c in category))):
        bad("category_id", f"must be a list of category ids (or one id), got {category!r}")
    if len(errors) > before:
        return None
    out = dict(ref)
    out["ann_ids"] = ann_ids
    out["no_target"] = not ann_ids
    out["target_count"] = len(ann_ids)
    return out


def _check_targets(ref: dict, image_id: int | None, anns: Mapping[int, dict], bad) -> list[int]:  # noqa: ANN001
    """The referents' annotation ids ([] for no target), after checking ``ann_id`` and ``no_target``."""
    value = ref["ann_id"]
    ids = [value] if _is_int(value) else value
    if not isinstance(ids, list) or not all(_is_int(a) for a in ids):
        bad("ann_id", f"must be a list of annotation ids ([-1] when nothing is meant), got {value!r}")
        return []
    if NO_TARGET_ID in ids and len(ids) > 1:
        bad("ann_id", f"{ids} mixes -1 (no target) with annotation ids; give [-1] alone, or only the ids")
        return []
    ids = [a for a in ids if a != NO_TARGET_ID]
    if len(set(ids)) != len(ids):
        bad("ann_id", f"lists an annotation twice ({ids}); list each once")
    for a in ids:
        if a not in anns:
            bad("ann_id", f"{a} is not the id of an annotation in instances.json")
        elif image_id is not None and anns[a]["image_id"] != image_id:
            bad("ann_id", f"annotation {a} belongs to image {anns[a]['image_id']}, not to image {image_id}; fix "
                          "the image or the annotation id")
    flag = ref.get("no_target")
    if flag is not None and not isinstance(flag, bool):
        bad("no_target", f"must be true or false, got {flag!r}")
    elif flag is not None and flag != (not ids):
        bad("no_target", f"is {str(flag).lower()} but ann_id is {ref['ann_id']!r}; a no-target ref has ann_id [-1], "
                         "a ref with a target lists its annotation ids: make them agree")
    return ids


def _check_sentences(ref: dict, index: int, seen: dict[Any, int], bad) -> None:  # noqa: ANN001
    sentences = ref["sentences"]
    if not isinstance(sentences, list) or not sentences:
        bad("sentences", f"must be a non-empty list of sentence objects ({{\"sent_id\": ..., \"sent\": ...}}), "
                         f"got {sentences!r}"[:200])
        return
    for k, sent in enumerate(sentences):
        where = f"sentences[{k}]"
        if not isinstance(sent, dict):
            bad(where, f"must be a sentence object, got {_type_name(sent)}")
            continue
        sid = sent.get("sent_id")
        if not _is_int(sid):
            bad(f"{where}.sent_id", f"must be an integer, got {sid!r}")
        elif sid in seen:
            bad(f"{where}.sent_id", f"duplicate: {sid} is also a sentence of ref #{seen[sid]}; sentence ids must "
                                    "be unique")
        else:
            seen[sid] = index
        text = [sent.get("sent"), sent.get("raw")]
        tokens = sent.get("tokens")
        if not any(isinstance(t, str) and t.strip() for t in text) and not (
                isinstance(tokens, list) and tokens and all(isinstance(t, str) for t in tokens)):
            bad(where, "has no text: give 'sent' or 'raw' (the expression) or 'tokens' (its words)")


def read_into(data: Any, errors: list | None = None) -> None:
    """Fill ``data.refs`` and ``data.virtual_anns`` of a :class:`~step_ris.data.refer.ReferData` from its
    ``grefs`` file (``data.refs_path``, checked against ``data.images`` / ``data.anns``).

    ``errors``: a list that receives every :class:`RefError` (those refs are left out); without it, any
    bad ref raises a :class:`DataError` quoting the first ones.
    """
    parsed = parse_grefs(data.refs_path, data.images, data.anns)
    data.refs, data.virtual_anns = parsed.refs, parsed.virtual_anns
    if errors is not None:
        errors.extend(parsed.errors)
    elif parsed.errors:
        shown = "; ".join(e.format(data.refs_path) for e in parsed.errors[:MAX_SHOWN])
        more = f" (and {len(parsed.errors) - MAX_SHOWN} more)" if len(parsed.errors) > MAX_SHOWN else ""
        count = len({e.index for e in parsed.errors})
        raise DataError(f"{count} ref(s) of {data.refs_path} cannot be used: {shown}{more}; fix or re-create the "
                        f"file (step-ris data check {data.spec.name} --root {data.root} lists every one)")
    log.debug("%s: %d refs (%d no-target, %d multi-target)", data.refs_path, len(data.refs),
              sum(r["no_target"] for r in data.refs), sum(r["target_count"] > 1 for r in data.refs))
