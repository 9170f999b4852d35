"""Text side of the data: the REFER tokenizer and the word vocabulary.

Tokenisation follows the REFER toolkit (lower-case, words of ``[a-z0-9]``); the paper keeps
the first 20 words of each sentence (Sec. 3.2). Ids: 0 is padding, 1 is the unknown word.
"""

from __future__ import annotations

import json
import logging
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

log = logging.getLogger(__name__)

PAD, UNK = "<pad>", "<unk>"
PAD_ID, UNK_ID = 0, 1
MAX_WORDS = 20

_WORD = re.compile(r"[a-z0-9]+")


def tokenize(sentence: str) -> list[str]:
    """Split a referring expression into REFER-style tokens.

    Accents are folded to ASCII ("café" -> "cafe"); anything that is not a letter or a digit
    separates words.
    """
    if not isinstance(sentence, str):
        raise ValueError(f"expression must be a string, got {type(sentence).__name__}")
    decomposed = unicodedata.normalize("NFKD", sentence)
    # drop accents (combining marks); any other non-ASCII character separates words ("red—circle")
    folded = "".join(c if ord(c) < 128 else ("" if unicodedata.combining(c) else " ") for c in decomposed)
    return _WORD.findall(folded.lower())


class Vocabulary:
    """Word <-> id map with ``<pad>`` = 0 and ``<unk>`` = 1."""

    def __init__(self, words: Iterable[str]):
        self.itos: list[str] = [PAD, UNK]
        for w in words:
            if w not in (PAD, UNK):
                self.itos.append(w)
        self.stoi = {w: i for i, w in enumerate(self.itos)}
        if len(self.stoi) != len(self.itos):
            raise ValueError("vocabulary words must be unique")

    @classmethod
    def from_sentences(cls, sentences: Iterable[str], min_count: int = 1) -> Vocabulary:
        """Build from raw sentences; words sorted by count (desc) then alphabetically."""
        counts = Counter(t for s in sentences for t in tokenize(s))
        words = sorted((w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w))
        return cls(words)

    def __len__(self) -> int:
        return len(self.itos)

    def __contains__(self, word: str) -> bool:
        return word in self.stoi

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocabulary) and self.itos == other.itos

    def encode(self, sentence: str, max_words: int = MAX_WORDS, *, warn: bool = False) -> list[int]:
        """Token ids of ``sentence`` (first ``max_words`` tokens). Raises on an empty expression."""
        tokens = tokenize(sentence)
        if not tokens:
            raise ValueError(
                f"expression {sentence!r} has no words (letters or digits); type what to segment, "
                "e.g. 'the red circle on the left'"
            )
        if len(tokens) > max_words:
            if warn:
                log.warning("expression has %d words; only the first %d are used", len(tokens), max_words)
            tokens = tokens[:max_words]
        return [self.stoi.get(t, UNK_ID) for t in tokens]

    def decode(self, ids: Iterable[int]) -> list[str]:
        return [self.itos[i] for i in ids if i != PAD_ID]

    def to_list(self) -> list[str]:
        return list(self.itos)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.itos))

    @classmethod
    def load(cls, path: str | Path) -> Vocabulary:
        itos = json.loads(Path(path).read_text())
        if itos[:2] != [PAD, UNK]:
            raise ValueError(f"{path}: not a step-ris vocabulary (must start with {PAD!r}, {UNK!r})")
        return cls(itos[2:])
