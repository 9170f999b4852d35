"""Reader for the REFER on-disk layout (RefCOCO, RefCOCO+, RefCOCOg, ReferIt, ShapesRef).

Layout under a data root (the layout of the REFER toolkit, github.com/lichengunc/refer)::

    <root>/refcoco/refs(unc).p          pickled list of refs (Python 2 protocol)
    <root>/refcoco/instances.json       COCO-style images / annotations / categories
    <root>/images/mscoco/images/train2014/<file_name>

A ref is ``{ref_id, ann_id, image_id, split, category_id, sentences: [{sent_id, sent, raw,
tokens}], sent_ids, file_name}`` (``file_name`` of a ref is not an image file: images are named
by ``instances.json``). One sample is one (ref, sentence) pair.

The refs pickles are read with a *restricted* unpickler: plain containers and scalars only
(plus ``set``/``frozenset``); a pickle that asks to import anything else is refused with a
:class:`DataError` before any of its code runs.

Which datasets exist and where their files lie is the registry (:mod:`step_ris.data.registry`);
``step-ris data check`` is :mod:`step_ris.data.check`. Their names are re-exported here, so
``from step_ris.data.refer import get_spec, check_dataset`` keeps working.
"""

from __future__ import annotations

import io
import json
import logging
import pickle
import warnings
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from .._extras import lazy_module
from .errors import DataError
from .registry import (
    ALIASES,
    DATASETS,
    DOWNLOADS,
    REFER_BASE,
    DatasetSpec,
    dataset_names,
    get_spec,
    parse_dataset_name,
)

mask_utils = lazy_module("pycocotools.mask", extra="data", purpose="decoding REFER masks")

__all__ = [
    "ALIASES",
    "DATASETS",
    "DOWNLOADS",
    "REFER_BASE",
    "DataError",
    "DatasetSpec",
    "ReferData",
    "Sample",
    "dataset_names",
    "decode_segmentation",
    "get_spec",
    "load_refs",
    "parse_dataset_name",
]

log = logging.getLogger(__name__)


