"""ShapesRef scenes: shape geometry, muted textured backgrounds, placement with controlled
occlusion, and rendering.

Every object is one polygon (circles are 64-gons). The same vertex list is used three times:
to rasterise the object, to compute its visible region (polygon minus the polygons of later-drawn
objects, with shapely) and to write its COCO segmentation. Objects are rasterised with
``pycocotools`` (``frPyObjects`` + ``decode``), the very routine the REFER toolkit uses to turn
an annotation into a mask, so the drawn pixels of an unoccluded object are exactly its training
mask, and an occluded one differs only where the occluder's edge cuts it. (PIL's polygon fill
includes boundary pixels and rounds vertices; against COCO masks it reaches only ~0.85 IoU for
small objects.)

A scene is a pure function of ``(seed, index, attempt, size, occlusion)``; see :func:`make_scene`.
"""

from __future__ import annotations

import colorsys
import math
import warnings
from dataclasses import dataclass
from functools import cached_property

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils
from shapely.geometry import MultiPolygon, Polygon
from shapely.geometry.base import BaseGeometry

# --- vocabulary of the world -------------------------------------------------------------------
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "hexagon", "diamond", "cross")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 35),
    "orange": (255, 140, 0),
    "yellow": (250, 225, 30),
    "green": (40, 170, 60),
    "blue": (35, 85, 225),
    "purple": (140, 55, 200),
    "pink": (255, 120, 200),
    "white": (245, 245, 245),
}
SIZES: tuple[str, ...] = ("small", "medium", "big")
SIZE_RANK: dict[str, int] = {s: i for i, s in enumerate(SIZES)}
# Diameter of the circle with the same area as the object, as a fraction of the image side.
# All shapes of one size class have (about) the same area, so "bigger" compares across shapes;
# consecutive classes differ by ~1.44x in extent (~2.1x in area), well beyond the jitter.
SIZE_EXTENT: dict[str, float] = {"small": 0.125, "medium": 0.18, "big": 0.26}
SIZE_JITTER = 0.05  # relative, uniform +-

# --- geometry ------------------------------------------------------------------------------------
CIRCLE_VERTICES = 64
STAR_INNER_RATIO = 0.45
DIAMOND_WIDTH_RATIO = 0.62  # a diamond is taller than wide, so it never looks like a tilted square
CROSS_ARM_HALF_WIDTH = 0.32
# Random tilt (+- degrees). Circles and hexagons stay upright: a hexagon's flat top and bottom
# edges are what tell it from a circle at small sizes.
ROTATION_JITTER_DEG: dict[str, float] = {
    "circle": 0.0, "square": 8.0, "triangle": 8.0, "star": 8.0, "hexagon": 0.0, "diamond": 8.0, "cross": 8.0,
}

# --- scene composition ---------------------------------------------------------------------------
MIN_OBJECTS, MAX_OBJECTS = 3, 8
MIN_KINDS, MAX_KINDS = 2, 5  # distinct shapes (and, separately, colours) per scene: distractors
BORDER_MARGIN = 0.02  # fraction of the side kept free at the image border
SEPARATION_GAP = 0.02  # gap between non-overlapping objects, fraction of the side
SAME_COLOUR_GAP = 0.03  # objects of one colour never touch (they would merge into one blob)
OCCLUSION_PROBABILITY = 0.5  # chance that a new object is allowed to overlap earlier ones
MIN_VISIBLE_FRACTION = 0.7  # every object keeps at least this much of its area visible
MIN_PIECE_AREA_PX = 1.0  # visible slivers smaller than this (px^2) are dropped from the annotation
PLACEMENT_TRIES = 60
SCENE_TRIES = 20

# --- background ----------------------------------------------------------------------------------
BACKGROUND_KINDS: tuple[str, ...] = ("noise", "gradient", "stripes", "blotches")
MUTED_SATURATION = (0.04, 0.25)
MUTED_VALUE = (0.35, 0.70)
NOISE_GRID = (4, 12)  # low-resolution noise grid, upsampled bilinearly
NOISE_AMPLITUDE = 18.0
STRIPE_PERIOD = (0.06, 0.18)  # fraction of the side
STRIPE_CONTRAST = 0.18  # the second stripe colour is the first one, up to this much brighter/darker
STRIPE_TINT = 8.0  # ... plus a small per-channel shift
BLOTCHES = (4, 12)
BLOTCH_SIGMA = (0.06, 0.18)  # fraction of the side
BLOTCH_OPACITY = 0.6
GRAIN_SIGMA = 3.0
OBJECT_BRIGHTNESS_JITTER = 0.06  # each object's colour is scaled by 1 +- this (hue and white stay)


