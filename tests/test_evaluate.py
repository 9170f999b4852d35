"""The evaluator: grouped by image (one encoding per image) it scores exactly what the per-sample path scores."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from step_ris.cli import main
from step_ris.config import get_preset
from step_ris.data.dataset import ReferDataset, build_vocab
from step_ris.data.shapesref import generate_shapesref
from step_ris.engine import evaluate as ev
from step_ris.engine.evaluate import evaluate, image_groups, subset_indices
from step_ris.engine.features import FeatureCache
from step_ris.model import build_model
from tiny_model import shared_tiny


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run fastest on one thread (and do not fight a busy machine for cores)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("eval") / "sr"
    generate_shapesref(root, images=12, seed=7, size=64, progress=False)
    return root


def _model_and_dataset(root: Path, dataset: str = "shapesref", split: str = "train", frozen: bool = False):
    cfg = get_preset("tiny")
    vocab = build_vocab(root, dataset, "train")
    torch.manual_seed(0)
    model = build_model(cfg.model, len(vocab), load_backbone_weights=False).eval()
    data = ReferDataset(root, dataset, split, vocab, cfg.model.image_size)
    cache = FeatureCache(model.visual.backbone, data, batch_size=4, progress=False) if frozen else None
    return model, data, cache


class _Probabilities:
    """Records every sample's letterboxed probability map as the evaluator scores it."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch):
        self.runs: list[dict[int, torch.Tensor]] = []
        real = ev._Scorer.score
        record = self

        def spy(scorer, position, index, prob, valid_hw, family):
            if not record.runs or record.runs[-1].get("scorer") is not scorer:
                record.runs.append({"scorer": scorer})
            assert prob.dtype == torch.float32
            record.runs[-1][index] = prob.clone()
            return real(scorer, position, index, prob, valid_hw, family)

        monkeypatch.setattr(ev._Scorer, "score", spy)

    def maps(self, run: int) -> dict[int, torch.Tensor]:
        return {k: v for k, v in self.runs[run].items() if k != "scorer"}


def test_image_groups_keep_the_sample_order(shapes):
    _, data, _ = _model_and_dataset(shapes)
    indices = subset_indices(len(data), 20, seed=1)
    groups = image_groups(data, indices)
    assert sorted(i for g in groups for i in g) == indices
    for g in groups:
        assert g == sorted(g) and len({data.meta(i)["image_id"] for i in g}) == 1
    firsts = [g[0] for g in groups]
    assert firsts == sorted(firsts)  # images in order of their first sample


@pytest.mark.parametrize("source", ["shapesref", "refer", "frozen-cache"])
def test_grouped_scores_equal_the_per_sample_path_at_batch_1(source, shapes, generated_refer, monkeypatch):
    """Batch 1 on both paths: the same computation, so the same bits and the same metrics."""
    if source == "refer":  # letterboxed photos (640x360, 640x427), crowd regions
        model, data, cache = _model_and_dataset(generated_refer, "refcoco", "train")
    else:
        model, data, cache = _model_and_dataset(shapes, frozen=source == "frozen-cache")
    probs = _Probabilities(monkeypatch)
    kw = dict(batch_size=1, limit=16, progress=False, cache=cache)
    evaluate(model, data, **kw, references=False)
    median = float(torch.stack(list(probs.maps(0).values())).median())
    monkeypatch.setattr(ev, "THRESHOLD", median)  # an untrained model is below 0.5 everywhere
    grouped = evaluate(model, data, **kw, per_sample=True)
    single = evaluate(model, data, **kw, per_sample=True, group_by_image=False)
    indices = subset_indices(len(data), 16)
    a, b = probs.maps(1), probs.maps(2)
    assert sorted(a) == sorted(b) == indices
    assert all(torch.equal(a[i], b[i]) for i in a)
    assert grouped == single
    assert 0.0 < grouped["oIoU"] < 1.0 and grouped["n"] == len(indices)
    if source != "refer":
        assert grouped["by_family"] and grouped["references"]["all objects"]["n"] == len(indices)
    assert [r["index"] for r in grouped["samples"]] == indices  # sample order, not image order


