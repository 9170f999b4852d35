"""REFER layout reader: registry, restricted unpickler, masks, dataset check."""

from __future__ import annotations

import json
import os
import pickle
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from step_ris.data.refer import (
    DOWNLOADS,
    DataError,
    ReferData,
    check_dataset,
    decode_segmentation,
    get_spec,
    load_refs,
    parse_dataset_name,
)


def _fixture_refs(root: Path) -> list[dict]:
    with open(root / "refcoco" / "refs(unc).p", "rb") as f:
        return pickle.load(f, encoding="latin1")


# ---- registry --------------------------------------------------------------------------


def test_registry_paths_and_splits(tmp_path: Path) -> None:
    cases = {
        "refcoco": ("refcoco/refs(unc).p", "images/mscoco/images/train2014", ("train", "val", "testA", "testB")),
        "refcoco+": ("refcoco+/refs(unc).p", "images/mscoco/images/train2014", ("train", "val", "testA", "testB")),
        "refcocog": ("refcocog/refs(google).p", "images/mscoco/images/train2014", ("train", "val")),
        "refcocog-umd": ("refcocog/refs(umd).p", "images/mscoco/images/train2014", ("train", "val", "test")),
        "refclef": ("refclef/refs(berkeley).p", "images/saiapr_tc-12", ("train", "val", "test", "trainval")),
        "referit": ("refclef/refs(berkeley).p", "images/saiapr_tc-12", ("train", "val", "test", "trainval")),
        "shapesref": ("shapesref/refs(unc).p", "images/shapesref", ("train", "val", "testA", "testB")),
        "shapesref+": ("shapesref+/refs(unc).p", "images/shapesref", ("train", "val", "testA", "testB")),
    }
    for name, (refs, images, splits) in cases.items():
        spec = get_spec(name)
        assert spec.refs_path(tmp_path) == tmp_path / refs
        assert spec.instances_path(tmp_path) == (tmp_path / refs).parent / "instances.json"
        assert spec.image_root(tmp_path) == tmp_path / images
        assert spec.all_splits == splits
    assert get_spec("refclef").members("trainval") == ("train", "val")


def test_parse_names() -> None:
    spec, split = parse_dataset_name("refcoco:testA")
    assert spec.name == "refcoco" and split == "testA"
    assert parse_dataset_name("RefCOCO+:testb")[1] == "testB"
    assert parse_dataset_name("refcocog")[1] is None
    assert parse_dataset_name("referit:trainval")[0].name == "refclef"
    with pytest.raises(ValueError, match="allowed splits: train, val$"):
        parse_dataset_name("refcocog:test")
    with pytest.raises(ValueError, match="known datasets: .*refcoco\\+.*referit"):
        parse_dataset_name("flickr30k:train")
    with pytest.raises(ValueError, match="allowed splits"):
        parse_dataset_name("refcoco:")


# ---- restricted unpickler --------------------------------------------------------------


class _Evil:
    def __reduce__(self):  # noqa: ANN204
        return (os.system, ("echo pwned > /dev/null",))


def test_malicious_pickle_refused(tmp_path: Path) -> None:
    p = tmp_path / "refs(unc).p"
    p.write_bytes(pickle.dumps([{"ref_id": 0, "x": _Evil()}], protocol=2))
    with pytest.raises(DataError, match=r"refs\(unc\).p.*refusing to run code"):
        load_refs(p)


def test_plain_pickles_load(tmp_path: Path) -> None:
    refs = [{"ref_id": 1, "sentences": [{"sent": "a dog", "sent_id": 3}], "tags": {1, 2}, "t": (1, 2.5, None)}]
    for proto in (0, 2, pickle.HIGHEST_PROTOCOL):
        p = tmp_path / f"r{proto}.p"
        p.write_bytes(pickle.dumps(refs, protocol=proto))
        assert load_refs(p) == refs