@dataclass(frozen=True)
class SceneObject:
    """One drawn object. Coordinates are pixels, x to the right, y down."""

    shape: str
    colour: str
    size: str
    center: tuple[float, float]
    vertices: tuple[tuple[float, float], ...]
    rgb: tuple[int, int, int]
    draw_order: int

    @cached_property
    def polygon(self) -> Polygon:
        return Polygon(self.vertices)


@dataclass(frozen=True, eq=False)
class Scene:
    """Objects in draw order, their visible regions (no holes, no slivers) and the background
    (H, W, 3) uint8."""

    size: int
    objects: tuple[SceneObject, ...]
    visible: tuple[BaseGeometry, ...]
    background: np.ndarray


def scene_rng(seed: int, index: int, attempt: int, stream: int) -> np.random.Generator:
    """Independent random stream for one image (``stream`` 0: scene, 1: language)."""
    return np.random.default_rng(np.random.SeedSequence([seed, index, attempt, stream]))


# --- shapes --------------------------------------------------------------------------------------
def _regular(n: int, phase: float, radii: tuple[float, ...] = (1.0,)) -> list[tuple[float, float]]:
    return [
        (radii[k % len(radii)] * math.cos(phase + 2 * math.pi * k / n),
         radii[k % len(radii)] * math.sin(phase + 2 * math.pi * k / n))
        for k in range(n)
    ]


def _cross(w: float) -> list[tuple[float, float]]:
    return [(-w, -1), (w, -1), (w, -w), (1, -w), (1, w), (w, w), (w, 1), (-w, 1), (-w, w),
            (-1, w), (-1, -w), (-w, -w)]


UNIT_SHAPES: dict[str, list[tuple[float, float]]] = {
    "circle": _regular(CIRCLE_VERTICES, 0.0),
    "square": _regular(4, math.pi / 4),
    "triangle": _regular(3, -math.pi / 2),
    "star": _regular(10, -math.pi / 2, (1.0, STAR_INNER_RATIO)),
    "hexagon": _regular(6, 0.0),
    "diamond": [(0, -1), (DIAMOND_WIDTH_RATIO, 0), (0, 1), (-DIAMOND_WIDTH_RATIO, 0)],
    "cross": _cross(CROSS_ARM_HALF_WIDTH),
}
UNIT_AREA: dict[str, float] = {k: Polygon(v).area for k, v in UNIT_SHAPES.items()}


def shape_vertices(shape: str, diameter: float, angle_deg: float) -> list[tuple[float, float]]:
    """Vertices around (0, 0) of a ``shape`` whose area equals a circle of ``diameter``."""
    scale = (diameter / 2) * math.sqrt(math.pi / UNIT_AREA[shape])
    a = math.radians(angle_deg)
    ca, sa = math.cos(a), math.sin(a)
    return [(scale * (x * ca - y * sa), scale * (x * sa + y * ca)) for x, y in UNIT_SHAPES[shape]]


# --- backgrounds ---------------------------------------------------------------------------------
def _muted(rng: np.random.Generator) -> np.ndarray:
    r, g, b = colorsys.hsv_to_rgb(rng.random(), rng.uniform(*MUTED_SATURATION), rng.uniform(*MUTED_VALUE))
    return np.array([r, g, b], dtype=np.float32) * 255


def _upsample(grid: np.ndarray, size: int) -> np.ndarray:
    img = Image.fromarray(grid.astype(np.float32)).resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(img, dtype=np.float32)


def _coords(size: int) -> tuple[np.ndarray, np.ndarray]:
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
    return xs, ys


def _projection(rng: np.random.Generator, size: int) -> np.ndarray:
    theta = rng.uniform(0, math.pi)
    xs, ys = _coords(size)
    return xs * math.cos(theta) + ys * math.sin(theta)


def _bg_noise(rng: np.random.Generator, size: int) -> np.ndarray:
    g = int(rng.integers(NOISE_GRID[0], NOISE_GRID[1] + 1))
    field = _upsample(rng.normal(0, 1, (g, g)), size)
    tint = 1.0 + rng.uniform(-0.3, 0.3, 3).astype(np.float32)
    return _muted(rng) + NOISE_AMPLITUDE * field[..., None] * tint


