"""Where each dataset keeps its files, and everything the stages know about a dataset, in
one registry (``DATASETS``; no torch import here).

A dataset is registered once, as a ``Dataset`` entry: its classes, its default lists and
label file (paths under its root), its image folder, the seed stage's input size and the
refinement backbone it defaults to, whether it has a test split for an evaluation server,
how its lists are made, and the pipeline's per-image estimates. Datasets in the VOC folder
layout (``JPEGImages/<id>.jpg``, ``SegmentationClass/<id>.png``) need nothing else; COCO's
own layout is the subclass ``CocoDataset``. Code outside ``datasets/`` asks the entry (e.g.
``dataset(name).num_classes``), never compares dataset names.

``layout(data_set, data_path)`` returns a ``Layout``: the entry rooted at a folder, with
every path the scripts need, so that no script spells out a directory name itself.
"""
from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field
from typing import Mapping, Optional, Tuple

import numpy as np

from utils.errors import UserError
from utils.registry import Registry

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


# Bytes each output takes per image (and per checkpoint) and seconds per image (per epoch
# for training) on one GPU: the pipeline's plan and preflight (engine.pipeline). VOC's
# figures (500 x 375 images, ~1.5 classes each) are measured by bench/bench_scale.py and
# estimated from the reference's schedules; they are the default of a new dataset.
VOC_DISK = {"dict": 1.13e6, "crf": 85e3, "png": 2e3, "ckpt_epoch": 90e6, "ckpt_last": 270e6,
            "aff": 1.2e9, "segnet": 1.5e9}
VOC_SECONDS = {"seeds_train": 0.006, "seeds": 0.34, "crf": 0.85, "eval": 0.02,
               "aff_train": 0.2, "rw": 0.34, "seg_train": 0.11, "seg_val": 1.24}
SEG_LISTS = "ImageSets/Segmentation"


@dataclass(frozen=True)
class Dataset:
    """One dataset as every stage knows it; paths are relative to the dataset's root.

    ``lists``: the default id lists - ``train`` (seed and refinement training), ``val``
    (seed validation while training), ``infer`` (``infer_PCSS.py``), ``eval``
    (``evaluation.py``; pseudo masks are scored on it) and ``seg_val`` (``infer_seg.py``).
    ``test``: the list of a test split predicted for an evaluation server (``infer_seg.py
    --split test``), None if there is none. ``where`` (how to get the data) and
    ``make_lists`` (the command that writes its lists and labels) may name the folder as
    ``{path}`` (and ``make_lists`` the dataset as ``{name}``). ``disk_per_image`` /
    ``seconds_per_image`` / ``literature``: the pipeline's estimates and the published
    figures its report shows."""
    name: str
    classes: Tuple[str, ...]
    lists: Mapping[str, str]
    label_file: str = "cls_labels.npy"
    images: str = "JPEGImages"
    masks: Tuple[str, ...] = ("SegmentationClass", "SegmentationClassAug")
    test: Optional[str] = None
    input_size: int = 224                  # the seed stage's training size
    backbone: str = "resnet38"             # the refinement / segmentation default
    seed_script: str = "train_PCSS.py"     # the script whose defaults fit it
    default_path: Optional[str] = None     # where pipeline.py looks without --data-path
    synthetic: bool = False                # made by code (runs on a CPU, no download)
    where: str = "put the dataset there and pass its folder with --data-path"
    make_lists: Optional[str] = None       # command that writes the lists and labels
    disk_per_image: Mapping[str, float] = field(default_factory=lambda: dict(VOC_DISK))
    seconds_per_image: Mapping[str, float] = field(default_factory=lambda: dict(VOC_SECONDS))
    literature: Mapping[str, float] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def remake_hint(self, data_path: str) -> str:
        """How to (re)make the lists and ``cls_labels.npy`` of this dataset at ``data_path``."""
        if self.make_lists is None:
            return (f"write them under {data_path} (datasets.labels.write_id_list, "
                    f"save_label_dict)")
        return self.make_lists.format(name=self.name, path=data_path)

    # the folder layout (VOC's); another layout overrides these four
    def image_path(self, root: str, image_id: str) -> str:
        return os.path.join(root, self.images, image_id + ".jpg")

    def gt_dir(self, root: str, image_id: Optional[str] = None) -> str:
        """Folder of the ground-truth index PNGs: the first of ``masks`` that exists."""
        for sub in self.masks:
            d = os.path.join(root, sub)
            if os.path.isdir(d):
                return d
        return os.path.join(root, self.masks[0])

    def gt_name(self, root: str, image_id: str) -> str:
        return image_id + ".png"

    def label_key(self, key) -> str:
        """The canonical id of a ``cls_labels.npy`` key or a list id."""
        return str(int(key)) if isinstance(key, (int, np.integer)) else str(key)


