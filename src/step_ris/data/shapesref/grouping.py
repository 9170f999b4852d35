"""What a grouping step should mark for an expression, read from its ShapesRef logical form.

Beyond the paper (``train.group_weight``, docs/model.md, choice 23). A model that answers "the
second circle from the left" or "the square nearest to the green star" must first group the
objects the rest of the expression works on: every circle, or the green star. The paper leaves
that to the loss on P_T; ShapesRef's logical forms say it outright:

- ``filter`` ("the small red circle"): the objects the filter admits (the referents themselves);
- ``relate``: the landmark ("the green star" of "the square nearest to the green star");
- every other op (extreme, ordinal, compare, both, all, extremes): the head's candidates, the
  objects its ``of`` filter admits ("every circle" of "the second circle from the left").

RefCOCO carries no logical forms, so this is a ShapesRef-only training signal.
"""

from __future__ import annotations

from typing import Any

from .logic import evaluate, form_from_dict


def group_filter(logical_form: dict[str, Any]) -> dict[str, Any]:
    """The filter (a form dict with ``op`` "filter") whose objects the grouping step should mark."""
    form_from_dict(logical_form)  # validates the whole form: an unknown op is a ValueError
    op = logical_form["op"]
    if op == "filter":
        return logical_form
    return logical_form["landmark"] if op == "relate" else logical_form["of"]


def filter_members(filter_form: dict[str, Any], objects: dict[int, dict[str, Any]]) -> list[int]:
    """Ids (ascending) of the objects a ``filter`` form admits: ``objects`` maps id -> ShapesRef attributes."""
    ids = sorted(objects)
    return [ids[k] for k in evaluate(form_from_dict(filter_form), [objects[i] for i in ids])]


def group_members(logical_form: dict[str, Any], objects: dict[int, dict[str, Any]]) -> list[int]:
    """Ids (ascending) of the objects of the group: ``objects`` maps annotation id -> ShapesRef attributes."""
    return filter_members(group_filter(logical_form), objects)
