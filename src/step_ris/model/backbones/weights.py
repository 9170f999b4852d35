"""Weight files for the backbones: reading, key matching, the torch hub cache.

* :func:`read_state_dict`: a state dict from ``.safetensors`` or a torch file (``weights_only``),
  unwrapping ``{'state_dict': ...}`` / ``{'model': ...}`` checkpoints.
* :func:`load_backbone_state`: strict loading with the key prefix (``module.``, ``backbone.``,
  ...) detected automatically; missing keys and shape mismatches raise an error that names the
  file, unexpected keys are reported (known classifier heads quietly).
* :func:`torchvision_checkpoint`: the file of a torchvision weight enum (ImageNet classifiers,
  DeepLabV3), looked up in the torch hub cache (``torch.hub.get_dir()/checkpoints/<file>``)
  first, so it works offline once the file is there; a failed download raises an error naming
  the URL and the expected cache path.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from urllib.parse import urlparse

import torch
import torchvision
from torch import nn

__all__ = ["cached_download", "load_backbone_state", "read_state_dict", "torchvision_checkpoint"]

logger = logging.getLogger(__name__)

_WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "model_state")


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a state dict from ``.safetensors`` or a torch file (``weights_only=True``).

    A dict holding the weights under ``'state_dict'`` / ``'model'`` (also nested) is unwrapped;
    non-tensor entries are dropped.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"weights file not found: {path}")
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        obj = load_file(path, device="cpu")
    else:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # pickle with non-tensor objects, corrupt file, ...
            raise ValueError(f"could not read weights file {path} with torch.load(weights_only=True): {e}") from e
    for _ in range(4):
        if not isinstance(obj, Mapping):
            break
        wrapped = next((k for k in _WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if wrapped is None or any(torch.is_tensor(v) for v in obj.values()):
            break
        obj = obj[wrapped]
    if not isinstance(obj, Mapping):
        raise ValueError(f"{path} does not hold a state dict (got {type(obj).__name__})")
    state = {str(k): v for k, v in obj.items() if torch.is_tensor(v)}
    if not state:
        raise ValueError(f"{path} holds no tensors (keys: {list(obj)[:10]})")
    return state


def _best_prefix(keys: Sequence[str], model_keys: set[str]) -> str:
    """The key prefix (``''``, ``'module.'``, ``'backbone.'``, ...) matching most model keys."""
    votes: dict[str, int] = {}
    for k in keys:
        parts = k.split(".")
        for i in range(len(parts)):
            if ".".join(parts[i:]) in model_keys:
                prefix = ".".join(parts[:i]) + ("." if i else "")
                votes[prefix] = votes.get(prefix, 0) + 1
    if not votes:
        return ""
    return max(votes, key=lambda p: (votes[p], -len(p)))


def _fmt_keys(keys: Sequence[str], n: int = 8) -> str:
    keys = list(keys)
    more = f" ... (+{len(keys) - n} more)" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def load_backbone_state(
    module: nn.Module,
    state: Mapping[str, torch.Tensor],
    source: str,
    *,
    ignore_prefixes: Sequence[str] = (),
) -> None:
    """Load ``state`` into ``module`` with strict, clearly reported key matching.

    The prefix (``module.``, ``backbone.``, ...) is detected as the one under which most keys
    match. Missing keys (except BN ``num_batches_tracked``) or shape mismatches raise a
    ``ValueError`` naming ``source``; unexpected keys are ignored with a warning, except those
    starting with one of ``ignore_prefixes`` (known classifier heads), logged at debug level.
    """
    target = module.state_dict()
    model_keys = set(target)
    prefix = _best_prefix(list(state), model_keys)
    mapped: dict[str, torch.Tensor] = {}
    unexpected: list[str] = []
    for k, v in state.items():
        if k.startswith(prefix) and k[len(prefix) :] in model_keys:
            mapped[k[len(prefix) :]] = v
        else:
            unexpected.append(k)
    missing = [k for k in target if k not in mapped and not k.endswith("num_batches_tracked")]
    if missing:
        raise ValueError(
            f"weights {source} do not fit the backbone {type(module).__name__}: "
            f"{len(missing)} missing key(s): {_fmt_keys(missing)} "
            f"(key prefix used: {prefix!r}; the file has {len(state)} tensors, e.g. "
            f"{_fmt_keys(list(state), 4)})"
        )
    bad = [
        f"{k}: file {tuple(v.shape)} vs model {tuple(target[k].shape)}"
        for k, v in mapped.items()
        if tuple(v.shape) != tuple(target[k].shape)
    ]
    if bad:
        raise ValueError(f"weights {source}: shape mismatch for {len(bad)} key(s): {_fmt_keys(bad, 5)}")
    for k in target:  # fill a missing BN counter with the model's own value
        mapped.setdefault(k, target[k])
    module.load_state_dict(mapped, strict=True)
    rest = [
        k for k in unexpected if not any(k[len(prefix) :].startswith(p) or k.startswith(p) for p in ignore_prefixes)
    ]
    known = len(unexpected) - len(rest)
    if rest:
        logger.warning("weights %s: ignored %d unexpected key(s): %s", source, len(rest), _fmt_keys(rest))
    if known:
        logger.debug("weights %s: ignored %d head key(s)", source, known)
    logger.info("loaded %d tensors from %s into %s", len(mapped), source, type(module).__name__)


def cached_download(url: str) -> str:
    """Path of ``url``'s file in the torch hub cache, downloading it if absent."""
    filename = os.path.basename(urlparse(url).path)
    cache_dir = os.path.join(torch.hub.get_dir(), "checkpoints")
    dst = os.path.join(cache_dir, filename)
    if os.path.isfile(dst):
        return dst
    try:
        os.makedirs(cache_dir, exist_ok=True)
        logger.info("downloading %s to %s", url, dst)
        torch.hub.download_url_to_file(url, dst, progress=False)
    except Exception as e:
        raise ValueError(
            f"could not download pretrained weights from {url} ({type(e).__name__}: {e}). "
            f"Place the file at {dst} (expected torch hub cache path, torch.hub.get_dir() = "
            f"{torch.hub.get_dir()}; set TORCH_HOME to move it), or pass a local file path as "
            f"weights."
        ) from e
    return dst


def torchvision_checkpoint(weight_enum: str) -> str:
    """Local path of a torchvision weight file, e.g. ``'ResNet101_Weights.IMAGENET1K_V2'``."""
    return cached_download(torchvision.models.get_weight(weight_enum).url)