@dataclass(frozen=True)
class VocDataset(Dataset):
    """PASCAL VOC: ids in the devkit form, also from the integer form IRN-style repositories
    key their labels by (``2007000032`` -> ``2007_000032``)."""

    def label_key(self, key) -> str:
        text = super().label_key(key)
        if len(text) == 10 and text.isdigit():
            return f"{text[:4]}_{text[4:]}"
        return text


@dataclass(frozen=True)
class CocoDataset(Dataset):
    """MS COCO 2014 with VOC-style masks: ``<split>2014/COCO_<split>2014_<id>.jpg`` and
    ``SegmentationClass/<split>2014/...png``; ids bare (``000000000009``)."""

    def image_path(self, root: str, image_id: str) -> str:
        split = coco_split(image_id, root)
        return os.path.join(root, f"{split}2014", f"COCO_{split}2014_{coco_id(image_id)}.jpg")

    def gt_dir(self, root: str, image_id: Optional[str] = None) -> str:
        split = coco_split(image_id or "", root) if image_id else "train"
        return os.path.join(root, "SegmentationClass", f"{split}2014")

    def gt_name(self, root: str, image_id: str) -> str:
        return f"COCO_{coco_split(image_id, root)}2014_{coco_id(image_id)}.png"

    def label_key(self, key) -> str:
        return f"{int(key):012d}" if isinstance(key, (int, np.integer)) else coco_id(str(key))


DATASETS: Registry[Dataset] = Registry("dataset", "--data-set")


def register_dataset(entry: Dataset) -> Dataset:
    """Make ``entry`` known to every script (``--data-set <entry.name>``)."""
    return DATASETS.register(entry.name, entry)


def dataset(name: str) -> Dataset:
    """The registered dataset ``name`` (a ``UserError`` naming the choices if unknown)."""
    return DATASETS[name]


PREPARE = "run `python -m datasets.prepare --data-set {name} --data-path {path}`"
register_dataset(VocDataset(
    "VOC12", VOC_CLASSES,
    lists={"train": f"{SEG_LISTS}/train_aug.txt", "val": f"{SEG_LISTS}/train.txt",
           "infer": f"{SEG_LISTS}/train_aug.txt", "eval": f"{SEG_LISTS}/train.txt",
           "seg_val": f"{SEG_LISTS}/val.txt"},
    test=f"{SEG_LISTS}/test.txt", default_path="data/VOC2012",
    where="Download PASCAL VOC 2012 (+ SBD's SegmentationClassAug) and pass its VOC2012 "
          "folder, e.g. --data-path data/VOC2012 (see README).",
    make_lists=PREPARE,
    literature={"seeds": 69.5, "masks": 73.2, "seg": 72.3, "seg_test": 73.0}))
register_dataset(CocoDataset(
    "COCO", COCO_CLASSES,
    lists={"train": "train14.txt", "val": "val_5200.txt", "infer": "train14.txt",
           "eval": "train14.txt", "seg_val": "val14.txt"},
    images="train2014", seed_script="train_PCSS_coco.py", default_path="data/COCO2014",
    where="Download MS COCO 2014 with VOC-style masks and pass its folder, e.g. --data-path "
          "data/COCO2014 (see README).",
    make_lists=PREPARE,
    disk_per_image={"dict": 3.6e6, "crf": 140e3, "png": 3e3, "ckpt_epoch": 90e6,
                    "ckpt_last": 270e6, "aff": 1.2e9, "segnet": 1.5e9},
    seconds_per_image={"seeds_train": 0.006, "seeds": 0.5, "crf": 1.5, "eval": 0.02,
                       "aff_train": 0.25, "rw": 0.5, "seg_train": 0.13, "seg_val": 1.5},
    literature={"seg": 45.7}))
