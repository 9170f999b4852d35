"""Each equation of the paper against a direct, loop-based computation on tiny tensors."""

import copy
import math

import pytest
import torch

from step_ris.model.co_embedding import CoEmbedding
from step_ris.model.refiner import ConvGRUCell, ConvLSTMCell, Refiner
from step_ris.model.textual_attention import TextualAttention
from step_ris.model.visual_encoder import spatial_coordinates

torch.manual_seed(0)


def loop_conv(x, weight, bias=None, dilation=1):
    """'same' 2-D convolution of one sample x (C, H, W) with zero padding, by explicit loops."""
    c_out, c_in, k, _ = weight.shape
    _, h, w = x.shape
    r = dilation * (k // 2)
    out = torch.zeros(c_out, h, w, dtype=torch.float64)
    for o in range(c_out):
        for y in range(h):
            for xx in range(w):
                acc = 0.0 if bias is None else float(bias[o])
                for c in range(c_in):
                    for ky in range(k):
                        for kx in range(k):
                            yy, xs = y - r + ky * dilation, xx - r + kx * dilation
                            if 0 <= yy < h and 0 <= xs < w:
                                acc += float(weight[o, c, ky, kx]) * float(x[c, yy, xs])
                out[o, y, xx] = acc
    return out


def sig(v):
    return 1 / (1 + math.exp(-v))


def test_spatial_coordinates_by_hand():
    h, w = 3, 4
    coords = spatial_coordinates(h, w)
    assert coords.shape == (8, h, w)
    for y in range(h):
        for x in range(w):
            x_min, x_max = -1 + 2 * x / w, -1 + 2 * (x + 1) / w
            y_min, y_max = -1 + 2 * y / h, -1 + 2 * (y + 1) / h
            expected = [x_min, y_min, x_max, y_max, (x_min + x_max) / 2, (y_min + y_max) / 2, 1 / w, 1 / h]
            assert torch.allclose(coords[:, y, x], torch.tensor(expected), atol=1e-6)
    # edges map to [-1, 1]
    assert coords[0].min() == -1 and coords[2].max() == 1


@torch.no_grad()
def test_eq1_ltr_with_word_and_pixel_padding():
    torch.manual_seed(1)
    b, c, h, w, length, d = 2, 5, 3, 4, 4, 6
    attn = TextualAttention(visual_channels=(c,), levels=(0,), text_dim=d, dim=7).double()
    v = torch.randn(b, c, h, w, dtype=torch.float64)
    states = torch.randn(b, length, d, dtype=torch.float64)
    word_mask = torch.tensor([[True, True, True, False], [True, True, False, False]])
    pixel_mask = torch.zeros(b, h, w, dtype=torch.bool)
    pixel_mask[0, :2, :3] = True  # sample 0: 2 x 3 valid cells
    pixel_mask[1] = True
    prev = torch.rand(b, 1, h, w, dtype=torch.float64)

    a = attn.word_attention(0, v, states, word_mask)
    weights = attn.pixel_weights(prev, pixel_mask)
    s, alpha = attn.attend(a, weights, states)

    wv, bv = attn.project_visual["0"].weight[:, :, 0, 0], attn.project_visual["0"].bias
    wh, bh = attn.project_text.weight, attn.project_text.bias
    for k in range(b):
        words = [j for j in range(length) if word_mask[k, j]]
        pixels = [(y, x) for y in range(h) for x in range(w) if pixel_mask[k, y, x]]
        z = sum(math.exp(float(prev[k, 0, y, x])) for y, x in pixels)
        s_ref = torch.zeros(d, dtype=torch.float64)
        alpha_ref = torch.zeros(length, dtype=torch.float64)
        for y, x in pixels:
            w_i = math.exp(float(prev[k, 0, y, x])) / z
            v_t = wv @ v[k, :, y, x] + bv
            scores = {j: float(v_t @ (wh @ states[k, j] + bh)) for j in words}
            zj = sum(math.exp(sc) for sc in scores.values())
            for j in words:
                a_ij = math.exp(scores[j]) / zj
                s_ref += w_i * a_ij * states[k, j]
                alpha_ref[j] += w_i * a_ij
        assert torch.allclose(s[k], s_ref, atol=1e-9)
        assert torch.allclose(alpha[k], alpha_ref, atol=1e-9)
        assert alpha[k, ~word_mask[k]].abs().max() == 0  # padding never attended
        assert torch.isclose(alpha[k].sum(), torch.tensor(1.0, dtype=torch.float64))
    # padded pixels carry no weight
    assert weights[0].view(h, w)[~pixel_mask[0]].abs().max() == 0


def test_eq1_pixel_softmax_resizes_previous_map():
    attn = TextualAttention(visual_channels=(3,), levels=(0,), text_dim=2, dim=2)
    prev = torch.rand(1, 1, 8, 8)
    weights = attn.pixel_weights(prev, torch.ones(1, 4, 4, dtype=torch.bool))
    assert weights.shape == (1, 16) and torch.isclose(weights.sum(), torch.tensor(1.0))


def test_eqs2_to_4_literal_with_atrous_kernel():
    torch.manual_seed(2)
    c, d, e, h, w = 3, 4, 5, 5, 5
    emb = CoEmbedding(visual_channels=(c,), text_dim=d, dim=e, kernel=3, dilation=3, norm="none").double()
    v = torch.randn(1, c, h, w, dtype=torch.float64)
    s = torch.randn(1, d, dtype=torch.float64)
    phi = emb.phi(0, v)
    psi = emb.psi(0, s)
    q = emb.heatmap(phi, psi)

    pre = loop_conv(v[0], emb.visual[0].weight, emb.visual[0].bias, dilation=3)  # W_v * v + b
    psi_ref = torch.tanh(emb.text[0].weight @ s[0] + emb.text[0].bias)
    psi_ref = psi_ref / psi_ref.norm()
    assert torch.allclose(psi[0], psi_ref, atol=1e-9)  # Eq. 3
    for y in range(h):
        for x in range(w):
            phi_ref = torch.tanh(pre[:, y, x])
            phi_ref = phi_ref / phi_ref.norm()  # Eq. 2
            assert torch.allclose(phi[0, :, y, x], phi_ref, atol=1e-9)
            assert math.isclose(float(q[0, 0, y, x]), max(0.0, float(phi_ref @ psi_ref)), abs_tol=1e-9)  # Eq. 4
    assert q.min() >= 0 and q.max() <= 1 + 1e-9


def test_co_embedding_layer_norm_is_per_sample():
    """Per-sample normalisation: a sample's Q_t does not depend on the rest of the batch."""
    emb = CoEmbedding(visual_channels=(6,), text_dim=4, dim=8, norm="layer").eval()
    v, s = torch.randn(3, 6, 4, 4), torch.randn(3, 4)
    q_batch = emb.heatmap(emb.phi(0, v), emb.psi(0, s))
    q_one = emb.heatmap(emb.phi(0, v[:1]), emb.psi(0, s[:1]))
    assert torch.allclose(q_batch[:1], q_one, atol=1e-6)
    emb.train()
    assert torch.allclose(emb.heatmap(emb.phi(0, v), emb.psi(0, s)), q_batch, atol=1e-6)  # train == eval


def _film(gates: int, modulated: bool):
    """A random (gamma, beta), each (1, gates, 1, 1), and its per-gate reference; None, identity without."""
    if not modulated:
        return None, lambda g, pre: pre
    gamma, beta = torch.randn(2, 1, gates, 1, 1, dtype=torch.float64)
    return (gamma, beta), lambda g, pre: (1 + gamma[0, g, 0, 0]) * pre + beta[0, g, 0, 0]


@pytest.mark.parametrize(("dilation", "modulated"), [(1, False), (2, False), (1, True)])
def test_eqs5_to_8_one_convgru_step(dilation, modulated):
    """Modulated: refiner_text=film's (1 + gamma) . (W^* * x_t) + beta, per gate channel, inside Eqs. 5-7."""
    torch.manual_seed(3)
    f, h, w = 2, 5, 5
    cell = ConvGRUCell(in_channels=1, filters=f, kernel=3, dilation=dilation).double()
    x = torch.randn(1, 1, h, w, dtype=torch.float64)
    h_prev = torch.randn(1, f, h, w, dtype=torch.float64)
    modulation, film = _film(3 * f, modulated)
    out, _ = cell(x, h_prev, modulation)

    wi, bi = cell.input_gates.weight, cell.input_gates.bias
    w_x = torch.stack([film(g, loop_conv(x[0], wi[g:g + 1], bi[g:g + 1])[0]) for g in range(3 * f)])  # (3F, H, W)
    w_f, w_z, w_h = w_x[:f], w_x[f:2 * f], w_x[2 * f:]
    r_f = loop_conv(h_prev[0], cell.hidden_gates.weight[:f], dilation=dilation)  # R^* dilated, W^* dense
    r_z = loop_conv(h_prev[0], cell.hidden_gates.weight[f:], dilation=dilation)
    gate_f = torch.sigmoid(r_f + w_f)  # (5)
    gate_z = torch.sigmoid(r_z + w_z)  # (6)
    h_hat = torch.tanh(loop_conv(gate_f * h_prev[0], cell.hidden_candidate.weight, dilation=dilation) + w_h)  # (7)
    expected = gate_z * h_prev[0] + (1 - gate_z) * h_hat  # (8)
    assert torch.allclose(out[0], expected, atol=1e-9)


@pytest.mark.parametrize(("dilation", "modulated"), [(1, False), (2, False), (1, True)])
def test_one_convlstm_step(dilation, modulated):
    torch.manual_seed(4)
    f, h, w = 2, 5, 5
    cell = ConvLSTMCell(in_channels=1, filters=f, kernel=3, dilation=dilation).double()
    with torch.no_grad():
        cell.peephole.normal_()
    x = torch.randn(1, 1, h, w, dtype=torch.float64)
    h_prev, c_prev = torch.randn(1, f, h, w, dtype=torch.float64), torch.randn(1, f, h, w, dtype=torch.float64)
    modulation, film = _film(4 * f, modulated)
    out, (h_new, c_new) = cell(x, (h_prev, c_prev), modulation)

    wx, bx, wh = cell.input_gates.weight, cell.input_gates.bias, cell.hidden_gates.weight
    w_x = torch.stack([film(g, loop_conv(x[0], wx[g:g + 1], bx[g:g + 1])[0]) for g in range(4 * f)])  # (4F, H, W)
    gate = [w_x[g * f:(g + 1) * f] + loop_conv(h_prev[0], wh[g * f:(g + 1) * f], dilation=dilation)
            for g in range(4)]  # i, f, c, o pre-activations
    pi, pf, po = cell.peephole
    i = torch.sigmoid(gate[0] + pi * c_prev[0])
    fg = torch.sigmoid(gate[1] + pf * c_prev[0])
    c = fg * c_prev[0] + i * torch.tanh(gate[2])
    o = torch.sigmoid(gate[3] + po * c)
    assert torch.allclose(c_new[0], c, atol=1e-9)
    assert torch.allclose(out[0], o * torch.tanh(c), atol=1e-9)
    assert torch.equal(out, h_new)


def test_eq9_head_after_every_step():
    torch.manual_seed(5)
    ref = Refiner(cell="convgru", filters=3, kernel=3).double()
    q = torch.rand(1, 1, 4, 4, dtype=torch.float64)
    state = ref.start(q)
    logits, state = ref.step(q, state)
    h = state[0]
    wp, bp = ref.head.weight[0, :, 0, 0], ref.head.bias[0]
    for y in range(4):
        for x in range(4):
            p_ref = sig(float(wp @ h[:, y, x] + bp))  # Eq. 9
            assert math.isclose(float(torch.sigmoid(logits[0, 0, y, x])), p_ref, rel_tol=1e-9)


def test_conv1x1_refiner_final_map_stacks_all_heatmaps():
    ref = Refiner(cell="conv1x1", filters=32, steps=5)
    qs = [torch.rand(2, 1, 4, 4) for _ in range(5)]
    out = ref.final(None, qs)
    w, b = ref.stack.weight[0, :, 0, 0], ref.stack.bias[0]
    expected = sum(w[t] * qs[t] for t in range(5)) + b
    assert torch.allclose(out, expected, atol=1e-6)


def test_eq4_leaky_switch_keeps_negative_side_small_and_differentiable():
    phi = torch.nn.functional.normalize(torch.randn(1, 4, 3, 3), dim=1).requires_grad_()
    psi = torch.nn.functional.normalize(torch.randn(1, 4), dim=1)
    cos = torch.einsum("bchw,bc->bhw", phi, psi).unsqueeze(1)
    literal = CoEmbedding.heatmap(phi, psi)
    leaky = CoEmbedding.heatmap(phi, psi, leak=0.1)
    assert torch.allclose(literal, cos.clamp_min(0))
    assert torch.allclose(leaky, torch.where(cos > 0, cos, 0.1 * cos))
    leaky.sum().backward()
    assert (phi.grad.abs().sum(1) > 0).all()  # every pixel gets a gradient, negative ones too


@pytest.mark.parametrize("cell", ["convgru", "convlstm"])
@pytest.mark.parametrize("dilation", [1, 3])
def test_refiner_dilation_sets_how_far_the_state_sees(cell, dilation):
    """After T steps a cell of h_T sees Q_1 up to 1 + n d (T - 1) cells away (3x3 kernels), no further:
    n = 1 recurrent convolution per step in ConvLSTM, 2 in ConvGRU (R^h acts on f_t . h_{t-1}, Eq. 7)."""
    torch.manual_seed(6)
    steps = 4
    ref = Refiner(cell=cell, filters=3, kernel=3, dilation=dilation).double()
    reach = 1 + (2 if cell == "convgru" else 1) * dilation * (steps - 1)
    size = 2 * reach + 5
    centre = size // 2
    q1 = torch.zeros(1, 1, size, size, dtype=torch.float64, requires_grad=True)
    qs = [q1] + [torch.zeros(1, 1, size, size, dtype=torch.float64) for _ in range(steps - 1)]
    state = ref.start(q1)
    for q in qs:
        logits, state = ref.step(q, state)
    logits[0, 0, centre, centre].backward()
    touched = (q1.grad[0, 0] != 0).nonzero()
    assert int((touched - centre).abs().max()) == reach


def test_refiner_dilation_below_one_is_a_clear_error():
    with pytest.raises(ValueError, match="dilation=0"):
        Refiner(cell="convgru", filters=3, dilation=0)


def test_refiner_film_reads_s_t_and_starts_as_the_paper():
    """refiner_text=film: (gamma, beta) = a linear map of s_t, zero at the start (the paper's refiner)."""
    torch.manual_seed(7)
    plain = Refiner(cell="convgru", filters=3).double()
    film = Refiner(cell="convgru", filters=3, text="film", text_dim=4).double()
    film.load_state_dict(plain.state_dict(), strict=False)
    q, s = torch.rand(2, 1, 6, 6, dtype=torch.float64), torch.randn(2, 4, dtype=torch.float64)
    start = film.step(q, film.start(q), s)[0]
    torch.testing.assert_close(start, plain.step(q, plain.start(q))[0])
    with torch.no_grad():
        film.film.weight.normal_()
    out, _ = film.step(q, film.start(q), s)
    gamma, beta = (s @ film.film.weight.T + film.film.bias).chunk(2, dim=1)  # (2, 9) each
    expected, _ = film.cell(q, film.cell.initial_state(q), (gamma[:, :, None, None], beta[:, :, None, None]))
    torch.testing.assert_close(out, film.head(expected))
    assert (out - start).abs().max() > 1e-3
    with pytest.raises(ValueError, match="pass it to step"):
        film.step(q, film.start(q))


@pytest.mark.parametrize(("kwargs", "match"), [
    (dict(cell="conv1x1", text="film", text_dim=4), "needs a ConvRNN cell"),
    (dict(cell="convgru", text="film"), "text_dim=0"),
    (dict(cell="convgru", text="gate"), "text='gate'; choose one of: none, film"),
])
def test_refiner_text_bad_settings_are_clear_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Refiner(filters=3, **kwargs)


@pytest.mark.parametrize("cell", ["convgru", "convlstm"])
def test_the_first_step_skips_the_recurrent_convolutions_and_equals_the_zero_state(cell):
    """Refiner.start is the zero state; the first step then runs no recurrent convolution (they
    would only add zeros) and gives the outputs, state and gradients of explicit zero tensors."""
    torch.manual_seed(8)
    fast = Refiner(cell=cell, filters=4, kernel=3).double()
    if cell == "convlstm":  # non-zero peepholes, so the c terms count
        torch.nn.init.normal_(fast.cell.peephole)
    slow = copy.deepcopy(fast)
    q = torch.rand(2, 1, 6, 6, dtype=torch.float64)
    recurrent = [m for name, m in fast.cell.named_children() if name.startswith("hidden")]
    calls = []
    hooks = [m.register_forward_hook(lambda *_: calls.append(1)) for m in recurrent]
    assert fast.start(q) is None
    logits, state = fast.step(q, fast.start(q))
    assert calls == []
    logits2, _ = fast.step(q, state)  # the second step does run them
    assert len(calls) == len(recurrent)
    for hook in hooks:
        hook.remove()
    ref_logits, ref_state = slow.step(q, slow.cell.initial_state(q))
    ref_logits2, _ = slow.step(q, ref_state)
    torch.testing.assert_close(logits, ref_logits, rtol=0, atol=1e-12)
    torch.testing.assert_close(logits2, ref_logits2, rtol=0, atol=1e-12)
    (logits.sum() + logits2.sum()).backward()
    (ref_logits.sum() + ref_logits2.sum()).backward()
    for (name, a), b in zip(fast.named_parameters(), slow.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, rtol=0, atol=1e-12, msg=name)
