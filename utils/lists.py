"""Image-id list files (no torch: used by evaluation.py too).

Accepted line formats, so that lists from other WSSS codebases work unchanged:
``2007_000032`` (VOC devkit), ``/JPEGImages/2007_000032.jpg /SegmentationClassAug/...png``
(the reference's two columns), ``000000000009`` and ``COCO_train2014_000000000009``.
"""
from __future__ import annotations

import os
import re
from typing import List

from utils.errors import UserError


_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*")


def parse_list_line(line: str) -> str:
    """The image id of one list line (first column, directory and extension removed).

    A ``UserError`` for what cannot be an image id of the dataset: a path with ``..``, an
    absolute path deeper than the reference's ``/JPEGImages/<id>.jpg``, or characters other
    than letters, digits, ``_``, ``-`` and ``.``."""
    first = line.split()[0]
    parts = first.strip("/").split("/")
    if ".." in parts or (first.startswith("/") and len(parts) > 2):
        raise UserError(f"list line {line.strip()!r}: an id must be a bare name or "
                        f"'/<folder>/<id>.<ext>' (no '..', no absolute paths)")
    image_id = os.path.splitext(parts[-1])[0]
    if not _ID.fullmatch(image_id):
        raise UserError(f"list line {line.strip()!r}: {image_id!r} is not an image id")
    return image_id


def read_id_list(path: str) -> List[str]:
    """Image ids of a list file, in file order (blank lines and ``#`` comments skipped,
    Windows line ends accepted). A ``UserError`` for a missing or empty file, a line that
    is no id, or ids listed twice."""
    if not os.path.isfile(path):
        raise UserError(f"list file not found: {path}. For VOC / COCO run "
                        f"`python -m datasets.prepare --data-set VOC12|COCO --data-path DIR` "
                        f"(it makes train_aug.txt and the COCO lists); the toy set's lists come "
                        f"with `python -m datasets.toy --out DIR`; or pass the list with "
                        f"--train_list / --val_list / --list.")
    with open(path, newline=None) as f:
        try:
            ids = [parse_list_line(l) for l in f if l.strip() and not l.lstrip().startswith("#")]
        except UserError as e:
            raise UserError(f"{path}: {e}") from None
    if not ids:
        raise UserError(f"list file {path} is empty")
    seen, twice = set(), []
    for i in ids:
        if i in seen:
            twice.append(i)
        seen.add(i)
    if twice:
        raise UserError(f"list file {path} names {len(twice)} ids more than once (e.g. "
                        f"{', '.join(twice[:3])}); each image must appear once. Remove the "
                        f"repeated lines.")
    return ids


def resolve_list(value: str, root: str) -> str:
    """A list file path as given, or a split name looked up under the dataset ``root``
    (``train`` -> ``<root>/ImageSets/Segmentation/train.txt`` or ``<root>/train.txt``)."""
    if os.path.isfile(value) or os.sep in value or value.endswith(".txt"):
        return value
    candidates = [os.path.join(root, "ImageSets", "Segmentation", value + ".txt"),
                  os.path.join(root, value + ".txt")]
    for c in candidates:
        if os.path.isfile(c):
            return c
    raise UserError(f"--list {value}: neither a file nor a split of {root} "
                    f"(looked for {' and '.join(candidates)})")
