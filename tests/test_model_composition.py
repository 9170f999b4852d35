"""The wiring of model/step.py and engine/losses.py, against an independent per-step reference.

The equation cells are tested against loops in test_model_equations.py. This file pins how they
are composed: P_{t-1} feeding Eq. 1, the final biLSTM state's positions, the valid-cell masks
(rounding on sizes that don't divide), the bilinear resizes of Q_t and of Eq. 10, the ImageEncoding
path, and the reduction of Eq. 11. The reference runs ONE example at a time with explicit loops
over steps, words and pixels; it shares only parameters (and the tested ConvRNN cells) with the
model, never its einsums or its batching.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from step_ris.config import get_preset
from step_ris.engine.losses import bce_loss, segmentation_loss
from step_ris.model import build_model
from step_ris.model.step import level_masks

VOCAB = 30
S = 64


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.pow(2).sum().sqrt().clamp_min(1e-12)


def _valid_cells(vh: int, vw: int, h: int, w: int) -> torch.Tensor:
    """A cell is valid when its top-left corner lies inside the letterboxed image."""
    m = torch.zeros(h, w, dtype=torch.bool)
    for r in range(h):
        for c in range(w):
            m[r, c] = r * S / h < vh and c * S / w < vw
    return m


def reference_forward(model, image: torch.Tensor, tokens: list[int], valid: tuple[int, int]):
    """One example: image (3, S, S), tokens without padding, valid (h, w) -> (logits (S, S), [P_t])."""
    maps = [m[0] for m in model.encode_image(image[None])]  # (C_l + 8, h_l, w_l) each
    ids = torch.tensor([tokens])
    words = model.language.words(ids).float()  # (1, n, d)
    states, _ = model.language.lstm(words)  # the unpadded sentence alone: (1, n, 2H)
    states = states[0]
    n, hidden = len(tokens), model.language.lstm.hidden_size
    final = torch.cat([states[n - 1, :hidden], states[0, hidden:]])  # forward at the last word, backward at the first
    att, fusion, refiner = model.attention, model.fusion, model.refiner
    grid0 = maps[0].shape[-2:]
    prev = torch.zeros(1, 1, *grid0)  # P_0
    state = None
    probs = []
    for t, level in enumerate(model.levels):
        v = maps[level]
        h, w = v.shape[-2:]
        if t == 0 and model.first_step == "final-state":
            s = final
        else:
            conv = att.project_visual[str(level)]
            wv, bv = conv.weight[:, :, 0, 0], conv.bias  # (A, C), (A,)
            lin = att.project_text
            h_tilde = torch.stack([lin.weight @ states[j] + lin.bias for j in range(n)])  # (n, A)
            p = F.interpolate(prev, size=(h, w), mode="bilinear", align_corners=False)[0, 0]
            mask = _valid_cells(*valid, h, w)
            v_cells = v[:, mask]  # (C, N) valid cells only, row-major
            weights = (p[mask] / att.temperature).softmax(0)  # (N,) over the valid cells
            v_tilde = wv @ v_cells + bv[:, None]  # (A, N)
            a = (h_tilde @ v_tilde).softmax(0)  # (n, N): for each cell, a distribution over the words
            s = torch.zeros_like(states[0])
            for j in range(n):
                s = s + (a[j] * weights).sum() * states[j]
        pre = F.conv2d(v[None], fusion.visual[level].weight, fusion.visual[level].bias,
                       padding=fusion.visual[level].padding, dilation=fusion.visual[level].dilation)[0]
        phi = torch.tanh(pre)
        phi = phi / phi.pow(2).sum(0, keepdim=True).sqrt().clamp_min(1e-12)  # NL2 per pixel
        psi = _unit(torch.tanh(fusion.text[0].weight @ s + fusion.text[0].bias))
        q = (phi * psi[:, None, None]).sum(0).clamp_min(0)[None, None]  # Eq. 4: (1, 1, h, w)
        q = F.interpolate(q, size=grid0, mode="bilinear", align_corners=False)
        if state is None:
            state = refiner.start(q)
        logit, state = refiner.step(q, state, s[None])  # s_t is read only with refiner_text=film
        prev = torch.sigmoid(logit)
        probs.append(prev[0, 0])
    out = F.interpolate(logit, size=(S, S), mode="bilinear", align_corners=False)  # Eq. 10
    return out[0, 0], probs


@pytest.fixture(scope="module", params=["convgru", "convlstm", "convgru+film", "convlstm+film"])
def model(request):
    torch.manual_seed(1)
    cell, _, text = request.param.partition("+")
    # A low pixel temperature makes P_{t-1} matter in Eq. 1 even for random weights.
    cfg = dataclasses.replace(get_preset("tiny").model, cell=cell, embed_norm="none", image_size=S,
                              pixel_temperature=0.01, refiner_text=text or "none")
    model = build_model(cfg, VOCAB).eval()
    with torch.no_grad():
        model.refiner.head.weight.mul_(20)  # P_t far from uniform, so that the feedback shows
        if model.refiner.film is not None:  # it starts at zero; random, so that a wrong s_t shows
            model.refiner.film.weight.normal_(0, 1)
            model.refiner.film.bias.normal_(0, 1)
    return model


def _batch():
    g = torch.Generator().manual_seed(3)
    images = torch.randn(2, 3, S, S, generator=g)
    tokens = torch.tensor([[5, 6, 1, 7, 9], [8, 9, 4, 0, 0]])
    valid = torch.tensor([[64, 37], [45, 64]])  # 37 and 45 do not divide the grids of 16 and 8
    return images, tokens, valid


def test_full_forward_equals_per_step_reference(model):
    images, tokens, valid = _batch()
    with torch.no_grad():
        out = model(images, tokens, valid, return_intermediates=True)
        for b in range(2):
            ids = [int(x) for x in tokens[b] if x != 0]
            ref_logits, ref_probs = reference_forward(model, images[b], ids, tuple(int(x) for x in valid[b]))
            torch.testing.assert_close(out.logits[b, 0], ref_logits, atol=1e-5, rtol=1e-4)
            for t, p in enumerate(ref_probs):
                torch.testing.assert_close(out.step_logits[b, t].sigmoid(), p, atol=1e-5, rtol=1e-4)


def test_feedback_of_previous_step_reaches_eq1(model):
    """P_{t-1} must shape s_t: cutting the feedback (a constant P) changes the output."""
    images, tokens, valid = _batch()
    with torch.no_grad():
        base = model(images, tokens, valid).logits
        pixel_weights = model.attention.pixel_weights
        try:
            model.attention.pixel_weights = lambda prev, mask: pixel_weights(torch.zeros_like(prev), mask)
            cut = model(images, tokens, valid).logits
        finally:
            del model.attention.pixel_weights
    assert (base - cut).abs().max() > 1e-4


def test_feedback_gradient_switch():
    torch.manual_seed(0)
    cfg = dataclasses.replace(get_preset("tiny").model, image_size=S)
    images, tokens, valid = _batch()
    weights = build_model(cfg, VOCAB).state_dict()
    grads, outputs = {}, {}
    for flag in (True, False):
        model = build_model(dataclasses.replace(cfg, feedback_grad=flag), VOCAB)
        model.load_state_dict(weights)
        out = model(images, tokens, valid).logits
        out.sum().backward()
        grads[flag], outputs[flag] = model.refiner.head.weight.grad.clone(), out.detach()
    torch.testing.assert_close(outputs[True], outputs[False])  # the forward pass is the same
    # the same weights; only the path through P_{t-1} into Eq. 1 differs
    assert not torch.allclose(grads[True], grads[False])


def test_image_encoding_equals_full_forward(model):
    images, tokens, valid = _batch()
    with torch.no_grad():
        full = model(images, tokens, valid, return_intermediates=True)
        enc = model.encode(images)
        again = model(None, tokens, valid, features=enc, return_intermediates=True)
        one = model.encode(images[:1])  # one image, broadcast under two expressions
        shared = model(None, tokens, valid[:1].expand(2, 2), features=one)
        direct = model(images[:1].expand(2, -1, -1, -1), tokens, valid[:1].expand(2, 2))
    torch.testing.assert_close(again.logits, full.logits, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(again.step_logits, full.step_logits, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(shared.logits, direct.logits, atol=2e-5, rtol=1e-4)
    assert set(enc.phi) == set(model.levels)


def test_level_masks_round_up_on_sizes_that_do_not_divide():
    valid = torch.tensor([[37, 64], [64, 45], [1, 1]])
    grids = [(16, 16), (8, 8), (5, 7)]
    masks = level_masks(valid, S, grids, 3, "cpu")
    for (h, w), m in zip(grids, masks, strict=True):
        for b in range(3):
            expected = _valid_cells(int(valid[b, 0]), int(valid[b, 1]), h, w)
            assert torch.equal(m[b], expected), (h, w, b)
    assert masks[1][0].sum(0)[0] == math.ceil(37 * 8 / S)  # 5 rows, not 4


def test_loss_is_the_mean_over_pixels_and_samples():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 1, 8, 8, generator=g)
    target = (torch.rand(3, 8, 8, generator=g) > 0.7).float()
    p = torch.sigmoid(logits[:, 0])
    manual = -(target * torch.log(p) + (1 - target) * torch.log(1 - p)).sum() / (3 * 8 * 8)  # Eq. 11
    total, parts = segmentation_loss(logits, target)
    torch.testing.assert_close(total, manual)
    assert parts["loss"] == pytest.approx(float(manual), rel=1e-6)
    # every P_t, upsampled bilinearly to S x S, weighs like the output map
    steps = torch.randn(3, 4, 4, 4, generator=g)
    total_all, _ = segmentation_loss(logits, target, step_logits=steps)
    ups = F.interpolate(steps, size=(8, 8), mode="bilinear", align_corners=False)
    maps = [logits[:, 0]] + [ups[:, k] for k in range(3)]
    manual_all = sum(bce_loss(m, target) for m in maps) / 4
    torch.testing.assert_close(total_all, manual_all)
