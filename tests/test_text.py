import pytest

from step_ris.text import PAD_ID, UNK_ID, Vocabulary, tokenize


def test_tokenize_like_refer():
    assert tokenize("The man, on the LEFT!") == ["the", "man", "on", "the", "left"]
    assert tokenize("2nd guy from right") == ["2nd", "guy", "from", "right"]


def test_tokenize_folds_accents_and_splits_on_other_symbols():
    assert tokenize("café naïve") == ["cafe", "naive"]
    assert tokenize("red—circle 日本 blue") == ["red", "circle", "blue"]
    assert tokenize("   ") == []
    with pytest.raises(ValueError, match="must be a string"):
        tokenize(None)


def test_vocabulary_encode_decode_and_limits(tmp_path):
    vocab = Vocabulary.from_sentences(["red circle", "blue circle", "red square"])
    assert vocab.itos[:2] == ["<pad>", "<unk>"] and vocab.itos[2] == "circle"  # most frequent first
    ids = vocab.encode("red zebra circle")
    assert ids[1] == UNK_ID and PAD_ID not in ids
    assert vocab.decode(ids) == ["red", "<unk>", "circle"]
    assert len(vocab.encode(" ".join(["red"] * 30))) == 20
    with pytest.raises(ValueError, match="has no words"):
        vocab.encode("  !! ")
    vocab.save(tmp_path / "v.json")
    assert Vocabulary.load(tmp_path / "v.json") == vocab
    (tmp_path / "bad.json").write_text('["a", "b"]')
    with pytest.raises(ValueError, match="not a step-ris vocabulary"):
        Vocabulary.load(tmp_path / "bad.json")
