"""``step-ris data check``: inspect a dataset folder without decoding any image."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .grefer import ref_target_count
from .refer import ReferData

MAX_LISTED = 20
"""How many offending ref ids ``check_dataset`` lists per problem."""


def check_dataset(root: str | Path, dataset: str, max_listed: int = MAX_LISTED) -> dict[str, Any]:
    """Inspect a dataset on disk without decoding images (for ``step-ris data check``).

    Returns a dict with ``dataset``, ``title``, ``root``, ``refs_file``, ``instances_file``,
    ``image_dir``, ``splits`` (``{split: {refs, sentences, images}}`` for every split value in
    the file and every allowed split), ``total`` (same counts), ``unknown_splits`` (split values
    of the file the registry does not list), ``missing_images`` / ``missing_annotations``
    (``{count, ref_ids}``, ids capped at ``max_listed``; an image is missing when its file is
    absent or its id is not in instances.json), ``problems`` (human-readable lines) and ``ok``.

    For the ``jsonl`` layout also ``invalid_lines`` (``{count, errors}``: the number of unusable
    lines, and their errors ``{line, field, message}``, capped at ``max_listed``; a line may have
    several); invalid lines are left out of the counts and make ``ok``
    false, and only an empty ``train`` split is a problem (unused splits are normal there).

    For the gRefCOCO layout (``shapesref-g``, ``grefcoco``) likewise ``invalid_refs`` (``{count,
    errors}``, errors ``{index, ref_id, field, message}``: the ref's position in the JSON list, its
    ref_id, the field at fault and what to do). Every layout also gets ``target_counts``: sentences
    per split by how many objects they mean, ``{"0", "1", "2+"}``.

    Raises:
        DataError: the refs or instances file is missing, unreadable or malformed (the message names
            the file, the record and the field).
    """
    line_errors: list = []
    data = ReferData(root, dataset, line_errors=line_errors)
    spec = data.spec
    splits: dict[str, dict[str, set | int]] = {}
    for s in spec.splits:
        splits[s] = {"refs": 0, "sentences": 0, "images": set()}
    exists: dict[int, bool] = {}
    missing_img: list[int] = []
    missing_ann: list[int] = []
    for ref in data.refs:
        c = splits.setdefault(ref["split"], {"refs": 0, "sentences": 0, "images": set()})
        c["refs"] += 1
        c["sentences"] += len(ref["sentences"])
        c["images"].add(ref["image_id"])
        iid = ref["image_id"]
        if iid not in exists:
            exists[iid] = iid in data.images and data.image_path(iid).is_file()
        if not exists[iid]:
            missing_img.append(ref["ref_id"])
        if not data.has_ann(ref["ann_id"]):
            missing_ann.append(ref["ref_id"])
    target_counts: dict[str, dict[str, int]] = {s: {"0": 0, "1": 0, "2+": 0} for s in splits}
    for ref in data.refs:
        n = ref_target_count(ref)
        target_counts[ref["split"]]["2+" if n >= 2 else str(n)] += len(ref["sentences"])
    out_splits = {
        s: {"refs": c["refs"], "sentences": c["sentences"], "images": len(c["images"])} for s, c in splits.items()
    }
    for comp, members in spec.composite_splits.items():
        imgs = set().union(*(splits[m]["images"] for m in members))
        out_splits[comp] = {
            "refs": sum(out_splits[m]["refs"] for m in members),
            "sentences": sum(out_splits[m]["sentences"] for m in members),
            "images": len(imgs),
        }
    unknown = sorted(s for s in splits if s not in spec.splits)
    total = {
        "refs": len(data.refs),
        "sentences": sum(len(r["sentences"]) for r in data.refs),
        "images": len({r["image_id"] for r in data.refs}),
    }
    problems: list[str] = []
    if missing_img:
        problems.append(
            f"{len(missing_img)} ref(s) point to missing images (under {spec.image_root(data.root)}); "
            f"{spec.images_help.format(root=data.root)}"
        )
    if missing_ann:
        problems.append(f"{len(missing_ann)} ref(s) point to annotations absent from {data.instances_path}")
    if unknown:
        problems.append(f"refs file has split values not used by {spec.name}: {', '.join(unknown)}")
    empty = [s for s in spec.splits if out_splits[s]["refs"] == 0 and (spec.layout != "jsonl" or s == "train")]
    if empty:
        problems.append(f"no refs in split(s): {', '.join(empty)}")
    grefer = spec.layout == "grefer"
    bad_lines = len({e.index if grefer else e.line for e in line_errors})
    if line_errors:
        what = "ref(s)" if grefer else "line(s)"
        problems.append(f"{bad_lines} {what} of {data.refs_path} cannot be used and are left out:")
        problems += [f"  {e.format(data.refs_path)}" for e in line_errors[:max_listed]]
        if len(line_errors) > max_listed:
            problems.append(f"  ... and {len(line_errors) - max_listed} more")
    extra = {}
    if spec.layout in ("jsonl", "grefer"):
        key = "invalid_refs" if grefer else "invalid_lines"
        extra[key] = {"count": bad_lines, "errors": [e._asdict() for e in line_errors[:max_listed]]}
    return {
        "dataset": spec.name,
        "title": spec.title,
        "root": str(data.root),
        "refs_file": str(data.refs_path),
        "instances_file": str(data.instances_path),
        "image_dir": str(spec.image_root(data.root)),
        "splits": out_splits,
        "total": total,
        "target_counts": target_counts,
        "unknown_splits": unknown,
        "missing_images": {"count": len(missing_img), "ref_ids": missing_img[:max_listed]},
        "missing_annotations": {"count": len(missing_ann), "ref_ids": missing_ann[:max_listed]},
        **extra,
        "problems": problems,
        "ok": not (missing_img or missing_ann or line_errors),
    }
