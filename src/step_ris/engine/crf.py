"""DenseCRF post-processing of a foreground probability map (the "+DCRF" rows of Table 2).

The paper's own numbers (STEP, Tables 1-3) use no CRF; the baselines it compares with (RMI,
RRN) report results with and without one, so a CRF is offered to compare like with like.

A two-label fully connected CRF (Kraehenbuehl & Koltun 2011) through ``pydensecrf2`` (a
maintained build of pydensecrf; ``pip install 'step-ris[crf]'``, import name ``pydensecrf``).
Unaries are ``-log(1 - p)`` (background) and ``-log(p)`` (foreground); the result is the
foreground marginal after mean-field inference, so thresholding it at 0.5 is the CRF's MAP label.

Default parameters (:data:`DEFAULT_PARAMS`) are the ones of the referring-segmentation
codebases the paper compares with: RMI (Liu et al. 2017, TF-phrasecut) and RRN (Li et al. 2018)
use, for their "+DCRF" results, a Gaussian (smoothness) kernel with ``sxy=3, compat=3``, a
bilateral (appearance) kernel with ``sxy=20, srgb=3, compat=10`` and 5 mean-field iterations.
Those codebases ran the CRF on the 320 x 320 network input; here (docs/model.md, choice 16) it runs at
the image's original resolution, so ``sxy`` is in original pixels (about twice as narrow,
relative to a COCO photo, as in those codebases). Every parameter is a keyword argument.
"""

from __future__ import annotations

import numpy as np

DEFAULT_PARAMS: dict[str, float] = {
    "iters": 5,
    "gaussian_sxy": 3.0,
    "gaussian_compat": 3.0,
    "bilateral_sxy": 20.0,
    "bilateral_srgb": 3.0,
    "bilateral_compat": 10.0,
}
"""RMI / RRN's DenseCRF settings (see the module docstring)."""

_EPS = 1e-8
_INSTALL = "pip install 'step-ris[crf]'  (installs pydensecrf2, a maintained pydensecrf build)"


class DenseCRFPackageError(ImportError, ValueError):
    """``pydensecrf2`` (an optional dependency) is not installed.

    An ``ImportError``; also a ``ValueError`` so that the command line reports it as a user error.
    """


def require_densecrf():
    """The ``pydensecrf.densecrf`` module, or :class:`DenseCRFPackageError` saying how to install it."""
    try:
        import pydensecrf.densecrf as dcrf
    except ImportError as e:
        raise DenseCRFPackageError(
            f"DenseCRF post-processing needs the package pydensecrf2, which is not installed ({e}); run: {_INSTALL}"
        ) from None
    return dcrf


def dense_crf(image: np.ndarray, prob: np.ndarray, iters: int = DEFAULT_PARAMS["iters"], *,
              gaussian_sxy: float = DEFAULT_PARAMS["gaussian_sxy"],
              gaussian_compat: float = DEFAULT_PARAMS["gaussian_compat"],
              bilateral_sxy: float = DEFAULT_PARAMS["bilateral_sxy"],
              bilateral_srgb: float = DEFAULT_PARAMS["bilateral_srgb"],
              bilateral_compat: float = DEFAULT_PARAMS["bilateral_compat"]) -> np.ndarray:
    """Refine a foreground probability map with a two-label dense CRF.

    Args:
        image: uint8 ``(H, W, 3)`` RGB image the map belongs to (the original photo).
        prob: float ``(H, W)`` foreground probabilities in [0, 1].
        iters: mean-field iterations.
        gaussian_sxy, gaussian_compat: smoothness kernel (position only), std in pixels and weight.
        bilateral_sxy, bilateral_srgb, bilateral_compat: appearance kernel (position and colour),
            stds in pixels and colour levels, and weight.

    Returns:
        float32 ``(H, W)``: the foreground marginal after inference (threshold at 0.5 for labels).

    Raises:
        DenseCRFPackageError: pydensecrf2 is not installed.
        ValueError: shapes or types that do not fit.
    """
    dcrf = require_densecrf()
    image = np.asarray(image)
    prob = np.asarray(prob)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"dense_crf expects a uint8 (H, W, 3) RGB image, got {image.dtype} {image.shape}")
    if prob.shape != image.shape[:2]:
        raise ValueError(f"probability map {prob.shape} and image {image.shape[:2]} must have the same H x W")
    if int(iters) < 1:
        raise ValueError(f"iters must be >= 1, got {iters}")
    h, w = prob.shape
    p = np.clip(np.nan_to_num(prob.astype(np.float32), nan=0.5), _EPS, 1.0 - _EPS)
    unary = np.stack([-np.log(1.0 - p), -np.log(p)]).reshape(2, -1)  # (2, H*W): background, foreground
    crf = dcrf.DenseCRF2D(w, h, 2)
    crf.setUnaryEnergy(np.ascontiguousarray(unary, dtype=np.float32))
    crf.addPairwiseGaussian(sxy=gaussian_sxy, compat=gaussian_compat)
    crf.addPairwiseBilateral(sxy=bilateral_sxy, srgb=bilateral_srgb, rgbim=np.ascontiguousarray(image),
                             compat=bilateral_compat)
    q = np.asarray(crf.inference(int(iters)), dtype=np.float32).reshape(2, h, w)
    return q[1].copy()


__all__ = ["DEFAULT_PARAMS", "DenseCRFPackageError", "dense_crf", "require_densecrf"]
