"""Logical forms of ShapesRef expressions and the single evaluator that grounds them.

A form is a small tree:

- ``Filter(shape, colour, size)``: the objects with those attributes (``None`` = any).
- ``Extreme(of, direction)``: the leftmost / rightmost / top / bottom / most central of ``of``.
- ``Relate(of, relation, landmark)``: the ``of`` objects in ``relation`` to the single object
  ``landmark`` denotes (half-plane "left of", cone "directly left of", nearest, farthest).
- ``Ordinal(of, order, index)``: the ``index``-th (1-based) of ``of`` counted from the left /
  right / top / bottom, or by size ("second smallest").
- ``Compare(of, direction)``: of exactly two ``of`` objects, the bigger / smaller / left / ...

Several referents (ShapesRef-g, generalized referring segmentation):

- ``Both(of)``: the two ``of`` objects, when exactly two fit ("both red circles").
- ``All(of)``: every ``of`` object, when at least two fit ("all squares").
- ``Extremes(of, direction, count)``: the ``count`` (2) ``of`` objects furthest towards
  ``direction``, of at least ``count + 1`` ("the two leftmost stars").

No referent: :func:`rules_out_all` proves that a form denotes nothing *clearly* (its head shape is in
the scene and an attribute, a half-plane or cone relation, or an ordinal excludes every candidate),
as opposed to the empty answer the evaluator gives for a geometric near tie.

Objects are dicts with ``shape``, ``colour``, ``size`` and ``position`` = ``[x, y]`` of the
centre as a fraction of the image side (y down). Geometry is judged with margins: when an
object is too close to call (e.g. two candidates almost equally far left), the form denotes
nothing, so a kept expression never hinges on a few pixels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from .scene import COLOURS, SHAPES, SIZE_RANK, SIZES

# Geometry margins, as fractions of the image side.
POSITION_MARGIN = 0.08  # extremes, ordinals, half-plane relations, left/right/top/bottom pairs
DISTANCE_MARGIN = 0.08  # nearest / farthest / most central: winner beats runner-up by this ...
DISTANCE_RATIO = 1.25  # ... and by this factor
CENTER_MAX_DISTANCE = 0.25  # "in the middle" only if the winner is this close to the centre
DIRECT_IN_SLOPE = 0.45  # "directly left of": |perpendicular offset| <= this * distance along axis
DIRECT_OUT_SLOPE = 0.8  # clearly not directly left of beyond this slope (between: ambiguous)

DIRECTIONS: tuple[str, ...] = ("left", "right", "top", "bottom", "center")
AXIS_DIRECTIONS: tuple[str, ...] = ("left", "right", "top", "bottom")
HALF_PLANE_RELATIONS: dict[str, str] = {"left_of": "left", "right_of": "right", "above": "top", "below": "bottom"}
CONE_RELATIONS: dict[str, str] = {
    "directly_left_of": "left", "directly_right_of": "right", "directly_above": "top", "directly_below": "bottom",
}
DISTANCE_RELATIONS: tuple[str, ...] = ("nearest", "farthest")
RELATIONS: tuple[str, ...] = (*HALF_PLANE_RELATIONS, *CONE_RELATIONS, *DISTANCE_RELATIONS)
SIZE_ORDERS: tuple[str, ...] = ("smallest", "biggest")
ORDERS: tuple[str, ...] = (*AXIS_DIRECTIONS, *SIZE_ORDERS)
SIZE_COMPARISONS: tuple[str, ...] = ("bigger", "smaller")
COMPARISONS: tuple[str, ...] = (*SIZE_COMPARISONS, *AXIS_DIRECTIONS)
ORDINAL_INDICES: tuple[int, ...] = (2, 3)
EXTREMES_COUNTS: tuple[int, ...] = (2,)  # "the two leftmost"
OPS: tuple[str, ...] = ("filter", "extreme", "relate", "ordinal", "compare", "both", "all", "extremes")


@dataclass(frozen=True)
class Filter:
    shape: str | None = None
    colour: str | None = None
    size: str | None = None

    def __post_init__(self) -> None:
        for value, allowed, name in ((self.shape, SHAPES, "shape"), (self.colour, tuple(COLOURS), "colour"),
                                     (self.size, SIZES, "size")):
            if value is not None and value not in allowed:
                raise ValueError(f"unknown {name} {value!r} in logical form (known: {', '.join(allowed)})")

    def n_attributes(self) -> int:
        return sum(v is not None for v in (self.shape, self.colour, self.size))


@dataclass(frozen=True)
class Extreme:
    of: Filter
    direction: str


@dataclass(frozen=True)
class Relate:
    of: Filter
    relation: str
    landmark: Filter


@dataclass(frozen=True)
class Ordinal:
    of: Filter
    order: str
    index: int


@dataclass(frozen=True)
class Compare:
    of: Filter
    direction: str


@dataclass(frozen=True)
class Both:
    of: Filter


@dataclass(frozen=True)
class All:
    of: Filter


@dataclass(frozen=True)
class Extremes:
    of: Filter
    direction: str
    count: int = 2


Form = Filter | Extreme | Relate | Ordinal | Compare | Both | All | Extremes


# --- (de)serialisation -------------------------------------------------------------------------------
def form_to_dict(form: Form) -> dict[str, Any]:
    """JSON-serialisable dict of a form (``op`` names the node type)."""
    if isinstance(form, Filter):
        return {"op": "filter", "shape": form.shape, "colour": form.colour, "size": form.size}
    if isinstance(form, Extreme):
        return {"op": "extreme", "of": form_to_dict(form.of), "direction": form.direction}
    if isinstance(form, Relate):
        return {"op": "relate", "of": form_to_dict(form.of), "relation": form.relation,
                "landmark": form_to_dict(form.landmark)}
    if isinstance(form, Ordinal):
        return {"op": "ordinal", "of": form_to_dict(form.of), "order": form.order, "index": form.index}
    if isinstance(form, Compare):
        return {"op": "compare", "of": form_to_dict(form.of), "direction": form.direction}
    if isinstance(form, Both):
        return {"op": "both", "of": form_to_dict(form.of)}
    if isinstance(form, All):
        return {"op": "all", "of": form_to_dict(form.of)}
    if isinstance(form, Extremes):
        return {"op": "extremes", "of": form_to_dict(form.of), "direction": form.direction, "count": form.count}
    raise ValueError(f"not a logical form: {form!r}")


def _choice(d: dict[str, Any], key: str, allowed: tuple) -> Any:
    value = d.get(key)
    if value not in allowed:
        raise ValueError(f"logical form {d.get('op')!r}: {key}={value!r} is not one of {allowed}")
    return value


def _filter_from_dict(d: Any) -> Filter:
    if not isinstance(d, dict) or d.get("op") != "filter":
        raise ValueError(f"expected a filter node, got {d!r}")
    return Filter(d.get("shape"), d.get("colour"), d.get("size"))


def form_from_dict(d: Any) -> Form:
    """Inverse of :func:`form_to_dict`; raises ValueError on a malformed form."""
    if not isinstance(d, dict) or "op" not in d:
        raise ValueError(f"a logical form is a dict with an 'op' key, got {d!r}")
    op = d["op"]
    if op not in OPS:
        raise ValueError(f"unknown logical form op {op!r} (known: {', '.join(OPS)})")
    if op == "filter":
        return _filter_from_dict(d)
    of = _filter_from_dict(d.get("of"))
    if op == "extreme":
        return Extreme(of, _choice(d, "direction", DIRECTIONS))
    if op == "relate":
        return Relate(of, _choice(d, "relation", RELATIONS), _filter_from_dict(d.get("landmark")))
    if op == "ordinal":
        return Ordinal(of, _choice(d, "order", ORDERS), _choice(d, "index", ORDINAL_INDICES))
    if op == "both":
        return Both(of)
    if op == "all":
        return All(of)
    if op == "extremes":
        return Extremes(of, _choice(d, "direction", AXIS_DIRECTIONS), _choice(d, "count", EXTREMES_COUNTS))
    return Compare(of, _choice(d, "direction", COMPARISONS))


def head(form: Form) -> Filter:
    """The head noun phrase's filter ("the circle" in "the circle left of the star")."""
    return form if isinstance(form, Filter) else form.of


