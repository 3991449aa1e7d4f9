"""The dense CRF (pydensecrf, installed as ``pydensecrf2``) with the two presets of the
references (docs/method.md, Dense CRF): ``"seed"`` (PSA's ``crf_inference``: Gaussian sxy 3
compat 3, bilateral sxy 80 srgb 13 compat 10) for the CRF score maps of the seeds, and
``"seg"`` (MCTformer's ``seg/tool/imutils.py``: Gaussian sxy 4 compat 3, bilateral sxy 83
srgb 5 compat 3) for segmentation predictions. numpy in, numpy out; any number of labels.
"""
from __future__ import annotations

import numpy as np

from utils.errors import UserError

PRESETS = {"seed": {"gaussian": (3, 3), "bilateral": (80, 13, 10)},
           "seg": {"gaussian": (4, 3), "bilateral": (83, 5, 3)}}


def crf_available() -> bool:
    """Whether pydensecrf (the ``pydensecrf2`` package) can be imported."""
    try:
        import pydensecrf.densecrf  # noqa: F401  (availability check)
    except ImportError:
        return False
    return True


def dense_crf(rgb: np.ndarray, probs: np.ndarray, kind: str = "seed",
              iterations: int = 10) -> np.ndarray:
    """Mean-field inference of the dense CRF on ``rgb`` (H x W x 3 uint8) with unary
    ``float32(-log(clip(probs, 1e-5, 1)))`` of ``probs`` (K x H x W, as given: not
    renormalised); returns the K x H x W float32 marginals."""
    try:
        import pydensecrf.densecrf as dcrf
        from pydensecrf.utils import unary_from_softmax
    except ImportError:
        raise UserError("the dense CRF needs pydensecrf: pip install pydensecrf2") from None
    if kind not in PRESETS:
        raise ValueError(f"kind must be one of {sorted(PRESETS)}, not {kind!r}")
    K, H, W = probs.shape
    if rgb.shape[:2] != (H, W):
        raise ValueError(f"image {rgb.shape[:2]} and scores {(H, W)} differ in size")
    d = dcrf.DenseCRF2D(W, H, K)
    d.setUnaryEnergy(np.ascontiguousarray(unary_from_softmax(probs)))
    sxy, compat = PRESETS[kind]["gaussian"]
    d.addPairwiseGaussian(sxy=sxy, compat=compat)
    sxy, srgb, compat = PRESETS[kind]["bilateral"]
    d.addPairwiseBilateral(sxy=sxy, srgb=srgb, rgbim=np.array(rgb, np.uint8, order="C"),
                           compat=compat)
    return np.array(d.inference(iterations), np.float32).reshape(K, H, W)


def crf_with_alpha(rgb: np.ndarray, cams: np.ndarray, alpha: float) -> np.ndarray:
    """PSA's ``_crf_with_alpha`` (``infer_cls.py``): seeds ``cams`` (n x H x W, cast to
    float32) -> ``dense_crf`` (preset "seed") of ``[(1 - max_k cam_k)^alpha, cam_k ...]``
    built in float32: (n + 1) x H x W float32, background first."""
    v = np.asarray(cams, np.float32)
    bg = np.power(1 - v.max(0, keepdims=True), np.float32(alpha)) if len(v) else \
        np.ones((1,) + v.shape[1:], np.float32)
    return dense_crf(rgb, np.concatenate([bg, v]).astype(np.float32), kind="seed")
