"""The paper's benchmarks end to end, on small data: the command line on a REFER folder (the
generated one, and refcoco-mini's real photos when present), the data edge cases of real REFER
folders (polygons, crowd RLE, grey / CMYK / alpha / EXIF-rotated photos), and the configs of
Tables 2 and 3 with docs/reproduce.md."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils

from conftest import REFER_FOLDERS, refer_folder
from step_ris.cli import main
from step_ris.config import get_preset
from step_ris.data.dataset import ReferDataset
from step_ris.data.image_io import load_image
from step_ris.data.refer import get_spec
from step_ris.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from step_ris.text import Vocabulary

ROOT = Path(__file__).resolve().parents[1]
METRIC_KEYS = {"oIoU", "mIoU", "prec@0.5", "prec@0.6", "prec@0.7", "prec@0.8", "prec@0.9", "n"}


def _refs(root: Path) -> list[dict]:
    with open(root / "refcoco" / "refs(unc).p", "rb") as f:
        return pickle.load(f, encoding="latin1")


# ---- step-ris data check ----------------------------------------------------------------------


def test_data_check_counts(refer_root: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["data", "check", "refcoco", "--root", str(refer_root)]) == 0
    report = json.loads(capsys.readouterr().out)
    refs = _refs(refer_root)
    assert report["ok"] and report["problems"] == []
    assert report["total"] == {"refs": 8, "sentences": 16, "images": 2}  # as both fixtures are made
    for split in ("train", "val", "testA", "testB"):
        mine = [r for r in refs if r["split"] == split]
        assert report["splits"][split] == {"refs": len(mine), "sentences": sum(len(r["sentences"]) for r in mine),
                                           "images": len({r["image_id"] for r in mine})}
    assert report["refs_file"] == str(refer_root / "refcoco" / "refs(unc).p")


def test_missing_refs_file_names_the_path(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["data", "check", "refcoco+", "--root", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert f"not found: {tmp_path / 'refcoco+' / 'refs(unc).p'};" in err
    assert "https://bvisionweb1.cs.unc.edu/licheng/referit/data/refcoco+.zip" in err
    assert "Traceback" not in err


def test_missing_images_name_the_path(tmp_path: Path, refer_root: Path, capsys: pytest.CaptureFixture) -> None:
    root = tmp_path / "data"
    shutil.copytree(refer_root / "refcoco", root / "refcoco")  # annotations without images/
    assert main(["data", "check", "refcoco", "--root", str(root)]) == 1
    report = json.loads(capsys.readouterr().out)
    assert not report["ok"] and report["missing_images"]["count"] == 8
    assert str(root / "images" / "mscoco" / "images" / "train2014") in report["problems"][0]
    rc = main(["train", "--preset", "tiny", "--dataset", "refcoco", "--root", str(root), "--out",
               str(tmp_path / "run"), "--iters", "1", "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    names = [im["file_name"] for im in json.loads((root / "refcoco" / "instances.json").read_text())["images"]]
    missing = {str(root / "images/mscoco/images/train2014" / n) for n in names}
    assert any(f"image file not found: {m};" in err for m in missing), err
    assert "http://images.cocodataset.org/zips/train2014.zip" in err


# ---- train and evaluate through the command line -------------------------------------------------


class Run(NamedTuple):
    root: Path  # the REFER root it was trained on
    run: Path  # the run folder


@pytest.fixture(scope="module", params=REFER_FOLDERS)
def trained_run(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Run:
    """A 4-step tiny run on each REFER folder (module-scoped: trained once per folder)."""
    root = refer_folder(request.param, request)
    out = tmp_path_factory.mktemp("bench") / "run"
    rc = main(["train", "--preset", "tiny", "--dataset", "refcoco", "--root", str(root), "--out", str(out),
               "--iters", "4", "--set", "data.val_split=val", "--set", "model.image_size=64", "--quiet"])
    assert rc == 0
    return Run(root, out)


def test_train_then_eval_through_the_cli(trained_run: Run, tmp_path: Path) -> None:
    data_root, run = trained_run
    assert {p.name for p in run.iterdir()} >= {"config.json", "vocab.json", "last.pt", "metrics.jsonl"}
    config = json.loads((run / "config.json").read_text())
    assert config["data"]["dataset"] == "refcoco" and config["data"]["root"] == str(data_root)
    assert config["model"]["image_size"] == 64 and config["train"]["iters"] == 4
    (record,) = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert record["step"] == 4 and record["n"] == 2  # the final evaluation on the 2 val sentences

    out = tmp_path / "r.json"
    rc = main(["eval", "--checkpoint", str(run / "last.pt"), "--dataset", "refcoco", "--root",
               str(data_root), "--split", "val", "--json", str(out), "--quiet"])
    assert rc == 0
    result = json.loads(out.read_text())
    assert METRIC_KEYS | {"checkpoint", "config"} <= set(result)
    assert result["n"] == 2 and result["split"] == "refcoco:val"
    for k in METRIC_KEYS - {"n"}:
        assert 0.0 <= result[k] <= 1.0
    assert result["checkpoint"]["path"] == str(run / "last.pt") and len(result["checkpoint"]["sha256"]) == 64
    assert result["config"] == config
    assert result["oIoU"] == pytest.approx(record["oIoU"])  # the same model scores the same
    assert "crf" not in result


def test_eval_with_crf_through_the_cli(trained_run: Run, tmp_path: Path) -> None:
    data_root, run = trained_run
    pytest.importorskip("pydensecrf.densecrf")
    out = tmp_path / "crf.json"
    rc = main(["eval", "--checkpoint", str(run), "--dataset", "refcoco", "--root", str(data_root),
               "--split", "val", "--json", str(out), "--quiet", "--crf"])
    assert rc == 0
    result = json.loads(out.read_text())
    assert METRIC_KEYS <= set(result) and result["crf"]["iters"] == 5 and result["split"] == "refcoco:val"


def test_eval_crf_without_the_package(trained_run: Run, monkeypatch: pytest.MonkeyPatch,
                                      capsys: pytest.CaptureFixture) -> None:
    data_root, run = trained_run
    import sys

    monkeypatch.setitem(sys.modules, "pydensecrf", None)
    monkeypatch.setitem(sys.modules, "pydensecrf.densecrf", None)
    rc = main(["eval", "--checkpoint", str(run), "--dataset", "refcoco", "--root", str(data_root),
               "--split", "val", "--quiet", "--crf"])
    err = capsys.readouterr().err
    assert rc == 2 and "pip install 'step-ris[crf]'" in err and "Traceback" not in err


def test_eval_on_a_folder_without_images(trained_run: Run, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data_root, run = trained_run
    root = tmp_path / "data"
    shutil.copytree(data_root / "refcoco", root / "refcoco")
    rc = main(["eval", "--checkpoint", str(run), "--dataset", "refcoco", "--root", str(root),
               "--split", "val", "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and f"image file not found: {root / 'images/mscoco/images/train2014'}/" in err


# ---- a synthetic REFER folder with every kind of annotation and photo ------------------------------


def _rle_counts(mask: np.ndarray) -> list[int]:
    """Uncompressed COCO RLE (column-major runs, starting with background) of a {0, 1} mask."""
    flat = mask.flatten(order="F")
    change = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    runs = np.diff(bounds).tolist()
    return runs if flat[0] == 0 else [0] + runs


def _box(h: int, w: int, top: int, left: int, bottom: int, right: int) -> np.ndarray:
    m = np.zeros((h, w), np.uint8)
    m[top:bottom, left:right] = 1
    return m


def _synthetic_refer(root: Path) -> dict[str, dict]:
    """refcoco layout under ``root``: five photos whose bright object is the annotated one.

    Returns {name: {"image_id", "mask" (H, W) on the annotation grid}}.
    """
    image_dir = root / "images/mscoco/images/train2014"
    image_dir.mkdir(parents=True)
    (root / "refcoco").mkdir()
    cases: dict[str, dict] = {}
    images, anns, refs = [], [], []

    def add(name: str, file_name: str, mask: np.ndarray, segmentation, iscrowd: int = 0) -> None:
        k = len(cases) + 1
        h, w = mask.shape
        images.append({"id": k, "file_name": file_name, "height": h, "width": w})
        anns.append({"id": 100 + k, "image_id": k, "category_id": 1, "iscrowd": iscrowd, "segmentation": segmentation,
                     "area": float(mask.sum()), "bbox": [0, 0, w, h]})
        refs.append({"ref_id": k, "ann_id": 100 + k, "image_id": k, "split": "train", "category_id": 1,
                     "file_name": f"COCO_train2014_{k:012d}_{100 + k}.jpg", "sent_ids": [k],
                     "sentences": [{"sent_id": k, "sent": f"the bright {name} thing", "raw": f"The bright {name} thing",
                                    "tokens": ["the", "bright", name, "thing"]}]})
        cases[name] = {"image_id": k, "mask": mask}

    # grey-scale JPEG, polygon annotation
    m = _box(60, 80, 10, 30, 40, 70)
    Image.fromarray(m * 255).save(image_dir / "grey.jpg", quality=95)  # mode L
    add("grey", "grey.jpg", m, [[30.0, 10.0, 70.0, 10.0, 70.0, 40.0, 30.0, 40.0]])
    # CMYK JPEG, crowd region as uncompressed RLE (counts a list)
    m = _box(50, 90, 5, 5, 30, 40)
    cmyk = np.zeros((50, 90, 4), np.uint8)
    cmyk[..., 3] = np.where(m == 1, 0, 255)  # K: black background, white object
    Image.fromarray(cmyk, mode="CMYK").save(image_dir / "cmyk.jpg", quality=95)
    add("cmyk", "cmyk.jpg", m, {"size": [50, 90], "counts": _rle_counts(m)}, iscrowd=1)
    # RGBA PNG (portrait), compressed RLE as a string; a transparent corner away from the object
    m = _box(70, 50, 30, 10, 60, 35)
    rgba = np.zeros((70, 50, 4), np.uint8)
    rgba[..., 3] = 255
    rgba[m == 1, :3] = 255
    rgba[:6, 44:, 3] = 0  # shown over white
    Image.fromarray(rgba, mode="RGBA").save(image_dir / "alpha.png")
    enc = mask_utils.encode(np.asfortranarray(m))
    add("alpha", "alpha.png", m, {"size": enc["size"], "counts": enc["counts"].decode("ascii")})
    # EXIF orientation 6 on a transposed grid: the annotation is on the displayed (rotated) photo
    m = _box(60, 100, 5, 5, 25, 45)  # top-left of the displayed photo
    stored = Image.fromarray(m * 255).convert("RGB").transpose(Image.Transpose.ROTATE_90)  # 100 x 60 stored
    exif = Image.Exif()
    exif[0x0112] = 6
    stored.save(image_dir / "exif.jpg", exif=exif, quality=95)
    add("rotated", "exif.jpg", m, [[5.0, 5.0, 45.0, 5.0, 45.0, 25.0, 5.0, 25.0]])
    # EXIF orientation 6 on the annotation's own grid: REFER ignores EXIF, so must we
    m = _box(60, 100, 30, 60, 55, 95)
    Image.fromarray(m * 255).convert("RGB").save(image_dir / "exif_ignored.jpg", exif=exif, quality=95)
    add("unrotated", "exif_ignored.jpg", m, [[60.0, 30.0, 95.0, 30.0, 95.0, 55.0, 60.0, 55.0]])

    with open(root / "refcoco" / "refs(unc).p", "wb") as f:
        pickle.dump(refs, f, protocol=2)
    (root / "refcoco" / "instances.json").write_text(json.dumps(
        {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "thing"}]}))
    return cases


def test_synthetic_refer_folder_reads_and_aligns(tmp_path: Path) -> None:
    root = tmp_path / "refer"
    cases = _synthetic_refer(root)
    vocab = Vocabulary(["the", "bright", "thing"])
    S = 64
    ds = ReferDataset(root, "refcoco", "train", vocab, S)
    assert len(ds) == len(cases)
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    for i, (name, case) in enumerate(cases.items()):
        assert ds.meta(i)["image_id"] == case["image_id"]
        target = ds.original_mask(i)
        np.testing.assert_array_equal(target, case["mask"], err_msg=name)  # polygon / RLE decoded exactly
        sample = ds[i]
        h, w = sample["valid_hw"].tolist()
        assert max(h, w) == S and abs(h / w - target.shape[0] / target.shape[1]) < 0.05, name
        bright = (sample["image"] * std + mean).mean(0)  # (S, S) in [0, 1]
        fg = sample["mask"] > 0.5
        valid = torch.zeros(S, S, dtype=torch.bool)
        valid[:h, :w] = True
        assert fg.any(), name
        assert bright[fg].mean() > 0.8, name  # the object is where the mask is ...
        assert bright[valid & ~fg].mean() < 0.2, name  # ... and nowhere else
    # the photo itself, at the original size, as the CRF and the demo see it
    alpha = load_image(ds.image_path(2), apply_exif=False)
    assert alpha.shape == (70, 50, 3) and alpha[0, -1].tolist() == [255, 255, 255]


def test_synthetic_refer_folder_through_data_check(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = tmp_path / "refer"
    _synthetic_refer(root)
    assert main(["data", "check", "refcoco", "--root", str(root)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["total"] == {"refs": 5, "sentences": 5, "images": 5}
    assert report["problems"] == ["no refs in split(s): val, testA, testB"]


# ---- the configs of Tables 2 and 3, and docs/reproduce.md ------------------------------------------

# config file -> (dataset, train split, eval splits, cell, folds, paper's oIoU per eval split)
PAPER_ROWS = {
    "unc-5fold": ("refcoco", "train", ("val", "testA", "testB"), "convgru", 5, (60.04, 63.46, 57.97)),
    "uncplus-5fold": ("refcoco+", "train", ("val", "testA", "testB"), "convgru", 5, (48.19, 52.33, 40.41)),
    "gref-5fold": ("refcocog", "train", ("val",), "convgru", 5, (46.40,)),
    "referit-5fold": ("refclef", "trainval", ("test",), "convgru", 5, (64.13,)),
    "unc-1fold": ("refcoco", "train", ("val", "testA", "testB"), "convlstm", 1, (56.68, 58.70, 55.39)),
    "unc-2fold": ("refcoco", "train", ("val",), "convgru", 2, (57.23,)),
    "unc-4fold": ("refcoco", "train", ("val",), "convgru", 4, (59.13,)),
}


def test_every_config_file_loads() -> None:
    files = sorted((ROOT / "configs").glob("*.json"))
    assert files, "no configs/*.json"
    for f in files:
        cfg = get_preset(str(f))
        assert cfg.name == f.stem
        spec = get_spec(cfg.data.dataset)
        spec.resolve_split(cfg.data.train_split)
        spec.resolve_split(cfg.data.val_split)


@pytest.mark.parametrize("name", sorted(PAPER_ROWS))
def test_paper_configs(name: str) -> None:
    dataset, train_split, eval_splits, cell, folds, _ = PAPER_ROWS[name]
    cfg = get_preset(str(ROOT / "configs" / f"{name}.json"))
    m, d, t = cfg.model, cfg.data, cfg.train
    assert (d.dataset, d.train_split, d.root) == (dataset, train_split, "data/refer")
    assert d.val_split == eval_splits[0]
    assert (m.cell, m.folds, m.steps) == (cell, folds, 5 * folds)
    assert (m.backbone, m.backbone_weights, m.freeze_backbone) == ("resnet101", "deeplabv3-coco", False)
    assert m.word_vectors.endswith("glove.840B.300d.txt") and m.word_dim == 300
    assert (m.lstm_hidden, m.attention_dim, m.embed_dim, m.filters, m.image_size, m.max_words) == \
        (1000, 400, 1000, 32, 320, 20)
    assert (t.iters, t.batch_size, t.lr, t.weight_decay, t.poly_power) == (700_000, 1, 2.5e-4, 5e-4, 0.9)


def test_reproduce_doc_lists_every_row() -> None:
    doc = (ROOT / "docs" / "reproduce.md").read_text()
    for name, (dataset, _, eval_splits, _, _, paper) in PAPER_ROWS.items():
        assert f"step-ris train --preset configs/{name}.json --out runs/{name}" in doc, name
        for split, number in zip(eval_splits, paper, strict=True):
            cmd = (f"step-ris eval --checkpoint runs/{name}/last.pt --dataset {dataset} --root data/refer "
                   f"--split {split}")
            assert cmd in doc, (name, split)
            assert f"{number:.2f}" in doc, (name, number)
    for url in ("https://nlp.stanford.edu/data/glove.840B.300d.zip", "http://images.cocodataset.org/zips/train2014.zip",
                "refclef.zip", "saiapr_tc-12.zip", "refcocog.zip", "refcoco+.zip"):
        assert url in doc, url
    assert "step-ris data check refcoco --root data/refer" in doc
