"""A small REFER folder, generated: what the real RefCOCO files hold, without the real files.

``make_refer_folder(root)`` writes the refcoco layout of the REFER toolkit::

    root/refcoco/refs(unc).p                                  pickled list of refs, protocol 2
    root/refcoco/instances.json                               COCO instances (info, licenses, ...)
    root/images/mscoco/images/train2014/COCO_train2014_%012d.jpg

Two photos-like JPEGs (640x360 and 640x427, so letterboxing is exercised) whose drawn objects are
exactly their annotations: polygons (some of several parts), and per image one crowd region
(``iscrowd: 1``) stored as uncompressed RLE (``counts`` a list), as COCO stores crowds. Eight refs,
two sentences each, spread over train (3) / val (1) / testA (2) / testB (2); no ref points to a
crowd region. Everything is drawn from fixed numbers and a fixed seed: the same bytes every time.
"""

from __future__ import annotations

import json
import math
import pickle
import warnings
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

IMAGE_DIR = Path("images/mscoco/images/train2014")
CATEGORIES = [
    {"supercategory": "person", "id": 1, "name": "person"},
    {"supercategory": "vehicle", "id": 8, "name": "truck"},
    {"supercategory": "animal", "id": 19, "name": "horse"},
    {"supercategory": "sports", "id": 37, "name": "sports ball"},
]


def _box(x0: float, y0: float, x1: float, y1: float) -> list[float]:
    return [x0, y0, x1, y0, x1, y1, x0, y1]


def _blob(cx: float, cy: float, rx: float, ry: float, n: int = 20, wobble: float = 0.0) -> list[float]:
    pts: list[float] = []
    for k in range(n):
        t = 2 * math.pi * k / n
        r = 1 + wobble * math.sin(3 * t)
        pts += [round(cx + rx * r * math.cos(t), 1), round(cy + ry * r * math.sin(t), 1)]
    return pts


def _person(cx: float, top: float, height: float) -> list[list[float]]:
    """Head, body and legs: three polygons of one annotation."""
    w = height / 4
    return [_blob(cx, top + w / 2, w / 2, w / 2, 12), _box(cx - w / 2, top + w, cx + w / 2, top + 0.6 * height),
            [cx - w / 2, top + 0.6 * height, cx + w / 2, top + 0.6 * height, cx + w / 3, top + height,
             cx - w / 3, top + height]]


# (image id, height, width, background RGB) and, per image, (ann id, category, RGB, polygons | crowd mask)
IMAGES = [(9, 360, 640, (90, 120, 80)), (25, 427, 640, (60, 140, 60))]


def _crowd(h: int, w: int, blobs: list[tuple[int, int, int]]) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    m = np.zeros((h, w), np.uint8)
    for cx, cy, r in blobs:
        m[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = 1
    return m


def _objects() -> dict[int, list[tuple[int, int, tuple[int, int, int], object]]]:
    return {
        9: [
            (101, 8, (200, 30, 30), [_box(40, 150, 200, 250), [200, 180, 235, 180, 250, 215, 250, 250, 200, 250]]),
            (102, 19, (120, 70, 30), [_blob(60, 300, 40, 28, 24, 0.1)]),
            (103, 19, (235, 235, 230), [_blob(320, 265, 32, 55, 24, 0.12)]),
            (104, 1, (40, 70, 210), _person(505, 120, 140)),
            (105, 8, (220, 220, 220), [_box(380, 100, 470, 160)]),
            (106, 1, (160, 40, 160), _person(575, 150, 80)),
            (107, 1, (20, 20, 20), ("crowd", [(260, 75, 9), (285, 80, 8), (310, 72, 10), (335, 78, 9)])),
        ],
        25: [
            (201, 1, (30, 60, 200), _person(65, 200, 160)),
            (202, 1, (230, 200, 40), _person(465, 110, 170) + [_box(445, 80, 455, 115), _box(475, 80, 485, 115)]),
            (203, 37, (245, 245, 245), [_blob(365, 125, 10, 10, 24)]),
            (204, 1, (200, 40, 40), _person(275, 200, 160)),
            (205, 1, (15, 15, 15), ("crowd", [(40 + 45 * k, 400, 14) for k in range(14)])),
        ],
    }


# (ref id, image id, ann id, split, two sentences)
REFS = [
    (0, 9, 101, "train", ("the red truck on the left", "red lorry")),
    (1, 9, 102, "train", ("brown horse at the bottom left", "the leftmost horse")),
    (2, 25, 201, "train", ("blue player on the far left", "man in blue at the left edge")),
    (3, 9, 103, "val", ("the white horse in the middle", "pale horse in the centre")),
    (4, 9, 104, "testA", ("rider in the blue jacket", "man in blue on the right")),
    (5, 25, 202, "testA", ("player lifted in the air on the right", "the yellow jumper")),
    (6, 25, 203, "testB", ("the ball", "white ball in the air")),
    (7, 9, 105, "testB", ("white truck in the back", "truck behind the horses")),
]


def rle_counts(mask: np.ndarray) -> list[int]:
    """Uncompressed COCO RLE (column-major runs, starting with background) of a {0, 1} mask."""
    flat = mask.flatten(order="F")
    change = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    runs = np.diff(bounds).tolist()
    return runs if flat[0] == 0 else [0] + runs


def _rasterise(polys: list[list[float]], h: int, w: int) -> np.ndarray:
    rle = mask_utils.merge(mask_utils.frPyObjects(polys, h, w))
    with warnings.catch_warnings():  # pycocotools built for NumPy 1 warns under NumPy 2
        warnings.filterwarnings("ignore", message=r"__array__ implementation", category=DeprecationWarning)
        return mask_utils.decode(rle).astype(np.uint8)


def _bbox(mask: np.ndarray) -> list[float]:
    ys, xs = np.nonzero(mask)
    return [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)]


