"""Turning ShapesRef logical forms into English: lexicon (with synonyms) and phrasings.

Each form type has several templates; a template is picked at random and each concept is
written with a random synonym. The realiser never decides *what* is said, only how: the form
(and therefore the referent) is fixed before.
"""

from __future__ import annotations

from typing import TypeVar

import numpy as np

from .logic import (
    SIZE_COMPARISONS,
    All,
    Both,
    Compare,
    Extreme,
    Extremes,
    Filter,
    Form,
    Ordinal,
    Relate,
)

SHAPE_NOUNS: dict[str, tuple[tuple[str, str], ...]] = {  # (singular, plural)
    "circle": (("circle", "circles"), ("disc", "discs"), ("round shape", "round shapes")),
    "square": (("square", "squares"), ("box", "boxes")),
    "triangle": (("triangle", "triangles"),),
    "star": (("star", "stars"),),
    "hexagon": (("hexagon", "hexagons"),),
    "diamond": (("diamond", "diamonds"), ("rhombus", "rhombuses")),
    "cross": (("cross", "crosses"), ("plus sign", "plus signs")),
}
GENERIC_NOUNS: tuple[tuple[str, str], ...] = (("shape", "shapes"), ("object", "objects"), ("thing", "things"))
COLOUR_WORDS: dict[str, tuple[str, ...]] = {
    "red": ("red",), "orange": ("orange",), "yellow": ("yellow",), "green": ("green",),
    "blue": ("blue",), "purple": ("purple", "violet"), "pink": ("pink",), "white": ("white",),
}
SIZE_WORDS: dict[str, tuple[str, ...]] = {
    "small": ("small", "little", "tiny"),
    "medium": ("medium", "medium sized", "mid sized"),
    "big": ("big", "large"),
}
PREFIXES: tuple[str, ...] = ("find", "select", "segment", "pick")
PREFIX_PROBABILITY = 0.15

