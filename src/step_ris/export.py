"""Export a trained STEP model to ONNX.

    step-ris export --format onnx --model shapes-cpu --out step.onnx

The graph takes one letterboxed image and one expression of any length (batch 1, fixed S,
dynamic number of words, no padding):

    image     float32 (1, 3, S, S)   letterboxed and ImageNet-normalised (``data.transforms.letterbox_image``)
    tokens    int64   (1, L)          word ids of the vocabulary, 1 <= L <= max_words, no padding (0)
    valid_hw  int64   (1, 2)          the unpadded extent (h, w) of the image inside S x S

and returns

    logits       (1, 1, S, S)   logits of P_T upsampled (Eq. 10); sigmoid, crop to (h, w), resize to H x W
    step_logits  (1, T, S/4, S/4) logits of every P_t
    attention    (1, T, L)      alpha_t of Eq. 1
    similarity   (1, T, L)      cosine of s_t and h_j

Tokenise with ``text.tokenize`` and look words up in the vocabulary stored in the file's
metadata (``step_ris.vocab``, a JSON list; unknown words -> 1). ``step_ris.image_size``,
``step_ris.max_words`` and ``step_ris.config`` are stored too. Without padding the biLSTM
needs no packed sequences, which ONNX cannot express; one expression per run.
"""

from __future__ import annotations

import inspect
import io
import json
import logging
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ._extras import require
from .fileio import atomic_write
from .model import STEPModel
from .text import Vocabulary

log = logging.getLogger(__name__)

OPSET = 17  # LayerNorm is an ONNX op from opset 17
INPUTS = ("image", "tokens", "valid_hw")
OUTPUTS = ("logits", "step_logits", "attention", "similarity")
MATCH_OUTPUT = "match_logits"  # (1,), models with a no-target decision (model.match_head) only


def output_names(model: STEPModel) -> tuple[str, ...]:
    """The exported graph's outputs: ``OUTPUTS``, and ``match_logits`` for a model with a match head."""
    return OUTPUTS + ((MATCH_OUTPUT,) if model.match is not None else ())
PARITY_ATOL = 1e-4


class OnnxGraph(nn.Module):
    """The model with tensor-only inputs and outputs, as exported."""

    def __init__(self, model: STEPModel):
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor, tokens: torch.Tensor, valid_hw: torch.Tensor):
        """image: (1, 3, S, S); tokens: (1, L); valid_hw: (1, 2) -> logits, step_logits, attention, similarity
        (and match_logits (1,) for a model with a no-target decision)."""
        out = self.model(image, tokens, valid_hw, return_intermediates=True)
        if out.match_logits is not None:
            return out.logits, out.step_logits, out.attention, out.similarity, out.match_logits
        return out.logits, out.step_logits, out.attention, out.similarity


def _require(module: str):
    return require(module, extra="export", purpose="ONNX export")


