"""Top-down heatmap refinement (Sec. 3.5): a ConvRNN over the STEP heatmaps, Eqs. 5-9.

ConvGRU (Eqs. 5-8), with input x_t = Q_t (1 channel) and h_0 = 0:

    f_t = sigma(R^f * h_{t-1} + W^f * x_t + b^f)              (5)  reset gate
    z_t = sigma(R^z * h_{t-1} + W^z * x_t + b^z)              (6)  update gate
    h^_t = tanh(R^h * (f_t . h_{t-1}) + W^h * x_t + b^h)      (7)
    h_t = z_t . h_{t-1} + (1 - z_t) . h^_t                    (8)

ConvLSTM after Shi et al. 2015 (peephole weights per channel rather than per pixel, so one
model runs at any input size). After every step ``P_t = sigma(W^P * h_t + b^P)`` (Eq. 9, 1x1
conv); ``P_t`` feeds Eq. 1 of the next step. The 3x3 kernels have one input channel: the
paper's ``c = 3`` does not match the one-channel Q_t of Eqs. 5-8 and is read as a slip.

The "1x1-conv" ablation has no recurrence: ``P_t = sigma(1x1 conv(Q_t))`` feeds Eq. 1 and the
final map is a 1x1 conv over the stack ``[Q_1 .. Q_T]``.

Beyond the paper, ``dilation`` > 1 dilates the recurrent convolutions R^* (the input
convolutions W^* stay dense), so the state sees further across the image at each step: after T
steps of 3x3 kernels a cell of h_T sees Q_1 up to 1 + n d (T - 1) cells away, n = 1 recurrent
convolution per step in ConvLSTM and 2 in ConvGRU (R^h acts on f_t . h_{t-1}, Eq. 7)
(docs/model.md, choice 18). Relations and ordinals ("the second circle from the left") depend
on objects far apart, yet on ShapesRef d = 2 and 4 did not lift them (docs/recipes.md, fourth
round); the paper's d = 1 is the default.

Beyond the paper, ``text="film"`` lets the sentence reach the ConvRNN directly: s_t of Eq. 1
scales and shifts the input-gate pre-activations of every step, ``(1 + gamma(s_t)) . (W^* * x_t)
+ beta(s_t)``, one (gamma, beta) per gate channel from a linear map of s_t (FiLM, Perez et al.
2018), initialised to zero so that a new model starts as the paper's. In the paper the refiner
sees the sentence only through the one-channel Q_t, so it is never told which ordinal or relation
was asked (docs/model.md, choice 19). On ShapesRef it learned less, ordinals and relations too
(docs/recipes.md, fifth round); "none" is the default.

Beyond the paper, ``context="directional"`` gives the ConvRNN, beside Q_t, eight maps of where
Q_t lies across the whole grid (docs/model.md, choice 20): along each axis, whether the heatmap
reaches past a cell on either side (for "left of X", "above X") and how many rising edges of its
profile lie up to the cell from either side (a soft count, for "the second circle from the left").
A 3x3 ConvRNN sees only a few cells per step; these maps see the whole row or column at once.
On ShapesRef they did not lift relations or ordinals (docs/recipes.md, eighth round); "none" is
the default.

Beyond the paper, ``context="centroid"`` gives the ConvRNN, beside Q_t, three maps of where each cell
lies from the heatmap's centre of mass (docs/model.md, choice 22): the offsets along x and y and the
distance. When a step marks the landmark of "the circle nearest to the green star", every cell then
knows how far it is from it, which no 3x3 step nor the frozen backbone can tell it.
``context="directional+centroid"`` gives both sets of maps (8 + 3 per heatmap channel).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

PROFILE_EPS = 1e-6  # keeps the profile's normalisation defined on an all-zero heatmap
MASS_EPS = 1e-6  # keeps the centre of mass defined on an all-zero heatmap (it is then the grid's centre)
DISTANCE_EPS = 1e-6  # keeps the distance's gradient finite at the centre itself


def _modulate(gates: torch.Tensor, modulation) -> torch.Tensor:
    """(1 + gamma) . gates + beta, or the gates unchanged without a modulation."""
    if modulation is None:
        return gates
    gamma, beta = modulation
    return gates * (1 + gamma) + beta


class ConvGRUCell(nn.Module):
    def __init__(self, *, in_channels: int, filters: int, kernel: int = 3, dilation: int = 1):
        super().__init__()
        pad = kernel // 2
        self.filters = filters
        self.input_gates = nn.Conv2d(in_channels, 3 * filters, kernel, padding=pad)  # W^f, W^z, W^h and b
        recurrent = dict(padding=pad * dilation, dilation=dilation, bias=False)
        self.hidden_gates = nn.Conv2d(filters, 2 * filters, kernel, **recurrent)  # R^f, R^z
        self.hidden_candidate = nn.Conv2d(filters, filters, kernel, **recurrent)  # R^h

    def initial_state(self, x: torch.Tensor) -> torch.Tensor:
        return x.new_zeros(x.shape[0], self.filters, *x.shape[-2:])

    def forward(self, x: torch.Tensor, h: torch.Tensor | None, modulation=None) -> tuple[torch.Tensor, torch.Tensor]:
        """x: (B, C_in, H, W); h: (B, F, H, W), or None for the zero state -> (output h_t, new state h_t).

        modulation: None, or (gamma, beta) each (B, 3F, 1, 1) applied to W^* * x_t (see the module docstring).
        """
        wf, wz, wh = _modulate(self.input_gates(x), modulation).chunk(3, dim=1)
        if h is None:  # h_0 = 0 (Refiner.start): R^f h, R^z h and R^h (f . h) vanish, so skip them
            h = (1 - torch.sigmoid(wz)) * torch.tanh(wh)  # (6)-(8) with h_{t-1} = 0
            return h, h
        rf, rz = self.hidden_gates(h).chunk(2, dim=1)
        f = torch.sigmoid(rf + wf)  # (5)
        z = torch.sigmoid(rz + wz)  # (6)
        h_hat = torch.tanh(self.hidden_candidate(f * h) + wh)  # (7)
        h = z * h + (1 - z) * h_hat  # (8)
        return h, h


class ConvLSTMCell(nn.Module):
    """Shi et al. 2015, Eq. 3 (with per-channel peepholes)."""

    def __init__(self, *, in_channels: int, filters: int, kernel: int = 3, dilation: int = 1):
        super().__init__()
        pad = kernel // 2
        self.filters = filters
        self.input_gates = nn.Conv2d(in_channels, 4 * filters, kernel, padding=pad)  # W_x{i,f,c,o} and b
        self.hidden_gates = nn.Conv2d(filters, 4 * filters, kernel, padding=pad * dilation, dilation=dilation,
                                      bias=False)  # W_h{i,f,c,o}
        self.peephole = nn.Parameter(torch.zeros(3, filters, 1, 1))  # W_c{i,f,o}

    def initial_state(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        zeros = x.new_zeros(x.shape[0], self.filters, *x.shape[-2:])
        return zeros, zeros

    def forward(self, x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor] | None, modulation=None):
        """x: (B, C_in, H, W); state (h, c) each (B, F, H, W), or None for the zero state -> (h_t, (h_t, c_t)).

        modulation: None, or (gamma, beta) each (B, 4F, 1, 1) applied to W_x * x_t (see the module docstring).
        """
        xi, xf, xc, xo = _modulate(self.input_gates(x), modulation).chunk(4, dim=1)
        if state is None:  # (h_0, c_0) = 0 (Refiner.start): W_h * h and the c_{t-1} terms vanish, so skip them
            c = torch.sigmoid(xi) * torch.tanh(xc)
            h = torch.sigmoid(xo + self.peephole[2] * c) * torch.tanh(c)
            return h, (h, c)
        h, c = state
        hi, hf, hc, ho = self.hidden_gates(h).chunk(4, dim=1)
        i = torch.sigmoid(xi + hi + self.peephole[0] * c)
        f = torch.sigmoid(xf + hf + self.peephole[1] * c)
        c = f * c + i * torch.tanh(xc + hc)
        o = torch.sigmoid(xo + ho + self.peephole[2] * c)
        h = o * torch.tanh(c)
        return h, (h, c)


def _axis_context(profile: torch.Tensor) -> list[torch.Tensor]:
    """profile: (B, n) >= 0, the heatmap's maximum across each row or column, scaled to peak 1.

    Returns four (B, n) maps for cell i: the most of the profile strictly past i towards the end
    (towards the start), and the sum of its rises from the start up to i (of its falls from the end
    down to i). Triangular masks and matrix products, not cummax, so ONNX exports them.
    """
    n = profile.shape[-1]
    idx = torch.arange(n, device=profile.device)
    later = (idx.view(1, n) > idx.view(n, 1)).to(profile.dtype)  # later[i, j]: j lies past i towards the end
    beyond_end = (profile.unsqueeze(1) * later).amax(dim=-1)  # (B, n)
    beyond_start = (profile.unsqueeze(1) * later.T).amax(dim=-1)
    rises = F.relu(profile - F.pad(profile, (1, 0))[:, :-1])  # p[i] - p[i-1], p[-1] = 0
    falls = F.relu(profile - F.pad(profile, (0, 1))[:, 1:])  # p[i] - p[i+1], p[n] = 0
    count_from_start = rises @ (1 - later.T)  # sum over j <= i: (1 - later.T)[j, i] = (j <= i)
    count_from_end = falls @ (1 - later)  # sum over j >= i
    return [beyond_end, beyond_start, count_from_start, count_from_end]


def directional_context(q: torch.Tensor) -> torch.Tensor:
    """The eight whole-grid maps of ``context="directional"`` (see the module docstring), per channel.

    q: (B, C, H, W) heatmaps -> (B, 8C, H, W): for each channel in turn, per column (anything to the
    right, to the left, count from the left, from the right), then per row (below, above, from the
    top, from the bottom).
    """
    if q.shape[1] > 1:  # each heatmap channel on its own (model.q_heads > 1)
        b, c, h, w = q.shape
        return directional_context(q.reshape(b * c, 1, h, w)).reshape(b, 8 * c, h, w)
    b, _, h, w = q.shape
    q = q.clamp_min(0)
    maps = []
    for axis, size in ((2, w), (3, h)):  # reduce over rows -> a profile along x; over columns -> along y
        profile = q.amax(dim=axis).reshape(b, size)
        profile = profile / (profile.amax(dim=1, keepdim=True) + PROFILE_EPS)
        shape = (b, 1, 1, w) if axis == 2 else (b, 1, h, 1)  # constant along the axis reduced over
        maps += [m.view(shape).expand(b, 1, h, w) for m in _axis_context(profile)]
    return torch.cat(maps, dim=1)


def centroid_context(q: torch.Tensor) -> torch.Tensor:
    """The three maps of ``context="centroid"`` (see the module docstring), per channel.

    q: (B, C, H, W) heatmaps -> (B, 3C, H, W): for each channel in turn, x - c_x, y - c_y and
    sqrt((x - c_x)^2 + (y - c_y)^2 + 1e-6), where x, y run from -1 to 1 across the grid and
    (c_x, c_y) is the centre of mass of max(0, Q_t) (the grid's centre for an all-zero map).
    """
    b, c, h, w = q.shape
    weights = q.float().clamp_min(0)  # float32 sums over the grid, also under bf16 autocast
    weights = weights / (weights.sum(dim=(2, 3), keepdim=True) + MASS_EPS)
    xs = torch.linspace(-1, 1, w, device=q.device)
    ys = torch.linspace(-1, 1, h, device=q.device)
    cx = (weights.sum(dim=2) * xs).sum(dim=-1)[:, :, None, None]  # (B, C, 1, 1)
    cy = (weights.sum(dim=3) * ys).sum(dim=-1)[:, :, None, None]
    dx = (xs.view(1, 1, 1, w) - cx).expand(b, c, h, w)
    dy = (ys.view(1, 1, h, 1) - cy).expand(b, c, h, w)
    distance = torch.sqrt(dx * dx + dy * dy + DISTANCE_EPS)
    return torch.stack([dx, dy, distance], dim=2).reshape(b, 3 * c, h, w).to(q.dtype)


def directional_and_centroid_context(q: torch.Tensor) -> torch.Tensor:
    """Both: directional_context(q) then centroid_context(q) -> (B, 11C, H, W)."""
    return torch.cat([directional_context(q), centroid_context(q)], dim=1)


# What the ConvRNN reads besides Q_t (``model.refiner_context``): "none" (the paper), "directional"
# (directional_context), "centroid" (centroid_context) or both. config.RefinerContext lists the same names.
CONTEXT_MAPS = {"directional": directional_context, "centroid": centroid_context,
                "directional+centroid": directional_and_centroid_context}
CONTEXTS = {"none": 0, "directional": 8, "centroid": 3, "directional+centroid": 11}  # name -> extra input channels

# How the sentence reaches the refiner (``model.refiner_text``): "none" only through Q_t (the paper),
# "film" also through s_t modulating the input gates. config.RefinerText lists the same names.
TEXT_PATHS = ("none", "film")

# The one list of refiner cells: name -> the ConvRNN cell's class (built with in_channels, filters,
# kernel, dilation); None is the "1x1-conv" ablation, which has no recurrence. config.Cell lists the same names
# (tests/test_registries.py checks that they agree).
CELLS: dict[str, type[ConvGRUCell] | type[ConvLSTMCell] | None] = {
    "convlstm": ConvLSTMCell,
    "convgru": ConvGRUCell,
    "conv1x1": None,
}


class Refiner(nn.Module):
    """Turns the sequence of STEP heatmaps Q_t into refined maps P_t (as logits).

    Args:
        cell: a name in :data:`CELLS`: "convgru", "convlstm" or "conv1x1" (the ablation without a ConvRNN).
        filters, kernel: of the ConvRNN (32, 3 in the paper).
        steps: T, needed by the "conv1x1" variant's final 1x1 conv over [Q_1..Q_T].
        dilation: of the recurrent convolutions R^* (1 in the paper; see the module docstring).
        text: "none" (the paper) or "film": s_t modulates the input gates (see the module docstring).
        text_dim: the size of s_t, needed with ``text="film"``.
        context: "none" (the paper), "directional", "centroid" or "directional+centroid": the ConvRNN
            also reads directional_context(Q_t), centroid_context(Q_t) or both.
        heads: channels of Q_t (1 in the paper; ``model.q_heads``, see model/co_embedding.py).

    Use ``state = refiner.start(q_1)`` then ``logits_t, state = refiner.step(q_t, state, s_t)`` for
    each step, and ``refiner.final(logits_T, qs)`` for the output map.
    """

    def __init__(self, *, cell: str, filters: int, kernel: int = 3, steps: int = 5, dilation: int = 1,
                 text: str = "none", text_dim: int = 0, context: str = "none", heads: int = 1):
        super().__init__()
        if heads < 1:
            raise ValueError(f"refiner heads={heads}; Q_t has at least one channel")
        if cell not in CELLS:
            raise ValueError(f"cell={cell!r}; choose one of: {', '.join(CELLS)}")
        if dilation < 1:
            raise ValueError(f"refiner dilation={dilation}; it must be 1 (the paper) or more")
        if text not in TEXT_PATHS:
            raise ValueError(f"refiner text={text!r}; choose one of: {', '.join(TEXT_PATHS)}")
        if text == "film" and (CELLS[cell] is None or text_dim < 1):
            raise ValueError(f"refiner text='film' needs a ConvRNN cell (convgru or convlstm, not {cell!r}) "
                             f"and the size of s_t (text_dim={text_dim})")
        if context not in CONTEXTS:
            raise ValueError(f"refiner context={context!r}; choose one of: {', '.join(CONTEXTS)}")
        if context != "none" and CELLS[cell] is None:
            raise ValueError(f"refiner context={context!r} needs a ConvRNN cell (convgru or convlstm, not {cell!r})")
        self.kind = cell
        self.context = context
        cell_class = CELLS[cell]
        if cell_class is not None:
            self.cell = cell_class(in_channels=heads * (1 + CONTEXTS[context]), filters=filters, kernel=kernel,
                                   dilation=dilation)
        else:
            self.cell = None
            self.stack = nn.Conv2d(steps * heads, 1, 1)  # final map over [Q_1..Q_T]
        self.head = nn.Conv2d(filters if self.cell is not None else heads, 1, 1)  # Eq. 9: W^P, b^P
        self.film = None
        if text == "film":  # s_t -> (gamma, beta) per input-gate channel, zero at the start
            self.film = nn.Linear(text_dim, 2 * self.cell.input_gates.out_channels)
            nn.init.zeros_(self.film.weight)
            nn.init.zeros_(self.film.bias)

    @torch.no_grad()
    def scale_input_weights(self, gain: float) -> None:
        """Multiply the initial input weights W^* of the ConvRNN (Eqs. 5-8) by ``gain``.

        Q_t of the literal Eq. 4 is a cosine in [0, 1] that starts near 0, so with PyTorch's default
        initialisation it barely moves the gates; a gain is an initialisation, not a change of Eqs. 5-8.
        """
        if self.cell is None:
            return
        self.cell.input_gates.weight.mul_(gain)

    def start(self, q: torch.Tensor):
        """The state before the first step: None, the ConvRNN's zero state (the cells then skip their
        recurrent convolutions, which would only add zeros: the first of T steps' worth, exactly)."""
        return None

    def step(self, q: torch.Tensor, state, text: torch.Tensor | None = None):
        """q: (B, heads, H, W), text: s_t (B, D) (read with ``text="film"``) -> logits of P_t (B, 1, H, W), new
        state."""
        if self.cell is None:
            return self.head(q), None
        modulation = None
        if self.film is not None:
            if text is None:
                raise ValueError("this refiner reads s_t (text='film'): pass it to step(q, state, text)")
            gamma, beta = self.film(text)[:, :, None, None].chunk(2, dim=1)  # each (B, gates, 1, 1)
            modulation = (gamma, beta)
        x = q if self.context == "none" else torch.cat([q, CONTEXT_MAPS[self.context](q).to(q.dtype)], dim=1)
        out, state = self.cell(x, state, modulation)
        return self.head(out), state

    def output(self, state) -> torch.Tensor | None:
        """The ConvRNN's output h_t held in ``state`` ((h, c) for ConvLSTM, h for ConvGRU); None without one."""
        if self.cell is None or state is None:
            return None
        return state[0] if isinstance(state, tuple) else state

    def final(self, last_logits: torch.Tensor, qs: list[torch.Tensor]) -> torch.Tensor:
        """Logits of the output map (B, 1, H, W)."""
        if self.cell is None:
            return self.stack(torch.cat(qs, dim=1))  # (B, T * heads, H, W) -> (B, 1, H, W)
        return last_logits
