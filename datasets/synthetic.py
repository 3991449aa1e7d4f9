"""Synthetic scenes at real datasets' geometry (500 x 375 for VOC, 640 x 480 for COCO), for
measuring file sizes and CRF costs without the data: a textured RGB image with a few
blob-shaped objects, seed-like CAMs (smooth maps bilinearly upsampled from a 14 x 14 patch
grid, as a ViT's are) and segmentation-like class probabilities (soft boundaries). numpy
and OpenCV only; deterministic for a seed.
"""
from __future__ import annotations

from typing import Sequence, Tuple

import cv2
import numpy as np

from datasets.layout import dataset

GEOMETRY = {"VOC": (375, 500), "COCO": (480, 640)}     # H, W of a typical image
CLASSES = {"VOC": dataset("VOC12").num_classes,        # the seed network's classes
           "COCO": dataset("COCO").num_classes}


def _blobs(rng: np.random.Generator, n: int, height: int, width: int,
           grid: int = 14) -> np.ndarray:
    """n smooth maps in [0, 1], peak 1: a Gaussian bump (plus a little patch noise) on a
    ``grid`` x ``grid`` lattice, bilinearly upsampled to height x width."""
    yy, xx = np.mgrid[0:grid, 0:grid].astype(np.float32)
    out = np.empty((n, height, width), np.float32)
    for i in range(n):
        cy, cx = rng.uniform(2, grid - 2, 2)
        r = rng.uniform(1.5, 4.0)
        g = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))
        g = g + 0.05 * rng.random((grid, grid), dtype=np.float32)
        up = cv2.resize(g.astype(np.float32), (width, height), interpolation=cv2.INTER_LINEAR)
        out[i] = up / up.max()
    return out


def synthetic_scene(height: int, width: int, n_classes: int = 2, seed: int = 0
                    ) -> Tuple[np.ndarray, np.ndarray]:
    """``(rgb, cams)``: an H x W x 3 uint8 image (smooth colour gradients, one flat colour per
    object, sensor noise) and n_classes x H x W float32 CAMs in [0, 1] of its objects."""
    rng = np.random.default_rng(seed)
    cams = _blobs(rng, n_classes, height, width)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    rgb = np.stack([120 + 60 * np.sin(xx / 40), 140 + 50 * np.cos(yy / 30),
                    90 + 40 * np.sin((xx + yy) / 50)], -1)
    for cam in cams:
        rgb[cam > 0.5] = rng.uniform(0, 255, 3)
    rgb += 15 * rng.standard_normal(rgb.shape).astype(np.float32)
    return np.clip(rgb, 0, 255).astype(np.uint8), cams


def synthetic_probs(height: int, width: int, num_classes: int, present: Sequence[int] = (),
                    seed: int = 0, sharpness: float = 10.0) -> np.ndarray:
    """num_classes x H x W float32 softmax probabilities of a confident segmentation
    network: background plus the blob-shaped classes ``present`` (default: 2 drawn at
    random), each winning where its blob exceeds 0.4, with soft boundaries (logits
    ``sharpness`` x (blob - 0.4) above the background's); the other classes a few units
    lower everywhere."""
    rng = np.random.default_rng(seed)
    if not present:
        present = tuple(rng.choice(np.arange(1, num_classes), 2, replace=False))
    logits = rng.normal(-4.0, 0.5, (num_classes, 1, 1)).astype(np.float32) \
        + 0.5 * _blobs(rng, num_classes, height, width)
    logits[0] = 4.0
    for k, blob in zip(present, _blobs(rng, len(present), height, width)):
        logits[k] = 4.0 + sharpness * (blob - 0.4)
    e = np.exp(logits - logits.max(0, keepdims=True))
    return (e / e.sum(0, keepdims=True)).astype(np.float32)