def uses_location(form: Form) -> bool:
    """Whether realising the form needs absolute or directional location words."""
    if isinstance(form, (Extreme, Extremes)):
        return True
    if isinstance(form, Relate):
        return form.relation not in DISTANCE_RELATIONS
    if isinstance(form, Ordinal):
        return form.order not in SIZE_ORDERS
    if isinstance(form, Compare):
        return form.direction not in SIZE_COMPARISONS
    return False


# --- evaluation ------------------------------------------------------------------------------------
def _pos(obj: dict) -> tuple[float, float]:
    x, y = obj["position"]
    return float(x), float(y)


def _along(obj: dict, direction: str) -> float:
    """Coordinate that grows towards ``direction`` (so the extreme has the largest value)."""
    x, y = _pos(obj)
    return {"left": -x, "right": x, "top": -y, "bottom": y}[direction]


def _across(obj: dict, direction: str) -> float:
    x, y = _pos(obj)
    return y if direction in ("left", "right") else x


def _distance(a: dict, b: dict) -> float:
    (ax, ay), (bx, by) = _pos(a), _pos(b)
    return math.hypot(ax - bx, ay - by)


def _clear_minimum(items: list[int], key: dict[int, float]) -> list[int]:
    """The item with the clearly smallest distance ``key`` (margin and ratio), else []."""
    ranked = sorted(items, key=lambda i: (key[i], i))
    if not ranked:
        return []
    if len(ranked) > 1:
        d1, d2 = key[ranked[0]], key[ranked[1]]
        if d2 - d1 < DISTANCE_MARGIN or d2 < DISTANCE_RATIO * d1:
            return []
    return [ranked[0]]


