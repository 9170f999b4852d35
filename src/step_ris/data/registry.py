"""The dataset registry: which datasets exist, where their files lie under a data root, their splits.

Dataset names (``name`` or ``name:split``, case-insensitive), see :data:`DATASETS`:

============  ===============================  ================================  =========================
name          refs file                        images                            splits
============  ===============================  ================================  =========================
refcoco       refcoco/refs(unc).p              images/mscoco/images/train2014    train val testA testB
refcoco+      refcoco+/refs(unc).p             images/mscoco/images/train2014    train val testA testB
refcocog      refcocog/refs(google).p          images/mscoco/images/train2014    train val
refcocog-umd  refcocog/refs(umd).p             images/mscoco/images/train2014    train val test
refclef       refclef/refs(berkeley).p         images/saiapr_tc-12               train val test trainval
shapesref     shapesref/refs(unc).p            images/shapesref                  train val testA testB
shapesref+    shapesref+/refs(unc).p           images/shapesref                  train val testA testB
shapesref-g   shapesref-g/grefs(unc).json      images/shapesref                  train val testA testB
grefcoco      grefcoco/grefs(unc).json         images/mscoco/images/train2014    train val testA testB
jsonl         refs.jsonl                       images                            train val test testA testB
============  ===============================  ================================  =========================

``referit`` is an alias of ``refclef``, ``coco-jsonl`` of ``jsonl``, ``grefcoco-unc`` of ``grefcoco``;
``trainval`` (refclef, jsonl) is train + val. ``jsonl`` is a plain layout for one's own data
(``<root>/instances.json``, ``<root>/refs.jsonl``, ``<root>/images/``; :mod:`step_ris.data.jsonl`).
``shapesref-g`` and ``grefcoco`` are in the gRefCOCO layout (a JSON list of refs whose ``ann_id`` is a
list, ``[-1]`` with ``no_target`` when nothing is meant; :mod:`step_ris.data.grefer`). Where to
download each file is in :data:`DOWNLOADS` and ``docs/data.md``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

REFER_BASE = "https://bvisionweb1.cs.unc.edu/licheng/referit/data"

DOWNLOADS: dict[str, str] = {
    "refcoco": f"{REFER_BASE}/refcoco.zip",
    "refcoco+": f"{REFER_BASE}/refcoco+.zip",
    "refcocog": f"{REFER_BASE}/refcocog.zip",
    "refclef": f"{REFER_BASE}/refclef.zip",
    "coco_train2014": "http://images.cocodataset.org/zips/train2014.zip",
    "saiapr_tc-12": f"{REFER_BASE}/images/saiapr_tc-12.zip",
    "grefcoco": "https://github.com/henghuiding/gRefCOCO",
}
"""Public download locations (the REFER toolkit's files; COCO's own image archive)."""

@dataclass(frozen=True)
class DatasetSpec:
    """Where one REFER dataset lives under a data root and which splits it has.

    ``annotations_help`` / ``images_help`` tell the user how to obtain the files; they contain a
    ``{root}`` placeholder for the data root.
    """

    name: str
    title: str
    folder: str
    refs_file: str
    image_dir: str
    splits: tuple[str, ...]
    annotations_help: str
    images_help: str
    composite_splits: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    layout: str = "refer"  # "refer": a refs pickle; "jsonl": one JSON line per expression (step_ris.data.jsonl);
    # "grefer": gRefCOCO's JSON list of refs with lists of targets (step_ris.data.grefer)

    @property
    def all_splits(self) -> tuple[str, ...]:
        return self.splits + tuple(self.composite_splits)

    def refs_path(self, root: str | Path) -> Path:
        return Path(root) / self.folder / self.refs_file

    def instances_path(self, root: str | Path) -> Path:
        return Path(root) / self.folder / "instances.json"

    def image_root(self, root: str | Path) -> Path:
        return Path(root) / self.image_dir

    def members(self, split: str) -> tuple[str, ...]:
        """The ``split`` values of refs that make up ``split`` (``trainval`` -> train, val)."""
        split = self.resolve_split(split)
        return self.composite_splits.get(split, (split,))

    def resolve_split(self, split: str) -> str:
        """Canonical spelling of ``split`` (case-insensitive); ValueError listing the allowed ones."""
        for s in self.all_splits:
            if s.lower() == str(split).lower():
                return s
        raise ValueError(f"dataset {self.name!r} has no split {split!r}; allowed splits: {', '.join(self.all_splits)}")


def _coco_help(zip_name: str) -> str:
    return f"download {zip_name}.zip from {DOWNLOADS[zip_name]} and unzip it into {{root}}"


_COCO_IMAGES = (
    f"download COCO train2014 images from {DOWNLOADS['coco_train2014']} and unzip them so that the "
    "photos are in {root}/images/mscoco/images/train2014/"
)
_SHAPES_HELP = (
    "ShapesRef is generated locally, not downloaded: run step-ris data shapesref --out {root} --images 2000 "
    "--seed 0 (docs/shapesref.md)"
)

_SHAPES_G_HELP = (
    "ShapesRef-g is generated locally, not downloaded: run step-ris data shapesref --generalized --out {root} "
    "--images 2000 --seed 0 (docs/shapesref.md); an output made without --generalized has no shapesref-g/ folder"
)
_GREFCOCO_HELP = (
    f"download gRefCOCO's grefs(unc).json and instances.json (links at {DOWNLOADS['grefcoco']}) into "
    "{root}/grefcoco/"
)

JSONL_SPLITS: tuple[str, ...] = ("train", "val", "test", "testA", "testB")
"""The split values a line of a ``jsonl`` dataset may carry."""
_JSONL_HELP = (
    "a 'jsonl' data root holds instances.json (COCO images, annotations, categories), refs.jsonl (one "
    '{{"image_id": ..., "ann_id": ..., "sentence": ..., "split": ...}} per line) and images/; see docs/data.md '
    "('Your own data'), or make one from ShapesRef with step-ris data convert-shapesref"
)

DATASETS: dict[str, DatasetSpec] = {
    s.name: s
    for s in (
        DatasetSpec(
            "refcoco",
            "RefCOCO (UNC split)",
            "refcoco",
            "refs(unc).p",
            "images/mscoco/images/train2014",
            ("train", "val", "testA", "testB"),
            _coco_help("refcoco"),
            _COCO_IMAGES,
        ),
        DatasetSpec(
            "refcoco+",
            "RefCOCO+ (UNC split)",
            "refcoco+",
            "refs(unc).p",
            "images/mscoco/images/train2014",
            ("train", "val", "testA", "testB"),
            _coco_help("refcoco+"),
            _COCO_IMAGES,
        ),
        DatasetSpec(
            "refcocog",
            "RefCOCOg (Google split)",
            "refcocog",
            "refs(google).p",
            "images/mscoco/images/train2014",
            ("train", "val"),
            _coco_help("refcocog"),
            _COCO_IMAGES,
        ),
        DatasetSpec(
            "refcocog-umd",
            "RefCOCOg (UMD split)",
            "refcocog",
            "refs(umd).p",
            "images/mscoco/images/train2014",
            ("train", "val", "test"),
            _coco_help("refcocog") + " (it holds both refs(google).p and refs(umd).p)",
            _COCO_IMAGES,
        ),
        DatasetSpec(
            "refclef",
            "ReferIt / RefCLEF (Berkeley split)",
            "refclef",
            "refs(berkeley).p",
            "images/saiapr_tc-12",
            ("train", "val", "test"),
            _coco_help("refclef"),
            f"download the IAPR TC-12 (saiapr_tc-12) subset from {DOWNLOADS['saiapr_tc-12']} and unzip "
            "it so that {root}/images/saiapr_tc-12/ holds its folders",
            {"trainval": ("train", "val")},
        ),
        DatasetSpec(
            "shapesref",
            "ShapesRef",
            "shapesref",
            "refs(unc).p",
            "images/shapesref",
            ("train", "val", "testA", "testB"),
            _SHAPES_HELP,
            _SHAPES_HELP,
        ),
        DatasetSpec(
            "shapesref+",
            "ShapesRef+",
            "shapesref+",
            "refs(unc).p",
            "images/shapesref",
            ("train", "val", "testA", "testB"),
            _SHAPES_HELP,
            _SHAPES_HELP,
        ),
        DatasetSpec(
            "shapesref-g",
            "ShapesRef-g (no-target and multi-target expressions)",
            "shapesref-g",
            "grefs(unc).json",
            "images/shapesref",
            ("train", "val", "testA", "testB"),
            _SHAPES_G_HELP,
            _SHAPES_G_HELP,
            layout="grefer",
        ),
        DatasetSpec(
            "grefcoco",
            "gRefCOCO (UNC split; no-target and multi-target expressions)",
            "grefcoco",
            "grefs(unc).json",
            "images/mscoco/images/train2014",
            ("train", "val", "testA", "testB"),
            _GREFCOCO_HELP,
            _COCO_IMAGES,
            layout="grefer",
        ),
        DatasetSpec(
            "jsonl",
            "your own data (COCO instances.json + refs.jsonl)",
            "",
            "refs.jsonl",
            "images",
            JSONL_SPLITS,
            _JSONL_HELP,
            "put the images in {root}/images/, named as the 'file_name' of instances.json (docs/data.md)",
            {"trainval": ("train", "val")},
            layout="jsonl",
        ),
    )
}

ALIASES: dict[str, str] = {"referit": "refclef", "refcocog-google": "refcocog", "refclef-berkeley": "refclef",
                          "coco-jsonl": "jsonl", "grefcoco-unc": "grefcoco"}


def dataset_names() -> list[str]:
    """Every accepted dataset name (aliases included)."""
    return sorted(DATASETS) + sorted(ALIASES)


def get_spec(name: str) -> DatasetSpec:
    """The :class:`DatasetSpec` of a dataset name (case-insensitive, aliases allowed)."""
    key = str(name).strip().lower()
    key = ALIASES.get(key, key)
    if key not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known datasets: {', '.join(dataset_names())}")
    return DATASETS[key]


def parse_dataset_name(name: str) -> tuple[DatasetSpec, str | None]:
    """Parse ``"refcoco"`` or ``"refcoco:testA"`` into (spec, canonical split or None)."""
    base, sep, split = str(name).partition(":")
    spec = get_spec(base)
    if not sep:
        return spec, None
    if not split:
        raise ValueError(f"{name!r}: empty split after ':'; allowed splits: {', '.join(spec.all_splits)}")
    return spec, spec.resolve_split(split)
