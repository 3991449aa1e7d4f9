"""Seed evaluation (docs/method.md, Seed evaluation): confusion counts for every threshold
in one pass.

For threshold t the prediction is ``argmax([t, cam_0, ..., cam_{C-1}])`` (background wins
ties; absent classes are 0). Per pixel that is: the best present class ``a`` (lowest index
on ties) with its score ``m``, predicted wherever ``m > t``, background otherwise. So one
read of each file gives, through ``searchsorted`` of ``m`` among the sorted thresholds, a
histogram over (ground truth, class, #thresholds below m), and cumulative sums of that
histogram give the confusion matrix of every threshold. Counts are exact integers; the
comparison is made in float32 like the reference's float32 score volume.

This module imports no torch (``evaluation.py`` starts fast).
"""
from __future__ import annotations

import os
import pickle
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Dict, Iterable, Optional, Sequence, Tuple

import numpy as np

from utils.errors import UserError, describe_missing
from utils.io import read_label_png
from wsss.scorefile import load_cam_dict
from wsss.scorefile import FORMATS, load_score_dict, score_file
from wsss.pseudo import score_dict_label

IGNORE = 255


def default_thresholds(start: float = 0.30, stop: float = 0.60, step: float = 0.01) -> np.ndarray:
    """0.30, 0.31, ..., 0.59 (``stop`` excluded), rounded to avoid float drift."""
    n = int(round((stop - start) / step))
    return np.round(start + step * np.arange(n), 6)


def cam_threshold_histogram(cams: Dict[int, np.ndarray], gt: np.ndarray, num_classes: int,
                            thresholds_sorted: np.ndarray) -> np.ndarray:
    """(K, K, T+1) counts over (gt class, best present class + 1, #thresholds below score)."""
    K, T = num_classes, len(thresholds_sorted)
    valid = gt != IGNORE
    g = gt[valid].astype(np.int64)
    if g.size and g.max() >= K:
        raise ValueError(f"the ground truth has class {int(g.max())} but there are {K} "
                         f"classes with background (--num_classes)")
    if cams:
        keys = sorted(cams)
        bad = [k for k in keys if not 0 <= k < K - 1]
        if bad:
            raise ValueError(f"the CAM dict has class index {bad[0]} but there are {K - 1} "
                             f"classes (keys 0..{K - 2})")
        shapes = {np.shape(cams[k]) for k in keys}
        if shapes != {gt.shape}:
            raise ValueError(f"the CAM maps are {_size(*shapes)} but the ground truth is "
                             f"{_size(gt.shape)} (H x W)")
        stack = np.stack([np.asarray(cams[k], dtype=np.float32) for k in keys])
        stack = stack[:, valid]
        best = np.argmax(stack, axis=0)
        score = np.take_along_axis(stack, best[None], 0)[0]
        cls = np.asarray(keys, dtype=np.int64)[best] + 1
        below = np.searchsorted(thresholds_sorted.astype(np.float32), score, side="left")
    else:
        cls = np.zeros_like(g)
        below = np.zeros_like(g)
    flat = (g * K + cls) * (T + 1) + below
    return np.bincount(flat, minlength=K * K * (T + 1)).reshape(K, K, T + 1)


def _size(*shapes) -> str:
    """'375x500' (H x W) of each shape, joined by ' / '."""
    return " / ".join("x".join(str(n) for n in shape) for shape in shapes)


def confusions_from_histogram(hist: np.ndarray) -> np.ndarray:
    """(T, K, K) confusion matrices (rows: ground truth, cols: prediction), sorted order."""
    K, _, T1 = hist.shape
    # a pixel with ``below = j`` is foreground for thresholds 0..j-1, background from j on
    fg = np.cumsum(hist[..., ::-1], axis=-1)[..., ::-1][..., 1:]      # below > t: K,K,T
    conf = np.moveaxis(fg, -1, 0).copy()                               # T, K, K
    total = hist.sum(-1)                                               # K, K
    conf[:, :, 0] += (total.sum(1)[None] - conf.sum(2))                # the rest is bg
    return conf