def _clear_maximum(items: list[int], key: dict[int, float]) -> list[int]:
    ranked = sorted(items, key=lambda i: (-key[i], i))
    if not ranked:
        return []
    if len(ranked) > 1:
        d1, d2 = key[ranked[0]], key[ranked[1]]
        if d1 - d2 < DISTANCE_MARGIN or d1 < DISTANCE_RATIO * d2:
            return []
    return [ranked[0]]


def _eval_filter(f: Filter, objects: list[dict]) -> list[int]:
    return [
        i for i, o in enumerate(objects)
        if (f.shape is None or o["shape"] == f.shape)
        and (f.colour is None or o["colour"] == f.colour)
        and (f.size is None or o["size"] == f.size)
    ]


def _eval_extreme(form: Extreme, objects: list[dict]) -> list[int]:
    cands = _eval_filter(form.of, objects)
    if form.direction == "center":
        dist = {i: math.hypot(_pos(objects[i])[0] - 0.5, _pos(objects[i])[1] - 0.5) for i in cands}
        best = _clear_minimum(cands, dist)
        return best if best and dist[best[0]] <= CENTER_MAX_DISTANCE else []
    ranked = sorted(cands, key=lambda i: (-_along(objects[i], form.direction), i))
    if len(ranked) > 1 and _along(objects[ranked[0]], form.direction) - _along(
            objects[ranked[1]], form.direction) < POSITION_MARGIN:
        return []
    return ranked[:1]


def relation_verdict(relation: str, obj: dict, landmark: dict) -> bool | None:
    """True / False when clear, None when too close to call."""
    direction = HALF_PLANE_RELATIONS.get(relation) or CONE_RELATIONS[relation]
    a = _along(obj, direction) - _along(landmark, direction)  # > 0: obj lies towards direction
    if relation in HALF_PLANE_RELATIONS:
        return True if a >= POSITION_MARGIN else False if a <= -POSITION_MARGIN else None
    b = abs(_across(obj, direction) - _across(landmark, direction))
    if a >= POSITION_MARGIN and b <= DIRECT_IN_SLOPE * a:
        return True
    if a <= 0 or b >= DIRECT_OUT_SLOPE * a:
        return False
    return None


def _eval_relate(form: Relate, objects: list[dict]) -> list[int]:
    landmark = evaluate(form.landmark, objects)
    if len(landmark) != 1:
        return []
    lm = landmark[0]
    cands = [i for i in _eval_filter(form.of, objects) if i != lm]
    if form.relation in DISTANCE_RELATIONS:
        dist = {i: _distance(objects[i], objects[lm]) for i in cands}
        pick = _clear_minimum if form.relation == "nearest" else _clear_maximum
        return pick(cands, dist)
    verdicts = {i: relation_verdict(form.relation, objects[i], objects[lm]) for i in cands}
    if any(v is None for v in verdicts.values()):
        return []
    return [i for i in cands if verdicts[i]]


def _eval_ordinal(form: Ordinal, objects: list[dict]) -> list[int]:
    cands = _eval_filter(form.of, objects)
    if form.order in SIZE_ORDERS:
        sign = 1 if form.order == "smallest" else -1
        key = {i: float(sign * SIZE_RANK[objects[i]["size"]]) for i in cands}
        margin = 1.0  # size classes must differ
    else:
        key = {i: -_along(objects[i], form.order) for i in cands}
        margin = POSITION_MARGIN
    ranked = sorted(cands, key=lambda i: (key[i], i))
    k = form.index
    if len(ranked) < k:
        return []
    for i in range(min(k, len(ranked) - 1)):  # the first k+1 must be clearly ordered
        if key[ranked[i + 1]] - key[ranked[i]] < margin:
            return []
    return [ranked[k - 1]]


