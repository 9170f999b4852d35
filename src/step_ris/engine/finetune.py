"""Fine-tuning from a trained model (``train.init_from``, ``step-ris train --init-from``).

The run takes the init's architecture, weights and word ids; words of the new training split
that the init lacks get new rows (docs/data.md, "Starting from a trained model").
"""

from __future__ import annotations

import dataclasses
import logging

import torch

from ..config import ExperimentConfig
from ..text import Vocabulary
from .errors import TrainingError

log = logging.getLogger(__name__)


def load_init(cfg: ExperimentConfig):
    """The model ``train.init_from`` names, and ``cfg`` with that model's architecture.

    Fine-tuning keeps the model as it is: the run's ``model`` section becomes the init's, except
    that ``model.match_head=true`` in the run adds a (fresh) no-target head. Anything else the run
    asked for differently is logged, not silently dropped.
    """
    from ..pretrained import load_pretrained

    try:
        init = load_pretrained(cfg.train.init_from)
    except ValueError as e:
        raise TrainingError(f"train.init_from={cfg.train.init_from!r}: {e}") from None
    model_cfg = dataclasses.replace(init.config.model, match_head=init.config.model.match_head or cfg.model.match_head)
    differ = [f.name for f in dataclasses.fields(model_cfg)
              if getattr(model_cfg, f.name) != getattr(cfg.model, f.name)]
    if differ:
        log.info("train.init_from: the model config is %s's (differs from the run's in %s)",
                 cfg.train.init_from, ", ".join(differ))
    return init, dataclasses.replace(cfg, model=model_cfg)


def extend_vocab(base: Vocabulary, data: Vocabulary) -> Vocabulary:
    """``base``'s words with their ids, then the words of ``data`` it lacks (new rows, learned)."""
    new = [w for w in data.itos[2:] if w not in base]
    if new:
        log.info("train.init_from: %d new word(s) in the training data: %s", len(new), ", ".join(new[:20]))
    return Vocabulary(base.itos[2:] + new)


@torch.no_grad()
def init_weights(model: torch.nn.Module, init: torch.nn.Module, source: str) -> None:
    """Copy ``init``'s weights into ``model`` (same architecture, a vocabulary that extends the
    init's, maybe a new match head): word rows by id, every other tensor whole."""
    own, theirs = model.state_dict(), init.state_dict()
    fresh = [k for k in own if k not in theirs]
    if any(not k.startswith("match.") for k in fresh):
        raise TrainingError(f"train.init_from={source!r}: its weights lack {fresh[:3]}; not the same architecture")
    for key, value in theirs.items():
        target = own.get(key)
        if target is None:
            raise TrainingError(f"train.init_from={source!r}: the run's model has no {key}; not the same architecture")
        if target.shape == value.shape:
            target.copy_(value)
        elif key.startswith("language.words.") and target.shape[1:] == value.shape[1:] \
                and target.shape[0] > value.shape[0]:
            target[: value.shape[0]].copy_(value)  # the init's words keep their ids; new words stay as built
        else:
            raise TrainingError(f"train.init_from={source!r}: {key} has shape {tuple(value.shape)}, the run "
                                f"needs {tuple(target.shape)}")