def make_refer_folder(root: Path) -> Path:
    """Write the folder under ``root`` (created; must not exist) and return ``root``."""
    root = Path(root)
    (root / "refcoco").mkdir(parents=True)
    (root / IMAGE_DIR).mkdir(parents=True)
    rng = np.random.default_rng(20140)
    images, anns = [], []
    objects = _objects()
    for image_id, h, w, bg in IMAGES:
        file_name = f"COCO_train2014_{image_id:012d}.jpg"
        yy, xx = np.mgrid[:h, :w]
        pixels = np.empty((h, w, 3), np.float64)
        pixels[:] = bg
        pixels += (yy / h * 40 - 20)[..., None]  # a soft vertical gradient, as sky over grass
        for ann_id, category, rgb, seg in objects[image_id]:
            if isinstance(seg, tuple):  # a crowd region: uncompressed RLE
                mask = _crowd(h, w, seg[1])
                segmentation: object = {"counts": rle_counts(mask), "size": [h, w]}
                iscrowd = 1
            else:
                mask = _rasterise(seg, h, w)
                segmentation, iscrowd = seg, 0
            pixels[mask == 1] = rgb
            anns.append({"area": float(mask.sum()), "iscrowd": iscrowd, "image_id": image_id, "bbox": _bbox(mask),
                         "category_id": category, "id": ann_id, "segmentation": segmentation})
        pixels += rng.normal(0, 4, pixels.shape)
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(root / IMAGE_DIR / file_name, quality=92)
        images.append({"license": 1, "file_name": file_name, "coco_url": "", "height": h, "width": w,
                       "date_captured": "2013-11-14 16:28:13", "flickr_url": "", "id": image_id})
    refs = []
    for ref_id, image_id, ann_id, split, sentences in REFS:
        category = next(a["category_id"] for a in anns if a["id"] == ann_id)
        sent_ids = [2 * ref_id, 2 * ref_id + 1]
        refs.append({
            "image_id": image_id, "split": split, "ann_id": ann_id, "ref_id": ref_id, "category_id": category,
            "file_name": f"COCO_train2014_{image_id:012d}_{ann_id}.jpg", "sent_ids": sent_ids,
            "sentences": [{"tokens": s.split(), "raw": s, "sent_id": i, "sent": s}
                          for i, s in zip(sent_ids, sentences, strict=True)],
        })
    instances = {"info": {"description": "generated REFER test folder", "version": "1.0", "year": 2014},
                 "licenses": [{"url": "", "id": 1, "name": "test data"}],
                 "images": images, "annotations": anns, "categories": CATEGORIES}
    (root / "refcoco" / "instances.json").write_text(json.dumps(instances))
    with open(root / "refcoco" / "refs(unc).p", "wb") as f:
        pickle.dump(refs, f, protocol=2)
    return root