EXTREME_TEMPLATES: dict[str, tuple[str, ...]] = {
    "left": ("the leftmost {np}", "the {np} on the far left", "the {np} furthest to the left",
             "the {np} farthest left", "leftmost {np}"),
    "right": ("the rightmost {np}", "the {np} on the far right", "the {np} furthest to the right",
              "the {np} farthest right", "rightmost {np}"),
    "top": ("the topmost {np}", "the highest {np}", "the {np} at the top", "the uppermost {np}",
            "the {np} nearest the top"),
    "bottom": ("the bottommost {np}", "the lowest {np}", "the {np} at the bottom", "the bottom {np}",
               "the {np} nearest the bottom"),
    "center": ("the {np} in the middle", "the {np} in the center", "the {np} in the centre",
               "the most central {np}", "the {np} closest to the center"),
}
RELATION_WORDS: dict[str, tuple[str, ...]] = {
    "left_of": ("left of", "to the left of", "further left than"),
    "right_of": ("right of", "to the right of", "further right than"),
    "above": ("higher than", "higher up than", "further up than"),
    "below": ("lower than", "lower down than", "further down than"),
    "directly_left_of": ("directly left of", "directly to the left of", "just left of"),
    "directly_right_of": ("directly right of", "directly to the right of", "just right of"),
    "directly_above": ("directly above", "just above", "above"),
    "directly_below": ("directly below", "directly under", "just below", "below"),
    "nearest": ("nearest to", "closest to", "next to"),
    "farthest": ("farthest from", "furthest from", "most distant from", "furthest away from"),
}
RELATION_TEMPLATES: tuple[str, ...] = (
    "the {np} {rel} the {lm}", "the {np} that is {rel} the {lm}", "{np} {rel} the {lm}",
)
ORDINAL_WORDS: dict[int, tuple[str, ...]] = {2: ("second", "2nd"), 3: ("third", "3rd")}
AXIS_ORDINAL_TEMPLATES: tuple[str, ...] = (
    "the {ord} {np} from the {side}", "the {np} {ord} from the {side}", "{ord} {np} from the {side}",
    "counting from the {side}, the {ord} {np}",
)
SIZE_ORDINAL_WORDS: dict[str, tuple[str, ...]] = {"smallest": ("smallest",), "biggest": ("biggest", "largest")}
SIZE_ORDINAL_TEMPLATES: tuple[str, ...] = ("the {ord} {sup} {np}", "{ord} {sup} {np}")
COMPARE_WORDS: dict[str, tuple[str, ...]] = {
    "bigger": ("bigger", "larger"), "smaller": ("smaller",),
    "left": ("left",), "right": ("right",), "top": ("upper", "top"), "bottom": ("lower", "bottom"),
}
COMPARE_SIZE_TEMPLATES: tuple[str, ...] = (
    "the {cmp} of the two {nps}", "the {cmp} one of the two {nps}", "of the two {nps}, the {cmp} one",
    "the {cmp} {np}",
)
COMPARE_AXIS_TEMPLATES: dict[str, tuple[str, ...]] = {
    "left": ("the left one of the two {nps}", "of the two {nps}, the one on the left", "the left {np}",
             "the one of the two {nps} on the left"),
    "right": ("the right one of the two {nps}", "of the two {nps}, the one on the right", "the right {np}",
              "the one of the two {nps} on the right"),
    "top": ("the higher of the two {nps}", "the upper {np}", "the top one of the two {nps}",
            "of the two {nps}, the higher one"),
    "bottom": ("the lower of the two {nps}", "the lower {np}", "the bottom one of the two {nps}",
               "of the two {nps}, the lower one"),
}
# Several referents (ShapesRef-g): "both X", "all X", "the two leftmost X".
BOTH_TEMPLATES: tuple[str, ...] = ("both {nps}", "both of the {nps}", "both the {nps}", "the two {nps}")
ALL_TEMPLATES: tuple[str, ...] = ("all {nps}", "all the {nps}", "all of the {nps}", "every {np}")
EXTREMES_TEMPLATES: dict[str, tuple[str, ...]] = {
    "left": ("the two leftmost {nps}", "the two {nps} furthest to the left", "the two {nps} farthest left",
             "the first two {nps} from the left", "two leftmost {nps}"),
    "right": ("the two rightmost {nps}", "the two {nps} furthest to the right", "the two {nps} farthest right",
              "the first two {nps} from the right", "two rightmost {nps}"),
    "top": ("the two topmost {nps}", "the two highest {nps}", "the two uppermost {nps}",
            "the two {nps} nearest the top", "the first two {nps} from the top"),
    "bottom": ("the two bottommost {nps}", "the two lowest {nps}", "the two {nps} nearest the bottom",
               "the first two {nps} from the bottom"),
}

# Words that make an expression depend on absolute or directional location; none may appear in
# ShapesRef+ (distance relations "nearest to", "next to", "farthest from" are allowed, as "next
# to" is in RefCOCO+).
FORBIDDEN_LOCATION_WORDS: frozenset[str] = frozenset({
    "left", "right", "top", "bottom", "leftmost", "rightmost", "topmost", "bottommost", "uppermost",
    "lowermost", "middle", "center", "centre", "central", "above", "below", "under", "over",
    "beneath", "upper", "lower", "higher", "highest", "lowest", "up", "down", "corner", "side",
    "horizontal", "vertical", "directly",
})


T = TypeVar("T")


def _pick(rng: np.random.Generator, options: tuple[T, ...] | list[T]) -> T:
    return options[int(rng.integers(len(options)))]


def noun_phrase(f: Filter, rng: np.random.Generator, plural: bool = False) -> str:
    """Adjectives and noun for a filter, without a determiner ("small red circle")."""
    words = []
    if f.size is not None:
        words.append(_pick(rng, SIZE_WORDS[f.size]))
    if f.colour is not None:
        words.append(_pick(rng, COLOUR_WORDS[f.colour]))
    nouns = SHAPE_NOUNS[f.shape] if f.shape is not None else GENERIC_NOUNS
    words.append(_pick(rng, nouns)[1 if plural else 0])
    return " ".join(words)


