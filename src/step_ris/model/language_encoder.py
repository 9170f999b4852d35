"""Textual representation (Sec. 3.2): word vectors + a one-layer biLSTM.

``h_j`` is the concatenation of both directions at word ``j`` (2 x 1000 = 2000-d in the paper).
Padding (id 0) is never seen by the LSTM (packed sequences), so a padded batch gives the
same states as each expression run alone. The "no GloVe-biLSTM" ablation is
``bidirectional=False`` with learned (randomly initialised) word embeddings.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

PAD_ID = 0
UNK_ID = 1


@dataclass
class TextFeatures:
    states: torch.Tensor  # (B, L, D) h_j, zero at padding
    final: torch.Tensor  # (B, D) last forward state (+) first backward state
    mask: torch.Tensor  # (B, L) True at real words


class WordEmbedding(nn.Module):
    """Word vectors: learned, or fixed pretrained vectors with one learned UNK vector.

    Args:
        vocab_size: number of ids (0 = padding, 1 = unknown).
        dim: vector size.
        pretrained: optional ``(vocab_size, dim)`` matrix (e.g. GloVe); rows are kept fixed,
            except the UNK row and rows of words the vectors do not cover (``known`` False),
            which are all mapped to the one learned UNK vector.
        known: ``(vocab_size,)`` bool, which rows of ``pretrained`` are real vectors.
    """

    def __init__(self, *, vocab_size: int, dim: int, pretrained: torch.Tensor | None = None,
                 known: torch.Tensor | None = None):
        super().__init__()
        self.pretrained = pretrained is not None
        if pretrained is None:
            self.embedding = nn.Embedding(vocab_size, dim, padding_idx=PAD_ID)
        else:
            if pretrained.shape != (vocab_size, dim):
                raise ValueError(f"pretrained vectors must be ({vocab_size}, {dim}), got {tuple(pretrained.shape)}")
            known = torch.ones(vocab_size, dtype=torch.bool) if known is None else known.bool()
            known = known.clone()
            known[PAD_ID] = known[UNK_ID] = False
            self.register_buffer("vectors", pretrained.float().clone())
            self.register_buffer("known", known)
            self.unk = nn.Parameter(torch.randn(dim) * 0.1)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens: (B, L) int64 -> (B, L, dim)."""
        if not self.pretrained:
            return self.embedding(tokens)
        vectors = self.vectors[tokens]  # (B, L, dim)
        is_unk = ~self.known[tokens] & (tokens != PAD_ID)
        vectors = torch.where(is_unk.unsqueeze(-1), self.unk.to(vectors.dtype).expand_as(vectors), vectors)
        return vectors * (tokens != PAD_ID).unsqueeze(-1)


class LanguageEncoder(nn.Module):
    """Word vectors + (bi)LSTM. ``out_dim`` = hidden x (2 if bidirectional else 1)."""

    def __init__(self, *, words: WordEmbedding, word_dim: int, hidden: int, bidirectional: bool = True):
        super().__init__()
        self.words = words
        self.bidirectional = bidirectional
        self.lstm = nn.LSTM(word_dim, hidden, num_layers=1, batch_first=True, bidirectional=bidirectional)
        self.out_dim = hidden * (2 if bidirectional else 1)

    def forward(self, tokens: torch.Tensor) -> TextFeatures:
        """tokens: (B, L) int64, 0 = padding, at least one word each -> TextFeatures."""
        if tokens.dim() != 2:
            raise ValueError(f"tokens must have shape (B, L), got {tuple(tokens.shape)}")
        mask = tokens != PAD_ID  # (B, L)
        lengths = mask.sum(1)
        if (lengths == 0).any():
            bad = (lengths == 0).nonzero().flatten().tolist()
            raise ValueError(f"empty token sequence at batch index {bad}: every expression needs >= 1 word")
        # The LSTM runs in its weights' dtype (float32) even under autocast: CUDA autocast would run
        # cuDNN's LSTM in fp16 whatever dtype was asked for, and bf16 training uses no gradient
        # scaler. (A copy with bf16 weights runs it in bf16: scripts/bench_predict.py --bf16-weights.)
        embedded = self.words(tokens).to(self.lstm.weight_ih_l0.dtype)  # (B, L, word_dim)
        with torch.autocast(tokens.device.type, enabled=False):
            states, final = self._run_lstm(embedded, lengths, tokens.shape[1])
        return TextFeatures(states=states, final=final, mask=mask)

    def _run_lstm(self, embedded: torch.Tensor, lengths: torch.Tensor, total: int):
        if bool((lengths == total).all()):
            # No padding: packing changes nothing, and the plain call also exports to ONNX.
            states, (h_n, _) = self.lstm(embedded)  # (B, L, D)
        else:
            packed = pack_padded_sequence(embedded, lengths.cpu(), batch_first=True, enforce_sorted=False)
            out, (h_n, _) = self.lstm(packed)
            states, _ = pad_packed_sequence(out, batch_first=True, total_length=total)  # (B, L, D)
        # h_n: (directions, B, hidden); forward final = state at the last word, backward final
        # = state at the first word.
        return states, torch.cat(list(h_n), dim=-1)  # (B, L, D), (B, D)