def _bg_gradient(rng: np.random.Generator, size: int) -> np.ndarray:
    p = _projection(rng, size)
    t = ((p - p.min()) / max(float(p.max() - p.min()), 1.0))[..., None]
    return _muted(rng) * (1 - t) + _muted(rng) * t


def _bg_stripes(rng: np.random.Generator, size: int) -> np.ndarray:
    period = rng.uniform(*STRIPE_PERIOD) * size
    s = (0.5 + 0.5 * np.sin(2 * math.pi * _projection(rng, size) / period))[..., None]
    c1 = _muted(rng)
    c2 = c1 * rng.uniform(1 - STRIPE_CONTRAST, 1 + STRIPE_CONTRAST) + rng.uniform(-STRIPE_TINT, STRIPE_TINT, 3)
    c2 = c2.astype(np.float32)
    return c1 * (1 - s) + c2 * s


def _bg_blotches(rng: np.random.Generator, size: int) -> np.ndarray:
    out = np.broadcast_to(_muted(rng), (size, size, 3)).copy()
    axis = np.arange(size, dtype=np.float32)
    for _ in range(int(rng.integers(BLOTCHES[0], BLOTCHES[1] + 1))):
        cx, cy = rng.uniform(0, size, 2)
        sigma = rng.uniform(*BLOTCH_SIGMA) * size
        gx = np.exp(-((axis - cx) ** 2) / (2 * sigma**2))
        gy = np.exp(-((axis - cy) ** 2) / (2 * sigma**2))
        w = (BLOTCH_OPACITY * gy[:, None] * gx[None, :])[..., None]  # separable Gaussian
        out = out * (1 - w) + _muted(rng) * w
    return out


_BACKGROUNDS = {"noise": _bg_noise, "gradient": _bg_gradient, "stripes": _bg_stripes, "blotches": _bg_blotches}


