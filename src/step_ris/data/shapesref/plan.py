"""Choosing referents and the logical forms that describe them (ShapesRef).

For a referent and a family, every candidate form is enumerated, shuffled, and the first one
the evaluator grounds to exactly the referent (and that passes the no-shortcut rule) is kept.
Families are chosen per referent so that, within each split, they stay roughly balanced.

ShapesRef-g (``generalized=True``) adds, from a separate random stream, expressions with no referent
(near misses proven by :func:`~.logic.rules_out_all`) and with several referents ("both X", "all X",
"the two leftmost X"); a running quota per split keeps their shares of the sentences at
:data:`NO_TARGET_SHARE` and :data:`MULTI_TARGET_SHARE`.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from ...text import MAX_WORDS, tokenize
from .language import location_words, realise
from .logic import (
    COMPARISONS,
    DIRECTIONS,
    DISTANCE_RELATIONS,
    ORDERS,
    ORDINAL_INDICES,
    RELATIONS,
    SIZE_COMPARISONS,
    SIZE_ORDERS,
    Compare,
    Extreme,
    Filter,
    Form,
    Ordinal,
    Relate,
    evaluate,
    relation_verdict,
    uses_location,
)

FAMILIES: tuple[str, ...] = ("attribute", "location", "relational", "ordinal", "comparative")
PLUS_FAMILIES: tuple[str, ...] = ("attribute", "relational", "ordinal", "comparative")
SPLITS: tuple[str, ...] = ("train", "val", "testA", "testB")
TEST_A_FAMILIES: tuple[str, ...] = ("attribute", "location")
TEST_B_FAMILIES: tuple[str, ...] = ("relational", "ordinal", "comparative")
DATASETS: tuple[str, ...] = ("shapesref", "shapesref+")
REFS_PER_IMAGE = (2, 4)  # inclusive range, capped by the number of describable objects
SENTENCES_PER_REF = (1, 3)  # inclusive range, per dataset
MAX_TOKENS = MAX_WORDS  # 20, the paper's limit
REALISE_TRIES = 8
MIN_HEAD_MATCHES = 2  # no shortcut: the head phrase alone must fit at least two objects


def split_families(dataset: str, split: str) -> tuple[str, ...]:
    """Families allowed in a split: testA attribute + location, testB the rest, train/val all."""
    families = PLUS_FAMILIES if dataset == "shapesref+" else FAMILIES
    if split == "testA":
        return tuple(f for f in families if f in TEST_A_FAMILIES)
    if split == "testB":
        return tuple(f for f in families if f in TEST_B_FAMILIES)
    return families


@dataclass(frozen=True)
class PlannedSentence:
    family: str
    form: Form
    raw: str
    tokens: tuple[str, ...]


@dataclass(frozen=True)
class PlannedRef:
    object_index: int
    sentences: dict[str, tuple[PlannedSentence, ...]]  # dataset -> sentences (may be empty)


@dataclass
class FamilyBalancer:
    """Running family counts per (dataset, split); the least used family is tried first."""

    counts: dict[tuple[str, str], Counter] = field(default_factory=dict)

    def order(self, key: tuple[str, str], families: Iterable[str], rng: np.random.Generator) -> list[str]:
        counts = self.counts.setdefault(key, Counter())
        fams = list(families)
        ties = rng.random(len(fams))
        return [f for _, _, f in sorted(zip([counts[f] for f in fams], ties, fams, strict=True))]

    def add(self, key: tuple[str, str], family: str) -> None:
        self.counts.setdefault(key, Counter())[family] += 1


class SceneIndex:
    """The objects of one scene with cached filter matches and unique descriptions."""

    def __init__(self, objects: list[dict]):
        self.objects = objects
        self._matches: dict[Filter, list[int]] = {}
        self._verdicts: dict[tuple[str, int, int], bool | None] = {}

    def matches(self, f: Filter) -> list[int]:
        if f not in self._matches:
            self._matches[f] = evaluate(f, self.objects)
        return self._matches[f]

    def filters_of(self, i: int) -> list[Filter]:
        """The 8 filters (including the empty one) that object ``i`` satisfies."""
        o = self.objects[i]
        return [
            Filter(shape if s else None, colour if c else None, size if z else None)
            for s, c, z in itertools.product((True, False), repeat=3)
            for shape, colour, size in [(o["shape"], o["colour"], o["size"])]
        ]

    def unique_descriptions(self, i: int) -> list[Filter]:
        return [f for f in self.filters_of(i) if f.n_attributes() > 0 and self.matches(f) == [i]]

    def verdict(self, relation: str, i: int, landmark: int) -> bool | None:
        """Whether object ``i`` is in a half-plane or cone ``relation`` to object ``landmark`` (None:
        too close to call); cached."""
        key = (relation, i, landmark)
        if key not in self._verdicts:
            self._verdicts[key] = relation_verdict(relation, self.objects[i], self.objects[landmark])
        return self._verdicts[key]


def _shuffled(items: list, rng: np.random.Generator) -> list:
    return [items[k] for k in rng.permutation(len(items))] if items else []


def _heads(idx: SceneIndex, ref: int, exclude: int | None = None) -> list[Filter]:
    """Head filters fitting the referent and at least MIN_HEAD_MATCHES objects (``exclude`` aside)."""
    return [f for f in idx.filters_of(ref)
            if sum(1 for j in idx.matches(f) if j != exclude) >= MIN_HEAD_MATCHES]


def _candidates(family: str, idx: SceneIndex, ref: int, rng: np.random.Generator,
                location_free: bool, counting_ordinals: bool = False) -> list[Form]:
    """All forms of ``family`` worth trying for ``ref`` (not yet checked), in random order.

    ``counting_ordinals`` moves the ordinals whose head fits more objects than the index ("the
    second of three circles") before those where the index-th is also the last one counted ("the
    second of two circles" is the other extreme), keeping the random order within each group."""
    forms: list[Form] = []
    if family == "attribute":
        forms = [f for f in idx.filters_of(ref) if f.n_attributes() > 0]
    elif family == "location" and not location_free:
        forms = [Extreme(h, d) for h in _heads(idx, ref) for d in DIRECTIONS]
    elif family == "relational":
        relations = DISTANCE_RELATIONS if location_free else RELATIONS
        for j in range(len(idx.objects)):
            descriptions = idx.unique_descriptions(j) if j != ref else []
            if not descriptions:
                continue
            landmark = descriptions[int(rng.integers(len(descriptions)))]
            forms += [Relate(h, r, landmark) for h in _heads(idx, ref, exclude=j) for r in relations]
    elif family == "ordinal":
        orders = SIZE_ORDERS if location_free else ORDERS
        forms = [Ordinal(h, o, k) for h in _heads(idx, ref) for o in orders for k in ORDINAL_INDICES
                 if k == 2 or o not in SIZE_ORDERS]  # "third smallest" of three is just "biggest"
        if counting_ordinals:
            shuffled = _shuffled(forms, rng)
            return sorted(shuffled, key=lambda f: len(idx.matches(f.of)) <= f.index)  # stable
    elif family == "comparative":
        directions = SIZE_COMPARISONS if location_free else COMPARISONS
        forms = [Compare(h, d) for h in idx.filters_of(ref) if len(idx.matches(h)) == 2 for d in directions]
    return _shuffled(forms, rng)


def find_form(family: str, idx: SceneIndex, ref: int, rng: np.random.Generator, *,
              location_free: bool, exclude: frozenset[Form] = frozenset(),
              counting_ordinals: bool = False) -> Form | None:
    """A random form of ``family`` that denotes exactly ``ref``, or None."""
    for form in _candidates(family, idx, ref, rng, location_free, counting_ordinals):
        if form in exclude or (location_free and uses_location(form)):
            continue
        if evaluate(form, idx.objects) == [ref]:
            return form
    return None


def _phrase(form: Form, family: str, rng: np.random.Generator, location_free: bool,
            taken: set[str]) -> PlannedSentence | None:
    for _ in range(REALISE_TRIES):
        raw = realise(form, rng)
        tokens = tokenize(raw)
        if len(tokens) > MAX_TOKENS or raw in taken or (location_free and location_words(tokens)):
            continue
        return PlannedSentence(family, form, raw, tuple(tokens))
    return None


def plan_sentences(idx: SceneIndex, ref: int, families: tuple[str, ...], n_sentences: int,
                   rng: np.random.Generator, balancer: FamilyBalancer, key: tuple[str, str],
                   location_free: bool, counting_ordinals: bool = False) -> tuple[PlannedSentence, ...]:
    """Up to ``n_sentences`` expressions for ``ref``: distinct families first, then rephrasings."""
    order = balancer.order(key, families, rng)
    found: list[tuple[str, Form]] = []
    for family in order:
        form = find_form(family, idx, ref, rng, location_free=location_free, counting_ordinals=counting_ordinals)
        if form is not None:
            found.append((family, form))
            if len(found) == n_sentences:
                break
    out: list[PlannedSentence] = []
    taken: set[str] = set()
    for k in range(n_sentences if found else 0):
        family, form = found[k % len(found)]
        if k >= len(found):  # second expression in the same family: another form if there is one
            used = frozenset(s.form for s in out)
            form = find_form(family, idx, ref, rng, location_free=location_free, exclude=used,
                             counting_ordinals=counting_ordinals) or form
        sentence = _phrase(form, family, rng, location_free, taken)
        if sentence is not None:
            out.append(sentence)
            taken.add(sentence.raw)
            balancer.add(key, family)
    return tuple(out)


def plan_refs(objects: list[dict], split: str, rng: np.random.Generator,
              balancer: FamilyBalancer, counting_ordinals: bool = False) -> list[PlannedRef]:
    """Referents (in random order, so no object type is favoured) and their expressions.

    ``counting_ordinals`` applies to the train split only (see :func:`_candidates`), so val and
    test keep the benchmark's own mix."""
    counting_ordinals = counting_ordinals and split == "train"
    idx = SceneIndex(objects)
    n_refs = int(rng.integers(REFS_PER_IMAGE[0], REFS_PER_IMAGE[1] + 1))
    refs: list[PlannedRef] = []
    for ref in (int(i) for i in rng.permutation(len(objects))):
        sentences: dict[str, tuple[PlannedSentence, ...]] = {}
        for dataset in DATASETS:
            n = int(rng.integers(SENTENCES_PER_REF[0], SENTENCES_PER_REF[1] + 1))
            sentences[dataset] = plan_sentences(
                idx, ref, split_families(dataset, split), n, rng, balancer, (dataset, split),
                location_free=dataset == "shapesref+", counting_ordinals=counting_ordinals)
            if not sentences["shapesref"]:
                break
        if sentences["shapesref"]:
            refs.append(PlannedRef(ref, sentences))
            if len(refs) == n_refs:
                break
    return refs