def _eval_compare(form: Compare, objects: list[dict]) -> list[int]:
    pair = _eval_filter(form.of, objects)
    if len(pair) != 2:
        return []
    a, b = pair
    if form.direction in SIZE_COMPARISONS:
        ra, rb = SIZE_RANK[objects[a]["size"]], SIZE_RANK[objects[b]["size"]]
        if ra == rb:
            return []
        bigger = a if ra > rb else b
        return [bigger] if form.direction == "bigger" else [b if bigger == a else a]
    va, vb = _along(objects[a], form.direction), _along(objects[b], form.direction)
    if abs(va - vb) < POSITION_MARGIN:
        return []
    return [a if va > vb else b]


def evaluate(form: Form, objects: list[dict]) -> list[int]:
    """Indices (ascending) of the objects the form denotes."""
    if isinstance(form, Filter):
        return _eval_filter(form, objects)
    if isinstance(form, Extreme):
        return _eval_extreme(form, objects)
    if isinstance(form, Relate):
        return sorted(_eval_relate(form, objects))
    if isinstance(form, Ordinal):
        return _eval_ordinal(form, objects)
    if isinstance(form, Compare):
        return _eval_compare(form, objects)
    if isinstance(form, Both):
        matches = _eval_filter(form.of, objects)
        return matches if len(matches) == 2 else []
    if isinstance(form, All):
        matches = _eval_filter(form.of, objects)
        return matches if len(matches) >= 2 else []
    if isinstance(form, Extremes):
        return _eval_extremes(form, objects)
    raise ValueError(f"not a logical form: {form!r}")


def _eval_extremes(form: Extremes, objects: list[dict]) -> list[int]:
    """The ``count`` candidates furthest towards the direction, of at least ``count + 1``, with a clear gap
    (POSITION_MARGIN) between the last one in and the first one out."""
    cands = _eval_filter(form.of, objects)
    k = form.count
    if len(cands) <= k:
        return []
    ranked = sorted(cands, key=lambda i: (-_along(objects[i], form.direction), i))
    if _along(objects[ranked[k - 1]], form.direction) - _along(objects[ranked[k]], form.direction) < POSITION_MARGIN:
        return []
    return sorted(ranked[:k])


def rules_out_all(form: Form, objects: list[dict]) -> bool:
    """Whether ``form`` clearly denotes nothing although its head names what the scene holds.

    True only for a near miss. Every attribute value the head names (shape, colour, size) is present in
    the scene (a generic noun, "object", always is), so no single word rules anything out, and

    - an attribute rules out every candidate: the head names at least two attributes that no object has
      together ("the red circle": circles and red things, but no red circle; "the leftmost small red
      object", "both red circles"), any form; for ``Relate`` its landmark is still exactly one object;
    - or a relation does (``Relate`` with a half-plane or cone relation): the landmark is exactly one
      object, at least one head candidate is left besides it, and every candidate is clearly not in the
      relation (no verdict within the margins); distance relations ("nearest") always have a winner;
    - or an ordinal does (``Ordinal``): at least one candidate, but fewer than the index ("the third
      circle" of two).

    Every other form, and any answer that is empty only because a call is too close (a near tie),
    gives False.
    """
    h = head(form)
    if not objects:
        return False
    for value, key in ((h.shape, "shape"), (h.colour, "colour"), (h.size, "size")):
        if value is not None and not any(o[key] == value for o in objects):
            return False
    if h.n_attributes() >= 2 and not _eval_filter(h, objects):
        return not isinstance(form, Relate) or len(evaluate(form.landmark, objects)) == 1
    if isinstance(form, Relate):
        return relation_rules_out_all(form, objects)
    if isinstance(form, Ordinal):
        return 1 <= len(_eval_filter(form.of, objects)) < form.index
    return False


def relation_rules_out_all(form: Relate, objects: list[dict]) -> bool:
    """The ``Relate`` part of :func:`rules_out_all` (its head-value rule aside)."""
    if form.relation in DISTANCE_RELATIONS:
        return False
    landmark = evaluate(form.landmark, objects)
    if len(landmark) != 1:
        return False
    cands = [i for i in _eval_filter(form.of, objects) if i != landmark[0]]
    return bool(cands) and all(
        relation_verdict(form.relation, objects[i], objects[landmark[0]]) is False for i in cands)


def evaluate_logical_form(form: dict, objects: list[dict]) -> list[int]:
    """Indices of ``objects`` (dicts with shape, colour, size, position) that ``form`` denotes.

    ``form`` is the dict stored with each sentence (``sentence["logical_form"]``); ``objects``
    are the ``attributes`` of the image's annotations in draw order.
    """
    return evaluate(form_from_dict(form), objects)


def logical_form_rules_out_all(form: dict, objects: list[dict]) -> bool:
    """:func:`rules_out_all` of a stored form dict: the proof that a no-target expression is a clear
    near miss (its evaluation, :func:`evaluate_logical_form`, is then ``[]``)."""
    return rules_out_all(form_from_dict(form), objects)
