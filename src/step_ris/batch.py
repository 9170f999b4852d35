"""Batch mode: one mask per line of a JSONL file, resumable (``step-ris predict --batch``).

Each input line is ``{"image": path, "expression": text, "id": optional}`` (the id defaults to
the line number; relative image paths are relative to the folder of the JSONL file; a UTF-8
byte-order mark is accepted). For each line, ``<out_dir>/<id>.png`` (0/255 mask at the image's
size, written atomically) and one line of the results file (default
``<out_dir>/results.jsonl``)::

    {"id", "image", "expression", "mask", "matched", "score", "area", "words", "unknown_words",
     "truncated", "height", "width"}           or, when that line failed,
    {"id", "image", "expression", "error"}

All lines of one image share one encoding (``Predictor.encode``), wherever they are in the
file. Results are appended and flushed one by one as they are made, so an interruption loses
nothing; at the end of a complete run the results file is rewritten (atomically) in the input
order. Running the same command again skips the ids that already have a result and retries
the ones that failed (a fixed image path, say); the summary counts every line whose result is
an error, from this run or an earlier one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from .fileio import atomic_write, png_bytes
from .predictor import Predictor, Query
from .visualize import mask_image

log = logging.getLogger(__name__)

RESULTS_FILE = "results.jsonl"
_RESULT_KEYS = ("matched", "score", "area", "words", "unknown_words", "truncated", "height", "width")


@dataclass
class _Item:
    line: int
    id: str
    image: str = ""
    expression: str = ""
    error: str = ""


def read_pairs(pairs: str | os.PathLike) -> list[_Item]:
    """The lines of a batch file; a line that cannot be used carries its ``error`` (duplicate ids raise)."""
    pairs = Path(pairs)
    if pairs.is_dir():
        raise ValueError(f"{pairs}: is a directory; give the JSONL file of "
                         '{"image": PATH, "expression": TEXT, "id": OPTIONAL} lines')
    if not pairs.is_file():
        raise ValueError(f"{pairs}: input file not found (expected JSON lines: "
                         '{"image": PATH, "expression": TEXT, "id": OPTIONAL})')
    try:  # utf-8-sig: a byte-order mark (as some editors write) is skipped
        lines = pairs.read_text(encoding="utf-8-sig").split("\n")  # not splitlines(): JSON strings may hold U+2028
    except UnicodeDecodeError:
        raise ValueError(f"{pairs}: not a UTF-8 text file (expected JSON lines)") from None
    items: list[_Item] = []
    seen: dict[str, int] = {}
    for n, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        item = _Item(line=n, id=str(n))
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as e:
            item.error = f"line {n} is not valid JSON ({e.msg})"
            obj = None
        if obj is not None and not isinstance(obj, dict):
            item.error, obj = f"line {n} is not a JSON object", None
        if obj is not None:
            if "id" in obj:
                if not isinstance(obj["id"], (str, int)) or isinstance(obj["id"], bool) or str(obj["id"]) == "":
                    raise ValueError(f"{pairs}:{n}: 'id' must be a non-empty string or an integer")
                item.id = str(obj["id"])
            image, expression = obj.get("image"), obj.get("expression")
            item.image = image if isinstance(image, str) else ""
            item.expression = expression if isinstance(expression, str) else ""
            if not isinstance(image, str) or not image:
                item.error = f"line {n}: 'image' must be a path (a non-empty string)"
            elif not isinstance(expression, str):
                item.error = f"line {n}: 'expression' must be a string"
        if item.id in seen:
            raise ValueError(f"{pairs}: id {item.id!r} is used on lines {seen[item.id]} and {n}; ids must be "
                             "unique (results are matched to inputs by id)")
        seen[item.id] = n
        items.append(item)
    return items


def read_results(results: Path) -> list[dict]:
    """The records of a results file, in file order; a last line cut by an interruption is removed first."""
    if not results.is_file():
        return []
    data = results.read_bytes()
    if data and not data.endswith(b"\n"):
        keep = data.rfind(b"\n") + 1
        log.warning("%s: removing an incomplete last line (the previous run was interrupted)", results)
        with open(results, "r+b") as f:
            f.truncate(keep)
        data = data[:keep]
    records = []
    for n, raw in enumerate(data.decode("utf-8", errors="replace").split("\n"), 1):
        if not raw.strip():
            continue
        try:
            record = json.loads(raw)
            record["id"] = str(record["id"])
        except (json.JSONDecodeError, KeyError, TypeError):
            log.warning("%s:%d: not a result line, ignored", results, n)
            continue
        records.append(record)
    return records


def mask_names(ids: list[str]) -> dict[str, str]:
    """A distinct, file-system safe PNG name per id."""
    safe = {i: (re.sub(r"[^A-Za-z0-9._-]", "_", i)[:100].lstrip(".") or "id") for i in ids}
    counts: dict[str, int] = {}
    for name in safe.values():
        counts[name.lower()] = counts.get(name.lower(), 0) + 1
    return {i: (f"{n}-{hashlib.sha1(i.encode()).hexdigest()[:8]}" if counts[n.lower()] > 1 or n != i else n) + ".png"
            for i, n in safe.items()}


def results_path(pairs: str | os.PathLike, out_dir: str | os.PathLike,
                 results: str | os.PathLike | None = None) -> Path:
    """The results file of a batch run, refused when it is the input file (or a folder)."""
    path = Path(results) if results is not None else Path(out_dir) / RESULTS_FILE
    if path.is_dir():
        raise ValueError(f"results file {path} is a folder; give a file name, e.g. {path / RESULTS_FILE}")
    if Path(pairs).exists() and path.exists() and path.resolve() == Path(pairs).resolve():
        raise ValueError(f"results file {path} is the input file (--batch {pairs}); choose another results file")
    return path


def predict_jsonl(predictor: Predictor, pairs: str | os.PathLike, out_dir: str | os.PathLike,
                  results: str | os.PathLike | None = None, *, progress: bool = False) -> dict:
    """Run every line of ``pairs`` (see the module docstring); returns the summary.

    Summary: ``{"total", "done", "skipped", "failed", "retried", "results", "out_dir"}``:
    lines in the input; results made in this run; lines that already had a result; lines
    whose result is an error (this run's or an earlier run's); earlier failures run again.
    """
    pairs, out_dir = Path(pairs), Path(out_dir)
    items = read_pairs(pairs)
    results = results_path(pairs, out_dir, results)
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"--out-dir {out_dir} exists and is not a folder")

    def resolve(image: str) -> Path:
        p = Path(image).expanduser()
        return p if p.is_absolute() else pairs.parent / p

    names = mask_names([it.id for it in items])
    inputs = {os.path.realpath(pairs), *(os.path.realpath(resolve(it.image)) for it in items if it.image)}
    for it in items:
        mask = out_dir / names[it.id]
        if os.path.realpath(mask) in inputs:
            raise ValueError(f"the mask of id {it.id!r} would be written to {mask}, which is an input file; "
                             "choose another --out-dir")
    if os.path.realpath(results) in inputs - {os.path.realpath(pairs)}:
        raise ValueError(f"results file {results} is one of the input images; choose another results file")

    out_dir.mkdir(parents=True, exist_ok=True)
    latest: dict[str, dict] = {}
    for record in read_results(results):
        latest[record["id"]] = record  # the last record of an id wins (a retried failure)
    position = {it.id: k for k, it in enumerate(items)}
    ok_before = {i for i, r in latest.items() if "error" not in r and i in position}
    todo = [it for it in items if it.id not in ok_before]
    retried = sum(1 for it in todo if it.id in latest)
    counts = {"total": len(items), "done": 0, "skipped": len(ok_before), "failed": 0, "retried": retried}
    if ok_before:
        log.info("%s: %d of %d lines already done, skipped", results, len(ok_before), len(items))
    if retried:
        log.info("%s: %d lines failed in an earlier run; trying them again", results, retried)

    # lines of one image, wherever they are, in the order the images first appear
    groups: dict[str, list[_Item]] = {}
    for it in todo:
        key = f"error:{it.id}" if it.error else os.path.realpath(resolve(it.image))
        groups.setdefault(key, []).append(it)

    with open(results, "a", encoding="utf-8") as sink, \
            tqdm(total=len(todo), desc="predict", unit="line", disable=not progress) as bar:

        def emit(item: _Item, record: dict) -> None:
            full = {"id": item.id, "image": item.image, "expression": item.expression, **record}
            sink.write(json.dumps(full, ensure_ascii=False) + "\n")
            sink.flush()
            os.fsync(sink.fileno())
            latest[item.id] = full
            counts["failed" if "error" in record else "done"] += 1
            bar.update(1)

        for group in groups.values():
            first = group[0]
            if first.error:
                emit(first, {"error": first.error})
                continue
            try:
                encoded = predictor.encode(resolve(first.image))
            except ValueError as e:
                for it in group:
                    emit(it, {"error": str(e)})
                continue
            ready: list[tuple[_Item, Query]] = []
            for it in group:
                try:
                    ready.append((it, predictor.prepare(it.expression)))
                except ValueError as e:
                    emit(it, {"error": str(e)})
            for start in range(0, len(ready), predictor.batch_size):
                chunk = ready[start: start + predictor.batch_size]
                predictions = predictor.predict_prepared(encoded, [q for _, q in chunk])
                for (it, _), pred in zip(chunk, predictions, strict=True):
                    mask_path = out_dir / names[it.id]
                    atomic_write(mask_path, png_bytes(mask_image(pred.mask)))
                    summary = pred.summary()
                    emit(it, {"mask": str(mask_path), **{key: summary[key] for key in _RESULT_KEYS}})

    # the run is complete: one record per id, in the input order (records of other ids last)
    ordered = sorted(latest.values(), key=lambda r: position.get(r["id"], len(items)))
    atomic_write(results, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in ordered))
    failed = sum(1 for i in position if "error" in latest.get(i, {}))
    return {**counts, "failed": failed, "results": str(results), "out_dir": str(out_dir)}


__all__ = ["RESULTS_FILE", "mask_names", "predict_jsonl", "read_pairs", "read_results", "results_path"]
