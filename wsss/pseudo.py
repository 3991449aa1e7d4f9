"""Seeds -> label maps: threshold pseudo labels and PSA's CRF score dicts (docs/method.md,
CAM inference; docs/method.md, Dense CRF). numpy in, numpy out; no torch.

A seed dict is ``{class index k: H x W map in [0, 1]}`` (``dict/<id>.npy``). A PSA score dict
is ``{0: background, k + 1: class k}`` of H x W float32 probabilities, keys in ascending
order (``crf/<alpha>/<id>.npy``, what affinity training reads).
"""
from __future__ import annotations

from typing import Dict, Tuple

import numpy as np


def pseudo_label(cams: Dict[int, np.ndarray], threshold: float,
                 shape: Tuple[int, int]) -> np.ndarray:
    """argmax of [threshold, CAMs] as an H x W uint8 index image (0 background, k+1 class
    k; background wins ties), compared in float32 like the evaluator."""
    if not cams:
        return np.zeros(shape, np.uint8)
    keys = sorted(cams)
    stack = np.stack([np.full(shape, threshold, np.float32)]
                     + [np.asarray(cams[k], np.float32) for k in keys])
    lut = np.array([0] + [k + 1 for k in keys], np.uint8)
    return lut[np.argmax(stack, axis=0)]


def crf_score_dict(rgb: np.ndarray, cams: Dict[int, np.ndarray],
                   alpha: float) -> Dict[int, np.ndarray]:
    """PSA's ``_crf_with_alpha``: the dense CRF (preset "seed") of
    ``[(1 - max_k cam_k)^alpha, cam_k ...]`` on the uint8 RGB image, as a score dict
    ``{0: background, k + 1: class k}`` (float32). An image without classes gets
    ``{0: ones}``."""
    from wsss.crf import crf_with_alpha

    if not cams:
        return {0: np.ones(rgb.shape[:2], np.float32)}
    keys = sorted(cams)
    q = crf_with_alpha(rgb, np.stack([np.asarray(cams[k], np.float32) for k in keys]), alpha)
    return {0: q[0], **{k + 1: q[i + 1] for i, k in enumerate(keys)}}


def score_dict_label(scores: Dict[int, np.ndarray]) -> np.ndarray:
    """The label image of a PSA score dict: the key of the highest score (first key wins
    ties) as uint8 (0 background, k + 1 class k)."""
    keys = sorted(scores)
    lut = np.asarray(keys, np.uint8)
    return lut[np.argmax(np.stack([np.asarray(scores[k]) for k in keys]), axis=0)]
