"""Make the id lists and ``cls_labels.npy`` of VOC 2012 and COCO 2014 (docs/method.md, Data).

    python -m datasets.prepare --data-set VOC12 --data-path data/VOC2012
    python -m datasets.prepare --data-set COCO --data-path data/COCO2014

VOC12 writes ``cls_labels.npy`` for every id of train, val and train_aug from the object
names in ``Annotations/<id>.xml`` (classes in ``datasets.layout.VOC_CLASSES`` order), and
``ImageSets/Segmentation/train_aug.txt``, the ids of ``SegmentationClassAug/*.png`` minus
those of ``val.txt`` (10,582 for VOC + SBD), when SBD's masks are there. Without them an
existing ``train_aug.txt`` (the authors' two-column file works) is used as the training list,
and without that only train and val are prepared (one line says what is missing and why).

COCO writes ``cls_labels.npy`` for every mask of ``SegmentationClass/{train2014,val2014}/``
(mask value k marks class k-1 of the 80; 0 and 255 do not count), ``train14.txt`` and
``val14.txt`` (bare 12-digit ids) and ``val_5200.txt``: 5,200 ids of train14 drawn with a
fixed seed, the list for seed validation during training. The reference also validates on
5,200 training images, but this subset is ours, not the authors' exact one: in-training
numbers compare between runs of this code, not with the reference's logs.

Lists are sorted and every file is written atomically, so re-running gives identical files.
The toy set needs no preparation: ``python -m datasets.toy`` writes its lists and labels.
"""
from __future__ import annotations

import argparse
import os
import re
import xml.etree.ElementTree as ET
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from typing import Callable, Dict, List, Optional, Sequence, Tuple, TypeVar

import numpy as np
from tqdm import tqdm

from datasets.labels import (labels_from_mask, labels_from_xml, save_label_dict,
                             write_id_list)
from datasets.layout import COCO_CLASSES, VOC_CLASSES, layout
from utils.args import parse_args
from utils.errors import UserError, describe_missing, run_main
from utils.io import read_label_png
from utils.lists import read_id_list

COCO_VAL_SIZE = 5200
COCO_VAL_SEED = 0
_COCO_MASK = re.compile(r"COCO_(train|val)2014_(\d{12})\.png")
_WORKERS = min(16, os.cpu_count() or 1)

T = TypeVar("T")


def _guarded(read: Callable[[str], T], path: str) -> Tuple[Optional[T], Optional[str]]:
    """``(read(path), None)``, or ``(None, what went wrong)`` for an unreadable file."""
    try:
        return read(path), None
    except (OSError, ValueError, ET.ParseError) as e:
        return None, f"{path} ({e})"


def _mask_labels(path: str, num_classes: int) -> np.ndarray:
    """The label vector of the index PNG at ``path``."""
    return labels_from_mask(read_label_png(path), num_classes)


def read_all(paths: Sequence[str], read: Callable[[str], T], desc: str) -> List[T]:
    """``[read(p) for p in paths]`` in a process pool (decoding and counting are CPU-bound
    and hold the GIL), with a progress bar; ``read`` must be picklable (a module-level
    function or a ``partial`` of one). Files that fail (``OSError``, ``ValueError``, XML
    syntax) are reported together in one ``UserError``."""
    with ProcessPoolExecutor(_WORKERS) as pool:
        results = list(tqdm(pool.map(partial(_guarded, read), paths, chunksize=64),
                            total=len(paths), desc=desc, unit="file", dynamic_ncols=True))
    errors = [err for _, err in results if err is not None]
    if errors:
        more = f"; and {len(errors) - 5} more" if len(errors) > 5 else ""
        shown = "; ".join(errors[:5]) + more
        raise UserError(f"{len(errors)} of {len(paths)} files could not be read: {shown}. "
                        f"Replace or re-extract them, then run this again.")
    return [value for value, _ in results]


def _require(paths: Sequence[str], what: str) -> None:
    """A ``UserError`` naming every path of ``paths`` that does not exist."""
    missing = [p for p in paths if not os.path.exists(p)]
    if missing:
        raise UserError(f"{describe_missing(missing, 'required files or folders')}. {what}")


SBD_HINT = ("SBD's augmented masks (SegmentationClassAug/, e.g. from "
            "https://www.dropbox.com/s/oeu149j8qtbs1x0/SegmentationClassAug.zip) or the "
            "authors' ImageSets/Segmentation/train_aug.txt")


