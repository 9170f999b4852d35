"""Pictures of a prediction: the mask over the image, and the paper's Figure 4 view.

- ``overlay(image, mask)``: the mask tinted over the image with its outline, uint8 RGB.
- ``mask_image(mask)``: a black/white ``L`` image of a mask, for saving as PNG.
- ``explain_figure(prediction, image)``: Figure 4 of the paper. On the left the word-level
  matrix, one row per time step t and one column per word j; on the right the refined
  heatmaps P_t over the image, one per step (a row per fold of F1..F5). The matrix is either
  ``view="attention"``, alpha_t of Eq. 1 (the weights that build s_t from the h_j; rows sum to
  1), or ``view="similarity"``, the cosine of s_t and h_j (the reading of the Figure 4
  caption). The figure's caption names the view it shows.

``explain_figure`` draws with matplotlib (``pip install 'step-ris[viz]'``; off-screen, thread-safe:
no pyplot state), the rest with numpy and Pillow only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import numpy as np
from PIL import Image

from ._extras import require
from .constants import EXPLAIN_VIEWS
from .data.image_io import ImageSource, load_image

if TYPE_CHECKING:
    from .predictor import Prediction

View = Literal["attention", "similarity"]
VIEWS: tuple[str, ...] = EXPLAIN_VIEWS
MASK_COLOR = (255, 40, 40)
HEAT_CMAP = "jet"


def overlay(image: ImageSource, mask: np.ndarray, color: tuple[int, int, int] = MASK_COLOR, alpha: float = 0.5, *,
            outline: bool = True) -> np.ndarray:
    """The image with ``mask`` tinted in ``color`` (opacity ``alpha``) and outlined.

    image: anything ``data.image_io.load_image`` reads, or an (H, W, 3) uint8 array.
    mask: (H, W) bool (nonzero = inside), the image's size. Returns (H, W, 3) uint8.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha={alpha} must be between 0 and 1")
    if len(color) != 3 or not all(0 <= int(c) <= 255 for c in color):
        raise ValueError(f"color={color!r} must be three values in 0..255 (R, G, B)")
    rgb = load_image(image)
    m = np.asarray(mask) != 0
    if m.shape != rgb.shape[:2]:
        raise ValueError(f"mask of shape {m.shape} does not match the image's {rgb.shape[:2]} (H, W)")
    out = rgb.astype(np.float32)
    tint = np.asarray(color, dtype=np.float32)
    out[m] = (1.0 - alpha) * out[m] + alpha * tint
    if outline and m.any():
        thickness = max(1, round(max(m.shape) / 300))
        out[m & ~_erode(m, thickness)] = tint
    return np.rint(out).astype(np.uint8)


def _erode(mask: np.ndarray, steps: int) -> np.ndarray:
    """4-neighbour binary erosion, ``steps`` times (outside the image counts as background)."""
    m = mask.copy()
    for _ in range(steps):
        p = np.pad(m, 1, constant_values=False)
        m = m & p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]
    return m


def mask_image(mask: np.ndarray) -> Image.Image:
    """(H, W) mask -> 8-bit grey PIL image, 255 inside, 0 outside."""
    m = np.asarray(mask)
    if m.ndim != 2:
        raise ValueError(f"a mask must be (H, W), got shape {m.shape}")
    return Image.fromarray(((m != 0) * 255).astype(np.uint8), mode="L")


def caption(prediction: Prediction, view: View) -> str:
    """The sentence under ``explain_figure``: which matrix is shown and how to read it."""
    if view == "attention":
        text = ("Left: word attention α_t of Eq. 1, the weights with which step t builds its textual "
                "representation s_t from the word states h_j (each row sums to 1).")
        silent = [t + 1 for t in range(prediction.attention.shape[0]) if not np.any(prediction.attention[t])]
        if silent:
            steps = ", ".join(map(str, silent))
            text += (f" Step{'s' if len(silent) > 1 else ''} {steps}: s_t is the final biLSTM state, "
                     "no Eq. 1 (row of zeros).")
    else:
        text = ("Left: cosine similarity of s_t (the learned textual representation at step t) and h_j "
                "(the biLSTM state of word j), the reading of the paper's Figure 4.")
    return text + " Right: the refined heatmap P_t (Eq. 9) of each step over the image; Fl = visual level read."