def _attribute(f: Filter, rng: np.random.Generator) -> str:
    """Phrasings such as "the small red circle" or "the small circle that is red"."""
    templates = ["the {np}", "{np}"]
    if f.shape is not None and f.colour is not None:
        templates += ["the {rest} that is {colour}", "the {rest} in {colour}"]
        if f.size is None:
            templates.append("the {colour} coloured {rest}")
    template = _pick(rng, templates)
    if f.colour is not None and "{colour}" in template:
        rest = noun_phrase(Filter(f.shape, None, f.size), rng)
        return template.format(rest=rest, colour=_pick(rng, COLOUR_WORDS[f.colour]))
    return template.format(np=noun_phrase(f, rng))


def _extreme(form: Extreme, rng: np.random.Generator) -> str:
    return _pick(rng, EXTREME_TEMPLATES[form.direction]).format(np=noun_phrase(form.of, rng))


def _relate(form: Relate, rng: np.random.Generator) -> str:
    return _pick(rng, RELATION_TEMPLATES).format(
        np=noun_phrase(form.of, rng), rel=_pick(rng, RELATION_WORDS[form.relation]),
        lm=noun_phrase(form.landmark, rng))


def _ordinal(form: Ordinal, rng: np.random.Generator) -> str:
    ordinal = _pick(rng, ORDINAL_WORDS[form.index])
    if form.order in SIZE_ORDINAL_WORDS:
        return _pick(rng, SIZE_ORDINAL_TEMPLATES).format(
            ord=ordinal, sup=_pick(rng, SIZE_ORDINAL_WORDS[form.order]), np=noun_phrase(form.of, rng))
    return _pick(rng, AXIS_ORDINAL_TEMPLATES).format(ord=ordinal, np=noun_phrase(form.of, rng), side=form.order)


def _compare(form: Compare, rng: np.random.Generator) -> str:
    if form.direction in SIZE_COMPARISONS:
        template = _pick(rng, COMPARE_SIZE_TEMPLATES)
    else:
        template = _pick(rng, COMPARE_AXIS_TEMPLATES[form.direction])
    return template.format(cmp=_pick(rng, COMPARE_WORDS[form.direction]), np=noun_phrase(form.of, rng),
                           nps=noun_phrase(form.of, rng, plural=True))


def _plural(templates: tuple[str, ...], of: Filter, rng: np.random.Generator) -> str:
    return _pick(rng, templates).format(np=noun_phrase(of, rng), nps=noun_phrase(of, rng, plural=True))


def realise(form: Form, rng: np.random.Generator) -> str:
    """One English phrasing of ``form`` (the raw sentence, lower case, maybe a command)."""
    if isinstance(form, Filter):
        body = _attribute(form, rng)
    elif isinstance(form, Extreme):
        body = _extreme(form, rng)
    elif isinstance(form, Relate):
        body = _relate(form, rng)
    elif isinstance(form, Ordinal):
        body = _ordinal(form, rng)
    elif isinstance(form, Compare):
        body = _compare(form, rng)
    elif isinstance(form, Both):
        body = _plural(BOTH_TEMPLATES, form.of, rng)
    elif isinstance(form, All):
        body = _plural(ALL_TEMPLATES, form.of, rng)
    elif isinstance(form, Extremes):
        body = _plural(EXTREMES_TEMPLATES[form.direction], form.of, rng)
    else:
        raise ValueError(f"not a logical form: {form!r}")
    if body.startswith("the ") and rng.random() < PREFIX_PROBABILITY:
        body = f"{_pick(rng, PREFIXES)} {body}"
    return body


def location_words(tokens: list[str]) -> list[str]:
    """Forbidden location words in ``tokens`` (empty for a valid ShapesRef+ expression)."""
    return [t for t in tokens if t in FORBIDDEN_LOCATION_WORDS]