def iou_from_confusion(conf: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """mIoU and per-class IoU in percent from (..., K, K) confusion counts."""
    conf = conf.astype(np.float64)
    tp = np.diagonal(conf, axis1=-2, axis2=-1)
    t = conf.sum(-1)
    p = conf.sum(-2)
    iou = tp / (t + p - tp + 1e-10) * 100.0
    return iou.mean(-1), iou


def _check_files(paths: Sequence[str], what: str, hint: str) -> None:
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise UserError(describe_missing(missing, what) + f". {hint}")


def _pairs(pred_dir: str, ext: str, gt_dir: str, names: Sequence[str],
           gt_files: Optional[Sequence[str]], hint: str) -> Tuple[list, list]:
    """Prediction and ground-truth paths of ``names``, all checked to exist."""
    names = [str(n) for n in names]
    if not names:
        raise UserError("the image list is empty: nothing to evaluate")
    preds = [score_file(pred_dir, n) if ext in FORMATS.values() else
             os.path.join(pred_dir, n + ext) for n in names]
    gts = (list(gt_files) if gt_files is not None
           else [os.path.join(gt_dir, n + ".png") for n in names])
    what = "CAM dicts" if ext in FORMATS.values() else "prediction PNGs"
    _check_files(preds, f"{what} in {pred_dir}", hint)
    _check_files(gts, f"ground-truth PNGs in {gt_dir or 'the dataset'}",
                 "Check --gt_dir / --data-path.")
    return preds, gts


def _per_image(fn: Callable[[int], np.ndarray], names: Sequence[str], preds: Sequence[str],
               gts: Sequence[str]) -> Callable[[int], np.ndarray]:
    """``fn`` with what a file can get wrong (unreadable, another size or class count than
    its ground truth) turned into one ``UserError`` naming the image and both files; it
    comes back from the reading threads as it is."""
    def one(i):
        try:
            return fn(i)
        except (ValueError, OSError, EOFError, pickle.UnpicklingError) as e:
            raise UserError(f"image {names[i]}: {e} (prediction {preds[i]}, ground truth "
                            f"{gts[i]})") from None
    return one


def _map_files(fn: Callable[[str], np.ndarray], names: Sequence[str], workers: int,
               progress: bool, desc: str) -> np.ndarray:
    """Sum ``fn(name)`` over names, reading files in a thread pool (I/O and numpy release
    the GIL), with an optional progress bar."""
    total = None
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=len(names), desc=desc, unit="img", dynamic_ncols=True)
    if workers <= 1:
        results: Iterable = map(fn, names)
    else:
        pool = ThreadPoolExecutor(workers)
        results = pool.map(fn, names)
    try:
        for r in results:
            total = r if total is None else total + r
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
        if workers > 1:
            pool.shutdown()
    return total


def _default_workers() -> int:
    return min(8, os.cpu_count() or 1)


def cam_confusions(pred_dir: str, gt_dir: str, names: Sequence[str], num_classes: int = 21,
                   thresholds: Optional[Sequence[float]] = None, workers: Optional[int] = None,
                   progress: bool = False, gt_files: Optional[Sequence[str]] = None
                   ) -> Tuple[np.ndarray, np.ndarray]:
    """Confusion matrices (T, K, K) of CAM dicts for every threshold, reading each file
    once. Returns ``(thresholds, confusions)`` in the caller's threshold order.
    ``gt_files`` (one path per name) replaces ``gt_dir/<name>.png`` (COCO's file names)."""
    th = default_thresholds() if thresholds is None else np.asarray(thresholds, np.float64)
    order = np.argsort(th, kind="stable")
    preds, gts = _pairs(pred_dir, ".npy", gt_dir, names, gt_files,
                        "Run infer_PCSS.py --dict for this list first, or point --dict_dir "
                        "at the right folder.")
    K = num_classes
    th_sorted = th[order]

    def one(i):
        return cam_threshold_histogram(load_cam_dict(preds[i]), read_label_png(gts[i]), K,
                                       th_sorted)

    hist = _map_files(_per_image(one, names, preds, gts), range(len(names)),
                      workers or _default_workers(), progress, "scoring")
    conf_sorted = confusions_from_histogram(hist)
    conf = np.empty_like(conf_sorted)
    conf[order] = conf_sorted
    return th, conf