def make_background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A muted, low-contrast textured background, (size, size, 3) uint8."""
    kind = BACKGROUND_KINDS[int(rng.integers(len(BACKGROUND_KINDS)))]
    img = _BACKGROUNDS[kind](rng, size) + rng.normal(0, GRAIN_SIGMA, (size, size, 3))
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


# --- placement -----------------------------------------------------------------------------------
def polygon_parts(geom: BaseGeometry) -> list[Polygon]:
    """Polygon pieces of a shapely result (drops lines/points and slivers)."""
    if isinstance(geom, Polygon):
        parts = [geom]
    elif isinstance(geom, MultiPolygon):
        parts = list(geom.geoms)
    else:  # GeometryCollection
        parts = [p for g in getattr(geom, "geoms", []) for p in polygon_parts(g)]
    return [p for p in parts if not p.is_empty and p.area >= MIN_PIECE_AREA_PX]


def clean_region(geom: BaseGeometry) -> BaseGeometry:
    """``geom`` reduced to its polygon pieces (a Polygon or a MultiPolygon)."""
    parts = polygon_parts(geom)
    return parts[0] if len(parts) == 1 else MultiPolygon(parts)


def _visible_ok(visible: BaseGeometry, full_area: float) -> bool:
    parts = polygon_parts(visible)
    area = sum(p.area for p in parts)
    return area >= MIN_VISIBLE_FRACTION * full_area and all(len(p.interiors) == 0 for p in parts)


def _try_place(
    poly: Polygon, colour: str, placed: list[SceneObject], visible: list[BaseGeometry],
    may_overlap: bool, size: int,
) -> list[BaseGeometry] | None:
    """New visible regions of the placed objects if ``poly`` can go on top of them, else None."""
    new_visible = list(visible)
    for k, other in enumerate(placed):
        other_poly = other.polygon
        same_colour = other.colour == colour
        gap = (SAME_COLOUR_GAP if same_colour else SEPARATION_GAP) * size
        if not may_overlap or same_colour:
            if poly.distance(other_poly) < gap:
                return None
            continue
        if not poly.intersects(visible[k]):
            continue
        cut = visible[k].difference(poly)
        if not _visible_ok(cut, other_poly.area):
            return None
        new_visible[k] = cut
    return new_visible


def _sample_kinds(rng: np.random.Generator, pool: tuple[str, ...], n: int) -> list[str]:
    k = int(rng.integers(MIN_KINDS, min(n, MAX_KINDS) + 1))
    chosen = [pool[i] for i in sorted(rng.choice(len(pool), size=k, replace=False))]
    return [chosen[int(rng.integers(k))] for _ in range(n)]


def _try_scene(rng: np.random.Generator, size: int, occlusion: bool) -> Scene | None:
    n = int(rng.integers(MIN_OBJECTS, MAX_OBJECTS + 1))
    shapes, colours = _sample_kinds(rng, SHAPES, n), _sample_kinds(rng, tuple(COLOURS), n)
    margin = BORDER_MARGIN * size
    placed: list[SceneObject] = []
    visible: list[BaseGeometry] = []
    for i in range(n):
        size_class = SIZES[int(rng.integers(len(SIZES)))]
        diameter = SIZE_EXTENT[size_class] * size * (1 + rng.uniform(-SIZE_JITTER, SIZE_JITTER))
        jitter = ROTATION_JITTER_DEG[shapes[i]]
        angle = rng.uniform(-jitter, jitter) if jitter else 0.0
        local = shape_vertices(shapes[i], diameter, angle)
        lo_x, lo_y = min(x for x, _ in local), min(y for _, y in local)
        hi_x, hi_y = max(x for x, _ in local), max(y for _, y in local)
        may_overlap = occlusion and rng.random() < OCCLUSION_PROBABILITY
        base = COLOURS[colours[i]]
        gain = 1 + rng.uniform(-OBJECT_BRIGHTNESS_JITTER, OBJECT_BRIGHTNESS_JITTER)
        rgb = tuple(int(min(round(c * gain), 255)) for c in base)
        for _ in range(PLACEMENT_TRIES):
            cx = rng.uniform(margin - lo_x, size - margin - hi_x)
            cy = rng.uniform(margin - lo_y, size - margin - hi_y)
            verts = tuple((round(cx + x, 2), round(cy + y, 2)) for x, y in local)
            poly = Polygon(verts)
            new_visible = _try_place(poly, colours[i], placed, visible, may_overlap, size)
            if new_visible is not None:
                obj = SceneObject(shapes[i], colours[i], size_class, (cx, cy), verts, rgb, i)  # type: ignore[arg-type]
                placed.append(obj)
                visible = new_visible + [poly]
                break
        else:
            return None
    return Scene(size, tuple(placed), tuple(clean_region(v) for v in visible), make_background(rng, size))


def make_scene(seed: int, index: int, attempt: int, size: int, occlusion: bool) -> Scene:
    """The scene of image ``index`` (its ``attempt``-th draw); a pure function of the arguments."""
    rng = scene_rng(seed, index, attempt, 0)
    for _ in range(SCENE_TRIES):
        scene = _try_scene(rng, size, occlusion)
        if scene is not None:
            return scene
    raise RuntimeError(f"could not place objects for image {index} (size {size}); this should not happen")


# --- rendering -----------------------------------------------------------------------------------
def object_mask(obj: SceneObject, size: int) -> np.ndarray:
    """Pixels of ``obj``'s polygon, (size, size) bool, rasterised exactly as COCO tools do it."""
    flat = [c for xy in obj.vertices for c in xy]
    with warnings.catch_warnings():  # pycocotools' decode trips a NumPy 2 copy= DeprecationWarning
        warnings.simplefilter("ignore", DeprecationWarning)
        return mask_utils.decode(mask_utils.frPyObjects([flat], size, size))[:, :, 0].astype(bool)


def render_scene(scene: Scene) -> tuple[np.ndarray, np.ndarray]:
    """RGB image (H, W, 3) uint8 and object id map (H, W) int32: 0 background, k = draw order + 1."""
    rgb = scene.background.copy()
    ids = np.zeros((scene.size, scene.size), dtype=np.int32)
    for obj in scene.objects:
        inside = object_mask(obj, scene.size)
        rgb[inside] = obj.rgb
        ids[inside] = obj.draw_order + 1
    return rgb, ids


def segmentation(visible: BaseGeometry) -> list[list[float]]:
    """COCO polygons ``[x1, y1, x2, y2, ...]`` of a visible region (one per piece)."""
    polys = []
    for part in polygon_parts(visible):
        coords = list(part.exterior.coords)[:-1]
        polys.append([round(float(c), 2) for xy in coords for c in xy])
    return polys