def example_inputs(vocab_size: int, image_size: int, words: int = 3, seed: int = 0
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random inputs of the exported signature (a non-square valid extent, ``words`` known ids)."""
    g = torch.Generator().manual_seed(seed)
    image = torch.randn(1, 3, image_size, image_size, generator=g)
    tokens = torch.randint(2, max(3, vocab_size), (1, words), generator=g)
    valid = torch.tensor([[image_size, max(1, image_size * 3 // 4)]])
    return image, tokens, valid


def export_onnx(model: STEPModel, out: str | Path, *, vocab: Vocabulary, image_size: int, max_words: int = 20,
                config: dict | None = None, opset: int = OPSET, check: bool = True) -> Path:
    """Write ``model`` as an ONNX file at ``out`` (atomically) and return its path.

    With ``check`` (and onnxruntime installed) the file is run once on random inputs and its
    logits compared with PyTorch's (``PARITY_ATOL``); on a mismatch nothing is written and it raises.
    """
    onnx = _require("onnx")
    out = Path(out)
    if out.is_dir():
        raise ValueError(f"{out} is a folder; give the ONNX file to write, e.g. {out / 'step.onnx'}")
    if not out.parent.is_dir():
        raise ValueError(f"output folder {out.parent} does not exist")
    model = model.eval().cpu()
    graph = OnnxGraph(model).eval()
    inputs = example_inputs(len(vocab), image_size)
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # TracerWarnings: the branches traced are the ones batch 1 takes
        # dynamo=False picks the TorchScript exporter where the keyword exists (torch >= 2.5)
        legacy = {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}
        torch.onnx.export(graph, inputs, buffer, **legacy, opset_version=opset, input_names=list(INPUTS),
                          output_names=list(output_names(model)), do_constant_folding=True,
                          dynamic_axes={"tokens": {1: "words"}, "attention": {2: "words"},
                                        "similarity": {2: "words"}})
    proto = onnx.load_from_string(buffer.getvalue())
    meta = {"step_ris.vocab": json.dumps(vocab.to_list()), "step_ris.image_size": str(image_size),
            "step_ris.max_words": str(max_words), "step_ris.inputs": ", ".join(INPUTS),
            "step_ris.outputs": ", ".join(output_names(model)),
            "step_ris.config": json.dumps(config or {}, sort_keys=True)}
    for key, value in meta.items():
        prop = proto.metadata_props.add()
        prop.key, prop.value = key, value
    proto.doc_string = "STEP referring image segmentation (Chen et al., ICCV 2019), exported by step-ris"
    data = proto.SerializeToString()
    if check:
        worst = check_onnx(data, model, inputs)
        if worst is not None:
            log.info("ONNX check: max |logits difference| vs PyTorch = %.2e", worst)
    return atomic_write(out, data)  # nothing is written when the export or the check fails


def run_onnx(path: str | Path | bytes, image: torch.Tensor | np.ndarray, tokens: torch.Tensor | np.ndarray,
             valid_hw: torch.Tensor | np.ndarray) -> dict[str, np.ndarray]:
    """Run an exported file (or its bytes) with onnxruntime on one input; returns every output by name."""
    ort = _require("onnxruntime")
    session = ort.InferenceSession(path if isinstance(path, bytes) else str(path), providers=["CPUExecutionProvider"])
    feed = {name: np.asarray(x.cpu().numpy() if isinstance(x, torch.Tensor) else x)
            for name, x in zip(INPUTS, (image, tokens, valid_hw), strict=True)}
    feed["image"] = feed["image"].astype(np.float32)
    feed["tokens"] = feed["tokens"].astype(np.int64)
    feed["valid_hw"] = feed["valid_hw"].astype(np.int64)
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feed), strict=True))


def check_onnx(path: str | Path | bytes, model: STEPModel, inputs: tuple[torch.Tensor, ...]) -> float | None:
    """Max |logits difference| between the ONNX file (or bytes) and PyTorch on ``inputs`` (None without onnxruntime)."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        log.warning("onnxruntime is not installed: the exported file was not checked against PyTorch")
        return None
    got = run_onnx(path, *inputs)
    with torch.no_grad():
        want = model(*inputs)
    worst = float(np.abs(got["logits"] - want.logits.numpy()).max())
    if want.match_logits is not None:
        worst = max(worst, float(np.abs(got[MATCH_OUTPUT] - want.match_logits.numpy()).max()))
    if not np.isfinite(worst) or worst > PARITY_ATOL:
        raise ValueError(f"the exported ONNX graph disagrees with PyTorch (max |logits difference| {worst:.3g} > "
                         f"{PARITY_ATOL}); the file was not written")
    return worst


def export_pretrained_onnx(name_or_path: str | os.PathLike, out: str | Path, *, opset: int = OPSET,
                           check: bool = True) -> Path:
    """``export_onnx`` for a bundled model name, a model folder or a checkpoint (``load_pretrained``)."""
    from .pretrained import load_pretrained

    loaded = load_pretrained(name_or_path, device="cpu")
    m = loaded.config.model
    return export_onnx(loaded.model, out, vocab=loaded.vocab, image_size=m.image_size, max_words=m.max_words,
                       config=loaded.config.to_dict(), opset=opset, check=check)


def read_metadata(path: str | Path) -> dict[str, str]:
    """The ``step_ris.*`` metadata of an exported file (vocab, image_size, max_words, config)."""
    onnx = _require("onnx")
    proto = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in proto.metadata_props if p.key.startswith("step_ris.")}


__all__ = ["INPUTS", "MATCH_OUTPUT", "OPSET", "OUTPUTS", "OnnxGraph", "check_onnx", "example_inputs", "export_onnx",
           "export_pretrained_onnx", "read_metadata", "run_onnx"]
