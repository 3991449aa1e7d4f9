"""The evaluation report (``evaluation.py``): JSON records, tables, and the threshold the
other stages take from it. No torch import.
"""
from __future__ import annotations

import json
import os
from typing import Dict, List, Sequence

import numpy as np


DEFAULT_THRESHOLD = 0.45       # background score when no evaluation has been run yet


def best_threshold(path: str, default: float = DEFAULT_THRESHOLD) -> float:
    """The best CAM threshold of the last ``evaluation.py --task cam`` of a run (its
    ``eval_cam.json``, ``path``), else ``default``."""
    if not os.path.isfile(path):
        return default
    with open(path) as f:
        return float(json.load(f)["best_threshold"])


def class_names(classes: Sequence[str], num_classes: int) -> List[str]:
    """``background`` + the dataset's classes, or generic names for another class count."""
    names = ["background", *classes]
    return names if len(names) == num_classes else [f"class {k}" for k in range(num_classes)]


def cam_results(thresholds: np.ndarray, miou: np.ndarray, class_iou: np.ndarray,
                names: Sequence[str]) -> dict:
    """The JSON record of a threshold sweep (percent; best = highest mIoU, lowest t)."""
    best = int(np.argmax(miou))
    return {"thresholds": [round(float(t), 6) for t in thresholds],
            "miou": [float(m) for m in miou],
            "best_miou": float(miou[best]), "best_threshold": float(thresholds[best]),
            "class_iou": dict(zip(names, map(float, class_iou[best]))),
            "class_iou_all": [[float(v) for v in row] for row in class_iou]}


def png_results(miou: float, class_iou: np.ndarray, names: Sequence[str],
                nanmean: float) -> dict:
    """The JSON record of a label evaluation (no thresholds: empty lists); ``nanmean`` is
    the segmentation reference's mIoU over the classes present."""
    return {"thresholds": [], "miou": [], "best_miou": float(miou), "best_threshold": None,
            "nanmean_miou": float(nanmean),
            "class_iou": dict(zip(names, map(float, class_iou)))}


def format_threshold_table(thresholds: Sequence[float], miou: Sequence[float]) -> str:
    best = int(np.argmax(miou))
    rows = [f"{'threshold':>9}  {'mIoU':>6}"]
    rows += [f"{t:9.2f}  {m:6.2f}{'  <- best' if i == best else ''}"
             for i, (t, m) in enumerate(zip(thresholds, miou))]
    return "\n".join(rows)


def format_class_table(class_iou: Dict[str, float]) -> str:
    width = max(len(n) for n in class_iou)
    return "\n".join(f"{n:>{width}}  {v:6.2f}" for n, v in class_iou.items())


def write_json(res: dict, path: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(res, f, indent=1)
    os.replace(tmp, path)