def prepare_voc(data_path: str, report=print) -> Dict[str, int]:
    """Write ``cls_labels.npy`` (and ``train_aug.txt`` when SBD's masks are there) of the
    VOC 2012 folder ``data_path``; returns ``{written or used file: number of ids}``.

    Labels come from ``Annotations/<id>.xml`` for every id of train, val and train_aug.
    train_aug is the ids of ``SegmentationClassAug/*.png`` minus val (written to
    ``train_aug.txt``); without SBD an existing ``train_aug.txt`` (e.g. the authors'
    two-column file) is used as it is; without either, ``report`` gets one line saying
    what is missing and what for, and train / val are still prepared (enough to infer
    and score the released checkpoint on train.txt)."""
    lay = layout("VOC12", data_path)
    seg = os.path.join(data_path, "ImageSets", "Segmentation")
    aug_dir = os.path.join(data_path, "SegmentationClassAug")
    ann_dir = os.path.join(data_path, "Annotations")
    train_txt, val_txt = os.path.join(seg, "train.txt"), os.path.join(seg, "val.txt")
    train_aug_txt = os.path.join(seg, "train_aug.txt")
    _require([ann_dir, train_txt, val_txt],
             f"{data_path} should be a VOC2012 folder of the devkit (Annotations/, "
             f"ImageSets/Segmentation/{{train,val}}.txt); see README.")
    val = set(read_id_list(val_txt))
    written: Dict[str, int] = {}
    if os.path.isdir(aug_dir):
        train_aug = sorted(os.path.splitext(n)[0] for n in os.listdir(aug_dir)
                           if n.endswith(".png") and os.path.splitext(n)[0] not in val)
        if not train_aug:
            raise UserError(f"{aug_dir} holds no mask outside val.txt, so train_aug would be "
                            f"empty. Put SBD's SegmentationClassAug/*.png there (see README).")
        write_id_list(train_aug_txt, train_aug)
        written[train_aug_txt] = len(train_aug)
    elif os.path.isfile(train_aug_txt):
        train_aug = read_id_list(train_aug_txt)
        report(f"using the existing {train_aug_txt} ({len(train_aug)} ids) as the training "
               f"list; SegmentationClassAug/ is absent (only needed to score on train_aug)")
    else:
        train_aug = []
        report(f"no train_aug.txt: {aug_dir} (SBD) is missing. It is needed only to train on "
               f"train_aug (10,582 images, as the paper); get {SBD_HINT}. Train and val are "
               f"prepared (enough for the released checkpoint on train.txt, or training with "
               f"--train_list {train_txt}).")
    ids = sorted(set(train_aug) | set(read_id_list(train_txt)) | val)
    xmls = [os.path.join(ann_dir, i + ".xml") for i in ids]
    _require(xmls, "Image-level labels come from Annotations/<id>.xml for every id of "
                   "train_aug, train and val; restore Annotations/ from the VOC 2012 devkit.")
    labels = read_all(xmls, partial(labels_from_xml, classes=VOC_CLASSES), "VOC annotations")
    save_label_dict(lay.label_file, dict(zip(ids, labels)))
    written[lay.label_file] = len(ids)
    return written


def coco_val_subset(train_ids: Sequence[str], size: int = COCO_VAL_SIZE,
                    seed: int = COCO_VAL_SEED) -> List[str]:
    """``size`` ids of ``train_ids`` (all when fewer) drawn with ``seed``, sorted; the draw
    depends on the set of ids only, not on their order."""
    pool = sorted(set(train_ids))
    if len(pool) <= size:
        return pool
    pick = np.random.default_rng(seed).choice(len(pool), size=size, replace=False)
    return sorted(pool[k] for k in pick)


def prepare_coco(data_path: str) -> Dict[str, int]:
    """Write ``cls_labels.npy``, ``train14.txt``, ``val14.txt`` and ``val_5200.txt`` of the
    COCO 2014 folder ``data_path``; returns ``{written file: number of ids}``."""
    lay = layout("COCO", data_path)
    split_dirs = {s: os.path.join(data_path, "SegmentationClass", f"{s}2014")
                  for s in ("train", "val")}
    _require(list(split_dirs.values()),
             f"COCO labels are read from VOC-style masks "
             f"SegmentationClass/{{train2014,val2014}}/COCO_<split>2014_<12-digit id>.png "
             f"under {data_path} (see README for where to get them).")
    ids: Dict[str, List[str]] = {}
    paths: List[str] = []
    for split, d in split_dirs.items():
        names = sorted(n for n in os.listdir(d) if _COCO_MASK.fullmatch(n))
        if not names:
            raise UserError(f"{d} holds no mask named COCO_{split}2014_<12-digit id>.png")
        ids[split] = [_COCO_MASK.fullmatch(n).group(2) for n in names]
        paths += [os.path.join(d, n) for n in names]
    labels = read_all(paths, partial(_mask_labels, num_classes=len(COCO_CLASSES)),
                      "COCO masks")
    save_label_dict(lay.label_file, dict(zip(ids["train"] + ids["val"], labels)))
    lists = {os.path.join(data_path, "train14.txt"): ids["train"],
             os.path.join(data_path, "val14.txt"): ids["val"],
             os.path.join(data_path, "val_5200.txt"): coco_val_subset(ids["train"])}
    for path, list_ids in lists.items():
        write_id_list(path, list_ids)
    return {lay.label_file: len(labels), **{p: len(v) for p, v in lists.items()}}


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Write the id lists and cls_labels.npy of VOC 2012 or COCO 2014.")
    p.add_argument("--data-set", "--data_set", dest="data_set", required=True,
                   choices=("VOC12", "COCO"))
    p.add_argument("--data-path", "--data_path", dest="data_path", required=True,
                   help="dataset root, e.g. data/VOC2012 or data/COCO2014")
    return p


def main(argv=None) -> None:
    args = parse_args(get_args_parser(), argv)
    prepare = prepare_voc if args.data_set == "VOC12" else prepare_coco
    for path, n in prepare(args.data_path).items():
        print(f"wrote {path} ({n} ids)")


if __name__ == "__main__":
    run_main(main)