def test_bad_refs_files(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        load_refs(tmp_path / "missing.p")
    junk = tmp_path / "junk.p"
    junk.write_bytes(b"this is not a pickle")
    with pytest.raises(DataError, match="junk.p.*not a valid refs pickle"):
        load_refs(junk)
    notlist = tmp_path / "dict.p"
    notlist.write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(DataError, match="list of ref dicts"):
        load_refs(notlist)


# ---- masks ------------------------------------------------------------------------------


def test_decode_segmentation_forms() -> None:
    square = [[2.0, 2.0, 8.0, 2.0, 8.0, 8.0, 2.0, 8.0]]
    m = decode_segmentation(square, 10, 12)
    assert m.shape == (10, 12) and m.dtype == np.uint8 and set(np.unique(m)) <= {0, 1}
    ref = np.zeros((10, 12), dtype=np.uint8, order="F")
    ref[3:7, 4:9] = 1
    enc = mask_utils.encode(ref)
    np.testing.assert_array_equal(decode_segmentation(enc, 10, 12), ref)  # compressed, bytes
    as_str = {"size": enc["size"], "counts": enc["counts"].decode("ascii")}
    np.testing.assert_array_equal(decode_segmentation(as_str, 10, 12), ref)  # compressed, str
    flat = ref.flatten(order="F")
    runs, cur, n = [], 0, 0
    for v in flat:
        if v != cur:
            runs.append(n)
            cur, n = v, 0
        n += 1
    runs.append(n)
    np.testing.assert_array_equal(decode_segmentation({"size": [10, 12], "counts": runs}, 10, 12), ref)
    # union of two polygons, degenerate polygon dropped
    two = square + [[9.0, 0.0, 11.0, 0.0, 11.0, 3.0], [1.0, 1.0, 2.0, 2.0]]
    assert decode_segmentation(two, 10, 12).sum() > m.sum()
    assert decode_segmentation([], 10, 12).sum() == 0
    with pytest.raises(ValueError, match="differs"):
        decode_segmentation(enc, 11, 12)


# ---- the fixture -------------------------------------------------------------------------


def test_fixture_samples_and_counts(refer_root: Path) -> None:
    refs = _fixture_refs(refer_root)
    data = ReferData(refer_root, "refcoco")
    for split in ("train", "val", "testA", "testB"):
        expected = [(r["ref_id"], s["sent_id"]) for r in refs if r["split"] == split for s in r["sentences"]]
        got = [(ref["ref_id"], sent["sent_id"]) for ref, sent in data.samples(split)]
        assert got == expected and got
    report = check_dataset(refer_root, "refcoco")
    assert report["ok"] and report["problems"] == []
    for split in ("train", "val", "testA", "testB"):
        mine = [r for r in refs if r["split"] == split]
        assert report["splits"][split] == {
            "refs": len(mine),
            "sentences": sum(len(r["sentences"]) for r in mine),
            "images": len({r["image_id"] for r in mine}),
        }
    assert report["total"]["refs"] == len(refs) == sum(Counter(r["split"] for r in refs).values())
    assert report["missing_images"] == {"count": 0, "ref_ids": []}


def test_fixture_masks_match_annotation_area(refer_root: Path) -> None:
    data = ReferData(refer_root, "refcoco")
    for ref in data.refs:
        ann = data.anns[ref["ann_id"]]
        img = data.images[ref["image_id"]]
        m = data.mask(ann)
        assert m.shape == (img["height"], img["width"]) and m.dtype == np.uint8
        assert m.max() == 1
        assert abs(int(m.sum()) - ann["area"]) <= 0.05 * ann["area"] + 10, ref["ref_id"]
        assert data.image_path(ref["image_id"]).is_file()
    crowd = next(a for a in data.anns.values() if a["iscrowd"])  # uncompressed RLE
    assert int(data.mask(crowd["id"]).sum()) == round(crowd["area"])


def test_missing_files_explained(tmp_path: Path, refer_root: Path) -> None:
    with pytest.raises(DataError, match="data root not found"):
        ReferData(tmp_path / "nowhere", "refcoco")
    with pytest.raises(DataError) as exc:
        ReferData(tmp_path, "refcoco+")
    msg = str(exc.value)
    assert "RefCOCO+" in msg and str(tmp_path / "refcoco+" / "refs(unc).p") in msg
    assert DOWNLOADS["refcoco+"] in msg and f"unzip it into {tmp_path}" in msg
    (tmp_path / "refcoco").mkdir()
    shutil.copy(refer_root / "refcoco" / "refs(unc).p", tmp_path / "refcoco")
    with pytest.raises(DataError, match=r"instances.json.*not found"):
        ReferData(tmp_path, "refcoco")
    with pytest.raises(ValueError, match="without a split"):
        ReferData(refer_root, "refcoco:val")


def test_broken_copy_reported(tmp_path: Path, refer_root: Path) -> None:
    root = tmp_path / "data"
    shutil.copytree(refer_root, root)
    refs = _fixture_refs(root)
    data = ReferData(root, "refcoco")
    # remove the photo of the first image, and the annotation of one ref on the other image
    gone_image = refs[0]["image_id"]
    data.image_path(gone_image).unlink()
    victim = next(r for r in refs if r["image_id"] != gone_image)
    inst_path = root / "refcoco" / "instances.json"
    inst = json.loads(inst_path.read_text())
    inst["annotations"] = [a for a in inst["annotations"] if a["id"] != victim["ann_id"]]
    inst_path.write_text(json.dumps(inst))
    report = check_dataset(root, "refcoco", max_listed=2)
    expected_img = [r["ref_id"] for r in refs if r["image_id"] == gone_image]
    assert report["missing_images"] == {"count": len(expected_img), "ref_ids": expected_img[:2]}
    assert report["missing_annotations"] == {"count": 1, "ref_ids": [victim["ref_id"]]}
    assert not report["ok"] and len(report["problems"]) == 2
    assert "images/mscoco/images/train2014" in report["problems"][0]


# ---- the torch dataset on the fixture ------------------------------------------------------


def test_dataset_contract(refer_root: Path) -> None:
    import torch

    from step_ris.data.dataset import ReferDataset, build_vocab, collate
    from step_ris.data.transforms import unletterbox
    from step_ris.text import UNK_ID, tokenize

    refs = _fixture_refs(refer_root)
    vocab = build_vocab(refer_root, "refcoco")
    words = {split: {t for r in refs if r["split"] == split for s in r["sentences"] for t in tokenize(s["sent"])}
             for split in ("train", "val", "testA", "testB")}
    assert "truck" in vocab and "lorry" in vocab
    assert set(vocab.to_list()[2:]) == words["train"]  # the training split's words, nothing else
    assert words["val"] - words["train"]  # (so the line above can fail)
    ds = ReferDataset(refer_root, "refcoco", "train", vocab, image_size=64, max_words=3)
    assert len(ds) == sum(len(r["sentences"]) for r in refs if r["split"] == "train")
    s = ds[0]
    assert set(s) == {"image", "mask", "valid_hw", "tokens", "index", "family", "target_count"}
    assert s["target_count"] == 1  # REFER refs mean one object
    assert s["image"].shape == (3, 64, 64) and s["image"].dtype == torch.float32
    assert s["mask"].shape == (64, 64) and set(s["mask"].unique().tolist()) <= {0.0, 1.0}
    assert ds.orig_hw(0) == (360, 640)  # both fixtures: the first ref is on a 640 x 360 photo
    assert s["valid_hw"].dtype == torch.int64 and s["valid_hw"].tolist() == [36, 64]
    assert s["tokens"].dtype == torch.int64 and 1 <= len(s["tokens"]) <= 3
    assert s["index"] == 0 and s["family"] == ""
    assert ds.sentence(0) == refs[0]["sentences"][0]["raw"]
    assert ds.meta(1) == {
        "ref_id": refs[0]["ref_id"],
        "sent_id": refs[0]["sentences"][1]["sent_id"],
        "image_id": refs[0]["image_id"],
        "ann_id": refs[0]["ann_id"],
        "split": "train",
        "family": "",
        "target_count": 1,
    }
    m = ds.original_mask(0)
    assert m.shape == ds.orig_hw(0) and m is ds.original_mask(1)  # same ref: cached
    back = unletterbox(s["mask"], s["valid_hw"], m.shape) > 0.5
    inter = (back.numpy() & (m > 0)).sum()
    assert inter / ((back.numpy() | (m > 0)).sum()) > 0.8  # 64 px is coarse
    batch = collate([ds[i] for i in range(len(ds))])
    assert batch["tokens"].shape[0] == len(ds) and batch["image"].shape == (len(ds), 3, 64, 64)
    assert (batch["tokens"][:, 0] != 0).all() and batch["lengths"].max() == batch["tokens"].shape[1]
    blind = ReferDataset(refer_root, "refcoco:val", None, vocab, 64, blank_language=True)
    assert blind[0]["tokens"].tolist() == [UNK_ID]
    with pytest.raises(ValueError, match="allowed splits"):
        ReferDataset(refer_root, "refcoco", "test", vocab, 64)


def test_dataset_file_problems(tmp_path: Path, refer_root: Path) -> None:
    from PIL import Image

    from step_ris.data.dataset import ReferDataset
    from step_ris.text import Vocabulary

    root = tmp_path / "data"
    shutil.copytree(refer_root, root)
    vocab = Vocabulary(["the"])
    ds = ReferDataset(root, "refcoco", "val", vocab, 32)
    path = ds.image_path(0)
    # an image whose stored grid is transposed and whose EXIF says so is accepted
    h, w = ds.orig_hw(0)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.new("RGB", (h, w)).save(path, exif=exif)
    assert ds[0]["image"].shape == (3, 32, 32)
    Image.new("RGB", (10, 10)).save(path, format="JPEG")  # wrong size
    with pytest.raises(DataError, match="does not belong"):
        ds[0]
    path.unlink()
    with pytest.raises(DataError, match=f"image file not found: {path}"):
        ds[0]
    with pytest.raises(DataError, match="1 of 1 images .* missing"):
        ReferDataset(root, "refcoco", "val", vocab, 32)
