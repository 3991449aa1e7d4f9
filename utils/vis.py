"""Drawing helpers: the VOC colour palette, palette PNGs, CAM overlays, the mIoU curve.

Pure functions on numpy arrays; no torch (``evaluation.py`` imports this module and must
start fast). matplotlib is imported only where a plot is drawn (Agg canvas, no pyplot).
"""
from __future__ import annotations

import os
from typing import Dict, List, Sequence, Tuple

import cv2
import numpy as np
from PIL import Image

from utils.io import atomic_path


def voc_palette(n: int = 256) -> List[int]:
    """The PASCAL VOC colour map as a flat ``[r0, g0, b0, r1, ...]`` list of ``n`` colours
    (index 0 black, 1 dark red, ..., 255 the "void" cream)."""
    pal = []
    for i in range(n):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        pal += [r, g, b]
    return pal


_PALETTE = voc_palette()


def save_label_png(path: str, label: np.ndarray) -> None:
    """Write an H x W index image (values 0..255) as a VOC palette PNG (mode P), atomically."""
    im = Image.fromarray(np.asarray(label, dtype=np.uint8), mode="P")
    im.putpalette(_PALETTE)
    with atomic_path(path) as tmp:
        im.save(tmp)


def cam_overlay(rgb: np.ndarray, cam: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """``rgb`` (H x W x 3 uint8) blended with ``cam`` (H x W in [0, 1]) in the jet colour
    map; returns H x W x 3 uint8 RGB."""
    heat = cv2.applyColorMap(np.uint8(np.clip(cam, 0, 1) * 255), cv2.COLORMAP_JET)
    heat = cv2.cvtColor(heat, cv2.COLOR_BGR2RGB)
    return cv2.addWeighted(rgb, 1 - alpha, heat, alpha, 0)


def _titled(panel: np.ndarray, title: str, bar: int = 20) -> np.ndarray:
    """``panel`` under a white strip with ``title`` written in black."""
    strip = np.full((bar, panel.shape[1], 3), 255, np.uint8)
    cv2.putText(strip, title, (3, bar - 6), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1,
                cv2.LINE_AA)
    return np.concatenate([strip, panel], axis=0)


def cam_panel(rgb: np.ndarray, cams: Dict[int, np.ndarray], class_names: Sequence[str]
              ) -> np.ndarray:
    """The image beside one jet overlay per class of ``cams`` (``{class index: map}``),
    each panel titled (``image``, then the class names); H+20 x W*(1+K) x 3 uint8 RGB."""
    panels = [_titled(rgb, "image")]
    for k in sorted(cams):
        panels.append(_titled(cam_overlay(rgb, cams[k]), f"{k}: {class_names[k]}"))
    return np.concatenate(panels, axis=1)


def save_jpeg(path: str, rgb: np.ndarray, quality: int = 90) -> None:
    with atomic_path(path) as tmp:
        Image.fromarray(rgb).save(tmp, quality=quality)


def save_mask_grid(masks: np.ndarray, class_names: Sequence[str], path: str) -> None:
    """A grid of per-class FIM masks (C x S x S in [0, 1], centred spectra: DC in the
    middle) as a PNG."""
    from matplotlib.figure import Figure   # no pyplot: no global backend, no GUI

    C = masks.shape[0]
    cols = min(C, 10)
    rows = (C + cols - 1) // cols
    fig = Figure(figsize=(1.6 * cols, 1.8 * rows), dpi=100)
    axes = fig.subplots(rows, cols, squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < C:
            ax.imshow(masks[i], cmap="magma", vmin=0, vmax=1)
            ax.set_title(class_names[i], fontsize=7)
    fig.suptitle("FIM masks (frequencies suppressed per class)", fontsize=9)
    fig.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path)


def plot_miou_curve(thresholds: Sequence[float], miou: Sequence[float], path: str,
                    title: str = "") -> None:
    """mIoU (percent) against the background threshold, best point marked, as a PNG."""
    from matplotlib.figure import Figure   # no pyplot: no global backend, no GUI

    best = int(np.argmax(miou))
    fig = Figure(figsize=(5, 3.5), dpi=100)
    ax = fig.subplots()
    ax.plot(thresholds, miou, marker=".")
    ax.plot([thresholds[best]], [miou[best]], "r*", markersize=10,
            label=f"best {miou[best]:.2f} at {thresholds[best]:.2f}")
    ax.set_xlabel("background threshold")
    ax.set_ylabel("mIoU (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="best")
    fig.tight_layout()
    fig.savefig(path)


def save_panel_grid(rows: Sequence[Sequence[Tuple[np.ndarray, str]]], path: str) -> None:
    """A figure of titled panels, one row per image: each panel an H x W x 3 uint8 RGB
    picture or an H x W index map (drawn in the VOC palette)."""
    from matplotlib.figure import Figure

    pal = np.array(voc_palette(), np.uint8).reshape(-1, 3)
    cols = max(len(r) for r in rows)
    fig = Figure(figsize=(1.9 * cols, 2.0 * len(rows)), dpi=90)
    axes = fig.subplots(len(rows), cols, squeeze=False)
    for ax_row, row in zip(axes, rows):
        for ax in ax_row:
            ax.axis("off")
        for ax, (img, title) in zip(ax_row, row):
            ax.imshow(pal[img] if img.ndim == 2 else img)
            ax.set_title(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
