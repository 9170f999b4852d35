"""GRES metrics (engine/gres.py) on hand-computed cases: gIoU, cIoU, N-acc, T-acc, their breakdowns, the
"always empty" and "all objects" references, and bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from step_ris.data.dataset import ReferDataset
from step_ris.data.shapesref import generate_shapesref
from step_ris.engine.gres import (
    REFERENCES,
    TARGET_COUNT_KEYS,
    GresMeter,
    GresReferences,
    gres_record,
    reference_masks,
    target_count_key,
)
from step_ris.text import Vocabulary

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def _mask(*cells: tuple[int, int]) -> np.ndarray:
    m = np.zeros((4, 4), dtype=bool)
    for r, c in cells:
        m[r, c] = True
    return m


EMPTY = _mask()
# (pred, target, family, target_count): the five expressions worked out in the docstring of test_hand_case
CASES = [
    (_mask((0, 1), (0, 2), (1, 1), (1, 2)), _mask((0, 0), (0, 1), (1, 0), (1, 1)), "attribute", 1),  # I 2, U 6
    (EMPTY, _mask((2, 2), (2, 3), (3, 2), (3, 3)), "location", 1),  # a target missed: I 0, U 4
    (EMPTY, EMPTY, "attribute", 0),  # nothing meant, nothing predicted: counts 1, I 0, U 0
    (_mask((3, 0), (3, 1), (3, 2)), EMPTY, "location", 0),  # nothing meant, 3 pixels predicted: 0, U 3
    (_mask((0, 0), (0, 1), (0, 2), (3, 0), (3, 1), (3, 2)),  # two objects, found exactly: I 6, U 6
     _mask((0, 0), (0, 1), (0, 2), (3, 0), (3, 1), (3, 2)), "both", 2),
]


def _meter(cases=CASES) -> GresMeter:  # noqa: ANN001
    meter = GresMeter()
    for pred, target, family, count in cases:
        meter.update(pred, target, family, count)
    return meter


def _close(got: dict, want: dict) -> None:
    for key, value in want.items():
        if value is None:
            assert got[key] is None, (key, got)
        else:
            assert got[key] == pytest.approx(value), (key, got)


def test_hand_case() -> None:
    """gIoU = (1/3 + 0 + 1 + 0 + 1) / 5 = 7/15; cIoU = (2 + 0 + 0 + 0 + 6) / (6 + 4 + 0 + 3 + 6) = 8/19;
    N-acc = 1/2 (of the two no-target expressions, one predicted empty); T-acc = 2/3 (one of the three
    target expressions predicted empty)."""
    result = _meter().result()
    _close(result, {"gIoU": 7 / 15, "cIoU": 8 / 19, "N-acc": 1 / 2, "T-acc": 2 / 3, "n": 5, "n_no_target": 2,
                    "n_target": 3})
    fam = result["by_family"]
    assert list(fam) == ["attribute", "both", "location"]
    _close(fam["attribute"], {"gIoU": (1 / 3 + 1) / 2, "cIoU": 2 / 6, "N-acc": 1.0, "T-acc": 1.0, "n": 2})
    _close(fam["location"], {"gIoU": 0.0, "cIoU": 0.0, "N-acc": 0.0, "T-acc": 0.0, "n": 2})
    _close(fam["both"], {"gIoU": 1.0, "cIoU": 1.0, "N-acc": None, "T-acc": 1.0, "n": 1})
    tc = result["by_target_count"]
    assert list(tc) == list(TARGET_COUNT_KEYS) == ["0", "1", "2+"]
    _close(tc["0"], {"gIoU": 0.5, "cIoU": 0.0, "N-acc": 0.5, "T-acc": None, "n": 2, "n_no_target": 2})
    _close(tc["1"], {"gIoU": 1 / 6, "cIoU": 2 / 10, "N-acc": None, "T-acc": 0.5, "n": 2})
    _close(tc["2+"], {"gIoU": 1.0, "cIoU": 1.0, "N-acc": None, "T-acc": 1.0, "n": 1})


def test_update_returns_the_gIoU_term_and_add_matches_update() -> None:
    meter, by_counts = GresMeter(), GresMeter()
    terms = [meter.update(p, t, f, c) for p, t, f, c in CASES]
    assert terms == pytest.approx([1 / 3, 0.0, 1.0, 0.0, 1.0])
    for pred, target, family, count in CASES:
        i, u, area = int((pred & target).sum()), int((pred | target).sum()), int(pred.sum())
        by_counts.add(i, u, area, count, family)
    assert by_counts.result() == meter.result()


def test_torch_and_integer_masks() -> None:
    meter = GresMeter()
    for pred, target, family, count in CASES:
        meter.update(torch.from_numpy(pred), torch.from_numpy(target.astype(np.uint8)), family, count)
    assert meter.result() == _meter().result()


def test_target_count_inferred_from_the_mask() -> None:
    record = gres_record(EMPTY, EMPTY)
    assert record.target_count == 0 and record.no_target and record.giou == 1.0
    assert gres_record(CASES[0][0], CASES[0][1]).target_count == 1
    with_counts = GresMeter()
    for pred, target, family, _count in CASES[:4]:
        with_counts.update(pred, target, family)  # counts 1, 1, 0, 0: the masks say it
    assert with_counts.result() == _meter(CASES[:4]).result()


def test_empty_meter_and_all_empty_unions() -> None:
    result = GresMeter().result()
    assert result["n"] == 0 and result["gIoU"] is None and result["cIoU"] is None and result["by_family"] == {}
    assert all(result["by_target_count"][k]["n"] == 0 for k in TARGET_COUNT_KEYS)
    only_nothing = _meter([(EMPTY, EMPTY, "", 0)] * 3).result()
    _close(only_nothing, {"gIoU": 1.0, "cIoU": 1.0, "N-acc": 1.0, "T-acc": None})  # no union at all: cIoU 1
    assert list(only_nothing["by_family"]) == [""]


def test_merge_and_reset() -> None:
    a, b = _meter(CASES[:2]), _meter(CASES[2:])
    assert a.merge(b).result() == _meter().result() and len(a) == 5
    a.reset()
    assert len(a) == 0 and a.summary()["n"] == 0


@pytest.mark.parametrize("call, message", [
    (lambda m: m.update(EMPTY, CASES[0][1], "", 0), "target_count is 0"),
    (lambda m: m.update(EMPTY, EMPTY, "", -1), "target_count must be an integer >= 0"),
    (lambda m: m.update(EMPTY, EMPTY, "", True), "target_count must be an integer"),
    (lambda m: m.update(EMPTY.astype(np.float32), EMPTY), "threshold"),
    (lambda m: m.update(EMPTY, np.zeros((3, 4), bool)), "differs from target shape"),
    (lambda m: m.add(3, 2, 2, 1), "invalid counts"),
    (lambda m: m.add(1, 4, 5, 1), "pred_area=5"),
    (lambda m: m.add(0, 4, 1, 0), "the target is not empty"),
])
def test_bad_input(call, message: str) -> None:  # noqa: ANN001
    meter = GresMeter()
    with pytest.raises(ValueError, match=message):
        call(meter)
    assert len(meter) == 0


def test_target_count_key() -> None:
    assert [target_count_key(n) for n in (0, 1, 2, 3, 17)] == ["0", "1", "2+", "2+", "2+"]


# --- the non-learned references ---------------------------------------------------------------------
OBJ_A = _mask((0, 0), (0, 1))
OBJ_B = _mask((3, 0), (3, 1), (3, 2), (3, 3))


def test_reference_masks() -> None:
    refs = reference_masks([OBJ_A, OBJ_B.astype(np.uint8)], 4, 4)
    assert set(refs) == set(REFERENCES) == {"always empty", "all objects"}
    assert not refs["always empty"].any() and refs["always empty"].shape == (4, 4)
    np.testing.assert_array_equal(refs["all objects"], OBJ_A | OBJ_B)
    assert not reference_masks([], 2, 3)["all objects"].any()
    with pytest.raises(ValueError, match="object mask 0 has shape"):
        reference_masks([np.zeros((2, 2), bool)], 4, 4)


def test_references_hand_case() -> None:
    """One image, objects A (2 px) and B (4 px); expressions "A" (1 target), "both" (A and B), "nothing".
    always empty: gIoU (0 + 0 + 1) / 3, cIoU 0 / 8, N-acc 1, T-acc 0. all objects (6 px): IoUs 2/6, 6/6,
    0 (the no-target one is not empty): gIoU 4/9, cIoU (2 + 6 + 0) / (6 + 6 + 6) = 4/9, N-acc 0, T-acc 1."""
    refs = GresReferences()
    for target, family, count in ((OBJ_A, "attribute", 1), (OBJ_A | OBJ_B, "both", 2), (EMPTY, "attribute", 0)):
        refs.update(target, [OBJ_A, OBJ_B], family, count)
    result = refs.result()
    _close(result["always empty"], {"gIoU": 1 / 3, "cIoU": 0.0, "N-acc": 1.0, "T-acc": 0.0})
    _close(result["all objects"], {"gIoU": 4 / 9, "cIoU": 4 / 9, "N-acc": 0.0, "T-acc": 1.0})
    _close(result["all objects"]["by_target_count"]["2+"], {"gIoU": 1.0})


def test_references_on_shapesref_g(tmp_path: Path) -> None:
    """From the annotations of a generated ShapesRef-g split: "always empty" scores gIoU = the share of
    no-target expressions and N-acc 1; "all objects" (every image has objects) N-acc 0 and T-acc 1."""
    root = tmp_path / "data"
    generate_shapesref(root, 30, 0, 64, progress=False, generalized=True)
    ds = ReferDataset(root, "shapesref-g", "train", Vocabulary.from_sentences(["x"]), 64)
    refs = GresReferences()
    for i in range(len(ds)):
        meta = ds.meta(i)
        objects = [ds.data.mask(a) for a, ann in ds.data.anns.items() if ann["image_id"] == meta["image_id"]]
        refs.update(ds.original_mask(i), objects, meta["family"], meta["target_count"])
    empty, every = refs.result()["always empty"], refs.result()["all objects"]
    assert empty["n_no_target"] > 0 and empty["n_target"] > 0
    _close(empty, {"gIoU": empty["n_no_target"] / empty["n"], "cIoU": 0.0, "N-acc": 1.0, "T-acc": 0.0})
    _close(every, {"N-acc": 0.0, "T-acc": 1.0})
    assert 0.0 < every["by_target_count"]["1"]["gIoU"] < every["by_target_count"]["2+"]["gIoU"] < 1.0
