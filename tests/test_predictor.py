"""Shipped model folders, the Predictor and the pictures: shapes, batching, every bad input."""

from __future__ import annotations

import io
import json
import logging
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from step_ris.config import get_preset
from step_ris.data.transforms import valid_extent
from step_ris.predictor import Predictor
from step_ris.pretrained import bundled_models, export_pretrained, load_pretrained
from step_ris.visualize import caption, explain_figure, mask_image, overlay
from tiny_model import bomb_png, shared_tiny


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return shared_tiny(tmp_path_factory)


@pytest.fixture(scope="module")
def predictor(tiny):
    return Predictor.from_pretrained(tiny["model"])


def scene(tiny, size=None) -> Image.Image:
    """A ShapesRef scene, optionally resized to (W, H)."""
    im = Image.open(tiny["image"]).convert("RGB")
    return im.resize(size, Image.BILINEAR) if size else im


# ----------------------------------------------------------------------------- model folders


def test_model_folder_has_its_files_and_matches_the_checkpoint(tiny):
    folder = tiny["model"]
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json", "model.safetensors",
                                                        "scores.json", "vocab.json"]
    assert json.loads((folder / "config.json").read_text())["name"] == "tiny"
    assert json.loads((folder / "vocab.json").read_text())[:2] == ["<pad>", "<unk>"]
    assert json.loads((folder / "scores.json").read_text())["note"] == "untrained"
    from_folder = load_pretrained(folder)
    from_ckpt = load_pretrained(tiny["checkpoint"])
    from_run = load_pretrained(tiny["root"])  # a run folder: its last.pt
    assert from_folder.config == from_ckpt.config == get_preset("tiny")
    assert from_folder.vocab == from_ckpt.vocab == from_run.vocab
    assert from_folder.scores["oIoU"] == 0.0 and from_ckpt.scores == {}
    a, b = from_folder.model.state_dict(), from_ckpt.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not from_folder.model.training


def test_export_refuses_to_replace_a_folder_unless_asked(tiny, tmp_path):
    out = tmp_path / "m"
    export_pretrained(tiny["checkpoint"], out)
    assert json.loads((out / "scores.json").read_text()) == {}
    with pytest.raises(ValueError, match="already exists"):
        export_pretrained(tiny["checkpoint"], out)
    export_pretrained(tiny["checkpoint"], out, {"oIoU": 0.5}, overwrite=True)
    assert json.loads((out / "scores.json").read_text()) == {"oIoU": 0.5}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]  # no temporary folder left


def test_export_of_a_bad_checkpoint_writes_nothing(tmp_path):
    bad = tmp_path / "last.pt"
    bad.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError, match="last.pt"):
        export_pretrained(bad, tmp_path / "m")
    with pytest.raises(ValueError, match="not found"):
        export_pretrained(tmp_path / "missing.pt", tmp_path / "m")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


def _broken_copy(tiny, tmp_path, name="m"):
    folder = tmp_path / name
    shutil.copytree(tiny["model"], folder)
    return folder


@pytest.mark.parametrize("damage, file, message", [
    ("missing", "model.safetensors", "missing weights"),
    ("missing", "config.json", "missing model config"),
    ("missing", "vocab.json", "missing vocabulary"),
    ("truncate", "model.safetensors", "corrupt or truncated"),
    ("garbage", "config.json", "not valid JSON"),
    ("garbage", "vocab.json", "not valid JSON"),
    ("garbage", "scores.json", "not valid JSON"),
])
def test_damaged_model_folder_names_the_file(tiny, tmp_path, damage, file, message):
    folder = _broken_copy(tiny, tmp_path)
    path = folder / file
    if damage == "missing":
        path.unlink()
    elif damage == "truncate":
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    else:
        path.write_text("{ this is not json")
    with pytest.raises(ValueError, match=message) as err:
        load_pretrained(folder)
    assert file in str(err.value)