def explain_figure(prediction: Prediction, image: ImageSource, view: View = "attention", *, columns: int = 5,
                   dpi: int = 100) -> Image.Image:
    """The Figure-4 view of one prediction as an RGB PIL image.

    prediction: from ``Predictor.predict``; image: the same image (any ``load_image`` input).
    view: "attention" (alpha_t, Eq. 1) or "similarity" (cosine of s_t and h_j).
    columns: heatmaps per row (5: one row per fold F1..F5).
    """
    if view not in VIEWS:
        raise ValueError(f"view={view!r}; choose 'attention' (alpha of Eq. 1) or 'similarity' (cosine of s_t, h_j)")
    require("matplotlib", extra="viz", purpose="explain_figure (the Figure-4 view)")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure

    rgb = load_image(image)
    if rgb.shape[:2] != prediction.size:
        raise ValueError(f"image is {rgb.shape[1]} x {rgb.shape[0]} but the prediction was made on a "
                         f"{prediction.size[1]} x {prediction.size[0]} image; pass the same image")
    matrix = prediction.attention if view == "attention" else prediction.similarity  # (T, L)
    steps = prediction.steps  # (T, h, w)
    T, L = matrix.shape
    h, w = steps.shape[1:]
    small = np.asarray(Image.fromarray(rgb).resize((w, h), Image.BILINEAR))  # the image at the steps' size
    levels = prediction.levels or tuple(t % 5 for t in range(T))
    cols = max(1, min(columns, T))
    rows = -(-T // cols)

    # sizes in inches: a heatmap's longer side is 1.9; a matrix cell is 0.45 x 0.32
    pw, ph = (1.9, 1.9 * h / w) if w >= h else (1.9 * w / h, 1.9)
    left_w, right_w = max(3.0, 0.45 * L + 1.9), cols * (pw + 0.12) + 0.9
    body_h = max(0.32 * T + 1.5, rows * (ph + 0.3) + 0.3)
    fig = Figure(figsize=(left_w + right_w, body_h + 1.2), dpi=dpi, layout="constrained")
    FigureCanvasAgg(fig)
    notes = []
    if prediction.unknown_words:
        unknown = list(dict.fromkeys(prediction.unknown_words))
        notes.append("unknown words: " + ", ".join(unknown[:8]) + (", ..." if len(unknown) > 8 else ""))
    if prediction.truncated:
        notes.append(f"only the first {len(prediction.words)} words are read")
    title = _clip(prediction.expression, 100).replace("$", r"\$")  # "$...$" would be read as math text
    fig.suptitle(f'"{title}"' + ("\n(" + "; ".join(notes) + ")" if notes else ""), fontsize=11)
    fig.supxlabel(_wrap(caption(prediction, view), int((left_w + right_w) * 14)), fontsize=8.5, x=0.01,
                  ha="left")
    left, right = fig.subfigures(1, 2, width_ratios=(left_w, right_w), wspace=0.02)

    # left: the T x L matrix, one row per step, one column per word
    ax = left.subplots()
    if view == "attention":
        im = ax.imshow(matrix, cmap="Blues", vmin=0.0, vmax=1.0)
        ax.set_title(r"word attention $\alpha_t$ (Eq. 1)", fontsize=10)
    else:
        im = ax.imshow(matrix, cmap="RdBu_r", vmin=-1.0, vmax=1.0)
        ax.set_title(r"similarity $\cos(s_t, h_j)$", fontsize=10)
    slanted = max(map(len, prediction.words)) > 3
    ax.set_xticks(range(L), prediction.words, rotation=50 if slanted else 0, ha="right" if slanted else "center",
                  rotation_mode="anchor", fontsize=9)
    ax.set_yticks(range(T), [f"t={t + 1}  F{levels[t] + 1}" for t in range(T)], fontsize=8)
    ax.tick_params(length=0)
    ax.set_aspect(0.32 / 0.45)
    if T * L <= 200:
        for t in range(T):
            for j in range(L):
                v = float(matrix[t, j])
                ax.text(j, t, f"{v:.2f}", ha="center", va="center", fontsize=6.5,
                        color="white" if abs(v) > 0.6 else "black")
    left.colorbar(im, cax=ax.inset_axes((1.03, 0.0, 0.18 / (0.45 * L), 1.0)))

    # right: the T heatmaps P_t over the image, a row per fold
    axes = np.atleast_1d(right.subplots(rows, cols, squeeze=False)).ravel()
    for t, a in enumerate(axes):
        a.set_xticks([])
        a.set_yticks([])
        if t >= T:
            a.set_axis_off()
            continue
        a.imshow(small)
        a.imshow(steps[t], cmap=HEAT_CMAP, vmin=0.0, vmax=1.0, alpha=0.5, interpolation="bilinear")
        a.set_title(f"$P_{{{t + 1}}}$  (F{levels[t] + 1})", fontsize=9, pad=3)
    scale = ScalarMappable(norm=Normalize(0.0, 1.0), cmap=HEAT_CMAP)  # the colours without the overlay's alpha
    right.colorbar(scale, cax=axes[cols - 1].inset_axes((1.05, 0.0, 0.18 / pw, 1.0)), label="$P_t$")

    fig.canvas.draw()
    buf = np.asarray(fig.canvas.buffer_rgba())
    return Image.fromarray(buf[:, :, :3].copy())


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _wrap(text: str, width: int) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(text, max(40, width)))


__all__ = ["MASK_COLOR", "VIEWS", "caption", "explain_figure", "mask_image", "overlay"]
