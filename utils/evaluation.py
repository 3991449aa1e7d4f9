"""``utils.evaluation``: the stable import path of ``wsss.metrics`` (tools and tests written against
the project's public API import from here); the code lives in ``wsss/metrics.py``."""
from wsss.metrics import (  # noqa: F401
    IGNORE, default_thresholds, cam_threshold_histogram, confusions_from_histogram,
    iou_from_confusion, cam_confusions, cam_miou, label_confusion, read_prediction,
    png_confusion, nanmean_miou, first_peak
)

__all__ = ['IGNORE', 'default_thresholds', 'cam_threshold_histogram',
           'confusions_from_histogram', 'iou_from_confusion', 'cam_confusions', 'cam_miou',
           'label_confusion', 'read_prediction', 'png_confusion',
           'nanmean_miou', 'first_peak']
