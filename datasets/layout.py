"""Where each dataset keeps its files (docs/method.md, Data). No torch import here.

``layout(data_set, data_path)`` returns a ``Layout`` with every path the scripts need, so
that no script spells out a directory name itself.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np

from utils.choices import DATA_SETS
from utils.errors import UserError

VOC_CLASSES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
               "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
               "sheep", "sofa", "train", "tvmonitor")

COCO_CLASSES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat",
    "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack",
    "umbrella", "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball",
    "kite", "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket",
    "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair",
    "couch", "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse",
    "remote", "keyboard", "cell phone", "microwave", "oven", "toaster", "sink",
    "refrigerator", "book", "clock", "vase", "scissors", "teddy bear", "hair drier",
    "toothbrush")

# The synthetic set (datasets/toy.py): classes recognisable by colour family and texture.
TOY_CLASSES = ("red", "green", "blue", "yellow")



@dataclass(frozen=True)
class Layout:
    data_set: str
    root: str
    classes: Tuple[str, ...]
    train_list: str           # default training list
    val_list: str             # default list for seed validation during training
    infer_list: str           # default list for infer_PCSS.py
    eval_list: str            # default list for evaluation.py
    label_file: str           # cls_labels.npy: id -> float32 vector of C
    seg_val_list: str         # default list for infer_seg.py (the segmentation val set)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def image_path(self, image_id: str) -> str:
        if self.data_set == "COCO":
            split = coco_split(image_id, self.root)
            return os.path.join(self.root, f"{split}2014",
                                f"COCO_{split}2014_{coco_id(image_id)}.jpg")
        return os.path.join(self.root, "JPEGImages", image_id + ".jpg")

    def gt_dir(self, image_id: Optional[str] = None) -> str:
        """Folder of the ground-truth index PNGs (for COCO, of ``image_id``'s split)."""
        if self.data_set == "COCO":
            split = coco_split(image_id or "", self.root) if image_id else "train"
            return os.path.join(self.root, "SegmentationClass", f"{split}2014")
        for sub in ("SegmentationClass", "SegmentationClassAug"):
            d = os.path.join(self.root, sub)
            if os.path.isdir(d):
                return d
        return os.path.join(self.root, "SegmentationClass")

    def gt_path(self, image_id: str) -> str:
        return os.path.join(self.gt_dir(image_id), self.gt_name(image_id))

    def gt_name(self, image_id: str) -> str:
        if self.data_set == "COCO":
            return f"COCO_{coco_split(image_id, self.root)}2014_{coco_id(image_id)}.png"
        return image_id + ".png"


def coco_id(image_id: str) -> str:
    """The bare id: ``000000000009`` for ``COCO_train2014_000000000009`` (others as given)."""
    for prefix in ("COCO_train2014_", "COCO_val2014_"):
        if image_id.startswith(prefix):
            return image_id[len(prefix):]
    return image_id


def label_key(data_set: str, key) -> str:
    """The canonical id of a ``cls_labels.npy`` key or a list id: COCO ids bare
    (``COCO_train2014_000000000009`` and the integer 9 -> ``000000000009``); VOC ids in the
    devkit form, also from the integer form IRN-style repositories key their labels by
    (``2007000032`` -> ``2007_000032``)."""
    if data_set == "COCO":
        return f"{int(key):012d}" if isinstance(key, (int, np.integer)) else coco_id(str(key))
    text = str(int(key)) if isinstance(key, (int, np.integer)) else str(key)
    if data_set == "VOC12" and len(text) == 10 and text.isdigit():
        return f"{text[:4]}_{text[4:]}"
    return text


def coco_split(image_id: str, root: str = "") -> str:
    """'train' or 'val': from a ``COCO_val2014_`` prefix, else whichever folder has it."""
    if "val2014" in image_id:
        return "val"
    if "train2014" in image_id:
        return "train"
    if root and os.path.isfile(os.path.join(root, "val2014", f"COCO_val2014_{image_id}.jpg")):
        return "val"
    return "train"


def layout(data_set: str, data_path: str, check: bool = True) -> Layout:
    """The ``Layout`` of ``data_set`` rooted at ``data_path`` (a ``UserError`` if absent)."""
    if data_set not in DATA_SETS:
        raise UserError(f"unknown --data-set {data_set!r}; choose one of {', '.join(DATA_SETS)}")
    if check and not os.path.isdir(data_path):
        hint = {"VOC12": "Download PASCAL VOC 2012 (+ SBD's SegmentationClassAug) and pass its "
                         "VOC2012 folder, e.g. --data-path data/VOC2012 (see README).",
                "COCO": "Download MS COCO 2014 with VOC-style masks and pass its folder, e.g. "
                        "--data-path data/COCO2014 (see README).",
                "TOY": "Make the synthetic set first: python -m datasets.toy --out "
                       f"{data_path}"}[data_set]
        raise UserError(f"data directory not found: {data_path}. {hint}")
    seg = os.path.join(data_path, "ImageSets", "Segmentation")
    if data_set == "VOC12":
        return Layout("VOC12", data_path, VOC_CLASSES, os.path.join(seg, "train_aug.txt"),
                      os.path.join(seg, "train.txt"), os.path.join(seg, "train_aug.txt"),
                      os.path.join(seg, "train.txt"), os.path.join(data_path, "cls_labels.npy"),
                      os.path.join(seg, "val.txt"))
    if data_set == "COCO":
        return Layout("COCO", data_path, COCO_CLASSES, os.path.join(data_path, "train14.txt"),
                      os.path.join(data_path, "val_5200.txt"),
                      os.path.join(data_path, "train14.txt"),
                      os.path.join(data_path, "train14.txt"),
                      os.path.join(data_path, "cls_labels.npy"),
                      os.path.join(data_path, "val14.txt"))
    return Layout("TOY", data_path, TOY_CLASSES, os.path.join(seg, "train.txt"),
                  os.path.join(seg, "val.txt"), os.path.join(seg, "val.txt"),
                  os.path.join(seg, "val.txt"), os.path.join(data_path, "cls_labels.npy"),
                  os.path.join(seg, "val.txt"))