def cam_miou(pred_dir: str, gt_dir: str, names: Sequence[str], num_classes: int = 21,
             thresholds: Optional[Sequence[float]] = None, workers: Optional[int] = None,
             progress: bool = False, gt_files: Optional[Sequence[str]] = None
             ) -> Tuple[np.ndarray, np.ndarray]:
    """mIoU (T,) and per-class IoU (T, num_classes), in percent, of the CAM dicts in
    ``pred_dir`` against the index PNGs in ``gt_dir`` for every threshold."""
    _, conf = cam_confusions(pred_dir, gt_dir, names, num_classes, thresholds, workers,
                             progress, gt_files)
    return iou_from_confusion(conf)


def label_confusion(pred: np.ndarray, gt: np.ndarray, num_classes: int) -> np.ndarray:
    """(K, K) confusion of an index prediction against ground truth (255 ignored)."""
    if pred.shape != gt.shape:
        raise ValueError(f"the prediction is {_size(pred.shape)} but the ground truth is "
                         f"{_size(gt.shape)} (H x W)")
    valid = gt != IGNORE
    p = pred[valid].astype(np.int64)
    p = np.where(p == IGNORE, 0, p)   # unlabelled prediction pixels count as background
    K = num_classes
    for what, labels in (("prediction", p), ("ground truth", gt[valid])):
        if labels.size and labels.max() >= K:
            raise ValueError(f"the {what} has class {int(labels.max())} but there are {K} "
                             f"classes with background (--num_classes)")
    return np.bincount(gt[valid].astype(np.int64) * K + p, minlength=K * K).reshape(K, K)


def read_prediction(path: str) -> np.ndarray:
    """An index prediction: a label PNG, or a PSA score dict ``{0: bg, k + 1: class k}``
    (``.npy`` or ``.sdz``, e.g. ``crf/<alpha>/``) turned into its labels (highest key wins)."""
    if path.endswith(tuple(FORMATS.values())):
        return score_dict_label(load_score_dict(path))
    return read_label_png(path)


def png_confusion(pred_dir: str, gt_dir: str, names: Sequence[str], num_classes: int = 21,
                  workers: Optional[int] = None, progress: bool = False,
                  gt_files: Optional[Sequence[str]] = None, ext: str = ".png") -> np.ndarray:
    """(K, K) confusion counts of index predictions (``ext`` ".png" label images, or ".npy"
    score dicts, either format) summed over ``names``."""
    preds, gts = _pairs(pred_dir, ext, gt_dir, names, gt_files,
                        "Run the stage that writes them first (infer_PCSS.py --png / --crf, "
                        "infer_aff.py, infer_seg.py), or point --dict_dir at the right folder.")

    def one(i):
        return label_confusion(read_prediction(preds[i]), read_label_png(gts[i]), num_classes)

    return _map_files(_per_image(one, names, preds, gts), range(len(names)),
                      workers or _default_workers(), progress, "scoring")


def nanmean_miou(conf: np.ndarray) -> float:
    """The segmentation reference's mIoU (MCTformer's ``seg/tool/metrics.py``): the mean
    over classes present in the ground truth or the prediction only (a class absent from
    both is skipped, where the seed evaluation counts it as 0). Percent."""
    conf = conf.astype(np.float64)
    tp = np.diag(conf)
    union = conf.sum(0) + conf.sum(1) - tp
    present = union > 0
    return float((tp[present] / union[present]).mean() * 100.0) if present.any() else 0.0


def first_peak(thresholds: Sequence[float], miou: Sequence[float]) -> Tuple[float, float]:
    """The in-training threshold search: walk the thresholds upwards, keep the best, stop
    at the first whose mIoU is not higher than the best so far. Returns (t, mIoU)."""
    best_t, best = float(thresholds[0]), float(miou[0])
    for t, m in zip(thresholds[1:], miou[1:]):
        if m <= best:
            break
        best_t, best = float(t), float(m)
    return best_t, best