# the synthetic set of datasets/toy.py (96 px images; its figures measured on a 2-core CPU)
TOY_SET = register_dataset(Dataset(
    "TOY", TOY_CLASSES,
    lists={"train": f"{SEG_LISTS}/train.txt", "val": f"{SEG_LISTS}/val.txt",
           "infer": f"{SEG_LISTS}/val.txt", "eval": f"{SEG_LISTS}/val.txt",
           "seg_val": f"{SEG_LISTS}/val.txt"},
    input_size=96, backbone="toy", synthetic=True,
    where="Make the synthetic set first: python -m datasets.toy --out {path}",
    make_lists="make the synthetic set with `python -m datasets.toy --out {path}`",
    disk_per_image={"dict": 60e3, "crf": 100e3, "png": 1e3, "ckpt_epoch": 2e6,
                    "ckpt_last": 6e6, "aff": 5e6, "segnet": 5e6},
    seconds_per_image={"toy_data": 0.01, "pretrain": 0.004, "seeds_train": 0.012,
                       "seeds": 0.006, "crf": 0.01, "eval": 0.001, "aff_train": 0.012,
                       "rw": 0.02, "seg_train": 0.02, "seg_val": 0.05}))


@dataclass(frozen=True)
class Layout:
    """A registered dataset rooted at a folder: the files the scripts read."""
    data_set: str
    root: str
    classes: Tuple[str, ...]
    train_list: str           # default training list
    val_list: str             # default list for seed validation during training
    infer_list: str           # default list for infer_PCSS.py
    eval_list: str            # default list for evaluation.py
    label_file: str           # cls_labels.npy: id -> float32 vector of C
    seg_val_list: str         # default list for infer_seg.py (the segmentation val set)
    test_list: Optional[str] = None   # the evaluation server's test split, if any

    @property
    def dataset(self) -> Dataset:
        return DATASETS[self.data_set]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def image_path(self, image_id: str) -> str:
        return self.dataset.image_path(self.root, image_id)

    def gt_dir(self, image_id: Optional[str] = None) -> str:
        """Folder of the ground-truth index PNGs (for COCO, of ``image_id``'s split)."""
        return self.dataset.gt_dir(self.root, image_id)

    def gt_path(self, image_id: str) -> str:
        return os.path.join(self.gt_dir(image_id), self.gt_name(image_id))

    def gt_name(self, image_id: str) -> str:
        return self.dataset.gt_name(self.root, image_id)


def coco_id(image_id: str) -> str:
    """The bare id: ``000000000009`` for ``COCO_train2014_000000000009`` (others as given)."""
    for prefix in ("COCO_train2014_", "COCO_val2014_"):
        if image_id.startswith(prefix):
            return image_id[len(prefix):]
    return image_id


def label_key(data_set: str, key) -> str:
    """The canonical id of a ``cls_labels.npy`` key or a list id in ``data_set``
    (``Dataset.label_key``: COCO ids bare, VOC ids in the devkit form)."""
    return DATASETS[data_set].label_key(key)


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
    """The ``Layout`` of the registered ``data_set`` rooted at ``data_path`` (a
    ``UserError`` if the name is unknown or, with ``check``, the folder absent)."""
    entry = DATASETS[data_set]
    if check and not os.path.isdir(data_path):
        raise UserError(f"data directory not found: {data_path}. "
                        f"{entry.where.format(path=data_path)}")
    at = lambda rel: os.path.join(data_path, *rel.split("/"))  # noqa: E731
    lists = entry.lists
    return Layout(entry.name, data_path, entry.classes, at(lists["train"]), at(lists["val"]),
                  at(lists["infer"]), at(lists["eval"]), at(entry.label_file),
                  at(lists["seg_val"]), at(entry.test) if entry.test else None)


def data_parent(data_set: str = "VOC12", data_path: str = "data/VOC2012"
                ) -> argparse.ArgumentParser:
    """``--data-set`` (a registered dataset) and ``--data-path``: every script's data
    options, with the defaults of the script (e.g. COCO's for train_PCSS_coco.py)."""
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("data")
    g.add_argument("--data-set", "--data_set", dest="data_set", default=data_set,
                   choices=DATASETS, help="dataset")
    g.add_argument("--data-path", "--data_path", dest="data_path", default=data_path,
                   help="dataset root")
    return p


def default_input_size(data_set: str, input_size: Optional[int]) -> int:
    """``--input-size`` when given, else the dataset's (224; 96 for the toy set)."""
    return DATASETS[data_set].input_size if input_size is None else input_size