@pytest.mark.parametrize("frozen", [False, True])
def test_grouped_scores_equal_the_per_sample_path_at_batch_4(frozen, shapes, monkeypatch):
    """Batched, the paths round differently (batched convolutions, padding) by ~1e-7; with no pixel that
    close to the threshold, every sample's counts and every metric are the same."""
    model, data, cache = _model_and_dataset(shapes, frozen=frozen)
    probs = _Probabilities(monkeypatch)
    kw = dict(batch_size=4, limit=24, progress=False, cache=cache, per_sample=True)
    plain = evaluate(model, data, **kw)
    evaluate(model, data, **kw, group_by_image=False)
    a, b = probs.maps(0), probs.maps(1)
    assert a.keys() == b.keys() and len(a) == 24
    assert max(float((a[i] - b[i]).abs().max()) for i in a) < 1e-5
    # the threshold: the middle of the widest gap between the two runs' probabilities (60th-95th percentile)
    values = np.unique(torch.stack([*a.values(), *b.values()]).numpy())
    middle = values[int(0.6 * len(values)): int(0.95 * len(values))]
    k = int(np.argmax(np.diff(middle)))
    monkeypatch.setattr(ev, "THRESHOLD", float(middle[k] + middle[k + 1]) / 2)
    grouped = evaluate(model, data, **kw)
    single = evaluate(model, data, **kw, group_by_image=False)
    assert grouped == single
    assert grouped["mIoU"] > 0.0 and grouped["by_family"] and grouped["references"]
    assert plain["oIoU"] == 0.0  # at 0.5 the untrained model predicts nothing (why the threshold moves)


def test_each_image_is_decoded_and_encoded_once(shapes, monkeypatch):
    model, data, _ = _model_and_dataset(shapes)
    calls = {"encode": 0, "getitem": 0}
    encoded: list[int] = []  # images per encode call
    real_encode, real_getitem = model.encode, ReferDataset.__getitem__

    def encode(*args, **kwargs):
        calls["encode"] += 1
        out = real_encode(*args, **kwargs)
        encoded.append(out.batch)
        return out

    def getitem(self, index):
        calls["getitem"] += 1
        return real_getitem(self, index)

    monkeypatch.setattr(model, "encode", encode)
    monkeypatch.setattr(ReferDataset, "__getitem__", getitem)
    indices = subset_indices(len(data), 16, seed=0)
    images = len({data.meta(i)["image_id"] for i in indices})
    assert images < len(indices)
    result = evaluate(model, data, batch_size=1, limit=16, progress=False, references=False)
    assert result["n"] == 16 and calls == {"encode": images, "getitem": images} and set(encoded) == {1}
    calls.update(encode=0, getitem=0)
    encoded.clear()
    evaluate(model, data, batch_size=12, limit=16, progress=False, references=False)
    assert sum(encoded) == images and max(encoded) > 1  # a few images per backbone call, each once
    assert calls["getitem"] == images
    calls.update(encode=0, getitem=0)
    evaluate(model, data, batch_size=2, limit=16, progress=False, references=False, group_by_image=False)
    assert calls["getitem"] == 16  # the per-sample path decodes every sample's image


def test_progress_bar_counts_images_and_expressions(shapes, monkeypatch):
    model, data, _ = _model_and_dataset(shapes)
    bars = []

    class Bar(ev.tqdm):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.postfixes = []
            bars.append(self)

        def set_postfix(self, *args, **kwargs):
            self.postfixes.append(kwargs)
            return super().set_postfix(*args, **kwargs)

    monkeypatch.setattr(ev, "tqdm", Bar)
    evaluate(model, data, batch_size=3, limit=25, progress=True, references=False)
    indices = subset_indices(len(data), 25, 0)
    groups = image_groups(data, indices)
    (bar,) = bars
    assert bar.total == len(groups) and bar.unit == "img" and bar.n == len(groups)
    assert [p["expressions"] for p in bar.postfixes] == list(np.cumsum([len(g) for g in groups]))  # per image


def test_bf16_outputs_float32_probabilities_close_to_fp32(shapes, monkeypatch):
    model, data, _ = _model_and_dataset(shapes)
    probs = _Probabilities(monkeypatch)  # asserts float32 maps
    fp32 = evaluate(model, data, batch_size=4, limit=12, progress=False)
    bf16 = evaluate(model, data, batch_size=4, limit=12, progress=False, precision="bf16")
    legacy = evaluate(model, data, batch_size=4, limit=12, progress=False, amp=True)  # the older spelling
    assert (fp32["precision"], bf16["precision"], legacy["precision"]) == ("fp32", "bf16", "bf16")
    a, b = probs.maps(0), probs.maps(1)
    assert max(float((a[i] - b[i]).abs().max()) for i in a) < 0.02
    assert bf16["n"] == fp32["n"] == 12
    with pytest.raises(ValueError, match="precision='fp16'"):
        evaluate(model, data, progress=False, precision="fp16")


