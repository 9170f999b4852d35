"""ShapesRef-g planning: no-target near misses and multi-target expressions (gRefCOCO-style).

Builds on the single-target planner (``plan.py``): a near miss names a head that exists in the
scene and rules every candidate out; "both / all / the two leftmost X" refer to several objects.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .logic import (
    AXIS_DIRECTIONS,
    COMPARISONS,
    CONE_RELATIONS,
    DIRECTIONS,
    HALF_PLANE_RELATIONS,
    ORDERS,
    ORDINAL_INDICES,
    RELATIONS,
    SIZE_ORDERS,
    All,
    Both,
    Compare,
    Extreme,
    Extremes,
    Filter,
    Form,
    Ordinal,
    Relate,
    evaluate,
    head,
    rules_out_all,
)
from .plan import (  # noqa: F401
    FAMILIES,
    TEST_A_FAMILIES,
    TEST_B_FAMILIES,
    FamilyBalancer,
    PlannedSentence,
    SceneIndex,
    _candidates,
    _heads,
    _phrase,
    _shuffled,
)
from .scene import COLOURS, SHAPES, SIZES

# --- ShapesRef-g: no referent, several referents --------------------------------------------------------
G_DATASET = "shapesref-g"
NO_TARGET_SHARE = 0.15  # of the sentences of each split (testB: as its families allow)
MULTI_TARGET_SHARE = 0.15
MULTI_FAMILIES: tuple[str, ...] = ("both", "all", "two-extreme")
G_FAMILIES: tuple[str, ...] = (*FAMILIES, *MULTI_FAMILIES)
NO_TARGET_FAMILIES: tuple[str, ...] = G_FAMILIES  # a near miss can take the form of any family
G_REFS_PER_IMAGE = 3  # at most, per kind (no target / several targets)
G_SENTENCES_PER_REF = (1, 2)  # inclusive range
NO_TARGET, MULTI_TARGET, TARGET = "no-target", "multi-target", "target"
MULTI_OPS: dict[str, type] = {"both": Both, "all": All}
_CLEAR_RELATIONS: tuple[str, ...] = (*HALF_PLANE_RELATIONS, *CONE_RELATIONS)


def g_split_families(kind: str, split: str) -> tuple[str, ...]:
    """Families of the generalized expressions of a split: testA keeps what things look like / where they
    are (attribute, location, both, all, two-extreme), testB how they relate (relational, ordinal,
    comparative; so no several-referent family there), train/val all."""
    families = NO_TARGET_FAMILIES if kind == NO_TARGET else MULTI_FAMILIES
    if split == "testA":
        return tuple(f for f in families if f in (*TEST_A_FAMILIES, *MULTI_FAMILIES))
    if split == "testB":
        return tuple(f for f in families if f in TEST_B_FAMILIES)
    return families


@dataclass(frozen=True)
class PlannedGRef:
    object_indices: tuple[int, ...]  # the referents (ascending); empty: no target
    sentences: tuple[PlannedSentence, ...]


def form_signature(form: Form) -> tuple:
    """What the words of a form give away beyond its family: how many attributes its head names, whether
    it names a shape, and its relation, ordinal or direction. No-target forms are drawn so that, per family
    and split, their signatures follow those of the expressions that do mean something."""
    h = head(form)
    base = (h.n_attributes(), h.shape is not None)
    if isinstance(form, Relate):
        return (*base, form.relation)
    if isinstance(form, Ordinal):
        return (*base, form.order, form.index)
    if isinstance(form, (Extreme, Compare, Extremes)):
        return (*base, form.direction)
    return base


@dataclass
class GeneralizedQuota:
    """Running counts per split of the sentences by kind ("single", no-target, multi-target), and of
    their families and form signatures (target = single or multi-target, against no-target).

    ``due``: how many no-target / multi-target sentences are missing for them to make up their share of
    all sentences (the single-target ones are ShapesRef's). ``family_deficit`` / ``deficit``: how much
    rarer a family / a signature within its family is among the no-target sentences than among the
    target ones (positive: draw it), so that the words alone say little about whether anything is meant.
    """

    counts: dict[str, Counter] = field(default_factory=dict)
    families: dict[tuple[str, str], Counter] = field(default_factory=dict)
    signatures: dict[tuple[str, str, str], Counter] = field(default_factory=dict)

    def add(self, split: str, kind: str, family: str, form: Form) -> None:
        self.counts.setdefault(split, Counter())[kind] += 1
        side = NO_TARGET if kind == NO_TARGET else TARGET
        self.families.setdefault((split, side), Counter())[family] += 1
        self.signatures.setdefault((split, family, side), Counter())[form_signature(form)] += 1

    def due(self, split: str, kind: str) -> int:
        c = self.counts.setdefault(split, Counter())
        share = NO_TARGET_SHARE if kind == NO_TARGET else MULTI_TARGET_SHARE
        wanted = share / (1.0 - NO_TARGET_SHARE - MULTI_TARGET_SHARE) * c["single"]
        return int(round(wanted)) - c[kind]

    def family_deficit(self, split: str, family: str) -> float:
        return _share(self.families.get((split, TARGET)), family) - _share(self.families.get((split, NO_TARGET)),
                                                                            family)

    def deficit(self, split: str, family: str, form: Form) -> float:
        sig = form_signature(form)
        return (_share(self.signatures.get((split, family, TARGET)), sig)
                - _share(self.signatures.get((split, family, NO_TARGET)), sig))


def _share(counts: Counter | None, key: Any) -> float:
    return counts[key] / max(sum(counts.values()), 1) if counts else 0.0


def _filter_key(f: Filter) -> tuple[str, str, str]:
    return (f.shape or "", f.colour or "", f.size or "")


def absent_heads(idx: SceneIndex) -> list[Filter]:
    """Filters of two or three attribute values, each present in the scene, that no object has together."""
    objs = idx.objects
    present = [[None, *(v for v in values if any(o[key] == v for o in objs))]
               for key, values in (("shape", SHAPES), ("colour", tuple(COLOURS)), ("size", SIZES))]
    return [f for f in (Filter(*values) for values in itertools.product(*present))
            if f.n_attributes() >= 2 and not idx.matches(f)]


def no_target_forms(family: str, idx: SceneIndex, rng: np.random.Generator) -> list[Form]:
    """Near-miss forms of ``family`` with no referent in the scene (each passes
    :func:`~.logic.rules_out_all`), unshuffled.

    Every family: its form over a head of two or three present attribute values that no object has
    together ("the red circle", "the leftmost small red object", "both red circles"). Also, relational:
    a head fitting at least one object besides a uniquely described landmark (a random one of its
    descriptions), every one clearly outside a half-plane or cone relation to it; ordinal: "the second /
    third X" with fewer X than that (at least one).
    """
    objs = idx.objects
    absent = absent_heads(idx)
    landmarks = {}
    for j in range(len(objs)):
        descriptions = idx.unique_descriptions(j)
        if descriptions:
            landmarks[j] = descriptions[int(rng.integers(len(descriptions)))]
    forms: list[Form] = []
    if family == "attribute":
        forms = list(absent)
    elif family == "location":
        forms = [Extreme(h, d) for h in absent for d in DIRECTIONS]
    elif family == "comparative":
        forms = [Compare(h, d) for h in absent for d in COMPARISONS]
    elif family in MULTI_OPS:
        forms = [MULTI_OPS[family](h) for h in absent]
    elif family == "two-extreme":
        forms = [Extremes(h, d) for h in absent for d in AXIS_DIRECTIONS]
    elif family == "ordinal":
        forms = [Ordinal(h, o, k) for h in absent for o in ORDERS for k in ORDINAL_INDICES
                 if k == 2 or o not in SIZE_ORDERS]
        heads = sorted({h for i in range(len(objs)) for h in idx.filters_of(i)}, key=_filter_key)
        forms += [Ordinal(h, o, k) for h in heads for o in ORDERS for k in ORDINAL_INDICES
                  if (k == 2 or o not in SIZE_ORDERS) and len(idx.matches(h)) < k]
    elif family == "relational" and landmarks:
        keys = sorted(landmarks)
        for h in absent:  # one random landmark per head: every relation is ruled out by the head already
            forms += [Relate(h, r, landmarks[keys[int(rng.integers(len(keys)))]]) for r in RELATIONS]
        heads = sorted({h for i in range(len(objs)) for h in idx.filters_of(i)}, key=_filter_key)
        for j, landmark in landmarks.items():
            for h in heads:
                cands = [i for i in idx.matches(h) if i != j]
                if not cands:
                    continue
                for r in _CLEAR_RELATIONS:
                    if all(idx.verdict(r, i, j) is False for i in cands):
                        forms.append(Relate(h, r, landmark))
    return forms


def multi_target_forms(family: str, idx: SceneIndex) -> list[Form]:
    """Every form of ``family`` that denotes two or more objects (unshuffled): "both X" (exactly two X),
    "all X" (two or more; X names at least one attribute), "the two leftmost / rightmost / highest /
    lowest X" (of at least three X, with a clear gap to the third)."""
    objs = idx.objects
    heads = sorted({h for i in range(len(objs)) for h in idx.filters_of(i)}, key=_filter_key)
    if family == "both":
        return [Both(h) for h in heads if h.n_attributes() > 0 and len(idx.matches(h)) == 2]
    if family == "all":
        return [All(h) for h in heads if h.n_attributes() > 0 and len(idx.matches(h)) >= 2]
    if family == "two-extreme":
        return [Extremes(h, d) for h in heads if len(idx.matches(h)) >= 3 for d in AXIS_DIRECTIONS
                if len(evaluate(Extremes(h, d), objs)) == 2]
    return []


def plan_generalized(objects: list[dict], split: str, single: Iterable[PlannedSentence], rng: np.random.Generator,
                     balancer: FamilyBalancer, quota: GeneralizedQuota) -> list[PlannedGRef]:
    """The no-target and multi-target refs of one image, after its ``single`` (ShapesRef) sentences.

    Adds refs while the split's quota has sentences due and the scene has forms left: each ref takes
    1-2 sentences from distinct families first, then another form or phrasing. Multi-target: the least
    used family of the split first (:class:`FamilyBalancer`); a ref's sentences all denote one referent
    set, and no set is used twice. No-target: the family and then the form signature that are most
    under-drawn against the target expressions (:class:`GeneralizedQuota`), ties in random order; every
    chosen form is checked with :func:`~.logic.rules_out_all`.
    """
    idx = SceneIndex(objects)
    for sentence in single:
        quota.add(split, "single", sentence.family, sentence.form)
    taken: set[str] = set()
    refs: list[PlannedGRef] = []
    for kind in (MULTI_TARGET, NO_TARGET):
        families = g_split_families(kind, split)
        if not families or quota.due(split, kind) <= 0:
            continue  # nothing due: the scene's forms are not even enumerated
        if kind == NO_TARGET:
            pool = _Pool(lambda f: no_target_forms(f, idx, rng), lambda form: (), rng)
        else:
            pool = _Pool(lambda f: multi_target_forms(f, idx), lambda form: tuple(evaluate(form, objects)), rng)
        used_sets: set[tuple[int, ...]] = set()
        key = (f"{G_DATASET}:{kind}", split)
        for _ in range(G_REFS_PER_IMAGE):
            due = quota.due(split, kind)
            if due <= 0:
                break
            n = min(due, int(rng.integers(G_SENTENCES_PER_REF[0], G_SENTENCES_PER_REF[1] + 1)))
            if kind == NO_TARGET:
                ties = rng.random(len(families))
                order = [f for _, _, f in sorted(zip([-quota.family_deficit(split, f) for f in families], ties,
                                                     families, strict=True))]
                chosen = _choose_forms(pool, order, n, used_sets,
                                       lambda family, form: quota.deficit(split, family, form))
            else:
                chosen = _choose_forms(pool, balancer.order(key, families, rng), n, used_sets,
                                       lambda family, form: 0.0)
            if not chosen:
                break
            target = pool.denote(chosen[0][1])
            sentences = []
            for family, form in chosen:
                proven = rules_out_all(form, objects) if kind == NO_TARGET else evaluate(form, objects) == list(target)
                if not proven:
                    raise RuntimeError(f"generator bug: generalized form {form} does not denote {target} in its scene")
                sentence = _phrase(form, family, rng, False, taken)
                if sentence is not None:
                    sentences.append(sentence)
                    taken.add(sentence.raw)
                    balancer.add(key, family)
                    quota.add(split, kind, family, form)
            if not sentences:
                break
            if kind == MULTI_TARGET:  # one ref per referent set; no-target refs all share the empty set
                used_sets.add(target)
            refs.append(PlannedGRef(target, tuple(sentences)))
    return refs


def _best(family: str, forms: Iterable[Form], rank: Callable[[str, Form], float]) -> Form | None:
    """The highest-ranked form (the first of equals, in the pool's shuffled order), or None."""
    best, best_rank = None, -math.inf
    for form in forms:
        r = rank(family, form)
        if r > best_rank:
            best, best_rank = form, r
    return best


class _Pool:
    """The forms of each family of one scene, enumerated (and shuffled) only when first asked for, with
    what each denotes; chosen forms are removed."""

    def __init__(self, make: Callable[[str], list[Form]], denote: Callable[[Form], tuple[int, ...]],
                 rng: np.random.Generator):
        self._make, self._denote, self._rng = make, denote, rng
        self._forms: dict[str, list[Form]] = {}
        self._denoted: dict[Form, tuple[int, ...]] = {}

    def forms(self, family: str) -> list[Form]:
        if family not in self._forms:
            self._forms[family] = _shuffled(self._make(family), self._rng)
        return self._forms[family]

    def denote(self, form: Form) -> tuple[int, ...]:
        if form not in self._denoted:
            self._denoted[form] = self._denote(form)
        return self._denoted[form]


def _choose_forms(pool: _Pool, order: list[str], n: int, used_sets: set[tuple[int, ...]],
                  rank: Callable[[str, Form], float]) -> list[tuple[str, Form]]:
    """Up to ``n`` (family, form) pairs denoting one referent set not in ``used_sets``: the first family of
    ``order`` with a form left fixes the set (its best-ranked form); then forms of that set from the other
    families, then from the same family; then the first form again (another phrasing). Chosen forms
    leave the pool."""
    first = None
    for f in order:
        form = _best(f, (x for x in pool.forms(f) if pool.denote(x) not in used_sets), rank)
        if form is not None:
            first = (f, form)
            break
    if first is None:
        return []
    target = pool.denote(first[1])
    chosen = [first]
    pool.forms(first[0]).remove(first[1])
    for same_family in (False, True):
        for f in order:
            if len(chosen) == n:
                break
            if (f == first[0]) != same_family:
                continue
            form = _best(f, (x for x in pool.forms(f) if pool.denote(x) == target), rank)
            if form is not None:
                chosen.append((f, form))
                pool.forms(f).remove(form)
    while len(chosen) < n:
        chosen.append(first)  # the same form again: _phrase words it differently
    return chosen
