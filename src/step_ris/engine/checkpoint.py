"""Checkpoints: written atomically, read with ``weights_only`` semantics (no code runs).

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts:
``{"format": 1, "config": {...}, "vocab": [...], "model": state_dict, "step": int, ...}``
plus, for training runs, the optimiser, RNG states and metrics.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any

import torch

from ..fileio import atomic_write

FORMAT = 1


def atomic_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` to a temporary file in the same folder, then rename: never a half-written file.

    Stale temporary files of interrupted saves in that folder are removed (``fileio``).
    """
    atomic_write(path, lambda f: torch.save(obj, f), parents=True)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a step-ris checkpoint safely; clear errors for a missing, corrupt or foreign file.

    Only tensors, numbers, strings and containers are read (``torch.load(weights_only=True)``);
    a file holding any other Python object is refused, since unpickling it could run code.
    """
    path = Path(path)
    if path.is_dir():
        raise FileNotFoundError(f"checkpoint not found: {path} is a folder (pass its last.pt, or the folder "
                                "where a model or run folder is accepted)")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        text = str(e)
        found = re.search(r"Unsupported global: GLOBAL (\S+)|unsupported GLOBAL (\S+)", text)
        if found:  # a code-running object
            what = found.group(1) or found.group(2)
            raise ValueError(f"{path}: refused (it holds a {what} object): the file contains Python objects beyond "
                             "tensors, numbers, strings and containers, and loading it could run code. step-ris "
                             "reads only checkpoints that hold plain data, as written by step-ris train") from None
        # torch's text ends with advice to load without weights_only; never repeat it, keep the cause
        detail = re.search(r"WeightsUnpickler error:\s*(.*?)\s*(Check the documentation|$)", text, re.S)
        cause = detail.group(1).strip() if detail else text.splitlines()[0]
        raise ValueError(f"{path} is not a readable step-ris checkpoint ({cause}): it is truncated, from another "
                         "program, or holds data that only a code-running load could read; step-ris refuses it "
                         "either way") from None
    except Exception as e:  # noqa: BLE001 - any other failure means the same thing to the user
        raise ValueError(f"{path} is not a readable step-ris checkpoint ({type(e).__name__}: {e}); "
                         "it may be truncated or from another program") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT or "model" not in ckpt or "config" not in ckpt:
        raise ValueError(f"{path} is not a step-ris checkpoint (format {FORMAT}): "
                         "missing 'format', 'config' or 'model'")
    for key in ("model", "config"):
        if not isinstance(ckpt[key], dict):
            raise ValueError(f"{path}: its '{key}' entry is a {type(ckpt[key]).__name__}, not a dict "
                             f"({'a state dict of tensors' if key == 'model' else 'the config as a mapping'}); "
                             "the file is not a step-ris checkpoint")
    bad = [k for k, v in ckpt["model"].items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise ValueError(f"{path}: its 'model' entry is not a state dict of tensors (entry {bad[0]!r}); "
                         "the file is not a step-ris checkpoint")
    return ckpt


def capture_rng() -> dict[str, Any]:
    import random

    import numpy as np

    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": list(random.getstate()[1]) + [random.getstate()[2] if random.getstate()[2] is not None else -1],
        "python_version": random.getstate()[0],
        "numpy": torch.from_numpy(np_state[1].astype("int64")),
        "numpy_pos": int(np_state[2]),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    import random

    import numpy as np

    torch.set_rng_state(state["torch"])
    py = state["python"]
    random.setstate((state["python_version"], tuple(py[:-1]), None if py[-1] == -1 else py[-1]))
    np.random.set_state(("MT19937", state["numpy"].numpy().astype("uint32"), state["numpy_pos"], 0, 0.0))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write a text file (UTF-8) via a temporary file and a rename (``fileio.atomic_write``)."""
    atomic_write(path, text, parents=True)