def test_eval_command_precision_threads_and_json(tmp_path_factory, tmp_path, capsys):
    tiny = shared_tiny(tmp_path_factory)
    out = tmp_path / "r.json"
    assert main(["eval", "--checkpoint", str(tiny["checkpoint"]), "--dataset", "shapesref", "--root",
                 str(tiny["root"] / "sr"), "--split", "val", "--precision", "bf16", "--threads", "1",
                 "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["precision"] == "bf16" and r["seconds"] > 0 and r["n"] > 0
    assert main(["eval", "--checkpoint", str(tiny["checkpoint"]), "--dataset", "shapesref", "--root",
                 str(tiny["root"] / "sr"), "--split", "val", "--batch-size", "0", "--quiet"]) == 2
    assert "--batch-size 0 must be >= 1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["eval", "--checkpoint", "x", "--dataset", "shapesref", "--root", ".", "--split", "val",
              "--precision", "fp16"])


def test_explicit_indices_are_scored_in_their_order(shapes):
    model, data, _ = _model_and_dataset(shapes)
    chosen = [9, 2, 30, 3]
    result = evaluate(model, data, batch_size=2, progress=False, references=False, per_sample=True, indices=chosen)
    assert [r["index"] for r in result["samples"]] == chosen and result["n"] == 4
    same = evaluate(model, data, batch_size=2, progress=False, references=False, per_sample=True,
                    indices=chosen, group_by_image=False)
    assert same == result
    for bad, what in (([0, len(data)], "out of range"), ([1, 1], "repeats"), ([], "none")):
        with pytest.raises(ValueError, match=what):
            evaluate(model, data, progress=False, indices=bad)


def test_images_decoded_in_a_worker_give_the_same_scores(shapes):
    model, data, _ = _model_and_dataset(shapes)
    kw = dict(batch_size=4, limit=10, progress=False, per_sample=True)
    assert evaluate(model, data, **kw, workers=1) == evaluate(model, data, **kw)


def test_a_saved_feature_cache_is_used_memory_mapped(shapes, tmp_path):
    """Once written, the cache is read back from its file (mapped, so the OS can reclaim the pages of a
    large set) with exactly the values computed, and a second run loads it instead of recomputing."""
    model, data, in_memory = _model_and_dataset(shapes, frozen=True)
    path = tmp_path / "features.pt"
    cache = FeatureCache(model.visual.backbone, data, batch_size=4, progress=False, cache_file=path)
    maps = Path("/proc/self/maps")
    if maps.is_file():
        assert str(path) in maps.read_text()
    assert all(torch.equal(a, b) for a, b in zip(cache.levels, in_memory.levels, strict=True))
    assert torch.equal(cache.valid_hw, in_memory.valid_hw) and cache.rows == in_memory.rows

    class Refuse(torch.nn.Module):
        def forward(self, images):
            raise AssertionError("the saved cache should have been loaded")

    again = FeatureCache(Refuse(), data, batch_size=4, progress=False, cache_file=path)
    assert all(torch.equal(a, b) for a, b in zip(again.levels, in_memory.levels, strict=True))


def test_the_cache_feeds_the_backbone_channels_last_with_the_same_taps(shapes):
    """The default build (8 images a call, NHWC input: scripts/bench_cache.py) gives the taps of an
    NCHW build of 32 images a call, to float rounding, and it really hands the backbone NHWC images."""
    model, data, _ = _model_and_dataset(shapes, frozen=True)
    seen = []
    hook = model.visual.backbone.register_forward_pre_hook(
        lambda _m, args: seen.append((len(args[0]), args[0].is_contiguous(memory_format=torch.channels_last))))
    fast = FeatureCache(model.visual.backbone, data, progress=False)
    hook.remove()
    plain = FeatureCache(model.visual.backbone, data, batch_size=32, channels_last=False, progress=False)
    assert seen and all(nhwc for _, nhwc in seen) and max(n for n, _ in seen) == 8
    for a, b in zip(fast.levels, plain.levels, strict=True):
        torch.testing.assert_close(a.float(), b.float(), rtol=2e-3, atol=2e-3)
    assert torch.equal(fast.valid_hw, plain.valid_hw) and fast.rows == plain.rows