def __getattr__(name: str) -> Any:
    # check.py imports this module, so its names are looked up lazily (no import cycle)
    if name in ("check_dataset", "MAX_LISTED"):
        from . import check

        return getattr(check, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# --------------------------------------------------------------------------------------------
# restricted unpickling


class _RestrictedUnpickler(pickle.Unpickler):
    """Builds plain containers and scalars only; refuses to import anything (no code runs)."""

    _ALLOWED = {(m, n) for m in ("builtins", "__builtin__") for n in ("set", "frozenset")}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")


def load_refs(path: str | Path) -> list[dict]:
    """Read a REFER refs pickle (Python 2 or 3 protocol) safely; returns the list of ref dicts.

    Raises:
        DataError: missing file, corrupt pickle, a pickle that would import/run code, or
            content that is not a list of dicts.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"refs file not found: {path}") from None
    except OSError as exc:
        raise DataError(f"cannot read refs file {path}: {exc}") from None
    try:
        refs = _RestrictedUnpickler(io.BytesIO(data), encoding="latin1").load()
    except pickle.UnpicklingError as exc:
        if "refusing to load global" in str(exc):
            raise DataError(
                f"{path}: this pickle asks to import code ({exc}); refusing to run code from a data "
                "file. A genuine REFER refs file holds only lists, dicts, strings and numbers: "
                "re-download it from its official source"
            ) from None
        raise DataError(f"{path}: not a valid refs pickle ({exc}); re-download it") from None
    except Exception as exc:  # truncated or garbage input raises many types
        raise DataError(f"{path}: not a valid refs pickle ({type(exc).__name__}: {exc}); re-download it") from None
    if not isinstance(refs, list) or not all(isinstance(r, dict) for r in refs):
        raise DataError(f"{path}: expected a pickled list of ref dicts, got {type(refs).__name__}")
    return refs


# --------------------------------------------------------------------------------------------
# structure of the files: every record a dict, every id an integer, each error naming file, record and field


def read_json(path: Path, what: str, fix: str) -> Any:
    """Parse a JSON file (a UTF-8 byte-order mark is accepted); DataError naming the position if invalid."""
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise DataError(f"{what} not found: {path}; {fix}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read the {what} as UTF-8 text ({exc}); {fix}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}; {fix}") from None


def is_int(value: Any) -> bool:
    """An integer id or size (bool excluded; a float such as 480.0 is not an id)."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _records(path: Path, data: dict, key: str, required: bool) -> list:
    if key not in data:
        if not required:
            return []
        raise DataError(f"{path}: no '{key}' list; a COCO instances file has 'images', 'annotations' and "
                        "'categories' lists")
    records = data[key]
    if not isinstance(records, list):
        raise DataError(f"{path}: '{key}' must be a list of {key[:-1]} dicts, got {_type_name(records)} "
                        f"({str(records)[:40]}); fix or re-create the file")
    for i, rec in enumerate(records):
        if not isinstance(rec, dict):
            raise DataError(f"{path}: {key}[{i}] must be a dict, got {_type_name(rec)}; fix or re-create the file")
    return records


def _need_id(path: Path, where: str, rec: dict, key: str, what: str) -> None:
    if key not in rec:
        raise DataError(f"{path}: {where} has no '{key}'; every {what} needs an integer '{key}' (COCO format)")
    if not is_int(rec[key]):
        raise DataError(f"{path}: {where} has '{key}' {rec[key]!r} ({_type_name(rec[key])}); it must be an "
                        "integer (COCO format)")


def _unique(path: Path, key: str, records: list[dict]) -> None:
    seen: set[int] = set()
    for i, rec in enumerate(records):
        if rec["id"] in seen:
            raise DataError(f"{path}: {key}[{i}] has a duplicate id {rec['id']}; ids must be unique within '{key}'")
        seen.add(rec["id"])


def validate_instances(instances: Any, path: Path) -> dict:
    """Check the structure of a COCO instances dict (what the readers rely on); returns it.

    ``images``: dicts with integer ``id``, non-empty ``file_name``, positive integer ``height`` and
    ``width``; ``annotations``: dicts with integer ``id`` and ``image_id`` and a ``segmentation``
    (polygon list or RLE dict); ``categories`` (optional): dicts with an integer ``id``. Ids are
    unique. Raises :class:`DataError` naming the file, the record (``images[3]``) and the field.
    """
    if not isinstance(instances, dict):
        raise DataError(f"{path}: the annotations file must be a JSON object with 'images' and 'annotations' "
                        f"(COCO format), got {_type_name(instances)}")
    images = _records(path, instances, "images", True)
    for i, im in enumerate(images):
        where = f"images[{i}]"
        _need_id(path, where, im, "id", "image")
        name = im.get("file_name")
        if not isinstance(name, str) or not name.strip():
            raise DataError(f"{path}: {where} (id {im['id']}) has no 'file_name'; give the image file's name, "
                            "relative to the image folder")
        for key in ("height", "width"):
            v = im.get(key)
            if not (is_int(v) or (isinstance(v, float) and v.is_integer())) or v <= 0:  # 480.0 is fine
                raise DataError(f"{path}: {where} (id {im['id']}) has '{key}' {v!r}; it must be the image's "
                                f"{key} in pixels, a positive integer")
    _unique(path, "images", images)
    anns = _records(path, instances, "annotations", True)
    for i, ann in enumerate(anns):
        where = f"annotations[{i}]"
        _need_id(path, where, ann, "id", "annotation")
        _need_id(path, f"{where} (id {ann['id']})", ann, "image_id", "annotation")
        seg = ann.get("segmentation")
        if not isinstance(seg, (list, dict)):
            raise DataError(f"{path}: {where} (id {ann['id']}) has no 'segmentation' (got {_type_name(seg)}); give "
                            "polygons [[x1, y1, x2, y2, ...], ...] or an RLE {\"size\": [h, w], \"counts\": ...}")
    _unique(path, "annotations", anns)
    for i, cat in enumerate(_records(path, instances, "categories", False)):
        _need_id(path, f"categories[{i}]", cat, "id", "category")
    return instances


def load_instances(path: str | Path, fix: str = "re-download it") -> dict:
    """Read and validate a COCO ``instances.json`` (see :func:`validate_instances`)."""
    path = Path(path)
    return validate_instances(read_json(path, "annotations file (instances.json)", fix), path)


def validate_refs(refs: list[dict], path: Path) -> None:
    """Check what the readers rely on in REFER refs; :class:`DataError` naming the ref and the field."""
    need = ("ref_id", "ann_id", "image_id", "split", "sentences")
    for i, ref in enumerate(refs):
        missing = [k for k in need if k not in ref]
        if missing:
            raise DataError(f"{path}: ref #{i} lacks {', '.join(missing)}; not a REFER refs file?")
        where = f"ref #{i} (ref_id {ref['ref_id']!r})"
        for key in ("ref_id", "ann_id", "image_id"):
            if not is_int(ref[key]):
                raise DataError(f"{path}: {where} has '{key}' {ref[key]!r} ({_type_name(ref[key])}); it must be an "
                                "integer: re-download the refs file")
        if not isinstance(ref["split"], str):
            raise DataError(f"{path}: {where} has 'split' {ref['split']!r}; it must be a string such as 'train' "
                            f"(got {_type_name(ref['split'])}): one ref belongs to one split")
        if not isinstance(ref["sentences"], list) or not all(isinstance(s, dict) for s in ref["sentences"]):
            raise DataError(f"{path}: {where} has malformed 'sentences'; it must be a list of sentence dicts "
                            "({'sent': ..., 'sent_id': ...}), got " + _type_name(ref["sentences"]))


# --------------------------------------------------------------------------------------------
# masks


def decode_segmentation(seg: Any, height: int, width: int) -> np.ndarray:
    """Rasterise a COCO segmentation to a uint8 ``(height, width)`` mask in {0, 1}.

    Accepts polygons (list of ``[x1, y1, x2, y2, ...]``; their union is taken), uncompressed
    RLE (``counts`` a list of ints), compressed RLE (``counts`` a str or bytes), or a list of
    RLEs.
    """
    if isinstance(seg, dict):
        return _decode_rle(seg, height, width)
    if isinstance(seg, list):
        if not seg:
            return np.zeros((height, width), dtype=np.uint8)
        if all(isinstance(s, dict) for s in seg):
            out = np.zeros((height, width), dtype=np.uint8)
            for s in seg:
                np.maximum(out, _decode_rle(s, height, width), out=out)
            return out
        polys = [[float(v) for v in p] for p in seg if isinstance(p, (list, tuple))]
        good = [p for p in polys if len(p) >= 6 and len(p) % 2 == 0]
        if len(good) != len(seg):
            log.debug("dropped %d degenerate polygon(s)", len(seg) - len(good))
        if not good:
            return np.zeros((height, width), dtype=np.uint8)
        rles = mask_utils.frPyObjects(good, height, width)
        m = _coco_decode(rles)  # (H, W, n)
        return m.max(axis=2).astype(np.uint8)
    raise ValueError(f"unsupported segmentation of type {type(seg).__name__}")


def _coco_decode(rle: Any) -> np.ndarray:
    # pycocotools built against numpy 1 emits a DeprecationWarning about __array__(copy=...)
    # on every decode under numpy 2; it is harmless noise.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"__array__ implementation", category=DeprecationWarning)
        return mask_utils.decode(rle)


def _decode_rle(rle: dict, height: int, width: int) -> np.ndarray:
    size = rle.get("size")
    counts = rle.get("counts")
    if size is None or counts is None:
        raise ValueError("RLE segmentation needs 'size' and 'counts'")
    h, w = int(size[0]), int(size[1])
    if (h, w) != (height, width):
        raise ValueError(f"RLE size {h}x{w} differs from the image size {height}x{width}")
    if isinstance(counts, list):
        rle = mask_utils.frPyObjects(rle, h, w)
    elif isinstance(counts, str):
        rle = {"size": [h, w], "counts": counts.encode("ascii")}
    m = _coco_decode(rle)
    if m.ndim == 3:
        m = m.max(axis=2)
    return (m > 0).astype(np.uint8)


# --------------------------------------------------------------------------------------------
# the dataset reader


class Sample(NamedTuple):
    """One (ref, sentence) pair."""

    ref: dict
    sentence: dict


class ReferData:
    """Refs + ``instances.json`` of one dataset under ``root`` (REFER layout, or the ``jsonl`` layout).

    Attributes:
        spec: the dataset's :class:`DatasetSpec`.
        refs: every ref, in file order (``jsonl``: one ref per line, ``ref_id`` = line number).
        images: ``image_id -> image dict`` (``file_name``, ``height``, ``width``, ...).
        anns: ``ann_id -> annotation dict`` (the annotations of ``instances.json``).
        virtual_anns: ``id -> union annotation`` (``jsonl`` lines with several ``ann_ids``; negative
            ids, ``{"id", "image_id", "ann_ids", ...}``); empty for REFER data.
        categories: ``category_id -> name``.

    ``line_errors``: for ``jsonl`` data, a list that receives a :class:`~step_ris.data.jsonl.LineError`
    for every unusable line (those lines are left out); without it the first bad lines raise a
    :class:`DataError`. ``step-ris data check`` passes one to report every line. For the gRefCOCO
    layout (``grefer``: ``shapesref-g``, ``grefcoco``; :mod:`step_ris.data.grefer`) it receives a
    :class:`~step_ris.data.grefer.RefError` per unusable ref, and the refs are normalised there
    (``ann_id`` one id, real or virtual; ``ann_ids``; ``target_count``; ``no_target``).
    """

    def __init__(self, root: str | Path, dataset: str, *, line_errors: list | None = None):
        spec, split = parse_dataset_name(dataset)
        if split is not None:
            raise ValueError(
                f"ReferData takes a dataset name without a split (got {dataset!r}); pass the split to "
                f".samples({split!r})"
            )
        self.spec = spec
        self.root = Path(root)
        if not self.root.is_dir():
            raise DataError(f"data root not found or not a directory: {self.root}")
        refs_path = spec.refs_path(self.root)
        if not refs_path.is_file():
            raise DataError(
                f"refs file of {spec.title} not found: {refs_path}; {spec.annotations_help.format(root=self.root)}"
            )
        inst_path = spec.instances_path(self.root)
        if not inst_path.is_file():
            raise DataError(
                f"annotations file (instances.json) of {spec.title} not found: {inst_path}; "
                f"{spec.annotations_help.format(root=self.root)}"
            )
        self.refs_path, self.instances_path = refs_path, inst_path
        if spec.layout == "jsonl":
            instances = load_instances(inst_path, fix="fix the file (docs/data.md, 'Your own data')")
        elif spec.layout == "grefer":  # refs are read below, against the instances
            instances = load_instances(inst_path)
        else:
            self.refs = load_refs(refs_path)
            validate_refs(self.refs, refs_path)
            instances = load_instances(inst_path)
        self.images: dict[int, dict] = {im["id"]: im for im in instances["images"]}
        self.anns: dict[int, dict] = {a["id"]: a for a in instances["annotations"]}
        self.categories: dict[int, str] = {c["id"]: c.get("name", "") for c in instances.get("categories", [])}
        self.virtual_anns: dict[int, dict] = {}
        if spec.layout == "jsonl":
            self._read_jsonl(line_errors)
        elif spec.layout == "grefer":
            from .grefer import read_into

            read_into(self, line_errors)  # normalised refs (ann_ids, target_count, no_target) + virtual anns
        self.refs_by_id: dict[int, dict] = {r["ref_id"]: r for r in self.refs}
        log.debug("%s: %d refs, %d images, %d annotations", spec.name, len(self.refs), len(self.images), len(self.anns))

    def _read_jsonl(self, line_errors: list | None) -> None:
        from .jsonl import parse_refs_jsonl

        parsed = parse_refs_jsonl(self.refs_path, self.images, self.anns, self.spec.splits)
        self.refs, self.virtual_anns = parsed.refs, parsed.virtual_anns
        if line_errors is not None:
            line_errors.extend(parsed.errors)
        elif parsed.errors:
            shown = "; ".join(e.format(self.refs_path) for e in parsed.errors[:3])
            more = f" (and {len(parsed.errors) - 3} more)" if len(parsed.errors) > 3 else ""
            lines = len({e.line for e in parsed.errors})
            raise DataError(f"{lines} line(s) of {self.refs_path} cannot be used: {shown}{more}; fix them "
                            f"(step-ris data check jsonl --root {self.root} lists every one)")

    # ---- queries -------------------------------------------------------------------------

    def refs_in(self, split: str) -> list[dict]:
        """Refs of ``split`` (``trainval`` expands to train + val), in file order."""
        members = set(self.spec.members(split))
        return [r for r in self.refs if r["split"] in members]

    def samples(self, split: str) -> list[Sample]:
        """Every (ref, sentence) pair of ``split``, refs in file order, sentences in ref order."""
        return [Sample(r, s) for r in self.refs_in(split) for s in r["sentences"]]

    def image_info(self, image_id: int) -> dict:
        try:
            return self.images[image_id]
        except KeyError:
            raise DataError(f"image id {image_id} is not in {self.instances_path}") from None

    def has_ann(self, ann_id: int) -> bool:
        """Whether ``ann_id`` is an annotation of ``instances.json`` or a union annotation."""
        return ann_id in self.anns or ann_id in self.virtual_anns

    def ann(self, ann_id: int) -> dict:
        try:
            return self.anns[ann_id]
        except KeyError:
            if ann_id in self.virtual_anns:
                return self.virtual_anns[ann_id]
            raise DataError(f"annotation id {ann_id} is not in {self.instances_path}") from None

    def image_path(self, image_id: int) -> Path:
        """Path of the photo of ``image_id``: ``<root>/<image_dir>/<file_name>``."""
        return self.spec.image_root(self.root) / self.image_info(image_id)["file_name"]

    def missing_image_help(self, image_id: int) -> str:
        return f"image file not found: {self.image_path(image_id)}; {self.spec.images_help.format(root=self.root)}"

    def mask(self, ann: dict | int) -> np.ndarray:
        """uint8 ``(H, W)`` mask in {0, 1} of an annotation (dict or id), at the image's size.

        A union annotation (:attr:`virtual_anns`) gives the union of its ``ann_ids``' masks.
        """
        if not isinstance(ann, dict):
            ann = self.ann(ann)
        if ann.get("id") in self.virtual_anns and "ann_ids" in ann:
            return np.maximum.reduce([self.mask(a) for a in ann["ann_ids"]])
        img = self.image_info(ann["image_id"])
        try:
            return decode_segmentation(ann["segmentation"], int(img["height"]), int(img["width"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise DataError(
                f"annotation {ann.get('id')} of image {ann['image_id']} in {self.instances_path}: cannot "
                f"decode its segmentation ({exc})"
            ) from None
