"""ShapesRef: a synthetic referring-segmentation benchmark that can only be solved by reading.

Scenes of 3-8 coloured shapes on muted textured backgrounds; every expression comes from a
logical form that the evaluator grounds to exactly its referent. Written in the REFER layout::

    ROOT/images/shapesref/<file_name>          PNG images (shared by both datasets)
    ROOT/shapesref/instances.json              COCO instances (+ per-object "attributes")
    ROOT/shapesref/refs(unc).p                 refs, all five expression families
    ROOT/shapesref+/instances.json             same instances (identical bytes)
    ROOT/shapesref+/refs(unc).p                refs without absolute location words
    ROOT/shapesref_manifest.json               generator parameters and counts
    ROOT/shapesref-g/instances.json            generalized=True only: same instances, and
    ROOT/shapesref-g/grefs(unc).json           ShapesRef-g refs (gRefCOCO layout: no-target, multi-target)

See docs/shapesref.md for the families, phrasings and splits. The modules of this package, each
importing only the ones listed before it:

- ``scene``: shapes, colours, sizes, placement, backgrounds, rendering, COCO polygons;
- ``logic``: the logical forms and their evaluator (what a form denotes in a scene);
- ``language``: lexicon and phrasings (a form -> English);
- ``plan``: referents, families and forms per image, family balancing;
- ``writer``: arguments, splits, COCO records, the atomic output tree (``generate_shapesref``);
- ``analysis``: reading a generated set back, referent-bias report, ordinals that need counting;
- ``grouping``: what a grouping step's heatmap should mark (a logical form's group; ``train.group_weight``).
"""

from __future__ import annotations

from ..refer import load_refs
from .analysis import load_shapesref, ordinal_report, referent_bias_report
from .generalized import G_DATASET, G_FAMILIES, MULTI_TARGET_SHARE, NO_TARGET_SHARE
from .logic import evaluate_logical_form, form_to_dict, logical_form_rules_out_all
from .plan import DATASETS, FAMILIES, SPLITS, FamilyBalancer, PlannedRef, plan_refs
from .scene import SHAPES, Scene, make_scene, render_scene, scene_rng, segmentation
from .writer import (
    COORD_DECIMALS,
    DEFAULT_SIZE,
    DEFAULT_SPLIT_RATIOS,
    FORMAT_VERSION,
    GENERATOR_NAME,
    GREFS_FILE,
    IMAGE_SUBDIR,
    INSTANCES,
    MANIFEST,
    MAX_SCENE_ATTEMPTS,
    MAX_SIZE,
    MIN_SIZE,
    OUTPUT_DIR_MODE,
    PICKLE_PROTOCOL,
    PNG_COMPRESS_LEVEL,
    POSITION_DECIMALS,
    REFS_FILE,
    generate_shapesref,
    image_objects,
    is_shapesref_output,
    split_counts,
)

__all__ = [
    "DEFAULT_SPLIT_RATIOS",
    "DATASETS",
    "FAMILIES",
    "SPLITS",
    "evaluate_logical_form",
    "generate_shapesref",
    "image_objects",
    "load_shapesref",
    "ordinal_report",
    "referent_bias_report",
    "split_counts",
]

# ShapesRef-g (generalized=True): importable from here, beside the single-target API above.
_GENERALIZED = (G_DATASET, G_FAMILIES, NO_TARGET_SHARE, MULTI_TARGET_SHARE, GREFS_FILE, logical_form_rules_out_all)

# Names the single-module shapesref.py had at module level, kept importable from here.
_COMPAT = (load_refs, form_to_dict, FamilyBalancer, PlannedRef, plan_refs, SHAPES, Scene, make_scene, render_scene,
           scene_rng, segmentation, COORD_DECIMALS, DEFAULT_SIZE, FORMAT_VERSION, GENERATOR_NAME, IMAGE_SUBDIR,
           INSTANCES, MANIFEST, MAX_SCENE_ATTEMPTS, MAX_SIZE, MIN_SIZE, OUTPUT_DIR_MODE, PICKLE_PROTOCOL,
           PNG_COMPRESS_LEVEL, POSITION_DECIMALS, REFS_FILE, is_shapesref_output)