def test_config_that_does_not_match_the_weights(tiny, tmp_path):
    folder = _broken_copy(tiny, tmp_path)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["model"]["lstm_hidden"] = 32  # the weights have 16
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="do not match") as err:
        load_pretrained(folder)
    assert "model.safetensors" in str(err.value) and "config.json" in str(err.value)

    folder = _broken_copy(tiny, tmp_path, "m2")
    cfg["model"]["lstm_hidden"] = 16
    cfg["model"]["bogus_key"] = 1
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="config.json.*bogus_key"):
        load_pretrained(folder)

    folder = _broken_copy(tiny, tmp_path, "m3")
    vocab = json.loads((folder / "vocab.json").read_text())
    (folder / "vocab.json").write_text(json.dumps(vocab + ["extra"]))  # one more row than the embedding
    with pytest.raises(ValueError, match="do not match"):
        load_pretrained(folder)


def test_bad_checkpoints_and_names(tiny, tmp_path):
    with pytest.raises(ValueError, match="model not found"):
        load_pretrained(tmp_path / "nothing" / "last.pt")
    with pytest.raises(ValueError, match="no model named 'no-such-model'"):
        load_pretrained("no-such-model")
    corrupt = tmp_path / "corrupt.pt"
    data = tiny["checkpoint"].read_bytes()
    corrupt.write_bytes(data[: len(data) // 3])
    with pytest.raises(ValueError, match="corrupt.pt"):
        load_pretrained(corrupt)
    ckpt = torch.load(tiny["checkpoint"], weights_only=True)
    ckpt["config"]["model"]["filters"] = 4
    torch.save(ckpt, tmp_path / "mismatch.pt")
    with pytest.raises(ValueError, match="mismatch.pt.*do not match"):
        load_pretrained(tmp_path / "mismatch.pt")
    if "shapes-cpu" not in bundled_models():  # until the trained model is bundled
        with pytest.raises(ValueError, match="shapes-cpu.*not installed"):
            load_pretrained("shapes-cpu")


# ----------------------------------------------------------------------------- predictions


@pytest.mark.parametrize("size", [(80, 50), (30, 90), (64, 64), (200, 120)])  # (W, H)
def test_outputs_are_at_the_original_size(tiny, predictor, size):
    pred = predictor.predict(scene(tiny, size), "the big pink hexagon on the left")
    W, H = size
    T = get_preset("tiny").model.steps
    assert pred.mask.shape == pred.probability.shape == (H, W) and pred.mask.dtype == bool
    assert pred.probability.dtype == np.float32 and 0 <= pred.probability.min() <= pred.probability.max() <= 1
    assert np.array_equal(pred.mask, pred.probability >= 0.5)
    assert pred.steps.shape == (T, *valid_extent((H, W), 64))  # input resolution, the image's aspect
    assert pred.attention.shape == pred.similarity.shape == (T, 7)
    assert pred.words == ["the", "big", "pink", "hexagon", "on", "the", "left"]
    assert pred.levels == (0, 1, 2, 3, 4) and pred.expression == "the big pink hexagon on the left"
    assert np.allclose(pred.attention[1:].sum(1), 1, atol=1e-5) and not pred.attention[0].any()
    assert pred.size == (H, W) and 0 <= pred.score <= 1 and pred.unknown_words == [] and not pred.truncated


def test_several_expressions_equal_one_by_one(tiny, predictor):
    image = scene(tiny, (70, 52))
    expressions = ["the blue square", "the big pink hexagon on the left of the thing", "zorglub", "2nd object",
                   "the thing", "little orange shape to the right", "the one on the bottom", "the plus sign",
                   "big diamond"]  # 9 > batch_size: two chunks with padding
    together = predictor.predict(image, expressions)
    assert [p.expression for p in together] == expressions
    for e, p in zip(expressions, together, strict=True):
        alone = predictor.predict(image, e)
        assert p.words == alone.words
        np.testing.assert_allclose(p.probability, alone.probability, atol=1e-5)
        np.testing.assert_allclose(p.steps, alone.steps, atol=1e-5)
        np.testing.assert_allclose(p.attention, alone.attention, atol=1e-5)
        np.testing.assert_allclose(p.similarity, alone.similarity, atol=1e-5)
        assert np.array_equal(p.mask, alone.mask) or np.abs(alone.probability - 0.5).min() < 1e-5


def test_compiled_expression_path_gives_the_eager_answer(tiny, predictor):
    if shutil.which("c++") is None and shutil.which("g++") is None:
        pytest.skip("torch.compile on a CPU needs a C++ compiler, and this machine has none")
    compiled = Predictor.from_pretrained(tiny["model"], compile=True)
    assert compiled.compiled and compiled._expression_net is not compiled.model and not predictor.compiled
    image = compiled.encode(scene(tiny))
    expressions = ["the blue square", "the big pink hexagon on the left of the thing"]  # two lengths, padding
    from torch._dynamo.utils import counters

    counters.clear()
    eager = predictor.predict(scene(tiny), expressions)
    for got, want in zip(compiled.predict(image, expressions), eager, strict=True):
        np.testing.assert_allclose(got.probability, want.probability, atol=1e-5)
        np.testing.assert_allclose(got.steps, want.steps, atol=1e-5)
        np.testing.assert_allclose(got.attention, want.attention, atol=1e-5)
    assert counters["stats"]["calls_captured"] > 0  # the expressions did run through torch.compile


def test_every_kind_of_image_input_gives_the_same_answer(tiny, predictor, tmp_path):
    path = tiny["image"]
    expected = predictor.predict(path, "the blue thing").probability
    rgb = np.asarray(Image.open(path).convert("RGB"))
    for source in (str(path), path.read_bytes(), Image.open(path), rgb):
        np.testing.assert_allclose(predictor.predict(source, "the blue thing").probability, expected, atol=1e-6)


def _save(image: Image.Image, path, **kw):
    image.save(path, **kw)
    return path


@pytest.mark.parametrize("mode", ["L", "CMYK", "RGBA", "LA", "P", "I;16", "1"])
def test_image_modes(tiny, predictor, tmp_path, mode):
    base = scene(tiny, (48, 36))
    if mode == "I;16":
        grey = (np.asarray(base.convert("L"), dtype=np.uint16) * 257)
        image = Image.fromarray(grey)  # 16-bit grey
        assert image.mode.startswith("I;16")
    else:
        image = base.convert(mode)
    path = _save(image, tmp_path / ("x.tif" if mode == "CMYK" else "x.png"))
    pred = predictor.predict(path, "the blue thing")
    assert pred.mask.shape == (36, 48)


def test_exif_orientation_is_applied(tiny, predictor, tmp_path):
    image = scene(tiny, (60, 40))  # stored 60 wide, 40 high
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    path = _save(image, tmp_path / "rotated.jpg", exif=exif, quality=95)
    pred = predictor.predict(path, "the blue thing")
    assert pred.mask.shape == (60, 40)  # as displayed: 40 wide, 60 high


def test_unreadable_images_give_clear_errors(tiny, predictor, tmp_path):
    data = tiny["image"].read_bytes()
    cut = tmp_path / "cut.png"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="cut.png.*(truncated|decode|corrupt)"):
        predictor.predict(cut, "the blue thing")
    text = tmp_path / "notes.png"
    text.write_text("hello, I am not an image")
    with pytest.raises(ValueError, match="notes.png: not an image"):
        predictor.predict(text, "the blue thing")
    with pytest.raises(ValueError, match="missing.png: image file not found"):
        predictor.predict(tmp_path / "missing.png", "the blue thing")
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(bomb_png(50_000, 50_000))
    with pytest.raises(ValueError, match="bomb.png.*decompression bomb"):
        predictor.predict(bomb, "the blue thing")
    with pytest.raises(ValueError, match="empty input"):
        predictor.predict(b"", "the blue thing")
    with pytest.raises(ValueError, match="not an image"):
        predictor.predict(np.zeros((4, 4, 7), np.uint8), "the blue thing")


@pytest.mark.parametrize("expression, message", [
    ("", "empty"),
    ("   \t\n ", "empty"),
    ("?!.. ---", "no words the model can read"),
    ("红色的圆", "no words the model can read"),
    (None, "must be a string"),
])
def test_bad_expressions(tiny, predictor, expression, message):
    with pytest.raises(ValueError, match=message):
        predictor.predict(tiny["image"], expression)


def test_a_bad_expression_in_a_list_is_named_by_position(tiny, predictor):
    with pytest.raises(ValueError, match="expression 2 of 3: the expression is empty"):
        predictor.predict(tiny["image"], ["the blue thing", " ", "the pink thing"])
    with pytest.raises(ValueError, match="no expressions"):
        predictor.predict(tiny["image"], [])


def test_unknown_long_and_accented_expressions(tiny, predictor, caplog):
    with caplog.at_level(logging.WARNING, logger="step_ris.predictor"):
        pred = predictor.predict(tiny["image"], "zorglub flarp zorglub")
    assert pred.unknown_words == ["zorglub", "flarp"] and pred.mask.shape == (64, 64)
    assert "none of the words" in caplog.text
    caplog.clear()

    long = " ".join(["the blue thing"] * 9)  # 27 words
    with caplog.at_level(logging.WARNING, logger="step_ris.predictor"):
        pred = predictor.predict(tiny["image"], long)
    assert pred.truncated and len(pred.words) == 20 and pred.attention.shape[1] == 20
    assert "27 words; only the first 20" in caplog.text

    pred = predictor.predict(tiny["image"], "THE Blüe thíng, à gauche!")
    assert pred.words == ["the", "blue", "thing", "a", "gauche"]
    assert pred.unknown_words == [w for w in ("a", "gauche") if w not in predictor.vocab]


def test_threshold_and_summary(tiny):
    low = Predictor.from_pretrained(tiny["model"], threshold=0.05)
    pred = low.predict(tiny["image"], "the blue thing")
    assert pred.mask.all() and pred.threshold == 0.05 and pred.score > 0.05
    summary = pred.summary()
    assert json.loads(json.dumps(summary))["area"] == 1.0
    with pytest.raises(ValueError, match="threshold"):
        Predictor.from_pretrained(tiny["model"], threshold=1.5)


# ----------------------------------------------------------------------------- pictures


def test_overlay_and_mask_image(tiny):
    image = np.asarray(scene(tiny, (40, 30)))
    mask = np.zeros((30, 40), bool)
    mask[5:20, 10:30] = True
    out = overlay(image, mask, color=(0, 255, 0), alpha=0.5)
    assert out.shape == (30, 40, 3) and out.dtype == np.uint8
    assert np.array_equal(out[~mask], image[~mask])  # untouched outside
    assert tuple(out[5, 15]) == (0, 255, 0)  # outline in the mask colour
    inner = (image[10, 20].astype(int) + np.array([0, 255, 0])) / 2
    assert np.abs(out[10, 20].astype(int) - inner).max() <= 1
    with pytest.raises(ValueError, match="does not match"):
        overlay(image, np.zeros((10, 10), bool))
    grey = mask_image(mask)
    assert grey.mode == "L" and set(np.unique(np.asarray(grey))) == {0, 255}


@pytest.mark.parametrize("view", ["attention", "similarity"])
def test_explain_figure(tiny, predictor, view):
    image = scene(tiny, (96, 60))
    pred = predictor.predict(image, "the big pink hexagon zorglub")
    figure = explain_figure(pred, image, view=view)
    assert figure.mode == "RGB" and figure.width > 600 and figure.height > 250
    assert len(np.unique(np.asarray(figure).reshape(-1, 3), axis=0)) > 50  # something was drawn
    text = caption(pred, view)
    if view == "attention":
        assert "α_t of Eq. 1" in text and "Step 1: s_t is the final biLSTM state" in text
    else:
        assert "cosine similarity of s_t" in text and "Figure 4" in text
    with pytest.raises(ValueError, match="same image"):
        explain_figure(pred, scene(tiny, (20, 20)), view=view)
    with pytest.raises(ValueError, match="view="):
        explain_figure(pred, image, view="saliency")
    buf = io.BytesIO()
    figure.save(buf, format="PNG")
    assert Image.open(io.BytesIO(buf.getvalue())).size == figure.size


# ----------------------------------------------------------------------------- image sessions (encode once)


def test_encoded_image_equals_a_full_forward(tiny, predictor):
    from step_ris.data.transforms import letterbox_image, unletterbox
    from step_ris.predictor import EncodedImage

    image = scene(tiny, (90, 52))
    encoded = predictor.encode(image)
    assert isinstance(encoded, EncodedImage)
    assert encoded.size == (52, 90) and encoded.valid_hw == valid_extent((52, 90), 64) and encoded.image_size == 64
    assert encoded.scale == 64 / 90
    expressions = ["the blue square", "the big pink hexagon on the left of the thing", "zorglub", "2nd object",
                   "the thing", "little orange shape to the right", "the one on the bottom", "the plus sign",
                   "big diamond"]  # more than batch_size: two chunks over one encoding
    from_encoded = predictor.predict(encoded, expressions)
    for e, p in zip(expressions, from_encoded, strict=True):
        full = predictor.predict(image, e)  # decodes and encodes the image again
        assert np.abs(p.probability - full.probability).max() < 1e-5
        np.testing.assert_allclose(p.steps, full.steps, atol=1e-5)
        np.testing.assert_allclose(p.attention, full.attention, atol=1e-5)
        assert p.words == full.words
    # and the plain model forward from the letterboxed pixels, no precomputed features at all
    rgb = predictor.load(image)
    tensor, (h, w) = letterbox_image(rgb, 64)
    for e, p in zip(expressions[:3], from_encoded[:3], strict=True):
        tokens = torch.tensor([predictor.prepare(e).ids])
        with torch.no_grad():
            logits = predictor.model(tensor.unsqueeze(0), tokens, torch.tensor([[h, w]])).logits
        want = unletterbox(torch.sigmoid(logits)[:, 0], (h, w), (52, 90))[0].clamp(0, 1).numpy()
        assert np.abs(p.probability - want).max() < 1e-5
    assert predictor.predict(encoded, "the blue square").mask.shape == (52, 90)  # reusable, nothing consumed


def test_encoding_is_stateless_and_tied_to_its_model(tiny, predictor):
    a, b = scene(tiny, (64, 40)), scene(tiny, (40, 64))
    enc_a = predictor.encode(a)
    enc_b = predictor.encode(b)  # encoding b does not replace a
    np.testing.assert_allclose(predictor.predict(enc_a, "the blue thing").probability,
                               predictor.predict(a, "the blue thing").probability, atol=1e-5)
    assert predictor.predict(enc_b, "the blue thing").mask.shape == (64, 40)
    assert predictor.encode(enc_a) is enc_a
    other = Predictor.from_pretrained(tiny["model"])
    with pytest.raises(ValueError, match="another predictor"):
        other.predict(enc_a, "the blue thing")
    with pytest.raises(ValueError, match="not an image"):
        predictor.encode(np.zeros((4, 4, 7), np.uint8))
    with pytest.raises(ValueError, match="EncodedImage"):
        predictor.predict_prepared("scene.png", [predictor.prepare("the blue thing")])
