"""The evaluation report (``evaluation.py``): JSON records, tables, and the threshold the
other stages take from it. No torch import.
"""
from __future__ import annotations

import json
import os
from typing import Dict, List, Sequence

import numpy as np

from utils.errors import UserError, resolve_run_folder

DEFAULT_THRESHOLD = 0.45       # background score when no evaluation has been run yet
PREDICTION_DIRS = {"cam": "dict", "png": "png"}


def best_threshold(exp_dir: str, default: float = DEFAULT_THRESHOLD) -> float:
    """The best CAM threshold of the last ``evaluation.py --task cam`` of the run
    (``<exp_dir>/eval_cam.json``), else ``default``."""
    path = os.path.join(exp_dir, "eval_cam.json")
    if not os.path.isfile(path):
        return default
    with open(path) as f:
        return float(json.load(f)["best_threshold"])


def prediction_dir(task: str, dict_dir: str, exp_dir: str) -> str:
    """The folder to score: ``dict_dir`` when given (in the run's folder ``exp_dir`` when
    there, else as given: ``utils.errors.resolve_run_folder``), else the run's folder for
    ``task``."""
    if dict_dir is None and task not in PREDICTION_DIRS:
        raise UserError(f"--task {task} needs --dict_dir, e.g. crf/1 (the run's "
                        f"{os.path.join(exp_dir, 'crf', '1')})")
    return resolve_run_folder(exp_dir, dict_dir, PREDICTION_DIRS.get(task, ""), "--dict_dir",
                              "predictions", "infer_PCSS.py, infer_aff.py or infer_seg.py for "
                              "this run")


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
